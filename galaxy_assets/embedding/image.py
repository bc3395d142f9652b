"""Image encoders: survey cutouts to unit vectors, and streaming a whole shard through one.

One protocol, :class:`ImageEncoder`, one class per backend:

* :class:`RegistryImageEncoder` — a model from the MLflow registry by name and alias (the
  default is ``morphology-encoder@champion``, trained by this graph); its ``encode`` method
  gives the pooled backbone features. Id: ``registry:morphology-encoder/v3``.
* :class:`TimmImageEncoder` — any timm backbone by name, its pooled features, weights from a
  local checkpoint file (Zoobot's published encoders are such files), random weights (for
  tests and baselines only) or timm's pretrained weights when asked for (which may download).
  Id: ``timm:<name>@<weights>/pp-<hash of the preprocessing>``.
* :class:`AionImageEncoder` — AION-1 through ``polymathic-aion`` (imported lazily): the image
  codec tokenises the cutout, the transformer encoder's output tokens are mean-pooled (768-d
  for AION-1-Base). Id: ``aion:<model>@<revision>/<survey>``.

:class:`ViewAveragedEncoder` wraps any of them for test-time augmentation: a galaxy's vector is
the mean of the base encoder's vectors over its cutout turned by 0, 90, 180 and 270 degrees
(``rot4``), or those and their mirror images (``d8``), so that where the survey's pixel grid
happens to put a galaxy's arms or tails no longer moves its vector. Id: the base id plus
``+rot4`` or ``+d8``.

:func:`build_image_encoder` builds one from a kind and its settings. Every encoder takes raw
cutouts ``(N, B, H, W)`` float32 in survey units (nanomaggies for the Legacy Survey), in the
order of its ``bands``, and returns ``(N, dim)`` float32 rows of unit L2 norm. A row whose
features cannot be normalised (zero or non-finite) comes back as NaN, so a caller can skip
that one galaxy; :func:`embed_shard` does so and counts it.

:func:`embed_shard` streams a shard through an encoder in batches, reading the next batch in a
background thread while the model runs, and returns ``object_id, encoder, vector``. Pixels are
never held for more than ``prefetch + 1`` batches; only the vectors accumulate.

Plain Python/PyTorch; knows nothing of Dagster. ``polymathic-aion`` is imported lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import polars as pl
    import torch

    from galaxy_assets.survey.base import CutoutReader
    from galaxy_assets.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = [
    "AION_BAND_PREFIX",
    "AION_IMAGE_SIZE",
    "AionImageEncoder",
    "EmbedStats",
    "ImageEncoder",
    "ImageEncoderError",
    "ModuleImageEncoder",
    "RegistryImageEncoder",
    "TTA_VIEWS",
    "TimmImageEncoder",
    "ViewAveragedEncoder",
    "aion_band_names",
    "build_image_encoder",
    "embed_shard",
    "encoder_version",
    "image_encoder_from_settings",
    "image_encoder_kind",
    "iter_shard_vectors",
    "manifest_vectors",
    "open_shard_for",
    "prepare_aion_flux",
    "registry_encoder_id",
    "split_tta",
    "unit_rows",
]


class ImageEncoderError(Exception):
    """An image encoder is misconfigured (missing model, checkpoint, package, band mismatch)
    or returned unusable output. The message names the setting to change."""


@runtime_checkable
class ImageEncoder(Protocol):
    """Embeds cutouts as unit vectors: ``encode(images (N, B, H, W))`` -> (N, dim) float32."""

    encoder_id: str  # backend + model + version, stored beside every vector
    dim: int
    bands: tuple[str, ...] | None  # the band order ``encode`` expects (None: any)
    image_size: int | None  # the cutout size it wants (larger ones are centre-cropped)
    batch_size: int

    def encode(self, images: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------- helpers
def unit_rows(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm; rows that are zero or non-finite become NaN."""
    import torch

    f = torch.as_tensor(features).detach().float()
    if f.ndim != 2:
        raise ImageEncoderError(f"encoder features have shape {tuple(f.shape)}; expected (N, dim)")
    norm = torch.linalg.vector_norm(f, dim=1, keepdim=True)
    good = torch.isfinite(norm) & (norm > 0)
    out = torch.where(good, f / torch.where(good, norm, torch.ones_like(norm)), torch.nan)
    return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)


def encoder_version(encoder_id: str) -> str:
    """The version part of an encoder id: ``registry:x/v3`` → ``3``, ``timm:x@abc/pp-…`` →
    ``abc``, ``aion:x@rev/survey`` → ``rev``; the whole id when there is no such part. Test-time
    views are appended (``registry:x/v3+rot4`` → ``3+rot4``): they change the vectors."""
    base, tta = split_tta(encoder_id)
    suffix = "" if tta == "none" else f"+{tta}"
    body = base.split(":", 1)[-1]
    if "@" in body:
        return body.split("@", 1)[1].split("/", 1)[0] + suffix
    if "/v" in body:
        return body.rsplit("/v", 1)[1] + suffix
    return encoder_id


