"""The HTTP API on tiny indexes: text, object, combined, filters, paging, uploads,
thumbnails, detail, re-ranking and the JSON errors."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from astropy.io import fits
from fastapi.testclient import TestClient
from PIL import Image

from galaxy_assets.search.pixels import Cutout, read_cutouts
from galaxy_assets.web.app import MAX_K, create_app, is_loopback
from galaxy_assets.web.server import check_bind_host
from galaxy_assets_tests.search.conftest import CAPTIONS


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in response.text
    return body


# ---------------------------------------------------------------------------- search
def test_text_search_returns_the_captions_galaxies(text_app, text_index):
    r = text_app.get("/api/search", params={"q": "merging pair with long tidal tails", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n"] == 5 and len(body["results"]) == 5
    assert body["table_version"] == text_index.table().version
    assert body["n_indexed"] == 60
    assert body["terms"] == [
        {"kind": "text", "value": "merging pair with long tidal tails", "weight": 1.0,
         "negative": False}
    ]
    first = body["results"][0]
    assert first["caption"] == CAPTIONS[2]
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    # the table version in the URL: a browser caches a thumbnail for a day, and another
    # version's row may point at other pixels
    assert first["thumbnail_url"] == (f"/api/galaxy/{first['object_id']}/thumbnail"
                                      f"?v={body['table_version']}")
    assert first["viewer_url"].startswith("https://www.legacysurvey.org/viewer?ra=")
    assert "vector" not in first
    assert body["has_more"] is True


def test_the_api_agrees_with_the_query_api(text_app, text_engine):
    body = text_app.get("/api/search", params={"q": "edge-on disc dust lane", "k": 12}).json()
    direct = text_engine.search_text("edge-on disc dust lane", 12).frame
    assert [r["object_id"] for r in body["results"]] == direct["object_id"].to_list()
    assert [r["score"] for r in body["results"]] == pytest.approx(direct["score"].to_list())


def test_paging_gives_the_next_results_without_overlap(text_app, text_engine):
    direct = text_engine.search_text("spiral arms", 60).frame["object_id"].to_list()
    pages, offset = [], 0
    while True:
        body = text_app.get(
            "/api/search", params={"q": "spiral arms", "k": 25, "offset": offset}
        ).json()
        pages.append([r["object_id"] for r in body["results"]])
        assert [r["rank"] for r in body["results"]] == list(
            range(offset + 1, offset + 1 + body["n"])
        )
        if not body["has_more"]:
            break
        offset += 25
    assert [len(p) for p in pages] == [25, 25, 10]
    assert sum(pages, []) == direct
    past = text_app.get("/api/search", params={"q": "spiral arms", "offset": 200}).json()
    assert past["results"] == [] and past["has_more"] is False


def test_object_search_is_more_like_this(text_app, text_engine):
    oid = "gal0003"
    body = text_app.get("/api/search", params={"object": oid, "k": 5}).json()
    ids = [r["object_id"] for r in body["results"]]
    assert oid not in ids
    assert ids == text_engine.search_object(oid, 5).frame["object_id"].to_list()
    assert body["query"] == f"object:{oid}"


def test_combined_query_get_and_post_agree(text_app, text_engine):
    params = {"q": "spiral arms", "term": ["-text:bar^0.5", "object:gal0000^0.3"], "k": 8}
    got = text_app.get("/api/search", params=params).json()
    posted = text_app.post(
        "/api/search",
        json={
            "q": "spiral arms",
            "terms": [
                {"kind": "text", "value": "bar", "weight": 0.5, "negative": True},
                {"kind": "object", "value": "gal0000", "weight": 0.3},
            ],
            "k": 8,
        },
    ).json()
    direct = text_engine.search_combined(
        ["spiral arms", "-text:bar^0.5", "object:gal0000^0.3"], 8
    )
    expected = direct.frame["object_id"].to_list()
    assert [r["object_id"] for r in got["results"]] == expected
    assert [r["object_id"] for r in posted["results"]] == expected
    assert [e["term"] for e in got["explanation"]] == [e["term"] for e in direct.explanation]
    assert got["explanation"][1]["sign"] == "-"
    assert "term_1_cosine" in got["results"][0]


def test_filters_are_applied_and_reported(text_app):
    body = text_app.get(
        "/api/search",
        params={"q": "spiral arms", "k": 50, "filter": ["p_spiral>=0.5", "healpix=1701"]},
    ).json()
    assert body["n"] > 0
    assert all(r["p_spiral"] >= 0.5 and r["healpix"] == 1701 for r in body["results"])
    assert body["filter_exprs"] == ["p_spiral>=0.5", "healpix=1701"]
    assert body["has_more"] is False  # fewer matches than asked for
    cone = text_app.get(
        "/api/search", params={"q": "galaxy", "k": 20, "filter": "cone=0,0,400"}
    ).json()
    assert cone["n"] == 10
    assert all(r["distance_arcsec"] <= 400 for r in cone["results"])


@pytest.mark.parametrize(
    "expr", ["nope<3", "mag_r<'1' OR 1=1", "p_spiral>=abc", "cone=1,2", "mag_r<1; drop table"]
)
def test_bad_filters_are_400_with_the_reason(text_app, expr):
    body = _error(text_app.get("/api/search", params={"q": "spiral", "filter": expr}), 400)
    assert body["detail"] == {"kind": "filter"}


def test_query_errors_are_400(text_app):
    assert "empty" in _error(text_app.get("/api/search"), 400)["error"]
    assert "empty" in _error(text_app.get("/api/search", params={"q": "   "}), 400)["error"]
    missing = _error(text_app.get("/api/search", params={"object": "no-such-galaxy"}), 400)
    assert "no-such-galaxy" in missing["error"]
    image = _error(text_app.get("/api/search", params={"term": "image:/etc/passwd"}), 400)
    assert "upload" in image["error"]
    bad_term = _error(text_app.get("/api/search", params={"term": "text:x^0"}), 400)
    assert "weight" in bad_term["error"]
    cancel = text_app.get("/api/search", params={"term": ["-text:bar"]})
    assert "negative" in _error(cancel, 400)["error"]


def test_request_limits(text_app):
    long = "spiral " * 400
    assert _error(text_app.get("/api/search", params={"q": long}), 422)["detail"][0]["loc"] == [
        "query",
        "q",
    ]
    _error(text_app.get("/api/search", params={"q": "spiral", "k": MAX_K + 1}), 422)
    _error(text_app.get("/api/search", params={"q": "spiral", "k": 0}), 422)
    _error(text_app.get("/api/search", params={"q": "spiral", "offset": MAX_K}), 422)
    # a last page that would cross rank MAX_K stops at it
    last = text_app.get("/api/search", params={"q": "spiral", "k": 600, "offset": 500})
    assert last.status_code == 200 and last.json()["k"] == MAX_K - 500
    many = text_app.get("/api/search", params={"q": "a", "filter": ["mag_r<20"] * 40})
    _error(many, 422)
    # k above the table size is clamped to it (paging past the end is not an error)
    body = text_app.get("/api/search", params={"q": "spiral", "k": 1000}).json()
    assert body["n"] == 60 and body["has_more"] is False
    big = text_app.post("/api/search", content=b"{" + b" " * 300_000 + b"}",
                        headers={"content-type": "application/json"})
    body = _error(big, 413)
    assert "262144 bytes" in body["error"] and body["detail"] == {"max_body_bytes": 262144}
    extra = text_app.post("/api/search", json={"q": "spiral", "sql": "drop"})
    _error(extra, 422)


def test_chunked_bodies_over_the_limit_are_refused(text_app):
    def chunks():
        for _ in range(40):
            yield b" " * 10_000

    r = text_app.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    _error(r, 413)

    def small():
        yield b'{"q": "spiral arms",'
        yield b' "k": 3}'

    ok = text_app.post("/api/search", content=small(), headers={"content-type": "application/json"})
    assert ok.status_code == 200 and ok.json()["n"] == 3


def test_unknown_routes_and_methods_are_json(text_app):
    assert "no such page" in _error(text_app.get("/api/nothing"), 404)["error"]
    _error(text_app.delete("/api/search"), 405)


# ---------------------------------------------------------------------------- detail
def test_detail_has_every_column_caption_lineage_and_viewer(text_app, text_index):
    body = text_app.get("/api/galaxy/gal0002").json()
    assert body["object_id"] == "gal0002"
    cols = set(text_index.table().schema.names) - {"vector"}
    assert set(body["columns"]) == cols
    assert body["caption"]["text"] == CAPTIONS[2]
    assert body["caption"]["backend"] == "morphology"
    assert body["caption"]["model"] == "morphology-describer-v1"
    assert body["caption"]["prompt"]["name"] == "describe_v1"
    assert "astronomer" in body["caption"]["prompt"]["text"]
    assert body["morphology"]["p_merger"] == pytest.approx(0.7)
    lineage = body["lineage"]
    assert lineage["shard"] == "s-a" and lineage["row"] == 2
    assert lineage["aligner_version"] == "search-aligner/v1"
    # the models behind the vote fractions and posteriors (none made these synthetic rows)
    assert {"morphology_version", "emulator_version"} <= set(lineage)
    assert body["caption"]["prompt_sha"]
    assert lineage["image_encoder"] == "fake:pixel-stats@1"
    assert lineage["text_embedder"] == "fake:bag-of-words@1"
    assert lineage["table_version"] == text_index.table().version
    assert body["viewer_url"].startswith("https://www.legacysurvey.org/viewer?ra=")
    assert body["posteriors"] == {}


def test_detail_names_the_prompt_of_the_indexed_caption(text_app, caption_store):
    """A galaxy captioned again after indexing has a newer store row: the detail view shows
    the indexed caption, so it must not borrow that row's prompt and date."""
    from datetime import UTC, datetime

    path = caption_store / "captions.parquet"
    store = pl.read_parquet(path)
    newer = store.filter(pl.col("object_id") == "gal0002").with_columns(
        pl.lit("a smooth red elliptical").alias("caption"), pl.lit("f00dfeed").alias("prompt_sha"),
        pl.lit(datetime(2099, 1, 1, tzinfo=UTC)).alias("created_at"))
    pl.concat([store, newer], how="vertical_relaxed").write_parquet(path)
    caption = text_app.get("/api/galaxy/gal0002").json()["caption"]
    assert caption["text"] == CAPTIONS[2] and caption["prompt"]["name"] == "describe_v1"
    assert caption["prompt_sha"] != "f00dfeed" and not caption["created_at"].startswith("2099")
    # only the newer caption left in the store: the view says it cannot tell the prompt
    newer.write_parquet(path)
    caption = text_app.get("/api/galaxy/gal0002").json()["caption"]
    assert "captioned again" in caption["note"] and "prompt" not in caption


