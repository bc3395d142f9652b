"""Shared test set-up: every test runs against its own home folder, never the user's."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Point GALAXY_ASSETS_HOME at a fresh folder and keep DAGSTER_HOME/config unset."""
    home = tmp_path_factory.mktemp("galaxy_home")
    monkeypatch.setenv("GALAXY_ASSETS_HOME", str(home))
    monkeypatch.delenv("GALAXY_ASSETS_CONFIG", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for var in list(os.environ):
        if var.startswith("GALAXY_ASSETS_") and var != "GALAXY_ASSETS_HOME":
            monkeypatch.delenv(var, raising=False)
    return home
