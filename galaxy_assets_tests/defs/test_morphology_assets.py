"""Morphology assets through Dagster on a small mock survey: the encoder is trained and
registered, predictions are made per shard, two sweep partitions feed a scaling report."""

from __future__ import annotations

import inspect

import dagster as dg
import polars as pl
import pytest

from galaxy_assets.defs.io import ShardParquetIOManager
from galaxy_assets.defs.morphology import morphology_encoder, morphology_predictions
from galaxy_assets.defs.morphology_reports import (
    morphology_scaling_point,
    morphology_scaling_report,
)
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import (
    ComputeResource,
    HomeResource,
    MLflowResource,
    SurveyResource,
)
from galaxy_assets.defs.survey import raw_cutouts
from galaxy_assets.survey.mock import simulate_survey
from galaxy_assets.survey.readers import find_shards, shard_key
from galaxy_assets.tracking import Tracker

pytestmark = pytest.mark.slow


def test_encoder_predictions_and_sweep(isolated_home, tmp_path):
    root = tmp_path / "mock"
    simulate_survey(root, 1400, size=32, seed=5, workers=2)
    resources = {
        "home": HomeResource(root=str(isolated_home)),
        "survey": SurveyResource(roots=[str(root)], cutout_size=32),
        "compute": ComputeResource(device="cpu", batch_size=128),
        "mlflow": MLflowResource(),
        "io_manager": ShardParquetIOManager(base_dir=str(isolated_home / "parquet")),
    }
    keys = [shard_key(root, p) for p in find_shards(root)]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, keys)
        for key in keys:
            dg.materialize([raw_cutouts], partition_key=key, instance=instance, resources=resources)
        assets = [raw_cutouts, morphology_encoder]
        result = dg.materialize(
            assets, selection=[morphology_encoder], instance=instance, resources=resources,
            run_config={"ops": {"morphology_encoder": {"config": {
                "preset": "tiny", "epochs": 1, "time_budget_s": 60}}}},
        )
        registered = result.output_for_node("morphology_encoder")
        assert registered["version"][0] == 1 and registered["alias"][0] == "champion"
        meta = result.asset_materializations_for_node("morphology_encoder")[0].metadata
        assert "val_loss" in meta and "plot" in meta
        tracker = Tracker.from_home(type("H", (), {
            "mlflow_tracking_uri": f"sqlite:///{isolated_home}/mlflow/mlflow.db",
            "mlflow_artifacts": isolated_home / "mlflow" / "artifacts"})())
        assert tracker.get_alias_version("morphology-encoder", "champion") is not None

        preds = dg.materialize([raw_cutouts, morphology_predictions],
                               selection=[morphology_predictions], partition_key=keys[0],
                               instance=instance, resources=resources)
        frame = preds.output_for_node("morphology_predictions")[keys[0]]
        p_cols = [c for c in frame.columns if c.startswith("p_")]
        assert frame.height > 0 and len(p_cols) >= 6
        assert frame.select(p_cols).min().min_horizontal()[0] >= 0

        config = {"ops": {"morphology_scaling_point": {"config": {
            "epochs": 1, "min_steps": 1, "max_steps": 3, "batch_size": 32}}}}
        for n in ("500", "1000", "16000"):  # 16000 > the 1400-galaxy survey: skipped
            pk = dg.MultiPartitionKey({"n_labelled": n, "model_size": "tiny"})
            point = dg.materialize([raw_cutouts, morphology_scaling_point],
                                   selection=[morphology_scaling_point], partition_key=pk,
                                   instance=instance, resources=resources, run_config=config)
            point_meta = point.asset_materializations_for_node(
                "morphology_scaling_point")[0].metadata
            assert ("skipped" in point_meta) == (n == "16000")
        report = dg.materialize(
            [raw_cutouts, morphology_scaling_point, morphology_scaling_report],
            selection=[morphology_scaling_report], instance=instance, resources=resources,
        )
        table = report.output_for_node("morphology_scaling_report")
        assert table.height >= 2
        meta = report.asset_materializations_for_node("morphology_scaling_report")[0].metadata
        assert "alpha" in meta["report"].value and "plot" in meta
        assert "16000" in meta["skipped_points"].value


def test_a_sweep_whose_every_point_was_skipped_says_why(isolated_home):
    """Every N above the survey's labelled galaxies: the report names that, not 'run the
    sweep's partitions first' (they did run)."""
    points = {
        f"{n}|tiny": pl.DataFrame([{"n_labelled": n, "model_size": "tiny", "val_loss": None,
                                    "point": ""}], schema_overrides={"val_loss": pl.Float64})
        for n in (16000, 32000)
    }
    context = dg.build_asset_context()
    with pytest.raises(dg.Failure, match=r"every point of the sweep was skipped.*16000, 32000"):
        morphology_scaling_report(context, morphology_scaling_point=points,
                                  home=HomeResource(root=str(isolated_home)))


@pytest.mark.parametrize("asset_name", ["morphology_encoder", "morphology_scaling_point",
                                        "morphology_transfer_report", "caption_sample"])
def test_assets_of_every_shard_say_what_to_materialize_when_there_is_none(asset_name):
    """With no raw_cutouts partition stored they failed with "cannot concat empty list"."""
    import galaxy_assets.defs.captioning as captioning
    import galaxy_assets.defs.morphology as morphology
    import galaxy_assets.defs.morphology_reports as reports

    asset = {"morphology_encoder": morphology.morphology_encoder,
             "morphology_scaling_point": reports.morphology_scaling_point,
             "morphology_transfer_report": reports.morphology_transfer_report,
             "caption_sample": captioning.caption_sample}[asset_name]
    body = asset.op.compute_fn.decorated_fn
    names = list(inspect.signature(body).parameters)
    context = dg.build_asset_context(
        partition_key=dg.MultiPartitionKey({"model_size": "tiny", "n_labelled": "500"})
        if asset_name == "morphology_scaling_point" else None)
    kwargs = {n: None for n in names[1:]}
    kwargs["raw_cutouts"] = {}
    with pytest.raises(dg.Failure, match=f"{asset_name}: no raw_cutouts partition is "
                       "materialized; materialize survey_job"):
        result = body(context, **kwargs)
        if inspect.isgenerator(result):
            list(result)
