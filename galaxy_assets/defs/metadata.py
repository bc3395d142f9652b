"""Turning plots and figures into Dagster metadata (PNG files shown inline in the UI)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg
import polars as pl


def figure_metadata(figure, path: Path) -> dict[str, dg.MetadataValue]:
    """Save a matplotlib figure as PNG at ``path`` and return metadata that shows it inline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    data = buffer.getvalue()
    path.write_bytes(data)
    encoded = base64.b64encode(data).decode("ascii")
    return {
        "plot": dg.MetadataValue.md(f"![{path.stem}](data:image/png;base64,{encoded})"),
        "plot_path": dg.MetadataValue.path(str(path)),
    }


def png_metadata(
    path: Path, key: str = "plot", max_width: int | None = None
) -> dict[str, dg.MetadataValue]:
    """A PNG already on disk, shown inline in the UI; with ``max_width``, a copy scaled down to
    that width goes into the metadata (the event log keeps every materialization's metadata),
    and the path points at the full-size file."""
    data = Path(path).read_bytes()
    if max_width is not None:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            if image.width > max_width:
                height = max(1, round(image.height * max_width / image.width))
                buffer = io.BytesIO()
                image.resize((max_width, height), Image.LANCZOS).save(buffer, format="PNG")
                data = buffer.getvalue()
    encoded = base64.b64encode(data).decode("ascii")
    return {
        key: dg.MetadataValue.md(f"![{Path(path).stem}](data:image/png;base64,{encoded})"),
        f"{key}_path": dg.MetadataValue.path(str(path)),
    }


def scalar_metadata(values: dict) -> dict[str, object]:
    """Keep the int/float/str/bool entries of ``values`` (Dagster renders them natively)."""
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, bool | int | float | str):
            out[str(key).replace("/", "__")] = value
    return out


def reusable_output(
    context: dg.AssetExecutionContext, path, partition_key: str | None = None,
    **expected: str,
) -> pl.DataFrame | None:
    """The asset partition's previous output, read from ``path`` (a ``Path`` or ``UPath``, where
    the Parquet IO manager wrote it), when its last materialization recorded exactly
    ``expected`` in its metadata (e.g. the encoder id and the shard fingerprint); None when
    anything differs or is missing.
    """
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=context.asset_key,
            asset_partitions=[partition_key] if partition_key is not None else None,
        ),
        limit=1,
    ).records
    if not records or not path.is_file():
        return None
    materialization = records[0].asset_materialization
    metadata = materialization.metadata if materialization else {}
    for key, want in expected.items():
        got = metadata.get(key)
        if got is None or str(getattr(got, "value", got)) != str(want):
            return None
    return pl.read_parquet(str(path))


def partition_metadata(instance: dg.DagsterInstance, asset: str, key: str) -> dict:
    """The metadata values of partition ``key``'s latest materialization of ``asset`` ({}
    when it has none)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def all_manifests(raw_cutouts: dict[str, pl.DataFrame], asset: str) -> pl.DataFrame:
    """Every stored raw_cutouts manifest as one frame; a clear failure when there is none
    (``pl.concat`` of nothing said only "cannot concat empty list")."""
    frames = [f for f in (raw_cutouts or {}).values() if f is not None]
    if not frames or sum(f.height for f in frames) == 0:
        raise dg.Failure(f"{asset}: no raw_cutouts partition is materialized; materialize "
                         "survey_job (or run galaxy-assets demo) first")
    return pl.concat(frames, how="diagonal_relaxed")
