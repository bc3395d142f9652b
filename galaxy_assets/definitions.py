"""The one Definitions object that workspace.yaml (and ``dagster dev``) loads."""

import dagster as dg

from galaxy_assets.defs.resources import default_resources
from galaxy_assets.defs.survey import raw_cutouts, survey_job, survey_shards_sensor

defs = dg.Definitions(
    assets=[raw_cutouts],
    jobs=[survey_job],
    sensors=[survey_shards_sensor],
    resources=default_resources(),
)