def _as_images(images: np.ndarray, n_bands: int | None, where: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4:
        raise ImageEncoderError(
            f"{where}: images have shape {arr.shape}; expected (N, bands, H, W) cutouts"
        )
    if n_bands is not None and arr.shape[1] != n_bands:
        raise ImageEncoderError(
            f"{where}: images have {arr.shape[1]} bands but the encoder takes {n_bands}; open "
            "the shard with the encoder's bands (open_shard_for(encoder, uri))"
        )
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def center_crop_or_pad(x: torch.Tensor, size: int, *, pad: bool) -> torch.Tensor:
    """Centre-crop ``x`` (N, B, H, W) to ``size`` (offset ``(H - size) // 2``, as the readers
    crop); smaller cutouts are zero-padded symmetrically when ``pad``, else an error."""
    import torch.nn.functional as F

    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h > size or w > size:
        y0, x0 = max((h - size) // 2, 0), max((w - size) // 2, 0)
        x = x[..., y0 : y0 + min(size, h), x0 : x0 + min(size, w)]
        h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < size or w < size:
        if not pad:
            raise ImageEncoderError(
                f"cutouts are {h} × {w} px, smaller than the {size} px the encoder was "
                "trained on; use a survey with larger cutouts or an encoder trained at this size"
            )
        top, left = (size - h) // 2, (size - w) // 2
        x = F.pad(x, (left, size - w - left, top, size - h - top))
    return x


def _device_dtype(device: str, dtype: str, where: str) -> tuple[str, torch.dtype]:
    from galaxy_assets.runtime import RuntimeConfigError, select_device, select_dtype

    try:
        dev = select_device(device)
        return dev, select_dtype(dtype, dev)
    except RuntimeConfigError as exc:
        raise ImageEncoderError(f"{where}: {exc}") from None


def _autocast(device: str, dtype: torch.dtype):
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def _sha256_file(path: Path, n: int = 12) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def _check_batch_size(batch_size: int, where: str) -> int:
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ImageEncoderError(f"{where}.batch_size={batch_size}; it must be >= 1")
    return int(batch_size)


class _TorchEncoder:
    """Shared loop: chunks of ``batch_size``, to the device, autocast, unit rows."""

    encoder_id: str
    dim: int
    bands: tuple[str, ...] | None
    image_size: int | None
    batch_size: int
    device: str
    dtype: torch.dtype
    _where: str

    def _features(self, x: torch.Tensor) -> torch.Tensor:  # (n, B, H, W) on device → (n, D)
        raise NotImplementedError

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, dim) float32 unit rows for raw cutouts (N, B, H, W); NaN rows for galaxies whose
        features are zero or non-finite."""
        import torch

        arr = _as_images(images, len(self.bands) if self.bands else None, self._where)
        if arr.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        out = np.empty((arr.shape[0], self.dim), np.float32)
        pin = self.device.startswith("cuda")
        with torch.inference_mode():
            for s in range(0, arr.shape[0], self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(arr[s : s + self.batch_size]))
                if pin:
                    x = x.pin_memory()
                x = x.to(self.device, non_blocking=pin)
                with _autocast(self.device, self.dtype):
                    feats = self._features(x)
                if feats.ndim != 2 or feats.shape[1] != self.dim:
                    raise ImageEncoderError(
                        f"{self.encoder_id}: features of shape {tuple(feats.shape)}; expected "
                        f"(n, {self.dim})"
                    )
                out[s : s + x.shape[0]] = unit_rows(feats)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.encoder_id!r}, dim={self.dim}, device={self.device!r}, "
            f"batch_size={self.batch_size})"
        )


# --------------------------------------------------------------------------- registry
class ModuleImageEncoder(_TorchEncoder):
    """Any torch module with ``encode(images) -> (N, D)`` pooled features (a
    :class:`~galaxy_assets.morphology.model.MorphologyModel` in particular), under a given id.

    Larger cutouts are centre-cropped to ``image_size``; smaller ones are an error (the model
    never saw padded cutouts). :class:`RegistryImageEncoder` is this plus registry loading.
    """

    backend = "module"

    def __init__(
        self,
        module: Any,
        *,
        encoder_id: str,
        bands: Sequence[str] | None = None,
        image_size: int | None = None,
        dim: int | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 256,
    ) -> None:
        self._where = getattr(self, "_where", f"image_encoder ({encoder_id})")
        self.batch_size = _check_batch_size(batch_size, "image_encoder")
        self.device, self.dtype = _device_dtype(device, dtype, self._where)
        if not callable(getattr(module, "encode", None)):
            raise ImageEncoderError(
                f"{self._where}: {type(module).__name__} has no encode(images) method giving "
                "pooled features; register or pass an encoder model"
            )
        self.model = module.eval().to(self.device)
        self.encoder_id = encoder_id
        self.bands = tuple(str(b) for b in bands) if bands else None
        self.image_size = int(image_size) if image_size else None
        dim = dim or getattr(module, "embedding_dim", None)
        self.dim = int(dim) if dim else self._probe_dim()
        log.info("image encoder %s on %s (dim %d)", self.encoder_id, self.device, self.dim)

    def _probe_dim(self) -> int:
        import torch

        n_bands = len(self.bands) if self.bands else 1
        size = self.image_size or 64
        with torch.inference_mode():
            feats = self.model.encode(torch.zeros(1, n_bands, size, size, device=self.device))
        return int(feats.shape[-1])

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size is not None:
            x = center_crop_or_pad(x, self.image_size, pad=False)
        return self.model.encode(x)


class RegistryImageEncoder(ModuleImageEncoder):
    """A registered model's ``encode(images)`` features (default ``morphology-encoder@champion``).

    The alias is resolved once, at construction, so the id and the weights always agree:
    ``encoder_id = "registry:<name>/v<version>"``. The model is rebuilt through
    :meth:`galaxy_assets.tracking.Tracker.load_torch_artifact` (state dict + our loader, never a
    pickle). ``bands`` and ``image_size`` come from the model's config; larger cutouts are
    centre-cropped to ``image_size``, smaller ones are an error.
    """

    backend = "registry"

    def __init__(
        self,
        model_name: str = "morphology-encoder",
        alias: str | int = "champion",
        tracker: Tracker | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 256,
    ) -> None:
        from galaxy_assets.tracking import Tracker, TrackingError

        self._where = f"image_encoder (registry {model_name}@{alias})"
        dev, _ = _device_dtype(device, dtype, self._where)
        if tracker is None:
            from galaxy_assets.runtime import Home

            tracker = Tracker.from_home(Home.from_env())
        try:
            mv = tracker.resolve_version(model_name, alias)
            module, config = tracker.load_torch_artifact(
                mv.source, device=dev, what=f"{model_name} version {mv.version}"
            )
        except TrackingError as exc:
            raise ImageEncoderError(
                f"{self._where}: {exc}. Set image_encoder.model_name / alias to a registered "
                "model, or materialize morphology_encoder first"
            ) from exc
        self.config: dict[str, Any] = dict(config)
        self.model_name = model_name
        self.version = int(mv.version)
        self.run_id = mv.run_id
        super().__init__(
            module,
            encoder_id=registry_encoder_id(model_name, self.version),
            bands=config.get("bands"),
            image_size=config.get("image_size"),
            device=device,
            dtype=dtype,
            batch_size=batch_size,
        )


# --------------------------------------------------------------------------- timm
NORMALIZATIONS = ("asinh", "none")


def _asinh_noise_stretch(x: torch.Tensor) -> torch.Tensor:
    """``asinh(x / σ)`` per image and band, σ = 1.4826 × MAD of the 4-pixel border (the sky
    noise); non-finite pixels become 0. Survey-agnostic: no fitted constants."""
    import torch

    x = torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
    b = min(4, max(1, min(x.shape[-2], x.shape[-1]) // 4))
    border = torch.cat(
        [
            x[..., :b, :].flatten(2),
            x[..., -b:, :].flatten(2),
            x[..., :, :b].flatten(2),
            x[..., :, -b:].flatten(2),
        ],
        dim=2,
    )
    med = border.median(dim=2, keepdim=True).values
    sigma = 1.4826 * (border - med).abs().median(dim=2, keepdim=True).values
    fallback = x.flatten(2).std(dim=2, keepdim=True)
    sigma = torch.where(
        sigma > 0, sigma, torch.where(fallback > 0, fallback, torch.ones_like(sigma))
    )
    return torch.asinh(x / sigma.unsqueeze(-1))


class TimmImageEncoder(_TorchEncoder):
    """Pooled features of any timm backbone (``num_classes=0``).

    ``checkpoint``: a local ``.safetensors`` / torch state dict (read with ``weights_only``),
    loaded non-strictly with :func:`galaxy_assets.morphology.model.load_backbone_checkpoint`
    (prefixes stripped, the input convolution adapted to ``in_chans``: Zoobot's greyscale or
    RGB encoders work on 4 bands). Without a checkpoint the weights are random (drawn from
    ``seed``: useful as a baseline and in tests, never for search) unless ``pretrained=True``
    asks timm for its published weights (this may download; it is the opt-in).

    Preprocessing (part of the id): ``normalize="asinh"`` stretches each image and band as
    ``asinh(x / σ_sky)``; ``"none"`` passes survey units through. ``mean`` / ``std`` (one per
    band) then standardise. Cutouts are centre-cropped (or zero-padded) to ``size``.
    """

    backend = "timm"

    def __init__(
        self,
        name: str,
        checkpoint: str | os.PathLike[str] | None = None,
        in_chans: int = 4,
        size: int = 64,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 256,
        bands: Sequence[str] = ("g", "r", "i", "z"),
        normalize: str = "asinh",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pretrained: bool = False,
        seed: int = 0,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        import timm
        import torch

        self._where = f"image_encoder (timm {name!r})"
        self.batch_size = _check_batch_size(batch_size, "image_encoder")
        self.device, self.dtype = _device_dtype(device, dtype, self._where)
        if not isinstance(name, str) or not timm.is_model(name):
            raise ImageEncoderError(
                f"image_encoder.name={name!r} is not a timm model; see timm.list_models() "
                "(e.g. 'resnet18', 'convnext_nano', 'efficientnet_b0')"
            )
        self.bands = tuple(str(b) for b in bands)
        if int(in_chans) != len(self.bands):
            raise ImageEncoderError(
                f"image_encoder.in_chans={in_chans} but bands={list(self.bands)} has "
                f"{len(self.bands)}; they must agree (a checkpoint with other channels is adapted)"
            )
        if normalize not in NORMALIZATIONS:
            raise ImageEncoderError(
                f"image_encoder.normalize={normalize!r}; use one of {list(NORMALIZATIONS)}"
            )
        for label, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != len(self.bands):
                raise ImageEncoderError(
                    f"image_encoder.{label} has {len(values)} values for {len(self.bands)} bands"
                )
        if std is not None and any(float(s) <= 0 for s in std):
            raise ImageEncoderError(f"image_encoder.std={list(std)} must be positive")
        self.image_size = int(size)
        self.name = name
        self.normalize = normalize
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            try:
                model = timm.create_model(
                    name,
                    pretrained=bool(pretrained),
                    in_chans=int(in_chans),
                    num_classes=0,
                    **dict(backbone_kwargs or {}),
                )
            except Exception as exc:
                raise ImageEncoderError(
                    f"{self._where}: cannot build the backbone ({type(exc).__name__}: {exc}); "
                    "check image_encoder.name / backbone_kwargs"
                    + (
                        "; pretrained=True downloads weights: is the network reachable?"
                        if pretrained
                        else ""
                    )
                ) from exc
        if checkpoint is not None:
            from galaxy_assets.morphology.errors import MorphologyError
            from galaxy_assets.morphology.model import load_backbone_checkpoint

            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise ImageEncoderError(
                    f"image_encoder.checkpoint={str(checkpoint)!r} does not exist; point it at a "
                    "local timm/Zoobot checkpoint file (.safetensors, .pt, .ckpt)"
                )
            try:
                self.checkpoint_report = load_backbone_checkpoint(model, path)
            except MorphologyError as exc:
                raise ImageEncoderError(f"{self._where}: {exc}") from exc
            weights = f"ckpt-{_sha256_file(path)}"
        elif pretrained:
            tag = getattr(getattr(model, "pretrained_cfg", None), "get", lambda *_: None)("tag")
            weights = f"pretrained-{tag or 'default'}"
        else:
            weights = f"random-seed{int(seed)}"
            log.warning(
                "timm encoder %s has random weights (no checkpoint): fine for tests and "
                "baselines, useless for search; set image_encoder.checkpoint",
                name,
            )
        self.model = model.eval().to(self.device)
        self.dim = int(model.num_features)
        shape = (1, len(self.bands), 1, 1)
        self._mean = (
            torch.tensor([float(v) for v in mean], device=self.device).view(shape)
            if mean is not None
            else None
        )
        self._std = (
            torch.tensor([float(v) for v in std], device=self.device).view(shape)
            if std is not None
            else None
        )
        preprocessing = {
            "bands": list(self.bands),
            "size": self.image_size,
            "normalize": normalize,
            # asinh: stretched before the crop or pad since revision 2 (other vectors)
            **({"stretch": "before-crop-or-pad"} if normalize == "asinh" else {}),
            "mean": None if mean is None else [float(v) for v in mean],
            "std": None if std is None else [float(v) for v in std],
            "backbone_kwargs": dict(backbone_kwargs or {}),
        }
        pp = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode()).hexdigest()[:8]
        self.encoder_id = f"timm:{name}@{weights}/pp-{pp}"
        log.info("image encoder %s on %s (dim %d)", self.encoder_id, self.device, self.dim)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        # the stretch measures the sky noise on the cutout's own border: before any zero
        # padding (a 64 px cutout padded to Zoobot's 224 px had a border of zeros, and the
        # stretch fell back to the galaxy-dominated image spread)
        if self.normalize == "asinh":
            x = _asinh_noise_stretch(x)
        else:
            x = torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
        x = center_crop_or_pad(x, self.image_size, pad=True)
        if self._mean is not None:
            x = x - self._mean
        if self._std is not None:
            x = x / self._std
        return self.model(x)


# --------------------------------------------------------------------------- AION-1
AION_IMAGE_SIZE = 96  # the codec's centre crop; AION-1 was trained on 96 × 96 px cutouts
AION_BAND_PREFIX = {"legacysurvey": "DES", "hsc": "HSC"}
_AION_BANDS = {
    "legacysurvey": ("DES-G", "DES-R", "DES-I", "DES-Z"),
    "hsc": ("HSC-G", "HSC-R", "HSC-I", "HSC-Z", "HSC-Y"),
}
_AION_MODALITY = {"legacysurvey": "LegacySurveyImage", "hsc": "HSCImage"}
_AION_FILES = ("config.json", "model.safetensors")
_AION_CODEC_FILES = ("codecs/image/config.json", "codecs/image/model.safetensors")
_AION_INSTALL_HINT = (
    "install it with pip install 'polymathic-aion==0.0.2' (it brings einops and jaxtyping; no "
    "other package changes)"
)


def _survey_key(survey: str) -> str:
    key = str(survey).strip().lower().replace("_", "").replace("-", "").replace(" ", "")
    key = {
        "legacy": "legacysurvey",
        "ls": "legacysurvey",
        "decals": "legacysurvey",
        "des": "legacysurvey",
    }.get(key, key)
    if key not in _AION_BANDS:
        raise ImageEncoderError(
            f"image_encoder.survey={survey!r}; AION-1 knows 'legacysurvey' (DECam g, r, i, z "
            "in nanomaggies, 0.262\"/px) and 'hsc' (g, r, i, z, y at zero point 27)"
        )
    return key


def aion_band_names(bands: Sequence[str], survey: str = "legacysurvey") -> list[str]:
    """Our band names (``g``, ``r``…, or survey names such as ``DES-G``) → AION's names.

    The Legacy Survey is DECam imaging, which AION-1 calls ``DES-G`` … ``DES-Z``; HSC bands are
    ``HSC-G`` … ``HSC-Y``. Unknown or repeated bands raise :class:`ImageEncoderError`.
    """
    key = _survey_key(survey)
    prefix = AION_BAND_PREFIX[key]
    known = _AION_BANDS[key]
    out: list[str] = []
    for band in bands:
        text = str(band).strip()
        name = text.upper() if "-" in text else f"{prefix}-{text.upper()}"
        if name not in known:
            raise ImageEncoderError(
                f"band {band!r} has no AION-1 {key} equivalent (known: {list(known)}); "
                "set image_encoder.bands to a subset of them, or the survey to match"
            )
        out.append(name)
    if len(set(out)) != len(out):
        raise ImageEncoderError(f"image_encoder.bands={list(bands)} repeats a band")
    return out


def prepare_aion_flux(
    images: np.ndarray | torch.Tensor,
    bands: Sequence[str],
    survey: str = "legacysurvey",
    *,
    size: int = AION_IMAGE_SIZE,
) -> tuple[torch.Tensor, list[str]]:
    """MMU cutouts → the ``flux`` tensor and band list AION's image codec expects.

    * ``images`` (N, B, H, W) in survey units: nanomaggies for the Legacy Survey (the codec
      takes them as they are), HSC's own units at zero point 27 (the codec divides by
      10^((27 − 22.5) / 2.5)). No stretch, no standardisation: the codec range-compresses.
    * bands renamed with :func:`aion_band_names` (``g`` → ``DES-G`` for the Legacy Survey);
    * non-finite pixels (masked, NaN padding) become 0;
    * centre-cropped to ``size`` (96) with the codec's own offset; smaller cutouts are
      zero-padded to 96 (AION-1 never saw padded cutouts: treat their vectors with care);
    * always a fresh float32 tensor (the codec clamps and rescales its input in place).
    """
    import torch

    names = aion_band_names(bands, survey)
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] != len(names):
        raise ImageEncoderError(
            f"AION input has shape {tuple(x.shape)}; expected (N, {len(names)}, H, W) for bands "
            f"{list(bands)}"
        )
    x = torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
    x = center_crop_or_pad(x, size, pad=True)
    return x.contiguous().clone(), names


def _is_local(value: str | os.PathLike[str]) -> bool:
    """A path rather than a hub id (``org/name``): exists, or looks like a path."""
    if isinstance(value, os.PathLike):
        return True
    text = str(value)
    return (
        Path(text).expanduser().exists()
        or text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
    )


class AionImageEncoder:
    """AION-1 image embeddings: codec tokens → transformer encoder → mean over tokens → unit.

    ``model``: a folder holding ``config.json`` + ``model.safetensors`` (what
    ``AION.save_pretrained`` writes), or a hub id such as ``polymathic-ai/aion-base`` (gated:
    accept its licence on huggingface.co and set ``HF_TOKEN`` or ``token``; downloaded into the
    Hugging Face cache, or ``cache_dir``; ``local_files_only=True`` never touches the network).
    ``codec``: where the image codec lives, ``codecs/image/{config.json,model.safetensors}``
    under that folder or repo; None: the same place as the model (as in ``aion-base``).

    ``survey`` picks the modality (``legacysurvey`` → ``LegacySurveyImage`` / ``tok_image``,
    ``hsc`` → ``HSCImage`` / ``tok_image_hsc``) and the band names; ``bands`` are the shard's
    bands in the order they are read. See :func:`prepare_aion_flux` for the pixel handling.
    ``num_encoder_tokens`` defaults to the modality's token count (576 for 96 × 96 px).
    The codec runs in float32; ``dtype`` (bfloat16 on a GPU) applies to the transformer.

    polymathic-aion 0.0.2 cannot load a codec from a local folder (its hub mixin looks for a
    nested config path with ``os.listdir``), so the codec is rebuilt here from its
    ``config.json`` with ``ImageCodec(**config)`` and its safetensors loaded strictly; hub ids
    are first fetched with ``huggingface_hub.snapshot_download`` (only the files named above).
    """

    backend = "aion"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        codec: str | os.PathLike[str] | None = None,
        *,
        survey: str = "legacysurvey",
        bands: Sequence[str] = ("g", "r", "i", "z"),
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 64,
        num_encoder_tokens: int | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        token: str | None = None,
    ) -> None:
        if model is None or str(model).strip() == "":
            raise ImageEncoderError(
                "image_encoder.model is not set for the aion encoder: give a folder holding "
                "AION-1 (config.json, model.safetensors, codecs/image/...) or the hub id "
                "'polymathic-ai/aion-base' (gated: accept the licence, set HF_TOKEN)"
            )
        self._setup(survey, bands, device, dtype, batch_size)
        aion, codec_cls, modality = _import_aion(self.survey)
        model_dir, model_label, model_rev = _resolve_aion_source(
            model, _AION_FILES, revision, cache_dir, local_files_only, token, "model"
        )
        if codec is None:
            codec_dir, codec_label, codec_rev = model_dir, model_label, model_rev
        else:
            codec_dir, codec_label, codec_rev = _resolve_aion_source(
                codec, _AION_CODEC_FILES, revision, cache_dir, local_files_only, token, "codec"
            )
        for rel in _AION_CODEC_FILES:
            if not (codec_dir / rel).is_file():
                raise ImageEncoderError(
                    f"AION image codec: {codec_dir / rel} is missing; image_encoder.codec must "
                    "point at a folder or repo holding codecs/image/config.json and "
                    "codecs/image/model.safetensors (aion-base has them)"
                )
        try:
            net = aion.from_pretrained(str(model_dir))
        except Exception as exc:
            raise ImageEncoderError(
                f"AION model: cannot load {model_dir} ({type(exc).__name__}: {exc}); it must "
                "hold config.json and model.safetensors written by AION.save_pretrained"
            ) from exc
        codec_module = _load_aion_codec(codec_cls, codec_dir)
        encoder_id = f"aion:{model_label}@{model_rev}/{self.survey}"
        if (codec_label, codec_rev) != (model_label, model_rev):
            encoder_id += f"+codec:{codec_label}@{codec_rev}"
        self._attach(net, codec_module, modality, encoder_id, num_encoder_tokens)

    @classmethod
    def from_modules(
        cls,
        model: Any,
        codec: Any,
        *,
        encoder_id: str,
        modality: type | None = None,
        survey: str = "legacysurvey",
        bands: Sequence[str] = ("g", "r", "i", "z"),
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 64,
        num_encoder_tokens: int | None = None,
    ) -> AionImageEncoder:
        """Wrap an AION model and image codec that are already built (``modality``: the
        modality class, by default imported from ``aion.modalities``)."""
        self = cls.__new__(cls)
        self._setup(survey, bands, device, dtype, batch_size)
        if modality is None:
            _, _, modality = _import_aion(self.survey)
        self._attach(model, codec, modality, encoder_id, num_encoder_tokens)
        return self

    # -- internals ------------------------------------------------------------------
    def _setup(self, survey, bands, device, dtype, batch_size) -> None:
        self.survey = _survey_key(survey)
        self.bands = tuple(str(b) for b in bands)
        self.aion_bands = aion_band_names(self.bands, self.survey)
        self.image_size = AION_IMAGE_SIZE
        self.batch_size = _check_batch_size(batch_size, "image_encoder")
        self.device, self.dtype = _device_dtype(device, dtype, "image_encoder (aion)")

    def _attach(self, model, codec, modality, encoder_id: str, num_encoder_tokens) -> None:
        import torch

        self.model = model.eval().to(self.device)
        self.codec = codec.eval().to(self.device)
        self.modality = modality
        self.token_key = str(getattr(modality, "token_key", "tok_image"))
        n_tokens = getattr(modality, "num_tokens", None)
        self.num_encoder_tokens = int(num_encoder_tokens or n_tokens or 576)
        # other bands or another token count give other vectors: the id says so, so that
        # stored vectors are not reused for them
        extra = []
        if tuple(self.aion_bands) != _AION_BANDS.get(self.survey, tuple(self.aion_bands)):
            extra.append("bands-" + "".join(b.split("-")[-1].lower() for b in self.aion_bands))
        if self.num_encoder_tokens != int(n_tokens or 576):
            extra.append(f"tokens-{self.num_encoder_tokens}")
        self.encoder_id = encoder_id + "".join(f"/{e}" for e in extra)
        dim = getattr(model, "dim", None)
        if not dim:
            with torch.inference_mode():
                dim = self._embed(torch.zeros(1, len(self.bands), 96, 96)).shape[1]
        self.dim = int(dim)
        log.info(
            "image encoder %s on %s (dim %d, %d tokens)",
            self.encoder_id,
            self.device,
            self.dim,
            self.num_encoder_tokens,
        )

    def tokens(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The codec's tokens (N, n_tokens) for raw cutouts (N, B, H, W)."""
        flux, names = prepare_aion_flux(images, self.bands, self.survey)
        flux = flux.to(self.device)
        return self.codec.encode(self.modality(flux=flux, bands=names))

    def _embed(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(images)
        with _autocast(self.device, self.dtype):
            hidden = self.model.encode(
                {self.token_key: tokens}, num_encoder_tokens=self.num_encoder_tokens
            )
        return hidden.float().mean(dim=1)  # every token is valid: one image, no padding

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, dim) float32 unit rows: mean over the encoder's output tokens, normalised."""
        import torch

        arr = _as_images(images, len(self.bands), "image_encoder (aion)")
        out = np.empty((arr.shape[0], getattr(self, "dim", 0) or 0), np.float32)
        if arr.shape[0] == 0:
            return out
        with torch.inference_mode():
            for s in range(0, arr.shape[0], self.batch_size):
                out[s : s + self.batch_size] = unit_rows(self._embed(arr[s : s + self.batch_size]))
        return out

    def __repr__(self) -> str:
        return (
            f"AionImageEncoder({self.encoder_id!r}, dim={self.dim}, device={self.device!r}, "
            f"batch_size={self.batch_size})"
        )


