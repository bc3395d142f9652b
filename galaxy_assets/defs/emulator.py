"""Property emulator assets: the transformer + diffusion-head model (`property_emulator`) and
per-shard posteriors of physical properties (`property_posteriors`), which `galaxy_index`
joins as filterable `post_*` columns."""

import dagster as dg
import polars as pl
from dagster_polars import DataFramePartitions, LazyFramePartitions

from galaxy_assets.defs.execution import gpu_step, shard_backfill_policy
from galaxy_assets.defs.metadata import png_metadata, scalar_metadata
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import ComputeResource, HomeResource, MLflowResource
from galaxy_assets.defs.shards import each_shard, read_input, settle
from galaxy_assets.emulator.data import SURVEY_LABELS
from galaxy_assets.emulator.pipeline import (
    EmulatorRunConfig,
    serving_emulator,
    shard_flux_errors,
    shard_posteriors,
    train_evaluate_register,
    training_table,
)

ALL = dg.AssetIn(partition_mapping=dg.AllPartitionMapping(),
                 metadata={"allow_missing_partitions": True})
SAME_SHARD = dg.AssetIn(metadata={"allow_missing_partitions": True})
# sersic_n is left out of the default gate: 70% of the mock's galaxies are pure exponential
# disks (n = 1 exactly), a point mass whose interval coverage no continuous posterior can hit.
GATE_LABELS = ["redshift", "log_stellar_mass", "half_light_radius_arcsec"]


class PropertyEmulatorConfig(dg.Config):
    table: str = ""  # a user Parquet to train on instead of the survey catalogue
    table_config: str = ""  # its column roles (YAML path, or a shipped example name)
    labels_table: str = ""  # survey labels from a catalogue (object_id or ra/dec), not truth
    labels: list[str] = list(SURVEY_LABELS)
    match_radius_arcsec: float = 1.0
    labels_ra_column: str = "ra"  # labels_table's RA/Dec columns (degrees) to match on
    labels_dec_column: str = "dec"
    n_components: int = 8  # image-embedding principal components used as inputs
    epochs: int = 200
    batch_size: int = 256
    patience: int = 30
    time_budget_s: float = 300.0
    d_model: int = 64
    n_layers: int = 3
    eval_samples: int = 500
    eval_rows: int = 1500
    tolerance: float = 0.03  # champion: coverage within this of nominal (or ≥ the baseline)
    gate_labels: list[str] = GATE_LABELS  # those the table has; none of them: every label
    seed: int = 0

    def run_config(self) -> EmulatorRunConfig:
        """The pipeline's settings: every field by name, the model's sizes as ``model``."""
        return EmulatorRunConfig(
            **self.model_dump(exclude={"d_model", "n_layers", "gate_labels"}),
            model={"d_model": self.d_model, "n_layers": self.n_layers},
            gate_labels=self.gate_labels or None,
        )


@dg.asset(group_name="emulator", **gpu_step(), kinds={"pytorch", "mlflow"},
          ins={"raw_cutouts": ALL, "morphology_predictions": ALL, "image_embeddings": ALL})
def property_emulator(
    context: dg.AssetExecutionContext, config: PropertyEmulatorConfig,
    raw_cutouts: DataFramePartitions, morphology_predictions: DataFramePartitions,
    image_embeddings: DataFramePartitions, home: HomeResource, compute: ComputeResource,
    mlflow: MLflowResource,
) -> pl.DataFrame:
    """Trains the property emulator (transformer over catalogue tokens, DDPM head, Gaussian
    baseline head) on photometry, vote fractions and image-embedding PCs with the mock truth
    table's redshift, stellar mass, size and Sérsic index as labels (a real survey: labels
    from `labels_table`, or train on a user table);
    scores both heads on held-out rows for four input subsets; registers
    `property-emulator` and moves `champion` only when the diffusion head is calibrated."""
    h = home.home()
    run_cfg = config.run_config()
    table = training_table(run_cfg, list(raw_cutouts.values()),
                           predictions=list((morphology_predictions or {}).values()),
                           embeddings=list((image_embeddings or {}).values()))
    context.log.info(f"emulator table: {table.summary()}")
    outcome = train_evaluate_register(
        mlflow.tracker(h), table, run_cfg, device=compute.torch_device(),
        figure_dir=h.reports, progress=lambda r: context.log.debug(f"emulator epoch: {r}"),
        tags={"dagster_run_id": context.run_id},
    )
    metadata = {**scalar_metadata(outcome.metadata()),
                "calibration": dg.MetadataValue.md(outcome.report.markdown())}
    for name, path in outcome.figures.items():
        metadata.update(png_metadata(path, key=name))
    context.add_output_metadata(metadata)
    reg = outcome.registration
    return pl.DataFrame([{"name": reg.name, "version": reg.version,
                          "alias": reg.alias if reg.promoted else "", "run_id": reg.run_id,
                          "gate": reg.reason}])


class PropertyPosteriorsConfig(dg.Config):
    n_samples: int = 1000  # posterior draws per galaxy and label
    alias: str = "champion"
    seed: int = 0


@dg.asset(group_name="emulator", partitions_def=shard_partitions, **gpu_step(),
          deps=["property_emulator"], kinds={"pytorch", "polars"},
          backfill_policy=shard_backfill_policy(),
          ins={"morphology_predictions": SAME_SHARD, "image_embeddings": SAME_SHARD})
def property_posteriors(
    context: dg.AssetExecutionContext, config: PropertyPosteriorsConfig,
    raw_cutouts: LazyFramePartitions, morphology_predictions: LazyFramePartitions,
    image_embeddings: LazyFramePartitions, home: HomeResource, compute: ComputeResource,
    mlflow: MLflowResource,
) -> DataFramePartitions:
    """For every galaxy of the shard(s) and every label: posterior median, 16th and 84th
    percentiles and a multimodality flag, from `property-emulator@champion` (before any
    version passed the gate: the newest version, said so in the metadata). Until an
    emulator is registered (a real survey without a training table) every shard gets an
    empty frame, so new shards still reach the index."""
    serving = serving_emulator(mlflow.tracker(home.home()), config.alias,
                               device=compute.torch_device(), required=False)
    out: dict[str, pl.DataFrame] = {}
    if serving is None:
        context.log.warning("no property-emulator is registered yet: no posteriors "
                            "(materialize property_emulator)")
        empty = pl.DataFrame(schema={"object_id": pl.Utf8})
        for key in context.partition_keys:
            out[key] = empty
            context.add_asset_metadata({"galaxies": 0, "emulator_version": "none"},
                                       partition_key=key)
        return out
    meta: dict[str, dict] = {}

    def posteriors(key: str) -> pl.DataFrame:
        manifest = read_input("raw_cutouts", raw_cutouts, key)
        frame, summary = shard_posteriors(
            serving, manifest,
            predictions=read_input("morphology_predictions", morphology_predictions, key,
                                   required=False),
            embeddings=read_input("image_embeddings", image_embeddings, key, required=False),
            flux_errors=shard_flux_errors(manifest), n_samples=config.n_samples,
            seed=config.seed)
        meta[key] = {**scalar_metadata(summary.metadata()),
                     "emulator_version": serving.emulator_version,
                     "emulator_source": serving.source}
        return frame

    built, failed = each_shard(context, posteriors)
    out = settle(context, built, failed, meta,
                 outputs=home.outputs_dir() / "property_posteriors")
    context.log.info(f"posteriors of {sum(f.height for f in out.values())} galaxies from "
                     f"{serving.emulator_version} ({serving.source})")
    return out