def test_detail_keeps_the_indexed_prompt_sha_and_its_prompt(text_app, caption_store):
    """The same text captioned again later with another prompt: the store's newest row for
    that backend, model and text came from the other prompt, and its sha replaced the
    indexed one (and named the wrong prompt)."""
    from datetime import UTC, datetime

    path = caption_store / "captions.parquet"
    store = pl.read_parquet(path)
    indexed = text_app.get("/api/galaxy/gal0002").json()["caption"]
    assert indexed["prompt_sha"] == store["prompt_sha"][0]
    again = store.filter(pl.col("object_id") == "gal0002").with_columns(
        pl.lit("f00dfeed").alias("prompt_sha"), pl.lit("rerun").alias("source"),
        pl.lit(datetime(2099, 1, 1, tzinfo=UTC)).alias("created_at"))
    pl.concat([store, again], how="vertical_relaxed").write_parquet(path)
    caption = text_app.get("/api/galaxy/gal0002").json()["caption"]
    assert caption["prompt_sha"] == indexed["prompt_sha"]
    assert caption["prompt"]["name"] == "describe_v1"
    assert caption["origin"] == "generated" and not caption["created_at"].startswith("2099")
    assert text_app.get("/api/galaxy/gal0002").json()["columns"]["caption_prompt_sha"] == (
        indexed["prompt_sha"])
    # only the other prompt's row left: the view says it cannot tell, keeping the indexed sha
    again.write_parquet(path)
    caption = text_app.get("/api/galaxy/gal0002").json()["caption"]
    assert "captioned again" in caption["note"] and "prompt" not in caption
    assert caption["prompt_sha"] == indexed["prompt_sha"]


