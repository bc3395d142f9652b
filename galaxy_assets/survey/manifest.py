"""Build a shard's manifest: one validated row per usable galaxy, pixels left in place.

:func:`build_manifest` reads the shard's catalogue columns, streams its pixels once to
measure each galaxy's fraction of non-finite pixels, and leaves out (with a reason) the
galaxies nobody can use:

* a band with no finite pixel, or no finite pixel at all (NaN- or inf-filled cutouts);
* a band that is zero everywhere (no data written);
* a band whose inverse variance is zero or non-finite everywhere (no valid measurement);
* an empty object_id, or an ra / dec that is not finite or outside [0, 360) × [-90, 90];
* a second (third…) galaxy with an object_id already kept from this shard.

Files the reader itself could not use (FITS folders record them in ``reader.rejected``)
are reported the same way. The frame has exactly the columns and dtypes of
:data:`schema.MANIFEST_COLUMNS` and is validated against :data:`schema.MANIFEST_SCHEMA`.
Missing catalogue values (a shard without ``FLUX_I``, a NaN flux) are nulls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandera.errors
import polars as pl

from galaxy_assets.survey import schema
from galaxy_assets.survey.base import CutoutBatch, CutoutReader
from galaxy_assets.survey.errors import SurveyFormatError
from galaxy_assets.survey.mmu import healpix_from_path

log = logging.getLogger(__name__)

__all__ = [
    "HEALPIX_NSIDE",
    "HEALPIX_ORDER",
    "ManifestResult",
    "build_manifest",
    "healpix_of",
    "shard_fingerprint",
]

# HEALPix grid used when a shard's path names no ``healpix=N`` cell (MMU partitions at 16).
HEALPIX_NSIDE = 16
HEALPIX_ORDER = "nested"

ProgressFn = Callable[[int, int], None]


@dataclass
class ManifestResult:
    """A shard's manifest and what was left out of it.

    ``frame``: one row per kept galaxy (columns of :data:`schema.MANIFEST_COLUMNS`).
    ``rejected``: one dict per galaxy left out: ``object_id``, ``row`` (None for a FITS file
    the reader left out before numbering rows; such entries also carry ``file``),
    ``reason`` (a sentence) and ``kind`` (its category: ``pixels``, ``ivar``, ``position``,
    ``object_id``, ``duplicate`` or ``reader``); ``reasons`` counts rejections per kind.
    ``n_read`` counts the galaxies considered (rows streamed plus files the reader left
    out); ``n_rejected`` the galaxies left out.
    """

    frame: pl.DataFrame
    rejected: list[dict[str, Any]]
    shard: str
    shard_uri: str
    n_read: int
    n_rejected: int
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def n_kept(self) -> int:
        """Galaxies in the manifest."""
        return self.frame.height

    def summary(self) -> dict[str, Any]:
        """Counts and pixel statistics, flat and JSON-friendly (for Dagster metadata)."""
        nonfinite = self.frame["nonfinite_fraction"]
        return {
            "shard": self.shard,
            "shard_uri": self.shard_uri,
            "n_read": self.n_read,
            "n_kept": self.n_kept,
            "n_rejected": self.n_rejected,
            "rejected_by_reason": dict(self.reasons),
            "mean_nonfinite_fraction": float(nonfinite.mean() or 0.0) if self.n_kept else 0.0,
            "max_nonfinite_fraction": float(nonfinite.max() or 0.0) if self.n_kept else 0.0,
        }


def healpix_of(
    ra: np.ndarray, dec: np.ndarray, nside: int = HEALPIX_NSIDE, order: str = HEALPIX_ORDER
) -> np.ndarray:
    """HEALPix cell (int64) of each position (degrees) at ``nside`` in ``order``."""
    import astropy.units as u
    from astropy_healpix import HEALPix

    grid = HEALPix(nside=nside, order=order)
    if len(ra) == 0:
        return np.zeros(0, dtype=np.int64)
    cells = grid.lonlat_to_healpix(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg)
    return np.asarray(cells, dtype=np.int64)


def _pixel_problems(batch: CutoutBatch) -> tuple[np.ndarray, list[str | None]]:
    """Per galaxy of ``batch``: fraction of non-finite pixels and the rejection reason."""
    images = batch.images
    n, nb = images.shape[:2]
    finite = np.isfinite(images)
    finite_per_band = finite.reshape(n, nb, -1)
    n_finite = finite_per_band.sum(axis=2)  # (n, nb)
    npix = finite_per_band.shape[2] * nb
    fraction = (1.0 - n_finite.sum(axis=1) / npix).astype(np.float32)
    no_finite = n_finite == 0
    # All-zero bands: finite everywhere and exactly zero.
    zero = ~np.any(images.reshape(n, nb, -1) != 0, axis=2)
    dead_ivar = np.zeros((n, nb), dtype=bool)
    if batch.ivar is not None:
        iv = batch.ivar.reshape(n, nb, -1)
        dead_ivar = ~np.any(np.isfinite(iv) & (iv > 0), axis=2)
    reasons: list[str | None] = [None] * n
    bad = np.flatnonzero(no_finite.any(axis=1) | zero.any(axis=1) | dead_ivar.any(axis=1))
    for i in bad.tolist():
        if no_finite[i].all():
            kind = "nan" if np.isnan(images[i]).all() else "nonfinite"
            reasons[i] = f"pixels: image is entirely non-finite ({kind})"
        elif no_finite[i].any():
            names = ",".join(b for b, x in zip(batch.bands, no_finite[i], strict=True) if x)
            reasons[i] = f"pixels: band(s) {names} have no finite pixel"
        elif zero[i].any():
            names = ",".join(b for b, x in zip(batch.bands, zero[i], strict=True) if x)
            reasons[i] = f"pixels: band(s) {names} are zero everywhere (no data)"
        else:
            names = ",".join(b for b, x in zip(batch.bands, dead_ivar[i], strict=True) if x)
            reasons[i] = (
                f"ivar: band(s) {names} have zero or non-finite inverse variance everywhere"
            )
    return fraction, reasons


def build_manifest(
    reader: CutoutReader,
    shard: str,
    *,
    batch_size: int = 256,
    progress: ProgressFn | None = None,
    nside: int = HEALPIX_NSIDE,
) -> ManifestResult:
    """Stream ``reader`` once and return the shard's manifest and its rejections.

    ``shard`` is the partition key written into every row; ``reader.uri`` becomes
    ``shard_uri``. ``progress(done, total)`` is called after each batch with galaxy counts.
    ``healpix`` comes from a ``healpix=N`` component of the shard's path, else from ra/dec
    at ``nside`` (nested). Raises :class:`SurveyFormatError` when no galaxy is usable or
    the frame fails the manifest schema; per-galaxy problems never raise.
    """
    uri = str(reader.uri)
    catalog = reader.catalog()
    n = len(reader)
    ids = np.asarray(catalog["object_id"]).astype(str)
    ra = np.asarray(catalog["ra"], dtype=np.float64)
    dec = np.asarray(catalog["dec"], dtype=np.float64)

    keep = np.ones(n, dtype=bool)
    reason: list[str | None] = [None] * n
    nonfinite = np.zeros(n, dtype=np.float32)
    height = np.zeros(n, dtype=np.int32)
    width = np.zeros(n, dtype=np.int32)
    seen = np.zeros(n, dtype=bool)

    done = 0
    for batch in reader.iter_batches(batch_size):
        rows = np.asarray(batch.rows, dtype=np.int64)
        fraction, problems = _pixel_problems(batch)
        nonfinite[rows] = fraction
        height[rows] = batch.images.shape[2]
        width[rows] = batch.images.shape[3]
        seen[rows] = True
        for row, problem in zip(rows.tolist(), problems, strict=True):
            if problem is not None:
                keep[row] = False
                reason[row] = problem
        done += len(batch)
        if progress is not None:
            progress(done, n)
    if not seen.all():
        missing = int(np.flatnonzero(~seen)[0])
        raise SurveyFormatError(
            uri,
            f"the reader streamed {int(seen.sum())} of {n} rows (row {missing} missing)",
            expected="every row of the shard exactly once",
        )

    # Rows the reader itself gave up on (e.g. unreadable FITS pixels) keep its reason.
    reader_rejected: list[dict[str, Any]] = list(getattr(reader, "rejected", []) or [])
    row_file: dict[int, str] = {}
    for entry in reader_rejected:
        row = entry.get("row")
        if row is not None and 0 <= int(row) < n:
            keep[int(row)] = False
            reason[int(row)] = f"reader: {entry.get('reason')}"
            if "file" in entry:
                row_file[int(row)] = entry["file"]

    # Identity and position.
    bad_pos = ~(
        np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) & (dec >= -90) & (dec <= 90)
    )
    empty_id = np.char.str_len(ids) == 0
    first_row: dict[str, int] = {}
    for row in range(n):
        if not keep[row]:
            continue
        if empty_id[row]:
            keep[row], reason[row] = False, "object_id: empty; expected a non-empty identifier"
        elif bad_pos[row]:
            keep[row] = False
            reason[row] = (
                f"position: ra={float(ra[row])}, dec={float(dec[row])} is not a sky position; "
                "expected finite ra in [0, 360) and dec in [-90, 90] degrees"
            )
        elif ids[row] in first_row:
            keep[row] = False
            reason[row] = (
                f"duplicate: object_id {str(ids[row])!r} already kept at row "
                f"{first_row[ids[row]]} of this shard"
            )
        else:
            first_row[ids[row]] = row

    rejected: list[dict[str, Any]] = []
    for entry in reader_rejected:
        if entry.get("row") is None:
            rejected.append(
                {
                    "object_id": entry.get("object_id"),
                    "row": None,
                    "reason": f"reader: {entry.get('reason')}",
                    **({"file": entry["file"]} if "file" in entry else {}),
                }
            )
    for row in np.flatnonzero(~keep).tolist():
        rejected.append(
            {
                "object_id": str(ids[row]),
                "row": row,
                "reason": reason[row],
                **({"file": row_file[row]} if row in row_file else {}),
            }
        )
    reasons: dict[str, int] = {}
    for entry in rejected:
        entry["kind"] = str(entry["reason"]).split(":", 1)[0]
        reasons[entry["kind"]] = reasons.get(entry["kind"], 0) + 1

    n_read = n + sum(1 for e in reader_rejected if e.get("row") is None)
    if not keep.any():
        first = rejected[0]["reason"] if rejected else "the shard holds no galaxy"
        raise SurveyFormatError(
            uri,
            f"no usable galaxy among {n_read}; first problem: {first}",
            expected="at least one galaxy with finite pixels, valid ra/dec and an object_id",
        )

    idx = np.flatnonzero(keep)
    cell = getattr(reader, "healpix", None)
    if cell is None:
        cell = healpix_from_path(uri)
    if cell is not None:
        healpix = np.full(idx.size, int(cell), dtype=np.int64)
    else:
        healpix = healpix_of(ra[idx], dec[idx], nside=nside)

    def col(name: str) -> np.ndarray:
        values = catalog.get(name)
        if values is None:
            return np.full(idx.size, np.nan, dtype=np.float32)
        return np.asarray(values, dtype=np.float32)[idx]

    data: dict[str, Any] = {
        "object_id": ids[idx].tolist(),
        "ra": ra[idx],
        "dec": dec[idx],
        "healpix": healpix,
        "flux_g": col("flux_g"),
        "flux_r": col("flux_r"),
        "flux_i": col("flux_i"),
        "flux_z": col("flux_z"),
        "ebv": col("ebv"),
        "bands": [",".join(reader.bands)] * idx.size,
        "height": height[idx],
        "width": width[idx],
        "nonfinite_fraction": nonfinite[idx],
        "shard": [shard] * idx.size,
        "shard_uri": [uri] * idx.size,
        "row": idx.astype(np.int64),
    }
    frame = pl.DataFrame(data, schema=schema.MANIFEST_COLUMNS)
    floats = ["flux_g", "flux_r", "flux_i", "flux_z", "ebv"]
    frame = frame.with_columns(pl.col(c).fill_nan(None) for c in floats)
    try:
        schema.MANIFEST_SCHEMA.validate(frame, lazy=True)
    except (pandera.errors.SchemaErrors, pandera.errors.SchemaError) as exc:
        raise SurveyFormatError(
            uri,
            f"the manifest of shard {shard!r} fails its schema: {str(exc)[:2000]}",
            field="manifest",
            expected="rows matching schema.MANIFEST_SCHEMA",
        ) from exc

    result = ManifestResult(
        frame=frame,
        rejected=rejected,
        shard=shard,
        shard_uri=uri,
        n_read=n_read,
        n_rejected=len(rejected),
        reasons=reasons,
    )
    if rejected:
        log.warning(
            "%s: %d of %d galaxies left out (%s)",
            shard,
            len(rejected),
            n_read,
            ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())),
        )
    log.info("%s: manifest of %d galaxies", shard, frame.height)
    return result


def shard_fingerprint(manifest: pl.DataFrame) -> str:
    """A short hash that changes when a shard's content may have changed: its manifest rows
    (object_id, row, shard_uri) and the size and modification time of each shard file.

    Assets that derive per-galaxy outputs from pixels (``image_embeddings``) compare it with
    the one recorded at their last materialization to skip work that would give the same
    result. A URI that is not a local file contributes its text only.
    """
    import hashlib

    digest = hashlib.sha256()
    cols = manifest.select("object_id", "row", "shard_uri").sort("object_id")
    for uri in sorted(set(cols["shard_uri"].to_list())):
        digest.update(uri.encode())
        path = Path(uri.removeprefix("file://"))
        if path.exists():
            st = path.stat()
            digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            if path.is_dir():  # a FITS folder: a file edited in place leaves the folder's own
                for f in sorted(path.iterdir()):  # size and mtime as they were
                    fst = f.stat()
                    digest.update(f"{f.name}:{fst.st_size}:{fst.st_mtime_ns}".encode())
    for column in ("object_id", "row"):
        digest.update(cols[column].cast(pl.Utf8).str.join("\x1f").item().encode())
    return digest.hexdigest()[:16]
