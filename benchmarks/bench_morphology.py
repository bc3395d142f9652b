"""Benchmark: the morphology encoder's training and inference loops against plain timm loops.

In one process, with the repetitions of both sides interleaved (so load from other processes
and clock drift hit both alike), on ``--threads`` intra-op threads (default 2) at 64 px:

* ``train``  — :func:`galaxy_assets.morphology.train.train_model` (the real loop: batch
  indexing, augmentation, normalisation, backbone, Dirichlet-Multinomial loss, gradient
  clipping, AdamW; its own ``train_images_per_s``, which excludes the per-epoch held-out
  evaluation) against a bare timm loop on the same backbone and batch size: forward, a
  log-sum-exp loss on the logits, backward, AdamW, on tensors already in memory;
* ``infer``  — :func:`galaxy_assets.morphology.predict.predict_images` (normalisation,
  backbone, head, expected fractions) against bare ``model(x)`` under ``inference_mode`` on
  the same in-memory cutouts and batch size;
* ``predict_shard`` (information only) — predictions straight from the HDF5 shards;
* ``demo`` — the default training (:class:`TrainConfig` defaults) on a mock survey of
  ``--demo-n`` galaxies: wall time (pixels read included), held-out loss against the best
  constant prediction, vote-fraction error.

It prints images/s of both sides and the ratio ours / bare (target ≥ 0.85).

Run: ``.venv/bin/python benchmarks/bench_morphology.py [--threads 2] [--demo-n 3000]
[--survey PATH_TO_EXISTING_MOCK] [--rounds 5] [--steps 20] [--skip-demo] [--omp-active]``

``OMP_WAIT_POLICY=PASSIVE`` is set unless given (or ``--omp-active``): on a CPU shared with
other processes, spinning OpenMP waits make 2-thread runs several times slower, and the
figures meaningless.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads that spin while waiting collapse when other processes share the cores
# (measured here: 2 threads went from ~650 to ~70 images/s); passive waiting keeps ~400.
# Must be set before torch loads libgomp; --omp-active keeps the library default.
if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from galaxy_assets.morphology.data import VoteDataset, votes_from_truth  # noqa: E402
from galaxy_assets.morphology.model import (  # noqa: E402
    DEFAULT_PRESET,
    PRESETS,
    build_model,
    preset_config,
)
from galaxy_assets.morphology.predict import predict_images, predict_shard  # noqa: E402
from galaxy_assets.morphology.train import TrainConfig, prepare_datasets, train_model  # noqa: E402


def manifest_of(root: Path) -> pl.DataFrame:
    from galaxy_assets.survey.manifest import build_manifest
    from galaxy_assets.survey.readers import find_shards, open_shard, shard_key

    frames = []
    for path in find_shards(root):
        with open_shard(path) as reader:
            frames.append(build_manifest(reader, shard_key(root, path)).frame)
    return pl.concat(frames)


def bare_train(backbone: str, kwargs: dict, n_out: int, batches: list[torch.Tensor]) -> float:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        backbone, pretrained=False, in_chans=batches[0].shape[1], num_classes=n_out, **kwargs
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    opt.zero_grad()
    model(batches[0]).logsumexp(1).mean().backward()  # warm-up step, not timed
    opt.step()
    t0 = time.perf_counter()
    for x in batches:
        opt.zero_grad(set_to_none=True)
        loss = model(x).logsumexp(1).mean()
        loss.backward()
        opt.step()
    return len(batches) * len(batches[0]) / (time.perf_counter() - t0)


def ours_train(train: VoteDataset, val: VoteDataset, cfg: TrainConfig, norm: dict) -> float:
    result = train_model(train, val, cfg, norm=norm)
    return float(result.metrics["train_images_per_s"])


def bare_infer(model: torch.nn.Module, images: torch.Tensor, batch: int) -> float:
    model.eval()
    with torch.inference_mode():
        model(images[:batch])
        t0 = time.perf_counter()
        for s in range(0, len(images), batch):
            model(images[s : s + batch])
    return len(images) / (time.perf_counter() - t0)


def ours_infer(model, images: np.ndarray, batch: int) -> float:
    predict_images(model, images[:batch], batch_size=batch)
    t0 = time.perf_counter()
    predict_images(model, images, batch_size=batch)
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--demo-n", type=int, default=3000)
    ap.add_argument("--survey", type=Path, default=None, help="reuse a mock survey folder")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument(
        "--omp-active", action="store_true", help="keep OpenMP's default (spinning) wait policy"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    tmp = tempfile.TemporaryDirectory(prefix="bench_morph_")
    root = args.survey
    if root is None:
        from galaxy_assets.survey.mock import simulate_survey

        root = Path(tmp.name) / "mock"
        t0 = time.perf_counter()
        simulate_survey(root, args.demo_n, size=64, seed=0, workers=args.threads)
        print(f"mock survey: {args.demo_n} galaxies in {time.perf_counter() - t0:.0f} s")
    manifest = manifest_of(root)
    votes = votes_from_truth(manifest)
    print(f"survey: {manifest.height} galaxies in {manifest['shard_uri'].n_unique()} shards")

    # ---------------------------------------------------------------- throughput
    spec = PRESETS[args.preset]
    base_cfg = TrainConfig(preset=args.preset, batch_size=args.batch)
    train, val = prepare_datasets(votes, base_cfg)
    need = args.steps * args.batch
    if len(train) < need:
        raise SystemExit(
            f"need {need} training galaxies for --steps {args.steps}, have {len(train)}"
        )
    tr_sub, val_sub = train.subset(np.arange(need)), val.subset(np.arange(min(64, len(val))))
    from galaxy_assets.morphology.model import fit_normalization

    norm = fit_normalization(train.images[:512].numpy())
    step_cfg = TrainConfig(
        preset=args.preset,
        batch_size=args.batch,
        epochs=1,
        max_steps=args.steps,
        eval_batch_size=64,
    )
    gen = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(args.batch, len(base_cfg.bands), 64, 64, generator=gen) * 0.05
        for _ in range(args.steps)
    ]
    n_out = votes.tree.n_answers
    ours_train(tr_sub, val_sub, step_cfg, norm)  # warm-up
    bare_train(spec["backbone"], spec["backbone_kwargs"], n_out, batches[:3])
    tr_o, tr_b = [], []
    for _ in range(args.rounds):
        tr_b.append(bare_train(spec["backbone"], spec["backbone_kwargs"], n_out, batches))
        tr_o.append(ours_train(tr_sub, val_sub, step_cfg, norm))
    mcfg = preset_config(args.preset)
    mcfg.norm = norm
    ours_model = build_model(mcfg).eval()
    import timm

    bare_model = timm.create_model(
        spec["backbone"], pretrained=False, in_chans=4, num_classes=n_out, **spec["backbone_kwargs"]
    ).eval()
    n_inf = min(len(train), 2048)
    imgs_np = train.images[:n_inf].numpy()
    imgs_t = train.images[:n_inf].clone()
    in_o, in_b = [], []
    for _ in range(args.rounds):
        in_b.append(bare_infer(bare_model, imgs_t, args.infer_batch))
        in_o.append(ours_infer(ours_model, imgs_np, args.infer_batch))
    uri = manifest["shard_uri"][0]
    t0 = time.perf_counter()
    n_shard = predict_shard(ours_model, uri, batch_size=args.infer_batch).height
    shard_rate = n_shard / (time.perf_counter() - t0)

    def row(name: str, ours: list[float], bare: list[float]) -> str:
        ratios = [o / b for o, b in zip(ours, bare, strict=True)]
        return (
            f"{name:<8} ours {statistics.median(ours):8.0f} img/s   bare timm "
            f"{statistics.median(bare):8.0f} img/s   ratio {statistics.median(ratios):.3f} "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )

    print(
        f"\nbackbone {spec['backbone']} {spec['backbone_kwargs']} ({args.preset}), 64 px, "
        f"4 bands, train batch {args.batch}, inference batch {args.infer_batch}"
    )
    print(row("train", tr_o, tr_b))
    print(row("infer", in_o, in_b))
    print(f"predict_shard (HDF5 read + predict, one shard of {n_shard}): {shard_rate:.0f} img/s")

    # ---------------------------------------------------------------- demo
    if not args.skip_demo:
        print(
            f"\ndemo: default TrainConfig on {len(votes)} labelled galaxies "
            f"(load average {os.getloadavg()[0]:.2f})"
        )
        t0 = time.perf_counter()
        d_train, d_val = prepare_datasets(votes, TrainConfig())
        result = train_model(d_train, d_val, TrainConfig())
        wall = time.perf_counter() - t0
        m = result.metrics
        print(
            f"demo wall time {wall:.0f} s (training {m['train_seconds']:.0f} s at "
            f"{m['train_images_per_s']:.0f} img/s, {int(m['epochs_run'])} epochs, "
            f"{result.stop_reason}); held-out loss {m['val_loss']:.3f} vs constant "
            f"prediction {m['baseline_val_loss']:.3f} (ratio {m['val_loss_vs_baseline']:.3f}); "
            f"vote-fraction MAE {m['val_vote_mae']:.4f}; load average after "
            f"{os.getloadavg()[0]:.2f}"
        )
        for q in votes.tree.question_names:
            print(f"  {q:<20} NLL {m[f'val_loss/{q}']:.3f}  MAE {m[f'val_vote_mae/{q}']:.4f}")
        print_class_aucs(result, d_val, manifest, votes.tree)
    tmp.cleanup()


def print_class_aucs(result, val: VoteDataset, manifest: pl.DataFrame, tree) -> None:
    """How well held-out predictions separate the simulator's true classes (ROC-AUC)."""
    from galaxy_assets.morphology.transfer import roc_auc
    from galaxy_assets.survey.truth import load_truth

    truth = load_truth(manifest["shard_uri"].unique().to_list())
    frac, _ = predict_images(result.build_model(), val.images.numpy())
    order = {oid: i for i, oid in enumerate(truth["object_id"].to_list())}
    t = truth[[order[o] for o in val.object_ids]]

    def f(q: str, a: str) -> np.ndarray:
        return frac[:, tree.answer_index(q, a)]

    featured = f("smooth-or-featured", "featured-or-disk")
    face_on = featured * f("disk-edge-on", "no")
    scores = {
        "is_spiral": face_on * f("has-spiral-arms", "yes"),
        "is_edge_on": featured * f("disk-edge-on", "yes"),
        "has_bar": face_on * (f("bar", "strong") + f("bar", "weak")),
        "is_elliptical": f("smooth-or-featured", "smooth"),
        "is_merger": f("merging", "merger") + f("merging", "major-disturbance"),
    }
    parts = []
    for flag, score in scores.items():
        y = t[flag].to_numpy().astype(bool)
        parts.append(f"{flag} {roc_auc(y, score):.3f} ({int(y.sum())} of {len(y)})")
    print("  held-out ROC-AUC of vote-fraction scores for true classes: " + ", ".join(parts))


if __name__ == "__main__":
    main()
