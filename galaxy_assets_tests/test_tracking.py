"""The MLflow layer: runs, artifacts, state-dict models, registry aliases and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from galaxy_assets.tracking import META_FILE, WEIGHTS_FILE, Tracker, TrackingError

LOADER = "galaxy_assets.morphology.model:build_from_config"


@pytest.fixture(scope="module")
def _template(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mlflow_template")
    Tracker(f"sqlite:///{folder / 'mlflow.db'}", folder / "art").client.search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def tracker(tmp_path, _template) -> Tracker:
    shutil.copy(_template, tmp_path / "mlflow.db")
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")


@pytest.fixture(scope="module")
def tiny_model():
    import galaxy_assets  # noqa: F401  (torchvision hook before timm)
    from galaxy_assets.morphology.model import build_model, preset_config

    torch.set_num_threads(1)
    cfg = preset_config("tiny", image_size=16)
    return build_model(cfg, seed=1), cfg.to_dict()


def test_runs_log_params_metrics_figures_and_markdown(tracker, tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    with tracker.start_run("exp-a", run_name="r1", tags={"kind": "test"}) as run:
        run.log_params({"lr": 0.001, "model": {"name": "tiny", "widths": [1, 2]}})
        run.log_metrics({"loss": 2.0, "bad": "x"}, step=1)
        run.log_metric("loss", 1.0, step=2)
        run.log_figure(fig, "plots/curve.png")
        run.log_markdown("# hello\n", "report.md")
    data = tracker.client.get_run(run.run_id)
    assert data.info.status == "FINISHED" and data.data.tags["kind"] == "test"
    assert data.data.params == {"lr": "0.001", "model.name": "tiny", "model.widths": "[1, 2]"}
    assert data.data.metrics == {"loss": 1.0}
    assert tracker.run_metrics(run.run_id) == {"loss": 1.0}
    art = Path(data.info.artifact_uri.removeprefix("file://"))
    assert art.is_relative_to(tracker.artifact_root / "exp-a")
    assert (art / "plots" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (art / "report.md").read_text() == "# hello\n"

    import polars as pl

    rid = tracker.log_report(
        "reports",
        "scaling",
        markdown="| a |\n",
        figures={"fit": fig},
        metrics={"alpha": 0.3},
        tables={"points": pl.DataFrame({"n": [1]})},
    )
    rart = Path(tracker.client.get_run(rid).info.artifact_uri.removeprefix("file://"))
    assert (rart / "report.md").is_file() and (rart / "plots" / "fit.png").is_file()
    assert (rart / "tables" / "points.csv").read_text().startswith("n\n1")
    assert tracker.run_metrics(rid) == {"alpha": 0.3}

    with pytest.raises(RuntimeError, match="boom"), tracker.start_run("exp-a") as failing:
        raise RuntimeError("boom")
    assert tracker.client.get_run(failing.run_id).info.status == "FAILED"


def test_model_round_trip_through_the_registry(tracker, tiny_model):
    model, config = tiny_model
    with tracker.start_run("models") as run:
        path = run.log_torch_model("model", model.state_dict(), config, LOADER)
    folder = Path(run.artifact_uri.removeprefix("file://")) / path
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["code_ref"] == LOADER and meta["config"] == config
    assert (folder / WEIGHTS_FILE).is_file() and not list(folder.glob("*.pkl"))

    assert tracker.get_alias_version("morphology-encoder", "champion") is None
    v1 = tracker.register(run.run_id, path, "morphology-encoder")
    v2 = tracker.register(run.run_id, path, "morphology-encoder")
    assert (v1, v2) == (1, 2)
    tracker.set_alias("morphology-encoder", "champion", v1)
    assert int(tracker.get_alias_version("morphology-encoder", "champion").version) == 1
    loaded, cfg = tracker.load_torch_model("morphology-encoder", "champion")
    assert cfg == config and not loaded.training
    want = model.state_dict()
    assert all(torch.equal(loaded.state_dict()[k], want[k]) for k in want)
    loaded2, _ = tracker.load_torch_model("morphology-encoder", 2)
    assert type(loaded2) is type(model)


def test_promote_if_better(tracker, tiny_model):
    model, config = tiny_model
    versions = []
    for loss in (2.0, 3.0, 1.5):
        with tracker.start_run("models") as run:
            run.log_metrics({"val_loss": loss})
            path = run.log_torch_model("model", model.state_dict(), config, LOADER)
        versions.append(tracker.register(run.run_id, path, "enc"))
    results = [tracker.promote_if_better("enc", v, "val_loss") for v in versions]
    assert [r.promoted for r in results] == [True, False, True]
    assert results[1].previous_version == 1 and "does not beat" in results[1].reason
    assert int(tracker.get_alias_version("enc", "champion").version) == 3


def test_errors_name_the_model_and_what_to_do(tracker, tiny_model, tmp_path):
    model, config = tiny_model
    with pytest.raises(TrackingError, match="no registered model 'ghost'.*train and register"):
        tracker.load_torch_model("ghost", "champion")
    with tracker.start_run("models") as run:
        path = run.log_torch_model("model", model.state_dict(), config, LOADER)
        with pytest.raises(TrackingError, match="not a tensor"):
            run.log_torch_model("bad", {"w": 3}, config, LOADER)
        with pytest.raises(TrackingError, match="package.module:function"):
            run.log_torch_model("bad", model.state_dict(), config, "no_colon")
    with pytest.raises(TrackingError, match="no model at 'nothing'"):
        tracker.register(run.run_id, "nothing", "enc")
    version = tracker.register(run.run_id, path, "enc")
    with pytest.raises(TrackingError, match=r"no alias 'prod'.*set_alias\('enc', 'prod'"):
        tracker.load_torch_model("enc", "prod")
    with pytest.raises(TrackingError, match="has no version 9"):
        tracker.load_torch_model("enc", 9)

    folder = Path(run.artifact_uri.removeprefix("file://")) / path
    meta = json.loads((folder / META_FILE).read_text())
    strict = Tracker(tracker.tracking_uri, tracker.artifact_root, allowed_loaders=("other.",))
    with pytest.raises(TrackingError, match="outside the trusted modules"):
        strict.load_torch_model("enc", version)
    (folder / META_FILE).write_text(json.dumps({**meta, "code_ref": "os:system"}))
    with pytest.raises(TrackingError, match="outside the trusted modules"):
        tracker.load_torch_model("enc", version)
    (folder / META_FILE).write_text(json.dumps(meta))
    with (folder / WEIGHTS_FILE).open("r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(TrackingError, match="checksum"):
        tracker.load_torch_model("enc", version)


_CONCURRENT_FIRST_RUN = """
import sys
from galaxy_assets.tracking import Tracker
t = Tracker(sys.argv[1], sys.argv[2])
with t.start_run("race", run_name=sys.argv[3]) as run:
    run.log_metrics({"a": 1.0}, step=0)
