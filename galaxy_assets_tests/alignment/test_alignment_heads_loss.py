"""Heads, the InfoNCE loss, the learned temperature and the retrieval metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from galaxy_assets.alignment import AlignedModel, AlignerConfig, AlignmentError, ProjectionHead
from galaxy_assets.alignment.loss import (
    INIT_LOGIT_SCALE,
    MAX_LOGIT_SCALE,
    clip_loss,
    contrastive_loss,
)
from galaxy_assets.alignment.metrics import (
    equivalent_caption_recall,
    ranks_of_partners,
    retrieval_metrics,
)


def _direct_infonce(u: np.ndarray, v: np.ndarray, scale: float) -> float:
    """Symmetric InfoNCE written out with loops and float64 log-sum-exp."""
    n = len(u)
    sims = scale * (u.astype(np.float64) @ v.astype(np.float64).T)
    i2t = t2i = 0.0
    for i in range(n):
        row, col = sims[i], sims[:, i]
        i2t += -(row[i] - (row.max() + math.log(np.exp(row - row.max()).sum())))
        t2i += -(col[i] - (col.max() + math.log(np.exp(col - col.max()).sum())))
    return 0.5 * (i2t / n + t2i / n)


def test_infonce_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(9, 7, generator=g), dim=-1)
    v = F.normalize(torch.randn(9, 7, generator=g), dim=-1)
    for scale in (1.0, 1 / 0.07, 100.0):
        got = float(clip_loss(u, v, scale))
        assert got == pytest.approx(_direct_infonce(u.numpy(), v.numpy(), scale), rel=1e-5)
    # perfectly aligned pairs with a large scale: loss → 0; the loss is symmetric
    assert float(clip_loss(u, u, 100.0)) < 0.01
    assert float(clip_loss(u, v, 3.0)) == pytest.approx(float(clip_loss(v, u, 3.0)), rel=1e-6)


def test_matryoshka_loss_averages_truncated_widths():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    full = clip_loss(F.normalize(a, dim=-1), F.normalize(b, dim=-1), 5.0)
    assert float(contrastive_loss(a, b, 5.0)) == pytest.approx(float(full), rel=1e-6)
    parts = [
        clip_loss(F.normalize(a[:, :d], dim=-1), F.normalize(b[:, :d], dim=-1), 5.0)
        for d in (4, 16)
    ]
    assert float(contrastive_loss(a, b, 5.0, [16, 4, 4])) == pytest.approx(
        float(sum(parts) / 2), rel=1e-6
    )


def test_heads_shapes_and_unit_norm():
    head = ProjectionHead(in_dim=12, out_dim=5, hidden_dim=16, n_blocks=3, dropout=0.0)
    z = head(torch.randn(4, 12))
    assert z.shape == (4, 5) and z.dtype == torch.float32
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-6)
    assert (
        len(head.blocks) == 3 and head(torch.randn(2, 12), normalize=False).norm(dim=1).ne(1).all()
    )
    model = AlignedModel(AlignerConfig(image_dim=12, text_dim=20, output_dim=8, hidden_dim=16))
    img = model.embed_images(np.random.default_rng(0).normal(size=(5, 12)))
    txt = model.embed_texts(np.random.default_rng(1).normal(size=(3, 20)).astype(np.float32))
    assert img.shape == (5, 8) and txt.shape == (3, 8) and img.dtype == np.float32
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-6)
    with pytest.raises(AlignmentError, match=r"takes \(N, 12\) image-encoder vectors"):
        model.embed_images(np.zeros((2, 20), np.float32))


def test_matryoshka_truncation_and_config_validation():
    cfg = AlignerConfig(
        image_dim=6, text_dim=6, output_dim=8, hidden_dim=8, matryoshka_dims=[4, 2, 4]
    )
    assert cfg.matryoshka_dims == [2, 4] and cfg.widths == [2, 4, 8]
    model = AlignedModel(cfg)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    full = model.embed_images(x)
    small = model.embed_images(x, dim=4)
    assert small.shape == (3, 4) and np.allclose(np.linalg.norm(small, axis=1), 1, atol=1e-6)
    ratio = full[:, :4] / small  # the same direction, re-normalised
    assert np.allclose(ratio, ratio[:, :1], atol=1e-5)
    with pytest.raises(AlignmentError, match="have 8 dimensions"):
        model.embed_images(x, dim=9)
    with pytest.raises(AlignmentError, match="matryoshka_dims"):
        AlignerConfig(image_dim=6, text_dim=6, output_dim=8, matryoshka_dims=[16])
    with pytest.raises(AlignmentError, match="unknown keys"):
        AlignerConfig.from_dict({"image_dim": 1, "text_dim": 1, "colour": "red"})


def test_learned_temperature_starts_at_clip_value_and_is_clamped():
    model = AlignedModel(AlignerConfig(image_dim=4, text_dim=4, output_dim=4, hidden_dim=4))
    assert float(model.logit_scale.detach()) == pytest.approx(INIT_LOGIT_SCALE)
    assert float(model.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) ≈ 22026
    assert float(model.scale().detach()) == MAX_LOGIT_SCALE
    model.clamp_logit_scale_()
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(MAX_LOGIT_SCALE))
    with torch.no_grad():
        model.logit_scale.fill_(1.0)
    model.scale().backward()  # below the limit the temperature is learned
    assert float(model.logit_scale.grad) == pytest.approx(math.e)


def test_ranks_are_pessimistic_and_recall_counts_hits():
    sims = np.array([[0.9, 0.1, 0.2], [0.5, 0.4, 0.1], [0.3, 0.3, 0.3]], np.float32)
    q, c = np.eye(3, dtype=np.float32), sims.T.copy()  # q @ c.T == sims
    assert ranks_of_partners(q, c, chunk_size=2).tolist() == [1, 2, 3]  # ties count against
    collapsed = np.ones((5, 3), np.float32)
    assert ranks_of_partners(collapsed, collapsed).tolist() == [5] * 5  # ties rank last
    q = np.eye(4, dtype=np.float32)
    m = retrieval_metrics(q, q)
    assert m["i2t_recall_at_1"] == 1.0 and m["t2i_median_rank"] == 1.0
    assert m["retrieval_pool"] == 4.0
    assert set(m) >= {"i2t_recall_at_5", "t2i_recall_at_10", "i2t_median_rank"}
    assert all(ch.isalnum() or ch in "_" for k in m for ch in k)  # MLflow-safe names


def test_equivalent_caption_recall_counts_galaxies_with_the_same_description():
    # captions 0 and 1 say the same thing (identical vectors), 2 and 3 differ from all
    captions = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    text_z = np.eye(4, dtype=np.float32)
    # scores[q, g] = text_z[q] · image_z[g]: query 0 ranks galaxy 1 (its caption twin) first,
    # then its own; query 1 its own; queries 2 and 3 rank galaxy 0 first, their own second
    scores = np.array([[0.5, 1, 0, 0], [0, 1, 0, 0], [0.7, 0, 0.6, 0], [0.7, 0, 0, 0.6]],
                      np.float32)
    image_z = scores.T.copy()
    strict = ranks_of_partners(text_z, image_z)
    assert strict[0] == 2  # own galaxy second: a strict R@1 miss
    out = equivalent_caption_recall(text_z, image_z, captions, ks=(1, 2))
    # query 0: top-1 is galaxy 1, whose caption equals its own: a hit at k=1
    # query 1: top-1 is galaxy 1 itself; queries 2, 3: top-1 galaxy 0 differs, own at rank 2
    assert out["t2i_equiv_recall_at_1"] == pytest.approx(0.5)
    assert out["t2i_equiv_recall_at_2"] == pytest.approx(1.0)
    assert out["caption_twins"] == pytest.approx(0.5)  # two captions with one twin each
