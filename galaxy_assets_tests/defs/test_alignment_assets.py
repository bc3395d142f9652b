"""image_embeddings through Dagster: vectors are reused while the shard and the encoder are
unchanged, and recomputed when forced or when the shard file changes."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from galaxy_assets.defs.alignment import image_embeddings
from galaxy_assets.defs.io import ShardParquetIOManager
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import (
    ComputeResource,
    HomeResource,
    ImageEncoderResource,
    MLflowResource,
    SurveyResource,
)
from galaxy_assets.defs.survey import raw_cutouts
from galaxy_assets_tests.defs.test_caption_assets import BANDS, _survey

KEY = "healpix=0__001-of-001"


def _embed(instance, resources, force=False):
    result = dg.materialize(
        [raw_cutouts, image_embeddings], selection=[image_embeddings], partition_key=KEY,
        instance=instance, resources=resources,
        run_config={"ops": {"image_embeddings": {"config": {"force": force}}}},
    )
    meta = result.asset_materializations_for_node("image_embeddings")[0].metadata
    return result.output_for_node("image_embeddings")[KEY], meta["reused"].value


@pytest.mark.slow
def test_image_embeddings_are_reused_until_the_shard_or_encoder_changes(isolated_home, tmp_path):
    root = tmp_path / "survey"
    _survey(root, n=12)
    outputs = tmp_path / "shared_outputs"  # outside the home, as on a cluster (IO_BASE_DIR)
    resources = {
        "home": HomeResource(root=str(isolated_home), outputs=str(outputs)),
        "survey": SurveyResource(roots=[str(root)], bands=BANDS, cutout_size=0),
        "compute": ComputeResource(device="cpu", batch_size=8),
        "mlflow": MLflowResource(),
        "image_encoder": ImageEncoderResource(kind="timm", name="resnet10t", batch_size=8),
        "io_manager": ShardParquetIOManager(base_dir=str(outputs)),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, [KEY])
        dg.materialize([raw_cutouts], partition_key=KEY, instance=instance, resources=resources)
        first, reused = _embed(instance, resources)
        assert not reused and first.height == 12
        second, reused = _embed(instance, resources)
        assert reused and second.equals(first)
        _, reused = _embed(instance, resources, force=True)
        assert not reused
        shard = root / "healpix=0" / "001-of-001.hdf5"
        os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
        dg.materialize([raw_cutouts], partition_key=KEY, instance=instance, resources=resources)
        third, reused = _embed(instance, resources)
        assert not reused  # the shard file changed: re-embedded
        # another encoder (other test-time views here): re-embedded with its id
        other = {**resources, "image_encoder": ImageEncoderResource(
            kind="timm", name="resnet10t", batch_size=8, tta="none")}
        fourth, reused = _embed(instance, other)
        assert not reused and set(fourth["encoder"]) != set(third["encoder"])
        _, reused = _embed(instance, other)
        assert reused


def test_the_configured_encoder_id_without_loading_weights():
    """aligned_model refuses vectors of another encoder than the configured one; for the
    registry kind the id is known from the alias alone."""
    from types import SimpleNamespace

    class Registry:
        def resolve_version(self, name, alias):
            if name != "morphology-encoder":
                raise KeyError(name)
            return SimpleNamespace(version="3")

    tracker = Registry()
    assert ImageEncoderResource().expected_id(tracker) == "registry:morphology-encoder/v3+rot4"
    assert ImageEncoderResource(tta="none").expected_id(tracker) == "registry:morphology-encoder/v3"
    assert ImageEncoderResource(model_name="other").expected_id(tracker) is None  # none yet
    assert ImageEncoderResource(kind="zoobot", name="resnet10t").expected_id(tracker) is None


@pytest.mark.slow
def test_a_truncated_shard_fails_alone_in_a_run_over_many(isolated_home, tmp_path):
    """A backfill embeds its shards in one run (the encoder loads once). One shard file cut
    short after its manifest was built used to discard the other shards' vectors: they are
    stored and materialized now, and a rerun reuses them."""
    root = tmp_path / "survey"
    _survey(root, n=12)
    keys = ["healpix=0__001-of-001", "healpix=1__001-of-001"]
    resources = {
        "home": HomeResource(root=str(isolated_home)),
        "survey": SurveyResource(roots=[str(root)], bands=BANDS, cutout_size=0),
        "compute": ComputeResource(device="cpu", batch_size=8),
        "mlflow": MLflowResource(),
        "image_encoder": ImageEncoderResource(kind="timm", name="resnet10t", batch_size=8,
                                              tta="none"),
        "io_manager": ShardParquetIOManager(base_dir=str(isolated_home / "parquet")),
    }
    both = {"dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[1]}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, keys)
        for key in keys:
            dg.materialize([raw_cutouts], partition_key=key, instance=instance,
                           resources=resources)
        bad = root / "healpix=1" / "001-of-001.hdf5"
        whole = bad.read_bytes()
        bad.write_bytes(whole[:2000])  # a copy cut short
        result = dg.materialize([raw_cutouts, image_embeddings], selection=[image_embeddings],
                                instance=instance, resources=resources, tags=both,
                                raise_on_error=False)
        assert not result.success
        message = result.get_step_failure_events()[0].step_failure_data.error.message
        assert f"1 of 2 shard(s) failed ({keys[1]}:" in message
        stored = isolated_home / "parquet" / "image_embeddings"
        assert sorted(p.name for p in stored.iterdir()) == [f"{keys[0]}.parquet"]
        assert instance.get_materialized_partitions(dg.AssetKey("image_embeddings")) == {keys[0]}
        bad.write_bytes(whole)  # the file restored: the rerun embeds it and reuses the other
        again = dg.materialize([raw_cutouts, image_embeddings], selection=[image_embeddings],
                               instance=instance, resources=resources, tags=both)
        reused = {e.partition: e.metadata["reused"].value
                  for e in again.asset_materializations_for_node("image_embeddings")}
        assert reused == {keys[0]: True, keys[1]: False}
        # a corrupt upstream file (shard 1's stored manifest): read in its shard's turn, it
        # fails that shard alone (loading every input first failed the whole step)
        manifest = isolated_home / "parquet" / "raw_cutouts" / f"{keys[1]}.parquet"
        manifest.write_bytes(manifest.read_bytes()[:100])
        broken = dg.materialize([raw_cutouts, image_embeddings], selection=[image_embeddings],
                                instance=instance, resources=resources, tags=both,
                                raise_on_error=False, run_config={"ops": {"image_embeddings": {
                                    "config": {"force": True}}}})
        assert not broken.success
        logs = instance.all_logs(broken.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert [e.dagster_event.partition for e in logs] == [keys[0]]
        message = broken.get_step_failure_events()[0].step_failure_data.error.message
        assert f"1 of 2 shard(s) failed ({keys[1]}:" in message
