"""GPU benchmark: image embedding through the shard pipeline, and aligner training at batch 8192.

Self-contained: run from the repository root on a machine with an NVIDIA GPU and PyTorch,
timm, h5py, numpy and pyyaml (the galaxy-assets package need not be installed: the repo root
is put on ``sys.path``). polars / pandera / mlflow are used when present and not needed
otherwise. It prints one JSON object (and writes it to ``--out`` when given).

1. **Image embedding** — the default encoder's architecture (morphology model, preset
   ``small`` or ``--presets``, 64 px, 4 bands; random weights cost the same as trained ones)
   wrapped in ``ModuleImageEncoder`` on ``cuda`` in float32 and bfloat16:

   * ``pipeline``: an HDF5 shard on local disk (page-cached after the warm-up) streamed
     through ``embed_shard`` (or its loop ``iter_shard_vectors`` when polars is missing):
     reads in a prefetch thread, host → device copy, the model, unit normalisation;
   * ``bare``: ``model.encode`` over the same batches of a tensor already on the GPU.

   Ratio pipeline / bare (target ≥ 0.85).

2. **Aligner training** — ``train_on_pairs`` (the loop ``train_aligner`` runs) on synthetic
   pairs at the paper's batch of 8192, with the paper's heads (768-d AION image vectors,
   3072-d text vectors → 1024) and with our defaults (256 / 384 → 256), in float32 and
   bfloat16: pairs/s per epoch (median) and the peak GPU memory
   (``torch.cuda.max_memory_allocated``), to check that batch 8192 fits.

Run: ``python3 benchmarks/gpu_embed_align.py [--n-images 16384] [--n-pairs 65536]
[--epochs 3] [--out result.json]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import galaxy_assets  # noqa: E402,F401  (torchvision guard before timm)

log = logging.getLogger("gpu_embed_align")


class _H5Reader:
    """Minimal CutoutReader over an HDF5 file with ``image_array`` / ``object_id`` (used when
    the survey layer's pandera/polars are not installed on the GPU machine)."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.uri = str(path)
        self.bands = ("g", "r", "i", "z")
        self.size = None
        self._f = h5py.File(path, "r")
        self._img = self._f["image_array"]
        self._ids = self._f["object_id"][:].astype(str)

    def __len__(self) -> int:
        return int(self._img.shape[0])

    def iter_batches(self, batch_size: int = 256):
        from galaxy_assets.survey.base import CutoutBatch

        n = len(self)
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            out = np.empty((e - s, *self._img.shape[1:]), np.float32)
            self._img.read_direct(out, np.s_[s:e])
            yield CutoutBatch(self._ids[s:e], np.arange(s, e), out, None, self.bands)

    def close(self) -> None:
        self._f.close()


def _sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _galaxies(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    base = rng.normal(0, 0.01, (n, 4, size, size)).astype(np.float32)
    for i in range(0, n):
        r2 = (xx / rng.uniform(1.5, 8)) ** 2 + (yy / rng.uniform(1.5, 8)) ** 2
        base[i] += (rng.uniform(0.05, 3) * np.exp(-r2))[None].astype(np.float32)
    return base


def _write_shard(folder: Path, images: np.ndarray) -> tuple[Path, bool]:
    """An MMU shard through the survey layer when it imports, else a bare HDF5 file."""
    n = len(images)
    ids = [f"g{i:08d}" for i in range(n)]
    try:
        from galaxy_assets.survey.mmu import write_mmu_shard

        path = write_mmu_shard(
            folder / "healpix=1" / "001-of-001.hdf5",
            images=images,
            bands=["g", "r", "i", "z"],
            object_id=ids,
            ra=np.zeros(n),
            dec=np.zeros(n),
        )
        return path, True
    except ImportError:
        import h5py

        path = folder / "shard.hdf5"
        with h5py.File(path, "w") as f:
            f["image_array"] = images
            f["object_id"] = np.asarray([i.encode() for i in ids])
        return path, False


def _embed_case(args, torch, enc, x_gpu, shard: Path, mmu: bool, have_polars: bool) -> dict:
    """Interleaved reps of the bare model on GPU-resident cutouts and of the shard pipeline."""
    from galaxy_assets.embedding.image import EmbedStats, iter_shard_vectors

    amp = torch.bfloat16 if enc.dtype == torch.bfloat16 else None
    waits: list[float] = []

    def bare() -> None:
        with torch.inference_mode():
            for s in range(0, len(x_gpu), args.batch):
                if amp is None:
                    enc.model.encode(x_gpu[s : s + args.batch])
                else:
                    with torch.autocast(args.device, dtype=amp):
                        enc.model.encode(x_gpu[s : s + args.batch])
        _sync(torch)

    def pipeline() -> None:
        stats = EmbedStats()
        if have_polars and mmu:
            from galaxy_assets.embedding.image import embed_shard, open_shard_for

            with open_shard_for(enc, shard) as reader:
                frame = embed_shard(reader, enc, args.batch, stats=stats)
            assert frame.height == args.n_images
        else:
            reader = _H5Reader(shard)
            try:
                vectors = iter_shard_vectors(reader, enc, args.batch, stats=stats)
                n = sum(len(ids) for ids, _ in vectors)
            finally:
                reader.close()
            assert n == args.n_images
        _sync(torch)
        waits.append(stats.read_wait_seconds)

    for fn in (bare, pipeline):
        fn()
    rates: dict[str, list[float]] = {"bare": [], "pipeline": []}
    for _ in range(args.reps):
        for name, fn in (("bare", bare), ("pipeline", pipeline)):
            t = time.perf_counter()
            fn()
            rates[name].append(args.n_images / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "bare_galaxies_per_s": round(med["bare"], 1),
        "pipeline_galaxies_per_s": round(med["pipeline"], 1),
        "ratio": round(med["pipeline"] / med["bare"], 3),
        "read_wait_s_last": round(waits[-1], 3),
    }


def bench_embedding(args, torch) -> dict:
    from galaxy_assets.embedding.image import ModuleImageEncoder
    from galaxy_assets.morphology.model import build_model, preset_config

    tmp = Path(tempfile.mkdtemp(prefix="gpu_embed_"))
    try:
        t0 = time.perf_counter()
        images = _galaxies(args.n_images, 64)
        shard, mmu = _write_shard(tmp, images)
        log.info(
            "wrote %d cutouts in %.1f s (%s layout)",
            len(images),
            time.perf_counter() - t0,
            "MMU" if mmu else "bare HDF5",
        )
        try:
            import polars  # noqa: F401

            have_polars = True
        except ImportError:
            have_polars = False

        results = {}
        for preset in args.presets:
            model = build_model(preset_config(preset, image_size=64), seed=0).eval()
            x_gpu = torch.from_numpy(images).to(args.device)
            for dtype in ("float32", "bfloat16"):
                enc = ModuleImageEncoder(
                    model,
                    encoder_id=f"bench:{preset}",
                    bands=list("griz"),
                    image_size=64,
                    device=args.device,
                    dtype=dtype,
                    batch_size=args.batch,
                )
                results[f"{preset}/{dtype}"] = _embed_case(
                    args, torch, enc, x_gpu, shard, mmu, have_polars
                )
                log.info("embedding %s %s: %s", preset, dtype, results[f"{preset}/{dtype}"])
            x_gpu = None
            if args.device == "cuda":
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the shard: 64 KB per cutout
    return {
        "via": "embed_shard" if (have_polars and mmu) else "iter_shard_vectors",
        "batch": args.batch,
        "n": args.n_images,
        "results": results,
    }


def _synthetic(
    n: int, image_dim: int, text_dim: int, torch, device: str
) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator(device=device).manual_seed(0)
    text = torch.nn.functional.normalize(
        torch.randn(n, text_dim, device=device, generator=g), dim=1
    )
    w = torch.randn(image_dim, text_dim, device=device, generator=g) / text_dim**0.5
    signal = text @ w.T
    image = signal + torch.randn(n, image_dim, device=device, generator=g) * signal.std()
    image = torch.nn.functional.normalize(image, dim=1)
    return image.cpu().numpy(), text.cpu().numpy()


def bench_alignment(args, torch) -> dict:
    from galaxy_assets.alignment import PAPER_MODEL_CONFIG, PairedData, train_on_pairs

    setups = {
        "paper_768x3072_to_1024": (
            768,
            3072,
            {k: v for k, v in PAPER_MODEL_CONFIG.items() if k not in ("image_dim", "text_dim")},
        ),
        "default_256x384_to_256": (256, 384, {}),
    }
    results = {}
    for name, (idim, tdim, model_cfg) in setups.items():
        image, text = _synthetic(args.n_pairs, idim, tdim, torch, args.device)
        pairs = PairedData.from_arrays(
            image, text, image_encoder="synthetic", text_embedder="synthetic"
        )
        for dtype in ("float32", "bfloat16"):
            if args.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            res = train_on_pairs(
                pairs,
                model_config=model_cfg,
                train_config={
                    "epochs": args.epochs,
                    "batch_size": args.batch_pairs,
                    "device": args.device,
                    "dtype": dtype,
                    "learning_rate": 1e-4,
                    "val_fraction": 0.2,
                    "warmup_fraction": 0.2,
                },
            )
            wall = time.perf_counter() - t
            per_epoch = [h["train_pairs_per_second"] for h in res.history]
            results[f"{name}/{dtype}"] = {
                "batch": res.data["batch_size_effective"],
                "pairs_per_s_epoch_median": round(statistics.median(per_epoch[1:] or per_epoch)),
                "epoch_s_median": round(
                    statistics.median(h["epoch_seconds"] for h in res.history), 3
                ),
                "wall_s": round(wall, 2),
                "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20)
                if args.device == "cuda"
                else None,
                "best_val_loss": round(res.best["loss"], 4),
                "val_i2t_recall_at_5": round(res.best["i2t_recall_at_5"], 3),
            }
            log.info("alignment %s %s: %s", name, dtype, results[f"{name}/{dtype}"])
    return {"n_pairs": args.n_pairs, "epochs": args.epochs, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=1024, help="image embedding batch")
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n-pairs", type=int, default=65536)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip", choices=["embed", "align"], default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--batch-pairs", type=int, default=8192, help="aligner batch")
    parser.add_argument(
        "--device", default="cuda", help="cuda; 'cpu' only to smoke-test this script"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("galaxy_assets").setLevel(logging.WARNING)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs an NVIDIA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 numbers mean float32
    out = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    if args.skip != "embed":
        out["image_embedding"] = bench_embedding(args, torch)
    if args.skip != "align":
        out["alignment"] = bench_alignment(args, torch)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
