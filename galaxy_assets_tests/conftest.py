"""Shared test set-up: every test runs against its own home folder, never the user's."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# the user's settings and servers that the code reads from the environment
_USER_VARIABLES = ("GALAXY_ASSETS_CONFIG", "DAGSTER_HOME", "MLFLOW_TRACKING_URI")


def _user_settings(environ) -> list[str]:
    return [v for v in environ if v.startswith("GALAXY_ASSETS_") or v in _USER_VARIABLES]


def pytest_configure(config):
    """Before collection: the asset modules read the settings when they are imported (GPU
    step tags, backfill policies), so the user's environment and ./.galaxy_home/config.yaml
    must be out of reach by then, not only once the first test's fixture runs."""
    for var in _user_settings(os.environ):
        os.environ.pop(var)
    config._collect_home = tempfile.mkdtemp(prefix="galaxy_assets_collect_")
    os.environ["GALAXY_ASSETS_HOME"] = config._collect_home


def pytest_unconfigure(config):
    home = getattr(config, "_collect_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Point GALAXY_ASSETS_HOME at a fresh folder and keep the user's settings (config file,
    DAGSTER_HOME, MLFLOW_TRACKING_URI, GALAXY_ASSETS_* variables) unset."""
    home = tmp_path_factory.mktemp("galaxy_home")
    for var in _user_settings(os.environ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GALAXY_ASSETS_HOME", str(home))
    return home
