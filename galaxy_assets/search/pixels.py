"""Pixels of search results, read in place from the shard files the table points at.

Each ``galaxy_index`` row stores ``shard_uri`` and ``row``; :func:`read_cutouts` groups the
results by shard, opens each shard once (:func:`galaxy_assets.survey.readers.open_shard`,
without inverse variance) and reads the rows it needs in one call. A galaxy whose pixels
cannot be read (shard gone, row out of range, the shard rewritten so that the row now holds
another object) gets the reason instead of pixels; it never stops the others.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from galaxy_assets.search.errors import SearchError

log = logging.getLogger(__name__)

__all__ = ["Cutout", "read_cutouts"]


@dataclass(frozen=True)
class Cutout:
    """One galaxy's pixels (B, H, W) float32, nanomaggies, in the order of ``bands``."""

    object_id: str
    image: np.ndarray
    bands: tuple[str, ...]


def read_cutouts(
    results: pl.DataFrame, *, bands: Sequence[str] | None = None
) -> dict[str, Cutout | str]:
    """``object_id → Cutout`` (or the reason there is none) for every row of ``results``
    (columns object_id, shard_uri, row). ``bands``: the bands to read (default: all the
    shard holds, in its order)."""
    from galaxy_assets.survey.readers import open_shard

    for column in ("object_id", "shard_uri", "row"):
        if column not in results.columns:
            raise SearchError(
                f"results lack column {column!r}; pass a frame from GalaxySearch (it carries "
                "shard_uri and row)"
            )
    out: dict[str, Cutout | str] = {}
    by_shard: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for oid, uri, row in results.select("object_id", "shard_uri", "row").iter_rows():
        if uri is None or row is None:
            out[oid] = "no shard_uri/row in the index for this galaxy"
        else:
            by_shard[uri].append((oid, int(row)))
    for uri, items in by_shard.items():
        try:
            reader = open_shard(uri, bands=list(bands) if bands else None, ivar=False)
        except Exception as exc:  # noqa: BLE001 - recorded per galaxy
            reason = f"cannot open shard {uri}: {type(exc).__name__}: {exc}"
            log.warning("%s", reason)
            for oid, _ in items:
                out[oid] = reason
            continue
        with reader:
            n = len(reader)
            good = [(oid, row) for oid, row in items if 0 <= row < n]
            for oid, row in items:
                if not 0 <= row < n:
                    out[oid] = f"row {row} is outside shard {uri} ({n} rows); re-index it"
            if not good:
                continue
            order = sorted(range(len(good)), key=lambda i: good[i][1])
            rows = [good[i][1] for i in order]
            try:
                batch = reader.read_rows(np.asarray(rows, dtype=np.int64))
            except Exception as exc:  # noqa: BLE001
                reason = f"cannot read rows of {uri}: {type(exc).__name__}: {exc}"
                for oid, _ in good:
                    out[oid] = reason
                continue
            for j, i in enumerate(order):
                oid = good[i][0]
                found = str(batch.object_id[j])
                if found != oid:
                    out[oid] = (
                        f"row {good[i][1]} of {uri} holds {found!r}, not {oid!r}: the shard "
                        "changed since it was indexed; re-index it"
                    )
                    continue
                out[oid] = Cutout(oid, np.asarray(batch.images[j]), tuple(batch.bands))
    return out
