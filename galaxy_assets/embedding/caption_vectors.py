"""Text vectors for captions (and for their sentence views)."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from galaxy_assets.embedding.text import TextEmbedderError

log = logging.getLogger(__name__)

__all__ = ["embed_captions"]


# distinct texts handed to the embedder per call: it batches them itself (an HTTP embedder
# sends its batches concurrently), so a call holds many of its batches; one log line each
CHUNK_TEXTS = 4096


def embed_captions(captions: pl.DataFrame, embedder, chunk_size: int = CHUNK_TEXTS) -> pl.DataFrame:
    """Unit-normalised text vectors for every caption.

    ``captions`` needs object_id, caption, model, prompt_sha, and may have ``view`` ("caption"
    for whole captions, "sentence" for sentence views), which is kept. Each distinct text is
    embedded once (templated captions and generic sentences repeat word for word), in calls of
    ``chunk_size`` texts. Returns the keys plus ``embedder`` (the embedder id) and ``vector``
    (Array[Float32, dim]).
    """
    texts = captions["caption"].to_list()
    unique = list(dict.fromkeys(texts))
    if not texts:
        vectors = np.zeros((0, int(getattr(embedder, "dim", 0) or 0)), dtype=np.float32)
    else:
        chunks = []
        for start in range(0, len(unique), chunk_size):
            part = unique[start : start + chunk_size]
            try:
                chunks.append(embedder.embed(part))
            except Exception as exc:
                # the embedder counts from the start of its call: say where that call began
                raise TextEmbedderError(
                    f"embedding distinct captions {start}..{start + len(part) - 1} of "
                    f"{len(unique)} (positions below count from {start}): {exc}"
                ) from exc
            if len(unique) > chunk_size:
                log.info("embedded %d of %d distinct texts", start + len(part), len(unique))
        distinct = np.concatenate(chunks).astype(np.float32, copy=False)
        if distinct.shape[0] != len(unique):
            raise RuntimeError(
                f"text embedder {embedder.embedder_id} returned {distinct.shape[0]} vectors for "
                f"{len(unique)} distinct captions"
            )
        position = {t: i for i, t in enumerate(unique)}
        vectors = distinct[[position[t] for t in texts]]
    norms = np.linalg.norm(vectors, axis=1) if len(texts) else np.zeros(0)
    if len(texts) and not np.allclose(norms, 1.0, atol=1e-3):
        raise RuntimeError(
            f"text embedder {embedder.embedder_id} returned vectors that are not unit-norm"
        )
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    keys = ["object_id", "model", "prompt_sha"] + (["view"] if "view" in captions.columns else [])
    return captions.select(keys).with_columns(
        pl.lit(embedder.embedder_id).alias("embedder"),
        pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, dim)),
    )
