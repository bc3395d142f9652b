"""The vector-index layer: parameters, LanceDB index build and fold-in, LanceDB search, the FAISS
serving copy and its consistency with the table version, maintenance."""

from __future__ import annotations

import math
from datetime import timedelta

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from galaxy_assets.search import ann
from galaxy_assets.search.errors import SearchError

DIM = 32
SMALL = ann.IndexParams(num_partitions=16, num_sub_vectors=4, nprobes=4, refine_factor=10)

pytestmark = pytest.mark.filterwarnings("ignore:optimize\\(cleanup_older_than=0\\)")


def unit_vectors(n: int, seed: int, dim: int = DIM, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rows(vectors: np.ndarray, start: int = 0, ids: list[str] | None = None) -> pa.Table:
    n, dim = vectors.shape
    return pa.table(
        {
            "object_id": ids or [f"g{i:06d}" for i in range(start, start + n)],
            "mag_r": (14.0 + (np.arange(start, start + n) % 80) / 10.0).astype(np.float32),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
    )


@pytest.fixture
def db(tmp_path):
    return lancedb.connect(str(tmp_path / "lancedb"))


def table_contents(table) -> tuple[list[str], np.ndarray, np.ndarray]:
    data = table.to_arrow()
    vec = data.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    return data.column("object_id").to_pylist(), vec, data.column("mag_r").to_numpy()


def exact_ids(ids: list[str], vectors: np.ndarray, q: np.ndarray, k: int) -> list[list[str]]:
    _, idx = ann.top_k_exact(vectors, q, k)
    return [[ids[i] for i in row] for row in idx]


# -- index_params --------------------------------------------------------------------------------
def test_index_params_none_below_the_measured_threshold():
    assert ann.index_params(0, 256) is None
    assert ann.index_params(ann.BRUTE_FORCE_MAX_ROWS - 1, 256) is None
    assert ann.index_params(ann.BRUTE_FORCE_MAX_ROWS, 256) is not None
    # the threshold is a keyword for callers that measured another machine
    assert ann.index_params(5_000, 256, brute_force_max_rows=1_000) is not None


@pytest.mark.parametrize("dim", [256, 384, 1024, 100, 33, 8])
@pytest.mark.parametrize("n", [ann.BRUTE_FORCE_MAX_ROWS, 100_000, 1_000_000, 50_000_000])
def test_index_params_large_tables_are_sensible(n, dim):
    p = ann.index_params(n, dim)
    assert p is not None
    assert dim % p.num_sub_vectors == 0
    assert 2 ** int(math.log2(p.num_partitions)) == p.num_partitions
    assert 16 <= p.num_partitions <= 4096 and p.num_partitions <= n // 64
    assert 1 <= p.nprobes <= p.num_partitions
    assert p.refine_factor >= 1


def test_index_params_known_sizes_and_growth():
    p = ann.index_params(1_000_000, 256)
    assert (p.num_partitions, p.num_sub_vectors) == (1024, 32)
    assert p.nprobes == 32
    sizes = [ann.index_params(n, 256).num_partitions for n in (30_000, 100_000, 1_000_000, 10**8)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] == 4096
    # 8 dimensions per sub-vector where the width allows it; the nearest divisor otherwise
    assert ann.index_params(100_000, 384).num_sub_vectors == 48
    assert ann.index_params(100_000, 100).num_sub_vectors in (10, 20)
    assert ann.index_params(100_000, 33).num_sub_vectors in (3, 11)


def test_index_params_rejects_bad_input():
    with pytest.raises(ann.VectorIndexError, match="n_rows"):
        ann.index_params(-1, 256)
    with pytest.raises(ann.VectorIndexError, match="dim"):
        ann.index_params(100_000, 0)
    with pytest.raises(ann.VectorIndexError, match="nprobes"):
        ann.IndexParams(num_partitions=8, num_sub_vectors=4, nprobes=9, refine_factor=1)
    with pytest.raises(ann.VectorIndexError, match="refine_factor"):
        ann.IndexParams(num_partitions=8, num_sub_vectors=4, nprobes=2, refine_factor=0)
    assert issubclass(ann.VectorIndexError, SearchError)


# -- ensure_vector_index -------------------------------------------------------------------------
def test_ensure_vector_index_skips_small_tables(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(300, 0)))
    out = ann.ensure_vector_index(table)
    assert out["action"] == "skipped" and "flat search" in out["reason"]
    assert out["rows"] == 300 and out["rows_unindexed"] == 300
    assert ann.vector_index_stats(table) is None
    assert list(table.list_indices()) == []
    # force rebuilds an index, but never builds one where brute force is faster
    assert ann.ensure_vector_index(table, force=True)["action"] == "skipped"


def test_ensure_vector_index_builds_folds_and_retrains(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(4000, 1)))
    built = ann.ensure_vector_index(table, params=SMALL)
    assert built["action"] == "built" and built["params"]["num_partitions"] == 16
    stats = ann.vector_index_stats(table)
    assert stats["distance_type"] == "cosine" and stats["index_type"] == "IVF_PQ"
    assert (stats["rows_indexed"], stats["rows_unindexed"]) == (4000, 0)
    assert built["version"] == table.version

    assert ann.ensure_vector_index(table, params=SMALL)["action"] == "current"

    new = unit_vectors(200, 2)
    table.add(rows(new, start=4000))
    # a small batch stays unindexed: LanceDB searches it exactly until maintenance folds it in
    deferred = ann.ensure_vector_index(table, params=SMALL)
    assert deferred["action"] == "deferred" and deferred["rows_unindexed"] == 200
    (hit,) = ann.lance_search(table, new[7], 1)
    assert hit["object_id"].to_list() == ["g004007"]
    folded = ann.ensure_vector_index(table, params=SMALL, fold=True)
    assert folded["action"] == "folded"
    assert folded["rows_unindexed_before"] == 200 and folded["rows_unindexed"] == 0
    assert ann.vector_index_stats(table)["rows_indexed"] == 4200
    assert ann.ensure_vector_index(table, params=SMALL)["action"] == "current"

    # more new rows than indexed ones: the partitions are retrained, not just extended
    table.add(rows(unit_vectors(4300, 3), start=4200))
    regrown = ann.ensure_vector_index(table, params=SMALL)
    assert regrown["action"] == "built" and "retrained" in regrown["reason"]
    assert ann.ensure_vector_index(table, params=SMALL, force=True)["action"] == "built"


