"""The Definitions load the way `dagster dev` loads them (through workspace.yaml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_workspace_yaml_points_at_definitions():
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    target = workspace["load_from"][0]["python_module"]
    assert target["module_name"] == "galaxy_assets.definitions"
    assert target["attribute"] == "defs"


def test_dagster_validates_workspace(isolated_home, tmp_path):
    """`dagster definitions validate -w workspace.yaml` is the loader `dagster dev` uses."""
    from galaxy_assets.cli import prepare_dagster_home
    from galaxy_assets.runtime import Home

    env = dict(os.environ)
    prepare_dagster_home(Home.from_env())
    env["DAGSTER_HOME"] = os.environ["DAGSTER_HOME"]
    exe = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(exe), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Validation successful" in proc.stdout + proc.stderr


def test_definitions_content():
    from galaxy_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert "raw_cutouts" in keys
    assert defs.resolve_job_def("survey_job") is not None
    assert defs.resolve_sensor_def("survey_shards_sensor") is not None
    for name in ("home", "compute", "survey", "io_manager"):
        assert name in defs.resources


def test_dagster_yaml_pools_and_home(isolated_home):
    import dagster as dg

    from galaxy_assets.cli import prepare_dagster_home, set_pool_limits
    from galaxy_assets.runtime import Home

    home = Home.from_env()
    prepare_dagster_home(home)
    written = yaml.safe_load((home.dagster / "dagster.yaml").read_text())
    assert written["storage"]["sqlite"]["base_dir"] == str(home.dagster / "storage")
    assert written["telemetry"]["enabled"] is False
    instance = dg.DagsterInstance.get()
    try:
        limits = set_pool_limits(instance)
        assert limits["lancedb_writer"] == 1 and limits["gpu"] >= 1
        info = instance.event_log_storage.get_concurrency_info("lancedb_writer")
        assert info.slot_count == 1
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
        assert Path(instance.root_directory) == home.dagster
    finally:
        instance.dispose()