def test_detail_and_thumbnail_of_unknown_ids_are_404(text_app):
    for oid in ("gal9999", "x' OR '1'='1", "..%2F..%2Fetc%2Fpasswd"):
        _error(text_app.get(f"/api/galaxy/{oid}"), 404)
        _error(text_app.get(f"/api/galaxy/{oid}/thumbnail"), 404)


def test_ids_with_url_characters_reach_their_galaxy(tmp_path, aligner, text_embedder):
    """Ids from FITS OBJID headers may hold '?', '#', '/' or spaces: the API's URLs encode
    them and its routes take them back (a '?' used to cut the id, a '/' was unreachable)."""
    from urllib.parse import quote

    from galaxy_assets.search.query import GalaxySearch
    from galaxy_assets.search.table import build_shard_rows, upsert_shard
    from galaxy_assets_tests.search.conftest import synthetic_shard_frames

    odd = ["x?y", "a#b", "J1234+56/7", "NGC 1300", "plain"]
    frames = synthetic_shard_frames(len(odd), "s-odd", seed=5, aligner=aligner)
    rename = dict(zip(frames["manifest"]["object_id"], odd, strict=True))
    frames = {k: f.with_columns(pl.col("object_id").replace(rename)) for k, f in frames.items()}
    uri = tmp_path / "lancedb"
    upsert_shard(uri, "s-odd", build_shard_rows("s-odd", frames["manifest"], frames["vectors"],
                                                frames["predictions"], frames["captions"]))
    engine = GalaxySearch(uri, text_embedder=text_embedder, aligner=aligner,
                          serving_index=False)
    app = create_app(engine, refresh_seconds=None, thumbnail_dir=tmp_path / "thumbs")
    with TestClient(app, raise_server_exceptions=False) as client:
        body = client.get("/api/search", params={"q": "spiral", "k": 5}).json()
        assert sorted(r["object_id"] for r in body["results"]) == sorted(odd)
        for record in body["results"]:
            oid = record["object_id"]
            assert record["thumbnail_url"] == (f"/api/galaxy/{quote(oid, safe='')}/thumbnail"
                                               f"?v={body['table_version']}")
            detail = client.get(f"/api/galaxy/{quote(oid, safe='')}")
            assert detail.status_code == 200 and detail.json()["object_id"] == oid
            # no pixels behind these synthetic rows: the 404 names the galaxy, not a route
            thumb = client.get(record["thumbnail_url"])
            assert thumb.status_code == 404 and "no pixels" in thumb.json()["error"]


def test_thumbnail_without_pixels_is_404_with_the_reason(text_app):
    body = _error(text_app.get("/api/galaxy/gal0001/thumbnail"), 404)
    assert "no pixels" in body["error"] and "nonexistent" in body["error"]


# ---------------------------------------------------------------------------- survey
def _one_cutout(survey_index, k: int = 4) -> tuple[str, Cutout]:
    _, survey = survey_index
    manifest = survey.manifests[survey.shards[0]]
    oid = manifest["object_id"][k]
    cut = read_cutouts(manifest.filter(manifest["object_id"] == oid))[oid]
    assert isinstance(cut, Cutout)
    return oid, cut


def test_thumbnails_are_rendered_from_pixels_and_cached(survey_app, survey_index, tmp_path):
    oid, _ = _one_cutout(survey_index)
    r = survey_app.get(f"/api/galaxy/{oid}/thumbnail", params={"size": 96})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == (96, 96)
        assert np.asarray(im).std() > 0  # a picture, not a blank square
    files = list((tmp_path / "thumbs").rglob("*.png"))
    assert len(files) == 1
    cache = survey_app.app.state.thumbnails
    assert (cache.hits, cache.misses) == (0, 1)
    again = survey_app.get(f"/api/galaxy/{oid}/thumbnail", params={"size": 96})
    assert again.content == r.content and (cache.hits, cache.misses) == (1, 1)
    # a fresh app (empty memory) reads the file instead of rendering
    fresh = create_app(survey_app.app.state.engine.get(), thumbnail_dir=tmp_path / "thumbs")
    with TestClient(fresh) as client:
        assert client.get(f"/api/galaxy/{oid}/thumbnail", params={"size": 96}).content == r.content
        assert fresh.state.thumbnails.misses == 0
    other = survey_app.get(f"/api/galaxy/{oid}/thumbnail", params={"size": 128})
    with Image.open(io.BytesIO(other.content)) as im:
        assert im.size == (128, 128)
    _error(survey_app.get(f"/api/galaxy/{oid}/thumbnail", params={"size": 5000}), 422)


def test_a_thumbnail_is_drawn_from_the_bands_and_crop_the_graph_read(survey_app, survey_index,
                                                                      monkeypatch):
    from galaxy_assets.web import app as app_module

    seen = []
    real = app_module.render_thumbnail
    monkeypatch.setattr(app_module, "render_thumbnail",
                        lambda row, size: seen.append(row) or real(row, size))
    oid, _ = _one_cutout(survey_index)
    assert survey_app.get(f"/api/galaxy/{oid}/thumbnail", params={"size": 64}).status_code == 200
    (row,) = seen
    assert {"bands", "height", "width"} <= set(row.columns)


def _fits_bytes(cut: Cutout) -> bytes:
    hdu = fits.PrimaryHDU(cut.image)
    hdu.header["BANDS"] = ",".join(cut.bands)
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


def test_fits_upload_finds_its_galaxy_and_leaves_no_file(survey_app, survey_index, tmp_path):
    oid, cut = _one_cutout(survey_index)
    data = _fits_bytes(cut)
    r = survey_app.post(
        "/api/search/image",
        files={"file": ("my cutout.fits", data, "application/fits")},
        data={"k": "3"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["object_id"] == oid
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert body["query"] == "image:upload:my_cutout.fits"
    assert str(tmp_path) not in r.text  # no server path leaks
    assert list((tmp_path / "uploads").iterdir()) == []  # the temporary folder is gone
    combined = survey_app.post(
        "/api/search/image",
        files={"file": ("q.fits", data, "application/fits")},
        data={"k": "4", "term": ["-text:spiral arms^0.2"], "weight": "2"},
    ).json()
    assert combined["n"] == 4 and len(combined["explanation"]) == 2
    assert combined["explanation"][0]["term"].startswith("+image:upload:q.fits^2")
    filtered = survey_app.post(
        "/api/search/image",
        files={"file": ("q.fits", data, "application/fits")},
        data={"k": "5", "filter": ["mag_r<0"]},
    ).json()
    assert filtered["n"] == 0


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"hello world, not a cutout" * 10, 415, "neither a FITS"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 100, 415, "gzip"),
        (b"SIMPLE  =                    T" + b" " * 50 + b"garbage", 400, "FITS"),
        (b"", 415, "neither a FITS"),
    ],
)
def test_bad_uploads_are_refused_clearly(survey_app, tmp_path, payload, status, message):
    r = survey_app.post("/api/search/image", files={"file": ("x.fits", payload)})
    body = _error(r, status)
    assert message in body["error"]
    assert str(tmp_path) not in r.text
    assert list((tmp_path / "uploads").iterdir()) == []


