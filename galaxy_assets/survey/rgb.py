"""Colour pictures of cutouts for people and vision-language models.

:func:`lupton_rgb` turns a multi-band cutout (nanomaggies per pixel) into an 8-bit RGB image
with the asinh scheme of Lupton et al. (2004) (``astropy.visualization.make_lupton_rgb``),
after the per-band scale factors of the Legacy Survey viewer: z (or i) → red, r → green,
g → blue. :func:`to_png` encodes a picture as PNG; :func:`contact_sheet` lays pictures out
in a labelled grid on a dark background.
"""

from __future__ import annotations

import io
import logging
import os
import textwrap
import uuid
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from galaxy_assets.survey.mmu import normalize_band

log = logging.getLogger(__name__)

__all__ = [
    "BAND_SCALES",
    "DEFAULT_Q",
    "DEFAULT_STRETCH",
    "choose_rgb_bands",
    "contact_sheet",
    "lupton_rgb",
    "lupton_rgb_batch",
    "to_png",
]

# Multipliers applied to each band (nanomaggies) before the asinh mapping; those of the
# Legacy Survey viewer (legacypipe's rgbscales), y extrapolated. They make a typical galaxy
# roughly neutral and the sky noise of the three bands comparable.
BAND_SCALES: dict[str, float] = {"u": 9.0, "g": 6.0, "r": 3.4, "i": 3.0, "z": 2.2, "y": 2.0}
_WAVELENGTH_ORDER = ("u", "g", "r", "i", "z", "y")
# stretch = linear range (scaled nanomaggies) of the asinh; Q = its softening. With the
# scales above, Legacy-Survey-depth sky noise maps to ~6% grey, the core of an r ≈ 20
# galaxy to ~50% and of an r ≈ 17 galaxy to ~90%.
DEFAULT_STRETCH = 0.5
DEFAULT_Q = 8.0

_BACKGROUND = (14, 15, 20)
_TILE_EDGE = (52, 56, 68)
_TEXT = (226, 229, 236)
_SUBTLE = (160, 166, 180)


