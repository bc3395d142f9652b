"""The ``galaxy_index`` LanceDB table: its schema, the per-shard rows, upserts and indexes.

One row per galaxy with a search vector (fixed Arrow schema, :func:`table_schema`)::

    object_id            str, the key (unique)
    ra, dec              float64, degrees;  healpix int64
    shard, shard_uri     str: the partition key and where the pixels are;  row int64 in it
    bands                str, comma-separated band order of the pixels;  height, width int32
    flux_<b>, mag_<b>    float32 for b in g r i z: nanomaggies and 22.5 − 2.5 log10(flux)
                         (null when the flux is null, not finite or <= 0);  ebv float32
    caption              str or null;  caption_source "backend:model" of that caption
    p_smooth … p_merger  float32 morphology vote fractions (null without predictions)
    aligner_version      str, "search-aligner/v3": the model that made the vector
    caption_prompt_sha   str: the prompt (or describer template set) of the caption
    morphology_version   str, "morphology-encoder/v2": the model of the p_* columns
    emulator_version     str, "property-emulator/v1": the model of the post_* columns
    vector               fixed_size_list<float32>[dim], unit norm (cosine = dot product)
    post_<name>          float32 posterior summaries, added as nullable columns when a
                         shard first brings them (schema evolution, nulls elsewhere)

:func:`build_shard_rows` joins the frames the graph makes for one shard into such rows;
:func:`upsert_shard` writes them with one ``merge_insert`` on ``object_id`` that also deletes
the shard's rows that are gone (``when_not_matched_by_source_delete``): one commit of rows,
so a rerun never duplicates nor loses a row and a run that fails half-way (the rows are
streamed into the merge batch by batch) commits no rows and leaves the previous rows readable
(columns a shard first brings are added, empty, just before).

Plain Python; knows nothing of Dagster. The vector (IVF-PQ) index is
:mod:`galaxy_assets.search.ann`'s; the full-text index on captions and the scalar indexes
are here (:func:`ensure_indexes`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from galaxy_assets.morphology.columns import SUMMARY_COLUMNS
from galaxy_assets.search.errors import IndexMismatchError, IndexMissingError, RowsError

if TYPE_CHECKING:
    from lancedb.db import DBConnection
    from lancedb.table import Table

log = logging.getLogger(__name__)

__all__ = [
    "BANDS",
    "P_COLUMNS",
    "POSTERIOR_PREFIX",
    "TABLE_NAME",
    "RowStats",
    "UpsertStats",
    "build_shard_rows",
    "column_counts",
    "connect",
    "default_uri",
    "drop_table",
    "ensure_fts_index",
    "ensure_indexes",
    "ensure_scalar_indexes",
    "indexed_shards",
    "magnitude",
    "open_or_create_table",
    "open_table",
    "remove_shards",
    "sql_string",
    "table_exists",
    "table_schema",
    "table_version",
    "upsert_shard",
    "vector_dim",
]

TABLE_NAME = "galaxy_index"
BANDS: tuple[str, ...] = ("g", "r", "i", "z")
P_COLUMNS: tuple[str, ...] = SUMMARY_COLUMNS  # morphology_predictions' vote fractions
POSTERIOR_PREFIX = "post_"
ZERO_POINT = 22.5  # nanomaggies → AB magnitudes
UPSERT_BATCH_ROWS = 8192
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_UNIT_TOLERANCE = 1e-3

_BASE_FIELDS: list[pa.Field] = [
    pa.field("object_id", pa.utf8(), nullable=False),
    pa.field("ra", pa.float64()),
    pa.field("dec", pa.float64()),
    pa.field("healpix", pa.int64()),
    pa.field("shard", pa.utf8(), nullable=False),
    pa.field("shard_uri", pa.utf8()),
    pa.field("row", pa.int64()),
    pa.field("bands", pa.utf8()),
    pa.field("height", pa.int32()),
    pa.field("width", pa.int32()),
    *[pa.field(f"flux_{b}", pa.float32()) for b in BANDS],
    *[pa.field(f"mag_{b}", pa.float32()) for b in BANDS],
    pa.field("ebv", pa.float32()),
    pa.field("caption", pa.utf8()),
    pa.field("caption_source", pa.utf8()),
    *[pa.field(p, pa.float32()) for p in P_COLUMNS],
    pa.field("aligner_version", pa.utf8()),
    pa.field("caption_prompt_sha", pa.utf8()),
    pa.field("morphology_version", pa.utf8()),
    pa.field("emulator_version", pa.utf8()),
]
BASE_COLUMNS: tuple[str, ...] = tuple(f.name for f in _BASE_FIELDS)
# where a row's caption, vote fractions and posteriors came from; added to a table made before
# they existed (its older rows hold nulls)
LINEAGE_COLUMNS: tuple[str, ...] = ("caption_prompt_sha", "morphology_version", "emulator_version")
_MANIFEST_REQUIRED = ("object_id", "ra", "dec", "shard", "shard_uri", "row")


# --------------------------------------------------------------------------- schema
def table_schema(dim: int, posterior_columns: Sequence[str] = ()) -> pa.Schema:
    """The Arrow schema of ``galaxy_index`` for ``dim``-d vectors (plus ``post_*`` columns)."""
    if isinstance(dim, bool) or int(dim) < 1:
        raise RowsError(f"vector dimension {dim!r}; it must be >= 1")
    extra = []
    for name in posterior_columns:
        if not name.startswith(POSTERIOR_PREFIX) or not _IDENTIFIER.match(name):
            raise RowsError(f"posterior column {name!r} must match {POSTERIOR_PREFIX}[a-z0-9_]+")
        extra.append(pa.field(name, pa.float32()))
    return pa.schema([*_BASE_FIELDS, *extra, pa.field("vector", pa.list_(pa.float32(), int(dim)))])


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal (single quotes, embedded quotes doubled).

    Only our own code builds SQL; user text reaches it through this function or after
    validation (:mod:`galaxy_assets.search.filters`). NUL characters are refused.
    """
    text = str(value)
    if "\x00" in text:
        raise RowsError(f"string {text!r} holds a NUL character; it cannot go into a filter")
    return "'" + text.replace("'", "''") + "'"


