"""Benchmark: the million-galaxy run (issue 10) — stage time, memory and disk from 10k to 1M.

What it does, per size N (``--sizes``, default 10k, 100k, 1M; 32 px cutouts, 4 bands):

1. **Models, once.** A mock survey of ``--base-n`` galaxies (10k) is simulated at 32 px with
   the real generator (GalSim + lenstronomy; its rate is measured and reported), and the
   demo's jobs train a morphology encoder and an aligner on it with short budgets
   (``--morph-epochs``, ``--aligner-epochs``, ``--captions``). The same two registered models
   serve every size: this benchmark measures inference and indexing at scale, not training.
2. **The survey of N galaxies is streamed, not simulated.** The generator runs at ~250
   galaxies/s on 2 cores (benchmarks/RESULTS.md), so 1M simulated galaxies would take over an
   hour. Instead, shards of ``--shard-rows`` galaxies are written one at a time from the
   simulated base set: each galaxy is a base galaxy (cycled) under one of the 8 flips /
   quarter-turns, with a fresh object_id and a fresh sky position (uniform on a disc whose
   area grows with N; shards are contiguous in NESTED HEALPix order). Downstream stage costs
   depend on the number of galaxies and pixels, not on which galaxies they are. Only one shard
   is in memory at a time. The derived shards carry ``image_array``, positions, fluxes, PSF
   and E(B-V), but no ``image_ivar`` (optional in the MMU layout): a real MMU shard holds
   about twice the pixel bytes.
3. **The stages run through Dagster with the project's dask executor**
   (``galaxy_assets.defs.execution.pooled_dask_executor``: dagster-dask's with its steps
   pickled, run-unique task keys and pool slots; the ``gpu`` pool gets one slot per worker) against a ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
   host="127.0.0.1")`` that this script starts), on a persistent Dagster instance in a home
   of its own (``<work>/n<N>``; the MLflow store and the ``vlm_captions`` /
   ``aligned_model`` outputs are copied from the training home), with ``execute_job`` on
   ``reconstructable`` jobs defined below:

   ``raw_cutouts``       one run per shard (the asset is per-partition), two runs at a time;
   ``image_embeddings``  two runs, each over half the shards (single-run backfill policy:
                         the encoder loads once per run), one per dask worker;
   ``search_vectors``    the same;
   ``galaxy_index``      one run over every shard (one LanceDB writer), including the
                         vector index build (IVF-PQ from 25k rows).

   Torch and BLAS use one thread per worker (``OMP_NUM_THREADS=1``): two workers, two cores.
4. **Measured:** wall time per stage; peak RSS per stage and overall (this process and all
   its children, dask workers included, sampled every 0.2 s with psutil; shared pages are
   counted once per process, so the sum overstates a little); disk per galaxy (shards,
   Parquet per asset, LanceDB); that the table holds exactly the N object_ids, each once.
5. **Baselines in the same process, after the stages:** a bare ``model.encode`` loop over
   in-memory cutouts read from the same shards (1 thread; the stage's ideal rate is twice
   that, one per worker) against ``image_embeddings``; a bare LanceDB ``create_table`` +
   ``table.add`` of the same rows (built from the same Parquet outputs) plus the same
   ``create_index`` against ``galaxy_index``.

Everything it writes goes under ``--work`` (default /tmp/bench_million); the table goes to
``<work>/results.{md,json}``. The log-log plot (time vs N per stage with fitted slopes) goes to
``--plot PATH`` when given; without it, only a run of the documented sizes (10k, 100k and 1M)
rewrites docs/scaling.png.

Run: ``.venv/bin/python benchmarks/bench_million.py --sizes 10000 100000 1000000``
(``--executor in_process`` runs the stages in one process without dask, a quicker check of
the script at small sizes, e.g. ``--sizes 5000 10000 --base-n 2000``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("raw_cutouts", "image_embeddings", "search_vectors", "galaxy_index")
SIZE = 32  # cutout side in pixels, for the mock survey and the survey setting
DOCUMENTED_SIZES = [10_000, 100_000, 1_000_000]  # the run docs/scaling.md reports
BANDS = ("g", "r", "i", "z")
EXECUTOR_ENV = "BENCH_MILLION_EXECUTOR"  # dask | in_process, read where the jobs are built
HOME_ENV = "GALAXY_ASSETS_HOME"
log = logging.getLogger("bench_million")
if os.environ.get(EXECUTOR_ENV):  # a phase, a lane or a dask worker: `kill -USR1` dumps stacks
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)


class BenchError(RuntimeError):
    """A stage of the benchmark failed; the message says which and why."""


# ------------------------------------------------------------------------------ memory


class PeakRSS:
    """Samples the RSS of a process and all its descendants in a thread; keeps the overall
    peak and the peak per label (set ``label`` to the stage being run)."""

    def __init__(self, pid: int | None = None, interval: float = 0.2) -> None:
        import psutil

        self._proc = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.label = "setup"
        self.peak = 0
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self._proc, *self._proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.sample()
            self.peak = max(self.peak, rss)
            self.peaks[self.label] = max(self.peaks.get(self.label, 0), rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when missing)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_text() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


# ------------------------------------------------------------------- Dagster jobs (dask)

_DEFS = None


def bench_defs():
    """The repository's Definitions plus one job per timed stage, each on the dask executor
    (or the in-process one when ``BENCH_MILLION_EXECUTOR=in_process``). Built lazily: the
    settings (home, cutout size) are read from the environment at first use, in the driver
    and in every dask worker."""
    global _DEFS
    if _DEFS is None:
        import dagster as dg

        from galaxy_assets.definitions import defs
        from galaxy_assets.defs.partitions import shard_partitions

        mode = os.environ.get(EXECUTOR_ENV, "dask")
        if mode == "dask":
            from galaxy_assets.defs.execution import pooled_dask_executor

            executor = pooled_dask_executor()
        elif mode == "in_process":
            executor = dg.in_process_executor
        else:
            raise BenchError(f"{EXECUTOR_ENV}={mode!r}: use dask or in_process")
        jobs = [
            dg.define_asset_job(
                f"bench_{stage}",
                selection=dg.AssetSelection.assets(stage),
                partitions_def=shard_partitions,
                executor_def=executor,
            )
            for stage in STAGES
        ]
        _DEFS = dg.Definitions.merge(defs, dg.Definitions(jobs=jobs))
    return _DEFS


def bench_raw_cutouts():
    return bench_defs().resolve_job_def("bench_raw_cutouts")


def bench_image_embeddings():
    return bench_defs().resolve_job_def("bench_image_embeddings")


def bench_search_vectors():
    return bench_defs().resolve_job_def("bench_search_vectors")


def bench_galaxy_index():
    return bench_defs().resolve_job_def("bench_galaxy_index")


JOB_FUNCTIONS = {
    "raw_cutouts": bench_raw_cutouts,
    "image_embeddings": bench_image_embeddings,
    "search_vectors": bench_search_vectors,
    "galaxy_index": bench_galaxy_index,
}


def run_job(stage: str, job, instance, run_config: dict, tags: dict[str, str]) -> None:
    """One run of ``stage``'s reconstructable ``job`` through ``execute_job``; raises
    BenchError with the step failures when it fails."""
    import dagster as dg

    with dg.execute_job(job, instance=instance, run_config=run_config, tags=tags) as result:
        if result.success:
            return
        lines = []
        for event in result.get_step_failure_events():
            err = event.event_specific_data.error
            cause = err.cause.message.strip() if err and err.cause else (err.message if err else "")
            lines.append(f"{event.step_key}: {cause[:800]}")
        raise BenchError(
            f"{stage} run {tags} failed (run {result.run_id}): "
            + ("; ".join(lines) or "no step failure recorded; see the Dagster UI")
        )


def halves(keys: list[str], parts: int) -> list[tuple[str, str]]:
    """``keys`` (in partition order) cut into ``parts`` contiguous (first, last) ranges."""
    parts = max(1, min(parts, len(keys)))
    bounds = np.linspace(0, len(keys), parts + 1).round().astype(int)
    return [(keys[a], keys[b - 1]) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _warm_import(pause: float = 0.0) -> None:
    """Import Dagster and the definitions (lanes and dask workers, before the timing)."""
    bench_defs()
    time.sleep(pause)


def _lane_run(stage: str, job, run_config: dict, tags: dict[str, str]) -> None:
    """One run, in a lane process (its own DagsterInstance from DAGSTER_HOME)."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        run_job(stage, job, instance, run_config, tags)


