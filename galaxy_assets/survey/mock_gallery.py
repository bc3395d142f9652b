"""A labelled gallery of the mock survey's classes (``docs/mock_survey.png``).

:func:`render_class_gallery` simulates galaxies of one survey seed (in this process), picks
``per_class`` examples of every class and lays their g, r, z composites (Lupton asinh, the
Legacy Survey viewer's band scales) out one class per row.

Examples are chosen among *clear* members of each class: those whose feature visibility score
(the same score that drives the simulated Galaxy Zoo votes) is at least ``min_visibility``, and
lenses whose arcs reach a matched S/N of 15 in g. The survey itself is not filtered: most
members of the rare classes are fainter than the gallery suggests (see docs/mock_survey.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galaxy_assets.survey.mock import simulate_galaxy
from galaxy_assets.survey.mock_population import draw_galaxy, morph_type_of
from galaxy_assets.survey.rgb import contact_sheet, lupton_rgb

log = logging.getLogger(__name__)

# (row label, test on the truth record + visibilities drawn before rendering)
GALLERY_CLASSES: tuple[tuple[str, str], ...] = (
    ("elliptical", "is_elliptical"),
    ("spiral arms", "is_spiral"),
    ("bar", "has_bar"),
    ("ring", "has_ring"),
    ("edge-on disc", "is_edge_on"),
    ("clumpy", "is_clumpy"),
    ("irregular", "is_irregular"),
    ("merger / tidal", "is_merger"),
    ("strong lens", "is_lens"),
    ("smooth disc (S0)", "lenticular"),
)
_VIS_KEY = {
    "is_spiral": "arms",
    "has_bar": "bar",
    "has_ring": "ring",
    "is_clumpy": "clumps",
    "is_merger": "tails",
    "is_irregular": "irregular",
}


def _member(flag: str, truth: dict[str, Any], vis: dict[str, float], min_vis: float) -> bool:
    if flag == "lenticular":
        return truth["morph_type"] == "lenticular" and not truth["is_edge_on"] and not truth["has_bar"] and not truth["has_ring"]
    if not truth.get(flag):
        return False
    if flag == "is_elliptical":
        return truth["morph_type"] == "elliptical"
    if flag == "is_edge_on":
        return truth.get("inclination_deg", 0) >= 84.0
    if flag == "is_merger":
        return truth.get("merger_kind") == "major" or vis.get("tails", 0.0) >= min_vis
    key = _VIS_KEY.get(flag)
    return key is None or vis.get(key, 0.0) >= min_vis


def _label(t: dict[str, Any], flag: str) -> str:
    base = f"z={t['redshift']:.2f} r={t['mag_r']:.1f}"
    if flag == "is_lens":
        return f"θE={t['einstein_radius_arcsec']:.1f}\" arcS/N={t['lens_arc_snr_g']:.0f}"
    if flag == "is_merger":
        return f"{t.get('merger_kind')} μ={t['tail_surface_brightness_r']:.1f}"
    if flag == "is_spiral":
        return f"{base} m={t['arm_count']}"
    if flag == "is_edge_on":
        return f"{base} i={t['inclination_deg']:.0f}°"
    return base


def render_class_gallery(
    out_png: str | Path,
    *,
    per_class: int = 6,
    seed: int = 7,
    size: int = 96,
    bands: Sequence[str] = ("g", "r", "i", "z"),
    min_visibility: float = 0.6,
    max_search: int = 20000,
    tile_size: int = 128,
) -> Path:
    """Write a PNG grid with ``per_class`` clear examples of every mock class; return its path.

    Galaxies are searched in index order of survey ``seed`` (at most ``max_search``); each
    class row shows the first ``per_class`` clear members (see the module docstring).
    """
    bands = tuple(bands)
    picks: dict[str, list[int]] = {flag: [] for _, flag in GALLERY_CLASSES}
    lens_ok: list[int] = []
    used: set[int] = set()
    for index in range(max_search):
        if all(len(v) >= per_class for v in picks.values()):
            break
        morph = morph_type_of(seed, index)
        if morph == "lens":
            if len(picks["is_lens"]) < per_class:
                g = simulate_galaxy(seed, index, size=size, bands=bands)
                if g.truth.get("lens_arc_snr_g", 0.0) >= 15.0:
                    picks["is_lens"].append(index)
                    used.add(index)
            continue
        draw = draw_galaxy(seed, index, 150.0, 2.0, bands, size)
        for _, flag in GALLERY_CLASSES:
            if flag == "is_lens" or len(picks[flag]) >= per_class or index in used:
                continue
            if _member(flag, draw.truth, draw.vis, min_visibility):
                picks[flag].append(index)
                used.add(index)
    del lens_ok
    images: list[np.ndarray] = []
    labels: list[str] = []
    rows: list[str] = []
    for name, flag in GALLERY_CLASSES:
        chosen = picks[flag]
        if not chosen:
            log.warning("gallery: no clear example of %s in %d galaxies", name, max_search)
            continue
        rows.append(f"{name}")
        for k in range(per_class):
            if k < len(chosen):
                g = simulate_galaxy(seed, chosen[k], size=size, bands=bands)
                images.append(lupton_rgb(g.image, bands))
                labels.append(_label(g.truth, flag))
            else:
                images.append(np.zeros((size, size, 3), dtype=np.uint8))
                labels.append("")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(
        images,
        labels,
        ncols=per_class,
        path=out_png,
        tile_size=tile_size,
        row_labels=rows,
        label_lines=1,
        title=f"Mock survey classes (seed {seed}, {size}px at 0.262\"/px, g r z; clear examples)",
    )
    return out_png