def test_png_upload_is_refused_for_a_flux_encoder_and_huge_png_header(survey_app):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="PNG")
    body = _error(
        survey_app.post("/api/search/image", files={"file": ("a.png", buf.getvalue())}), 400
    )
    assert "RGB picture without flux calibration" in body["error"]
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (100_000).to_bytes(4, "big") * 2
    _error(survey_app.post("/api/search/image", files={"file": ("b.png", header)}), 413)


def test_tile_compressed_fits_is_refused(survey_app, survey_index, tmp_path):
    _, cut = _one_cutout(survey_index)
    path = tmp_path / "c.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(cut.image)]).writeto(path)
    r = survey_app.post("/api/search/image", files={"file": ("c.fits", path.read_bytes())})
    assert "tile-compressed" in _error(r, 415)["error"]


def test_oversized_upload_is_413(survey_app, tmp_path):
    """Refused by the body limit (before parsing) or while copying the file, an upload over
    the limit gets one answer: the configured limit (it was "request too large" quoting
    265536 bytes, the limit plus the multipart slack, from the middleware)."""
    big = b"SIMPLE  =                    T" + b" " * 400_000
    r = survey_app.post("/api/search/image", files={"file": ("big.fits", big)})
    early = _error(r, 413)
    assert "limit of 200000 bytes" in early["error"] and "265536" not in r.text
    assert "--max-upload-mb" in early["error"]
    # just under the body limit but over the file limit: refused while copying
    medium = b"SIMPLE  =                    T" + b" " * 230_000
    r = survey_app.post("/api/search/image", files={"file": ("m.fits", medium)})
    late = _error(r, 413)
    assert "over 200000 bytes" in late["error"]
    assert early["detail"] == late["detail"] == {"max_upload_bytes": 200_000}
    assert list((tmp_path / "uploads").iterdir()) == []


def test_uploads_need_an_image_encoder(text_app):
    r = text_app.post("/api/search/image", files={"file": ("a.fits", _fits_bytes(
        Cutout("x", np.ones((4, 8, 8), np.float32), ("g", "r", "i", "z"))))})
    assert "image encoder" in _error(r, 400)["error"]


# ---------------------------------------------------------------------------- rerank
def test_rerank_reorders_by_rating_and_pages_consistently(survey_app, rater):
    params = {"q": "spiral arms", "k": 6, "rerank": "true", "k_rerank": 12}
    body = survey_app.get("/api/search", params=params).json()
    assert body["rerank"]["k_rerank"] == 12 and body["rerank"]["n_rated"] == 12
    ratings = [r["rating"] for r in body["results"]]
    assert ratings == sorted(ratings, reverse=True) and ratings[0] == 10.0
    assert rater.asked == [(12, "spiral arms")]
    second = survey_app.get("/api/search", params={**params, "offset": 6}).json()
    assert rater.asked == [(12, "spiral arms")]  # the page came from the cached re-ranking
    ids = [r["object_id"] for r in body["results"] + second["results"]]
    assert len(set(ids)) == 12
    assert [r["rank"] for r in second["results"]] == list(range(7, 13))
    # a page below the re-ranked head extends the cached pages: nothing is rated again
    third = survey_app.get("/api/search", params={**params, "offset": 12}).json()
    assert rater.asked == [(12, "spiral arms")]
    assert [r["rank"] for r in third["results"]] == list(range(13, 19))
    assert not {r["object_id"] for r in third["results"]} & set(ids)
    assert [r["similarity_rank"] for r in third["results"]] == list(range(13, 19))
    assert all(r["rating"] is None for r in third["results"])
    first_again = survey_app.get("/api/search", params=params).json()
    assert first_again["results"] == body["results"] and len(rater.asked) == 1
    objects = survey_app.get(
        "/api/search", params={"object": body["results"][0]["object_id"], "rerank": "true"}
    )
    assert "query text" in _error(objects, 400)["error"]


def test_rating_holds_no_lock_on_the_engine(survey_engine, tmp_path):
    """A re-ranking asks a VLM up to k_rerank times: holding the engine's read lock meanwhile
    made the next refresh, and every request behind it, wait for the whole rating."""
    from galaxy_assets_tests.web.conftest import WordRater

    class LockWatchingRater(WordRater):
        readers: list[int] = []

        def rate(self, requests, text, n_samples=1):
            self.readers.append(app.state.engine.lock._readers)
            return super().rate(requests, text, n_samples)

    rater = LockWatchingRater()
    app = create_app(survey_engine, rater=rater, refresh_seconds=None,
                     thumbnail_dir=tmp_path / "thumbs")
    with TestClient(app) as client:
        body = client.get("/api/search", params={"q": "spiral arms", "k": 6, "rerank": "true",
                                                 "k_rerank": 12}).json()
    assert body["rerank"]["n_rated"] == 12 and rater.readers == [0]


def test_a_request_uses_the_engine_of_its_lock_not_one_a_refresh_replaced(text_engine):
    """A request took the engine, then a refresh replaced it (a re-index with a new aligner)
    before the request held the lock: it searched the new vectors with the old aligner."""
    app = create_app(text_engine, refresh_seconds=None)
    replaced = object()  # the engine the request took before the swap: unusable now
    app.state.engine.get = lambda: replaced
    with TestClient(app) as client:
        assert client.get("/api/search", params={"q": "spiral", "k": 3}).status_code == 200
        assert client.get("/api/info").status_code == 200


def test_rerank_without_a_rater_is_refused(text_app):
    r = text_app.get("/api/search", params={"q": "spiral", "rerank": "true"})
    assert "not configured" in _error(r, 400)["error"]