def run_stage(stage: str, instance, keys: list[str], run_config: dict, lanes) -> int:
    """Materialize ``stage`` for ``keys``: raw_cutouts one run per shard, image_embeddings and
    search_vectors one run per contiguous range (one per lane), galaxy_index one run over
    all. ``lanes``: None runs them one after the other here; a process pool runs as many at
    a time as it has processes (execute_job is not thread-safe: two runs started from two
    threads of one process deadlocked in logging.config.dictConfig). Returns the number of
    runs."""
    import dagster as dg

    from galaxy_assets.cli import RANGE_END, RANGE_START

    width = lanes._max_workers if lanes is not None else 1
    if stage == "raw_cutouts":
        tag_sets = [{"dagster/partition": k} for k in keys]
    else:
        parts = 1 if stage == "galaxy_index" else width
        tag_sets = [{RANGE_START: a, RANGE_END: b} for a, b in halves(keys, parts)]
    job = dg.reconstructable(JOB_FUNCTIONS[stage])  # picklable: it travels to the lanes
    if lanes is None:
        for tags in tag_sets:
            run_job(stage, job, instance, run_config, tags)
    else:
        futures = [lanes.submit(_lane_run, stage, job, run_config, t) for t in tag_sets]
        for fut in futures:
            fut.result()
    return len(tag_sets)