def test_an_index_trained_on_another_aligners_vectors_is_retrained(db):
    """A re-index spread over several runs used to fold the new aligner's vectors into the
    partitions and codebooks trained on the old one's (each run rewrote under half the rows,
    the growth rule never fired) and recall collapsed; the index is named after the aligner it
    was trained on and retrained once every row holds another one's."""

    def made_by(vectors, start, version):
        t = rows(vectors, start=start)
        return t.append_column("aligner_version", pa.array([version] * t.num_rows))

    def upsert(t):
        table.merge_insert("object_id").when_matched_update_all(
        ).when_not_matched_insert_all().execute(t)

    table = db.create_table("galaxy_index", made_by(unit_vectors(4000, 30), 0, "search-aligner/v1"))
    assert ann.ensure_vector_index(table, params=SMALL)["action"] == "built"
    assert ann.vector_index_stats(table)["name"] == "vector_idx__search_aligner_v1"
    new = unit_vectors(4000, 31)
    upsert(made_by(new[:1500], 0, "search-aligner/v2"))  # the first run of the re-index
    mixed = ann.ensure_vector_index(table, params=SMALL, fold=True)
    assert mixed["action"] == "folded"  # a mixed table is left alone until the re-index ends
    upsert(made_by(new[1500:], 1500, "search-aligner/v2"))
    out = ann.ensure_vector_index(table, params=SMALL)
    assert out["action"] == "built"
    assert "trained on other vectors than search-aligner/v2's" in out["reason"]
    names = [c.name for c in table.list_indices() if list(c.columns) == ["vector"]]
    assert names == ["vector_idx__search_aligner_v2"]  # the old index was dropped
    assert ann.ensure_vector_index(table, params=SMALL)["action"] == "current"


