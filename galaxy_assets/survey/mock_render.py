"""Pixel rendering of mock galaxies: components, PSF convolution, noise.

A galaxy is a list of :class:`Component` s, each a unit-flux surface-brightness shape with its
own observed flux in every band (its colour). Each shape is drawn **once** on a padded grid,
pre-PSF and pixel-integrated; band images are flux-weighted sums of the shapes (one matrix
product), optionally attenuated by an edge-on dust lane, then convolved with that band's PSF by
FFT and cropped. This keeps a galaxy at a few milliseconds whatever its number of components.

Shapes (all positions and sizes in arcsec, angles in radians, position angle counter-clockwise
from the +x axis of the stamp):

* ``sersic``  Sérsic profile (bulges, discs with ``n = 1``, ellipticals, merger nuclei); the
  central pixels are supersampled (up to 8x8) so cuspy ``n ~ 4`` cores keep their flux.
* ``arms``    a logarithmic-spiral modulation ``((1 + cos psi) / 2)**sharpness`` of an
  exponential envelope in the disc plane (projected with the disc's inclination).
* ``bar``     a Ferrers bar ``(1 - r^2/a^2)^2`` in the disc plane.
* ``ring``    a Gaussian annulus in the disc plane.
* ``points``  point-like sources (star-forming clumps, HII regions, particles of tidal tails and
  shells) deposited bilinearly, optionally blurred by a Gaussian.
* ``lensed``  a Sérsic source behind an SIE + external-shear lens, ray-traced with lenstronomy
  (3x3 supersampled); its unit is the *unlensed* source flux, so the image sums to the
  magnification.

PSF: a Moffat profile from GalSim (point-sampled, as the shapes are already pixel-integrated),
cached per (grid size, FWHM to 0.01", beta). Noise: Gaussian sky noise of the band's
per-pixel sigma (the ``image_ivar`` written is ``1/sigma^2``, sky only, as in Legacy Survey
inverse-variance maps) plus source Poisson noise with an effective gain in electrons per
nanomaggy. Image units are nanomaggies per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.fft as sfft
from scipy.ndimage import gaussian_filter
from scipy.special import gamma as gamma_fn
from scipy.special import gammaincinv

PIXEL_SCALE = 0.262  # arcsec / pixel


def pad_for(size: int) -> int:
    """Padding (pixels) added on each side of a ``size`` stamp before convolution."""
    return 16 if size >= 48 else 12


@dataclass
class Component:
    """One emitting component of a galaxy.

    ``kind`` selects the shape (see module docstring), ``params`` its geometry (arcsec,
    radians), ``flux`` the observed flux per band (nanomaggies, Galactic extinction applied),
    ``in_disc`` whether an edge-on dust lane attenuates it.
    """

    kind: str
    params: dict[str, Any]
    flux: np.ndarray
    in_disc: bool = False
    name: str = ""


@dataclass
class FieldSource:
    """A foreground star (``size == 0``) or background galaxy (exponential) in the stamp."""

    x: float
    y: float
    flux: np.ndarray  # (B,) nanomaggies
    size: float = 0.0  # half-light radius, arcsec
    q: float = 1.0
    pa: float = 0.0


@dataclass
class DustLane:
    """Mid-plane dust lane of an edge-on disc: V-band optical depth ``tau_v`` on the mid-plane.

    ``width`` is the Gaussian sigma (arcsec) across the lane, ``length`` the exponential scale
    (arcsec) along it, ``offset`` the shift (arcsec) of the lane towards the near side.
    """

    x0: float
    y0: float
    pa: float
    tau_v: float
    width: float
    length: float
    offset: float
    tau_scale: np.ndarray  # (B,) tau_band / tau_V


@dataclass
class Observation:
    """Observing conditions of one galaxy: per-band PSF FWHM (arcsec), Moffat beta, sky sigma
    per pixel (nanomaggies) and effective gain (electrons per nanomaggy)."""

    psf_fwhm: np.ndarray
    psf_beta: float
    sigma: np.ndarray
    gain: np.ndarray


@dataclass
class Scene:
    """Everything needed to draw one cutout."""

    components: list[Component]
    observation: Observation
    field_sources: list[FieldSource] = field(default_factory=list)
    dust: DustLane | None = None


@dataclass
class Rendered:
    """A drawn cutout: ``image`` (B, N, N) float32 nanomaggies/pixel with noise, ``ivar``
    (B,) 1/sigma^2 per pixel, ``model`` the noiseless PSF-convolved image (only when asked),
    ``total_flux`` (B,) the noiseless total flux of the galaxy's own components, ``parts``
    the noiseless convolved image of chosen components by name (only when asked)."""

    image: np.ndarray
    ivar: np.ndarray
    total_flux: np.ndarray
    model: np.ndarray | None = None
    parts: dict[str, np.ndarray] | None = None


# --------------------------------------------------------------------------- grids
@lru_cache(maxsize=16)
def _axis(P: int, scale: float) -> np.ndarray:
    return ((np.arange(P) - P // 2) * scale).astype(np.float32)


@lru_cache(maxsize=16)
def _grid(P: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    a = _axis(P, scale)
    X, Y = np.meshgrid(a, a)  # X varies along columns, Y along rows
    return X, Y


def sersic_b(n: float) -> float:
    """Sérsic ``b_n`` such that ``r_e`` encloses half the light."""
    return float(gammaincinv(2.0 * n, 0.5))


def sersic_total(re: float, n: float, q: float) -> float:
    """Total flux of a Sérsic profile with ``I(r_e) = 1`` (``re`` semi-major axis)."""
    b = sersic_b(n)
    return 2.0 * math.pi * q * re * re * n * math.exp(b) * b ** (-2.0 * n) * gamma_fn(2.0 * n)


def _sersic_values(X, Y, x0, y0, re, n, q, pa, b) -> np.ndarray:
    c, s = math.cos(pa), math.sin(pa)
    dx = X - np.float32(x0)
    dy = Y - np.float32(y0)
    u = dx * np.float32(c) + dy * np.float32(s)
    v = (dy * np.float32(c) - dx * np.float32(s)) * np.float32(1.0 / q)
    r = np.sqrt(u * u + v * v) * np.float32(1.0 / re)
    if n == 1.0:
        return np.exp(np.float32(-b) * (r - np.float32(1.0)))
    return np.exp(np.float32(-b) * (r ** np.float32(1.0 / n) - np.float32(1.0)))


def _refine(img, fn, x0, y0, P, scale, k, S) -> None:
    """Replace the (2k+1)^2 pixels around (x0, y0) by S x S supersampled averages of ``fn``."""
    c = P // 2
    j0 = int(round(x0 / scale)) + c
    i0 = int(round(y0 / scale)) + c
    i_lo, i_hi = max(i0 - k, 0), min(i0 + k + 1, P)
    j_lo, j_hi = max(j0 - k, 0), min(j0 + k + 1, P)
    if i_lo >= i_hi or j_lo >= j_hi:
        return
    sub = ((np.arange(S) + 0.5) / S - 0.5) * scale
    ys = ((np.arange(i_lo, i_hi) - c) * scale)[:, None] + sub[None, :]
    xs = ((np.arange(j_lo, j_hi) - c) * scale)[:, None] + sub[None, :]
    Xs, Ys = np.meshgrid(xs.ravel().astype(np.float32), ys.ravel().astype(np.float32))
    vals = fn(Xs, Ys)
    vals = vals.reshape(i_hi - i_lo, S, j_hi - j_lo, S).mean(axis=(1, 3))
    img[i_lo:i_hi, j_lo:j_hi] = vals


def draw_sersic(p: dict[str, Any], P: int, scale: float) -> np.ndarray:
    """Unit-flux, pixel-integrated Sérsic shape on the P x P grid."""
    X, Y = _grid(P, scale)
    re = max(float(p["re"]), 0.02)
    n = float(p["n"])
    q = min(max(float(p.get("q", 1.0)), 0.05), 1.0)
    pa = float(p.get("pa", 0.0))
    x0, y0 = float(p.get("x0", 0.0)), float(p.get("y0", 0.0))
    b = sersic_b(n)

    def fn(Xa, Ya):
        return _sersic_values(Xa, Ya, x0, y0, re, n, q, pa, b)

    img = fn(X, Y)
    re_px = re / scale
    if n > 1.5:
        _refine(img, fn, x0, y0, P, scale, int(min(max(math.ceil(0.6 * re_px), 2), 5)), 8)
        if n > 2.5 and re_px < 8.0:  # the cusp: 32 x 32 samples in the central pixel
            _refine(img, fn, x0, y0, P, scale, 0, 32)
    elif re_px * q < 4.0:
        _refine(img, fn, x0, y0, P, scale, 2, 4)
    return img * np.float32(scale * scale / sersic_total(re, n, q))


def _plane(X, Y, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """Disc-plane coordinates (arcsec) of sky positions for an inclined thin disc."""
    pa = float(p["pa"])
    cos_i = max(math.cos(float(p["incl"])), 0.08)
    c, s = math.cos(pa), math.sin(pa)
    dx = X - np.float32(p.get("x0", 0.0))
    dy = Y - np.float32(p.get("y0", 0.0))
    u = dx * np.float32(c) + dy * np.float32(s)
    v = (dy * np.float32(c) - dx * np.float32(s)) * np.float32(1.0 / cos_i)
    return u, v, cos_i


def _arm_norm(m: int, sharp: float) -> float:
    """Azimuthal mean of ((1 + cos(m theta)) / 2)**sharp (independent of m for integer m)."""
    return float(gamma_fn(sharp + 0.5) / (math.sqrt(math.pi) * gamma_fn(sharp + 1.0)))


def _radial_integral(fn_r, r_max: float) -> float:
    r = np.linspace(0.0, r_max, 2048)
    return float(np.trapezoid(fn_r(r) * 2.0 * np.pi * r, r))


def draw_arms(p: dict[str, Any], P: int, scale: float) -> np.ndarray:
    """Unit-flux logarithmic spiral arms (exponential envelope, inner taper) on the grid.

    With ``p["structure"]`` true, the arms minus their azimuthal mean (same normalisation).
    """
    X, Y = _grid(P, scale)
    u, v, cos_i = _plane(X, Y, p)
    h = float(p["h"])
    r_in = float(p["r_in"])
    m = int(p["m"])
    sharp = float(p["sharp"])
    tan_p = math.tan(float(p["pitch"]))
    R = np.sqrt(u * u + v * v) + np.float32(1e-3)
    theta = np.arctan2(v, u)
    psi = np.float32(m) * (theta - np.log(R / np.float32(max(r_in, 0.05))) / np.float32(tan_p))
    psi = psi - np.float32(p.get("phase", 0.0))
    mod = (np.float32(0.5) * (np.float32(1.0) + np.cos(psi))) ** np.float32(sharp)

    def env(r):
        return np.exp(-r / h) * (1.0 - np.exp(-((r / r_in) ** 2)))

    norm = _arm_norm(m, sharp)
    img = env(R) * (mod - np.float32(norm) if p.get("structure") else mod)
    total = _radial_integral(env, 12.0 * h + 3.0 * r_in) * norm
    return img * np.float32(scale * scale / (cos_i * total))


def draw_bar(p: dict[str, Any], P: int, scale: float) -> np.ndarray:
    """Unit-flux Ferrers bar ``(1 - r^2/a^2)^2`` in the disc plane."""
    X, Y = _grid(P, scale)
    u, v, cos_i = _plane(X, Y, p)
    ang = float(p["angle"])
    c, s = math.cos(ang), math.sin(ang)
    a = float(p["a"])
    qb = float(p["qb"])
    a1 = u * np.float32(c) + v * np.float32(s)
    a2 = (v * np.float32(c) - u * np.float32(s)) * np.float32(1.0 / qb)
    r2 = (a1 * a1 + a2 * a2) * np.float32(1.0 / (a * a))
    img = np.clip(np.float32(1.0) - r2, 0.0, None) ** 2
    total = math.pi * a * a * qb / 3.0
    return img * np.float32(scale * scale / (cos_i * total))


def draw_ring(p: dict[str, Any], P: int, scale: float) -> np.ndarray:
    """Unit-flux Gaussian annulus of radius ``R`` and sigma ``w`` in the disc plane."""
    X, Y = _grid(P, scale)
    u, v, cos_i = _plane(X, Y, p)
    R0, w = float(p["R"]), float(p["w"])
    R = np.sqrt(u * u + v * v)
    img = np.exp(np.float32(-0.5 / (w * w)) * (R - np.float32(R0)) ** 2)
    total = (
        2.0
        * math.pi
        * (
            w * w * math.exp(-(R0 * R0) / (2 * w * w))
            + R0 * w * math.sqrt(math.pi / 2.0) * (1.0 + math.erf(R0 / (math.sqrt(2.0) * w)))
        )
    )
    return img * np.float32(scale * scale / (cos_i * total))


def deposit(xs: np.ndarray, ys: np.ndarray, ws: np.ndarray, P: int, scale: float) -> np.ndarray:
    """Bilinear deposit of weights ``ws`` at positions (arcsec) on the P x P grid."""
    c = P // 2
    fx = np.asarray(xs) / scale + c
    fy = np.asarray(ys) / scale + c
    j = np.floor(fx).astype(np.int64)
    i = np.floor(fy).astype(np.int64)
    tx = fx - j
    ty = fy - i
    out = np.zeros(P * P, dtype=np.float64)
    for di, dj, w in (
        (0, 0, (1 - tx) * (1 - ty)),
        (0, 1, tx * (1 - ty)),
        (1, 0, (1 - tx) * ty),
        (1, 1, tx * ty),
    ):
        ii, jj = i + di, j + dj
        ok = (ii >= 0) & (ii < P) & (jj >= 0) & (jj < P)
        out += np.bincount((ii[ok] * P + jj[ok]), weights=(ws * w)[ok], minlength=P * P)
    return out.reshape(P, P).astype(np.float32)


def draw_points(p: dict[str, Any], P: int, scale: float) -> np.ndarray:
    """Point sources of relative weights ``w`` (normalised to unit total), optional blur."""
    ws = np.asarray(p["w"], dtype=float)
    ws = ws / max(ws.sum(), 1e-30)
    img = deposit(np.asarray(p["x"]), np.asarray(p["y"]), ws, P, scale)
    blur = float(p.get("blur", 0.0))
    if blur > 0.05 * scale:
        img = gaussian_filter(img, blur / scale, mode="constant", truncate=3.0)
    return img


@lru_cache(maxsize=1)
def _lens_models():
    """lenstronomy's SIE + shear lens model and elliptical Sérsic light model (built once)."""
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    return LensModel(["SIE", "SHEAR"]), LightModel(["SERSIC_ELLIPSE"])


