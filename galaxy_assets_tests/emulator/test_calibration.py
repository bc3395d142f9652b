"""Calibration metrics against brute force and against posteriors known to be right or wrong;
the champion gate; figures."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
from scipy import integrate, stats

from galaxy_assets.emulator import PosteriorSamples, evaluate_emulator, make_table
from galaxy_assets.emulator.calibration import (
    CalibrationReport,
    HeadMetrics,
    coverage_gaussian,
    coverage_samples,
    crps_gaussian,
    crps_samples,
    metrics_gaussian,
    metrics_samples,
    pit_gaussian,
    pit_samples,
)
from galaxy_assets.emulator.plots import (
    coverage_curve_figure,
    coverage_figure,
    pick_examples,
    pit_figure,
    posterior_figure,
)
from galaxy_assets_tests.emulator.conftest import chain_frame


def test_crps_from_samples_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 60))
    y = rng.normal(size=4)
    brute = np.abs(x - y[:, None]).mean(1) - 0.5 * np.abs(x[:, :, None] - x[:, None, :]).mean(
        (1, 2)
    )
    np.testing.assert_allclose(crps_samples(x, y), brute, rtol=1e-10)


def test_gaussian_crps_matches_numerical_integral_and_many_samples():
    mu, sd, y = 0.3, 1.7, -0.4
    cdf = stats.norm(mu, sd).cdf
    numeric = integrate.quad(lambda t: (cdf(t) - (t >= y)) ** 2, -30, 30, points=[y])[0]
    closed = crps_gaussian(np.array([mu]), np.array([sd]), np.array([y]))[0]
    assert closed == pytest.approx(numeric, rel=1e-6)
    draws = np.random.default_rng(1).normal(mu, sd, size=(1, 200_000))
    assert crps_samples(draws, np.array([y]))[0] == pytest.approx(closed, rel=0.01)


def test_calibrated_posteriors_have_nominal_coverage_and_flat_pit():
    rng = np.random.default_rng(2)
    n = 4000
    mean = rng.normal(size=n)
    truth = mean + rng.normal(size=n)  # the truth is a draw from each posterior N(mean, 1)
    samples = mean[:, None] + rng.normal(size=(n, 500))
    m = metrics_samples(samples, truth, "q", threshold=3.0)
    assert abs(m.coverage_68 - 0.68) < 0.025 and abs(m.coverage_95 - 0.95) < 0.015
    assert m.pit_ks < 0.03
    g = metrics_gaussian(mean, np.ones(n), truth, "q", threshold=3.0)
    assert abs(g.coverage_68 - 0.68) < 0.025 and g.pit_ks < 0.03
    assert abs(m.crps - g.crps) < 0.02
    assert g.nmad == pytest.approx(1.0, abs=0.06)
    # overconfident posteriors (half the width) under-cover and give a U-shaped PIT
    narrow = metrics_samples(mean[:, None] + 0.5 * rng.normal(size=(n, 500)), truth, "q")
    assert narrow.coverage_68 < 0.45
    hist = np.asarray(narrow.pit_hist)
    assert hist[0] > 2 * hist[5] and hist[-1] > 2 * hist[5]
    assert narrow.crps > m.crps


def test_pit_and_coverage_helpers():
    samples = np.arange(100, dtype=float)[None, :]
    assert pit_samples(samples, np.array([49.5]))[0] == 0.5
    assert coverage_samples(samples, np.array([50.0]), "68")[0]
    assert not coverage_samples(samples, np.array([99.0]), "68")[0]
    assert coverage_samples(samples, np.array([96.0]), "95")[0]
    assert pit_gaussian(np.array([0.0]), np.array([1.0]), np.array([0.0]))[0] == 0.5
    assert coverage_gaussian(np.zeros(1), np.ones(1), np.array([0.99]))[0]
    assert not coverage_gaussian(np.zeros(1), np.ones(1), np.array([1.01]))[0]


def test_redshift_residuals_and_outliers_use_one_plus_z():
    truth = np.array([1.0, 1.0, 1.0, 1.0])
    samples = np.array([[1.2], [1.0], [1.0], [2.0]]) + np.zeros((4, 3))
    m = metrics_samples(samples, truth, "redshift", threshold=0.15)
    # residuals (median - z)/(1+z) = 0.1, 0, 0, 0.5 → one outlier (> 0.15)
    assert m.outlier_fraction == 0.25
    assert m.bias == pytest.approx(0.05)


def _metrics(label, head, subset, c68, c95, crps=0.2):
    return HeadMetrics(label, head, subset, 100, 0.1, 0.0, 0.0, 1.0, crps, c68, c95, 0.01, [10] * 10)


def test_gate():
    ok = CalibrationReport(
        [
            _metrics("z", "diffusion", "all", 0.70, 0.94),
            _metrics("z", "gaussian", "all", 0.60, 0.90),
        ],
        100,
        100,
        {"all": ["<all>"]},
    )
    assert ok.gate(0.03).passed
    # 6 points off, but closer to nominal than the Gaussian head: still at least as good
    better = CalibrationReport(
        [
            _metrics("z", "diffusion", "all", 0.62, 0.95),
            _metrics("z", "gaussian", "all", 0.55, 0.95),
        ],
        100,
        100,
        {"all": ["<all>"]},
    )
    assert better.gate(0.03).passed
    worse = CalibrationReport(
        [
            _metrics("z", "diffusion", "all", 0.60, 0.95),
            _metrics("z", "gaussian", "all", 0.67, 0.95),
        ],
        100,
        100,
        {"all": ["<all>"]},
    )
    gate = worse.gate(0.03)
    assert not gate.passed and "z 68%" in gate.reason
    assert not worse.gate(0.03, labels=["q"]).passed  # a label never evaluated fails
    assert not CalibrationReport([], 0, 0, {}).gate().passed
    # perfectly calibrated but no better than the population prior: a model that ignores
    # its inputs must not become champion
    useless = CalibrationReport(
        [
            _metrics("z", "diffusion", "all", 0.68, 0.95, crps=0.58),
            _metrics("z", "gaussian", "all", 0.60, 0.90, crps=0.60),
            _metrics("z", "prior", "all", 0.68, 0.95, crps=0.58),
        ],
        100,
        100,
        {"all": ["<all>"]},
    )
    gate = useless.gate(0.03)
    assert not gate.passed and "no better than ignoring the inputs" in gate.reason
    skilled = CalibrationReport(
        [*useless.metrics[:2], _metrics("z", "diffusion", "all", 0.68, 0.95, crps=0.14)][1:],
        100,
        100,
        {"all": ["<all>"]},
    )
    skilled.metrics.append(_metrics("z", "prior", "all", 0.68, 0.95, crps=0.58))
    assert skilled.gate(0.03).passed


def test_gate_refuses_to_judge_a_label_on_a_handful_of_rows():
    """Coverage on 10 rows is noise: the label fails and the reason says what to do."""
    few = CalibrationReport(
        [
            HeadMetrics("z", "diffusion", "all", 10, 0.1, 0.0, 0.0, 1.0, 0.1, 0.7, 0.9, 0.01,
                        [1] * 10),
            HeadMetrics("z", "gaussian", "all", 10, 0.1, 0.0, 0.0, 1.0, 0.2, 0.6, 0.9, 0.01,
                        [1] * 10),
        ],
        10,
        100,
        {"all": ["<all>"]},
    )
    gate = few.gate(0.03)
    assert not gate.passed and "only 10 held-out rows" in gate.reason
    assert "gate_labels" in gate.reason
    assert few.gate(0.03, min_rows=10).passed


def test_sparse_label_keeps_its_rows_and_the_prior_is_out_of_sample(chain_model):
    """`b` is known for 3 of 300 rows: sampling 40 rows in all lost them; now each label is
    sampled among its own known rows. The prior comes from the values given (the training
    rows'), not from the 3 evaluated truths, which no model could beat."""
    frame = chain_frame(300, seed=78)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) < 3).then(pl.col("b")).otherwise(None).alias("b")
    )
    test = make_table(frame, ["x", "w"], ["a", "b", "m"])
    report, _ = evaluate_emulator(chain_model.model, test, n_samples=100, max_rows=40)
    assert report.get("b", "diffusion").n == 3 and report.get("a", "diffusion").n == 40
    in_sample = report.get("b", "prior").crps
    train_b = chain_model.table.frame["b"].to_numpy()
    report, _ = evaluate_emulator(chain_model.model, test, n_samples=100, max_rows=40,
                                  prior_values={"b": train_b})
    out_of_sample = report.get("b", "prior").crps
    assert out_of_sample > in_sample
    # the prior is the training distribution: its CRPS is that of those quantiles
    truth = frame["b"].drop_nulls().to_numpy()
    pop = np.quantile(train_b, np.linspace(0, 1, 512), method="inverted_cdf")
    assert out_of_sample == pytest.approx(
        crps_samples(np.broadcast_to(pop, (3, 512)), truth).mean(), rel=0.05)


