"""GalaxySearch over a synthetic index: text, object, combined and batched queries,
filters, validation and results."""

from __future__ import annotations

import json
import time

import numpy as np
import polars as pl
import pytest

from galaxy_assets.search.errors import IndexMismatchError, IndexMissingError, QueryError
from galaxy_assets.search.filters import Cone, Filters
from galaxy_assets.search.query import (
    GalaxySearch,
    QueryTerm,
    SearchResults,
    parse_term,
    to_json_records,
    viewer_url,
)
from galaxy_assets.search.table import build_shard_rows, upsert_shard
from galaxy_assets_tests.search.conftest import (
    ALIGNER_VERSION,
    CAPTIONS,
    make_aligner,
    synthetic_shard_frames,
)

SPIRAL, SMOOTH, MERGER, EDGE_ON, LENS = CAPTIONS


@pytest.fixture
def engine(text_index, text_embedder, aligner) -> GalaxySearch:
    return GalaxySearch(text_index.uri, text_embedder=text_embedder, aligner=aligner)


def _stored(table) -> pl.DataFrame:
    return pl.from_arrow(table.to_arrow())


def test_text_query_finds_its_captions(engine, text_index):
    # the fake embedder + random heads keep identical texts identical (not paraphrases)
    res = engine.search_text("  " + SPIRAL.replace(" ", "   ") + " ", k=12)
    assert isinstance(res, SearchResults) and res.query == SPIRAL
    frame = res.frame
    assert frame.height == 12 and frame["rank"].to_list() == list(range(1, 13))
    assert frame.columns[:6] == ["rank", "object_id", "score", "ra", "dec", "caption"]
    for col in ("mag_r", "p_spiral", "shard", "row", "aligner_version", "viewer_url"):
        assert col in frame.columns
    assert "vector" not in frame.columns
    assert frame["score"].is_sorted(descending=True)
    assert frame["caption"].head(12).to_list() == [SPIRAL] * 12  # 12 spirals of 60
    assert res.table_version == text_index.table().version
    # score is the cosine similarity with the stored vector
    q = engine.text_vectors([SPIRAL])[0]
    stored = _stored(text_index.table())
    vec = dict(zip(stored["object_id"], stored["vector"].to_list(), strict=True))
    for oid, score in frame.select("object_id", "score").iter_rows():
        assert score == pytest.approx(float(np.dot(q, vec[oid])), abs=1e-4)
    row = frame.row(0, named=True)
    assert row["viewer_url"] == (
        f"https://www.legacysurvey.org/viewer?ra={row['ra']:.6f}&dec={row['dec']:.6f}"
        "&layer=ls-dr10&zoom=16"
    )


def test_filters_restrict_results(engine):
    res = engine.search_text("spiral arms", k=60, filters=["mag_r<21.5", "p_spiral<0.5"])
    frame = res.frame
    assert 0 < frame.height < 60
    assert (frame["mag_r"] < 21.5).all() and (frame["p_spiral"] < 0.5).all()
    assert SPIRAL not in frame["caption"].to_list()
    typed = engine.search_text("spiral arms", k=60, filters=Filters(shards=["s-b"]))
    assert set(typed.frame["shard"]) == {"s-b"} and typed.frame.height == 30
    kw = engine.search_text("galaxy", k=60, filters=["keyword=tidal"])
    assert set(kw.frame["caption"]) == {MERGER}
    assert res.filters == {"mag_r": "<21.5", "p_spiral": "<0.5"}
    nothing = engine.search_text(SPIRAL, k=5, filters=["mag_r<5"])
    assert nothing.frame.height == 0 and nothing.frame.columns[:3] == ["rank", "object_id", "score"]
    assert to_json_records(nothing.frame) == []


def test_cone_search_across_ra_zero(engine):
    res = engine.search_text("galaxy", k=20, filters=Filters(cone=Cone(0.0, 0.0, 400.0)))
    frame = res.frame
    # ten galaxies sit within ~0.1 deg of (0, 0), on both sides of RA 0/360
    assert frame.height == 10
    assert (frame["distance_arcsec"] <= 400.0).all()
    assert (frame["ra"] > 359).any() and (frame["ra"] < 1).any()


