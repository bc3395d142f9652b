"""Train the property emulator on an :class:`~galaxy_assets.emulator.data.EmulatorTable`.

:func:`train_emulator` splits the table by a hash of the object id (a galaxy stays on its
side when the table grows), halves the held-out rows once by a second hash
(:func:`split_held_out`): an early-stopping half, whose loss picks the best weights, and an
evaluation half, which nothing in training sees and on which the calibration report and the
champion gate are computed (scoring the rows that chose the weights is optimistic). It fits
the tokenizer on the training rows only, and trains with AdamW and a cosine learning-rate
decay. Every epoch, every training row gets a fresh task
(:func:`training_batch`):

* a **target** drawn uniformly among the row's known values of the target columns;
* a **context**: a random subset of the row's *other* known values, of a random length
  drawn uniformly between ``min_context`` and all of them (with probability
  ``full_context_fraction`` the context is all of them); for ``label_free_fraction`` of
  the rows the other target columns are left out of the context first, since the usual
  question at inference is a label from the observed inputs alone (with them always in
  reach, the model met "all inputs, no labels" almost never and its redshift posteriors
  from inputs alone were over-confident: 68% intervals covered 50-62% of held-out galaxies);
* the target's own value is **never** part of the inputs: its ``known`` flag is cleared and
  its value zeroed here, and :meth:`PropertyEmulator.condition` removes it again, so the
  reference code's leak (a label that is also an input of its own query) cannot happen.

The loss is the diffusion head's noise-prediction MSE (``diffusion_repeats`` noise draws per
row, which is cheap next to the encoder) plus ``baseline_weight`` times the Gaussian head's
NLL. After each epoch the early-stopping half of the held-out rows is scored with the same
kind of tasks drawn from a fixed seed, so its loss is comparable from epoch to epoch; the
best weights are kept, and training stops after ``patience`` epochs without improvement, or at
``time_budget_s``. The learning rate follows a cosine decay over the epochs that fit: under a
time budget the horizon is estimated from the first epochs' durations, so a budgeted run
still anneals instead of stopping at full rate. A non-finite loss, gradient or held-out loss raises
:class:`TrainingDivergedError`: nothing is returned, so nothing can be registered.

:func:`register_emulator` logs a result (and optionally its calibration report and plots)
to MLflow, registers ``property-emulator`` and moves ``champion`` only when the calibration
gate passes (:meth:`CalibrationReport.gate`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from galaxy_assets.emulator.data import EmulatorTable
from galaxy_assets.emulator.errors import (
    EmulatorConfigError,
    EmulatorDataError,
    TrainingDivergedError,
)
from galaxy_assets.emulator.model import (
    REGISTERED_NAME,
    PropertyEmulator,
    count_parameters,
    log_emulator,
    new_config,
)
from galaxy_assets.emulator.tokenizer import Tokenizer

if TYPE_CHECKING:
    from galaxy_assets.emulator.calibration import CalibrationReport
    from galaxy_assets.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = [
    "EXPERIMENT",
    "EVAL_SALT",
    "SPLIT_SALT",
    "EmulatorRegistration",
    "TrainConfig",
    "TrainResult",
    "register_emulator",
    "split_held_out",
    "split_rows",
    "train_emulator",
    "training_batch",
]

SPLIT_SALT = "galaxy-assets/emulator/split"
# halves the held-out rows into early stopping / evaluation (independent of SPLIT_SALT)
EVAL_SALT = "galaxy-assets/emulator/eval-half"
EXPERIMENT = "property-emulator"
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    """Training settings. ``targets`` None: the table's labels (every column when it has
    none); ``model``: :class:`EmulatorConfig` overrides (``d_model``, ``n_layers``,
    ``diffusion_steps``…)."""

    epochs: int = 200
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    patience: int = 30
    min_context: int = 1
    full_context_fraction: float = 0.25
    label_free_fraction: float = 0.5
    diffusion_repeats: int = 4
    baseline_weight: float = 1.0
    grad_clip: float = 1.0
    ema_decay: float | None = 0.995
    time_budget_s: float | None = None
    seed: int = 0
    targets: list[str] | None = None
    device: str = "cpu"
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise EmulatorConfigError(f"val_fraction={self.val_fraction}; use a value in (0, 1)")
        for name in ("epochs", "batch_size", "diffusion_repeats"):
            if int(getattr(self, name)) < 1:
                raise EmulatorConfigError(f"{name}={getattr(self, name)}; it must be >= 1")
        if not self.lr > 0:
            raise EmulatorConfigError(f"lr={self.lr}; it must be > 0")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise EmulatorConfigError(f"ema_decay={self.ema_decay}; use a value in [0, 1) or None")
        if not 0.0 <= self.label_free_fraction <= 1.0:
            raise EmulatorConfigError(
                f"label_free_fraction={self.label_free_fraction}; use a value in [0, 1]"
            )
        if not 0.0 <= self.full_context_fraction <= 1.0:
            raise EmulatorConfigError(
                f"full_context_fraction={self.full_context_fraction}; use a value in [0, 1]"
            )


@dataclass
class TrainResult:
    """A trained emulator (best weights on the early-stopping half, eval mode) and how it got
    there. ``stop_ids``: the held-out rows whose loss chose the weights (``history``'s
    ``val_*``); ``eval_ids``: the held-out rows nothing in training saw, to evaluate and gate
    on (:func:`split_held_out`)."""

    model: PropertyEmulator
    train_config: TrainConfig
    history: list[dict[str, float]]
    best_epoch: int
    stop_reason: str
    train_ids: np.ndarray
    stop_ids: np.ndarray
    eval_ids: np.ndarray
    skipped: dict[str, int]
    seconds: float
    train_rows_seen: int
    train_seconds: float

    @property
    def config(self) -> dict[str, Any]:
        return self.model.config_dict()

    @property
    def val_ids(self) -> np.ndarray:
        """Every held-out row (both halves): never trained on."""
        return np.concatenate([self.stop_ids, self.eval_ids])

    @property
    def rows_per_second(self) -> float:
        """Training rows processed per second of optimisation (held-out scoring excluded)."""
        return self.train_rows_seen / self.train_seconds if self.train_seconds > 0 else math.nan

    @property
    def metrics(self) -> dict[str, float]:
        best = self.history[self.best_epoch - 1] if self.history else {}
        return {
            "val_diffusion_loss": float(best.get("val_diffusion", math.nan)),
            "val_gaussian_nll": float(best.get("val_gaussian", math.nan)),
            "train_diffusion_loss": float(best.get("train_diffusion", math.nan)),
            "best_epoch": float(self.best_epoch),
            "epochs_run": float(len(self.history)),
            "n_train": float(len(self.train_ids)),
            "n_val": float(len(self.stop_ids) + len(self.eval_ids)),
            "n_val_early_stopping": float(len(self.stop_ids)),
            "n_val_evaluation": float(len(self.eval_ids)),
            "train_rows_per_second": float(self.rows_per_second),
            "train_seconds": float(self.seconds),
            "n_parameters": float(count_parameters(self.model)),
        }

    def summary_markdown(self) -> str:
        m = self.metrics
        lines = [
            "# Property emulator training",
            "",
            f"- targets: {', '.join(self.model.targets)}",
            f"- inputs + labels: {len(self.model.columns)} columns",
            f"- rows: {int(m['n_train'])} train / {int(m['n_val'])} held out: "
            f"{int(m['n_val_early_stopping'])} for early stopping, "
            f"{int(m['n_val_evaluation'])} for evaluation (skipped: {self.skipped})",
            f"- best epoch {self.best_epoch} of {len(self.history)} ({self.stop_reason})",
            f"- early-stopping diffusion loss {m['val_diffusion_loss']:.4f}, Gaussian NLL "
            f"{m['val_gaussian_nll']:.4f}",
            f"- {m['train_rows_per_second']:.0f} training rows/s, {self.seconds:.1f} s in all",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- tasks
def split_rows(object_ids: Sequence[str] | np.ndarray, val_fraction: float) -> np.ndarray:
    """Boolean mask, True for held-out rows: a hash of ``object_id`` below ``val_fraction``."""
    from galaxy_assets.morphology.data import hash_unit

    return hash_unit(np.asarray(object_ids).astype(str), SPLIT_SALT) < val_fraction


def split_held_out(object_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Boolean mask over held-out rows, True for the evaluation half: a hash of ``object_id``
    (salt :data:`EVAL_SALT`, independent of the train/held-out hash) below 0.5. The other
    half early-stops training. A galaxy keeps its half when the table grows."""
    from galaxy_assets.morphology.data import hash_unit

    return hash_unit(np.asarray(object_ids).astype(str), EVAL_SALT) < 0.5


