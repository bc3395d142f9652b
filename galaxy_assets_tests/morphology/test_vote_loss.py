"""The Dirichlet-Multinomial vote loss: against scipy, masking of unanswered questions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import dirichlet_multinomial

from galaxy_assets.morphology import default_tree
from galaxy_assets.morphology.loss import (
    concentrations_from_logits,
    dirichlet_multinomial_nll,
    expected_fractions,
    observed_fractions,
    vote_loss,
)


def _random_votes(rng: np.random.Generator, n: int, tree) -> np.ndarray:
    counts = np.zeros((n, tree.n_answers), dtype=np.int64)
    for a, b in tree.answer_index_ranges():
        totals = rng.integers(0, 45, size=n)
        for i in range(n):
            counts[i, a:b] = rng.multinomial(totals[i], rng.dirichlet(np.ones(b - a)))
    return counts


def test_matches_scipy_dirichlet_multinomial():
    rng = np.random.default_rng(0)
    tree = default_tree()
    counts = _random_votes(rng, 25, tree)
    alpha = rng.uniform(1.0, 101.0, size=counts.shape)
    nll = dirichlet_multinomial_nll(
        torch.tensor(counts), torch.tensor(alpha), tree.answer_index_ranges()
    ).numpy()
    assert nll.shape == (25, len(tree))
    for i in range(25):
        for j, (a, b) in enumerate(tree.answer_index_ranges()):
            n = int(counts[i, a:b].sum())
            if n == 0:
                assert nll[i, j] == 0.0
                continue
            ref = -dirichlet_multinomial.logpmf(counts[i, a:b], alpha[i, a:b], n)
            assert nll[i, j] == pytest.approx(ref, rel=2e-5, abs=2e-4)


def test_unanswered_question_contributes_nothing_and_gets_no_gradient():
    tree = default_tree()
    ranges = tree.answer_index_ranges()
    rng = np.random.default_rng(1)
    counts = torch.tensor(_random_votes(rng, 4, tree), dtype=torch.float32)
    a, b = (
        tree.answer_slices()["has-spiral-arms"].start,
        tree.answer_slices()["has-spiral-arms"].stop,
    )
    j = tree.question_index("has-spiral-arms")
    counts[:, a:b] = 0  # nobody reached the spiral question
    counts[:, 0:3] = torch.tensor([20.0, 10.0, 1.0])  # but the root question was answered
    logits = torch.randn(4, tree.n_answers, requires_grad=True)
    conc = concentrations_from_logits(logits)
    loss, per_q = vote_loss(counts, conc, ranges)
    assert torch.all(per_q[:, j] == 0)
    loss.backward()
    assert torch.all(logits.grad[:, a:b] == 0)
    assert torch.all(logits.grad[:, 0:3].abs().sum(dim=1) > 0)
    # the summed loss equals the sum over answered questions only
    assert loss.item() == pytest.approx(per_q.sum(dim=1).mean().item())


def test_concentrations_bounded_and_fractions_normalised():
    tree = default_tree()
    logits = torch.tensor([[-1e4] * tree.n_answers, [1e4] * tree.n_answers, [0.0] * tree.n_answers])
    conc = concentrations_from_logits(logits)
    assert conc.min() >= 1.0 and conc.max() <= 101.0
    frac = expected_fractions(conc, tree.answer_index_ranges())
    for a, b in tree.answer_index_ranges():
        assert torch.allclose(frac[:, a:b].sum(dim=1), torch.ones(3))
    counts = torch.zeros(1, tree.n_answers)
    counts[0, 0] = 3
    obs = observed_fractions(counts, tree.answer_index_ranges())
    assert obs[0, 0] == 1.0 and torch.isnan(obs[0, 3])  # question 2 unanswered


def test_shape_mismatch_is_an_error():
    tree = default_tree()
    with pytest.raises(ValueError, match="same"):
        dirichlet_multinomial_nll(torch.zeros(2, 34), torch.ones(2, 33), tree.answer_index_ranges())
