"""Warm-up for the mock survey's worker processes.

The mock survey starts its workers from a ``forkserver`` that imports this module once; the
import builds the per-process tables (K-corrections, distances) and loads lenstronomy, so
every forked worker starts warm instead of paying ~2 s each. Importing it elsewhere is harmless.
"""

from __future__ import annotations

from galaxy_assets.survey import mock  # noqa: F401  (the worker code itself)
from galaxy_assets.survey.mock_photometry import tables
from galaxy_assets.survey.mock_render import _lens_models

tables()
_lens_models()
