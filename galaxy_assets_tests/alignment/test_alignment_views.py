"""Sentence views of captions and the shared-positive loss for identical texts."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from galaxy_assets.alignment import AlignmentError, contrastive_loss, prepare_pairs, train_aligner
from galaxy_assets.alignment.data import caption_sentences
from galaxy_assets.alignment.synthetic import synthetic_pairs
from galaxy_assets.alignment.train import duplicate_text_mask, shared_positive_loss


def test_caption_sentences_split_keeps_numbers_and_drops_fragments():
    captions = pl.DataFrame(
        {
            "object_id": ["a", "b", "c"],
            "caption": [
                "A smooth elliptical galaxy (Sérsic index about 2.1). Thin blue arcs lie "
                "around the core at about 1.4 arcsec. An S0.",
                "A single sentence about a spiral galaxy.",
                None,
            ],
            "model": ["m", "m", "m"],
        }
    )
    views = caption_sentences(captions)
    assert views["object_id"].to_list() == ["a", "a"]
    assert views["caption"].to_list() == [
        "A smooth elliptical galaxy (Sérsic index about 2.1).",
        "Thin blue arcs lie around the core at about 1.4 arcsec.",
    ]
    assert set(views["view"].to_list()) == {"sentence"}
    assert views["model"].to_list() == ["m", "m"]
    with pytest.raises(AlignmentError, match="min_words"):
        caption_sentences(captions, min_words=0)


def _with_views(images: pl.DataFrame, captions: pl.DataFrame, seed: int = 0):
    """Whole captions plus two noisy 'sentence' vectors per galaxy, views listed first."""
    rng = np.random.default_rng(seed)
    vec = captions["vector"].to_numpy()
    sentences = captions.select("object_id", "embedder").with_columns(
        pl.lit("sentence").alias("view")
    )
    parts = []
    for _ in range(2):
        noisy = (vec + 0.3 * rng.standard_normal(vec.shape)).astype(np.float32)
        parts.append(
            sentences.with_columns(pl.Series("vector", noisy).cast(captions["vector"].dtype))
        )
    whole = (
        captions.select("object_id", "embedder", "vector")
        .with_columns(pl.lit("caption").alias("view"))
        .select("object_id", "embedder", "view", "vector")
    )
    return pl.concat([p.select(whole.columns) for p in parts] + [whole])


def test_prepare_pairs_puts_the_whole_caption_first():
    images, captions = synthetic_pairs(80, image_dim=8, text_dim=12, seed=1)
    frame = _with_views(images, captions)
    pairs = prepare_pairs(images, frame)
    assert pairs.n_captions == 3 * 80 and pairs.report["n_sentence_views"] == 160
    assert (pairs.caption_count == 3).all()
    whole = dict(zip(captions["object_id"].to_list(), captions["vector"].to_numpy(), strict=True))
    first = pairs.text[pairs.caption_start]
    expected = np.stack([whole[o] for o in pairs.object_ids])
    np.testing.assert_allclose(first, expected)


def test_views_without_their_caption_and_unknown_views_are_errors():
    images, captions = synthetic_pairs(80, image_dim=8, text_dim=12, seed=1)
    frame = _with_views(images, captions)
    orphan = frame.filter(
        ~((pl.col("object_id") == frame["object_id"][0]) & (pl.col("view") == "caption"))
    )
    with pytest.raises(AlignmentError, match="no whole caption"):
        prepare_pairs(images, orphan)
    with pytest.raises(AlignmentError, match="view holds"):
        prepare_pairs(images, frame.with_columns(pl.lit("summary").alias("view")))


def test_duplicate_mask_and_shared_positive_loss():
    g = torch.Generator().manual_seed(0)
    text = torch.randn(6, 10, generator=g)
    image_z, text_z = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    scale = torch.tensor(10.0)
    assert duplicate_text_mask(text, 0.999) is None
    assert duplicate_text_mask(text, None) is None
    # no duplicates: exactly the plain loss
    torch.testing.assert_close(
        shared_positive_loss(image_z, text_z, scale, None), contrastive_loss(image_z, text_z, scale)
    )
    text[3] = text[1] * 2.0  # the same text (same direction)
    same = duplicate_text_mask(text, 0.999)
    assert same is not None and same[1, 3] and same[3, 1] and int(same.sum()) == 8
    # direct computation: the target row of text 1 (and 3) is split evenly over images 1 and 3
    zi = torch.nn.functional.normalize(image_z, dim=-1)
    zt = torch.nn.functional.normalize(text_z, dim=-1)
    logits = scale * zi @ zt.T
    target = same.float() / same.float().sum(1, keepdim=True)
    want = 0.5 * (
        -(target * logits.log_softmax(1)).sum(1).mean()
        - (target * logits.T.log_softmax(1)).sum(1).mean()
    )
    got = shared_positive_loss(image_z, text_z, scale, same)
    torch.testing.assert_close(got, want)
    assert not torch.isclose(got, contrastive_loss(image_z, text_z, scale))


def test_training_with_views_and_shared_positives_runs_and_reports():
    images, captions = synthetic_pairs(240, image_dim=12, text_dim=16, noise=0.5, seed=2)
    frame = _with_views(images, captions)
    # a templated sentence repeated for many galaxies: shared positives must kick in
    rep = frame["vector"].to_numpy()[0]
    first_views = frame.with_row_index("i").filter(pl.col("view") == "sentence")["i"][:60].to_list()
    vec = frame["vector"].to_numpy().copy()
    vec[first_views] = rep
    frame = frame.with_columns(pl.Series("vector", vec).cast(frame["vector"].dtype))
    result = train_aligner(
        images,
        frame,
        model_config={"output_dim": 16, "hidden_dim": 32, "n_blocks": 1, "dropout": 0.0},
        train_config={
            "epochs": 6,
            "batch_size": 64,
            "learning_rate": 3e-3,
            "duplicate_text_threshold": 0.999,
        },
    )
    assert result.data["n_sentence_views"] == 480
    assert sum(h["shared_positive_pairs"] for h in result.history) > 0
    assert result.best["t2i_recall_at_10"] > 0.2  # whole captions validate (pool 24+)
