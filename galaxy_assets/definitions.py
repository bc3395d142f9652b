"""The one Definitions object that workspace.yaml (and ``dagster dev``) loads."""

import os

# Run workers import this module before torch loads OpenMP. With the default (active)
# wait policy, idle OpenMP threads spin and two runs on a small CPU slow each other down
# several-fold (benchmarks/RESULTS.md, morphology training); a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dagster as dg  # noqa: E402

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
from galaxy_assets.defs.morphology import morphology_encoder, morphology_predictions
from galaxy_assets.defs.morphology_reports import (
    morphology_scaling_point,
    morphology_scaling_report,
    morphology_transfer_report,
)
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import default_resources
from galaxy_assets.defs.survey import raw_cutouts, survey_job, survey_shards_sensor

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
search_vectors_job = dg.define_asset_job(
    "search_vectors_job", selection=[search_vectors], partitions_def=shard_partitions,
    description="Aligned search vectors of one shard.",
)

defs = dg.Definitions(
    assets=[
        raw_cutouts, caption_sample, vlm_captions, caption_embeddings,
        morphology_encoder, morphology_predictions, morphology_scaling_point,
        morphology_scaling_report, morphology_transfer_report,
        image_embeddings, aligned_model, search_vectors,
    ],
    jobs=[survey_job, captions_job, morphology_job, shard_embeddings_job, aligner_job,
          search_vectors_job],
    sensors=[survey_shards_sensor],
    resources=default_resources(),
)