# ---------------------------------------------------------------------------- the rest
def test_info_page_and_openapi(text_app):
    info = text_app.get("/api/info").json()
    assert info["n_indexed"] == 60 and info["aligner_version"] == "search-aligner/v1"
    assert info["capabilities"] == {
        "text": True, "object": True, "image_upload": False, "rerank": False
    }
    assert "p_spiral" in info["filterable_columns"] and "cone" in info["filterable_columns"]
    assert info["limits"]["max_k"] == MAX_K and info["examples"]
    page = text_app.get("/")
    assert page.status_code == 200 and "<title>" in page.text
    for asset in ("app.js", "style.css"):
        assert text_app.get(f"/static/{asset}").status_code == 200
    _error(text_app.get("/static/../app.py"), 404)
    schema = text_app.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/galaxy/{object_id}",
            "/api/galaxy/{object_id}/thumbnail", "/api/info"} <= set(schema["paths"])


def _raw_get(app, path: str) -> tuple[int, bytes]:
    """GET ``path`` through the ASGI app exactly as written (an HTTP client would normalise
    '/static/../app.py' to '/app.py' before sending it)."""
    import asyncio

    sent: list[dict] = []
    asked: list[int] = []

    async def receive():
        if asked:  # a response may listen for the client going away: it never does
            await asyncio.sleep(3600)
        asked.append(1)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": [(b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def test_static_files_never_leave_their_folder(text_engine):
    app = create_app(text_engine, refresh_seconds=None)
    for path in ("/static/../app.py", "/static/..%2fapp.py", "/static/%2e%2e/app.py",
                 "/static/../../web/app.py", "/static//etc/passwd"):
        status, body = _raw_get(app, path)
        assert status == 404 and b"create_app" not in body and b"root:" not in body, path
    assert _raw_get(app, "/static/app.js")[0] == 200


def test_other_sites_cannot_use_the_api(text_engine):
    """Host names other than the server's are refused (DNS rebinding), and API requests from
    another origin get 403 (a page elsewhere could spend re-ranking requests)."""
    app = create_app(text_engine, refresh_seconds=None,
                     allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/api/info").status_code == 200
        same = client.get("/api/info", headers={"Origin": "http://127.0.0.1:8000"})
        assert same.status_code == 200
        other = client.get("/api/search", params={"q": "spiral"},
                           headers={"Origin": "http://evil.example"})
        assert "cross-origin" in _error(other, 403)["detail"]
        rebound = client.get("/api/info", headers={"Host": "evil.example:8000"})
        assert "not served here" in _error(rebound, 400)["detail"]
        # another local port is another site (a notebook rendering untrusted pages)
        for other_port in ("http://localhost:3000", "http://127.0.0.1:9999"):
            assert client.get("/api/info", headers={"Origin": other_port}).status_code == 403
    # behind a reverse proxy (bound for remote use): the proxy forwards to 127.0.0.1:8000 and
    # names the public host in X-Forwarded-Host, or keeps the Host with a port
    remote = create_app(text_engine, refresh_seconds=None)
    with TestClient(remote, base_url="http://127.0.0.1:8000") as client:
        page = {"Origin": "https://galaxies.example.org"}
        assert client.get("/api/info", headers={
            **page, "X-Forwarded-Host": "galaxies.example.org"}).status_code == 200
        assert client.get("/api/info", headers={
            **page, "Host": "galaxies.example.org:443"}).status_code == 200
        assert client.get("/api/info", headers=page).status_code == 403


def test_a_malformed_origin_is_403_not_500(text_app):
    """urlsplit raises ValueError on "http://[::1": that was an unexpected 500."""
    for origin in ("http://[::1", "https://[nope"):
        body = _error(text_app.get("/api/info", headers={"Origin": origin}), 403)
        assert "malformed" in body["detail"]


def test_cross_site_requests_without_an_origin_are_refused(survey_app, rater):
    """Another site's <img src="…/api/search?rerank=true"> sends no Origin but its browser
    sends Sec-Fetch-Site: the server refused nothing and ran the re-ranking rater."""
    params = {"q": "spiral arms", "rerank": "true", "k_rerank": 5}
    for site in ("cross-site", "same-site"):  # another local port is same-site
        r = survey_app.get("/api/search", params=params, headers={
            "Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"})
        assert "another site" in _error(r, 403)["detail"]
        thumb = survey_app.get("/api/galaxy/x/thumbnail", headers={"Sec-Fetch-Site": site})
        assert thumb.status_code == 403
    assert rater.asked == []
    # the page's own fetches, a URL typed into the address bar, and clients that are not
    # browsers (no Sec-Fetch-Site) are served
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}):
        assert survey_app.get("/api/info", headers=headers).status_code == 200
    # the page itself may be linked from anywhere
    assert survey_app.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_a_missing_index_is_503_then_served_once_built(tmp_path, text_embedder, aligner):
    from galaxy_assets.search.query import GalaxySearch

    uri = tmp_path / "later"
    calls = []

    def factory():
        calls.append(1)
        return GalaxySearch(uri, text_embedder=text_embedder, aligner=aligner)

    app = create_app(factory, refresh_seconds=None)
    with TestClient(app) as client:
        body = _error(client.get("/api/search", params={"q": "spiral"}), 503)
        assert "galaxy_index" in body["error"]
        assert client.get("/api/health").json() == {"status": "ok"}
        assert len(calls) == 1
        # the graph builds the index: the next request is served, no restart needed
        from galaxy_assets.search.table import build_shard_rows, upsert_shard
        from galaxy_assets_tests.search.conftest import synthetic_shard_frames

        f = synthetic_shard_frames(10, "s-a", seed=3, aligner=aligner)
        upsert_shard(uri, "s-a", build_shard_rows(
            "s-a", f["manifest"], f["vectors"], f["predictions"], f["captions"]))
        served = client.get("/api/search", params={"q": "spiral"})
        assert served.status_code == 200 and served.json()["n_indexed"] == 10
    assert len(calls) == 2


