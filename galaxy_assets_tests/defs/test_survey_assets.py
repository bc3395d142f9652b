"""raw_cutouts and the shard sensor through Dagster, on small synthetic MMU shards."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from galaxy_assets.defs.io import ShardParquetIOManager
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import HomeResource, SurveyResource
from galaxy_assets.defs.survey import raw_cutouts, survey_shards_sensor
from galaxy_assets.survey.mmu import write_mmu_shard

BANDS = ["g", "r", "i", "z"]


def _shard(path: Path, n: int, prefix: str, seed: int, nan_rows=()) -> Path:
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 1, (n, 4, 20, 20)).astype(np.float32)
    for r in nan_rows:
        images[r] = np.nan
    return write_mmu_shard(
        path, images=images, bands=BANDS,
        object_id=[f"{prefix}-{i}" for i in range(n)],
        ra=rng.uniform(149, 151, n), dec=rng.uniform(1, 3, n),
        ivar=np.ones_like(images), fluxes={b: rng.uniform(1, 10, n) for b in BANDS},
        ebv=np.full(n, 0.02),
    )


@pytest.fixture
def survey_root(tmp_path):
    root = tmp_path / "survey"
    _shard(root / "healpix=101" / "001-of-001.hdf5", 12, "a", 1)
    _shard(root / "healpix=102" / "001-of-001.hdf5", 9, "b", 2, nan_rows=(3,))
    bad = root / "healpix=103" / "001-of-001.hdf5"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not an HDF5 file" * 10)
    return root


def _resources(home: Path, root: Path) -> dict:
    return {
        "home": HomeResource(root=str(home)),
        "survey": SurveyResource(roots=[str(root)], bands=BANDS, cutout_size=16),
        "io_manager": ShardParquetIOManager(base_dir=str(home / "parquet")),
    }


def test_sensor_adds_new_shards_once(isolated_home, survey_root, monkeypatch):
    monkeypatch.setattr("galaxy_assets.defs.survey.SETTLE_S", 0.0)  # files written just now
    resources = _resources(isolated_home, survey_root)
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        result = survey_shards_sensor(ctx)
        assert isinstance(result, dg.SensorResult)
        keys = sorted(r.partition_key for r in result.run_requests)
        assert keys == ["healpix=101__001-of-001", "healpix=102__001-of-001",
                        "healpix=103__001-of-001"]
        added = result.dynamic_partitions_requests[0]
        assert sorted(added.partition_keys) == keys
        instance.add_dynamic_partitions(shard_partitions.name, keys)
        again = survey_shards_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert isinstance(again, dg.SkipReason)
        # a new shard appears: only it is requested
        _shard(survey_root / "healpix=104" / "001-of-001.hdf5", 3, "c", 4)
        third = survey_shards_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert [r.partition_key for r in third.run_requests] == ["healpix=104__001-of-001"]


def test_sensor_runs_a_shard_found_at_another_path_again(isolated_home, survey_root,
                                                         monkeypatch):
    """A renamed (or remounted) root keeps the partition keys, but the manifests and index
    rows still name the old paths: the sensor runs those shards again, once."""
    monkeypatch.setattr("galaxy_assets.defs.survey.SETTLE_S", 0.0)
    keys = ["healpix=101__001-of-001", "healpix=102__001-of-001", "healpix=103__001-of-001"]

    def tick(root, cursor):
        ctx = dg.build_sensor_context(instance=instance, resources=_resources(isolated_home, root),
                                      cursor=cursor)
        result = survey_shards_sensor(ctx)
        return result, (result.cursor if isinstance(result, dg.SensorResult) else ctx.cursor)

    with dg.instance_for_test() as instance:
        first, cursor = tick(survey_root, None)
        assert sorted(r.partition_key for r in first.run_requests) == keys
        instance.add_dynamic_partitions(shard_partitions.name, keys)
        quiet, cursor = tick(survey_root, cursor)
        assert isinstance(quiet, dg.SkipReason)
        moved_root = survey_root.with_name("survey-new-disk")
        survey_root.rename(moved_root)
        moved, cursor = tick(moved_root, cursor)
        assert isinstance(moved, dg.SensorResult)
        assert sorted(r.partition_key for r in moved.run_requests) == keys
        assert all(":at-" in r.run_key for r in moved.run_requests)
        assert not moved.dynamic_partitions_requests  # same keys: nothing added or deleted
        again, cursor = tick(moved_root, cursor)
        assert isinstance(again, dg.SkipReason)
        # a file replaced in place by another of that name runs again too
        replaced = moved_root / "healpix=101" / "001-of-001.hdf5"
        replaced.unlink()
        _shard(replaced, 7, "z", 9)
        rerun, cursor = tick(moved_root, cursor)
        assert [r.partition_key for r in rerun.run_requests] == [keys[0]]
        quiet, cursor = tick(moved_root, cursor)
        assert isinstance(quiet, dg.SkipReason)
        # a sensor that starts without a cursor (an upgrade) records the paths, runs nothing
        fresh, _ = tick(moved_root, None)
        assert isinstance(fresh, dg.SkipReason)


def test_another_survey_under_the_same_keys_is_built_again(isolated_home, survey_root,
                                                           tmp_path, monkeypatch):
    """survey.roots moved to other data with the same HEALPix keys (real MMU shards after the
    mock demo): a sensor without a cursor entry for a shard compares it with what its
    manifest was built from, and the demo rebuilds, as it does for other bands or crop."""
    from galaxy_assets.cli import _shards_changed

    monkeypatch.setattr("galaxy_assets.defs.survey.SETTLE_S", 0.0)
    key = "healpix=101__001-of-001"
    other = tmp_path / "real"
    _shard(other / "healpix=101" / "001-of-001.hdf5", 5, "real", 7)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, [key])
        dg.materialize([raw_cutouts], partition_key=key, instance=instance,
                       resources=_resources(isolated_home, survey_root))
        done = instance.get_materialized_partitions(dg.AssetKey("raw_cutouts"))
        same = _resources(isolated_home, survey_root)["survey"]
        assert _shards_changed(instance, same, same.discover(isolated_home), done) == []
        moved = _resources(isolated_home, other)
        [(k, why)] = _shards_changed(instance, moved["survey"],
                                     moved["survey"].discover(isolated_home), done)
        assert k == key and "now found at" in why and str(other) in why
        result = survey_shards_sensor(dg.build_sensor_context(instance=instance,
                                                              resources=moved))
        assert [r.partition_key for r in result.run_requests] == [key]
        fewer = SurveyResource(roots=[str(survey_root)], bands=["g", "r", "z"], cutout_size=16)
        [(_, why)] = _shards_changed(instance, fewer, fewer.discover(isolated_home), done)
        assert "bands g,r,i,z, the settings now say g,r,z" in why
        smaller = SurveyResource(roots=[str(survey_root)], bands=BANDS, cutout_size=12)
        [(_, why)] = _shards_changed(instance, smaller, smaller.discover(isolated_home), done)
        assert "cutout_size 16, the settings now say 12" in why


def test_sensor_rebuilds_shards_read_with_other_bands_or_crop(isolated_home, survey_root,
                                                              monkeypatch):
    """Manifests read with other survey.bands or survey.cutout_size than the settings now
    give are requested again (under `galaxy-assets dev` a config change reaches only the
    sensor), with run keys the daemon has not seen: on the first tick without a cursor, on
    the first tick after the settings changed under a cursor, and back again."""
    monkeypatch.setattr("galaxy_assets.defs.survey.SETTLE_S", 0.0)
    keys = ["healpix=101__001-of-001", "healpix=102__001-of-001"]

    def resources(**settings):
        out = _resources(isolated_home, survey_root)
        out["survey"] = SurveyResource(roots=[str(survey_root)],
                                       **{"bands": BANDS, "cutout_size": 16, **settings})
        return out

    def tick(cursor, **settings):
        ctx = dg.build_sensor_context(instance=instance, resources=resources(**settings),
                                      cursor=cursor)
        result = survey_shards_sensor(ctx)
        requested = (sorted(r.partition_key for r in result.run_requests)
                     if isinstance(result, dg.SensorResult) else [])
        keys_seen = ({r.run_key for r in result.run_requests}
                     if isinstance(result, dg.SensorResult) else set())
        return requested, keys_seen, (result.cursor if isinstance(result, dg.SensorResult)
                                      else ctx.cursor)

    def build(**settings):
        for key in keys:
            dg.materialize([raw_cutouts], partition_key=key, instance=instance,
                           resources=resources(**settings))

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name,
                                        [*keys, "healpix=103__001-of-001"])
        build()  # read at 16 px with griz
        # the reviewer's case: no cursor yet, manifests at 16 px, the settings say 12
        requested, first_keys, _ = tick(None, cutout_size=12)
        assert requested == keys
        requested, reset_keys, _ = tick(None, bands=["g", "r", "z"])
        assert requested == keys
        assert not reset_keys & first_keys  # a reset cursor under other settings: new keys
        # the same settings as the manifests: nothing to do
        requested, _, cursor = tick(None)
        assert requested == []
        # the settings change under a running sensor
        requested, smaller_keys, cursor = tick(cursor, cutout_size=12)
        assert requested == keys
        requested, _, cursor = tick(cursor, cutout_size=12)
        assert requested == []  # asked for once, not on every tick
        build(cutout_size=12)
        requested, _, cursor = tick(cursor, cutout_size=12)
        assert requested == []
        # back to 16 px: the manifests are at 12 now, so the shards run again, with new keys
        requested, back_keys, cursor = tick(cursor)
        assert requested == keys
        assert not back_keys & (smaller_keys | first_keys | reset_keys)
        build()
        requested, _, cursor = tick(cursor, bands=["g", "r", "z"])
        assert requested == keys


def test_raw_cutouts_good_bad_and_checks(isolated_home, survey_root):
    resources = _resources(isolated_home, survey_root)
    keys = ["healpix=101__001-of-001", "healpix=102__001-of-001", "healpix=103__001-of-001"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, keys)
        outcomes = {}
        for key in keys:
            res = dg.materialize([raw_cutouts], partition_key=key, instance=instance,
                                 resources=resources, raise_on_error=False)
            outcomes[key] = res
        assert outcomes[keys[0]].success and outcomes[keys[1]].success
        assert not outcomes[keys[2]].success
        failure = outcomes[keys[2]].get_step_failure_events()[0]
        error = failure.event_specific_data.error
        message = error.cause.message if error.cause else error.message
        assert "healpix=103" in message and "HDF5" in message, message

        first = pl.read_parquet(isolated_home / "parquet" / "raw_cutouts" / f"{keys[0]}.parquet")
        assert first.height == 12
        assert first["shard"].unique().to_list() == [keys[0]]
        assert first["healpix"].unique().to_list() == [101]
        assert first["height"].unique().to_list() == [16]
        second = pl.read_parquet(isolated_home / "parquet" / "raw_cutouts" / f"{keys[1]}.parquet")
        assert second.height == 8 and "b-3" not in second["object_id"].to_list()
        rejects = pl.read_parquet(isolated_home / "parquet" / "raw_cutouts_rejected" / f"{keys[1]}.parquet")
        assert rejects["object_id"].to_list() == ["b-3"]

        mat = outcomes[keys[1]].asset_materializations_for_node("raw_cutouts")[0]
        assert mat.metadata["galaxies"].value == 8
        assert mat.metadata["rejected"].value == 1
        checks = outcomes[keys[1]].get_asset_check_evaluations()
        assert {c.check_name: c.passed for c in checks} == {
            "manifest_schema": True, "finite_pixels": True,
            "bands_and_shape": True, "unique_object_ids": True,
        }
        # the failed shard left nothing behind
        assert not (isolated_home / "parquet" / "raw_cutouts" / f"{keys[2]}.parquet").exists()


def test_duplicate_ids_across_shards_fail_blocking_check(isolated_home, tmp_path):
    root = tmp_path / "dup"
    _shard(root / "healpix=201" / "001-of-001.hdf5", 5, "same", 1)
    _shard(root / "healpix=202" / "001-of-001.hdf5", 5, "same", 2)
    resources = _resources(isolated_home, root)
    keys = ["healpix=201__001-of-001", "healpix=202__001-of-001"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, keys)
        dg.materialize([raw_cutouts], partition_key=keys[0], instance=instance, resources=resources)
        res = dg.materialize([raw_cutouts], partition_key=keys[1], instance=instance,
                             resources=resources, raise_on_error=False)
        checks = {c.check_name: c for c in res.get_asset_check_evaluations()}
        assert not checks["unique_object_ids"].passed
        assert "healpix=201" in checks["unique_object_ids"].description
        # the refused shard's manifest is not stored: no later run reads its galaxies
        assert not res.success
        assert not (isolated_home / "parquet" / "raw_cutouts" / f"{keys[1]}.parquet").exists()
        assert keys[1] not in instance.get_materialized_partitions(dg.AssetKey("raw_cutouts"))

        # a built shard replaced in place by a file the checks refuse: its old manifest (whose
        # rows now point at the new file's pixels) is withdrawn from every later reader
        _shard(root / "healpix=201" / "001-of-001.hdf5", 5, "same", 3)
        _shard(root / "healpix=202" / "001-of-001.hdf5", 5, "other", 2)
        dg.materialize([raw_cutouts], partition_key=keys[1], instance=instance,
                       resources=resources)
        _shard(root / "healpix=201" / "001-of-001.hdf5", 5, "other", 4)  # 202's ids now
        res = dg.materialize([raw_cutouts], partition_key=keys[0], instance=instance,
                             resources=resources, raise_on_error=False)
        assert not res.success
        error = res.get_step_failure_events()[0].event_specific_data.error
        assert "previous manifest was withdrawn" in (error.cause or error).message
        assert not (isolated_home / "parquet" / "raw_cutouts" / f"{keys[0]}.parquet").exists()


def test_the_duplicate_check_compares_current_shards_only(isolated_home, tmp_path):
    """A vanished or moved shard's old manifest is no rival, and a damaged manifest of a
    current shard is reported, not a crash; manifests are written whole (renamed into place)."""
    root = tmp_path / "moved"
    _shard(root / "healpix=301" / "001-of-001.hdf5", 5, "m", 1)
    _shard(root / "healpix=302" / "001-of-001.hdf5", 5, "n", 2)
    resources = _resources(isolated_home, root)
    keys = ["healpix=301__001-of-001", "healpix=302__001-of-001"]
    stored = isolated_home / "parquet" / "raw_cutouts"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, keys)
        dg.materialize([raw_cutouts], partition_key=keys[0], instance=instance,
                       resources=resources)
        assert sorted(p.name for p in stored.iterdir()) == [f"{keys[0]}.parquet"]  # no temp
        # the same galaxies under the shard's old key, which is no partition any more
        (stored / f"{keys[0]}.parquet").rename(stored / "old_root__healpix=301.parquet")
        (stored / f"{keys[0]}.parquet").write_bytes(b"PAR1 truncated")  # a damaged manifest
        res = dg.materialize([raw_cutouts], partition_key=keys[1], instance=instance,
                             resources=resources)
        (check,) = [c for c in res.get_asset_check_evaluations()
                    if c.check_name == "unique_object_ids"]
        assert check.passed
        assert "1 could not be read" in check.description and keys[0] in check.description
        again = dg.materialize([raw_cutouts], partition_key=keys[0], instance=instance,
                               resources=resources, raise_on_error=False)
        (check,) = [c for c in again.get_asset_check_evaluations()
                    if c.check_name == "unique_object_ids"]
        assert check.passed  # the old copy under the vanished key is not compared
        assert pl.read_parquet(stored / f"{keys[0]}.parquet").height == 5  # rewritten whole


def test_an_optional_output_that_is_none_writes_nothing(tmp_path):
    """dagster-polars skips an Optional output that is None; the atomic write must not then
    try to move a file that was never written."""

    @dg.asset
    def maybe_frame() -> pl.DataFrame | None:
        return None

    io = ShardParquetIOManager(base_dir=str(tmp_path))
    assert dg.materialize([maybe_frame], resources={"io_manager": io}).success
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous Parquet file as it was (the new one is
    written beside it and renamed over it), and no temporary file behind."""
    import dagster_polars

    @dg.asset
    def frame() -> pl.DataFrame:
        return pl.DataFrame({"x": list(range(1000))})

    io = ShardParquetIOManager(base_dir=str(tmp_path))
    assert dg.materialize([frame], resources={"io_manager": io}).success
    (path,) = tmp_path.rglob("frame.parquet")
    before = path.read_bytes()

    def half_written(self, context, df, path):  # writes part of the file, then fails
        with open(path.path, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(dagster_polars.PolarsParquetIOManager, "write_df_to_path", half_written)
    assert not dg.materialize([frame], resources={"io_manager": io},
                              raise_on_error=False).success
    assert path.read_bytes() == before and not list(tmp_path.rglob("*.tmp"))


def test_a_partitioned_asset_must_return_every_partition_of_its_run(tmp_path):
    parts = dg.StaticPartitionsDefinition(["a", "b", "c"])

    @dg.asset(partitions_def=parts,
              backfill_policy=dg.BackfillPolicy.single_run())
    def shards(context) -> dict[str, pl.DataFrame]:
        return {k: pl.DataFrame({"k": [k]}) for k in context.partition_keys if k != "b"}

    io = ShardParquetIOManager(base_dir=str(tmp_path))
    result = dg.materialize([shards], resources={"io_manager": io}, raise_on_error=False,
                            tags={"dagster/asset_partition_range_start": "a",
                                  "dagster/asset_partition_range_end": "c"})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "shards returned no frame for partition(s) ['b'] of this run" in str(
        failure.step_failure_data.error)
    assert not list(tmp_path.rglob("*.parquet"))


def test_discovery_survives_bad_names_and_reports_clashing_keys(isolated_home, tmp_path, caplog):
    """One file whose name gives no valid partition key stopped the sensor on every tick;
    two roots of the same layout (MMU Legacy Survey and HSC) lost shards without a word."""
    import logging

    from galaxy_assets.defs.resources import SurveyResource

    legacy, hsc = tmp_path / "mmu" / "legacysurvey", tmp_path / "mmu" / "hsc"
    _shard(legacy / "healpix=1" / "001-of-001.hdf5", 3, "a", 1)
    _shard(legacy / "incoming" / "v1...old.hdf5", 3, "b", 2)
    _shard(hsc / "healpix=1" / "001-of-001.hdf5", 3, "c", 3)
    survey = SurveyResource(roots=[str(legacy), str(hsc)], bands=BANDS, cutout_size=0)
    with caplog.at_level(logging.WARNING):
        found = survey.discover(isolated_home)
    assert found == {"healpix=1__001-of-001": legacy / "healpix=1" / "001-of-001.hdf5"}
    assert "v1...old" in caplog.text and "Dagster refuses" in caplog.text
    assert "only the first is ingested" in caplog.text and str(tmp_path / "mmu") in caplog.text
    # one root above both: every shard has a key of its own
    above = SurveyResource(roots=[str(tmp_path / "mmu")], bands=BANDS, cutout_size=0)
    assert sorted(above.discover(isolated_home)) == ["hsc__healpix=1__001-of-001",
                                                     "legacysurvey__healpix=1__001-of-001"]


def test_the_sensor_says_to_reload_after_the_settings_file_changed(isolated_home, monkeypatch):
    """A config.yaml edited while `galaxy-assets dev` runs: the sensor kept deciding with the
    settings it was loaded with, while the runs it started read the new file (12 runs failed
    reading 32 px cutouts at 64 px). It now skips, saying to reload the definitions."""
    from galaxy_assets.defs.resources import default_resources
    from galaxy_assets.defs.survey import settings_changed_since_load

    monkeypatch.delenv("GALAXY_ASSETS_SURVEY_CUTOUT_SIZE", raising=False)
    loaded = default_resources()["survey"]
    assert settings_changed_since_load(loaded) == ""
    (isolated_home / "config.yaml").write_text("survey:\n  cutout_size: 32\n")
    said = settings_changed_since_load(loaded)
    assert said.startswith("survey.cutout_size changed since the definitions were loaded")
    assert "Reload definitions" in said
    # a resource given in code (not built from the settings) is left alone
    assert settings_changed_since_load(SurveyResource(roots=["/elsewhere"])) == ""
