"""Benchmark: reading cutouts through MMUShardReader against a bare h5py slice.

Writes a synthetic MMU shard (default 5,000 galaxies × 4 bands × 64 × 64 px, float32, with
``image_ivar``) into a temporary folder, then times, in the same process and with the
repetitions of every case interleaved so that drifts in the page cache or CPU clock hit both
sides alike:

* ``images``      — bare ``ds[a:b]`` of ``image_array`` in batches of 256 against
                    ``MMUShardReader(ivar=False).iter_batches(256)``;
* ``images+ivar`` — bare slices of ``image_array`` and ``image_ivar`` against the reader with
                    ``ivar=True`` (the manifest builder's read);
* ``crop48``      — bare ``ds[a:b, :, 8:56, 8:56]`` against the reader with ``size=48``;
* ``bands grz``   — bare ``ds[a:b][:, [0, 1, 3]]`` (slice, then numpy take) against the
                    reader with ``bands=("g", "r", "z")``;
* ``random rows`` — 2,048 random rows in batches of 256, returned in the requested order:
                    bare ``ds[sorted rows]`` (h5py fancy index) scattered back into
                    request order, against ``read_rows``.

Every loop holds a batch until the next one is read, as ``for batch in …`` does; the
``images, release`` case drops each batch before reading the next on both sides, which lets
the allocator reuse the same (already faulted-in) pages.

It prints galaxies per second for both sides and the ratio reader / bare (target ≥ 0.8).
The shard is read once before timing, so both sides read from the page cache.

Run: ``.venv/bin/python benchmarks/bench_reader.py [--n 5000] [--size 64] [--reps 7]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from galaxy_assets.survey.mmu import MMUShardReader, write_mmu_shard

BATCH = 256


def make_shard(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path = folder / "healpix=1234" / "001-of-001.hdf5"
    chunk = 1000
    images = np.empty((n, 4, size, size), dtype=np.float32)
    for s in range(0, n, chunk):
        images[s : s + chunk] = rng.normal(0.0, 0.01, size=images[s : s + chunk].shape)
    ivar = np.full_like(images, 1e4)
    write_mmu_shard(
        path,
        images=images,
        bands=["DES-G", "DES-R", "DES-I", "DES-Z"],
        object_id=[f"bench{i:07d}" for i in range(n)],
        ra=rng.uniform(0, 360, n),
        dec=rng.uniform(-30, 30, n),
        ivar=ivar,
        psf_fwhm=1.2,
        fluxes={b: rng.lognormal(0, 1, n) for b in "griz"},
        ebv=rng.uniform(0, 0.1, n),
    )
    return path


# Every consumer loop below holds a batch until the next one has been read, as a plain
# ``for batch in …:`` loop does; the "release" variants drop it first (``del``), which lets
# the allocator hand the same pages back (no page faults), on both sides alike.


def bare_images(path: Path, n: int, release: bool = False) -> int:
    with h5py.File(path, "r") as f:
        ds = f["image_array"]
        total = 0
        for s in range(0, n, BATCH):
            x = ds[s : s + BATCH]
            total += x.shape[0]
            if release:
                del x
    return total


def bare_images_ivar(path: Path, n: int) -> int:
    with h5py.File(path, "r") as f:
        ds, iv = f["image_array"], f["image_ivar"]
        total = 0
        for s in range(0, n, BATCH):
            x, v = ds[s : s + BATCH], iv[s : s + BATCH]
            total += x.shape[0] + 0 * v.shape[0]
    return total


def bare_crop(path: Path, n: int, native: int, crop: int) -> int:
    o = (native - crop) // 2
    with h5py.File(path, "r") as f:
        ds = f["image_array"]
        total = 0
        for s in range(0, n, BATCH):
            x = ds[s : s + BATCH, :, o : o + crop, o : o + crop]
            total += x.shape[0]
    return total


def bare_bands(path: Path, n: int) -> int:
    with h5py.File(path, "r") as f:
        ds = f["image_array"]
        total = 0
        for s in range(0, n, BATCH):
            x = ds[s : s + BATCH][:, [0, 1, 3]]
            total += x.shape[0]
    return total


def bare_rows(path: Path, batches: list[np.ndarray]) -> int:
    """h5py needs increasing indices: sort, read, then restore the requested order."""
    with h5py.File(path, "r") as f:
        ds = f["image_array"]
        total = 0
        for rows in batches:
            order = np.argsort(rows)
            x = np.empty((rows.size, *ds.shape[1:]), dtype=ds.dtype)
            x[order] = ds[rows[order]]
            total += x.shape[0]
    return total


def reader_stream(path: Path, release: bool = False, **kwargs: object) -> int:
    with MMUShardReader(path, **kwargs) as r:  # type: ignore[arg-type]
        total = 0
        for b in r.iter_batches(BATCH):
            total += len(b)
            if release:
                del b
        return total


def reader_rows(path: Path, batches: list[np.ndarray]) -> int:
    with MMUShardReader(path, ivar=False) as r:
        total = 0
        for rows in batches:
            b = r.read_rows(rows)
            total += len(b)
        return total


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    count = fn()
    return time.perf_counter() - t0, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="galaxies in the shard")
    parser.add_argument("--size", type=int, default=64, help="native cutout size, px")
    parser.add_argument("--crop", type=int, default=48, help="centre-crop size, px")
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
        t0 = time.perf_counter()
        path = make_shard(Path(tmp), args.n, args.size)
        mb = path.stat().st_size / 2**20
        print(
            f"shard: {args.n} galaxies x 4 bands x {args.size}^2 px, {mb:.0f} MiB, "
            f"written in {time.perf_counter() - t0:.1f} s"
        )
        row_batches = [rng.choice(args.n, size=BATCH, replace=False) for _ in range(2048 // BATCH)]
        cases: dict[str, tuple[Callable[[], int], Callable[[], int]]] = {
            "images": (
                lambda: bare_images(path, args.n),
                lambda: reader_stream(path, ivar=False),
            ),
            "images, release": (
                lambda: bare_images(path, args.n, release=True),
                lambda: reader_stream(path, release=True, ivar=False),
            ),
            "images+ivar": (
                lambda: bare_images_ivar(path, args.n),
                lambda: reader_stream(path, ivar=True),
            ),
            f"crop{args.crop}": (
                lambda: bare_crop(path, args.n, args.size, args.crop),
                lambda: reader_stream(path, size=args.crop, ivar=False),
            ),
            "bands grz": (
                lambda: bare_bands(path, args.n),
                lambda: reader_stream(path, bands=("g", "r", "z"), ivar=False),
            ),
            "random rows": (
                lambda: bare_rows(path, row_batches),
                lambda: reader_rows(path, row_batches),
            ),
        }
        # Warm the page cache and both code paths once.
        for bare, ours in cases.values():
            bare()
            ours()
        times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cases}
        counts: dict[str, int] = {}
        for rep in range(args.reps):
            for name, (bare, ours) in cases.items():
                order = [(0, bare), (1, ours)] if rep % 2 == 0 else [(1, ours), (0, bare)]
                for side, fn in order:
                    dt, count = timed(fn)
                    times[name][side].append(dt)
                    counts[name] = count

    print(
        f"machine: {platform.machine()} {platform.processor() or ''} "
        f"python {platform.python_version()}, h5py {h5py.__version__} "
        f"(HDF5 {h5py.version.hdf5_version}), {args.reps} interleaved reps, median"
    )
    print(f"{'case':<18}{'bare h5py gal/s':>18}{'reader gal/s':>16}{'ratio':>8}")
    for name, (bare_t, ours_t) in times.items():
        bare_rate = counts[name] / statistics.median(bare_t)
        ours_rate = counts[name] / statistics.median(ours_t)
        print(f"{name:<18}{bare_rate:>18,.0f}{ours_rate:>16,.0f}{ours_rate / bare_rate:>8.2f}")


if __name__ == "__main__":
    main()
