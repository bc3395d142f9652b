"""Retrieval metrics: nDCG@k, recall@k, precision@k, targets found, and bootstrap uncertainties.

Definitions (one implementation each, used by every method and by the gate):

* **Candidate set.** For one target, the galaxies that carry a label (for a vote-fraction target,
  those with at least ``min_votes`` votes on its question; for a binary target, every galaxy).
  A method's ranking is a list of object_ids, possibly longer than k and possibly holding
  galaxies outside the candidate set: those have no label, so they are **dropped before the list
  is cut at k** (as if the method had searched the candidate set alone; the AION-Search paper
  searched its labelled sets only). Repeated ids keep their first position.
* **nDCG@k** = DCG@k / IDCG@k with DCG@k = Σ_{i=1..k} (2^{r_i} − 1) / log2(i + 1), r_i the
  relevance (in [0, 1]) of the i-th ranked candidate. IDCG@k is the DCG of the k most relevant
  galaxies of the whole candidate set (the best any method could do). It is NaN when the
  candidate set holds no relevant galaxy (IDCG = 0): the metric is undefined, not zero.
* **Target.** A galaxy with relevance ≥ :data:`TARGET_RELEVANCE` (0.5): a binary positive, or a
  galaxy most volunteers put in the class. Recall@k = targets in the top k / targets in the
  candidate set (NaN without targets); precision@k = targets in the top k / k (a list shorter
  than k counts its missing places as misses); "targets in top k" is the count itself.
* **Bootstrap.** Over queries (a method with several queries per target: the image-similarity
  baseline, random draws): resample the per-query values with replacement. Over labelled
  galaxies (a method with one query: semantic search): resample the candidate set with
  replacement; a galaxy drawn m times appears m times, in place, in the ranking and in the ideal
  ranking. Both are seeded and return the full-data value, the bootstrap mean and standard
  deviation, and the 16th/84th percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from galaxy_assets.evaluation.errors import EvaluationError

__all__ = [
    "TARGET_RELEVANCE",
    "Bootstrap",
    "RankingMetrics",
    "bootstrap_galaxies",
    "bootstrap_mean",
    "dcg",
    "finite_mean",
    "ndcg",
    "ndcg_at_k",
    "paired_change_std",
    "precision_at_k",
    "ranked_indices",
    "ranking_metrics",
    "recall_at_k",
    "summarize_samples",
    "targets_found",
]

TARGET_RELEVANCE = 0.5  # relevance at or above which a galaxy counts as a "target"


def finite_mean(values: Iterable[float]) -> float:
    """The mean of the finite values (NaN when there is none)."""
    a = np.asarray(list(values), dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


# --------------------------------------------------------------------------- nDCG
def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def dcg(ranked_relevance: np.ndarray | Sequence[float], k: int) -> float:
    """DCG@k with gain 2^r − 1 and discount 1/log2(i + 1) of relevances in rank order."""
    r = np.asarray(ranked_relevance, dtype=np.float64)[:k]
    return float(np.dot(np.exp2(r) - 1.0, _discounts(r.size)))


def ndcg(
    ranked_relevance: np.ndarray | Sequence[float], all_relevance: np.ndarray, k: int
) -> float:
    """nDCG@k of relevances in rank order against the ideal order of ``all_relevance`` (the
    whole candidate set); NaN when the candidate set holds nothing relevant."""
    _check_k(k)
    ideal = np.sort(np.asarray(all_relevance, dtype=np.float64))[::-1][:k]
    idcg = dcg(ideal, k)
    if idcg <= 0.0:
        return math.nan
    return dcg(ranked_relevance, k) / idcg


def _check_k(k: int) -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise EvaluationError(f"k={k!r}: a cut-off must be a positive integer")


def ranked_indices(ranked_ids: Iterable[str], index: Mapping[str, int]) -> np.ndarray:
    """Positions in the candidate set of a ranking's ids, in rank order: ids outside the
    candidate set are dropped (they have no label) and repeated ids keep their first place."""
    seen: set[int] = set()
    out: list[int] = []
    for oid in ranked_ids:
        j = index.get(str(oid))
        if j is not None and j not in seen:
            seen.add(j)
            out.append(j)
    return np.asarray(out, dtype=np.int64)


def _arrays(relevance: Mapping[str, float]) -> tuple[dict[str, int], np.ndarray]:
    ids = list(relevance)
    rel = np.asarray([float(relevance[i]) for i in ids], dtype=np.float64)
    if rel.size and (not np.isfinite(rel).all() or rel.min() < 0.0):
        raise EvaluationError("relevance values must be finite and non-negative")
    return {str(i): j for j, i in enumerate(ids)}, rel


def ndcg_at_k(ranked_ids: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """nDCG@k of a ranking of object_ids against ``relevance`` (object_id → relevance over the
    candidate set); ids outside the candidate set are dropped before the cut at k."""
    index, rel = _arrays(relevance)
    return ndcg(rel[ranked_indices(ranked_ids, index)], rel, k)


def targets_found(
    ranked_ids: Sequence[str],
    relevance: Mapping[str, float],
    k: int,
    threshold: float = TARGET_RELEVANCE,
) -> int:
    """Number of targets (relevance ≥ ``threshold``) among the top k labelled results."""
    _check_k(k)
    index, rel = _arrays(relevance)
    return int((rel[ranked_indices(ranked_ids, index)[:k]] >= threshold).sum())


def recall_at_k(
    ranked_ids: Sequence[str],
    relevance: Mapping[str, float],
    k: int,
    threshold: float = TARGET_RELEVANCE,
) -> float:
    """Targets in the top k / targets in the candidate set (NaN when there are none)."""
    _, rel = _arrays(relevance)
    total = int((rel >= threshold).sum())
    if total == 0:
        return math.nan
    return targets_found(ranked_ids, relevance, k, threshold) / total


def precision_at_k(
    ranked_ids: Sequence[str],
    relevance: Mapping[str, float],
    k: int,
    threshold: float = TARGET_RELEVANCE,
) -> float:
    """Targets in the top k / k."""
    return targets_found(ranked_ids, relevance, k, threshold) / k


# --------------------------------------------------------------------------- one ranking
@dataclass(frozen=True)
class RankingMetrics:
    """Every metric of one ranking (one query) of one target's candidate set."""

    ndcg: dict[int, float]
    recall: dict[int, float]
    precision: dict[int, float]
    found: dict[int, int]
    curve: np.ndarray  # targets among the first 1..curve_k results, shape (curve_k,)
    n_ranked: int  # labelled galaxies in the ranking (after dropping unlabelled ids)
    n_targets: int  # targets in the candidate set (the query galaxy itself left out)


