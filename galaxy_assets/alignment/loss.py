"""Symmetric InfoNCE (the CLIP loss) with a learned temperature, and its Matryoshka variant.

For a batch of B matched pairs with unit vectors ``u_i`` (images) and ``v_j`` (texts) and
logit scale ``s = exp(t)`` (``t`` learned, initialised at ``log(1/0.07)``, ``s ≤ 100``)::

    logits_ij = s · u_i·v_j
    loss = ½ [ CE(logits, diag) + CE(logitsᵀ, diag) ]

Memory at the paper's batch of 8192: the logits are 8192² float32 = 256 MiB; cross-entropy
keeps a softmax of the same size per direction and the backward pass one gradient of it, so
the loss needs ~1 GiB (×k for k Matryoshka widths), far below one GPU's memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "INIT_LOGIT_SCALE",
    "MAX_LOGIT_SCALE",
    "clip_loss",
    "contrastive_loss",
]

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's temperature 0.07
MAX_LOGIT_SCALE = 100.0  # clamp on exp(logit_scale), as in CLIP


def clip_loss(
    image_z: torch.Tensor, text_z: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE of unit vectors ``image_z``, ``text_z`` (B, D); row i matches row i.

    ``scale`` is the multiplier (``exp(logit_scale)``, already clamped). Computed in float32.
    """
    if image_z.shape != text_z.shape or image_z.ndim != 2:
        raise ValueError(f"clip_loss: shapes {tuple(image_z.shape)} and {tuple(text_z.shape)}")
    logits = scale * (image_z.float() @ text_z.float().T)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def contrastive_loss(
    image_raw: torch.Tensor,
    text_raw: torch.Tensor,
    scale: torch.Tensor | float,
    dims: Sequence[int] | None = None,
) -> torch.Tensor:
    """Mean of :func:`clip_loss` over the leading ``dims`` coordinates of the raw projections,
    each truncation re-normalised (Matryoshka representation learning). ``dims=None``: the
    full width only (plain CLIP)."""
    full = int(image_raw.shape[-1])
    widths = sorted({int(d) for d in dims}) if dims else [full]
    losses = [
        clip_loss(
            F.normalize(image_raw[:, :d].float(), dim=-1),
            F.normalize(text_raw[:, :d].float(), dim=-1),
            scale,
        )
        for d in widths
    ]
    return torch.stack(losses).mean()
