"""Photometry of the mock survey: bandpasses, SED templates, K-corrections, observing conditions.

Colours come from redshifted spectral templates integrated through DECam-like bandpasses, so
that colour-redshift degeneracies in the mock catalogue are physical:

* **Templates**: the Coleman, Wu & Weedman (1980) E, Sbc, Scd and Im spectra, extended to
  the UV and IR by Bolzonella et al. (2000), as shipped with GalSim (``share/SEDs/CWW_*_ext.sed``,
  f_lambda in arbitrary units against wavelength in Angstrom).
* **Bandpasses**: GalSim ships no DECam curves, so each band is a DECam-like total throughput:
  a filter with the half-power edges of Flaugher et al. (2015, AJ 150, 150, Table 4) and 8 nm
  logistic wings, times a smooth fully-depleted-CCD quantum efficiency and a smooth
  atmospheric transmission at airmass 1.3 (no telluric bands). Against the LSST g, r, i, z
  curves GalSim ships, r-i and i-z agree to <= 0.04 mag for the four templates at z = 0.1;
  g-r is 0.03-0.13 mag redder (reddest for E) because the DECam r filter starts 16 nm redder
  than LSST r; the DECam z filter reaches further red (to ~1000 nm) than LSST z.
* **K-corrections**: ``K_T,b(z) = m_AB(T at z, b) - m_AB(T at z=0, r)`` with
  ``f_nu,obs(lambda) = (1+z) f_nu,rest(lambda/(1+z))`` (the convention GalSim's
  ``SED.atRedshift`` follows), so an object of rest-frame absolute magnitude ``M_r`` has
  apparent magnitude ``M_r + DM(z) + K_T,b(z)`` in band ``b``. Tabulated once per process on
  ``z in [0, 4]`` (step 0.005) with Planck 2018 distances (astropy).

Observing conditions are Legacy Survey DR9/DR10-like medians (Dey et al. 2019, AJ 157, 168;
the DR10 documentation): seeing FWHM and 5-sigma point-source depths per band, Galactic
extinction coefficients of Schlafly & Finkbeiner (2011) for DECam.

Units: wavelengths nm, magnitudes AB, fluxes nanomaggies (1 nmgy = 3.631e-6 Jy, AB zero point
22.5), angles arcsec, distances Mpc.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from galaxy_assets.survey.errors import SurveyConfigError

log = logging.getLogger(__name__)

SUPPORTED_BANDS: tuple[str, ...] = ("g", "r", "i", "z")

# DECam filter half-power edges (nm), Flaugher et al. 2015 Table 4.
DECAM_EDGES_NM: dict[str, tuple[float, float]] = {
    "g": (398.0, 548.0),
    "r": (568.0, 714.0),
    "i": (710.0, 857.0),
    "z": (850.0, 1002.0),
}
# A_b / E(B-V) for DECam (Schlafly & Finkbeiner 2011, as used by the Legacy Surveys).
EXTINCTION_COEFF: dict[str, float] = {"g": 3.214, "r": 2.165, "i": 1.592, "z": 1.211}
# Median PSF FWHM (arcsec) in the Legacy Survey DR9 south / DR10 (DECam).
SEEING_MEDIAN_ARCSEC: dict[str, float] = {"g": 1.29, "r": 1.18, "i": 1.12, "z": 1.11}
# Median 5-sigma point-source depths (AB) in DECaLS DR9/DR10 (i: DES/DELVE-like).
PSF_DEPTH_MEDIAN: dict[str, float] = {"g": 24.6, "r": 24.0, "i": 23.5, "z": 23.0}
# Effective wavelength (nm) of each band, for dust laws.
BAND_WAVELENGTH_NM: dict[str, float] = {"g": 480.0, "r": 640.0, "i": 780.0, "z": 920.0}

TEMPLATES: tuple[str, ...] = ("E", "Sbc", "Scd", "Im")
_TEMPLATE_FILES = {t: f"CWW_{t}_ext.sed" for t in TEMPLATES}
# Rest-frame r-band stellar mass-to-light ratios (solar units) for each template's population
# (Bell & de Jong 2001; Bell et al. 2003, typical values for their colours).
ML_R: dict[str, float] = {"E": 3.0, "Sbc": 1.6, "Scd": 0.9, "Im": 0.45}
M_SUN_R_AB = 4.65  # absolute AB magnitude of the Sun in r (Willmer 2018)
AB_ZP_NMGY = 22.5

Z_GRID = np.round(np.arange(0.0, 4.0 + 1e-9, 0.005), 6)


def check_bands(bands: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate a band list against :data:`SUPPORTED_BANDS`; return it as a tuple."""
    bands = tuple(bands)
    if not bands:
        raise SurveyConfigError("mock survey: bands is empty; pass some of ('g', 'r', 'i', 'z')")
    bad = [b for b in bands if b not in SUPPORTED_BANDS]
    if bad:
        raise SurveyConfigError(
            f"mock survey: unknown band(s) {bad}; the mock simulates DECam-like "
            f"{list(SUPPORTED_BANDS)} only"
        )
    if len(set(bands)) != len(bands):
        raise SurveyConfigError(f"mock survey: bands {list(bands)} repeat a band")
    return bands


