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
    (columns object_id, shard_uri, row).

    The pixels are those the graph read when it ingested the galaxy: the bands of the row's
    ``bands`` column and the centre crop of its ``height`` × ``width`` (the manifest's), so a
    re-ranker, a thumbnail and a contact sheet see what the captioner and the encoder saw.
    ``bands`` overrides the row's bands; without the columns, every band the shard holds is
    read at its native size."""
    from galaxy_assets.survey.readers import open_shard

    for column in ("object_id", "shard_uri", "row"):
        if column not in results.columns:
            raise SearchError(
                f"results lack column {column!r}; pass a frame from GalaxySearch (it carries "
                "shard_uri and row)"
            )
    out: dict[str, Cutout | str] = {}
    n = results.height
    row_bands = (
        results["bands"].to_list() if bands is None and "bands" in results.columns else [None] * n
    )
    sizes = (
        [
            h if h is not None and h == w and h > 0 else None
            for h, w in zip(results["height"].to_list(), results["width"].to_list(), strict=True)
        ]
        if {"height", "width"} <= set(results.columns)
        else [None] * n
    )
    fixed = tuple(bands) if bands else None
    by_shard: dict[tuple, list[tuple[str, int]]] = defaultdict(list)
    located = results.select("object_id", "shard_uri", "row").iter_rows()
    for (oid, uri, row), listed, size in zip(located, row_bands, sizes, strict=True):
        if uri is None or row is None:
            out[oid] = "no shard_uri/row in the index for this galaxy"
            continue
        wanted = fixed or (tuple(b for b in str(listed).split(",") if b) if listed else None)
        by_shard[(uri, wanted or None, size)].append((oid, int(row)))
    for (uri, wanted, size), items in by_shard.items():
        try:
            reader = open_shard(uri, bands=list(wanted) if wanted else None, size=size, ivar=False)
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
