"""Exceptions of the evaluation domain.

Every message says what was wrong, where (the file, target, column or method) and what to do.
"""

from __future__ import annotations


class EvaluationError(Exception):
    """Base class for every error raised by ``galaxy_assets.evaluation``: labels that cannot
    be built, a search callable that returns the wrong shape, results that cannot be compared."""


class TargetConfigError(EvaluationError):
    """A targets file (``targets.yaml`` or a user's file) is missing, unreadable or invalid."""


class CatalogueError(EvaluationError):
    """A user catalogue (Galaxy Zoo votes, lens candidates) is unreadable, lacks a needed column
    or cannot be matched to the survey."""


class NoTruthTableError(EvaluationError):
    """None of the survey's shards has a truth table (a real survey): labels must come from
    user catalogues."""
