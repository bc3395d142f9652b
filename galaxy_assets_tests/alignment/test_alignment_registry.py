"""Registering the aligner in MLflow, reloading it in a fresh process, and search vectors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from galaxy_assets.alignment import (
    AlignmentError,
    ProjectStats,
    encode_queries,
    load_aligner,
    project_shard,
    register_aligner,
    train_aligner,
)
from galaxy_assets.alignment.synthetic import synthetic_pairs

MODEL = {"output_dim": 12, "hidden_dim": 32, "n_blocks": 2, "matryoshka_dims": [4]}
TRAIN = {"epochs": 3, "batch_size": 64, "learning_rate": 3e-3}

RELOAD = textwrap.dedent(
    """
    import sys, numpy as np
    import galaxy_assets
    import torch
    torch.set_num_threads(1)
    from galaxy_assets.tracking import Tracker
    from galaxy_assets.alignment import load_aligner
    uri, root, folder = sys.argv[1:4]
    model = load_aligner(Tracker(uri, root), "search-aligner", "candidate")
    np.save(folder + "/img_out.npy", model.embed_images(np.load(folder + "/img_in.npy")))
    np.save(folder + "/txt_out.npy", model.embed_texts(np.load(folder + "/txt_in.npy")))
    print(model.aligner_version)
    """
)


@pytest.fixture(scope="module")
def data():
    return synthetic_pairs(300, image_dim=20, text_dim=28, noise=0.5, seed=11)


@pytest.fixture(scope="module")
def result(data):
    images, captions = data
    return train_aligner(images, captions, model_config=MODEL, train_config=TRAIN)


def test_register_logs_everything_and_reloads_bit_identically_in_a_fresh_process(
    tracker, result, data, tmp_path
):
    images, captions = data
    reg = register_aligner(result, tracker)
    assert (reg.name, reg.version, reg.alias) == ("search-aligner", 1, "candidate")
    assert reg.aligner_version == "search-aligner/v1" == result.model.aligner_version
    assert tracker.get_alias_version("search-aligner", "champion") is None  # moves later

    run = tracker.client.get_run(reg.run_id)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    for key in (
        "model.output_dim",
        "model.hidden_dim",
        "model.n_blocks",
        "model.dropout",
        "model.matryoshka_dims",
        "train.learning_rate",
        "train.batch_size",
        "train.epochs",
        "train.weight_decay",
        "train.warmup_fraction",
        "train.seed",
        "data.n_pairs",
        "data.n_val_objects",
    ):
        assert key in params, key
    assert params["model.matryoshka_dims"] == "[4]"
    assert tags["lineage.caption_prompt_sha"] == "000000000000"
    assert tags["lineage.caption_model"] == "measured-morphology"
    assert tags["lineage.text_embedder"] == "sentence-transformers:all-MiniLM-L6-v2@synthetic"
    assert tags["lineage.image_encoder"] == "registry:morphology-encoder/v1"
    assert tags["lineage.image_encoder_version"] == "1"
    assert tags["lineage.training_rows"] == "300"
    assert metrics["best_val_loss"] == pytest.approx(result.best["loss"])
    assert "best_val_i2t_recall_at_5" in metrics and "val_t2i_median_rank" in metrics
    history = tracker.client.get_metric_history(reg.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    mv = tracker.client.get_model_version("search-aligner", "1")
    assert mv.tags["lineage.image_encoder"] == "registry:morphology-encoder/v1"
    art = Path(run.info.artifact_uri.removeprefix("file://"))
    meta = json.loads((art / "model" / "model.json").read_text())
    assert meta["code_ref"] == "galaxy_assets.alignment.model:build_from_config"
    assert not list(art.rglob("*.pkl")) and (art / "plots" / "training.png").is_file()

    img_in = images["vector"].to_numpy()[:50].copy()
    txt_in = captions["vector"].to_numpy()[:50].copy()
    np.save(tmp_path / "img_in.npy", img_in)
    np.save(tmp_path / "txt_in.npy", txt_in)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RELOAD,
            tracker.tracking_uri,
            str(tracker.artifact_root),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "search-aligner/v1"
    want_img = result.model.embed_images(img_in)
    want_txt = result.model.embed_texts(txt_in)
    got_img, got_txt = np.load(tmp_path / "img_out.npy"), np.load(tmp_path / "txt_out.npy")
    assert got_img.tobytes() == want_img.tobytes() and got_txt.tobytes() == want_txt.tobytes()

    same = load_aligner(tracker, "search-aligner", "candidate")
    assert same.embed_images(img_in).tobytes() == want_img.tobytes()
    with pytest.raises(AlignmentError, match="no alias 'champion'"):
        load_aligner(tracker)


def test_project_shard_gives_search_vectors_with_the_version(result, data):
    images, _ = data
    model = result.model
    model.aligner_version = "search-aligner/v7"
    shard = images.slice(0, 40)
    vec = shard["vector"].to_numpy().copy()
    vec[2, 0] = np.inf
    shard = shard.with_columns(pl.Series("vector", vec, dtype=shard["vector"].dtype))
    stats = ProjectStats()
    out = project_shard(shard, model, batch_size=16, stats=stats)
    assert out.columns == ["object_id", "aligner_version", "vector"]
    assert out.schema["vector"] == pl.Array(pl.Float32, 12)
    assert out.height == 39 and stats.n_skipped == 1 and stats.skipped_object_ids == ["obj000002"]
    assert set(out["aligner_version"]) == {"search-aligner/v7"}
    v = out["vector"].to_numpy()
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.allclose(v[0], model.embed_images(vec[:1])[0], atol=1e-6)  # other batch: ULPs
    small = project_shard(shard, model, dim=4)
    assert small.schema["vector"] == pl.Array(pl.Float32, 4)

    other = shard.with_columns(pl.lit("timm:resnet18@x/pp-1").alias("encoder"))
    with pytest.raises(
        AlignmentError,
        match=r"image encoder 'timm:resnet18@x/pp-1' cannot go "
        r"through search-aligner/v7, which was trained on image encoder "
        r"'registry:morphology-encoder/v1'",
    ):
        project_shard(other, model)
    model.aligner_version = None
    with pytest.raises(AlignmentError, match="needs the aligner version"):
        project_shard(shard, model)


def test_queries_need_the_training_text_embedder(result, data):
    _, captions = data

    class Embedder:
        def __init__(self, embedder_id):
            self.embedder_id = embedder_id

        def embed(self, texts):
            return captions["vector"].to_numpy()[: len(texts)]

    good = Embedder("sentence-transformers:all-MiniLM-L6-v2@synthetic")
    q = encode_queries(["spiral arms", "merger"], good, result.model)
    assert q.shape == (2, 12)
    with pytest.raises(AlignmentError, match=r"text embedder 'st:other@9' cannot go through"):
        encode_queries(["x"], Embedder("st:other@9"), result.model)
