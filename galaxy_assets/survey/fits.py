"""Read a folder of FITS cutouts (one galaxy per file) as a survey shard, and write such files.

Two layouts are understood, per file:

**Band cube** — the first image HDU holding 3-D data (B, H, W) is the science cube. Its
planes are named by, in this order of preference (in that HDU's header, else the primary
header):

* ``BANDS = 'g,r,z'`` (comma- or blank-separated, one name per plane), or
* ``BAND0``, ``BAND1`` … ``BAND{B-1}`` (0-based, one keyword per plane), or
* ``BAND1`` … ``BAND{B}`` (1-based, like FITS axis numbers).

An inverse-variance cube of the same shape may follow in an HDU with ``EXTNAME = 'IVAR'``
(or ``IMTYPE = 'IVAR'``); its planes are in the science cube's band order unless it names
its own bands the same way.

**One HDU per band** — every 2-D image HDU is one band, named by its ``BAND`` keyword, else
``FILTER`` (first word, e.g. ``'g DECam SDSS c0001'`` → g), else ``EXTNAME`` (``'G'``,
``'IMAGE_G'``, ``'DES-G'``). HDUs whose ``EXTNAME`` starts with ``IVAR`` / ``INVVAR`` (or
with ``IMTYPE = 'IVAR'``) hold the inverse variance of the band they name.

Pixels come back in display order: row 0 is the top of the picture as DS9 or the Legacy
Survey viewer draw the file (FITS stores the bottom row first, so a north-up cutout reads
north-up, east left, the way PNG and JPEG cutouts and the thumbnails show it).

Band names are normalised like the MMU reader's (``'DES-G'`` → ``'g'``). Other header
keywords read (science HDU first, then the primary header):

* position: the celestial WCS evaluated at the cutout's centre pixel ((W - 1) / 2,
  (H - 1) / 2 zero-based), converted to ICRS; only when there is no WCS, or one that cannot
  be evaluated, ``RA`` / ``DEC`` in degrees (or sexagesimal strings, RA in hours), else
  ``RA_OBJ`` / ``DEC_OBJ``. A cutout made the usual astropy way (``Cutout2D``, then the
  frame's header with its WCS updated) keeps the frame's ``RA`` / ``DEC``, which SDSS and
  DECam frames use for the telescope pointing; when the keywords lie more than
  :data:`KEYWORD_WCS_TOLERANCE_PX` pixels from the WCS centre the reader logs one warning
  per folder naming a file and the offset;
* identity: ``OBJID`` (or ``OBJECT_ID``), else the file name without its FITS suffix;
* catalogue: ``FLUX_G`` … ``FLUX_Y`` (nanomaggies), ``EBV`` (magnitudes);
* ``PSFFWHM`` (arcsec; per band HDU, or ``PSFFWHM0`` … per cube plane; ``PSF_FWHM`` is
  read too) and ``PIXSCALE`` (arcsec / pixel, else from the WCS, else 0.262).

The folder is scanned (headers only) when the reader opens. A file whose headers cannot be
used — unreadable or truncated, no position, unknown bands, shapes that disagree — is
recorded in :attr:`FitsFolderReader.rejected` and left out. Every other file is a row,
0 … len - 1 in sorted file-name order, whatever ``bands`` and ``size`` the reader was opened
with: the manifest, the encoders and the thumbnails open one folder with different bands and
crop sizes, and must agree on which file a row is. A file that lacks a requested band, or
whose size does not fit the reader's, keeps its row but reads as NaN pixels (zero ivar) and
is recorded in ``rejected`` with that row, so the manifest leaves it out with the reason.
Folder-level problems (no such folder, no FITS file, no usable file) raise
:class:`SurveyFormatError`.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from astropy.io import fits

from galaxy_assets.survey import schema
from galaxy_assets.survey.base import CutoutBatch
from galaxy_assets.survey.errors import SurveyConfigError, SurveyFormatError
from galaxy_assets.survey.mmu import normalize_band

log = logging.getLogger(__name__)

__all__ = [
    "FITS_SUFFIXES",
    "FitsFolderReader",
    "fits_stem",
    "is_fits_file",
    "list_fits_files",
    "write_fits_cutout",
]

FITS_SUFFIXES: tuple[str, ...] = (
    ".fits", ".fits.gz", ".fits.fz", ".fz", ".fit", ".fit.gz", ".fts"
)
_EXPECT_FITS = "a readable FITS file holding one galaxy cutout"
_EXPECT_POSITION = (
    "RA and DEC header keywords in degrees, or a celestial WCS (CTYPE1/2, CRVAL1/2, "
    "CRPIX1/2 and CD or CDELT)"
)
_EXPECT_BAND_NAMES = "BANDS='g,r,z' or BAND0…BAND{B-1} keywords naming each plane of the cube"
_BAND_PREFIXES = ("IMAGE_", "IMG_", "SCI_", "IVAR_", "INVVAR_")
# RA/DEC keywords farther than this from the WCS centre are reported (the WCS wins anyway).
KEYWORD_WCS_TOLERANCE_PX = 3.0


def is_fits_file(path: str | Path) -> bool:
    """True for a visible file whose name ends in one of :data:`FITS_SUFFIXES`."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(FITS_SUFFIXES)


