"""Training the search aligner on cached embeddings, and registering it in MLflow.

:func:`train_aligner` (no MLflow) → :class:`AlignmentResult`; :func:`register_aligner` logs
that result (all hyper-parameters, per-epoch metrics, lineage tags, a loss plot, the model as
state dict + config) and registers it as ``search-aligner`` with alias ``candidate``
(``champion`` moves only after ``search_evaluation`` passes).

The method (AION-Search): symmetric InfoNCE with a learned temperature; AdamW (no weight decay
on biases, norms and the temperature); linear warm-up then cosine decay to
``min_lr_ratio × learning_rate``, stepped per batch; gradient clipping; train / validation
split by a hash of ``object_id``; ``TrainConfig.select_by`` picks the kept checkpoint: the
last epoch by default (``aligned_model`` keeps that default), or the lowest validation loss;
validation recall@1/5/10 and median rank in both directions every epoch.

Each epoch, a galaxy with several captions contributes one of them, drawn at random (so no
batch holds two captions of one galaxy, which would be false negatives); validation always
uses each galaxy's first caption (its whole caption when sentence views are given, see
:func:`~galaxy_assets.alignment.data.caption_sentences`).

Identical texts of different galaxies in one batch ("A bar crosses the centre.", a
templated caption repeated word for word) are not negatives of each other: plain InfoNCE would
ask one text vector to pick each of their images over the others. Texts whose input vectors
have cosine ≥ ``TrainConfig.duplicate_text_threshold`` share their positives (the target row
spreads evenly over their images, and symmetrically); a batch without duplicates gets exactly
the plain loss. This matters most with sentence views, where a common sentence is drawn for
dozens of galaxies of one epoch.

The defaults (sentence views from ``caption_embeddings``, shared positives at cosine 0.999, 60
epochs × batch 256 at the time (80 epochs since, see below), a temperature learning at 0.05, the
last epoch kept) were chosen on the demo's mock survey (3,000 galaxies, 2,000 describer captions
and 4,411 sentence views; nDCG@10 of the primary phrasing through the search evaluation, mean of 3
seeds; ``benchmarks/RESULTS.md``, issue-5 section): against whole captions at 30 × 512 with the
best-validation-loss checkpoint, spirals 0.17 → 0.58, mergers 0.11 → 0.33, bars 0.19 → 0.46,
rings 0.05 → 0.07, but edge-on discs 0.76 → 0.68; lenses stay at 0 (one lens caption among 1,800
training galaxies). Why not the best validation loss: the whole-caption validation loss is
lowest after ~15-20 epochs (the text head then over-fits the captions), long before short
queries work (spirals 0.09 at that checkpoint, 0.58 at the last epoch); choosing by caption +
sentence loss (``"view_loss"``) stops as early and found mergers 0.11. Sentence views are what
makes short queries work: whole captions alone with the same schedule left spirals at 0.08.

With describer revision 4's captions (an appearance sentence each, so that captions of one kind
differ) the validation loss was still falling at epoch 60; 80 epochs gave, over three ensemble
seeds on the demo survey, mergers 0.61 → 0.69, lenses 0.87 → 0.94, bars 0.52 → 0.55, spirals
0.78 → 0.76 and own-caption text→image R@5 0.517 → 0.527, for a third more training time. 80 is
now ``TrainConfig.epochs``.

Training never touches pixels. Cost and memory:

* CPU, the graph's heads (``SEARCH_MODEL_CONFIG``: an ensemble of 4 head pairs, each from the
  ``small`` encoder's 256-d and MiniLM's 384-d vectors → 256 hidden, 2 blocks → 64 out; 1.85 M
  parameters in all): ~11 MFLOP per pair for forward + backward (6 × parameters). The ensemble
  on 5,000 synthetic captions, 80 epochs × batch 256, one thread, took 112.6 s
  (``benchmarks/bench_aligner.py``; ``benchmarks/RESULTS.md``).
* GPU, the paper's batch of 8192 with its 1024-wide heads: logits 8192² × 4 B = 256 MiB, ~1 GiB
  for the loss with its softmax and gradients; activations ~8192 × 1024 × 4 B × ~10 tensors ×
  2 heads ≈ 0.7 GiB; parameters + AdamW state ~20 MB. Under 3 GiB in all: any GPU fits it
  (``benchmarks/gpu_embed_align.py`` measures the peak).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from galaxy_assets.alignment.data import (
    MIN_PAIRS,
    MIN_VALIDATION,
    PairedData,
    prepare_pairs,
    split_by_object,
)
from galaxy_assets.alignment.errors import AlignmentError
from galaxy_assets.alignment.loss import contrastive_loss
from galaxy_assets.alignment.metrics import equivalent_caption_recall, retrieval_metrics
from galaxy_assets.alignment.model import (
    CODE_REF,
    REGISTERED_NAME,
    AlignedModel,
    AlignerConfig,
    build_from_config,
)

if TYPE_CHECKING:
    import polars as pl

    from galaxy_assets.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = [
    "PAPER_TRAIN_CONFIG",
    "AlignmentResult",
    "RegisteredAligner",
    "TrainConfig",
    "duplicate_text_mask",
    "lineage_of",
    "register_aligner",
    "shared_positive_loss",
    "train_aligner",
    "train_on_pairs",
]

EXPERIMENT = "search-aligner"
# how the kept checkpoint is chosen (TrainConfig.select_by)
SELECT_BY = ("caption_loss", "view_loss", "last")
VIEW_DUPLICATE_THRESHOLD = 0.999  # validation views with this cosine are the same text


@dataclass
class TrainConfig:
    """Optimisation settings (all logged as MLflow parameters).

    ``warmup_fraction`` of all steps warm the learning rate up linearly, then it follows a
    cosine to ``min_lr_ratio × learning_rate``. ``eval_max`` caps the validation galaxies
    used for the retrieval metrics (recall depends on the pool size, logged as
    ``retrieval_pool``). ``patience``: stop after this many epochs without a better validation
    loss (None: run all epochs). ``dtype`` bfloat16 autocasts the heads on a GPU (the loss
    stays float32). ``num_threads``: torch CPU threads while training (restored after; None
    leaves torch's setting). 1 by default: these small heads gain little from a second thread
    (×1.4 measured on 2 cores), while OpenMP threads spinning against other processes on a
    shared CPU made single epochs up to 30× slower (a 5k-caption run: 21 s with 1 thread,
    139 s with 2 on a loaded 2-core machine; see ``benchmarks/bench_aligner.py``).
    ``duplicate_text_threshold``: input texts of one batch with at least this cosine are the
    same text and share their positives (see the module docstring); None: plain InfoNCE.
    ``temperature_learning_rate``: the learning rate of the log logit scale (no weight decay,
    same schedule); None: ``learning_rate``. Adam moves a parameter by about its learning rate
    per step, so at 5e-4 a few hundred steps cannot move ``log(1/0.07)`` measurably (the demo's
    scale stayed at 14.3); at 0.05 it settles (~30 on the demo). ``select_by``: the kept
    checkpoint: ``"caption_loss"`` (lowest validation loss on whole captions), ``"view_loss"``
    (lowest mean of that and the text→image loss of the validation galaxies' sentence views) or
    ``"last"`` (the last epoch of the fixed schedule; ``patience`` then never stops early).
    ``caption_probability``: each epoch draws a galaxy's whole caption with this probability and
    one of its other texts otherwise; None: uniformly among all its texts.
    """

    epochs: int = 80  # 60 until describer revision 4: see the module doc
    batch_size: int = 256
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    val_fraction: float = 0.1
    min_validation: int = MIN_VALIDATION
    min_pairs: int = MIN_PAIRS
    split_salt: str = "aligner-v1"
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    eval_max: int = 5000
    patience: int | None = None
    num_threads: int | None = 1
    duplicate_text_threshold: float | None = 0.999
    temperature_learning_rate: float | None = 0.05
    select_by: str = "last"
    caption_probability: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 2,
            "learning_rate": self.learning_rate > 0,
            "weight_decay": self.weight_decay >= 0,
            "warmup_fraction": 0 <= self.warmup_fraction < 1,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "eval_max": self.eval_max >= 2,
            "patience": self.patience is None or self.patience >= 1,
            "num_threads": self.num_threads is None or self.num_threads >= 1,
            "duplicate_text_threshold": self.duplicate_text_threshold is None
            or 0.0 < self.duplicate_text_threshold <= 1.0,
            "temperature_learning_rate": self.temperature_learning_rate is None
            or self.temperature_learning_rate > 0,
            "select_by": self.select_by in SELECT_BY,
            "caption_probability": self.caption_probability is None
            or 0.0 <= self.caption_probability <= 1.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise AlignmentError(
                "aligner training settings out of range: "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise AlignmentError(
                f"unknown aligner training setting(s) {unknown}; known: "
                f"{sorted(cls.__dataclass_fields__)}"
            )
        return cls(**dict(data))


# The AION-Search paper's run (research/configs/baseline_original.yaml): batch 8192, lr 1e-4,
# weight decay 0.05, 50 epochs of which 10 warm-up, gradient clip 1.0, 80/20 split.
PAPER_TRAIN_CONFIG: dict[str, Any] = {
    "epochs": 50,
    "batch_size": 8192,
    "learning_rate": 1e-4,
    "weight_decay": 0.05,
    "warmup_fraction": 0.2,
    "min_lr_ratio": 0.005,
    "grad_clip": 1.0,
    "val_fraction": 0.2,
    "device": "cuda",
    "dtype": "bfloat16",
    # the paper's temperature shares the learning rate, its checkpoint is the best validation
    # loss, and a batch's texts are all negatives of each other
    "temperature_learning_rate": None,
    "select_by": "caption_loss",
    "duplicate_text_threshold": None,
}


@dataclass
class AlignmentResult:
    """What :func:`train_aligner` produced: the best model and everything to log about it."""

    model: AlignedModel
    model_config: AlignerConfig
    train_config: TrainConfig
    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float]  # validation metrics at the best epoch
    data: dict[str, Any]  # counts: pairs, galaxies, skipped captions…
    lineage: dict[str, str]
    seconds: float
    train_pairs_per_second: float

    def summary(self) -> dict[str, Any]:
        """Flat facts for logs and Dagster metadata."""
        return {
            "best_epoch": self.best_epoch,
            **{f"val_{k}": round(v, 4) for k, v in self.best.items()},
            **{k: v for k, v in self.data.items() if not isinstance(v, list)},
            "seconds": round(self.seconds, 2),
            "train_pairs_per_second": round(self.train_pairs_per_second, 1),
            **self.lineage,
        }


def lineage_of(pairs: PairedData) -> dict[str, str]:
    """The lineage tags of a training set (caption prompt and model, embedder and encoder)."""
    from galaxy_assets.embedding.image import encoder_version

    return {
        "caption_prompt_sha": ",".join(pairs.prompt_shas) or "unknown",
        "caption_model": ",".join(pairs.caption_models) or "unknown",
        "text_embedder": pairs.text_embedder,
        "image_encoder": pairs.image_encoder,
        "image_encoder_version": encoder_version(pairs.image_encoder),
        "training_rows": str(pairs.n_captions),
        "training_objects": str(pairs.n_objects),
    }


def _lr_lambda(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def duplicate_text_mask(text: torch.Tensor, threshold: float | None) -> torch.Tensor | None:
    """(B, B) bool: which input texts of a batch are the same text (cosine ≥ ``threshold``),
    the diagonal included; None when ``threshold`` is None or no two texts are the same."""
    if threshold is None or text.shape[0] < 2:
        return None
    t = torch.nn.functional.normalize(text.float(), dim=-1)
    same = (t @ t.T) >= float(threshold)
    same.fill_diagonal_(True)
    if int(same.sum()) == same.shape[0]:
        return None
    return same


def shared_positive_loss(
    image_raw: torch.Tensor,
    text_raw: torch.Tensor,
    scale: torch.Tensor | float,
    same_text: torch.Tensor | None,
    dims: list[int] | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE where texts marked equal in ``same_text`` share their positives: the
    target distribution of row i spreads evenly over the images of every text equal to text i
    (and the same for the image→text direction). ``same_text=None`` is exactly
    :func:`~galaxy_assets.alignment.loss.contrastive_loss`. ``dims``: Matryoshka widths."""
    if same_text is None:
        return contrastive_loss(image_raw, text_raw, scale, dims)
    target = same_text.float()
    target = target / target.sum(dim=1, keepdim=True)
    full = int(image_raw.shape[-1])
    losses = []
    for d in sorted({int(x) for x in dims}) if dims else [full]:
        zi = torch.nn.functional.normalize(image_raw[:, :d].float(), dim=-1)
        zt = torch.nn.functional.normalize(text_raw[:, :d].float(), dim=-1)
        logits = scale * (zi @ zt.T)
        losses.append(
            0.5
            * (
                torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits.T, target)
            )
        )
    return torch.stack(losses).mean()


def _param_groups(
    model: AlignedModel, weight_decay: float, temperature_lr: float | None = None
) -> list[dict[str, Any]]:
    """Weights with decay; biases and norms without; the logit scale without decay and, when
    ``temperature_lr`` is given, at that learning rate (the schedule scales it like the rest)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name == "logit_scale" and temperature_lr is not None:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)  # biases, norms, logit_scale: no decay
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if temperature_lr is not None:
        groups.append({"params": [model.logit_scale], "weight_decay": 0.0, "lr": temperature_lr})
    return groups


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


@contextlib.contextmanager
def _seeded_rng(seed: int, device: str) -> Iterator[None]:
    """Torch's global generators (CPU, and the training GPU) seeded with ``seed`` for the block
    and restored afterwards: dropout draws from them, so the same seed gives the same model
    whatever the caller drew before, and the caller's random state is left as it was."""
    devices = []
    if device.startswith("cuda"):
        devices = [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _autocast(device: str, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


@torch.no_grad()
def _validate(
    model: AlignedModel,
    image: torch.Tensor,
    text: torch.Tensor,
    batch_size: int,
    dims: list[int] | None,
    eval_max: int,
    device: str,
    dtype: torch.dtype,
) -> dict[str, float]:
    model.eval()
    n = image.shape[0]
    bs = min(batch_size, n)
    total, weight = 0.0, 0
    zi_all, zt_all = [], []
    for s in range(0, n, bs):
        xi, xt = image[s : s + bs].to(device), text[s : s + bs].to(device)
        with _autocast(device, dtype):
            ri, rt, scale = model(xi, xt)
        if xi.shape[0] >= 2:
            loss = contrastive_loss(ri, rt, scale, dims)
            total += float(loss) * xi.shape[0]
            weight += xi.shape[0]
        if s < eval_max:
            zi_all.append(torch.nn.functional.normalize(ri.float(), dim=-1))
            zt_all.append(torch.nn.functional.normalize(rt.float(), dim=-1))
    zi = torch.cat(zi_all)[:eval_max]
    zt = torch.cat(zt_all)[:eval_max]
    metrics = retrieval_metrics(zi, zt)
    metrics.update(equivalent_caption_recall(zt, zi, text[: zt.shape[0]]))
    metrics["loss"] = total / max(weight, 1)
    return metrics


def _draw_texts(
    starts: torch.Tensor,
    counts: torch.Tensor,
    caption_probability: float | None,
    gen: torch.Generator,
) -> torch.Tensor:
    """One text row per galaxy: uniform over its texts, or (``caption_probability`` given) its
    first, whole caption with that probability and otherwise one of its other texts."""
    u = torch.rand(starts.shape[0], generator=gen)
    if caption_probability is None:
        return starts + (u * counts).long().clamp_max(counts - 1)
    others = (counts - 1).clamp_min(1)
    other = 1 + (torch.rand(starts.shape[0], generator=gen) * others).long().clamp_max(others - 1)
    use_caption = (u < caption_probability) | (counts == 1)
    return starts + torch.where(use_caption, torch.zeros_like(other), other)


def _criterion(row: Mapping[str, float], select_by: str) -> float:
    """The number the kept checkpoint minimises (see ``TrainConfig.select_by``)."""
    if select_by == "last":
        return -row["epoch"]
    if select_by == "view_loss" and "val_view_loss" in row:
        return 0.5 * (row["val_loss"] + row["val_view_loss"])
    return row["val_loss"]


@torch.no_grad()
def _validate_views(
    model: AlignedModel,
    image: torch.Tensor,
    views: torch.Tensor,
    target: torch.Tensor,
    device: str,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Text→image loss and recall@5 of the validation galaxies' extra texts (sentence views)
    against the validation galaxies' images; ``target`` (n_views, n_images) marks every galaxy
    that has the same text (a generic sentence fits many galaxies), spread evenly."""
    model.eval()
    with _autocast(device, dtype):
        ri, rv, scale = model(image.to(device), views.to(device))
    zi = torch.nn.functional.normalize(ri.float(), dim=-1)
    zv = torch.nn.functional.normalize(rv.float(), dim=-1)
    logits = scale.float() * (zv @ zi.T)
    tgt = target.to(logits.device)
    loss = -(tgt / tgt.sum(dim=1, keepdim=True) * logits.log_softmax(dim=1)).sum(dim=1).mean()
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit = torch.gather(tgt > 0, 1, top).any(dim=1).float().mean()
    return {"view_loss": float(loss), "view_t2i_recall_at_5": float(hit)}


VIEW_TARGET_BLOCK = 1024  # views compared at once in _view_targets


def _view_targets(
    pairs: PairedData, val_obj: np.ndarray, threshold: float = VIEW_DUPLICATE_THRESHOLD
) -> tuple[np.ndarray, torch.Tensor]:
    """The rows of the validation galaxies' texts other than their first (whole) caption, and
    for each the validation galaxies holding the same text ((n_views, n_val) float 0/1)."""
    counts = pairs.caption_count[val_obj]
    extra = np.maximum(counts - 1, 0)
    starts = pairs.caption_start[val_obj]
    rows = np.concatenate(
        [np.arange(s + 1, s + c, dtype=np.int64) for s, c in zip(starts, counts, strict=True)]
        or [np.zeros(0, np.int64)]
    )
    owner = np.repeat(np.arange(len(val_obj)), extra)
    if rows.size == 0:
        return rows, torch.zeros((0, len(val_obj)))
    v = torch.nn.functional.normalize(torch.from_numpy(pairs.text[rows]).float(), dim=-1)
    owner_t = torch.from_numpy(owner)
    target = torch.zeros((len(rows), len(val_obj)))
    # in blocks of views: the views × views similarity would be n_views² floats at once
    for s in range(0, len(rows), VIEW_TARGET_BLOCK):
        same = ((v[s : s + VIEW_TARGET_BLOCK] @ v.T) >= threshold).float()
        hits = torch.zeros((same.shape[0], len(val_obj)))
        hits.index_add_(1, owner_t, same)
        target[s : s + VIEW_TARGET_BLOCK] = (hits > 0).float()
    return rows, target


def train_aligner(
    image_embeddings: pl.DataFrame | pl.LazyFrame,
    caption_embeddings: pl.DataFrame | pl.LazyFrame,
    *,
    model_config: Mapping[str, Any] | None = None,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
    expected_image_encoder: str | None = None,
    expected_text_embedder: str | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> AlignmentResult:
    """Train image and text heads on cached vectors; returns the best checkpoint.

    ``image_embeddings`` (every shard; a lazy frame is fine: only captioned galaxies are
    collected) and ``caption_embeddings`` are joined by :func:`prepare_pairs`, then
    :func:`train_on_pairs` trains. ``model_config``: :class:`AlignerConfig` settings other than
    the input widths and ids, which come from the data (e.g. ``{"output_dim": 128,
    "matryoshka_dims": [32, 64]}``). ``expected_*``: the configured encoder / embedder ids;
    vectors made by others are an error. ``progress(epoch_metrics)`` is called every epoch.

    Raises :class:`AlignmentError` for too few captions, mixed or changed ids, and a loss that
    becomes non-finite (naming the epoch and step; nothing is returned, nothing registered).
    """
    tc = (
        train_config
        if isinstance(train_config, TrainConfig)
        else TrainConfig.from_dict(train_config or {})
    )
    t_start = time.perf_counter()
    pairs = prepare_pairs(
        image_embeddings,
        caption_embeddings,
        expected_image_encoder=expected_image_encoder,
        expected_text_embedder=expected_text_embedder,
        min_pairs=tc.min_pairs,
    )
    result = train_on_pairs(pairs, model_config=model_config, train_config=tc, progress=progress)
    result.seconds = time.perf_counter() - t_start
    return result


def train_on_pairs(
    pairs: PairedData,
    *,
    model_config: Mapping[str, Any] | None = None,
    train_config: TrainConfig | Mapping[str, Any] | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> AlignmentResult:
    """The training loop of :func:`train_aligner` on already-joined pairs (no polars needed:
    build pairs with :meth:`PairedData.from_arrays` for benchmarks)."""
    from galaxy_assets.runtime import RuntimeConfigError, select_device, select_dtype

    tc = (
        train_config
        if isinstance(train_config, TrainConfig)
        else TrainConfig.from_dict(train_config or {})
    )
    try:
        device = select_device(tc.device)
        amp_dtype = select_dtype(tc.dtype, device)
    except RuntimeConfigError as exc:
        raise AlignmentError(f"aligner training: {exc}") from None
    if pairs.n_objects < tc.min_pairs:
        raise AlignmentError(
            f"only {pairs.n_objects} paired galaxies; training needs at least {tc.min_pairs}"
        )
    with _torch_threads(tc.num_threads), _seeded_rng(tc.seed, device):
        t_start = time.perf_counter()
        overrides = dict(model_config or {})
        for fixed in ("image_dim", "text_dim", "image_encoder", "text_embedder"):
            if fixed in overrides:
                raise AlignmentError(
                    f"model_config sets {fixed!r}, which comes from the training data; remove it"
                )
        mc = AlignerConfig(
            image_dim=pairs.image_dim,
            text_dim=pairs.text_dim,
            image_encoder=pairs.image_encoder,
            text_embedder=pairs.text_embedder,
            **overrides,
        )
        if mc.n_members > 1:
            return _train_ensemble(pairs, mc, tc, progress, t_start, device, amp_dtype)

        is_val = split_by_object(
            pairs.object_ids, tc.val_fraction, min_validation=tc.min_validation, salt=tc.split_salt
        )
        train_obj = np.flatnonzero(~is_val)
        val_obj = np.flatnonzero(is_val)
        n_train, n_val = len(train_obj), len(val_obj)
        if n_train < 2:
            raise AlignmentError(f"only {n_train} training galaxies after the split; add captions")
        batch = min(tc.batch_size, n_train)
        steps_per_epoch = max(1, n_train // batch)  # drop the last partial batch
        total_steps = steps_per_epoch * tc.epochs
        warmup = int(round(tc.warmup_fraction * total_steps))

        on_device = device != "cpu"
        image_all = torch.from_numpy(pairs.image)
        text_all = torch.from_numpy(pairs.text)
        if on_device:
            image_all, text_all = image_all.to(device), text_all.to(device)
        val_caption = torch.from_numpy(pairs.caption_start[val_obj])
        val_image = image_all[torch.from_numpy(val_obj).to(image_all.device)]
        val_text = text_all[val_caption.to(text_all.device)]
        starts = torch.from_numpy(pairs.caption_start[train_obj])
        counts = torch.from_numpy(pairs.caption_count[train_obj])
        train_obj_t = torch.from_numpy(train_obj)
        # the view metrics use the first eval_max validation galaxies, as _validate does
        view_rows, view_target = _view_targets(pairs, val_obj[: tc.eval_max])
        val_views = text_all[torch.from_numpy(view_rows).to(text_all.device)]

        gen = torch.Generator().manual_seed(int(tc.seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(tc.seed))
            model = build_from_config(mc).to(device)
        opt = torch.optim.AdamW(
            _param_groups(model, tc.weight_decay, tc.temperature_learning_rate),
            lr=tc.learning_rate,
            betas=(0.9, 0.98),
            eps=1e-6,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, _lr_lambda(total_steps, warmup, tc.min_lr_ratio)
        )
        dims = mc.matryoshka_dims and mc.widths

        history: list[dict[str, float]] = []
        best_loss, best_epoch, best_state, best_metrics = math.inf, -1, None, {}
        train_seconds, seen, stale = 0.0, 0, 0
        log.info(
            "training the aligner: %d galaxies (%d captions) → %d train / %d validation, batch %d, "
            "%d steps, %s on %s",
            pairs.n_objects,
            pairs.n_captions,
            n_train,
            n_val,
            batch,
            total_steps,
            tc.dtype,
            device,
        )
        for epoch in range(1, tc.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            perm = torch.randperm(n_train, generator=gen)
            pick = _draw_texts(starts, counts, tc.caption_probability, gen)
            loss_sum, n_shared = 0.0, 0
            for step in range(steps_per_epoch):
                idx = perm[step * batch : (step + 1) * batch]
                xi = image_all[train_obj_t[idx].to(image_all.device)]
                xt = text_all[pick[idx].to(text_all.device)]
                with _autocast(device, amp_dtype):
                    ri, rt, scale = model(xi, xt)
                same = duplicate_text_mask(xt, tc.duplicate_text_threshold)
                n_shared += 0 if same is None else int(same.sum()) - same.shape[0]
                loss = shared_positive_loss(ri, rt, scale, same, dims)
                if not torch.isfinite(loss):
                    raise AlignmentError(
                        f"the aligner's loss became {float(loss.detach())} at epoch {epoch}, step {step + 1} "
                        f"(learning rate {sched.get_last_lr()[0]:.3g}); nothing was registered. "
                        "Lower train_config.learning_rate, keep grad_clip, or use float32"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt.step()
                sched.step()
                model.clamp_logit_scale_()
                loss_sum += float(loss.detach())
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            seen += steps_per_epoch * batch
            val = _validate(model, val_image, val_text, batch, dims, tc.eval_max, device, amp_dtype)
            if len(view_rows):
                val.update(
                    _validate_views(
                        model,
                        val_image[: tc.eval_max],
                        val_views,
                        view_target,
                        device,
                        amp_dtype,
                    )
                )
            if not math.isfinite(val["loss"]):
                raise AlignmentError(
                    f"the validation loss is {val['loss']} at epoch {epoch}; nothing was registered. "
                    "Lower train_config.learning_rate or use float32"
                )
            row = {
                "epoch": float(epoch),
                "train_loss": loss_sum / steps_per_epoch,
                "val_loss": val.pop("loss"),
                **{f"val_{k}": v for k, v in val.items()},
                "logit_scale": float(model.scale().detach()),
                "learning_rate": float(sched.get_last_lr()[0]),
                "epoch_seconds": epoch_seconds,
                "train_pairs_per_second": steps_per_epoch * batch / max(epoch_seconds, 1e-9),
                "shared_positive_pairs": float(n_shared),
            }
            history.append(row)
            if progress is not None:
                progress(row)
            log.info(
                "epoch %d/%d: train %.4f, val %.4f, i2t R@5 %.3f, t2i R@5 %.3f, scale %.1f (%.1f s)",
                epoch,
                tc.epochs,
                row["train_loss"],
                row["val_loss"],
                row["val_i2t_recall_at_5"],
                row["val_t2i_recall_at_5"],
                row["logit_scale"],
                epoch_seconds,
            )
            criterion = _criterion(row, tc.select_by)
            if criterion < best_loss:
                best_loss, best_epoch, stale = criterion, epoch, 0
                best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
                best_metrics = {
                    k.removeprefix("val_"): v for k, v in row.items() if k.startswith("val_")
                }
            else:
                stale += 1
                if tc.patience is not None and stale >= tc.patience:
                    log.info(
                        "no better validation %s for %d epochs: stopping at epoch %d",
                        tc.select_by,
                        stale,
                        epoch,
                    )
                    break

        assert best_state is not None
        model.load_state_dict(best_state)
        model = model.to("cpu").eval()
        data = {
            **pairs.report,
            "n_train_objects": n_train,
            "n_val_objects": n_val,
            "batch_size_effective": batch,
            "steps": steps_per_epoch * len(history),
            "epochs_run": len(history),
        }
        return AlignmentResult(
            model=model,
            model_config=mc,
            train_config=tc,
            history=history,
            best_epoch=best_epoch,
            best=best_metrics,
            data=data,
            lineage=lineage_of(pairs),
            seconds=time.perf_counter() - t_start,
            train_pairs_per_second=seen / max(train_seconds, 1e-9),
        )


def _train_ensemble(
    pairs: PairedData,
    mc: AlignerConfig,
    tc: TrainConfig,
    progress: Callable[[dict[str, float]], None] | None,
    t_start: float,
    device: str,
    amp_dtype: torch.dtype,
) -> AlignmentResult:
    """Train ``mc.n_members`` members alone (seeds ``tc.seed``, ``tc.seed + 1``, ...; the same
    split, which depends on the object ids only), then score the assembled ensemble on the
    validation galaxies. The history holds every member's epochs, each row with ``member``."""
    member = {
        k: v
        for k, v in mc.member().to_dict().items()
        if k not in ("image_dim", "text_dim", "image_encoder", "text_embedder")
    }
    results: list[AlignmentResult] = []
    for k in range(mc.n_members):
        log.info("aligner ensemble: member %d of %d (seed %d)", k + 1, mc.n_members, tc.seed + k)
        report = None if progress is None else (lambda row, k=k: progress({**row, "member": k}))
        results.append(
            train_on_pairs(
                pairs,
                model_config=member,
                train_config=replace(tc, seed=int(tc.seed) + k),
                progress=report,
            )
        )
    model = build_from_config(mc)
    for m, r in zip(model.members, results, strict=True):
        m.load_state_dict(r.model.state_dict())
    model = model.to(device).eval()
    is_val = split_by_object(
        pairs.object_ids, tc.val_fraction, min_validation=tc.min_validation, salt=tc.split_salt
    )
    val_obj = np.flatnonzero(is_val)
    image_all, text_all = torch.from_numpy(pairs.image), torch.from_numpy(pairs.text)
    val_image = image_all[torch.from_numpy(val_obj)]
    val_text = text_all[torch.from_numpy(pairs.caption_start[val_obj])]
    batch = min(tc.batch_size, max(2, int((~is_val).sum())))
    best = _validate(model, val_image, val_text, batch, None, tc.eval_max, device, amp_dtype)
    view_rows, view_target = _view_targets(pairs, val_obj[: tc.eval_max])
    if len(view_rows):
        val_views = text_all[torch.from_numpy(view_rows)]
        best.update(
            _validate_views(
                model, val_image[: tc.eval_max], val_views, view_target, device, amp_dtype
            )
        )
    model = model.to("cpu").eval()
    history = [{**row, "member": float(k)} for k, r in enumerate(results) for row in r.history]
    log.info(
        "aligner ensemble of %d: validation t2i R@5 %.3f (members %s)",
        mc.n_members,
        best.get("t2i_recall_at_5", math.nan),
        ", ".join(f"{r.best.get('t2i_recall_at_5', math.nan):.3f}" for r in results),
    )
    data = {
        **results[-1].data,
        "n_members": mc.n_members,
        "steps": sum(int(r.data["steps"]) for r in results),
        "epochs_run": sum(int(r.data["epochs_run"]) for r in results),
    }
    return AlignmentResult(
        model=model,
        model_config=mc,
        train_config=tc,
        history=history,
        best_epoch=results[-1].best_epoch,
        best=best,
        data=data,
        lineage=lineage_of(pairs),
        seconds=time.perf_counter() - t_start,
        train_pairs_per_second=float(np.mean([r.train_pairs_per_second for r in results])),
    )


@dataclass
class RegisteredAligner:
    """Where :func:`register_aligner` put the model."""

    name: str
    version: int
    alias: str
    run_id: str
    aligner_version: str  # "search-aligner/v3"
    metrics: dict[str, float] = field(default_factory=dict)


def _loss_figure(history: list[dict[str, float]]) -> Any:
    if history and "member" in history[-1]:  # an ensemble: the last member's curves
        history = [h for h in history if h.get("member") == history[-1]["member"]]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    epochs = [h["epoch"] for h in history]
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("InfoNCE loss")
    ax1.legend()
    for key, label in (
        ("val_i2t_recall_at_5", "image→text R@5"),
        ("val_t2i_recall_at_5", "text→image R@5"),
        ("val_i2t_recall_at_1", "image→text R@1"),
    ):
        ax2.plot(epochs, [h[key] for h in history], label=label)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(f"recall (pool {int(history[-1]['val_retrieval_pool'])})")
    ax2.legend()
    return fig


def register_aligner(
    result: AlignmentResult,
    tracker: Tracker,
    *,
    name: str = REGISTERED_NAME,
    alias: str = "candidate",
    experiment: str = EXPERIMENT,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    plot: bool = True,
) -> RegisteredAligner:
    """Log ``result`` to MLflow and register it as ``name`` with ``alias``.

    Parameters: every model and training setting plus the data counts. Metrics: every epoch's
    row (step = epoch) and ``best_val_loss`` / ``best_epoch`` / ``best_val_*``. Tags (run and
    model version): ``lineage.*`` (caption prompt_sha and model, text embedder id, image
    encoder id and version, training rows) and ``tags``. Sets ``result.model.aligner_version``.
    """
    lineage_tags = {f"lineage.{k}": v for k, v in result.lineage.items()}
    all_tags = {**lineage_tags, **{k: str(v) for k, v in (tags or {}).items()}}
    with tracker.start_run(experiment, run_name=run_name, tags=all_tags) as run:
        run.log_params(
            {
                "model": result.model_config.to_dict(),
                "train": result.train_config.to_dict(),
                "data": {k: v for k, v in result.data.items() if not isinstance(v, list)},
            }
        )
        for row in result.history:
            step = int(row["epoch"])
            prefix = f"member{int(row['member'])}_" if "member" in row else ""
            run.log_metrics(
                {f"{prefix}{k}": v for k, v in row.items() if k not in ("epoch", "member")},
                step=step,
            )
        final = {
            "best_val_loss": result.best.get("loss", float("nan")),
            "best_epoch": float(result.best_epoch),
            **{f"best_val_{k}": v for k, v in result.best.items() if k != "loss"},
            "train_seconds_total": result.seconds,
            "train_pairs_per_second": result.train_pairs_per_second,
        }
        run.log_metrics(final)
        if result.data.get("captions_without_image_sample"):
            run.log_dict(
                {"captions_without_image_sample": result.data["captions_without_image_sample"]},
                "data/skipped.json",
            )
        if plot and result.history:
            run.log_figure(_loss_figure(result.history), "plots/training.png")
        path = run.log_torch_model(
            "model", result.model.state_dict(), result.model_config.to_dict(), CODE_REF
        )
    version = tracker.register(
        run.run_id,
        path,
        name,
        tags=all_tags,
        description=(
            f"search aligner on {result.lineage['image_encoder']} × "
            f"{result.lineage['text_embedder']}, {result.lineage['training_rows']} captions"
        ),
    )
    tracker.set_alias(name, alias, version)
    aligner_version = f"{name}/v{version}"
    result.model.aligner_version = aligner_version
    log.info("registered %s (alias %s, run %s)", aligner_version, alias, run.run_id)
    return RegisteredAligner(
        name=name,
        version=version,
        alias=alias,
        run_id=run.run_id,
        aligner_version=aligner_version,
        metrics=final,
    )
