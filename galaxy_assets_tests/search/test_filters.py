"""Filters: typed values to SQL, the string parser, rejections, cones (RA wrap, poles), boxes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from galaxy_assets.search import table as T
from galaxy_assets.search.errors import FilterError
from galaxy_assets.search.filters import (
    Cone,
    Filters,
    Range,
    SkyBox,
    angular_distance_deg,
    parse_filters,
)


def test_parsed_filters_become_sql():
    f = parse_filters(
        [
            "mag_r<19",
            "mag_r >= 17.5",
            "p_spiral>=0.8",
            "healpix=1722,1723",
            "has_caption=true",
            "shard=healpix=1722__001-of-001",
            "aligner_version=search-aligner/v3",
            "ebv<=0.05",
            "keyword=Tidal  tails",
        ]
    )
    assert f.to_where() == (
        "mag_r >= 17.5 AND mag_r < 19 AND NOT isnan(mag_r) AND p_spiral >= 0.8 AND "
        "NOT isnan(p_spiral) AND ebv <= 0.05 AND NOT isnan(ebv) AND "
        "healpix IN (1722, 1723) AND shard IN ('healpix=1722__001-of-001') AND "
        "aligner_version = 'search-aligner/v3' AND caption IS NOT NULL AND "
        "contains_tokens(caption, 'tidal tails')"
    )
    assert parse_filters("has_caption=no").to_where() == "caption IS NULL"
    assert parse_filters([]).to_where() is None and Filters().is_empty()
    assert parse_filters("mag_g==20").to_where() == (
        "mag_g >= 20 AND mag_g <= 20 AND NOT isnan(mag_g)"
    )
    assert parse_filters("ra>1e-5").to_where() == "ra > 0.00001 AND NOT isnan(ra)"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("mag_q<19", "unknown column 'mag_q'"),
        ("colour<1", "unknown column 'colour'"),
        ("vector<1", "unknown column 'vector'"),
        ("object_id=gal0001", "unknown column 'object_id'"),
        ("mag_r<19; DROP TABLE galaxy_index", "not a number"),
        ("mag_r<19 OR 1=1", "not a number"),
        ("mag_r<'19'", "not a number"),
        ("mag_r<(19)", "not a number"),
        ("mag_r<nan", "not a number"),
        ("mag_r<inf", "not a number"),
        ("p_spiral>=0.8)", "not a number"),
        ("p_spiral>=1.5", "outside [0, 1]"),
        ("healpix=(1)", "cell numbers"),
        ("healpix=1.5", "cell numbers"),
        ("shard='a' OR '1'='1'", "no quotes"),
        ("shard=a;DELETE", "no quotes"),
        ("aligner_version=v1)--", "no quotes"),
        ("has_caption=maybe", "true or false"),
        ("keyword=lens' OR 1=1 --", "letters, digits and hyphens"),
        ("mag_r!=3", "'!=' is not supported"),
        ("cone=1,2", "cone=RA,DEC,RADIUS_ARCSEC"),
        ("cone=1,2,-5", "radius_arcsec"),
        ("cone=400,2,5", "right ascension"),
        ("box=1,2,3", "box=RA_MIN"),
        ("box=1,2,5,3", "dec_min"),
        ("1; DROP TABLE x", "cannot parse filter"),
        ("mag_r", "cannot parse filter"),
        ("mag_r<", "no value"),
        ("has_caption<1", "takes '=' only"),
        ("aligner_version=a,b", "give one aligner version"),
        ("healpix=99999999999999999999999", "is not a HEALPix cell number"),
    ],
)
def test_bad_filters_are_rejected(expr, message):
    with pytest.raises(
        FilterError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        parse_filters(expr)


def test_unknown_column_error_lists_the_valid_ones():
    with pytest.raises(FilterError) as info:
        parse_filters("p_ring>0.5")
    text = str(info.value)
    assert "p_ring" in text and "p_spiral" in text and "mag_r" in text and "has_caption" in text


def test_columns_are_checked_against_the_table_schema():
    schema = T.table_schema(8, ["post_mass_p50"])
    assert parse_filters("post_mass_p50>10", schema).to_where(schema) == (
        "post_mass_p50 > 10 AND NOT isnan(post_mass_p50)"
    )
    with pytest.raises(FilterError, match="post_mass_p50"):
        parse_filters("post_mass_p50>10")  # the base schema has no posteriors
    with pytest.raises(FilterError, match="unknown or non-numeric column 'p_ring'"):
        Filters(probabilities={"p_ring": (0.5, None)}).to_where(schema)
    with pytest.raises(FilterError, match="not a morphology probability"):
        Filters(probabilities={"mag_r": (0.5, None)})
    with pytest.raises(FilterError, match="band 'u' is unknown"):
        Filters(mag={"u": (None, 20)})
    with pytest.raises(FilterError, match="low is above high"):
        Filters(mag={"r": (20, 19)})
    with pytest.raises(FilterError, match="not a column name"):
        Filters(ranges={"ebv; drop": (0, 1)})


def test_typed_strings_are_escaped_never_pasted():
    f = Filters(shards=["it's", "a'); DROP TABLE galaxy_index; --"], aligner_version="v'1")
    where = f.to_where()
    assert "shard IN ('a''); DROP TABLE galaxy_index; --', 'it''s')" in where
    assert "aligner_version = 'v''1'" in where
    with pytest.raises(FilterError, match="NUL"):
        Filters(shards=["a\x00b"]).to_where()


def test_ranges_from_several_conditions_intersect():
    f = parse_filters(["mag_r<19", "mag_r<=18", "mag_r>15", "mag_r>=15"])
    assert f.mag["r"] == Range(15, 18, low_inclusive=False, high_inclusive=True)
    with pytest.raises(FilterError, match="nothing in common"):
        parse_filters(["healpix=1", "healpix=2"])
    assert parse_filters(["healpix=1,2", "healpix=2,3"]).healpix == (2,)
    assert parse_filters(["keyword=arc", "keyword=blue"]).keyword == "arc blue"


def test_describe_is_json_able():
    import json

    f = parse_filters(["mag_r<19", "cone=10,20,30", "healpix=5", "has_caption=true"])
    assert json.loads(json.dumps(f.describe())) == {
        "mag_r": "<19",
        "cone": [10.0, 20.0, 30.0],
        "healpix": [5],
        "has_caption": True,
    }
    # the record keeps every digit of the bounds applied (':g' recorded '>=150.123')
    precise = parse_filters(["ra>=150.1234567", "p_bar<1e-20"]).describe()
    assert precise["ra"] == ">=150.1234567"
    assert precise["p_bar"] == "<1e-20"


# ------------------------------------------------------------------------------- sky shapes
def _sky_table(tmp_path, ra, dec):
    """A galaxy_index with only positions that matter (random unit vectors)."""
    n = len(ra)
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(n, 4)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    schema = T.table_schema(4)
    data = {
        "object_id": [f"p{i}" for i in range(n)],
        "ra": np.asarray(ra, float),
        "dec": np.asarray(dec, float),
        "shard": ["s"] * n,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), 4),
    }
    arrays = [
        pa.array(data[f.name], f.type)
        if f.name in data and f.name != "vector"
        else data["vector"]
        if f.name == "vector"
        else pa.nulls(n, f.type)
        for f in schema
    ]
    db = T.connect(tmp_path)
    return db.create_table(T.TABLE_NAME, pa.Table.from_arrays(arrays, schema=schema))


def _apply(table, f: Filters) -> set[str]:
    where = f.to_where(table.schema)
    q = table.search().select(["object_id", "ra", "dec"]).limit(None)
    if where:
        q = q.where(where)
    return set(f.post_filter(q.to_polars())["object_id"])


@pytest.mark.parametrize(
    ("ra0", "dec0", "radius_arcsec"),
    [
        (0.02, 0.0, 300.0),  # straddles RA 0/360
        (359.98, 10.0, 600.0),
        (180.0, 89.9, 1800.0),  # the circle holds the north pole
        (45.0, -89.95, 600.0),  # ... the south pole
        (120.0, 60.0, 7200.0),  # high dec: wide RA window
        (200.0, -30.0, 5.0),
    ],
)
def test_cone_prefilter_and_exact_distance(tmp_path, ra0, dec0, radius_arcsec):
    rng = np.random.default_rng(int(ra0 * 10 + dec0 * 100) % 2**32)
    r = radius_arcsec / 3600
    # points around the centre out to 3 radii (uniform in a spherical cap), plus the far sky
    cosmax = np.cos(np.radians(3 * r))
    z = rng.uniform(cosmax, 1.0, 400)
    phi = rng.uniform(0, 2 * np.pi, 400)
    local = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
    # rotate the cap from the pole to (ra0, dec0)
    th, ph = np.radians(90 - dec0), np.radians(ra0)
    ry = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    rz = np.array([[np.cos(ph), -np.sin(ph), 0], [np.sin(ph), np.cos(ph), 0], [0, 0, 1]])
    xyz = local @ (rz @ ry).T
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360
    dec = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1, 1)))
    ra = np.concatenate([ra, rng.uniform(0, 360, 100)])
    dec = np.concatenate([dec, rng.uniform(-90, 90, 100)])
    table = _sky_table(tmp_path, ra, dec)
    cone = Cone(ra0, dec0, radius_arcsec)
    truth = {f"p{i}" for i in np.flatnonzero(angular_distance_deg(ra, dec, ra0, dec0) <= r)}
    assert 10 < len(truth) < 400  # the test means something
    assert _apply(table, Filters(cone=cone)) == truth
    # the SQL prefilter alone never loses a galaxy of the cone
    pre = set(
        table.search()
        .where(" AND ".join(cone.prefilter_sql()) or "true")
        .select(["object_id"])
        .limit(None)
        .to_polars()["object_id"]
    )
    assert truth <= pre
    if abs(dec0) + r < 89:
        assert "ra >=" in " ".join(cone.prefilter_sql())  # an RA window is used when it can be


def test_cone_adds_distances_and_wraps_in_sql():
    cone = Cone(0.01, 0.0, 360.0)
    sql = " AND ".join(cone.prefilter_sql())
    assert " OR " in sql and "ra >= 359.9" in sql
    frame = pl.DataFrame({"object_id": ["a", "b"], "ra": [359.99, 0.2], "dec": [0.0, 0.0]})
    out = Filters(cone=cone).post_filter(frame)
    assert out["object_id"].to_list() == ["a"]
    assert out["distance_arcsec"][0] == pytest.approx(72.0, rel=1e-6)
    (only,) = Cone(10, 90, 60).prefilter_sql()  # the pole: a dec cut and no RA window
    assert only.startswith("dec >= 89.98333")


def test_box_with_ra_wrap(tmp_path):
    ra = np.array([358.0, 359.5, 0.5, 1.5, 2.5, 180.0, 1.0])
    dec = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0])
    table = _sky_table(tmp_path, ra, dec)
    assert _apply(table, Filters(box=SkyBox(359.0, 2.0, -1.0, 1.0))) == {"p1", "p2", "p3"}
    assert _apply(table, Filters(box=SkyBox(0.0, 2.0, -1.0, 6.0))) == {"p2", "p3", "p6"}
    assert _apply(table, parse_filters("box=359,2,-1,1", table.schema)) == {"p1", "p2", "p3"}


def test_a_range_never_matches_nan(tmp_path):
    """Lance's SQL orders NaN above every number: "p_spiral>=0.8" kept galaxies whose
    prediction is unknown (NaN). A range now holds numbers only."""
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(tmp_path / "db"))
    table = db.create_table("t", pa.table({
        "object_id": ["a", "b", "c", "d"],
        "p_spiral": pa.array([0.9, float("nan"), 0.1, None], pa.float32()),
    }))
    schema = T.table_schema(8)

    def ids(expr: str) -> list[str]:
        where = parse_filters(expr, schema).to_where(schema)
        return sorted(table.search().where(where).to_arrow().column("object_id").to_pylist())

    assert ids("p_spiral>=0.8") == ["a"]
    assert ids("p_spiral<0.5") == ["c"]


@pytest.mark.parametrize(
    ("expr", "sql", "kept"),
    [
        ("height>2147483648", "height > 2147483647", 0),  # past int32: nothing
        ("height<=2147483648", "height IS NOT NULL", 3),  # every galaxy with a height
        ("height=16", "height >= 16 AND height < 17", 2),
        ("height>15.5", "height >= 16", 3),
        ("row>-1e19", "row IS NOT NULL", 3),  # -9223372036854775808 is no Lance literal
        ("healpix<=9223372036854775807", "healpix IS NOT NULL", 3),
        ("healpix>1e19", "healpix > 9223372036854775807", 0),
    ],
)
def test_integer_bounds_past_the_column_type_run_in_lance(tmp_path, expr, sql, kept):
    """A bound the column's integer type cannot hold selects all or nothing, as the
    comparison would; Lance refused the literal and the API answered 500."""
    import lancedb

    schema = pa.schema([("object_id", pa.utf8()), ("row", pa.int64()),
                        ("height", pa.int32()), ("healpix", pa.int64())])
    data = pa.table({"object_id": ["a", "b", "c"], "row": [0, 1, 2],
                     "height": [16, 16, 32], "healpix": [5, 6, 7]}, schema=schema)
    table = lancedb.connect(tmp_path).create_table("t", data)
    where = parse_filters(expr, schema).to_where(schema)
    assert where == sql
    assert table.search().where(where).limit(None).to_polars().height == kept


def test_the_multimodality_flag_takes_true_or_false():
    """post_<label>_multimodal is a flag stored as 0/1: '=true' failed with "'true' is not a
    number", and only the undocumented '=1' worked."""
    schema = T.table_schema(8, ["post_redshift_multimodal"])
    flag = "post_redshift_multimodal"
    assert parse_filters(f"{flag}=true", schema).to_where(schema) == parse_filters(
        f"{flag}=1", schema).to_where(schema)
    assert parse_filters(f"{flag}=false", schema).describe()[flag] == ">=0 and <=0"
    with pytest.raises(FilterError, match="takes '=' only"):
        parse_filters(f"{flag}>true", schema)
