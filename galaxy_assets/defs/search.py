"""The searchable index: `galaxy_index` (LanceDB, upserted per shard), its upkeep, and the
automation that keeps it in step with new shards and new champion aligners."""

import time
from typing import Any

import dagster as dg
import polars as pl
import pyarrow.compute as pc
from dagster_polars import LazyFramePartitions

from galaxy_assets.defs.execution import shards_per_run
from galaxy_assets.defs.metadata import scalar_metadata
from galaxy_assets.defs.partitions import contiguous_ranges, shard_partitions
from galaxy_assets.defs.resources import HomeResource, MLflowResource, SearchIndexResource
from galaxy_assets.defs.shards import each_shard, read_input, settle
from galaxy_assets.search import ann
from galaxy_assets.search.table import (
    RowStats,
    build_shard_rows,
    ensure_indexes,
    indexed_shards,
    open_or_create_table,
    open_table,
    remove_shards,
    table_exists,
    table_version,
    upsert_shard,
)


@dg.asset(
    group_name="search", partitions_def=shard_partitions, pool="lancedb_writer",
    kinds={"lancedb"}, backfill_policy=dg.BackfillPolicy.single_run(),
    ins={"morphology_predictions": dg.AssetIn(metadata={"allow_missing_partitions": True}),
         "property_posteriors": dg.AssetIn(metadata={"allow_missing_partitions": True})},
)
def galaxy_index(
    context: dg.AssetExecutionContext, raw_cutouts: LazyFramePartitions,
    search_vectors: LazyFramePartitions, morphology_predictions: LazyFramePartitions,
    property_posteriors: LazyFramePartitions, vlm_captions: pl.DataFrame, home: HomeResource,
    search_index: SearchIndexResource,
) -> dg.MaterializeResult:
    """One row per galaxy (position, fluxes and magnitudes, caption, vote fractions, posterior
    summaries of physical properties as post_* columns, aligner version, search vector),
    upserted per shard with merge_insert on object_id in one commit per shard: a rerun never
    duplicates or loses rows, and a failed run leaves the previous version readable. Then the
    full-text and vector indexes are brought up to date. Each shard's inputs are read when
    its turn comes: a shard whose files are unreadable fails alone, and the others are
    indexed."""
    uri = search_index.location(home.home())
    state: dict[str, Any] = {"table": None}
    meta: dict[str, dict] = {}
    # the models behind the rows written: which aligner, encoder and emulator the index serves
    models: dict[str, set[str]] = {c: set() for c in ("aligner_version", "morphology_version",
                                                      "emulator_version")}

    def index(key: str) -> dict:
        rows_stats = RowStats()
        rows = build_shard_rows(
            key, read_input("raw_cutouts", raw_cutouts, key),
            read_input("search_vectors", search_vectors, key),
            read_input("morphology_predictions", morphology_predictions, key, required=False),
            vlm_captions,
            read_input("property_posteriors", property_posteriors, key, required=False),
            stats=rows_stats)
        if state["table"] is None:
            state["table"] = open_or_create_table(
                uri, rows.schema.field("vector").type.list_size, name=search_index.table)
        stats = upsert_shard(state["table"], key, rows)
        for column, seen in models.items():
            if column in rows.column_names:
                seen.update(str(v) for v in pc.unique(rows.column(column)).to_pylist() if v)
        context.log.info(f"{key}: {stats.n_inserted} inserted, {stats.n_updated} updated, "
                         f"{stats.n_deleted} removed, {stats.n_skipped} skipped → v{stats.version}")
        record = {**stats.as_metadata(), **{
            k: v for k, v in rows_stats.as_metadata().items() if k.startswith("n_") and k not in (
                "n_rows",)}}
        meta[key] = {k: v for k, v in record.items() if k != "skipped_object_ids"}
        return record

    built, failed = each_shard(context, index)
    table = state["table"]
    if table is not None:  # the shards upserted are served with fresh indexes either way
        indexes = {**ensure_indexes(table), "vector": ann.ensure_vector_index(table)}
    if failed:
        settle(context, built, failed, meta)  # records the upserted shards, then fails
    upserts = list(built.values())
    per_shard = pl.DataFrame(upserts).drop("skipped_object_ids", strict=False)
    return dg.MaterializeResult(metadata={
        "table_version": table_version(table), "table_uri": uri, "rows": table.count_rows(),
        "shards": len(upserts),
        **{column: ", ".join(sorted(seen)) or "none" for column, seen in models.items()},
        "inserted": int(per_shard["n_inserted"].sum()), "updated": int(per_shard["n_updated"].sum()),
        "removed": int(per_shard["n_deleted"].sum()), "skipped": int(per_shard["n_skipped"].sum()),
        "upserts": dg.MetadataValue.md(_markdown(per_shard)),
        "without_vector": int(per_shard["n_without_vector"].sum()),
        "captioned": int(per_shard["n_captioned"].sum()),
        "indexes": dg.MetadataValue.json(_jsonable(indexes)),
    })


