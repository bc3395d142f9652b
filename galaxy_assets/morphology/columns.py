"""The names of the morphology summary columns (``morphology_predictions``' ``p_*``).

Kept apart from :mod:`galaxy_assets.morphology.predict` (which imports torch) so the search
table and the emulator can name them cheaply; ``predict.SUMMARY_ANSWERS`` defines what each
one sums, in this order (a test keeps the two in step).
"""

SUMMARY_COLUMNS: tuple[str, ...] = (
    "p_smooth",
    "p_featured",
    "p_artifact",
    "p_edge_on",
    "p_spiral",
    "p_bar",
    "p_merger",
)