def ranking_metrics(
    ranked: np.ndarray,
    relevance: np.ndarray,
    k_list: Sequence[int],
    *,
    threshold: float = TARGET_RELEVANCE,
    curve_k: int = 100,
    exclude: int | None = None,
    sorted_relevance: np.ndarray | None = None,
) -> RankingMetrics:
    """Metrics of ``ranked`` (candidate-set positions in rank order, from :func:`ranked_indices`)
    against ``relevance`` (the candidate set's relevances).

    ``exclude`` is the position of a query galaxy that cannot be its own result (image
    similarity): it is left out of the ideal ranking and of the target count.
    ``sorted_relevance`` (``relevance`` sorted in decreasing order) may be passed to save the
    sort when many rankings share one candidate set.
    """
    ranked = np.asarray(ranked, dtype=np.int64)
    srt = np.sort(relevance)[::-1] if sorted_relevance is None else sorted_relevance
    n_targets = int((relevance >= threshold).sum())
    if exclude is not None:
        r_ex = relevance[exclude]
        # remove one occurrence of the query's relevance from the descending list
        pos = int(np.searchsorted(-srt, -r_ex, side="left"))
        srt = np.delete(srt, pos)
        n_targets -= int(r_ex >= threshold)
        ranked = ranked[ranked != exclude]
    rel_ranked = relevance[ranked]
    hits = rel_ranked >= threshold
    out_ndcg: dict[int, float] = {}
    out_recall: dict[int, float] = {}
    out_precision: dict[int, float] = {}
    out_found: dict[int, int] = {}
    for k in k_list:
        _check_k(k)
        idcg = dcg(srt[:k], k)
        out_ndcg[k] = dcg(rel_ranked, k) / idcg if idcg > 0 else math.nan
        found = int(hits[:k].sum())
        out_found[k] = found
        out_recall[k] = found / n_targets if n_targets else math.nan
        out_precision[k] = found / k
    cum = np.cumsum(hits[:curve_k], dtype=np.int64)
    curve = np.zeros(curve_k, dtype=np.int64)
    curve[: cum.size] = cum
    if 0 < cum.size < curve_k:
        curve[cum.size :] = cum[-1]
    return RankingMetrics(
        ndcg=out_ndcg,
        recall=out_recall,
        precision=out_precision,
        found=out_found,
        curve=curve,
        n_ranked=int(ranked.size),
        n_targets=n_targets,
    )