def magnitude(flux: pl.Expr) -> pl.Expr:
    """AB magnitude from a nanomaggy flux: ``22.5 − 2.5 log10(flux)``, null unless flux > 0
    and finite."""
    f = flux.cast(pl.Float64)
    good = f.is_not_null() & f.is_finite() & (f > 0)
    return pl.when(good).then(ZERO_POINT - 2.5 * f.log10()).otherwise(None).cast(pl.Float32)


# --------------------------------------------------------------------------- connection
def default_uri() -> str:
    """The LanceDB folder of the home (``$GALAXY_ASSETS_HOME/lancedb``)."""
    from galaxy_assets.runtime import Home

    return str(Home.from_env().lancedb)


def connect(
    uri: str | os.PathLike[str] | None = None,
    *,
    storage_options: Mapping[str, str] | None = None,
    read_consistency_interval: timedelta | None = None,
) -> DBConnection:
    """A LanceDB connection to ``uri`` (a folder or ``s3://…``; default :func:`default_uri`)."""
    import lancedb

    target = default_uri() if uri in (None, "") else os.fspath(uri)  # type: ignore[arg-type]
    return lancedb.connect(
        target,
        storage_options=dict(storage_options) if storage_options else None,
        read_consistency_interval=read_consistency_interval,
    )


def _uri_of(db: DBConnection) -> str:
    return str(getattr(db, "uri", db))


def table_exists(db: DBConnection, name: str = TABLE_NAME) -> bool:
    return name in list(db.list_tables().tables)


def open_table(
    uri: str | os.PathLike[str] | DBConnection | None = None, *, name: str = TABLE_NAME
) -> Table:
    """The existing ``galaxy_index`` table; :class:`IndexMissingError` when there is none."""
    if not hasattr(uri, "open_table"):
        local = default_uri() if uri in (None, "") else os.fspath(uri)  # type: ignore[arg-type]
        if "://" not in str(local) and not Path(local).expanduser().exists():
            # connecting would create the folder: a mistyped home would gain a lancedb/
            raise IndexMissingError(
                f"there is no {name!r} table: no LanceDB database at {local}; build the "
                "index first "
                "(`galaxy-assets demo` on the mock survey, or materialize the graph through "
                "`galaxy_index` in `galaxy-assets dev`), or point the search at the right "
                "database (GALAXY_ASSETS_HOME, --home, or the search.uri setting)"
            )
    db = uri if hasattr(uri, "open_table") else connect(uri)  # type: ignore[arg-type]
    if not table_exists(db, name):  # type: ignore[arg-type]
        raise IndexMissingError(
            f"there is no {name!r} table in the LanceDB database at {_uri_of(db)}; build the "  # type: ignore[arg-type]
            "index first (`galaxy-assets demo` on the mock survey, or materialize the graph "
            "through `galaxy_index` for every survey shard in `galaxy-assets dev`), or point "
            "the search at the right database (GALAXY_ASSETS_HOME, --home, or the search.uri "
            "setting)"
        )
    return db.open_table(name)  # type: ignore[union-attr]


def vector_dim(table: Table) -> int:
    """The width of the table's ``vector`` column."""
    vtype = table.schema.field("vector").type
    if not pa.types.is_fixed_size_list(vtype):
        raise IndexMismatchError(
            f"{table.name}: column 'vector' is {vtype}, not a fixed-size list; drop the table "
            "(galaxy_assets.search.table.drop_table) and rebuild it"
        )
    return int(vtype.list_size)