def test_the_server_sees_new_table_versions(text_index, text_embedder, aligner):
    from galaxy_assets.search.query import GalaxySearch
    from galaxy_assets.search.table import build_shard_rows, upsert_shard
    from galaxy_assets_tests.search.conftest import synthetic_shard_frames

    engine = GalaxySearch(text_index.uri, text_embedder=text_embedder, aligner=aligner)
    app = create_app(engine, refresh_seconds=0)
    with TestClient(app) as client:
        before = client.get("/api/info").json()
        f = synthetic_shard_frames(5, "s-c", seed=7, start=100, aligner=aligner)
        rows = build_shard_rows("s-c", f["manifest"], f["vectors"], f["predictions"],
                                f["captions"])
        upsert_shard(text_index.uri, "s-c", rows)
        after = client.get("/api/info").json()
    assert after["n_indexed"] == before["n_indexed"] + 5
    assert after["table_version"] > before["table_version"]


def test_later_pages_continue_the_first_pages_ranking_after_the_index_moved(
    text_index, text_embedder, aligner
):
    """"More" names the table version of its first page: the next pages continue that
    ranking (no galaxy twice, none skipped) though a shard was indexed in between, and a page
    beyond what the server ranked then is a 409 that says to search again."""
    from galaxy_assets.search.query import GalaxySearch
    from galaxy_assets.search.table import build_shard_rows, upsert_shard
    from galaxy_assets_tests.search.conftest import synthetic_shard_frames

    engine = GalaxySearch(text_index.uri, text_embedder=text_embedder, aligner=aligner)
    app = create_app(engine, refresh_seconds=0)
    params = {"q": "spiral arms", "k": 5}
    with TestClient(app) as client:
        first = client.get("/api/search", params=params).json()
        old = first["table_version"]
        before = engine.search_text("spiral arms", 20).frame["object_id"].to_list()
        f = synthetic_shard_frames(30, "s-c", seed=7, start=100, aligner=aligner)
        upsert_shard(text_index.uri, "s-c", build_shard_rows(
            "s-c", f["manifest"], f["vectors"], f["predictions"], f["captions"]))
        pages = [first]
        for offset in (5, 10, 15):
            pages.append(client.get("/api/search", params={
                **params, "offset": offset, "table_version": old}).json())
        assert [p["table_version"] for p in pages] == [old] * 4
        ids = [r["object_id"] for p in pages for r in p["results"]]
        assert ids == before  # the ranking of the first page's version, continued
        beyond = client.get("/api/search", params={**params, "offset": 20, "table_version": old})
        body = _error(beyond, 409)
        assert "search again from the first page" in body["error"]
        new = client.get("/api/search", params={**params, "offset": 5}).json()
        assert new["table_version"] > old and new["n_indexed"] == 90


def test_the_last_page_after_the_index_moved_is_served(text_index, text_engine):
    """The first page ranks the whole 60-galaxy table (four pages ahead); its last page,
    asked after a shard was indexed again, ends past the table's 60 rows: it was a 409 since
    the stale-version path did not clamp the page's end to the row count."""
    from galaxy_assets.search.table import build_shard_rows, upsert_shard

    app = create_app(text_engine, refresh_seconds=0)
    params = {"q": "spiral arms", "k": 24}
    with TestClient(app, raise_server_exceptions=False) as client:
        first = client.get("/api/search", params=params).json()
        old = first["table_version"]
        ids = [r["object_id"] for r in first["results"]]
        second = client.get("/api/search", params={**params, "offset": 24,
                                                   "table_version": old}).json()
        ids += [r["object_id"] for r in second["results"]]
        f = text_index.frames["s-b"]
        upsert_shard(text_index.uri, "s-b", build_shard_rows(
            "s-b", f["manifest"], f["vectors"], f["predictions"], f["captions"]))
        last = client.get("/api/search", params={**params, "offset": 48, "table_version": old})
        assert last.status_code == 200, last.text
        body = last.json()
        assert body["table_version"] == old and body["n"] == 12 and not body["has_more"]
        ids += [r["object_id"] for r in body["results"]]
        assert len(ids) == len(set(ids)) == 60


def test_a_table_dropped_and_built_again_is_served_as_the_new_table(
    text_index, text_embedder, aligner
):
    """LanceDB versions start at 1 again after a drop: built again to the same version number
    with one shard, the server kept the old table's row count and cached ranking (galaxies
    no longer indexed, their details 404) under that number."""
    from galaxy_assets.search.query import GalaxySearch
    from galaxy_assets.search.table import build_shard_rows, drop_table, upsert_shard

    def factory():
        return GalaxySearch(text_index.uri, text_embedder=text_embedder, aligner=aligner,
                            serving_index=False)

    app = create_app(factory, refresh_seconds=0)
    params = {"q": "spiral arms", "k": 8}
    with TestClient(app, raise_server_exceptions=False) as client:
        before = client.get("/api/search", params=params).json()
        assert before["n_indexed"] == 60
        drop_table(text_index.uri)
        gone = client.get("/api/search", params=params)
        assert "dropped" in _error(gone, 503)["error"]
        f = text_index.frames["s-b"]
        rows = build_shard_rows("s-b", f["manifest"], f["vectors"], f["predictions"],
                                f["captions"])
        upsert_shard(text_index.uri, "s-b", rows)
        while factory().version < before["table_version"]:
            upsert_shard(text_index.uri, "s-b", rows)
        fresh = factory()
        assert fresh.version == before["table_version"]  # the same number, another table
        # a later page of the old table's first page: its ranking is gone
        stale = client.get("/api/search", params={**params, "offset": 8,
                                                  "table_version": before["table_version"]})
        _error(stale, 409)
        now = client.get("/api/search", params=params).json()
        assert now["table_version"] == before["table_version"] and now["n_indexed"] == 30
        ids = [r["object_id"] for r in now["results"]]
        assert ids == fresh.search_text("spiral arms", 8).frame["object_id"].to_list()
        assert client.get(f"/api/galaxy/{ids[0]}").status_code == 200
        assert client.get("/api/info").json()["n_indexed"] == 30
        # the old first page's "more", once the same query ran on the new table: the version
        # number alone matched, and it continued the new table's ranking (skipping galaxies)
        assert now["table_epoch"] != before["table_epoch"]
        old_more = client.get("/api/search", params={
            **params, "offset": 8, "table_version": before["table_version"],
            "table_epoch": before["table_epoch"]})
        assert "dropped and built again" in _error(old_more, 409)["error"]
        new_more = client.get("/api/search", params={
            **params, "offset": 8, "table_version": now["table_version"],
            "table_epoch": now["table_epoch"]})
        assert new_more.status_code == 200