def choose_rgb_bands(bands: Sequence[str]) -> tuple[str, str, str]:
    """The bands drawn as (red, green, blue).

    ``g, r, z`` when present (the Legacy Survey's choice), else ``g, r, i``, else the
    reddest, a middle and the bluest band available; two bands give (red, mean, blue), one
    band is drawn grey (the same band three times).
    """
    names = [normalize_band(b) for b in bands]
    known = sorted(
        {b for b in names if b in _WAVELENGTH_ORDER}, key=_WAVELENGTH_ORDER.index
    ) or list(dict.fromkeys(names))
    if not known:
        raise ValueError("no band to draw")
    have = set(known)
    if {"g", "r", "z"} <= have:
        return ("z", "r", "g")
    if {"g", "r", "i"} <= have:
        return ("i", "r", "g")
    if len(known) >= 3:
        return (known[-1], known[len(known) // 2], known[0])
    if len(known) == 2:
        return (known[1], "", known[0])  # "" = mean of red and blue
    return (known[0], known[0], known[0])


def lupton_rgb(
    image: np.ndarray,
    bands: Sequence[str],
    *,
    stretch: float = DEFAULT_STRETCH,
    Q: float = DEFAULT_Q,
    minimum: float = 0.0,
    scales: Mapping[str, float] | None = None,
) -> np.ndarray:
    """An (H, W, 3) uint8 RGB picture of ``image`` (B, H, W), nanomaggies per pixel.

    ``bands`` names the B planes. Each drawn band is multiplied by its factor in ``scales``
    (default :data:`BAND_SCALES`), then mapped with Lupton's asinh: ``stretch`` is the linear
    range, ``Q`` the softening, ``minimum`` the (scaled) value drawn black. NaN and inf pixels
    are drawn black. Row 0 of the image is the top row of the picture.
    """
    from astropy.visualization import ManualInterval, make_lupton_rgb

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] != len(bands):
        raise ValueError(f"image: shape {img.shape}; expected (B={len(bands)}, H, W)")
    names = [normalize_band(b) for b in bands]
    factors = dict(BAND_SCALES)
    factors.update({normalize_band(k): float(v) for k, v in (scales or {}).items()})

    def plane(band: str) -> np.ndarray:
        x = img[names.index(band)] * factors.get(band, 1.0)
        return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    red, green, blue = choose_rgb_bands(names)
    r, b = plane(red), plane(blue)
    g = plane(green) if green else 0.5 * (r + b)
    with np.errstate(invalid="ignore", divide="ignore"):
        rgb = make_lupton_rgb(
            r,
            g,
            b,
            interval=ManualInterval(vmin=minimum, vmax=None),
            stretch=stretch,
            Q=Q,
        )
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def lupton_rgb_batch(images: np.ndarray, bands: Sequence[str], **kwargs: float) -> np.ndarray:
    """(N, H, W, 3) uint8 pictures of a batch (N, B, H, W); keywords as :func:`lupton_rgb`."""
    arr = np.asarray(images)
    out = np.empty((arr.shape[0], arr.shape[2], arr.shape[3], 3), dtype=np.uint8)
    for k in range(arr.shape[0]):
        out[k] = lupton_rgb(arr[k], bands, **kwargs)  # type: ignore[arg-type]
    return out


def _as_pil(picture: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(picture, Image.Image):
        return picture.convert("RGB")
    arr = np.asarray(picture)
    if arr.dtype != np.uint8:
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
        top = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(arr[:, :, :3])
    raise ValueError(f"picture: shape {arr.shape}; expected (H, W, 3) or (H, W)")


def _resize(im: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    target = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if im.size == target:
        return im
    return im.resize(target, Image.Resampling.LANCZOS)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_png(
    rgb: np.ndarray | Image.Image,
    path: str | Path | None = None,
    size: int | tuple[int, int] | None = None,
) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 picture, resized to ``size`` px (square for an int;
    (width, height) for a pair) with Lanczos filtering; also written to ``path`` if given."""
    im = _as_pil(rgb)
    if size is not None:
        im = _resize(im, size)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    data = buf.getvalue()
    if path is not None:
        _write_atomic(Path(path), data)
    return data


@lru_cache(maxsize=16)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at ``size`` px, else Pillow's default font."""
    try:
        from matplotlib import font_manager

        prop = font_manager.FontProperties(
            family="DejaVu Sans", weight="bold" if bold else "normal"
        )
        return ImageFont.truetype(font_manager.findfont(prop, fallback_to_default=True), size)
    except Exception:  # no matplotlib or no FreeType: still draw something legible
        try:
            return ImageFont.load_default(size=size)
        except TypeError:
            return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def _fit_lines(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int, max_lines: int
) -> list[str]:
    """Wrap ``text`` to ``width`` px in at most ``max_lines`` lines, ending in … if cut."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        chars = max(1, len(paragraph))
        wrapped = [paragraph]
        while chars > 1:
            wrapped = textwrap.wrap(paragraph, chars) or [""]
            if all(_text_width(draw, ln, font) <= width for ln in wrapped):
                break
            chars -= 1
        lines.extend(wrapped)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip() + "…"
    fitted = []
    for ln in lines:
        while len(ln) > 1 and _text_width(draw, ln, font) > width:
            ln = ln[:-2] + "…"
        fitted.append(ln)
    return fitted


def contact_sheet(
    images: Sequence[np.ndarray | Image.Image],
    labels: Sequence[str] | None = None,
    ncols: int = 8,
    path: str | Path | None = None,
    *,
    tile_size: int = 128,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    label_lines: int = 2,
    font_size: int | None = None,
    padding: int = 8,
) -> bytes:
    """A labelled grid of pictures as PNG bytes (also written to ``path`` if given).

    ``images`` are (H, W, 3) uint8 pictures (e.g. from :func:`lupton_rgb`; grey (H, W) and
    float [0, 1] pictures are accepted too), each resized to ``tile_size`` px and laid out
    ``ncols`` to a row, left to right then top to bottom. ``labels`` (one per picture, may
    be empty strings) are written under each tile in up to ``label_lines`` lines;
    ``row_labels`` (one per row) are written left of each row, e.g. a class name when every
    row shows one class; ``title`` goes on top. Light text on a dark background.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one picture")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} pictures")
    if ncols <= 0:
        raise ValueError(f"ncols={ncols}: must be positive")
    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"{len(row_labels)} row labels for {nrows} rows")

    fs = font_size or max(11, tile_size // 10)
    font = _font(fs)
    row_font = _font(int(fs * 1.15), bold=True)
    title_font = _font(int(fs * 1.6), bold=True)
    scratch = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    line_h = int(fs * 1.3)
    label_h = (line_h * label_lines + padding // 2) if labels is not None else 0
    left = 0
    if row_labels is not None:
        widest = max((_text_width(scratch, t, row_font) for t in row_labels), default=0)
        left = min(widest, 3 * tile_size) + 2 * padding
    top = int(fs * 1.6 * 1.5) + padding if title else 0
    cell_w, cell_h = tile_size + padding, tile_size + label_h + padding
    width = left + padding + ncols * cell_w
    height = top + padding + nrows * cell_h
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    if title:
        draw.text((padding + left, padding // 2 + 2), title, font=title_font, fill=_TEXT)
    for k, picture in enumerate(images):
        row, col = divmod(k, ncols)
        x = left + padding + col * cell_w
        y = top + padding + row * cell_h
        tile = _resize(_as_pil(picture), tile_size)
        sheet.paste(tile, (x, y))
        draw.rectangle((x - 1, y - 1, x + tile_size, y + tile_size), outline=_TILE_EDGE)
        if labels is not None and labels[k]:
            lines = _fit_lines(draw, str(labels[k]), font, tile_size, label_lines)
            for j, ln in enumerate(lines):
                draw.text((x, y + tile_size + 3 + j * line_h), ln, font=font, fill=_SUBTLE)
    if row_labels is not None:
        for row, text in enumerate(row_labels):
            y = top + padding + row * cell_h
            lines = _fit_lines(draw, str(text), row_font, left - 2 * padding, 3)
            block = len(lines) * int(fs * 1.5)
            y0 = y + (tile_size - block) // 2
            for j, ln in enumerate(lines):
                draw.text((padding, y0 + j * int(fs * 1.5)), ln, font=row_font, fill=_TEXT)

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    data = buf.getvalue()
    if path is not None:
        _write_atomic(Path(path), data)
        log.info("wrote contact sheet %s (%d pictures, %d x %d px)", path, n, width, height)
    return data
