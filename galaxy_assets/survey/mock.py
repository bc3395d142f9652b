"""The mock survey: simulated Legacy-Survey-like cutouts with truth tables and GZ votes.

:func:`simulate_survey` writes ``n`` galaxies into ``out_dir`` in the Multimodal Universe
layout, one shard per HEALPix cell (NESTED ordering)::

    out_dir/healpix=<cell>/001-of-001.hdf5           pixels + survey columns (MMU layout)
    out_dir/healpix=<cell>/001-of-001.truth.parquet  what only the simulator knows

Galaxy ``index`` is a pure function of ``(seed, index, size, bands)``: positions come from one
stream of the seed (the i-th position does not depend on ``n``), everything else from the
galaxy's own ``SeedSequence(seed, spawn_key=(index, stream))``. Results are therefore identical
whatever ``workers`` is. ``object_id`` is ``f"mock{seed}-{index:09d}"``.

The truth table (only evaluation and supervised training may read it) holds, per galaxy, the
class flags, physical parameters, feature visibilities and simulated Galaxy Zoo DECaLS vote
counts; :data:`TRUTH_SCHEMA` lists its columns. The physics and its sources are in
``docs/mock_survey.md``; rendering in :mod:`~galaxy_assets.survey.mock_render`, the population
in :mod:`~galaxy_assets.survey.mock_population`, volunteers in
:mod:`~galaxy_assets.survey.mock_votes`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from galaxy_assets.morphology.decision_tree import default_tree
from galaxy_assets.survey import mock_photometry as ph
from galaxy_assets.survey.errors import SurveyConfigError, SurveyError
from galaxy_assets.survey.mock_population import (
    FEATURE_MAX_INCL_DEG,
    VISIBLE,
    GalaxyDraw,
    draw_galaxy,
    galaxy_rng,
)
from galaxy_assets.survey.mock_render import (
    PIXEL_SCALE,
    Rendered,
    display_visibility,
    moffat_nea,
    render_scene,
)
from galaxy_assets.survey.mock_votes import simulate_votes

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"  # bump when the same (seed, n, size) would give different galaxies
SHARD_NAME = "001-of-001.hdf5"
TRUTH_NAME = "001-of-001.truth.parquet"
MIN_SIZE, MAX_SIZE = 16, 160
CHUNK = 48  # galaxies per task sent to a worker

CLASS_FLAGS: tuple[str, ...] = (
    "is_spiral",
    "has_bar",
    "is_edge_on",
    "is_elliptical",
    "is_merger",
    "has_ring",
    "is_lens",
    "is_irregular",
    "is_clumpy",
)
_F = pl.Float64()
_I = pl.Int64()
_B = pl.Boolean()
_S = pl.Utf8()
_BASE_SCHEMA: dict[str, pl.DataType] = {
    "object_id": _S,
    "index": _I,
    "healpix": _I,
    "row": _I,
    "ra": _F,
    "dec": _F,
    **dict.fromkeys(CLASS_FLAGS, _B),
    "morph_type": _S,
    "merger_kind": _S,
    "late_type_disc": _B,
    "has_arms_model": _B,
    "has_bar_model": _B,
    "has_ring_model": _B,
    "has_clumps_model": _B,
    # physical parameters
    "redshift": _F,
    "log_stellar_mass": _F,
    "half_light_radius_arcsec": _F,
    "sersic_n": _F,
    "axis_ratio": _F,
    "position_angle_deg": _F,
    "inclination_deg": _F,
    "bulge_to_total": _F,
    "bulge_sersic_n": _F,
    "disc_scale_length_arcsec": _F,
    "mag_g": _F,
    "mag_r": _F,
    "mag_i": _F,
    "mag_z": _F,
    "ebv": _F,
    # class-specific
    "arm_count": _I,
    "arm_pitch_deg": _F,
    "arm_flux_fraction": _F,
    "arm_surface_brightness_r": _F,
    "bar_length_arcsec": _F,
    "bar_flux_fraction": _F,
    "ring_radius_arcsec": _F,
    "ring_flux_fraction": _F,
    "n_clumps": _I,
    "clump_flux_fraction": _F,
    "dust_lane_tau_v": _F,
    "merger_mass_ratio": _F,
    "merger_separation_arcsec": _F,
    "n_nuclei": _I,
    "n_tails": _I,
    "tail_surface_brightness_r": _F,
    "tail_width_arcsec": _F,
    "companion_separation_arcsec": _F,
    "einstein_radius_arcsec": _F,
    "lens_velocity_dispersion_kms": _F,
    "lens_axis_ratio": _F,
    "lens_shear": _F,
    "lens_source_redshift": _F,
    "lens_source_mag_r": _F,
    "lens_source_mag_g": _F,
    "lens_source_half_light_radius_arcsec": _F,
    "lens_source_offset_arcsec": _F,
    "lens_magnification": _F,
    "lens_arc_mag_g": _F,
    "lens_arc_snr_g": _F,
    "lens_arc_contrast": _F,
    # visibility scores in [0, 1) that drive the simulated votes
    "arms_visibility": _F,
    "bar_visibility": _F,
    "ring_visibility": _F,
    "clumps_visibility": _F,
    "tails_visibility": _F,
    "arc_visibility": _F,
    "disc_visibility": _F,
    "irregular_visibility": _F,
    "has_neighbour": _B,
    # observing conditions
    "psf_fwhm_r_arcsec": _F,
    "sky_sigma_r_nmgy": _F,
    "bright_star_mag_r": _F,
}


def _vote_schema() -> dict[str, pl.DataType]:
    tree = default_tree()
    out: dict[str, pl.DataType] = {}
    for q in tree:
        for c in q.columns:
            out[c] = pl.Int32()
        out[q.total_column] = pl.Int32()
    return out


TRUTH_SCHEMA: dict[str, pl.DataType] = {**_BASE_SCHEMA, **_vote_schema()}
"""Columns of the truth Parquet, in order, with their polars types."""


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate_survey` wrote: shard and truth paths (sorted by HEALPix cell), the
    number of galaxies written, wall-clock seconds, galaxies that failed (object_id, error) and
    were skipped, and the CPU seconds spent (workers' simulation + this process)."""

    shards: list[Path]
    truth_files: list[Path]
    n_galaxies: int
    seconds: float
    failed: list[tuple[str, str]] = field(default_factory=list)
    cpu_seconds: float = math.nan

    @property
    def rate(self) -> float:
        """Galaxies per second."""
        return self.n_galaxies / self.seconds if self.seconds > 0 else math.inf


