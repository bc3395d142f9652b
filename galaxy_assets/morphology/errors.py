"""Exceptions of the morphology domain."""

from __future__ import annotations


class MorphologyError(Exception):
    """Base class for every error raised by ``galaxy_assets.morphology``."""


class DecisionTreeError(MorphologyError, ValueError):
    """A decision tree (file, dict or vote table) is malformed or does not match the tree.

    Messages name the source (file path or ``<dict>``), the question/answer that was wrong
    and what a valid tree holds.
    """
