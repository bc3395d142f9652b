"""The reader protocol shared by every cutout source (MMU HDF5 shards, FITS folders)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class CutoutBatch:
    """A batch of cutouts read from one shard.

    ``images`` and ``ivar`` are float32 arrays of shape (N, B, H, W) in the order of ``bands``;
    ``rows`` are the galaxies' row numbers in the shard; ``object_id`` holds strings.
    """

    object_id: np.ndarray  # (N,) str (numpy unicode)
    rows: np.ndarray  # (N,) int64
    images: np.ndarray  # (N, B, H, W) float32
    ivar: np.ndarray | None  # (N, B, H, W) float32, or None when the source has none
    bands: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])


@runtime_checkable
class CutoutReader(Protocol):
    """A source of cutouts: one shard (an HDF5 file, or a folder of FITS files)."""

    uri: str
    bands: tuple[str, ...]  # the bands this reader returns, in order
    size: int | None  # centre-crop size in pixels, or None for the native size

    def __len__(self) -> int: ...

    def catalog(self) -> dict[str, np.ndarray]:
        """Per-galaxy survey columns without pixels: object_id, ra, dec, flux_<band>, ebv."""
        ...

    def iter_batches(self, batch_size: int = 256) -> Iterator[CutoutBatch]:
        """Stream the whole shard in batches without loading it at once."""
        ...

    def read_rows(self, rows: Sequence[int]) -> CutoutBatch:
        """Read the given rows (any order) as one batch."""
        ...
