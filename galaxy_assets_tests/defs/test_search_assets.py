"""galaxy_index and its automation through Dagster: idempotent batched upserts, the IO
manager's shard batches, the new-shard and champion sensors, the maintenance schedule."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
from dagster import DagsterRunStatus

from galaxy_assets.alignment.model import CODE_REF
from galaxy_assets.defs.io import ShardParquetIOManager
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import (
    HomeResource,
    MLflowResource,
    SearchIndexResource,
    SurveyResource,
)
from galaxy_assets.defs.search import (
    galaxy_index,
    index_maintenance,
    index_maintenance_schedule,
    search_aligner_champion_sensor,
)
from galaxy_assets.defs.survey import survey_shards_sensor
from galaxy_assets.search.table import open_table
from galaxy_assets.tracking import Tracker
from galaxy_assets_tests.search.conftest import make_aligner, synthetic_shard_frames

KEYS = ["healpix=1__001-of-001", "healpix=2__001-of-001", "healpix=3__001-of-001"]
RANGE = {"dagster/asset_partition_range_start": KEYS[0],
         "dagster/asset_partition_range_end": KEYS[-1]}


def _write_upstream(base, n=20):
    """Stored outputs of the assets galaxy_index reads, as the IO manager writes them."""
    captions = []
    for i, key in enumerate(KEYS):
        frames = synthetic_shard_frames(n, key, seed=i, start=100 * i)
        for asset, frame in (("raw_cutouts", frames["manifest"]),
                             ("search_vectors", frames["vectors"]),
                             ("morphology_predictions", frames["predictions"])):
            (base / asset).mkdir(parents=True, exist_ok=True)
            frame.write_parquet(base / asset / f"{key}.parquet")
        captions.append(frames["captions"])
    pl.concat(captions).write_parquet(base / "vlm_captions.parquet")


def _resources(home):
    from galaxy_assets.defs.resources import default_resources

    return {**default_resources(), "home": HomeResource(root=str(home)),
            "search_index": SearchIndexResource(),
            "io_manager": ShardParquetIOManager(base_dir=str(home / "parquet"))}


def _assets():
    from galaxy_assets.definitions import defs

    return list(defs.assets)


def test_galaxy_index_upserts_a_shard_range_in_one_run_and_reruns_idempotently(isolated_home):
    _write_upstream(isolated_home / "parquet")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, KEYS)
        first = dg.materialize(_assets(), selection=[galaxy_index], instance=instance,
                               resources=_resources(isolated_home), tags=RANGE)
        assert first.success
        events = first.asset_materializations_for_node("galaxy_index")
        assert {e.partition for e in events} == set(KEYS)  # one run, three partitions
        meta = events[0].metadata
        assert meta["rows"].value == 60 and meta["inserted"].value == 60
        # which models the index serves, seen from the UI without opening the table
        stored = pl.from_arrow(open_table(isolated_home / "lancedb").to_arrow().select(
            ["aligner_version"]))["aligner_version"].unique().to_list()
        assert meta["aligner_version"].value == ", ".join(sorted(stored))
        assert {"morphology_version", "emulator_version"} <= set(meta)
        table = open_table(isolated_home / "lancedb")
        assert table.count_rows() == 60
        v1 = meta["table_version"].value

        # a rerun of one shard (single partition: the dict input still arrives as a dict)
        again = dg.materialize(_assets(), selection=[galaxy_index], instance=instance,
                               resources=_resources(isolated_home), partition_key=KEYS[1])
        meta = again.asset_materializations_for_node("galaxy_index")[0].metadata
        assert meta["inserted"].value == 0 and meta["updated"].value == 20
        assert meta["table_version"].value > v1
        table.checkout_latest()
        assert table.count_rows() == 60
        assert pl.from_arrow(table.to_arrow().select(["object_id"]))["object_id"].n_unique() == 60

        # a shard whose partition was deleted (its file vanished): maintenance drops its rows
        instance.delete_dynamic_partition(shard_partitions.name, KEYS[2])
        upkeep = dg.materialize(_assets(), selection=[index_maintenance], instance=instance,
                                resources=_resources(isolated_home))
        meta = upkeep.asset_materializations_for_node("index_maintenance")[0].metadata
        assert meta["vanished_shards"].value == 1 and meta["rows_removed"].value == 20
        table.checkout_latest()
        assert table.count_rows() == 40


def test_one_unreadable_shard_does_not_cost_the_others_their_index_rows(isolated_home):
    """A range run over three shards whose middle one's search vectors are corrupt: the other
    two are upserted and materialized, and the run fails naming the bad shard and file."""
    _write_upstream(isolated_home / "parquet")
    (isolated_home / "parquet" / "search_vectors" / f"{KEYS[1]}.parquet").write_bytes(b"junk")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, KEYS)
        result = dg.materialize(_assets(), selection=[galaxy_index], instance=instance,
                                resources=_resources(isolated_home), tags=RANGE,
                                raise_on_error=False)
        assert not result.success
        (failure,) = result.get_step_failure_events()
        message = failure.step_failure_data.error.message
        assert f"1 of 3 shard(s) failed ({KEYS[1]}: OSError: cannot read search_vectors" in \
            message
        assert "The other 2 are stored and materialized" in message
        done = instance.get_materialized_partitions(dg.AssetKey("galaxy_index"))
        assert done == {KEYS[0], KEYS[2]}
        table = open_table(isolated_home / "lancedb")
        shards = pl.from_arrow(table.to_arrow().select(["shard"]))["shard"]
        assert set(shards) == {KEYS[0], KEYS[2]} and table.count_rows() == 40


def test_a_new_shard_reaches_the_index_before_any_morphology_encoder(isolated_home):
    """A survey searched with a timm or AION encoder has no morphology-encoder@champion:
    morphology_predictions writes an empty frame instead of failing, so the ingest job's
    galaxy_index still runs."""
    _write_upstream(isolated_home / "parquet")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, KEYS)
        result = dg.materialize(_assets(), selection=["morphology_predictions", "galaxy_index"],
                                instance=instance, resources=_resources(isolated_home),
                                partition_key=KEYS[0], raise_on_error=False)
        assert result.success
        (pred,) = result.asset_materializations_for_node("morphology_predictions")
        assert pred.metadata["encoder_version"].value == "none"
        stored = pl.read_parquet(isolated_home / "parquet" / "morphology_predictions"
                                 / f"{KEYS[0]}.parquet")
        assert stored.height == 0
        assert result.asset_materializations_for_node("galaxy_index")
        assert open_table(isolated_home / "lancedb").count_rows() == 20


def test_maintenance_schedule_targets_index_maintenance(isolated_home):
    resources = {"home": HomeResource(root=str(isolated_home)),
                 "search_index": SearchIndexResource()}
    # before any index exists the nightly run is skipped (it failed every night)
    context = dg.build_schedule_context(resources=resources)
    skipped = index_maintenance_schedule.evaluate_tick(context)
    assert not skipped.run_requests and "nothing to maintain" in skipped.skip_message
    _write_upstream(isolated_home / "parquet")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, KEYS)
        dg.materialize(_assets(), selection=[galaxy_index], instance=instance,
                       resources=_resources(isolated_home), partition_key=KEYS[0])
    context = dg.build_schedule_context(resources=resources)
    request = index_maintenance_schedule.evaluate_tick(context).run_requests[0]
    assert index_maintenance_schedule.cron_schedule == "0 3 * * *"
    assert request.asset_selection in (None, [dg.AssetKey("index_maintenance")])
    # the job the schedule runs materializes index_maintenance, and nothing else
    from galaxy_assets.definitions import defs

    job = defs.resolve_job_def(index_maintenance_schedule.job_name)
    assert job.asset_layer.selected_asset_keys == {dg.AssetKey("index_maintenance")}


def _fake_shard(path, age_s: float = 600.0):
    import os
    import time

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89HDF\r\n\x1a\n")  # found by name; not read by the sensor
    stamp = time.time() - age_s  # settled: unchanged for longer than the sensor waits
    os.utime(path, (stamp, stamp))


def test_survey_sensor_adds_new_shards_and_removes_vanished_ones(isolated_home, tmp_path):
    root = tmp_path / "survey"
    for key in ("healpix=1", "healpix=2"):
        _fake_shard(root / key / "001-of-001.hdf5")
    resources = {"home": HomeResource(root=str(isolated_home)),
                 "survey": SurveyResource(roots=[str(root)])}
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        result = survey_shards_sensor(ctx)
        assert sorted(r.partition_key for r in result.run_requests) == KEYS[:2]
        assert {r.job_name for r in result.run_requests} == {"survey_job"}  # no aligner yet
        instance.add_dynamic_partitions(shard_partitions.name, KEYS[:2])

        (root / "healpix=2" / "001-of-001.hdf5").unlink()
        _fake_shard(root / "healpix=3" / "001-of-001.hdf5")
        result = survey_shards_sensor(dg.build_sensor_context(instance=instance,
                                                              resources=resources))
        jobs = sorted(r.job_name for r in result.run_requests)
        assert jobs == ["index_maintenance_job", "survey_job"]
        requests = result.dynamic_partitions_requests
        assert any(isinstance(r, dg.DeleteDynamicPartitionsRequest)
                   and r.partition_keys == [KEYS[1]] for r in requests)
        assert any(isinstance(r, dg.AddDynamicPartitionsRequest)
                   and r.partition_keys == [KEYS[2]] for r in requests)

        # a missing root must not read as "every shard vanished"
        missing = {**resources, "survey": SurveyResource(roots=[str(tmp_path / "unmounted")])}
        result = survey_shards_sensor(dg.build_sensor_context(instance=instance,
                                                              resources=missing))
        assert isinstance(result, dg.SkipReason)
        # nor an existing but empty one (an unmounted disk leaves its mount point)
        (tmp_path / "mnt").mkdir()
        empty = {**resources, "survey": SurveyResource(roots=[str(tmp_path / "mnt")])}
        result = survey_shards_sensor(dg.build_sensor_context(instance=instance,
                                                              resources=empty))
        assert isinstance(result, dg.SkipReason)


def test_survey_sensor_waits_for_copies_and_keys_runs_by_file_state(isolated_home, tmp_path):
    root = tmp_path / "survey"
    _fake_shard(root / "healpix=1" / "001-of-001.hdf5")
    _fake_shard(root / "healpix=2" / "001-of-001.hdf5", age_s=0)  # still being copied
    resources = {"home": HomeResource(root=str(isolated_home)),
                 "survey": SurveyResource(roots=[str(root)])}
    with dg.instance_for_test() as instance:
        result = survey_shards_sensor(dg.build_sensor_context(instance=instance,
                                                              resources=resources))
        (request,) = result.run_requests
        assert request.partition_key == KEYS[0]
        first_key = request.run_key
        assert first_key.startswith(f"survey_job:{KEYS[0]}:8-")  # size and mtime of the file
        # the same shard deleted and restored as another file runs again: a new run key
        instance.add_dynamic_partitions(shard_partitions.name, [KEYS[0]])
        instance.delete_dynamic_partition(shard_partitions.name, KEYS[0])
        (root / "healpix=1" / "001-of-001.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n-v2")
        _fake_shard(root / "healpix=2" / "001-of-001.hdf5")  # the copy has finished
        import os
        import time

        old = time.time() - 300
        os.utime(root / "healpix=1" / "001-of-001.hdf5", (old, old))
        result = survey_shards_sensor(dg.build_sensor_context(instance=instance,
                                                              resources=resources))
        keys = {r.partition_key: r.run_key for r in result.run_requests}
        assert set(keys) == set(KEYS[:2]) and keys[KEYS[0]] != first_key


def test_survey_sensor_runs_a_shard_moved_away_and_back(isolated_home, tmp_path):
    """`mv` keeps size and mtime: a shard that vanished and came back as the same file (and
    vanished again) gets new run keys, which the daemon does not skip as seen."""
    root = tmp_path / "survey"
    shard = root / "healpix=1" / "001-of-001.hdf5"
    _fake_shard(shard)
    _fake_shard(root / "healpix=2" / "001-of-001.hdf5")
    resources = {"home": HomeResource(root=str(isolated_home)),
                 "survey": SurveyResource(roots=[str(root)])}
    seen: set[str] = set()

    def tick(instance, cursor):
        result = survey_shards_sensor(dg.build_sensor_context(
            instance=instance, resources=resources, cursor=cursor))
        for request in result.dynamic_partitions_requests:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(shard_partitions.name, request.partition_keys)
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(shard_partitions.name, key)
        keys = [r.run_key for r in result.run_requests]
        assert seen.isdisjoint(keys), keys  # the daemon would skip these
        seen.update(keys)
        return result

    with dg.instance_for_test() as instance:
        first = survey_shards_sensor(dg.build_sensor_context(instance=instance,
                                                             resources=resources))
        result = tick(instance, None)  # the first tick, evaluated again: the same keys
        assert sorted(r.run_key for r in first.run_requests) == sorted(seen)
        aside = tmp_path / "aside.hdf5"
        for _ in range(2):
            shard.rename(aside)
            result = tick(instance, result.cursor)
            assert [r.job_name for r in result.run_requests] == ["index_maintenance_job"]
            aside.rename(shard)
            # a tick evaluated again before its cursor was saved (a daemon restart) repeats
            # its run keys, which the daemon then skips
            again = survey_shards_sensor(dg.build_sensor_context(
                instance=instance, resources=resources, cursor=result.cursor))
            result = tick(instance, result.cursor)
            assert [r.partition_key for r in result.run_requests] == [KEYS[0]]
            assert [r.run_key for r in again.run_requests] == \
                [r.run_key for r in result.run_requests]
        # a cursor made anew (reset) starts a new epoch, so the keys it makes are new
        import json

        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        survey_shards_sensor(ctx)
        epochs = [json.loads(c)["rounds"]["epoch"] for c in (result.cursor, ctx.cursor)]
        assert epochs[0] != epochs[1]
        assert all(f":{epochs[0]}." in key for key in seen if not key.startswith("vanished"))


def _register_champion(home) -> int:
    tracker = Tracker.from_home(type("H", (), {
        "mlflow_tracking_uri": f"sqlite:///{home}/mlflow/mlflow.db",
        "mlflow_artifacts": home / "mlflow" / "artifacts"})())
    model = make_aligner()
    with tracker.start_run("search-aligner") as run:
        path = run.log_torch_model("model", model.state_dict(), model.config_dict(), CODE_REF)
    version = tracker.register(run.run_id, path, "search-aligner")
    tracker.set_alias("search-aligner", "champion", version)
    return version


@pytest.mark.slow
def test_champion_sensor_reindexes_every_shard_once_per_new_champion(isolated_home):
    import json

    import lancedb
    import pyarrow as pa
    from dagster._core.test_utils import create_run_for_test

    resources = {"home": HomeResource(root=str(isolated_home)), "mlflow": MLflowResource(),
                 "search_index": SearchIndexResource()}

    def tick(instance, cursor=None):
        ctx = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
        return search_aligner_champion_sensor(ctx)

    def serve(*versions):  # the index's rows name these aligner versions
        db = lancedb.connect(str(isolated_home / "lancedb"))
        db.create_table("galaxy_index", pa.table({
            "object_id": [f"g{i}" for i in range(len(versions))],
            "aligner_version": list(versions)}), mode="overwrite")

    with dg.instance_for_test() as instance:
        skip = tick(instance)
        assert isinstance(skip, dg.SkipReason) and "no 'champion'" in skip.skip_message
        instance.add_dynamic_partitions(shard_partitions.name, KEYS)
        version = _register_champion(isolated_home)
        skip = tick(instance)  # nothing has image embeddings yet
        assert isinstance(skip, dg.SkipReason) and "no shard has image embeddings" in \
            skip.skip_message
        for asset in ("raw_cutouts", "image_embeddings"):
            for key in KEYS:
                path = isolated_home / "parquet" / asset / f"{key}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pl.DataFrame({"object_id": ["x"]}).write_parquet(path)
        # a shard in the middle without embeddings (its ingest is queued, its checks failed)
        # would fail a run over the whole range: two runs around it
        gap = isolated_home / "parquet" / "image_embeddings" / f"{KEYS[1]}.parquet"
        gap.rename(gap.with_suffix(".away"))
        split = tick(instance)
        assert [(r.tags["dagster/asset_partition_range_start"],
                 r.tags["dagster/asset_partition_range_end"]) for r in split.run_requests] == \
            [(KEYS[0], KEYS[0]), (KEYS[2], KEYS[2])]
        gap.with_suffix(".away").rename(gap)
        # under the cluster profile, runs of at most cluster.shards_per_run shards
        import galaxy_assets.defs.search as search_defs

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(search_defs, "shards_per_run", lambda: 2)
            chunked = tick(instance)
        assert [(r.tags["dagster/asset_partition_range_start"],
                 r.tags["dagster/asset_partition_range_end"]) for r in chunked.run_requests] == \
            [(KEYS[0], KEYS[1]), (KEYS[2], KEYS[2])]
        result = tick(instance)
        (request,) = result.run_requests
        assert request.tags == RANGE  # one run over every shard: the aligner loads once
        state = json.loads(result.cursor)
        assert state == {"version": str(version), "run_keys": [request.run_key], "attempts": 1}
        # the run is under way: wait for it
        run = create_run_for_test(instance, job_name="reindex_job", status=DagsterRunStatus.STARTED,
                                  tags={"dagster/run_key": request.run_key})
        skip = tick(instance, result.cursor)
        assert isinstance(skip, dg.SkipReason) and f"run {run.run_id} is started" in skip.skip_message
        # it failed half-way: the index serves two aligners, every query is refused; ask again
        instance.report_run_failed(run)
        serve(f"search-aligner/v{version}", "search-aligner/v0")
        again = tick(instance, result.cursor)
        (retry,) = again.run_requests
        assert retry.run_key != request.run_key and json.loads(again.cursor)["attempts"] == 2
        # ... until it gives up and says so
        state["attempts"] = 3
        skip = tick(instance, json.dumps(state))
        assert isinstance(skip, dg.SkipReason) and "after 3 re-index rounds" in skip.skip_message
        assert "launch reindex_job" in skip.skip_message
        # a re-index running that the cursor does not name (one started before an upgrade,
        # whose cursor was the bare version): wait for it too
        other = create_run_for_test(instance, job_name="reindex_job",
                                    status=DagsterRunStatus.STARTING)
        skip = tick(instance, str(version))
        assert isinstance(skip, dg.SkipReason) and f"run {other.run_id} is starting" in skip.skip_message
        instance.report_run_failed(other)
        # once the index serves the champion there is nothing to do
        serve(f"search-aligner/v{version}")
        skip = tick(instance, again.cursor)
        assert isinstance(skip, dg.SkipReason) and "still version" in skip.skip_message
        done = tick(instance, json.dumps({"version": "7"}))
        assert not done.run_requests and "already serves it" in done.skip_reason.skip_message
        # a rollback (v1 → v2 → v1) asks again with a run key the daemon has not seen
        serve("search-aligner/v99")
        back = tick(instance, "99")  # a cursor of older code: the bare version
        assert back.run_requests[0].run_key != request.run_key
        assert "v99->v" in back.run_requests[0].run_key


def test_search_evaluation_without_embeddings_says_what_to_materialize():
    from galaxy_assets.defs.evaluation import SearchEvaluationConfig, search_evaluation

    context = dg.build_asset_context()
    body = search_evaluation.op.compute_fn.decorated_fn
    with pytest.raises(dg.Failure, match="no image_embeddings partition is materialized; "
                       "materialize shard_embeddings_job"):
        list(body(context, SearchEvaluationConfig(), aligned_model=pl.DataFrame(),
                  image_embeddings={}, raw_cutouts={"a": pl.DataFrame()},
                  caption_embeddings=pl.DataFrame(), home=None, compute=None, mlflow=None,
                  text_embedder=None, search_index=None))
