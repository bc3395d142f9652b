"""Benchmark: mock survey generation, galaxies per second.

Two measurements in the same process, on the same seed, size and bands:

* ``survey``   — :func:`galaxy_assets.survey.mock.simulate_survey` with ``--workers`` processes
                 (default 2): end to end, including the process pool's start, rendering, the
                 simulated votes and writing every HDF5 shard and truth Parquet;
* ``baseline`` — a bare single-process loop of the same generator
                 (:func:`~galaxy_assets.survey.mock.simulate_galaxy` for each galaxy, nothing
                 written), after one warm-up galaxy.

It prints both rates and their ratio (the parallel speed-up; ideal = number of workers, minus
the pool start-up and the writing). Target: >= 200 galaxies/s on 2 cores at 64 px x 4 bands.
The load average is printed too: other processes on the machine slow both sides, so the
survey's CPU seconds per galaxy (workers + main process) are printed as well, with the rate
they allow on ``--workers`` idle cores.

Run: ``.venv/bin/python benchmarks/bench_mock_survey.py [--n 2000] [--size 64] [--workers 2]``
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=2000, help="galaxies in the parallel survey")
    ap.add_argument("--baseline-n", type=int, default=500, help="galaxies in the bare loop")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from galaxy_assets.survey.mock import simulate_galaxy, simulate_survey

    bands = ("g", "r", "i", "z")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"galaxies {args.n} (baseline {args.baseline_n}), {args.size} px x {len(bands)} bands")

    simulate_galaxy(args.seed, 0, size=args.size, bands=bands)  # warm-up: tables, imports
    t0 = time.perf_counter()
    c0 = time.process_time()
    for i in range(args.baseline_n):
        simulate_galaxy(args.seed, i, size=args.size, bands=bands)
    base_wall = time.perf_counter() - t0
    base_cpu = time.process_time() - c0
    base_rate = args.baseline_n / base_wall

    with tempfile.TemporaryDirectory(prefix="bench_mock_") as tmp:
        res = simulate_survey(
            tmp, args.n, size=args.size, seed=args.seed, workers=args.workers, bands=bands
        )
        rate = res.n_galaxies / res.seconds
        shards = len(res.shards)
        cpu_per_gal = res.cpu_seconds / res.n_galaxies

    print(
        f"baseline  single-process loop: {base_rate:8.1f} galaxies/s "
        f"({1e3 * base_wall / args.baseline_n:.2f} ms wall, {1e3 * base_cpu / args.baseline_n:.2f} ms CPU per galaxy)"
    )
    print(
        f"survey    {args.workers} workers, {shards} shards: {rate:8.1f} galaxies/s "
        f"({res.n_galaxies} in {res.seconds:.2f} s, written)"
    )
    print(f"ratio     survey / baseline = {rate / base_rate:.2f}  (target rate >= 200/s)")
    print(
        f"cpu       survey: {1e3 * cpu_per_gal:.2f} ms CPU per galaxy (workers + main); "
        f"on {args.workers} idle cores that is {args.workers / cpu_per_gal:.0f} galaxies/s"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