# ------------------------------------------------------------------------ the survey


def load_base(root: Path) -> dict[str, np.ndarray]:
    """Pixels and catalogue columns of every galaxy of the simulated base survey."""
    import h5py

    from galaxy_assets.survey.readers import find_shards

    cols: dict[str, list[np.ndarray]] = {}
    names = ["image_array", "image_psf_fwhm", "EBV"] + [f"FLUX_{b.upper()}" for b in BANDS]
    for path in find_shards(root):
        with h5py.File(path, "r") as f:
            for name in names:
                cols.setdefault(name, []).append(f[name][:])
    if not cols:
        raise BenchError(
            f"no shards under {root}: the base survey is missing; rerun the "
            "training phase (delete its marker file to force it)"
        )
    return {k: np.concatenate(v) for k, v in cols.items()}


def survey_ids(n: int) -> list[str]:
    return [f"bm{n}-{i:08d}" for i in range(n)]


def build_survey(base_root: Path, out: Path, n: int, shard_rows: int, seed: int) -> dict:
    """Write ``n`` galaxies as shards of ``shard_rows`` into ``out``, streamed from the base
    survey (see the module docstring). Returns the shard paths, seconds and bytes."""
    from galaxy_assets.survey.mmu import write_mmu_shard
    from galaxy_assets.survey.mock import healpix_cells, survey_positions

    t0 = time.perf_counter()
    base = load_base(base_root)
    nb = len(base["EBV"])
    # the base survey's density (10k in a 6-degree disc), kept as N grows
    radius = min(180.0, 6.0 * math.sqrt(n / 10_000))
    ra, dec = survey_positions(n, seed + 1, (150.0, 2.0, radius))
    order = np.argsort(healpix_cells(ra, dec, 16), kind="stable")
    ra, dec = ra[order], dec[order]
    ids = np.asarray(survey_ids(n))
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, start in enumerate(range(0, n, shard_rows)):
        stop = min(n, start + shard_rows)
        src = (np.arange(start, stop) + rng.integers(nb)) % nb
        images = base["image_array"][src]
        turn = rng.integers(0, 8, size=stop - start)
        for t in range(1, 8):
            sel = turn == t
            if sel.any():
                x = np.rot90(images[sel], t % 4, axes=(2, 3))
                images[sel] = x[..., ::-1] if t >= 4 else x
        path = out / f"shard={k:05d}.hdf5"
        write_mmu_shard(
            path,
            images=images,
            bands=list(BANDS),
            object_id=ids[start:stop],
            ra=ra[start:stop],
            dec=dec[start:stop],
            psf_fwhm=base["image_psf_fwhm"][src],
            fluxes={b: base[f"FLUX_{b.upper()}"][src] for b in BANDS},
            ebv=base["EBV"][src],
        )
        shards.append(path)
    return {"shards": len(shards), "seconds": time.perf_counter() - t0, "bytes": du(out)}


