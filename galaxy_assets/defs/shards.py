"""Per-shard work in a run over many shards: one bad shard is recorded, the others are kept.

A backfill of a per-shard asset runs its shards in one step, so that the model loads once.
An error in one shard (a truncated file, a corrupt upstream output) used to fail the step and
discard every other shard's finished work. Here each shard is built alone:

* :func:`each_shard` runs ``work(key)`` per shard and records the ones that raise;
* :func:`settle` returns the outputs when every shard was built. Otherwise it stores the
  shards that were built where the IO manager keeps them, records their materializations,
  and fails the step, naming the others and why. A rerun from the failure builds them again
  (image embeddings of an unchanged shard are reused).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

__all__ = ["each_shard", "read_input", "settle"]


def each_shard(
    context: dg.AssetExecutionContext, work: Callable[[str], Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``(built, failed)``: ``work(key)`` for every partition key of the run, in order;
    ``failed`` maps a shard whose work raised to the error, and the other shards go on."""
    asset = context.asset_key.to_user_string()
    built: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for key in context.partition_keys:
        try:
            built[key] = work(key)
        except Exception as exc:  # noqa: BLE001 - one shard's error, recorded and reported
            failed[key] = f"{type(exc).__name__}: {exc}"
            context.log.error(f"{asset}[{key}] failed; the other shards go on: {failed[key]}")
    return built, failed


def read_input(
    name: str, frames: Mapping[str, pl.LazyFrame] | None, key: str, *, required: bool = True
) -> pl.DataFrame | None:
    """Shard ``key`` of the lazily loaded input ``name`` (``LazyFramePartitions``), read now,
    in the shard's turn: an unreadable file fails this shard alone, naming the input. A shard
    the input does not hold: an error, or None when not ``required`` (optional inputs)."""
    frame = (frames or {}).get(key)
    if frame is None:
        if required:
            raise FileNotFoundError(f"{name}[{key}] is not stored: materialize it first")
        return None
    try:
        return frame.collect()
    except Exception as exc:
        raise OSError(f"cannot read {name}[{key}] ({type(exc).__name__}: {exc})") from exc


def _store(folder: Any, key: str, frame: pl.DataFrame) -> None:
    """``frame`` as ``folder/<key>.parquet``, as the IO manager writes it (a local file is
    written beside its place and renamed over it, an object store gets the whole object)."""
    path = folder / f"{key}.parquet"
    if getattr(path, "protocol", "") in ("", "file", "local"):
        final = Path(getattr(path, "path", path))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        try:
            frame.write_parquet(tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        frame.write_parquet(fh)


def settle(
    context: dg.AssetExecutionContext,
    built: dict[str, Any],
    failed: Mapping[str, str],
    metadata: Mapping[str, Mapping[str, Any]],
    *,
    outputs: Any | None = None,
) -> dict[str, Any]:
    """``built`` when no shard failed (each shard's ``metadata`` added to its partition).

    Otherwise: each built shard's frame is stored under ``outputs`` (the IO manager's folder
    of this asset; None for an asset that writes elsewhere itself, such as galaxy_index) and
    its materialization recorded with its metadata; then the step fails with a
    :class:`dagster.Failure` naming the failed shards."""
    if not failed:
        for key in built:
            if metadata.get(key):
                context.add_asset_metadata(dict(metadata[key]), partition_key=key)
        return built
    asset = context.asset_key
    for key, value in built.items():
        if outputs is not None:
            _store(outputs, key, value)
        context.log_event(dg.AssetMaterialization(
            asset_key=asset, partition=key,
            metadata={k: v for k, v in (metadata.get(key) or {}).items()
                      if isinstance(v, bool | int | float | str | dg.MetadataValue)},
            description="stored although other shards of the run failed",
        ))
    names = sorted(failed)
    listed = "; ".join(f"{k}: {failed[k][:300]}" for k in names[:5])
    more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
    raise dg.Failure(
        f"{asset.to_user_string()}: {len(names)} of {len(names) + len(built)} shard(s) failed "
        f"({listed}){more}. The other {len(built)} are stored and materialized. Fix or remove "
        "the failing shards and materialize them again.",
        metadata={"failed_shards": dg.MetadataValue.json({k: failed[k][:1000] for k in names}),
                  "stored_shards": len(built)},
    )
