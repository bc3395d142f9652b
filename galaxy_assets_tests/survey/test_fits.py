"""FitsFolderReader and write_fits_cutout."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from galaxy_assets.survey.base import CutoutReader
from galaxy_assets.survey.fits import FitsFolderReader, fits_stem, write_fits_cutout
from galaxy_assets.survey.manifest import build_manifest


@pytest.mark.parametrize("layout", ["cube", "hdus"])
def test_round_trip(make_fits_folder, layout):
    folder, images = make_fits_folder(
        layout=layout, psf_fwhm=[1.0, 1.1, 1.2, 1.3], fluxes={"g": 2.5, "z": 7.0}, ebv=0.04
    )
    with FitsFolderReader(folder) as reader:
        assert isinstance(reader, CutoutReader)
        assert len(reader) == 5 and reader.rejected == []
        assert reader.bands == ("g", "r", "i", "z")
        cat = reader.catalog()
        assert cat["object_id"].tolist() == [f"fits-{i}" for i in range(5)]
        np.testing.assert_allclose(cat["ra"], 30 + np.arange(5) / 100)
        np.testing.assert_allclose(cat["dec"], -2.0)
        assert np.all(cat["flux_g"] == 2.5) and np.all(cat["flux_z"] == 7.0)
        assert np.isnan(cat["flux_r"]).all()
        np.testing.assert_allclose(cat["ebv"], 0.04)
        np.testing.assert_allclose(reader.psf_fwhm[0], [1.0, 1.1, 1.2, 1.3])
        assert reader.pixel_scale == pytest.approx(0.262)
        batches = list(reader.iter_batches(2))
    assert [len(b) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), images)
    assert np.all(np.concatenate([b.ivar for b in batches]) == 100.0)


def test_bands_order_crop_and_gzip(tmp_path):
    rng = np.random.default_rng(0)
    cube = rng.normal(size=(3, 21, 20)).astype(np.float32)
    write_fits_cutout(tmp_path / "a.fits.gz", cube, ["DES-G", "DES-R", "DES-Z"], 1.0, 2.0, 7)
    with FitsFolderReader(tmp_path, bands=["z", "g"], size=10) as reader:
        batch = reader.read_rows([0])
    assert reader.bands == ("z", "g")
    np.testing.assert_array_equal(batch.images[0], cube[[2, 0], 5:15, 5:15])
    assert batch.object_id.tolist() == ["7"]


def test_position_from_wcs_when_no_keywords(tmp_path):
    cube = np.ones((1, 15, 15), np.float32)
    write_fits_cutout(tmp_path / "w.fits", cube, ["r"], 150.25, 2.5, "w", position_keywords=False)
    with FitsFolderReader(tmp_path) as reader:
        cat = reader.catalog()
        assert cat["ra"][0] == pytest.approx(150.25, abs=1e-9)
        assert cat["dec"][0] == pytest.approx(2.5, abs=1e-9)
        assert reader.pixel_scale == pytest.approx(0.262, rel=1e-6)


def test_sexagesimal_keywords_filter_names_and_file_stem(tmp_path):
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["RA"] = "10:00:00"
    hdus[0].header["DEC"] = "-01:30:00"
    for band in ("g DECam SDSS c0001", "r DECam SDSS c0002"):
        h = fits.ImageHDU(np.ones((8, 8), np.float32))
        h.header["FILTER"] = band
        hdus.append(h)
    fits.HDUList(hdus).writeto(tmp_path / "NGC1234.fit")
    with FitsFolderReader(tmp_path) as reader:
        cat = reader.catalog()
        assert reader.bands == ("g", "r")
        assert cat["object_id"].tolist() == ["NGC1234"]
        assert cat["ra"][0] == pytest.approx(150.0)
        assert cat["dec"][0] == pytest.approx(-1.5)
        assert reader.read_rows([0]).ivar is None


def test_extname_band_names(tmp_path):
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["RA"], hdus[0].header["DEC"] = 5.0, 6.0
    for k, name in enumerate(("IMAGE_G", "IMAGE_R", "IVAR_G", "IVAR_R")):
        hdus.append(fits.ImageHDU(np.full((4, 4), k, np.float32), name=name))
    fits.HDUList(hdus).writeto(tmp_path / "x.fits")
    with FitsFolderReader(tmp_path) as reader:
        batch = reader.read_rows([0])
    assert reader.bands == ("g", "r")
    assert batch.images[0, :, 0, 0].tolist() == [0, 1]
    assert batch.ivar[0, :, 0, 0].tolist() == [2, 3]


def test_bad_files_are_rejected_and_the_rest_read(make_fits_folder):
    folder, images = make_fits_folder(n=4)
    (folder / "broken.fits").write_bytes(b"not a fits file" * 20)
    write_fits_cutout(folder / "onlyg.fits", images[0][:1], ["g"], 1.0, 1.0, "onlyg")
    write_fits_cutout(folder / "big.fits", np.ones((4, 20, 20)), list("griz"), 1, 1, "big")
    with FitsFolderReader(folder) as reader:
        # Unreadable headers: no row. Lacking a band or off-size: a row that reads as NaN.
        assert len(reader) == 6
        names = [p.name for p in reader.files]
        assert names == ["big.fits"] + [f"gal{i:03d}.fits" for i in range(4)] + ["onlyg.fits"]
        by_file = {r["file"].rsplit("/", 1)[1]: r for r in reader.rejected}
        assert set(by_file) == {"broken.fits", "onlyg.fits", "big.fits"}
        assert "cannot be read as FITS" in by_file["broken.fits"]["reason"]
        assert "lacks band(s) r, i, z" in by_file["onlyg.fits"]["reason"]
        assert "20 × 20" in by_file["big.fits"]["reason"]
        assert by_file["onlyg.fits"]["object_id"] == "onlyg"
        assert by_file["broken.fits"]["row"] is None
        assert (by_file["big.fits"]["row"], by_file["onlyg.fits"]["row"]) == (0, 5)
        batch = reader.read_rows(range(6))
        assert np.isnan(batch.images[[0, 5]]).all() and (batch.ivar[[0, 5]] == 0).all()
        np.testing.assert_array_equal(batch.images[1:5], images)
        result = build_manifest(reader, "fits")
    assert result.frame["row"].to_list() == [1, 2, 3, 4]
    kinds = {
        r["object_id"]: (r["row"], r.get("file", "").rsplit("/", 1)[-1]) for r in result.rejected
    }
    assert kinds["big"] == (0, "big.fits") and kinds["onlyg"] == (5, "onlyg.fits")
    # A crop size every file can give admits the bigger cutout too, at the same row.
    with FitsFolderReader(folder, size=12) as reader:
        assert len(reader) == 6
        assert [r["row"] for r in reader.rejected if r["row"] is not None] == [5]
        assert np.isfinite(reader.read_rows([0]).images).all()


def test_rows_do_not_depend_on_bands_or_crop_size(make_fits_folder):
    """The manifest, the encoders and the thumbnails open one folder with different bands and
    crop sizes: a row must name the same file in each (a folder with cutouts of two sizes
    and one file lacking a band used to number its rows differently in each)."""
    folder, images = make_fits_folder(n=4, size=16)
    write_fits_cutout(folder / "gal001b.fits", np.ones((4, 24, 24)), list("griz"), 1, 1, "wide")
    write_fits_cutout(folder / "gal002b.fits", images[0][:2], ["g", "r"], 1, 1, "gr-only")
    ids = None
    for kwargs in ({}, {"size": 12}, {"bands": ["g", "r"]}, {"bands": ["r"], "size": 8}):
        with FitsFolderReader(folder, **kwargs) as reader:
            got = reader.object_id.tolist()
            ids = ids or got
            assert got == ids, kwargs
            batch = reader.read_rows(range(len(reader)))
            usable = np.isfinite(batch.images).all(axis=(1, 2, 3))
            assert usable[[0, 1, 3, 5]].all(), kwargs  # the 16 × 16 griz cutouts
            assert usable[2] == ("size" in kwargs), kwargs  # the 24 × 24 one needs a crop
            assert usable[4] == (set(kwargs.get("bands", "griz")) <= {"g", "r"}), kwargs
    assert ids == ["fits-0", "fits-1", "wide", "fits-2", "gr-only", "fits-3"]


def test_unreadable_pixels_after_scan_become_nan_and_recorded(make_fits_folder):
    folder, _ = make_fits_folder(n=3)
    reader = FitsFolderReader(folder)
    victim = reader.files[1]
    victim.write_bytes(victim.read_bytes()[:3000])  # header intact, data cut
    batch = reader.read_rows([0, 1, 2])
    assert np.isnan(batch.images[1]).all()
    assert np.isfinite(batch.images[[0, 2]]).all()
    assert [r["row"] for r in reader.rejected] == [1]
    assert str(victim) in reader.rejected[0]["reason"]


def test_fits_stem():
    assert fits_stem("/a/b/x.fits.gz") == "x"
    assert fits_stem("y.FIT") == "y"


def test_pixels_come_back_in_display_order(tmp_path):
    """FITS stores the bottom row first: a file's first data row is the bottom of the picture
    (south in a north-up cutout), so it reads as the last row, and the query reader agrees."""
    from astropy.wcs import WCS

    from galaxy_assets.search.query import read_fits_cutout

    data = np.zeros((8, 6), np.float32)
    data[0, 1] = 5.0  # FITS pixel (x=2, y=1): bottom of the picture
    hdu = fits.PrimaryHDU(data)
    hdu.header.update(BAND="r", RA=10.0, DEC=-5.0)
    folder = tmp_path / "raw"
    folder.mkdir()
    hdu.writeto(folder / "a.fits")
    with FitsFolderReader(folder) as reader:
        image = reader.read_rows([0]).images[0, 0]
    assert image[7, 1] == 5.0 and image.sum() == 5.0
    np.testing.assert_array_equal(read_fits_cutout(folder / "a.fits", ["r"])[0], image)

    # write_fits_cutout takes display order and writes a north-up WCS: the top row is north.
    picture = np.zeros((1, 9, 9), np.float32)
    picture[0, 0, 4] = 1.0
    path = write_fits_cutout(tmp_path / "w" / "b.fits", picture, ["r"], 10.0, -5.0, "b")
    with fits.open(path) as hdul:
        stored, header = hdul[0].data[0], hdul[0].header
    y, x = np.argwhere(stored == 1.0)[0]
    assert y == 8  # last FITS row
    _, dec_top = WCS(header, naxis=2).wcs_pix2world([[x, y]], 0)[0]
    assert dec_top > -5.0
    with FitsFolderReader(path.parent) as reader:
        np.testing.assert_array_equal(reader.read_rows([0]).images[0], picture)


def test_legacy_survey_viewer_cutout_with_its_invvar_cube(tmp_path):
    """The Legacy Survey viewer's fits-cutout writes BANDS='griz' (letters run together) beside
    BAND0..BAND3, a TAN WCS, and with invvar a second cube labelled IMAGETYP='INVVAR'."""
    rng = np.random.default_rng(1)
    cube = rng.normal(size=(4, 12, 12)).astype(np.float32)
    header = fits.Header()
    header["BANDS"] = "griz"
    for i, band in enumerate("griz"):
        header[f"BAND{i}"] = band
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0, CRPIX1=6.5,
                  CRPIX2=6.5, CD1_1=-0.262 / 3600, CD1_2=0.0, CD2_1=0.0, CD2_2=0.262 / 3600,
                  IMAGETYP="IMAGE")
    inv = header.copy()
    inv["IMAGETYP"] = "INVVAR"
    fits.HDUList([fits.PrimaryHDU(cube, header=header),
                  fits.ImageHDU(np.full_like(cube, 4.0), header=inv)]).writeto(tmp_path / "c.fits")
    with FitsFolderReader(tmp_path, bands=["z", "g"]) as reader:
        assert reader.has_ivar and reader.rejected == []
        batch = reader.read_rows([0])
    np.testing.assert_array_equal(batch.images[0], cube[[3, 0], ::-1])  # display order
    np.testing.assert_array_equal(batch.ivar[0], np.full((2, 12, 12), 4.0, np.float32))


def test_a_folder_opened_again_reads_only_changed_headers(tmp_path, monkeypatch):
    """Thumbnails and re-ranking open a folder per request: its headers are scanned once and
    kept by (path, size, mtime), so only a file replaced since is read again."""
    import galaxy_assets.survey.fits as fits_mod

    for k in range(4):
        write_fits_cutout(tmp_path / f"g{k}.fits", np.ones((1, 8, 8), np.float32), ["r"],
                          10.0 + k, 0.0, f"g{k}")
    scanned = []
    real = fits_mod._scan_file
    monkeypatch.setattr(fits_mod, "_scan_file", lambda p: scanned.append(p.name) or real(p))
    FitsFolderReader(tmp_path).close()
    FitsFolderReader(tmp_path).close()
    assert sorted(scanned) == ["g0.fits", "g1.fits", "g2.fits", "g3.fits"]
    write_fits_cutout(tmp_path / "g2.fits", np.ones((1, 9, 9), np.float32), ["r"], 12.0, 0.0, "x2")
    scanned.clear()
    with FitsFolderReader(tmp_path, size=8) as reader:
        assert reader.catalog()["object_id"].tolist() == ["g0", "g1", "x2", "g3"]
    assert scanned == ["g2.fits"]


def test_the_scan_cache_keeps_no_reader_and_sees_headers_fixed_in_place(tmp_path):
    """A bad file's reason is raised afresh on every open (a cached exception's traceback
    kept every reader that raised it alive); a header edited in place with its size and
    mtime kept (cp -p, rsync -a) is read again."""
    import gc
    import os
    import weakref

    write_fits_cutout(tmp_path / "good.fits", np.ones((1, 8, 8), np.float32), ["r"], 10.0, 0.0,
                      "good", wcs=False)  # RA/DEC is the position only without a WCS
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  = T" + b" " * 100)
    refs = []
    for _ in range(3):
        reader = FitsFolderReader(tmp_path)
        assert len(reader.rejected) == 1
        refs.append(weakref.ref(reader))
        reader.close()
        del reader
    gc.collect()
    assert all(r() is None for r in refs)

    path = tmp_path / "good.fits"
    st = path.stat()
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["RA"] = 123.0
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with FitsFolderReader(tmp_path) as reader:
        assert reader.catalog()["ra"].tolist() == [123.0]


def _frame_cutout_file(path, galaxy_ra, galaxy_dec, size=32):
    """A cutout made with astropy's documented recipe: Cutout2D from a DECam-like frame,
    then the frame's header with only its WCS updated. The frame header's RA/DEC (here
    sexagesimal, as DECam writes them) are the telescope pointing, 150.5, 2.5."""
    from astropy.coordinates import SkyCoord
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS

    h = fits.Header()
    h["RA"], h["DEC"] = "10:02:00.00", "+02:30:00.0"
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 150.5, 2.5
    h["CRPIX1"] = h["CRPIX2"] = 1024.5
    h["CD1_1"], h["CD2_2"], h["CD1_2"], h["CD2_1"] = -0.262 / 3600, 0.262 / 3600, 0.0, 0.0
    frame = np.zeros((2048, 2048), np.float32)
    centre = SkyCoord(galaxy_ra, galaxy_dec, unit="deg")
    hdus = [fits.PrimaryHDU()]
    for band in "grz":
        cut = Cutout2D(frame, centre, (size, size), wcs=WCS(h))
        hh = h.copy()
        hh["FILTER"] = f"{band} DECam SDSS c0001 4720.0 1520.0"
        hh.update(cut.wcs.to_header())
        hdus.append(fits.ImageHDU(cut.data, header=hh, name=band.upper()))
    fits.HDUList(hdus).writeto(path)
    return path


def test_position_is_the_wcs_centre_not_the_frame_pointing_keywords(tmp_path, caplog):
    """A cutout that kept its frame's RA/DEC (the telescope pointing) is placed where its WCS
    says its centre is; the disagreement is logged once per folder, naming a file and the
    offset. The old reader took RA/DEC first and put both galaxies at 150.5, 2.5."""
    import logging

    from astropy.wcs import WCS

    _frame_cutout_file(tmp_path / "gal1.fits", 150.45, 2.47)
    _frame_cutout_file(tmp_path / "gal2.fits", 150.52, 2.53)
    with caplog.at_level(logging.WARNING, logger="galaxy_assets.survey.fits"):
        with FitsFolderReader(tmp_path) as reader:
            cat = reader.catalog()
        FitsFolderReader(tmp_path).close()  # opened again (thumbnails): not logged again
    for k, path in enumerate(sorted(tmp_path.glob("*.fits"))):
        with fits.open(path) as hdul:
            wcs = WCS(hdul[1].header)
            ny, nx = hdul[1].data.shape
        centre = wcs.pixel_to_world((nx - 1) / 2, (ny - 1) / 2)
        assert cat["ra"][k] == pytest.approx(centre.ra.deg, abs=1e-9)
        assert cat["dec"][k] == pytest.approx(centre.dec.deg, abs=1e-9)
    # within one pixel (0.262 arcsec) of the galaxies the cutouts were cut around
    assert abs(cat["ra"][0] - 150.45) * 3600 < 0.262 and abs(cat["dec"][0] - 2.47) * 3600 < 0.262
    assert abs(cat["ra"][1] - 150.52) * 3600 < 0.262 and abs(cat["dec"][1] - 2.53) * 3600 < 0.262
    warned = [r.getMessage() for r in caplog.records if "disagree with the WCS" in r.getMessage()]
    assert len(warned) == 1
    assert "2 of 2 FITS files" in warned[0] and "gal1.fits" in warned[0]
    assert "RA/DEC" in warned[0] and "arcsec" in warned[0]


def test_keywords_that_agree_with_the_wcs_are_not_reported(tmp_path, caplog):
    import logging

    cube = np.ones((1, 15, 15), np.float32)
    write_fits_cutout(tmp_path / "a.fits", cube, ["r"], 150.25, 2.5, "a")
    with fits.open(tmp_path / "a.fits", mode="update") as hdul:  # 2 px off: within tolerance
        hdul[0].header["RA"] = 150.25 + 2 * 0.262 / 3600
    with caplog.at_level(logging.WARNING, logger="galaxy_assets.survey.fits"):
        with FitsFolderReader(tmp_path) as reader:
            assert reader.catalog()["ra"][0] == pytest.approx(150.25, abs=1e-9)
    assert not [r for r in caplog.records if "disagree with the WCS" in r.getMessage()]


def test_keywords_are_the_position_when_the_wcs_cannot_be_evaluated(tmp_path):
    hdu = fits.PrimaryHDU(np.ones((8, 8), np.float32))
    hdu.header.update(BAND="r", RA=12.5, DEC=-3.25, CTYPE1="RA---TAN", CTYPE2="DEC--TAN",
                      CRVAL1=0.0, CRVAL2=0.0, CRPIX1=4.5, CRPIX2=4.5, CDELT1=1e-4,
                      CDELT2=1e-4, PC1_1=0.0, PC1_2=0.0, PC2_1=0.0, PC2_2=0.0)  # singular
    hdu.writeto(tmp_path / "k.fits")
    with FitsFolderReader(tmp_path) as reader:
        assert reader.rejected == []
        cat = reader.catalog()
    assert (cat["ra"][0], cat["dec"][0]) == (12.5, -3.25)