"""


def test_a_registry_that_does_not_answer_is_not_a_missing_model(tracker, monkeypatch):
    """A connection error (after MLflow's own retries) read as "no registered model": the
    morphology gate then replaced a champion it could not reach."""
    from mlflow.exceptions import MlflowException

    def unreachable(*args, **kwargs):
        raise MlflowException("API request to http://mlflow:5000 failed with exception "
                              "ConnectionError")

    monkeypatch.setattr(tracker.client, "get_registered_model", unreachable)
    with pytest.raises(MlflowException, match="ConnectionError"):
        tracker.load_torch_model("morphology-encoder", 1)


def test_concurrent_first_runs_share_a_new_sqlite_store(tmp_path):
    """Two run processes opening a fresh SQLite store at once both succeed (its creation and
    migration are serialised by a lock file; unguarded, one fails with 'duplicate column')."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_FIRST_RUN, uri, str(tmp_path / "art"), f"p{i}"],
            stderr=subprocess.PIPE, text=True,
        )
        for i in range(3)
    ]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    runs = Tracker(uri, tmp_path / "art").client.search_runs(
        [Tracker(uri, tmp_path / "art").experiment_id("race")]
    )
    assert sorted(r.info.run_name for r in runs) == ["p0", "p1", "p2"]


def test_an_object_store_artifact_root_stays_a_uri(tmp_path, monkeypatch):
    """The cluster profile's s3:// artifact root is handed to MLflow as is; as a Path it became
    a local folder 's3:/…' and models were written to one machine's disk."""
    monkeypatch.chdir(tmp_path)
    t = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "s3://galaxy-assets/mlflow/")
    assert t.artifact_uri == "s3://galaxy-assets/mlflow" and t.artifact_root is None
    assert not (tmp_path / "s3:").exists()
    exp = t.client.get_experiment(t.experiment_id("search-aligner"))
    assert exp.artifact_location == "s3://galaxy-assets/mlflow/search-aligner"
    assert "s3://galaxy-assets/mlflow" in repr(t)
    local = Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "art")
    assert local.artifact_uri is None and local.artifact_root == (tmp_path / "art").resolve()
