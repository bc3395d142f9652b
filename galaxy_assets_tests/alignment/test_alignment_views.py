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


def _tiny_views_run(**train):
    images, captions = synthetic_pairs(200, image_dim=12, text_dim=16, noise=0.5, seed=4)
    frame = _with_views(images, captions)
    return train_aligner(
        images,
        frame,
        model_config={"output_dim": 16, "hidden_dim": 32, "n_blocks": 1, "dropout": 0.0},
        train_config={"epochs": 8, "batch_size": 64, "learning_rate": 3e-3, **train},
    )


def test_view_validation_and_checkpoint_choice():
    by_view = _tiny_views_run(select_by="view_loss")
    rows = by_view.history
    assert all("val_view_loss" in h and 0 <= h["val_view_t2i_recall_at_5"] <= 1 for h in rows)
    combined = [0.5 * (h["val_loss"] + h["val_view_loss"]) for h in rows]
    assert by_view.best_epoch == int(np.argmin(combined)) + 1
    assert by_view.best["view_loss"] == pytest.approx(rows[by_view.best_epoch - 1]["val_view_loss"])
    last = _tiny_views_run(select_by="last", patience=1)
    assert last.best_epoch == 8 == len(last.history)  # patience never stops "last"
    assert last.best["loss"] == last.history[-1]["val_loss"]
    with pytest.raises(AlignmentError, match="select_by='best'"):
        _tiny_views_run(select_by="best")


def test_view_targets_mark_every_galaxy_with_the_same_sentence():
    from galaxy_assets.alignment.data import PairedData
    from galaxy_assets.alignment.train import _view_targets

    rng = np.random.default_rng(0)
    text = rng.standard_normal((7, 5)).astype(np.float32)
    text[4] = text[2]  # galaxy 0's sentence is also galaxy 1's
    # galaxy 0: caption 0, sentences 1, 2; galaxy 1: caption 3, sentence 4; galaxy 2: caption 5, 6
    pairs = PairedData(
        object_ids=np.array(["a", "b", "c"]),
        image=np.zeros((3, 2), np.float32),
        text=text,
        pair_object=np.array([0, 0, 0, 1, 1, 2, 2]),
        caption_start=np.array([0, 3, 5]),
        caption_count=np.array([3, 2, 2]),
        image_encoder="e",
        text_embedder="t",
        caption_models=[],
        prompt_shas=[],
    )
    rows, target = _view_targets(pairs, np.array([0, 1, 2]))
    assert rows.tolist() == [1, 2, 4, 6]
    assert target.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 1]]
    rows, target = _view_targets(pairs, np.array([2]))
    assert rows.tolist() == [6] and target.tolist() == [[1]]


def test_the_temperature_learns_at_its_own_rate():
    from galaxy_assets.alignment.loss import INIT_LOGIT_SCALE
    from galaxy_assets.alignment.model import AlignerConfig, build_from_config
    from galaxy_assets.alignment.train import _param_groups

    model = build_from_config(AlignerConfig(image_dim=4, text_dim=4, hidden_dim=8))
    groups = _param_groups(model, 0.05, 0.02)
    assert groups[-1]["params"] == [model.logit_scale] and groups[-1]["lr"] == 0.02
    assert groups[-1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(p is not model.logit_scale for g in groups[:-1] for p in g["params"])
    shared = _param_groups(model, 0.05)
    assert len(shared) == 2 and any(p is model.logit_scale for p in shared[1]["params"])

    start = float(np.exp(INIT_LOGIT_SCALE))
    slow = _tiny_views_run(select_by="last", temperature_learning_rate=None, learning_rate=3e-4)
    fast = _tiny_views_run(select_by="last", temperature_learning_rate=0.05, learning_rate=3e-4)
    moved_slow = abs(slow.history[-1]["logit_scale"] - start)
    moved_fast = abs(fast.history[-1]["logit_scale"] - start)
    assert moved_slow < 0.5 and moved_fast > 5 * max(moved_slow, 0.1)


def test_text_draws_uniform_or_caption_first():
    from galaxy_assets.alignment.train import _draw_texts

    starts = torch.tensor([0, 3, 5])
    counts = torch.tensor([3, 2, 1])
    gen = torch.Generator().manual_seed(0)
    uniform = torch.stack([_draw_texts(starts, counts, None, gen) for _ in range(3000)])
    assert set(uniform[:, 0].tolist()) == {0, 1, 2} and set(uniform[:, 2].tolist()) == {5}
    assert abs(float((uniform[:, 0] == 0).float().mean()) - 1 / 3) < 0.05
    half = torch.stack([_draw_texts(starts, counts, 0.5, gen) for _ in range(3000)])
    assert abs(float((half[:, 0] == 0).float().mean()) - 0.5) < 0.05
    assert abs(float((half[:, 0] == 1).float().mean()) - 0.25) < 0.05
    assert set(half[:, 1].tolist()) == {3, 4} and set(half[:, 2].tolist()) == {5}
    only = _draw_texts(starts, counts, 1.0, gen)
    assert only.tolist() == [0, 3, 5]
    never = torch.stack([_draw_texts(starts, counts, 0.0, gen) for _ in range(200)])
    assert 0 not in never[:, 0].tolist() and 3 not in never[:, 1].tolist()
