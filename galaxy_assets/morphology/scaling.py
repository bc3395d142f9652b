"""Scaling laws of the morphology encoder: held-out loss against labelled images and size.

Walmsley et al. (2024) found the held-out vote loss to fall as a power law in the number of
labelled galaxies, ``L(N) = a · N^(−α) + c``, with larger models helping only for some
questions. This module measures the same on our data:

* :func:`run_scaling_point` trains one (N labelled, model size) point: the first ``N``
  training galaxies in a fixed hash order (so smaller sets are nested in larger ones), the
  same held-out galaxies for every point, shared normalisation. The held-out split is cut
  once, by a stable hash, into an early-stopping half and a reporting half
  (:func:`split_held_out`): the best epoch is chosen on the first and the loss reported on
  the second, so the reported loss is not the minimum over epochs of the galaxies it is
  measured on. One point per Dagster partition; :func:`run_sweep` loops over a grid in one
  process.
* :func:`scaling_report` fits ``L(N)`` per model size (``scipy.optimize.curve_fit``, errors
  from its covariance and from a bootstrap over held-out galaxies), draws the log-log plot,
  writes a Markdown table and a verdict: do more parameters help, overall and per question
  (paired bootstrap of the per-galaxy losses of the largest against the smallest model)?

With fewer than four N values per size the full three-parameter form is not identifiable:
the fit drops ``c`` (``L = a · N^(−α)``, a straight line in log-log) and says so. A
three-parameter fit that lands on a bound (``c`` or ``a`` at 0, ``α`` at 0 or 4) or whose
errors are not finite or wider than the losses themselves is kept but flagged as not
identifiable (``PowerLawFit.identifiable``), in its note, the table, the legend and the
metrics: its ``α`` is not a measured exponent. The form of each fit is shown beside every
``α``, since an ``α`` with ``c`` fixed at 0 and one with ``c`` fitted are not comparable.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from galaxy_assets.morphology.data import VoteDataset, VoteTable, hash_unit
from galaxy_assets.morphology.errors import MorphologyError
from galaxy_assets.morphology.model import PRESETS, fit_normalization
from galaxy_assets.morphology.train import (
    TrainConfig,
    constant_baseline,
    evaluate,
    fingerprint,
    prepare_datasets,
    resolve_device_dtype,
    train_model,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from galaxy_assets.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_NS",
    "DEFAULT_SIZES",
    "PowerLawFit",
    "ScalingPoint",
    "ScalingReport",
    "fit_power_law",
    "nested_subset",
    "run_scaling_point",
    "run_sweep",
    "scaling_report",
    "split_held_out",
]

DEFAULT_NS: tuple[int, ...] = (500, 1000, 2000, 4000, 8000, 16000)
DEFAULT_SIZES: tuple[str, ...] = tuple(PRESETS)  # tiny, small, base
SUBSET_SALT = "galaxy-assets/morphology/scaling-order"
REPORT_SALT = "galaxy-assets/morphology/scaling-report-half"
N_REF = 1000.0  # N is scaled by this inside the fit (a is the excess loss at N = 1000)
ALPHA_MAX = 4.0  # upper bound on alpha in the three-parameter fit
# A three-parameter fit is "not identifiable" when a parameter sits on its bound (within
# BOUND_RTOL of the median loss for a and c, ALPHA_BOUND_TOL for alpha), when the covariance
# gives no finite errors, or when an error is wider than the data can support: a or c known
# only to more than the largest loss, alpha to more than ALPHA_ERR_MAX (a quarter of its
# range). With four N values and noisy losses the fit often ends on c = 0 with a tiny alpha
# and errors of thousands, which is no exponent at all.
BOUND_RTOL = 1e-6
ALPHA_BOUND_TOL = 1e-4
ALPHA_ERR_MAX = 1.0


@dataclass
class ScalingPoint:
    """One trained (N, size) point. ``per_galaxy`` is the held-out NLL ``(n_val, n_questions)``
    in the order of ``questions``, kept for paired bootstrap comparisons. ``val_loss``,
    ``question_loss``, ``per_galaxy``, ``vote_mae``, ``baseline_loss`` and
    ``val_fingerprint`` are of the reporting half of the held-out split, which early
    stopping never saw (:func:`split_held_out`)."""

    n_labelled: int
    model_size: str
    n_parameters: int
    val_loss: float
    question_loss: dict[str, float]
    questions: list[str]
    per_galaxy: np.ndarray
    val_fingerprint: str
    seed: int = 0
    train_seconds: float = 0.0
    epochs_run: int = 0
    best_epoch: int = 0
    vote_mae: float = math.nan
    baseline_loss: float = math.nan  # held-out loss of the best constant prediction
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_galaxy"] = np.asarray(self.per_galaxy, dtype=np.float32).tolist()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScalingPoint:
        d = dict(data)
        d["per_galaxy"] = np.asarray(d["per_galaxy"], dtype=np.float32)
        return cls(**d)


@dataclass
class PowerLawFit:
    """``L(N) = a · (N / 1000)^(−alpha) + c`` for one model size, with 1σ errors.

    ``form`` is ``"a*N^-alpha+c"`` or ``"a*N^-alpha"`` (c fixed at 0, too few points);
    ``*_err`` come from the fit covariance (NaN when not estimable), ``alpha_boot_err`` from
    a bootstrap over held-out galaxies. ``identifiable`` is False for a three-parameter fit
    on a bound or with unusable errors (``note`` says which): its alpha is not an exponent.
    """

    model_size: str
    n_parameters: int
    n_points: int
    form: str
    a: float
    alpha: float
    c: float
    a_err: float = math.nan
    alpha_err: float = math.nan
    c_err: float = math.nan
    alpha_boot_err: float = math.nan
    note: str = ""
    identifiable: bool = True

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        return self.a * (np.asarray(n, dtype=float) / N_REF) ** (-self.alpha) + self.c


@dataclass
class ScalingReport:
    """Fits, table, plot and verdict of a sweep; ``metrics`` is flat (Dagster metadata)."""

    fits: dict[str, PowerLawFit]
    table: pl.DataFrame
    markdown: str
    figure: Figure
    verdict: str
    questions_helped: list[str] = field(default_factory=list)
    questions_hurt: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- running
def nested_subset(train: VoteDataset, n: int, salt: str = SUBSET_SALT) -> VoteDataset:
    """The first ``n`` galaxies of ``train`` in hash order of object_id (nested in ``n``)."""
    if n > len(train):
        raise MorphologyError(
            f"asked for N={n} labelled galaxies but the training split has only {len(train)}; "
            "label more galaxies (a larger mock survey) or drop this N from the sweep"
        )
    order = np.argsort(hash_unit(train.object_ids, salt), kind="stable")
    return train.subset(np.sort(order[:n]))


def split_held_out(val: VoteDataset, salt: str = REPORT_SALT) -> tuple[VoteDataset, VoteDataset]:
    """``(early_stopping, reporting)`` halves of ``val`` by a stable hash of object_id.

    The same for every point of a sweep (it depends only on the galaxies), so all points are
    reported on the same galaxies; the best epoch is chosen on the other half, so the
    reported loss is not optimistically the minimum over epochs on its own galaxies.
    """
    report = hash_unit(val.object_ids, salt) < 0.5
    if report.all() or not report.any():
        raise MorphologyError(
            f"the held-out split has {len(val)} galaxies, too few to halve into an "
            "early-stopping and a reporting set; label more galaxies or raise val_fraction"
        )
    return val.subset(np.flatnonzero(~report)), val.subset(np.flatnonzero(report))


def _size_config(
    base: TrainConfig, size: str, n_train: int, min_steps: int, seed: int
) -> TrainConfig:
    """Epochs raised so small N still get ``min_steps`` steps; patience and the earliest
    stop scaled alike, so early stopping judges the same amount of training at every N."""
    steps_per_epoch = max(1, n_train // base.batch_size)
    epochs = max(base.epochs, math.ceil(min_steps / steps_per_epoch))
    scale = epochs / max(base.epochs, 1)
    return replace(
        base,
        preset=size,
        epochs=epochs,
        seed=seed,
        patience=max(base.patience, round(base.patience * scale)),
        min_epochs=max(base.min_epochs, round(base.min_epochs * scale)),
    )


def run_scaling_point(
    train: VoteDataset,
    val: VoteDataset,
    n_labelled: int,
    model_size: str,
    base_config: TrainConfig | None = None,
    *,
    norm: dict[str, list[float]] | None = None,
    min_steps: int = 300,
    seed: int = 0,
    tracker: Tracker | None = None,
    experiment: str = "morphology-scaling",
) -> ScalingPoint:
    """Train ``model_size`` on ``N = n_labelled`` nested training galaxies; score on ``val``.

    ``val`` is halved by :func:`split_held_out`: training early-stops on one half and the
    point's losses are measured on the other.

    ``min_steps`` raises the epoch count for small N so every point gets a comparable
    number of optimizer steps (early stopping still applies). ``norm``: normalisation shared
    by all points (default: fitted on the full ``train``). With ``tracker`` the point is
    logged as a run of ``experiment`` (its id lands in ``run_id``).
    """
    base = base_config or TrainConfig()
    subset = nested_subset(train, n_labelled)
    cfg = _size_config(base, model_size, len(subset), min_steps, seed)
    norm = norm or fit_normalization(train.images[: min(len(train), 512)].numpy())
    stop_val, report_val = split_held_out(val)
    t0 = time.perf_counter()
    result = train_model(subset, stop_val, cfg, norm=norm)
    train_seconds = time.perf_counter() - t0
    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype)
    ev = evaluate(
        result.build_model(device),
        report_val,
        batch_size=cfg.eval_batch_size,
        device=device,
        dtype=dtype,
    )
    baseline = constant_baseline(
        subset,
        report_val,
        float(result.config["min_concentration"]),
        float(result.config["max_concentration"]),
    )
    point = ScalingPoint(
        n_labelled=int(n_labelled),
        model_size=model_size,
        n_parameters=int(result.metrics["n_parameters"]),
        val_loss=float(ev.loss),
        question_loss=dict(ev.question_loss),
        questions=list(subset.tree.question_names),
        per_galaxy=ev.per_galaxy.astype(np.float32),
        val_fingerprint=fingerprint(report_val.object_ids),
        seed=seed,
        train_seconds=train_seconds,
        epochs_run=len(result.history),
        best_epoch=int(result.metrics["best_epoch"]),
        vote_mae=float(ev.mean_vote_mae),
        baseline_loss=baseline,
    )
    log.info(
        "scaling point N=%d %s: held-out loss %.4f (%d params, %.0f s)",
        n_labelled,
        model_size,
        point.val_loss,
        point.n_parameters,
        point.train_seconds,
    )
    if tracker is not None:
        with tracker.start_run(
            experiment,
            run_name=f"N{n_labelled}-{model_size}",
            tags={
                "n_labelled": n_labelled,
                "model_size": model_size,
                "val_fingerprint": point.val_fingerprint,
            },
        ) as run:
            run.log_params(
                {"n_labelled": n_labelled, "model_size": model_size, "train": cfg.to_dict()}
            )
            for rec in result.history:
                run.log_metrics(
                    {f"epoch/{k}": v for k, v in rec.items() if k not in ("epoch", "step")},
                    step=int(rec["epoch"]),
                )
            # result.metrics' val_* are of the early-stopping half; report_* of the other
            run.log_metrics(
                {
                    **result.metrics,
                    "n_labelled": n_labelled,
                    "report_val_loss": point.val_loss,
                    "report_vote_mae": point.vote_mae,
                    "report_baseline_val_loss": point.baseline_loss,
                    "n_report": len(report_val),
                }
            )
        point.run_id = run.run_id
    return point


def run_sweep(
    votes: VoteTable,
    ns: Sequence[int] = DEFAULT_NS,
    sizes: Sequence[str] = DEFAULT_SIZES,
    base_config: TrainConfig | None = None,
    *,
    min_steps: int = 300,
    seed: int = 0,
    tracker: Tracker | None = None,
    experiment: str = "morphology-scaling",
) -> list[ScalingPoint]:
    """Every (N, size) point of the grid, trained in this process (pixels read once)."""
    base = base_config or TrainConfig()
    train, val = prepare_datasets(votes, base)
    too_big = [n for n in ns if n > len(train)]
    if too_big:
        raise MorphologyError(
            f"N values {too_big} exceed the {len(train)} training galaxies; drop them or "
            "label more galaxies"
        )
    norm = fit_normalization(train.images[: min(len(train), 512)].numpy())
    points = []
    for size in sizes:
        for n in sorted(ns):
            points.append(
                run_scaling_point(
                    train,
                    val,
                    n,
                    size,
                    base,
                    norm=norm,
                    min_steps=min_steps,
                    seed=seed,
                    tracker=tracker,
                    experiment=experiment,
                )
            )
    return points


# --------------------------------------------------------------------------- fitting
def _model_full(n: np.ndarray, a: float, alpha: float, c: float) -> np.ndarray:
    return a * (n / N_REF) ** (-alpha) + c


def _model_pure(n: np.ndarray, a: float, alpha: float) -> np.ndarray:
    return a * (n / N_REF) ** (-alpha)


def _fit(n: np.ndarray, loss: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """(form, params, 1σ errors); params are (a, alpha, c)."""
    from scipy.optimize import curve_fit

    nan3 = np.full(3, np.nan)
    if len(n) >= 4:
        c0 = 0.9 * float(loss.min())
        a0 = max(float(loss.max()) - c0, 1e-3)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, cov = curve_fit(
                    _model_full,
                    n,
                    loss,
                    p0=(a0, 0.5, c0),
                    bounds=([0.0, 0.0, 0.0], [np.inf, ALPHA_MAX, np.inf]),
                    maxfev=20000,
                )
            err = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else nan3
            return "a*N^-alpha+c", p, err
        except (RuntimeError, ValueError) as exc:
            log.warning("full power-law fit failed (%s); fitting a*N^-alpha", exc)
    # log-log line: log L = log a' - alpha log(N / N_REF)
    x = np.log(n / N_REF)
    y = np.log(loss)
    if len(n) == 2:
        alpha = -(y[1] - y[0]) / (x[1] - x[0])
        a = math.exp(y[0] + alpha * x[0])
        return "a*N^-alpha", np.array([a, alpha, 0.0]), nan3
    coef, cov = np.polyfit(x, y, 1, cov=True)
    slope, icpt = coef
    a = math.exp(icpt)
    err = np.sqrt(np.clip(np.diag(cov), 0, None))
    return "a*N^-alpha", np.array([a, -slope, 0.0]), np.array([a * err[1], err[0], np.nan])


def fit_power_law(
    n: Sequence[float],
    loss: Sequence[float],
    *,
    model_size: str = "",
    n_parameters: int = 0,
) -> PowerLawFit:
    """Fit ``L(N)`` to held-out losses at labelled-set sizes ``n`` (at least two distinct N)."""
    n_arr = np.asarray(n, dtype=float)
    l_arr = np.asarray(loss, dtype=float)
    ok = np.isfinite(n_arr) & np.isfinite(l_arr) & (n_arr > 0) & (l_arr > 0)
    n_arr, l_arr = n_arr[ok], l_arr[ok]
    if len(np.unique(n_arr)) < 2:
        raise MorphologyError(
            f"model size {model_size!r}: a scaling fit needs held-out losses at two or more "
            f"labelled-set sizes, got N={sorted(set(n_arr.tolist()))}; add N values to the sweep"
        )
    order = np.argsort(n_arr)
    form, p, err = _fit(n_arr[order], l_arr[order])
    n_values = len(np.unique(n_arr))
    problems = _unidentified(p, err, l_arr) if form == "a*N^-alpha+c" else []
    note = (
        (
            "the fit with c is not identifiable (" + "; ".join(problems) + "): its α is "
            "not a measured exponent"
        )
        if problems
        else ""
        if form == "a*N^-alpha+c"
        else f"{n_values} N values: c fixed at 0 (four or more needed to fit c)"
        if n_values < 4
        else f"{n_values} N values, but the fit with c did not converge: c fixed at 0"
    )
    return PowerLawFit(
        model_size,
        n_parameters,
        len(n_arr),
        form,
        float(p[0]),
        float(p[1]),
        float(p[2]),
        float(err[0]),
        float(err[1]),
        float(err[2]),
        note=note,
        identifiable=not problems,
    )


def _unidentified(p: np.ndarray, err: np.ndarray, loss: np.ndarray) -> list[str]:
    """Why a three-parameter fit (a, alpha, c) is not identifiable; empty when it is."""
    a, alpha, c = (float(v) for v in p)
    scale = float(np.median(loss))
    out = []
    if c <= BOUND_RTOL * scale:
        out.append("c at its bound 0")
    if a <= BOUND_RTOL * scale:
        out.append("a at its bound 0")
    if alpha <= ALPHA_BOUND_TOL:
        out.append("α at its bound 0")
    elif alpha >= ALPHA_MAX - ALPHA_BOUND_TOL:
        out.append(f"α at its bound {ALPHA_MAX:g}")
    if not np.all(np.isfinite(err)):
        out.append("errors not estimable")
    else:
        big = [
            f"{name} ± {e:.2g}"
            for name, e, limit in (
                ("a", err[0], float(loss.max())),
                ("α", err[1], ALPHA_ERR_MAX),
                ("c", err[2], float(loss.max())),
            )
            if e > limit
        ]
        if big:
            out.append("1σ errors too wide: " + ", ".join(big))
    return out


def _boot_alpha(points: list[ScalingPoint], n_boot: int, rng: np.random.Generator) -> float:
    """Std of alpha over bootstrap resamples of the held-out galaxies (same for all N)."""
    mats = [p.per_galaxy.sum(axis=1) for p in points]
    if len({len(m) for m in mats}) != 1 or len(points) < 2:
        return math.nan
    n_val = len(mats[0])
    stack = np.stack(mats)  # (points, n_val)
    ns = np.array([p.n_labelled for p in points], dtype=float)
    alphas = []
    for _ in range(n_boot):
        idx = rng.integers(0, n_val, n_val)
        losses = stack[:, idx].mean(axis=1)
        try:
            _, pb, _ = _fit(ns, losses)
            alphas.append(pb[1])
        except Exception:  # a degenerate resample
            continue
    return float(np.std(alphas)) if len(alphas) > 2 else math.nan


def _paired_diff(
    big: np.ndarray, small: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Mean of big - small and its 95% bootstrap interval (paired over galaxies)."""
    d = big - small
    means = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)])
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# --------------------------------------------------------------------------- report
def scaling_report(
    points: Sequence[ScalingPoint],
    *,
    n_boot: int = 300,
    seed: int = 0,
) -> ScalingReport:
    """Fit, tabulate, plot and judge a sweep (see the module docstring)."""
    points = list(points)
    if not points:
        raise MorphologyError("no scaling points: run the sweep's partitions first")
    fps = {p.val_fingerprint for p in points}
    if len(fps) > 1:
        raise MorphologyError(
            f"the scaling points were scored on {len(fps)} different held-out sets; rerun the "
            "sweep's partitions against the same vote table and split"
        )
    rng = np.random.default_rng(seed)
    sizes = sorted(
        {p.model_size for p in points},
        key=lambda s: min(q.n_parameters for q in points if q.model_size == s),
    )
    fits: dict[str, PowerLawFit] = {}
    for size in sizes:
        pts = sorted((p for p in points if p.model_size == size), key=lambda p: p.n_labelled)
        try:
            fit = fit_power_law(
                [p.n_labelled for p in pts],
                [p.val_loss for p in pts],
                model_size=size,
                n_parameters=pts[0].n_parameters,
            )
        except MorphologyError as exc:
            log.warning("%s", exc)
            continue
        fit.alpha_boot_err = _boot_alpha(pts, n_boot, rng)
        fits[size] = fit

    rows = [
        {
            "n_labelled": p.n_labelled,
            "model_size": p.model_size,
            "n_parameters": p.n_parameters,
            "val_loss": p.val_loss,
            "vote_mae": p.vote_mae,
            "epochs_run": p.epochs_run,
            "train_seconds": p.train_seconds,
            "seed": p.seed,
        }
        for p in points
    ]
    table = pl.DataFrame(rows).sort(["model_size", "n_labelled"])

    # --- do more parameters help?
    small_name, big_name = sizes[0], sizes[-1]
    common = sorted(
        {p.n_labelled for p in points if p.model_size == small_name}
        & {p.n_labelled for p in points if p.model_size == big_name}
    )
    verdict_lines: list[str] = []
    helped: list[str] = []
    hurt: list[str] = []
    metrics: dict[str, float] = {}
    if len(sizes) < 2 or not common:
        verdict = "Only one model size (or no shared N): cannot say whether parameters help."
    else:
        n_top = common[-1]
        pb = next(p for p in points if p.model_size == big_name and p.n_labelled == n_top)
        ps = next(p for p in points if p.model_size == small_name and p.n_labelled == n_top)
        d, lo, hi = _paired_diff(pb.per_galaxy.sum(1), ps.per_galaxy.sum(1), n_boot, rng)
        metrics.update(
            {"loss_diff_big_minus_small": d, "loss_diff_ci_low": lo, "loss_diff_ci_high": hi}
        )
        if hi < 0:
            verdict = (
                f"More parameters help: at N={n_top}, {big_name} ({pb.n_parameters:,} "
                f"params) has held-out loss {pb.val_loss:.3f} vs {small_name}'s "
                f"{ps.val_loss:.3f} (difference {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}])."
            )
        elif lo > 0:
            verdict = (
                f"More parameters hurt at this data size: at N={n_top}, {big_name} has "
                f"held-out loss {pb.val_loss:.3f} vs {small_name}'s {ps.val_loss:.3f} "
                f"(difference {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]); the larger model "
                "is data-limited (or under-trained)."
            )
        else:
            verdict = (
                f"No significant effect of parameters at N={n_top}: {big_name} "
                f"{pb.val_loss:.3f} vs {small_name} {ps.val_loss:.3f} (difference "
                f"{d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}])."
            )
        for j, q in enumerate(pb.questions):
            # over the galaxies asked the question, as the loss columns beside it: a galaxy
            # with no vote on it has an NLL of exactly 0 under both models
            big_q, small_q = pb.per_galaxy[:, j], ps.per_galaxy[:, j]
            answered = (big_q != 0) | (small_q != 0)
            if not answered.any():
                continue
            dq, loq, hiq = _paired_diff(big_q[answered], small_q[answered], n_boot, rng)
            metrics[f"loss_diff/{q}"] = dq
            if hiq < 0:
                helped.append(q)
            elif loq > 0:
                hurt.append(q)
            verdict_lines.append(
                f"| {q} | {ps.question_loss.get(q, math.nan):.3f} | "
                f"{pb.question_loss.get(q, math.nan):.3f} | {dq:+.3f} "
                f"[{loq:+.3f}, {hiq:+.3f}] |"
            )
        verdict += (
            f" Per question, {big_name} is better for: {', '.join(helped) or 'none'}; "
            f"worse for: {', '.join(hurt) or 'none'}. {_one_run_caveat([pb, ps])}"
        )
    for size, fit in fits.items():
        metrics[f"alpha/{size}"] = fit.alpha
        metrics[f"alpha_err/{size}"] = fit.alpha_err
        metrics[f"c/{size}"] = fit.c
        # the form beside alpha: 1 = a·N^-α + c fitted, 0 = c fixed at 0 (not comparable)
        metrics[f"alpha_fit_with_c/{size}"] = float(fit.form == "a*N^-alpha+c")
        metrics[f"alpha_identifiable/{size}"] = float(fit.identifiable)

    markdown = _markdown(points, sizes, fits, verdict, verdict_lines, small_name, big_name, common)
    figure = _figure(points, sizes, fits)
    return ScalingReport(
        fits=fits,
        table=table,
        markdown=markdown,
        figure=figure,
        verdict=verdict,
        questions_helped=helped,
        questions_hurt=hurt,
        metrics=metrics,
    )