# --------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class Bootstrap:
    """A metric's value on the full data and its bootstrap distribution's summary."""

    value: float  # the metric on the full data
    mean: float  # mean of the bootstrap replicates
    std: float  # their standard deviation: the uncertainty quoted as ±
    p16: float
    p84: float
    n_boot: int
    over: str  # "queries" or "galaxies" (what was resampled), "" when nothing was

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": _json_float(self.value),
            "mean": _json_float(self.mean),
            "std": _json_float(self.std),
            "p16": _json_float(self.p16),
            "p84": _json_float(self.p84),
            "n_boot": self.n_boot,
            "over": self.over,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Bootstrap:
        return cls(
            value=_from_json_float(data.get("value")),
            mean=_from_json_float(data.get("mean")),
            std=_from_json_float(data.get("std")),
            p16=_from_json_float(data.get("p16")),
            p84=_from_json_float(data.get("p84")),
            n_boot=int(data.get("n_boot", 0)),
            over=str(data.get("over", "")),
        )

    @classmethod
    def undefined(cls, over: str = "") -> Bootstrap:
        return cls(math.nan, math.nan, math.nan, math.nan, math.nan, 0, over)


def _json_float(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _from_json_float(v: Any) -> float:
    return math.nan if v is None else float(v)


def summarize_samples(value: float, samples: np.ndarray, over: str) -> Bootstrap:
    """Summarize bootstrap replicates (NaN replicates, e.g. a resample without any relevant
    galaxy, are left out)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return Bootstrap(value, math.nan, math.nan, math.nan, math.nan, 0, over)
    p16, p84 = np.percentile(s, [16.0, 84.0])
    std = float(s.std(ddof=1)) if s.size > 1 else 0.0
    return Bootstrap(value, float(s.mean()), std, float(p16), float(p84), int(s.size), over)


def _check_boot(n_boot: int) -> None:
    if not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise EvaluationError(f"n_boot={n_boot!r}: the number of bootstrap replicates must be ≥ 1")


def bootstrap_mean(values: Sequence[float] | np.ndarray, n_boot: int, seed: int) -> Bootstrap:
    """Bootstrap over queries: the mean of per-query values, resampled with replacement
    (queries whose value is NaN are left out first)."""
    _check_boot(n_boot)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Bootstrap.undefined("queries")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, v.size, size=(n_boot, v.size))
    return summarize_samples(float(v.mean()), v[draws].mean(axis=1), "queries")


_PREFIX_EXTRA = 64  # galaxies beyond 4k read per list before the exact fallback is needed


def _dcg_of_repeats(values: np.ndarray, counts: np.ndarray, k: int, disc: np.ndarray) -> np.ndarray:
    """Per row b, DCG@k of ``np.repeat(values, counts[b])`` (vectorised over rows)."""
    b, length = counts.shape
    if b == 0 or length == 0:
        return np.zeros(b)
    flat = np.repeat(np.tile(values, b), counts.ravel())
    rows = counts.sum(axis=1)
    starts = np.concatenate(([0], np.cumsum(rows)[:-1]))
    pos = np.arange(k)
    valid = pos[None, :] < np.minimum(rows, k)[:, None]
    gains = np.zeros((b, k))
    gains[valid] = np.exp2(flat[(starts[:, None] + pos[None, :])[valid]]) - 1.0
    return gains @ disc[:k]


def bootstrap_galaxies(
    rankings: Sequence[np.ndarray],
    relevance: np.ndarray,
    k: int,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """nDCG@k of each ranking over ``n_boot`` resamples of the candidate set, shape
    ``(n_boot, len(rankings))``.

    Every replicate draws N galaxies with replacement from the N candidates (one draw shared by
    all rankings, so differences between rankings are paired); a galaxy drawn m times occupies m
    consecutive places wherever it stands in a ranking and in the ideal ranking, and one never
    drawn disappears. A replicate with no relevant galaxy gives NaN.

    Only the galaxies that can reach a top k matter: the first 4k + 64 of each ranking and of the
    ideal order. Their draw counts are drawn from the exact law of the bootstrap counts restricted
    to them, so the cost does not grow with N; a replicate whose prefixes hold fewer than k draws
    (rare) gets the other galaxies' counts drawn too and is scored in full.
    """
    _check_k(k)
    _check_boot(n_boot)
    rel = np.asarray(relevance, dtype=np.float64)
    n = rel.size
    out = np.full((n_boot, len(rankings)), math.nan)
    if n == 0:
        return out
    ranks = [np.asarray(r, dtype=np.int64) for r in rankings]
    order = np.argsort(-rel, kind="stable")
    disc = _discounts(k)
    prefix = 4 * k + _PREFIX_EXTRA
    top = order[:prefix]
    heads = [r[:prefix] for r in ranks]
    u = np.unique(np.concatenate([top, *heads]))  # the galaxies read, sorted
    rng = np.random.default_rng(seed)
    # draws landing on the galaxies read ~ Binomial(N, |u|/N); given their number, they are
    # uniform over u: the exact law of the bootstrap counts restricted to u
    in_u = rng.binomial(n, u.size / n, size=n_boot) if u.size < n else np.full(n_boot, n)
    picks = rng.integers(0, u.size, size=int(in_u.sum()))
    row = np.repeat(np.arange(n_boot), in_u)
    cu = np.bincount(row * u.size + picks, minlength=n_boot * u.size).reshape(n_boot, u.size)

    def cols(idx: np.ndarray) -> np.ndarray:
        return cu[:, np.searchsorted(u, idx)]

    c_top = cols(top)
    idcg = _dcg_of_repeats(rel[top], c_top, k, disc)
    short = (c_top.sum(axis=1) < k) & (top.size < n)
    dcgs = []
    for r, h in zip(ranks, heads, strict=True):
        c_h = cols(h)
        dcgs.append(_dcg_of_repeats(rel[h], c_h, k, disc))
        short |= (c_h.sum(axis=1) < k) & (h.size < r.size)
    for b in np.flatnonzero(short & (u.size < n)):  # rare: score this replicate in full
        full = np.zeros(n, dtype=np.int64)
        full[u] = cu[b]
        rest = np.setdiff1d(np.arange(n), u, assume_unique=True)
        full[rest] = np.bincount(
            rng.integers(0, rest.size, size=n - int(in_u[b])), minlength=rest.size
        )
        idcg[b] = _dcg_of_repeats(rel[order], full[order][None, :], k, disc)[0]
        for m, r in enumerate(ranks):
            dcgs[m][b] = _dcg_of_repeats(rel[r], full[r][None, :], k, disc)[0]
    ok = idcg > 0.0
    for m, d in enumerate(dcgs):
        out[ok, m] = d[ok] / idcg[ok]
    return out


def paired_change_std(
    first: np.ndarray, second: np.ndarray, relevance: np.ndarray, k: int, n_boot: int, seed: int
) -> float:
    """Standard deviation of nDCG@k(second) - nDCG@k(first) over paired bootstrap resamples of
    the galaxies (:func:`bootstrap_galaxies`: both rankings scored on each resample); NaN when
    fewer than two resamples hold a relevant galaxy."""
    samples = bootstrap_galaxies([first, second], relevance, k, n_boot, seed)
    diff = samples[:, 1] - samples[:, 0]
    diff = diff[np.isfinite(diff)]
    return float(diff.std(ddof=1)) if diff.size >= 2 else math.nan