# --------------------------------------------------------------------------- phases


def _prepare_home(root: Path) -> Path:
    """Point the settings and DAGSTER_HOME at ``root`` (before galaxy_assets.definitions is
    imported) and return the home."""
    os.environ[HOME_ENV] = str(root)
    os.environ["GALAXY_ASSETS_SURVEY_CUTOUT_SIZE"] = str(SIZE)
    os.environ.pop("GALAXY_ASSETS_SURVEY_ROOTS", None)
    os.environ.pop("DAGSTER_HOME", None)
    from galaxy_assets.cli import prepare_dagster_home
    from galaxy_assets.runtime import Home

    home = Home.from_env(str(root))
    prepare_dagster_home(home)
    return home


def _add_partitions(defs, instance, home) -> list[str]:
    from galaxy_assets.defs.partitions import shard_partitions

    found = defs.resources["survey"].discover(home)
    known = set(instance.get_dynamic_partitions(shard_partitions.name))
    new = sorted(set(found) - known)
    if new:
        instance.add_dynamic_partitions(shard_partitions.name, new)
    return sorted(found)


def phase_train(args: argparse.Namespace) -> dict:
    """Simulate the base survey and train the encoder and the aligner (the demo's jobs, short
    budgets), once; a marker file with the settings makes a rerun reuse them."""
    work = Path(args.work)
    home = _prepare_home(work / "train_home")
    marker = home.root / "TRAINED.json"
    wanted = {
        "base_n": args.base_n,
        "seed": args.seed,
        "captions": args.captions,
        "morph_epochs": args.morph_epochs,
        "aligner_epochs": args.aligner_epochs,
    }
    if marker.is_file():
        have = json.loads(marker.read_text())
        if have.get("settings") == wanted:
            print(f"train: reusing the models of {home.root} ({marker})", flush=True)
            return have
        shutil.rmtree(home.root)
        home = _prepare_home(work / "train_home")
    from galaxy_assets.cli import _run_captions, _run_stage, ensure_mock_survey, set_pool_limits

    load0 = load_text()
    info = ensure_mock_survey(home, args.base_n, SIZE, args.seed, workers=2)
    import dagster as dg

    from galaxy_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    set_pool_limits(instance)
    keys = _add_partitions(defs, instance, home)
    t0 = time.perf_counter()
    steps = [
        ("survey_job", keys, None),
        (
            "morphology_job",
            None,
            {
                "ops": {
                    "morphology_encoder": {
                        "config": {"epochs": args.morph_epochs, "time_budget_s": 300.0}
                    }
                }
            },
        ),
        ("shard_embeddings_job", keys, None),
    ]
    for job, stage_keys, config in steps:
        if not _run_stage(defs, instance, job, stage_keys, config):
            raise BenchError(f"training phase: {job} failed (see above); home {home.root}")
        if job == "survey_job":
            ns = argparse.Namespace(captions=args.captions, n=args.base_n, seed=args.seed)
            if not _run_captions(defs, instance, ns):
                raise BenchError(f"training phase: captions_job failed; home {home.root}")
    config = {"ops": {"aligned_model": {"config": {"epochs": args.aligner_epochs}}}}
    if not _run_stage(defs, instance, "aligner_job", None, config):
        raise BenchError(f"training phase: aligner_job failed; home {home.root}")
    result = {
        "settings": wanted,
        "generator": {
            "n": info["n"],
            "seconds": info["seconds"],
            "shards": info["shards"],
            "rate": info["n"] / max(info["seconds"], 1e-9),
            "load": load0,
        },
        "training_seconds": time.perf_counter() - t0,
    }
    marker.write_text(json.dumps(result, indent=2))
    return result


