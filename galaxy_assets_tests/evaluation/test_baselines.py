"""Baselines: image similarity in the raw encoder space, random rankings, the text plumbing."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from galaxy_assets.evaluation.baselines import (
    embedding_matrix,
    image_similarity_rankings,
    random_rankings,
    rerank_ranking,
    run_search,
    select_query_galaxies,
)
from galaxy_assets.evaluation.errors import EvaluationError
from galaxy_assets.evaluation.labels import TargetLabels, default_targets, labels_from_truth
from galaxy_assets.evaluation.metrics import ranking_metrics


def _mean_ndcg10(labels: TargetLabels, rankings, excludes=None) -> float:
    vals = [
        ranking_metrics(
            r, labels.relevance, (10,), exclude=None if excludes is None else int(excludes[i])
        ).ndcg[10]
        for i, r in enumerate(rankings)
    ]
    return float(np.nanmean(vals))


def test_image_similarity_beats_random_on_clustered_embeddings(world):
    labels = labels_from_truth(world.truth)
    ids, x = embedding_matrix(world.embeddings)
    for name in ("spirals", "lenses", "rings"):
        tl = labels[name]
        sim = image_similarity_rankings(tl, ids, x, depth=100, seed=1)
        assert sim.rankings, name
        img = _mean_ndcg10(tl, sim.rankings, sim.query_indices)
        rnd = _mean_ndcg10(tl, random_rankings(tl, n_draws=20, seed=1))
        assert img > rnd + 0.2, (name, img, rnd)


def test_image_similarity_excludes_the_query_and_ranks_by_cosine():
    # four galaxies on a circle: 0 and 1 close, 2 further, 3 opposite
    angles = np.array([0.0, 0.1, 0.5, np.pi])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    ids = np.array(["q", "a", "b", "c"])
    t = default_targets()["lenses"]
    labels = TargetLabels(t, ids, np.array([1.0, 0.0, 0.0, 0.0]), "test")
    sim = image_similarity_rankings(labels, ids, x, depth=10, min_queries=0)
    assert sim.query_indices.tolist() == [0]
    assert sim.rankings[0].tolist() == [1, 2, 3]  # itself excluded, nearest first
    # batches of one query give the same rankings as one batch
    again = image_similarity_rankings(labels, ids, x, depth=10, min_queries=0, batch_size=1)
    assert [r.tolist() for r in again.rankings] == [r.tolist() for r in sim.rankings]


def test_only_candidates_with_embeddings_are_ranked(world):
    tl = labels_from_truth(world.truth)["rings"]
    ids, x = embedding_matrix(world.embeddings)
    keep = np.arange(ids.size) % 2 == 0
    sim = image_similarity_rankings(tl, ids[keep], x[keep], depth=500)
    have = set(ids[keep].tolist())
    for r in sim.rankings:
        assert set(tl.object_ids[r].tolist()) <= have
    assert all(tl.object_ids[q] in have for q in sim.query_indices)


def test_query_selection_threshold_cap_and_fill():
    t = default_targets()["spirals"]
    rel = np.array([0.95, 0.91, 0.9, 0.8, 0.6, 0.4, 0.99, 0.2])
    labels = TargetLabels(t, np.array([f"o{i}" for i in range(rel.size)]), rel, "test")
    sel = select_query_galaxies(labels, threshold=0.9, max_queries=10, min_queries=0)
    assert sorted(sel.indices.tolist()) == [0, 1, 6]  # strictly above 0.9
    capped = select_query_galaxies(labels, threshold=0.9, max_queries=2, min_queries=0, seed=3)
    assert capped.indices.size == 2 and set(capped.indices.tolist()) <= {0, 1, 6}
    assert (
        capped.indices.tolist()
        == select_query_galaxies(
            labels, threshold=0.9, max_queries=2, min_queries=0, seed=3
        ).indices.tolist()
    )
    filled = select_query_galaxies(labels, threshold=0.9, max_queries=10, min_queries=5)
    # two more, the most relevant below the threshold, and never below 0.5
    assert filled.indices.tolist()[3:] == [2, 3]
    assert filled.n_filled == 2 and filled.min_relevance == pytest.approx(0.8)
    assert "added down to relevance 0.80" in filled.describe()
    many = select_query_galaxies(labels, threshold=0.9, max_queries=10, min_queries=8)
    assert 5 not in many.indices.tolist() and 7 not in many.indices.tolist()


def test_embedding_matrix_checks(world):
    ids, x = embedding_matrix({"s1": world.embeddings.head(5), "s2": world.embeddings.slice(5)})
    assert ids.size == world.embeddings.height
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0)
    mixed = world.embeddings.with_columns(
        pl.when(pl.int_range(pl.len()) < 3)
        .then(pl.lit("other"))
        .otherwise(pl.col("encoder"))
        .alias("encoder")
    )
    with pytest.raises(EvaluationError, match="mixes encoders"):
        embedding_matrix(mixed)
    with pytest.raises(EvaluationError, match="no rows"):
        embedding_matrix(world.embeddings.head(0))
    with pytest.raises(EvaluationError, match="lacks column 'vector'"):
        embedding_matrix(world.embeddings.drop("vector"))
    bad = pl.DataFrame(
        [
            pl.Series("object_id", ["a", "b"]),
            pl.Series(
                "vector", np.array([[0, 0], [1, 2]], np.float32), dtype=pl.Array(pl.Float32, 2)
            ),
        ]
    )
    ids2, x2 = embedding_matrix(bad)  # the zero vector is dropped
    assert ids2.tolist() == ["b"]


def test_random_rankings_are_seeded():
    t = default_targets()["lenses"]
    labels = TargetLabels(t, np.array([f"o{i}" for i in range(50)]), np.zeros(50), "t")
    a = random_rankings(labels, n_draws=3, depth=10, seed=5)
    b = random_rankings(labels, n_draws=3, depth=10, seed=5)
    assert [r.tolist() for r in a] == [r.tolist() for r in b]
    assert len({tuple(r.tolist()) for r in a}) == 3
    assert all(len(set(r.tolist())) == 10 for r in a)


def test_run_search_validates_the_callable():
    assert run_search(lambda qs, k: [["a", "b"] for _ in qs], ["x", "y", "x"], 5) == {
        "x": ["a", "b"],
        "y": ["a", "b"],
    }
    with pytest.raises(EvaluationError, match="1 result lists for 2 queries"):
        run_search(lambda qs, k: [["a"]], ["x", "y"], 5)
    with pytest.raises(EvaluationError, match="expected a list of object_ids"):
        run_search(lambda qs, k: ["abc" for _ in qs], ["x"], 5)

    def broken(qs, k):
        raise RuntimeError("index closed")

    with pytest.raises(EvaluationError, match="index closed"):
        run_search(broken, ["x"], 5)


def test_rerank_ranking():
    ranked = ["a", "b", "c", "d", "e"]
    assert rerank_ranking(lambda q, ids: ids[::-1], "q", ranked, 3) == ["c", "b", "a", "d", "e"]
    # a re-ranker that leaves out an id: it follows in its original place order
    assert rerank_ranking(lambda q, ids: ["c", "a"], "q", ranked, 3) == ["c", "a", "b", "d", "e"]
    with pytest.raises(EvaluationError, match="only reorder"):
        rerank_ranking(lambda q, ids: ["z"], "q", ranked, 3)
