"""The galaxy population of the mock survey: what each galaxy is, before any pixel is drawn.

:func:`draw_galaxy` turns (seed, index) into a :class:`~galaxy_assets.survey.mock_render.Scene`
(components with their fluxes, observing conditions, field stars and background galaxies) and
a truth record (class flags, physical parameters, feature visibilities). Every random number
comes from the galaxy's own generator, so a galaxy does not depend on which process draws it
or on how many galaxies the survey has.

The distributions, their sources and the rates they give are documented in
``docs/mock_survey.md``. Units: arcsec, degrees in the truth table (radians internally), AB
magnitudes, nanomaggies, kpc, solar masses (log10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from scipy.special import gammainc

from galaxy_assets.survey import mock_photometry as ph
from galaxy_assets.survey.mock_render import (
    PIXEL_SCALE,
    Component,
    DustLane,
    FieldSource,
    Observation,
    Scene,
    moffat_nea,
    pad_for,
    quantize_fwhm,
    sersic_b,
)

# ----------------------------------------------------------------------------- constants
# Base morphological types and their fractions (stratified, see ``morph_type_of``).
TYPE_FRACTIONS: tuple[tuple[str, float], ...] = (
    ("lens", 0.005),
    ("merger", 0.020),
    ("irregular", 0.040),
    ("elliptical", 0.225),
    ("lenticular", 0.100),
    ("spiral", 0.550),
    ("disc", 0.060),
)
R_LIMIT = 17.77  # r-band limit of the main sample (AB): that of GZ DECaLS / SDSS main
Z_MIN, Z_MAX = 0.02, 0.5
EVOLUTION_Q = 1.0  # luminosity evolution, mag per unit redshift (Loveday et al. 2012)
EDGE_ON_DEG = 80.0  # is_edge_on: disc inclination at least this
FEATURE_MAX_INCL_DEG = 75.0  # arms, bars, rings are flagged only below this inclination
# feature flags need at least this visibility score (see mock_render.display_visibility);
# compact features (bars) cover fewer pixels, so their threshold is lower
VISIBLE: dict[str, float] = {"arms": 0.45, "bar": 0.3, "ring": 0.5, "clumps": 0.4}
C_KMS = 299792.458
COMPANION_RATE = 0.04  # fields with a projected, non-interacting companion
LENS_MIN_THETA_E = 1.0  # arcsec: smallest Einstein radius found in ground-based lens searches
_GOLDEN = 0.6180339887498949

# Stellar populations: selection template, r-band M/L, mass range, Schechter (log M*, alpha).
POPULATIONS: dict[str, dict[str, Any]] = {
    "early": {"template": "E", "ml": 3.0, "range": (9.4, 12.0), "schechter": (10.85, -0.5)},
    "lenticular": {"template": "E", "ml": 2.5, "range": (9.4, 11.8), "schechter": (10.8, -0.6)},
    "spiral": {"template": "Sbc", "ml": 1.5, "range": (9.0, 11.6), "schechter": (10.7, -1.3)},
    "disc": {"template": "Scd", "ml": 1.0, "range": (8.8, 11.2), "schechter": (10.6, -1.4)},
    "irregular": {"template": "Im", "ml": 0.5, "range": (7.8, 9.9), "schechter": (10.0, -1.5)},
}


def morph_type_of(seed: int, index: int) -> str:
    """The base type of galaxy ``index``: a golden-ratio (Weyl) sequence stratifies the types,
    so that every run of n galaxies holds each type within about one galaxy of its rate."""
    offset = np.random.SeedSequence(seed).generate_state(1)[0] / 2.0**32
    u = (offset + index * _GOLDEN) % 1.0
    acc = 0.0
    for name, frac in TYPE_FRACTIONS:
        acc += frac
        if u < acc:
            return name
    return TYPE_FRACTIONS[-1][0]


# ----------------------------------------------------------------------------- helpers
@dataclass
class GalaxyDraw:
    """A galaxy before rendering: its scene, truth record and feature visibilities."""

    scene: Scene
    truth: dict[str, Any]
    vis: dict[str, float] = field(default_factory=dict)


@dataclass
class _Ctx:
    rng: np.random.Generator
    bands: tuple[str, ...]
    ebv: float
    sigma_r: float  # sky sigma per pixel in r (or the reddest band given), nmgy
    sigma_g: float
    fwhm_r: float
    fwhm_g: float
    nea_r: float  # arcsec^2


def _rest_weights(**w: float) -> dict[str, float]:
    s = sum(w.values())
    return {k: v / s for k, v in w.items() if v > 0}


def _fluxes(ctx: _Ctx, abs_mag_r: float, z: float, weights: dict[str, float], av: float = 0.0):
    """Observed fluxes (nmgy, per band of ``ctx``) of a component of rest-frame ``M_r``."""
    return ph.component_fluxes(abs_mag_r, z, weights, ctx.bands, ctx.ebv, av)


def _r_flux(ctx: _Ctx, flux: np.ndarray) -> float:
    """The r-band entry of a per-band flux array (else the reddest band's)."""
    return float(flux[ctx.bands.index("r")] if "r" in ctx.bands else flux[-1])


def _g_flux(ctx: _Ctx, flux: np.ndarray) -> float:
    return float(flux[ctx.bands.index("g")] if "g" in ctx.bands else flux[0])


def _vis(snr: float, s50: float = 4.0) -> float:
    """Visibility score in [0, 1): 0.5 when the feature's S/N equals ``s50``."""
    snr = max(snr, 0.0)
    return snr * snr / (snr * snr + s50 * s50)


def _res(size: float, scale: float) -> float:
    """Resolution factor: ~1 when ``size`` >> ``scale`` (both arcsec)."""
    return size**2 / (size**2 + scale**2)


def _snr_patch(ctx: _Ctx, sb: float, width: float, sigma: float | None = None) -> float:
    """S/N of a patch of side max(width, FWHM) at surface brightness ``sb`` (nmgy/arcsec^2)."""
    w = max(width, ctx.fwhm_r)
    return sb * w * PIXEL_SCALE / (sigma if sigma is not None else ctx.sigma_r)


def _kpc_to_arcsec(z: float, kpc: float) -> float:
    return kpc / float(ph.tables().kpc_per_arcsec(z))


def _schechter_dex(logm: np.ndarray, log_mstar: float, alpha: float) -> np.ndarray:
    x = 10.0 ** (logm - log_mstar)
    return x ** (alpha + 1.0) * np.exp(-x)


@cache
def _mass_table(pop: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log M grid, CDF of p(M) ~ phi(M) V_max(M), z_max(M)) for a magnitude-limited sample."""
    cfg = POPULATIONS[pop]
    tab = ph.tables()
    lo, hi = cfg["range"]
    logm = np.linspace(lo, hi, 800)
    abs_r = ph.M_SUN_R_AB - 2.5 * (logm - math.log10(cfg["ml"]))
    zg = tab.z[(tab.z >= Z_MIN) & (tab.z <= Z_MAX)]
    # m - M including K-correction and luminosity evolution, made monotonic
    curve = tab.distance_modulus(zg) + tab.k(cfg["template"], "r", zg) - EVOLUTION_Q * zg
    curve = np.maximum.accumulate(curve)
    zmax = np.interp(R_LIMIT - abs_r, curve, zg, left=Z_MIN, right=Z_MAX)
    vmax = np.clip(tab.volume(zmax) - tab.volume(Z_MIN), 0.0, None)
    w = _schechter_dex(logm, *cfg["schechter"]) * vmax
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    return logm, cdf, zmax


def _mass_and_redshift(rng: np.random.Generator, pop: str) -> tuple[float, float]:
    logm_grid, cdf, zmax_grid = _mass_table(pop)
    logm = float(np.interp(rng.random(), cdf, logm_grid))
    zmax = float(np.interp(logm, logm_grid, zmax_grid))
    tab = ph.tables()
    v = tab.volume(Z_MIN) + rng.random() * (tab.volume(zmax) - tab.volume(Z_MIN))
    z = float(np.clip(tab.z_of_volume(v), Z_MIN, Z_MAX))
    return logm, z


def _abs_mag(logm: float, ml: float, rng: np.random.Generator, z: float) -> float:
    """Rest-frame absolute r magnitude for log stellar mass: z = 0 M/L with 0.1 dex scatter,
    brightened by ``EVOLUTION_Q * z`` (younger populations at higher redshift)."""
    return ph.M_SUN_R_AB - 2.5 * (logm - math.log10(ml) - rng.normal(0.0, 0.1)) - EVOLUTION_Q * z


def _re_late_kpc(logm: float, rng: np.random.Generator) -> float:
    """Late-type mass-size relation (van der Wel et al. 2014, z ~ 0.25), 0.16 dex scatter."""
    return 10 ** (0.86 + 0.22 * (logm - 10.7) + rng.normal(0.0, 0.16))


def _re_early_kpc(logm: float, rng: np.random.Generator) -> float:
    """Early-type mass-size relation (van der Wel et al. 2014, slope 0.75), flattening to
    slope 0.25 below 10^10.3 Msun (Shen et al. 2003), 0.12 dex scatter."""
    if logm > 10.3:
        base = 0.60 + 0.75 * (logm - 10.7)
    else:
        base = 0.60 + 0.75 * (10.3 - 10.7) + 0.25 * (logm - 10.3)
    return 10 ** (base + rng.normal(0.0, 0.12))


def _half_light_radius(parts: list[tuple[float, float, float]]) -> float:
    """Semi-major half-light radius (arcsec) of summed Sérsic growth curves (frac, re, n)."""
    rmax = max(re for _, re, _ in parts) * 20.0
    r = np.geomspace(1e-3, rmax, 600)
    enc = np.zeros_like(r)
    for frac, re, n in parts:
        enc += frac * gammainc(2.0 * n, sersic_b(n) * (r / re) ** (1.0 / n))
    return float(np.interp(0.5 * enc[-1], enc, r))


def _proj_q(incl: float, q0: float) -> float:
    """Projected axis ratio of an oblate body of intrinsic thickness ``q0`` at inclination."""
    c = math.cos(incl)
    return math.sqrt(c * c + q0 * q0 * (1.0 - c * c))


def _plane_to_sky(X, Y, x0, y0, pa, incl):
    """Disc-plane positions (arcsec) to sky offsets for a disc at ``pa``, ``incl``."""
    c, s = math.cos(pa), math.sin(pa)
    v = Y * math.cos(incl)
    return x0 + X * c - v * s, y0 + X * s + v * c


# -------------------------------------------------------------------- observing conditions
def _observation(rng: np.random.Generator, bands: tuple[str, ...]) -> Observation:
    """Seeing (lognormal around the LS medians, 0.15 dex common + 0.07 per band), Moffat beta,
    depth (0.25 mag common + 0.15 mag per band scatter) -> sky sigma per pixel."""
    common_seeing = math.exp(rng.normal(0.0, 0.15))
    beta = float(rng.choice([2.5, 3.0, 3.5]))
    common_depth = rng.normal(0.0, 0.25)
    fwhm = np.empty(len(bands))
    sigma = np.empty(len(bands))
    gain = np.empty(len(bands))
    for i, b in enumerate(bands):
        f = ph.SEEING_MEDIAN_ARCSEC[b] * common_seeing * math.exp(rng.normal(0.0, 0.07))
        fwhm[i] = float(np.clip(f, 0.75, 2.4))
    fwhm = quantize_fwhm(fwhm)
    for i, b in enumerate(bands):
        depth = ph.PSF_DEPTH_MEDIAN[b] + common_depth + rng.normal(0.0, 0.15)
        f5 = float(ph.mag_to_nmgy(depth))
        nea_px = moffat_nea(fwhm[i], beta) / PIXEL_SCALE**2
        sigma[i] = f5 / (5.0 * math.sqrt(nea_px))
        # electrons per nanomaggy: ~3 DECam exposures of 90 s; deeper coadds have more
        gain[i] = 2500.0 * 10 ** (0.4 * (depth - ph.PSF_DEPTH_MEDIAN[b]))
    return Observation(psf_fwhm=fwhm, psf_beta=beta, sigma=sigma, gain=gain)


def ebv_at(ra: float, dec: float) -> float:
    """A smooth, small Galactic E(B-V) (mag) over the sky, 0.010-0.050 (high latitude)."""
    r, d = math.radians(ra), math.radians(dec)
    return 0.03 + 0.02 * math.sin(3.0 * r + 1.0) * math.cos(4.0 * d - 0.5)


# ----------------------------------------------------------------------- disc galaxies
def _disc_galaxy(
    ctx: _Ctx,
    kind: str,
    logm: float,
    z: float,
    x0: float,
    y0: float,
    *,
    features: bool = True,
    prefix: str = "",
) -> tuple[list[Component], dict[str, Any], dict[str, float], DustLane | None]:
    """Bulge + disc (+ arms, bar, ring, clumps, HII regions, dust lane) of one disc galaxy.

    ``kind`` is 'lenticular', 'spiral' or 'disc'. Returns components, truth, visibilities
    and the dust lane (edge-on discs only).
    """
    rng = ctx.rng
    late = kind == "disc" or (kind == "spiral" and rng.random() < 0.5)
    if kind == "lenticular":
        bt = rng.uniform(0.3, 0.75)
        ml, q0 = 2.5, rng.uniform(0.15, 0.3)
        w_bulge, w_disc = _rest_weights(E=1.0), _rest_weights(E=0.7, Sbc=0.3)
        w_sf = _rest_weights(Sbc=0.6, Scd=0.4)
    elif late:
        bt = rng.uniform(0.0, 0.15) if kind == "spiral" else rng.uniform(0.0, 0.3)
        ml, q0 = 0.9, rng.uniform(0.09, 0.18)
        w_bulge, w_disc = _rest_weights(E=0.5, Sbc=0.5), _rest_weights(Scd=1.0)
        w_sf = _rest_weights(Im=1.0)
    else:
        bt = rng.uniform(0.1, 0.45)
        ml, q0 = 1.6, rng.uniform(0.1, 0.2)
        w_bulge, w_disc = _rest_weights(E=0.9, Sbc=0.1), _rest_weights(Sbc=1.0)
        w_sf = _rest_weights(Scd=0.5, Im=0.5)
    m_abs = _abs_mag(logm, ml, rng, z)
    kpa = float(ph.tables().kpc_per_arcsec(z))
    re_disc = _re_late_kpc(logm, rng) / kpa
    if kind == "lenticular":
        re_disc *= 0.8
    h = re_disc / 1.678
    incl = math.acos(rng.random())
    pa = rng.uniform(0.0, math.pi)
    q_disc = _proj_q(incl, q0)
    re_b = h * rng.uniform(0.12, 0.35)  # bulge r_e / disc h ~ 0.2 (Graham & Worley 2008)
    n_b = float(np.clip(1.0 + 5.0 * bt + rng.normal(0.0, 0.4), 0.8, 4.5))
    q_b = _proj_q(incl, rng.uniform(0.6, 0.9))
    av_int = (
        0.6 * math.log10(1.0 / q_disc) if kind != "lenticular" else 0.2 * math.log10(1 / q_disc)
    )
    incl_deg = math.degrees(incl)

    # feature choices -------------------------------------------------------------
    has_arms = kind == "spiral"
    has_bar = features and rng.random() < {"spiral": 0.35, "lenticular": 0.25, "disc": 0.2}[kind]
    # inner/outer rings: ~30% / ~15% of S4G discs (Comerón et al. 2014), fewer seen in optical
    has_ring = features and rng.random() < {"spiral": 0.2, "lenticular": 0.3, "disc": 0.08}[kind]
    p_clumpy = {"spiral": 0.3 if late else 0.08, "lenticular": 0.0, "disc": 0.25}[kind]
    has_clumps = features and rng.random() < p_clumpy
    if has_bar:  # barred discs have smaller (pseudo-)bulges
        bt *= 0.5
    # arm share of the disc light (m = 2 Fourier amplitudes 0.1-0.5, Kendall et al. 2011;
    # higher in g, where arms are bluest), bar share of all light (Gadotti 2011: 0.02-0.3)
    f_arm = rng.uniform(0.2, 0.5) if has_arms else 0.0
    f_bar = rng.uniform(0.06, 0.3) if has_bar else 0.0
    f_ring = rng.uniform(0.06, 0.22) if has_ring else 0.0
    f_clump = rng.uniform(0.06, 0.22) if has_clumps else 0.0
    f_hii = rng.uniform(0.02, 0.06) if has_arms else 0.0
    # light budget (rest-frame r): bulge bt, bar f_bar; the rest is disc light, of which the
    # arms, ring, clumps and HII regions take their fractions.
    disc_light = max(1.0 - bt - f_bar, 0.05)
    f_smooth = disc_light * max(1.0 - f_arm - f_ring - f_clump - f_hii, 0.2)

    comps: list[Component] = []
    truth: dict[str, Any] = {}
    vis: dict[str, float] = {}

    def mag(frac: float) -> float:
        return m_abs - 2.5 * math.log10(max(frac, 1e-6))

    if bt > 0.01:
        comps.append(
            Component(
                "sersic",
                {"x0": x0, "y0": y0, "re": re_b, "n": n_b, "q": q_b, "pa": pa},
                _fluxes(ctx, mag(bt), z, w_bulge),
                in_disc=True,
                name=prefix + "bulge",
            )
        )
    disc_flux = _fluxes(ctx, mag(f_smooth), z, w_disc, av_int)
    comps.append(
        Component(
            "sersic",
            {"x0": x0, "y0": y0, "re": re_disc, "n": 1.0, "q": q_disc, "pa": pa},
            disc_flux,
            in_disc=True,
            name=prefix + "disc",
        )
    )
    disc_r = _r_flux(ctx, _fluxes(ctx, mag(disc_light), z, w_disc, av_int))

    plane = {"x0": x0, "y0": y0, "pa": pa, "incl": incl}
    bar_a = h * rng.uniform(0.8, 1.8) if has_bar else 0.0  # a_bar / h (Erwin 2005)
    if has_bar:
        qb = rng.uniform(0.22, 0.4)
        bar_angle = rng.uniform(0, math.pi)
        fl = _fluxes(ctx, mag(f_bar), z, _rest_weights(E=0.6, Sbc=0.4))
        comps.append(
            Component(
                "bar",
                {**plane, "angle": bar_angle, "a": bar_a, "qb": qb},
                fl,
                in_disc=True,
                name=prefix + "bar",
            )
        )
        truth.update(bar_length_arcsec=2 * bar_a, bar_flux_fraction=f_bar)
    r_in = bar_a if has_bar else h * rng.uniform(0.3, 0.8)
    if has_arms:
        # arm multiplicity: two-armed discs dominate (GZ2 arm-number votes, Hart et al. 2016);
        # pitch angles ~13 deg in Sa-Sb, ~22 deg in Sc-Sd (Kennicutt 1981; Davis et al. 2017)
        m = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.05, 0.55, 0.15, 0.1, 0.08, 0.07]))
        pitch_deg = float(np.clip(rng.normal(13.0 if not late else 22.0, 5.0), 6.0, 40.0))
        sharp = rng.uniform(1.5, 6.0)
        h_arm = h * rng.uniform(1.0, 1.3)
        fl = _fluxes(ctx, mag(disc_light * f_arm), z, w_sf, av_int)
        comps.append(
            Component(
                "arms",
                {
                    **plane,
                    "h": h_arm,
                    "r_in": r_in,
                    "m": m,
                    "pitch": math.radians(pitch_deg),
                    "sharp": sharp,
                    "phase": rng.uniform(0, 2 * math.pi),
                },
                fl,
                in_disc=True,
                name=prefix + "arms",
            )
        )
        # r-band surface brightness of the arm ridge at R = 1.5 h_arm (truth only)
        R = 1.5 * h_arm
        env = math.exp(-R / h_arm) * (1 - math.exp(-((R / r_in) ** 2)))
        env_tot = 2 * math.pi * h_arm**2  # approx. integral of the envelope
        cs = math.gamma(sharp + 0.5) / (math.sqrt(math.pi) * math.gamma(sharp + 1.0))
        sb = _r_flux(ctx, fl) * env / (env_tot * cs) / max(math.cos(incl), 0.1)
        truth.update(
            arm_count=m,
            arm_pitch_deg=pitch_deg,
            arm_flux_fraction=f_arm,
            arm_surface_brightness_r=float(ph.nmgy_to_mag(sb)),
        )
        # HII regions strung along the arms
        n_h = int(rng.integers(25, 70))
        Rh = h_arm * rng.gamma(2.0, 0.8, n_h) + r_in
        th = np.log(Rh / r_in) / math.tan(math.radians(pitch_deg)) + _arm_ridge_phase(comps[-1])
        th = th + 2 * math.pi * rng.integers(0, m, n_h) / m + rng.normal(0, 0.12, n_h)
        Xp, Yp = Rh * np.cos(th), Rh * np.sin(th)
        xs, ys = _plane_to_sky(Xp, Yp, x0, y0, pa, incl)
        comps.append(
            Component(
                "points",
                {"x": xs, "y": ys, "w": rng.pareto(3.0, n_h) + 1.0, "blur": 0.2},
                _fluxes(ctx, mag(disc_light * f_hii), z, _rest_weights(Im=1.0), av_int),
                in_disc=True,
                name=prefix + "hii",
            )
        )
    if has_ring:
        R = (
            bar_a * rng.uniform(1.0, 1.2)
            if has_bar and rng.random() < 0.7
            else h * rng.uniform(1.2, 3.0)
        )
        w = R * rng.uniform(0.06, 0.14)
        fl = _fluxes(ctx, mag(disc_light * f_ring), z, w_sf, av_int)
        comps.append(
            Component("ring", {**plane, "R": R, "w": w}, fl, in_disc=True, name=prefix + "ring")
        )
        sb = (
            _r_flux(ctx, fl)
            / (2 * math.pi * R * math.sqrt(2 * math.pi) * w)
            / max(math.cos(incl), 0.1)
        )
        truth.update(ring_radius_arcsec=R, ring_flux_fraction=disc_light * f_ring)
    if has_clumps:
        n_c = int(rng.integers(8, 31))
        Rc = rng.gamma(2.0, h * 0.8, n_c)
        th = rng.uniform(0, 2 * math.pi, n_c)
        xs, ys = _plane_to_sky(Rc * np.cos(th), Rc * np.sin(th), x0, y0, pa, incl)
        wts = rng.pareto(2.5, n_c) + 1.0
        fl = _fluxes(ctx, mag(disc_light * f_clump), z, _rest_weights(Im=1.0), av_int * 0.5)
        comps.append(
            Component(
                "points",
                {"x": xs, "y": ys, "w": wts, "blur": 0.3},
                fl,
                in_disc=True,
                name=prefix + "clumps",
            )
        )
        truth.update(n_clumps=n_c, clump_flux_fraction=disc_light * f_clump)

    dust = None
    if incl_deg >= 78.0 and rng.random() < (0.2 if kind == "lenticular" else 0.75):
        tau_v = rng.uniform(0.8, 3.0)
        width = max(q0 * h * rng.uniform(0.3, 0.6), 0.12)
        side = 1.0 if rng.random() < 0.5 else -1.0
        dust = DustLane(
            x0=x0,
            y0=y0,
            pa=pa,
            tau_v=tau_v,
            width=width,
            length=2.0 * h,
            offset=side * width * 0.6 * (math.cos(incl) / math.cos(math.radians(78.0))),
            tau_scale=np.array([550.0 / (ph.BAND_WAVELENGTH_NM[b] / (1.0 + z)) for b in ctx.bands]),
        )
        truth.update(dust_lane_tau_v=tau_v)

    # the disc itself as a feature (featured-or-disk votes for S0s / edge-ons)
    disc_sb = disc_r / (2 * math.pi * h * h * q_disc)
    vis["disc"] = (
        _vis(_snr_patch(ctx, disc_sb * math.exp(-1.5), h), 6.0) * _res(h, ctx.fwhm_r) * (1 - bt)
    )
    hlr = _half_light_radius([(bt, re_b, n_b), (1 - bt, re_disc, 1.0)])
    truth.update(
        log_stellar_mass=logm,
        redshift=z,
        half_light_radius_arcsec=hlr,
        sersic_n=n_b if bt >= 0.5 else 1.0,
        axis_ratio=q_b if bt >= 0.5 else q_disc,
        position_angle_deg=math.degrees(pa) % 180.0,
        inclination_deg=incl_deg,
        bulge_to_total=bt,
        bulge_sersic_n=n_b if bt > 0.01 else math.nan,
        disc_scale_length_arcsec=h,
        has_arms_model=has_arms,
        has_bar_model=has_bar,
        has_ring_model=has_ring,
        has_clumps_model=has_clumps,
        _late=late,
    )
    return comps, truth, vis, dust


def _arm_ridge_phase(comp: Component) -> float:
    """Phase (radians) of a spiral-arm component, for placing HII regions on the ridge."""
    return float(comp.params.get("phase", 0.0)) / max(int(comp.params.get("m", 1)), 1)


# ------------------------------------------------------------------------- other types
def _elliptical(ctx: _Ctx, logm: float, z: float, x0=0.0, y0=0.0, prefix="") -> tuple:
    rng = ctx.rng
    m_abs = _abs_mag(logm, 3.0, rng, z)
    re = _re_early_kpc(logm, rng) / float(ph.tables().kpc_per_arcsec(z))
    n = float(np.clip(rng.normal(3.0 + 1.2 * (logm - 10.5), 0.6), 2.0, 6.0))
    q = float(np.clip(rng.normal(0.74, 0.16), 0.35, 1.0))
    pa = rng.uniform(0, math.pi)
    young = rng.uniform(0.0, 0.15)
    fl = _fluxes(ctx, m_abs, z, _rest_weights(E=1 - young, Sbc=young))
    comp = Component(
        "sersic", {"x0": x0, "y0": y0, "re": re, "n": n, "q": q, "pa": pa}, fl, name=prefix + "body"
    )
    truth = dict(
        log_stellar_mass=logm,
        redshift=z,
        half_light_radius_arcsec=re,
        sersic_n=n,
        axis_ratio=q,
        position_angle_deg=math.degrees(pa) % 180.0,
        bulge_to_total=1.0,
        bulge_sersic_n=n,
    )
    return [comp], truth, {}


def _irregular(ctx: _Ctx, logm: float, z: float) -> tuple:
    rng = ctx.rng
    m_abs = _abs_mag(logm, 0.5, rng, z)
    re = _re_late_kpc(logm, rng) / float(ph.tables().kpc_per_arcsec(z))
    q = rng.uniform(0.4, 0.9)
    pa = rng.uniform(0, math.pi)
    w_main = _rest_weights(Im=1.0, Scd=rng.uniform(0, 0.3))
    n_blob = int(rng.integers(2, 5))
    f_blobs = rng.uniform(0.25, 0.5)
    f_clump = rng.uniform(0.15, 0.4) if rng.random() < 0.8 else 0.0
    f_main = max(1.0 - f_blobs - f_clump, 0.2)
    comps = [
        Component(
            "sersic",
            {"x0": 0.0, "y0": 0.0, "re": re, "n": rng.uniform(0.6, 1.2), "q": q, "pa": pa},
            _fluxes(ctx, m_abs - 2.5 * math.log10(f_main), z, w_main),
            name="body",
        )
    ]
    bw = rng.dirichlet(np.ones(n_blob)) * f_blobs
    for k in range(n_blob):
        d = re * rng.uniform(0.3, 1.3)
        a = rng.uniform(0, 2 * math.pi)
        comps.append(
            Component(
                "sersic",
                {
                    "x0": d * math.cos(a),
                    "y0": d * math.sin(a),
                    "re": re * rng.uniform(0.25, 0.7),
                    "n": rng.uniform(0.5, 1.2),
                    "q": rng.uniform(0.4, 1.0),
                    "pa": rng.uniform(0, math.pi),
                },
                _fluxes(ctx, m_abs - 2.5 * math.log10(bw[k]), z, w_main),
                name=f"blob{k}",
            )
        )
    truth: dict[str, Any] = dict(
        log_stellar_mass=logm,
        redshift=z,
        half_light_radius_arcsec=re * 1.15,
        sersic_n=1.0,
        axis_ratio=q,
        position_angle_deg=math.degrees(pa) % 180.0,
        bulge_to_total=0.0,
    )
    vis: dict[str, float] = {}
    total_r = _r_flux(ctx, _fluxes(ctx, m_abs, z, w_main))
    sb = total_r / (2 * math.pi * re * re * q)
    vis["irregular"] = _vis(_snr_patch(ctx, sb * f_blobs, re), 5.0) * _res(re, ctx.fwhm_r)
    vis["disc"] = 0.3 * vis["irregular"]
    if f_clump > 0:
        n_c = int(rng.integers(6, 26))
        xs = rng.normal(0, re * 0.8, n_c)
        ys = rng.normal(0, re * 0.8 * q, n_c)
        wts = rng.pareto(1.2, n_c) + 1.0
        fl = _fluxes(ctx, m_abs - 2.5 * math.log10(f_clump), z, _rest_weights(Im=1.0))
        comps.append(
            Component("points", {"x": xs, "y": ys, "w": wts, "blur": 0.2}, fl, name="clumps")
        )
        truth.update(n_clumps=n_c, clump_flux_fraction=f_clump, has_clumps_model=True)
    return comps, truth, vis


def _tail(
    ctx: _Ctx,
    z: float,
    base: tuple[float, float],
    direction: float,
    length: float,
    width: float,
    sb_mag: float,
    weights: dict[str, float],
    curl: float,
    name: str,
) -> Component:
    """A tidal tail: a curved stream of particles of mean r surface brightness ``sb_mag``.

    ``length``/``width`` in arcsec (width = Gaussian sigma at the tip), ``curl`` the total
    change of direction (radians) along the tail.
    """
    rng = ctx.rng
    n_p = 1500
    t = rng.random(n_p) ** 1.4
    s = t * length
    kappa = curl / max(length, 1e-3)
    if abs(kappa) < 1e-6:
        px = base[0] + s * math.cos(direction)
        py = base[1] + s * math.sin(direction)
        ang = np.full_like(s, direction)
    else:
        ang = direction + kappa * s
        px = base[0] + (np.sin(ang) - math.sin(direction)) / kappa
        py = base[1] - (np.cos(ang) - math.cos(direction)) / kappa
    w = width * (0.35 + 0.65 * t)
    off = rng.normal(0.0, 1.0, n_p) * w
    px = px - off * np.sin(ang)
    py = py + off * np.cos(ang)
    sb = float(ph.mag_to_nmgy(sb_mag))  # nmgy / arcsec^2 in r
    area = length * 2.0 * width * 0.7
    flux_r = sb * area
    fl = _fluxes(ctx, 0.0, z, weights)
    fl = fl * (flux_r / max(_r_flux(ctx, fl), 1e-30))
    return Component("points", {"x": px, "y": py, "w": np.ones(n_p), "blur": 0.3}, fl, name=name)


def _shells(ctx: _Ctx, z: float, re: float, pa: float, sb_mag: float) -> tuple[Component, float]:
    """2-5 concentric, alternating shells around a host of half-light radius ``re``."""
    rng = ctx.rng
    n_sh = int(rng.integers(2, 6))
    radii = np.sort(re * rng.uniform(1.5, 5.0, n_sh))
    xs, ys = [], []
    area = 0.0
    for k, R in enumerate(radii):
        n_p = 500
        half = rng.uniform(0.6, 1.2)
        a = pa + (k % 2) * math.pi + rng.uniform(-half, half, n_p)
        r = R * (1.0 - np.abs(rng.normal(0.0, 0.07, n_p)))
        xs.append(r * np.cos(a))
        ys.append(r * np.sin(a))
        area += 2 * half * R * 0.1 * R
    x, y = np.concatenate(xs), np.concatenate(ys)
    sb = float(ph.mag_to_nmgy(sb_mag))
    fl = _fluxes(ctx, 0.0, z, _rest_weights(E=0.8, Sbc=0.2))
    fl = fl * (sb * area / max(_r_flux(ctx, fl), 1e-30))
    width = float(np.mean(radii)) * 0.12
    return Component(
        "points", {"x": x, "y": y, "w": np.ones(len(x)), "blur": 0.2}, fl, name="shells"
    ), width


def _merger(ctx: _Ctx) -> tuple:
    rng = ctx.rng
    u = rng.random()
    kind = "major" if u < 0.5 else ("post" if u < 0.75 else "shells")
    comps: list[Component] = []
    truth: dict[str, Any] = {"merger_kind": kind}
    vis: dict[str, float] = {}
    dust = None
    if kind == "shells":
        logm, z = _mass_and_redshift(rng, "early")
        c, t, _ = _elliptical(ctx, logm, z)
        comps += c
        truth.update(t)
        mu = rng.uniform(24.0, 27.0)
        shell, width = _shells(
            ctx, z, t["half_light_radius_arcsec"], math.radians(t["position_angle_deg"]), mu
        )
        comps.append(shell)
        truth.update(tail_surface_brightness_r=mu, tail_width_arcsec=width, n_nuclei=1)
        if rng.random() < 0.4:  # a small companion being stripped
            m2 = logm - rng.uniform(0.8, 1.5)
            d = t["half_light_radius_arcsec"] * rng.uniform(2.0, 4.0)
            a = rng.uniform(0, 2 * math.pi)
            c2, _, _ = _elliptical(
                ctx, m2, z, d * math.cos(a), d * math.sin(a), prefix="companion_"
            )
            comps += c2
        return comps, truth, vis, dust, z

    primary_pop = "spiral" if rng.random() < 0.65 else "early"
    logm, z = _mass_and_redshift(rng, primary_pop)
    kpa = float(ph.tables().kpc_per_arcsec(z))
    mu = rng.uniform(22.5, 26.0) if kind == "major" else rng.uniform(23.5, 26.5)
    if kind == "major":
        logm2 = logm - rng.uniform(0.0, 0.6)
        sep = rng.uniform(4.0, 22.0) / kpa
        a12 = rng.uniform(0, 2 * math.pi)
        pos2 = (sep * math.cos(a12), sep * math.sin(a12))
        nuclei = [((0.0, 0.0), logm, ""), (pos2, logm2, "second_")]
        truth.update(
            merger_mass_ratio=10 ** (logm - logm2), merger_separation_arcsec=sep, n_nuclei=2
        )
        for (px, py), lm, pre in nuclei:
            if primary_pop == "spiral" or pre:
                c, t, _, _ = _disc_galaxy(ctx, "disc", lm, z, px, py, features=False, prefix=pre)
            else:
                c, t, _ = _elliptical(ctx, lm, z, px, py, prefix=pre)
            comps += c
            if not pre:
                truth.update(t)
        tails_from = nuclei
    else:
        c, t, _ = _elliptical(ctx, logm, z)
        c[0].params["n"] = rng.uniform(1.5, 3.5)
        c[0].flux = _fluxes(ctx, _abs_mag(logm, 1.8, rng, z), z, _rest_weights(E=0.5, Sbc=0.5))
        t["sersic_n"] = c[0].params["n"]
        comps += c
        truth.update(t)
        re = t["half_light_radius_arcsec"]
        d = re * rng.uniform(0.5, 1.5)
        a = rng.uniform(0, 2 * math.pi)
        plume = _fluxes(
            ctx,
            _abs_mag(logm, 1.8, rng, z) + 2.5 * rng.uniform(0.7, 1.3),
            z,
            _rest_weights(Sbc=1.0),
        )
        comps.append(
            Component(
                "sersic",
                {
                    "x0": d * math.cos(a),
                    "y0": d * math.sin(a),
                    "re": re * 1.2,
                    "n": 1.0,
                    "q": 0.5,
                    "pa": a,
                },
                plume,
                name="plume",
            )
        )
        truth.update(n_nuclei=1)
        tails_from = [((0.0, 0.0), logm, "")]
    n_tails = 0
    widths: list[float] = []
    for (px, py), _, pre in tails_from:
        if len(tails_from) > 1 and rng.random() < 0.25:
            continue
        length = rng.uniform(12.0, 45.0) / kpa
        width = max(rng.uniform(1.0, 3.5) / kpa, 0.3)
        widths.append(width)
        direction = rng.uniform(0, 2 * math.pi)
        curl = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.5)
        comps.append(
            _tail(
                ctx,
                z,
                (px, py),
                direction,
                length,
                width,
                mu,
                _rest_weights(Sbc=0.5, Scd=0.5),
                curl,
                pre + "tail",
            )
        )
        n_tails += 1
        if kind == "post" and rng.random() < 0.5:
            comps.append(
                _tail(
                    ctx,
                    z,
                    (px, py),
                    direction + math.pi + rng.normal(0, 0.4),
                    length * 0.6,
                    width,
                    mu + 0.5,
                    _rest_weights(Sbc=0.5, Scd=0.5),
                    -curl,
                    "tail2",
                )
            )
            n_tails += 1
    truth.update(
        tail_surface_brightness_r=mu,
        n_tails=n_tails,
        tail_width_arcsec=float(np.mean(widths)) if widths else math.nan,
    )
    return comps, truth, vis, dust, z


# --------------------------------------------------------------------------------- lenses
@cache
def _sigma_table() -> tuple[np.ndarray, np.ndarray]:
    """CDF of velocity dispersion for lenses: VDF of early types (Choi et al. 2007) x sigma^4."""
    s = np.linspace(160.0, 400.0, 500)
    sstar, alpha, beta = 161.0, 2.32, 2.67
    w = (s / sstar) ** alpha * np.exp(-((s / sstar) ** beta)) / s * s**4
    cdf = np.cumsum(w)
    return s, cdf / cdf[-1]


def _lens_params(rng: np.random.Generator) -> dict[str, Any]:
    """One draw of deflector and source: sigma ~ VDF x sigma^4, z_l ~ dV/dz on [0.1, 0.55],
    z_s ~ N(1.6, 0.5) > z_l + 0.3, theta_E = 4 pi (sigma/c)^2 D_ls / D_s (flat LCDM)."""
    tab = ph.tables()
    s_grid, cdf = _sigma_table()
    sig = float(np.interp(rng.random(), cdf, s_grid))
    v = tab.volume(0.1) + rng.random() * (tab.volume(0.55) - tab.volume(0.1))
    z_l = float(tab.z_of_volume(v))
    z_s = float(np.clip(rng.normal(1.6, 0.5), z_l + 0.3, 3.5))
    dc_l = float(np.interp(z_l, tab.z, tab.d_a_mpc)) * (1 + z_l)
    dc_s = float(np.interp(z_s, tab.z, tab.d_a_mpc)) * (1 + z_s)
    theta_e = 4 * math.pi * (sig / C_KMS) ** 2 * (dc_s - dc_l) / dc_s * 206264.806
    src_re = rng.uniform(0.12, 0.4)
    q_s = rng.uniform(0.5, 1.0)
    phi_s = rng.uniform(0, math.pi)
    e_s = (1 - q_s) / (1 + q_s)
    beta_r = 0.6 * theta_e * math.sqrt(rng.random())
    beta_a = rng.uniform(0, 2 * math.pi)
    return {
        "sigma": sig,
        "z_l": z_l,
        "z_s": z_s,
        "theta_E": theta_e,
        "src_re": src_re,
        "src_n": rng.uniform(0.7, 1.5),
        "src_e1": e_s * math.cos(2 * phi_s),
        "src_e2": e_s * math.sin(2 * phi_s),
        "src_x": beta_r * math.cos(beta_a),
        "src_y": beta_r * math.sin(beta_a),
        "beta": beta_r,
        "m_src_r": rng.uniform(22.0, 25.0),  # unlensed source r magnitude
        "q_m": rng.uniform(0.55, 1.0),
        "phi": rng.uniform(0, math.pi),
        "gamma": rng.uniform(0.0, 0.08),
        "gamma_phi": rng.uniform(0, math.pi),
    }


def _lens_geometry(p: dict[str, Any]) -> dict[str, Any]:
    e = (1 - p["q_m"]) / (1 + p["q_m"])
    return {
        "theta_E": p["theta_E"],
        "e1": e * math.cos(2 * p["phi"]),
        "e2": e * math.sin(2 * p["phi"]),
        "gamma1": p["gamma"] * math.cos(2 * p["gamma_phi"]),
        "gamma2": p["gamma"] * math.sin(2 * p["gamma_phi"]),
        "x0": 0.0,
        "y0": 0.0,
        **{k: p[k] for k in ("src_x", "src_y", "src_re", "src_n", "src_e1", "src_e2")},
    }


def _lens(ctx: _Ctx) -> tuple:
    """A detectable galaxy-galaxy strong lens: SIE + shear deflector (a massive elliptical)
    and a lensed Sérsic source (Im template at z_s).

    Draws are kept when they meet the ground-based detectability criteria of Collett (2015):
    ``theta_E^2 > r_src^2 + (FWHM/2)^2`` (arcs resolved), total magnification >= 3 and lensed-
    source S/N >= 20 in g (matched to the PSF-blurred arcs, deflector light excluded), plus
    ``theta_E >= 1"``, the smallest Einstein radii of the DECaLS/DES lens searches (Jacobs et
    al. 2019; Huang et al. 2020, 2021).
    """
    from scipy.ndimage import gaussian_filter

    from galaxy_assets.survey.mock_render import draw_lensed

    rng = ctx.rng
    p: dict[str, Any] = {}
    fl = np.zeros(len(ctx.bands))
    for _ in range(60):
        p = _lens_params(rng)
        if (
            p["theta_E"] < LENS_MIN_THETA_E
            or p["theta_E"] ** 2 <= p["src_re"] ** 2 + (ctx.fwhm_g / 2) ** 2
        ):
            continue
        fl = _fluxes(ctx, 0.0, p["z_s"], _rest_weights(Im=1.0))
        fl = fl * (float(ph.mag_to_nmgy(p["m_src_r"])) / max(_r_flux(ctx, fl), 1e-30))
        shape = draw_lensed(_lens_geometry(p), 64, PIXEL_SCALE)
        mu = float(shape.sum())
        arc = gaussian_filter(shape * _g_flux(ctx, fl), ctx.fwhm_g / 2.355 / PIXEL_SCALE)
        mask = arc > 0.3 * arc.max()
        snr = float(arc[mask].sum() / (ctx.sigma_g * math.sqrt(max(int(mask.sum()), 1))))
        if mu >= 3.0 and snr >= 20.0:
            break
    logm = 11.0 + 3.0 * math.log10(p["sigma"] / 200.0) + rng.normal(0.0, 0.1)
    comps, truth, _ = _elliptical(ctx, logm, p["z_l"])
    body = comps[0]
    # light follows mass: the deflector's light has the SIE's orientation, similar flattening
    body.params["pa"] = p["phi"]
    body.params["q"] = float(np.clip(p["q_m"] + rng.normal(0, 0.05), 0.4, 1.0))
    truth["axis_ratio"] = body.params["q"]
    truth["position_angle_deg"] = math.degrees(p["phi"]) % 180.0
    comps.append(Component("lensed", _lens_geometry(p), fl, name="lensed_source"))
    truth.update(
        einstein_radius_arcsec=p["theta_E"],
        lens_velocity_dispersion_kms=p["sigma"],
        lens_axis_ratio=p["q_m"],
        lens_shear=p["gamma"],
        lens_source_redshift=p["z_s"],
        lens_source_mag_r=p["m_src_r"],
        lens_source_mag_g=float(ph.nmgy_to_mag(_g_flux(ctx, fl))),
        lens_source_half_light_radius_arcsec=p["src_re"],
        lens_source_offset_arcsec=p["beta"],
    )
    return comps, truth, {}, None, p["z_l"]


# --------------------------------------------------------------------------- field sources
def _field_sources(ctx: _Ctx, size: int) -> tuple[list[FieldSource], float]:
    """Background galaxies (r 20-24, counts ~10^(0.35 m), 8e4 deg^-2 brighter than 24) and
    foreground stars (r 15-22, ~3000 deg^-2: high Galactic latitude) over the padded stamp.

    Returns the sources and the r magnitude of the brightest star (inf when none)."""
    rng = ctx.rng
    half = (size / 2 + pad_for(size)) * PIXEL_SCALE
    area = (2 * half) ** 2  # arcsec^2
    out: list[FieldSource] = []
    n_gal = rng.poisson(8e4 / 1.296e7 * area)
    for _ in range(n_gal):
        m = 24.0 + math.log10(1 - rng.random() * (1 - 10 ** (0.35 * (20.0 - 24.0)))) / 0.35
        x, y = rng.uniform(-half, half, 2)
        if x * x + y * y < 2.0**2:
            continue
        t = str(rng.choice(ph.TEMPLATES, p=[0.2, 0.3, 0.3, 0.2]))
        zb = float(np.clip(rng.normal(0.25 + 0.13 * (m - 20.0), 0.12), 0.1, 1.3))
        fl = _fluxes(ctx, 0.0, zb, {t: 1.0})
        fl = fl * (float(ph.mag_to_nmgy(m)) / max(_r_flux(ctx, fl), 1e-30))
        out.append(
            FieldSource(
                x,
                y,
                fl,
                size=float(math.exp(rng.uniform(math.log(0.2), math.log(0.9)))),
                q=rng.uniform(0.3, 1.0),
                pa=rng.uniform(0, math.pi),
            )
        )
    n_star = rng.poisson(3000 / 1.296e7 * area)
    brightest = math.inf
    for _ in range(n_star):
        m = 22.0 + math.log10(1 - rng.random() * (1 - 10 ** (0.2 * (15.0 - 22.0)))) / 0.2
        x, y = rng.uniform(-half, half, 2)
        if x * x + y * y < 2.0**2:
            continue
        gr = rng.uniform(0.25, 1.4)
        colours = {"g": gr, "r": 0.0, "i": -(0.38 * gr - 0.05), "z": -(0.38 * gr - 0.05) * 1.5}
        fl = np.array(
            [
                float(ph.mag_to_nmgy(m + colours[b] + ph.EXTINCTION_COEFF[b] * ctx.ebv))
                for b in ctx.bands
            ]
        )
        out.append(FieldSource(x, y, fl, size=0.0))
        if abs(x) < size / 2 * PIXEL_SCALE and abs(y) < size / 2 * PIXEL_SCALE:
            brightest = min(brightest, m)
    return out, brightest


# ---------------------------------------------------------------------------------- entry
def galaxy_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Generator of stream ``stream`` (1: the galaxy, 2: its noise) of galaxy ``index``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, stream)))


def draw_galaxy(
    seed: int, index: int, ra: float, dec: float, bands: tuple[str, ...], size: int
) -> GalaxyDraw:
    """Draw galaxy ``index`` of the survey with ``seed`` at (ra, dec) degrees.

    The truth record holds the class flags, physical parameters and visibility scores; the
    scene is what :func:`~galaxy_assets.survey.mock_render.render_scene` draws.
    """
    rng = galaxy_rng(seed, index, 1)
    ebv = ebv_at(ra, dec)
    obs = _observation(rng, bands)
    ir = bands.index("r") if "r" in bands else len(bands) - 1
    ig = bands.index("g") if "g" in bands else 0
    ctx = _Ctx(
        rng=rng,
        bands=bands,
        ebv=ebv,
        sigma_r=float(obs.sigma[ir]),
        sigma_g=float(obs.sigma[ig]),
        fwhm_r=float(obs.psf_fwhm[ir]),
        fwhm_g=float(obs.psf_fwhm[ig]),
        nea_r=moffat_nea(float(obs.psf_fwhm[ir]), obs.psf_beta),
    )
    morph = morph_type_of(seed, index)
    dust = None
    vis: dict[str, float]
    if morph in ("spiral", "lenticular", "disc"):
        pop = {"spiral": "spiral", "lenticular": "lenticular", "disc": "disc"}[morph]
        logm, z = _mass_and_redshift(rng, pop)
        comps, truth, vis, dust = _disc_galaxy(ctx, morph, logm, z, 0.0, 0.0)
    elif morph == "elliptical":
        logm, z = _mass_and_redshift(rng, "early")
        comps, truth, vis = _elliptical(ctx, logm, z)
    elif morph == "irregular":
        logm, z = _mass_and_redshift(rng, "irregular")
        comps, truth, vis = _irregular(ctx, logm, z)
    elif morph == "merger":
        comps, truth, vis, dust, z = _merger(ctx)
    else:
        comps, truth, vis, dust, z = _lens(ctx)
    # a projected companion (no interaction) in a few percent of fields: a merger confuser
    companion = morph not in ("merger", "lens") and rng.random() < COMPANION_RATE
    if companion:
        d = rng.uniform(15.0, 35.0) / float(ph.tables().kpc_per_arcsec(z))
        d = min(d, 0.4 * size * PIXEL_SCALE)
        a = rng.uniform(0, 2 * math.pi)
        logm2 = truth["log_stellar_mass"] - rng.uniform(0.2, 1.2)
        c2, _, _ = _elliptical(ctx, logm2, z, d * math.cos(a), d * math.sin(a), prefix="companion_")
        comps += c2
        truth["companion_separation_arcsec"] = d
    # sub-pixel offset of the galaxy from the stamp centre
    jx, jy = rng.uniform(-0.5, 0.5, 2) * PIXEL_SCALE
    for c in comps:
        p = c.params
        for kx, ky in (("x0", "y0"), ("x", "y")):
            if kx in p:
                p[kx] = p[kx] + jx
                p[ky] = p[ky] + jy
    if dust is not None:
        dust.x0 += jx
        dust.y0 += jy
    field_sources, brightest_star = _field_sources(ctx, size)
    truth["morph_type"] = morph
    truth["ebv"] = ebv
    truth["bright_star_mag_r"] = brightest_star
    incl = truth.get("inclination_deg", math.nan)
    late = bool(truth.pop("_late", False))
    truth["is_elliptical"] = morph in ("elliptical", "lens") or truth.get("merger_kind") == "shells"
    truth["is_lens"] = morph == "lens"
    truth["is_merger"] = morph == "merger"
    truth["is_irregular"] = morph == "irregular"
    truth["is_edge_on"] = morph in ("spiral", "lenticular", "disc") and incl >= EDGE_ON_DEG
    truth["late_type_disc"] = late
    truth["psf_fwhm_r_arcsec"] = ctx.fwhm_r
    truth["sky_sigma_r_nmgy"] = ctx.sigma_r
    close = [
        # a background galaxy brighter than r = 20 within 5": volunteers may call it a merger
        s
        for s in field_sources
        if s.size > 0 and math.hypot(s.x, s.y) < 5.0 and _r_flux(ctx, s.flux) > 10.0
    ]
    vis["neighbour"] = 1.0 if close or companion else 0.0
    scene = Scene(components=comps, observation=obs, field_sources=field_sources, dust=dust)
    return GalaxyDraw(scene=scene, truth=truth, vis=vis)
