"""Fixtures of the captioning tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from galaxy_assets_tests.captioning.tiny_vlm import build_tiny_llava


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """A folder holding a tiny random-weight LLaVA saved with save_pretrained (built once)."""
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))
