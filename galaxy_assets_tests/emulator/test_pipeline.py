"""The graph steps of the emulator (pipeline.py): which table it trains on, which version
serves, and the clear errors when the survey cannot be used."""

from __future__ import annotations

import polars as pl
import pytest

from galaxy_assets.emulator import EmulatorConfigError, EmulatorDataError
from galaxy_assets.emulator.model import log_emulator
from galaxy_assets.emulator.pipeline import (
    EmulatorRunConfig,
    ServingEmulator,
    serving_emulator,
    shard_flux_errors,
    shard_posteriors,
    training_table,
)
from galaxy_assets_tests.emulator.conftest import gaussian_frame


def test_survey_training_table_joins_photometry_errors_and_truth(tiny_survey):
    table = training_table(EmulatorRunConfig(), tiny_survey.manifest)
    assert len(table) == tiny_survey.manifest.height
    assert set(table.labels) == {"redshift", "log_stellar_mass", "half_light_radius_arcsec",
                                 "sersic_n"}
    assert {"mag_r", "colour_g_r", "mag_err_r"} <= set(table.inputs)
    assert table.features is not None  # the survey recipe travels with the model
    errors = shard_flux_errors(tiny_survey.manifest)
    assert errors.height == tiny_survey.manifest.height
    assert (errors["flux_err_r"].drop_nulls() > 0).all()


def test_training_table_errors_name_the_fix(tiny_survey, tmp_path):
    with pytest.raises(EmulatorConfigError, match="table_config"):
        training_table(EmulatorRunConfig(table=str(tmp_path / "stars.parquet")))
    no_truth = tiny_survey.manifest.with_columns(
        pl.lit(str(tmp_path / "elsewhere.hdf5")).alias("shard_uri"))
    with pytest.raises(EmulatorDataError, match="truth table.*table_config"):
        training_table(EmulatorRunConfig(), no_truth)
    with pytest.raises(EmulatorDataError, match="raw_cutouts is empty"):
        training_table(EmulatorRunConfig(), [])


def test_user_table_with_roles_yaml(tmp_path):
    path = tmp_path / "table.parquet"
    gaussian_frame(50, seed=3).write_parquet(path)
    roles = tmp_path / "roles.yaml"
    roles.write_text("name: toy\nid_column: object_id\ninputs: [x]\nlabels: [y]\n")
    table = training_table(EmulatorRunConfig(table=str(path), table_config=str(roles)))
    assert table.inputs == ("x",) and table.labels == ("y",) and len(table) == 50
    assert table.features is None


def test_serving_falls_back_to_the_newest_version_and_user_models_refuse_shards(
    tracker, gaussian_model, tiny_survey
):
    assert serving_emulator(tracker, required=False) is None
    with pytest.raises(EmulatorConfigError, match="materialize property_emulator"):
        serving_emulator(tracker)
    with tracker.start_run("property-emulator") as run:
        path = log_emulator(run, gaussian_model.model)
    tracker.register(run.run_id, path, "property-emulator")
    serving = serving_emulator(tracker)
    assert isinstance(serving, ServingEmulator) and serving.version == 1
    assert serving.source.startswith("newest version")
    assert serving.emulator_version == "property-emulator/v1"
    tracker.set_alias("property-emulator", "champion", 1)
    assert serving_emulator(tracker).source == "champion"
    # trained on a user table (x → y): it cannot read survey shards
    with pytest.raises(EmulatorConfigError, match="user table"):
        shard_posteriors(serving, tiny_survey.manifest)
