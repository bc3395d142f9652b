"""The property emulator through Dagster: trained on a tiny mock survey, registered in MLflow
with its calibration report, posteriors per shard, and the posteriors joined into
galaxy_index as filterable post_* columns."""

from __future__ import annotations

import dagster as dg
import numpy as np
import polars as pl
import pytest

from galaxy_assets.defs.emulator import property_emulator, property_posteriors
from galaxy_assets.defs.io import ShardParquetIOManager
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import (
    ComputeResource,
    HomeResource,
    MLflowResource,
    SearchIndexResource,
    SurveyResource,
)
from galaxy_assets.defs.search import galaxy_index
from galaxy_assets.defs.survey import raw_cutouts
from galaxy_assets.search.table import open_table
from galaxy_assets.survey.mock import simulate_survey
from galaxy_assets.survey.readers import find_shards, shard_key
from galaxy_assets.tracking import Tracker

pytestmark = pytest.mark.slow

TINY = {"epochs": 6, "time_budget_s": 30.0, "d_model": 32, "n_layers": 1, "batch_size": 128,
        "eval_samples": 64, "eval_rows": 80, "n_components": 4}


def _resources(home, root):
    from galaxy_assets.defs.resources import default_resources

    return {
        **default_resources(),
        "home": HomeResource(root=str(home)),
        "survey": SurveyResource(roots=[str(root)], cutout_size=32),
        "compute": ComputeResource(device="cpu", batch_size=64),
        "mlflow": MLflowResource(),
        "search_index": SearchIndexResource(),
        "io_manager": ShardParquetIOManager(base_dir=str(home / "parquet")),
    }


def _tracker(home) -> Tracker:
    return Tracker(f"sqlite:///{home}/mlflow/mlflow.db", home / "mlflow" / "artifacts")


def _range(keys):
    return {"dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1]}


def _fake_search_inputs(base, manifests: dict[str, pl.DataFrame], dim=16):
    """search_vectors and vlm_captions as their assets store them (the aligner is not what
    this test is about)."""
    rng = np.random.default_rng(0)
    (base / "search_vectors").mkdir(parents=True, exist_ok=True)
    for key, manifest in manifests.items():
        vec = rng.normal(size=(manifest.height, dim)).astype(np.float32)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        pl.DataFrame({"object_id": manifest["object_id"], "aligner_version": "search-aligner/v1",
                      "vector": vec}).write_parquet(base / "search_vectors" / f"{key}.parquet")
    pl.DataFrame(schema={"object_id": pl.Utf8, "caption": pl.Utf8}).write_parquet(
        base / "vlm_captions.parquet")


def test_emulator_trains_registers_and_its_posteriors_reach_the_index(isolated_home, tmp_path):
    root = tmp_path / "mock"
    simulate_survey(root, 360, size=32, seed=3, nside=8, workers=1)
    keys = sorted(shard_key(root, p) for p in find_shards(root))
    assert len(keys) >= 2
    resources = _resources(isolated_home, root)
    from galaxy_assets.definitions import defs

    assets = list(defs.assets)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, keys)
        for key in keys:
            dg.materialize(assets, selection=[raw_cutouts], partition_key=key, instance=instance, resources=resources)

        # before any emulator exists, posteriors are empty and do not fail the shard
        early = dg.materialize(assets, selection=[property_posteriors], instance=instance,
                               resources=resources, tags=_range(keys))
        assert early.success
        assert all(f.width == 1 and f.height == 0
                   for f in early.output_for_node("property_posteriors").values())

        trained = dg.materialize(
            assets, selection=[property_emulator], instance=instance, resources=resources,
            run_config={"ops": {"property_emulator": {"config": TINY}}})
        row = trained.output_for_node("property_emulator").row(0, named=True)
        assert row["name"] == "property-emulator" and row["version"] == 1
        meta = trained.asset_materializations_for_node("property_emulator")[0].metadata
        for key in ("redshift_diffusion_coverage_68", "redshift_gaussian_crps",
                    "log_stellar_mass_diffusion_nmad", "table_rows", "calibration",
                    "calibration_coverage", "posteriors_redshift", "gate"):
            assert key in meta, key
        assert meta["table_rows"].value == 360
        tracker = _tracker(isolated_home)
        assert tracker.latest_version("property-emulator") is not None
        promoted = tracker.get_alias_version("property-emulator", "champion") is not None
        assert promoted == bool(row["alias"])  # the alias moved exactly when the gate passed

        post = dg.materialize(
            assets, selection=[property_posteriors], instance=instance, resources=resources,
            tags=_range(keys),
            run_config={"ops": {"property_posteriors": {"config": {"n_samples": 64}}}})
        frames = post.output_for_node("property_posteriors")
        manifests = {k: pl.read_parquet(isolated_home / "parquet" / "raw_cutouts" / f"{k}.parquet")
                     for k in keys}
        for key in keys:
            frame = frames[key]
            assert set(frame["object_id"]) == set(manifests[key]["object_id"])
            for col in ("redshift_median", "redshift_p16", "redshift_p84", "redshift_multimodal",
                        "sersic_n_median", "emulator_version"):
                assert col in frame.columns, col
            assert (frame["redshift_p16"] <= frame["redshift_median"]).all()
            assert (frame["redshift_median"] <= frame["redshift_p84"]).all()
        pmeta = post.asset_materializations_for_node("property_posteriors")[0].metadata
        assert pmeta["emulator_version"].value == "property-emulator/v1"
        # stored per partition: a later run reads them back
        stored = pl.read_parquet(isolated_home / "parquet" / "property_posteriors"
                                 / f"{keys[0]}.parquet")
        assert stored.height == frames[keys[0]].height

        _fake_search_inputs(isolated_home / "parquet", manifests)
        dg.materialize(assets, selection=[galaxy_index], instance=instance, resources=resources,
                       tags=_range(keys))
        table = open_table(isolated_home / "lancedb")
        names = table.schema.names
        for col in ("post_redshift_median", "post_redshift_p84", "post_redshift_multimodal",
                    "emulator_version"):
            assert col in names, col
        assert "post_emulator_version" not in names  # lineage, not a posterior summary
        rows = pl.from_arrow(table.to_arrow())
        assert rows.height == 360 and rows["post_redshift_median"].null_count() == 0
        assert set(rows["emulator_version"]) == {"property-emulator/v1"}
        cut = float(rows["post_redshift_p84"].median())
        low = table.search().where(f"post_redshift_p84 < {cut}").limit(1000).to_polars()
        assert 0 < low.height < 360
        assert (low["post_redshift_p84"] < cut).all()


@pytest.mark.parametrize("ra, dec", [("RA", "DEC"), ("PLUG_RA", "PLUG_DEC")])
def test_the_labels_tables_position_columns_can_be_named_in_the_run_config(ra, dec):
    """A spectroscopic catalogue's RA/Dec often have other names; the asset's config names
    them and the pipeline gets them (crossmatch's own ra_column= is out of a user's reach)."""
    from galaxy_assets.defs.emulator import PropertyEmulatorConfig

    config = PropertyEmulatorConfig(labels_table="specz.parquet", labels_ra_column=ra,
                                    labels_dec_column=dec, d_model=32)
    run = config.run_config()
    assert (run.labels_ra_column, run.labels_dec_column) == (ra, dec)
    assert run.labels_table == "specz.parquet" and run.model["d_model"] == 32