def _import_aion(survey: str) -> tuple[Any, Any, type]:
    try:
        from aion import AION
        from aion import modalities as aion_modalities
        from aion.codecs import ImageCodec
    except ImportError as exc:
        raise ImageEncoderError(
            f"the aion image encoder needs polymathic-aion, which cannot be imported ({exc}); "
            f"{_AION_INSTALL_HINT}"
        ) from None
    return AION, ImageCodec, getattr(aion_modalities, _AION_MODALITY[survey])


def _resolve_aion_source(
    source: str | os.PathLike[str],
    files: Sequence[str],
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
    token: str | None,
    what: str,
) -> tuple[Path, str, str]:
    """A local folder for ``source`` plus a label and revision for the encoder id."""
    from galaxy_assets.embedding.text import folder_fingerprint

    text = os.fspath(source).strip()
    if _is_local(text):
        folder = Path(text).expanduser().resolve()
        if not folder.is_dir():
            raise ImageEncoderError(
                f"AION {what} folder {folder} does not exist; set image_encoder.{what} to a "
                "folder written by save_pretrained, or to a hub id"
            )
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise ImageEncoderError(
                f"AION {what} folder {folder} lacks {missing}; it must hold {list(files)}"
            )
        if folder.parent.name == "snapshots":  # a hub cache snapshot: named by its commit
            return (
                folder,
                folder.parent.parent.name.removeprefix("models--").replace("--", "/"),
                folder.name[:12],
            )
        return folder, folder.name, folder_fingerprint(folder)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImageEncoderError(
            f"image_encoder.{what}={text!r} is a hub id but huggingface_hub is not installed"
        ) from None
    log.info("fetching AION %s %r from the Hugging Face hub (cache first)", what, text)
    try:
        folder = Path(
            snapshot_download(
                text,
                revision=revision,
                cache_dir=None if cache_dir is None else str(cache_dir),
                local_files_only=local_files_only,
                token=token,
                allow_patterns=list(files) + list(_AION_CODEC_FILES),
            )
        )
    except Exception as exc:
        raise ImageEncoderError(
            f"AION {what}: cannot fetch {text!r} ({type(exc).__name__}: {exc}). aion-base is "
            "gated: accept its licence on huggingface.co and set HF_TOKEN; offline, set "
            f"image_encoder.{what} to a local folder (or pre-fill the cache)"
        ) from exc
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise ImageEncoderError(f"AION {what}: hub repo {text!r} has no {missing}")
    return folder, text, folder.name[:12]


