"""HTML contact sheets: self-contained thumbnails, escaped text, missing pixels."""

from __future__ import annotations

import base64
import io
import re

import polars as pl
import pytest
from PIL import Image

from galaxy_assets.search.contact import render_contact_sheet, write_contact_sheet
from galaxy_assets.search.errors import SearchError
from galaxy_assets.search.query import GalaxySearch

EVIL = '<script>alert("x")</script> & "quotes" \'single\''


@pytest.fixture
def results(survey_index, text_embedder, aligner):
    uri, survey = survey_index
    engine = GalaxySearch(uri, text_embedder=text_embedder, aligner=aligner)
    oid = survey.manifests[survey.shards[0]]["object_id"][0]
    return engine.search_object(oid, k=6, include_self=True)


def test_contact_sheet_is_self_contained_and_escaped(results, tmp_path):
    frame = results.frame.with_columns(
        pl.when(pl.col("rank") == 2)
        .then(pl.lit(EVIL))
        .otherwise(pl.col("caption"))
        .alias("caption")
    )
    results.frame = frame
    path = write_contact_sheet(results, tmp_path / "out" / "sheet.html", thumb_px=64)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<script>" not in text and "&lt;script&gt;" in text and "&amp;" in text
    assert "&quot;quotes&quot;" in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 6
    thumb = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert thumb.size == (64, 64) and thumb.mode == "RGB"
    for oid in frame["object_id"]:
        assert oid in text
    assert "https://www.legacysurvey.org/viewer?ra=" in text
    assert f"galaxy_index v{results.table_version}" in text
    assert "http" not in text.replace("https://www.legacysurvey.org/viewer", "")  # nothing fetched
    assert not list(path.parent.glob(".tmp-*"))


def test_missing_pixels_get_a_card_not_a_crash(results):
    frame = results.frame.with_columns(
        pl.when(pl.col("rank") == 1)
        .then(pl.lit("/gone/shard.hdf5"))
        .otherwise(pl.col("shard_uri"))
        .alias("shard_uri"),
        pl.lit(None, dtype=pl.Float64).alias("rating"),
    )
    text = render_contact_sheet(frame, title="Lenses <b>?</b>")
    assert "<title>Lenses &lt;b&gt;?&lt;/b&gt;</title>" in text
    assert "no image: cannot open shard /gone/shard.hdf5" in text
    assert text.count("data:image/png;base64,") == frame.height - 1
    assert "rating –" in text


def test_bad_input(tmp_path):
    with pytest.raises(SearchError, match="object_id"):
        render_contact_sheet(pl.DataFrame({"x": [1]}))
    with pytest.raises(SearchError, match="thumb_px"):
        render_contact_sheet(pl.DataFrame({"object_id": ["a"]}), thumb_px=4)
    text = render_contact_sheet(pl.DataFrame({"object_id": ["a"], "score": [0.5]}))
    assert "no image: no shard_uri/row" in text
