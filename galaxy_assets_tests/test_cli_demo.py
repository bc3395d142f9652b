"""`galaxy-assets demo`'s encoder schedule: the run config it passes and when it retrains."""

from __future__ import annotations

from galaxy_assets.cli import (
    _encoder_epochs,
    _encoder_schedule_changed,
    _morphology_config,
    build_parser,
)
from galaxy_assets.defs.morphology import MorphologyTrainConfig
from galaxy_assets.morphology.train import TrainConfig


def test_the_default_schedule_is_the_encoders_own():
    assert MorphologyTrainConfig().epochs == TrainConfig.epochs == 12
    assert _encoder_epochs(build_parser().parse_args(["demo"])) == TrainConfig.epochs
    assert _encoder_epochs(build_parser().parse_args(["demo", "--encoder-epochs", "36"])) == 36


def test_the_run_config_sets_epochs_and_a_budget_that_lets_them_run():
    cfg = _morphology_config(36)["ops"]["morphology_encoder"]["config"]
    assert cfg == {"epochs": 36, "time_budget_s": 720.0}
    # short schedules keep the asset's default budget
    assert _morphology_config(6)["ops"]["morphology_encoder"]["config"]["time_budget_s"] == 240.0
    MorphologyTrainConfig(**cfg)  # valid asset config


def test_a_changed_schedule_retrains_and_an_unrecorded_one_counts_as_the_default():
    assert not _encoder_schedule_changed({"epochs_max": 36}, 36)
    assert _encoder_schedule_changed({"epochs_max": 12}, 36)
    # a home trained before the limit was recorded: the default, so a plain rerun reuses it
    assert not _encoder_schedule_changed({}, TrainConfig.epochs)
    assert _encoder_schedule_changed({}, 36)
