"""Fixtures of the emulator tests: synthetic tables with known posteriors, tiny trained
models (trained once per test process), a tiny mock survey, an MLflow store."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

# A tiny model: trains in seconds on one core.
TINY_MODEL = {
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "d_ff": 64,
    "head_hidden": 32,
    "head_layers": 2,
    "time_dim": 16,
}
NOISE = 0.5  # y = x + NOISE * N(0, 1): the posterior of y given x is N(x, NOISE^2)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread per test process (two xdist workers share two cores; OpenMP
    barriers of two threads each spin against each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gaussian_frame(n: int, seed: int, prefix: str = "g") -> pl.DataFrame:
    """``x ~ N(0, 1)``, ``y = x + 0.5 N(0, 1)``: the true posterior of y is ``N(x, 0.25)``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = x + NOISE * rng.normal(size=n)
    return pl.DataFrame(
        {"object_id": [f"{prefix}{seed}-{i:05d}" for i in range(n)], "x": x, "y": y}
    )


def chain_frame(n: int, seed: int) -> pl.DataFrame:
    """Inputs ``x``, ``w`` (irrelevant noise); labels ``a = x + 0.7 u``, ``b = a + 0.3 v``
    (correlated given x) and ``m = ±1.5 + 0.3 e`` (bimodal whatever the inputs)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    a = x + 0.7 * rng.normal(size=n)
    b = a + 0.3 * rng.normal(size=n)
    m = np.where(rng.random(n) < 0.5, -1.5, 1.5) + 0.3 * rng.normal(size=n)
    return pl.DataFrame(
        {
            "object_id": [f"c{seed}-{i:05d}" for i in range(n)],
            "x": x,
            "w": rng.normal(size=n),
            "a": a,
            "b": b,
            "m": m,
        }
    )


@dataclass
class Trained:
    result: object  # TrainResult
    table: object  # EmulatorTable

    @property
    def model(self):
        return self.result.model


@pytest.fixture(scope="session")
def gaussian_model() -> Trained:
    """A tiny emulator trained on :func:`gaussian_frame` (2,000 rows, 30 epochs)."""
    from galaxy_assets.emulator import TrainConfig, make_table, train_emulator

    table = make_table(gaussian_frame(2000, seed=0), ["x"], ["y"])
    cfg = TrainConfig(
        epochs=30,
        batch_size=64,
        lr=3e-3,
        diffusion_repeats=8,
        val_fraction=0.2,
        patience=30,
        seed=0,
        model=TINY_MODEL,
    )
    return Trained(train_emulator(table, cfg), table)


@pytest.fixture(scope="session")
def chain_model() -> Trained:
    """A tiny emulator trained on :func:`chain_frame` (labels a, b, m)."""
    from galaxy_assets.emulator import TrainConfig, make_table, train_emulator

    table = make_table(chain_frame(2000, seed=1), ["x", "w"], ["a", "b", "m"])
    cfg = TrainConfig(
        epochs=40,
        batch_size=64,
        lr=3e-3,
        diffusion_repeats=16,
        val_fraction=0.2,
        patience=40,
        seed=1,
        model=TINY_MODEL,
    )
    return Trained(train_emulator(table, cfg), table)


@dataclass
class TinySurvey:
    root: Path
    manifest: pl.DataFrame
    truth: pl.DataFrame


@pytest.fixture(scope="session")
def tiny_survey(tmp_path_factory) -> TinySurvey:
    """40 mock galaxies at 32 px (griz) with manifests and truth tables."""
    from galaxy_assets.survey.manifest import build_manifest
    from galaxy_assets.survey.mock import simulate_survey
    from galaxy_assets.survey.readers import find_shards, open_shard, shard_key
    from galaxy_assets.survey.truth import load_truth

    root = tmp_path_factory.mktemp("emulator_mock")
    simulate_survey(root, 40, size=32, seed=21, workers=1)
    frames = []
    for path in find_shards(root):
        with open_shard(path) as reader:
            frames.append(build_manifest(reader, shard_key(root, path)).frame)
    manifest = pl.concat(frames)
    truth = load_truth(manifest["shard_uri"].unique().to_list())
    assert truth is not None
    return TinySurvey(root, manifest, truth)


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An initialised MLflow sqlite store (migrations take seconds; tests copy it)."""
    from galaxy_assets.tracking import Tracker

    folder = tmp_path_factory.mktemp("emulator_mlflow_template")
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts")
    tracker.client.search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def tracker(tmp_path, _mlflow_template):
    """A fresh, empty MLflow store in this test's tmp_path."""
    from galaxy_assets.tracking import Tracker

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    return Tracker(f"sqlite:///{db}", tmp_path / "art")
