"""The encoder model: config round trip, presets, checkpoints, normalisation, augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from galaxy_assets.morphology import MorphologyError, default_tree
from galaxy_assets.morphology.augment import AugmentConfig, augment_batch, center_crop
from galaxy_assets.morphology.model import (
    PRESETS,
    build_from_config,
    build_model,
    count_parameters,
    fit_normalization,
    load_backbone_checkpoint,
    preset_config,
)


def test_config_round_trip_and_outputs():
    cfg = preset_config("tiny", image_size=32)
    cfg.norm = {"softening": [0.01] * 4, "mean": [0.1] * 4, "std": [2.0] * 4}
    model = build_model(cfg, seed=3)
    again = build_from_config(json.loads(json.dumps(cfg.to_dict())))
    again.load_state_dict(model.state_dict())
    model.eval()
    again.eval()
    x = torch.randn(5, 4, 32, 32) * 0.05
    x[0, 0, 0, 0] = float("nan")  # non-finite pixels are tolerated
    conc = model(x)
    assert conc.shape == (5, default_tree().n_answers)
    assert torch.all(conc >= 1.0) and torch.all(conc <= 101.0)
    assert torch.equal(conc, again(x))
    feats = model.encode(x)
    assert feats.shape == (5, model.embedding_dim) and torch.isfinite(feats).all()
    assert torch.allclose(model.expected_fractions(x)[:, :3].sum(1), torch.ones(5))
    # same seed, same init; another seed, another init
    assert torch.equal(build_model(cfg, seed=3).head[1].weight, model.head[1].weight)
    assert not torch.equal(build_model(cfg, seed=4).head[1].weight, model.head[1].weight)


def test_presets_grow_and_unknown_names_fail():
    sizes = [count_parameters(build_from_config(preset_config(p))) for p in PRESETS]
    assert sizes == sorted(sizes) and sizes[-1] > 10 * sizes[0]
    assert build_from_config(preset_config("convnext_atto")).embedding_dim == 320
    with pytest.raises(MorphologyError, match="neither a preset"):
        preset_config("no_such_net")
    with pytest.raises(MorphologyError, match="unknown keys"):
        build_from_config({**preset_config("tiny").to_dict(), "colour": "red"})


def test_checkpoint_from_another_band_count_loads_non_strictly(tmp_path):
    import timm

    spec = PRESETS["tiny"]
    rgb = timm.create_model(spec["backbone"], in_chans=3, num_classes=10, **spec["backbone_kwargs"])
    state = {f"encoder.{k}": v for k, v in rgb.state_dict().items()}  # a Zoobot-style prefix
    path = tmp_path / "zoobot_like.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model = build_model(preset_config("tiny"), checkpoint=path)
    report = model.backbone.checkpoint_report
    assert report.prefix == "encoder."
    assert report.missing == []
    assert "encoder.fc.weight" in report.unexpected
    assert report.adapted == ["conv1.0.weight"]
    assert torch.equal(model.backbone.layer4[0].conv1.weight, rgb.layer4[0].conv1.weight)
    assert model.config.init_checkpoint == str(path)
    # rebuilding from the config never re-reads the checkpoint
    build_from_config({**model.config.to_dict(), "init_checkpoint": "/gone.pt"})

    other = timm.create_model("convnext_atto", num_classes=0)
    torch.save(other.state_dict(), tmp_path / "convnext.pt")
    with pytest.raises(MorphologyError, match="shares no parameter names"):
        load_backbone_checkpoint(
            build_model(preset_config("tiny")).backbone, tmp_path / "convnext.pt"
        )
    with pytest.raises(MorphologyError, match="does not exist"):
        build_model(preset_config("tiny"), checkpoint=tmp_path / "missing.pt")


def test_normalisation_fit():
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 0.01, size=(20, 2, 32, 32)).astype(np.float32)
    images[:, :, 12:20, 12:20] += 1.0
    norm = fit_normalization(images)
    assert norm["softening"] == pytest.approx([0.01, 0.01], rel=0.15)
    cfg = preset_config("tiny", bands=["g", "r"], image_size=32)
    cfg.norm = norm
    out = build_model(cfg).normalize(torch.as_tensor(images))
    assert abs(float(out.mean())) < 1e-3 and float(out.std()) == pytest.approx(1.0, rel=1e-2)


def test_augment_is_seeded_and_identity_when_disabled():
    x = torch.randn(6, 3, 32, 32)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = augment_batch(x, AugmentConfig(), g1), augment_batch(x, AugmentConfig(), g2)
    assert torch.equal(a, b) and a.shape == x.shape and not torch.allclose(a, x)
    assert torch.allclose(augment_batch(x, AugmentConfig.none()), x, atol=1e-5)
    cropped = augment_batch(
        x,
        AugmentConfig.none().__class__(
            rotate=False, flip=False, zoom=(1.0, 1.0), shift=0.0, crop=24
        ),
    )
    assert torch.allclose(cropped, center_crop(x, 24), atol=1e-5)
    # a centred blob keeps its flux under rotation and flips
    yy, xx = torch.meshgrid(torch.arange(32) - 15.5, torch.arange(32) - 15.5, indexing="ij")
    blob = torch.exp(-(xx**2 + (yy / 2) ** 2) / 8)[None, None].repeat(4, 1, 1, 1)
    cfg = AugmentConfig(zoom=(1.0, 1.0), shift=0.0)
    rot = augment_batch(blob, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(rot.sum(dim=(1, 2, 3)), blob.sum(dim=(1, 2, 3)), rtol=0.02)
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom=(1.2, 1.0))
