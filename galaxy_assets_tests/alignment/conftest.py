"""Fixtures of the alignment tests: one torch thread, a fresh MLflow store per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import galaxy_assets  # noqa: F401  (torchvision import hook before anything imports timm)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads spinning against
    other processes make a tiny training step 10-20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An initialised MLflow sqlite store (migrations take seconds; tests copy it)."""
    from galaxy_assets.tracking import Tracker

    folder = tmp_path_factory.mktemp("aligner_mlflow_template")
    Tracker(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts").client.search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def tracker(tmp_path, _mlflow_template):
    """A fresh, empty MLflow store in this test's tmp_path."""
    from galaxy_assets.tracking import Tracker

    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(_mlflow_template, db)
    return Tracker(f"sqlite:///{db}", tmp_path / "mlflow" / "artifacts")
