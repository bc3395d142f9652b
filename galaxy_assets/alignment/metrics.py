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

__all__ = [
    "DEFAULT_KS",
    "EQUIVALENCE_THRESHOLD",
    "equivalent_caption_recall",
    "ranks_of_partners",
    "retrieval_metrics",
]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
# Two captions whose text embeddings (MiniLM) agree this closely say the same thing in other
# words (on describer captions: same class, colour and features, numbers differing).
EQUIVALENCE_THRESHOLD = 0.95


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


@torch.no_grad()
def equivalent_caption_recall(
    text_z: torch.Tensor | np.ndarray,
    image_z: torch.Tensor | np.ndarray,
    caption_vectors: torch.Tensor | np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    threshold: float = EQUIVALENCE_THRESHOLD,
    chunk_size: int = 2048,
) -> dict[str, float]:
    """Text→image recall where a hit is the caption's own galaxy *or* a galaxy whose own
    caption is equivalent (cosine of the raw caption embeddings ≥ ``threshold``).

    Strict recall asks for one galaxy among several whose captions say the same thing; when
    the captioner writes near-identical text for galaxies of one kind, no model can tell them
    apart from the text, and strict recall@k is capped near k / (1 + twins). This measure
    counts a retrieved galaxy that matches the description as found, and ``caption_twins``
    (the mean number of other pool captions equivalent to each) says how large the cap is.
    Returns ``t2i_equiv_recall_at_k`` and ``caption_twins``.
    """
    q = torch.as_tensor(text_z).float()
    c = torch.as_tensor(image_z).float().to(q.device)
    raw = torch.nn.functional.normalize(torch.as_tensor(caption_vectors).float().to(q.device), dim=-1)
    n = q.shape[0]
    if not (c.shape[0] == raw.shape[0] == n):
        raise ValueError(
            f"equivalent_caption_recall: {n} queries, {c.shape[0]} images, {raw.shape[0]} captions"
        )
    kmax = min(max(int(k) for k in ks), n) if n else 0
    hits = {int(k): 0 for k in ks}
    twins = 0.0
    for s in range(0, n, chunk_size):
        sims = q[s : s + chunk_size] @ c.T
        top = sims.topk(kmax, dim=1).indices  # (m, kmax)
        same = raw[s : s + chunk_size] @ raw.T >= threshold  # (m, n), own caption included
        twins += float(same.sum()) - same.shape[0]
        found = torch.gather(same, 1, top)  # (m, kmax)
        for k in hits:
            hits[k] += int(found[:, : min(k, kmax)].any(dim=1).sum())
    out = {f"t2i_equiv_recall_at_{k}": (hits[k] / n if n else 0.0) for k in hits}
    out["caption_twins"] = twins / n if n else 0.0
    return out
