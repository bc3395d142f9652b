"""The morphology encoder: a timm backbone and a head of Dirichlet concentrations.

:class:`MorphologyModel` takes raw cutouts in survey units (nanomaggies, ``(N, B, H, W)``),
normalises them per band (arcsinh stretch at the noise level, then standardised; the
constants are fitted on training images and kept in the config), runs a timm backbone built
by name with ``in_chans = B`` and random weights, and maps the pooled features to one
concentration per answer of the decision tree, bounded to ``[1, 101]``.

* ``model(images)`` → concentrations ``(N, n_answers)``;
* ``model.encode(images)`` → pooled features ``(N, embedding_dim)`` (the image embedding the
  rest of the graph uses);
* ``model.expected_fractions(images)`` → expected vote fractions.

The whole model is described by a JSON-able config dict (:class:`ModelConfig`), so the
registry stores it as state dict + config and :func:`build_from_config` rebuilds it.
Three presets of one family (a ResNet-10-T at widths ×¼, ×½, ×1) serve the scaling sweep;
any timm name works (``convnext_atto``, ``efficientnet_b0``, ``resnet18``…).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from galaxy_assets.morphology.augment import center_crop
from galaxy_assets.morphology.decision_tree import DecisionTree, default_tree
from galaxy_assets.morphology.errors import MorphologyError
from galaxy_assets.morphology.loss import (
    MAX_CONCENTRATION,
    MIN_CONCENTRATION,
    concentrations_from_logits,
    expected_fractions,
)

log = logging.getLogger(__name__)

__all__ = [
    "CODE_REF",
    "DEFAULT_PRESET",
    "PRESETS",
    "CheckpointReport",
    "ModelConfig",
    "MorphologyModel",
    "build_from_config",
    "build_model",
    "count_parameters",
    "fit_normalization",
    "load_backbone_checkpoint",
    "preset_config",
]

CODE_REF = "galaxy_assets.morphology.model:build_from_config"

# One family at three widths (×¼, ×½, ×1 of resnet10t): parameters grow ~4× per step,
# depth and resolution stay fixed, as a parameter-scaling sweep wants. Costs at 64 px, 4 bands:
# tiny 0.32 M params / 23 MFLOPs, small 1.2 M / 45 MFLOPs, base 4.9 M / 180 MFLOPs per image.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "backbone": "resnet10t",
        "backbone_kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16},
    },
    "small": {
        "backbone": "resnet10t",
        "backbone_kwargs": {"channels": [32, 64, 128, 256], "stem_width": 16},
    },
    "base": {"backbone": "resnet10t", "backbone_kwargs": {}},
}
DEFAULT_PRESET = "small"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`MorphologyModel` (JSON-able via ``to_dict``).

    ``norm`` holds per-band ``softening`` (nanomaggies), ``mean`` and ``std`` of the arcsinh-
    stretched pixels; None means identity scaling until :func:`fit_normalization` fills it.
    ``tree`` is the decision tree as a dict (:meth:`DecisionTree.to_dict`).
    """

    backbone: str = PRESETS[DEFAULT_PRESET]["backbone"]
    backbone_kwargs: dict[str, Any] = field(
        default_factory=lambda: dict(PRESETS[DEFAULT_PRESET]["backbone_kwargs"])
    )
    bands: list[str] = field(default_factory=lambda: ["g", "r", "i", "z"])
    image_size: int = 64
    tree: dict[str, Any] = field(default_factory=lambda: default_tree().to_dict())
    dropout: float = 0.2
    min_concentration: float = MIN_CONCENTRATION
    max_concentration: float = MAX_CONCENTRATION
    norm: dict[str, list[float]] | None = None
    preset: str | None = DEFAULT_PRESET
    crop: int | None = None  # centre crop applied before the backbone (None: whole cutout)
    init_checkpoint: str | None = None  # provenance only; never re-read when rebuilding

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise MorphologyError(
                f"model config has unknown keys {unknown}; known keys are {sorted(known)} "
                "(was it written by a newer galaxy-assets?)"
            )
        cfg = cls(**{k: v for k, v in data.items()})
        cfg.bands = list(cfg.bands)
        cfg.backbone_kwargs = dict(cfg.backbone_kwargs or {})
        return cfg

    def decision_tree(self) -> DecisionTree:
        return DecisionTree.from_dict(self.tree, source="<model config>")


