"""Training the aligner on synthetic paired embeddings, and every kind of bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from galaxy_assets.alignment import (
    MIN_PAIRS,
    AlignmentError,
    prepare_pairs,
    split_by_object,
    train_aligner,
)
from galaxy_assets.alignment.synthetic import synthetic_pairs

SMALL_MODEL = {"output_dim": 16, "hidden_dim": 48, "n_blocks": 1, "dropout": 0.0}
FAST = {
    "epochs": 12,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "warmup_fraction": 0.05,
    "select_by": "caption_loss",  # the best-validation-loss checkpoint (asserted below)
}


@pytest.fixture(scope="module")
def data():
    return synthetic_pairs(480, image_dim=24, text_dim=32, noise=0.6, seed=3)


@pytest.fixture(scope="module")
def trained(data):
    images, captions = data
    rows = []
    result = train_aligner(
        images, captions, model_config=SMALL_MODEL, train_config=FAST, progress=rows.append
    )
    return result, rows


def test_tiny_alignment_reaches_high_recall(trained):
    result, rows = trained
    assert len(rows) == FAST["epochs"] == len(result.history)
    best = result.best
    assert best["i2t_recall_at_5"] > 0.9 and best["t2i_recall_at_5"] > 0.9, best
    assert best["i2t_median_rank"] == 1.0
    first = result.history[0]
    assert result.history[-1]["train_loss"] < 0.5 * first["train_loss"]
    # the kept checkpoint is the one with the lowest validation loss
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert result.best["loss"] == pytest.approx(min(losses))
    assert result.model.config.image_encoder == "registry:morphology-encoder/v1"
    assert result.lineage["training_rows"] == "480"
    assert result.lineage["image_encoder_version"] == "1"
    assert result.data["n_val_objects"] + result.data["n_train_objects"] == 480
    assert all(0 < h["logit_scale"] <= 100 for h in result.history)


def test_aligned_vectors_rank_own_caption_first(trained, data):
    result, _ = trained
    images, captions = data
    zi = result.model.embed_images(images["vector"].to_numpy()[:100])
    zt = result.model.embed_texts(captions["vector"].to_numpy()[:100])
    assert (np.argmax(zt @ zi.T, axis=1) == np.arange(100)).mean() > 0.9


def test_the_seed_alone_decides_the_model(data):
    """Dropout draws from torch's global generator: training seeds it for its own block, so
    what the caller drew before does not change the model, and the caller's state is kept."""
    images, captions = data
    model = {**SMALL_MODEL, "dropout": 0.3}
    cfg = {**FAST, "epochs": 2, "seed": 5}

    def weights(global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        result = train_aligner(images, captions, model_config=model, train_config=cfg)
        return torch.cat([p.detach().flatten() for p in result.model.parameters()])

    a, b = weights(1), weights(2)
    assert torch.equal(a, b)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train_aligner(images, captions, model_config=model, train_config=cfg)
    assert torch.equal(torch.rand(3), expected)  # the caller's random state is untouched
    other = train_aligner(images, captions, model_config=model,
                          train_config={**cfg, "seed": 6})
    assert not torch.equal(torch.cat([p.detach().flatten() for p in other.model.parameters()]), a)


def test_split_is_by_object_hash_and_stable():
    ids = np.array([f"g{i}" for i in range(1000)])
    val = split_by_object(ids, 0.1, min_validation=16)
    assert 60 < val.sum() < 140
    # membership depends only on the id: a subset keeps its assignments
    sub = split_by_object(ids[:500], 0.1, min_validation=16)
    assert np.array_equal(sub, val[:500])
    small = split_by_object(ids[:70], 0.1, min_validation=16)
    assert small.sum() == 16  # topped up by hash order
    assert not np.array_equal(split_by_object(ids, 0.1, salt="other"), val)


def test_several_captions_per_galaxy_stay_on_one_side(data):
    images, captions = data
    extra = captions.head(100).with_columns(pl.lit("other-model").alias("model"))
    pairs = prepare_pairs(images, pl.concat([captions, extra]))
    assert pairs.n_captions == 580 and pairs.n_objects == 480
    assert pairs.caption_count.max() == 2 and pairs.caption_count.sum() == 580
    assert pairs.caption_models == ["measured-morphology", "other-model"]
    j = pairs.caption_start[pairs.caption_count == 2]
    assert np.array_equal(pairs.pair_object[j], pairs.pair_object[j + 1])
    result = train_aligner(
        images,
        pl.concat([captions, extra]),
        model_config=SMALL_MODEL,
        train_config={**FAST, "epochs": 2},
    )
    assert result.lineage["caption_model"] == "measured-morphology,other-model"
    assert result.lineage["training_rows"] == "580"


def test_captions_without_image_vectors_are_skipped_and_counted(data):
    images, captions = data
    pairs = prepare_pairs(images.slice(0, 400), captions)
    assert pairs.n_objects == 400
    assert pairs.report["n_captions_without_image"] == 80
    assert pairs.report["captions_without_image_sample"][0] == "obj000400"


def test_non_finite_vectors_are_skipped_and_counted(data):
    images, captions = data
    vec = captions["vector"].to_numpy().copy()
    vec[3, 0] = np.nan
    img = images["vector"].to_numpy().copy()
    img[5, :] = 0.0
    pairs = prepare_pairs(
        images.with_columns(pl.Series("vector", img, dtype=images["vector"].dtype)),
        captions.with_columns(pl.Series("vector", vec, dtype=captions["vector"].dtype)),
    )
    assert pairs.report["n_captions_nonfinite"] == 1 and pairs.report["n_images_nonfinite"] == 1
    assert pairs.n_objects == 478 and np.isfinite(pairs.text).all()
    # a galaxy stored twice whose first vector is broken keeps its good second one
    broken_first = pl.concat([
        images.slice(5, 1).with_columns(pl.Series("vector", img[5:6], dtype=images["vector"].dtype)),
        images,
    ])
    pairs = prepare_pairs(broken_first, captions)
    assert pairs.report["n_duplicate_image_rows"] == 1 and pairs.report["n_images_nonfinite"] == 0
    assert images["object_id"][5] in set(pairs.object_ids)


def test_too_few_captions_states_the_minimum(data):
    images, captions = data
    with pytest.raises(AlignmentError, match=rf"only 40 captioned galaxies.*at least {MIN_PAIRS}"):
        train_aligner(images, captions.head(40), train_config=FAST)
    with pytest.raises(AlignmentError, match="caption_embeddings is empty"):
        prepare_pairs(images, captions.clear())


def test_changed_or_mixed_ids_name_both(data):
    images, captions = data
    with pytest.raises(
        AlignmentError,
        match=r"text embedder 'sentence-transformers:all-MiniLM-L6-v2@synthetic', but the configured text embedder is 'st:other@1'",
    ):
        prepare_pairs(images, captions, expected_text_embedder="st:other@1")
    with pytest.raises(
        AlignmentError,
        match=r"image encoder 'registry:morphology-encoder/v1', but the configured image encoder is 'registry:morphology-encoder/v2'",
    ):
        prepare_pairs(images, captions, expected_image_encoder="registry:morphology-encoder/v2")
    mixed = pl.concat(
        [captions.head(300), captions.slice(300).with_columns(pl.lit("st:new@2").alias("embedder"))]
    )
    with pytest.raises(AlignmentError, match=r"mixes text embedders.*'st:new@2' \(180 rows\)"):
        prepare_pairs(images, mixed)
    mixed_img = pl.concat(
        [images.head(10).with_columns(pl.lit("timm:x@y").alias("encoder")), images.slice(10)]
    )
    with pytest.raises(AlignmentError, match=r"mixes image encoders.*'timm:x@y' \(10 rows\)"):
        prepare_pairs(mixed_img.lazy(), captions)
    with pytest.raises(AlignmentError, match="lacks column"):
        prepare_pairs(images.drop("encoder"), captions)


def test_a_diverging_loss_is_an_error_not_a_model(data, monkeypatch):
    import galaxy_assets.alignment.train as train_mod

    images, captions = data
    real = train_mod.contrastive_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * torch.nan if calls["n"] == 3 else loss

    monkeypatch.setattr(train_mod, "contrastive_loss", poisoned)
    with pytest.raises(
        AlignmentError, match=r"loss became nan at epoch \d, step \d.*nothing was registered"
    ):
        train_aligner(images, captions, model_config=SMALL_MODEL, train_config=FAST)


def test_bad_settings_are_named(data):
    images, captions = data
    with pytest.raises(AlignmentError, match="batch_size=1"):
        train_aligner(images, captions, train_config={"batch_size": 1})
    with pytest.raises(AlignmentError, match="unknown aligner training setting"):
        train_aligner(images, captions, train_config={"epoch": 3})
    with pytest.raises(AlignmentError, match="comes from the training data"):
        train_aligner(images, captions, model_config={"image_dim": 3})


def test_view_targets_in_blocks_match_the_dense_matrix(monkeypatch):
    """The validation views' targets are built a block of views at a time (the views × views
    similarity would need n_views² floats): the same matrix as all at once."""
    from types import SimpleNamespace

    import galaxy_assets.alignment.train as T

    rng = np.random.default_rng(0)
    counts = rng.integers(1, 6, 300)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    text = rng.normal(size=(int(counts.sum()), 16)).astype(np.float32)
    text[5], text[77] = text[40], text[3]  # texts two galaxies share
    pairs = SimpleNamespace(caption_count=counts, caption_start=starts, text=text)
    val = np.arange(0, 300, 2)
    monkeypatch.setattr(T, "VIEW_TARGET_BLOCK", 7)
    rows, blocked = T._view_targets(pairs, val)
    monkeypatch.setattr(T, "VIEW_TARGET_BLOCK", 10**6)
    rows_all, dense = T._view_targets(pairs, val)
    assert np.array_equal(rows, rows_all) and torch.equal(blocked, dense)
    owner = np.repeat(np.arange(len(val)), np.maximum(counts[val] - 1, 0))
    assert bool((dense[np.arange(len(rows)), owner] == 1).all())  # each view finds its galaxy
