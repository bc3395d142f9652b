"""The mock survey: layout, determinism, truth, votes, noise, lenses, sizes, physics checks."""

from __future__ import annotations

import math

import h5py
import numpy as np
import polars as pl
import pytest

from galaxy_assets.morphology import default_tree
from galaxy_assets.survey.errors import SurveyConfigError
from galaxy_assets.survey.mock import (
    CLASS_FLAGS,
    SHARD_NAME,
    TRUTH_NAME,
    TRUTH_SCHEMA,
    healpix_cells,
    object_id_for,
    simulate_galaxy,
    simulate_survey,
    survey_positions,
)
from galaxy_assets.survey.mock_population import TYPE_FRACTIONS, morph_type_of

SEED = 11
N = 300
FOOTPRINT = (150.0, 2.0, 6.0)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("mock")
    res = simulate_survey(out, N, seed=SEED, workers=2, footprint=FOOTPRINT)
    truth = pl.concat([pl.read_parquet(p) for p in res.truth_files])
    return res, truth


def _read(shard, *names):
    with h5py.File(shard, "r") as f:
        return [f[n][()] for n in names]


def test_layout_and_columns(survey):
    res, truth = survey
    assert res.n_galaxies == N and not res.failed
    assert len(res.shards) == len(res.truth_files) > 1
    ids: list[str] = []
    for shard, tpath in zip(res.shards, res.truth_files, strict=True):
        assert shard.name == SHARD_NAME and tpath.name == TRUTH_NAME
        assert shard.parent == tpath.parent and shard.parent.name.startswith("healpix=")
        cell = int(shard.parent.name.split("=")[1])
        with h5py.File(shard, "r") as f:
            n = f["image_array"].shape[0]
            assert f["image_array"].shape == (n, 4, 64, 64)
            assert f["image_array"].dtype == np.float32
            assert f["image_ivar"].shape == (n, 4, 64, 64)
            assert [b.decode() for b in f["image_band"][0]] == ["g", "r", "i", "z"]
            assert np.allclose(f["image_scale"][()], 0.262)
            assert np.all((f["image_psf_fwhm"][()] > 0.7) & (f["image_psf_fwhm"][()] < 2.5))
            for name in ("FLUX_G", "FLUX_R", "FLUX_I", "FLUX_Z", "EBV", "ra", "dec"):
                assert f[name].shape == (n,)
            shard_ids = [x.decode() for x in f["object_id"][()]]
            ra, dec = f["ra"][()], f["dec"][()]
        t = pl.read_parquet(tpath)
        assert t["object_id"].to_list() == shard_ids  # same rows, same order
        assert t["row"].to_list() == list(range(n))
        assert set(t["healpix"].to_list()) == {cell}
        assert set(healpix_cells(ra, dec, 16).tolist()) == {cell}
        ids += shard_ids
    assert len(ids) == len(set(ids)) == N
    assert set(ids) == {object_id_for(SEED, i) for i in range(N)}
    assert list(truth.columns) == list(TRUTH_SCHEMA)
    assert truth.schema == pl.Schema(TRUTH_SCHEMA)


def test_same_galaxies_whatever_the_workers(survey, tmp_path):
    """Galaxy i depends only on (seed, i): a 1-worker survey of 40 galaxies reproduces the
    first 40 galaxies of the 2-worker survey of 300, bit for bit."""
    res, _ = survey
    small = simulate_survey(tmp_path, 40, seed=SEED, workers=1, footprint=FOOTPRINT)

    def by_id(shards):
        out = {}
        for s in shards:
            ids, imgs, flux = _read(s, "object_id", "image_array", "FLUX_R")
            for k, oid in enumerate(ids):
                out[oid.decode()] = (imgs[k], flux[k])
        return out

    big, little = by_id(res.shards), by_id(small.shards)
    assert len(little) == 40
    for oid, (img, flux) in little.items():
        assert np.array_equal(img, big[oid][0]) and flux == big[oid][1]
    t_small = pl.concat([pl.read_parquet(p) for p in small.truth_files]).drop("row", "healpix")
    t_big = pl.concat([pl.read_parquet(p) for p in res.truth_files]).drop("row", "healpix")
    joined = t_small.join(t_big, on="object_id", suffix="_big")
    assert joined.height == 40
    for col in ("redshift", "mag_r", "has-spiral-arms_yes", "is_spiral"):
        assert joined[col].equals(joined[f"{col}_big"], null_equal=True)


