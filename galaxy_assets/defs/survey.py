"""Survey assets: the shard sensor and the per-shard ``raw_cutouts`` manifest."""

import dagster as dg
import polars as pl

from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import HomeResource, SurveyResource
from galaxy_assets.survey.checks import (
    check_consistency,
    check_finite,
    check_schema,
    check_unique_across_shards,
)
from galaxy_assets.survey.manifest import build_manifest
from galaxy_assets.tables import to_markdown

RAW_CUTOUTS_CHECKS = [
    dg.AssetCheckSpec(name, asset="raw_cutouts", blocking=True, description=desc)
    for name, desc in (
        ("manifest_schema", "The manifest matches the pandera schema"),
        ("finite_pixels", "Few galaxies have NaN/inf pixels"),
        ("bands_and_shape", "All galaxies carry the configured bands and one cutout shape"),
        ("unique_object_ids", "No object_id appears in another shard's manifest"),
    )
]


@dg.asset(
    partitions_def=shard_partitions,
    check_specs=RAW_CUTOUTS_CHECKS,
    group_name="survey",
    kinds={"polars", "hdf5"},
)
def raw_cutouts(
    context: dg.AssetExecutionContext, home: HomeResource, survey: SurveyResource
):
    """One row per galaxy of the shard: object_id, sky position, HEALPix cell, fluxes,
    bands, cutout shape, non-finite pixel fraction, shard URI and row. Pixels stay in
    the shard file. Galaxies that cannot be used are recorded in the metadata and skipped."""
    h = home.home()
    key = context.partition_key
    path = survey.locate(h, key)
    with survey.open(path) as reader:
        result = build_manifest(reader, key, progress=None)
    frame = result.frame
    rejects_path = h.parquet / "raw_cutouts_rejected" / f"{key}.parquet"
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    rejects = pl.DataFrame(
        result.rejected, schema={"object_id": pl.Utf8, "row": pl.Int64, "reason": pl.Utf8}
    )
    rejects.write_parquet(rejects_path)
    others = [
        p for p in (h.parquet / "raw_cutouts").glob("*.parquet") if p.stem != key
    ] if (h.parquet / "raw_cutouts").exists() else []
    outcomes = [
        check_schema(frame),
        check_finite(frame),
        check_consistency(frame, survey.bands),
        check_unique_across_shards(frame, key, others),
    ]
    yield dg.Output(
        frame,
        metadata={
            "shard_uri": dg.MetadataValue.path(str(path)),
            "galaxies": frame.height,
            "rejected": len(result.rejected),
            "rejected_table": dg.MetadataValue.path(str(rejects_path)),
            "rejected_sample": dg.MetadataValue.md(
                to_markdown(rejects) if rejects.height else "No galaxy was rejected."
            ),
            "bands": ",".join(survey.bands),
            "preview": dg.MetadataValue.md(to_markdown(frame, max_rows=5)),
        },
    )
    for outcome in outcomes:
        yield dg.AssetCheckResult(
            check_name=outcome.name,
            passed=outcome.passed,
            description=outcome.description,
            metadata=outcome.metadata,
            severity=dg.AssetCheckSeverity.ERROR,
        )


@dg.sensor(
    name="survey_shards_sensor",
    asset_selection=[raw_cutouts],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a survey_shards partition for every new shard file under the survey "
    "roots and requests its raw_cutouts.",
)
def survey_shards_sensor(
    context: dg.SensorEvaluationContext, home: HomeResource, survey: SurveyResource
):
    found = survey.discover(home.home())
    existing = set(context.instance.get_dynamic_partitions(shard_partitions.name))
    new = sorted(set(found) - existing)
    if not new:
        return dg.SkipReason(f"no new shards ({len(found)} known under {survey.roots or 'the mock survey'})")
    context.log.info("found %d new shard(s): %s", len(new), new[:10])
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=f"raw_cutouts:{k}") for k in new],
        dynamic_partitions_requests=[shard_partitions.build_add_request(new)],
    )


survey_job = dg.define_asset_job(
    "survey_job", selection=[raw_cutouts], partitions_def=shard_partitions,
    description="Build the raw_cutouts manifest of one shard.",
)