def _one_run_caveat(points: Sequence[ScalingPoint]) -> str:
    """The intervals resample held-out galaxies of one trained model per cell, not seeds."""
    seeds = sorted({p.seed for p in points})
    which = (
        f"this training seed ({seeds[0]})"
        if len(seeds) == 1
        else f"these training runs (seeds {', '.join(map(str, seeds))})"
    )
    return (
        f"These intervals resample the held-out galaxies for {which}; seed-to-seed "
        "variation of training is not included."
    )


def _fmt(v: float, err: float) -> str:
    return f"{v:.3g} ± {err:.2g}" if math.isfinite(err) else f"{v:.3g}"


def _markdown(
    points: list[ScalingPoint],
    sizes: list[str],
    fits: dict[str, PowerLawFit],
    verdict: str,
    qlines: list[str],
    small: str,
    big: str,
    common: list[int],
) -> str:
    params = {s: next(p.n_parameters for p in points if p.model_size == s) for s in sizes}
    ns = sorted({p.n_labelled for p in points})
    by = {(p.n_labelled, p.model_size): p for p in points}
    out = [
        "## Held-out loss by labelled images and model size",
        "",
        "Held-out Dirichlet-Multinomial loss per galaxy (summed over questions); lower is "
        "better. Same held-out galaxies for every cell: the reporting half of the held-out "
        "split, which early stopping did not see."
        + (
            f" The best constant prediction (no pixels) scores {float(np.median(base)):.3f}."
            if (base := [p.baseline_loss for p in points if math.isfinite(p.baseline_loss)])
            else ""
        ),
        "",
        "| N labelled | " + " | ".join(f"{s} ({params[s] / 1e6:.2f} M)" for s in sizes) + " |",
        "|---:|" + "---:|" * len(sizes),
    ]
    for n in ns:
        cells = [f"{by[(n, s)].val_loss:.3f}" if (n, s) in by else "–" for s in sizes]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Power-law fits  L(N) = a·(N/1000)^(−α) + c",
        "",
        "| model | params | points | form | α (fit) | α (bootstrap σ) | a | c |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for s, f in fits.items():
        flag = "" if f.identifiable else " (not identifiable)"
        out.append(
            f"| {s} | {f.n_parameters:,} | {f.n_points} | {f.form} | "
            f"{_fmt(f.alpha, f.alpha_err)}{flag} | "
            f"{f.alpha_boot_err:.2g} | {_fmt(f.a, f.a_err)} | {_fmt(f.c, f.c_err)} |"
        )
    if len({f.form for f in fits.values()}) > 1:
        out += ["", "*The fits have different forms: their α are not comparable.*"]
    notes: dict[str, list[str]] = {}
    for s, f in fits.items():
        if f.note:
            notes.setdefault(f.note, []).append(s)
    if notes:
        for n, ss in notes.items():
            out += ["", f"*{', '.join(ss)}: {n}.*"]
    out += ["", "## Do more parameters help?", "", verdict, ""]
    if qlines:
        out += [
            f"Per question at N={common[-1]} (loss per galaxy; difference {big} − {small}, "
            "95% paired bootstrap interval over held-out galaxies, for one training run per "
            "model: seed-to-seed variation is not included):",
            "",
            f"| question | {small} | {big} | difference |",
            "|---|---:|---:|---|",
            *qlines,
            "",
        ]
    return "\n".join(out)