def test_an_index_from_before_indexes_were_named_is_kept_and_a_mixed_one_is_retrained(db):
    """An index built by older code is named plainly vector_idx: it was trained on the vectors
    the rows hold, and upgrading must not retrain it with a false reason. One built while the
    table mixed two aligners is retrained once the re-index ends."""
    vectors = unit_vectors(4000, 33)
    t = rows(vectors).append_column("aligner_version", pa.array(["search-aligner/v1"] * 4000))
    table = db.create_table("galaxy_index", t)
    table.create_index("vector", config=ann.ivf_pq_config(SMALL))  # older code: default name
    assert ann.vector_index_stats(table)["name"] == "vector_idx"
    assert ann.ensure_vector_index(table, params=SMALL)["action"] == "current"

    table.merge_insert("object_id").when_matched_update_all().when_not_matched_insert_all(
    ).execute(rows(vectors[:2500]).append_column(
        "aligner_version", pa.array(["search-aligner/v2"] * 2500)))
    assert ann.vectors_made_by(table) == ann.MIXED
    mixed = ann.ensure_vector_index(table, params=SMALL)  # the growth rule: 2,500 > 1,500
    assert mixed["action"] == "built"
    assert ann.vector_index_stats(table)["name"] == "vector_idx__mixed"
    table.merge_insert("object_id").when_matched_update_all().when_not_matched_insert_all(
    ).execute(rows(vectors[2500:], start=2500).append_column(
        "aligner_version", pa.array(["search-aligner/v2"] * 1500)))
    done = ann.ensure_vector_index(table, params=SMALL)
    assert done["action"] == "built" and "vector_idx__mixed" in done["reason"]
    assert ann.vector_index_stats(table)["name"] == "vector_idx__search_aligner_v2"


def test_ensure_vector_index_reports_bad_parameters(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(400, 4)))
    bad = ann.IndexParams(num_partitions=16, num_sub_vectors=5, nprobes=4, refine_factor=2)
    with pytest.raises(ann.VectorIndexError, match="does not divide"):
        ann.ensure_vector_index(table, params=bad)


def test_tables_without_a_vector_column_are_refused(db):
    table = db.create_table("other", pa.table({"object_id": ["a"], "x": [1.0]}))
    with pytest.raises(ann.VectorIndexError, match="no 'vector' column"):
        ann.ensure_vector_index(table)


# -- lance_search --------------------------------------------------------------------------------
def test_lance_search_without_index_is_exact_and_prefilters(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(300, 5)))
    ids, vec, mag = table_contents(table)
    q = unit_vectors(4, 6)
    frames = ann.lance_search(table, q, 7, columns=["mag_r"])
    assert len(frames) == 4
    want = exact_ids(ids, vec, q, 7)
    for frame, expected, qv in zip(frames, want, q, strict=True):
        assert frame.columns == ["object_id", "_distance", "mag_r"]
        assert frame["object_id"].to_list() == expected
        sims = vec[[ids.index(o) for o in expected]] @ qv
        np.testing.assert_allclose(frame["_distance"].to_numpy(), 1.0 - sims, atol=1e-5)

    (one,) = ann.lance_search(table, q[0], 5, where="mag_r < 16.0", columns=["mag_r"])
    keep = np.flatnonzero(mag < 16.0)
    assert one.height == 5 and (one["mag_r"] < 16.0).all()
    sub = exact_ids([ids[i] for i in keep], vec[keep], q[:1], 5)[0]
    assert one["object_id"].to_list() == sub


def test_lance_search_with_index_reaches_exact_when_probing_every_list(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(4000, 7)))
    ann.ensure_vector_index(table, params=SMALL)
    ids, vec, _ = table_contents(table)
    q = unit_vectors(5, 8)
    frames = ann.lance_search(table, q, 10, nprobes=16, refine_factor=50)
    want = exact_ids(ids, vec, q, 10)
    hits = [len(set(f["object_id"].to_list()) & set(w)) for f, w in zip(frames, want, strict=True)]
    assert sum(hits) >= 48  # 50 neighbours; PQ ranks 500 candidates, exact re-ranking picks 10


