"""Projection heads: a residual MLP from a frozen embedding into the shared search space.

::

    x ─ LayerNorm ─ Linear(in → hidden) ─┬─ [LayerNorm ─ GELU ─ Dropout ─ Linear] ─(+)─ … ─ Linear(hidden → out) ─ L2 normalise
                                          └──────────────── residual ───────────────┘

The image head and the text head have this same shape (AION-Search, Koblischke et al. 2025);
only their input widths differ. ``forward(x, normalize=False)`` returns the raw projection, so
a Matryoshka loss can truncate it before normalising.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ProjectionHead", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """``x + Linear(Dropout(GELU(LayerNorm(x))))`` (pre-norm)."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(self.drop(self.act(self.norm(x))))


class ProjectionHead(nn.Module):
    """Input LayerNorm, Linear to ``hidden_dim``, ``n_blocks`` residual blocks, Linear to
    ``out_dim``, then (by default) L2 normalisation in float32.

    Parameters: ``in_dim·hidden + n_blocks·hidden² + hidden·out`` (+ norms and biases); the
    default 384 → 512 (2 blocks) → 256 text head has 0.85 M.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 256,
        hidden_dim: int = 512,
        n_blocks: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
            if int(value) < 1:
                raise ValueError(f"ProjectionHead {name}={value}; it must be >= 1")
        if int(n_blocks) < 0 or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"ProjectionHead n_blocks={n_blocks}, dropout={dropout} out of range")
        self.in_dim, self.out_dim, self.hidden_dim = int(in_dim), int(out_dim), int(hidden_dim)
        self.input_norm = nn.LayerNorm(self.in_dim)
        self.input = nn.Linear(self.in_dim, self.hidden_dim)
        self.blocks = nn.Sequential(
            *[ResidualBlock(self.hidden_dim, float(dropout)) for _ in range(int(n_blocks))]
        )
        self.proj = nn.Linear(self.hidden_dim, self.out_dim)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.proj(self.blocks(self.input(self.input_norm(x))))
        return F.normalize(z.float(), dim=-1) if normalize else z
