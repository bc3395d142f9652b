"""Read and write Multimodal Universe (MMU) HDF5 image shards.

The layout is the one of the Legacy Survey DR10 and HSC parent samples of the Multimodal
Universe (https://github.com/MultimodalUniverse/MultimodalUniverse), one file per shard,
usually stored under a ``healpix=N/`` folder:

================  ==================  =====================================================
dataset           shape               meaning
================  ==================  =====================================================
image_array       (N, B, H, W) f4     cutouts, nanomaggies per pixel
image_band        (N, B) bytes        band names per row (``DES-G`` … or ``g`` …)
image_ivar        (N, B, H, W) f4     inverse variance of ``image_array`` (optional)
image_psf_fwhm    (N, B) f4           PSF FWHM in arcsec (optional)
image_scale       (N, B) f4           pixel scale in arcsec / pixel (optional)
object_id         (N,) bytes or int   survey identifier
ra, dec           (N,) f8             position in degrees (ICRS)
FLUX_G … FLUX_Z   (N,) f4             catalogue fluxes in nanomaggies (optional)
EBV               (N,) f4             Galactic E(B-V) in magnitudes (optional)
================  ==================  =====================================================

:class:`MMUShardReader` validates a shard when it opens it and streams cutouts with h5py
hyperslab reads straight into the output arrays (no whole-shard load, no extra copy);
:func:`write_mmu_shard` writes the same layout atomically.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from galaxy_assets.survey import schema
from galaxy_assets.survey.base import CutoutBatch
from galaxy_assets.survey.errors import SurveyConfigError, SurveyFormatError

log = logging.getLogger(__name__)

__all__ = [
    "MMUShardReader",
    "healpix_from_path",
    "normalize_band",
    "write_mmu_shard",
]

_HEALPIX_PART = re.compile(r"^healpix=(\d+)$")
_REOPEN_HINT = "the file may be truncated or corrupt: regenerate or re-download it"


def healpix_from_path(path: str | Path) -> int | None:
    """The HEALPix cell named by a ``healpix=N`` component of ``path``, or None.

    The innermost such component wins (``…/healpix=12/001-of-001.hdf5`` gives 12). The cell
    number is at whatever ``nside`` the survey used to partition its files (16 in MMU).
    """
    parts = Path(path).parts
    for part in reversed(parts):
        name = part
        for suffix in (".hdf5", ".h5"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        match = _HEALPIX_PART.match(name)
        if match:
            return int(match.group(1))
    return None


def normalize_band(name: str | bytes) -> str:
    """Canonical band name: ``b'DES-G'`` → ``'g'``, ``'HSC-I'`` → ``'i'``, ``'R'`` → ``'r'``.

    Survey prefixes before the last ``-`` and anything after the first blank (FITS FILTER
    values such as ``'g DECam SDSS c0001'``) are dropped, and the result is lower case. The
    result is not checked against :data:`schema.KNOWN_BANDS`; callers do that.
    """
    if isinstance(name, bytes | np.bytes_):
        name = bytes(name).decode("utf-8", errors="replace")
    text = str(name).strip().strip("\x00").strip()
    if not text:
        return ""
    text = text.split()[0]
    if "-" in text:
        text = text.rsplit("-", 1)[1]
    return text.lower()


def _decode_ids(raw: np.ndarray) -> np.ndarray:
    """object_id values (bytes, str or integers) as a numpy unicode array."""
    raw = np.asarray(raw)
    if raw.dtype.kind == "S":
        try:
            decoded = raw.astype(str)  # ASCII fast path (a C loop, ~5x np.char.decode)
        except UnicodeDecodeError:
            decoded = np.char.decode(raw, "utf-8", errors="replace")
        return np.char.strip(decoded)  # fixed-width fields pad with spaces; vlen ones do not
    if raw.dtype.kind == "U":
        return np.char.strip(raw)
    if raw.dtype.kind == "O":
        vals = [
            (v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)).strip()
            for v in raw.tolist()
        ]
        return np.asarray(vals, dtype=str) if vals else np.zeros(0, dtype="<U1")
    if raw.dtype.kind in "iu":
        return raw.astype(str)
    if raw.dtype.kind == "f":
        # Integer ids stored as floats (seen in some catalogues): print without ".0".
        finite = np.isfinite(raw)
        if finite.all() and np.all(raw == np.round(raw)):
            return raw.astype(np.int64).astype(str)
        return raw.astype(str)
    raise TypeError(f"unsupported object_id dtype {raw.dtype}")


class MMUShardReader:
    """Stream cutouts from one Multimodal Universe HDF5 shard.

    Parameters
    ----------
    path:
        The ``.hdf5`` / ``.h5`` shard file.
    bands:
        Bands to return, in this order (``"g"``, ``"r"``… or survey names such as ``"DES-G"``);
        None returns every band of the shard in its own order.
    size:
        Centre-crop every cutout to ``size`` × ``size`` pixels (offset ``(H - size) // 2``);
        None keeps the native H × W.
    ivar:
        Also read ``image_ivar`` (when the shard has it) into :attr:`CutoutBatch.ivar`.
        Set False to halve the I/O when only pixels are needed.

    The file is validated on open: required datasets present, consistent first dimensions,
    a 4-D image, ``image_ivar`` of the image's shape, known and unique band names in the same
    order on every row, requested bands present, a crop no larger than the cutouts. Any
    problem raises :class:`SurveyFormatError` naming the file, the dataset and what was
    expected; a bad setting (``size <= 0``, an unknown requested band) raises
    :class:`SurveyConfigError`. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | Path,
        bands: Sequence[str] | None = None,
        size: int | None = None,
        *,
        ivar: bool = True,
    ) -> None:
        self.path = Path(path)
        self.uri: str = os.path.abspath(self.path)
        self._file: h5py.File | None = None
        self._scratch: np.ndarray | None = None
        # rows whose pixels could not be read (a corrupt compressed chunk), streamed as NaN:
        # build_manifest leaves them out with this reason
        self.rejected: list[dict[str, Any]] = []
        self._rejected_rows: set[int] = set()
        self._dead_batches = 0  # consecutive batches none of whose rows could be read
        if not self.path.is_file():
            raise SurveyFormatError(
                self.path,
                "no such file",
                expected="an existing MMU HDF5 shard (.hdf5 / .h5)",
            )
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise SurveyFormatError(
                self.path,
                f"cannot be opened as HDF5 ({exc}); {_REOPEN_HINT}",
                expected="a complete HDF5 file in the Multimodal Universe layout",
            ) from exc
        try:
            self._validate(bands, size, ivar)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ validation
    def _fail(self, problem: str, field: str | None, expected: str | None) -> SurveyFormatError:
        return SurveyFormatError(self.path, problem, field=field, expected=expected)

    def _dataset(self, name: str) -> h5py.Dataset | None:
        """The dataset ``name`` (cached), or None when the shard has none."""
        if name in self._datasets:
            return self._datasets[name]
        assert self._file is not None
        ds: h5py.Dataset | None = None
        if name in self._names:
            try:
                obj = self._file[name]
            except (OSError, KeyError) as exc:
                raise self._fail(
                    f"dataset cannot be read ({exc}); {_REOPEN_HINT}", name, "a readable dataset"
                ) from exc
            if not isinstance(obj, h5py.Dataset):
                raise self._fail(
                    f"is a {type(obj).__name__}, not a dataset", name, "an HDF5 dataset"
                )
            ds = obj
        self._datasets[name] = ds
        return ds

    def _read_all(self, ds: h5py.Dataset) -> np.ndarray:
        try:
            return ds[()]
        except (OSError, ValueError) as exc:
            raise self._fail(
                f"dataset cannot be read ({exc}); {_REOPEN_HINT}",
                ds.name.lstrip("/"),
                "a readable dataset",
            ) from exc

    def _validate(self, bands: Sequence[str] | None, size: int | None, want_ivar: bool) -> None:
        assert self._file is not None
        try:
            self._names = set(self._file.keys())
        except (OSError, RuntimeError) as exc:
            raise self._fail(
                f"its root group cannot be listed ({exc}); {_REOPEN_HINT}",
                None,
                "a complete HDF5 file in the Multimodal Universe layout",
            ) from exc
        self._datasets: dict[str, h5py.Dataset | None] = {}
        missing = [name for name in schema.MMU_REQUIRED if self._dataset(name) is None]
        if missing:
            raise self._fail(
                f"missing required dataset(s) {', '.join(missing)}",
                missing[0],
                f"an MMU shard holding all of {', '.join(schema.MMU_REQUIRED)}",
            )
        image = self._dataset(schema.MMU_IMAGE)
        assert image is not None
        if image.ndim != 4:
            raise self._fail(
                f"has shape {image.shape} ({image.ndim}-D)",
                schema.MMU_IMAGE,
                "a 4-D array (N galaxies, B bands, H, W pixels)",
            )
        if image.dtype.kind not in "fiu":
            raise self._fail(
                f"has dtype {image.dtype}", schema.MMU_IMAGE, "a float32 (or numeric) array"
            )
        n, nb, h, w = (int(x) for x in image.shape)
        if n == 0:
            raise self._fail("holds no galaxies (N = 0)", schema.MMU_IMAGE, "at least one cutout")
        if nb == 0 or h == 0 or w == 0:
            raise self._fail(
                f"has an empty axis, shape {image.shape}",
                schema.MMU_IMAGE,
                "at least one band and a non-empty H × W cutout",
            )
        self._image = image
        self._n = n
        self._native_shape = (h, w)

        def per_galaxy(name: str, ndim: int = 1) -> h5py.Dataset | None:
            ds = self._dataset(name)
            if ds is None:
                return None
            if ds.ndim < 1 or ds.shape[0] != n:
                raise self._fail(
                    f"has {ds.shape[0] if ds.ndim else 'no'} rows (shape {ds.shape}) but "
                    f"{schema.MMU_IMAGE} has {n}",
                    name,
                    f"one entry per galaxy ({n} rows, like {schema.MMU_IMAGE})",
                )
            if ds.ndim != ndim:
                want = "(N,)" if ndim == 1 else f"(N, {nb})"
                raise self._fail(f"has shape {ds.shape}", name, f"shape {want}")
            return ds

        # --- bands ------------------------------------------------------------------
        band_ds = self._dataset(schema.MMU_BAND)
        assert band_ds is not None
        raw_bands = self._read_all(band_ds)
        if raw_bands.ndim == 1:
            raw_bands = raw_bands[None, :]
        if raw_bands.ndim != 2 or raw_bands.shape[1] != nb or raw_bands.shape[0] not in (1, n):
            raise self._fail(
                f"has shape {band_ds.shape} but {schema.MMU_IMAGE} has shape {image.shape}",
                schema.MMU_BAND,
                f"shape (N, B) = ({n}, {nb}): one band name per image plane and row",
            )
        if raw_bands.shape[0] > 1:
            differs = np.flatnonzero(np.any(raw_bands != raw_bands[0], axis=1))
            if differs.size:
                r = int(differs[0])
                raise self._fail(
                    f"row {r} lists bands {[_as_text(b) for b in raw_bands[r]]} but row 0 lists "
                    f"{[_as_text(b) for b in raw_bands[0]]}",
                    schema.MMU_BAND,
                    "the same band order on every row",
                )
        native = tuple(normalize_band(b) for b in raw_bands[0])
        # planes of bands this package does not know (narrow-band filters, say) stay unread;
        # a shard must hold at least one known band
        if not any(name in schema.KNOWN_BANDS for name in native):
            raise self._fail(
                f"names no known band: {[_as_text(b) for b in raw_bands[0]]}",
                schema.MMU_BAND,
                f"bands among {', '.join(schema.KNOWN_BANDS)} "
                "(optionally with a survey prefix such as 'DES-G' or 'HSC-I')",
            )
        if len(set(native)) != len(native):
            raise self._fail(
                f"repeats a band: {list(native)}", schema.MMU_BAND, "each band once per row"
            )
        self.native_bands: tuple[str, ...] = native

        if bands is None:
            selected = tuple(b for b in native if b in schema.KNOWN_BANDS)
        else:
            selected = tuple(normalize_band(b) for b in bands)
            unknown = [b for b in selected if b not in schema.KNOWN_BANDS]
            if unknown or not selected:
                raise SurveyConfigError(
                    f"bands={list(bands)!r}: unknown band(s) {unknown}; use names among "
                    f"{', '.join(schema.KNOWN_BANDS)}"
                )
            if len(set(selected)) != len(selected):
                raise SurveyConfigError(f"bands={list(bands)!r} repeats a band")
            absent = [b for b in selected if b not in native]
            if absent:
                raise self._fail(
                    f"lacks requested band(s) {', '.join(absent)}; it holds {', '.join(native)}",
                    schema.MMU_BAND,
                    f"a shard with every requested band ({', '.join(selected)}), "
                    "or request only bands it holds",
                )
        self.bands: tuple[str, ...] = selected
        idx = np.array([native.index(b) for b in selected], dtype=np.intp)
        self._band_idx = idx
        contiguous = bool(np.all(np.diff(idx) == 1)) if idx.size > 1 else True
        self._band_slice: slice | None = (
            slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else None
        )

        # --- crop -------------------------------------------------------------------
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
                raise SurveyConfigError(f"size={size!r}: the crop size must be a positive integer")
            size = int(size)
            if size > min(h, w):
                raise self._fail(
                    f"cutouts are {h} × {w} px, smaller than the requested crop size {size}",
                    schema.MMU_IMAGE,
                    f"cutouts of at least {size} × {size} px, or a smaller size",
                )
            y0, x0 = (h - size) // 2, (w - size) // 2
            self._ysl, self._xsl = slice(y0, y0 + size), slice(x0, x0 + size)
            self.height = self.width = size
        else:
            self._ysl, self._xsl = slice(0, h), slice(0, w)
            self.height, self.width = h, w
        self.size: int | None = size

        # --- ivar and per-galaxy columns --------------------------------------------
        ivar_ds = self._dataset(schema.MMU_IVAR)
        if ivar_ds is not None and ivar_ds.shape != image.shape:
            raise self._fail(
                f"has shape {ivar_ds.shape} but {schema.MMU_IMAGE} has shape {image.shape}",
                schema.MMU_IVAR,
                f"the same shape as {schema.MMU_IMAGE}",
            )
        self.has_ivar = ivar_ds is not None
        self._ivar = ivar_ds if want_ivar else None

        id_ds = per_galaxy(schema.MMU_OBJECT_ID)
        assert id_ds is not None
        try:
            self._object_id = _decode_ids(self._read_all(id_ds))
        except TypeError as exc:
            raise self._fail(
                str(exc), schema.MMU_OBJECT_ID, "byte strings or integers, one per galaxy"
            ) from exc
        self._coords: dict[str, h5py.Dataset] = {}
        for name in (schema.MMU_RA, schema.MMU_DEC):
            ds = per_galaxy(name)
            assert ds is not None
            if ds.dtype.kind not in "fiu":
                raise self._fail(f"has dtype {ds.dtype}", name, "floating-point degrees")
            self._coords[name] = ds
        self._optional: dict[str, h5py.Dataset] = {}
        for band in schema.KNOWN_BANDS:
            col = schema.flux_column(band)
            ds = per_galaxy(col)
            if ds is not None:
                self._optional[col] = ds
        ebv = per_galaxy(schema.MMU_EBV)
        if ebv is not None:
            self._optional[schema.MMU_EBV] = ebv
        self._psf_ds = per_galaxy(schema.MMU_PSF_FWHM, ndim=2)
        if self._psf_ds is not None and self._psf_ds.shape[1] != nb:
            raise self._fail(
                f"has shape {self._psf_ds.shape}", schema.MMU_PSF_FWHM, f"shape ({n}, {nb})"
            )
        self._scale_ds = self._dataset(schema.MMU_SCALE)
        if self._scale_ds is not None and self._scale_ds.shape not in ((), (n,), (n, nb), (nb,)):
            raise self._fail(
                f"has shape {self._scale_ds.shape}",
                schema.MMU_SCALE,
                f"shape ({n}, {nb}), ({n},) or a scalar (arcsec / pixel)",
            )
        log.debug("opened %s: %d galaxies, bands %s, %d x %d px", self.uri, n, self.bands, h, w)

    # ------------------------------------------------------------------ protocol
    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"MMUShardReader({self.uri!r}, bands={self.bands}, size={self.size}, n={self._n})"

    @property
    def object_id(self) -> np.ndarray:
        """All object ids of the shard, as a numpy unicode array (N,)."""
        return self._object_id

    @property
    def healpix(self) -> int | None:
        """HEALPix cell from a ``healpix=N`` path component, or None."""
        return healpix_from_path(self.path)

    def catalog(self) -> dict[str, np.ndarray]:
        """Per-galaxy survey columns, without pixels.

        ``object_id`` (str), ``ra`` / ``dec`` (float64, degrees), ``flux_g`` … ``flux_z``
        (float32, nanomaggies; NaN when the shard has no such column; ``flux_y`` too when
        present), ``ebv`` (float32, magnitudes; NaN when absent).
        """
        out: dict[str, np.ndarray] = {"object_id": self._object_id}
        for name in (schema.MMU_RA, schema.MMU_DEC):
            out[name] = self._read_all(self._coords[name]).astype(np.float64, copy=False)
        for band in ("g", "r", "i", "z", "y"):
            ds = self._optional.get(schema.flux_column(band))
            if ds is None:
                if band == "y":
                    continue
                out[f"flux_{band}"] = np.full(self._n, np.nan, dtype=np.float32)
            else:
                out[f"flux_{band}"] = self._read_all(ds).astype(np.float32, copy=False)
        ds = self._optional.get(schema.MMU_EBV)
        out["ebv"] = (
            np.full(self._n, np.nan, dtype=np.float32)
            if ds is None
            else self._read_all(ds).astype(np.float32, copy=False)
        )
        return out

    @property
    def psf_fwhm(self) -> np.ndarray:
        """PSF FWHM in arcsec, shape (N, len(bands)) float32; NaN when the shard has none."""
        if self._psf_ds is None:
            return np.full((self._n, len(self.bands)), np.nan, dtype=np.float32)
        return self._read_all(self._psf_ds)[:, self._band_idx].astype(np.float32, copy=False)

    @property
    def pixel_scale(self) -> float:
        """Pixel scale in arcsec / pixel (median of ``image_scale`` over the selected bands).

        Falls back to the Legacy Survey's 0.262"/px when the shard has no ``image_scale``.
        """
        if self._scale_ds is None:
            return schema.PIXEL_SCALE_ARCSEC
        vals = np.asarray(self._read_all(self._scale_ds), dtype=np.float64)
        if vals.ndim == 2:
            vals = vals[:, self._band_idx]
        elif vals.ndim == 1 and vals.shape[0] == len(self.native_bands) != self._n:
            vals = vals[self._band_idx]
        vals = vals[np.isfinite(vals)]
        return round(float(np.median(vals)), 6) if vals.size else schema.PIXEL_SCALE_ARCSEC

    def _empty(self, n: int) -> np.ndarray:
        return np.empty((n, len(self.bands), self.height, self.width), dtype=np.float32)

    def _read_range(self, ds: h5py.Dataset, start: int, stop: int, out: np.ndarray) -> None:
        """Rows ``start:stop`` of ``ds`` into ``out``. When the batch cannot be read (a corrupt
        chunk of a compressed shard, a file cut short), its rows are read one by one: a row
        that still fails is NaN and recorded in :attr:`rejected`, and the others are kept. A
        whole batch may fail (the last rows of a truncated file); a shard none of whose rows
        can be read is refused by :func:`~galaxy_assets.survey.manifest.build_manifest`."""
        try:
            self._read_runs(ds, [(start, stop)], out)
            self._dead_batches = 0
            return
        except SurveyFormatError as batch_error:
            failed = []
            for row in range(start, stop):
                try:
                    self._read_runs(ds, [(row, row + 1)], out[row - start : row - start + 1])
                except SurveyFormatError as exc:
                    out[row - start] = np.nan
                    failed.append((row, exc))
            # several whole batches in a row: the file is broken beyond a chunk or two, and
            # reading on row by row (each re-decompressing its chunk) would take hours
            self._dead_batches = self._dead_batches + 1 if len(failed) == stop - start else 0
            if self._dead_batches >= 3:
                raise batch_error
        field = ds.name.lstrip("/")
        if failed:
            log.warning("%s: %d of rows %d..%d of %s cannot be read; left out (first: %s)",
                        self.uri, len(failed), start, stop - 1, field, failed[0][1].problem)
        for row, exc in failed:
            if row not in self._rejected_rows:
                self._rejected_rows.add(row)
                self.rejected.append({
                    "object_id": str(self._object_id[row]), "row": row,
                    "reason": f"unreadable {field} (a corrupt chunk of the file?): {exc}"[:500],
                })

    def _read_runs(
        self,
        ds: h5py.Dataset,
        runs: Sequence[tuple[int, int]],
        out: np.ndarray,
        dests: Sequence[int] | None = None,
    ) -> None:
        """Read row runs ``[(start, stop), …]`` of ``ds`` (selected bands, crop) into ``out``.

        With ``dests`` None the runs must be ascending and disjoint: their union is read with
        one H5Dread, rows landing in ascending order in ``out``. Otherwise run ``i`` is read
        on its own into ``out[dests[i]:…]`` (any order). Reads go through h5py's low-level
        API: the high-level ``read_direct`` costs ~45 µs of Python per call, the low-level
        read ~10 µs. Bands that are not one ascending range in the file (``g, r, z`` of
        ``g, r, i, z``) are read as the covering range into a scratch buffer kept by the
        reader, then gathered: measured ~2x faster than strided per-band hyperslabs.
        """
        try:
            if self._band_slice is not None:
                bsl = self._band_slice
                self._read_hyperslabs(ds, runs, out, dests, bsl.start, bsl.stop - bsl.start)
            else:
                lo, hi = int(self._band_idx.min()), int(self._band_idx.max()) + 1
                shape = (out.shape[0], hi - lo, self.height, self.width)
                if self._scratch is None or self._scratch.size < int(np.prod(shape)):
                    self._scratch = np.empty(int(np.prod(shape)), dtype=np.float32)
                scratch = self._scratch[: int(np.prod(shape))].reshape(shape)
                self._read_hyperslabs(ds, runs, scratch, dests, lo, hi - lo)
                np.take(scratch, self._band_idx - lo, axis=1, out=out, mode="clip")
        except (OSError, ValueError, TypeError) as exc:
            first, last = min(r[0] for r in runs), max(r[1] for r in runs) - 1
            raise self._fail(
                f"reading rows {first}..{last} failed ({exc}); {_REOPEN_HINT}",
                ds.name.lstrip("/"),
                "a readable dataset",
            ) from exc

    def _read_hyperslabs(
        self,
        ds: h5py.Dataset,
        runs: Sequence[tuple[int, int]],
        out: np.ndarray,
        dests: Sequence[int] | None,
        b0: int,
        nb: int,
    ) -> None:
        """Read bands ``b0:b0 + nb`` (crop window) of the row runs into ``out`` (see above)."""
        y0, h = self._ysl.start, self.height
        x0, w = self._xsl.start, self.width
        fspace = ds.id.get_space()
        mspace = h5py.h5s.create_simple(out.shape)
        if dests is None:
            op = h5py.h5s.SELECT_SET
            for start, stop in runs:
                fspace.select_hyperslab((start, b0, y0, x0), (stop - start, nb, h, w), op=op)
                op = h5py.h5s.SELECT_OR
            n = sum(stop - start for start, stop in runs)
            if n != out.shape[0]:
                mspace.select_hyperslab((0, 0, 0, 0), (n, nb, h, w))
            ds.id.read(mspace, fspace, out)
        else:
            for (start, stop), dest in zip(runs, dests, strict=True):
                fspace.select_hyperslab((start, b0, y0, x0), (stop - start, nb, h, w))
                mspace.select_hyperslab((dest, 0, 0, 0), (stop - start, nb, h, w))
                ds.id.read(mspace, fspace, out)

    def _check_open(self) -> None:
        if self._file is None or not self._file.id.valid:
            raise SurveyConfigError(f"{self.uri}: the reader is closed")

    def iter_batches(self, batch_size: int = 256) -> Iterator[CutoutBatch]:
        """Yield the shard in row order, ``batch_size`` galaxies at a time.

        Each batch is read with one contiguous hyperslab per dataset (one per band when the
        selected bands are not contiguous in the file), straight into a fresh float32 array.
        """
        if batch_size <= 0:
            raise SurveyConfigError(f"batch_size={batch_size}: must be a positive integer")
        self._check_open()
        for start in range(0, self._n, batch_size):
            stop = min(self._n, start + batch_size)
            yield self._batch_for_range(start, stop)

    def _batch_for_range(self, start: int, stop: int) -> CutoutBatch:
        images = self._empty(stop - start)
        self._read_range(self._image, start, stop, images)
        ivar = None
        if self._ivar is not None:
            ivar = self._empty(stop - start)
            self._read_range(self._ivar, start, stop, ivar)
        return CutoutBatch(
            object_id=self._object_id[start:stop],
            rows=np.arange(start, stop, dtype=np.int64),
            images=images,
            ivar=ivar,
            bands=self.bands,
        )

    def read_rows(self, rows: Sequence[int] | np.ndarray) -> CutoutBatch:
        """Read the given rows (any order, repeats allowed) as one batch in that order.

        Sorted unique rows are read with one H5Dread over the union of their runs. Other
        orders are read run by run (a run = requested rows that follow each other in the
        file) straight into their place in the output: measured faster than a sorted read
        followed by a reordering copy, and no extra memory.
        """
        self._check_open()
        req = np.asarray(rows, dtype=np.int64).reshape(-1)
        if req.size and (req.min() < 0 or req.max() >= self._n):
            bad = int(req[(req < 0) | (req >= self._n)][0])
            raise IndexError(f"{self.uri}: row {bad} is outside 0..{self._n - 1}")
        images = self._empty(req.size)
        ivar = None if self._ivar is None else self._empty(req.size)
        if req.size:
            # Split where the next requested row is not the next row of the file.
            breaks = np.flatnonzero(np.diff(req) != 1) + 1
            first = np.concatenate(([0], breaks))
            last = np.concatenate((breaks, [req.size])) - 1
            runs = list(zip(req[first].tolist(), (req[last] + 1).tolist(), strict=True))
            dests = None if bool(np.all(np.diff(req) > 0)) else first.tolist()
            self._read_runs(self._image, runs, images, dests)
            if ivar is not None:
                assert self._ivar is not None
                self._read_runs(self._ivar, runs, ivar, dests)
        return CutoutBatch(
            object_id=self._object_id[req],
            rows=req,
            images=images,
            ivar=ivar,
            bands=self.bands,
        )

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close the HDF5 file (idempotent)."""
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def __enter__(self) -> MMUShardReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _as_text(value: Any) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _per_row(value: float | Sequence[float] | np.ndarray, n: int, nb: int, name: str) -> np.ndarray:
    """Broadcast a scalar, a (B,) or an (N, B) value to an (N, B) float32 array."""
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 0 or arr.shape == (nb,):
        return np.ascontiguousarray(np.broadcast_to(arr, (n, nb)))
    if arr.shape == (n, nb):
        return arr
    raise ValueError(f"{name}: shape {arr.shape}; expected a scalar, ({nb},) or ({n}, {nb})")


def write_mmu_shard(
    path: str | Path,
    *,
    images: np.ndarray,
    bands: Sequence[str],
    object_id: Sequence[str] | Sequence[int] | np.ndarray,
    ra: np.ndarray | Sequence[float],
    dec: np.ndarray | Sequence[float],
    ivar: np.ndarray | None = None,
    psf_fwhm: float | Sequence[float] | np.ndarray | None = None,
    scale: float | Sequence[float] | np.ndarray = schema.PIXEL_SCALE_ARCSEC,
    fluxes: Mapping[str, np.ndarray | Sequence[float]] | None = None,
    ebv: np.ndarray | Sequence[float] | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write an MMU-layout HDF5 shard atomically and return its path.

    ``images`` (N, B, H, W) and ``ivar`` are stored as float32, uncompressed and contiguous
    (fastest to slice); ``bands`` (B names, written per row as bytes like MMU);
    ``object_id`` strings (stored as fixed-length UTF-8 bytes) or integers (int64);
    ``ra`` / ``dec`` in degrees (float64); ``psf_fwhm`` in arcsec and ``scale`` in
    arcsec / pixel, each a scalar, per band (B,) or per row (N, B); ``fluxes`` maps a band
    letter to catalogue fluxes in nanomaggies (written as ``FLUX_G`` …); ``ebv`` in
    magnitudes; ``extra`` holds further datasets written as given.

    The file is written to a hidden temporary file in the destination folder (created when
    missing) and moved into place with :func:`os.replace`, so readers never see half a shard.
    Raises ValueError when the inputs disagree in shape.
    """
    path = Path(path)
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim != 4:
        raise ValueError(f"images: shape {imgs.shape}; expected (N, B, H, W)")
    n, nb = imgs.shape[:2]
    band_list = [str(b) for b in bands]
    if len(band_list) != nb:
        raise ValueError(f"bands: {len(band_list)} names for {nb} image planes")

    def column(values: Any, name: str, dtype: Any) -> np.ndarray:
        arr = np.asarray(values, dtype=dtype)
        if arr.shape != (n,):
            raise ValueError(f"{name}: shape {arr.shape}; expected ({n},)")
        return arr

    ids = np.asarray(object_id)
    if ids.shape != (n,):
        raise ValueError(f"object_id: shape {ids.shape}; expected ({n},)")
    if ids.dtype.kind in "iu":
        id_arr = ids.astype(np.int64)
    else:
        # bytes (ids copied from another MMU shard) are text already: str() would store "b'…'"
        encoded = [
            bytes(v) if isinstance(v, bytes | np.bytes_) else str(v).encode("utf-8")
            for v in ids.tolist()
        ]
        width = max((len(v) for v in encoded), default=1) or 1
        id_arr = np.asarray(encoded, dtype=f"S{width}")
    band_bytes = np.asarray([b.encode("utf-8") for b in band_list])
    band_arr = np.ascontiguousarray(np.broadcast_to(band_bytes, (n, nb)))

    datasets: dict[str, np.ndarray] = {
        schema.MMU_IMAGE: imgs,
        schema.MMU_BAND: band_arr,
        schema.MMU_OBJECT_ID: id_arr,
        schema.MMU_RA: column(ra, "ra", np.float64),
        schema.MMU_DEC: column(dec, "dec", np.float64),
        schema.MMU_SCALE: _per_row(scale, n, nb, "scale"),
    }
    if ivar is not None:
        iv = np.asarray(ivar, dtype=np.float32)
        if iv.shape != imgs.shape:
            raise ValueError(f"ivar: shape {iv.shape}; expected {imgs.shape}")
        datasets[schema.MMU_IVAR] = iv
    if psf_fwhm is not None:
        datasets[schema.MMU_PSF_FWHM] = _per_row(psf_fwhm, n, nb, "psf_fwhm")
    for band, values in (fluxes or {}).items():
        datasets[schema.flux_column(normalize_band(band))] = column(
            values, f"fluxes[{band!r}]", np.float32
        )
    if ebv is not None:
        datasets[schema.MMU_EBV] = column(ebv, "ebv", np.float32)
    for name, values in (extra or {}).items():
        if name in datasets:
            raise ValueError(f"extra[{name!r}] would overwrite a standard dataset")
        datasets[name] = np.asarray(values)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with h5py.File(tmp, "w") as f:
            for name, values in datasets.items():
                f.create_dataset(name, data=values)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote %s: %d galaxies, bands %s", path, n, band_list)
    return path