def fits_stem(path: str | Path) -> str:
    """The file name without its FITS suffix (``a.fits.gz`` → ``a``)."""
    name = Path(path).name
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def list_fits_files(folder: str | Path) -> list[Path]:
    """FITS files directly inside ``folder`` (not recursive, hidden files skipped), sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and is_fits_file(p))


@dataclass
class _Plane:
    hdu: int
    plane: int | None  # index in a cube, None for a 2-D HDU


@dataclass(frozen=True)
class _KeywordOffset:
    """RA/DEC keywords that disagree with the WCS centre (the position kept is the WCS's)."""

    keywords: str  # "RA/DEC" or "RA_OBJ/DEC_OBJ"
    arcsec: float
    pixels: float


@dataclass
class _FileInfo:
    path: Path
    object_id: str
    ra: float
    dec: float
    bands: tuple[str, ...]
    planes: dict[str, _Plane]
    ivar: dict[str, _Plane]
    shape: tuple[int, int]
    fluxes: dict[str, float] = field(default_factory=dict)
    ebv: float = float("nan")
    psf_fwhm: dict[str, float] = field(default_factory=dict)
    pixel_scale: float = schema.PIXEL_SCALE_ARCSEC
    keyword_offset: _KeywordOffset | None = None


def _image_shape(header: fits.Header) -> tuple[int, ...]:
    naxis = int(header.get("NAXIS", 0))
    return tuple(int(header.get(f"NAXIS{k}", 0)) for k in range(naxis, 0, -1))


def _is_image(hdu: Any) -> bool:
    return isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU)


def _is_ivar(header: fits.Header) -> bool:
    ext = str(header.get("EXTNAME", "")).strip().upper()
    # IMTYPE, or IMAGETYP as the Legacy Survey viewer's cutouts label their ivar cube
    kinds = {str(header.get(k, "")).strip().upper() for k in ("IMTYPE", "IMAGETYP")}
    return ext.startswith(("IVAR", "INVVAR")) or bool(kinds & {"IVAR", "INVVAR"})


def _known_band(path: Path, raw: Any, keyword: str) -> str:
    name = normalize_band(str(raw))
    if name not in schema.KNOWN_BANDS:
        raise SurveyFormatError(
            path,
            f"unknown band name {str(raw)!r}",
            field=keyword,
            expected=f"a band among {', '.join(schema.KNOWN_BANDS)} "
            "(optionally with a survey prefix such as 'DES-G')",
        )
    return name


def _cube_band_names(
    path: Path, headers: Sequence[fits.Header], nplanes: int
) -> tuple[tuple[str, ...], str] | None:
    """Band names of a cube's planes and the keyword they came from, or None if unnamed."""
    for header in headers:
        if "BANDS" in header:
            raw = str(header["BANDS"]).replace(",", " ").split()
            if len(raw) == 1 and nplanes > 1 and len(raw[0]) == nplanes:
                # one letter per plane run together, as the Legacy Survey viewer writes 'griz'
                raw = list(raw[0])
            if len(raw) != nplanes:
                raise SurveyFormatError(
                    path,
                    f"BANDS={header['BANDS']!r} names {len(raw)} bands for a cube of "
                    f"{nplanes} planes",
                    field="BANDS",
                    expected=f"{nplanes} band names, one per plane",
                )
            return tuple(_known_band(path, r, "BANDS") for r in raw), "BANDS"
        for base in (0, 1):
            keys = [f"BAND{base + k}" for k in range(nplanes)]
            if all(k in header for k in keys):
                return tuple(_known_band(path, header[k], k) for k in keys), keys[0]
    return None


def _hdu_band(path: Path, header: fits.Header, index: int) -> str:
    for keyword in ("BAND", "FILTER"):
        value = header.get(keyword)
        if value is not None and str(value).strip():
            return _known_band(path, value, keyword)
    ext = str(header.get("EXTNAME", "")).strip()
    if ext:
        name = ext
        for prefix in _BAND_PREFIXES:
            if name.upper().startswith(prefix):
                name = name[len(prefix) :]
                break
        return _known_band(path, name, "EXTNAME")
    raise SurveyFormatError(
        path,
        f"image HDU {index} does not name its band",
        field="BAND",
        expected="a BAND, FILTER or EXTNAME keyword naming the band of each image HDU, "
        "or a 3-D band cube",
    )


def _angle(value: Any, hours: bool) -> float:
    if isinstance(value, str):
        text = value.strip()
        if any(c in text for c in ":hdms "):
            from astropy.coordinates import Angle

            return float(Angle(text, unit="hourangle" if hours else "deg").deg)
        return float(text)
    return float(value)


