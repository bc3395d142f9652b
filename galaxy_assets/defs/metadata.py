"""Turning plots and figures into Dagster metadata (PNG files shown inline in the UI)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import dagster as dg


def figure_metadata(figure, path: Path) -> dict[str, dg.MetadataValue]:
    """Save a matplotlib figure as PNG at ``path`` and return metadata that shows it inline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    data = buffer.getvalue()
    path.write_bytes(data)
    encoded = base64.b64encode(data).decode("ascii")
    return {
        "plot": dg.MetadataValue.md(f"![{path.stem}](data:image/png;base64,{encoded})"),
        "plot_path": dg.MetadataValue.path(str(path)),
    }


def scalar_metadata(values: dict) -> dict[str, object]:
    """Keep the int/float/str/bool entries of ``values`` (Dagster renders them natively)."""
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, bool | int | float | str):
            out[str(key).replace("/", "__")] = value
    return out
