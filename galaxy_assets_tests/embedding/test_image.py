"""Image encoders (timm, registry, AION) and streaming a shard through one."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import pytest
import torch

import galaxy_assets  # noqa: F401  (torchvision import hook before timm)
from galaxy_assets.embedding.image import (
    AionImageEncoder,
    EmbedStats,
    ImageEncoder,
    ImageEncoderError,
    ModuleImageEncoder,
    RegistryImageEncoder,
    TimmImageEncoder,
    ViewAveragedEncoder,
    aion_band_names,
    build_image_encoder,
    embed_shard,
    encoder_version,
    open_shard_for,
    prepare_aion_flux,
    split_tta,
    unit_rows,
)
from galaxy_assets.survey.base import CutoutBatch
from galaxy_assets.survey.mmu import write_mmu_shard
from galaxy_assets.survey.readers import open_shard

TINY = {"channels": [8, 16, 24, 32], "stem_width": 8}
HAS_AION = importlib.util.find_spec("aion") is not None


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _galaxies(n: int, size: int, seed: int = 0, bands: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    imgs = rng.normal(0, 0.01, (n, bands, size, size)).astype(np.float32)
    for i in range(n):
        r2 = (xx / rng.uniform(1, 4)) ** 2 + (yy / rng.uniform(1, 4)) ** 2
        imgs[i] += (rng.uniform(0.1, 2) * np.exp(-r2))[None] * rng.uniform(0.5, 1.5, (bands, 1, 1))
    return imgs


def _shard(tmp_path: Path, images: np.ndarray, bands=("g", "r", "i", "z")) -> Path:
    n = len(images)
    return write_mmu_shard(
        tmp_path / "healpix=7" / "001-of-001.hdf5",
        images=images,
        bands=list(bands),
        object_id=[f"g{i:04d}" for i in range(n)],
        ra=np.linspace(10, 11, n),
        dec=np.linspace(-1, 1, n),
    )


@pytest.fixture(scope="module")
def tiny_timm() -> TimmImageEncoder:
    return TimmImageEncoder("resnet10t", size=32, batch_size=16, backbone_kwargs=TINY)


# --------------------------------------------------------------------------- helpers / ids
def test_unit_rows_and_encoder_versions():
    rows = unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0]]))
    assert np.allclose(rows[0], [0.6, 0.8]) and np.isnan(rows[1:]).all()
    assert encoder_version("registry:morphology-encoder/v3") == "3"
    assert encoder_version("registry:morphology-encoder/v3+rot4") == "3+rot4"
    assert encoder_version("timm:resnet18@ckpt-abc/pp-1234+d8") == "ckpt-abc+d8"
    assert encoder_version("timm:resnet18@ckpt-abc/pp-1234") == "ckpt-abc"
    assert encoder_version("aion:polymathic-ai/aion-base@0123abcd/legacysurvey") == "0123abcd"


def test_factory_names_kinds_and_settings():
    with pytest.raises(
        ImageEncoderError,
        match=r"kind='clip' is unknown; use one of \['aion', 'registry', 'timm'\]",
    ):
        build_image_encoder("clip")
    with pytest.raises(ImageEncoderError, match=r"unknown setting\(s\) \['colour'\]"):
        build_image_encoder("timm", name="resnet10t", colour="red")
    enc = build_image_encoder(
        "zoobot", name="resnet10t", size=32, backbone_kwargs=TINY, checkpoint=None
    )
    assert isinstance(enc, TimmImageEncoder) and isinstance(enc, ImageEncoder)


def test_module_encoder_needs_an_encode_method():
    with pytest.raises(ImageEncoderError, match="Linear has no encode"):
        ModuleImageEncoder(torch.nn.Linear(2, 2), encoder_id="x")


# --------------------------------------------------------------------------- timm
def test_timm_encoder_gives_unit_vectors_and_a_stable_id(tiny_timm):
    imgs = _galaxies(20, 40)
    out = tiny_timm.encode(imgs)
    assert out.shape == (20, tiny_timm.dim) == (20, 32) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert tiny_timm.encoder_id.startswith("timm:resnet10t@random-seed0/pp-")
    again = TimmImageEncoder("resnet10t", size=32, batch_size=7, backbone_kwargs=TINY)
    assert again.encoder_id == tiny_timm.encoder_id
    assert np.allclose(again.encode(imgs), out, atol=1e-5)  # batch size does not matter
    other = TimmImageEncoder("resnet10t", size=32, backbone_kwargs=TINY, normalize="none")
    assert other.encoder_id != tiny_timm.encoder_id  # preprocessing is part of the id
    # without the stretch, the id stays that of revision 1 (its vectors did not change)
    import hashlib
    import json

    unstretched = {"bands": ["g", "r", "i", "z"], "size": 32, "normalize": "none",
                   "mean": None, "std": None, "backbone_kwargs": TINY}
    pp = hashlib.sha256(json.dumps(unstretched, sort_keys=True).encode()).hexdigest()[:8]
    assert other.encoder_id.endswith(f"/pp-{pp}")
    assert tiny_timm.encode(np.zeros((0, 4, 32, 32), np.float32)).shape == (0, 32)


def test_a_small_cutout_is_stretched_by_its_own_sky_before_padding():
    """A cutout smaller than the encoder's size was zero-padded first: the stretch then read
    its sky noise off a border of zeros and fell back to the galaxy-dominated spread, so the
    sky came out a different level for every brightness."""
    enc = TimmImageEncoder("resnet10t", size=48, batch_size=4, backbone_kwargs=TINY)
    seen = []
    enc.model = lambda x: seen.append(x) or torch.ones((x.shape[0], enc.dim))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24] - 11.5
    blob = np.exp(-(xx**2 + yy**2) / 8.0)
    sky = []
    noise = rng.normal(0, 1, (4, 24, 24))
    for amp in (0.05, 50.0):
        img = (amp * blob + noise).astype(np.float32)[None]
        enc.encode(img)
        x = seen[-1][0]
        inner = x[:, 12:36, 12:36]  # the cutout inside the padding
        sky.append(float(inner[:, :4, :].std()))
        assert float(x[:, :12, :].abs().max()) == 0.0  # padding stays empty
    assert sky[0] == pytest.approx(sky[1], rel=0.02)  # the sky looks the same either way


def test_timm_checkpoint_is_loaded_and_adapted(tmp_path):
    import timm
    from safetensors.torch import save_file

    rgb = timm.create_model("resnet10t", in_chans=3, num_classes=5, **TINY)
    path = tmp_path / "zoobot_like.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    enc = TimmImageEncoder("resnet10t", checkpoint=path, size=32, backbone_kwargs=TINY)
    report = enc.checkpoint_report
    assert report.prefix == "encoder." and report.adapted == ["conv1.0.weight"]
    assert enc.encoder_id.startswith("timm:resnet10t@ckpt-") and "random" not in enc.encoder_id
    want = rgb.state_dict()["layer1.0.conv1.weight"]
    assert torch.equal(enc.model.state_dict()["layer1.0.conv1.weight"], want)


def test_timm_errors_name_the_setting(tmp_path):
    with pytest.raises(ImageEncoderError, match="name='no_such_net' is not a timm model"):
        TimmImageEncoder("no_such_net")
    with pytest.raises(ImageEncoderError, match=r"checkpoint='.*missing.pt' does not exist"):
        TimmImageEncoder("resnet10t", checkpoint=tmp_path / "missing.pt", backbone_kwargs=TINY)
    with pytest.raises(ImageEncoderError, match="in_chans=3 but bands"):
        TimmImageEncoder("resnet10t", in_chans=3, backbone_kwargs=TINY)
    with pytest.raises(ImageEncoderError, match="normalize='log'"):
        TimmImageEncoder("resnet10t", normalize="log", backbone_kwargs=TINY)
    enc = TimmImageEncoder("resnet10t", size=32, backbone_kwargs=TINY)
    with pytest.raises(ImageEncoderError, match="images have 3 bands but the encoder takes 4"):
        enc.encode(np.zeros((2, 3, 32, 32), np.float32))


# --------------------------------------------------------------------------- registry
@pytest.fixture
def tracker(tmp_path):
    from galaxy_assets.tracking import Tracker

    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")


def test_registry_encoder_uses_the_registered_morphology_model(tracker):
    from galaxy_assets.morphology.model import CODE_REF, build_model, preset_config

    cfg = preset_config("tiny", image_size=16, bands=("g", "r", "z"))
    model = build_model(cfg, seed=3).eval()
    with tracker.start_run("morphology") as run:
        path = run.log_torch_model("model", model.state_dict(), cfg.to_dict(), CODE_REF)
    version = tracker.register(run.run_id, path, "morphology-encoder")
    tracker.set_alias("morphology-encoder", "champion", version)

    enc = build_image_encoder("registry", tracker=tracker, batch_size=8)
    assert enc.encoder_id == "registry:morphology-encoder/v1" and enc.version == 1
    assert enc.bands == ("g", "r", "z") and enc.image_size == 16 and enc.dim == model.embedding_dim
    imgs = _galaxies(10, 20, bands=3)  # 20 px cutouts are centre-cropped to 16
    out = enc.encode(imgs)
    with torch.no_grad():
        want = unit_rows(model.encode(torch.from_numpy(imgs[:, :, 2:18, 2:18])))
    assert np.allclose(out, want, atol=1e-5)
    with pytest.raises(ImageEncoderError, match="12 × 12 px, smaller than the 16 px"):
        enc.encode(_galaxies(2, 12, bands=3))
    with pytest.raises(
        ImageEncoderError, match=r"no registered model 'ghost'.*materialize morphology_encoder"
    ):
        RegistryImageEncoder("ghost", tracker=tracker)
    with pytest.raises(ImageEncoderError, match="no alias 'gold'"):
        RegistryImageEncoder(alias="gold", tracker=tracker)



# --------------------------------------------------------------------------- test-time views
def test_view_averaged_vectors_do_not_depend_on_the_galaxys_orientation(tiny_timm):
    """rot4 averages the base encoder's unit vectors over quarter turns, d8 over those and their
    mirror images: the vector of a turned cutout (and, for d8, a mirrored one) is the vector of
    the cutout, which the base network's own vector is not."""
    imgs = _galaxies(6, 32, seed=5)
    turned = np.ascontiguousarray(np.rot90(imgs, 1, axes=(-2, -1)))
    mirrored = np.ascontiguousarray(imgs[..., ::-1])
    base = tiny_timm.encode(imgs)
    assert not np.allclose(tiny_timm.encode(turned), base, atol=1e-3)  # the network is not

    rot4 = ViewAveragedEncoder(tiny_timm, "rot4")
    out = rot4.encode(imgs)
    assert out.shape == (6, tiny_timm.dim) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    manual = sum(tiny_timm.encode(np.ascontiguousarray(np.rot90(imgs, k, axes=(-2, -1))))
                 for k in range(4))
    assert np.allclose(out, manual / np.linalg.norm(manual, axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(rot4.encode(turned), out, atol=1e-5)
    assert not np.allclose(rot4.encode(mirrored), out, atol=1e-3)

    d8 = ViewAveragedEncoder(tiny_timm, "d8")
    assert len(list(d8.views(imgs))) == 8 and len(list(rot4.views(imgs))) == 4
    both = d8.encode(imgs)
    assert np.allclose(d8.encode(turned), both, atol=1e-5)
    assert np.allclose(d8.encode(mirrored), both, atol=1e-5)
    assert (rot4.encoder_id, d8.encoder_id) == (f"{tiny_timm.encoder_id}+rot4",
                                                f"{tiny_timm.encoder_id}+d8")
    assert (d8.dim, d8.bands, d8.image_size, d8.batch_size) == (
        tiny_timm.dim, tiny_timm.bands, tiny_timm.image_size, tiny_timm.batch_size)
    assert isinstance(d8, ImageEncoder)


def test_view_averaging_keeps_broken_galaxies_broken_and_refuses_bad_input(tmp_path):
    imgs = _galaxies(12, 16, seed=6)
    imgs[4] = 0.0
    enc = ViewAveragedEncoder(_PixelMeanEncoder(), "d8")
    out = enc.encode(imgs)
    assert np.isnan(out[4]).all() and np.isfinite(np.delete(out, 4, axis=0)).all()
    with open_shard(_shard(tmp_path, imgs), ivar=False) as reader:
        stats = EmbedStats()
        frame = embed_shard(reader, enc, batch_size=5, stats=stats)
    assert frame.height == 11 and stats.skipped_object_ids == ["g0004"]
    assert set(frame["encoder"]) == {"test:pixel-mean@1+d8"}
    # a cutout that is not square is cut to its central square first
    wide = _galaxies(3, 20, seed=7)[:, :, 2:18, :]  # 16 x 20
    assert np.allclose(enc.encode(wide), enc.encode(wide[:, :, :, 2:18]), atol=1e-6)
    with pytest.raises(ImageEncoderError, match=r"expected \(N, bands, H, W\)"):
        enc.encode(np.ones((4, 16, 16), np.float32))
    with pytest.raises(ImageEncoderError, match=r"tta='rot2' is not a set of views; use one of"):
        ViewAveragedEncoder(_PixelMeanEncoder(), "rot2")
    with pytest.raises(ImageEncoderError, match="already averages over views"):
        ViewAveragedEncoder(enc, "rot4")


def test_tta_in_the_factory_and_in_encoder_ids(tracker):
    """build_image_encoder wraps for tta; the search service rebuilds an aligner's encoder,
    views included, from the id the aligner was trained on."""
    from types import SimpleNamespace

    from galaxy_assets.morphology.model import CODE_REF, build_model, preset_config
    from galaxy_assets.search.service import _image_encoder_for

    assert split_tta("registry:morphology-encoder/v3+rot4") == ("registry:morphology-encoder/v3",
                                                                "rot4")
    assert split_tta("timm:x@a/pp-1+d8") == ("timm:x@a/pp-1", "d8")
    assert split_tta("registry:morphology-encoder/v3") == ("registry:morphology-encoder/v3",
                                                           "none")
    assert split_tta("test:a+b") == ("test:a+b", "none")
    with pytest.raises(ImageEncoderError, match=r"tta='all' is unknown; use one of \['d8', 'none', 'rot4'\]"):
        build_image_encoder("timm", tta="all", name="resnet10t")
    plain = build_image_encoder("timm", tta="none", name="resnet10t", size=32, backbone_kwargs=TINY)
    assert isinstance(plain, TimmImageEncoder)

    cfg = preset_config("tiny", image_size=16, bands=("g", "r", "z"))
    with tracker.start_run("morphology") as run:
        path = run.log_torch_model("model", build_model(cfg, seed=1).state_dict(), cfg.to_dict(),
                                   CODE_REF)
    tracker.set_alias("morphology-encoder", "champion",
                      tracker.register(run.run_id, path, "morphology-encoder"))
    enc = build_image_encoder("registry", tta="rot4", tracker=tracker, batch_size=8)
    assert isinstance(enc, ViewAveragedEncoder) and enc.encoder_id == "registry:morphology-encoder/v1+rot4"
    aligner = SimpleNamespace(config=SimpleNamespace(image_encoder=enc.encoder_id))
    again = _image_encoder_for(aligner, tracker)
    assert again.encoder_id == enc.encoder_id
    imgs = _galaxies(3, 16, bands=3)
    assert np.allclose(again.encode(imgs), enc.encode(imgs), atol=1e-5)


def test_image_queries_rebuild_a_timm_encoder_from_the_settings(tmp_path, monkeypatch):
    """An aligner trained on a timm encoder's vectors: image-file queries build that encoder
    from the settings' image_encoder section, and refuse settings that name another one."""
    from types import SimpleNamespace

    import timm

    from galaxy_assets.search.errors import SearchError
    from galaxy_assets.search.service import _image_encoder_for
    from galaxy_assets.settings import load_settings

    ckpt = tmp_path / "encoder.pt"
    torch.save(timm.create_model("resnet10t", in_chans=4, num_classes=0).state_dict(), ckpt)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"image_encoder:\n  kind: timm\n  name: resnet10t\n  checkpoint: {ckpt}\n"
                   "  tta: rot4\ncompute:\n  device: cpu\n")
    monkeypatch.setenv("GALAXY_ASSETS_CONFIG", str(cfg))
    settings = load_settings()
    made = build_image_encoder("timm", tta="rot4", name="resnet10t", checkpoint=str(ckpt))
    aligner = SimpleNamespace(config=SimpleNamespace(image_encoder=made.encoder_id))
    again = _image_encoder_for(aligner, None, settings)
    assert again.encoder_id == made.encoder_id and isinstance(again, ViewAveragedEncoder)
    imgs = _galaxies(2, 64)
    assert np.allclose(again.encode(imgs), made.encode(imgs), atol=1e-5)

    monkeypatch.setenv("GALAXY_ASSETS_IMAGE_ENCODER_TTA", "none")
    with pytest.raises(SearchError, match=r"the settings' image_encoder builds 'timm:resnet10t@"
                       r"ckpt-[^']*'(?<!rot4'): set it as it was when the vectors were made"):
        _image_encoder_for(aligner, None, load_settings())
    monkeypatch.delenv("GALAXY_ASSETS_CONFIG")
    monkeypatch.delenv("GALAXY_ASSETS_IMAGE_ENCODER_TTA")
    with pytest.raises(SearchError, match="the settings' image_encoder is the registry model"):
        _image_encoder_for(aligner, None, load_settings())


def test_a_three_band_survey_sets_the_timm_encoders_bands(tmp_path, monkeypatch):
    """image_encoder.bands (e.g. g, r, z for a survey without i) reaches a timm encoder, whose
    input convolution takes that many planes; the shard opens with those bands."""
    from galaxy_assets.defs.resources import ComputeResource, ImageEncoderResource
    from galaxy_assets.settings import load_settings

    monkeypatch.setenv("GALAXY_ASSETS_IMAGE_ENCODER_KIND", "timm")
    monkeypatch.setenv("GALAXY_ASSETS_IMAGE_ENCODER_NAME", "resnet10t")
    monkeypatch.setenv("GALAXY_ASSETS_IMAGE_ENCODER_BANDS", "g,r,z")
    monkeypatch.setenv("GALAXY_ASSETS_IMAGE_ENCODER_TTA", "none")
    resource = ImageEncoderResource.from_settings(load_settings())
    encoder = resource.build(ComputeResource(device="cpu"), None)
    assert tuple(encoder.bands) == ("g", "r", "z")
    path = _shard(tmp_path, _galaxies(3, 32)[:, [0, 1, 3]], bands=("g", "r", "z"))
    with open_shard_for(encoder, path) as reader:
        frame = embed_shard(reader, encoder)
    assert frame.height == 3


# --------------------------------------------------------------------------- AION
def test_aion_band_mapping():
    with pytest.raises(ImageEncoderError, match="image_encoder.model is not set"):
        AionImageEncoder()
    assert aion_band_names(["g", "r", "i", "z"]) == ["DES-G", "DES-R", "DES-I", "DES-Z"]
    assert aion_band_names(["DES-R", "z"], "legacy") == ["DES-R", "DES-Z"]
    assert aion_band_names(["g", "y"], "hsc") == ["HSC-G", "HSC-Y"]
    with pytest.raises(ImageEncoderError, match="band 'y' has no AION-1 legacysurvey equivalent"):
        aion_band_names(["g", "y"])
    with pytest.raises(ImageEncoderError, match="survey='euclid'"):
        aion_band_names(["g"], "euclid")
    with pytest.raises(ImageEncoderError, match="repeats a band"):
        aion_band_names(["g", "G"])


def test_prepare_aion_flux_crops_pads_and_cleans():
    big = np.arange(2 * 4 * 160 * 160, dtype=np.float32).reshape(2, 4, 160, 160)
    flux, names = prepare_aion_flux(big, ["g", "r", "i", "z"])
    assert flux.shape == (2, 4, 96, 96) and names[0] == "DES-G"
    assert torch.equal(flux, torch.from_numpy(big[:, :, 32:128, 32:128]))  # the codec's offset
    flux[0, 0, 0, 0] = -1.0
    assert big[0, 0, 32, 32] != -1.0  # a fresh tensor: the codec edits its input in place
    small = np.ones((1, 4, 64, 64), np.float32)
    small[0, 1, 5, 5] = np.nan
    padded, _ = prepare_aion_flux(small, ["g", "r", "i", "z"])
    assert padded.shape == (1, 4, 96, 96)
    assert padded[0, 0, 16:80, 16:80].eq(1).all() and padded[0, :, :16].eq(0).all()
    assert padded[0, 1, 21, 21] == 0  # NaN → 0
    with pytest.raises(ImageEncoderError, match=r"expected \(N, 4, H, W\)"):
        prepare_aion_flux(np.zeros((1, 3, 96, 96), np.float32), ["g", "r", "i", "z"])


@dataclass
class _FakeModality:
    token_key: ClassVar[str] = "tok_image"
    num_tokens: ClassVar[int] = 576
    flux: torch.Tensor
    bands: list[str]


class _FakeCodec(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], list[str]]] = []

    def encode(self, m: _FakeModality) -> torch.Tensor:
        self.calls.append((tuple(m.flux.shape), list(m.bands)))
        return (m.flux.sum(dim=1).reshape(len(m.flux), 576, 16).sum(-1) * 10).long() % 4375