def test_k_is_validated(engine, text_index):
    for bad in (0, -1, text_index.n + 1, True, 2.5, "3"):
        with pytest.raises(QueryError, match="k="):
            engine.search_text("spiral", k=bad)
    assert engine.search_text("spiral", k=text_index.n).frame.height == text_index.n
    with pytest.raises(QueryError, match="nprobes"):
        engine.search_text("spiral", k=3, nprobes=0)
    with pytest.raises(QueryError, match="refine_factor"):
        engine.search_text("spiral", k=3, refine_factor=-2)


def test_empty_and_huge_queries_fail_fast(engine, text_embedder):
    for bad in ("", "   \n\t "):
        with pytest.raises(QueryError, match="empty"):
            engine.search_text(bad)
    huge = "lens " * 2_000_000  # 10 MB
    t0 = time.perf_counter()
    with pytest.raises(QueryError, match="10000000 characters; at most 2000"):
        engine.search_text(huge)
    assert time.perf_counter() - t0 < 0.5
    with pytest.raises(QueryError, match="at most 2000"):
        engine.search_many(["spiral", huge])
    assert text_embedder.calls == []  # nothing was embedded
    with pytest.raises(QueryError, match="must be a string"):
        engine.search_text(None)  # type: ignore[arg-type]


def test_an_embedder_that_fails_is_a_query_error(engine, text_embedder, monkeypatch):
    """An OpenAI-compatible embedder that is down raised TextEmbedderError through the search,
    which the CLI printed as a traceback instead of its one-line error."""
    from galaxy_assets.embedding.text import TextEmbedderError

    def down(texts):
        raise TextEmbedderError("POST http://127.0.0.1:9/v1/embeddings: connection refused")

    monkeypatch.setattr(text_embedder, "embed", down)
    with pytest.raises(QueryError, match="could not embed the query: POST .*connection refused. "
                       "Check the text_embedder settings"):
        engine.search_text("spiral arms")


def test_object_queries(engine, text_index):
    res = engine.search_object("gal0000", k=5)
    assert "gal0000" not in res.frame["object_id"].to_list()
    assert set(res.frame["caption"]) == {SPIRAL}
    with_self = engine.search_object("gal0000", k=5, include_self=True)
    assert with_self.frame["object_id"][0] == "gal0000"
    assert with_self.frame["score"][0] == pytest.approx(1.0, abs=1e-5)
    for unknown in ("gal9999", "x' OR '1'='1"):
        with pytest.raises(QueryError, match="is not in galaxy_index"):
            engine.search_object(unknown)
    with pytest.raises(QueryError, match="object_id"):
        engine.search_object("   ")


def test_combined_query_vector_and_explanation(engine):
    terms = [
        QueryTerm.text(SPIRAL, 2.0),
        QueryTerm.text(EDGE_ON, 1.0, negative=True),
        QueryTerm.object("gal0005"),
    ]
    unit, explanation, vectors = engine.combined_vector(terms)
    want = 2.0 * vectors[0] - 1.0 * vectors[1] + vectors[2]
    assert np.allclose(unit, want / np.linalg.norm(want), atol=1e-6)
    assert [e["sign"] for e in explanation] == ["+", "-", "+"]
    assert [e["weight"] for e in explanation] == [2.0, 1.0, 1.0]
    for e, v in zip(explanation, vectors, strict=True):
        assert e["cosine"] == pytest.approx(float(v @ unit), abs=1e-5)
    assert explanation[0]["cosine"] > explanation[1]["cosine"]

    res = engine.search_combined(terms, k=5)
    assert res.explanation == explanation
    assert "gal0005" not in res.frame["object_id"].to_list()  # the example itself is left out
    assert [c for c in res.frame.columns if c.startswith("term_")] == [
        "term_1_cosine",
        "term_2_cosine",
        "term_3_cosine",
    ]
    assert set(res.frame["caption"]) == {SPIRAL}
    # an id typed with spaces is the same galaxy, and still left out
    padded = engine.search_combined([QueryTerm.object(" gal0005 "), terms[0]], k=5)
    assert "gal0005" not in padded.frame["object_id"].to_list()


