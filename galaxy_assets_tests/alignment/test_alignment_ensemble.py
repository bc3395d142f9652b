"""The aligner ensemble: members trained alone, vectors side by side, mean similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galaxy_assets.alignment import AlignmentError, load_aligner, register_aligner, train_aligner
from galaxy_assets.alignment.model import SEARCH_MODEL_CONFIG, AlignedModel, AlignerConfig
from galaxy_assets.alignment.synthetic import synthetic_pairs

TRAIN = {"epochs": 3, "batch_size": 64, "learning_rate": 3e-3}


def test_config_checks_the_members():
    base = {"image_dim": 8, "text_dim": 6, "output_dim": 12}
    assert AlignerConfig(**base, n_members=3).member().output_dim == 4
    assert AlignerConfig(**base).member() == AlignerConfig(**base)
    with pytest.raises(AlignmentError, match="multiple of n_members=5"):
        AlignerConfig(**base, n_members=5)
    with pytest.raises(AlignmentError, match="n_members=0"):
        AlignerConfig(**base, n_members=0)
    with pytest.raises(AlignmentError, match="matryoshka_dims cannot be combined"):
        AlignerConfig(**base, n_members=2, matryoshka_dims=[4])
    cfg = AlignerConfig(image_dim=256, text_dim=384, **SEARCH_MODEL_CONFIG)
    assert cfg.n_members > 1 and cfg.output_dim == 256  # the graph's default is an ensemble


def test_ensemble_similarity_is_the_mean_of_the_members():
    torch.manual_seed(0)
    model = AlignedModel(AlignerConfig(image_dim=8, text_dim=6, output_dim=12, n_members=3))
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(5, 8)), rng.normal(size=(4, 6))
    zi, zt = model.embed_images(img), model.embed_texts(txt)
    assert zi.shape == (5, 12) and zt.shape == (4, 12)
    np.testing.assert_allclose(np.linalg.norm(zi, axis=1), 1.0, atol=1e-6)
    per_member = [m.embed_images(img) @ m.embed_texts(txt).T for m in model.members]
    np.testing.assert_allclose(zi @ zt.T, np.mean(per_member, axis=0), atol=1e-6)
    # a prefix is only the first members' vectors: refused, not searched with a warning
    with pytest.raises(AlignmentError, match="ensemble of 3 members"):
        model.embed_images(img, dim=4)


def test_train_register_and_reload_an_ensemble(tracker):
    images, captions = synthetic_pairs(300, image_dim=20, text_dim=28, noise=0.5, seed=11)
    rows = []
    result = train_aligner(
        images,
        captions,
        model_config={"output_dim": 12, "hidden_dim": 16, "n_members": 3},
        train_config=TRAIN,
        progress=rows.append,
    )
    model = result.model
    assert model.is_ensemble and len(model.members) == 3
    # each member trained alone on its own seed: different weights
    flat = [torch.cat([p.flatten() for p in m.parameters()]) for m in model.members]
    assert not torch.equal(flat[0], flat[1])
    assert [r["member"] for r in rows] == [0] * 3 + [1] * 3 + [2] * 3
    assert [h["member"] for h in result.history] == [0.0] * 3 + [1.0] * 3 + [2.0] * 3
    assert result.data["n_members"] == 3 and result.data["epochs_run"] == 9
    assert 0.0 <= result.best["t2i_recall_at_5"] <= 1.0 and np.isfinite(result.best["loss"])
    # scored as an ensemble on the validation galaxies: far above chance (5 of the pool)
    pool = result.best["retrieval_pool"]
    assert result.best["t2i_recall_at_5"] > 1.5 * 5 / pool

    reg = register_aligner(result, tracker)
    metrics = tracker.client.get_run(reg.run_id).data.metrics
    assert "member0_val_loss" in metrics and "member2_train_loss" in metrics
    back = load_aligner(tracker, "search-aligner", "candidate")
    assert back.is_ensemble
    vec = images["vector"].to_numpy()[:20].copy()
    assert back.embed_images(vec).tobytes() == model.embed_images(vec).tobytes()
