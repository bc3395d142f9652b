"""Morphology domain: Galaxy Zoo decision trees (and, later, the vote-trained encoder).

Plain Python; knows nothing of Dagster.
"""

from galaxy_assets.morphology.decision_tree import (
    DEFAULT_TREE_FILE,
    DecisionTree,
    Question,
    default_tree,
    load_tree,
)
from galaxy_assets.morphology.errors import DecisionTreeError, MorphologyError

__all__ = [
    "DEFAULT_TREE_FILE",
    "DecisionTree",
    "DecisionTreeError",
    "MorphologyError",
    "Question",
    "default_tree",
    "load_tree",
]
