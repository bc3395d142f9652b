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


def test_training_split_is_the_aligners_split_of_its_pairs():
    from galaxy_assets.alignment.data import split_by_object
    from galaxy_assets.evaluation.caption_split import training_split

    caption_ids = [f"g{i:04d}" for i in range(300)] * 2 + ["no-image"]  # repeats: views
    image_ids = [f"g{i:04d}" for i in range(400)]
    train, val = training_split(caption_ids, image_ids, val_fraction=0.25, min_validation=16,
                                salt="s")
    pairs = np.array([f"g{i:04d}" for i in range(300)])
    is_val = split_by_object(pairs, 0.25, min_validation=16, salt="s")
    assert train == pairs[~is_val].tolist() and val == pairs[is_val].tolist()
    assert 40 < len(val) < 110 and "no-image" not in train + val
    assert training_split([], image_ids, val_fraction=0.1, min_validation=16, salt="s") == ([], [])


def test_search_evaluation_counts_validation_galaxies_as_without_a_training_caption(
    tmp_path, monkeypatch
):
    """The aligner never trains on the validation galaxies it holds out; they were counted as
    "with a training caption", shrinking the memorisation gap. The split is the one the run
    recorded (a non-default val_fraction and salt here), not TrainConfig's defaults."""
    from types import SimpleNamespace

    import dagster as dg
    import polars as pl

    import galaxy_assets.defs.evaluation as defs_eval
    from galaxy_assets.alignment import split_by_object, train_aligner
    from galaxy_assets.alignment.synthetic import synthetic_pairs
    from galaxy_assets.alignment.train import register_aligner
    from galaxy_assets.tracking import Tracker

    images, captions = synthetic_pairs(200, image_dim=8, text_dim=8, seed=1)
    captions = captions.head(150)  # 50 galaxies without a caption
    result = train_aligner(
        images, captions,
        model_config={"output_dim": 8, "hidden_dim": 16, "n_blocks": 1},
        train_config={"epochs": 1, "batch_size": 32, "val_fraction": 0.3,
                      "split_salt": "eval-test", "num_threads": 1},
    )
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")
    reg = register_aligner(result, tracker, plot=False)
    pair_ids = np.array(sorted(captions["object_id"].to_list()))
    is_val = split_by_object(pair_ids, 0.3, min_validation=16, salt="eval-test")
    assert is_val.sum() == result.data["n_val_objects"]

    seen: dict = {}

    class _Stop(Exception):
        pass

    def fake_run(**kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(defs_eval, "run_search_evaluation", fake_run)
    monkeypatch.setattr(defs_eval, "_index_version", lambda *a: None)
    body = defs_eval.search_evaluation.op.compute_fn.decorated_fn
    caption_ids = pl.DataFrame({"object_id": captions["object_id"].to_list() + ["lost-1"]})
    with pytest.raises(_Stop):
        list(body(
            dg.build_asset_context(), defs_eval.SearchEvaluationConfig(rerank=False),
            aligned_model=pl.DataFrame({"version": [reg.version], "run_id": [reg.run_id]}),
            image_embeddings={"s": images}, raw_cutouts={"s": images.select("object_id")},
            caption_embeddings=caption_ids,
            home=SimpleNamespace(home=lambda: SimpleNamespace(reports=tmp_path / "reports")),
            compute=None, mlflow=SimpleNamespace(tracker=lambda home: tracker),
            text_embedder=SimpleNamespace(build=lambda compute: object()),
            search_index=SimpleNamespace(aligner_alias="champion"),
        ))
    assert not set(seen["captioned_ids"]) & set(pair_ids[is_val])  # held out: no training pair
    assert sorted(seen["captioned_ids"]) == pair_ids[~is_val].tolist()
    assert len(seen["captioned_ids"]) == result.data["n_train_objects"]


def test_a_run_without_split_settings_or_with_other_counts_is_said_in_the_log():
    from types import SimpleNamespace

    import polars as pl

    from galaxy_assets.defs.evaluation import _training_caption_ids
    from galaxy_assets.evaluation.caption_split import training_split

    def tracker(params):
        run = SimpleNamespace(data=SimpleNamespace(params=params))
        return SimpleNamespace(client=SimpleNamespace(get_run=lambda run_id: run))

    class Log:
        def __init__(self):
            self.warnings, self.infos = [], []

        def warning(self, text):
            self.warnings.append(text)

        def info(self, text):
            self.infos.append(text)

    ids = pl.Series("object_id", [f"g{i:04d}" for i in range(300)])
    model = pl.DataFrame({"version": [1], "run_id": ["r1"]})
    log = Log()
    got = _training_caption_ids(tracker({}), model, ids, ids, log)
    assert got == training_split(ids, ids, val_fraction=0.1, min_validation=16, salt="aligner-v1")
    assert "records no val_fraction, min_validation, split_salt" in log.warnings[0]
    log = Log()
    params = {"train.val_fraction": "0.1", "train.min_validation": "16",
              "train.split_salt": "aligner-v1", "data.n_train_objects": "1",
              "data.n_val_objects": "299"}
    got = _training_caption_ids(tracker(params), model, ids, ids, log)
    assert len(log.warnings) == 1 and "recorded 1 and 299" in log.warnings[0]
    params.update({"data.n_train_objects": str(len(got[0])), "data.n_val_objects": str(len(got[1]))})
    log = Log()
    _training_caption_ids(tracker(params), model, ids, ids, log)
    assert log.warnings == [] and f"{len(got[1])} captioned validation galaxies" in log.infos[0]