def preset_config(
    preset: str = DEFAULT_PRESET,
    *,
    bands: Sequence[str] = ("g", "r", "i", "z"),
    image_size: int = 64,
    tree: DecisionTree | None = None,
    **overrides: Any,
) -> ModelConfig:
    """A :class:`ModelConfig` for a preset (``tiny``, ``small``, ``base``) or a timm name.

    A name that is not a preset is used as the timm backbone name (``convnext_atto``…).
    """
    if preset in PRESETS:
        spec = PRESETS[preset]
        backbone, kwargs, name = spec["backbone"], dict(spec["backbone_kwargs"]), preset
    else:
        import timm

        if not timm.is_model(preset):
            raise MorphologyError(
                f"backbone {preset!r} is neither a preset ({', '.join(PRESETS)}) nor a timm "
                "model name; see timm.list_models() for names"
            )
        backbone, kwargs, name = preset, {}, None
    cfg = ModelConfig(
        backbone=backbone,
        backbone_kwargs=kwargs,
        bands=list(bands),
        image_size=int(image_size),
        tree=(tree or default_tree()).to_dict(),
        preset=name,
    )
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise MorphologyError(f"unknown model setting {key!r}")
        setattr(cfg, key, value)
    return cfg


# --------------------------------------------------------------------------- normalisation
class Normalizer(nn.Module):
    """``(asinh(x / softening_b) - mean_b) / std_b`` per band; non-finite pixels become 0."""

    def __init__(self, n_bands: int, norm: Mapping[str, Sequence[float]] | None) -> None:
        super().__init__()
        norm = norm or {}
        soft = norm.get("softening") or [1.0] * n_bands
        mean = norm.get("mean") or [0.0] * n_bands
        std = norm.get("std") or [1.0] * n_bands
        for name, values in (("softening", soft), ("mean", mean), ("std", std)):
            if len(values) != n_bands:
                raise MorphologyError(
                    f"normalisation {name!r} has {len(values)} values for {n_bands} bands"
                )
        shape = (1, n_bands, 1, 1)
        # not persistent: the constants live in the config, not in the state dict
        self.register_buffer(
            "softening", torch.tensor(soft, dtype=torch.float32).view(shape), persistent=False
        )
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nan_to_num(images.float(), nan=0.0, posinf=0.0, neginf=0.0)
        y = (x / self.softening).clamp_(-1e18, 1e18)  # keeps y² finite in float32
        # asinh(y) = sign(y)·log(|y| + sqrt(y² + 1)): 2-3× faster than torch.asinh on CPU
        a = y.abs()
        if y.requires_grad:  # out of place, so autograd can differentiate it
            return (torch.log(a + torch.sqrt(a * a + 1.0)).copysign(y) - self.mean) / self.std
        out = a.square().add_(1.0).sqrt_().add_(a).log_().copysign_(y)
        return out.sub_(self.mean).div_(self.std)