def test_negative_terms_push_results_away(engine):
    plain = engine.search_combined([SMOOTH, SPIRAL], k=12).frame
    pushed = engine.search_combined([SMOOTH, QueryTerm.text(SPIRAL, 3, negative=True)], k=12).frame
    assert plain["caption"].to_list().count(SPIRAL) > 0
    assert pushed["caption"].to_list().count(SPIRAL) == 0
    spiral = engine.text_vectors([SPIRAL])[0]
    stored = engine.object_vectors(plain["object_id"].to_list())
    assert pushed["term_2_cosine"].mean() < float((stored @ spiral).mean())


def test_combined_query_validation(engine):
    with pytest.raises(QueryError, match="at least one term"):
        engine.search_combined([])
    with pytest.raises(QueryError, match="every term is negative"):
        engine.search_combined(["-spiral"])
    with pytest.raises(QueryError, match="cancel out"):
        engine.search_combined(["spiral arms", "-spiral arms"])
    for weight in (0, -1, float("nan"), float("inf")):
        with pytest.raises(QueryError, match="weight"):
            QueryTerm.text("spiral", weight)
    with pytest.raises(QueryError, match="is not in galaxy_index"):
        engine.search_combined(["spiral", "object:nope"])
    with pytest.raises(QueryError, match="kind"):
        QueryTerm("sound", "x")  # type: ignore[arg-type]


def test_parse_term():
    assert parse_term("spiral arms") == QueryTerm.text("spiral arms")
    assert parse_term("-text:bar^0.5") == QueryTerm.text("bar", 0.5, negative=True)
    assert parse_term("+object:gal0001^2") == QueryTerm.object("gal0001", 2)
    assert parse_term("image:/data/q.fits") == QueryTerm.image("/data/q.fits")
    with pytest.raises(QueryError):
        parse_term("-")


def test_search_dispatch(engine):
    assert engine.search("spiral arms", k=3).query == "spiral arms"
    assert engine.search(QueryTerm.object("gal0001"), k=3).query == "object:gal0001"
    combined = engine.search(["spiral arms", "-object:gal0000"], k=3)
    assert combined.explanation is not None and len(combined.explanation) == 2


def test_search_many_matches_single_queries_with_one_embedder_call(engine, text_embedder):
    queries = [SPIRAL, MERGER, EDGE_ON, "blue arc lens"]
    many = engine.search_many(queries, k=5)
    assert text_embedder.calls == [4]
    for q, res in zip(queries, many, strict=True):
        single = engine.search_text(q, k=5)
        assert res.frame["object_id"].to_list() == single.frame["object_id"].to_list()
        assert np.allclose(res.frame["score"], single.frame["score"], atol=1e-5)
        assert res.table_version == single.table_version
    ids_only = engine.search_many(queries, k=5, details=False)
    assert ids_only[0].frame.columns == ["rank", "object_id", "score"]
    filtered = engine.search_many(queries, k=5, filters=["shard=s-a"])
    assert all(set(r.frame["shard"]) == {"s-a"} for r in filtered)
    vecs = engine.text_vectors(queries)
    by_vector = engine.search_many(vecs, k=5)
    assert by_vector[2].frame["object_id"].to_list() == many[2].frame["object_id"].to_list()
    assert engine.search_many([], k=5) == []


def test_to_json_records(engine):
    res = engine.search_text("spiral arms", k=3)
    frame = res.frame.with_columns(pl.lit(float("nan")).alias("weird"))
    records = to_json_records(frame)
    assert len(records) == 3 and records[0]["weird"] is None
    for key in ("object_id", "score", "ra", "dec", "caption", "viewer_url", "rank", "mag_r"):
        assert key in records[0]
    text = json.dumps(records)
    assert "NaN" not in text and "vector" not in text
    assert res.to_json_records()[0]["object_id"] == records[0]["object_id"]
    # what `galaxy-assets search --json` prints: each record names its table version
    assert {r["table_version"] for r in res.to_json_records()} == {res.table_version}
    assert viewer_url(None, 1.0) is None


def test_missing_table(tmp_path, text_embedder, aligner):
    with pytest.raises(IndexMissingError, match="materialize"):
        GalaxySearch(tmp_path / "empty", text_embedder=text_embedder, aligner=aligner)


