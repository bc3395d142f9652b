"""Exceptions of the survey domain.

Every error names the file (and, where it applies, the field or row) that was wrong and
says what was expected, so a person reading a failed Dagster partition knows what to fix.
"""

from __future__ import annotations

from pathlib import Path


class SurveyError(Exception):
    """Base class for every error raised by ``galaxy_assets.survey``."""


class SurveyFormatError(SurveyError):
    """A cutout file or folder does not have the expected layout or content.

    ``path`` is the offending file, ``field`` the dataset/column/header keyword (or None),
    ``expected`` a short statement of what a valid file holds.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        self.expected = expected
        where = f"{self.path}" + (f" [field {field!r}]" if field else "")
        msg = f"{where}: {problem}"
        if expected:
            msg += f"; expected {expected}"
        super().__init__(msg)


class SurveyConfigError(SurveyError):
    """A survey setting (roots, bands, cutout size) is invalid."""
