"""Dirichlet-Multinomial likelihood of Galaxy Zoo vote counts (Walmsley et al. 2022, 2024).

For one question with answers ``a = 1..A``, ``k_a`` votes out of ``n = Σ k_a`` volunteers and
predicted concentrations ``α_a`` (``α_0 = Σ α_a``), the negative log-likelihood is ::

    −log p(k | α) = −log n! + Σ log k_a! − log Γ(α_0) + log Γ(n + α_0)
                    − Σ [log Γ(k_a + α_a) − log Γ(α_a)]

(the multinomial coefficient is included, so values equal
``-scipy.stats.dirichlet_multinomial.logpmf``). A question nobody answered (``n = 0``)
contributes exactly zero, and so does its gradient: questions that a volunteer never reached
(the decision tree's dependencies) drop out of the loss. The total loss of a galaxy is the sum
over questions.

The model's head emits unbounded logits; :func:`concentrations_from_logits` maps them into
``[min_concentration, max_concentration]`` (1 to 101 by default, as in Zoobot).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "MAX_CONCENTRATION",
    "MIN_CONCENTRATION",
    "concentrations_from_logits",
    "dirichlet_multinomial_nll",
    "expected_fractions",
    "observed_fractions",
    "question_totals",
    "vote_loss",
]

MIN_CONCENTRATION = 1.0
MAX_CONCENTRATION = 101.0

Ranges = Sequence[tuple[int, int]]


def concentrations_from_logits(
    logits: torch.Tensor,
    low: float = MIN_CONCENTRATION,
    high: float = MAX_CONCENTRATION,
) -> torch.Tensor:
    """``low + (high - low) * sigmoid(logits)``, computed in float32."""
    return low + (high - low) * torch.sigmoid(logits.float())


def _check(counts: torch.Tensor, concentrations: torch.Tensor, ranges: Ranges) -> None:
    if counts.shape != concentrations.shape:
        raise ValueError(
            f"vote counts {tuple(counts.shape)} and concentrations "
            f"{tuple(concentrations.shape)} must have the same (N, n_answers) shape"
        )
    width = max(stop for _, stop in ranges)
    if counts.shape[-1] != width:
        raise ValueError(
            f"the tree has {width} answers but the tensors have {counts.shape[-1]} columns"
        )


def dirichlet_multinomial_nll(
    counts: torch.Tensor,
    concentrations: torch.Tensor,
    ranges: Ranges,
) -> torch.Tensor:
    """Per-galaxy, per-question DM negative log-likelihood, shape ``(N, n_questions)``.

    ``counts`` and ``concentrations`` are ``(N, n_answers)`` in the tree's flat answer layout;
    ``ranges`` is ``tree.answer_index_ranges()``. Questions with no votes give exactly 0.
    """
    _check(counts, concentrations, ranges)
    dtype = torch.float64 if concentrations.dtype == torch.float64 else torch.float32
    k = counts.to(dtype)
    alpha = concentrations.to(dtype)
    lg_k1 = torch.lgamma(k + 1.0)
    lg_ka = torch.lgamma(k + alpha)
    lg_a = torch.lgamma(alpha)
    out = []
    for start, stop in ranges:
        kq = k[:, start:stop]
        aq = alpha[:, start:stop]
        n = kq.sum(dim=1)
        a0 = aq.sum(dim=1)
        log_p = (
            torch.lgamma(n + 1.0)
            - lg_k1[:, start:stop].sum(dim=1)
            + torch.lgamma(a0)
            - torch.lgamma(n + a0)
            + (lg_ka[:, start:stop] - lg_a[:, start:stop]).sum(dim=1)
        )
        # where() keeps unanswered questions at exactly 0 with exactly 0 gradient
        out.append(torch.where(n > 0, -log_p, torch.zeros_like(log_p)))
    return torch.stack(out, dim=1)


def vote_loss(
    counts: torch.Tensor,
    concentrations: torch.Tensor,
    ranges: Ranges,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective and its parts.

    Returns ``(loss, per_question)``: ``loss`` is the mean over galaxies of the sum over
    questions (a scalar to minimise); ``per_question`` is ``(N, n_questions)`` (detached is
    up to the caller).
    """
    per_q = dirichlet_multinomial_nll(counts, concentrations, ranges)
    return per_q.sum(dim=1).mean(), per_q


def question_totals(counts: torch.Tensor, ranges: Ranges) -> torch.Tensor:
    """Number of volunteers who answered each question, ``(N, n_questions)``."""
    return torch.stack([counts[:, a:b].sum(dim=1) for a, b in ranges], dim=1)


def expected_fractions(concentrations: torch.Tensor, ranges: Ranges) -> torch.Tensor:
    """Expected vote fractions ``α_a / α_0`` per question, in the flat answer layout."""
    out = torch.empty_like(concentrations, dtype=torch.float32)
    for a, b in ranges:
        c = concentrations[:, a:b].float()
        out[:, a:b] = c / c.sum(dim=1, keepdim=True)
    return out


def observed_fractions(counts: torch.Tensor, ranges: Ranges) -> torch.Tensor:
    """Observed vote fractions ``k_a / n`` per question (NaN where ``n == 0``)."""
    out = torch.empty_like(counts, dtype=torch.float32)
    for a, b in ranges:
        c = counts[:, a:b].float()
        n = c.sum(dim=1, keepdim=True)
        out[:, a:b] = torch.where(n > 0, c / n.clamp_min(1.0), torch.full_like(c, float("nan")))
    return out
