"""The suite's own scheduling (pyproject's ``--dist loadgroup``).

The tests that start several processes each (dask clusters, the demo and lens end-to-end runs)
carry ``xdist_group("heavy")`` so that pytest-xdist runs them one after another on one worker.
The group travels to xdist's scheduler as a suffix on the node id. pytest 9.2 stopped taking
that suffix (pytest-xdist issue 1386): nothing failed, the heavy tests simply ran side by side
on both workers again. This test fails instead, if a pytest or xdist upgrade breaks it again.
"""

from __future__ import annotations

import os

import pytest


@pytest.mark.xdist_group("heavy")
def test_the_heavy_group_reaches_the_xdist_scheduler(request):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("the group only matters under pytest-xdist (-n N)")
    if not request.config.getoption("loadgroup", default=False):
        pytest.skip("xdist runs with another --dist mode than loadgroup")
    assert request.node.nodeid.endswith("@heavy"), (
        f"xdist sees node id {request.node.nodeid!r} without its '@heavy' group suffix, so "
        "--dist loadgroup does not group the multi-process tests: keep pytest and pytest-xdist "
        "at versions where it works (pyproject.toml, constraints.txt)"
    )


def test_the_users_settings_do_not_reach_the_tests(tmp_path):
    """The asset modules read the settings when they are imported, during collection: a
    user's GALAXY_ASSETS_* variables (and MLFLOW_TRACKING_URI) must be gone by then, not
    only once the first test's fixture runs. Here a GPU toleration list the user set for their
    cluster broke a test that checks the default one, when collected with an asset module."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(GALAXY_ASSETS_CLUSTER_GPU_TOLERATIONS="[]",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/leak.db")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         "galaxy_assets_tests/defs/test_execution.py",
         "galaxy_assets_tests/defs/test_alignment_assets.py",
         "-k", "test_kubernetes_job_of_a_gpu_asset or test_local_profile_is_the_default"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "2 passed" in run.stdout
    assert not (tmp_path / "leak.db").exists()
