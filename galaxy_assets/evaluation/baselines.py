"""The baselines semantic search is measured against, and the text-method plumbing.

* **Image similarity** in the raw encoder space, following the AION-Search paper: for each
  target, the query galaxies are its confident members (vote fraction > 0.9, or every positive
  of a binary target, e.g. every catalogue lens); each ranks all other labelled galaxies by
  cosine similarity of their raw image embeddings, itself excluded, and the target's figures are
  averaged over queries. At most ``max_queries`` query galaxies (sampled with a seed) bound the
  cost; similarities are computed one matrix product per batch of queries. When fewer than
  ``min_queries`` galaxies pass the threshold (a rare class on a small survey), the most
  relevant remaining targets (relevance ≥ 0.5) fill the set up to ``min_queries``, and the
  selection records how many were added and the lowest relevance used.
* **Random** rankings of the candidate set (seeded), several draws averaged.
* **Semantic search** and **semantic search + VLM re-ranking** come in as callables, so this
  package never imports the index: ``search_fn(queries, k) -> list[list[object_id]]`` (one
  batched call) and ``rerank_fn(query, ranked_ids) -> ranked_ids``.

Plain numpy + polars; knows nothing of Dagster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from galaxy_assets.evaluation.errors import EvaluationError
from galaxy_assets.evaluation.labels import TargetLabels
from galaxy_assets.evaluation.metrics import TARGET_RELEVANCE

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_QUERY_THRESHOLD",
    "ImageSimilarity",
    "QuerySelection",
    "RerankFn",
    "SearchFn",
    "embedding_matrix",
    "image_similarity_rankings",
    "random_rankings",
    "rerank_ranking",
    "run_search",
    "select_query_galaxies",
]

SearchFn = Callable[[list[str], int], list[list[str]]]
RerankFn = Callable[[str, list[str]], list[str]]

IMAGE_QUERY_THRESHOLD = 0.9  # vote fraction above which a galaxy is an image query (the paper)


# --------------------------------------------------------------------------- embeddings
def embedding_matrix(
    image_embeddings: pl.DataFrame | Sequence[pl.DataFrame] | Mapping[str, pl.DataFrame],
) -> tuple[np.ndarray, np.ndarray]:
    """``(object_ids, unit vectors)`` from ``image_embeddings`` frames (object_id, encoder,
    vector ``Array(Float32, D)``), one frame or the per-shard frames of the asset.

    All rows must come from one encoder; repeated object_ids keep their first vector; rows
    whose vector is not finite or is zero are dropped (logged). Vectors are re-normalised.
    """
    if isinstance(image_embeddings, pl.DataFrame):
        frames = [image_embeddings]
    elif isinstance(image_embeddings, Mapping):
        frames = list(image_embeddings.values())
    else:
        frames = list(image_embeddings)
    frames = [f for f in frames if f.height]
    if not frames:
        raise EvaluationError(
            "image_embeddings holds no rows: materialize image_embeddings "
            "first, or leave the image-similarity baseline out"
        )
    for f in frames:
        for c in ("object_id", "vector"):
            if c not in f.columns:
                raise EvaluationError(
                    f"image_embeddings frame lacks column {c!r}; expected "
                    "object_id, encoder, vector (one row per galaxy)"
                )
    frame = pl.concat(
        [
            f.select([c for c in ("object_id", "encoder", "vector") if c in f.columns])
            for f in frames
        ],
        how="diagonal_relaxed",
    )
    if "encoder" in frame.columns:
        encoders = frame["encoder"].drop_nulls().unique().to_list()
        if len(encoders) > 1:
            raise EvaluationError(
                f"image_embeddings mixes encoders {sorted(encoders)}: the "
                "image-similarity baseline needs one encoder's space; "
                "re-materialize image_embeddings with one encoder"
            )
    n = frame.height
    frame = frame.unique(subset="object_id", keep="first", maintain_order=True)
    if frame.height < n:
        log.warning("image_embeddings: %d repeated object_ids dropped", n - frame.height)
    dtype = frame.schema["vector"]
    if isinstance(dtype, pl.Array):
        x = frame["vector"].to_numpy().astype(np.float32, copy=False)
    elif isinstance(dtype, pl.List):
        lengths = frame["vector"].list.len().unique().to_list()
        if len(lengths) != 1:
            raise EvaluationError(f"image_embeddings vectors have different lengths {lengths}")
        x = np.asarray(frame["vector"].to_list(), dtype=np.float32)
    else:
        raise EvaluationError(
            f"image_embeddings vector column is {dtype}; expected Array(Float32, D)"
        )
    x = np.asarray(x, dtype=np.float32).reshape(frame.height, -1)
    norms = np.linalg.norm(x, axis=1)
    good = np.isfinite(x).all(axis=1) & (norms > 0)
    if not good.all():
        log.warning(
            "image_embeddings: %d rows with non-finite or zero vectors dropped", int((~good).sum())
        )
    ids = frame["object_id"].cast(pl.Utf8).to_numpy().astype(str)[good]
    x = x[good] / norms[good, None]
    return ids, x


# --------------------------------------------------------------------------- image similarity
@dataclass(frozen=True)
class QuerySelection:
    """Which galaxies serve as image queries for one target, and how they were chosen."""

    indices: np.ndarray  # positions in the target's candidate set
    n_eligible: int  # galaxies above the threshold (before the cap)
    n_filled: int  # targets added below the threshold to reach min_queries
    threshold: float
    min_relevance: float  # lowest relevance among the queries (NaN when none)
    binary: bool = False

    def describe(self) -> str:
        n = int(self.indices.size)
        if n == 0:
            return "no query galaxies (no galaxy with relevance ≥ 0.5 has an embedding)"
        base = n - self.n_filled
        which = "positives" if self.binary else f"galaxies with relevance > {self.threshold:g}"
        if self.n_eligible > base:
            text = f"{n} query galaxies: a seeded sample of {base} of the {self.n_eligible} {which}"
        else:
            text = f"{n} query galaxies: {base} {which}"
        if self.n_filled:
            text += f", {self.n_filled} added down to relevance {self.min_relevance:.2f}"
        return text


def select_query_galaxies(
    labels: TargetLabels,
    *,
    threshold: float = IMAGE_QUERY_THRESHOLD,
    max_queries: int = 200,
    min_queries: int = 5,
    seed: int = 0,
    available: np.ndarray | None = None,
) -> QuerySelection:
    """The image queries of a target: every binary positive, or every galaxy with vote fraction
    above ``threshold``; at most ``max_queries`` (a seeded sample); topped up to
    ``min_queries`` with the next most relevant targets (relevance ≥ 0.5) when too few pass.
    ``available`` (bool per candidate) limits the choice to galaxies that have an embedding."""
    if max_queries < 1 or min_queries < 0:
        raise EvaluationError(
            f"max_queries={max_queries} must be ≥ 1 and min_queries={min_queries} ≥ 0"
        )
    rel = labels.relevance
    ok = np.ones(rel.size, dtype=bool) if available is None else np.asarray(available, bool)
    if labels.target.kind == "binary":
        eligible = np.flatnonzero(ok & (rel >= TARGET_RELEVANCE))
    else:
        eligible = np.flatnonzero(ok & (rel > threshold))
    rng = np.random.default_rng(seed)
    if eligible.size > max_queries:
        chosen = np.sort(rng.choice(eligible, size=max_queries, replace=False))
    else:
        chosen = eligible
    n_filled = 0
    if chosen.size < min(min_queries, max_queries):
        rest = np.flatnonzero(ok & (rel >= TARGET_RELEVANCE))
        rest = rest[~np.isin(rest, chosen)]
        rest = rest[np.argsort(-rel[rest], kind="stable")]
        extra = rest[: min(min_queries, max_queries) - chosen.size]
        n_filled = int(extra.size)
        chosen = np.concatenate([chosen, extra])
    min_rel = float(rel[chosen].min()) if chosen.size else float("nan")
    return QuerySelection(
        chosen.astype(np.int64),
        int(eligible.size),
        n_filled,
        threshold,
        min_rel,
        labels.target.kind == "binary",
    )


@dataclass(frozen=True)
class ImageSimilarity:
    """The image-similarity rankings of one target: one per query galaxy."""

    selection: QuerySelection
    rankings: list[np.ndarray]  # candidate-set positions in rank order, query excluded

    @property
    def query_indices(self) -> np.ndarray:
        return self.selection.indices


def image_similarity_rankings(
    labels: TargetLabels,
    object_ids: np.ndarray,
    vectors: np.ndarray,
    *,
    depth: int = 100,
    threshold: float = IMAGE_QUERY_THRESHOLD,
    max_queries: int = 200,
    min_queries: int = 5,
    seed: int = 0,
    batch_size: int = 256,
) -> ImageSimilarity:
    """Rank the target's candidate set by cosine similarity to each query galaxy.

    ``object_ids``/``vectors`` come from :func:`embedding_matrix` (unit rows). Only candidates
    with an embedding take part (galaxies outside the candidate set would be dropped from every
    ranking anyway, so they are not scored). Each ranking holds the ``depth`` most similar
    candidates, the query itself excluded, as positions in the candidate set.
    """
    if depth < 1 or batch_size < 1:
        raise EvaluationError(f"depth={depth} and batch_size={batch_size} must be ≥ 1")
    row_of = {o: j for j, o in enumerate(np.asarray(object_ids).astype(str).tolist())}
    cand_rows = np.fromiter(
        (row_of.get(o, -1) for o in labels.object_ids.tolist()),
        dtype=np.int64,
        count=labels.n_candidates,
    )
    available = cand_rows >= 0
    missing = int((~available).sum())
    if missing:
        log.warning(
            "%s: %d of %d labelled galaxies have no image embedding; the image-"
            "similarity baseline ranks the other %d",
            labels.name,
            missing,
            labels.n_candidates,
            labels.n_candidates - missing,
        )
    selection = select_query_galaxies(
        labels,
        threshold=threshold,
        max_queries=max_queries,
        min_queries=min_queries,
        seed=seed,
        available=available,
    )
    present = np.flatnonzero(available)  # candidate positions with a vector
    if selection.indices.size == 0 or present.size < 2:
        return ImageSimilarity(selection, [])
    local_of = np.full(labels.n_candidates, -1, dtype=np.int64)
    local_of[present] = np.arange(present.size)
    c = np.ascontiguousarray(vectors[cand_rows[present]], dtype=np.float32)
    q_local = local_of[selection.indices]
    keep = min(depth, present.size - 1)
    rankings: list[np.ndarray] = []
    for start in range(0, q_local.size, batch_size):
        qb = q_local[start : start + batch_size]
        sims = c[qb] @ c.T  # (batch, n) cosine similarities of unit vectors
        sims[np.arange(qb.size), qb] = -np.inf  # a galaxy is not its own result
        top = np.argpartition(-sims, keep - 1, axis=1)[:, :keep]
        for r in range(qb.size):
            cols = top[r]
            order = np.lexsort((cols, -sims[r, cols]))  # by similarity, ties by position
            ranked = cols[order]
            rankings.append(present[ranked[ranked != qb[r]]])
    return ImageSimilarity(selection, rankings)


# --------------------------------------------------------------------------- random
def random_rankings(
    labels: TargetLabels, *, n_draws: int = 20, depth: int = 100, seed: int = 0
) -> list[np.ndarray]:
    """``n_draws`` seeded random orders of the candidate set (the first ``depth`` places)."""
    if n_draws < 1:
        raise EvaluationError(f"n_draws={n_draws} must be ≥ 1")
    rng = np.random.default_rng(seed)
    n = labels.n_candidates
    return [rng.permutation(n)[:depth] for _ in range(n_draws)]


# --------------------------------------------------------------------------- text methods
def run_search(search_fn: SearchFn, queries: Sequence[str], k: int) -> dict[str, list[str]]:
    """One batched call of ``search_fn``; checks that it returns one list of ids per query."""
    unique = list(dict.fromkeys(queries))
    if not unique:
        return {}
    try:
        results = search_fn(unique, k)
    except EvaluationError:
        raise
    except Exception as exc:
        raise EvaluationError(
            f"search_fn failed on {len(unique)} queries (k={k}): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(results, Sequence) or len(results) != len(unique):
        got = len(results) if isinstance(results, Sequence) else type(results).__name__
        raise EvaluationError(
            f"search_fn returned {got} result lists for {len(unique)} "
            "queries; it must return one ranked list of object_ids per query"
        )
    out: dict[str, list[str]] = {}
    for q, ranked in zip(unique, results, strict=True):
        if isinstance(ranked, str) or not isinstance(ranked, Sequence | np.ndarray):
            raise EvaluationError(
                f"search_fn's result for {q!r} is a {type(ranked).__name__}; "
                "expected a list of object_ids"
            )
        out[q] = [str(o) for o in ranked]
    return out


def rerank_ranking(
    rerank_fn: RerankFn, query: str, ranked_ids: Sequence[str], depth: int
) -> list[str]:
    """Re-rank the first ``depth`` results with ``rerank_fn``; the rest keep their order.

    The re-ranker may return a subset of what it was given (e.g. a galaxy it could not rate):
    the ids it left out follow its list in their original order. It may not invent ids.
    """
    if depth < 1:
        raise EvaluationError(f"rerank depth={depth} must be ≥ 1")
    head = [str(o) for o in ranked_ids[:depth]]
    try:
        got = rerank_fn(query, list(head))
    except EvaluationError:
        raise
    except Exception as exc:
        raise EvaluationError(
            f"rerank_fn failed on {query!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(got, str) or not isinstance(got, Sequence | np.ndarray):
        raise EvaluationError(
            f"rerank_fn returned a {type(got).__name__} for {query!r}; "
            "expected a list of object_ids"
        )
    got = list(dict.fromkeys(str(o) for o in got))
    given = set(head)
    foreign = [o for o in got if o not in given]
    if foreign:
        raise EvaluationError(
            f"rerank_fn returned ids it was not given for {query!r} (e.g. "
            f"{foreign[:3]}); a re-ranker may only reorder its input"
        )
    seen = set(got)
    return got + [o for o in head if o not in seen] + [str(o) for o in ranked_ids[depth:]]
