"""Batched augmentation suited to galaxies (torch, any device).

Galaxies have no preferred orientation or handedness, so each cutout of a batch gets its own
rotation by any angle, a random flip, a small zoom (scale jitter) and a small shift, all
composed into one affine map and applied with a single ``grid_sample`` call; an optional
crop makes the output smaller than the input. Pixels that the map pulls from outside the
cutout are filled by reflection (``padding_mode``), which keeps the noise texture.

Randomness comes only from the ``torch.Generator`` passed in, so a seed reproduces a batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment_batch", "center_crop"]


@dataclass(frozen=True)
class AugmentConfig:
    """``rotate``: uniform angle in [0, 2π); ``flip``: mirror with probability ½;
    ``zoom``: (min, max) magnification (>1 zooms in); ``shift``: max shift as a fraction of
    the output size; ``crop``: output side in pixels (None: the input size);
    ``padding_mode``: ``reflection``, ``border`` or ``zeros``; ``warp_prob``: the share of
    galaxies that get that resampled map. The others are turned by a quarter turn and flipped
    without resampling (lossless), and centre-cropped as at inference: bilinear resampling
    averages neighbouring pixels, so warped cutouts carry sky noise about a third weaker,
    and correlated, than the raw cutouts the encoder embeds."""

    rotate: bool = True
    flip: bool = True
    zoom: tuple[float, float] = (0.95, 1.1)
    shift: float = 0.04
    crop: int | None = None
    padding_mode: str = "reflection"
    warp_prob: float = 1.0

    def __post_init__(self) -> None:
        lo, hi = self.zoom
        if not (0 < lo <= hi):
            raise ValueError(f"zoom must be (min, max) with 0 < min <= max, got {self.zoom}")
        if not 0 <= self.shift < 0.5:
            raise ValueError(f"shift must be in [0, 0.5), got {self.shift}")
        if self.padding_mode not in ("reflection", "border", "zeros"):
            raise ValueError(
                f"padding_mode must be reflection, border or zeros, got {self.padding_mode!r}"
            )
        if self.crop is not None and self.crop <= 0:
            raise ValueError(f"crop must be a positive pixel count or None, got {self.crop}")
        if not 0.0 <= self.warp_prob <= 1.0:
            raise ValueError(f"warp_prob must be in [0, 1], got {self.warp_prob}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["zoom"] = list(self.zoom)
        return d

    @classmethod
    def from_dict(cls, data: dict | None) -> AugmentConfig:
        data = dict(data or {})
        if "zoom" in data:
            data["zoom"] = tuple(data["zoom"])
        return cls(**data)

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (identity, or a centre crop when ``crop`` is set)."""
        return cls(rotate=False, flip=False, zoom=(1.0, 1.0), shift=0.0)


def augment_batch(
    images: torch.Tensor,
    config: AugmentConfig = AugmentConfig(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augment ``images`` ``(N, B, H, W)``; returns ``(N, B, crop, crop)`` (or H × W).

    One random affine map per galaxy (a lossless quarter turn and flip instead, for the
    ``1 - warp_prob`` share); all bands of a galaxy get the same map. Random draws are made
    on the CPU from ``generator`` and moved to the images' device.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, B, H, W), got shape {tuple(images.shape)}")
    n, b, h, w = images.shape
    out_h = out_w = config.crop if config.crop is not None else None
    if out_h is None:
        out_h, out_w = h, w
    if n == 0:
        return images.new_zeros((0, b, out_h, out_w))
    u = torch.rand((n, 5), generator=generator, dtype=torch.float32)
    x = images if images.is_floating_point() else images.float()
    if config.warp_prob >= 1.0:
        return _warp(x, u, config, out_h, out_w)
    v = torch.rand((n, 2), generator=generator, dtype=torch.float32)
    warp = v[:, 0] < config.warp_prob
    out = x.new_empty((n, b, out_h, out_w))
    if warp.any():
        idx = torch.nonzero(warp).flatten()
        out[idx.to(x.device)] = _warp(x[idx.to(x.device)], u[idx], config, out_h, out_w)
    keep = torch.nonzero(~warp).flatten()
    if keep.numel():
        # lossless: quarter turns (half turns on non-square cutouts) and mirror images
        if not config.rotate:
            turns = torch.zeros(keep.numel(), dtype=torch.long)
        elif h == w:
            turns = (v[keep, 1] * 4).long().clamp(max=3)
        else:
            turns = (v[keep, 1] * 2).long().clamp(max=1) * 2
        mirror = u[keep, 2] < 0.5 if config.flip else torch.zeros(keep.numel(), dtype=torch.bool)
        for k in range(4):
            for m in (False, True):
                sel = keep[(turns == k) & (mirror == m)].to(x.device)
                if not sel.numel():
                    continue
                part = torch.rot90(x[sel], k, dims=(-2, -1)) if k else x[sel]
                out[sel] = center_crop(part.flip(-1) if m else part, config.crop)
    return out


def _warp(
    x: torch.Tensor, u: torch.Tensor, config: AugmentConfig, out_h: int, out_w: int
) -> torch.Tensor:
    """The resampled affine map of each galaxy (rotation by any angle, flip, zoom, shift)."""
    n, b, h, w = x.shape
    angle = u[:, 0] * (2 * math.pi) if config.rotate else torch.zeros(n)
    lo, hi = config.zoom
    zoom = lo + (hi - lo) * u[:, 1]
    flip = torch.where(u[:, 2] < 0.5, -1.0, 1.0) if config.flip else torch.ones(n)
    shift = (u[:, 3:5] * 2 - 1) * config.shift * 2  # normalised coordinates span 2
    # output → input coordinates: input = R(angle) · diag(flip, 1) · (crop/size) / zoom · out + t
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx = (out_w / w) / zoom
    sy = (out_h / h) / zoom
    theta = torch.zeros((n, 2, 3), dtype=torch.float32)
    theta[:, 0, 0] = cos * flip * sx
    theta[:, 0, 1] = -sin * sy
    theta[:, 1, 0] = sin * flip * sx
    theta[:, 1, 1] = cos * sy
    theta[:, :, 2] = shift
    theta = theta.to(device=x.device)
    grid = F.affine_grid(theta.to(x.dtype), [n, b, out_h, out_w], align_corners=False)
    return F.grid_sample(
        x, grid, mode="bilinear", padding_mode=config.padding_mode, align_corners=False
    )


def center_crop(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Centre ``size`` × ``size`` pixels (offset ``(H - size) // 2``); None returns the input."""
    if size is None:
        return images
    h, w = images.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"crop {size} is larger than the {h}×{w} cutouts")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]