def test_a_given_engine_whose_table_was_recreated_is_503_not_500(text_engine, text_index):
    """A GalaxySearch given as such cannot open the new table: while the table is missing
    and once it is back, requests are 503 saying why (they were 500s, one unexpected)."""
    from galaxy_assets.search.table import build_shard_rows, drop_table, upsert_shard

    app = create_app(text_engine, refresh_seconds=0)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/api/search", params={"q": "spiral arms"}).status_code == 200
        drop_table(text_index.uri)
        for path in ("/api/search?q=ring", "/api/galaxy/gal0001", "/api/info"):
            assert "rebuilt" in _error(client.get(path), 503)["error"]
        f = text_index.frames["s-b"]
        upsert_shard(text_index.uri, "s-b", build_shard_rows(
            "s-b", f["manifest"], f["vectors"], f["predictions"], f["captions"]))
        for path in ("/api/search?q=spiral+arms", "/api/info", "/api/info"):
            assert "restart the server" in _error(client.get(path), 503)["error"]


def test_thumbnails_are_keyed_by_their_pixels_not_the_table_version(survey_app, survey_index):
    """A new table version whose row points at the same pixels draws no new thumbnail (and
    a version number reused by a rebuilt table cannot serve another galaxy's picture)."""
    from galaxy_assets.search.table import open_table

    uri, _ = survey_index
    oid, _ = _one_cutout(survey_index)
    engine = survey_app.app.state.engine
    engine.refresh_seconds = 0
    first = survey_app.get(f"/api/galaxy/{oid}/thumbnail", params={"size": 64})
    open_table(uri).update(where=f"object_id = '{oid}'", values={"caption": "recaptioned"})
    again = survey_app.get(f"/api/galaxy/{oid}/thumbnail", params={"size": 64})
    assert int(again.headers["X-Table-Version"]) > int(first.headers["X-Table-Version"])
    assert again.content == first.content
    assert survey_app.app.state.thumbnails.misses == 1


def test_a_later_page_whose_ranking_left_the_cache_is_409(text_app, monkeypatch):
    """Ranking again for a page whose first page's ranking was evicted could repeat or skip
    galaxies (approximate search, a sampling rater): the server says to search again."""
    import galaxy_assets.web.app as web_app

    monkeypatch.setattr(web_app, "PAGE_CACHE_QUERIES", 2)
    first = text_app.get("/api/search", params={"q": "spiral", "k": 5}).json()
    for q in ("ring", "bar", "merger"):  # three other queries push it out
        text_app.get("/api/search", params={"q": q, "k": 5})
    later = text_app.get("/api/search", params={"q": "spiral", "k": 5, "offset": 5,
                                               "table_version": first["table_version"]})
    assert "no longer holds the ranking" in _error(later, 409)["error"]
    # a client that pins no version accepts a fresh ranking
    assert text_app.get("/api/search", params={"q": "spiral", "k": 5, "offset": 5}).json()["n"]


def test_has_more_is_false_when_the_matches_end_on_a_page_boundary(text_app):
    everything = text_app.get("/api/search", params={"q": "spiral", "k": 200,
                                                     "filter": "p_spiral>=0.5"}).json()
    n = everything["n"]
    assert 0 < n < 60 and not everything["has_more"]
    body = text_app.get("/api/search", params={"q": "spiral", "k": n,
                                               "filter": "p_spiral>=0.5"}).json()
    assert body["n"] == n and not body["has_more"]  # a "more" button would return nothing


def test_pages_never_repeat_a_galaxy_when_a_deeper_search_reorders(text_app, monkeypatch):
    """An approximate search asked for more rows can order the head differently: a later
    page extends the ranking already served instead of slicing a new one."""
    from galaxy_assets.search.query import GalaxySearch

    real = GalaxySearch.search

    def reordering(self, terms, k, **kw):  # a deeper answer ranks its best row last
        result = real(self, terms, k, **kw)
        if k > 20:
            frame = result.frame
            order = [*range(1, frame.height), 0]
            result.frame = frame[order].with_columns(pl.Series("rank", range(1, frame.height + 1)))
        return result

    monkeypatch.setattr(GalaxySearch, "search", reordering)
    seen = []
    for offset in range(0, 60, 10):
        body = text_app.get("/api/search", params={"q": "spiral", "k": 10, "offset": offset}).json()
        seen += [r["object_id"] for r in body["results"]]
        assert [r["rank"] for r in body["results"]] == list(range(offset + 1, offset + 11))
    assert len(seen) == 60 == len(set(seen))


def test_the_server_follows_a_reindex_with_a_new_aligner(text_index, text_embedder, aligner):
    """A new champion re-indexes every shard with its vectors: the server builds its engine
    again from the factory instead of refusing every query until restarted."""
    import polars as pl

    from galaxy_assets.search.query import GalaxySearch
    from galaxy_assets.search.table import build_shard_rows, upsert_shard

    serving = {"version": "search-aligner/v1"}
    built = []

    def factory():
        built.append(serving["version"])
        return GalaxySearch(text_index.uri, text_embedder=text_embedder, aligner=aligner,
                            aligner_version=serving["version"])

    app = create_app(factory, refresh_seconds=0)
    with TestClient(app) as client:
        assert client.get("/api/search", params={"q": "spiral"}).status_code == 200
        serving["version"] = "search-aligner/v2"  # what the table's aligner now is
        for shard, f in text_index.frames.items():
            vectors = f["vectors"].with_columns(pl.lit("search-aligner/v2").alias("aligner_version"))
            upsert_shard(text_index.uri, shard, build_shard_rows(
                shard, f["manifest"], vectors, f["predictions"], f["captions"]))
        answer = client.get("/api/search", params={"q": "spiral"})
        assert answer.status_code == 200, answer.text
        assert client.get("/api/info").json()["aligner_version"] == "search-aligner/v2"
    assert built == ["search-aligner/v1", "search-aligner/v2"]


def test_unexpected_errors_are_a_generic_500(text_engine, monkeypatch, caplog):
    app = create_app(text_engine, refresh_seconds=None)

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals at /srv/x.py line 3")

    monkeypatch.setattr(text_engine, "search", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/api/search", params={"q": "spiral"})
    body = _error(r, 500)
    assert "secret" not in r.text and body["detail"]["ref"]
    assert any("secret internals" in str(rec.exc_info) for rec in caplog.records if rec.exc_info)


def test_loopback_rule():
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host)
        check_bind_host(host, allow_remote=False)
    for host in ("0.0.0.0", "192.168.1.4", "example.org", "::"):
        assert not is_loopback(host)
        with pytest.raises(Exception, match="--allow-remote"):
            check_bind_host(host, allow_remote=False)
        check_bind_host(host, allow_remote=True)