def draw_lensed(p: dict[str, Any], P: int, scale: float) -> np.ndarray:
    """Lensed Sérsic source (SIE + external shear) in units of the unlensed source flux.

    Only the central region within ``theta_E + 4 r_src + 2"`` is ray-traced (3x3 supersampled).
    """
    lens, light = _lens_models()
    kw_lens = [
        {
            "theta_E": p["theta_E"],
            "e1": p["e1"],
            "e2": p["e2"],
            "center_x": p["x0"],
            "center_y": p["y0"],
        },
        {"gamma1": p["gamma1"], "gamma2": p["gamma2"], "ra_0": p["x0"], "dec_0": p["y0"]},
    ]
    kw_src = [
        {
            "amp": 1.0,
            "R_sersic": p["src_re"],
            "n_sersic": p["src_n"],
            "e1": p["src_e1"],
            "e2": p["src_e2"],
            "center_x": p["x0"] + p["src_x"],
            "center_y": p["y0"] + p["src_y"],
        }
    ]
    S = 3
    c = P // 2
    half = int(math.ceil((p["theta_E"] + 4.0 * p["src_re"] + 2.0) / scale))
    i0 = int(round(p["y0"] / scale)) + c
    j0 = int(round(p["x0"] / scale)) + c
    i_lo, i_hi = max(i0 - half, 0), min(i0 + half + 1, P)
    j_lo, j_hi = max(j0 - half, 0), min(j0 + half + 1, P)
    sub = ((np.arange(S) + 0.5) / S - 0.5) * scale
    ys = (((np.arange(i_lo, i_hi) - c) * scale)[:, None] + sub[None, :]).ravel()
    xs = (((np.arange(j_lo, j_hi) - c) * scale)[:, None] + sub[None, :]).ravel()
    Xs, Ys = np.meshgrid(xs, ys)
    bx, by = lens.ray_shooting(Xs.ravel(), Ys.ravel(), kw_lens)
    sb = light.surface_brightness(bx, by, kw_src).reshape(i_hi - i_lo, S, j_hi - j_lo, S)
    total = float(light.total_flux(kw_src)[0])
    img = np.zeros((P, P), dtype=np.float32)
    img[i_lo:i_hi, j_lo:j_hi] = sb.mean(axis=(1, 3)) * (scale * scale / total)
    return img