def _keyword_position(
    path: Path, headers: Sequence[fits.Header]
) -> tuple[float, float, str] | None:
    """RA/DEC (else RA_OBJ/DEC_OBJ) keywords in degrees and their names, or None."""
    for header in headers:
        for ra_key, dec_key in (("RA", "DEC"), ("RA_OBJ", "DEC_OBJ")):
            if ra_key in header and dec_key in header:
                try:
                    return (
                        _angle(header[ra_key], True),
                        _angle(header[dec_key], False),
                        f"{ra_key}/{dec_key}",
                    )
                except (TypeError, ValueError) as exc:
                    raise SurveyFormatError(
                        path,
                        f"{ra_key}={header[ra_key]!r}, {dec_key}={header[dec_key]!r} cannot "
                        f"be read as angles ({exc})",
                        field=f"{ra_key}/{dec_key}",
                        expected=_EXPECT_POSITION,
                    ) from exc
    return None


def _wcs_position(
    path: Path, headers: Sequence[fits.Header], shape: tuple[int, int]
) -> tuple[float, float, float] | SurveyFormatError | None:
    """ICRS ra, dec of the centre pixel and the pixel scale (degrees) from the first
    celestial WCS; the error when that WCS cannot be evaluated; None when there is none."""
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    for header in headers:
        if "CTYPE1" not in header:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                wcs = WCS(header).celestial
            if not wcs.has_celestial:
                continue
            h, w = shape
            icrs = wcs.pixel_to_world((w - 1) / 2.0, (h - 1) / 2.0).icrs
            ra, dec = float(icrs.ra.deg), float(icrs.dec.deg)
            if not (np.isfinite(ra) and np.isfinite(dec)):
                raise ValueError("the centre pixel maps to no sky position")
            scale = float(np.mean(proj_plane_pixel_scales(wcs)))
            return ra, dec, scale
        except Exception as exc:  # astropy raises many types for bad WCS headers
            return SurveyFormatError(
                path,
                f"its WCS cannot be evaluated ({exc})",
                field="WCS",
                expected=_EXPECT_POSITION,
            )
    return None


def _separation_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Angle between two sky positions in degrees (haversine)."""
    r1, d1, r2, d2 = np.radians([ra1, dec1, ra2, dec2])
    a = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return float(np.degrees(2 * np.arcsin(np.sqrt(min(1.0, a)))))


def _position(
    path: Path, headers: Sequence[fits.Header], shape: tuple[int, int]
) -> tuple[float, float, _KeywordOffset | None]:
    """The cutout's centre: the celestial WCS at the centre pixel when there is a usable
    one, else the RA/DEC keywords; and how far the keywords lie from a WCS centre when that
    is over :data:`KEYWORD_WCS_TOLERANCE_PX` pixels."""
    from_wcs = _wcs_position(path, headers, shape)
    try:
        keywords = _keyword_position(path, headers)
        keyword_error = None
    except SurveyFormatError as exc:
        keywords, keyword_error = None, exc
    if isinstance(from_wcs, tuple):
        ra, dec, scale = from_wcs
        offset = None
        if keywords is not None:
            sep = _separation_deg(ra, dec, keywords[0], keywords[1])
            if sep > KEYWORD_WCS_TOLERANCE_PX * scale:
                offset = _KeywordOffset(keywords[2], sep * 3600.0, sep / scale)
        return ra, dec, offset
    if keywords is not None:  # no WCS, or one that cannot be evaluated
        return keywords[0], keywords[1], None
    if keyword_error is not None:
        raise keyword_error
    if from_wcs is not None:
        raise from_wcs
    raise SurveyFormatError(
        path,
        "no sky position: neither RA/DEC keywords nor a celestial WCS",
        field="RA/DEC",
        expected=_EXPECT_POSITION,
    )


def _float(headers: Sequence[fits.Header], *keys: str) -> float:
    for header in headers:
        for key in keys:
            if key in header:
                try:
                    return float(header[key])
                except (TypeError, ValueError):
                    return float("nan")
    return float("nan")


# Header scans by file state: a folder is opened again for every thumbnail, contact sheet
# and re-ranking, and reading each file's headers costs ~0.25-0.6 ms (5 s for 20,000 files)
# against a few µs for its stat. The key holds the inode and ctime besides size and mtime: a
# header fixed in place keeps the size (FITS files are whole 2,880-byte blocks), and a copy
# made with `cp -p` or `rsync -a` keeps the mtime, but every write changes the ctime. A file
# that cannot be scanned keeps the reason's parts, never the exception (its traceback would
# hold every reader that raised it).
_ScanKey = tuple[str, int, int, int, int]
_SCANS: OrderedDict[_ScanKey, _FileInfo | tuple[str, str, str | None, str | None]] = OrderedDict()
_SCANS_LOCK = threading.Lock()
SCAN_CACHE_FILES = 50_000  # about 3 KB each
# Folders whose keyword/WCS disagreement was logged, by folder and the files' offsets: a
# folder is opened again for every thumbnail, so it is reported once per process.
_WARNED_OFFSETS: set[tuple[str, int]] = set()


def _scan_file_cached(path: Path) -> _FileInfo:
    try:
        st = path.stat()
    except OSError:
        return _scan_file(path)  # says what is wrong with it
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _SCANS_LOCK:
        hit = _SCANS.get(key)
        if hit is not None:
            _SCANS.move_to_end(key)
    if hit is None:
        try:
            hit = _scan_file(path)
        except SurveyFormatError as exc:
            hit = (exc.path, exc.problem, exc.field, exc.expected)
        with _SCANS_LOCK:
            _SCANS[key] = hit
            while len(_SCANS) > SCAN_CACHE_FILES:
                _SCANS.popitem(last=False)
    if isinstance(hit, tuple):
        where, problem, fld, expected = hit
        raise SurveyFormatError(where, problem, field=fld, expected=expected)
    return hit  # shared: readers only read a scan


def _scan_file(path: Path) -> _FileInfo:
    """Parse one FITS cutout's headers (no pixels); SurveyFormatError when unusable."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
        except Exception as exc:  # astropy raises OSError, ValueError, TypeError, EOFError…
            raise SurveyFormatError(
                path, f"cannot be read as FITS ({exc})", expected=_EXPECT_FITS
            ) from exc
        with hdul:
            info = _parse_hdus(path, hdul)
    truncated = [str(w.message) for w in caught if "truncated" in str(w.message).lower()]
    if truncated:
        raise SurveyFormatError(
            path,
            f"is truncated ({truncated[0]})",
            expected="a complete FITS file: re-copy or regenerate it",
        )
    return info