@pytest.mark.parametrize("exact_below", [ann.EXACT_FILTERED_MAX_ROWS, 0])
def test_a_selective_filter_on_an_indexed_table_still_gets_k_rows(db, monkeypatch, exact_below):
    """With a filter that leaves a few rows per IVF list, probing a few lists misses most
    neighbours and finds fewer than k: few rows pass, so they are ranked exactly (and with that
    turned off, a short IVF answer is searched again without the index)."""
    monkeypatch.setattr(ann, "EXACT_FILTERED_MAX_ROWS", exact_below)
    table = db.create_table("galaxy_index", rows(unit_vectors(4000, 7)))
    ann.ensure_vector_index(table, params=SMALL)
    ids, vec, mag = table_contents(table)
    q = unit_vectors(3, 8)
    where = "mag_r < 14.15"  # 2 of every 80 rows: 100 rows spread over all 16 lists
    keep = np.flatnonzero(mag < 14.15)
    frames = ann.lance_search(table, q, 20, where=where, nprobes=1, refine_factor=1)
    want = exact_ids([ids[i] for i in keep], vec[keep], q, 20)
    for frame, expected in zip(frames, want, strict=True):
        assert frame["object_id"].to_list() == expected
    (one,) = ann.lance_search(table, q[0], 20, where=where, nprobes=1, refine_factor=1)
    assert one["object_id"].to_list() == want[0]


def test_an_unfiltered_search_on_an_indexed_table_gets_k_rows(db):
    """The lists probed hold fewer rows than a large k: LanceDB returned only theirs (4,043 of
    a 5,000 asked on a 26k-row table) while the serving copy returned all, and the CLI printed
    the short list without a word."""
    table = db.create_table("galaxy_index", rows(unit_vectors(4000, 9)))
    ann.ensure_vector_index(table, params=SMALL)
    q = unit_vectors(2, 10)
    frames = ann.lance_search(table, q, 3000, nprobes=2)
    assert [f.height for f in frames] == [3000, 3000]
    ids, vec, _ = table_contents(table)
    assert [f["object_id"].to_list()[:50] for f in frames] == exact_ids(ids, vec, q, 50)
    (single,) = ann.lance_search(table, q[0], 4000, nprobes=2)
    assert single.height == 4000


@pytest.mark.parametrize("refine_factor", [None, 1])
def test_scores_are_cosines_on_an_indexed_table_of_any_size(db, refine_factor):
    """An index stays when a table shrinks below the size that would build one (a shard
    removed): its candidates are still re-scored exactly, so scores are true cosines."""
    table = db.create_table("galaxy_index", rows(unit_vectors(2048, 7)))
    ann.ensure_vector_index(table, params=SMALL)
    ids, vec, _ = table_contents(table)
    q = unit_vectors(3, 8)
    for query, frame in zip(q, ann.lance_search(table, q, 10, refine_factor=refine_factor),
                            strict=True):
        got = 1.0 - frame["_distance"].to_numpy()
        rows_of = [ids.index(i) for i in frame["object_id"].to_list()]
        np.testing.assert_allclose(got, vec[rows_of] @ query, atol=1e-5)


def test_a_selective_filter_on_an_indexed_table_can_return_the_vectors(db):
    """Combined queries ask for the vector column: the exact filtered path must not read it
    twice (LanceDB refuses a duplicate column)."""
    table = db.create_table("galaxy_index", rows(unit_vectors(4000, 7)))
    ann.ensure_vector_index(table, params=SMALL)
    ids, vec, _ = table_contents(table)
    (frame,) = ann.lance_search(table, unit_vectors(1, 8), 5, where="mag_r < 14.15",
                                columns=["vector", "mag_r"])
    assert frame.columns == ["object_id", "_distance", "vector", "mag_r"]
    assert frame.height == 5 and (frame["mag_r"] < 14.15).all()
    got = np.stack(frame["vector"].to_list())
    np.testing.assert_allclose(got, vec[[ids.index(i) for i in frame["object_id"]]], atol=0)


