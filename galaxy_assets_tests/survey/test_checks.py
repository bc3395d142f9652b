import polars as pl

from galaxy_assets.survey.checks import (
    check_consistency,
    check_finite,
    check_schema,
    check_unique_across_shards,
)
from galaxy_assets.survey.schema import MANIFEST_COLUMNS


def _frame(n=10, shard="s1", prefix="a", bad=0):
    return pl.DataFrame(
        {
            "object_id": [f"{prefix}{i}" for i in range(n)],
            "ra": [150.0] * n,
            "dec": [2.0] * n,
            "healpix": [7] * n,
            "flux_g": [1.0] * n,
            "flux_r": [1.0] * n,
            "flux_i": [None] * n,
            "flux_z": [1.0] * n,
            "ebv": [0.01] * n,
            "bands": ["g,r,i,z"] * n,
            "height": [32] * n,
            "width": [32] * n,
            "nonfinite_fraction": [0.5] * bad + [0.0] * (n - bad),
            "shard": [shard] * n,
            "shard_uri": ["/x.hdf5"] * n,
            "row": list(range(n)),
        },
        schema=MANIFEST_COLUMNS,
    )


def test_schema_pass_and_fail():
    assert check_schema(_frame()).passed
    bad = _frame().with_columns(pl.lit(400.0).alias("ra"))
    out = check_schema(bad)
    assert not out.passed and "ra" in out.description


def test_finite_threshold():
    assert check_finite(_frame(100, bad=2)).passed
    out = check_finite(_frame(100, bad=3))
    assert not out.passed and "3 of 100" in out.description
    assert not check_finite(_frame(0)).passed


def test_consistency():
    assert check_consistency(_frame(), ["g", "r", "i", "z"]).passed
    # band names as the survey spells them, which the readers accept
    assert check_consistency(_frame(), ["DES-G", "DES-R", "DES-I", "DES-Z"]).passed
    assert check_consistency(_frame(), ["G", "R", "I", "Z"]).passed
    out = check_consistency(_frame(), ["g", "r", "z"])
    assert not out.passed and "differ" in out.description
    mixed = pl.concat([_frame(3), _frame(3, prefix="b").with_columns(pl.lit(40, pl.Int32).alias("height"))])
    out = check_consistency(mixed, ["g", "r", "i", "z"])
    assert not out.passed and "shapes" in out.description


def test_unique_across_shards(tmp_path):
    other = tmp_path / "s2.parquet"
    _frame(5, shard="s2", prefix="z").write_parquet(other)
    assert check_unique_across_shards(_frame(), "s1", [other]).passed
    _frame(5, shard="s3", prefix="a").write_parquet(tmp_path / "s3.parquet")
    out = check_unique_across_shards(_frame(), "s1", [other, tmp_path / "s3.parquet"])
    assert not out.passed and out.metadata["duplicates"] == 5 and "s3" in out.description