def fit_normalization(images: np.ndarray, *, max_images: int = 512) -> dict[str, list[float]]:
    """Per-band constants for :class:`Normalizer` from raw cutouts ``(N, B, H, W)``.

    ``softening`` is the background noise (1.4826 × MAD of the 4-pixel border, per band);
    ``mean``/``std`` standardise the stretched pixels.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise MorphologyError(
            f"need a non-empty (N, B, H, W) stack to fit the normalisation, got {images.shape}"
        )
    x = np.nan_to_num(
        np.asarray(images[:max_images], dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0
    )
    border = (
        np.concatenate(
            [
                x[:, :, :4, :].reshape(*x.shape[:2], -1),
                x[:, :, -4:, :].reshape(*x.shape[:2], -1),
                x[:, :, :, :4].reshape(*x.shape[:2], -1),
                x[:, :, :, -4:].reshape(*x.shape[:2], -1),
            ],
            axis=2,
        )
        .transpose(1, 0, 2)
        .reshape(x.shape[1], -1)
    )
    med = np.median(border, axis=1, keepdims=True)
    noise = 1.4826 * np.median(np.abs(border - med), axis=1)
    fallback = np.std(x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1), axis=1)
    soft = np.where(noise > 0, noise, np.where(fallback > 0, fallback, 1.0))
    y = np.arcsinh(x / soft[None, :, None, None])
    mean = y.mean(axis=(0, 2, 3))
    std = y.std(axis=(0, 2, 3))
    std = np.where(std > 0, std, 1.0)
    return {
        "softening": [float(v) for v in soft],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }


# --------------------------------------------------------------------------- the model
class MorphologyModel(nn.Module):
    """Normaliser → timm backbone (pooled features) → dropout → linear → concentrations."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        import timm

        self.config = config
        self.tree = config.decision_tree()
        self.ranges = self.tree.answer_index_ranges()
        n_bands = len(config.bands)
        if n_bands == 0:
            raise MorphologyError("model config lists no bands")
        self.normalize = Normalizer(n_bands, config.norm)
        try:
            self.backbone = timm.create_model(
                config.backbone,
                pretrained=False,
                in_chans=n_bands,
                num_classes=0,
                **dict(config.backbone_kwargs),
            )
        except (RuntimeError, TypeError, ValueError) as exc:
            raise MorphologyError(
                f"cannot build timm backbone {config.backbone!r} with "
                f"{config.backbone_kwargs}: {exc}; use a preset ({', '.join(PRESETS)}) or a "
                "name from timm.list_models()"
            ) from exc
        self.embedding_dim = int(self.backbone.num_features)
        self.head = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(self.embedding_dim, self.tree.n_answers)
        )

    def encode(self, images: torch.Tensor, *, normalized: bool = False) -> torch.Tensor:
        """Pooled backbone features ``(N, embedding_dim)`` of raw (or normalised) cutouts."""
        crop = self.config.crop
        if crop is not None and images.shape[-1] > crop:
            images = center_crop(images, crop)
        x = images if normalized else self.normalize(images)
        return self.backbone(x)

    def concentrations(self, features: torch.Tensor) -> torch.Tensor:
        """Concentrations ``(N, n_answers)`` in float32 from features."""
        return concentrations_from_logits(
            self.head(features), self.config.min_concentration, self.config.max_concentration
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.concentrations(self.encode(images))

    @torch.no_grad()
    def expected_fractions(self, images: torch.Tensor) -> torch.Tensor:
        """Expected vote fractions per answer (each question's fractions sum to 1)."""
        return expected_fractions(self(images), self.ranges)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def build_from_config(config: Mapping[str, Any] | ModelConfig) -> MorphologyModel:
    """Rebuild a model from its config dict (random weights; load a state dict next).

    This is the registry's loader reference (:data:`CODE_REF`). It never reads the
    ``init_checkpoint`` the config mentions.
    """
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    return MorphologyModel(cfg)


def build_model(
    config: ModelConfig | Mapping[str, Any],
    *,
    seed: int | None = 0,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
) -> MorphologyModel:
    """A fresh model: random init drawn from ``seed`` (the global RNG is left untouched),
    then, when ``checkpoint`` is given, backbone weights loaded from that local file."""
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
    if checkpoint is not None:
        cfg.init_checkpoint = str(checkpoint)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = MorphologyModel(cfg)
    if checkpoint is not None:
        load_backbone_checkpoint(model.backbone, checkpoint)
    return model.to(device)


# --------------------------------------------------------------------------- checkpoints
@dataclass
class CheckpointReport:
    """What :func:`load_backbone_checkpoint` did: keys loaded, missing from the checkpoint,
    unexpected in it, skipped for a shape mismatch, and input convolutions adapted to the
    number of bands."""

    path: str
    loaded: int
    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[str]
    adapted: list[str]
    prefix: str

    def summary(self) -> str:
        return (
            f"{self.path}: loaded {self.loaded} tensors (prefix {self.prefix!r} stripped), "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatch)} skipped for shape, {len(self.adapted)} input convs "
            "adapted to the band count"
        )


