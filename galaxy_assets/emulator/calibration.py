"""How good and how honest the posteriors are, for the diffusion head and the Gaussian one.

For held-out rows with a known true value ``y`` of a label, per head (in the pipeline, the
evaluation half of the held-out rows, not the half that early-stopped training:
:func:`~galaxy_assets.emulator.train.split_held_out`):

* **accuracy**: the residual of the posterior median ``r = median - y`` (for ``redshift``
  the photometric-redshift convention ``r = (median - y) / (1 + y)``); ``nmad`` is
  ``1.4826 * median(|r - median(r)|)``, ``bias`` the median of ``r``, and
  ``outlier_fraction`` the fraction with ``|r|`` above the label's threshold
  (:data:`OUTLIER_THRESHOLDS`: 0.15 for redshift, 0.5 dex for stellar mass; any other
  label: its population's robust standard deviation, i.e. an estimate no closer than a
  guess from the whole sample);
* **CRPS** (continuous ranked probability score, in the label's units; lower is better):
  from samples, ``E|X - y| - E|X - X'|/2`` computed exactly from the sorted samples; for
  the Gaussian head, the closed form of Gneiting & Raftery (2007);
* **coverage** of the central 68% and 95% intervals: the fraction of rows whose true value
  lies between the 16th and 84th (2.5th and 97.5th) percentiles;
* **PIT** (probability integral transform): the posterior CDF at the true value, one per
  row (uniform for a calibrated posterior); reported as a histogram of ``pit_bins`` bins and
  the Kolmogorov–Smirnov distance of the PIT values from uniform.

:func:`evaluate_emulator` runs both heads on several input subsets (all inputs, photometry
only, two bands, the image embedding only…) and returns a :class:`CalibrationReport`;
:meth:`CalibrationReport.gate` is the champion rule of the registry, for every gated label
(the run's ``gate_labels``; default all) on the ``all`` subset: the diffusion head's 68% and
95% coverage must each be within ``tolerance`` (3 points) of nominal, or at least as close to
nominal as the Gaussian head's; its CRPS must be below the population prior's (the training
rows' values of the label given to every galaxy: a model that ignores its inputs is
calibrated too, but tells nothing); and the label needs at least :data:`GATE_MIN_ROWS`
evaluated held-out rows, since coverage on a handful of rows is noise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from galaxy_assets.emulator.data import EmulatorTable
from galaxy_assets.emulator.errors import EmulatorConfigError, EmulatorDataError
from galaxy_assets.emulator.model import PropertyEmulator

log = logging.getLogger(__name__)

__all__ = [
    "GATE_MIN_ROWS",
    "NOMINAL",
    "OUTLIER_THRESHOLDS",
    "CalibrationReport",
    "GateResult",
    "HeadMetrics",
    "coverage_gaussian",
    "coverage_samples",
    "crps_gaussian",
    "crps_samples",
    "evaluate_emulator",
    "metrics_gaussian",
    "metrics_samples",
    "pit_gaussian",
    "pit_samples",
]

NOMINAL: dict[str, tuple[float, float]] = {"68": (0.16, 0.84), "95": (0.025, 0.975)}
OUTLIER_THRESHOLDS: dict[str, float] = {"redshift": 0.15, "log_stellar_mass": 0.5}
HEADS = ("diffusion", "gaussian")
# the fewest held-out rows on which the gate judges a label's coverage (one row covers 0 or 1)
GATE_MIN_ROWS = 30


# --------------------------------------------------------------------------- scores
PRIOR_HEAD = "prior"  # the population distribution for every galaxy: the skill floor


def crps_samples(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS ``(G,)`` of sample sets ``(G, S)`` against ``truth`` ``(G,)`` (exact for the
    empirical distribution of the samples)."""
    x = np.sort(np.asarray(samples, dtype=np.float64), axis=1)
    y = np.asarray(truth, dtype=np.float64)[:, None]
    s = x.shape[1]
    term1 = np.abs(x - y).mean(axis=1)
    weights = (2.0 * np.arange(1, s + 1) - s - 1.0) / (s * s)
    term2 = (x * weights).sum(axis=1)  # = E|X - X'| / 2
    return term1 - term2