def _galsim_share() -> Path:
    import galsim

    return Path(galsim.meta_data.share_dir)


def decam_like_throughput(band: str, wave_nm: np.ndarray) -> np.ndarray:
    """Total throughput (0-1) of the DECam-like ``band`` at wavelengths ``wave_nm`` (nm)."""
    lo, hi = DECAM_EDGES_NM[band]
    w = np.asarray(wave_nm, dtype=float)
    edge = 8.0 / 4.4  # logistic scale: 10-90% rise over ~8 nm
    filt = 0.95 / ((1.0 + np.exp(-(w - lo) / edge)) * (1.0 + np.exp((w - hi) / edge)))
    # Fully depleted 250-micron CCD: high red QE, falling below 400 nm and beyond 950 nm.
    qe = 0.92 / (1.0 + np.exp(-(w - 365.0) / 18.0)) / (1.0 + np.exp((w - 1010.0) / 30.0))
    # Smooth atmosphere at airmass 1.3: Rayleigh + aerosol extinction (mag per airmass).
    k = 0.0088 * (w / 1000.0) ** -4.05 + 0.012 * (w / 1000.0) ** -1.3
    atm = 10 ** (-0.4 * 1.3 * k)
    optics = 0.85
    return filt * qe * atm * optics


def decam_like_bandpass(band: str):
    """The DECam-like ``band`` as a ``galsim.Bandpass`` (nm) with an AB zero point."""
    import galsim

    wave = np.arange(300.0, 1150.0, 1.0)
    table = galsim.LookupTable(wave, decam_like_throughput(band, wave), interpolant="linear")
    return galsim.Bandpass(table, wave_type="nm").withZeropoint("AB")


def template_sed(template: str):
    """The CWW ``template`` as a ``galsim.SED`` (f_lambda, Angstrom)."""
    import galsim

    return galsim.SED(
        str(_galsim_share() / "SEDs" / _TEMPLATE_FILES[template]),
        wave_type="Ang",
        flux_type="flambda",
    )


def _load_template(template: str) -> tuple[np.ndarray, np.ndarray]:
    path = _galsim_share() / "SEDs" / _TEMPLATE_FILES[template]
    data = np.loadtxt(path, comments="#")
    return data[:, 0] / 10.0, data[:, 1]  # nm, f_lambda


@dataclass(frozen=True)
class PhotometryTables:
    """Per-process lookup tables (built once by :func:`tables`).

    ``kcorr[t, b, k]``: ``K_T,b(z_k)`` for template ``TEMPLATES[t]`` and band
    ``SUPPORTED_BANDS[b]``; ``dist_mod``, ``d_a_mpc`` (angular-diameter distance, Mpc) and
    ``comoving_volume`` (Mpc^3, full sky) on :data:`Z_GRID`.
    """

    z: np.ndarray
    kcorr: np.ndarray
    dist_mod: np.ndarray
    d_a_mpc: np.ndarray
    comoving_volume: np.ndarray

    def k(self, template: str, band: str, z: float | np.ndarray) -> np.ndarray:
        """K-correction (mag) from rest-frame r of ``template`` to observed ``band`` at ``z``."""
        t = TEMPLATES.index(template)
        b = SUPPORTED_BANDS.index(band)
        return np.interp(z, self.z, self.kcorr[t, b])

    def distance_modulus(self, z: float | np.ndarray) -> np.ndarray:
        """Distance modulus (mag) at redshift ``z`` (> 0)."""
        return np.interp(z, self.z[1:], self.dist_mod[1:])

    def kpc_per_arcsec(self, z: float | np.ndarray) -> np.ndarray:
        """Proper transverse scale (kpc per arcsec) at ``z``."""
        return np.interp(z, self.z, self.d_a_mpc) * 1e3 * np.pi / (180.0 * 3600.0)

    def volume(self, z: float | np.ndarray) -> np.ndarray:
        """Comoving volume (Mpc^3, full sky) out to ``z``."""
        return np.interp(z, self.z, self.comoving_volume)

    def z_of_volume(self, v: float | np.ndarray) -> np.ndarray:
        """Inverse of :meth:`volume`."""
        return np.interp(v, self.comoving_volume, self.z)


