"""Morphology assets: the Galaxy-Zoo-vote-pretrained encoder and its per-shard predictions."""

import dagster as dg
import polars as pl
from dagster_polars import DataFramePartitions, LazyFramePartitions

from galaxy_assets.defs.execution import gpu_step, shard_backfill_policy
from galaxy_assets.defs.metadata import all_manifests, figure_metadata, scalar_metadata
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import (
    ComputeResource,
    HomeResource,
    MLflowResource,
    SurveyResource,
)
from galaxy_assets.defs.shards import each_shard, read_input, settle
from galaxy_assets.morphology.data import votes_from_catalogue, votes_from_truth
from galaxy_assets.morphology.model import DEFAULT_PRESET
from galaxy_assets.morphology.predict import load_encoder, predict_shard
from galaxy_assets.morphology.train import TrainConfig, register_encoder, train_morphology

ALL_SHARDS = dg.AssetIn(
    key="raw_cutouts",
    partition_mapping=dg.AllPartitionMapping(),
    metadata={"allow_missing_partitions": True},
)


class MorphologyTrainConfig(dg.Config):
    preset: str = DEFAULT_PRESET
    epochs: int = TrainConfig.epochs
    batch_size: int = 64
    time_budget_s: float = 240.0
    seed: int = 0
    vote_catalogue: str = ""  # empty: the mock survey's simulated votes


@dg.asset(group_name="morphology", ins={"raw_cutouts": ALL_SHARDS}, **gpu_step(),
          kinds={"pytorch", "mlflow"})
def morphology_encoder(
    context: dg.AssetExecutionContext, config: MorphologyTrainConfig,
    raw_cutouts: DataFramePartitions, home: HomeResource, compute: ComputeResource,
    mlflow: MLflowResource, survey: SurveyResource,
) -> pl.DataFrame:
    """Trains an encoder on Galaxy Zoo vote counts (Dirichlet-Multinomial loss per question),
    registers a version of `morphology-encoder`, and moves `champion` only when its held-out
    loss beats the current champion's on the same galaxies."""
    manifest = all_manifests(raw_cutouts, "morphology_encoder")
    h = home.home()
    votes = (votes_from_catalogue(config.vote_catalogue, manifest) if config.vote_catalogue
             else votes_from_truth(manifest))
    train_config = TrainConfig(
        preset=config.preset, epochs=config.epochs, batch_size=config.batch_size,
        bands=tuple(survey.bands),
        image_size=survey.cutout_size or int(manifest["height"].min()),
        time_budget_s=config.time_budget_s, seed=config.seed,
        device=compute.torch_device(), dtype=compute.dtype,
    )
    result = train_morphology(
        votes, train_config,
        callback=lambda info: context.log.info(f"morphology training: {info}"),
    )
    reg = register_encoder(mlflow.tracker(h), result, device=compute.torch_device())
    metadata = {
        **scalar_metadata(result.metrics), **scalar_metadata(reg.metadata()),
        **scalar_metadata({f"votes_{k}": v for k, v in votes.summary().items()}),
        "epochs_max": config.epochs,
        "summary": dg.MetadataValue.md(result.summary_markdown()),
    }
    if result.figure is not None:
        metadata.update(figure_metadata(result.figure, h.reports / f"morphology_v{reg.version}.png"))
    context.add_output_metadata(metadata)
    return pl.DataFrame([{"name": "morphology-encoder", "version": reg.version,
                          "alias": reg.alias if reg.promoted else "", "run_id": reg.run_id,
                          "val_loss": float(result.metrics["val_loss"])}])


@dg.asset(group_name="morphology", partitions_def=shard_partitions, **gpu_step(),
          deps=["morphology_encoder"], kinds={"pytorch", "polars"},
          backfill_policy=shard_backfill_policy())
def morphology_predictions(
    context: dg.AssetExecutionContext, raw_cutouts: LazyFramePartitions, home: HomeResource,
    compute: ComputeResource, mlflow: MLflowResource,
) -> DataFramePartitions:
    """Expected Galaxy Zoo vote fractions (p_smooth, p_featured, p_spiral, p_merger…) for every
    galaxy of the shard(s), from `morphology-encoder@champion` (loaded once per run). Until an
    encoder holds `champion` (a survey without a vote catalogue, searched with a timm or AION
    image encoder) every shard gets an empty frame, so new shards still reach the index."""
    tracker = mlflow.tracker(home.home())
    out: dict[str, pl.DataFrame] = {}
    if tracker.get_alias_version("morphology-encoder", "champion") is None:
        context.log.warning("no morphology-encoder@champion yet: no vote fractions "
                            "(materialize morphology_encoder, then these partitions again)")
        for key in context.partition_keys:
            out[key] = pl.DataFrame(schema={"object_id": pl.Utf8})
            context.add_asset_metadata({"galaxies": 0, "encoder_version": "none"},
                                       partition_key=key)
        return out
    model, version = load_encoder(tracker, "champion")
    meta: dict[str, dict] = {}

    def predict(key: str) -> pl.DataFrame:
        manifest = read_input("raw_cutouts", raw_cutouts, key)
        predictions = predict_shard(
            model, manifest["shard_uri"][0], rows=manifest["row"].to_list(),
            batch_size=compute.batch_size, device=compute.torch_device(), dtype=compute.dtype,
        )
        meta[key] = {"galaxies": predictions.height,
                     "encoder_version": f"morphology-encoder/v{version}"}
        return predictions.with_columns(
            pl.lit(f"morphology-encoder/v{version}").alias("encoder"))

    built, failed = each_shard(context, predict)
    return settle(context, built, failed, meta,
                  outputs=home.outputs_dir() / "morphology_predictions")