def _parse_hdus(path: Path, hdul: fits.HDUList) -> _FileInfo:
    primary = hdul[0].header
    images = [
        (i, h) for i, h in enumerate(hdul) if _is_image(h) and len(_image_shape(h.header)) >= 2
    ]
    science = [(i, h) for i, h in images if not _is_ivar(h.header)]
    ivars = [(i, h) for i, h in images if _is_ivar(h.header)]
    if not science:
        raise SurveyFormatError(
            path,
            "holds no image HDU",
            field="NAXIS",
            expected="a 3-D band cube (B, H, W) or one 2-D image HDU per band",
        )
    planes: dict[str, _Plane] = {}
    ivar: dict[str, _Plane] = {}
    psf: dict[str, float] = {}
    first_index, first = science[0]
    first_shape = _image_shape(first.header)
    headers = [first.header, primary] if first_index != 0 else [primary]
    if len(first_shape) == 3:
        nplanes = first_shape[0]
        named = _cube_band_names(path, headers, nplanes)
        if named is None:
            raise SurveyFormatError(
                path,
                f"the {nplanes}-plane cube in HDU {first_index} does not name its bands",
                field="BANDS",
                expected=_EXPECT_BAND_NAMES,
            )
        bands, keyword = named
        if len(set(bands)) != len(bands):
            raise SurveyFormatError(
                path, f"repeats a band: {list(bands)}", field=keyword, expected="each band once"
            )
        shape = (first_shape[1], first_shape[2])
        for k, band in enumerate(bands):
            planes[band] = _Plane(first_index, k)
            psf[band] = _float(headers, f"PSFFWHM{k}", f"PSF_FWHM{k}", "PSFFWHM", "PSF_FWHM")
        for i, hdu in ivars:
            ishape = _image_shape(hdu.header)
            if ishape != first_shape:
                raise SurveyFormatError(
                    path,
                    f"inverse-variance HDU {i} has shape {ishape} but the cube has {first_shape}",
                    field="IVAR",
                    expected="an IVAR cube of the science cube's shape",
                )
            own = _cube_band_names(path, [hdu.header], nplanes)
            ivar_bands = own[0] if own else bands
            for k, band in enumerate(ivar_bands):
                ivar[band] = _Plane(i, k)
            break
    else:
        bands_list: list[str] = []
        shape = (first_shape[-2], first_shape[-1])
        for i, hdu in science:
            hshape = _image_shape(hdu.header)
            if len(hshape) != 2:
                raise SurveyFormatError(
                    path,
                    f"HDU {i} has shape {hshape} beside 2-D band HDUs",
                    field=f"NAXIS (HDU {i})",
                    expected="either one 3-D cube or 2-D image HDUs only",
                )
            band = _hdu_band(path, hdu.header, i)
            if band in planes:
                raise SurveyFormatError(
                    path,
                    f"band {band!r} appears in HDU {planes[band].hdu} and HDU {i}",
                    field="BAND",
                    expected="each band in one HDU",
                )
            if hshape != shape:
                raise SurveyFormatError(
                    path,
                    f"inconsistent shapes: HDU {i} (band {band}) is {hshape}, "
                    f"HDU {first_index} is {shape}",
                    field=f"NAXIS1/NAXIS2 (HDU {i})",
                    expected="every band of a galaxy the same H × W",
                )
            planes[band] = _Plane(i, None)
            bands_list.append(band)
            psf[band] = _float([hdu.header], "PSFFWHM", "PSF_FWHM", "SEEING")
        for i, hdu in ivars:
            band = _hdu_band(path, hdu.header, i)
            if _image_shape(hdu.header) != shape:
                raise SurveyFormatError(
                    path,
                    f"inverse-variance HDU {i} (band {band}) has shape "
                    f"{_image_shape(hdu.header)}, the images {shape}",
                    field=f"NAXIS1/NAXIS2 (HDU {i})",
                    expected="inverse-variance HDUs of the images' shape",
                )
            ivar[band] = _Plane(i, None)
        bands = tuple(bands_list)
    if shape[0] <= 0 or shape[1] <= 0:
        raise SurveyFormatError(
            path, f"empty image {shape}", field="NAXIS1/NAXIS2", expected="H, W > 0"
        )
    ra, dec, keyword_offset = _position(path, headers, shape)
    object_id = ""
    for header in headers:
        for key in ("OBJID", "OBJECT_ID"):
            if key in header and str(header[key]).strip():
                object_id = str(header[key]).strip()
                break
        if object_id:
            break
    if not object_id:
        object_id = fits_stem(path)
    fluxes = {b: _float(headers, schema.flux_column(b)) for b in schema.KNOWN_BANDS}
    scale = _float(headers, "PIXSCALE")
    if not np.isfinite(scale):
        scale = _wcs_scale(headers)
    return _FileInfo(
        path=path,
        object_id=object_id,
        ra=ra,
        dec=dec,
        bands=bands,
        planes=planes,
        ivar=ivar,
        shape=shape,
        fluxes=fluxes,
        ebv=_float(headers, "EBV"),
        psf_fwhm=psf,
        pixel_scale=scale,
        keyword_offset=keyword_offset,
    )


