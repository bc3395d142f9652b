"""Text vectors for captions."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

log = logging.getLogger(__name__)


def embed_captions(captions: pl.DataFrame, embedder, batch_size: int = 256) -> pl.DataFrame:
    """Unit-normalised text vectors for every caption.

    ``captions`` needs object_id, caption, model, prompt_sha. Returns those keys plus
    ``embedder`` (the embedder id) and ``vector`` (list[float32]).
    """
    texts = captions["caption"].to_list()
    if not texts:
        vectors = np.zeros((0, int(getattr(embedder, "dim", 0) or 0)), dtype=np.float32)
    else:
        chunks = [
            embedder.embed(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)
        ]
        vectors = np.concatenate(chunks).astype(np.float32, copy=False)
    if vectors.shape[0] != len(texts):
        raise RuntimeError(
            f"text embedder {embedder.embedder_id} returned {vectors.shape[0]} vectors for "
            f"{len(texts)} captions"
        )
    norms = np.linalg.norm(vectors, axis=1) if len(texts) else np.zeros(0)
    if len(texts) and not np.allclose(norms, 1.0, atol=1e-3):
        raise RuntimeError(
            f"text embedder {embedder.embedder_id} returned vectors that are not unit-norm"
        )
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    return captions.select("object_id", "model", "prompt_sha").with_columns(
        pl.lit(embedder.embedder_id).alias("embedder"),
        pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, dim)),
    )
