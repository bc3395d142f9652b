"""Figures of the emulator: example posteriors and calibration (matplotlib, no display).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (rendered
by the Agg canvas on ``savefig``), ready for ``TrackedRun.log_figure`` or Dagster metadata.

* :func:`posterior_figure` — histograms of sampled posteriors, the Gaussian head's density,
  the true value and the 16-84% interval; multimodal posteriors are marked.
* :func:`pick_examples` — which galaxies to show: multimodal ones first, then random.
* :func:`pit_figure` — PIT histograms per label and head (flat = calibrated).
* :func:`coverage_figure` — 68% and 95% coverage per input subset, label and head.
* :func:`coverage_curve_figure` — empirical against nominal coverage of central intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from galaxy_assets.emulator.posterior import GaussianPosterior, PosteriorSamples, multimodality

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from galaxy_assets.emulator.calibration import CalibrationReport, EvaluationSamples

__all__ = [
    "coverage_curve_figure",
    "coverage_figure",
    "pick_examples",
    "pit_figure",
    "posterior_figure",
]

HEAD_COLOURS = {"diffusion": "tab:blue", "gaussian": "tab:orange"}


def pick_examples(
    post: PosteriorSamples, n: int = 12, *, flags: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Indices of up to ``n`` galaxies: up to half multimodal ones (``flags``, default:
    :func:`multimodality`), the rest drawn at random."""
    g = len(post)
    if g == 0:
        return np.zeros(0, dtype=np.int64)
    flags = multimodality(post.samples).flag if flags is None else np.asarray(flags)
    rng = np.random.default_rng(seed)
    multi = np.flatnonzero(flags)
    take = rng.permutation(multi)[: max(n // 2, n - (g - len(multi)))][:n]
    rest = np.setdiff1d(np.arange(g), take)
    more = rng.permutation(rest)[: n - len(take)]
    return np.concatenate([take, more]).astype(np.int64)


def posterior_figure(
    post: PosteriorSamples,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    truth: np.ndarray | None = None,
    gaussian: GaussianPosterior | None = None,
    flags: np.ndarray | None = None,
    ncol: int = 4,
    title: str = "",
) -> Figure:
    """Posterior histograms of ``post`` for the galaxies at ``indices`` (default:
    :func:`pick_examples`); ``truth`` ``(G,)`` and ``gaussian`` (same rows) are overlaid."""
    from matplotlib.figure import Figure

    flags = multimodality(post.samples).flag if flags is None else np.asarray(flags)
    idx = pick_examples(post, flags=flags) if indices is None else np.asarray(indices)
    n = max(len(idx), 1)
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(3.0 * ncol, 2.4 * nrow), layout="constrained")
    for k, i in enumerate(idx):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        s = post.samples[i]
        ax.hist(s, bins=40, density=True, color=HEAD_COLOURS["diffusion"], alpha=0.6)
        lo, med, hi = np.quantile(s, [0.16, 0.5, 0.84])
        ax.axvspan(lo, hi, color="tab:blue", alpha=0.12, lw=0)
        ax.axvline(med, color="tab:blue", lw=1.0)
        if gaussian is not None:
            grid = np.linspace(s.min(), s.max(), 200)
            mu, sd = float(gaussian.mean[i]), float(gaussian.std[i])
            pdf = np.exp(-0.5 * ((grid - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            ax.plot(grid, pdf, color=HEAD_COLOURS["gaussian"], lw=1.2, label="Gaussian head")
        if truth is not None:
            ax.axvline(float(truth[i]), color="k", ls="--", lw=1.0, label="true")
        mark = " — multimodal" if flags[i] else ""
        ax.set_title(
            f"{post.object_ids[i]}{mark}", fontsize=8, color="crimson" if flags[i] else "k"
        )
        ax.set_xlabel(post.label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def pit_figure(report: CalibrationReport, subset: str = "all") -> Figure:
    """PIT histograms (density) of both heads for every label on ``subset``."""
    from matplotlib.figure import Figure

    labels = [m.label for m in report.metrics if m.subset == subset and m.head == "diffusion"]
    n = max(len(labels), 1)
    fig = Figure(figsize=(3.2 * n, 2.8), layout="constrained")
    for k, label in enumerate(labels):
        ax = fig.add_subplot(1, n, k + 1)
        for head, colour in HEAD_COLOURS.items():
            try:
                m = report.get(label, head, subset)
            except KeyError:
                continue
            hist = np.asarray(m.pit_hist, dtype=float)
            bins = len(hist)
            dens = hist / max(hist.sum(), 1) * bins
            edges = np.linspace(0, 1, bins + 1)
            ax.stairs(dens, edges, color=colour, lw=1.5, label=f"{head} (KS {m.pit_ks:.3f})")
        ax.axhline(1.0, color="0.4", ls="--", lw=0.8)
        ax.set_title(f"{label} ({subset})", fontsize=9)
        ax.set_xlabel("PIT", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return fig


def coverage_figure(report: CalibrationReport) -> Figure:
    """68% and 95% coverage per input subset for each label, both heads, nominal dashed."""
    from matplotlib.figure import Figure

    labels = report.labels
    subsets = list(dict.fromkeys(m.subset for m in report.metrics))
    n = max(len(labels), 1)
    fig = Figure(figsize=(3.4 * n, 3.0), layout="constrained")
    width = 0.2
    x = np.arange(len(subsets))
    for k, label in enumerate(labels):
        ax = fig.add_subplot(1, n, k + 1)
        for h, (head, colour) in enumerate(HEAD_COLOURS.items()):
            for lv, (level, hatch) in enumerate((("68", ""), ("95", "//"))):
                vals = []
                for s in subsets:
                    try:
                        vals.append(getattr(report.get(label, head, s), f"coverage_{level}"))
                    except KeyError:
                        vals.append(np.nan)
                off = (2 * h + lv - 1.5) * width
                ax.bar(
                    x + off,
                    vals,
                    width,
                    color=colour,
                    hatch=hatch,
                    alpha=0.8,
                    label=f"{head} {level}%",
                )
        ax.axhline(0.68, color="0.3", ls="--", lw=0.8)
        ax.axhline(0.95, color="0.3", ls="--", lw=0.8)
        ax.set_xticks(x, subsets, fontsize=7, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.set_ylabel("coverage", fontsize=8)
            ax.legend(fontsize=6, ncol=2)
    return fig


def coverage_curve_figure(samples: EvaluationSamples, subset: str = "all") -> Figure:
    """Empirical coverage of central intervals against their nominal level (diagonal =
    calibrated), both heads, one panel per label."""
    from matplotlib.figure import Figure
    from scipy.stats import norm

    keys = [k for k in samples.samples if k[0] == subset]
    n = max(len(keys), 1)
    fig = Figure(figsize=(3.0 * n, 3.0), layout="constrained")
    levels = np.linspace(0.05, 0.95, 19)
    for k, key in enumerate(keys):
        ax = fig.add_subplot(1, n, k + 1)
        post = samples.samples[key]
        gauss = samples.gaussians[key]
        truth = samples.truth[key]
        emp_d, emp_g = [], []
        for lv in levels:
            lo, hi = np.quantile(post.samples, [(1 - lv) / 2, (1 + lv) / 2], axis=1)
            emp_d.append(float(np.mean((truth >= lo) & (truth <= hi))))
            half = norm.ppf((1 + lv) / 2) * gauss.std
            emp_g.append(float(np.mean(np.abs(truth - gauss.mean) <= half)))
        ax.plot(levels, emp_d, color=HEAD_COLOURS["diffusion"], label="diffusion")
        ax.plot(levels, emp_g, color=HEAD_COLOURS["gaussian"], label="gaussian")
        ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=0.8)
        ax.set_title(f"{key[1]} ({subset})", fontsize=9)
        ax.set_xlabel("nominal", fontsize=8)
        ax.set_ylabel("empirical coverage", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return fig
