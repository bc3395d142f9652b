"""Vote tables: validation of bad tables, matching by id and position, the hash split."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from galaxy_assets.morphology import MorphologyError, default_tree
from galaxy_assets.morphology.data import (
    VoteDataset,
    hash_split,
    load_cutouts,
    validate_votes,
    votes_from_catalogue,
    votes_from_truth,
)

N = 40


@pytest.fixture
def manifest() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "object_id": [f"g{i:03d}" for i in range(N)],
            "ra": np.linspace(150.0, 150.1, N),
            "dec": np.full(N, 2.0),
            "shard_uri": ["/data/shard.hdf5"] * N,
            "row": np.arange(N, dtype=np.int64),
        }
    )


def _votes(n: int = N, seed: int = 0) -> pl.DataFrame:
    tree = default_tree()
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"object_id": [f"g{i:03d}" for i in range(n)]}
    for q in tree:
        counts = rng.multinomial(30, np.ones(len(q.answers)) / len(q.answers), size=n)
        for k, col in enumerate(q.columns):
            data[col] = counts[:, k].astype(np.int64)
        data[q.total_column] = counts.sum(axis=1)
    return pl.DataFrame(data)


def test_clean_table_passes(manifest):
    table = validate_votes(_votes(), manifest)
    assert len(table) == N and table.n_skipped == 0
    assert table.frame.columns[:3] == ["object_id", "shard_uri", "row"]
    assert table.counts().shape == (N, default_tree().n_answers)
    assert table.summary()["n_kept"] == N


def test_missing_columns_name_them(manifest):
    votes = _votes().drop("bar_weak", "merging_merger")
    with pytest.raises(MorphologyError, match=r"bar_weak.*merging_merger|merging_merger.*bar_weak"):
        validate_votes(votes, manifest)


def test_non_numeric_column_is_an_error(manifest):
    votes = _votes().with_columns(pl.col("bar_no").cast(pl.Utf8))
    with pytest.raises(MorphologyError, match="bar_no"):
        validate_votes(votes, manifest)


def test_bad_rows_are_skipped_and_counted(manifest):
    votes = _votes().with_columns(
        pl.when(pl.col("object_id") == "g001").then(-3).otherwise(pl.col("bar_no")).alias("bar_no"),
        pl.when(pl.col("object_id") == "g002")
        .then(2.5)
        .otherwise(pl.col("merging_none").cast(pl.Float64))
        .alias("merging_none"),
    )
    zero = {c: 0 for c in default_tree().answer_columns}
    votes = votes.with_columns(
        [pl.when(pl.col("object_id") == "g003").then(0).otherwise(pl.col(c)).alias(c) for c in zero]
    )
    stranger = _votes(1).with_columns(pl.lit("not-in-survey").alias("object_id"))
    dup = _votes(1, seed=3)  # a second g000
    table = validate_votes(pl.concat([votes, stranger, dup], how="vertical_relaxed"), manifest)
    assert table.skipped == {
        "negative_counts": 1,
        "non_integer_counts": 1,
        "no_votes": 1,
        "duplicate_id": 1,
        "unmatched_id": 1,
    }
    assert len(table) == N - 3
    assert table.examples["unmatched_id"] == ["not-in-survey"]
    summary = table.summary()
    assert summary["n_input"] == N + 2 and summary["skipped_negative_counts"] == 1
    with pytest.raises(MorphologyError, match="negative vote counts.*g001"):
        validate_votes(votes, manifest, on_bad="raise")


def test_infinite_counts_are_bad_rows_and_a_bad_first_copy_keeps_the_good_one(manifest):
    """An infinite count is bad input, not zero votes; when an id's first row is bad, its
    later good row is kept instead of dropped as a duplicate."""
    votes = _votes().with_columns(
        pl.when(pl.col("object_id") == "g001").then(float("inf"))
        .otherwise(pl.col("bar_no").cast(pl.Float64)).alias("bar_no"))
    bad_first = _votes(1, seed=5).with_columns(pl.lit("g002").alias("object_id"),
                                                pl.lit(-1).alias("bar_no"))
    good = votes.filter(pl.col("object_id") == "g002")
    table = validate_votes(pl.concat(
        [votes.filter(pl.col("object_id") != "g002"), bad_first, good], how="vertical_relaxed"),
        manifest)
    assert table.skipped == {"infinite_counts": 1, "negative_counts": 1}
    assert table.summary()["skipped_infinite_counts"] == 1  # the metadata shows the reason
    assert "g001" not in table.object_ids and "g002" in table.object_ids
    with pytest.raises(MorphologyError, match="infinite vote counts.*g001"):
        validate_votes(votes, manifest, on_bad="raise")


def test_nulls_count_as_zero_and_totals_are_recomputed(manifest):
    votes = _votes().with_columns(
        pl.when(pl.col("object_id") == "g004")
        .then(None)
        .otherwise(pl.col("bar_no"))
        .alias("bar_no"),
        (pl.col("bar_total-votes") + 1).alias("bar_total-votes"),
    )
    table = validate_votes(votes, manifest)
    assert len(table) == N and table.nulls_as_zero == 1 and table.totals_recomputed == N
    row = table.frame.filter(pl.col("object_id") == "g004")
    assert row["bar_no"][0] == 0
    assert row["bar_total-votes"][0] == row["bar_strong"][0] + row["bar_weak"][0]
    # an empty total beside no answers (a question not asked) is no disagreement
    unasked = _votes().with_columns(
        *(pl.lit(None, dtype=pl.Int64).alias(c) for c in ("bar_strong", "bar_weak", "bar_no",
                                                           "bar_total-votes")))
    assert validate_votes(unasked, manifest).totals_recomputed == 0


def test_wrong_table_is_refused(manifest):
    other = _votes().with_columns(("x" + pl.col("object_id")).alias("object_id"))
    with pytest.raises(MorphologyError, match="none of its 40 object_ids"):
        validate_votes(other, manifest)
    half_bad = _votes().with_columns(
        pl.when(pl.col("object_id") < "g030").then(-1).otherwise(pl.col("bar_no")).alias("bar_no")
    )
    with pytest.raises(MorphologyError, match="max_bad_fraction"):
        validate_votes(half_bad, manifest)


def test_catalogue_by_position_and_from_file(manifest, tmp_path):
    votes = (
        _votes()
        .with_columns(
            pl.Series("ra", manifest["ra"].to_numpy() + 0.2 / 3600),  # 0.2 arcsec off
            pl.Series("dec", manifest["dec"].to_numpy()),
        )
        .drop("object_id")
    )
    far = votes.head(1).with_columns(pl.lit(10.0).alias("ra"))
    table = votes_from_catalogue(pl.concat([votes, far]), manifest)
    assert len(table) == N and table.skipped == {"unmatched_id": 1}
    path = tmp_path / "votes.csv"
    _votes().write_csv(path)
    assert len(votes_from_catalogue(path, manifest)) == N
    with pytest.raises(MorphologyError, match="does not exist"):
        votes_from_catalogue(tmp_path / "nope.parquet", manifest)
    with pytest.raises(MorphologyError, match="neither an id column"):
        votes_from_catalogue(_votes().drop("object_id"), manifest)


def test_truth_needs_truth_tables(manifest):
    with pytest.raises(MorphologyError, match="truth table"):
        votes_from_truth(manifest)


def test_hash_split_is_stable_and_sized():
    ids = [f"obj{i}" for i in range(5000)]
    mask = hash_split(ids, 0.2)
    assert abs(mask.mean() - 0.2) < 0.03
    assert np.array_equal(mask[:100], hash_split(ids[:100], 0.2))  # independent of the rest
    assert not np.array_equal(mask, hash_split(ids, 0.2, salt="other"))


def test_votes_and_pixels_from_the_mock_survey(tiny_survey):
    table = votes_from_truth(tiny_survey.manifest)
    assert len(table) == tiny_survey.manifest.height
    ds = VoteDataset.from_votes(table, ["g", "r", "i", "z"], 32)
    assert ds.images.shape == (len(table), 4, 32, 32)
    # pixels really are the galaxies the frame names
    one = table.frame[5]
    from galaxy_assets.survey.readers import open_shard

    with open_shard(one["shard_uri"][0], size=32) as reader:
        ref = reader.read_rows([one["row"][0]]).images[0]
    np.testing.assert_array_equal(ds.images[5].numpy(), ref)
    stale = table.frame.with_columns(pl.col("row").reverse().over("shard_uri"))
    with pytest.raises(MorphologyError, match="manifest is stale|stale"):
        load_cutouts(stale, ["g"], 32)