def _load_aion_codec(codec_cls: Any, folder: Path) -> Any:
    from safetensors.torch import load_model

    config_path = folder / _AION_CODEC_FILES[0]
    weights = folder / _AION_CODEC_FILES[1]
    try:
        config = json.loads(config_path.read_text())
        codec = codec_cls(**config)
    except (OSError, ValueError, TypeError) as exc:
        raise ImageEncoderError(
            f"AION image codec: cannot build ImageCodec from {config_path} ({exc})"
        ) from exc
    try:
        load_model(codec, str(weights), strict=True)
    except Exception as exc:
        raise ImageEncoderError(
            f"AION image codec: {weights} does not fit ImageCodec({config}) "
            f"({str(exc).splitlines()[0]}); the codec folder is for another model version"
        ) from exc
    return codec.eval()


# --------------------------------------------------------------------------- factory
_KINDS: dict[str, Callable[..., Any]] = {
    "registry": RegistryImageEncoder,
    "timm": TimmImageEncoder,
    "aion": AionImageEncoder,
}
_ALIASES = {"mlflow": "registry", "morphology": "registry", "zoobot": "timm", "aion-1": "aion"}


# --------------------------------------------------------------------------- test-time views
# test-time augmentation: the views a vector is averaged over (see ViewAveragedEncoder)
TTA_VIEWS: dict[str, int] = {"none": 1, "rot4": 4, "d8": 8}


