"""galaxy_index rows, upserts (idempotent, atomic, removals), schema evolution and indexes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from galaxy_assets.search import table as T
from galaxy_assets.search.ann import maintain
from galaxy_assets.search.errors import IndexMismatchError, IndexMissingError, RowsError
from galaxy_assets_tests.search.conftest import ALIGNER_VERSION, synthetic_shard_frames


def _rows(frames, shard, **kw):
    return T.build_shard_rows(
        shard,
        frames["manifest"],
        frames["vectors"],
        frames["predictions"],
        frames["captions"],
        **kw,
    )


def _snapshot(uri) -> pl.DataFrame:
    table = T.open_table(uri)
    return pl.from_arrow(table.to_arrow()).drop("vector").sort("object_id")


def test_p_columns_match_the_morphology_summaries():
    from galaxy_assets.morphology.predict import SUMMARY_ANSWERS

    assert T.P_COLUMNS == tuple(SUMMARY_ANSWERS)


def test_build_shard_rows_from_the_graph_frames(mock_survey):
    shard = mock_survey.shards[0]
    manifest, vectors = mock_survey.manifests[shard], mock_survey.vectors[shard]
    # one galaxy has no vector, one a NaN vector; one flux is 0, one negative, one null
    ids = manifest["object_id"].to_list()
    assert len(ids) >= 4, "the first mock shard needs a few galaxies"
    vec = vectors.filter(pl.col("object_id") != ids[0]).with_columns(
        pl.when(pl.col("object_id") == ids[1])
        .then(pl.lit(np.full(vectors["vector"].dtype.size, np.nan, np.float32).tolist()))
        .otherwise(pl.col("vector").arr.to_list())
        .list.to_array(vectors["vector"].dtype.size)
        .alias("vector")
    )
    manifest = manifest.with_columns(
        pl.when(pl.col("object_id") == ids[2])
        .then(0.0)
        .when(pl.col("object_id") == ids[3])
        .then(-1.5)
        .otherwise(pl.col("flux_r"))
        .cast(pl.Float32)
        .alias("flux_r"),
        pl.when(pl.col("object_id") == ids[2])
        .then(None)
        .otherwise(pl.col("flux_g"))
        .alias("flux_g"),
    )
    captions = pl.DataFrame(
        {
            "object_id": [ids[2], ids[2], ids[3]],
            "caption": ["old words", "new words", "   "],
            "backend": ["openai", "morphology", "openai"],
            "model": ["gpt", "morphology-describer-v1", "gpt"],
            "created_at": pl.Series(["2026-01-01", "2026-02-01", "2026-03-01"]).str.to_datetime(
                time_zone="UTC"
            ),
        }
    )
    posteriors = pl.DataFrame({"object_id": ids[:3], "Redshift_Mean": [0.1, 0.2, 0.3], "note": "x"})
    stats = T.RowStats()
    rows = T.build_shard_rows(shard, manifest, vec, None, captions, posteriors, stats=stats)

    assert rows.schema == T.table_schema(vectors["vector"].dtype.size, ["post_redshift_mean"])
    frame = pl.from_arrow(rows)
    assert stats.n_manifest == manifest.height and stats.n_rows == manifest.height - 2
    assert (stats.n_without_vector, stats.n_bad_vector) == (1, 1)
    assert set(stats.skipped_object_ids) == {ids[0], ids[1]}
    assert set(frame["object_id"]) == set(ids) - {ids[0], ids[1]}
    by_id = {r["object_id"]: r for r in frame.iter_rows(named=True)}
    assert by_id[ids[2]]["mag_r"] is None and by_id[ids[2]]["mag_g"] is None  # flux 0, null
    assert by_id[ids[3]]["mag_r"] is None  # negative flux
    assert by_id[ids[2]]["caption"] == "new words"  # the newest caption
    assert by_id[ids[2]]["caption_source"] == "morphology:morphology-describer-v1"
    assert by_id[ids[3]]["caption"] is None  # blank captions are no caption
    assert by_id[ids[2]]["post_redshift_mean"] == pytest.approx(0.3)
    m = manifest.filter(pl.col("object_id") == ids[4]).row(0, named=True)
    assert by_id[ids[4]]["mag_i"] == pytest.approx(22.5 - 2.5 * np.log10(m["flux_i"]), rel=1e-6)
    assert by_id[ids[4]]["shard_uri"] == m["shard_uri"] and by_id[ids[4]]["row"] == m["row"]
    assert by_id[ids[4]]["aligner_version"] == ALIGNER_VERSION
    stored = np.asarray(rows.column("vector").to_pylist(), np.float32)
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)


def test_build_shard_rows_keeps_only_p_columns_and_handles_list_vectors():
    f = synthetic_shard_frames(6, "s", seed=0)
    listy = f["vectors"].with_columns(pl.col("vector").arr.to_list())
    listy = listy.with_columns(
        pl.when(pl.col("object_id") == "gal0001")
        .then(pl.col("vector").list.head(3))
        .otherwise(pl.col("vector"))
        .alias("vector")
    )
    stats = T.RowStats()
    rows = T.build_shard_rows("s", f["manifest"], listy, f["predictions"], None, stats=stats)
    assert stats.n_bad_vector == 1 and rows.num_rows == 5
    assert "vf_has_spiral_arms_yes" not in rows.column_names and "p_spiral" in rows.column_names
    assert rows.column("p_bar").null_count == 5  # not predicted: null, not zero
    assert rows.column("caption").null_count == 5


def test_build_shard_rows_refuses_mixed_or_repeated_input():
    f = synthetic_shard_frames(4, "s", seed=0)
    with pytest.raises(RowsError, match="holds rows of shard"):
        T.build_shard_rows("other", f["manifest"], f["vectors"])
    dup = pl.concat([f["vectors"], f["vectors"].head(1)])
    with pytest.raises(RowsError, match="repeated object_ids"):
        T.build_shard_rows("s", f["manifest"], dup)
    with pytest.raises(RowsError, match="lacks columns"):
        T.build_shard_rows("s", f["manifest"].drop("shard_uri"), f["vectors"])


def test_upsert_is_idempotent(tmp_path):
    f = synthetic_shard_frames(20, "s1", seed=0)
    rows = _rows(f, "s1")
    first = T.upsert_shard(tmp_path, "s1", rows)
    assert (first.n_inserted, first.n_updated, first.n_deleted) == (20, 0, 0)
    before = _snapshot(tmp_path)
    again = T.upsert_shard(tmp_path, "s1", rows)
    assert (again.n_inserted, again.n_updated, again.n_deleted) == (0, 20, 0)
    assert again.version == again.version_before + 1 == first.version + 1
    after = _snapshot(tmp_path)
    assert after.equals(before)
    assert after["object_id"].n_unique() == after.height == 20
    assert T.table_version(T.open_table(tmp_path)) == again.version


def test_a_failed_upsert_commits_nothing_and_the_rerun_completes(tmp_path, monkeypatch):
    f = synthetic_shard_frames(40, "s1", seed=0)
    T.upsert_shard(tmp_path, "s1", _rows(f, "s1").slice(0, 25))
    before, version = _snapshot(tmp_path), T.open_table(tmp_path).version
    changed = f["captions"].with_columns(pl.lit("rewritten caption").alias("caption"))
    new_rows = T.build_shard_rows("s1", f["manifest"], f["vectors"], f["predictions"], changed)

    real = T.iter_record_batches

    def dies_half_way(rows, batch_rows):
        for i, batch in enumerate(real(rows, batch_rows)):
            if i == 2:
                raise RuntimeError("worker killed mid-shard")
            yield batch

    monkeypatch.setattr(T, "iter_record_batches", dies_half_way)
    with pytest.raises(Exception, match="worker killed mid-shard"):
        T.upsert_shard(tmp_path, "s1", new_rows, batch_rows=8)
    table = T.open_table(tmp_path)
    assert table.version == version  # no commit
    assert _snapshot(tmp_path).equals(before)  # the previous version reads as it was

    monkeypatch.setattr(T, "iter_record_batches", real)
    stats = T.upsert_shard(tmp_path, "s1", new_rows, batch_rows=8)
    assert (stats.n_inserted, stats.n_updated) == (15, 25)
    after = _snapshot(tmp_path)
    assert after.height == 40 and after["object_id"].n_unique() == 40
    assert set(after["caption"]) == {"rewritten caption"}


def test_rows_gone_from_a_shard_are_deleted_and_other_shards_kept(tmp_path):
    a = synthetic_shard_frames(10, "it's-a", seed=0)  # a quote in the key: escaped, not SQL
    b = synthetic_shard_frames(10, "s-b", seed=1, start=10)
    T.upsert_shard(tmp_path, "it's-a", _rows(a, "it's-a"))
    T.upsert_shard(tmp_path, "s-b", _rows(b, "s-b"))
    fewer = _rows(a, "it's-a").slice(0, 6)
    stats = T.upsert_shard(tmp_path, "it's-a", fewer)
    assert (stats.n_updated, stats.n_deleted) == (6, 4)
    assert T.indexed_shards(tmp_path) == {"it's-a": 6, "s-b": 10}
    # an empty shard (every vector gone) leaves no row behind
    empty = T.upsert_shard(tmp_path, "s-b", _rows(b, "s-b").slice(0, 0))
    assert empty.n_deleted == 10
    assert T.indexed_shards(tmp_path) == {"it's-a": 6}


def test_remove_shards(tmp_path):
    for k, shard in enumerate(["x", "y", "z"]):
        f = synthetic_shard_frames(5, shard, seed=k, start=5 * k)
        T.upsert_shard(tmp_path, shard, _rows(f, shard))
    out = T.remove_shards(tmp_path, ["x", "z", "never-indexed"])
    assert out["n_deleted"] == 10 and out["version"] > out["version_before"]
    assert T.indexed_shards(tmp_path) == {"y": 5}
    assert T.remove_shards(tmp_path, [])["n_deleted"] == 0


def test_bad_vectors_are_skipped_and_counted_on_upsert(tmp_path):
    f = synthetic_shard_frames(8, "s", seed=0)
    rows = _rows(f, "s")
    vec = np.asarray(rows.column("vector").to_pylist(), np.float32)
    vec[2] = np.inf
    vec[5] = 0.0
    arr = pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel(), pa.float32()), vec.shape[1])
    rows = rows.set_column(rows.column_names.index("vector"), "vector", arr)
    stats = T.upsert_shard(tmp_path, "s", rows)
    assert stats.n_skipped == 2 and set(stats.skipped_object_ids) == {"gal0002", "gal0005"}
    assert T.open_table(tmp_path).count_rows() == 6


def test_upsert_refuses_rows_of_another_shard_or_unknown_columns(tmp_path):
    f = synthetic_shard_frames(4, "s", seed=0)
    with pytest.raises(RowsError, match="include rows of shard"):
        T.upsert_shard(tmp_path, "t", _rows(f, "s"))
    with pytest.raises(RowsError, match="does not hold"):
        T.upsert_shard(
            tmp_path, "s", pl.from_arrow(_rows(f, "s")).with_columns(pl.lit(1).alias("junk"))
        )
    assert not T.table_exists(T.connect(tmp_path))  # nothing was written


def test_dimension_mismatch_asks_for_a_rebuild(tmp_path):
    f = synthetic_shard_frames(4, "s", seed=0)
    T.upsert_shard(tmp_path, "s", _rows(f, "s"))
    wide = f["vectors"].with_columns(
        pl.Series("vector", np.eye(4, 24, dtype=np.float32), dtype=pl.Array(pl.Float32, 24))
    )
    rows = T.build_shard_rows("s", f["manifest"], wide)
    with pytest.raises(IndexMismatchError, match="drop_table") as info:
        T.upsert_shard(tmp_path, "s", rows)
    assert "24-d" in str(info.value) and "16-d" in str(info.value)
    assert T.drop_table(tmp_path) is True
    stats = T.upsert_shard(tmp_path, "s", rows)
    assert stats.n_inserted == 4 and T.vector_dim(T.open_table(tmp_path)) == 24
    assert T.drop_table(tmp_path) and not T.drop_table(tmp_path)


def test_missing_table_is_a_clear_error(tmp_path):
    with pytest.raises(IndexMissingError, match="build the index first") as info:
        T.open_table(tmp_path / "nothing-here")
    assert str(tmp_path / "nothing-here") in str(info.value)


def test_default_uri_is_the_home_folder(isolated_home):
    f = synthetic_shard_frames(3, "s", seed=0)
    T.upsert_shard(None, "s", _rows(f, "s"))
    assert (isolated_home / "lancedb" / "galaxy_index.lance").is_dir()


def test_posterior_columns_are_added_by_schema_evolution(tmp_path):
    a = synthetic_shard_frames(5, "a", seed=0)
    b = synthetic_shard_frames(5, "b", seed=1, start=5)
    first = T.upsert_shard(tmp_path, "a", _rows(a, "a"))
    post = pl.DataFrame({"object_id": b["manifest"]["object_id"], "mass_p50": np.arange(5.0)})
    rows_b = T.build_shard_rows("b", b["manifest"], b["vectors"], posteriors=post)
    added = T.upsert_shard(tmp_path, "b", rows_b)
    # the version before counts from before the new column's own commit (it read v3 for v1)
    assert added.version_before == first.version < added.version
    snap = _snapshot(tmp_path)
    assert "post_mass_p50" in snap.columns
    assert snap.filter(pl.col("shard") == "a")["post_mass_p50"].null_count() == 5
    assert snap.filter(pl.col("shard") == "b")["post_mass_p50"].to_list() == [0, 1, 2, 3, 4]
    T.upsert_shard(tmp_path, "a", _rows(a, "a"))  # a shard without them still upserts
    assert _snapshot(tmp_path).height == 10


def test_rows_name_the_models_behind_their_caption_vote_fractions_and_posteriors(tmp_path):
    """Every result traceable to its models: the caption's prompt, the morphology encoder of
    the p_* columns and the emulator of the post_* columns (whose version number was indexed
    as a posterior, post_emulator_version)."""
    f = synthetic_shard_frames(4, "a", seed=0)
    preds = f["predictions"].with_columns(pl.lit("morphology-encoder/v2").alias("encoder"))
    post = pl.DataFrame({"object_id": f["manifest"]["object_id"], "redshift_median": [0.1] * 4,
                         "emulator_version": pl.Series([3] * 4, dtype=pl.Int32)})
    rows = T.build_shard_rows("a", f["manifest"], f["vectors"], preds, f["captions"], post)
    frame = pl.from_arrow(rows)
    assert "post_emulator_version" not in frame.columns
    assert set(frame["emulator_version"]) == {"property-emulator/v3"}
    assert set(frame["morphology_version"]) == {"morphology-encoder/v2"}
    assert set(frame["caption_prompt_sha"]) == {"abc"}
    # a table made before these columns existed gets them on the next upsert
    old = T.table_schema(rows.schema.field("vector").type.list_size)
    old = pa.schema([f for f in old if f.name not in T.LINEAGE_COLUMNS])
    import lancedb

    lancedb.connect(str(tmp_path)).create_table(T.TABLE_NAME, schema=old)
    T.upsert_shard(tmp_path, "a", rows)
    snap = _snapshot(tmp_path)
    assert set(snap["emulator_version"]) == {"property-emulator/v3"}
    assert set(snap["morphology_version"]) == {"morphology-encoder/v2"}


def test_indexes_and_maintenance(tmp_path):
    for k in range(3):  # three commits: three fragments
        f = synthetic_shard_frames(10, f"s{k}", seed=k, start=10 * k)
        T.upsert_shard(tmp_path, f"s{k}", _rows(f, f"s{k}"))
    table = T.open_table(tmp_path)
    out = T.ensure_indexes(table)
    assert out["fts"]["created"] and out["fts"]["indexed_rows"] == 30
    assert out["scalar"] == {"object_id": True, "shard": True, "aligner_version": True}
    again = T.ensure_indexes(table)
    assert not again["fts"]["created"] and not any(again["scalar"].values())
    hits = table.search("tidal", query_type="fts").select(["object_id", "caption"]).limit(50)
    assert {r["caption"] for r in hits.to_list()} == {"a merging pair with long tidal tails"}
    f = synthetic_shard_frames(5, "s9", seed=9, start=90)
    T.upsert_shard(table, "s9", _rows(f, "s9"))
    report = maintain(table, build_index=False)  # what index_maintenance runs
    assert report["fragments_after"] <= report["fragments_before"]
    for index in table.list_indices():  # the new shard's rows are folded into every index
        assert table.index_stats(index.name).num_unindexed_rows == 0, index.name
    assert T.column_counts(table, "aligner_version") == {ALIGNER_VERSION: 35}