class _FakeAion(torch.nn.Module):
    dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.n_tokens: list[int] = []

    def encode(self, tokens: dict[str, torch.Tensor], num_encoder_tokens: int) -> torch.Tensor:
        self.n_tokens.append(num_encoder_tokens)
        t = tokens["tok_image"].float()
        return torch.stack([torch.cos(t * (k + 1) / 100) for k in range(self.dim)], dim=-1)


def test_aion_encoder_pools_tokens_in_batches():
    codec, model = _FakeCodec(), _FakeAion()
    enc = AionImageEncoder.from_modules(
        model, codec, modality=_FakeModality, encoder_id="aion:fake@0/legacysurvey", batch_size=3
    )
    assert enc.dim == 6 and enc.image_size == 96 and enc.num_encoder_tokens == 576
    imgs = _galaxies(7, 64)
    out = enc.encode(imgs)
    assert out.shape == (7, 6) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    assert [c[0][0] for c in codec.calls] == [3, 3, 1]
    assert codec.calls[0] == ((3, 4, 96, 96), ["DES-G", "DES-R", "DES-I", "DES-Z"])
    assert model.n_tokens == [576, 576, 576]
    flux, _ = prepare_aion_flux(imgs[:1], ["g", "r", "i", "z"])
    hidden = model.encode({"tok_image": codec.encode(_FakeModality(flux, []))}, 576)
    assert np.allclose(out[0], unit_rows(hidden.mean(dim=1))[0], atol=1e-6)


