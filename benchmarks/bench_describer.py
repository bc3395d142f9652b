"""Benchmark: the morphology describer's captions per second, and its keyword precision/recall.

1. Speed. Simulates a mock survey of ``--n-speed`` galaxies (default 1,000, 64 px, g r i z),
   reads every cutout into memory, then captions all of them, in the same process and
   interleaved ``--reps`` times:

   * ``baseline`` — ``MorphologyDescriber(workers=1)``: measurements and words in this process;
   * ``workers=2`` — ``MorphologyDescriber(workers=2)``: two spawned worker processes (the
     pool is started before timing, as a long-lived captioner keeps it; its start-up time is
     printed separately).

   It prints captions per second for both, their ratio, and per-galaxy milliseconds per core.
   Target: >= 20 captions/s on 2 cores at 64 px.

2. Words. Simulates a ``--n-eval``-galaxy mock survey (default 3,000, another seed), captions
   it with two workers and prints, per keyword family, precision, recall, support and the
   mention rates in the class and in the rest (``keywords.keyword_rates``), as Markdown.

Run: ``.venv/bin/python benchmarks/bench_describer.py [--n-speed 1000] [--n-eval 3000]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from galaxy_assets.captioning.base import CaptionRequest
from galaxy_assets.captioning.describer import MorphologyDescriber
from galaxy_assets.captioning.keywords import keyword_rates, rates_markdown
from galaxy_assets.survey.mock import simulate_survey
from galaxy_assets.survey.readers import open_shard


def load_survey(folder: Path) -> tuple[list[CaptionRequest], pl.DataFrame]:
    reqs: list[CaptionRequest] = []
    truths = []
    for shard in sorted(folder.glob("healpix=*/*.hdf5")):
        with open_shard(shard, ivar=False) as reader:
            for batch in reader.iter_batches(512):
                reqs += [
                    CaptionRequest(str(o), img, batch.bands)
                    for o, img in zip(batch.object_id, batch.images, strict=True)
                ]
        truths.append(pl.read_parquet(shard.with_name(shard.stem + ".truth.parquet")))
    return reqs, pl.concat(truths, how="diagonal_relaxed")


def bench_speed(reqs: list[CaptionRequest], reps: int) -> None:
    base = MorphologyDescriber(workers=1)
    t0 = time.perf_counter()
    par = MorphologyDescriber(workers=2)
    par.caption(reqs[:64])  # starts the pool (spawned processes import numpy/scipy)
    startup = time.perf_counter() - t0
    base.caption(reqs[:16])  # warm this process (Sérsic table)
    times: dict[str, list[float]] = {"baseline": [], "workers=2": []}
    failed = 0
    for _ in range(reps):
        for name, d in (("baseline", base), ("workers=2", par)):
            t = time.perf_counter()
            res = d.caption(reqs)
            times[name].append(time.perf_counter() - t)
            failed = sum(not r.ok for r in res)
    par.close()
    n = len(reqs)
    b = statistics.median(times["baseline"])
    p = statistics.median(times["workers=2"])
    print(f"\n## Speed: {n} galaxies, 64 px, median of {reps} interleaved runs")
    print(f"pool start-up (2 spawned workers + first 64 captions): {startup:.2f} s")
    print("| case | s | captions/s | ms per galaxy per core |")
    print("|---|---|---|---|")
    print(f"| baseline (1 process) | {b:.2f} | {n / b:.1f} | {1000 * b / n:.1f} |")
    print(f"| workers=2 | {p:.2f} | {n / p:.1f} | {2000 * p / n:.1f} |")
    print(f"ratio workers=2 / baseline: {b / p:.2f}x; unmeasurable cutouts: {failed}")
    print(f"target >= 20 captions/s on 2 cores: {'met' if n / p >= 20 else 'NOT met'}")


def bench_words(reqs: list[CaptionRequest], truth: pl.DataFrame) -> None:
    t = time.perf_counter()
    with MorphologyDescriber(workers=2) as d:
        res = d.caption(reqs)
    dt = time.perf_counter() - t
    caps = pl.DataFrame(
        {"object_id": [r.object_id for r in res], "caption": [r.caption for r in res]}
    )
    errors = sum(r.caption is None for r in res)
    rates = keyword_rates(caps, truth)
    print(f"\n## Keyword precision/recall: {len(reqs)} galaxies ({dt:.1f} s, {errors} errors)")
    print(rates_markdown(rates))
    print("\nExample captions:")
    for r in res[:5]:
        print(f"- {r.object_id}: {r.caption}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-speed", type=int, default=1000)
    ap.add_argument("--n-eval", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    print(
        f"# bench_describer on {platform.node()} ({platform.processor() or platform.machine()},"
        f" {os.cpu_count()} CPUs, Python {platform.python_version()})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        simulate_survey(Path(tmp) / "speed", args.n_speed, seed=args.seed, workers=2)
        reqs, _ = load_survey(Path(tmp) / "speed")
        print(f"simulated {len(reqs)} galaxies in {time.perf_counter() - t:.1f} s")
        bench_speed(reqs, args.reps)
        if args.n_eval > 0:
            simulate_survey(Path(tmp) / "eval", args.n_eval, seed=args.seed + 1, workers=2)
            reqs, truth = load_survey(Path(tmp) / "eval")
            bench_words(reqs, truth)


if __name__ == "__main__":
    main()