_DRAW = {
    "sersic": draw_sersic,
    "arms": draw_arms,
    "bar": draw_bar,
    "ring": draw_ring,
    "points": draw_points,
    "lensed": draw_lensed,
}


def draw_shape(comp: Component, P: int, scale: float = PIXEL_SCALE) -> np.ndarray:
    """The unit-flux pre-PSF shape of ``comp`` on the P x P grid (float32)."""
    try:
        fn = _DRAW[comp.kind]
    except KeyError:
        raise ValueError(
            f"mock renderer: unknown component kind {comp.kind!r} ({comp.name}); known kinds "
            f"are {sorted(_DRAW)}"
        ) from None
    return fn(comp.params, P, scale)


# ------------------------------------------------------------------------------ PSF
def moffat_nea(fwhm: float, beta: float) -> float:
    """Noise-equivalent area (arcsec^2) of a Moffat PSF: 1 / integral(PSF^2)."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return math.pi * alpha * alpha * (2.0 * beta - 1.0) / (beta - 1.0) ** 2


@lru_cache(maxsize=2048)
def _psf_fft(P: int, fwhm_centi: int, beta_tenths: int, scale_micro: int) -> np.ndarray:
    import galsim

    scale = scale_micro * 1e-6
    psf = galsim.Moffat(beta=beta_tenths / 10.0, fwhm=fwhm_centi / 100.0)
    off = (0.5, 0.5) if P % 2 == 0 else (0.0, 0.0)
    img = psf.drawImage(nx=P, ny=P, scale=scale, method="no_pixel", offset=off).array
    img = img / img.sum()
    return sfft.rfft2(np.fft.ifftshift(img).astype(np.float32))


def psf_image(size: int, fwhm: float, beta: float, scale: float = PIXEL_SCALE) -> np.ndarray:
    """The unit-sum Moffat PSF the renderer uses, centred on pixel ``size // 2``."""
    k = _psf_fft(size, int(round(fwhm * 100)), int(round(beta * 10)), int(round(scale * 1e6)))
    return np.fft.fftshift(sfft.irfft2(k, s=(size, size)))