def training_batch(
    z: np.ndarray,
    target_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    min_context: int = 1,
    full_context_fraction: float = 0.25,
    label_free_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One task per row of standardised values ``z`` ``(B, C)`` (NaN = missing).

    The context is a random subset (random length, or all with ``full_context_fraction``)
    of the row's other known values. For ``label_free_fraction`` of the rows the other
    target columns are first taken out of the context, so the model also learns the
    question it is asked most: a label from the observed inputs alone.

    Returns ``values`` ``(B, C)`` float32 (0 where not an input), ``known`` ``(B, C)`` bool
    (the inputs), ``target`` ``(B,)`` column ids and ``x0`` ``(B,)`` the target values. Every
    row must have at least one known value in a ``target_mask`` column.
    """
    b, c = z.shape
    rows = np.arange(b)
    known = np.isfinite(z)
    eligible = known & target_mask[None, :]
    if not eligible.any(axis=1).all():
        raise EmulatorDataError("training_batch: a row has no known target value")
    scores = np.where(eligible, rng.random((b, c)), -1.0)
    target = scores.argmax(axis=1)
    x0 = z[rows, target]
    context = known.copy()
    context[rows, target] = False
    if label_free_fraction > 0 and (~target_mask).any():
        free = context & ~target_mask[None, :]
        use = (rng.random(b) < label_free_fraction) & free.any(axis=1)
        context = np.where(use[:, None], free, context)
    available = context.sum(axis=1)
    low = np.minimum(min_context, available)
    length = rng.integers(low, available + 1)
    full = rng.random(b) < full_context_fraction
    length = np.where(full, available, length)
    order = np.where(context, rng.random((b, c)), 2.0).argsort(axis=1).argsort(axis=1)
    keep = context & (order < length[:, None])
    values = np.where(keep, z, 0.0).astype(np.float32)
    return values, keep, target.astype(np.int64), x0.astype(np.float32)


# --------------------------------------------------------------------------- training
def _check_targets(table: EmulatorTable, targets: Sequence[str] | None) -> list[str]:
    chosen = list(targets) if targets is not None else list(table.labels or table.columns)
    unknown = [t for t in chosen if t not in table.columns]
    if unknown:
        raise EmulatorConfigError(
            f"targets {unknown} are not columns of the table {list(table.columns)}"
        )
    if not chosen:
        raise EmulatorConfigError("no target column: give the table labels or set targets")
    return chosen


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - decay)


def _finite_or_raise(value: float, what: str, epoch: int) -> None:
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"emulator training diverged: {what} is {value} in epoch {epoch}; nothing was "
            "returned or registered. Lower lr (now see TrainConfig.lr), check the table for "
            "extreme values, or try another seed"
        )


def _task_losses(
    model: PropertyEmulator,
    z: np.ndarray,
    target_mask: np.ndarray,
    rng: np.random.Generator,
    cfg: TrainConfig,
    device: str,
    gen: torch.Generator,
    repeats: int,
) -> dict[str, torch.Tensor]:
    """Draw one task per row of ``z`` (:func:`training_batch`) and return the model's losses."""
    values, known, target, x0 = training_batch(
        z,
        target_mask,
        rng,
        min_context=cfg.min_context,
        full_context_fraction=cfg.full_context_fraction,
        label_free_fraction=cfg.label_free_fraction,
    )
    return model.losses(
        torch.from_numpy(values).to(device),
        torch.from_numpy(known).to(device),
        torch.from_numpy(target).to(device),
        torch.from_numpy(x0).to(device),
        repeats=repeats,
        generator=gen,
    )


def _score(
    model: PropertyEmulator,
    z: np.ndarray,
    target_mask: np.ndarray,
    cfg: TrainConfig,
    device: str,
) -> dict[str, float]:
    """Held-out losses on tasks from a fixed seed (the same tasks every epoch)."""
    rng = np.random.default_rng(cfg.seed + 7919)
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    model.eval()
    totals = {"diffusion": 0.0, "gaussian": 0.0}
    n = 0
    with torch.no_grad():
        for start in range(0, len(z), cfg.batch_size):
            chunk = z[start : start + cfg.batch_size]
            losses = _task_losses(
                model, chunk, target_mask, rng, cfg, device, gen, max(cfg.diffusion_repeats, 8)
            )
            for k in totals:
                totals[k] += float(losses[k]) * len(chunk)
            n += len(chunk)
    return {k: v / max(n, 1) for k, v in totals.items()}


def train_emulator(
    table: EmulatorTable,
    config: TrainConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train an emulator on ``table`` (see the module docstring); ``progress`` gets each
    epoch's record (epoch, losses, seconds)."""
    cfg = config or TrainConfig()
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    targets = _check_targets(table, cfg.targets)
    columns = list(table.columns)
    ids = table.object_ids
    is_val = split_rows(ids, cfg.val_fraction)
    raw = table.values(columns)
    tmask = np.isin(np.asarray(columns), targets)
    has_target = np.isfinite(raw[:, tmask]).any(axis=1)
    skipped = {"no_target": int((~has_target).sum())}
    if skipped["no_target"]:
        log.info("%d rows have no known target value; not used", skipped["no_target"])
    is_eval = is_val & split_held_out(ids)
    train_rows = np.flatnonzero(~is_val & has_target)
    stop_rows = np.flatnonzero(is_val & ~is_eval & has_target)
    eval_rows = np.flatnonzero(is_eval & has_target)
    if len(train_rows) < 2 or len(stop_rows) < 1 or len(eval_rows) < 1:
        raise EmulatorDataError(
            f"{table.source}: {len(train_rows)} training and {len(stop_rows) + len(eval_rows)} "
            f"held-out rows with a known target (of {len(table)}; the held-out rows are halved "
            f"into {len(stop_rows)} for early stopping and {len(eval_rows)} for evaluation, and "
            "each half needs one); the emulator needs more rows with labels"
        )
    # each label is scored on the evaluation half after training: refuse now, not after the run
    known = np.isfinite(raw[:, tmask])
    for j, label in enumerate(np.asarray(columns)[tmask].tolist()):
        if known[:, j].any() and not known[is_eval, j].any():
            raise EmulatorDataError(
                f"label {label!r} is known for {int(known[:, j].sum())} galaxies, none of them "
                f"in the evaluation half of the held-out split (val_fraction "
                f"{cfg.val_fraction}; {int(known[is_val, j].sum())} in the held-out split), so "
                f"it could not be evaluated after training: give more galaxies with a known "
                f"{label!r}, raise val_fraction, or leave it out of the labels"
            )
    tokenizer = Tokenizer.fit(
        {c: raw[train_rows, j] for j, c in enumerate(columns)},
        columns,
        source=f"{table.source} (training rows)",
    )
    model_cfg = new_config(tokenizer, targets, features=table.features, **cfg.model)
    device = cfg.device
    model = PropertyEmulator(model_cfg).to(device)
    ema = PropertyEmulator(model_cfg).to(device)  # the weights that are scored and kept
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    n_steps = 0
    z = tokenizer.standardize(raw).astype(np.float32)
    z_train, z_val = z[train_rows], z[stop_rows]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    # Cosine decay over the epochs that will run. Under a time budget that is fewer than
    # cfg.epochs: after the first epoch the horizon shrinks to what the budget allows, so
    # the rate still anneals (stopping at a high rate leaves posteriors off-centre).
    horizon = [cfg.epochs * steps_per_epoch]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step / horizon[0], 1.0)))
    )
    history: list[dict[str, float]] = []
    best_val, best_epoch, best_state = math.inf, 0, _state_copy(ema)
    stop_reason = f"ran all {cfg.epochs} epochs"
    rows_seen, train_seconds = 0, 0.0
    log.info(
        "training emulator: %d train / %d held-out rows (%d early stopping, %d evaluation), "
        "%d columns, targets %s, %d parameters",
        len(train_rows),
        len(stop_rows) + len(eval_rows),
        len(stop_rows),
        len(eval_rows),
        len(columns),
        targets,
        count_parameters(model),
    )
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = rng.permutation(len(z_train))
        sums = {"diffusion": 0.0, "gaussian": 0.0}
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            losses = _task_losses(
                model, z_train[idx], tmask, rng, cfg, device, gen, cfg.diffusion_repeats
            )
            loss = losses["diffusion"] + cfg.baseline_weight * losses["gaussian"]
            _finite_or_raise(loss.item(), "the training loss", epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            _finite_or_raise(float(norm), "the gradient norm", epoch)
            opt.step()
            sched.step()
            n_steps += 1
            if cfg.ema_decay is None:
                ema.load_state_dict(model.state_dict())
            else:  # EMA with the usual warm-up: early averages do not remember the init
                _ema_update(ema, model, min(cfg.ema_decay, (1 + n_steps) / (10 + n_steps)))
            for k in sums:
                sums[k] += losses[k].item() * len(idx)
            rows_seen += len(idx)
        train_seconds += time.perf_counter() - t0
        val = _score(ema, z_val, tmask, cfg, device)
        _finite_or_raise(val["diffusion"], "the held-out loss", epoch)
        record = {
            "epoch": float(epoch),
            "train_diffusion": sums["diffusion"] / len(perm),
            "train_gaussian": sums["gaussian"] / len(perm),
            "val_diffusion": val["diffusion"],
            "val_gaussian": val["gaussian"],
            "lr": float(sched.get_last_lr()[0]),
            "seconds": time.perf_counter() - t_start,
        }
        history.append(record)
        if progress is not None:
            progress(record)
        if val["diffusion"] < best_val:
            best_val, best_epoch, best_state = val["diffusion"], epoch, _state_copy(ema)
        elif epoch - best_epoch >= cfg.patience:
            stop_reason = f"no held-out improvement for {cfg.patience} epochs"
            break
        elapsed = time.perf_counter() - t_start
        if cfg.time_budget_s is not None and epoch <= 3:  # re-estimated over 3 epochs
            fits = max(int((cfg.time_budget_s - elapsed) / (elapsed / epoch)), 0)
            horizon[0] = min(cfg.epochs, epoch + fits) * steps_per_epoch
        if epoch * steps_per_epoch >= horizon[0] and epoch < cfg.epochs:
            stop_reason = f"learning rate annealed within the {cfg.time_budget_s:.0f} s budget"
            break
        if cfg.time_budget_s is not None and elapsed > cfg.time_budget_s:
            stop_reason = f"time budget of {cfg.time_budget_s:.0f} s reached"
            break
    model = ema
    model.load_state_dict(best_state)
    model.requires_grad_(True)
    model.eval()
    log.info(
        "emulator: best epoch %d (%s), early-stopping loss %.4f", best_epoch, stop_reason, best_val
    )
    return TrainResult(
        model=model,
        train_config=cfg,
        history=history,
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        train_ids=ids[train_rows],
        stop_ids=ids[stop_rows],
        eval_ids=ids[eval_rows],
        skipped={**table.skipped, **skipped},
        seconds=time.perf_counter() - t_start,
        train_rows_seen=rows_seen,
        train_seconds=train_seconds,
    )


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class EmulatorRegistration:
    """What :func:`register_emulator` did: the run, the version, and the alias decision."""

    run_id: str
    version: int
    promoted: bool
    alias: str
    reason: str
    name: str = REGISTERED_NAME  # the registered model (a user table's has its own)


def register_emulator(
    tracker: Tracker,
    result: TrainResult,
    *,
    report: CalibrationReport | None = None,
    figures: Mapping[str, Any] | None = None,
    registered_name: str = REGISTERED_NAME,
    experiment: str = EXPERIMENT,
    alias: str = "champion",
    tolerance: float = 0.03,
    gate_labels: Sequence[str] | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    extra_params: Mapping[str, Any] | None = None,
) -> EmulatorRegistration:
    """Log ``result`` (params, per-epoch metrics, the model, and ``report``'s metrics, table
    and ``figures`` when given), register a version, and move ``alias`` only when
    ``report.gate(tolerance, labels=gate_labels)`` passes (no report: the alias does not
    move)."""
    model_params = {k: v for k, v in result.config.items() if k not in ("tokenizer", "features")}
    with tracker.start_run(experiment, run_name=run_name, tags=dict(tags or {})) as run:
        run.log_params(
            {
                "train": {k: v for k, v in asdict(result.train_config).items() if k != "model"},
                "model": model_params,
                "columns": ",".join(result.model.columns),
                **(extra_params or {}),
            }
        )
        for rec in result.history:
            run.log_metrics(
                {f"epoch/{k}": v for k, v in rec.items() if k != "epoch"}, step=int(rec["epoch"])
            )
        run.log_metrics(result.metrics)
        run.log_markdown(result.summary_markdown(), "summary.md")
        if report is not None:
            run.log_metrics(report.flat_metrics())
            run.log_text(report.frame().write_csv(), "tables/calibration.csv")
            run.log_markdown(report.markdown(), "calibration.md")
        for name, fig in (figures or {}).items():
            run.log_figure(fig, f"plots/{name}.png")
        path = log_emulator(run, result.model)
    version = tracker.register(run.run_id, path, registered_name)
    if report is None:
        promoted, reason = False, "no calibration report; the alias moves only after evaluation"
    else:
        gate = report.gate(tolerance=tolerance, labels=gate_labels)
        promoted, reason = gate.passed, gate.reason
        if promoted:
            tracker.set_alias(registered_name, alias, version)
    log.info(
        "%s v%d: %s (%s)", registered_name, version, "promoted" if promoted else "kept", reason
    )
    return EmulatorRegistration(run.run_id, version, promoted, alias, reason, registered_name)