def bare_embedding_rate(home, n_max: int, threads: int) -> dict:
    """Galaxies/s of the bare model over in-memory cutouts of the size's first shards, through
    the graph's test-time views (the configured ``image_encoder.tta``, read as the graph's
    resource reads it: one forward pass per view), so that the stage's rate is compared with
    the same work; ``GALAXY_ASSETS_IMAGE_ENCODER_TTA=none`` turns the views off for both."""
    import torch

    from galaxy_assets.defs.resources import ImageEncoderResource
    from galaxy_assets.embedding.image import (
        RegistryImageEncoder,
        ViewAveragedEncoder,
        open_shard_for,
    )
    from galaxy_assets.survey.readers import find_shards
    from galaxy_assets.tracking import Tracker

    encoder = RegistryImageEncoder(tracker=Tracker.from_home(home), batch_size=256)
    tta = ImageEncoderResource.from_settings().tta  # the settings of this size's home
    views = ViewAveragedEncoder(encoder, tta).views if tta != "none" else (lambda x: [x])
    batches, have = [], 0
    for path in find_shards(home.mock_survey):
        with open_shard_for(encoder, path) as reader:
            for batch in reader.iter_batches(256):
                batches.append(np.ascontiguousarray(batch.images))
                have += len(batch)
                if have >= n_max:
                    break
        if have >= n_max:
            break
    net = encoder.model
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            net.encode(torch.from_numpy(batches[0]))  # warm-up
            t0 = time.perf_counter()
            for x in batches:
                for view in views(x):
                    net.encode(torch.from_numpy(view))
            seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    return {
        "galaxies": have,
        "threads": threads,
        "seconds": seconds,
        "rate": have / seconds,
        "views": tta,
    }


def bare_lancedb(home, keys: list[str], out: Path) -> dict:
    """A bare LanceDB create_table + add of the same rows galaxy_index wrote (built from the
    same Parquet outputs, untimed), then the same IVF-PQ create_index."""
    import lancedb
    import polars as pl
    import pyarrow as pa

    from galaxy_assets.search.ann import index_params, ivf_pq_config
    from galaxy_assets.search.table import build_shard_rows

    captions_path = home.parquet / "vlm_captions.parquet"
    captions = pl.read_parquet(captions_path) if captions_path.exists() else None
    parts = [
        build_shard_rows(
            k,
            pl.read_parquet(home.parquet / "raw_cutouts" / f"{k}.parquet"),
            pl.read_parquet(home.parquet / "search_vectors" / f"{k}.parquet"),
            None,
            captions,
        )
        for k in keys
    ]
    rows = pa.concat_tables(parts)
    del parts
    if out.exists():
        shutil.rmtree(out)
    db = lancedb.connect(str(out))
    t0 = time.perf_counter()
    table = db.create_table("bare", schema=rows.schema)
    table.add(rows)
    add_s = time.perf_counter() - t0
    dim = rows.schema.field("vector").type.list_size
    params = index_params(rows.num_rows, dim)
    index_s = 0.0
    if params is not None:
        t0 = time.perf_counter()
        table.create_index("vector", config=ivf_pq_config(params))
        index_s = time.perf_counter() - t0
    n_rows = rows.num_rows
    del rows, table, db
    shutil.rmtree(out, ignore_errors=True)
    return {
        "rows": n_rows,
        "add_seconds": add_s,
        "index_seconds": index_s,
        "params": params.to_dict() if params else None,
    }


def check_index(home, n: int) -> dict:
    """Rows, uniqueness and completeness of the object_ids in galaxy_index."""
    import lancedb

    table = lancedb.connect(str(home.lancedb)).open_table("galaxy_index")
    rows = int(table.count_rows())
    ids = (
        table.search()
        .select(["object_id"])
        .limit(max(rows, 1))
        .to_arrow()
        .column("object_id")
        .to_pylist()
    )
    unique = set(ids)
    return {
        "rows": len(ids),
        "unique": len(unique) == len(ids),
        "complete": unique == set(survey_ids(n)),
        "version": int(table.version),
    }


def _index_metadata(instance) -> dict:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey("galaxy_index"))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    indexes = meta.get("indexes")
    return (indexes.value or {}) if indexes is not None else {}