def registry_encoder_id(model_name: str, version: int) -> str:
    """The id of registered model ``model_name`` version ``version`` as an image encoder."""
    return f"registry:{model_name}/v{int(version)}"


def split_tta(encoder_id: str) -> tuple[str, str]:
    """``(base encoder id, tta)`` of an encoder id: ``registry:x/v3+rot4`` → ``("registry:x/v3",
    "rot4")``; an id without a views suffix → ``(id, "none")``."""
    base, sep, suffix = str(encoder_id).rpartition("+")
    if sep and suffix in TTA_VIEWS and suffix != "none":
        return base, suffix
    return str(encoder_id), "none"


class ViewAveragedEncoder:
    """Test-time augmentation over the symmetries of the pixel grid: a galaxy's vector is the
    normalised mean of ``base``'s unit vectors for its cutout turned by 0, 90, 180 and 270
    degrees (``tta="rot4"``) or for those and their mirror images (``"d8"``).

    A galaxy has no preferred orientation on the sky, but a network's features do: the same
    galaxy turned by 90 degrees lands elsewhere in the embedding, and that scatter is noise to
    every search and to the aligner trained on the vectors. Averaging removes it at 4 or 8
    encoder passes per galaxy (measured in benchmarks/RESULTS.md, "Test-time views"). A
    galaxy whose vector is NaN in any view (a broken cutout) is NaN here too, as with the
    base encoder. A cutout that is not square is first cut to its central square (the base
    encoder centre-crops larger cutouts to its own size anyway).
    """

    def __init__(self, base: ImageEncoder, tta: str = "rot4"):
        if tta not in TTA_VIEWS or tta == "none":
            valid = sorted(set(TTA_VIEWS) - {"none"})
            raise ImageEncoderError(f"tta={tta!r} is not a set of views; use one of {valid}")
        if isinstance(base, ViewAveragedEncoder):
            raise ImageEncoderError(f"{base.encoder_id} already averages over views")
        self.base = base
        self.tta = tta
        self.n_views = TTA_VIEWS[tta]
        self.encoder_id = f"{base.encoder_id}+{tta}"
        self.dim = int(base.dim)
        self.bands = base.bands
        self.image_size = base.image_size
        self.batch_size = int(base.batch_size)

    def views(self, images: np.ndarray) -> Iterator[np.ndarray]:
        """The cutouts turned (and mirrored), one array per view, identity first."""
        for mirrored in (False, True) if self.tta == "d8" else (False,):
            grid = images[..., ::-1] if mirrored else images
            for quarter in range(4):
                yield np.ascontiguousarray(np.rot90(grid, quarter, axes=(-2, -1)))

    def encode(self, images: np.ndarray) -> np.ndarray:
        arr = np.asarray(images)
        if arr.ndim != 4:
            raise ImageEncoderError(
                f"{self.encoder_id}: images have shape {arr.shape}; expected (N, bands, H, W)"
            )
        height, width = arr.shape[-2:]
        if height != width:  # the central square, so that a quarter turn keeps the shape
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            arr = arr[..., top : top + side, left : left + side]
        total = np.zeros((arr.shape[0], self.dim), np.float64)
        for view in self.views(arr):
            total += self.base.encode(view)
        return unit_rows(total)

    def __repr__(self) -> str:
        return f"ViewAveragedEncoder({self.base!r}, tta={self.tta!r})"


