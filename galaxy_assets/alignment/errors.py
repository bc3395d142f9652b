"""The exception of the alignment domain."""

from __future__ import annotations


class AlignmentError(Exception):
    """Training or applying the search aligner failed: too few captions, mixed or changed
    embedder / encoder ids, non-finite values, a diverged run. The message names the input
    and the setting or asset to fix."""