def test_cli_serve_refuses_a_public_host_without_allow_remote(capsys):
    from galaxy_assets.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_temporary_upload_folder_is_under_the_given_dir(survey_app, survey_index, tmp_path,
                                                         monkeypatch):
    seen: list[Path] = []
    real = tempfile.TemporaryDirectory

    def spy(*args, **kwargs):
        tmp = real(*args, **kwargs)
        seen.append(Path(tmp.name))
        return tmp

    monkeypatch.setattr(tempfile, "TemporaryDirectory", spy)
    _, cut = _one_cutout(survey_index, 2)
    r = survey_app.post("/api/search/image", files={"file": ("q.fits", _fits_bytes(cut))})
    assert r.status_code == 200
    assert seen and all(p.parent == tmp_path / "uploads" and not p.exists() for p in seen)


def test_rerank_depth_defaults_to_the_servers(survey_engine, rater, tmp_path):
    """A re-ranking request that names no depth gets the server's (the settings'
    search.k_rerank, passed as create_app's k_rerank), and /api/info tells the page that
    depth, so the page, the API, the CLI and the evaluation report re-rank alike."""
    app = create_app(survey_engine, rater=rater, k_rerank=9, thumbnail_dir=tmp_path / "t",
                     refresh_seconds=None)
    with TestClient(app, raise_server_exceptions=False) as client:
        info = client.get("/api/info").json()
        assert info["defaults"]["k_rerank"] == 9
        body = client.get("/api/search", params={"q": "spiral arms", "k": 4, "rerank": "true"})
        assert body.json()["rerank"]["k_rerank"] == 9
        posted = client.post("/api/search", json={"q": "spiral arms", "k": 4, "rerank": True})
        assert posted.json()["rerank"]["k_rerank"] == 9
        named = client.get("/api/search", params={"q": "spiral arms", "rerank": "true",
                                                  "k_rerank": 5})
        assert named.json()["rerank"]["k_rerank"] == 5
    for bad in (0, 201, True, 2.5):
        with pytest.raises(ValueError, match="k_rerank"):
            create_app(survey_engine, k_rerank=bad)


def test_paging_with_more_reaches_the_last_rank_served(text_app, monkeypatch):
    """Pages of a size that does not divide the rank limit: "more" ends with a short last
    page, not a 400 (24 per page against 1,000 ranks ended in an error at offset 984)."""
    import galaxy_assets.web.app as app_module

    monkeypatch.setattr(app_module, "MAX_K", 20)
    offset, seen = 0, []
    while True:
        body = text_app.get("/api/search", params={"q": "spiral", "k": 8, "offset": offset})
        assert body.status_code == 200, body.text
        page = body.json()
        seen += [r["object_id"] for r in page["results"]]
        if not page["has_more"]:
            break
        offset += 8
    assert len(seen) == 20 == len(set(seen)) and offset == 16


def test_the_thumbnail_folder_is_held_under_its_size_limit(tmp_path):
    """Every new pixel source (a shard rewritten) renders again: the folder prunes the files
    used longest ago instead of growing without bound."""
    import os

    from galaxy_assets.web.thumbnails import ThumbnailCache

    cache = ThumbnailCache(tmp_path, max_items=2, max_bytes=10_000, prune_every=5)
    png = b"\x89PNG" + b"x" * 996
    for version in range(50):
        cache.get("gal0001", version, 128, lambda: png)
    files = list(tmp_path.glob("*/*.png"))
    assert len(files) <= 10 and sum(f.stat().st_size for f in files) <= 10_000
    # a file read from disk counts as used: the newest versions are the ones kept
    newest = ThumbnailCache(tmp_path).key("gal0001", 49, 128)
    assert any(f.stem == newest for f in files)
    assert not any(f.stem == ThumbnailCache.key("gal0001", 0, 128) for f in files)
    assert os.listdir(tmp_path)  # the folder itself stays


def test_caption_lineage_reads_while_a_captioning_run_replaces_the_store(tmp_path):
    """The detail view read the caption store by path: polars opens it twice (footer, then
    pages), so a captioning run replacing the file between the two made lineage fail."""
    import multiprocessing
    import time

    from galaxy_assets.captioning.store import CaptionStore
    from galaxy_assets.web.app import _caption_lineage
    from galaxy_assets_tests.captioning import store_workers

    folder = tmp_path / "captions"
    CaptionStore(folder).add(store_workers.rows("base", 30_000))
    text = store_workers.rows("base", 8)["caption"][7]
    ctx = multiprocessing.get_context("spawn")
    started, stop, adds = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
    writer = ctx.Process(target=store_workers.rewrite_until, args=(str(folder), started, stop, adds))
    writer.start()
    found, reads = [], 0
    try:
        assert started.wait(timeout=60)
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            found.append(_caption_lineage(folder, "base-7", "test", "m", text).get("prompt_sha"))
            reads += 1
    finally:
        stop.set()
        writer.join(timeout=60)
    assert writer.exitcode == 0 and adds.value >= 10 and reads >= 10
    assert set(found) == {"p"}, f"{found.count(None)} of {reads} reads found no lineage"


def test_a_fits_file_rewritten_in_place_gets_a_new_thumbnail_key(tmp_path):
    """Thumbnails are cached by their pixels' source: for a FITS folder that was the folder's
    own size and mtime, which a file rewritten in place (cp over it, rsync --inplace) leaves
    as they were, so the old picture was served even after a re-index and a restart."""
    import os

    from galaxy_assets.web.thumbnails import pixel_source

    folder = tmp_path / "fits"
    folder.mkdir()
    path = folder / "gal0001.fits"
    path.write_bytes(b"A" * 2880)
    row = pl.DataFrame({"object_id": ["gal0001"], "shard_uri": [str(folder)], "row": [0],
                        "bands": ["g,r,z"], "height": [64], "width": [64]})
    before = pixel_source(row)
    with open(path, "r+b") as handle:  # in place: the folder's own state does not change
        handle.write(b"B" * 2880)
    os.utime(path, ns=(0, 1_000_000_000))
    assert pixel_source(row) != before
