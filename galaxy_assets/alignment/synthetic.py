"""Synthetic paired embeddings for tests and benchmarks (no pixels, no models).

Text vectors are random unit vectors; each galaxy's image vector is a fixed random linear map
of its caption's text vector plus Gaussian noise, normalised. Heads that learn the map align
the two: a known-answer problem whose difficulty ``noise`` sets.
"""

from __future__ import annotations

import numpy as np
import polars as pl

__all__ = ["synthetic_pairs"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_pairs(
    n: int,
    *,
    image_dim: int = 256,
    text_dim: int = 384,
    noise: float = 0.5,
    seed: int = 0,
    encoder: str = "registry:morphology-encoder/v1",
    embedder: str = "sentence-transformers:all-MiniLM-L6-v2@synthetic",
    caption_model: str = "measured-morphology",
    prompt_sha: str = "0" * 12,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(image_embeddings, caption_embeddings)`` frames for ``n`` galaxies ``obj000000``…

    ``image = unit(W · text + noise · ε)`` with ``W`` (image_dim × text_dim) and ``ε`` standard
    normal (scaled so that ``noise = 1`` makes signal and noise equally strong per vector).
    """
    rng = np.random.default_rng(seed)
    text = _unit(rng.standard_normal((n, text_dim)))
    w = rng.standard_normal((image_dim, text_dim)) / np.sqrt(text_dim)
    signal = text @ w.T
    eps = rng.standard_normal((n, image_dim)) * np.sqrt(np.mean(signal**2))
    image = _unit(signal + noise * eps)
    ids = [f"obj{i:06d}" for i in range(n)]
    images = pl.DataFrame(
        [
            pl.Series("object_id", ids, dtype=pl.Utf8),
            pl.Series("encoder", [encoder] * n, dtype=pl.Utf8),
            pl.Series("vector", image, dtype=pl.Array(pl.Float32, image_dim)),
        ]
    )
    captions = pl.DataFrame(
        [
            pl.Series("object_id", ids, dtype=pl.Utf8),
            pl.Series("model", [caption_model] * n, dtype=pl.Utf8),
            pl.Series("prompt_sha", [prompt_sha] * n, dtype=pl.Utf8),
            pl.Series("embedder", [embedder] * n, dtype=pl.Utf8),
            pl.Series("vector", text, dtype=pl.Array(pl.Float32, text_dim)),
        ]
    )
    return images, captions