@dataclass
class SimulatedGalaxy:
    """One simulated galaxy: the cutout (B, N, N) nanomaggies/pixel, per-band ivar (1/nmgy^2,
    constant over the stamp), PSF FWHM (arcsec), catalogue fluxes (nmgy, with noise), E(B-V),
    and the truth row (flags, parameters, visibilities, votes)."""

    index: int
    object_id: str
    image: np.ndarray
    ivar: np.ndarray
    psf_fwhm: np.ndarray
    flux: np.ndarray
    ebv: float
    truth: dict[str, Any]
    rendered: Rendered | None = None
    draw: GalaxyDraw | None = None


def object_id_for(seed: int, index: int) -> str:
    """The object_id of galaxy ``index`` of the survey with ``seed``."""
    return f"mock{seed}-{index:09d}"


FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "arms": ("arms", "hii"),
    "bar": ("bar",),
    "ring": ("ring",),
    "clumps": ("clumps",),
    "tails": ("tail", "second_tail", "tail2", "shells"),
    "arc": ("lensed_source",),
}


def _feature_groups(draw: GalaxyDraw) -> dict[str, tuple[str, ...]]:
    names = {c.name for c in draw.scene.components}
    out = {}
    for group, members in FEATURE_GROUPS.items():
        present = tuple(m for m in members if m in names)
        if present:
            out[group] = present
    return out