def image_encoder_kind(kind: str) -> str:
    """The canonical kind (``registry``, ``timm`` or ``aion``) of ``kind`` or one of its aliases
    (``morphology``, ``mlflow``, ``zoobot``, ``aion-1``); an error listing them otherwise."""
    key = str(kind or "").strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _KINDS:
        raise ImageEncoderError(
            f"image_encoder.kind={kind!r} is unknown; use one of {sorted(_KINDS)} "
            f"(or the aliases {sorted(_ALIASES)})"
        )
    return key


def image_encoder_from_settings(
    section: Any, *, tracker: Any = None, device: str = "cpu", dtype: str = "float32"
) -> ImageEncoder:
    """The encoder an ``image_encoder`` settings section names: any object with the attributes
    ``kind``, ``model_name``, ``alias`` (registry), ``name``, ``checkpoint``, ``image_size``,
    ``normalize`` (timm), ``model``, ``survey`` (aion), ``bands`` (timm, aion; empty: their g,
    r, i, z), ``batch_size`` and ``tta`` (:class:`~galaxy_assets.settings.ImageEncoderSettings`,
    or the graph's resource). ``tracker`` serves the registry kind."""
    kind = image_encoder_kind(section.kind)
    common = {"device": device, "dtype": dtype, "batch_size": section.batch_size}
    bands = [str(b) for b in (getattr(section, "bands", None) or [])]
    if kind == "registry":  # the registered model knows its own bands
        cfg = {"model_name": section.model_name, "alias": section.alias, "tracker": tracker}
    elif kind == "timm":
        cfg = {
            "name": section.name,
            "checkpoint": section.checkpoint or None,
            "size": getattr(section, "image_size", None),
            "normalize": getattr(section, "normalize", "") or None,
        }
        if bands:  # e.g. g, r, z for a survey without i: the input convolution takes 3
            cfg.update(bands=bands, in_chans=len(bands))
    else:
        cfg = {"model": section.model, "survey": getattr(section, "survey", "") or None,
               **({"bands": bands} if bands else {})}
    return build_image_encoder(kind, tta=section.tta, **cfg, **common)