def test_lance_search_rejects_bad_input(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(50, 9)))
    with pytest.raises(ann.VectorIndexError, match="shape"):
        ann.lance_search(table, np.ones((2, DIM + 1), np.float32), 3)
    with pytest.raises(ann.VectorIndexError, match="k=0"):
        ann.lance_search(table, unit_vectors(1, 1), 0)
    with pytest.raises(ann.VectorIndexError, match="unknown column"):
        ann.lance_search(table, unit_vectors(1, 1), 3, columns=["nope"])
    with pytest.raises(ann.VectorIndexError, match="zero query"):
        ann.lance_search(table, np.zeros(DIM, np.float32), 3)
    with pytest.raises(ann.VectorIndexError, match="filter"):
        ann.lance_search(table, unit_vectors(1, 1), 3, where="no_such_column > 1")


# -- ServingIndex --------------------------------------------------------------------------------
def test_serving_index_exact_on_a_small_table(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(300, 10)))
    serving = ann.ServingIndex.from_table(table)
    assert serving.params is None and serving.version == table.version and serving.n_rows == 300
    ids, vec, _ = table_contents(table)
    q = unit_vectors(6, 11)
    scores, found = serving.search(q, 8)
    assert found == exact_ids(ids, vec, q, 8)
    assert scores.shape == (6, 8) and (np.diff(scores, axis=1) <= 1e-7).all()
    np.testing.assert_allclose(scores[0], vec[[ids.index(o) for o in found[0]]] @ q[0], atol=1e-5)


def test_serving_index_ivf_equals_exact_when_probing_every_list(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(4000, 12)))
    serving = ann.ServingIndex.from_table(table, SMALL)
    assert serving.params == SMALL
    ids, vec, _ = table_contents(table)
    q = unit_vectors(10, 13)
    _, found = serving.search(q, 10, nprobes=16, refine_factor=400)
    assert found == exact_ids(ids, vec, q, 10)
    # the default probes find most of them
    _, approx = serving.search(q, 10)
    want = exact_ids(ids, vec, q, 10)
    assert np.mean([len(set(a) & set(w)) / 10 for a, w in zip(approx, want, strict=True)]) >= 0.8


def test_serving_index_stale_after_upsert_then_refreshed_incrementally(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(4000, 14)))
    serving = ann.ServingIndex.from_table(table, SMALL)
    assert serving.is_current(table)
    q = unit_vectors(3, 15)
    # move g000007 onto the first query: a changed vector for an existing object_id
    update = rows(q[:1], ids=["g000007"])
    table.merge_insert("object_id").when_matched_update_all().when_not_matched_insert_all().execute(
        update
    )
    assert not serving.is_current(table)
    with pytest.raises(ann.StaleIndexError, match="refresh"):
        serving.search(q, 5)
    out = serving.refresh(table)
    assert out["action"] == "incremental" and (out["added"], out["removed"]) == (1, 1)
    assert serving.is_current(table) and serving.version == table.version
    ids, vec, _ = table_contents(table)
    scores, found = serving.search(q, 5, nprobes=16, refine_factor=800)
    assert found == exact_ids(ids, vec, q, 5)
    assert found[0][0] == "g000007" and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert serving.refresh(table)["action"] == "none"


def test_serving_index_follows_deletes_appends_and_compaction(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(300, 16)))
    table.add(rows(unit_vectors(100, 17), start=300))
    serving = ann.ServingIndex.from_table(table)
    table.delete("object_id IN ('g000001', 'g000350')")
    table.add(rows(unit_vectors(20, 18), start=400))
    out = serving.refresh(table)
    assert (out["action"], out["added"], out["removed"]) == ("incremental", 20, 2)
    assert serving.n_rows == 418

    ann.maintain(table, older_than=timedelta(0))  # compaction rewrites every fragment
    moved = serving.refresh(table)
    assert moved["action"] == "incremental" and moved["moved"] == 418
    assert (moved["added"], moved["removed"]) == (0, 0)
    ids, vec, _ = table_contents(table)
    q = unit_vectors(5, 19)
    assert serving.search(q, 10)[1] == exact_ids(ids, vec, q, 10)
    assert "g000001" not in {o for row in serving.search(q, 418)[1] for o in row}


