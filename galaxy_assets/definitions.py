"""The one Definitions object that workspace.yaml (and ``dagster dev``) loads."""

import dagster as dg

from galaxy_assets.defs.captioning import (
    caption_embeddings,
    caption_sample,
    captions_job,
    vlm_captions,
)
from galaxy_assets.defs.resources import default_resources
from galaxy_assets.defs.survey import raw_cutouts, survey_job, survey_shards_sensor

defs = dg.Definitions(
    assets=[raw_cutouts, caption_sample, vlm_captions, caption_embeddings],
    jobs=[survey_job, captions_job],
    sensors=[survey_shards_sensor],
    resources=default_resources(),
)