@dg.asset(group_name="search", deps=[galaxy_index], pool="lancedb_writer", kinds={"lancedb"})
def index_maintenance(
    context: dg.AssetExecutionContext, home: HomeResource, search_index: SearchIndexResource,
) -> dg.MaterializeResult:
    """Removes the rows of shards that are no longer partitions (their files disappeared),
    compacts the table, folds new rows into the vector and full-text indexes, and prunes
    versions older than a week."""
    table = open_table(search_index.location(home.home()), name=search_index.table)
    known = set(context.instance.get_dynamic_partitions(shard_partitions.name))
    gone = sorted(set(indexed_shards(table)) - known)
    removed = remove_shards(table, gone) if gone else {"n_deleted": 0}
    if gone:
        context.log.warning(f"removed {removed['n_deleted']} rows of vanished shards {gone[:10]}")
    upkeep = ann.maintain(table)
    fts = ensure_indexes(table)
    return dg.MaterializeResult(metadata={
        "table_version": table_version(table), "rows": table.count_rows(),
        "vanished_shards": len(gone), "rows_removed": int(removed["n_deleted"]),
        "maintenance": dg.MetadataValue.json(_jsonable(upkeep)),
        "indexes": dg.MetadataValue.json(_jsonable(fts)),
        **scalar_metadata(upkeep),
    })


@dg.schedule(
    name="index_maintenance_nightly", target=index_maintenance, cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly upkeep of galaxy_index: compaction, index refresh, version pruning "
    "(skipped while there is no index yet).",
)
def index_maintenance_schedule(
    context: dg.ScheduleEvaluationContext, home: HomeResource, search_index: SearchIndexResource
):
    from galaxy_assets.search.table import connect

    db = connect(search_index.location(home.home()))
    if not table_exists(db, search_index.table):
        return dg.SkipReason(f"no {search_index.table!r} table yet: nothing to maintain")
    return dg.RunRequest()

reindex_job = dg.define_asset_job(
    "reindex_job", selection=dg.AssetSelection.assets("search_vectors", "galaxy_index"),
    partitions_def=shard_partitions,
    description="Recompute search vectors with the served aligner and upsert them into "
    "galaxy_index (a partition range runs in one run: the aligner is loaded once).",
)


# re-index runs the champion sensor requests for one champion before it gives up and says so
MAX_REINDEX_ATTEMPTS = 3
_RUN_IN_FLIGHT = {
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
}