def quantize_fwhm(fwhm: np.ndarray) -> np.ndarray:
    """Round PSF FWHMs to 0.01 arcsec (the PSF cache's resolution)."""
    return np.round(np.asarray(fwhm, dtype=float), 2)


# ----------------------------------------------------------------------------- scene
def _dust_attenuation(dust: DustLane, P: int, scale: float) -> np.ndarray:
    """exp(-tau_V map) raised per band later: returns the V-band optical-depth map."""
    X, Y = _grid(P, scale)
    c, s = math.cos(dust.pa), math.sin(dust.pa)
    dx = X - np.float32(dust.x0)
    dy = Y - np.float32(dust.y0)
    u = dx * np.float32(c) + dy * np.float32(s)
    v = dy * np.float32(c) - dx * np.float32(s) - np.float32(dust.offset)
    return np.float32(dust.tau_v) * np.exp(
        np.float32(-0.5 / dust.width**2) * v * v - np.abs(u) * np.float32(1.0 / dust.length)
    )


def render_scene(
    scene: Scene,
    size: int,
    rng: np.random.Generator,
    *,
    scale: float = PIXEL_SCALE,
    keep_model: bool = False,
    parts: Sequence[str] = (),
) -> Rendered:
    """Draw one cutout of ``size`` x ``size`` pixels in every band of the scene.

    ``parts`` names components whose noiseless PSF-convolved images (B, N, N) are returned
    separately (the lensed source, to check that arcs rise above the noise; features, to score
    their visibility). For spiral arms the part is their non-axisymmetric structure: the arms
    minus their azimuthal mean (positive on the arms, negative between them).
    """
    pad = pad_for(size)
    P = size + 2 * pad
    obs = scene.observation
    B = len(obs.psf_fwhm)
    inside = [c for c in scene.components if c.in_disc and scene.dust is not None]
    outside = [c for c in scene.components if not (c.in_disc and scene.dust is not None)]
    model = np.zeros((B, P * P), dtype=np.float32)
    total = np.zeros(B)
    shapes: dict[str, np.ndarray] = {}
    for group, attenuate in ((outside, False), (inside, True)):
        if not group:
            continue
        S = np.stack([draw_shape(c, P, scale).ravel() for c in group])  # (C, P*P)
        for c, row in zip(group, S, strict=True):
            if c.name in parts:
                if c.kind == "arms":  # the arm/inter-arm contrast, not the arms' mean light
                    row = draw_arms({**c.params, "structure": True}, P, scale).ravel()
                shapes[c.name] = row
        F = np.stack([np.asarray(c.flux, dtype=np.float32) for c in group], axis=1)  # (B, C)
        part = F @ S
        drawn = part.sum(axis=1).astype(float)
        if attenuate:
            tau = _dust_attenuation(scene.dust, P, scale).ravel()
            part *= np.exp(-np.asarray(scene.dust.tau_scale, dtype=np.float32)[:, None] * tau)
        model += part
        # flux: analytic (includes light beyond the stamp) times the attenuated fraction
        analytic = F.sum(axis=1).astype(float)
        kept = part.sum(axis=1).astype(float)
        frac = np.where(drawn > 0, kept / np.maximum(drawn, 1e-30), 1.0)
        total += analytic * frac
    model = model.reshape(B, P, P)
    for src in scene.field_sources:
        _add_field_source(model, src, P, scale)

    fw = quantize_fwhm(obs.psf_fwhm)
    beta10 = int(round(obs.psf_beta * 10))
    scale_u = int(round(scale * 1e6))
    kernels = np.stack([_psf_fft(P, int(round(f * 100)), beta10, scale_u) for f in fw])
    conv = sfft.irfft2(sfft.rfft2(model) * kernels, s=(P, P))
    conv = conv[:, pad : pad + size, pad : pad + size].astype(np.float32)

    sigma = np.asarray(obs.sigma, dtype=np.float32)
    gain = np.asarray(obs.gain, dtype=np.float32)
    noise = rng.standard_normal((B, size, size), dtype=np.float32)
    src_var = np.clip(conv, 0.0, None) / gain[:, None, None]
    image = conv + noise * np.sqrt(sigma[:, None, None] ** 2 + src_var)
    out_parts = None
    if parts:
        out_parts = {}
        for name, row in shapes.items():
            c = next(c for c in scene.components if c.name == name)
            img = np.asarray(c.flux, dtype=np.float32)[:, None] * row[None, :]
            img = img.reshape(B, P, P)
            pc = sfft.irfft2(sfft.rfft2(img) * kernels, s=(P, P))
            out_parts[name] = pc[:, pad : pad + size, pad : pad + size].astype(np.float32)
    return Rendered(
        image=image.astype(np.float32),
        ivar=(1.0 / sigma.astype(np.float64) ** 2).astype(np.float32),
        total_flux=total,
        model=conv if keep_model else None,
        parts=out_parts,
    )