def build_image_encoder(kind: str = "registry", *, tta: str = "none", **cfg: Any) -> ImageEncoder:
    """The image encoder of ``kind`` (``registry``, ``timm`` or ``aion``) built from ``cfg``
    (the class's keyword arguments), wrapped in a :class:`ViewAveragedEncoder` when ``tta`` is
    ``rot4`` or ``d8``. Unknown kinds, views and settings are errors that list the valid ones;
    settings that are None are left at their defaults."""
    if tta not in TTA_VIEWS:
        raise ImageEncoderError(
            f"image_encoder.tta={tta!r} is unknown; use one of {sorted(TTA_VIEWS)}"
        )
    key = image_encoder_kind(kind)
    cls = _KINDS[key]
    cfg = {k: v for k, v in cfg.items() if v is not None}
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(cfg) - set(params) - {"self"})
    if unknown:
        valid = sorted(p for p in params if p != "self")
        raise ImageEncoderError(
            f"image_encoder ({key}): unknown setting(s) {unknown}; valid: {valid}"
        )
    encoder = cls(**cfg)
    return encoder if tta == "none" else ViewAveragedEncoder(encoder, tta)


# --------------------------------------------------------------------------- shards
def open_shard_for(encoder: ImageEncoder, uri: str | os.PathLike[str]) -> CutoutReader:
    """Open shard ``uri`` with the encoder's bands, without ivar, cropped at read time to the
    encoder's ``image_size`` when the cutouts are larger (less I/O); smaller cutouts are read
    whole and the encoder pads or refuses them."""
    from galaxy_assets.survey.readers import open_shard

    bands = list(encoder.bands) if encoder.bands else None
    reader = open_shard(uri, bands=bands, size=None, ivar=False)
    size = encoder.image_size
    native = min(getattr(reader, "height", 0) or 0, getattr(reader, "width", 0) or 0)
    if size and native > size:
        reader.close()
        reader = open_shard(uri, bands=bands, size=int(size), ivar=False)
    return reader


@dataclass
class EmbedStats:
    """What :func:`embed_shard` did (fill-in object: pass one to get the figures)."""

    shard: str = ""
    encoder: str = ""
    n_read: int = 0
    n_embedded: int = 0
    n_skipped: int = 0
    skipped_object_ids: list[str] = field(default_factory=list)  # the first 100
    seconds: float = 0.0
    read_wait_seconds: float = 0.0  # time the model waited for the reader

    @property
    def rate(self) -> float:
        """Galaxies embedded per second."""
        return self.n_embedded / self.seconds if self.seconds > 0 else 0.0

    def as_metadata(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "encoder": self.encoder,
            "n_read": self.n_read,
            "n_embedded": self.n_embedded,
            "n_skipped": self.n_skipped,
            "skipped_object_ids": self.skipped_object_ids[:20],
            "seconds": round(self.seconds, 3),
            "galaxies_per_s": round(self.rate, 1),
            "read_wait_seconds": round(self.read_wait_seconds, 3),
        }


