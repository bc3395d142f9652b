"""Retrieval metrics: nDCG against scikit-learn, precision/recall by hand, the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from galaxy_assets.evaluation.errors import EvaluationError
from galaxy_assets.evaluation.metrics import (
    bootstrap_galaxies,
    bootstrap_mean,
    dcg,
    ndcg,
    ndcg_at_k,
    precision_at_k,
    ranked_indices,
    ranking_metrics,
    recall_at_k,
    targets_found,
)


@pytest.mark.parametrize("binary", [False, True])
def test_ndcg_matches_sklearn_with_exponential_gain(binary):
    """sklearn's ndcg_score uses linear gain r: feeding it 2^r − 1 must give our nDCG."""
    rng = np.random.default_rng(1 + binary)
    for trial in range(60):
        n = int(rng.integers(2, 80))
        rel = (rng.random(n) < 0.2).astype(float) if binary else rng.random(n)
        rel[rng.random(n) < 0.3] = 0.0
        if rel.max() == 0:
            rel[0] = 1.0
        scores = rng.permutation(n).astype(float)  # tie-free
        ids = [f"o{i}" for i in range(n)]
        ranked = [ids[i] for i in np.argsort(-scores)]
        relevance = dict(zip(ids, rel.tolist(), strict=True))
        for k in (1, 3, 10, n, n + 7):
            ours = ndcg_at_k(ranked, relevance, k)
            theirs = ndcg_score([np.exp2(rel) - 1.0], [scores], k=k)
            assert ours == pytest.approx(theirs, abs=1e-12), (trial, k)


def test_ndcg_hand_case_and_gain():
    # ranks: relevance 1, 0, 0.5; ideal: 1, 0.5, 0
    g_half = 2**0.5 - 1
    expected_dcg = 1.0 + 0.0 + g_half / 2.0  # log2(4) = 2
    ideal = 1.0 + g_half / math.log2(3)
    rel = {"a": 1.0, "b": 0.0, "c": 0.5}
    assert dcg([1.0, 0.0, 0.5], 3) == pytest.approx(expected_dcg)
    assert ndcg_at_k(["a", "b", "c"], rel, 3) == pytest.approx(expected_dcg / ideal)
    assert ndcg_at_k(["a", "c", "b"], rel, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "c", "a"], rel, 1) == 0.0


def test_unlabelled_ids_are_dropped_before_the_cut():
    rel = {"a": 1.0, "b": 0.0, "c": 1.0}
    # "x" and "y" have no label: the top 2 labelled results are a, c (perfect)
    assert ndcg_at_k(["x", "a", "y", "c", "b"], rel, 2) == pytest.approx(1.0)
    assert targets_found(["x", "a", "y", "c", "b"], rel, 2) == 2
    # a repeated id keeps its first place only
    assert list(ranked_indices(["a", "a", "b"], {"a": 0, "b": 1})) == [0, 1]


def test_ideal_uses_the_whole_candidate_set():
    rel = {f"o{i}": 0.0 for i in range(50)} | {"hit1": 1.0, "hit2": 1.0}
    # the ranking finds one of two relevant galaxies at rank 1: DCG 1, ideal 1 + 1/log2(3)
    assert ndcg_at_k(["hit1", "o0", "o1"], rel, 10) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_ndcg_is_nan_without_relevant_galaxies():
    assert math.isnan(ndcg_at_k(["a", "b"], {"a": 0.0, "b": 0.0}, 10))
    assert math.isnan(ndcg(np.array([0.0]), np.zeros(3), 5))
    with pytest.raises(EvaluationError, match="positive integer"):
        ndcg_at_k(["a"], {"a": 1.0}, 0)


def test_precision_recall_targets_by_hand():
    # targets: relevance ≥ 0.5 → t1, t2, t3 (0.5 counts), not n1 (0.49)
    rel = {"t1": 1.0, "t2": 0.8, "t3": 0.5, "n1": 0.49, "n2": 0.0, "n3": 0.1}
    ranking = ["t1", "n1", "t3", "n2", "t2", "n3"]
    assert targets_found(ranking, rel, 1) == 1
    assert targets_found(ranking, rel, 3) == 2
    assert precision_at_k(ranking, rel, 3) == pytest.approx(2 / 3)
    assert recall_at_k(ranking, rel, 3) == pytest.approx(2 / 3)
    assert recall_at_k(ranking, rel, 10) == pytest.approx(1.0)
    # a list shorter than k counts its missing places as misses
    assert precision_at_k(ranking, rel, 10) == pytest.approx(3 / 10)
    assert math.isnan(recall_at_k(["a"], {"a": 0.2}, 10))