def test_class_rates(survey):
    _, truth = survey
    rate = {f: truth[f].mean() for f in CLASS_FLAGS}
    # stratified base types: within a galaxy or two of their fraction
    frac = dict(TYPE_FRACTIONS)
    assert abs(truth["is_merger"].sum() - frac["merger"] * N) <= 2
    assert abs(truth["is_lens"].sum() - frac["lens"] * N) <= 1.5
    assert abs(truth["is_irregular"].sum() - frac["irregular"] * N) <= 2
    assert 0.14 <= rate["is_spiral"] <= 0.34
    assert 0.15 <= rate["is_elliptical"] <= 0.35
    assert 0.05 <= rate["is_edge_on"] <= 0.22
    assert 0.01 <= rate["has_bar"] <= 0.16
    assert 0.0 <= rate["has_ring"] <= 0.08
    assert 0.02 <= rate["is_clumpy"] <= 0.15
    # physical parameters are finite where they apply
    for col in (
        "redshift",
        "log_stellar_mass",
        "half_light_radius_arcsec",
        "sersic_n",
        "axis_ratio",
        "mag_r",
    ):
        assert truth[col].is_finite().all(), col
    assert truth["redshift"].min() > 0.0 and truth["redshift"].max() < 0.6
    lenses = truth.filter(pl.col("is_lens"))
    assert lenses["einstein_radius_arcsec"].min() >= 1.0


def test_votes_follow_the_tree(survey):
    _, truth = survey
    tree = default_tree()
    for q in tree:
        total = truth[q.total_column].to_numpy()
        answers = np.stack([truth[c].to_numpy() for c in q.columns])
        assert (answers >= 0).all()
        assert np.array_equal(answers.sum(axis=0), total), q.name
        if q.depends_on is None:
            assert total.min() >= 30 and total.max() <= 50
        else:
            assert np.array_equal(total, truth[tree.column(*q.depends_on)].to_numpy()), q.name


def test_votes_follow_the_truth(survey):
    _, truth = survey

    def frac(df, q, a):
        tot = df[f"{q}_total-votes"].to_numpy()
        ok = tot > 0
        return float(np.mean(df[f"{q}_{a}"].to_numpy()[ok] / tot[ok]))

    spirals = truth.filter(pl.col("is_spiral"))
    smooth = truth.filter(pl.col("is_elliptical") & ~pl.col("is_lens"))
    edge = truth.filter(pl.col("is_edge_on"))
    assert frac(spirals, "smooth-or-featured", "featured-or-disk") > 0.6
    assert frac(smooth, "smooth-or-featured", "smooth") > 0.6
    assert frac(spirals, "has-spiral-arms", "yes") > 0.5
    assert frac(edge, "disk-edge-on", "yes") > 0.5
    mergers = truth.filter(pl.col("merger_kind") == "major")
    others = truth.filter(~pl.col("is_merger"))
    assert frac(mergers, "merging", "merger") > 3 * frac(others, "merging", "merger")
    # noise and confusion: not every vote for a spiral says "spiral"
    assert frac(spirals, "has-spiral-arms", "yes") < 0.97


def test_sky_noise_matches_ivar(survey):
    res, _ = survey
    ratios = []
    for shard in res.shards[:4]:
        imgs, ivar = _read(shard, "image_array", "image_ivar")
        for k in range(min(len(imgs), 20)):
            for b in range(4):
                corners = np.concatenate(
                    [
                        imgs[k, b, :10, :10].ravel(),
                        imgs[k, b, -10:, -10:].ravel(),
                        imgs[k, b, :10, -10:].ravel(),
                        imgs[k, b, -10:, :10].ravel(),
                    ]
                )
                med = np.median(corners)
                mad = 1.4826 * np.median(np.abs(corners - med))  # robust to field sources
                ratios.append(mad * math.sqrt(float(ivar[k, b, 0, 0])))
    assert 0.9 < np.median(ratios) < 1.1


def test_lens_arcs_rise_above_the_noise():
    lenses = [i for i in range(3000) if morph_type_of(SEED, i) == "lens"][:4]
    assert len(lenses) == 4
    peaks = []
    for i in lenses:
        g = simulate_galaxy(SEED, i, keep_model=True)
        arc = g.rendered.parts["lensed_source"]
        sigma = 1.0 / np.sqrt(g.ivar)
        peaks.append(arc[0].max() / sigma[0])  # g band, per pixel
        assert g.truth["lens_arc_snr_g"] >= 15.0
        assert g.truth["lens_magnification"] >= 2.5
        assert g.truth["einstein_radius_arcsec"] >= 1.0
    assert min(peaks) > 2.0


@pytest.mark.parametrize("size", [32, 160])
def test_sizes(size, tmp_path):
    g = simulate_galaxy(SEED, 3, size=size)
    assert g.image.shape == (4, size, size) and np.isfinite(g.image).all()
    if size == 160:
        res = simulate_survey(tmp_path, 3, size=size, seed=SEED, workers=1, bands=("g", "r", "z"))
        (img,) = _read(res.shards[0], "image_array")
        assert img.shape[1:] == (3, 160, 160)


def test_bad_arguments(tmp_path):
    with pytest.raises(SurveyConfigError, match="size=400"):
        simulate_survey(tmp_path, 5, size=400)
    with pytest.raises(SurveyConfigError, match="unknown band"):
        simulate_survey(tmp_path, 5, bands=("g", "u"))
    with pytest.raises(SurveyConfigError, match="positive number"):
        simulate_survey(tmp_path, 0)
    with pytest.raises(SurveyConfigError, match="power of two"):
        simulate_survey(tmp_path, 5, nside=12)


