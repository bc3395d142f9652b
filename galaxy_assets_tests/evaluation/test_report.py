"""evaluate(): every method on every target; the result's JSON; the Markdown + PNG report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from galaxy_assets.evaluation.errors import EvaluationError
from galaxy_assets.evaluation.labels import default_targets, labels_from_truth
from galaxy_assets.evaluation.report import (
    METHODS,
    EvaluationResult,
    evaluate,
    example_ids,
    write_report,
)


def _run(world, **kw):
    labels = labels_from_truth(world.truth)
    args = dict(
        search_fn=world.search_fn(noise=0.3),
        rerank_fn=lambda q, ids: list(ids),
        image_embeddings=world.embeddings,
        n_boot=100,
        n_random=5,
        versions={"table_version": 7, "aligner_version": "3"},
    )
    args.update(kw)
    return labels, evaluate(labels, **args)


def test_evaluate_scores_every_target_and_method(world):
    _, res = _run(world)
    targets = list(default_targets())
    assert res.target_names == targets
    assert res.methods == list(METHODS)
    for t in targets:
        for m in METHODS:
            s = res.score(t, m)
            assert s is not None, (t, m)
            assert set(s.ndcg) == {10, 100}
            assert len(s.curve) == 100
            assert np.all(np.diff(s.curve) >= 0)  # a cumulative count
        sem, rnd = res.ndcg(t, "semantic"), res.ndcg(t, "random")
        assert sem > rnd + 0.3, (t, sem, rnd)
        # re-ranking with the identity changes nothing
        assert res.ndcg(t, "semantic_rerank") == pytest.approx(sem)
        assert res.score(t, "semantic").query == default_targets()[t].primary_query
        assert res.score(t, "semantic").ndcg[10].over == "galaxies"
        assert res.score(t, "image_similarity").ndcg[10].over == "queries"
        assert res.score(t, "image_similarity").n_queries >= 3
        assert res.score(t, "random").n_queries == 5
    # every phrasing of every target, for both text methods
    assert len(res.phrasings) == 2 * sum(len(t.queries) for t in default_targets().values())
    assert res.versions == {"table_version": "7", "aligner_version": "3"}
    assert "image_queries" in res.targets["spirals"]


def test_evaluate_is_reproducible(world):
    _, a = _run(world)
    _, b = _run(world)
    da, db = a.to_dict(), b.to_dict()
    da.pop("created_at"), db.pop("created_at")
    da["summary"].pop("created_at"), db["summary"].pop("created_at")
    assert da == db


def test_result_json_round_trip(world, tmp_path: Path):
    _, res = _run(world)
    path = tmp_path / "r.json"
    text = res.to_json(path)
    json.loads(text)  # strict JSON: no NaN
    back = EvaluationResult.from_json(path)
    assert back.to_dict() == res.to_dict()
    assert EvaluationResult.from_json(text).to_dict() == res.to_dict()
    summary = back.summary()
    assert set(summary["targets"]["lenses"]["semantic"]) == {
        "ndcg@10",
        "ndcg@10_std",
        "recall@100",
        "targets_in_top_100",
    }
    assert summary["versions"]["table_version"] == "7"
    lens_labels = summary["labels"]["lenses"]  # which labels the figures are on
    assert lens_labels["fingerprint"] == res.labels["lenses"].fingerprint
    assert lens_labels["n_candidates"] == res.labels["lenses"].n_candidates
    flat = back.flat_metrics()
    assert "spirals/semantic/ndcg_at_10" in flat
    assert all(math.isfinite(v) for v in flat.values())
    with pytest.raises(EvaluationError, match="schema_version"):
        EvaluationResult.from_dict({"schema_version": 99})


def test_quality_bar_marks_failures(world):
    # a search that ignores the query (the same ranking for every target) loses to image
    # similarity, and a re-ranker that reverses the top 100 lowers nDCG@10
    labels = labels_from_truth(world.truth)
    order = world.object_ids[np.random.default_rng(0).permutation(world.object_ids.size)]
    res = evaluate(
        labels,
        search_fn=lambda qs, k: [order[:k].tolist() for _ in qs],
        rerank_fn=lambda q, ids: ids[::-1],
        image_embeddings=world.embeddings,
        n_boot=50,
        n_random=3,
    )
    checks = {q.target: q for q in res.quality_bar()}
    assert checks["spirals"].beats_image is False
    assert checks["spirals"].meets_bar is False
    assert checks["edge_on_discs"].meets_bar is None  # no bar set for it
    assert checks["spirals"].passed is False
    assert any("image similarity" in r for r in checks["spirals"].reasons())
    # where reversing the top 100 lowers a target, the reason gives the change's paired spread
    lowered = [q for q in checks.values() if q.rerank_not_lower is False]
    assert lowered
    for q in lowered:
        assert q.rerank_change_std > 0.0
        (why,) = [r for r in q.reasons() if r.startswith("re-ranking lowers")]
        change = q.semantic_rerank - q.semantic
        assert f"a change of {change:+.3f}; paired bootstrap σ {q.rerank_change_std:.3f}" in why
    # a good search with an identity re-ranker passes where it beats image similarity
    _, good = _run(world, search_fn=world.search_fn(noise=0.05))
    gchecks = {q.target: q for q in good.quality_bar()}
    for t in ("lenses", "rings"):  # binary: a near-perfect search puts every positive first
        assert gchecks[t].semantic > 0.95
        assert gchecks[t].beats_image is True
        assert gchecks[t].rerank_not_lower is True
        # an identity re-ranker changes no resample: the paired spread is exactly 0
        assert gchecks[t].rerank_change_std == 0.0
    assert gchecks["lenses"].passed is True


def test_short_result_lists_are_noted(world):
    labels = labels_from_truth(world.truth)
    res = evaluate(
        labels,
        search_fn=lambda qs, k: [world.object_ids[:5].tolist() for _ in qs],
        n_boot=20,
        n_random=2,
        targets=["rings"],
    )
    assert res.target_names == ["rings"]
    assert any("in the 5 results the search returned" in n for n in res.notes)
    assert res.score("rings", "semantic").n_ranked == 5


def test_sparse_labels_are_searched_deep_enough():
    """Labels of a few per cent of the survey (a vote catalogue): fetch_k results hold too
    few labelled galaxies, so the rankings are asked again deeper, and score as a full
    ranking does."""
    from galaxy_assets_tests.evaluation.conftest import make_world

    world = make_world(n=3000, seed=3)
    keep = np.random.default_rng(0).random(world.truth.height) < 0.05
    sparse = labels_from_truth(world.truth.filter(pl.Series(keep)))
    asked = []

    def search(queries, k):
        asked.append(k)
        return world.search_fn(noise=0.3)(queries, k)

    n = world.object_ids.size
    deep = evaluate(sparse, search_fn=search, universe=world.object_ids.tolist(), fetch_k=150,
                    n_boot=20, n_random=2, targets=["spirals"])
    full = evaluate(sparse, search_fn=world.search_fn(noise=0.3),
                    universe=world.object_ids.tolist(), fetch_k=n, n_boot=20, n_random=2,
                    targets=["spirals"])
    assert asked[0] == 150 and max(asked) > 150
    got, want = deep.score("spirals", "semantic"), full.score("spirals", "semantic")
    assert got.ndcg_at(100) == pytest.approx(want.ndcg_at(100))
    assert got.recall[100] == pytest.approx(want.recall[100]) and not deep.notes


def test_universe_restricts_every_candidate_set(world):
    labels = labels_from_truth(world.truth)
    half = world.object_ids[::2].tolist()
    res = evaluate(labels, search_fn=world.search_fn(), n_boot=20, n_random=2, universe=half)
    assert res.targets["lenses"]["n_candidates"] == len(half)
    ranked = res.ranking_ids("lenses", "semantic")
    assert ranked and set(ranked) <= set(half)


def test_evaluate_argument_errors(world):
    labels = labels_from_truth(world.truth)
    with pytest.raises(EvaluationError, match="give search_fn"):
        evaluate(labels, rerank_fn=lambda q, ids: ids)
    with pytest.raises(EvaluationError, match="fetch_k"):
        evaluate(labels, search_fn=world.search_fn(), fetch_k=50)
    with pytest.raises(EvaluationError, match="no labels for targets"):
        evaluate(labels, targets=["unicorns"])
    with pytest.raises(EvaluationError, match="k_list"):
        evaluate(labels, k_list=(0, 10))


def test_write_report_markdown_plots_and_grids(world, tmp_path: Path):
    _, res = _run(world)
    ids = example_ids(res, "spirals", n=6)
    assert ids == res.ranking_ids("spirals", "semantic")[:6]
    pictures = [np.full((16, 16, 3), 40 * i, dtype=np.uint8) for i in range(len(ids))]
    files = write_report(
        res,
        tmp_path / "report",
        {"spirals": pictures},
        extra_sections=["## Champion gate\n\nfirst champion"],
    )
    text = files.markdown.read_text()
    assert text == files.text
    for t in res.target_names:
        assert f"| {t} |" in text
    for label in ("semantic search", "semantic + VLM re-ranking", "image similarity", "random"):
        assert label in text
    assert "## Quality bar" in text and "0.941" in text and "0.015" in text
    assert "| re-ranking change |" in text and "+0.000 ± 0.000" in text  # the identity re-ranker
    assert "Sensitivity to the query" in text and "visible spiral arms" in text
    assert "| table_version | 7 |" in text
    assert "## Champion gate" in text
    assert "![spirals](grids/spirals.png)" in text
    for p in [*files.plots.values(), *files.grids.values()]:
        assert p.is_file()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert set(files.plots) == {"ndcg", "targets_in_top_k"}
    assert EvaluationResult.from_json(files.json).to_dict() == res.to_dict()
    with pytest.raises(EvaluationError, match="no image_similarity ranking"):
        example_ids(res, "spirals", method="image_similarity")


def test_report_shows_the_label_ceiling_beside_the_bar(world, tmp_path: Path):
    from galaxy_assets_tests.evaluation.test_labels import _with_visibility

    labels = labels_from_truth(_with_visibility(world))
    order = world.object_ids[np.random.default_rng(1).permutation(world.object_ids.size)]
    res = evaluate(
        labels,
        search_fn=lambda qs, k: [order[:k].tolist() for _ in qs],
        n_boot=20,
        n_random=2,
    )
    ceiling = labels["spirals"].label_ceiling(10)
    assert res.targets["spirals"]["label_ceiling_ndcg@10"] == pytest.approx(ceiling)
    assert res.targets["lenses"]["label_ceiling_ndcg@10"] == 1.0
    spirals = {q.target: q for q in res.quality_bar()}["spirals"]
    assert spirals.meets_bar is False and spirals.label_ceiling == pytest.approx(ceiling)
    assert any(f"at most about {ceiling:.3f}" in r for r in spirals.reasons())
    text = write_report(res, tmp_path / "report", {}).text
    assert "label ceiling" in text and f"{ceiling:.3f}" in text
    assert EvaluationResult.from_json(res.to_json()).to_dict() == res.to_dict()


def test_a_target_with_no_relevant_galaxy_is_not_called_a_failure(world, tmp_path):
    """A survey with no lens: nDCG is undefined, so the lenses bar cannot be checked (it was
    reported as FAIL, "semantic n/a < bar"); a vote target with no relevant galaxy has no label
    ceiling, and the report still writes (a NaN ceiling broke its JSON)."""
    import polars as pl

    from galaxy_assets.evaluation.labels import EvaluationLabels, TargetLabels

    truth = world.truth.with_columns(pl.lit(False).alias("is_lens"))
    res = evaluate(labels_from_truth(truth), search_fn=world.search_fn(),
                   image_embeddings=world.embeddings, n_boot=20, n_random=2)
    lenses = {q.target: q for q in res.quality_bar()}["lenses"]
    assert lenses.meets_bar is None and lenses.passed is None and lenses.reasons() == []
    assert res.summary()["quality_bar"]["lenses"] is None

    target = default_targets()["mergers"]
    ids = np.array([f"g{i}" for i in range(50)])
    quiet = TargetLabels(target, ids, np.zeros(50), "mock truth tables", 0,
                         expected=np.full(50, 0.02))
    assert quiet.label_ceiling(10) is None
    none = evaluate(EvaluationLabels({"mergers": quiet}),
                    search_fn=lambda qs, k: [ids[:k].tolist()] * len(qs), n_boot=10, n_random=2)
    none.to_json(tmp_path / "evaluation.json")  # no NaN in the JSON
    assert json.loads((tmp_path / "evaluation.json").read_text())["targets"]["mergers"][
        "label_ceiling_ndcg@10"] is None


def test_the_quality_verdict_names_targets_it_could_not_check(world, tmp_path):
    """A target with nothing checkable (no lens in the survey: nDCG undefined) is neither a
    pass nor a failure; the report said "Every target passes." over it."""
    truth = world.truth.with_columns(pl.lit(False).alias("is_lens"))
    labels = labels_from_truth(truth)
    kw = dict(search_fn=world.search_fn(noise=0.05), rerank_fn=lambda q, ids: list(ids),
              image_embeddings=world.embeddings, n_boot=20, n_random=2)
    res = evaluate(labels, targets=["lenses", "rings"], **kw)
    assert res.summary()["quality_bar"] == {"lenses": None, "rings": True}
    text = write_report(res, tmp_path / "mixed", {}).text
    assert "Every target passes." not in text
    assert ("Every checked target passes; not checkable: lenses (no relevant galaxy: nDCG@10 "
            "undefined).") in text
    # nothing checkable at all: said so, not "passes"
    none = evaluate(labels, targets=["lenses"], **kw)
    assert none.summary()["quality_bar"] == {"lenses": None}
    text = write_report(none, tmp_path / "none", {}).text
    assert "target passes." not in text
    assert "No target could be checked: lenses (no relevant galaxy: nDCG@10 undefined)." in text
    # every target checked and passing: the plain sentence
    both = evaluate(labels_from_truth(world.truth), targets=["lenses", "rings"], **kw)
    assert both.summary()["quality_bar"] == {"lenses": True, "rings": True}
    assert "Every target passes." in write_report(both, tmp_path / "all", {}).text