def test_ranking_metrics_curve_and_exclusion():
    rel = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    m = ranking_metrics(np.array([2, 1, 4, 3]), rel, (1, 2, 4), curve_k=6)
    assert m.found == {1: 1, 2: 1, 4: 2}
    assert m.curve.tolist() == [1, 1, 2, 2, 2, 2]  # padded with the last value
    assert m.n_targets == 3
    # query galaxy 0 is excluded: it leaves the ideal ranking and the target count
    ex = ranking_metrics(np.array([2, 4, 1, 3]), rel, (2,), exclude=0)
    assert ex.n_targets == 2
    assert ex.ndcg[2] == pytest.approx(1.0)
    assert ex.recall[2] == pytest.approx(1.0)
    # without the exclusion the same ranking is not perfect at 3 (one target is never found)
    full = ranking_metrics(np.array([2, 4, 1, 3]), rel, (3,))
    assert full.ndcg[3] < 1.0


def test_bootstrap_mean_is_seeded_and_sensible():
    values = np.random.default_rng(0).random(40)
    a = bootstrap_mean(values, 500, seed=3)
    b = bootstrap_mean(values, 500, seed=3)
    c = bootstrap_mean(values, 500, seed=4)
    assert a == b
    assert a.std != c.std
    assert a.value == pytest.approx(values.mean())
    assert a.p16 < a.value < a.p84
    # the bootstrap σ of a mean is close to the standard error
    assert a.std == pytest.approx(values.std(ddof=1) / np.sqrt(values.size), rel=0.2)
    assert a.over == "queries"
    nan_only = bootstrap_mean([math.nan, math.nan], 10, 0)
    assert math.isnan(nan_only.value)


def test_bootstrap_over_galaxies_is_seeded_and_paired():
    rng = np.random.default_rng(5)
    rel = rng.random(300) ** 3
    good = np.argsort(-rel - rng.normal(0, 0.05, 300))[:100]
    bad = rng.permutation(300)[:100]
    s1 = bootstrap_galaxies([good, bad], rel, 10, 200, seed=11)
    s2 = bootstrap_galaxies([good, bad], rel, 10, 200, seed=11)
    assert np.array_equal(s1, s2, equal_nan=True)
    assert s1.shape == (200, 2)
    assert np.nanmean(s1[:, 0]) > np.nanmean(s1[:, 1])
    # identical rankings give identical replicates: a paired difference of exactly zero
    same = bootstrap_galaxies([good, good.copy()], rel, 10, 50, seed=1)
    assert np.all(same[:, 0] == same[:, 1])
    # a perfect ranking stays perfect in every resample (distinct relevances)
    perfect = np.argsort(-rel)
    assert np.allclose(bootstrap_galaxies([perfect], rel, 10, 30, seed=2), 1.0)


def _naive_bootstrap(rankings, rel, k, n_boot, seed):
    """The bootstrap written out: draw N indices, expand each galaxy by its count, score."""
    rng = np.random.default_rng(seed)
    n = rel.size
    out = np.full((n_boot, len(rankings)), np.nan)
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n)
        ideal = np.repeat(rel, counts)
        for m, r in enumerate(rankings):
            out[b, m] = ndcg(np.repeat(rel[r], counts[r]), ideal, k)
    return out


@pytest.mark.parametrize("prefix_extra", [64, -37])  # -37: prefixes of 3, the fallback path
def test_bootstrap_over_galaxies_agrees_with_the_naive_bootstrap(monkeypatch, prefix_extra):
    import galaxy_assets.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "_PREFIX_EXTRA", prefix_extra)
    rng = np.random.default_rng(8)
    rel = np.where(rng.random(400) < 0.1, rng.random(400), 0.0)
    noisy = np.argsort(-rel - rng.normal(0, 0.3, 400))
    rankings = [noisy[:150], rng.permutation(400)[:150]]
    k, n_boot = 10, 1500
    fast = bootstrap_galaxies(rankings, rel, k, n_boot, seed=1)
    slow = _naive_bootstrap(rankings, rel, k, n_boot, seed=2)
    for m in range(2):
        a, b = fast[:, m], slow[:, m]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        se = np.sqrt(a.var() / a.size + b.var() / b.size)
        assert abs(a.mean() - b.mean()) < 4 * se + 1e-9, (m, a.mean(), b.mean())
        assert a.std() == pytest.approx(b.std(), rel=0.12)