def phase_size(args: argparse.Namespace) -> dict:
    """Build the survey of ``args.n`` galaxies and time the four stages through Dagster."""
    n, work = args.n, Path(args.work)
    train = work / "train_home"
    root = work / f"n{n}"
    if root.exists():
        shutil.rmtree(root)
    home = _prepare_home(root)
    shutil.copytree(train / "mlflow", home.mlflow, dirs_exist_ok=True)
    for name in ("vlm_captions.parquet", "aligned_model.parquet"):
        home.parquet.mkdir(parents=True, exist_ok=True)
        shutil.copy2(train / "parquet" / name, home.parquet / name)
    os.environ[EXECUTOR_ENV] = args.executor
    # one torch / BLAS thread per dask worker: two workers on two cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1" if args.executor == "dask" else os.environ.get(var, "")
        if not os.environ[var]:
            del os.environ[var]
    out: dict = {
        "n": n,
        "executor": args.executor,
        "shard_rows": args.shard_rows,
        "load_before": load_text(),
        "stages": {},
    }
    with PeakRSS() as mem:
        mem.label = "survey"
        survey = build_survey(
            train / "mock_survey", home.mock_survey, n, args.shard_rows, args.seed
        )
        out["survey"] = survey
        cluster = client_address = lanes = None
        if args.executor == "dask":
            from distributed import LocalCluster

            mem.label = "cluster"
            # GPU-pool assets ask dask for a "GPU" resource (dagster-dask/resource_requirements):
            # each worker offers one slot, so one such step per worker runs at a time (there
            # is no CUDA device here: torch runs on the CPU)
            cluster = LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                resources={"GPU": 1},
            )
            client_address = cluster.scheduler_address
            from distributed import Client

            with Client(client_address) as client:  # imports paid before the timing starts
                client.run(_warm_import)
        try:
            import dagster as dg

            from galaxy_assets.cli import QUIET, set_pool_limits

            defs = bench_defs()
            instance = dg.DagsterInstance.get()
            set_pool_limits(instance)
            # no CUDA here: each of the two dask workers is one "device" (torch on its core),
            # so the gpu pool, which the pooled executor honours, gets one slot per worker
            instance.event_log_storage.set_concurrency_slots("gpu", 2)
            keys = _add_partitions(defs, instance, home)
            config: dict = dict(QUIET)
            if client_address:
                config["execution"] = {
                    "config": {"cluster": {"existing": {"address": client_address}}}
                }
            if args.executor == "dask":  # two runs at a time, one per dask worker
                import multiprocessing

                lanes = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
                for fut in [lanes.submit(_warm_import, 2.0) for _ in range(2)]:
                    fut.result()
            else:
                lanes = None
            for stage in STAGES:
                mem.label = stage
                t0 = time.perf_counter()
                runs = run_stage(stage, instance, keys, config, lanes)
                seconds = time.perf_counter() - t0
                out["stages"][stage] = {"seconds": seconds, "runs": runs, "rate": n / seconds}
                print(
                    f"n={n} {stage}: {seconds:.1f} s over {runs} run(s) "
                    f"({n / seconds:.0f} galaxies/s), load {load_text()}",
                    flush=True,
                )
            out["index_build"] = _index_metadata(instance)
        finally:
            if lanes is not None:
                lanes.shutdown()
            if cluster is not None:
                cluster.close()
        mem.label = "checks"
        out["check"] = check_index(home, n)
        out["disk"] = {
            "shards": du(home.mock_survey),
            **{stage: du(home.parquet / stage) for stage in STAGES[:3]},
            "lancedb": du(home.lancedb),
        }
        mem.label = "baselines"
        out["bare_embed"] = bare_embedding_rate(home, min(n, args.bare_galaxies), threads=1)
        out["bare_lancedb"] = bare_lancedb(home, keys, root / "bare_lancedb")
    out["peak_rss"] = mem.peak
    out["peak_rss_by_stage"] = mem.peaks
    out["load_after"] = load_text()
    (root / "result.json").write_text(json.dumps(out, indent=2, default=str))
    return out


# ---------------------------------------------------------------------------- report


