"""Cross-modal retrieval metrics on matched pairs: recall@k and median rank, both directions.

Row i of the image vectors matches row i of the text vectors. The rank of the true partner is
pessimistic: ``1 + #(other candidates scoring ≥ the partner)``, so a collapsed model (all
scores equal) ranks everything last instead of first. Similarities are computed in chunks of
queries, so memory stays ``chunk × N`` however large N is.

Metric names use only characters MLflow accepts (``i2t_recall_at_5``, ``t2i_median_rank``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["DEFAULT_KS", "ranks_of_partners", "retrieval_metrics"]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


@torch.no_grad()
def ranks_of_partners(
    queries: torch.Tensor | np.ndarray,
    candidates: torch.Tensor | np.ndarray,
    chunk_size: int = 2048,
) -> np.ndarray:
    """1-based rank of candidate i among all candidates for query i (cosine / dot product)."""
    q = torch.as_tensor(queries).float()
    c = torch.as_tensor(candidates).float().to(q.device)
    if q.shape != c.shape or q.ndim != 2:
        raise ValueError(f"ranks_of_partners: shapes {tuple(q.shape)} and {tuple(c.shape)}")
    n = q.shape[0]
    out = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk_size):
        sims = q[s : s + chunk_size] @ c.T  # (m, n)
        idx = torch.arange(s, s + sims.shape[0], device=sims.device)
        true = sims[torch.arange(sims.shape[0], device=sims.device), idx].unsqueeze(1)
        ge = (sims >= true).sum(dim=1)  # includes the partner itself
        out[s : s + sims.shape[0]] = ge.cpu().numpy()
    return out


def retrieval_metrics(
    image_z: torch.Tensor | np.ndarray,
    text_z: torch.Tensor | np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 2048,
) -> dict[str, float]:
    """``i2t_recall_at_k``, ``t2i_recall_at_k`` (fractions), ``*_median_rank`` and ``*_mean_rank``
    (1 = perfect) and ``retrieval_pool`` (N, the number of candidates each query ranks)."""
    i2t = ranks_of_partners(image_z, text_z, chunk_size)
    t2i = ranks_of_partners(text_z, image_z, chunk_size)
    out: dict[str, float] = {"retrieval_pool": float(len(i2t))}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_recall_at_{int(k)}"] = float(np.mean(ranks <= k)) if len(ranks) else 0.0
        out[f"{name}_median_rank"] = float(np.median(ranks)) if len(ranks) else float("nan")
        out[f"{name}_mean_rank"] = float(np.mean(ranks)) if len(ranks) else float("nan")
    return out
