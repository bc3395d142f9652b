"""Benchmark: image embedding rate of the default encoder through ``embed_shard``.

The default image encoder is the morphology encoder this graph trains, loaded from the MLflow
registry (``RegistryImageEncoder``, ``morphology-encoder@champion``). Here a freshly built
model of the default preset (``small``: resnet10t at ×½ width, 4 bands, 64 px; random weights,
which cost the same as trained ones) is registered in a temporary store and loaded back
through that path.

In the same process, on the same galaxies, it compares:

* **pipeline** — ``embed_shard(open_shard_for(encoder, shard), encoder)``: HDF5 reads in a
  prefetch thread, the model, unit normalisation, the polars frame;
* **pipeline, no prefetch** — the same with ``prefetch=0`` (reads inline);
* **bare** — ``model.encode(x)`` under ``torch.inference_mode`` over the same batches of an
  in-memory tensor of the same (cropped) cutouts: the model alone, no I/O;
* **pipeline, rot4 / d8** — the pipeline through ``ViewAveragedEncoder`` (the graph's
  test-time views: 4 or 8 encoder passes per galaxy, ``--views``).

Repetitions are interleaved (each side warmed up once), and the ratio pipeline / bare rate
is printed (target ≥ 0.85: the pipeline must not starve the model), with each view setting's
rate as a fraction of the plain pipeline's (ideal: 1/4 and 1/8).

Run: ``.venv/bin/python benchmarks/bench_image_embed.py [--n 4096] [--cutout 64]
[--batch 256] [--reps 3] [--threads N] [--preset small] [--views rot4,d8]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import galaxy_assets  # noqa: F401  (torchvision guard before timm)


def galaxies(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Noise plus an elliptical blob per galaxy, in nanomaggy-like units."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    out = rng.normal(0, 0.01, (n, 4, size, size)).astype(np.float32)
    for i in range(n):
        r2 = (xx / rng.uniform(1.5, 8)) ** 2 + (yy / rng.uniform(1.5, 8)) ** 2
        out[i] += (rng.uniform(0.05, 3) * np.exp(-r2))[None] * rng.uniform(0.5, 1.5, (4, 1, 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--cutout", type=int, default=64, help="cutout size in the shard (px)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--views", default="rot4,d8", help="test-time views to time ('' none)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # the shard (64 KB per cutout at 64 px) and the model store are deleted afterwards
    with tempfile.TemporaryDirectory(prefix="bench_image_embed_") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    """The benchmark, with its shard and model store under ``tmp``."""
    import torch

    from galaxy_assets.embedding.image import (
        TTA_VIEWS,
        EmbedStats,
        RegistryImageEncoder,
        ViewAveragedEncoder,
        embed_shard,
        open_shard_for,
    )
    from galaxy_assets.morphology.model import CODE_REF, build_model, preset_config
    from galaxy_assets.survey.mmu import write_mmu_shard
    from galaxy_assets.tracking import Tracker

    if args.threads:
        torch.set_num_threads(args.threads)
    imgs = galaxies(args.n, args.cutout)
    shard = write_mmu_shard(
        tmp / "healpix=1" / "001-of-001.hdf5",
        images=imgs,
        bands=["g", "r", "i", "z"],
        object_id=[f"g{i:07d}" for i in range(args.n)],
        ra=np.zeros(args.n),
        dec=np.zeros(args.n),
    )
    cfg = preset_config(args.preset, image_size=64)
    model = build_model(cfg, seed=0).eval()
    tracker = Tracker(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "artifacts")
    with tracker.start_run("bench") as run:
        path = run.log_torch_model("model", model.state_dict(), cfg.to_dict(), CODE_REF)
    version = tracker.register(run.run_id, path, "morphology-encoder")
    tracker.set_alias("morphology-encoder", "champion", version)
    encoder = RegistryImageEncoder(tracker=tracker, batch_size=args.batch)
    net = encoder.model

    lo = (args.cutout - 64) // 2
    x_all = torch.from_numpy(np.ascontiguousarray(imgs[:, :, lo : lo + 64, lo : lo + 64]))
    del imgs

    def bare() -> None:
        with torch.inference_mode():
            for s in range(0, args.n, args.batch):
                net.encode(x_all[s : s + args.batch])

    last: dict[str, EmbedStats] = {}

    def pipeline(prefetch: int, enc=encoder) -> None:
        stats = EmbedStats()
        with open_shard_for(enc, shard) as reader:
            frame = embed_shard(reader, enc, args.batch, prefetch=prefetch, stats=stats)
        assert frame.height == args.n
        if enc is encoder:
            last[f"prefetch{prefetch}"] = stats

    sides = {
        "bare": bare,
        "pipeline": lambda: pipeline(2),
        "pipeline_noprefetch": lambda: pipeline(0),
    }
    views = [v.strip() for v in args.views.split(",") if v.strip() not in ("", "none")]
    for view in views:
        wrapped = ViewAveragedEncoder(encoder, view)
        sides[f"pipeline_{view}"] = lambda wrapped=wrapped: pipeline(2, wrapped)
    for fn in sides.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.reps):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            rates[name].append(args.n / (time.perf_counter() - t0))

    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["pipeline"] / med["bare"]
    paired = statistics.median(p / b for p, b in zip(rates["pipeline"], rates["bare"], strict=True))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
        f"{load[0]:.1f}, torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    print(
        f"encoder {encoder.encoder_id} (preset {args.preset}, dim {encoder.dim}); {args.n} "
        f"galaxies, {args.cutout} px cutouts read at 64 px; batch {args.batch}; {args.reps} "
        "interleaved reps"
    )
    for name in sides:
        r = rates[name]
        print(f"  {name:20s} median {med[name]:8.1f} galaxies/s   best {max(r):8.1f}")
    wait = last["prefetch2"].read_wait_seconds
    print(f"  model waited {wait:.3f} s for reads in the last prefetched run")
    print(
        f"ratio pipeline/bare: {ratio:.3f} (medians), {paired:.3f} (median of paired reps); "
        "target >= 0.85"
    )
    for view in views:
        print(
            f"ratio pipeline_{view}/pipeline: {med[f'pipeline_{view}'] / med['pipeline']:.3f} "
            f"(ideal {1 / TTA_VIEWS[view]:.3f}: one encoder pass per view)"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "image_embed",
                    "threads": torch.get_num_threads(),
                    "n": args.n,
                    "batch": args.batch,
                    "rates": med,
                    "ratio": ratio,
                    "paired_ratio": paired,
                }
            )
        )


if __name__ == "__main__":
    main()
