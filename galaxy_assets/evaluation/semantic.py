"""Semantic search as the evaluation runs it: exact nearest neighbours over one aligner's
vectors, computed in memory from the cached image embeddings.

The gate must compare a *candidate* aligner with the *champion* on the same galaxies before
the candidate serves any query, so the evaluation does not read ``galaxy_index`` (which
holds the champion's vectors): it projects every galaxy's image embedding with each aligner
and ranks exactly (a matrix product; 10^6 galaxies × 256-d is 1 GB and a few seconds per
batch of queries). The index's ANN search is measured against exact search separately
(``benchmarks/bench_index.py``: recall@10 ≥ 0.95).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from galaxy_assets.evaluation.errors import EvaluationError

log = logging.getLogger(__name__)

__all__ = ["ExactSemanticSearch", "RerankCallable"]


class ExactSemanticSearch:
    """``search_fn(queries, k) -> ranked object_ids`` for :func:`~galaxy_assets.evaluation.
    report.evaluate`: text embedder → the aligner's text head → cosine against the aligner's
    image-head vectors of every galaxy in ``image_embeddings`` (object_id, encoder, vector)."""

    def __init__(self, aligned: Any, text_embedder: Any, image_embeddings: pl.DataFrame,
                 *, chunk: int = 256) -> None:
        from galaxy_assets.alignment.model import ProjectStats, project_shard

        stats = ProjectStats()
        projected = project_shard(image_embeddings, aligned, stats=stats)
        if projected.height == 0:
            raise EvaluationError("no galaxy has a usable image embedding to search")
        self.aligned = aligned
        self.text_embedder = text_embedder
        self.ids = np.asarray(projected["object_id"].to_list(), dtype=object)
        self.vectors = projected["vector"].to_numpy().astype(np.float32, copy=False)
        self.aligner_version = str(aligned.aligner_version or "")
        self.skipped = stats.n_skipped
        self.chunk = int(chunk)

    def __len__(self) -> int:
        return len(self.ids)

    def query_vectors(self, queries: Sequence[str]) -> np.ndarray:
        from galaxy_assets.alignment.model import encode_queries

        return encode_queries(list(queries), self.text_embedder, self.aligned)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(n_queries, n_galaxies) cosine similarities."""
        return self.query_vectors(queries) @ self.vectors.T

    def __call__(self, queries: Sequence[str], k: int) -> list[list[str]]:
        k = min(int(k), len(self.ids))
        out: list[list[str]] = []
        for s in range(0, len(queries), self.chunk):
            sims = self.scores(queries[s : s + self.chunk])
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            for row, idx in zip(sims, top, strict=True):
                order = idx[np.lexsort((self.ids[idx].astype(str), -row[idx]))]
                out.append(self.ids[order].tolist())
        return out

    def score_of(self, query: str, ids: Sequence[str]) -> np.ndarray:
        """The similarities of ``ids`` to ``query`` (for re-ranking's tie-breaks)."""
        position = {oid: i for i, oid in enumerate(self.ids.tolist())}
        sims = self.scores([query])[0]
        return np.asarray([sims[position[o]] if o in position else -np.inf for o in ids])


class RerankCallable:
    """``rerank_fn(query, ranked_ids) -> ids`` for :func:`~galaxy_assets.evaluation.report.
    evaluate`: the search domain's re-ranking (:func:`galaxy_assets.search.rerank.vlm_rerank`)
    with ``rater``, reading pixels through the manifest's ``shard_uri`` / ``row``. Failures
    are counted in ``n_failed`` (those galaxies keep their similarity rank)."""

    def __init__(self, rater: Any, manifest: pl.DataFrame, search: ExactSemanticSearch,
                 *, n_samples: int = 1) -> None:
        missing = {"object_id", "shard_uri", "row"} - set(manifest.columns)
        if missing:
            raise EvaluationError(f"re-ranking needs manifest columns {sorted(missing)}")
        self.rater = rater
        self.manifest = manifest.select("object_id", "shard_uri", "row")
        self.search = search
        self.n_samples = int(n_samples)
        self.n_rated = 0
        self.n_failed = 0
        self.seconds = 0.0

    def __call__(self, query: str, ids: Sequence[str]) -> list[str]:
        from galaxy_assets.search.rerank import vlm_rerank

        ids = list(ids)
        frame = pl.DataFrame({
            "rank": np.arange(1, len(ids) + 1, dtype=np.int64),
            "object_id": ids,
            "score": self.search.score_of(query, ids),
        }).join(self.manifest, on="object_id", how="left", maintain_order="left")
        outcome = vlm_rerank(frame, self.rater, query=query, k_rerank=len(ids),
                             n_samples=self.n_samples)
        self.n_rated += outcome.n_rated
        self.n_failed += outcome.n_failed
        self.seconds += outcome.seconds
        return outcome.frame["object_id"].to_list()
