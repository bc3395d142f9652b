"""The one Definitions object that workspace.yaml (and ``dagster dev``) loads."""
# ruff: noqa: E402  (the process settings below must precede the imports)

import os

# Run workers import this module before torch loads OpenMP. With the default (active)
# wait policy, idle OpenMP threads spin and two runs on a small CPU slow each other down
# several-fold (benchmarks/RESULTS.md, morphology training); a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import warnings

# Per-shard assets use BackfillPolicy (beta in Dagster 1.13) to batch backfills into one run.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`")

import dagster as dg

from galaxy_assets.defs.alignment import (
    aligned_model,
    image_embeddings,
    search_vectors,
)
from galaxy_assets.defs.captioning import (
    caption_embeddings,
    caption_sample,
    captions_job,
    vlm_captions,
)
from galaxy_assets.defs.emulator import property_emulator, property_posteriors
from galaxy_assets.defs.evaluation import evaluation_job, search_evaluation
from galaxy_assets.defs.execution import default_executor
from galaxy_assets.defs.morphology import morphology_encoder, morphology_predictions
from galaxy_assets.defs.morphology_reports import (
    morphology_scaling_point,
    morphology_scaling_report,
    morphology_transfer_report,
)
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import default_resources
from galaxy_assets.defs.search import (
    galaxy_index,
    index_maintenance,
    index_maintenance_schedule,
    reindex_job,
    search_aligner_champion_sensor,
)
from galaxy_assets.defs.survey import (
    index_maintenance_job,
    ingest_shard_job,
    raw_cutouts,
    survey_job,
    survey_shards_sensor,
)

morphology_job = dg.define_asset_job(
    "morphology_job", selection=[morphology_encoder],
    description="Train the morphology encoder on Galaxy Zoo votes and register it.",
)
shard_embeddings_job = dg.define_asset_job(
    "shard_embeddings_job", selection=[morphology_predictions, image_embeddings],
    partitions_def=shard_partitions,
    description="Vote-fraction predictions and image embeddings of one shard.",
)
aligner_job = dg.define_asset_job(
    "aligner_job", selection=[aligned_model],
    description="Train and register the search aligner (projection heads).",
)
emulator_job = dg.define_asset_job(
    "emulator_job", selection=[property_emulator],
    description="Train the property emulator, evaluate its calibration, register it.",
)
posteriors_job = dg.define_asset_job(
    "posteriors_job", selection=[property_posteriors], partitions_def=shard_partitions,
    description="Posterior summaries of physical properties for one shard (or a range).",
)
index_job = dg.define_asset_job(
    "index_job", selection=[search_vectors, galaxy_index], partitions_def=shard_partitions,
    description="Search vectors of one shard (or a range) and their galaxy_index rows.",
)

defs = dg.Definitions(
    assets=[
        raw_cutouts, caption_sample, vlm_captions, caption_embeddings,
        morphology_encoder, morphology_predictions, morphology_scaling_point,
        morphology_scaling_report, morphology_transfer_report,
        image_embeddings, aligned_model, search_vectors, galaxy_index, index_maintenance,
        search_evaluation, property_emulator, property_posteriors,
    ],
    jobs=[survey_job, captions_job, morphology_job, shard_embeddings_job, aligner_job,
          emulator_job, posteriors_job, index_job, reindex_job, ingest_shard_job,
          index_maintenance_job, evaluation_job],
    sensors=[survey_shards_sensor, search_aligner_champion_sensor],
    schedules=[index_maintenance_schedule],
    resources=default_resources(),
    executor=default_executor(),
)