def _figure(points: list[ScalingPoint], sizes: list[str], fits: dict[str, PowerLawFit]) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for k, size in enumerate(sizes):
        pts = sorted((p for p in points if p.model_size == size), key=lambda p: p.n_labelled)
        x = np.array([p.n_labelled for p in pts], dtype=float)
        y = np.array([p.val_loss for p in pts])
        col = colors[k % len(colors)]
        label = f"{size} ({pts[0].n_parameters / 1e6:.2f} M)"
        if size in fits:
            f = fits[size]
            grid = np.geomspace(x.min() * 0.8, x.max() * 1.25, 100)
            ax.plot(grid, f.predict(grid), color=col, lw=1.2, alpha=0.8)
            err = f"±{f.alpha_err:.2f}" if math.isfinite(f.alpha_err) else ""
            form = "with c" if f.form == "a*N^-alpha+c" else "c=0"
            flag = ", not identifiable" if not f.identifiable else ""
            label += f", α={f.alpha:.2f}{err} ({form}{flag})"
        ax.plot(x, y, "o", color=col, label=label)
    base = [p.baseline_loss for p in points if math.isfinite(p.baseline_loss)]
    if base:
        ax.axhline(
            float(np.median(base)), color="0.5", ls=":", lw=1, label="best constant prediction"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter, NullLocator

    ax.yaxis.set_major_formatter(FormatStrFormatter("%.1f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.1f"))
    ns = sorted({p.n_labelled for p in points})
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.tick_params(which="minor", labelsize=7)
    ax.set_xlabel("labelled galaxies N")
    ax.set_ylabel("held-out loss per galaxy")
    ax.set_title("Morphology encoder scaling")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig
