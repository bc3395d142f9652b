"""Lupton RGB pictures, PNG encoding and contact sheets."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from galaxy_assets.survey.rgb import (
    choose_rgb_bands,
    contact_sheet,
    lupton_rgb,
    lupton_rgb_batch,
    to_png,
)


def _galaxy(colour=(0.5, 1.0, 1.4, 1.8), size=24, peak=3.0):
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    blob = peak * np.exp(-(xx**2 + yy**2) / 18.0)
    return np.stack([c * blob for c in colour]).astype(np.float32)


def test_shape_dtype_and_colour():
    rgb = lupton_rgb(_galaxy(), "griz")
    assert rgb.shape == (24, 24, 3) and rgb.dtype == np.uint8
    centre = rgb[12, 12].astype(int)
    assert centre.max() > 150  # bright core
    assert rgb[0, 0].max() < 10  # empty sky stays dark
    # A red galaxy (rising towards z) is redder than a blue one.
    blue = lupton_rgb(_galaxy((1.0, 1.0, 1.0, 1.0)), "griz")[12, 12].astype(int)
    assert centre[0] - centre[2] > blue[0] - blue[2]


def test_nan_and_inf_are_safe():
    img = _galaxy()
    img[:, :5] = np.nan
    img[0, 10, 10] = np.inf
    rgb = lupton_rgb(img, "griz")
    assert (rgb[:5] == 0).all()
    assert rgb.dtype == np.uint8


@pytest.mark.parametrize(
    ("bands", "want"),
    [
        ("griz", ("z", "r", "g")),
        ("gri", ("i", "r", "g")),
        (["DES-G", "DES-R", "DES-Z"], ("z", "r", "g")),
        ("rizy", ("y", "z", "r")),
        ("gz", ("z", "", "g")),
        ("r", ("r", "r", "r")),
    ],
)
def test_band_choice(bands, want):
    assert choose_rgb_bands(list(bands)) == want


def test_one_band_is_grey_and_two_bands_work():
    grey = lupton_rgb(_galaxy()[1:2], ["r"])
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    two = lupton_rgb(_galaxy()[[0, 3]], ["g", "z"])
    assert two.shape == (24, 24, 3) and two.max() > 100


def test_stretch_and_scales_change_the_picture():
    base = lupton_rgb(_galaxy(), "griz")
    assert lupton_rgb(_galaxy(), "griz", stretch=5.0).mean() < base.mean()
    assert lupton_rgb(_galaxy(), "griz", scales={"z": 20.0})[..., 0].mean() > base[..., 0].mean()
    with pytest.raises(ValueError, match="expected"):
        lupton_rgb(_galaxy(), "gr")


def test_batch():
    batch = np.stack([_galaxy(), _galaxy(peak=1.0)])
    out = lupton_rgb_batch(batch, "griz")
    assert out.shape == (2, 24, 24, 3)
    assert np.array_equal(out[0], lupton_rgb(batch[0], "griz"))


def test_to_png(tmp_path):
    rgb = lupton_rgb(_galaxy(), "griz")
    data = to_png(rgb)
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.size == (24, 24)
    np.testing.assert_array_equal(np.asarray(im), rgb)
    path = tmp_path / "deep" / "x.png"
    data2 = to_png(rgb, path, size=96)
    assert path.read_bytes() == data2
    assert Image.open(path).size == (96, 96)


def test_contact_sheet(tmp_path):
    pics = [lupton_rgb(_galaxy(peak=p), "griz") for p in (0.3, 1, 3, 10, 30)]
    path = tmp_path / "sheet.png"
    data = contact_sheet(
        pics,
        ["faint", "", "a rather long label that has to wrap over lines", "x", "y"],
        ncols=3,
        path=path,
        tile_size=64,
        title="test sheet",
        row_labels=["row one", "row two"],
    )
    im = Image.open(io.BytesIO(data))
    assert path.read_bytes() == data
    arr = np.asarray(im.convert("RGB"))
    assert im.width > 3 * 64 and im.height > 2 * 64
    # Dark background: the corner and most of the sheet are near-black.
    assert arr[-1, -1].max() < 40 and np.median(arr) < 60
    # Light text exists (labels, title).
    assert (arr.min(axis=2) > 180).sum() > 50
    # Grey (H, W) and float pictures are accepted; bad arguments are refused.
    contact_sheet([np.zeros((8, 8)), np.ones((8, 8, 3))], None, 2, tile_size=16)
    with pytest.raises(ValueError, match="labels"):
        contact_sheet(pics, ["a"], 2)
    with pytest.raises(ValueError, match="row labels"):
        contact_sheet(pics, None, 2, row_labels=["a"])
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([], None, 2)
