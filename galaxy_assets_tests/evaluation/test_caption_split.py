"""Semantic search on galaxies without and with a training caption (the report's caption split)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from galaxy_assets.evaluation.caption_split import MIN_GROUP, caption_split
from galaxy_assets.evaluation.labels import Target, TargetLabels, labels_from_truth
from galaxy_assets.evaluation.metrics import ranked_indices
from galaxy_assets.evaluation.report import EvaluationResult, _sub_seed, evaluate, write_report


def _binary_labels(n: int, positives: np.ndarray) -> TargetLabels:
    target = Target(name="lenses", kind="binary", queries=("gravitational lens",), flag="is_lens")
    ids = np.array([f"g{i:04d}" for i in range(n)])
    rel = np.zeros(n)
    rel[positives] = 1.0
    return TargetLabels(target, ids, rel, "constructed")


def test_a_ranking_that_only_knows_its_training_galaxies_shows_a_gap():
    # 400 galaxies, every 10th relevant; the first 200 are captioned. The ranking puts the
    # captioned positives first and the uncaptioned galaxies in an arbitrary order after
    # them: perfect on the captioned set, near random on the other.
    n = 400
    labels = _binary_labels(n, np.arange(0, n, 10))
    captioned = {f"g{i:04d}" for i in range(200)}
    cap_pos = [i for i in range(0, 200, 10)]
    rest = [i for i in range(200) if i not in cap_pos] + list(
        np.random.default_rng(0).permutation(np.arange(200, n))
    )
    ranked = np.array(cap_pos + rest)
    out = caption_split(labels, ranked, captioned)
    assert out["n_captioned"] == out["n_uncaptioned"] == out["size"] == 200
    assert out["captioned"]["ndcg"] == pytest.approx(1.0)
    assert out["captioned"]["std"] is None and out["captioned"]["draws"] == 0  # equal sizes
    assert out["uncaptioned"]["ndcg"] < 0.5
    assert out["difference"] == pytest.approx(out["uncaptioned"]["ndcg"] - 1.0)
    assert out["uncaptioned"]["ceiling"] == out["captioned"]["ceiling"] == 1.0


def test_the_larger_group_is_subsampled_to_the_smaller_ones_size():
    # 100 uncaptioned, 300 captioned; a perfect ranking scores 1 on both, and the captioned
    # figure is a mean over seeded draws of 100 galaxies
    n = 400
    labels = _binary_labels(n, np.arange(0, n, 8))
    captioned = {f"g{i:04d}" for i in range(100, n)}
    ranked = np.argsort(-labels.relevance, kind="stable")
    out = caption_split(labels, ranked, captioned, n_draws=20, seed=3)
    assert (out["n_uncaptioned"], out["n_captioned"], out["size"]) == (100, 300, 100)
    assert out["uncaptioned"]["draws"] == 0 and out["captioned"]["draws"] == 20
    assert out["uncaptioned"]["ndcg"] == pytest.approx(1.0)
    assert out["captioned"]["ndcg"] == pytest.approx(1.0)
    assert out["captioned"]["std"] == pytest.approx(0.0)
    assert out["difference"] == pytest.approx(0.0)
    assert caption_split(labels, ranked, captioned, n_draws=20, seed=3) == out  # seeded


def test_too_few_galaxies_in_a_group_gives_a_reason_not_a_figure():
    labels = _binary_labels(200, np.arange(0, 200, 5))
    out = caption_split(labels, np.arange(200), {f"g{i:04d}" for i in range(MIN_GROUP - 1)})
    assert "uncaptioned" not in out
    assert f"only {MIN_GROUP - 1} labelled galaxies with a training caption" in out["reason"]
    # a truncated ranking would score a group's unranked galaxies as last: refused
    out = caption_split(labels, np.arange(150), {f"g{i:04d}" for i in range(100)})
    assert "holds 150 of the 200 labelled galaxies" in out["reason"]
    # a group with nothing relevant: nDCG is undefined there
    out = caption_split(labels, np.arange(200), {f"g{i:04d}" for i in range(1, 200, 5)})
    assert "undefined" in out["reason"]


def test_evaluate_reports_the_caption_split(world, tmp_path: Path):
    labels = labels_from_truth(world.truth)
    captioned = world.object_ids[::2].tolist()  # every other galaxy has a training caption
    res = evaluate(
        labels, search_fn=world.search_fn(noise=0.3), n_boot=50, n_random=3, captioned_ids=captioned
    )
    splits = res.caption_splits()
    assert "spirals" in splits
    sp = splits["spirals"]
    tl = labels["spirals"]
    assert sp["n_captioned"] + sp["n_uncaptioned"] == tl.n_candidates
    # the same figure computed by hand from the primary phrasing's ranking
    ranked = ranked_indices(
        world.search_fn(noise=0.3)([tl.target.primary_query], 1000)[0], tl.index
    )
    assert (
        caption_split(tl, ranked, set(captioned), seed=_sub_seed(0, "spirals", "caption_split"))
        == sp
    )
    summary = res.summary()["caption_split"]["spirals"]
    assert summary["uncaptioned_ndcg@10"] == pytest.approx(sp["uncaptioned"]["ndcg"])
    assert "spirals/semantic/uncaptioned_ndcg_at_10" in res.flat_metrics()
    # strict JSON and a lossless round trip
    back = EvaluationResult.from_json(res.to_json())
    assert back.caption_splits() == json.loads(json.dumps(splits))
    text = write_report(res, tmp_path / "r").text
    assert "## Galaxies the aligner never saw" in text
    assert f"| spirals | {sp['n_uncaptioned']} / {sp['n_captioned']} |" in text
    # without captioned_ids there is no split and no section
    plain = evaluate(labels, search_fn=world.search_fn(noise=0.3), n_boot=50, n_random=3)
    assert plain.caption_splits() == {} and "caption_split" not in plain.summary()
    assert "never saw" not in write_report(plain, tmp_path / "p").text


def test_the_cli_table_prints_the_caption_split(world):
    from galaxy_assets.cli import format_evaluation

    labels = labels_from_truth(world.truth)
    kw = dict(search_fn=world.search_fn(noise=0.3), n_boot=20, n_random=2)
    res = evaluate(labels, captioned_ids=world.object_ids[::2].tolist(), **kw)
    sp = res.caption_splits()["spirals"]
    line = format_evaluation(res).splitlines()[-1]
    assert line.startswith("semantic nDCG@10 on galaxies without / with a training caption")
    assert f"spirals {sp['uncaptioned']['ndcg']:.3f} / {sp['captioned']['ndcg']:.3f}" in line
    assert "training caption" not in format_evaluation(evaluate(labels, **kw))
