"""A corpus of bad survey files, generated here, and the error each one must give.

Every error names the file, the field (dataset or header keyword) where one applies, and
says what was expected. Per-galaxy problems are recorded and skipped; a bad shard fails
alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from galaxy_assets.survey import schema
from galaxy_assets.survey.errors import SurveyFormatError
from galaxy_assets.survey.fits import FitsFolderReader, write_fits_cutout
from galaxy_assets.survey.manifest import build_manifest
from galaxy_assets.survey.mmu import MMUShardReader
from galaxy_assets.survey.readers import find_shards, open_shard, shard_key


def assert_message(exc: SurveyFormatError, path: Path | str, field: str | None, *parts: str):
    """The message names ``path`` and ``field``, says what was expected, and holds ``parts``."""
    msg = str(exc)
    assert str(path) in msg, msg
    assert exc.path == str(path)
    if field is not None:
        assert exc.field == field, msg
        assert f"[field {field!r}]" in msg, msg
    assert "expected" in msg, msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


def _truncate(path: Path, keep: float | int) -> Path:
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else len(data) + keep
    path.write_bytes(data[:cut])
    return path


# ----------------------------------------------------------------------------- HDF5 files
def _without(name: str) -> Callable[[Any, Path], Path]:
    def build(raw: Any, tmp: Path) -> Path:
        return raw(f"no_{name}.hdf5", drop=[name])

    return build


# Each case: build(raw_h5, tmp_path) -> path; open kwargs; field; message parts.
Build = Callable[[Any, Path], Path]
N = 6  # galaxies in raw_h5's valid layout

HDF5_CASES: list[tuple[str, Build, dict[str, Any], str | None, tuple[str, ...]]] = [
    (
        "truncated_half",
        lambda raw, tmp: _truncate(raw("t1.hdf5"), 0.5),
        {},
        None,
        ("cannot be opened as HDF5", "truncated or corrupt", "complete HDF5 file"),
    ),
    (
        "truncated_tail",
        lambda raw, tmp: _truncate(raw("t2.hdf5"), -64),
        {},
        None,
        ("cannot be opened as HDF5", "complete HDF5 file"),
    ),
    (
        "garbage_bytes",
        lambda raw, tmp: _write(tmp / "garbage.hdf5", b"\x89not hdf5 at all" * 64),
        {},
        None,
        ("cannot be opened as HDF5", "Multimodal Universe layout"),
    ),
    (
        "empty_file",
        lambda raw, tmp: _write(tmp / "empty.h5", b""),
        {},
        None,
        ("cannot be opened as HDF5",),
    ),
    *[
        (
            f"missing_{name}",
            _without(name),
            {},
            name,
            ("missing required dataset", "image_array, image_band, object_id, ra, dec"),
        )
        for name in schema.MMU_REQUIRED
    ],
    (
        "image_3d",
        lambda raw, tmp: raw("img3d.hdf5", image_array=np.zeros((N, 8, 8), np.float32)),
        {},
        "image_array",
        ("3-D", "4-D array (N galaxies, B bands, H, W pixels)"),
    ),
    (
        "image_not_numeric",
        lambda raw, tmp: raw("imgstr.hdf5", image_array=np.full((N, 4, 2, 2), b"x")),
        {},
        "image_array",
        ("dtype", "float32"),
    ),
    (
        "no_galaxies",
        lambda raw, tmp: raw(
            "zero.hdf5",
            image_array=np.zeros((0, 4, 8, 8), np.float32),
            image_band=np.zeros((0, 4), "S5"),
            image_ivar=np.zeros((0, 4, 8, 8), np.float32),
        ),
        {},
        "image_array",
        ("holds no galaxies", "at least one cutout"),
    ),
    (
        "n_mismatch_ra",
        lambda raw, tmp: raw("nra.hdf5", ra=np.zeros(N - 1)),
        {},
        "ra",
        ("has 5 rows", "image_array has 6", "one entry per galaxy"),
    ),
    (
        "n_mismatch_object_id",
        lambda raw, tmp: raw("nid.hdf5", object_id=np.arange(N + 2)),
        {},
        "object_id",
        ("has 8 rows", "one entry per galaxy (6 rows"),
    ),
    (
        "n_mismatch_flux",
        lambda raw, tmp: raw("nflux.hdf5", FLUX_G=np.ones(N + 1, np.float32)),
        {},
        "FLUX_G",
        ("has 7 rows",),
    ),
    (
        "ivar_shape",
        lambda raw, tmp: raw("ivar.hdf5", image_ivar=np.ones((N, 4, 4, 4), np.float32)),
        {},
        "image_ivar",
        ("(6, 4, 4, 4)", "the same shape as image_array"),
    ),
    (
        "band_shape",
        lambda raw, tmp: raw("bandshape.hdf5", image_band=np.array([[b"g", b"r", b"z"]] * N)),
        {},
        "image_band",
        ("(6, 3)", "one band name per image plane"),
    ),
    (
        "band_rows_differ",
        lambda raw, tmp: raw(
            "bandrows.hdf5",
            image_band=np.array([[b"g", b"r", b"i", b"z"]] * 3 + [[b"z", b"i", b"r", b"g"]] * 3),
        ),
        {},
        "image_band",
        ("row 3 lists bands ['z', 'i', 'r', 'g']", "the same band order on every row"),
    ),
    (
        "unknown_band",
        lambda raw, tmp: raw(
            "unknown.hdf5", image_band=np.array([[b"N419", b"N501", b"N673", b"N921"]] * N)
        ),
        {},
        "image_band",
        ("names no known band: ['N419', 'N501', 'N673', 'N921']", "bands among u, g, r, i, z, y"),
    ),
    (
        "repeated_band",
        lambda raw, tmp: raw("rep.hdf5", image_band=np.array([[b"g", b"g", b"r", b"z"]] * N)),
        {},
        "image_band",
        ("repeats a band", "each band once"),
    ),
    (
        "requested_band_absent",
        lambda raw, tmp: raw("ok1.hdf5"),
        {"bands": ["g", "y"]},
        "image_band",
        ("lacks requested band(s) y", "it holds g, r, i, z", "request only bands it holds"),
    ),
    (
        "crop_larger_than_cutout",
        lambda raw, tmp: raw("ok2.hdf5"),
        {"size": 32},
        "image_array",
        ("8 × 8 px, smaller than the requested crop size 32", "at least 32 × 32 px"),
    ),
    (
        "ra_not_numeric",
        lambda raw, tmp: raw("rastr.hdf5", ra=np.array([b"10:00:00"] * N)),
        {},
        "ra",
        ("dtype", "floating-point degrees"),
    ),
    (
        "group_not_dataset",
        lambda raw, tmp: raw("group.hdf5", object_id=None),
        {},
        "object_id",
        ("is a Group, not a dataset", "an HDF5 dataset"),
    ),
    (
        "psf_shape",
        lambda raw, tmp: raw("psf.hdf5", image_psf_fwhm=np.ones((N, 3), np.float32)),
        {},
        "image_psf_fwhm",
        ("(6, 3)", "shape (6, 4)"),
    ),
    (
        "scale_shape",
        lambda raw, tmp: raw("scale.hdf5", image_scale=np.ones((N, 2, 2), np.float32)),
        {},
        "image_scale",
        ("arcsec / pixel",),
    ),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("build", "kwargs", "field", "parts"),
    [pytest.param(*case[1:], id=case[0]) for case in HDF5_CASES],
)
def test_bad_hdf5_shard(raw_h5, tmp_path, build, kwargs, field, parts):
    path = build(raw_h5, tmp_path)
    with pytest.raises(SurveyFormatError) as err:
        open_shard(path, **kwargs)
    assert_message(err.value, path, field, *parts)
    # The class is usable directly too, with the same message.
    with pytest.raises(SurveyFormatError) as err2:
        MMUShardReader(path, **kwargs)
    assert str(err2.value) == str(err.value)


def test_valid_raw_layout_opens(raw_h5):
    """The corpus starts from a valid file: only the listed change makes each case bad."""
    with MMUShardReader(raw_h5("valid.hdf5")) as reader:
        assert len(reader) == N


# ------------------------------------------------------------------------ bad galaxies
def test_nan_filled_images_are_recorded_and_skipped(make_shard):
    def mutate(d):
        d.images[0] = np.nan
        d.images[3] = np.inf
        d.images[5, 3] = np.nan  # z band only

    data = make_shard("healpix=9/nan.hdf5", n=10, mutate=mutate)
    with MMUShardReader(data.path) as reader:
        result = build_manifest(reader, "healpix=9__nan")
    assert result.frame.height == 7
    rejected = {r["row"]: r for r in result.rejected}
    assert sorted(rejected) == [0, 3, 5]
    assert rejected[0]["object_id"] == data.object_id[0]
    assert "entirely non-finite (nan)" in rejected[0]["reason"]
    assert "entirely non-finite (nonfinite)" in rejected[3]["reason"]
    assert "band(s) z have no finite pixel" in rejected[5]["reason"]
    assert np.isfinite(result.frame["nonfinite_fraction"].to_numpy()).all()


def test_duplicate_ids_keep_first(make_shard):
    def mutate(d):
        d.object_id[4] = d.object_id[1]
        d.object_id[8] = d.object_id[1]

    data = make_shard(n=9, mutate=mutate)
    with MMUShardReader(data.path) as reader:
        result = build_manifest(reader, "dups")
    assert result.frame["object_id"].to_list().count(data.object_id[1]) == 1
    assert result.frame.filter(result.frame["object_id"] == data.object_id[1])["row"][0] == 1
    assert [(r["row"], r["kind"]) for r in result.rejected] == [(4, "duplicate"), (8, "duplicate")]
    assert f"object_id {data.object_id[1]!r} already kept at row 1" in result.rejected[0]["reason"]


def test_all_nan_shard_fails_naming_file(make_shard):
    def mutate(d):
        d.images[:] = np.nan

    data = make_shard("allnan.hdf5", n=4, mutate=mutate)
    with MMUShardReader(data.path) as reader, pytest.raises(SurveyFormatError) as err:
        build_manifest(reader, "allnan")
    assert_message(err.value, reader.uri, None, "no usable galaxy among 4", "finite pixels")


# --------------------------------------------------------------------------- FITS files
def _fits_primary(path: Path, data: np.ndarray | None, **header: Any) -> Path:
    hdu = fits.PrimaryHDU(data)
    for key, value in header.items():
        hdu.header[key] = value
    hdu.writeto(path)
    return path


FITS_CASES: list[tuple[str, Callable[[Path], Path], str | None, tuple[str, ...]]] = [
    (
        "unreadable",
        lambda d: _write(d / "junk.fits", b"SIMPLE? no" * 300),
        None,
        ("cannot be read as FITS", "a readable FITS file holding one galaxy cutout"),
    ),
    (
        "truncated",
        lambda d: _truncate(
            write_fits_cutout(d / "trunc.fits", np.ones((4, 40, 40)), list("griz"), 1, 1, "t"),
            0.5,
        ),
        None,
        ("is truncated", "a complete FITS file"),
    ),
    (
        "no_position",
        lambda d: write_fits_cutout(
            d / "nopos.fits",
            np.ones((4, 8, 8)),
            list("griz"),
            1,
            1,
            "np",
            position_keywords=False,
            wcs=False,
        ),
        "RA/DEC",
        ("no sky position", "RA and DEC header keywords in degrees, or a celestial WCS"),
    ),
    (
        "bad_position_keywords",
        lambda d: _fits_primary(
            d / "badpos.fits", np.ones((1, 4, 4), np.float32), BANDS="r", RA="north", DEC="up"
        ),
        "RA/DEC",
        ("cannot be read as angles",),
    ),
    (
        "cube_without_band_names",
        lambda d: _fits_primary(
            d / "nobands.fits", np.ones((3, 8, 8), np.float32), RA=1.0, DEC=2.0
        ),
        "BANDS",
        ("does not name its bands", "BANDS='g,r,z' or BAND0"),
    ),
    (
        "bands_count_mismatch",
        lambda d: _fits_primary(
            d / "count.fits", np.ones((3, 8, 8), np.float32), BANDS="g,r", RA=1.0, DEC=2.0
        ),
        "BANDS",
        ("names 2 bands for a cube of 3 planes", "3 band names, one per plane"),
    ),
    (
        "unknown_band",
        lambda d: _fits_primary(
            d / "uband.fits", np.ones((8, 8), np.float32), BAND="N501", RA=1.0, DEC=2.0
        ),
        "BAND",
        ("unknown band name 'N501'", "a band among u, g, r, i, z, y"),
    ),
    (
        "hdu_without_band",
        lambda d: _fits_primary(d / "noband.fits", np.ones((8, 8), np.float32), RA=1.0, DEC=2.0),
        "BAND",
        ("image HDU 0 does not name its band", "a BAND, FILTER or EXTNAME keyword"),
    ),
    (
        "inconsistent_hdu_shapes",
        lambda d: _hdus_file(d / "shapes.fits", [("g", (8, 8)), ("r", (8, 9))]),
        "NAXIS1/NAXIS2 (HDU 2)",
        ("inconsistent shapes", "(8, 9)", "every band of a galaxy the same H × W"),
    ),
    (
        "no_image",
        lambda d: _fits_primary(d / "table.fits", None, RA=1.0, DEC=2.0),
        "NAXIS",
        ("holds no image HDU", "a 3-D band cube (B, H, W) or one 2-D image HDU per band"),
    ),
]


def _hdus_file(path: Path, planes: list[tuple[str, tuple[int, int]]]) -> Path:
    hdus: list[Any] = [fits.PrimaryHDU()]
    hdus[0].header["RA"], hdus[0].header["DEC"] = 1.0, 2.0
    for band, shape in planes:
        h = fits.ImageHDU(np.ones(shape, np.float32))
        h.header["BAND"] = band
        hdus.append(h)
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.mark.parametrize(
    ("build", "field", "parts"),
    [pytest.param(*case[1:], id=case[0]) for case in FITS_CASES],
)
def test_bad_fits_file_is_recorded_and_skipped(make_fits_folder, build, field, parts):
    folder, images = make_fits_folder(n=3, size=8)
    bad = build(folder)
    with FitsFolderReader(folder) as reader:
        assert len(reader) == 3
        assert bad not in reader.files
        [entry] = reader.rejected
        assert entry["file"] == str(bad) and entry["row"] is None
        result = build_manifest(reader, "fits")
    # The reason is the SurveyFormatError message; re-raise it from a lone folder to check
    # the structured fields too.
    lone = folder.parent / f"lone_{bad.stem}"
    lone.mkdir()
    bad.rename(lone / bad.name)
    with pytest.raises(SurveyFormatError) as err:
        FitsFolderReader(lone)
    assert_message(
        err.value, lone, None, "none of its 1 FITS files is usable", str(lone / bad.name)
    )
    for part in parts:
        assert part in entry["reason"], entry["reason"]
        assert part in str(err.value)
    if field is not None:
        assert f"[field {field!r}]" in entry["reason"]
    assert "expected" in entry["reason"]
    assert str(bad) in entry["reason"]
    # The manifest keeps the good galaxies and reports the bad file.
    assert result.frame.height == 3 and result.n_rejected == 1
    assert result.rejected[0]["file"] == str(bad)


def test_fits_missing_band_is_recorded(make_fits_folder):
    folder, images = make_fits_folder(n=3, size=8)
    bad = write_fits_cutout(folder / "gr_only.fits", images[0][:2], ["g", "r"], 1, 1, "gr")
    with FitsFolderReader(folder) as reader:
        [entry] = reader.rejected
    assert entry["object_id"] == "gr"
    assert str(bad) in entry["reason"]
    assert "[field 'BANDS']" in entry["reason"]
    assert "lacks band(s) i, z" in entry["reason"]
    assert "expected every file to hold bands g, r, i, z" in entry["reason"]


def test_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("nothing here")
    with pytest.raises(SurveyFormatError) as err:
        open_shard(empty)
    assert_message(err.value, empty, None, "holds no FITS files", "one FITS file per galaxy")


def test_folder_of_hdf5_files_gets_a_hint(tmp_path, make_shard):
    make_shard("cell/a.hdf5", n=2)
    with pytest.raises(SurveyFormatError, match="open each .hdf5 file as its own shard"):
        FitsFolderReader(tmp_path / "cell")


def test_not_a_folder(tmp_path):
    with pytest.raises(SurveyFormatError) as err:
        FitsFolderReader(tmp_path / "missing")
    assert_message(err.value, tmp_path / "missing", None, "is not a folder")


# ------------------------------------------------------------ one bad shard among good
def test_bad_shard_fails_alone(tmp_path, make_shard, make_fits_folder):
    good = [make_shard(f"healpix={hp}/001-of-001.hdf5", n=5, seed=hp) for hp in (3, 4)]
    corrupt = make_shard("healpix=5/001-of-001.hdf5", n=5, seed=5).path
    _truncate(corrupt, 0.6)
    make_fits_folder("fits/a", n=2)
    frames, failures = {}, {}
    for path in find_shards(tmp_path):
        key = shard_key(tmp_path, path)
        try:
            with open_shard(path) as reader:
                frames[key] = build_manifest(reader, key).frame
        except SurveyFormatError as exc:
            failures[key] = exc
    assert set(failures) == {"healpix=5__001-of-001"}
    assert str(corrupt) in str(failures["healpix=5__001-of-001"])
    assert set(frames) == {"healpix=3__001-of-001", "healpix=4__001-of-001", "fits__a"}
    for data, hp in zip(good, (3, 4), strict=True):
        frame = frames[f"healpix={hp}__001-of-001"]
        assert frame["object_id"].to_list() == data.object_id