_PREFIXES = (
    "",
    "encoder.",
    "model.encoder.",
    "backbone.",
    "model.backbone.",
    "model.",
    "module.",
    "module.encoder.",
)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends
        raise MorphologyError(
            f"checkpoint {path} cannot be read with weights_only=True ({exc}); convert it to "
            "a plain state dict (torch.save(model.state_dict())) or .safetensors"
        ) from exc
    for key in ("state_dict", "model_state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise MorphologyError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_backbone_checkpoint(backbone: nn.Module, path: str | Path) -> CheckpointReport:
    """Load a local timm checkpoint (e.g. a Zoobot encoder) into ``backbone`` non-strictly.

    Accepts ``.safetensors`` or torch files (read with ``weights_only=True``; Lightning files'
    ``state_dict`` is unwrapped). The prefix (``encoder.``, ``model.``…) matching most keys is
    stripped; an input convolution trained on another number of channels (Zoobot's are
    greyscale or RGB) is adapted with timm's ``adapt_input_conv``; other shape mismatches are
    skipped. Missing and unexpected keys are logged and returned. Nothing is downloaded.
    """
    from timm.models import adapt_input_conv

    path = Path(path).expanduser()
    if not path.is_file():
        raise MorphologyError(
            f"checkpoint {path} does not exist; set the morphology encoder's init_checkpoint "
            "to a local timm/Zoobot checkpoint file, or leave it empty for random init"
        )
    raw = _read_state_dict(path)
    own = backbone.state_dict()
    best_prefix, best_hits = "", -1
    for prefix in _PREFIXES:
        hits = sum(1 for k in raw if k.startswith(prefix) and k[len(prefix) :] in own)
        if hits > best_hits:
            best_prefix, best_hits = prefix, hits
    if best_hits <= 0:
        raise MorphologyError(
            f"checkpoint {path} shares no parameter names with timm backbone "
            f"{type(backbone).__name__} (e.g. it has {list(raw)[:3]}, the backbone expects "
            f"{list(own)[:3]}); is it for another architecture? Set the backbone name to the "
            "one the checkpoint was trained with"
        )
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatch: list[str] = []
    adapted: list[str] = []
    for key, value in raw.items():
        if not key.startswith(best_prefix) or key[len(best_prefix) :] not in own:
            unexpected.append(key)
            continue
        name = key[len(best_prefix) :]
        target = own[name]
        if value.shape != target.shape:
            if (
                value.ndim == 4
                and target.ndim == 4
                and value.shape[0] == target.shape[0]
                and value.shape[2:] == target.shape[2:]
            ):
                value = adapt_input_conv(
                    int(target.shape[1]), value.float(), base_chans=int(value.shape[1])
                ).to(target.dtype)
                adapted.append(name)
            else:
                mismatch.append(f"{name} {tuple(value.shape)}→{tuple(target.shape)}")
                continue
        state[name] = value
    result = backbone.load_state_dict(state, strict=False)
    report = CheckpointReport(
        path=str(path),
        loaded=len(state),
        missing=list(result.missing_keys),
        unexpected=unexpected,
        shape_mismatch=mismatch,
        adapted=adapted,
        prefix=best_prefix,
    )
    log.info("backbone checkpoint %s", report.summary())
    if report.missing:
        log.warning(
            "checkpoint %s lacks %d backbone tensors (random init kept): %s",
            path,
            len(report.missing),
            report.missing[:8],
        )
    if report.unexpected:
        log.info(
            "checkpoint %s: %d tensors unused (e.g. a classifier head): %s",
            path,
            len(report.unexpected),
            report.unexpected[:8],
        )
    backbone.checkpoint_report = report  # type: ignore[attr-defined]
    return report


def model_summary(model: MorphologyModel) -> dict[str, Any]:
    """Flat facts about a model for logs and metadata."""
    cfg = model.config
    return {
        "backbone": cfg.backbone,
        "preset": cfg.preset,
        "bands": ",".join(cfg.bands),
        "image_size": cfg.image_size,
        "n_parameters": count_parameters(model),
        "embedding_dim": model.embedding_dim,
        "n_answers": model.tree.n_answers,
        "n_questions": len(model.tree),
        "tree": model.tree.name,
        "log10_parameters": round(math.log10(max(count_parameters(model), 1)), 3),
    }
