"""Fixtures of the evaluation tests: a small constructed survey whose truth we know.

``make_world(n, seed)`` builds a truth frame in the mock survey's layout (class flags and Galaxy
Zoo DECaLS vote counts for every question the default targets use), the matching manifest,
image embeddings in which each class forms a cluster (a class direction plus noise), and a
text ``search_fn`` that scores galaxies by the class a query names plus noise. Nothing here
reads a real survey, so every test runs in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

CLASSES = ("is_spiral", "is_merger", "is_lens", "is_edge_on", "has_ring", "has_bar")
KEYWORDS = {  # query word → class column (the fake text search reads these)
    "spiral": "is_spiral",
    "merg": "is_merger",
    "interact": "is_merger",
    "lens": "is_lens",
    "edge-on": "is_edge_on",
    "ring": "has_ring",
    "bar": "has_bar",
}


@dataclass
class World:
    truth: pl.DataFrame
    manifest: pl.DataFrame
    embeddings: pl.DataFrame
    flags: np.ndarray  # (n, len(CLASSES)) bool
    object_ids: np.ndarray

    def search_fn(
        self, noise: float = 0.3, seed: int = 0
    ) -> Callable[[list[str], int], list[list[str]]]:
        """A text search that ranks by the named class (+ Gaussian noise of ``noise``)."""
        rng = np.random.default_rng(seed)
        jitter = rng.normal(0.0, noise, size=(len(CLASSES), self.object_ids.size))

        def search(queries: list[str], k: int) -> list[list[str]]:
            out = []
            for q in queries:
                col = next((c for w, c in KEYWORDS.items() if w in q.lower()), None)
                j = CLASSES.index(col) if col else 0
                score = self.flags[:, j].astype(float) + jitter[j]
                out.append(self.object_ids[np.argsort(-score, kind="stable")][:k].tolist())
            return out

        return search


def make_world(n: int = 240, seed: int = 0, dim: int = 16) -> World:
    rng = np.random.default_rng(seed)
    ids = np.array([f"g{seed}-{i:04d}" for i in range(n)])
    flags = np.zeros((n, len(CLASSES)), dtype=bool)
    rates = {
        "is_spiral": 0.3,
        "is_merger": 0.08,
        "is_lens": 0.04,
        "is_edge_on": 0.15,
        "has_ring": 0.08,
        "has_bar": 0.15,
    }
    for j, c in enumerate(CLASSES):
        flags[:, j] = rng.random(n) < rates[c]
        flags[j * 3 : j * 3 + 3, j] = True  # at least three members of every class
    cols: dict[str, object] = {
        "object_id": ids.tolist(),
        "ra": (150.0 + 0.01 * np.arange(n)).tolist(),  # 36" apart: unambiguous positions
        "dec": np.full(n, 2.0).tolist(),
    }
    for j, c in enumerate(CLASSES):
        cols[c] = flags[:, j].tolist()

    def votes(question: str, answers: tuple[str, ...], p_true: np.ndarray, low: int = 0):
        """Counts for answers[0] ~ Binomial(total, p_true), the rest on answers[-1], 0 between."""
        total = rng.integers(low, 40, size=n)
        yes = rng.binomial(total, p_true)
        cols[f"{question}_{answers[0]}"] = yes.astype(np.int32).tolist()
        for a in answers[1:-1]:
            cols[f"{question}_{a}"] = np.zeros(n, np.int32).tolist()
        cols[f"{question}_{answers[-1]}"] = (total - yes).astype(np.int32).tolist()
        cols[f"{question}_total-votes"] = total.astype(np.int32).tolist()

    def p(flag: str, hi: float, lo: float) -> np.ndarray:
        return np.where(flags[:, CLASSES.index(flag)], hi, lo)

    votes("has-spiral-arms", ("yes", "no"), p("is_spiral", 0.95, 0.05))
    votes(
        "merging",
        ("merger", "major-disturbance", "minor-disturbance", "none"),
        p("is_merger", 0.9, 0.02),
        low=5,
    )
    votes("disk-edge-on", ("yes", "no"), p("is_edge_on", 0.95, 0.03))
    votes("bar", ("strong", "weak", "no"), p("has_bar", 0.9, 0.05))
    truth = pl.DataFrame(cols)
    manifest = truth.select("object_id", "ra", "dec")
    centres = rng.normal(size=(len(CLASSES), dim))
    x = rng.normal(0.0, 0.6, size=(n, dim)) + flags.astype(float) @ centres
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    embeddings = pl.DataFrame(
        [
            pl.Series("object_id", ids.tolist(), dtype=pl.Utf8),
            pl.Series("encoder", ["test-encoder"] * n, dtype=pl.Utf8),
            pl.Series("vector", x.astype(np.float32), dtype=pl.Array(pl.Float32, dim)),
        ]
    )
    return World(truth, manifest, embeddings, flags, ids)


@pytest.fixture
def world() -> World:
    return make_world()