_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _prefetched(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead of the consumer.

    Exceptions in the producer are re-raised in the consumer; when the consumer stops early
    (or fails), the producer is told to stop and joined before this generator returns, so
    the caller may close the underlying reader right after.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer
            put(_Failure(exc))

    worker = threading.Thread(target=produce, name="embed-shard-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                q.get_nowait()
            worker.join(timeout=0.05)


def iter_shard_vectors(
    reader: CutoutReader,
    encoder: ImageEncoder,
    batch_size: int | None = None,
    *,
    prefetch: int = 2,
    stats: EmbedStats | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(object_ids, vectors)`` per batch of an open shard, in row order (NaN rows kept).

    The loop under :func:`embed_shard`: batches of ``batch_size`` (default: the encoder's) are
    read ``prefetch`` batches ahead in a background thread (0: no thread), so the model never
    waits for the disk; the time it did wait goes to ``stats.read_wait_seconds``.
    """
    bs = int(batch_size or getattr(encoder, "batch_size", 256) or 256)
    if bs < 1:
        raise ImageEncoderError(f"batch_size={batch_size}; it must be >= 1")
    want = getattr(encoder, "bands", None)
    have = tuple(getattr(reader, "bands", ()) or ())
    if want and have and tuple(want) != have:
        raise ImageEncoderError(
            f"{getattr(reader, 'uri', reader)}: the reader gives bands {list(have)} but "
            f"{encoder.encoder_id} takes {list(want)}; open the shard with "
            "open_shard_for(encoder, uri)"
        )
    dim = int(encoder.dim)
    batches = _prefetched(reader.iter_batches(bs), int(prefetch))
    try:
        while True:
            tw = time.perf_counter()
            batch = next(batches, None)
            if stats is not None:
                stats.read_wait_seconds += time.perf_counter() - tw
            if batch is None:
                return
            n = len(batch)
            out = encoder.encode(batch.images)
            if out.shape != (n, dim):
                raise ImageEncoderError(
                    f"{encoder.encoder_id} returned {out.shape} for a batch of {n}; expected "
                    f"({n}, {dim})"
                )
            yield np.asarray(batch.object_id).astype(str), out
    finally:
        batches.close()


def manifest_vectors(vectors: pl.DataFrame, manifest: pl.DataFrame) -> pl.DataFrame:
    """The rows of :func:`embed_shard` (``with_rows=True``) that are the manifest's galaxies,
    matched by ``(object_id, row)``, without the ``row`` column: a shard that repeats an
    object_id in a row its manifest left out (a broken duplicate) must not give that id a
    second vector."""
    import polars as pl

    keys = manifest.select(pl.col("object_id").cast(pl.Utf8), pl.col("row").cast(pl.Int64))
    return vectors.join(keys, on=["object_id", "row"], how="semi").drop("row")


def embed_shard(
    reader: CutoutReader,
    encoder: ImageEncoder,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    prefetch: int = 2,
    stats: EmbedStats | None = None,
    with_rows: bool = False,
) -> pl.DataFrame:
    """Vectors for every galaxy of an open shard: ``object_id`` (str), ``encoder`` (the
    encoder id), ``vector`` (Array[Float32, dim], unit norm), in shard row order; with
    ``with_rows`` also ``row`` (the shard row, to match a manifest: a shard may repeat an
    object_id in a row its manifest left out).

    Batches of ``batch_size`` (default: the encoder's) are read ``prefetch`` batches ahead in
    a background thread (0: no thread), so the model never waits for the disk; pixels are
    never held for more than ``prefetch + 1`` batches and only the vectors accumulate
    (preallocated, N × dim float32). A galaxy whose vector is not finite (an all-zero or
    broken cutout) is skipped and counted in ``stats``; nothing else is dropped.
    ``progress(done, total)`` is called after every batch.
    """
    import polars as pl

    stats = stats if stats is not None else EmbedStats()
    stats.shard = str(getattr(reader, "uri", ""))
    stats.encoder = encoder.encoder_id
    total = len(reader)
    dim = int(encoder.dim)
    vectors = np.empty((total, dim), np.float32)
    ids: list[np.ndarray] = []
    done = 0
    t0 = time.perf_counter()
    stats.read_wait_seconds = 0.0
    stream = iter_shard_vectors(reader, encoder, batch_size, prefetch=prefetch, stats=stats)
    with contextlib.closing(stream):  # stop the reader thread at once on any error
        for batch_ids, out in stream:
            n = len(batch_ids)
            if done + n > total:
                raise ImageEncoderError(
                    f"{stats.shard}: the reader yielded more rows ({done + n}) than its length "
                    f"({total}); the shard changed while it was read"
                )
            vectors[done : done + n] = out
            ids.append(batch_ids)
            done += n
            if progress is not None:
                progress(done, total)
    vectors = vectors[:done]
    object_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=str)
    rows = np.arange(done, dtype=np.int64)  # iter_batches yields every row, in order
    good = np.isfinite(vectors).all(axis=1)
    n_bad = int((~good).sum())
    if n_bad:
        bad_ids = object_ids[~good].tolist()
        stats.skipped_object_ids.extend(bad_ids[:100])
        log.warning(
            "%s: %d of %d galaxies gave no finite vector with %s (skipped), e.g. %s",
            stats.shard,
            n_bad,
            done,
            encoder.encoder_id,
            bad_ids[:5],
        )
        vectors, object_ids, rows = vectors[good], object_ids[good], rows[good]
    stats.n_read = done
    stats.n_embedded = int(vectors.shape[0])
    stats.n_skipped = n_bad
    stats.seconds = time.perf_counter() - t0
    log.info(
        "embedded %d galaxies of %s with %s in %.1f s (%.0f/s, %.2f s waiting for reads)",
        stats.n_embedded,
        stats.shard,
        encoder.encoder_id,
        stats.seconds,
        stats.rate,
        stats.read_wait_seconds,
    )
    frame = pl.DataFrame(
        [
            pl.Series("object_id", object_ids, dtype=pl.Utf8),
            pl.Series("row", rows, dtype=pl.Int64),
            pl.Series("vector", vectors, dtype=pl.Array(pl.Float32, dim)),
        ]
    )
    columns = ["object_id", *(["row"] if with_rows else []), "encoder", "vector"]
    return frame.with_columns(pl.lit(encoder.encoder_id, dtype=pl.Utf8).alias("encoder")).select(
        columns
    )
