"""Fixtures of the morphology tests: a tiny mock survey with its manifest, an MLflow store."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

N_GALAXIES = 120
SIZE = 32


@dataclass
class TinySurvey:
    root: Path
    manifest: pl.DataFrame


def _manifest(root: Path) -> pl.DataFrame:
    from galaxy_assets.survey.manifest import build_manifest
    from galaxy_assets.survey.readers import find_shards, open_shard, shard_key

    frames = []
    for path in find_shards(root):
        with open_shard(path) as reader:
            frames.append(build_manifest(reader, shard_key(root, path)).frame)
    return pl.concat(frames)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread per test process: under ``pytest -n 2`` on two cores, two
    workers × two OpenMP threads oversubscribe the CPU and a tiny training step goes from
    ~25 ms to seconds (OpenMP barriers spinning against each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_survey(tmp_path_factory) -> TinySurvey:
    """120 mock galaxies at 32 px (griz) in a few HEALPix shards, with truth tables."""
    from galaxy_assets.survey.mock import simulate_survey

    root = tmp_path_factory.mktemp("morph_mock")
    simulate_survey(root, N_GALAXIES, size=SIZE, seed=5, workers=1)
    return TinySurvey(root=root, manifest=_manifest(root))


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An initialised MLflow sqlite store (migrations take seconds; tests copy it)."""
    from galaxy_assets.tracking import Tracker

    folder = tmp_path_factory.mktemp("mlflow_template")
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts")
    tracker.client.search_experiments()  # creates the tables
    return folder / "mlflow.db"


@pytest.fixture
def tracker(tmp_path, _mlflow_template):
    """A fresh, empty MLflow store in this test's tmp_path."""
    from galaxy_assets.tracking import Tracker

    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(_mlflow_template, db)
    return Tracker(f"sqlite:///{db}", tmp_path / "mlflow" / "artifacts")