def test_serving_index_rebuilds_when_most_rows_change(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(200, 20)))
    serving = ann.ServingIndex.from_table(table)
    table.merge_insert("object_id").when_matched_update_all().when_not_matched_insert_all().execute(
        rows(unit_vectors(200, 21))
    )
    out = serving.refresh(table)
    assert out["action"] == "rebuilt" and out["added"] == 200 and out["removed"] == 200
    ids, vec, _ = table_contents(table)
    q = unit_vectors(3, 22)
    assert serving.search(q, 4)[1] == exact_ids(ids, vec, q, 4)


def test_serving_index_retrains_after_a_re_index_spread_over_refreshes(db):
    """Each refresh rewrote under half the rows, so a new aligner's vectors were folded into
    the lists trained on the old ones for good; the changes since training now add up."""
    table = db.create_table("galaxy_index", rows(unit_vectors(300, 23)))
    serving = ann.ServingIndex.from_table(table)
    new = unit_vectors(300, 24)
    actions = []
    for part in range(3):  # 40 rows rewritten count 80 changes (added and removed) of 300
        lo, hi = part * 40, (part + 1) * 40
        table.merge_insert("object_id").when_matched_update_all(
        ).when_not_matched_insert_all().execute(rows(new[lo:hi], start=lo))
        actions.append(serving.refresh(table)["action"])
    assert actions == ["incremental", "rebuilt", "incremental"]


def test_serving_index_auto_refresh_and_staleness_interval(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(100, 23)))
    serving = ann.ServingIndex.from_table(table, auto_refresh=True)
    target = unit_vectors(1, 24)
    table.add(rows(target, start=100))
    scores, found = serving.search(target, 1)
    assert found == [["g000100"]] and serving.version == table.version

    lazy = ann.ServingIndex.from_table(table, max_staleness_s=3600.0)
    table.add(rows(unit_vectors(1, 25), start=101))
    lazy.search(target, 1)  # within the interval: no check
    assert not lazy.is_current(table)
    with pytest.raises(ann.StaleIndexError):
        lazy.search(target, 1)


def test_serving_index_rejects_bad_requests(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(40, 26)))
    serving = ann.ServingIndex.from_table(table)
    with pytest.raises(ann.VectorIndexError, match="k=41"):
        serving.search(unit_vectors(1, 1), 41)
    with pytest.raises(ann.VectorIndexError, match="shape"):
        serving.search(np.ones((1, 3), np.float32), 2)
    with pytest.raises(ann.VectorIndexError, match="too few"):
        ann.ServingIndex.from_table(table, SMALL)


# -- maintain ------------------------------------------------------------------------------------
def test_maintain_compacts_and_prunes_versions(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(100, 27)))
    for i in range(4):
        table.add(rows(unit_vectors(10, 28 + i), start=100 + 10 * i))
    assert len(table.list_versions()) == 5
    out = ann.maintain(table, older_than=timedelta(0))
    assert out["versions_before"] == 5 and out["versions_after"] == 1
    assert out["versions_pruned"] >= 4
    assert out["fragments_before"] == 5 and out["fragments_after"] == 1
    assert out["rows_before"] == out["rows_after"] == 140
    assert out["index_action"] == "skipped" and out["version_after"] == table.version
    assert len(table.list_versions()) == 1
    q = unit_vectors(1, 40)
    assert ann.lance_search(table, q, 3)[0].height == 3

    # the default keeps a week of versions
    table.add(rows(unit_vectors(5, 41), start=140))
    kept = ann.maintain(table)
    assert kept["versions_pruned"] == 0 and kept["versions_after"] >= 2

    with pytest.raises(ann.VectorIndexError, match="older_than"):
        ann.maintain(table, older_than=timedelta(days=-1))


def test_maintain_folds_deferred_rows_into_the_index(db):
    table = db.create_table("galaxy_index", rows(unit_vectors(4000, 42)))
    ann.ensure_vector_index(table, params=SMALL)
    table.add(rows(unit_vectors(100, 43), start=4000))
    assert ann.ensure_vector_index(table, params=SMALL)["action"] == "deferred"
    out = ann.maintain(table)
    assert out["rows_unindexed_before"] == 100 and out["rows_unindexed_after"] == 0
    assert out["index_action"] == "deferred"  # left to optimize, which folded the rows in
    with pytest.raises(ann.VectorIndexError, match="older_than"):
        ann.maintain(table, older_than=timedelta(days=-1))