@dg.sensor(
    name="search_aligner_champion_sensor", job=reindex_job, minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-indexes every shard with image embeddings (one run per contiguous range "
    "of them) when the MLflow alias search-aligner@<served alias> moves to another version, "
    "and again when a run failed and the index does not serve the champion (at most "
    f"{MAX_REINDEX_ATTEMPTS} rounds).",
)
def search_aligner_champion_sensor(
    context: dg.SensorEvaluationContext, home: HomeResource, mlflow: MLflowResource,
    search_index: SearchIndexResource,
):
    alias = search_index.aligner_alias
    mv = mlflow.tracker(home.home()).get_alias_version("search-aligner", alias)
    if mv is None:
        return dg.SkipReason(f"search-aligner has no '{alias}' alias yet")
    version = str(mv.version)
    state = _sensor_state(context.cursor)
    runs = [_run_of_key(context.instance, k) for k in _run_keys(state)]
    succeeded = bool(runs) and all(
        r is not None and r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    if state.get("version") == version and (state.get("served") or succeeded):
        # acted on already, and its re-index (if any) succeeded: no need to read the table
        # on every tick
        return dg.SkipReason(f"search-aligner@{alias} is still version {version}")
    keys = context.instance.get_dynamic_partitions(shard_partitions.name)
    served = _served_versions(home, search_index)
    if not keys or served == {f"search-aligner/v{version}"}:
        if state.get("version") == version:
            return dg.SkipReason(f"search-aligner@{alias} is still version {version}")
        # "served" lets the next ticks skip without reading the table
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"search-aligner@{alias} = v{version}; "
            + ("no shards yet" if not keys else "the index already serves it")),
            cursor=_dump_state({"version": version, "served": bool(keys)}))
    attempts = 0
    if state.get("version") == version:
        # a re-index was requested for this champion, and the index does not serve it (yet)
        busy = _reindex_in_flight(context.instance)  # also one the cursor does not name
        if busy is not None:
            return dg.SkipReason(f"re-indexing for search-aligner@{alias} = v{version}: run "
                                 f"{busy.run_id} is {busy.status.value.lower()}")
        attempts = int(state.get("attempts", 1))
        last = ", ".join(f"{r.run_id} {r.status.value}" if r else "not found" for r in runs)
        if attempts >= MAX_REINDEX_ATTEMPTS:
            return dg.SkipReason(
                f"the index serves {sorted(served) or 'nothing'}, not search-aligner/v{version}"
                f", after {attempts} re-index rounds (the last: {last or 'none'}); fix the "
                "cause in those runs' logs and launch reindex_job over every shard")
        context.log.warning(f"the re-index to v{version} did not finish ({last or 'no run'});"
                            f" the index serves {sorted(served)}: asking again")
    # a range covers every partition between its ends, and one shard without outputs (its
    # checks failed, its ingest is queued) would fail the whole run: only shards with a
    # manifest and image embeddings, in runs of consecutive ones
    out = home.outputs_dir()
    ready = [k for k in keys if (out / "raw_cutouts" / f"{k}.parquet").exists()
             and (out / "image_embeddings" / f"{k}.parquet").exists()]
    if len(ready) < len(keys):
        context.log.warning(f"{len(keys) - len(ready)} shard(s) have no image embeddings yet "
                            f"and are left out (e.g. {sorted(set(keys) - set(ready))[:3]})")
    if not ready:
        return dg.SkipReason(f"search-aligner@{alias} = v{version}, but no shard has image "
                             "embeddings to re-index (materialize shard_embeddings_job)")
    # under the cluster profile, runs of at most cluster.shards_per_run shards: one run over
    # every shard holds all their vectors twice (search_vectors' outputs, galaxy_index's inputs)
    ranges = contiguous_ranges(context.instance, ready, shards_per_run())
    context.log.info(f"search-aligner@{alias} → v{version}: re-indexing {len(ready)} shard(s) "
                     f"in {len(ranges)} run(s)")
    # a run key naming only the version would be one the daemon has seen after a rollback
    # (v1 → v2 → v1), and that re-index would never run
    previous = state.get("version") or "none"
    stamp = time.time_ns()
    requests = [
        dg.RunRequest(run_key=f"reindex:{alias}:v{previous}->v{version}:{stamp}:{i}",
                      tags={"dagster/asset_partition_range_start": first,
                            "dagster/asset_partition_range_end": last})
        for i, (first, last) in enumerate(ranges)
    ]
    return dg.SensorResult(
        run_requests=requests,
        cursor=_dump_state({"version": version, "run_keys": [r.run_key for r in requests],
                            "attempts": attempts + 1}),
    )


def _sensor_state(cursor: str | None) -> dict:
    """The champion sensor's cursor: the champion version it last acted on, the run key it
    requested and how many runs it requested for that version (an older cursor is the bare
    version)."""
    import json

    if not cursor:
        return {}
    try:
        state = json.loads(cursor)
    except ValueError:
        return {"version": cursor}
    return state if isinstance(state, dict) else {"version": str(state)}


def _run_keys(state: dict) -> list[str]:
    """The run keys of the cursor's last re-index round (older cursors name one)."""
    keys = state.get("run_keys")
    if keys is None:
        keys = [state["run_key"]] if state.get("run_key") else []
    return [str(k) for k in keys]


def _dump_state(state: dict) -> str:
    import json

    return json.dumps(state, sort_keys=True)


def _reindex_in_flight(instance: dg.DagsterInstance):
    """A reindex_job run that is queued or running, or None."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=reindex_job.name, statuses=list(_RUN_IN_FLIGHT)), limit=1
    )
    return runs[0] if runs else None


def _run_of_key(instance: dg.DagsterInstance, run_key: str | None):
    if not run_key:
        return None
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
    return runs[0] if runs else None


def _served_versions(home: HomeResource, search_index: SearchIndexResource) -> set[str]:
    from galaxy_assets.search.table import column_counts, connect

    db = connect(search_index.location(home.home()))
    if not table_exists(db, search_index.table):
        return set()
    return set(column_counts(db.open_table(search_index.table), "aligner_version"))


def _markdown(frame: pl.DataFrame) -> str:
    from galaxy_assets.tables import to_markdown

    return to_markdown(frame, max_rows=50) if frame.height else "nothing written"


def _jsonable(value):
    import json

    return json.loads(json.dumps(value, default=str))
