"""The scaling-law sweep (one partition per labelled-set size x model size) and its report,
and the rare-class transfer report."""

import json

import dagster as dg
import polars as pl
from dagster_polars import DataFramePartitions

from galaxy_assets.defs.execution import gpu_step
from galaxy_assets.defs.metadata import all_manifests, figure_metadata, scalar_metadata
from galaxy_assets.defs.morphology import ALL_SHARDS
from galaxy_assets.defs.resources import (
    ComputeResource,
    HomeResource,
    MLflowResource,
    SurveyResource,
)
from galaxy_assets.morphology.data import votes_from_truth
from galaxy_assets.morphology.predict import load_encoder
from galaxy_assets.morphology.scaling import (
    DEFAULT_NS,
    DEFAULT_SIZES,
    ScalingPoint,
    run_scaling_point,
    scaling_report,
)
from galaxy_assets.morphology.train import TrainConfig, prepare_datasets
from galaxy_assets.morphology.transfer import TransferConfig, run_transfer
from galaxy_assets.tables import to_markdown

scaling_partitions = dg.MultiPartitionsDefinition({
    "n_labelled": dg.StaticPartitionsDefinition([str(n) for n in DEFAULT_NS]),
    "model_size": dg.StaticPartitionsDefinition(list(DEFAULT_SIZES)),
})


class ScalingPointConfig(dg.Config):
    epochs: int = 30
    min_steps: int = 300
    max_steps: int | None = None  # cap for smoke runs
    batch_size: int = 64
    seed: int = 0


@dg.asset(group_name="morphology", partitions_def=scaling_partitions,
          ins={"raw_cutouts": ALL_SHARDS}, **gpu_step(), kinds={"pytorch", "mlflow"})
def morphology_scaling_point(
    context: dg.AssetExecutionContext, config: ScalingPointConfig,
    raw_cutouts: DataFramePartitions, home: HomeResource, compute: ComputeResource,
    mlflow: MLflowResource, survey: SurveyResource,
) -> pl.DataFrame:
    """One point of the sweep: a model of the given size trained on N labelled galaxies
    (a nested subset of one fixed training split), early-stopped on one hash half of a fixed
    held-out split and scored on the other half."""
    keys = context.partition_key.keys_by_dimension
    manifest = all_manifests(raw_cutouts, "morphology_scaling_point")
    base = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                       max_steps=config.max_steps, bands=tuple(survey.bands),
                       image_size=survey.cutout_size or int(manifest["height"].min()),
                       device=compute.torch_device(), dtype=compute.dtype)
    train, val = prepare_datasets(votes_from_truth(manifest), base)
    n_labelled = int(keys["n_labelled"])
    if n_labelled > len(train):
        # The grid is fixed (partition keys must be), the survey is not: a point the survey
        # cannot supply is recorded as skipped, and the report says which were.
        reason = (f"N={n_labelled} exceeds the {len(train)} labelled galaxies of the training "
                  "split; simulate a larger survey (galaxy-assets simulate --n …) or point "
                  "the survey at more labelled shards to run this point")
        context.log.warning(f"scaling point skipped: {reason}")
        context.add_output_metadata({"skipped": True, "reason": reason})
        return pl.DataFrame([{"n_labelled": n_labelled, "model_size": keys["model_size"],
                              "val_loss": None, "point": ""}],
                            schema_overrides={"val_loss": pl.Float64})
    point = run_scaling_point(train, val, n_labelled, keys["model_size"], base,
                              min_steps=config.min_steps, seed=config.seed,
                              tracker=mlflow.tracker(home.home()))
    context.add_output_metadata({"val_loss": point.val_loss, "n_parameters": point.n_parameters,
                                 "n_labelled": point.n_labelled, "run_id": point.run_id or ""})
    return pl.DataFrame([{"n_labelled": point.n_labelled, "model_size": point.model_size,
                          "val_loss": point.val_loss, "point": json.dumps(point.to_dict())}])


@dg.asset(group_name="morphology", kinds={"polars"},
          ins={"morphology_scaling_point": dg.AssetIn(
              partition_mapping=dg.AllPartitionMapping(),
              metadata={"allow_missing_partitions": True})})
def morphology_scaling_report(
    context: dg.AssetExecutionContext, morphology_scaling_point: DataFramePartitions,
    home: HomeResource,
) -> pl.DataFrame:
    """Fits held-out loss = a·N^(−α) + c per model size (with uncertainties) over the sweep's
    points, with a log-log plot, a Markdown table and a verdict on whether size helps."""
    rows = pl.concat(list(morphology_scaling_point.values()), how="diagonal_relaxed")
    points = [ScalingPoint.from_dict(json.loads(p)) for p in rows["point"] if p]
    skipped = rows.filter(pl.col("point") == "").select("n_labelled", "model_size")
    if not points and skipped.height:
        sizes = sorted(set(skipped["n_labelled"].to_list()))
        raise dg.Failure(
            f"morphology_scaling_report: every point of the sweep was skipped: the survey's "
            f"training split has fewer labelled galaxies than each N of the grid ({sizes}); "
            "simulate a larger survey (galaxy-assets simulate --n …) or point the survey at "
            "more labelled shards, then run the sweep's partitions again")
    report = scaling_report(points)
    context.add_output_metadata({
        **scalar_metadata(report.metrics), "verdict": report.verdict,
        "skipped_points": dg.MetadataValue.md(to_markdown(skipped) if skipped.height else "none"),
        "report": dg.MetadataValue.md(report.markdown),
        **figure_metadata(report.figure, home.home().reports / "morphology_scaling.png"),
    })
    return report.table


class TransferReportConfig(dg.Config):
    label: str = "has_ring"  # or is_lens
    steps: int = 150
    seeds: list[int] = [0, 1, 2]


@dg.asset(group_name="morphology", ins={"raw_cutouts": ALL_SHARDS}, deps=["morphology_encoder"],
          **gpu_step(), kinds={"pytorch"})
def morphology_transfer_report(
    context: dg.AssetExecutionContext, config: TransferReportConfig,
    raw_cutouts: DataFramePartitions, home: HomeResource, compute: ComputeResource,
    mlflow: MLflowResource,
) -> pl.DataFrame:
    """Rare-class transfer with few labels: linear probe, finetuned top blocks and training
    from scratch at 1%, 10% and 100% of the labels, pretrained vs random-init encoders."""
    manifest = all_manifests(raw_cutouts, "morphology_transfer_report")
    model, _ = load_encoder(mlflow.tracker(home.home()), "champion")
    report = run_transfer(model, manifest, TransferConfig(
        label=config.label, steps=config.steps, seeds=tuple(config.seeds),
        device=compute.torch_device(), dtype=compute.dtype))
    context.add_output_metadata({
        **scalar_metadata(report.metrics), "verdict": report.verdict,
        "report": dg.MetadataValue.md(report.markdown),
        "summary": dg.MetadataValue.md(to_markdown(report.summary, 40)),
        **figure_metadata(report.figure, home.home().reports / f"transfer_{config.label}.png"),
    })
    return report.summary
