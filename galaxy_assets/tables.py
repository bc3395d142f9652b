"""Markdown rendering of small tables for Dagster metadata and reports."""

from __future__ import annotations

import polars as pl


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(frame: pl.DataFrame, max_rows: int = 20) -> str:
    """A GitHub-style Markdown table of the first ``max_rows`` rows of ``frame``."""
    if frame.width == 0:
        return "(no columns)"
    head = frame.head(max_rows)
    lines = [
        "| " + " | ".join(frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    for row in head.iter_rows():
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if frame.height > max_rows:
        lines.append(f"| … {frame.height - max_rows} more rows |" + " |" * (frame.width - 1))
    return "\n".join(lines)