def crps_gaussian(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS of Gaussians (closed form, Gneiting & Raftery 2007)."""
    from scipy.stats import norm

    z = (np.asarray(truth) - mean) / std
    return std * (z * (2.0 * norm.cdf(z) - 1.0) + 2.0 * norm.pdf(z) - 1.0 / math.sqrt(math.pi))


def pit_samples(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fraction of samples below the truth (ties count half)."""
    x = np.asarray(samples)
    y = np.asarray(truth)[:, None]
    return ((x < y).sum(axis=1) + 0.5 * (x == y).sum(axis=1)) / x.shape[1]


def pit_gaussian(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    return norm.cdf((np.asarray(truth) - mean) / std)


def coverage_samples(samples: np.ndarray, truth: np.ndarray, level: str = "68") -> np.ndarray:
    """Per row: is the truth inside the central ``level`` ("68" or "95") interval?"""
    lo_q, hi_q = NOMINAL[level]
    lo, hi = np.quantile(samples, [lo_q, hi_q], axis=1)
    y = np.asarray(truth)
    return (y >= lo) & (y <= hi)


def coverage_gaussian(
    mean: np.ndarray, std: np.ndarray, truth: np.ndarray, level: str = "68"
) -> np.ndarray:
    from scipy.stats import norm

    lo_q, hi_q = NOMINAL[level]
    lo, hi = mean + std * norm.ppf(lo_q), mean + std * norm.ppf(hi_q)
    y = np.asarray(truth)
    return (y >= lo) & (y <= hi)


def _residual(label: str, estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    if label == "redshift":
        return (estimate - truth) / (1.0 + truth)
    return estimate - truth


def _ks_uniform(pit: np.ndarray) -> float:
    p = np.sort(np.asarray(pit))
    n = len(p)
    if n == 0:
        return math.nan
    i = np.arange(1, n + 1)
    return float(max((i / n - p).max(), (p - (i - 1) / n).max()))


# --------------------------------------------------------------------------- metrics
@dataclass
class HeadMetrics:
    """The scores of one head, one label, one input subset (see the module docstring)."""

    label: str
    head: str
    subset: str
    n: int
    nmad: float
    bias: float
    outlier_fraction: float
    outlier_threshold: float
    crps: float
    coverage_68: float
    coverage_95: float
    pit_ks: float
    pit_hist: list[int] = field(default_factory=list)

    def coverage_error(self) -> float:
        """The larger distance of the 68% and 95% coverage from nominal."""
        return max(abs(self.coverage_68 - 0.68), abs(self.coverage_95 - 0.95))


def _metrics(
    label: str,
    head: str,
    subset: str,
    median: np.ndarray,
    truth: np.ndarray,
    crps: np.ndarray,
    cov68: np.ndarray,
    cov95: np.ndarray,
    pit: np.ndarray,
    threshold: float,
    bins: int,
) -> HeadMetrics:
    r = _residual(label, median, truth)
    med = float(np.median(r)) if len(r) else math.nan
    hist, _ = np.histogram(pit, bins=bins, range=(0.0, 1.0))
    return HeadMetrics(
        label=label,
        head=head,
        subset=subset,
        n=len(truth),
        nmad=float(1.4826 * np.median(np.abs(r - med))) if len(r) else math.nan,
        bias=med,
        outlier_fraction=float(np.mean(np.abs(r) > threshold)) if len(r) else math.nan,
        outlier_threshold=float(threshold),
        crps=float(np.mean(crps)) if len(crps) else math.nan,
        coverage_68=float(np.mean(cov68)) if len(cov68) else math.nan,
        coverage_95=float(np.mean(cov95)) if len(cov95) else math.nan,
        pit_ks=_ks_uniform(pit),
        pit_hist=[int(v) for v in hist],
    )


def metrics_samples(
    samples: np.ndarray,
    truth: np.ndarray,
    label: str,
    *,
    subset: str = "all",
    threshold: float = 1.0,
    bins: int = 10,
    head: str = "diffusion",
) -> HeadMetrics:
    """Scores of sample sets ``(G, S)`` against ``truth`` ``(G,)``."""
    return _metrics(
        label,
        head,
        subset,
        np.median(samples, axis=1),
        truth,
        crps_samples(samples, truth),
        coverage_samples(samples, truth, "68"),
        coverage_samples(samples, truth, "95"),
        pit_samples(samples, truth),
        threshold,
        bins,
    )


def metrics_gaussian(
    mean: np.ndarray,
    std: np.ndarray,
    truth: np.ndarray,
    label: str,
    *,
    subset: str = "all",
    threshold: float = 1.0,
    bins: int = 10,
) -> HeadMetrics:
    """Scores of Gaussian posteriors against ``truth``."""
    return _metrics(
        label,
        "gaussian",
        subset,
        mean,
        truth,
        crps_gaussian(mean, std, truth),
        coverage_gaussian(mean, std, truth, "68"),
        coverage_gaussian(mean, std, truth, "95"),
        pit_gaussian(mean, std, truth),
        threshold,
        bins,
    )


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    details: tuple[str, ...] = ()


@dataclass
class CalibrationReport:
    """Scores of both heads per label and input subset, plus what was evaluated."""

    metrics: list[HeadMetrics]
    n_rows: int
    n_samples: int
    subsets: dict[str, list[str]]
    skipped: dict[str, int] = field(default_factory=dict)

    def frame(self) -> pl.DataFrame:
        """One row per (subset, label, head) with every score (PIT histogram as a string)."""
        rows = []
        for m in self.metrics:
            d = asdict(m)
            d["pit_hist"] = ",".join(str(v) for v in m.pit_hist)
            rows.append(d)
        return pl.DataFrame(rows)

    def get(self, label: str, head: str, subset: str = "all") -> HeadMetrics:
        for m in self.metrics:
            if (m.label, m.head, m.subset) == (label, head, subset):
                return m
        raise KeyError(f"no metrics for label={label!r} head={head!r} subset={subset!r}")

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(m.label for m in self.metrics))

    def flat_metrics(self) -> dict[str, float]:
        """``<subset>/<label>/<head>/<score>`` → value, for MLflow and Dagster metadata."""
        out: dict[str, float] = {}
        for m in self.metrics:
            for key in (
                "nmad",
                "bias",
                "outlier_fraction",
                "crps",
                "coverage_68",
                "coverage_95",
                "pit_ks",
            ):
                out[f"{m.subset}/{m.label}/{m.head}/{key}"] = float(getattr(m, key))
        return out

    def markdown(self) -> str:
        from galaxy_assets.tables import to_markdown

        cols = [
            "subset",
            "label",
            "head",
            "n",
            "nmad",
            "outlier_fraction",
            "crps",
            "coverage_68",
            "coverage_95",
            "pit_ks",
        ]
        return to_markdown(self.frame().select(cols), max_rows=200)

    def gate(
        self,
        tolerance: float = 0.03,
        subset: str = "all",
        labels: Sequence[str] | None = None,
        min_rows: int = GATE_MIN_ROWS,
    ) -> GateResult:
        """Champion rule: for every label (default: all evaluated) on ``subset``, the
        diffusion head's 68% and 95% coverage is within ``tolerance`` of nominal, or no
        further from it than the Gaussian head's; and its CRPS is below the population
        prior's (a model that ignores its inputs is calibrated too, but tells nothing). A
        label scored on fewer than ``min_rows`` held-out rows cannot be judged: it fails."""
        details, failed = [], []
        chosen = list(labels) if labels is not None else self.labels
        for label in chosen:
            try:
                dif = self.get(label, "diffusion", subset)
                gau = self.get(label, "gaussian", subset)
            except KeyError:
                failed.append(f"{label}: not evaluated on subset {subset!r}")
                continue
            if dif.n < min_rows:
                line = (
                    f"{label}: only {dif.n} held-out rows with a true value, too few to judge "
                    f"coverage (the gate needs {min_rows}; the evaluation half of the held-out "
                    f"split is scored): give more galaxies with a known "
                    f"{label!r}, raise val_fraction, or leave it out of gate_labels"
                )
                details.append(line)
                failed.append(line)
                continue
            try:
                prior = self.get(label, PRIOR_HEAD, subset)
            except KeyError:
                prior = None  # a report from before the prior was scored
            if prior is not None:
                line = f"{label} CRPS: diffusion {dif.crps:.4g}, population prior {prior.crps:.4g}"
                details.append(line)
                if not dif.crps < prior.crps:
                    failed.append(line + " (no better than ignoring the inputs)")
            for level, nominal in (("68", 0.68), ("95", 0.95)):
                d = abs(getattr(dif, f"coverage_{level}") - nominal)
                g = abs(getattr(gau, f"coverage_{level}") - nominal)
                ok = d <= tolerance or d <= g
                line = (
                    f"{label} {level}%: diffusion {getattr(dif, f'coverage_{level}'):.3f}, "
                    f"gaussian {getattr(gau, f'coverage_{level}'):.3f}"
                )
                details.append(line)
                if not ok:
                    failed.append(line)
        if not self.metrics:
            return GateResult(False, "nothing was evaluated")
        if failed:
            return GateResult(
                False,
                f"diffusion head not calibrated within {tolerance:.2f} of nominal nor as well "
                f"as the Gaussian head, or no better than the population prior: "
                f"{'; '.join(failed)}",
                tuple(details),
            )
        return GateResult(
            True,
            f"diffusion coverage within {tolerance:.2f} of nominal or at least as good as the "
            f"Gaussian head, and CRPS below the population prior's, for {', '.join(chosen)}",
            tuple(details),
        )


# --------------------------------------------------------------------------- evaluation
@dataclass
class EvaluationSamples:
    """What :func:`evaluate_emulator` drew, kept for plots: per (subset, label)."""

    samples: dict[tuple[str, str], Any] = field(default_factory=dict)
    gaussians: dict[tuple[str, str], Any] = field(default_factory=dict)
    truth: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


def _prior_quantiles(values: np.ndarray | None, truth: np.ndarray, n: int = 512) -> np.ndarray:
    """At most ``n`` evenly spaced order statistics of the prior's finite ``values`` (None or
    none finite: of ``truth``, in sample)."""
    v = np.asarray(values, dtype=np.float64) if values is not None else np.empty(0)
    v = np.sort(v[np.isfinite(v)])
    if v.size == 0:
        v = np.sort(truth)
    return v[np.linspace(0, v.size - 1, min(v.size, n)).astype(int)]


def evaluate_emulator(
    model: PropertyEmulator,
    table: EmulatorTable,
    *,
    labels: Sequence[str] | None = None,
    subsets: Mapping[str, Sequence[str] | None] | None = None,
    n_samples: int = 1000,
    max_rows: int | None = 2000,
    seed: int = 0,
    pit_bins: int = 10,
    thresholds: Mapping[str, float] | None = None,
    keep_samples: bool = False,
    prior_values: Mapping[str, np.ndarray] | None = None,
    **sampler: Any,
) -> tuple[CalibrationReport, EvaluationSamples | None]:
    """Score both heads on the rows of ``table`` (held-out rows that did not choose the
    weights: pass ``table.subset(np.isin(table.object_ids, result.eval_ids))``).

    ``subsets``: name → allowed input columns (None: all of ``table.inputs``; default
    ``{"all": None}``); the table's labels are never inputs here, so a label is not scored
    with the true values of the others in hand;
    ``max_rows``: evaluate each label on at most that many of the rows with a true value of
    it (a hash-stable choice, made per label so that a label known for few galaxies keeps all
    of them); ``thresholds``: outlier thresholds per label (default
    :data:`OUTLIER_THRESHOLDS`, else the label's robust scale); ``prior_values``: label →
    the values the population prior is drawn from (pass the training rows' values; default:
    the evaluated truths themselves, an in-sample prior that is hard to beat on few rows).
    Rows without a true value of a label do not count for it; rows with no input in a subset
    are skipped there and counted in ``report.skipped``.
    """
    from galaxy_assets.emulator.posterior import gaussian_posterior, sample_posterior

    labels = list(labels) if labels is not None else [c for c in table.labels if c in model.targets]
    if not labels:
        raise EmulatorConfigError("no label to evaluate: the table's labels are not targets")
    subsets = dict(subsets) if subsets is not None else {"all": None}
    frame = table.frame
    rows_of: dict[str, pl.DataFrame] = {}
    for label in labels:
        rows = frame.filter(pl.col(label).is_not_nan() & pl.col(label).is_not_null())
        if rows.height == 0:
            raise EmulatorDataError(
                f"{table.source}: none of the {frame.height} evaluation rows has a true "
                f"{label!r}: give galaxies with a known {label!r} to the held-out split, or "
                "leave it out of the labels"
            )
        if max_rows is not None and rows.height > max_rows:
            # a hash of the id, not the lowest ids: catalogue ids often encode the sky position
            from galaxy_assets.morphology.data import hash_unit

            ids = rows[table.id_column].cast(pl.Utf8).to_list()
            order = np.argsort(hash_unit(ids, "emulator-evaluation-rows"), kind="stable")
            rows = rows[np.sort(order[:max_rows]).tolist()]
        rows_of[label] = rows
    n_rows = len(set().union(*(r[table.id_column].to_list() for r in rows_of.values())))
    thresholds = {**OUTLIER_THRESHOLDS, **(thresholds or {})}
    metrics: list[HeadMetrics] = []
    skipped: dict[str, int] = {}
    kept = EvaluationSamples() if keep_samples else None
    for si, (name, chosen) in enumerate(subsets.items()):
        inputs = list(table.inputs) if chosen is None else list(chosen)
        leaked = sorted(set(inputs) & set(table.labels))
        if leaked:
            raise EmulatorConfigError(
                f"subset {name!r} uses labels {leaked} as inputs; evaluation subsets may only "
                f"hold input columns ({list(table.inputs)})"
            )
        for li, label in enumerate(labels):
            rows = rows_of[label]
            truth_by_id = dict(
                zip(rows[table.id_column].to_list(), rows[label].to_numpy(), strict=True)
            )
            post = sample_posterior(
                model,
                rows,
                label,
                n_samples=n_samples,
                inputs=inputs,
                seed=seed + 97 * si + li,
                id_column=table.id_column,
                **sampler,
            )
            gauss = gaussian_posterior(model, rows, label, inputs=inputs, id_column=table.id_column)
            skipped[f"{name}/{label}"] = int(len(post.skipped_ids))
            if len(post) == 0:
                log.warning("subset %s: no row has an input; %s not evaluated", name, label)
                continue
            truth = np.array([truth_by_id[i] for i in post.object_ids], dtype=np.float64)
            j = model.tokenizer.index(label)
            thr = float(thresholds.get(label, model.tokenizer.scales[j]))
            metrics.append(
                metrics_samples(
                    post.samples, truth, label, subset=name, threshold=thr, bins=pit_bins
                )
            )
            metrics.append(
                metrics_gaussian(
                    gauss.mean, gauss.std, truth, label, subset=name, threshold=thr, bins=pit_bins
                )
            )
            # the population prior (every galaxy gets the label's distribution over the
            # training rows): a model that ignores its inputs is perfectly calibrated, so the
            # gate also asks for a lower CRPS than this
            pop = _prior_quantiles(
                prior_values.get(label) if prior_values is not None else None, truth
            )
            metrics.append(
                metrics_samples(
                    np.broadcast_to(pop, (truth.size, pop.size)),
                    truth,
                    label,
                    subset=name,
                    threshold=thr,
                    bins=pit_bins,
                    head=PRIOR_HEAD,
                )
            )
            if kept is not None:
                kept.samples[(name, label)] = post
                kept.gaussians[(name, label)] = gauss
                kept.truth[(name, label)] = truth
    report = CalibrationReport(
        metrics=metrics,
        n_rows=n_rows,
        n_samples=n_samples,
        subsets={k: list(v) if v is not None else list(table.inputs) for k, v in subsets.items()},
        skipped=skipped,
    )
    return report, kept