def test_an_emptied_table_says_what_to_materialize(text_index, text_embedder, aligner):
    table = text_index.table()
    table.delete("true")
    engine = GalaxySearch(table, text_embedder=text_embedder, aligner=aligner)
    with pytest.raises(QueryError, match="holds no galaxies at v.*materialize galaxy_index"):
        engine.search_text("spiral", k=1)


def test_aligner_version_must_match_the_table(text_index, text_embedder):
    other = make_aligner("search-aligner/v2")
    engine = GalaxySearch(text_index.uri, text_embedder=text_embedder, aligner=other)
    with pytest.raises(IndexMismatchError, match="must be rebuilt") as info:
        engine.search_text("spiral")
    assert "search-aligner/v1" in str(info.value) and "search-aligner/v2" in str(info.value)
    engine.search_object("gal0001", k=2)  # stored vectors need no aligner
    lenient = GalaxySearch(
        text_index.uri, text_embedder=text_embedder, aligner=other, allow_version_mismatch=True
    )
    assert lenient.search_text("spiral", k=2).frame.height == 2
    unknown = GalaxySearch(text_index.uri, text_embedder=text_embedder, aligner=make_aligner(None))
    with pytest.raises(QueryError, match="aligner_version="):
        unknown.search_text("spiral")
    explicit = GalaxySearch(
        text_index.uri,
        text_embedder=text_embedder,
        aligner=make_aligner(None),
        aligner_version=ALIGNER_VERSION,
    )
    assert explicit.search_text("spiral", k=1).frame.height == 1


def test_mixed_aligner_versions_are_refused(text_index, text_embedder, aligner):
    f = synthetic_shard_frames(5, "s-c", seed=7, start=60)
    f["vectors"] = f["vectors"].with_columns(pl.lit("search-aligner/v2").alias("aligner_version"))
    upsert_shard(text_index.uri, "s-c", build_shard_rows("s-c", f["manifest"], f["vectors"]))
    engine = GalaxySearch(text_index.uri, text_embedder=text_embedder, aligner=aligner)
    with pytest.raises(IndexMismatchError, match="mixes vectors of aligner versions"):
        engine.search_text("spiral")


def test_aligner_width_must_fit_the_table(text_index, text_embedder):
    with pytest.raises(IndexMismatchError, match="16-d vectors"):
        GalaxySearch(
            text_index.uri, text_embedder=text_embedder, aligner=make_aligner(output_dim=24)
        )


def test_refresh_sees_new_rows_and_versions(engine, text_index):
    v0 = engine.version
    f = synthetic_shard_frames(5, "s-c", seed=7, start=60)
    stats = upsert_shard(
        text_index.uri, "s-c", build_shard_rows("s-c", f["manifest"], f["vectors"])
    )
    assert engine.search_text("spiral", k=3).table_version == v0  # pinned until refresh
    assert engine.refresh() == stats.version
    res = engine.search_text("spiral", k=65)
    assert res.table_version == stats.version and res.frame.height == 65


def test_columns_added_later_appear_in_results_after_refresh(engine, text_index):
    """Posteriors indexed after the first shards add post_* columns: a running engine that
    moves to that version returns them, not only filters on them."""
    f = text_index.frames["s-a"]
    post = pl.DataFrame({"object_id": f["manifest"]["object_id"],
                         "redshift_median": np.linspace(0.01, 0.3, f["manifest"].height)})
    assert "post_redshift_median" not in engine.search_text("spiral", k=3).frame.columns
    upsert_shard(text_index.uri, "s-a", build_shard_rows(
        "s-a", f["manifest"], f["vectors"], f["predictions"], f["captions"], post))
    engine.refresh()
    res = engine.search_text("spiral", k=3, filters=["post_redshift_median<0.1"])
    assert res.frame.height == 3 and (res.frame["post_redshift_median"] < 0.1).all()


def test_keyword_search(engine, text_index):
    from galaxy_assets.search.table import ensure_fts_index

    ensure_fts_index(text_index.table())
    engine.refresh()
    res = engine.search_keyword("tidal", k=20)
    assert res.path == "fts" and set(res.frame["caption"]) == {MERGER}
    assert res.frame.height == 12
    only_b = engine.search_keyword("tidal", k=20, filters=["shard=s-b"])
    assert set(only_b.frame["shard"]) == {"s-b"}


