"""Image queries on the indexed mock survey: by object_id and by FITS/PNG cutout files,
and the bad files that must give a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from galaxy_assets.search.errors import QueryError
from galaxy_assets.search.pixels import Cutout, read_cutouts
from galaxy_assets.search.query import GalaxySearch, QueryTerm
from galaxy_assets.survey.fits import write_fits_cutout
from galaxy_assets_tests.search.conftest import FakeImageEncoder


@pytest.fixture
def engine(survey_index, text_embedder, aligner) -> GalaxySearch:
    uri, _ = survey_index
    return GalaxySearch(
        uri, text_embedder=text_embedder, aligner=aligner, image_encoder=FakeImageEncoder()
    )


def _galaxy(survey_index, k: int = 3) -> tuple[str, Cutout]:
    _, survey = survey_index
    manifest = survey.manifests[survey.shards[0]]
    oid = manifest["object_id"][k]
    cut = read_cutouts(manifest.filter(manifest["object_id"] == oid))[oid]
    assert isinstance(cut, Cutout) and cut.bands == ("g", "r", "i", "z")
    return oid, cut


@pytest.mark.parametrize("layout", ["cube", "hdus"])
def test_a_fits_cutout_finds_its_galaxy(engine, survey_index, tmp_path, layout):
    oid, cut = _galaxy(survey_index)
    # bands written in another order than the encoder's: the reader reorders them by name
    order = [2, 0, 3, 1]
    path = write_fits_cutout(
        tmp_path / f"query-{layout}.fits",
        cut.image[order],
        [cut.bands[i] for i in order],
        150.0,
        2.0,
        "query",
        ivar=np.ones_like(cut.image),
        layout=layout,
    )
    res = engine.search_image(path, k=3)
    assert res.frame["object_id"][0] == oid
    assert res.frame["score"][0] == pytest.approx(1.0, abs=1e-4)
    assert res.query == f"image:{path}"


def test_a_cube_without_band_names_is_taken_in_encoder_order(engine, survey_index, tmp_path):
    oid, cut = _galaxy(survey_index, 5)
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(cut.image).writeto(path)
    assert engine.search_image(path, k=1).frame["object_id"][0] == oid
    three = tmp_path / "three.fits"
    fits.PrimaryHDU(cut.image[:3]).writeto(three)
    with pytest.raises(QueryError, match="3 planes and no BANDS keyword") as info:
        engine.search_image(three, k=1)
    assert str(three) in str(info.value)


def test_object_query_on_the_survey(engine, survey_index):
    oid, _ = _galaxy(survey_index)
    res = engine.search_object(oid, k=4, include_self=True)
    assert res.frame["object_id"][0] == oid
    combined = engine.search_combined([QueryTerm.object(oid), "-spiral arms^0.2"], k=4)
    assert combined.frame.height == 4 and oid not in combined.frame["object_id"].to_list()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.fits", b"this is not a FITS file at all" * 40, "cannot be read as a FITS"),
        ("empty.fits", b"", "cannot be read as a FITS"),
        ("bad.png", b"\x89PNG\r\n\x1a\n garbage", "RGB picture without flux calibration"),
        ("notes.txt", b"hello", "unsupported file type"),
    ],
)
def test_bad_files_are_clear_errors(engine, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(QueryError, match=message) as info:
        engine.search_image(path, k=1)
    assert str(path) in str(info.value)


def test_truncated_and_blank_fits(engine, survey_index, tmp_path):
    _, cut = _galaxy(survey_index)
    good = write_fits_cutout(tmp_path / "ok.fits", cut.image, cut.bands, 1.0, 1.0, "x")
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(good.read_bytes()[: 2880 + 1000])
    with pytest.raises(QueryError, match="truncated.fits"):
        engine.search_image(truncated, k=1)
    blank = tmp_path / "blank.fits"
    fits.PrimaryHDU(np.full_like(cut.image, np.nan)).writeto(blank)
    with pytest.raises(QueryError, match="NaN"):
        engine.search_image(blank, k=1)
    zeros = tmp_path / "zeros.fits"
    fits.PrimaryHDU(np.zeros_like(cut.image)).writeto(zeros)
    with pytest.raises(QueryError, match="no usable vector"):
        engine.search_image(zeros, k=1)
    with pytest.raises(QueryError, match="no such file"):
        engine.search_image(tmp_path / "missing.fits", k=1)


def test_a_band_named_by_two_hdus_is_refused(tmp_path):
    """A mask HDU that copies the image's FILTER keyword used to replace the image plane
    silently (the query then searched with zeros)."""
    from galaxy_assets.search.query import read_fits_cutout

    hdus = [fits.PrimaryHDU()]
    for kind, value in (("IMAGE", 1.0), ("MASK", 0.0)):
        for band in "griz":
            hdu = fits.ImageHDU(np.full((8, 8), value, np.float32), name=f"{kind}_{band.upper()}")
            hdu.header["FILTER"] = band
            hdus.append(hdu)
    path = tmp_path / "masked.fits"
    fits.HDUList(hdus).writeto(path)
    with pytest.raises(QueryError, match=r"two image HDUs name band 'g' \(the second is MASK_G\)"):
        read_fits_cutout(path, list("griz"))


def test_png_queries_need_an_rgb_encoder(survey_index, text_embedder, aligner, tmp_path):
    from PIL import Image

    uri, _ = survey_index
    picture = np.zeros((24, 24, 3), np.uint8)
    picture[8:16, 8:16] = (200, 180, 120)
    path = tmp_path / "q.png"
    Image.fromarray(picture).save(path)
    survey_engine = GalaxySearch(
        uri, text_embedder=text_embedder, aligner=aligner, image_encoder=FakeImageEncoder()
    )
    with pytest.raises(QueryError, match="takes 4-band cutouts"):
        survey_engine.search_image(path, k=1)
    rgb = FakeImageEncoder(accepts_rgb=True)
    rgb._proj = np.random.default_rng(5).standard_normal((12, 16))
    rgb_engine = GalaxySearch(uri, text_embedder=text_embedder, aligner=aligner, image_encoder=rgb)
    assert rgb_engine.search_image(path, k=2).frame.height == 2
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(QueryError, match="cannot be read as a PNG") as info:
        rgb_engine.search_image(tmp_path / "broken.png", k=1)
    assert "broken.png" in str(info.value)


def test_image_queries_need_the_encoder_it_was_trained_with(survey_index, aligner, tmp_path):
    uri, _ = survey_index
    oid, cut = _galaxy(survey_index)
    path = write_fits_cutout(tmp_path / "q.fits", cut.image, cut.bands, 1.0, 1.0, "q")
    other = FakeImageEncoder()
    other.encoder_id = "fake:other@2"
    engine = GalaxySearch(uri, aligner=aligner, image_encoder=other)
    with pytest.raises(QueryError, match="not the one the aligner was trained on"):
        engine.search_image(path, k=1)
    with pytest.raises(QueryError, match="need the image encoder"):
        GalaxySearch(uri, aligner=aligner).search_image(path, k=1)


def test_pixels_of_a_changed_or_missing_shard_are_reported(survey_index):
    import polars as pl

    _, survey = survey_index
    manifest = survey.manifests[survey.shards[0]].head(3)
    swapped = manifest.with_columns(pl.Series("row", manifest["row"].reverse()))
    out = read_cutouts(swapped)
    assert isinstance(out[manifest["object_id"][1]], Cutout)  # the middle row is unchanged
    assert "changed since it was indexed" in out[manifest["object_id"][0]]
    gone = manifest.with_columns(pl.lit("/nowhere/x.hdf5").alias("shard_uri"))
    assert all("cannot open shard" in v for v in read_cutouts(gone).values())


def test_result_pixels_are_those_the_graph_read(tmp_path):
    """A re-ranker, thumbnail or contact sheet reads a galaxy with the bands and centre crop
    its manifest row records (survey.bands, survey.cutout_size), as the captioner and the
    encoder did, not every band of the shard at its native size."""
    from galaxy_assets.survey.manifest import build_manifest
    from galaxy_assets.survey.mmu import write_mmu_shard
    from galaxy_assets.survey.readers import open_shard

    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 4, 96, 96)).astype(np.float32)
    path = write_mmu_shard(tmp_path / "healpix=5" / "001-of-001.hdf5", images=images,
                           bands=["g", "r", "i", "z"], object_id=["a", "b"], ra=[10.0, 10.1],
                           dec=[0.0, 0.1])
    with open_shard(path, bands=["g", "r", "z"], size=64) as reader:
        manifest = build_manifest(reader, "healpix=5__001-of-001").frame
        seen = reader.read_rows([1]).images[0]
    cut = read_cutouts(manifest)["b"]
    assert cut.bands == ("g", "r", "z") and cut.image.shape == (3, 64, 64)
    np.testing.assert_array_equal(cut.image, seen)
    # without those columns: every band, native size
    bare = read_cutouts(manifest.select("object_id", "shard_uri", "row"))["b"]
    assert bare.bands == ("g", "r", "i", "z") and bare.image.shape == (4, 96, 96)