def _wcs_scale(headers: Sequence[fits.Header]) -> float:
    """Pixel scale in arcsec / pixel from a celestial WCS, else the Legacy Survey's."""
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    for header in headers:
        if "CTYPE1" not in header:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                wcs = WCS(header).celestial
            if wcs.has_celestial:
                return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)
        except Exception:  # a broken WCS only costs the pixel scale
            continue
    return schema.PIXEL_SCALE_ARCSEC


class FitsFolderReader:
    """Stream cutouts from a folder of FITS files, one galaxy per file (see module doc).

    Parameters
    ----------
    folder:
        The folder; FITS files directly inside it are the shard's galaxies.
    bands:
        Bands to return, in this order; None picks the band set most files hold, in
        wavelength order (u, g, r, i, z, y). Files lacking a band are rejected.
    size:
        Centre-crop to ``size`` × ``size`` px; None keeps the native size, which every file
        must then share with most files of the folder (others are rejected).
    ivar:
        Return inverse variance when every good file has it for the selected bands.

    Attributes
    ----------
    files:
        The scanned files, in row order (those in ``rejected`` with a row read as NaN).
    rejected:
        One dict per left-out file or unusable galaxy: ``object_id`` (OBJID or file stem,
        when known), ``file``, ``row`` (None for files whose headers could not be used) and
        ``reason``
        (the :class:`SurveyFormatError` message, naming the file and keyword).
    """

    def __init__(
        self,
        folder: str | Path,
        bands: Sequence[str] | None = None,
        size: int | None = None,
        *,
        ivar: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.uri: str = os.path.abspath(self.folder)
        self.rejected: list[dict[str, Any]] = []
        if not self.folder.is_dir():
            raise SurveyFormatError(
                self.folder, "is not a folder", expected="a folder of FITS cutouts"
            )
        files = list_fits_files(self.folder)
        if not files:
            hint = ""
            if any(p.suffix.lower() in (".hdf5", ".h5") for p in self.folder.iterdir()):
                hint = " (it holds HDF5 files: open each .hdf5 file as its own shard)"
            raise SurveyFormatError(
                self.folder,
                f"holds no FITS files{hint}",
                expected=f"one FITS file per galaxy ({', '.join('*' + s for s in FITS_SUFFIXES)})",
            )
        requested: tuple[str, ...] | None = None
        if bands is not None:
            requested = tuple(normalize_band(b) for b in bands)
            unknown = [b for b in requested if b not in schema.KNOWN_BANDS]
            if unknown or not requested or len(set(requested)) != len(requested):
                raise SurveyConfigError(
                    f"bands={list(bands)!r}: give distinct names among "
                    f"{', '.join(schema.KNOWN_BANDS)}"
                )
        if size is not None and (
            isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0
        ):
            raise SurveyConfigError(f"size={size!r}: the crop size must be a positive integer")

        infos: list[_FileInfo] = []
        for path in files:
            try:
                infos.append(_scan_file_cached(path))
            except SurveyFormatError as exc:
                self._reject(fits_stem(path), path, None, exc)
        self._warn_keyword_offsets(infos)
        if requested is None and infos:
            counts = Counter(frozenset(i.bands) for i in infos)
            best = counts.most_common(1)[0][0]
            requested = tuple(b for b in schema.KNOWN_BANDS if b in best)
        self.bands: tuple[str, ...] = requested or ()
        self.size: int | None = int(size) if size is not None else None

        # Rows are the scanned files, independent of bands and size (see the module doc);
        # a file this reader cannot serve keeps its row and reads as NaN.
        problems: list[SurveyFormatError | None] = []
        for info in infos:
            missing = [b for b in self.bands if b not in info.planes]
            problems.append(
                SurveyFormatError(
                    info.path,
                    f"lacks band(s) {', '.join(missing)}; it holds {', '.join(info.bands)}",
                    field="BANDS" if info.planes[info.bands[0]].plane is not None else "BAND",
                    expected=f"every file to hold bands {', '.join(self.bands)}",
                )
                if missing
                else None
            )
        native: tuple[int, int] | None = None
        with_bands = [i for i, p in zip(infos, problems, strict=True) if p is None]
        if self.size is None and with_bands:
            native = Counter(i.shape for i in with_bands).most_common(1)[0][0]
        for row, info in enumerate(infos):
            if problems[row] is not None:
                continue
            h, w = info.shape
            if self.size is not None and self.size > min(h, w):
                problems[row] = SurveyFormatError(
                    info.path,
                    f"cutout is {h} × {w} px, smaller than the crop size {self.size}",
                    field="NAXIS1/NAXIS2",
                    expected=f"cutouts of at least {self.size} × {self.size} px",
                )
            elif native is not None and info.shape != native:
                problems[row] = SurveyFormatError(
                    info.path,
                    f"cutout is {h} × {w} px but most cutouts of the folder are "
                    f"{native[0]} × {native[1]}",
                    field="NAXIS1/NAXIS2",
                    expected="every cutout of the folder the same size, or a crop "
                    "size (size=) to centre-crop them all",
                )
        for row, (info, problem) in enumerate(zip(infos, problems, strict=True)):
            if problem is not None:
                self._reject(info.object_id, info.path, row, problem)
        self._usable = np.asarray([p is None for p in problems], dtype=bool)
        if not self._usable.any():
            first = self.rejected[0]["reason"] if self.rejected else "no file scanned"
            raise SurveyFormatError(
                self.folder,
                f"none of its {len(files)} FITS files is usable; first problem: {first}",
                expected="at least one valid FITS cutout (see the module documentation "
                "of galaxy_assets.survey.fits for the layouts read)",
            )
        self._infos = infos
        self.files: list[Path] = [i.path for i in infos]
        if self.size is not None:
            self.height = self.width = self.size
        else:
            assert native is not None
            self.height, self.width = native
        good = [i for i, ok in zip(infos, self._usable.tolist(), strict=True) if ok]
        self.has_ivar = all(all(b in i.ivar for b in self.bands) for i in good)
        self._read_ivar = ivar and self.has_ivar
        self._object_id = np.asarray([i.object_id for i in infos], dtype=str)
        if self.rejected:
            log.warning(
                "%s: %d of %d FITS files left out (see reader.rejected)",
                self.uri,
                len(files) - len(good),
                len(files),
            )

    def _warn_keyword_offsets(self, infos: Sequence[_FileInfo]) -> None:
        """Log once per folder (and per set of offsets) the files whose RA/DEC keywords lie
        more than :data:`KEYWORD_WCS_TOLERANCE_PX` pixels from their WCS centre."""
        off = [(i.path, i.keyword_offset) for i in infos if i.keyword_offset is not None]
        if not off:
            return
        key = (self.uri, hash(tuple((str(p), o.arcsec) for p, o in off)))
        with _SCANS_LOCK:
            if key in _WARNED_OFFSETS:
                return
            if len(_WARNED_OFFSETS) > 10_000:
                _WARNED_OFFSETS.clear()
            _WARNED_OFFSETS.add(key)
        worst_path, worst = max(off, key=lambda po: po[1].arcsec)
        log.warning(
            "%s: the %s keywords of %d of %d FITS files disagree with the WCS at the cutout "
            "centre by up to %.1f arcsec (%.1f px, %s); the position is taken from the WCS. "
            "Keywords copied from a survey frame's header are its telescope pointing, not "
            "the galaxy's position.",
            self.uri,
            worst.keywords,
            len(off),
            len(infos),
            worst.arcsec,
            worst.pixels,
            worst_path.name,
        )

    def _reject(self, object_id: str, path: Path, row: int | None, exc: SurveyFormatError) -> None:
        log.warning("skipping %s", str(exc))  # the text: a record must not hold the reader
        self.rejected.append(
            {"object_id": object_id, "file": str(path), "row": row, "reason": str(exc)}
        )

    # ------------------------------------------------------------------ protocol
    def __len__(self) -> int:
        return len(self._infos)

    def __repr__(self) -> str:
        return (
            f"FitsFolderReader({self.uri!r}, bands={self.bands}, size={self.size}, "
            f"n={len(self)}, rejected={len(self.rejected)})"
        )

    @property
    def object_id(self) -> np.ndarray:
        """Object ids of the good files, numpy unicode (N,)."""
        return self._object_id

    def catalog(self) -> dict[str, np.ndarray]:
        """object_id (str), ra / dec (float64, degrees), flux_g … flux_z (float32,
        nanomaggies, NaN when the header has no FLUX_<BAND>), ebv (float32, NaN if absent)."""
        out: dict[str, np.ndarray] = {
            "object_id": self._object_id,
            "ra": np.asarray([i.ra for i in self._infos], dtype=np.float64),
            "dec": np.asarray([i.dec for i in self._infos], dtype=np.float64),
        }
        for band in ("g", "r", "i", "z"):
            out[f"flux_{band}"] = np.asarray(
                [i.fluxes.get(band, np.nan) for i in self._infos], dtype=np.float32
            )
        out["ebv"] = np.asarray([i.ebv for i in self._infos], dtype=np.float32)
        return out

    @property
    def psf_fwhm(self) -> np.ndarray:
        """PSF FWHM in arcsec, (N, len(bands)) float32, NaN where a header gives none."""
        return np.asarray(
            [[i.psf_fwhm.get(b, np.nan) for b in self.bands] for i in self._infos],
            dtype=np.float32,
        ).reshape(len(self._infos), len(self.bands))

    @property
    def pixel_scale(self) -> float:
        """Median pixel scale of the good files in arcsec / pixel."""
        return float(np.median([i.pixel_scale for i in self._infos]))

    def iter_batches(self, batch_size: int = 256) -> Iterator[CutoutBatch]:
        """Yield every row in order, ``batch_size`` galaxies at a time (unusable files as
        NaN pixels, see the module doc)."""
        if batch_size <= 0:
            raise SurveyConfigError(f"batch_size={batch_size}: must be a positive integer")
        for start in range(0, len(self), batch_size):
            yield self.read_rows(range(start, min(len(self), start + batch_size)))

    def read_rows(self, rows: Sequence[int] | np.ndarray) -> CutoutBatch:
        """Read the given rows (indices into :attr:`files`, any order) as one batch.

        A file whose pixels cannot be read although its headers could is not fatal: its
        planes come back NaN (so the manifest rejects it) and it is added to
        :attr:`rejected` with its row.
        """
        req = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if req.size and (req.min() < 0 or req.max() >= n):
            bad = int(req[(req < 0) | (req >= n)][0])
            raise IndexError(f"{self.uri}: row {bad} is outside 0..{n - 1}")
        shape = (req.size, len(self.bands), self.height, self.width)
        images = np.empty(shape, dtype=np.float32)
        ivar = np.empty(shape, dtype=np.float32) if self._read_ivar else None
        for k, row in enumerate(req.tolist()):
            info = self._infos[row]
            if not self._usable[row]:  # recorded in `rejected` when the folder was scanned
                images[k] = np.nan
                if ivar is not None:
                    ivar[k] = 0.0
                continue
            try:
                self._read_file(info, images[k], None if ivar is None else ivar[k])
            except Exception as exc:  # astropy raises many types for damaged data
                images[k] = np.nan
                if ivar is not None:
                    ivar[k] = 0.0
                if not any(r["row"] == row for r in self.rejected):
                    self._reject(
                        info.object_id,
                        info.path,
                        row,
                        SurveyFormatError(
                            info.path,
                            f"pixels cannot be read ({type(exc).__name__}: {exc})",
                            field="data",
                            expected="a complete FITS file: re-copy or regenerate it",
                        ),
                    )
        return CutoutBatch(
            object_id=self._object_id[req],
            rows=req,
            images=images,
            ivar=ivar,
            bands=self.bands,
        )

    def _read_file(self, info: _FileInfo, out: np.ndarray, ivar_out: np.ndarray | None) -> None:
        h, w = info.shape
        y0, x0 = (h - self.height) // 2, (w - self.width) // 2
        ysl, xsl = slice(y0, y0 + self.height), slice(x0, x0 + self.width)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(info.path, memmap=False) as hdul:
                cache: dict[int, np.ndarray] = {}

                def plane(p: _Plane) -> np.ndarray:
                    if p.hdu not in cache:
                        cache[p.hdu] = hdul[p.hdu].data
                    data = cache[p.hdu]
                    return data[p.plane] if p.plane is not None else data

                # FITS row 1 is the bottom of the picture: flip to display order (row 0 on
                # top, as DS9 draws the file), the order every reader returns.
                for k, band in enumerate(self.bands):
                    out[k] = plane(info.planes[band])[::-1][ysl, xsl]
                    if ivar_out is not None:
                        ivar_out[k] = plane(info.ivar[band])[::-1][ysl, xsl]

    def close(self) -> None:
        """Nothing to release (files are opened per read); present for the protocol."""

    def __enter__(self) -> FitsFolderReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_fits_cutout(
    path: str | Path,
    image: np.ndarray,
    bands: Sequence[str],
    ra: float,
    dec: float,
    object_id: str | int,
    ivar: np.ndarray | None = None,
    *,
    layout: str = "cube",
    pixel_scale: float = schema.PIXEL_SCALE_ARCSEC,
    psf_fwhm: float | Sequence[float] | None = None,
    fluxes: Mapping[str, float] | None = None,
    ebv: float | None = None,
    position_keywords: bool = True,
    wcs: bool = True,
) -> Path:
    """Write one galaxy as a FITS file that :class:`FitsFolderReader` reads; return its path.

    ``image`` (B, H, W) float32 in nanomaggies per pixel and ``ivar`` alike, in display order
    (row 0 on top: north when the cutout is north-up; written bottom row first, as FITS
    stores a picture); ``bands`` names the B planes; ``ra`` / ``dec`` in degrees are the position of the cutout's centre pixel.
    ``layout='cube'`` writes a primary-HDU cube (``BANDS``, ``BAND0``…) plus an ``IVAR``
    extension; ``layout='hdus'`` writes an empty primary HDU and one image HDU per band
    (``EXTNAME`` and ``BAND`` = the band, ivar in ``IVAR_<band>`` HDUs). ``position_keywords``
    writes RA/DEC keywords, ``wcs`` a TAN WCS centred on the cutout with ``pixel_scale``
    arcsec / pixel (north up, east left). ``psf_fwhm`` (arcsec, scalar or per band),
    ``fluxes`` (band → nanomaggies, as FLUX_G…) and ``ebv`` go into the primary header.
    A name ending in ``.gz`` is gzip-compressed. The write is atomic (hidden temporary file
    in the same folder, then :func:`os.replace`); parent folders are created.
    """
    path = Path(path)
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] != len(bands):
        raise ValueError(f"image: shape {img.shape}; expected (B={len(bands)}, H, W)")
    if ivar is not None:
        ivar = np.asarray(ivar, dtype=np.float32).reshape(img.shape)
    if layout not in ("cube", "hdus"):
        raise ValueError(f"layout={layout!r}: expected 'cube' or 'hdus'")
    # ``image`` is in display order (row 0 on top); FITS stores the bottom row first.
    img = np.ascontiguousarray(img[:, ::-1])
    if ivar is not None:
        ivar = np.ascontiguousarray(ivar[:, ::-1])
    nb, h, w = img.shape
    psf = (
        None if psf_fwhm is None else np.broadcast_to(np.asarray(psf_fwhm, dtype=np.float64), (nb,))
    )

    primary = fits.Header()
    primary["OBJID"] = (str(object_id), "object identifier")
    if position_keywords:
        primary["RA"] = (float(ra), "[deg] ICRS, cutout centre")
        primary["DEC"] = (float(dec), "[deg] ICRS, cutout centre")
    primary["PIXSCALE"] = (float(pixel_scale), "[arcsec/pixel]")
    for band, value in (fluxes or {}).items():
        primary[schema.flux_column(normalize_band(band))] = (float(value), "[nanomaggies]")
    if ebv is not None:
        primary["EBV"] = (float(ebv), "[mag] Galactic E(B-V)")
    wcs_cards = fits.Header()
    if wcs:
        wcs_cards["WCSAXES"] = 2
        wcs_cards["CTYPE1"], wcs_cards["CTYPE2"] = "RA---TAN", "DEC--TAN"
        wcs_cards["CUNIT1"], wcs_cards["CUNIT2"] = "deg", "deg"
        wcs_cards["CRVAL1"], wcs_cards["CRVAL2"] = float(ra), float(dec)
        wcs_cards["CRPIX1"], wcs_cards["CRPIX2"] = (w + 1) / 2.0, (h + 1) / 2.0
        wcs_cards["CD1_1"] = -pixel_scale / 3600.0
        wcs_cards["CD1_2"] = 0.0
        wcs_cards["CD2_1"] = 0.0
        wcs_cards["CD2_2"] = pixel_scale / 3600.0

    hdus: list[Any]
    if layout == "cube":
        header = primary.copy()
        header["BANDS"] = (",".join(bands), "band of each plane")
        for k, band in enumerate(bands):
            header[f"BAND{k}"] = band
            if psf is not None:
                header[f"PSFFWHM{k}"] = (float(psf[k]), f"[arcsec] PSF FWHM, band {band}")
        header.update(wcs_cards)
        hdus = [fits.PrimaryHDU(img, header=header)]
        if ivar is not None:
            iv_header = fits.Header()
            iv_header["BANDS"] = ",".join(bands)
            iv_header["IMTYPE"] = "IVAR"
            hdus.append(fits.ImageHDU(ivar, header=iv_header, name="IVAR"))
    else:
        header = primary.copy()
        header.update(wcs_cards)
        hdus = [fits.PrimaryHDU(header=header)]
        for k, band in enumerate(bands):
            hh = fits.Header()
            hh["BAND"] = band
            if psf is not None:
                hh["PSFFWHM"] = (float(psf[k]), "[arcsec] PSF FWHM")
            hh.update(wcs_cards)
            hdus.append(fits.ImageHDU(img[k], header=hh, name=band.upper()))
            if ivar is not None:
                ih = fits.Header()
                ih["BAND"] = band
                ih["IMTYPE"] = "IVAR"
                hdus.append(fits.ImageHDU(ivar[k], header=ih, name=f"IVAR_{band.upper()}"))

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
