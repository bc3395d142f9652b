"""Fixtures of the search tests.

* ``FakeTextEmbedder``: a deterministic hashed bag of words (texts that share words get close
  vectors), counting its calls;
* ``FakeImageEncoder``: pixel statistics through a fixed random projection (same pixels →
  same vector), taking g r i z cutouts;
* ``aligner``: a tiny :class:`AlignedModel` (random heads, seeded) tied to both fakes;
* ``text_index``: a LanceDB ``galaxy_index`` of 60 synthetic galaxies whose vectors are the
  aligner's text vectors of their captions (so a text query finds its caption's galaxies),
  placed around RA 0/360 and elsewhere, in two shards;
* ``mock_survey`` (session): 80 mock galaxies in MMU shards, their manifests, image
  vectors (fake encoder → aligner image head) and search vectors, as the graph makes them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import galaxy_assets  # noqa: F401  (torchvision import hook before anything imports timm)

TEXT_DIM = 32
IMAGE_DIM = 16
OUT_DIM = 16
ALIGNER_VERSION = "search-aligner/v1"
ENCODER_ID = "fake:pixel-stats@1"
EMBEDDER_ID = "fake:bag-of-words@1"
CAPTIONS = (
    "a face-on spiral galaxy with two prominent spiral arms",
    "a smooth red elliptical galaxy with a bright core",
    "a merging pair with long tidal tails",
    "an edge-on disc galaxy with a dark dust lane",
    "a gravitational lens with a blue arc around a red galaxy",
)
_WORD = re.compile(r"[a-z0-9]+")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: two OpenMP threads per xdist worker oversubscribe two cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeTextEmbedder:
    """Hashed bag of words + bias, unit rows; ``calls`` records each embed() batch size."""

    embedder_id = EMBEDDER_ID
    dim = TEXT_DIM
    max_seq_length = None

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        self.calls.append(len(texts))
        out = np.zeros((len(texts), TEXT_DIM), np.float64)
        for i, text in enumerate(texts):
            out[i, 0] = 0.3
            for word in _WORD.findall(text.lower()):
                h = hashlib.blake2b(word.encode(), digest_size=8).digest()
                out[i, int.from_bytes(h[:4], "little") % TEXT_DIM] += 1.0 if h[4] & 1 else -1.0
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


class FakeImageEncoder:
    """Per-band flux, concentration and moments through a fixed projection → unit rows."""

    encoder_id = ENCODER_ID
    dim = IMAGE_DIM
    bands = ("g", "r", "i", "z")
    image_size = None
    batch_size = 64

    def __init__(self, *, accepts_rgb: bool = False) -> None:
        self.accepts_rgb = accepts_rgb
        nb = 3 if accepts_rgb else 4
        if accepts_rgb:
            self.bands = ("r", "g", "b")  # type: ignore[assignment]
        self._proj = np.random.default_rng(99).standard_normal((nb * 4, IMAGE_DIM))

    def encode(self, images: np.ndarray) -> np.ndarray:
        from galaxy_assets.embedding.image import unit_rows

        x = np.nan_to_num(np.asarray(images, np.float64))
        n, nb, h, w = x.shape
        yy, xx = np.mgrid[:h, :w] - (np.array([h, w])[:, None, None] - 1) / 2
        r2 = (xx**2 + yy**2)[None, None]
        total = x.sum(axis=(2, 3))
        core = x[..., h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2].sum(axis=(2, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            conc = core / np.where(total == 0, np.nan, total)
            size = (x * r2).sum(axis=(2, 3)) / np.where(total == 0, np.nan, total)
        feats = np.concatenate(
            [
                np.arcsinh(total),
                np.nan_to_num(conc),
                np.log1p(np.abs(np.nan_to_num(size))),
                x.std(axis=(2, 3)),
            ],
            axis=1,
        )
        feats[total.sum(axis=1) == 0] = 0.0  # blank cutouts: no vector (NaN row)
        return unit_rows(feats @ self._proj)


def make_aligner(version: str | None = ALIGNER_VERSION, seed: int = 0, output_dim: int = OUT_DIM):
    import torch

    from galaxy_assets.alignment.model import AlignerConfig, build_from_config

    torch.manual_seed(seed)
    model = build_from_config(
        AlignerConfig(
            image_dim=IMAGE_DIM,
            text_dim=TEXT_DIM,
            output_dim=output_dim,
            hidden_dim=32,
            n_blocks=1,
            dropout=0.0,
            image_encoder=ENCODER_ID,
            text_embedder=EMBEDDER_ID,
        )
    ).eval()
    model.aligner_version = version
    return model


@pytest.fixture
def text_embedder() -> FakeTextEmbedder:
    return FakeTextEmbedder()


@pytest.fixture(scope="session")
def aligner():
    return make_aligner()


# ---------------------------------------------------------------------------- text index
N_TEXT = 60


def synthetic_shard_frames(
    n: int, shard: str, *, seed: int, start: int = 0, aligner=None, ra=None, dec=None
) -> dict[str, pl.DataFrame]:
    """manifest / vectors / predictions / captions frames of ``n`` synthetic galaxies."""
    rng = np.random.default_rng(seed)
    ids = [f"gal{start + i:04d}" for i in range(n)]
    caps = [CAPTIONS[(start + i) % len(CAPTIONS)] for i in range(n)]
    ra = rng.uniform(0, 360, n) if ra is None else np.asarray(ra, float)
    dec = rng.uniform(-20, 20, n) if dec is None else np.asarray(dec, float)
    flux_r = rng.lognormal(1.0, 1.0, n).astype(np.float32)
    manifest = pl.DataFrame(
        {
            "object_id": ids,
            "ra": ra,
            "dec": dec,
            "healpix": np.full(n, 1700 + seed, np.int64),
            "flux_g": (flux_r * 0.5).astype(np.float32),
            "flux_r": flux_r,
            "flux_i": (flux_r * 1.3).astype(np.float32),
            "flux_z": (flux_r * 1.6).astype(np.float32),
            "ebv": rng.uniform(0, 0.1, n).astype(np.float32),
            "bands": ["g,r,i,z"] * n,
            "height": np.full(n, 32, np.int32),
            "width": np.full(n, 32, np.int32),
            "nonfinite_fraction": np.zeros(n, np.float32),
            "shard": [shard] * n,
            "shard_uri": [f"/nonexistent/{shard}.hdf5"] * n,
            "row": np.arange(n, dtype=np.int64),
        }
    )
    aligned = aligner if aligner is not None else make_aligner()
    text = aligned.embed_texts(FakeTextEmbedder().embed(caps))
    noise = rng.normal(0, 0.05, text.shape).astype(np.float32)
    vec = text + noise
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    vectors = pl.DataFrame(
        [
            pl.Series("object_id", ids),
            pl.Series("aligner_version", [ALIGNER_VERSION] * n),
            pl.Series("vector", vec, dtype=pl.Array(pl.Float32, vec.shape[1])),
        ]
    )
    is_spiral = np.array(["spiral" in c for c in caps])
    predictions = pl.DataFrame(
        {
            "object_id": ids,
            "row": np.arange(n),
            "p_smooth": np.where(is_spiral, 0.1, 0.8),
            "p_featured": np.where(is_spiral, 0.9, 0.2),
            "p_spiral": np.where(is_spiral, 0.9, 0.05),
            "p_merger": np.where(["tidal" in c for c in caps], 0.7, 0.02),
            "vf_has_spiral_arms_yes": np.where(is_spiral, 0.9, 0.05),
        }
    )
    captions = pl.DataFrame(
        {
            "object_id": ids,
            "caption": caps,
            "backend": ["morphology"] * n,
            "model": ["morphology-describer-v1"] * n,
            "prompt_sha": ["abc"] * n,
            "source": ["generated"] * n,
        }
    )
    return {
        "manifest": manifest,
        "vectors": vectors,
        "predictions": predictions,
        "captions": captions,
    }


@dataclass
class TextIndex:
    uri: Path
    frames: dict[str, dict[str, pl.DataFrame]] = field(default_factory=dict)

    def table(self):
        from galaxy_assets.search.table import open_table

        return open_table(self.uri)

    @property
    def n(self) -> int:
        return sum(f["manifest"].height for f in self.frames.values())


@pytest.fixture
def text_index(tmp_path, aligner) -> TextIndex:
    """60 galaxies in shards "s-a" (30, ten of them within 0.1° of ra=0, dec=0 on both
    sides of 0/360) and "s-b" (30 elsewhere)."""
    from galaxy_assets.search.table import build_shard_rows, upsert_shard

    idx = TextIndex(tmp_path / "lancedb")
    ra_a = np.concatenate(
        [
            [359.95, 359.99, 0.01, 0.03, 359.97, 0.06, 0.02, 359.93, 0.08, 359.99],
            np.random.default_rng(3).uniform(20, 340, 20),
        ]
    )
    dec_a = np.concatenate(
        [np.linspace(-0.05, 0.05, 10), np.random.default_rng(4).uniform(-20, 20, 20)]
    )
    idx.frames["s-a"] = synthetic_shard_frames(
        30, "s-a", seed=1, aligner=aligner, ra=ra_a, dec=dec_a
    )
    idx.frames["s-b"] = synthetic_shard_frames(30, "s-b", seed=2, start=30, aligner=aligner)
    for shard, f in idx.frames.items():
        rows = build_shard_rows(shard, f["manifest"], f["vectors"], f["predictions"], f["captions"])
        upsert_shard(idx.uri, shard, rows)
    return idx


# ---------------------------------------------------------------------------- mock survey
@dataclass
class MockSurvey:
    root: Path
    manifests: dict[str, pl.DataFrame]
    vectors: dict[str, pl.DataFrame]

    @property
    def shards(self) -> list[str]:
        return sorted(self.manifests)


@pytest.fixture(scope="session")
def mock_survey(tmp_path_factory, aligner) -> MockSurvey:
    """80 mock galaxies (32 px, griz) in HEALPix shards; manifests and search vectors made
    by the same functions as the raw_cutouts / image_embeddings / search_vectors assets."""
    from galaxy_assets.alignment.model import project_shard
    from galaxy_assets.embedding.image import embed_shard
    from galaxy_assets.survey.manifest import build_manifest
    from galaxy_assets.survey.mock import simulate_survey
    from galaxy_assets.survey.readers import find_shards, open_shard, shard_key

    root = tmp_path_factory.mktemp("search_mock")
    simulate_survey(root, 80, size=32, seed=11, nside=8, workers=1)
    encoder = FakeImageEncoder()
    manifests, vectors = {}, {}
    for path in find_shards(root):
        key = shard_key(root, path)
        with open_shard(path, bands=encoder.bands, ivar=False) as reader:
            manifests[key] = build_manifest(reader, key).frame
            images = embed_shard(reader, encoder, prefetch=0)
        vectors[key] = project_shard(images, aligner, aligner_version=ALIGNER_VERSION)
    return MockSurvey(root, manifests, vectors)


@pytest.fixture
def survey_index(tmp_path, mock_survey) -> tuple[Path, MockSurvey]:
    """The mock survey indexed into a fresh LanceDB folder (no captions)."""
    from galaxy_assets.search.table import build_shard_rows, upsert_shard

    uri = tmp_path / "lancedb"
    for shard in mock_survey.shards:
        rows = build_shard_rows(shard, mock_survey.manifests[shard], mock_survey.vectors[shard])
        upsert_shard(uri, shard, rows)
    return uri, mock_survey
