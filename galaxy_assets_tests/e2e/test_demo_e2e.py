"""End to end: the demo command on a ~200-galaxy mock survey with one corrupt shard.

Runs `galaxy-assets demo` in a subprocess, as a user would, against a temporary home.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import polars as pl
import pytest

from galaxy_assets.cli import ensure_mock_survey
from galaxy_assets.runtime import Home
from galaxy_assets.survey.readers import find_shards, shard_key

# heavy: never beside another multi-process test (pyproject's addopts)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("heavy")]


def _demo(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["GALAXY_ASSETS_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "galaxy_assets.cli", "demo", *args],
        env=env, capture_output=True, text=True, timeout=900,
    )


def test_demo_with_one_corrupt_shard(isolated_home):
    home = Home.from_env().ensure()
    ensure_mock_survey(home, n=200, size=48, seed=3, workers=2)
    shards = find_shards(home.mock_survey)
    assert len(shards) >= 3
    truth = {p: pl.read_parquet(p.with_suffix(".truth.parquet")).height for p in shards}
    # corrupt the largest shard: cut the file in half
    bad = max(shards, key=lambda p: truth[p])
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError):
        h5py.File(bad, "r")

    proc = _demo(home.root, "--n", "200", "--size", "48", "--seed", "3", "--captions", "120",
                 "--emulator-budget", "20", "--encoder-epochs", "6")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]  # one shard failed
    bad_key = shard_key(home.mock_survey, bad)
    assert "reusing 200 galaxies" in out
    assert f"{bad_key}" in out and "FAILED" in out

    manifests = home.parquet / "raw_cutouts"
    for shard in shards:
        key = shard_key(home.mock_survey, shard)
        path = manifests / f"{key}.parquet"
        if shard == bad:
            assert not path.exists()
            continue
        frame = pl.read_parquet(path)
        rejected = pl.read_parquet(home.parquet / "raw_cutouts_rejected" / f"{key}.parquet")
        assert frame.height + rejected.height == truth[shard], key  # complete
        assert frame["object_id"].n_unique() == frame.height

    # the rest of the graph ran on the good shards: captions, encoder, aligner, vectors
    assert "morphology-encoder (6 epochs at most)" in out  # the demo's --encoder-epochs
    assert "captions: 120 (120 new" in out
    assert "morphology_job: ok" in out and "aligner_job: ok" in out
    assert "evaluation_job: ok" in out and "index_job: ok" in out
    assert "emulator_job: ok" in out and "posteriors_job: ok" in out
    assert "property-emulator v1:" in out  # its calibration line
    vectors = list((home.parquet / "search_vectors").glob("*.parquet"))
    assert len(vectors) == len(shards) - 1
    # the evaluation report holds numbers for every target and method
    report = json.loads((home.reports / "search_evaluation" / "v1" / "evaluation.json")
                        .read_text())
    methods = {"semantic", "semantic_rerank", "image_similarity", "random"}
    summary = subprocess.run(
        [sys.executable, "-m", "galaxy_assets.cli", "evaluate", "--json"],
        env={**os.environ, "GALAXY_ASSETS_HOME": str(home.root)},
        capture_output=True, text=True, timeout=300,
    )
    figures = json.loads(summary.stdout)["targets"]
    assert report and set(figures) >= {"spirals", "mergers", "lenses"}
    for target, per_method in figures.items():
        # image similarity needs query galaxies (vote fraction ≥ 0.5): a 200-galaxy survey
        # has them for the common classes only
        assert set(per_method) >= {"semantic", "semantic_rerank", "random"}, target
        assert all("ndcg@10" in m for m in per_method.values()), target
    assert set(figures["spirals"]) == methods
    # every target's semantic search is also scored on galaxies without and with a training
    # caption, or says why it could not be (a tiny survey has few uncaptioned members)
    for target, info in report["targets"].items():
        split = info["caption_split"]
        assert split["n_captioned"] + split["n_uncaptioned"] == info["n_candidates"], target
        assert "uncaptioned" in split or split["reason"], target
    assert (home.reports / "search_evaluation" / "v1" / "report.md").exists()
    # the index holds the good shards' galaxies and the demo printed searches from it
    from galaxy_assets.search.table import open_table

    manifested = sum(pl.read_parquet(f).height for f in manifests.glob("*.parquet"))
    assert open_table(home.lancedb).count_rows() == manifested
    assert f"galaxy_index: {manifested} rows" in out
    assert "merging galaxies with tidal tails — top 8" in out
    assert "contact sheet:" in out
    assert (home.mlflow / "mlflow.db").exists()

    # the runs are in the persistent Dagster instance in the home
    assert (home.dagster / "dagster.yaml").exists()
    assert any((home.dagster / "storage").iterdir())
    # the evaluation's plots and example grids are shown inline in the asset's metadata
    import dagster as dg

    from galaxy_assets.cli import _latest_metadata

    with dg.DagsterInstance.from_config(str(home.dagster)) as instance:
        meta = _latest_metadata(instance, "search_evaluation")
        aligned = _latest_metadata(instance, "aligned_model")
        captions = _latest_metadata(instance, "caption_embeddings")
    # the aligner records the captions it learned from (a rerun retrains when they change)
    assert aligned["caption_texts_fingerprint"] == captions["texts_fingerprint"]
    assert aligned["caption_embedder"] == captions["embedder"]
    for target in ("spirals", "mergers", "lenses"):
        assert meta[f"grid_{target}"].startswith(f"![{target}](data:image/png;base64,"), target
        assert str(meta[f"grid_{target}_path"]).endswith(f"grids/{target}.png")
    assert any(k.startswith("plot_") for k in meta)
    # and the aligner's MLflow run holds the figures, the report and what was read
    from galaxy_assets.tracking import Tracker

    tracker = Tracker.from_home(home)
    run = tracker.client.get_run(tracker.resolve_version("search-aligner", 1).run_id)
    assert run.data.tags["eval.version.aligner"] == "search-aligner/v1"
    assert run.data.tags["eval.version.image_encoder"].startswith("registry:morphology-encoder/v1")
    assert run.data.metrics["eval/gate_passed"] == 1.0
    assert "eval/spirals/semantic/ndcg_at_10" in run.data.metrics
    artifacts = {a.path for a in tracker.client.list_artifacts(run.info.run_id,
                                                                 "search_evaluation")}
    assert "search_evaluation/report.md" in artifacts

    # rerun: nothing is simulated again, good shards are not rematerialized
    again = _demo(home.root, "--n", "200", "--size", "48", "--seed", "3", "--captions", "120",
                 "--emulator-budget", "20", "--encoder-epochs", "6")
    out2 = again.stdout + again.stderr
    assert "reusing 200 galaxies" in out2
    assert "materializing raw_cutouts for 1" in out2  # only the failed shard is retried
    assert "captions: 120 (0 new, 120 reused" in out2
    assert "reusing the registered model" in out2  # the same --encoder-epochs: no retraining
    assert "inputs unchanged: property emulator reused" in out2
    assert "every shard has posteriors" in out2
    # the evaluation records its re-ranker; an unchanged aligner and re-ranker reuse it
    assert "aligner and re-ranker unchanged: evaluation reused" in out2
    assert "reranker morphology-describer-v1@" in out2

    # a new encoder champion (as if promoted from the Dagster UI; here a copy of the current
    # one): the rerun embeds every shard again, and the new aligner replaces the champion, which
    # was trained on the old encoder's vectors and can neither be compared on the new ones nor
    # serve the index rebuilt from them
    from galaxy_assets.tracking import Tracker

    tracker = Tracker.from_home(home)
    encoder = tracker.get_alias_version("morphology-encoder", "champion")
    copy = tracker.register(encoder.run_id, "model", "morphology-encoder")
    tracker.set_alias("morphology-encoder", "champion", copy)
    third = _demo(home.root, "--n", "200", "--size", "48", "--seed", "3", "--captions", "120",
                  "--emulator-budget", "20", "--encoder-epochs", "6")
    out3 = third.stdout + third.stderr
    assert "reusing the registered model" in out3
    assert "shard_embeddings_job: ok" in out3 and "aligner_job: ok" in out3
    assert "evaluation_job: ok" in out3 and "index_job: ok" in out3, out3[-4000:]
    assert "champion gate: promoted candidate v2" in out3
    gate = (home.reports / "search_evaluation" / "v2" / "report.md").read_text()
    assert "search-aligner v1 cannot be compared" in gate
    assert f"morphology-encoder/v{copy}+rot4" in gate
    assert open_table(home.lancedb).count_rows() == manifested
