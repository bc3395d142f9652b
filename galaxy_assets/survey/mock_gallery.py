"""A labelled gallery of the mock survey's classes (``docs/mock_survey.png``).

:func:`render_class_gallery` simulates galaxies of one survey seed (in this process), picks
``per_class`` examples of every class and lays their g, r, z composites (Lupton asinh, the
Legacy Survey viewer's band scales) out one class per row.

Examples are the first *clear* members of each class in index order: those whose feature
visibility score (the score that drives the simulated Galaxy Zoo votes and the class flags) is at
least ``min_visibility`` (tails for post-mergers and shells; every major merger with two
nuclei), lenses with arc visibility >= 0.7 (shown at 2x zoom), edge-on discs within 6 degrees of
edge-on, rings that are not also spiral arms, and S0s without bar, ring or edge-on view. The survey itself is not filtered: many members of the rare classes are fainter than the
gallery suggests (see docs/mock_survey.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galaxy_assets.survey.mock import SimulatedGalaxy, simulate_galaxy
from galaxy_assets.survey.mock_population import morph_type_of
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
    ("strong lens (2x zoom)", "is_lens"),
    ("smooth disc (S0)", "lenticular"),
)
_VIS_KEY = {
    "is_spiral": "arms",
    "has_bar": "bar",
    "has_ring": "ring",
    "is_clumpy": "clumps",
    "is_merger": "tails",
    "is_irregular": "irregular",
    "is_lens": "arc",
}


def _member(flag: str, truth: dict[str, Any], min_vis: float) -> bool:
    """Whether a simulated galaxy is a *clear* member of the gallery row ``flag``."""
    if flag == "lenticular":
        return (
            truth["morph_type"] == "lenticular"
            and not truth["is_edge_on"]
            and not truth["has_bar"]
            and not truth["has_ring"]
        )
    if not truth.get(flag):
        return False
    if flag == "is_elliptical":
        return truth["morph_type"] == "elliptical"
    if flag == "is_edge_on":
        return truth.get("inclination_deg", 0) >= 84.0
    if flag == "has_ring" and truth.get("is_spiral"):
        return False  # show rings that are not also spiral arms
    if flag == "is_merger":
        return truth.get("merger_kind") == "major" or _v(truth, "tails") >= min_vis
    key = _VIS_KEY.get(flag)
    if flag == "is_lens":  # arcs blend with the deflector: ask for the clearest ones
        return _v(truth, key) >= max(min_vis, 0.7)
    return key is None or _v(truth, key) >= min_vis


def _v(truth: dict[str, Any], key: str) -> float:
    v = truth.get(f"{key}_visibility")
    return 0.0 if v is None or v != v else float(v)


def _label(t: dict[str, Any], flag: str) -> str:
    base = f"z={t['redshift']:.2f} r={t['mag_r']:.1f}"
    if flag == "is_lens":
        return f'θE={t["einstein_radius_arcsec"]:.1f}" arcS/N={t["lens_arc_snr_g"]:.0f}'
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
    picks: dict[str, list[SimulatedGalaxy]] = {flag: [] for _, flag in GALLERY_CLASSES}
    wanted_types = {
        "is_elliptical": {"elliptical"},
        "is_spiral": {"spiral"},
        "has_bar": {"spiral", "lenticular", "disc"},
        "has_ring": {"spiral", "lenticular", "disc"},
        "is_edge_on": {"spiral", "lenticular", "disc"},
        "is_clumpy": {"spiral", "disc", "irregular"},
        "is_irregular": {"irregular"},
        "is_merger": {"merger"},
        "is_lens": {"lens"},
        "lenticular": {"lenticular"},
    }
    for index in range(max_search):
        if all(len(v) >= per_class for v in picks.values()):
            break
        morph = morph_type_of(seed, index)
        open_flags = [
            f for f, types in wanted_types.items() if morph in types and len(picks[f]) < per_class
        ]
        if not open_flags:
            continue
        g = simulate_galaxy(seed, index, size=size, bands=bands)
        for flag in open_flags:
            if _member(flag, g.truth, min_visibility):
                picks[flag].append(g)
                break
    images: list[np.ndarray] = []
    labels: list[str] = []
    rows: list[str] = []
    for name, flag in GALLERY_CLASSES:
        chosen = picks[flag]
        if not chosen:
            log.warning("gallery: no clear example of %s in %d galaxies", name, max_search)
            continue
        rows.append(name)
        for k in range(per_class):
            if k < len(chosen):
                img = chosen[k].image
                if flag == "is_lens":  # arcs sit within ~2" of the centre: show the middle half
                    q = size // 4
                    img = img[:, q : size - q, q : size - q]
                images.append(lupton_rgb(img, bands))
                labels.append(_label(chosen[k].truth, flag))
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
        title=f'Mock survey classes (seed {seed}, {size}px at 0.262"/px, g r z; clear examples)',
    )
    return out_png