def _add_field_source(model: np.ndarray, src: FieldSource, P: int, scale: float) -> None:
    c = P // 2
    fx, fy = src.x / scale + c, src.y / scale + c
    if not (-4 <= fx < P + 4 and -4 <= fy < P + 4):
        return
    flux = np.asarray(src.flux, dtype=np.float32)
    if src.size <= 0.0:
        shape = deposit(np.array([src.x]), np.array([src.y]), np.array([1.0]), P, scale)
        model += flux[:, None, None] * shape[None]
        return
    k = int(min(max(math.ceil(3.0 * src.size / scale), 3), 12))
    i0, j0 = int(round(fy)), int(round(fx))
    i_lo, i_hi = max(i0 - k, 0), min(i0 + k + 1, P)
    j_lo, j_hi = max(j0 - k, 0), min(j0 + k + 1, P)
    if i_lo >= i_hi or j_lo >= j_hi:
        return
    yy = ((np.arange(i_lo, i_hi) - c) * scale).astype(np.float32)
    xx = ((np.arange(j_lo, j_hi) - c) * scale).astype(np.float32)
    Xs, Ys = np.meshgrid(xx, yy)
    vals = _sersic_values(Xs, Ys, src.x, src.y, src.size, 1.0, src.q, src.pa, sersic_b(1.0))
    vals *= np.float32(scale * scale / sersic_total(src.size, 1.0, src.q))
    model[:, i_lo:i_hi, j_lo:j_hi] += flux[:, None, None] * vals[None]


