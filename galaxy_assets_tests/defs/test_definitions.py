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
    # the graph of docs/architecture.md: each asset and what it reads
    upstream = {
        k.to_user_string(): sorted(p.to_user_string() for p in graph.get(k).parent_keys)
        for k in graph.get_all_asset_keys()
    }
    assert upstream == {
        "raw_cutouts": [],
        "caption_sample": ["raw_cutouts"],
        "vlm_captions": ["caption_sample"],
        "caption_embeddings": ["vlm_captions"],
        "morphology_encoder": ["raw_cutouts"],
        "morphology_predictions": ["morphology_encoder", "raw_cutouts"],
        "morphology_scaling_point": ["raw_cutouts"],
        "morphology_scaling_report": ["morphology_scaling_point"],
        "morphology_transfer_report": ["morphology_encoder", "raw_cutouts"],
        "image_embeddings": ["morphology_encoder", "raw_cutouts"],
        "aligned_model": ["caption_embeddings", "image_embeddings"],
        "search_evaluation": ["aligned_model", "caption_embeddings", "image_embeddings",
                              "raw_cutouts"],
        "search_vectors": ["aligned_model", "image_embeddings", "search_evaluation"],
        "property_emulator": ["image_embeddings", "morphology_predictions", "raw_cutouts"],
        "property_posteriors": ["image_embeddings", "morphology_predictions",
                                "property_emulator", "raw_cutouts"],
        "galaxy_index": ["morphology_predictions", "property_posteriors", "raw_cutouts",
                         "search_vectors", "vlm_captions"],
        "index_maintenance": ["galaxy_index"],
    }
    assert sorted(j.name for j in defs.jobs) == [
        "aligner_job", "captions_job", "emulator_job", "evaluation_job", "index_job",
        "index_maintenance_job", "ingest_shard_job", "morphology_job", "posteriors_job",
        "reindex_job", "shard_embeddings_job", "survey_job"]
    assert sorted(s.name for s in defs.sensors) == [
        "search_aligner_champion_sensor", "survey_shards_sensor"]
    assert [s.name for s in defs.schedules] == ["index_maintenance_nightly"]
    assert sorted(defs.resources) == [
        "captioner", "compute", "home", "image_encoder", "io_manager", "mlflow", "search_index",
        "survey", "text_embedder"]


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