def _score_features(
    draw: GalaxyDraw, rendered: Rendered, groups: dict[str, tuple[str, ...]], bands: tuple[str, ...]
) -> None:
    """Visibility of each feature in the colour composite, the lens-arc figures, the flags."""
    truth, vis = draw.truth, draw.vis
    obs = draw.scene.observation
    parts = rendered.parts or {}
    model = rendered.model
    for group, names in groups.items():
        feature = np.sum([parts[n] for n in names], axis=0)
        # tails and shells are broad and faint: the eye integrates them over their width
        width = truth.get("tail_width_arcsec") if group == "tails" else None
        vis[group], _ = display_visibility(
            feature, model, obs.sigma, obs.psf_fwhm, obs.psf_beta, bands, feature_scale=width
        )
    if "arc" in groups:
        arc = parts["lensed_source"]
        src = next(c for c in draw.scene.components if c.name == "lensed_source")
        ig = bands.index("g") if "g" in bands else 0
        ir = bands.index("r") if "r" in bands else len(bands) - 1
        truth["lens_magnification"] = float(arc[ir].sum() / max(float(src.flux[ir]), 1e-30))
        truth["lens_arc_mag_g"] = float(ph.nmgy_to_mag(arc[ig].sum()))
        a = arc[ig]
        mask = a > 0.3 * a.max()
        truth["lens_arc_snr_g"] = float(
            a[mask].sum() / (obs.sigma[ig] * math.sqrt(max(int(mask.sum()), 1)))
        )
        # the arcs' share of the composite's light (g, r, z weights of the LS viewer) where
        # the arcs are, against the deflector
        w = {"g": 6.0, "r": 3.4, "i": 0.0 if "z" in bands else 3.0, "z": 2.2}
        arc_sum = sum(w[b] * float(arc[k][mask].sum()) for k, b in enumerate(bands))
        lens_sum = sum(w[b] * float(parts["body"][k][mask].sum()) for k, b in enumerate(bands))
        truth["lens_arc_contrast"] = arc_sum / max(arc_sum + lens_sum, 1e-30)
    disc_type = truth["morph_type"] in ("spiral", "lenticular", "disc")
    seen = disc_type and truth.get("inclination_deg", 90.0) <= FEATURE_MAX_INCL_DEG
    truth["is_spiral"] = seen and vis.get("arms", 0.0) >= VISIBLE["arms"]
    truth["has_bar"] = seen and vis.get("bar", 0.0) >= VISIBLE["bar"]
    truth["has_ring"] = seen and vis.get("ring", 0.0) >= VISIBLE["ring"]
    truth["is_clumpy"] = vis.get("clumps", 0.0) >= VISIBLE["clumps"]


def simulate_galaxy(
    seed: int,
    index: int,
    *,
    ra: float = 150.0,
    dec: float = 2.0,
    size: int = 64,
    bands: Sequence[str] = ("g", "r", "i", "z"),
    keep_model: bool = False,
) -> SimulatedGalaxy:
    """Simulate galaxy ``index`` of the survey with ``seed`` at (ra, dec) degrees.

    ``keep_model`` keeps the noiseless image and the draw (for tests and galleries).
    """
    bands = ph.check_bands(bands)
    draw = draw_galaxy(seed, index, ra, dec, bands, size)
    truth, vis = draw.truth, draw.vis
    groups = _feature_groups(draw)
    parts = tuple(name for names in groups.values() for name in names)
    if truth["morph_type"] == "lens":
        parts += ("body",)
    rendered = render_scene(
        draw.scene, size, galaxy_rng(seed, index, 2), keep_model=True, parts=parts
    )
    _score_features(draw, rendered, groups, bands)
    obs = draw.scene.observation
    # truth magnitudes (noiseless, Galactic extinction applied) and catalogue fluxes
    mags = dict.fromkeys(ph.SUPPORTED_BANDS, math.nan)
    for b, f in zip(bands, rendered.total_flux, strict=True):
        mags[b] = float(ph.nmgy_to_mag(f))
    cat_rng = galaxy_rng(seed, index, 3)
    hlr = float(truth.get("half_light_radius_arcsec", 1.0))
    flux = np.empty(len(bands), dtype=np.float32)
    for i in range(len(bands)):
        area = moffat_nea(float(obs.psf_fwhm[i]), obs.psf_beta) + math.pi * (1.5 * hlr) ** 2
        err = float(obs.sigma[i]) * math.sqrt(area) / PIXEL_SCALE
        flux[i] = rendered.total_flux[i] * (1.0 + cat_rng.normal(0.0, 0.02)) + cat_rng.normal(
            0.0, err
        )
    votes = simulate_votes(truth, vis, galaxy_rng(seed, index, 4))
    row: dict[str, Any] = {k: v for k, v in truth.items() if k in _BASE_SCHEMA}
    row.update({f"mag_{b}": mags[b] for b in ph.SUPPORTED_BANDS})
    for k in ("arms", "bar", "ring", "clumps", "tails", "arc", "disc", "irregular"):
        if k in vis:
            row[f"{k}_visibility"] = float(vis[k])
    row["has_neighbour"] = bool(vis.get("neighbour", 0.0) > 0)
    row.update(votes)
    row["object_id"] = object_id_for(seed, index)
    row["index"] = index
    row["ra"] = ra
    row["dec"] = dec
    return SimulatedGalaxy(
        index=index,
        object_id=row["object_id"],
        image=rendered.image,
        ivar=rendered.ivar,
        psf_fwhm=np.asarray(obs.psf_fwhm, dtype=np.float32),
        flux=flux,
        ebv=float(truth["ebv"]),
        truth=row,
        rendered=rendered if keep_model else None,
        draw=draw if keep_model else None,
    )


