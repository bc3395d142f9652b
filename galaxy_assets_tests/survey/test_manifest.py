"""build_manifest: columns, healpix, rejections, schema."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from astropy_healpix import HEALPix

from galaxy_assets.survey.checks import check_consistency, check_finite, check_schema
from galaxy_assets.survey.errors import SurveyFormatError
from galaxy_assets.survey.fits import FitsFolderReader
from galaxy_assets.survey.manifest import HEALPIX_NSIDE, build_manifest, healpix_of
from galaxy_assets.survey.mmu import MMUShardReader
from galaxy_assets.survey.schema import MANIFEST_COLUMNS


def test_clean_shard(make_shard):
    data = make_shard("healpix=42/001-of-001.hdf5", n=9)
    calls = []
    with MMUShardReader(data.path) as reader:
        result = build_manifest(
            reader,
            "healpix=42__001-of-001",
            batch_size=4,
            progress=lambda d, t: calls.append((d, t)),
        )
    frame = result.frame
    assert dict(frame.schema) == MANIFEST_COLUMNS
    assert list(frame.columns) == list(MANIFEST_COLUMNS)
    assert frame.height == 9 and result.rejected == [] and result.n_read == 9
    assert frame["object_id"].to_list() == data.object_id
    assert frame["row"].to_list() == list(range(9))
    assert set(frame["healpix"].to_list()) == {42}
    assert set(frame["bands"].to_list()) == {"g,r,i,z"}
    assert set(frame["shard"].to_list()) == {"healpix=42__001-of-001"}
    assert frame["shard_uri"][0] == reader.uri
    assert frame["height"][0] == 16 and frame["width"][0] == 16
    assert (frame["nonfinite_fraction"] == 0).all()
    np.testing.assert_allclose(frame["flux_r"].to_numpy(), data.fluxes["r"])
    assert calls == [(4, 9), (8, 9), (9, 9)]
    assert check_schema(frame).passed
    assert check_finite(frame).passed
    assert check_consistency(frame, "griz").passed
    summary = result.summary()
    assert summary["n_kept"] == 9 and summary["n_rejected"] == 0


def test_healpix_computed_when_path_names_none(make_shard):
    data = make_shard("plain/shard.hdf5", n=6)
    with MMUShardReader(data.path) as reader:
        frame = build_manifest(reader, "plain__shard").frame
    grid = HEALPix(nside=HEALPIX_NSIDE, order="nested")
    import astropy.units as u

    want = grid.lonlat_to_healpix(data.ra * u.deg, data.dec * u.deg)
    assert frame["healpix"].to_list() == [int(c) for c in want]
    assert healpix_of(np.array([]), np.array([])).size == 0


def test_missing_and_nan_catalogue_values_are_null(make_shard):
    def mutate(d):
        d.fluxes["g"][2] = np.nan
        del d.fluxes["i"]

    data = make_shard(n=4, mutate=mutate, ebv=None)
    with MMUShardReader(data.path, bands=["g", "r"], size=8) as reader:
        frame = build_manifest(reader, "s").frame
    assert frame["flux_g"].null_count() == 1
    assert frame["flux_i"].null_count() == 4
    assert frame["ebv"].null_count() == 4
    assert set(frame["bands"].to_list()) == {"g,r"}
    assert frame["height"][0] == 8


def test_rejections(make_shard):
    def mutate(d):
        d.images[1] = np.nan  # whole image NaN
        d.images[2, 1] = np.inf  # one band inf
        d.images[3, :, :4] = np.nan  # a quarter NaN: kept, fraction 0.25
        d.ivar[4, 2] = 0.0  # no valid measurement in i
        d.images[5, 3] = 0.0  # z never written
        d.object_id[7] = d.object_id[6]  # duplicate of a kept galaxy
        d.object_id[9] = d.object_id[1]  # duplicate of a rejected one: kept
        d.ra[10] = 400.0
        d.dec[11] = np.nan

    data = make_shard(n=14, mutate=mutate)
    with MMUShardReader(data.path) as reader:
        result = build_manifest(reader, "s", batch_size=5)
    by_row = {r["row"]: r for r in result.rejected}
    assert sorted(by_row) == [1, 2, 4, 5, 7, 10, 11]
    assert "entirely non-finite" in by_row[1]["reason"]
    assert "band(s) r have no finite pixel" in by_row[2]["reason"]
    assert "band(s) i have zero or non-finite inverse variance" in by_row[4]["reason"]
    assert "band(s) z are zero everywhere" in by_row[5]["reason"]
    assert by_row[7]["kind"] == "duplicate" and "row 6" in by_row[7]["reason"]
    assert by_row[7]["object_id"] == data.object_id[6]
    assert "ra=400.0" in by_row[10]["reason"] and "dec=nan" in by_row[11]["reason"]
    frame = result.frame
    assert frame.height == 7 and result.n_rejected == 7 and result.n_read == 14
    assert frame["object_id"].is_unique().all()
    assert 9 in frame["row"].to_list()
    frac = dict(zip(frame["row"].to_list(), frame["nonfinite_fraction"].to_list(), strict=True))
    assert frac[3] == pytest.approx(0.25)
    assert result.reasons == {"pixels": 3, "ivar": 1, "duplicate": 1, "position": 2}


def test_every_galaxy_bad_raises(make_shard):
    def mutate(d):
        d.images[:] = np.nan

    data = make_shard(n=3, mutate=mutate)
    with MMUShardReader(data.path) as reader, pytest.raises(SurveyFormatError) as err:
        build_manifest(reader, "s")
    assert str(data.path) in str(err.value)
    assert "no usable galaxy among 3" in str(err.value)


def test_fits_rejections_are_merged(make_fits_folder):
    folder, _ = make_fits_folder(n=3)
    (folder / "zz_broken.fits").write_bytes(b"junk" * 100)
    with FitsFolderReader(folder) as reader:
        result = build_manifest(reader, "fits__field")
    assert result.frame.height == 3 and result.n_read == 4
    [rej] = result.rejected
    assert rej["row"] is None and rej["file"].endswith("zz_broken.fits")
    assert rej["kind"] == "reader" and "cannot be read as FITS" in rej["reason"]


def test_frame_is_polars_with_exact_dtypes(make_shard):
    data = make_shard(n=2)
    with MMUShardReader(data.path) as reader:
        frame = build_manifest(reader, "s").frame
    assert isinstance(frame, pl.DataFrame)
    for name, dtype in MANIFEST_COLUMNS.items():
        assert frame.schema[name] == dtype, name


def test_a_fits_folder_fingerprint_follows_its_files(make_fits_folder):
    """Pixels fixed in place in one FITS file leave the folder's own size and mtime alone; the
    fingerprint (which decides whether image embeddings are reused) must still change."""
    import os

    from astropy.io import fits

    from galaxy_assets.survey.fits import FitsFolderReader
    from galaxy_assets.survey.manifest import build_manifest, shard_fingerprint

    folder, _ = make_fits_folder(n=3)
    with FitsFolderReader(folder) as reader:
        manifest = build_manifest(reader, "fits").frame
    before = shard_fingerprint(manifest)
    folder_mtime = folder.stat().st_mtime_ns
    path = sorted(folder.iterdir())[1]
    with fits.open(path, mode="update") as hdul:
        hdul[0].data = hdul[0].data * 2.0
    os.utime(folder, ns=(folder_mtime, folder_mtime))
    assert shard_fingerprint(manifest) != before
