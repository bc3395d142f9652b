"""Train the morphology encoder on vote counts (the Zoobot recipe, sized for a CPU).

:func:`train_morphology` splits a :class:`VoteTable` by object_id hash, reads the pixels,
fits the per-band normalisation on training images, and trains with AdamW (linear warm-up,
cosine decay), augmentation (:mod:`.augment`) and the summed Dirichlet-Multinomial loss.
After every epoch it evaluates the held-out split (loss per question and the error of the
expected vote fractions) and keeps the best weights; it stops early after ``patience``
epochs without improvement, or at ``time_budget_s``. A non-finite loss, gradient or
held-out loss raises :class:`TrainingDiverged`: no model comes back, so none is registered.

:func:`register_encoder` logs a :class:`TrainResult` to MLflow (params, per-epoch metrics,
per-question losses, the predicted-vs-true plot, the model), registers a version and moves
the ``champion`` alias only when the new model's held-out loss beats the champion's on the
same held-out galaxies.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from galaxy_assets.morphology.augment import AugmentConfig, augment_batch
from galaxy_assets.morphology.data import SPLIT_SALT, VoteDataset, VoteTable, batch_indices
from galaxy_assets.morphology.decision_tree import DecisionTree
from galaxy_assets.morphology.errors import MorphologyError
from galaxy_assets.morphology.loss import (
    concentrations_from_logits,
    dirichlet_multinomial_nll,
    expected_fractions,
    observed_fractions,
    question_totals,
)
from galaxy_assets.morphology.model import (
    CODE_REF,
    DEFAULT_PRESET,
    MorphologyModel,
    build_from_config,
    build_model,
    count_parameters,
    fit_normalization,
    model_summary,
    preset_config,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from galaxy_assets.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = [
    "EncoderRegistration",
    "Evaluation",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "prepare_datasets",
    "register_encoder",
    "train_model",
    "train_morphology",
    "vote_fraction_figure",
]

REGISTERED_NAME = "morphology-encoder"
EXPERIMENT = "morphology-encoder"
ProgressCallback = Callable[[dict[str, Any]], None]

# Answers shown in the predicted-vs-true plot (question, answer, label).
PLOT_ANSWERS: tuple[tuple[str, str, str], ...] = (
    ("smooth-or-featured", "smooth", "smooth"),
    ("smooth-or-featured", "featured-or-disk", "featured"),
    ("disk-edge-on", "yes", "edge-on"),
    ("has-spiral-arms", "yes", "spiral"),
    ("bar", "no", "no bar"),
    ("merging", "none", "not merging"),
)


class TrainingDiverged(MorphologyError):
    """Training produced a non-finite loss or gradient; no model was returned."""


@dataclass
class TrainConfig:
    """Settings of one training run (JSON-able with :meth:`to_dict`).

    ``preset``: ``tiny`` | ``small`` | ``base`` or any timm name; ``epochs``: the maximum;
    ``patience``: epochs without held-out improvement before stopping (never before
    ``min_epochs``: early held-out losses are noisy while BatchNorm statistics settle);
    ``max_steps``: cap
    on optimizer steps (tests); ``time_budget_s``: stop after this many seconds of
    training (the best epoch so far is kept); ``device``: ``cpu``, ``cuda``, ``cuda:N``,
    ``mps`` or ``auto``; ``dtype``: ``float32``, ``bfloat16``, ``float16`` (autocast);
    ``init_checkpoint``: local timm/Zoobot backbone checkpoint (None: random init).
    """

    preset: str = DEFAULT_PRESET
    bands: tuple[str, ...] = ("g", "r", "i", "z")
    image_size: int = 64
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    patience: int = 3
    min_epochs: int = 4
    min_delta: float = 1e-3
    dropout: float = 0.2
    grad_clip: float = 5.0
    val_fraction: float = 0.2
    split_salt: str = SPLIT_SALT
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    eval_batch_size: int = 256
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_steps: int | None = None
    time_budget_s: float | None = None
    init_checkpoint: str | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MorphologyError(
                    f"morphology training: {name}={value!r}; it must be a whole number >= 1"
                )
        if not 0.0 < self.val_fraction < 1.0:
            raise MorphologyError(
                f"morphology training: val_fraction={self.val_fraction!r}; it must lie in (0, 1)"
            )
        if self.lr <= 0 or self.time_budget_s is not None and self.time_budget_s <= 0:
            raise MorphologyError(
                f"morphology training: lr={self.lr!r} and time_budget_s={self.time_budget_s!r} "
                "must be > 0 (time_budget_s may be None for no limit)"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bands"] = list(self.bands)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        data = dict(data)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise MorphologyError(f"unknown training settings {unknown}; known: {sorted(known)}")
        if "augment" in data and not isinstance(data["augment"], AugmentConfig):
            data["augment"] = AugmentConfig.from_dict(data["augment"])
        if "bands" in data:
            data["bands"] = tuple(data["bands"])
        return cls(**data)


@dataclass
class Evaluation:
    """Held-out metrics of a model on a :class:`VoteDataset`.

    ``loss``: mean over galaxies of the summed per-question NLL; ``question_loss``: mean NLL
    per question over the galaxies that had votes for it; ``vote_mae``: mean absolute error
    of expected vs observed vote fractions per question (galaxies with votes only);
    ``per_galaxy``: ``(N, n_questions)`` NLLs; ``expected``/``observed``: fractions.
    """

    loss: float
    question_loss: dict[str, float]
    vote_mae: dict[str, float]
    per_galaxy: np.ndarray
    expected: np.ndarray
    observed: np.ndarray
    totals: np.ndarray

    @property
    def mean_vote_mae(self) -> float:
        vals = [v for v in self.vote_mae.values() if math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan

    def metrics(self, prefix: str = "val_") -> dict[str, float]:
        out = {f"{prefix}loss": self.loss, f"{prefix}vote_mae": self.mean_vote_mae}
        out.update({f"{prefix}loss/{q}": v for q, v in self.question_loss.items()})
        out.update({f"{prefix}vote_mae/{q}": v for q, v in self.vote_mae.items()})
        return out


@dataclass
class TrainResult:
    """A trained encoder: best weights (CPU tensors), model config, history and metrics.

    ``metrics`` holds ``val_loss`` (the early-stopping criterion), ``val_loss/<question>``,
    ``val_vote_mae`` and ``val_vote_mae/<question>``, ``best_epoch``, ``epochs_run``,
    ``n_train``, ``n_val``, ``n_parameters``, ``train_seconds``, ``train_images_per_s``.
    ``figure`` plots predicted against observed held-out vote fractions.
    """

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    train_config: dict[str, Any]
    history: list[dict[str, float]]
    metrics: dict[str, float]
    figure: Figure | None
    val_fingerprint: str
    stopped_early: bool = False
    stop_reason: str = ""
    evaluation: Evaluation | None = None
    val_data: VoteDataset | None = field(default=None, repr=False)  # held-out set (in memory)

    def build_model(self, device: str = "cpu") -> MorphologyModel:
        """The trained model (eval mode) on ``device``."""
        model = build_from_config(self.config)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()

    def summary_markdown(self) -> str:
        m = self.metrics
        lines = [
            f"**held-out loss** {m['val_loss']:.4f} (sum over questions, per galaxy), "
            f"**vote-fraction MAE** {m['val_vote_mae']:.4f}, best epoch {int(m['best_epoch'])} "
            f"of {int(m['epochs_run'])} ({self.stop_reason}); {int(m['n_train'])} training / "
            f"{int(m['n_val'])} held-out galaxies; {int(m['n_parameters']):,} parameters; "
            f"{m['train_seconds']:.0f} s at {m['train_images_per_s']:.0f} images/s. The best "
            f"constant prediction scores {m.get('baseline_val_loss', math.nan):.4f}.",
            "",
            "| question | held-out NLL | vote-fraction MAE |",
            "|---|---:|---:|",
        ]
        for key in sorted(k for k in m if k.startswith("val_loss/")):
            q = key.split("/", 1)[1]
            lines.append(f"| {q} | {m[key]:.4f} | {m.get(f'val_vote_mae/{q}', math.nan):.4f} |")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- helpers
def resolve_device_dtype(device: str, dtype: str) -> tuple[str, torch.dtype]:
    from galaxy_assets.runtime import select_device, select_dtype

    dev = select_device(device)
    return dev, select_dtype(dtype, dev)


def autocast(device: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for ``dtype`` (nothing for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":", 1)[0], dtype=dtype)


def fingerprint(object_ids: np.ndarray) -> str:
    """Short hash of a set of object_ids (identifies a held-out split)."""
    h = hashlib.sha256("\n".join(sorted(map(str, object_ids))).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def evaluate(
    model: MorphologyModel,
    data: VoteDataset,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Evaluation:
    """Held-out loss and vote-fraction errors of ``model`` on ``data`` (eval mode)."""
    was_training = model.training
    model.eval()
    ranges = model.ranges
    per_gal, exp_all, obs_all, tot_all = [], [], [], []
    try:
        for idx in batch_indices(len(data), batch_size):
            x = data.images[idx].to(device, non_blocking=True)
            counts = data.counts[idx].to(device)
            with autocast(device, dtype):
                conc = model(x)
            conc = conc.float()
            per_gal.append(dirichlet_multinomial_nll(counts, conc, ranges).cpu())
            exp_all.append(expected_fractions(conc, ranges).cpu())
            obs_all.append(observed_fractions(counts, ranges).cpu())
            tot_all.append(question_totals(counts, ranges).cpu())
    finally:
        model.train(was_training)
    if not per_gal:
        raise MorphologyError("cannot evaluate on an empty held-out set")
    nll = torch.cat(per_gal).numpy()
    expected = torch.cat(exp_all).numpy()
    observed = torch.cat(obs_all).numpy()
    totals = torch.cat(tot_all).numpy()
    qloss: dict[str, float] = {}
    mae: dict[str, float] = {}
    for j, (q, (a, b)) in enumerate(zip(model.tree.question_names, ranges, strict=True)):
        answered = totals[:, j] > 0
        qloss[q] = float(nll[answered, j].mean()) if answered.any() else math.nan
        err = np.abs(expected[answered, a:b] - observed[answered, a:b])
        mae[q] = float(err.mean()) if answered.any() else math.nan
    return Evaluation(float(nll.sum(axis=1).mean()), qloss, mae, nll, expected, observed, totals)


def vote_fraction_figure(evaluation: Evaluation, tree: DecisionTree, title: str = "") -> Figure:
    """Predicted (expected) against observed held-out vote fractions for key answers."""
    from matplotlib.figure import Figure

    picks = [(q, a, lab) for q, a, lab in PLOT_ANSWERS if q in tree and a in tree[q].answers]
    if not picks:  # another tree: first answer of the first six questions
        picks = [(q.name, q.answers[0], f"{q.name}: {q.answers[0]}") for q in tree.questions[:6]]
    ncol = 3
    nrow = math.ceil(len(picks) / ncol)
    fig = Figure(figsize=(3.2 * ncol, 3.0 * nrow), layout="constrained")
    for k, (q, a, label) in enumerate(picks):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        col = tree.answer_index(q, a)
        j = tree.question_index(q)
        ok = evaluation.totals[:, j] >= 3
        x, y = evaluation.observed[ok, col], evaluation.expected[ok, col]
        ax.scatter(x, y, s=4, alpha=0.4, color="tab:blue", rasterized=True)
        ax.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls="--")
        mae = float(np.mean(np.abs(x - y))) if ok.any() else math.nan
        ax.set_title(f"{label} (n={int(ok.sum())}, MAE {mae:.3f})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("observed vote fraction", fontsize=8)
        ax.set_ylabel("predicted (expected)", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def fit_constant_logits(
    data: VoteDataset, low: float = 1.0, high: float = 101.0, max_galaxies: int = 2000
) -> torch.Tensor:
    """Head logits ``(n_answers,)`` of the best *constant* prediction: one concentration
    vector fitted by maximum likelihood (L-BFGS) to the votes of ``data``."""
    ranges = data.tree.answer_index_ranges()
    counts = data.counts[:max_galaxies].double()
    theta = torch.zeros(data.tree.n_answers, dtype=torch.float64, requires_grad=True)
    # the optimum often sits at the lower bound (sigmoid saturation): many iterations
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=300,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-11,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        conc = (low + (high - low) * torch.sigmoid(theta)).expand(len(counts), -1)
        loss = dirichlet_multinomial_nll(counts, conc, ranges).sum(dim=1).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach().float()


def constant_baseline(
    train: VoteDataset,
    val: VoteDataset,
    low: float = 1.0,
    high: float = 101.0,
    logits: torch.Tensor | None = None,
) -> float:
    """Held-out loss of the best constant prediction fitted on ``train`` (or of ``logits``).
    A model that does not beat it has learned nothing from the pixels."""
    theta = logits if logits is not None else fit_constant_logits(train, low, high)
    with torch.no_grad():
        conc = concentrations_from_logits(theta, low, high).expand(len(val), -1)
        ranges = val.tree.answer_index_ranges()
        return float(dirichlet_multinomial_nll(val.counts, conc, ranges).sum(dim=1).mean())


def prepare_datasets(
    votes: VoteTable,
    config: TrainConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[VoteDataset, VoteDataset]:
    """Split ``votes`` by object_id hash and read the pixels: ``(train, val)``."""
    train_votes, val_votes = votes.split(config.val_fraction, config.split_salt)
    total = len(votes)

    def prog(offset: int) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, _n: progress(offset + done, total)

    t0 = time.perf_counter()
    train = VoteDataset.from_votes(train_votes, config.bands, config.image_size, progress=prog(0))
    val = VoteDataset.from_votes(
        val_votes, config.bands, config.image_size, progress=prog(len(train_votes))
    )
    log.info("read %d + %d cutouts in %.1f s", len(train), len(val), time.perf_counter() - t0)
    return train, val


# --------------------------------------------------------------------------- training
def train_morphology(
    votes: VoteTable,
    config: TrainConfig | None = None,
    *,
    callback: ProgressCallback | None = None,
) -> TrainResult:
    """Split, read pixels and train; see :func:`train_model`."""
    config = config or TrainConfig()
    train, val = prepare_datasets(votes, config)
    return train_model(train, val, config, callback=callback)


def train_model(
    train: VoteDataset,
    val: VoteDataset,
    config: TrainConfig,
    *,
    callback: ProgressCallback | None = None,
    norm: dict[str, list[float]] | None = None,
) -> TrainResult:
    """Train a fresh model on ``train``, early-stopping on ``val``.

    ``callback`` gets one dict per epoch (``epoch``, ``step``, ``train_loss``, the held-out
    metrics of :meth:`Evaluation.metrics`, ``seconds``). ``norm`` overrides the per-band
    normalisation fitted on ``train`` (the scaling sweep shares one). Raises
    :class:`TrainingDiverged` on a non-finite loss or gradient.
    """
    if len(train) == 0 or len(val) == 0:
        raise MorphologyError(
            f"need labelled galaxies on both sides of the split (train {len(train)}, "
            f"held-out {len(val)}); label more galaxies or change val_fraction"
        )
    device, dtype = resolve_device_dtype(config.device, config.dtype)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    tree = train.tree
    crop = config.augment.crop
    mcfg = preset_config(
        config.preset,
        bands=config.bands,
        image_size=config.image_size,
        tree=tree,
        dropout=config.dropout,
        crop=crop,
    )
    mcfg.norm = norm or fit_normalization(train.images[: min(len(train), 512)].numpy())
    model = build_model(mcfg, seed=config.seed, checkpoint=config.init_checkpoint, device=device)
    # Start the head at the best constant prediction (the volunteers' average answer and
    # spread): otherwise the first hundreds of steps only learn the global concentration scale,
    # which small labelled sets cannot afford.
    prior = fit_constant_logits(train, mcfg.min_concentration, mcfg.max_concentration)
    with torch.no_grad():
        model.head[1].bias.copy_(prior.clamp(-6.0, 6.0))
        model.head[1].weight.mul_(0.1)
    n_params = count_parameters(model)
    ranges = model.ranges
    drop_last = len(train) > config.batch_size  # no tiny last batch (BatchNorm noise)
    steps_per_epoch = len(train) // config.batch_size if drop_last else 1
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    planned_steps, budget_cut = total_steps, False
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, total_steps - warmup)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    scaler = torch.amp.GradScaler(
        "cuda", enabled=(dtype == torch.float16 and device.startswith("cuda"))
    )
    gen = torch.Generator().manual_seed(config.seed)
    log.info(
        "training %s (%s, %s params) on %d galaxies, %d held out; %d epochs max, batch %d, "
        "lr %.3g, device %s %s",
        mcfg.backbone,
        mcfg.preset,
        f"{n_params:,}",
        len(train),
        len(val),
        config.epochs,
        config.batch_size,
        config.lr,
        device,
        config.dtype,
    )
    history: list[dict[str, float]] = []
    best_loss, best_state, best_epoch, best_eval = math.inf, None, -1, None
    bad_epochs, step, images_seen = 0, 0, 0
    stop_reason = "reached the epoch limit"
    stopped_early = False
    t_start = time.perf_counter()
    train_seconds = 0.0
    cuda_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)
        for epoch in range(config.epochs):
            model.train()
            t_epoch = time.perf_counter()
            running, n_batches, last_finite = 0.0, 0, math.nan
            for idx in batch_indices(
                len(train),
                config.batch_size,
                shuffle=True,
                generator=gen,
                drop_last=drop_last,
            ):
                if step >= total_steps:
                    break
                x = train.images[idx].to(device, non_blocking=True)
                x = augment_batch(x, config.augment, gen)  # on the device; draws from gen
                counts = train.counts[idx].to(device, non_blocking=True)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
                with autocast(device, dtype):
                    conc = model(x)
                loss = dirichlet_multinomial_nll(counts, conc.float(), ranges).sum(dim=1).mean()
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"training diverged at epoch {epoch + 1}, step {step + 1}: the loss is "
                        f"{loss.item()} (last finite batch loss {last_finite:.4g}, lr "
                        f"{lr_at(step):.3g}). Lower lr (now {config.lr}), use dtype float32, or "
                        "check the vote table for absurd counts; no model was returned"
                    )
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                if not torch.isfinite(gnorm) and not scaler.is_enabled():
                    raise TrainingDiverged(
                        f"training diverged at epoch {epoch + 1}, step {step + 1}: the gradient "
                        f"norm is {gnorm.item()}. Lower lr (now {config.lr}) or use float32; "
                        "no model was returned"
                    )
                try:
                    scaler.step(opt)
                except RuntimeError as exc:  # e.g. an update too large for float32
                    raise TrainingDiverged(
                        f"training diverged at epoch {epoch + 1}, step {step + 1}: the optimizer "
                        f"step failed ({exc}). Lower lr (now {config.lr}); no model was returned"
                    ) from exc
                scaler.update()
                last_finite = loss.item()
                running += last_finite
                n_batches += 1
                step += 1
                images_seen += len(idx)
            train_seconds += time.perf_counter() - t_epoch
            ev = evaluate(model, val, batch_size=config.eval_batch_size, device=device, dtype=dtype)
            if not math.isfinite(ev.loss):
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch + 1}: the held-out loss is {ev.loss}. "
                    f"Lower lr (now {config.lr}); no model was returned"
                )
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": running / max(n_batches, 1),
                "lr": lr_at(max(step - 1, 0)),
                "seconds": time.perf_counter() - t_start,
                **ev.metrics(),
            }
            history.append(record)
            log.info(
                "epoch %d: train %.3f, held-out %.3f, vote MAE %.4f (%.0f s)",
                epoch + 1,
                record["train_loss"],
                ev.loss,
                ev.mean_vote_mae,
                record["seconds"],
            )
            if callback is not None:
                callback(dict(record))
            if ev.loss < best_loss - config.min_delta:
                best_loss, best_epoch, best_eval, bad_epochs = ev.loss, epoch + 1, ev, 0
                best_state = {
                    k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()
                }
            else:
                bad_epochs += 1
            elapsed = time.perf_counter() - t_start
            if config.time_budget_s is not None and epoch < 3:
                # re-estimated over the first epochs: the cosine schedule ends where the budget
                # does, so a cut run keeps annealed weights (not ones at nearly the full lr)
                fits = max(int((config.time_budget_s - elapsed) / (elapsed / (epoch + 1))), 0)
                horizon = min(config.epochs, epoch + 1 + fits) * steps_per_epoch
                if horizon < planned_steps:
                    total_steps = max(horizon, step)
                    budget_cut = True
            if step >= total_steps and epoch + 1 < config.epochs:
                stop_reason = (
                    f"learning rate annealed within the {config.time_budget_s:.0f} s budget"
                    if budget_cut
                    else f"reached max_steps={total_steps}"
                )
                stopped_early = True
                break
            if bad_epochs >= config.patience and epoch + 1 >= config.min_epochs:
                stop_reason = f"no held-out improvement for {config.patience} epochs"
                stopped_early = True
                break
            if config.time_budget_s is not None and elapsed > config.time_budget_s:
                stop_reason, stopped_early = f"time budget {config.time_budget_s:.0f} s", True
                break
    assert best_state is not None and best_eval is not None
    metrics: dict[str, float] = {
        **best_eval.metrics(),
        "best_epoch": float(best_epoch),
        "epochs_run": float(len(history)),
        "steps": float(step),
        "n_train": float(len(train)),
        "n_val": float(len(val)),
        "n_parameters": float(n_params),
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - t_start,
        "train_images_per_s": images_seen / train_seconds if train_seconds > 0 else math.nan,
    }
    baseline = constant_baseline(
        train, val, mcfg.min_concentration, mcfg.max_concentration, logits=prior
    )
    metrics["baseline_val_loss"] = baseline
    metrics["val_loss_vs_baseline"] = best_loss / baseline if baseline > 0 else math.nan
    title = f"{mcfg.preset or mcfg.backbone}: held-out vote fractions (epoch {best_epoch})"
    figure = vote_fraction_figure(best_eval, tree, title)
    log.info("best held-out loss %.4f at epoch %d (%s)", best_loss, best_epoch, stop_reason)
    return TrainResult(
        state_dict=best_state,
        config=mcfg.to_dict(),
        train_config=config.to_dict(),
        history=history,
        metrics=metrics,
        figure=figure,
        val_fingerprint=fingerprint(val.object_ids),
        stopped_early=stopped_early,
        stop_reason=stop_reason,
        evaluation=best_eval,
        val_data=val,
    )


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class EncoderRegistration:
    """Outcome of :func:`register_encoder`."""

    run_id: str
    version: int
    promoted: bool
    alias: str
    candidate_loss: float
    champion_version: int | None
    champion_loss: float | None
    reason: str

    def metadata(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()}


def register_encoder(
    tracker: Tracker,
    result: TrainResult,
    *,
    val_data: VoteDataset | None = None,
    registered_name: str = REGISTERED_NAME,
    experiment: str = EXPERIMENT,
    alias: str = "champion",
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    extra_params: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> EncoderRegistration:
    """Log ``result`` as an MLflow run, register a version, and maybe move ``alias``.

    ``alias`` moves to the new version when there is no holder yet, or when the new model's
    held-out loss is lower than the holder's. The holder and the new model are both
    evaluated on ``val_data`` (default: the held-out set ``result`` was trained against,
    ``result.val_data``) in float32, so both losses are measured on the same galaxies the same
    way (a bfloat16 training run's own figure is not compared with a float32 one); when neither is available, the holder's logged
    ``val_loss`` is compared, which is only fair when its ``val_fingerprint`` tag matches (the
    reason says when it does not).
    """
    tags = {
        **(tags or {}),
        "val_fingerprint": result.val_fingerprint,
        "backbone": result.config["backbone"],
        "preset": str(result.config.get("preset")),
    }
    with tracker.start_run(experiment, run_name=run_name, tags=tags) as run:
        run.log_params(
            {
                "train": result.train_config,
                **(extra_params or {}),
                "model": {k: v for k, v in result.config.items() if k not in ("tree", "norm")},
            }
        )
        # per-epoch history as epoch/<metric>; unprefixed metrics describe the kept model
        for rec in result.history:
            run.log_metrics(
                {f"epoch/{k}": v for k, v in rec.items() if k not in ("epoch", "step")},
                step=int(rec["epoch"]),
            )
        run.log_metrics(result.metrics)
        if result.figure is not None:
            run.log_figure(result.figure, "plots/vote_fractions.png")
        run.log_markdown(result.summary_markdown(), "summary.md")
        run.log_dict(result.config, "model_config.json")
        path = run.log_torch_model("model", result.state_dict, result.config, CODE_REF)
    version = tracker.register(
        run.run_id,
        path,
        registered_name,
        tags={
            "val_loss": f"{result.metrics['val_loss']:.6f}",
            "val_fingerprint": result.val_fingerprint,
        },
    )
    val_data = val_data if val_data is not None else result.val_data
    candidate = float(result.metrics["val_loss"])
    current = tracker.get_alias_version(registered_name, alias)
    champ_v = int(current.version) if current is not None else None
    champ_loss: float | None = None
    if current is None:
        promote, reason = True, f"no {alias} yet"
    else:
        champ_fp = (current.tags or {}).get("val_fingerprint")
        if val_data is not None:
            champ_loss, note = _champion_loss_on(
                tracker, registered_name, champ_v, val_data, result, device
            )
            if note and champ_loss is not None and champ_fp != result.val_fingerprint:
                # a logged loss on other held-out galaxies says nothing about this one
                champ_loss, note = None, note.replace("; logged loss)", "") + (
                    ", and its logged loss is on other held-out galaxies)")
            if not note or fingerprint(val_data.object_ids) != result.val_fingerprint:
                # the champion was evaluated in float32 on val_data: measure the candidate the
                # same way (its training-time loss may come from bfloat16 autocast)
                candidate = evaluate(result.build_model(device), val_data, device=device).loss
        else:
            champ_loss = tracker.version_metric(registered_name, champ_v, "val_loss")
            note = (
                ""
                if champ_fp == result.val_fingerprint
                else (" (logged losses on different held-out sets)")
            )
        if champ_loss is None or not math.isfinite(champ_loss):
            # it cannot read these cutouts (other bands, size or decision tree), or it cannot
            # be loaded any more (a TrackingError: its artifacts are gone or no longer fit the
            # code; a passing registry hiccup raises instead): the new encoder, trained for
            # the survey as configured now, replaces it
            promote, reason = True, (
                f"{alias} v{champ_v} has no comparable held-out loss{note}; v{version} "
                "replaces it")
        elif candidate < champ_loss:
            promote = True
            reason = (
                f"held-out loss {candidate:.4f} beats {alias} v{champ_v}'s {champ_loss:.4f}{note}"
            )
        else:
            promote = False
            reason = (
                f"held-out loss {candidate:.4f} does not beat {alias} v{champ_v}'s "
                f"{champ_loss:.4f}{note}; {alias} stays"
            )
    if promote:
        tracker.set_alias(registered_name, alias, version)
    log.info("%s v%d: %s", registered_name, version, reason)
    return EncoderRegistration(
        run.run_id, version, promote, alias, candidate, champ_v, champ_loss, reason
    )


def _champion_loss_on(
    tracker: Tracker,
    name: str,
    version: int | None,
    val_data: VoteDataset,
    result: TrainResult,
    device: str,
) -> tuple[float | None, str]:
    """The champion's loss on ``val_data`` when it can read these cutouts; None when it reads
    other bands, another size or another decision tree; its logged loss when it cannot be
    loaded (the caller compares that only on the same held-out galaxies)."""
    from galaxy_assets.tracking import TrackingError

    try:
        champ, cfg = tracker.load_torch_model(name, version, device=device)
    except TrackingError as exc:
        log.warning("cannot load %s v%s to compare: %s", name, version, exc)
        return tracker.version_metric(
            name, version, "val_loss"
        ), " (champion not loadable; logged loss)"
    same_input = (
        list(cfg.get("bands", [])) == list(result.config["bands"])
        and cfg.get("image_size") == result.config["image_size"]
        and cfg.get("tree") == result.config["tree"]
    )
    if not same_input:
        # a loss summed over another tree's questions, or measured on other bands or another
        # size, is no yardstick: there is nothing to compare
        return None, (
            f" (it reads bands {cfg.get('bands')} at {cfg.get('image_size')} px"
            + (" with another decision tree" if cfg.get("tree") != result.config["tree"] else "")
            + f"; these cutouts are {result.config['bands']} at {result.config['image_size']} px)"
        )
    return evaluate(champ, val_data, device=device).loss, ""


def save_result(result: TrainResult, folder: str | Path) -> Path:
    """Write the result's model (state dict + config) to ``folder`` without MLflow."""
    from galaxy_assets.tracking import save_torch_model

    return save_torch_model(
        folder, result.state_dict, result.config, CODE_REF, extra={"metrics": result.metrics}
    )


def describe(result: TrainResult) -> dict[str, Any]:
    """Flat metadata of a result (for Dagster): metrics plus model facts."""
    model = result.build_model()
    return {
        **model_summary(model),
        **{k: float(v) for k, v in result.metrics.items()},
        "stop_reason": result.stop_reason,
        "val_fingerprint": result.val_fingerprint,
    }