# --------------------------------------------------------------------------- positions
def survey_positions(
    n: int, seed: int, footprint: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees of galaxies 0..n-1, uniform on the sphere within the footprint
    disc (ra0, dec0, radius), all in degrees. Position i depends only on (seed, i)."""
    ra0, dec0, radius = footprint
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xF00,)))
    u = rng.random((n, 2))
    cos_r = math.cos(math.radians(radius))
    cos_t = 1.0 - u[:, 0] * (1.0 - cos_r)  # uniform in solid angle within the cap
    t = np.arccos(cos_t)
    phi = 2 * math.pi * u[:, 1]
    # point at angular distance t, azimuth phi from the pole, rotated to (ra0, dec0)
    x = np.sin(t) * np.cos(phi)
    y = np.sin(t) * np.sin(phi)
    zc = np.cos(t)
    d0, a0 = math.radians(dec0), math.radians(ra0)
    # rotate the pole (0, 0, 1) onto (ra0, dec0): about y by (90 - dec0), then about z by ra0
    th = math.pi / 2 - d0
    x1 = x * math.cos(th) + zc * math.sin(th)
    z1 = -x * math.sin(th) + zc * math.cos(th)
    x2 = x1 * math.cos(a0) - y * math.sin(a0)
    y2 = x1 * math.sin(a0) + y * math.cos(a0)
    ra = np.degrees(np.arctan2(y2, x2)) % 360.0
    dec = np.degrees(np.arcsin(np.clip(z1, -1.0, 1.0)))
    return ra, dec


def healpix_cells(ra: np.ndarray, dec: np.ndarray, nside: int) -> np.ndarray:
    """NESTED HEALPix cell of each position (degrees)."""
    import astropy.units as u
    from astropy_healpix import lonlat_to_healpix

    return np.asarray(
        lonlat_to_healpix(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg, nside, order="nested"),
        dtype=np.int64,
    )


# ------------------------------------------------------------------------ worker side
def _simulate_chunk(task: tuple) -> dict[str, Any]:
    seed, cell, indices, ras, decs, size, bands = task
    cpu0 = time.process_time()
    gals: list[SimulatedGalaxy] = []
    failed: list[tuple[str, str]] = []
    for idx, ra, dec in zip(indices, ras, decs, strict=True):
        try:
            gals.append(
                simulate_galaxy(
                    seed, int(idx), ra=float(ra), dec=float(dec), size=size, bands=bands
                )
            )
        except Exception as exc:  # one bad galaxy must not abort the shard
            log.exception("mock survey: galaxy %s failed", object_id_for(seed, int(idx)))
            failed.append((object_id_for(seed, int(idx)), f"{type(exc).__name__}: {exc}"))
    nb = len(bands)
    return {
        "cell": cell,
        "n": len(indices),
        "index": np.array([g.index for g in gals], dtype=np.int64),
        "images": np.stack([g.image for g in gals])
        if gals
        else np.zeros((0, nb, size, size), np.float32),
        "ivar": np.stack([g.ivar for g in gals]) if gals else np.zeros((0, nb), np.float32),
        "psf": np.stack([g.psf_fwhm for g in gals]) if gals else np.zeros((0, nb), np.float32),
        "flux": np.stack([g.flux for g in gals]) if gals else np.zeros((0, nb), np.float32),
        "ebv": np.array([g.ebv for g in gals], dtype=np.float32),
        "truth": [g.truth for g in gals],
        "failed": failed,
        "cpu": time.process_time() - cpu0,
    }


def _warm_worker() -> None:
    """Build the per-process tables when a worker starts (a no-op when the forkserver
    already preloaded them)."""
    ph.tables()


# --------------------------------------------------------------------------- main side
def _check_args(n: int, size: int, nside: int, workers: int, footprint: Sequence[float]) -> None:
    if not isinstance(n, int | np.integer) or n < 1:
        raise SurveyConfigError(f"mock survey: n={n!r}; pass a positive number of galaxies")
    if not (MIN_SIZE <= size <= MAX_SIZE):
        raise SurveyConfigError(
            f"mock survey: size={size} px is outside [{MIN_SIZE}, {MAX_SIZE}]; pass a cutout size "
            "in that range (the Legacy Survey MMU cutouts are 160 px)"
        )
    if nside < 1 or nside & (nside - 1):
        raise SurveyConfigError(f"mock survey: nside={nside} must be a power of two (e.g. 16)")
    if workers < 1:
        raise SurveyConfigError(f"mock survey: workers={workers}; pass 1 or more processes")
    if len(footprint) != 3 or not (0.0 < float(footprint[2]) <= 180.0):
        raise SurveyConfigError(
            f"mock survey: footprint={tuple(footprint)}; expected (ra0, dec0, radius) in degrees "
            "with 0 < radius <= 180"
        )
    if not -90.0 <= float(footprint[1]) <= 90.0:
        raise SurveyConfigError(f"mock survey: footprint dec0={footprint[1]} outside [-90, 90]")


def _write_cell(
    out_dir: Path, cell: int, parts: list[dict[str, Any]], seed: int, bands: tuple[str, ...]
) -> tuple[Path, Path, int]:
    from galaxy_assets.survey.mmu import write_mmu_shard

    index = np.concatenate([p["index"] for p in parts])
    order = np.argsort(index)
    index = index[order]
    images = np.concatenate([p["images"] for p in parts])[order]
    ivar_b = np.concatenate([p["ivar"] for p in parts])[order]
    psf = np.concatenate([p["psf"] for p in parts])[order]
    flux = np.concatenate([p["flux"] for p in parts])[order]
    ebv = np.concatenate([p["ebv"] for p in parts])[order]
    truth = [t for p in parts for t in p["truth"]]
    truth = [truth[k] for k in order]
    ids = [t["object_id"] for t in truth]
    ra = np.array([t["ra"] for t in truth])
    dec = np.array([t["dec"] for t in truth])
    cell_dir = out_dir / f"healpix={cell}"
    shard = cell_dir / SHARD_NAME
    ivar = np.broadcast_to(ivar_b[:, :, None, None], images.shape)
    write_mmu_shard(
        shard,
        images=images,
        bands=list(bands),
        object_id=ids,
        ra=ra,
        dec=dec,
        ivar=ivar,
        psf_fwhm=psf,
        scale=PIXEL_SCALE,
        fluxes={b: flux[:, i] for i, b in enumerate(bands)},
        ebv=ebv,
    )
    for row, t in enumerate(truth):
        t["healpix"] = cell
        t["row"] = row
    truth_path = cell_dir / TRUTH_NAME
    write_truth(truth, truth_path)
    return shard, truth_path, len(ids)


def truth_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Truth rows as a polars DataFrame with exactly the columns of :data:`TRUTH_SCHEMA`."""
    cols: dict[str, list[Any]] = {}
    for name, dtype in TRUTH_SCHEMA.items():
        default: Any = None
        if dtype == _F:
            default = math.nan
        elif dtype == _B:
            default = False
        vals = []
        for r in rows:
            v = r.get(name, default)
            if dtype == _F:
                v = math.nan if v is None else float(v)
            elif dtype == _B:
                v = bool(v)
            elif v is not None and dtype in (_I, pl.Int32()):
                v = None if (isinstance(v, float) and math.isnan(v)) else int(v)
            vals.append(v)
        cols[name] = vals
    return pl.DataFrame(cols, schema=TRUTH_SCHEMA)


def write_truth(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write truth rows to ``path`` (Parquet) atomically."""
    df = truth_frame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        df.write_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _mp_context() -> mp.context.BaseContext:
    """forkserver where available (safe with threads in the parent), else spawn."""
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["galaxy_assets.survey._mock_preload"])
    return ctx


def simulate_survey(
    out_dir: str | Path,
    n: int,
    *,
    size: int = 64,
    seed: int = 0,
    nside: int = 16,
    workers: int = 2,
    bands: Sequence[str] = ("g", "r", "i", "z"),
    footprint: tuple[float, float, float] = (150.0, 2.0, 6.0),
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Simulate ``n`` galaxies into ``out_dir`` (one MMU shard + truth Parquet per HEALPix cell).

    ``size``: cutout side in pixels (0.262"/px, 16-160); ``seed``: survey seed; ``nside``:
    HEALPix resolution of the shards (NESTED); ``workers``: processes (1 = in this process);
    ``bands``: subset of g, r, i, z; ``footprint``: (ra0, dec0, radius) in degrees of the disc
    the positions fill uniformly; ``progress``: called with the number of galaxies finished
    since the previous call. Existing files of the same names are replaced; other files in
    ``out_dir`` are left alone.
    """
    t0 = time.perf_counter()
    cpu_main0 = time.process_time()
    bands = ph.check_bands(bands)
    _check_args(n, size, nside, workers, footprint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ra, dec = survey_positions(n, seed, footprint)
    cells = healpix_cells(ra, dec, nside)
    tasks: list[tuple] = []
    expected: dict[int, int] = {}
    for cell in np.unique(cells):
        idx = np.flatnonzero(cells == cell)
        expected[int(cell)] = len(idx)
        for s in range(0, len(idx), CHUNK):
            sl = idx[s : s + CHUNK]
            tasks.append((seed, int(cell), sl, ra[sl], dec[sl], size, bands))
    done: dict[int, list[dict[str, Any]]] = {c: [] for c in expected}
    got: dict[int, int] = dict.fromkeys(expected, 0)
    shards: list[Path] = []
    truths: list[Path] = []
    failed: list[tuple[str, str]] = []
    written = 0
    worker_cpu = 0.0

    def collect(res: dict[str, Any]) -> None:
        nonlocal written, worker_cpu
        cell = res["cell"]
        worker_cpu += res["cpu"]
        done[cell].append(res)
        got[cell] += res["n"]
        failed.extend(res["failed"])
        if progress is not None:
            progress(res["n"])
        if got[cell] == expected[cell]:
            parts = done.pop(cell)
            if sum(len(p["index"]) for p in parts) == 0:
                log.warning("mock survey: every galaxy of cell %d failed; no shard written", cell)
                return
            shard, truth, k = _write_cell(out_dir, cell, parts, seed, bands)
            shards.append(shard)
            truths.append(truth)
            written += k

    log.info(
        "mock survey: %d galaxies, %d px, bands %s, seed %d, %d HEALPix cells, %d workers -> %s",
        n,
        size,
        "".join(bands),
        seed,
        len(expected),
        workers,
        out_dir,
    )
    if workers == 1:
        for task in tasks:
            collect(_simulate_chunk(task))
    else:
        max_inflight = 3 * workers
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=_mp_context(), initializer=_warm_worker
        ) as pool:
            pending: set[Future] = set()
            it = iter(tasks)
            for task in it:
                pending.add(pool.submit(_simulate_chunk, task))
                if len(pending) >= max_inflight:
                    break
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    try:
                        res = fut.result()
                    except Exception as exc:
                        raise SurveyError(
                            f"mock survey into {out_dir}: a worker process failed ({exc!r}); "
                            "rerun with workers=1 to see the galaxy that fails"
                        ) from exc
                    collect(res)
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.add(pool.submit(_simulate_chunk, nxt))
    order = np.argsort([int(p.parent.name.split("=")[1]) for p in shards])
    shards = [shards[k] for k in order]
    truths = [truths[k] for k in order]
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu_main0
    if workers > 1:
        cpu += worker_cpu  # in-process chunks are already in this process's CPU time
    if failed:
        log.warning("mock survey: %d galaxies failed and were skipped: %s", len(failed), failed[:5])
    log.info(
        "mock survey: wrote %d galaxies in %d shards in %.1f s (%.0f/s)",
        written,
        len(shards),
        seconds,
        written / seconds,
    )
    return SimulationResult(
        shards=shards,
        truth_files=truths,
        n_galaxies=written,
        seconds=seconds,
        failed=failed,
        cpu_seconds=cpu,
    )
