"""A self-contained HTML contact sheet of search results, to judge them by eye.

Each result is a card: a thumbnail rendered from the shard pixels (Lupton RGB, PNG embedded
as a ``data:`` URI, so the file needs nothing else), the rank and score (and the rating
after re-ranking), the object_id, the position linked to the Legacy Survey viewer, and the
caption. Every piece of text is HTML-escaped. A galaxy whose pixels cannot be read gets a
card saying why.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from galaxy_assets.search.errors import SearchError
from galaxy_assets.search.pixels import Cutout, read_cutouts

log = logging.getLogger(__name__)

__all__ = ["render_contact_sheet", "write_contact_sheet"]

_STYLE = """
body{background:#0e0f14;color:#e2e5ec;font-family:system-ui,sans-serif;margin:16px}
h1{font-size:20px;margin:0 0 4px}
.meta{color:#a0a6b4;font-size:13px;margin-bottom:14px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:%(w)dpx;background:#181a22;border:1px solid #343844;border-radius:6px;padding:8px;
font-size:12px;line-height:1.35}
.card img,.card .missing{width:%(t)dpx;height:%(t)dpx;display:block;image-rendering:auto}
.missing{background:#262935;color:#a0a6b4;font-size:11px;overflow:hidden;padding:4px;
box-sizing:border-box}
.head{font-weight:600;margin-top:6px}
.id{font-family:ui-monospace,monospace;word-break:break-all}
.caption{color:#c4c8d2;margin-top:4px}
.err{color:#e0a040}
a{color:#7fb0ff}
"""


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "–"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return html.escape(str(value))


def _thumbnail(cut: Cutout, size: int) -> str:
    from galaxy_assets.survey.rgb import lupton_rgb, to_png

    png = to_png(lupton_rgb(cut.image, cut.bands), size=size)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_contact_sheet(
    results: Any,
    *,
    title: str | None = None,
    thumb_px: int = 128,
    max_items: int | None = 200,
    bands: Sequence[str] | None = None,
) -> str:
    """The HTML text of a contact sheet of ``results`` (a frame from :class:`GalaxySearch`,
    or its :class:`SearchResults`, or a re-ranked frame)."""
    meta: list[str] = []
    frame = getattr(results, "frame", results)
    if not isinstance(frame, pl.DataFrame):
        raise SearchError(f"results must be a polars DataFrame or SearchResults, not {type(frame)}")
    if hasattr(results, "table_version"):
        meta.append(f"galaxy_index v{results.table_version}")
        title = title or f"Search: {results.query}"
    if "object_id" not in frame.columns:
        raise SearchError("results lack column 'object_id'")
    if isinstance(thumb_px, bool) or not isinstance(thumb_px, int) or not 16 <= thumb_px <= 1024:
        raise SearchError(f"thumb_px={thumb_px!r}: give a size in 16..1024 px")
    title = title or "Search results"
    if "rank" in frame.columns:
        frame = frame.sort("rank")
    if max_items is not None:
        frame = frame.head(int(max_items))
    cutouts: dict[str, Cutout | str] = {}
    if {"shard_uri", "row"} <= set(frame.columns):
        cutouts = read_cutouts(frame, bands=bands)
    meta.append(f"{frame.height} galaxies")
    meta.append(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    cards = []
    for k, row in enumerate(frame.iter_rows(named=True), start=1):
        oid = str(row["object_id"])
        cut = cutouts.get(oid, "no shard_uri/row in the results")
        if isinstance(cut, Cutout):
            try:
                picture = (
                    f'<img src="{_thumbnail(cut, thumb_px)}" alt="{html.escape(oid, quote=True)}">'
                )
            except Exception as exc:  # noqa: BLE001 - one bad cutout never sinks the sheet
                picture = f'<div class="missing">cannot render: {html.escape(str(exc))}</div>'
        else:
            picture = f'<div class="missing">no image: {html.escape(str(cut))}</div>'
        head = f"#{int(row['rank']) if row.get('rank') is not None else k}"
        if row.get("score") is not None:
            head += f" · score {_fmt(row['score'], '.3f')}"
        if "rating" in row:
            head += f" · rating {_fmt(row.get('rating'), '.1f')}"
        if row.get("similarity_rank") is not None:
            head += f" (was #{int(row['similarity_rank'])})"
        lines = [picture, f'<div class="head">{html.escape(head)}</div>']
        lines.append(f'<div class="id">{html.escape(oid)}</div>')
        ra, dec = row.get("ra"), row.get("dec")
        pos = f"ra {_fmt(ra, '.5f')}, dec {_fmt(dec, '.5f')}"
        url = row.get("viewer_url")
        if url:
            lines.append(
                f'<div><a href="{html.escape(str(url), quote=True)}" target="_blank" '
                f'rel="noopener">{html.escape(pos)}</a></div>'
            )
        else:
            lines.append(f"<div>{html.escape(pos)}</div>")
        if row.get("mag_r") is not None:
            lines.append(f"<div>r = {_fmt(row['mag_r'], '.2f')}</div>")
        if row.get("rating_error"):
            lines.append(f'<div class="err">{html.escape(str(row["rating_error"]))}</div>')
        caption = row.get("caption")
        if caption:
            lines.append(f'<div class="caption">{html.escape(str(caption))}</div>')
        cards.append('<div class="card">' + "".join(lines) + "</div>")
    style = _STYLE % {"w": thumb_px + 16, "t": thumb_px}
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<div class="meta">{html.escape(" · ".join(meta))}</div>'
        f'<div class="grid">{"".join(cards)}</div></body></html>\n'
    )


def write_contact_sheet(
    results: Any,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    thumb_px: int = 128,
    max_items: int | None = 200,
    bands: Sequence[str] | None = None,
) -> Path:
    """Write :func:`render_contact_sheet` to ``path`` (atomically) and return the path."""
    text = render_contact_sheet(
        results, title=title, thumb_px=thumb_px, max_items=max_items, bands=bands
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex[:8]}-{target.name}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote contact sheet %s", target)
    return target