def ratios(res: dict) -> dict[str, float]:
    """Stage rate against its same-process baseline."""
    st = res["stages"]
    bare = res["bare_embed"]
    workers = 2 if res["executor"] == "dask" else 1
    lance = res["bare_lancedb"]
    return {
        "image_embeddings_vs_bare": st["image_embeddings"]["rate"] / (workers * bare["rate"]),
        "galaxy_index_vs_bare": (lance["add_seconds"] + lance["index_seconds"])
        / st["galaxy_index"]["seconds"],
    }


def stage_seconds(results: list[dict], stage: str) -> list[float]:
    """Wall seconds of ``stage`` (or ``"total"``, the sum of the stages) at each size."""
    if stage == "total":
        return [sum(r["stages"][s]["seconds"] for s in STAGES) for r in results]
    return [r["stages"][stage]["seconds"] for r in results]


def fit_slopes(results: list[dict]) -> dict[str, float]:
    """Slope of log(time) against log(N) for each stage and the total (needs 2+ sizes)."""
    if len(results) < 2:
        return {}
    ns = np.log10([r["n"] for r in results])
    return {
        stage: float(np.polyfit(ns, np.log10(stage_seconds(results, stage)), 1)[0])
        for stage in (*STAGES, "total")
    }


def markdown(results: list[dict], train: dict) -> str:
    gb = 1024**3
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_version()}; generator at {SIZE} px: {train['generator']['n']} "
        f"galaxies in {train['generator']['seconds']:.1f} s = {train['generator']['rate']:.0f}/s "
        f"(load {train['generator']['load']})",
        "",
        "| N | stage | runs | wall s | galaxies/s | peak RSS GiB | disk B/galaxy |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = r["n"]
        disk = {
            "raw_cutouts": r["disk"]["raw_cutouts"],
            "image_embeddings": r["disk"]["image_embeddings"],
            "search_vectors": r["disk"]["search_vectors"],
            "galaxy_index": r["disk"]["lancedb"],
        }
        for stage in STAGES:
            s = r["stages"][stage]
            lines.append(
                f"| {n:,} | {stage} | {s['runs']} | {s['seconds']:.1f} | "
                f"{s['rate']:,.0f} | {r['peak_rss_by_stage'].get(stage, 0) / gb:.2f} | "
                f"{disk[stage] / n:,.0f} |"
            )
        total = sum(r["stages"][s]["seconds"] for s in STAGES)
        lines.append(
            f"| {n:,} | **total** | | **{total:.1f}** | {n / total:,.0f} | "
            f"{r['peak_rss'] / gb:.2f} | shards {r['disk']['shards'] / n:,.0f} |"
        )
    lines += [
        "",
        "| N | survey write s | index build | bare encode gal/s (1 thread) | "
        "embeddings / 2×bare | bare add s | bare index s | galaxy_index / bare | "
        "rows | ids unique, complete | load before → after |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        q = ratios(r)
        ib = r.get("index_build", {}).get("vector", {})
        build = f"{ib.get('action', '?')} {ib.get('seconds', 0):.1f} s"
        lines.append(
            f"| {r['n']:,} | {r['survey']['seconds']:.1f} | {build} | "
            f"{r['bare_embed']['rate']:,.0f} | {q['image_embeddings_vs_bare']:.2f} | "
            f"{r['bare_lancedb']['add_seconds']:.1f} | {r['bare_lancedb']['index_seconds']:.1f} | "
            f"{q['galaxy_index_vs_bare']:.2f} | {r['check']['rows']:,} | "
            f"{r['check']['unique']}, {r['check']['complete']} | "
            f"{r['load_before']} → {r['load_after']} |"
        )
    slopes = fit_slopes(results)
    if slopes:
        lines += [
            "",
            "log-log slope of wall time vs N: "
            + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items()),
        ]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slopes = fit_slopes(results)
    ns = [r["n"] for r in results]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    for stage in (*STAGES, "total"):
        t = stage_seconds(results, stage)
        label = f"{stage} (slope {slopes[stage]:.2f})" if stage in slopes else stage
        ax.loglog(ns, t, "o-", label=label, lw=2.2 if stage == "total" else 1.4)
    ref = np.array([min(ns), max(ns)], dtype=float)
    if len(ns) > 1:
        t_total0 = stage_seconds(results[:1], "total")[0]
        ax.loglog(ref, t_total0 * ref / ref[0], "k:", lw=1, label="linear reference")
    ax.set_xlabel("galaxies N")
    ax.set_ylabel("wall time per stage (s)")
    ax.set_title(f"Stage wall time vs N (Dagster + dask, 2 workers, {SIZE} px)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _child(args: argparse.Namespace, phase: str, extra: list[str]) -> dict:
    """Run one phase in a fresh Python process (its own settings, home and cluster), sample
    the RSS of its whole process tree, and return its JSON result."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--phase",
        phase,
        "--work",
        str(args.work),
        "--seed",
        str(args.seed),
        "--base-n",
        str(args.base_n),
        "--captions",
        str(args.captions),
        "--morph-epochs",
        str(args.morph_epochs),
        "--aligner-epochs",
        str(args.aligner_epochs),
        "--shard-rows",
        str(args.shard_rows),
        "--executor",
        args.executor,
        "--bare-galaxies",
        str(args.bare_galaxies),
        *extra,
    ]
    result_file = Path(args.work) / f"{phase}{'_' + extra[-1] if extra else ''}.json"
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_MILLION_RESULT": str(result_file)}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    with PeakRSS(proc.pid, interval=0.5) as mem:
        rc = proc.wait()
    if rc != 0:
        raise BenchError(
            f"phase {phase} {extra} failed with exit status {rc} (its output is "
            "above); fix that and rerun (the trained models are reused)"
        )
    out = json.loads(result_file.read_text())
    out["peak_rss_tree_from_parent"] = mem.peak
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DOCUMENTED_SIZES))
    parser.add_argument(
        "--work",
        default="/tmp/bench_million",
        help="folder for everything the benchmark writes (not in git)",
    )
    parser.add_argument("--base-n", type=int, default=10_000, help="simulated base survey")
    parser.add_argument("--shard-rows", type=int, default=5_000)
    parser.add_argument("--captions", type=int, default=400)
    parser.add_argument("--morph-epochs", type=int, default=2)
    parser.add_argument("--aligner-epochs", type=int, default=10)
    parser.add_argument("--executor", choices=("dask", "in_process"), default="dask")
    parser.add_argument(
        "--bare-galaxies", type=int, default=10_000, help="galaxies in the bare encoder loop"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot",
        default=None,
        help="PNG of time vs N (default: docs/scaling.png, and only for the documented sizes)",
    )
    parser.add_argument(
        "--phase", choices=("all", "train", "size"), default="all", help=argparse.SUPPRESS
    )
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.phase != "all":
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hung run: kill -USR1 pid
        out = phase_train(args) if args.phase == "train" else phase_size(args)
        Path(os.environ.get("BENCH_MILLION_RESULT", Path(args.work) / "phase.json")).write_text(
            json.dumps(out, default=str)
        )
        return [out]
    print(f"bench_million: sizes {args.sizes}, work {args.work}, load {load_text()}", flush=True)
    train = _child(args, "train", [])
    results = []
    for n in sorted(args.sizes):
        res = _child(args, "size", ["--n", str(n)])
        results.append(res)
        print(
            f"n={n}: total {sum(res['stages'][s]['seconds'] for s in STAGES):.1f} s, "
            f"peak RSS {res['peak_rss'] / 1024**3:.2f} GiB, ratios {ratios(res)}",
            flush=True,
        )
        # what was measured so far survives a later size that fails
        text = markdown(results, train)
        (Path(args.work) / "results.md").write_text(text + "\n")
        (Path(args.work) / "results.json").write_text(
            json.dumps({"train": train, "results": results}, indent=2, default=str)
        )
    text = markdown(results, train)
    print("\n" + text)
    plot_path = args.plot
    if plot_path is None and sorted(args.sizes) == DOCUMENTED_SIZES:
        plot_path = str(REPO / "docs" / "scaling.png")  # the figure docs/scaling.md shows
    if plot_path and len(results) > 1:
        plot(results, Path(plot_path))
        print(f"plot: {plot_path}")
    return results


if __name__ == "__main__":
    main()