def _dim_mismatch(table: Table, have: int, want: int, what: str) -> IndexMismatchError:
    return IndexMismatchError(
        f"{table.name} holds {have}-d vectors but {what} {want}-d ones (a new aligner with "
        "another output width?); the index must be rebuilt: drop it with "
        "galaxy_assets.search.table.drop_table(uri) and re-materialize galaxy_index for every "
        "shard"
    )


def open_or_create_table(
    uri: str | os.PathLike[str] | DBConnection | None,
    dim: int,
    *,
    posterior_columns: Sequence[str] = (),
    name: str = TABLE_NAME,
) -> Table:
    """Open ``galaxy_index`` (its vectors must be ``dim`` wide) or create it empty.

    ``posterior_columns`` missing from an existing table are added as nullable float32
    columns (rows written before get nulls).
    """
    db = uri if hasattr(uri, "open_table") else connect(uri)  # type: ignore[arg-type]
    if not table_exists(db, name):  # type: ignore[arg-type]
        try:
            table = db.create_table(name, schema=table_schema(dim, posterior_columns))  # type: ignore[union-attr]
            log.info("created %s (%d-d vectors) in %s", name, dim, _uri_of(db))  # type: ignore[arg-type]
            return table
        except (OSError, ValueError) as exc:  # a concurrent writer created it first
            if not table_exists(db, name):  # type: ignore[arg-type]
                raise
            log.info("%s was created concurrently (%s); opening it", name, exc)
    table = db.open_table(name)  # type: ignore[union-attr]
    have = vector_dim(table)
    if have != int(dim):
        raise _dim_mismatch(table, have, int(dim), "these rows have")
    missing = [c for c in posterior_columns if c not in table.schema.names]
    if missing:
        table.add_columns([pa.field(c, pa.float32()) for c in missing])
        log.info("%s: added posterior columns %s", name, missing)
    _add_lineage_columns(table)
    return table


def _add_lineage_columns(table: Table) -> None:
    missing = [c for c in LINEAGE_COLUMNS if c not in table.schema.names]
    if missing:
        table.add_columns([pa.field(c, pa.utf8()) for c in missing])
        log.info("%s: added lineage columns %s", table.name, missing)


def drop_table(
    uri: str | os.PathLike[str] | DBConnection | None = None, *, name: str = TABLE_NAME
) -> bool:
    """Drop ``galaxy_index`` (to rebuild it, e.g. for a new vector width). True if it existed."""
    db = uri if hasattr(uri, "open_table") else connect(uri)  # type: ignore[arg-type]
    if not table_exists(db, name):  # type: ignore[arg-type]
        return False
    db.drop_table(name)  # type: ignore[union-attr]
    log.warning("dropped %s from %s", name, _uri_of(db))  # type: ignore[arg-type]
    return True


def _as_table(table_or_uri: Table | str | os.PathLike[str] | None) -> Table:
    if hasattr(table_or_uri, "merge_insert"):
        return table_or_uri  # type: ignore[return-value]
    return open_table(table_or_uri)  # type: ignore[arg-type]


def table_version(table: Table) -> int:
    """The version number of the table as this handle sees it."""
    return int(table.version)


# --------------------------------------------------------------------------- rows
@dataclass
class RowStats:
    """What :func:`build_shard_rows` did for one shard (fill-in object)."""

    shard: str = ""
    n_manifest: int = 0
    n_vectors: int = 0
    n_rows: int = 0
    n_without_vector: int = 0  # in the manifest, no search vector: not indexed
    n_bad_vector: int = 0  # non-finite, zero, null or wrong-length vector: not indexed
    n_orphan_vectors: int = 0  # a vector for a galaxy the manifest of this shard lacks
    n_captioned: int = 0
    n_with_predictions: int = 0
    posterior_columns: list[str] = field(default_factory=list)
    skipped_object_ids: list[str] = field(default_factory=list)  # the first 20

    def as_metadata(self) -> dict[str, Any]:
        return asdict(self)


