"""Benchmark: property-emulator posterior sampling and training on CPU.

The model has the default sizes (:class:`galaxy_assets.emulator.EmulatorConfig`: d_model 64,
3 encoder layers, head 64 wide with 3 residual layers, 1000 diffusion steps) over a
30-column vocabulary shaped like the survey table (4 magnitudes, 3 colours, 4 magnitude
errors, 7 vote fractions, 8 embedding PCs, 4 labels). Speed does not depend on the weights,
so sampling runs on the freshly initialised model; training runs on a synthetic table of
that shape with a real signal (labels are noisy functions of the inputs).

Printed, with baselines measured in the same process:

* **posterior** — ``sample_posterior`` of one label for ``--galaxies`` galaxies ×
  ``--samples`` samples with the default sampler (DPM-Solver++(2M) over
  ``DEFAULT_SAMPLING_STEPS`` steps, ``DEFAULT_KNOTS`` stratified trajectories per galaxy and
  inverse-transform draws through their quantile map), end to end (tokenising,
  encoder, sampler): samples/s and the wall time (target: 1,000 samples × 10,000 galaxies
  in < 60 s), then the summaries of those samples (median, 16th/84th percentiles and the
  multimodality flag);
* **MLP baseline** — one forward pass of a plain MLP of the head's size (input: the value
  and the 64-d condition; 3 hidden layers of 64; output 1) over the same number of rows
  (galaxies × samples), in chunks of 65,536 rows: rows/s, and the ratio ours / MLP (how
  many MLP passes one posterior sample costs, inverted);
* **every sample integrated** (the default solver with ``knots=None``) and **plain DDPM**
  (``solver="ddpm"``: all 1000 steps, ancestral) on subsets of galaxies, for reference;
* **training** — ``train_emulator`` on ``--train-rows`` rows for ``--epochs`` epochs (held-out
  scoring excluded from the rate) against a bare loop with the same model, batch size and
  AdamW over the same rows without task sampling, EMA, or held-out scoring.

Run: ``.venv/bin/python benchmarks/bench_emulator.py [--galaxies 10000] [--samples 1000]
[--threads 2] [--train-rows 20000] [--epochs 3]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time

import galaxy_assets  # noqa: F401

INPUTS = (
    [f"mag_{b}" for b in "griz"]
    + ["colour_g_r", "colour_r_i", "colour_i_z"]
    + [f"mag_err_{b}" for b in "griz"]
    + ["p_smooth", "p_featured", "p_artifact", "p_edge_on", "p_spiral", "p_bar", "p_merger"]
    + [f"pc_{i}" for i in range(1, 9)]
)
LABELS = ["redshift", "log_stellar_mass", "half_light_radius_arcsec", "sersic_n"]


def synthetic_table(n: int, seed: int = 0):
    """A survey-shaped table: labels are noisy nonlinear functions of latent factors that
    also drive the inputs; ~10% of input values missing."""
    import numpy as np
    import polars as pl

    from galaxy_assets.emulator import make_table

    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 6))
    mix = rng.normal(size=(6, len(INPUTS)))
    x = latent @ mix + 0.3 * rng.normal(size=(n, len(INPUTS)))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = np.stack(
        [
            np.abs(latent[:, 0]) * 0.3 + 0.05 * rng.normal(size=n),
            10 + 0.5 * latent[:, 1] + 0.1 * rng.normal(size=n),
            np.exp(0.3 * latent[:, 2] + 0.1 * rng.normal(size=n)),
            np.clip(2 + latent[:, 3] + 0.3 * rng.normal(size=n), 0.5, 6),
        ],
        axis=1,
    )
    data = {"object_id": [f"g{i:07d}" for i in range(n)]}
    data.update({c: x[:, j] for j, c in enumerate(INPUTS)})
    data.update({c: y[:, j] for j, c in enumerate(LABELS)})
    return make_table(pl.DataFrame(data), INPUTS, LABELS, source="synthetic")


def mlp_baseline(rows: int, cond_dim: int, hidden: int, layers: int, chunk: int = 1 << 16):
    """Seconds for one forward pass of a plain MLP over ``rows`` rows, in chunks."""
    import torch
    from torch import nn

    mlp = nn.Sequential(
        nn.Linear(1 + cond_dim, hidden),
        nn.SiLU(),
        *[m for _ in range(layers) for m in (nn.Linear(hidden, hidden), nn.SiLU())],
        nn.Linear(hidden, 1),
    ).eval()
    x = torch.randn(chunk, 1 + cond_dim)
    t0 = time.perf_counter()
    with torch.no_grad():
        done = 0
        while done < rows:
            n = min(chunk, rows - done)
            mlp(x[:n])
            done += n
    return time.perf_counter() - t0


def bare_training(table, batch: int, epochs: int, model_kwargs: dict) -> float:
    """Rows/s of the same model and optimiser over the same rows, one fixed task per row
    (target: the first label, context: everything else), no EMA and no held-out scoring."""
    import numpy as np
    import torch

    from galaxy_assets.emulator.model import PropertyEmulator, new_config
    from galaxy_assets.emulator.tokenizer import Tokenizer

    cols = list(table.columns)
    raw = table.values(cols)
    tok = Tokenizer.fit({c: raw[:, j] for j, c in enumerate(cols)}, cols)
    model = PropertyEmulator(new_config(tok, LABELS, **model_kwargs)).train()
    z = np.nan_to_num(tok.standardize(raw), nan=0.0).astype(np.float32)
    known = torch.from_numpy(np.isfinite(tok.standardize(raw)))
    values = torch.from_numpy(z)
    target_col = cols.index(LABELS[0])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    n = len(z)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for s in range(0, n, batch):
            idx = perm[s : s + batch]
            target = torch.full((len(idx),), target_col, dtype=torch.long)
            losses = model.losses(values[idx], known[idx], target, values[idx, target_col])
            loss = losses["diffusion"] + losses["gaussian"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    return n * epochs / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--galaxies", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-sample-galaxies", type=int, default=500)
    parser.add_argument("--ddpm-galaxies", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from galaxy_assets.emulator import (
        DEFAULT_KNOTS,
        DEFAULT_SAMPLING_STEPS,
        DEFAULT_SOLVER,
        TrainConfig,
        sample_posterior,
        train_emulator,
    )
    from galaxy_assets.emulator.model import PropertyEmulator, new_config
    from galaxy_assets.emulator.tokenizer import Tokenizer

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    out: dict[str, float | int | str] = {
        "threads": args.threads,
        "galaxies": args.galaxies,
        "samples": args.samples,
        "solver": DEFAULT_SOLVER,
        "sampling_steps": DEFAULT_SAMPLING_STEPS,
        "knots": DEFAULT_KNOTS,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": " ".join(f"{v:.2f}" for v in load_before),
    }

    # ---- posterior sampling (default sampler), end to end
    table = synthetic_table(args.galaxies, seed=1)
    cols = list(table.columns)
    raw = table.values(cols)
    tok = Tokenizer.fit({c: raw[:, j] for j, c in enumerate(cols)}, cols)
    model = PropertyEmulator(new_config(tok, LABELS)).eval()
    frame = table.frame.drop(LABELS)
    sample_posterior(model, frame.head(200), "redshift", n_samples=args.samples)  # warm-up
    t0 = time.perf_counter()
    post = sample_posterior(model, frame, "redshift", n_samples=args.samples, seed=0)
    t_post = time.perf_counter() - t0
    n_draws = len(post) * args.samples
    out["posterior_seconds"] = round(t_post, 2)
    t0 = time.perf_counter()
    post.summary()  # median, p16, p84, multimodality flag: what property_posteriors stores
    out["summary_seconds"] = round(time.perf_counter() - t0, 2)
    out["posterior_samples_per_s"] = round(n_draws / t_post)

    # ---- MLP baseline: one forward pass per row, same number of rows
    cfg = model.config
    t_mlp = mlp_baseline(n_draws, cfg.d_model, cfg.head_hidden, cfg.head_layers)
    out["mlp_rows_per_s"] = round(n_draws / t_mlp)
    out["ratio_posterior_vs_mlp"] = round((n_draws / t_post) / (n_draws / t_mlp), 3)

    # ---- per-sample DDIM and plain DDPM on subsets (reference)
    sub = frame.head(args.per_sample_galaxies)
    t0 = time.perf_counter()
    sample_posterior(model, sub, "redshift", n_samples=args.samples, knots=None)
    t = time.perf_counter() - t0
    out["per_sample_samples_per_s"] = round(len(sub) * args.samples / t)
    sub = frame.head(args.ddpm_galaxies)
    t0 = time.perf_counter()
    sample_posterior(model, sub, "redshift", n_samples=args.samples, solver="ddpm")
    t = time.perf_counter() - t0
    out["ddpm_samples_per_s"] = round(len(sub) * args.samples / t)
    out["ddpm_10k_x_1000_projected_s"] = round(10_000 * 1000 / out["ddpm_samples_per_s"])

    # ---- training throughput
    train_table = synthetic_table(args.train_rows, seed=2)
    res = train_emulator(train_table, TrainConfig(epochs=args.epochs, patience=args.epochs, seed=0))
    out["train_rows_per_s"] = round(res.rows_per_second)
    bare = bare_training(train_table, 256, args.epochs, {})
    out["bare_train_rows_per_s"] = round(bare)
    out["ratio_train_vs_bare"] = round(res.rows_per_second / bare, 3)
    out["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())

    if args.json:
        print(json.dumps(out))
        return
    print(f"machine: {out['machine']}, torch threads {args.threads}")
    print(f"load average before: {out['load_before']}, after: {out['load_after']}")
    print(
        f"posterior: {len(post)} galaxies x {args.samples} samples in {t_post:.1f} s "
        f"= {out['posterior_samples_per_s']:,} samples/s "
        f"({DEFAULT_SOLVER} {DEFAULT_SAMPLING_STEPS} steps, {DEFAULT_KNOTS} knots; "
        "target < 60 s)"
    )
    print(f"summaries (median, p16, p84, multimodality flag): {out['summary_seconds']} s")
    print(
        f"MLP baseline: {out['mlp_rows_per_s']:,} rows/s; ratio posterior/MLP "
        f"{out['ratio_posterior_vs_mlp']}"
    )
    print(
        f"same solver, every sample integrated (knots=None): "
        f"{out['per_sample_samples_per_s']:,} samples/s"
    )
    print(
        f"plain DDPM (all {model.config.diffusion_steps} steps): "
        f"{out['ddpm_samples_per_s']:,} samples/s "
        f"(10k x 1000 would take ~{out['ddpm_10k_x_1000_projected_s']} s)"
    )
    print(
        f"training: {out['train_rows_per_s']:,} rows/s vs bare loop {out['bare_train_rows_per_s']:,}"
        f" rows/s (ratio {out['ratio_train_vs_bare']})"
    )


if __name__ == "__main__":
    main()