def test_positions_fill_the_footprint():
    ra, dec = survey_positions(2000, SEED, FOOTPRINT)
    ra0, dec0, radius = (math.radians(x) for x in FOOTPRINT)
    r, d = np.radians(ra), np.radians(dec)
    cos_sep = np.sin(d) * math.sin(dec0) + np.cos(d) * math.cos(dec0) * np.cos(r - ra0)
    sep = np.degrees(np.arccos(np.clip(cos_sep, -1, 1)))
    assert sep.max() <= FOOTPRINT[2] + 1e-9
    # uniform on the sphere: half the galaxies within radius / sqrt(2) (small-cap limit)
    assert 0.45 < np.mean(sep < FOOTPRINT[2] / math.sqrt(2)) < 0.55
    ra10, dec10 = survey_positions(10, SEED, FOOTPRINT)
    assert np.array_equal(ra10, ra[:10]) and np.array_equal(dec10, dec[:10])


def test_renderer_matches_galsim():
    import galsim

    from galaxy_assets.survey.mock_render import Component, Observation, Scene, render_scene

    rng = np.random.default_rng(0)
    for n, re, q in [(4.0, 0.6, 0.7), (1.0, 1.5, 0.4)]:
        comp = Component("sersic", {"re": re, "n": n, "q": q, "pa": 0.3}, np.array([1.0]))
        obs = Observation(np.array([1.2]), 3.0, np.array([1e-9]), np.array([1e12]))
        model = render_scene(Scene([comp], obs), 64, rng, keep_model=True).model[0]
        gal = galsim.Sersic(n=n, half_light_radius=re * math.sqrt(q)).shear(
            q=q, beta=0.3 * galsim.radians
        )
        ref = (
            galsim.Convolve(gal, galsim.Moffat(beta=3.0, fwhm=1.2))
            .drawImage(nx=64, ny=64, scale=0.262, offset=(0.5, 0.5))
            .array
        )
        assert abs(model.sum() - ref.sum()) < 0.01
        assert np.abs(model - ref).max() < 0.01 * ref.max()


def test_colours_from_redshifted_templates_match_galsim():
    from galaxy_assets.survey.mock_photometry import decam_like_bandpass, tables, template_sed

    tab = tables()
    for template, z in [("E", 0.3), ("Im", 1.5)]:
        sed = template_sed(template)
        r0 = sed.calculateMagnitude(decam_like_bandpass("r"))
        for band in ("g", "z"):
            ref = sed.atRedshift(z).calculateMagnitude(decam_like_bandpass(band)) - r0
            assert abs(float(tab.k(template, band, z)) - ref) < 0.01
    # ellipticals redden with redshift in g - r
    assert (
        tab.k("E", "g", 0.3) - tab.k("E", "r", 0.3)
        > tab.k("E", "g", 0.05) - tab.k("E", "r", 0.05) + 0.3
    )


def test_expected_vote_fraction_is_the_mean_of_the_simulated_votes():
    """The label-noise ceiling ranks by this expectation: it must be what the simulated
    volunteers' vote fractions average to (Monte Carlo over many draws)."""
    from galaxy_assets.survey.mock_votes import expected_vote_fraction, simulate_votes

    truth = {
        "morph_type": "spiral",
        "inclination_deg": 40.0,
        "bulge_to_total": 0.2,
        "arms_visibility": 0.7,
        "bar_visibility": 0.4,
        "bar_flux_fraction": 0.1,
        "ring_visibility": float("nan"),
        "has_neighbour": False,
    }
    vis = {"arms": 0.7, "bar": 0.4, "neighbour": 0.0}
    rng = np.random.default_rng(0)
    fractions = {"spiral": [], "bar": []}
    for _ in range(4000):
        v = simulate_votes(truth, vis, rng)
        if v["has-spiral-arms_total-votes"]:
            fractions["spiral"].append(v["has-spiral-arms_yes"] / v["has-spiral-arms_total-votes"])
        if v["bar_total-votes"]:
            fractions["bar"].append((v["bar_strong"] + v["bar_weak"]) / v["bar_total-votes"])
    (spiral,) = expected_vote_fraction([truth], "has-spiral-arms", ("yes",))
    (bar,) = expected_vote_fraction([truth], "bar", ("strong", "weak"))
    assert spiral == pytest.approx(np.mean(fractions["spiral"]), abs=0.01)
    assert bar == pytest.approx(np.mean(fractions["bar"]), abs=0.01)
    with pytest.raises(SurveyConfigError, match="no answers"):
        expected_vote_fraction([truth], "bar", ("maybe",))
    with pytest.raises(SurveyConfigError, match="not in tree"):
        expected_vote_fraction([truth], "colour", ("red",))