def _vector_matrix(
    series: pl.Series, dim: int | None, where: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(vectors (n, dim) float32 unit rows, good mask (n,), dim)`` of a vector column.

    Rows that are null, of another length, non-finite or zero are marked bad (their
    vector rows are zeros). Rows whose norm is off 1 are re-normalised.
    """
    n = series.len()
    dtype = series.dtype
    if isinstance(dtype, pl.Array):
        width = int(dtype.size)
        if dim is None:
            dim = width
        if width != dim:
            return np.zeros((n, dim), np.float32), np.zeros(n, bool), dim
        good = ~series.is_null().to_numpy()
        mat = np.zeros((n, dim), np.float32)
        if good.any():
            mat[good] = series.filter(pl.Series(good)).to_numpy().astype(np.float32, copy=False)
    elif isinstance(dtype, pl.List):
        lengths = series.list.len().fill_null(-1).to_numpy()
        if dim is None:
            valid = lengths[lengths > 0]
            if valid.size == 0:
                return np.zeros((n, 0), np.float32), np.zeros(n, bool), 0
            values, counts = np.unique(valid, return_counts=True)
            dim = int(values[np.argmax(counts)])
        good = lengths == dim
        mat = np.zeros((n, dim), np.float32)
        if good.any():
            sub = series.filter(pl.Series(good)).cast(pl.List(pl.Float32)).list.to_array(dim)
            mat[good] = sub.to_numpy()
    else:
        raise RowsError(
            f"{where}: column 'vector' is {dtype}; expected Array(Float32, dim) or a list of "
            "floats (the search_vectors asset writes Array(Float32, dim))"
        )
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(mat).all(axis=1)
        norms = np.linalg.norm(np.where(finite[:, None], mat, 0.0), axis=1)
    good &= finite & (norms > 0)
    off = good & (np.abs(norms - 1.0) > _UNIT_TOLERANCE)
    if off.any():
        log.warning("%s: %d vectors were not unit norm; normalised", where, int(off.sum()))
    mat[good] /= norms[good, None]
    mat[~good] = 0.0
    return mat, good, int(dim)


def _fixed_size_list(mat: np.ndarray) -> pa.FixedSizeListArray:
    dim = mat.shape[1]
    return pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), pa.float32()), dim)


def _latest_captions(captions: pl.DataFrame) -> pl.DataFrame:
    """One caption per object_id: the newest non-empty one (by created_at when present)."""
    if "caption" not in captions.columns or "object_id" not in captions.columns:
        raise RowsError(
            f"captions frame has columns {captions.columns}; it needs object_id and caption "
            "(the vlm_captions asset's frame)"
        )
    frame = captions.filter(
        pl.col("caption").is_not_null() & (pl.col("caption").str.strip_chars() != "")
    )
    if "created_at" in frame.columns:
        frame = frame.sort("created_at", nulls_last=False, maintain_order=True)
    source_parts = [c for c in ("backend", "model") if c in frame.columns]
    if source_parts:
        source = pl.concat_str([pl.col(c).cast(pl.Utf8) for c in source_parts], separator=":")
    else:
        source = pl.lit(None, dtype=pl.Utf8)
    sha = (pl.col("prompt_sha").cast(pl.Utf8) if "prompt_sha" in frame.columns
           else pl.lit(None, dtype=pl.Utf8))
    return frame.unique(subset="object_id", keep="last", maintain_order=True).select(
        pl.col("object_id").cast(pl.Utf8),
        pl.col("caption").cast(pl.Utf8),
        source.alias("caption_source"),
        sha.alias("caption_prompt_sha"),
    )


def posterior_column_name(name: str) -> str:
    """``post_<name>`` (lower case) for a posterior frame's column; an error for names that
    are not plain identifiers."""
    low = str(name).strip().lower()
    out = low if low.startswith(POSTERIOR_PREFIX) else POSTERIOR_PREFIX + low
    if not _IDENTIFIER.match(out):
        raise RowsError(
            f"posterior column {name!r} cannot be a table column; rename it to letters, digits "
            "and underscores (e.g. redshift_mean)"
        )
    return out


def _posteriors(posteriors: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    if "object_id" not in posteriors.columns:
        raise RowsError(f"posterior frame has no object_id column (columns {posteriors.columns})")
    numeric = [
        c
        for c in posteriors.columns
        if c != "object_id"
        and (posteriors.schema[c].is_numeric() or posteriors.schema[c] == pl.Boolean)
    ]
    ignored = [c for c in posteriors.columns if c != "object_id" and c not in numeric]
    if ignored:
        log.warning("posterior columns %s are not numeric; not indexed", ignored)
    names = [posterior_column_name(c) for c in numeric]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise RowsError(f"posterior columns map to the same table column(s) {clash}")
    frame = posteriors.select(
        pl.col("object_id").cast(pl.Utf8),
        *[pl.col(c).cast(pl.Float32).alias(n) for c, n in zip(numeric, names, strict=True)],
    ).unique(subset="object_id", keep="first", maintain_order=True)
    return frame, names


def _emulator_version(posteriors: pl.DataFrame) -> pl.Expr:
    """``property-emulator/v<n>`` from property_posteriors' version number (or its text)."""
    column = pl.col("emulator_version")
    if posteriors.schema["emulator_version"].is_numeric():
        text = pl.concat_str([pl.lit("property-emulator/v"), column.cast(pl.Int64).cast(pl.Utf8)])
        return pl.when(column.is_null()).then(None).otherwise(text).alias("emulator_version")
    return column.cast(pl.Utf8).alias("emulator_version")


def _check_unique(frame: pl.DataFrame, what: str, shard: str) -> None:
    dup = frame.filter(pl.col("object_id").is_duplicated())["object_id"].unique().head(5)
    if dup.len():
        raise RowsError(
            f"shard {shard!r}: {what} holds repeated object_ids (e.g. {dup.to_list()}); an "
            "object_id must appear once per shard: fix the upstream asset"
        )


def build_shard_rows(
    shard: str,
    manifest: pl.DataFrame,
    vectors: pl.DataFrame,
    predictions: pl.DataFrame | None = None,
    captions: pl.DataFrame | None = None,
    posteriors: pl.DataFrame | None = None,
    *,
    dim: int | None = None,
    stats: RowStats | None = None,
) -> pa.Table:
    """The ``galaxy_index`` rows of one shard, as an Arrow table in :func:`table_schema`.

    ``manifest`` is the shard's ``raw_cutouts`` frame, ``vectors`` its ``search_vectors``
    (object_id, aligner_version, vector), ``predictions`` its ``morphology_predictions``
    (only the ``p_*`` columns are kept), ``captions`` the ``vlm_captions`` frame of all
    shards (the newest caption of each galaxy is used), ``posteriors`` an optional frame of
    object_id + numeric columns (stored as ``post_<name>``). Rows are the manifest's galaxies
    that have a good vector; a galaxy without one, or with a non-finite, zero or
    wrong-length vector, is skipped and counted in ``stats``. ``dim`` fixes the vector width
    (default: the vector column's).
    """
    stats = stats if stats is not None else RowStats()
    stats.shard = shard
    missing = [c for c in _MANIFEST_REQUIRED if c not in manifest.columns]
    if missing:
        raise RowsError(
            f"shard {shard!r}: the manifest lacks columns {missing} (a raw_cutouts frame has "
            f"{list(_MANIFEST_REQUIRED)} and more)"
        )
    for col in ("object_id", "vector"):
        if col not in vectors.columns:
            raise RowsError(
                f"shard {shard!r}: the vectors frame lacks column {col!r} (columns "
                f"{vectors.columns}); pass the search_vectors frame"
            )
    other = manifest.filter(pl.col("shard") != shard)["shard"].unique().head(3)
    if other.len():
        raise RowsError(
            f"the manifest passed for shard {shard!r} holds rows of shard(s) {other.to_list()}; "
            "pass one shard's raw_cutouts partition at a time"
        )
    manifest = manifest.with_columns(pl.col("object_id").cast(pl.Utf8))
    vectors = vectors.with_columns(pl.col("object_id").cast(pl.Utf8))
    _check_unique(manifest, "the manifest", shard)
    _check_unique(vectors, "the vectors frame", shard)
    stats.n_manifest, stats.n_vectors = manifest.height, vectors.height

    mat, good, dim = _vector_matrix(vectors["vector"], dim, f"shard {shard!r} vectors")
    version = (
        vectors["aligner_version"].cast(pl.Utf8)
        if "aligner_version" in vectors.columns
        else pl.Series("aligner_version", [None] * vectors.height, dtype=pl.Utf8)
    )
    vec = pl.DataFrame(
        {
            "object_id": vectors["object_id"],
            "aligner_version": version,
            "_vrow": np.arange(vectors.height, dtype=np.int64),
            "_good": good,
        }
    )
    in_manifest = vec.join(manifest.select("object_id"), on="object_id", how="semi")
    stats.n_orphan_vectors = vectors.height - in_manifest.height
    if stats.n_orphan_vectors:
        log.warning(
            "shard %s: %d vectors belong to galaxies not in its manifest; ignored",
            shard,
            stats.n_orphan_vectors,
        )
    joined = manifest.join(in_manifest, on="object_id", how="left", maintain_order="left")
    no_vector = joined.filter(pl.col("_vrow").is_null())
    bad_vector = joined.filter(pl.col("_vrow").is_not_null() & ~pl.col("_good"))
    stats.n_without_vector, stats.n_bad_vector = no_vector.height, bad_vector.height
    stats.skipped_object_ids = (
        bad_vector["object_id"].head(20).to_list() + no_vector["object_id"].head(20).to_list()
    )[:20]
    if bad_vector.height:
        log.warning(
            "shard %s: %d galaxies have a non-finite, zero or wrong-length vector; not indexed "
            "(e.g. %s)",
            shard,
            bad_vector.height,
            bad_vector["object_id"].head(3).to_list(),
        )
    rows = joined.filter(pl.col("_good").fill_null(False))

    def col(name: str, dtype: pl.DataType) -> pl.Expr:
        if name in rows.columns:
            return pl.col(name).cast(dtype)
        return pl.lit(None, dtype=dtype).alias(name)

    frame = rows.select(
        pl.col("object_id"),
        col("ra", pl.Float64()),
        col("dec", pl.Float64()),
        col("healpix", pl.Int64()),
        pl.lit(shard, dtype=pl.Utf8).alias("shard"),
        col("shard_uri", pl.Utf8()),
        col("row", pl.Int64()),
        col("bands", pl.Utf8()),
        col("height", pl.Int32()),
        col("width", pl.Int32()),
        *[col(f"flux_{b}", pl.Float32()) for b in BANDS],
        *[
            magnitude(pl.col(f"flux_{b}")).alias(f"mag_{b}")
            if f"flux_{b}" in rows.columns
            else pl.lit(None, dtype=pl.Float32).alias(f"mag_{b}")
            for b in BANDS
        ],
        col("ebv", pl.Float32()),
        pl.col("aligner_version"),
        pl.col("_vrow"),
    )
    if captions is not None and captions.height:
        frame = frame.join(_latest_captions(captions), on="object_id", how="left")
    else:
        frame = frame.with_columns(
            pl.lit(None, dtype=pl.Utf8).alias("caption"),
            pl.lit(None, dtype=pl.Utf8).alias("caption_source"),
        )
    if predictions is not None and predictions.height:
        present = [p for p in P_COLUMNS if p in predictions.columns]
        # morphology_predictions name their encoder ("morphology-encoder/v2")
        version = (
            [pl.col("encoder").cast(pl.Utf8).alias("morphology_version")]
            if "encoder" in predictions.columns else []
        )
        preds = predictions.select(
            pl.col("object_id").cast(pl.Utf8), *[pl.col(p).cast(pl.Float32) for p in present],
            *version,
        ).unique(subset="object_id", keep="first", maintain_order=True)
        frame = frame.join(preds, on="object_id", how="left")
        stats.n_with_predictions = frame.join(preds, on="object_id", how="semi").height
    post_names: list[str] = []
    if posteriors is not None:
        if "emulator_version" in posteriors.columns:  # lineage, not a posterior summary
            version = posteriors.select(
                pl.col("object_id").cast(pl.Utf8), _emulator_version(posteriors)
            ).unique(subset="object_id", keep="first", maintain_order=True)
            frame = frame.join(version, on="object_id", how="left")
            posteriors = posteriors.drop("emulator_version")
        post, post_names = _posteriors(posteriors)
        frame = frame.join(post, on="object_id", how="left")
    stats.posterior_columns = post_names
    stats.n_captioned = int(frame["caption"].is_not_null().sum())
    stats.n_rows = frame.height

    schema = table_schema(dim, post_names)
    vector = _fixed_size_list(mat[frame["_vrow"].to_numpy()] if frame.height else mat[:0])
    arrays = []
    for f in schema:
        if f.name == "vector":
            arrays.append(vector)
        elif f.name in frame.columns:
            arrays.append(frame[f.name].to_arrow().cast(f.type))
        else:
            arrays.append(pa.nulls(frame.height, f.type))
    log.info(
        "shard %s: %d rows for galaxy_index (%d without vector, %d bad vectors, %d captioned)",
        shard,
        stats.n_rows,
        stats.n_without_vector,
        stats.n_bad_vector,
        stats.n_captioned,
    )
    return pa.Table.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------- upsert
@dataclass
class UpsertStats:
    """What :func:`upsert_shard` wrote."""

    shard: str = ""
    version_before: int | None = None
    version: int | None = None
    n_rows: int = 0  # rows handed to the merge
    n_inserted: int = 0
    n_updated: int = 0
    n_deleted: int = 0  # the shard's rows that were no longer present
    n_skipped: int = 0  # rows refused (bad vector)
    skipped_object_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_metadata(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        return out


def _as_arrow(rows: pa.Table | pl.DataFrame) -> pa.Table:
    if isinstance(rows, pl.DataFrame):
        return rows.to_arrow()
    if isinstance(rows, pa.Table):
        return rows
    raise RowsError(f"rows must be a pyarrow Table or polars DataFrame, not {type(rows).__name__}")


def _conform(rows: pa.Table, shard: str, stats: UpsertStats) -> tuple[pa.Table, int, list[str]]:
    """Check the rows of one shard and bring them to the base schema (bad vectors dropped)."""
    names = rows.column_names
    for required in ("object_id", "shard", "vector"):
        if required not in names:
            raise RowsError(
                f"rows for shard {shard!r} lack column {required!r}; build them with "
                "build_shard_rows"
            )
    unknown = [c for c in names if c not in BASE_COLUMNS and c != "vector"]
    bad_names = [
        c for c in unknown if not c.startswith(POSTERIOR_PREFIX) or not _IDENTIFIER.match(c)
    ]
    if bad_names:
        raise RowsError(
            f"rows for shard {shard!r} have columns {bad_names} that galaxy_index does not hold "
            f"(posterior summaries must be named {POSTERIOR_PREFIX}<name>)"
        )
    frame = pl.from_arrow(rows.drop_columns(["vector"]))
    assert isinstance(frame, pl.DataFrame)
    shards = frame["shard"]
    if shards.null_count() or (shards != shard).any():
        other = frame.filter(pl.col("shard").is_null() | (pl.col("shard") != shard))
        raise RowsError(
            f"rows for shard {shard!r} include rows of shard(s) "
            f"{other['shard'].unique().head(3).to_list()}; upsert one shard at a time"
        )
    if frame["object_id"].null_count():
        raise RowsError(f"rows for shard {shard!r} include a null object_id")
    _check_unique(frame, "the rows", shard)
    vec_series = pl.from_arrow(rows.column("vector"))
    assert isinstance(vec_series, pl.Series)
    mat, good, dim = _vector_matrix(vec_series, None, f"rows for shard {shard!r}")
    stats.n_skipped = int((~good).sum())
    stats.skipped_object_ids = frame.filter(pl.Series(~good))["object_id"].head(20).to_list()
    if stats.n_skipped:
        log.warning(
            "shard %s: %d rows with a non-finite, zero or wrong-length vector were not written",
            shard,
            stats.n_skipped,
        )
    rows = rows.filter(pa.array(good))
    rows = rows.set_column(rows.column_names.index("vector"), "vector", _fixed_size_list(mat[good]))
    return rows, dim, unknown


def _aligned_to(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` with exactly ``schema``'s columns, in order (absent ones null)."""
    arrays = []
    for f in schema:
        if f.name in rows.column_names:
            arrays.append(rows.column(f.name).cast(f.type))
        else:
            arrays.append(pa.nulls(rows.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def iter_record_batches(rows: pa.Table, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The batches streamed into the merge (a seam for tests that fail a write half-way)."""
    yield from rows.to_batches(max_chunksize=max(1, int(batch_rows)))


def upsert_shard(
    table_or_uri: Table | str | os.PathLike[str] | None,
    shard: str,
    rows: pa.Table | pl.DataFrame,
    *,
    batch_rows: int = UPSERT_BATCH_ROWS,
) -> UpsertStats:
    """Write one shard's rows into ``galaxy_index`` in one commit (a table that lacks the
    shard's posterior columns or the lineage columns gains them first, empty, in commits of
    their own, which stay if the merge then fails; ``version_before`` is the version before
    them).

    ``merge_insert("object_id")``: matched rows are updated, new ones inserted, and the
    rows of ``shard`` that ``rows`` no longer holds are deleted
    (``when_not_matched_by_source_delete("shard = '<shard>'")``). The rows are streamed into
    the merge ``batch_rows`` at a time; if anything fails before the commit, no new version
    is written and a rerun does the whole shard again. Creates the table when
    ``table_or_uri`` is a URI (or None: the home's) and it does not exist yet. Rows with a
    bad vector are skipped and counted; a vector width other than the table's raises
    :class:`IndexMismatchError`.
    """
    started = time.perf_counter()
    stats = UpsertStats(shard=shard)
    if not isinstance(shard, str) or not shard:
        raise RowsError(f"shard {shard!r}: give the shard's partition key")
    data = _as_arrow(rows)
    data, dim, posterior = _conform(data, shard, stats)
    if hasattr(table_or_uri, "merge_insert"):
        table: Table = table_or_uri  # type: ignore[assignment]
    else:
        db = connect(table_or_uri)  # type: ignore[arg-type]
        if not table_exists(db):
            if not data.num_rows:
                stats.seconds = time.perf_counter() - started
                log.info("shard %s: no rows and no table yet; nothing to do", shard)
                return stats
            table = open_or_create_table(db, dim, posterior_columns=posterior)
        else:
            table = db.open_table(TABLE_NAME)
    have = vector_dim(table)
    if data.num_rows and have != dim:
        raise _dim_mismatch(table, have, dim, f"shard {shard!r} has")
    stats.version_before = table_version(table)  # before any column is added
    missing = [c for c in posterior if c not in table.schema.names]
    if missing:
        table.add_columns([pa.field(c, pa.float32()) for c in missing])
        log.info("%s: added posterior columns %s", table.name, missing)
    _add_lineage_columns(table)
    data = _aligned_to(data, table.schema)
    stats.n_rows = data.num_rows
    reader = pa.RecordBatchReader.from_batches(table.schema, iter_record_batches(data, batch_rows))
    result = (
        table.merge_insert("object_id")
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .when_not_matched_by_source_delete(f"shard = {sql_string(shard)}")
        .execute(reader)
    )
    stats.version = int(result.version)
    stats.n_inserted = int(result.num_inserted_rows)
    stats.n_updated = int(result.num_updated_rows)
    stats.n_deleted = int(result.num_deleted_rows)
    stats.seconds = time.perf_counter() - started
    log.info(
        "shard %s: galaxy_index v%s → v%s (%d inserted, %d updated, %d deleted) in %.2f s",
        shard,
        stats.version_before,
        stats.version,
        stats.n_inserted,
        stats.n_updated,
        stats.n_deleted,
        stats.seconds,
    )
    return stats


def remove_shards(
    table_or_uri: Table | str | os.PathLike[str] | None, shards: Sequence[str]
) -> dict[str, Any]:
    """Delete every row of ``shards`` (shards that disappeared) in one commit."""
    table = _as_table(table_or_uri)
    shards = sorted({str(s) for s in shards})
    before = table_version(table)
    if not shards:
        return {"shards": [], "n_deleted": 0, "version_before": before, "version": before}
    where = "shard IN (" + ", ".join(sql_string(s) for s in shards) + ")"
    result = table.delete(where)
    version = int(getattr(result, "version", table_version(table)))
    n_deleted = int(getattr(result, "num_deleted_rows", 0))
    log.info(
        "removed %d rows of %d shards from %s (v%d)", n_deleted, len(shards), table.name, version
    )
    return {"shards": shards, "n_deleted": n_deleted, "version_before": before, "version": version}


def column_counts(table: Table, column: str, where: str | None = None) -> dict[Any, int]:
    """``value → number of rows`` of one (low-cardinality) column, e.g. shard or aligner_version."""
    if column not in table.schema.names:
        raise RowsError(f"{table.name} has no column {column!r}")
    query = table.search().select([column])
    if where:
        query = query.where(where)
    values = query.limit(None).to_arrow().column(column)
    counts = pl.from_arrow(values).value_counts()  # type: ignore[union-attr]
    return {row[0]: int(row[1]) for row in counts.iter_rows()}


def indexed_shards(table_or_uri: Table | str | os.PathLike[str] | None) -> dict[str, int]:
    """``shard → rows`` in the table (to find shards that disappeared)."""
    return column_counts(_as_table(table_or_uri), "shard")


# --------------------------------------------------------------------------- indexes
def _indices(table: Table) -> list[Any]:
    return list(table.list_indices())


def _index_on(table: Table, column: str, kind: str | None = None) -> Any | None:
    for index in _indices(table):
        cols = list(getattr(index, "columns", []) or [])
        itype = str(getattr(index, "index_type", ""))
        if cols == [column] and (kind is None or itype.lower() == kind.lower()):
            return index
    return None


def _index_counts(table: Table, index: Any) -> dict[str, int]:
    try:
        st = table.index_stats(index.name)
    except Exception:  # noqa: BLE001 - statistics are informative only
        return {}
    if st is None:
        return {}
    return {
        "indexed_rows": int(st.num_indexed_rows),
        "unindexed_rows": int(st.num_unindexed_rows),
    }


def ensure_fts_index(table: Table, *, replace: bool = False) -> dict[str, Any]:
    """The native (Lance) full-text index on ``caption``: created when missing, rebuilt when
    ``replace``. Rows added since the index was built are still searched (unindexed rows are
    scanned) until ``index_maintenance`` (:func:`galaxy_assets.search.ann.maintain`) folds
    them in."""
    from lancedb.index import FTS

    existing = _index_on(table, "caption", "FTS")
    created = False
    if existing is None or replace:
        table.create_index("caption", config=FTS(with_position=False), replace=True)
        created = True
        existing = _index_on(table, "caption", "FTS")
    out: dict[str, Any] = {"index": getattr(existing, "name", None), "created": created}
    if existing is not None:
        out.update(_index_counts(table, existing))
    return out


def ensure_scalar_indexes(table: Table) -> dict[str, bool]:
    """BTree on ``object_id`` (fetching rows by id, merges) and bitmaps on ``shard`` and
    ``aligner_version`` (deletes, filters). Returns which were created now."""
    from lancedb.index import Bitmap, BTree

    created: dict[str, bool] = {}
    for column, config in (
        ("object_id", BTree()),
        ("shard", Bitmap()),
        ("aligner_version", Bitmap()),
    ):
        if _index_on(table, column) is None:
            table.create_index(column, config=config, replace=True)
            created[column] = True
        else:
            created[column] = False
    return created


def ensure_indexes(table: Table) -> dict[str, Any]:
    """:func:`ensure_scalar_indexes` and :func:`ensure_fts_index` (the vector index is
    :func:`galaxy_assets.search.ann.ensure_vector_index`'s)."""
    if table.count_rows() == 0:
        return {"skipped": "empty table"}
    return {"scalar": ensure_scalar_indexes(table), "fts": ensure_fts_index(table)}