def test_evaluation_on_subsets_and_figures(chain_model):
    test = make_table(chain_frame(300, seed=77), ["x", "w"], ["a", "b", "m"])
    report, kept = evaluate_emulator(
        chain_model.model,
        test,
        subsets={"all": None, "only_w": ["w"]},
        n_samples=200,
        keep_samples=True,
    )
    frame = report.frame()
    assert frame.height == 2 * 3 * 3  # subsets x labels x heads (diffusion, gaussian, prior)
    for label in ("a",):  # x informs a: better than the population prior
        assert report.get(label, "diffusion", "all").crps < report.get(label, "prior", "all").crps
    a_all = report.get("a", "diffusion", "all")
    a_w = report.get("a", "diffusion", "only_w")
    assert a_all.crps < a_w.crps  # x informs a, w does not
    assert "all/a/diffusion/coverage_68" in report.flat_metrics()
    assert "| subset |" in report.markdown()
    # figures render to PNG
    post: PosteriorSamples = kept.samples[("all", "m")]
    figures = [
        posterior_figure(
            post,
            truth=kept.truth[("all", "m")],
            gaussian=kept.gaussians[("all", "m")],
            indices=pick_examples(post, 8),
            title="m",
        ),
        pit_figure(report),
        coverage_figure(report),
        coverage_curve_figure(kept),
    ]
    for fig in figures:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    picks = pick_examples(post, 8, flags=np.arange(len(post)) < 3)
    assert set(picks[:3]) == {0, 1, 2} and len(set(picks)) == 8


def test_outcome_metadata_judges_all_labels_with_the_runs_tolerance():
    """`gate_all_labels` in the asset metadata uses the run's tolerance, as the gate did."""
    from types import SimpleNamespace

    from galaxy_assets.emulator.pipeline import EmulatorOutcome

    report = CalibrationReport(
        [
            _metrics("z", "diffusion", "all", 0.64, 0.95),  # 4 points off nominal
            _metrics("z", "gaussian", "all", 0.67, 0.95),
        ],
        100,
        100,
        {"all": ["<all>"]},
    )
    assert report.gate(0.05).passed and not report.gate(0.03).passed
    outcome = EmulatorOutcome(
        table=SimpleNamespace(summary=lambda: {}),
        result=SimpleNamespace(metrics={}),
        report=report,
        registration=SimpleNamespace(name="property-emulator", version=1, run_id="r",
                                     promoted=True, reason="ok"),
        figures={},
        tolerance=0.05,
    )
    assert outcome.metadata()["gate_all_labels"] == report.gate(0.05).reason