def test_a_quoted_keyword_query_says_phrases_are_not_supported(engine, text_index):
    """Lance reads text in double quotes as a phrase, which needs word positions that the
    caption index does not store; rebuilding it (the old advice) could not help."""
    from galaxy_assets.search.table import ensure_fts_index

    ensure_fts_index(text_index.table())
    engine.refresh()
    for text in ('"tidal tails"', '"tidal"'):
        with pytest.raises(QueryError, match="phrase queries .* not supported.*drop the quotes"):
            engine.search_keyword(text, k=5)
    assert engine.search_keyword("tidal tails", k=5).frame.height == 5  # the words alone work


def test_keyword_search_in_a_cone_widens_until_k_remain(tmp_path, text_embedder, aligner):
    """A cone is searched as its bounding box, then cut exactly: when the box's corners hold
    the best keyword matches, the first pass keeps fewer than k, so the search asks for more."""
    from galaxy_assets.search.table import build_shard_rows, ensure_fts_index, upsert_shard
    from galaxy_assets_tests.search.conftest import synthetic_shard_frames

    corners = [(dx * 0.09, dy * 0.09) for dx in (-1, 1) for dy in (-1, 1)] * 5  # outside
    inside = [(0.01 * i, -0.01 * i) for i in range(8)]  # within 0.08 deg of the centre
    ra, dec = np.array(corners + inside).T
    f = synthetic_shard_frames(len(ra), "s-x", seed=5, aligner=aligner, ra=ra % 360, dec=dec)
    text = ["tidal tails"] * len(corners) + ["a disc galaxy with faint tidal debris"] * 8
    f["captions"] = f["captions"].with_columns(pl.Series("caption", text))
    uri = tmp_path / "lancedb"
    upsert_shard(uri, "s-x", build_shard_rows("s-x", f["manifest"], f["vectors"],
                                              f["predictions"], f["captions"]))
    engine = GalaxySearch(uri, text_embedder=text_embedder, aligner=aligner)
    ensure_fts_index(engine.table)
    engine.refresh()
    res = engine.search_keyword("tidal", k=5, filters=["cone=0,0,360"])  # 0.1 deg
    assert res.frame.height == 5
    assert (res.frame["distance_arcsec"] <= 360).all()


def test_serving_copy_answers_only_for_the_version_read(text_index, text_embedder, aligner):
    served = GalaxySearch(
        text_index.uri, text_embedder=text_embedder, aligner=aligner, serving_index=True
    )
    plain = GalaxySearch(
        text_index.uri, text_embedder=text_embedder, aligner=aligner, serving_index=False
    )
    a, b = served.search_text(SPIRAL, k=8), plain.search_text(SPIRAL, k=8)
    assert (a.path, b.path) == ("serving", "lance")
    assert a.frame.drop("score").equals(b.frame.drop("score"))
    assert np.allclose(a.frame["score"], b.frame["score"], atol=1e-5)
    v0 = served.version
    f = synthetic_shard_frames(5, "s-c", seed=7, start=60)
    upsert_shard(text_index.uri, "s-c", build_shard_rows("s-c", f["manifest"], f["vectors"]))
    stale = served.search_text(SPIRAL, k=8)  # the engine still reads v0, whoever answers
    assert stale.table_version == v0
    assert stale.frame["object_id"].to_list() == a.frame["object_id"].to_list()
    served.refresh()
    fresh = served.search_text(SPIRAL, k=65)
    assert fresh.path == "serving" and fresh.table_version == v0 + 1 and fresh.frame.height == 65
    auto = GalaxySearch(text_index.uri, text_embedder=text_embedder, aligner=aligner)
    assert auto.search_text(SPIRAL, k=3).path == "lance"  # single queries do not build it
    assert {r.path for r in auto.search_many([SPIRAL, MERGER], k=3)} == {"serving"}
    assert auto.search_text(SPIRAL, k=3).path == "serving"  # ... but use it once built
    assert auto.search_many([SPIRAL], k=3, filters=["mag_r<30"])[0].path == "lance"