def test_aion_ids_name_other_bands_and_token_counts():
    """Other bands or another token count give other vectors; with the same id the stored
    vectors of the old setting were reused."""
    def made(**kw):
        return AionImageEncoder.from_modules(_FakeAion(), _FakeCodec(), modality=_FakeModality,
                                             encoder_id="aion:fake@0/legacysurvey", **kw)

    assert made().encoder_id == "aion:fake@0/legacysurvey"
    assert made(bands=("g", "r", "z")).encoder_id == "aion:fake@0/legacysurvey/bands-grz"
    assert made(bands=("G", "R", "Z")).encoder_id == "aion:fake@0/legacysurvey/bands-grz"
    assert made(num_encoder_tokens=288).encoder_id == "aion:fake@0/legacysurvey/tokens-288"
    assert encoder_version(made(bands=("g", "r", "z")).encoder_id) == "0"


def test_aion_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    # the package is a dependency: hide it, as on an install without it
    for name in ("aion", "aion.codecs", "aion.modalities"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        ImageEncoderError, match=r"polymathic-aion.*pip install 'polymathic-aion==0.0.2'"
    ):
        AionImageEncoder(model=tmp_path)


@pytest.mark.skipif(not HAS_AION, reason="needs polymathic-aion")
def test_real_aion_tiny_model_from_a_folder_and_an_offline_hub_cache(tmp_path):
    from aion import AION
    from aion.codecs import ImageCodec
    from aion.modalities import LegacySurveyImage

    torch.manual_seed(0)
    model = AION(
        {
            "domains_in": ["tok_image"],
            "domains_out": ["tok_image"],
            "dim": 32,
            "encoder_depth": 1,
            "decoder_depth": 1,
            "num_heads": 2,
            "norm_bias": True,
            "act_layer": "GELU",
        }
    ).eval()
    codec = ImageCodec(
        quantizer_levels=[7, 5, 5, 5, 5],
        hidden_dims=16,
        multisurvey_projection_dims=8,
        n_compressions=2,
        num_consecutive=1,
    ).eval()
    folder = tmp_path / "aion-tiny"
    model.save_pretrained(folder)
    codec.save_pretrained(str(folder), modality=LegacySurveyImage)

    enc = AionImageEncoder(model=folder, batch_size=4)
    assert enc.dim == 32 and enc.encoder_id.startswith("aion:aion-tiny@")
    imgs = _galaxies(6, 64) * 0.1
    out = enc.encode(imgs)
    assert out.shape == (6, 32) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    with torch.no_grad():
        flux, names = prepare_aion_flux(imgs, ["g", "r", "i", "z"])
        tokens = codec.encode(LegacySurveyImage(flux=flux, bands=names))
        want = unit_rows(model.encode({"tok_image": tokens}, num_encoder_tokens=576).mean(dim=1))
    assert np.allclose(out, want, atol=1e-5)

    # the same files in a Hugging Face cache, loaded by hub id with the network off
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--polymathic-ai--aion-base"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub = AionImageEncoder(
        model="polymathic-ai/aion-base",
        cache_dir=tmp_path / "hub",
        local_files_only=True,
        batch_size=4,
    )
    assert hub.encoder_id == "aion:polymathic-ai/aion-base@0123456789ab/legacysurvey"
    assert np.allclose(hub.encode(imgs), out, atol=1e-6)
    with pytest.raises(
        ImageEncoderError, match="cannot fetch 'polymathic-ai/aion-large'.*HF_TOKEN"
    ):
        AionImageEncoder(
            model="polymathic-ai/aion-large", cache_dir=tmp_path / "hub", local_files_only=True
        )
    (folder / "codecs" / "image" / "model.safetensors").unlink()
    with pytest.raises(ImageEncoderError, match="lacks|is missing"):
        AionImageEncoder(model=folder)
    json.loads((folder / "config.json").read_text())  # the model config itself was untouched