def _ab_mag_grid(wave_t: np.ndarray, flam: np.ndarray, band: str, z: np.ndarray) -> np.ndarray:
    """AB magnitude (arbitrary zero point common to all bands) of a template at redshifts ``z``."""
    wave = np.arange(340.0, 1100.0, 0.5)
    thr = decam_like_throughput(band, wave)
    rest = wave[None, :] / (1.0 + z[:, None])
    fnu_rest = np.interp(rest, wave_t, flam, left=0.0, right=0.0) * rest**2
    fnu_obs = (1.0 + z[:, None]) * fnu_rest
    num = np.trapezoid(fnu_obs * thr / wave, wave, axis=1)
    den = np.trapezoid(thr / wave, wave)
    with np.errstate(divide="ignore"):
        return -2.5 * np.log10(np.maximum(num / den, 1e-300))


@cache
def tables() -> PhotometryTables:
    """Build (once per process) the K-correction and cosmology tables."""
    from astropy.cosmology import Planck18

    z = Z_GRID
    kcorr = np.zeros((len(TEMPLATES), len(SUPPORTED_BANDS), len(z)))
    for t, name in enumerate(TEMPLATES):
        wave_t, flam = _load_template(name)
        m_r0 = _ab_mag_grid(wave_t, flam, "r", np.array([0.0]))[0]
        for b, band in enumerate(SUPPORTED_BANDS):
            kcorr[t, b] = _ab_mag_grid(wave_t, flam, band, z) - m_r0
    zz = np.maximum(z, 1e-6)
    dist_mod = 5.0 * np.log10(Planck18.luminosity_distance(zz).value * 1e5)
    d_a = Planck18.angular_diameter_distance(zz).value
    vol = Planck18.comoving_volume(zz).value
    log.debug("built mock-survey photometry tables (%d redshifts)", len(z))
    return PhotometryTables(z=z, kcorr=kcorr, dist_mod=dist_mod, d_a_mpc=d_a, comoving_volume=vol)


def mag_to_nmgy(mag: float | np.ndarray) -> np.ndarray:
    """AB magnitude to flux in nanomaggies."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_ZP_NMGY))


def nmgy_to_mag(flux: float | np.ndarray) -> np.ndarray:
    """Flux in nanomaggies to AB magnitude (NaN for flux <= 0)."""
    f = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, AB_ZP_NMGY - 2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)


def component_fluxes(
    abs_mag_r: float,
    z: float,
    weights: dict[str, float],
    bands: tuple[str, ...],
    ebv: float,
    internal_av: float = 0.0,
) -> np.ndarray:
    """Observed fluxes (nmgy, per band) of a component.

    ``abs_mag_r`` is its rest-frame absolute AB magnitude in r, ``weights`` the fractions of
    its rest-frame r-band light in each template (summing to 1), ``ebv`` the Galactic E(B-V)
    (applied, as in survey images), ``internal_av`` an internal V-band attenuation (mag) that
    scales as 1/wavelength in the rest frame.
    """
    tab = tables()
    dm = float(tab.distance_modulus(z))
    out = np.zeros(len(bands))
    for template, w in weights.items():
        if w <= 0:
            continue
        for i, b in enumerate(bands):
            m = abs_mag_r + dm + float(tab.k(template, b, z))
            out[i] += w * float(mag_to_nmgy(m))
    for i, b in enumerate(bands):
        lam_rest = BAND_WAVELENGTH_NM[b] / (1.0 + z)
        a_int = internal_av * 550.0 / lam_rest
        out[i] *= 10 ** (-0.4 * (EXTINCTION_COEFF[b] * ebv + a_int))
    return out
