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