# --------------------------------------------------------------------------- embed_shard
class _PixelMeanEncoder:
    """A protocol-conforming encoder: per-band means, NaN for an all-zero cutout."""

    encoder_id = "test:pixel-mean@1"
    dim = 4
    bands = ("g", "r", "i", "z")
    image_size = None
    batch_size = 8

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls = 0
        self.fail_on_call = fail_on_call

    def encode(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("model exploded")
        return unit_rows(torch.from_numpy(images.mean(axis=(2, 3))))


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "embed-shard-reader"]


def test_embed_shard_streams_every_galaxy_in_order(tmp_path, tiny_timm):
    imgs = _galaxies(45, 40, seed=2)
    path = _shard(tmp_path, imgs)
    seen: list[tuple[int, int]] = []
    stats = EmbedStats()
    with open_shard_for(tiny_timm, path) as reader:
        assert reader.size == 32  # cropped at read time
        frame = embed_shard(
            reader, tiny_timm, progress=lambda d, t: seen.append((d, t)), stats=stats
        )
    assert frame.columns == ["object_id", "encoder", "vector"]
    assert frame.schema["vector"] == pl.Array(pl.Float32, 32)
    assert frame["object_id"].to_list() == [f"g{i:04d}" for i in range(45)]
    assert set(frame["encoder"]) == {tiny_timm.encoder_id}
    assert seen == [(16, 45), (32, 45), (45, 45)]
    assert stats.n_read == stats.n_embedded == 45 and stats.n_skipped == 0
    direct = tiny_timm.encode(imgs[:, :, 4:36, 4:36])
    assert np.allclose(frame["vector"].to_numpy(), direct, atol=1e-6)
    with open_shard_for(tiny_timm, path) as reader:
        sync = embed_shard(reader, tiny_timm, prefetch=0)
    assert sync["vector"].to_numpy().tobytes() == frame["vector"].to_numpy().tobytes()
    assert not _reader_threads()


