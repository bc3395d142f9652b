"""The mock survey's truth tables (what only a simulator knows).

Only evaluation and supervised training may read them: captioners, encoders and the index
see pixels and survey columns alone. A real survey has no truth table; ``load_truth``
returns None for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl

TRUTH_SUFFIX = ".truth.parquet"


def truth_path(shard_uri: str | Path) -> Path:
    """``…/001-of-001.hdf5`` → ``…/001-of-001.truth.parquet`` (a FITS folder: ``<folder>.truth.parquet``)."""
    path = Path(str(shard_uri).removeprefix("file://"))
    if path.suffix.lower() in (".hdf5", ".h5"):
        return path.with_suffix(TRUTH_SUFFIX)
    return path.with_name(path.name + TRUTH_SUFFIX)


def load_truth(shard_uris: Iterable[str | Path]) -> pl.DataFrame | None:
    """The truth rows of every given shard that has a truth table, or None when none has;
    shards in path order, so that the rows (and everything resampled from them, such as the
    evaluation's bootstrap) come out in the same order in every process."""
    paths = sorted({truth_path(u) for u in shard_uris})
    frames = [pl.read_parquet(p) for p in paths if p.is_file()]
    if not frames:
        return None
    return pl.concat(frames, how="diagonal_relaxed")
