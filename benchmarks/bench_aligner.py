"""Benchmark: search-aligner training on cached embeddings (CPU).

By default, a 5,000-caption run with the graph's settings: the ``aligned_model`` asset's
ensemble (``--model graph``, ``SEARCH_MODEL_CONFIG``: four head pairs, 256 hidden, 64 out each)
trained for ``TrainConfig.epochs`` epochs at batch ``TrainConfig.batch_size`` (80 and 256 now;
the defaults of ``--epochs`` and ``--batch`` are read from ``TrainConfig``, as the asset's
config reads them). ``--model single`` trains one pair instead (256-d image / 384-d text → 512
hidden, 2 residual blocks → 256). Validation retrieval metrics every epoch, on synthetic paired
embeddings (image vector = noisy linear map of the caption vector, see
``galaxy_assets.alignment.synthetic``), through ``train_aligner`` exactly as the asset calls it.

Printed, with the same process as baseline:

* the wall time of the whole run (target < 120 s on 2 cores), pairs/s per epoch (median) and
  the validation recall it reached;
* **bare** — the same heads, loss, AdamW and scheduler over the same number of steps and batch
  size on in-memory tensors, with no validation, caption sampling or bookkeeping: pairs/s, and
  the ratio ours / bare (the cost of the per-epoch validation and bookkeeping).

Run: ``.venv/bin/python benchmarks/bench_aligner.py [--n 5000] [--epochs 80] [--batch 256]
[--threads 1] [--noise 1.0] [--model graph]``

``--threads`` sets torch's threads for both sides (``TrainConfig.num_threads``; 1 is the
default there).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time

import galaxy_assets  # noqa: F401


def main() -> None:
    from galaxy_assets.alignment.train import TrainConfig

    graph = TrainConfig()  # what the aligned_model asset trains with (AlignerTrainConfig)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument(
        "--epochs", type=int, default=graph.epochs, help="default: the graph's (TrainConfig)"
    )
    parser.add_argument(
        "--batch", type=int, default=graph.batch_size, help="default: the graph's (TrainConfig)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for both sides (0: torch default)"
    )
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument(
        "--model",
        choices=("graph", "single"),
        default="graph",
        help="graph: the aligned_model asset's ensemble (SEARCH_MODEL_CONFIG); single: one "
        "512-wide head pair (AlignerConfig's defaults)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from galaxy_assets.alignment import AlignedModel, AlignerConfig, train_aligner
    from galaxy_assets.alignment.loss import contrastive_loss
    from galaxy_assets.alignment.model import SEARCH_MODEL_CONFIG
    from galaxy_assets.alignment.synthetic import synthetic_pairs
    from galaxy_assets.alignment.train import _lr_lambda, _param_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    images, captions = synthetic_pairs(args.n, image_dim=256, text_dim=384, noise=args.noise)
    train_cfg = {
        "epochs": args.epochs,
        "batch_size": args.batch,
        "num_threads": args.threads or None,
    }

    model_cfg = dict(SEARCH_MODEL_CONFIG) if args.model == "graph" else {}
    t0 = time.perf_counter()
    result = train_aligner(images, captions, model_config=model_cfg, train_config=train_cfg)
    wall = time.perf_counter() - t0
    per_epoch = [h["train_pairs_per_second"] for h in result.history]
    epoch_s = [h["epoch_seconds"] for h in result.history]

    # bare loop: same model, steps and batch; no validation, sampling or logging
    n_train = result.data["n_train_objects"]
    steps = max(1, n_train // args.batch) * args.epochs
    cfg = AlignerConfig(image_dim=256, text_dim=384, **model_cfg)
    xi_all = torch.from_numpy(images["vector"].to_numpy()[:n_train].copy())
    xt_all = torch.from_numpy(captions["vector"].to_numpy()[:n_train].copy())
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(cfg.n_members):  # an ensemble's members train one after the other
        model = AlignedModel(cfg.member())
        opt = torch.optim.AdamW(
            _param_groups(model, graph.weight_decay, graph.temperature_learning_rate),
            lr=graph.learning_rate,
            betas=(0.9, 0.98),
            eps=1e-6,
        )
        warmup = int(round(graph.warmup_fraction * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, _lr_lambda(steps, warmup, graph.min_lr_ratio)
        )
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, n_train, (args.batch,), generator=g)
            ri, rt, scale = model(xi_all[idx], xt_all[idx])
            loss = contrastive_loss(ri, rt, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            model.clamp_logit_scale_()
    bare_s = time.perf_counter() - t0
    steps *= cfg.n_members
    bare_rate = steps * args.batch / bare_s
    ours_rate = result.train_pairs_per_second

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
        f"{load[0]:.1f}, torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    print(
        f"{args.n} captions ({n_train} train / {result.data['n_val_objects']} validation), "
        f"batch {args.batch}, {args.epochs} epochs, {steps} steps, noise {args.noise}, "
        f"model {args.model} ({cfg.n_members} member(s), hidden {cfg.hidden_dim})"
    )
    print(f"  train_aligner wall time        {wall:8.1f} s   (target < 120 s on 2 cores)")
    print(
        f"  pairs/s per epoch (training)   median {statistics.median(per_epoch):8.0f}   "
        f"min {min(per_epoch):8.0f}   max {max(per_epoch):8.0f}"
    )
    print(f"  epoch time                     median {statistics.median(epoch_s):8.2f} s")
    print(f"  bare loop pairs/s              {bare_rate:8.0f}   ({bare_s:.1f} s)")
    print(f"  ratio ours (training part) / bare: {ours_rate / bare_rate:.3f}")
    print(
        f"  whole-run pairs/s incl. validation: {steps * args.batch / wall:8.0f}  "
        f"(ratio to bare {steps * args.batch / wall / bare_rate:.3f})"
    )
    best = result.best
    print(
        f"  best epoch {result.best_epoch}: val loss {best['loss']:.3f}, i2t R@1/5/10 "
        f"{best['i2t_recall_at_1']:.3f}/{best['i2t_recall_at_5']:.3f}/"
        f"{best['i2t_recall_at_10']:.3f}, t2i R@5 {best['t2i_recall_at_5']:.3f}, median rank "
        f"{best['i2t_median_rank']:.0f} (pool {best['retrieval_pool']:.0f})"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "aligner",
                    "threads": torch.get_num_threads(),
                    "wall_s": wall,
                    "pairs_per_s_epoch_median": statistics.median(per_epoch),
                    "bare_pairs_per_s": bare_rate,
                    "best": best,
                }
            )
        )


if __name__ == "__main__":
    main()