def test_embed_shard_skips_broken_galaxies_and_checks_bands(tmp_path):
    imgs = _galaxies(20, 16, seed=4)
    imgs[[3, 11]] = 0.0
    path = _shard(tmp_path, imgs)
    stats = EmbedStats()
    enc = _PixelMeanEncoder()
    with open_shard(path, ivar=False) as reader:
        frame = embed_shard(reader, enc, batch_size=8, stats=stats)
    assert frame.height == 18 and stats.n_skipped == 2
    assert stats.skipped_object_ids == ["g0003", "g0011"] and "g0003" not in frame["object_id"]
    assert stats.as_metadata()["n_embedded"] == 18
    with open_shard(path, bands=["r", "g", "i", "z"], ivar=False) as reader:
        with pytest.raises(
            ImageEncoderError,
            match=r"gives bands \['r', 'g', 'i', 'z'\] but test:pixel-mean@1 takes \['g', 'r', 'i', 'z'\]",
        ):
            embed_shard(reader, enc)


def test_vectors_follow_the_manifest_rows_when_a_shard_repeats_an_id(tmp_path):
    """A repeated object_id: the manifest keeps one row (here the later one, the first being
    broken); the image embeddings must hold that row's vector once, not both rows'."""
    from galaxy_assets.embedding.image import manifest_vectors
    from galaxy_assets.survey.manifest import build_manifest

    imgs = _galaxies(10, 16, seed=6)
    imgs[1] = np.nan
    ids = [f"g{i:04d}" for i in range(10)]
    ids[9], ids[7] = ids[1], ids[6]
    path = write_mmu_shard(tmp_path / "healpix=8" / "001-of-001.hdf5", images=imgs,
                           bands=list("griz"), object_id=ids, ra=np.linspace(10, 11, 10),
                           dec=np.linspace(-1, 1, 10))
    with open_shard(path, ivar=False) as reader:
        manifest = build_manifest(reader, "healpix=8__001-of-001").frame
        vectors = embed_shard(reader, _PixelMeanEncoder(), with_rows=True)
    assert manifest.height == 8 and vectors.columns == ["object_id", "row", "encoder", "vector"]
    kept = manifest_vectors(vectors, manifest)
    assert kept.columns == ["object_id", "encoder", "vector"]
    assert kept.height == 8 and kept["object_id"].is_unique().all()
    by_id = dict(zip(kept["object_id"], kept["vector"].to_list(), strict=True))
    row_of = dict(zip(manifest["object_id"], manifest["row"], strict=True))
    assert row_of["g0001"] == 9  # the broken row 1 was left out, its duplicate kept
    np.testing.assert_allclose(by_id["g0001"], vectors.filter(pl.col("row") == 9)["vector"][0])


def test_embed_shard_propagates_errors_and_stops_the_reader(tmp_path):
    path = _shard(tmp_path, _galaxies(40, 16, seed=5))
    with open_shard(path, ivar=False) as reader, pytest.raises(RuntimeError, match="exploded"):
        embed_shard(reader, _PixelMeanEncoder(fail_on_call=2), batch_size=4)
    assert not _reader_threads()

    class BrokenReader:
        uri = "broken.hdf5"
        bands = ("g", "r", "i", "z")

        def __len__(self) -> int:
            return 10

        def iter_batches(self, batch_size: int = 256) -> Iterator[CutoutBatch]:
            yield CutoutBatch(
                np.array(["a", "b"]),
                np.arange(2),
                np.ones((2, 4, 8, 8), np.float32),
                None,
                self.bands,
            )
            raise OSError("disk vanished at row 2")

    with pytest.raises(OSError, match="disk vanished"):
        embed_shard(BrokenReader(), _PixelMeanEncoder())
    assert not _reader_threads()