# ------------------------------------------------------------------------- visibility
def display_visibility(
    feature: np.ndarray,
    model: np.ndarray,
    sigma: np.ndarray,
    psf_fwhm: np.ndarray,
    psf_beta: float,
    bands: Sequence[str],
    *,
    min_contrast: float = 0.015,
    min_snr: float = 2.0,
    feature_scale: float | None = None,
    scale: float = PIXEL_SCALE,
) -> tuple[float, int]:
    """How visible a feature is in the colour composite a person (or a VLM) looks at.

    ``feature`` (B, N, N) is the feature's noiseless PSF-convolved light (signed for spiral-arm
    structure), ``model`` the whole noiseless image, ``sigma`` the per-band sky sigma per pixel
    (nmgy), ``psf_fwhm`` (arcsec) and ``psf_beta`` the Moffat PSF of each band.

    In each drawn band (g, r, z: the Legacy Survey composite) the feature's change of the
    displayed Lupton asinh value (the parameters of :mod:`galaxy_assets.survey.rgb`) is
    band-passed (minus its Gaussian smoothing at 1.5 PSF FWHM: the eye sees edges, not broad
    gradients). A pixel shows the feature when that band-passed change is at least
    ``min_contrast`` of full scale *and* at least ``min_snr`` times the display noise in a
    PSF-sized aperture. For broad, faint features ``feature_scale`` (arcsec, a Gaussian width)
    widens both the aperture (to ``NEA + 4 pi feature_scale^2``) and the band-pass (to at least
    twice that width). Returns ``(score, n_pixels)``, ``score = n / (n + 2 NEA)``: 0.5 when
    the feature shows over two PSF noise-equivalent areas.
    """
    from galaxy_assets.survey.rgb import BAND_SCALES, DEFAULT_Q, DEFAULT_STRETCH, choose_rgb_bands

    drawn = {b for b in choose_rgb_bands(list(bands)) if b}
    mask = np.zeros(feature.shape[1:], dtype=bool)
    q, st = DEFAULT_Q, DEFAULT_STRETCH
    nea_r = 0.0
    for k, b in enumerate(bands):
        nea_px = moffat_nea(float(psf_fwhm[k]), psf_beta) / scale**2
        if b == "r" or (nea_r == 0.0 and k == len(bands) - 1):
            nea_r = nea_px
        if b not in drawn:
            continue
        s = BAND_SCALES.get(b, 1.0) * q / st
        m = np.clip(model[k], 0.0, None)
        without = np.clip(model[k] - feature[k], 0.0, None)
        delta = (np.arcsinh(s * m) - np.arcsinh(s * without)) / q
        fwhm_px = float(psf_fwhm[k]) / scale
        bp_sigma = 1.5 * fwhm_px / 2.355
        aperture = nea_px
        if feature_scale is not None and feature_scale == feature_scale and feature_scale > 0:
            bp_sigma = max(bp_sigma, 2.0 * feature_scale / scale)
            aperture = nea_px + 4.0 * math.pi * (feature_scale / scale) ** 2
        bp = np.abs(delta - gaussian_filter(delta, bp_sigma, mode="nearest"))
        noise = s / np.sqrt(1.0 + (s * m) ** 2) / q * float(sigma[k]) / math.sqrt(aperture)
        mask |= (bp >= min_contrast) & (bp >= min_snr * noise)
    n = int(mask.sum())
    return n / (n + 2.0 * nea_r), n
