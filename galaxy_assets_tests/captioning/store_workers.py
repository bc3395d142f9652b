"""Processes that use one caption store at once (started with multiprocessing's spawn by
test_store_and_run.py): a module of its own, so that each child imports only this."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl


def rows(prefix: str, n: int, pixels: str | None = "z,r,g@64x64") -> pl.DataFrame:
    """``n`` caption rows of the captioner (test, m, p) with ids ``<prefix>-<i>``."""
    return pl.DataFrame(
        {
            "object_id": [f"{prefix}-{i}" for i in range(n)],
            "caption": [f"a spiral galaxy with two arms, number {i} of {prefix}" for i in range(n)],
            "backend": ["test"] * n,
            "model": ["m"] * n,
            "prompt_sha": ["p"] * n,
            "source": ["generated"] * n,
            "created_at": [datetime.now(UTC)] * n,
            "pixels": [pixels] * n,
        }
    )


def add_batches(folder: str, prefix: str, batches: int, size: int, barrier) -> None:
    """Add ``batches`` batches of ``size`` new captions, once every writer of the test has
    reached ``barrier`` (so that they overlap)."""
    from galaxy_assets.captioning.store import CaptionStore

    store = CaptionStore(folder)
    barrier.wait(timeout=60)
    for b in range(batches):
        store.add(rows(f"{prefix}{b}", size))


def rewrite_until(folder: str, started, stop, adds) -> None:
    """Rewrite the store's files again and again (each add replaces both) from when it sets
    ``started`` until ``stop`` is set; ``adds`` (a shared int) counts them."""
    from galaxy_assets.captioning.store import CaptionStore

    store = CaptionStore(folder)
    started.set()
    while not stop.is_set():
        store.add(rows(f"w{adds.value}", 1))
        adds.value += 1
