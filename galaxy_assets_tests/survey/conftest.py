"""Fixtures of the survey tests: tiny synthetic MMU shards and FITS folders.

Every factory writes into the test's ``tmp_path`` and returns what it wrote, so a test can
compare what a reader returns with the truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from galaxy_assets.survey.fits import write_fits_cutout
from galaxy_assets.survey.mmu import write_mmu_shard


@dataclass
class ShardData:
    """A synthetic shard and the arrays it was written from."""

    path: Path
    images: np.ndarray  # (N, B, H, W) float32, nanomaggies
    ivar: np.ndarray
    object_id: list[str]
    ra: np.ndarray
    dec: np.ndarray
    bands: list[str]
    fluxes: dict[str, np.ndarray]
    ebv: np.ndarray


def synthetic_cutouts(n: int, nb: int, size: int, seed: int = 0) -> np.ndarray:
    """Noisy Gaussian blobs of varied brightness, (n, nb, size, size) float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2.0
    r2 = xx**2 + yy**2
    amp = rng.uniform(0.5, 5.0, size=(n, nb, 1, 1))
    width = rng.uniform(1.5, size / 5.0, size=(n, 1, 1, 1))
    blob = amp * np.exp(-r2 / (2 * width**2))
    return (blob + rng.normal(0, 0.01, size=(n, nb, size, size))).astype(np.float32)


MakeShard = Callable[..., ShardData]


@pytest.fixture
def make_shard(tmp_path: Path) -> MakeShard:
    """``make_shard(rel="healpix=7/001-of-001.hdf5", n=12, bands="griz", size=16, …)``.

    Writes an MMU shard with :func:`write_mmu_shard` under ``tmp_path``; keyword
    ``mutate(data)`` may edit the arrays before they are written; other keywords go to the
    writer (e.g. ``fluxes={}`` to write no flux columns).
    """

    def factory(
        rel: str = "healpix=7/001-of-001.hdf5",
        *,
        n: int = 12,
        bands: Sequence[str] = ("g", "r", "i", "z"),
        size: int = 16,
        seed: int = 0,
        mutate: Callable[[ShardData], None] | None = None,
        **writer_kwargs: Any,
    ) -> ShardData:
        rng = np.random.default_rng(seed + 1)
        data = ShardData(
            path=tmp_path / rel,
            images=synthetic_cutouts(n, len(bands), size, seed),
            ivar=np.full((n, len(bands), size, size), 1e4, dtype=np.float32),
            object_id=[f"obj{seed:02d}-{i:04d}" for i in range(n)],
            ra=rng.uniform(10.0, 20.0, n),
            dec=rng.uniform(-5.0, 5.0, n),
            bands=list(bands),
            fluxes={b: rng.lognormal(0.0, 1.0, n).astype(np.float32) for b in "griz"},
            ebv=rng.uniform(0.0, 0.1, n).astype(np.float32),
        )
        if mutate is not None:
            mutate(data)
        kwargs: dict[str, Any] = {
            "ivar": data.ivar,
            "psf_fwhm": 1.1,
            "fluxes": data.fluxes,
            "ebv": data.ebv,
        }
        kwargs.update(writer_kwargs)
        write_mmu_shard(
            data.path,
            images=data.images,
            bands=data.bands,
            object_id=data.object_id,
            ra=data.ra,
            dec=data.dec,
            **kwargs,
        )
        return data

    return factory


RawH5 = Callable[..., Path]


@pytest.fixture
def raw_h5(tmp_path: Path) -> RawH5:
    """``raw_h5(rel, datasets: dict, drop=(), **overrides)``: write exactly these datasets.

    Starts from a valid 6-galaxy MMU layout, removes the names in ``drop`` and replaces or
    adds ``overrides`` (name → array, or name → None to leave a group in its place).
    """

    def factory(rel: str = "bad.hdf5", *, drop: Sequence[str] = (), **overrides: Any) -> Path:
        n, nb, size = 6, 4, 8
        images = synthetic_cutouts(n, nb, size)
        datasets: dict[str, Any] = {
            "image_array": images,
            "image_band": np.array([[b"DES-G", b"DES-R", b"DES-I", b"DES-Z"]] * n),
            "image_ivar": np.ones_like(images),
            "image_psf_fwhm": np.ones((n, nb), np.float32),
            "image_scale": np.full((n, nb), 0.262, np.float32),
            "object_id": np.arange(1000, 1000 + n, dtype=np.int64),
            "ra": np.linspace(10.0, 11.0, n),
            "dec": np.linspace(-1.0, 1.0, n),
            "FLUX_G": np.ones(n, np.float32),
        }
        for name in drop:
            datasets.pop(name)
        datasets.update(overrides)
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            for name, value in datasets.items():
                if value is None:
                    f.create_group(name)
                else:
                    f.create_dataset(name, data=value)
        return path

    return factory


MakeFitsFolder = Callable[..., tuple[Path, np.ndarray]]


@pytest.fixture
def make_fits_folder(tmp_path: Path) -> MakeFitsFolder:
    """``make_fits_folder(rel="fits/field", n=5, layout="cube", size=16, **kw)``.

    Writes ``n`` cutouts ``gal000.fits`` … with :func:`write_fits_cutout` (positions
    ra = 30 + i/100, dec = -2, ids ``fits-<i>``, ivar = 100) and returns (folder, images).
    """

    def factory(
        rel: str = "fits/field",
        *,
        n: int = 5,
        layout: str = "cube",
        size: int = 16,
        bands: Sequence[str] = ("g", "r", "i", "z"),
        seed: int = 3,
        **kwargs: Any,
    ) -> tuple[Path, np.ndarray]:
        folder = tmp_path / rel
        images = synthetic_cutouts(n, len(bands), size, seed)
        for i in range(n):
            write_fits_cutout(
                folder / f"gal{i:03d}.fits",
                images[i],
                list(bands),
                30.0 + i / 100.0,
                -2.0,
                f"fits-{i}",
                ivar=np.full_like(images[i], 100.0),
                layout=layout,
                **kwargs,
            )
        return folder, images

    return factory
