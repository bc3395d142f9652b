"""Benchmark: the searchable index (LanceDB IVF-PQ, the FAISS serving index) against FAISS and NumPy.

In one process, on ``--n`` clustered synthetic unit vectors of ``--dim`` dimensions
(``--clusters`` Gaussian clusters on the sphere, each spread along its own 16-d subspace plus
isotropic noise; cluster sizes log-normal), with ``--queries`` query vectors drawn near random
data points and exact top-``k`` ground truth from a chunked NumPy matmul:

* **LanceDB** — table write time; IVF-PQ build time (:func:`ensure_vector_index` with
  :func:`index_params`); recall@k and p50/p99 of :func:`lance_search` (sync), of LanceDB's
  own sync builder, of its async API, without the refine step and with a ``where`` prefilter;
  the fixed per-call cost on a 100-row table (sync and async);
* **ServingIndex** — build time from the table (read + train + add), recall@k, p50/p99 with the
  per-call version check and without it;
* **FAISS** IVF-PQ + refine (the same lists and sub-vectors, ``IndexRefineFlat``) and FAISS
  HNSW (M 32), built from the in-memory vectors; **NumPy** brute force;
* the crossover where an IVF-PQ index beats a flat search (LanceDB and FAISS) at ``--sizes``;
* batched queries (``--batch`` per call): per-query cost of each path;
* re-indexing after 1% new rows: ``ensure_vector_index`` fold-in vs the full build, and
  ``ServingIndex.refresh`` vs building it again; then a 0.1% upsert (``merge_insert``) and
  ``maintain`` (compaction + pruning);
* the whole text query path: MiniLM (``SentenceTransformerEmbedder``, from disk) + a
  random-init aligner text head + the serving index (and + ``lance_search``), p50/p99.

It prints a Markdown table with ratios against FAISS IVF-PQ and NumPy brute force from the same
run. Data lives in a temporary folder, deleted at the end.

Run: ``.venv/bin/python benchmarks/bench_index.py [--n 1000000] [--dim 256] [--queries 200]
[--quick] [--threads 2] [--json]``; ``--quick`` is a 100k-vector smoke run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss/torch start OpenMP

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import replace  # noqa: E402
from datetime import timedelta  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import galaxy_assets  # noqa: E402,F401  (torchvision guard before transformers loads)


# -- data ----------------------------------------------------------------------------------------
def clustered_vectors(
    n: int, dim: int, clusters: int, seed: int, rank: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``clusters`` random centres: centre + a 16-d per-cluster spread
    (norm ~0.6) + isotropic noise (norm ~0.25). Returns (vectors, cluster of each row)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 0.7, clusters)
    assign = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), np.float32)
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(clusters + 1))
    for c in range(clusters):
        rows = order[bounds[c] : bounds[c + 1]]
        if rows.size == 0:
            continue
        basis = rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(dim)
        z = rng.standard_normal((rows.size, rank)).astype(np.float32) * (0.6 / np.sqrt(rank))
        noise = rng.standard_normal((rows.size, dim)).astype(np.float32) * (0.25 / np.sqrt(dim))
        out[rows] = centres[c] + z @ basis + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, assign


def queries_near(vectors: np.ndarray, m: int, seed: int, noise: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = vectors[rng.choice(vectors.shape[0], size=m, replace=False)]
    q = base + rng.standard_normal(base.shape).astype(np.float32) * (noise / np.sqrt(base.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def object_ids(start: int, stop: int) -> list[str]:
    return [f"g{i:08d}" for i in range(start, stop)]


def arrow_table(vectors: np.ndarray, start: int, seed: int):
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    n, dim = vectors.shape
    return pa.table(
        {
            "object_id": pa.array(object_ids(start, start + n)),
            "mag_r": pa.array(rng.uniform(14.0, 22.0, n).astype(np.float32)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
    )


# -- measuring -----------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def latencies(fn: Callable[[int], Any], m: int, warmup: int = 3) -> tuple[np.ndarray, list[Any]]:
    """Seconds per call of fn(i) for i in range(m), after ``warmup`` calls."""
    for i in range(min(warmup, m)):
        fn(i)
    times, outs = np.empty(m), []
    for i in range(m):
        t0 = time.perf_counter()
        outs.append(fn(i))
        times[i] = time.perf_counter() - t0
    return times, outs


def interleaved(
    fns: Sequence[Callable[[int], Any]], m: int, warmup: int = 3
) -> list[tuple[np.ndarray, list[Any]]]:
    """Like :func:`latencies` for several variants, taking turns query by query; the order
    rotates, so no variant always runs first on a query (and pays its cold reads)."""
    for i in range(min(warmup, m)):
        for fn in fns:
            fn(i)
    times = [np.empty(m) for _ in fns]
    outs: list[list[Any]] = [[] for _ in fns]
    for i in range(m):
        for r in range(len(fns)):
            j = (i + r) % len(fns)
            t0 = time.perf_counter()
            outs[j].append(fns[j](i))
            times[j][i] = time.perf_counter() - t0
    return list(zip(times, outs, strict=True))


def pct(times: np.ndarray, p: float) -> float:
    return float(np.percentile(times, p) * 1e3)


def recall(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]], k: int) -> float:
    return float(
        np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)])
    )


def load_info() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        la = os.getloadavg()
        return f"load average {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


QUERY_TEXTS = [
    f"{a} {b}"
    for a in (
        "a galaxy with",
        "an image showing",
        "bright",
        "faint",
        "a red galaxy with",
        "a blue galaxy with",
        "a disturbed system with",
        "a compact object with",
    )
    for b in (
        "visible spiral arms",
        "a gravitational lens arc",
        "tidal tails from a merger",
        "a prominent central bar",
        "an edge-on dust lane",
        "a faint outer ring",
        "clumpy star formation",
        "a smooth elliptical profile",
    )
]


# -- the benchmark -------------------------------------------------------------------------------
def main() -> None:  # noqa: C901 - one linear script, sectioned by comments
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="100k vectors, fewer sizes")
    parser.add_argument("--threads", type=int, default=2, help="FAISS/OpenMP and torch threads")
    parser.add_argument("--batch", type=int, default=100, help="queries per batched call")
    parser.add_argument("--sizes", default="5000,10000,20000,25000,30000,50000")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--no-hnsw", action="store_true")
    parser.add_argument("--no-text", action="store_true")
    parser.add_argument(
        "--lance-iterations",
        type=int,
        default=None,
        help="k-means iterations for the LanceDB build (default: IndexParams)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="parent folder for the temporary data")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n = min(args.n, 100_000)
        args.sizes = "2000,10000,30000"
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RUST_LOG", "error")  # lance's per-query deprecation warnings

    import faiss
    import lancedb
    import torch

    from galaxy_assets.search import ann

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    n, dim, k, m = args.n, args.dim, args.k, args.queries
    res: dict[str, Any] = {"n": n, "dim": dim, "k": k, "queries": m, "threads": args.threads}
    machine = (
        f"{os.cpu_count()} CPUs ({cpu_model()}), python {platform.python_version()}, lancedb "
        f"{lancedb.__version__}, faiss {faiss.__version__}, numpy {np.__version__}, torch "
        f"{torch.__version__}; FAISS/torch threads {args.threads}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    print(f"machine: {machine}")
    print(f"before: {load_info()}")
    res["machine"], res["load_before"] = machine, load_info()
    wall0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="bench_index_", dir=args.tmp)
    rows: list[tuple[str, str, float, float, float | None]] = []  # name, build, p50, p99, recall

    try:
        # ---- data and ground truth --------------------------------------------------------------
        t_gen, (vectors, _) = timed(lambda: clustered_vectors(n, dim, args.clusters, args.seed))
        queries = queries_near(vectors, m, args.seed + 1)
        t_gt, (_, gt_idx) = timed(lambda: ann.top_k_exact(vectors, queries, k))
        truth = [[f"g{i:08d}" for i in row] for row in gt_idx]
        print(f"data: {n} x {dim} in {t_gen:.1f} s; exact top-{k} of {m} queries in {t_gt:.1f} s")

        # ---- LanceDB table + IVF-PQ index -------------------------------------------------------
        db = lancedb.connect(os.path.join(tmp, "lancedb"))
        t_write, table = timed(
            lambda: db.create_table("galaxy_index", arrow_table(vectors, 0, args.seed))
        )
        params = ann.index_params(n, dim)
        if params is None:
            raise SystemExit(f"--n {n} is below the brute-force size; use a larger --n")
        if args.lance_iterations:
            params = replace(params, max_iterations=args.lance_iterations)
        built = ann.ensure_vector_index(table, params=params)
        t_lance_build = built["seconds"]
        res["lance"] = {"write_s": t_write, "build_s": t_lance_build, "params": params.to_dict()}
        print(f"LanceDB: write {t_write:.1f} s, IVF-PQ build {t_lance_build:.1f} s ({params})")

        def lance_ours(i: int) -> list[str]:
            return ann.lance_search(table, queries[i], k)[0]["object_id"].to_list()

        def lance_raw(i: int, refine: bool = True) -> list[str]:
            b = (
                table.search(queries[i])
                .distance_type("cosine")
                .nprobes(params.nprobes)
                .limit(k)
                .select(["object_id", "_distance"])
            )
            if refine:
                b = b.refine_factor(params.refine_factor)
            return b.to_arrow().column("object_id").to_pylist()

        def lance_where(i: int) -> list[str]:
            frame = ann.lance_search(table, queries[i], k, where="mag_r < 20.0")[0]
            return frame["object_id"].to_list()

        # a selective filter (1% pass): the IVF pass finds fewer than k in the lists it probes,
        # so lance_search reruns exactly over the filtered rows; its truth is the exact top k of
        # the filtered rows, and its baseline LanceDB's IVF search alone (what ran before)
        selective = "mag_r < 14.08"
        mags = table.search().select(["mag_r"]).limit(None).to_arrow().column("mag_r")
        passing = np.flatnonzero(mags.to_numpy(zero_copy_only=False) < 14.08)
        _, sel_idx = ann.top_k_exact(vectors[passing], queries, k)
        truth_sel = [[f"g{passing[j]:08d}" for j in row] for row in sel_idx]

        def lance_selective(i: int) -> list[str]:
            frame = ann.lance_search(table, queries[i], k, where=selective)[0]
            return frame["object_id"].to_list()

        def lance_selective_ivf_only(i: int) -> list[str]:
            b = (
                table.search(queries[i])
                .distance_type("cosine")
                .where(selective, prefilter=True)
                .nprobes(params.nprobes)
                .refine_factor(params.refine_factor)
                .limit(k)
                .select(["object_id", "_distance"])
            )
            return b.to_arrow().column("object_id").to_pylist()

        # interleaved, so drifts in load hit every variant alike
        lance_variants = interleaved(
            [
                lance_ours,
                lance_raw,
                lambda i: lance_raw(i, refine=False),
                lance_where,
                lance_selective,
                lance_selective_ivf_only,
            ],
            m,
        )
        (t, found), (t_raw, f_raw), (t_nr, f_nr), (t_where, _) = lance_variants[:4]
        (t_sel, f_sel), (t_sel_ivf, f_sel_ivf) = lance_variants[4:]
        r_lance = recall(found, truth, k)
        rows.append(
            (
                "LanceDB IVF-PQ, lance_search (sync)",
                f"{t_lance_build:.0f} s",
                pct(t, 50),
                pct(t, 99),
                r_lance,
            )
        )
        rows.append(
            (
                "LanceDB IVF-PQ, its sync builder",
                "",
                pct(t_raw, 50),
                pct(t_raw, 99),
                recall(f_raw, truth, k),
            )
        )
        rows.append(
            ("LanceDB IVF-PQ, no refine", "", pct(t_nr, 50), pct(t_nr, 99), recall(f_nr, truth, k))
        )
        rows.append(
            (
                "LanceDB lance_search + where prefilter (75% pass)",
                "",
                pct(t_where, 50),
                pct(t_where, 99),
                None,
            )
        )
        rows.append(
            (
                f"LanceDB lance_search + selective where (1% pass, {len(passing)} rows)",
                "",
                pct(t_sel, 50),
                pct(t_sel, 99),
                recall(f_sel, truth_sel, k),
            )
        )
        rows.append(
            (
                "  baseline: LanceDB IVF search alone, same filter",
                "",
                pct(t_sel_ivf, 50),
                pct(t_sel_ivf, 99),
                recall(f_sel_ivf, truth_sel, k),
            )
        )
        print(
            f"selective filter: lance_search p50 {pct(t_sel, 50):.1f} ms, recall "
            f"{recall(f_sel, truth_sel, k):.3f}; IVF alone p50 {pct(t_sel_ivf, 50):.1f} ms, "
            f"recall {recall(f_sel_ivf, truth_sel, k):.3f} (ratio of p50 "
            f"{pct(t_sel, 50) / max(pct(t_sel_ivf, 50), 1e-9):.2f})"
        )

        async def lance_async(uri: str, name: str, qs: np.ndarray, refine: bool) -> tuple:
            adb = await lancedb.connect_async(uri)
            atable = await adb.open_table(name)
            times, out = np.empty(qs.shape[0]), []
            for i in range(-3, qs.shape[0]):
                t0 = time.perf_counter()
                qb = (
                    atable.vector_search(qs[max(i, 0)])
                    .distance_type("cosine")
                    .nprobes(params.nprobes)
                    .limit(k)
                    .select(["object_id", "_distance"])
                )
                if refine:
                    qb = qb.refine_factor(params.refine_factor)
                got = (await qb.to_arrow()).column("object_id").to_pylist()
                if i >= 0:
                    times[i] = time.perf_counter() - t0
                    out.append(got)
            return times, out

        t, found = asyncio.run(
            lance_async(os.path.join(tmp, "lancedb"), "galaxy_index", queries, True)
        )
        rows.append(
            ("LanceDB IVF-PQ, async API", "", pct(t, 50), pct(t, 99), recall(found, truth, k))
        )

        # fixed per-call cost: a 100-row table
        tiny = db.create_table("tiny", arrow_table(vectors[:100], 0, args.seed))
        t_tiny, _ = latencies(lambda i: ann.lance_search(tiny, queries[i], k), m)
        t_tiny_raw, _ = latencies(
            lambda i: (
                tiny.search(queries[i])
                .distance_type("cosine")
                .limit(k)
                .select(["object_id", "_distance"])
                .to_arrow()
            ),
            m,
        )

        async def tiny_async() -> np.ndarray:
            adb = await lancedb.connect_async(os.path.join(tmp, "lancedb"))
            atable = await adb.open_table("tiny")
            times = np.empty(m)
            for i in range(m):
                t0 = time.perf_counter()
                await (
                    atable.vector_search(queries[i])
                    .distance_type("cosine")
                    .limit(k)
                    .select(["object_id", "_distance"])
                    .to_arrow()
                )
                times[i] = time.perf_counter() - t0
            return times

        t_tiny_async = asyncio.run(tiny_async())
        t_check, _ = latencies(lambda i: ann.latest_version(table), m)
        strong = lancedb.connect(
            os.path.join(tmp, "lancedb"), read_consistency_interval=timedelta(0)
        ).open_table("galaxy_index")
        t_strong, _ = latencies(lambda i: strong.version, m)
        res["lance_fixed_ms"] = {
            "lance_search": pct(t_tiny, 50),
            "sync_builder": pct(t_tiny_raw, 50),
            "async": pct(t_tiny_async, 50),
            "latest_version_check": pct(t_check, 50),
            "version_on_consistent_handle": pct(t_strong, 50),
        }
        print(
            f"LanceDB fixed per-call cost (100 rows): lance_search {pct(t_tiny, 50):.2f} ms, "
            f"sync builder {pct(t_tiny_raw, 50):.2f} ms, async {pct(t_tiny_async, 50):.2f} ms; "
            f"checkout_latest + version {pct(t_check, 50):.2f} ms; version of a handle with "
            f"read_consistency_interval 0 {pct(t_strong, 50):.2f} ms"
        )

        # ---- the serving index -----------------------------------------------------------------
        t_serve_build, serving = timed(lambda: ann.ServingIndex.from_table(table))
        print(
            f"ServingIndex: built in {t_serve_build:.1f} s ({serving.params}), "
            f"version {serving.version}"
        )

        def serve(i: int) -> list[str]:
            return serving.search(queries[i], k)[1][0]

        def serve_unchecked(i: int) -> list[str]:
            serving.max_staleness_s = 3600.0
            try:
                return serving.search(queries[i], k)[1][0]
            finally:
                serving.max_staleness_s = 0.0

        (t, found), (t_u, f_u) = interleaved([serve, serve_unchecked], m)
        r_serve = recall(found, truth, k)
        rows.append(
            (
                "ServingIndex (FAISS IVF-PQ + refine, version check each call)",
                f"{t_serve_build:.0f} s",
                pct(t, 50),
                pct(t, 99),
                r_serve,
            )
        )
        rows.append(
            (
                "ServingIndex, no version check",
                "",
                pct(t_u, 50),
                pct(t_u, 99),
                recall(f_u, truth, k),
            )
        )
        sweep = []
        for nprobe in sorted({max(1, params.nprobes // 2), params.nprobes, params.nprobes * 2}):
            for rf in (params.refine_factor // 2, params.refine_factor, params.refine_factor * 2):
                t, found = latencies(
                    lambda i, p=nprobe, r=rf: serving.search(
                        queries[i], k, nprobes=p, refine_factor=r
                    )[1][0],
                    m,
                )
                sweep.append(
                    {
                        "nprobes": nprobe,
                        "refine_factor": rf,
                        "p50_ms": pct(t, 50),
                        "recall": recall(found, truth, k),
                    }
                )
        res["serving_sweep"] = sweep

        # ---- FAISS baselines on the in-memory vectors ------------------------------------------
        def faiss_ivfpq():
            quant = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFPQ(
                quant,
                dim,
                params.num_partitions,
                params.num_sub_vectors,
                8,
                faiss.METRIC_INNER_PRODUCT,
            )
            rng = np.random.default_rng(0)
            n_train = min(n, max(params.num_partitions * ann.TRAIN_ROWS_PER_LIST, 256 * 39))
            ivf.train(vectors[np.sort(rng.choice(n, n_train, replace=False))])
            index = faiss.IndexRefineFlat(ivf)
            index.add(vectors)
            return index

        t_faiss_build, fidx = timed(faiss_ivfpq)
        fparams = faiss.IndexRefineSearchParameters(
            k_factor=float(params.refine_factor),
            base_index_params=faiss.SearchParametersIVF(nprobe=params.nprobes),
        )
        t, found_idx = latencies(
            lambda i: fidx.search(queries[i : i + 1], k, params=fparams)[1][0], m
        )
        found = [[f"g{j:08d}" for j in row] for row in found_idx]
        faiss_p50 = pct(t, 50)
        rows.append(
            (
                "FAISS IVF-PQ + refine (IndexRefineFlat)",
                f"{t_faiss_build:.0f} s",
                faiss_p50,
                pct(t, 99),
                recall(found, truth, k),
            )
        )
        b = min(args.batch, m)
        fidx.search(queries[:b], k, params=fparams)
        t_fb, _ = timed(lambda: fidx.search(queries[:b], k, params=fparams))
        faiss_batched = t_fb / b * 1e3
        fidx = None  # free its memory before HNSW

        if not args.no_hnsw:

            def faiss_hnsw():
                index = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.add(vectors)
                return index

            t_hnsw_build, hidx = timed(faiss_hnsw)
            for ef in (32, 64, 128, 256, 512):
                hp = faiss.SearchParametersHNSW(efSearch=ef)
                t, found_idx = latencies(
                    lambda i, hp=hp: hidx.search(queries[i : i + 1], k, params=hp)[1][0], m
                )
                found = [[f"g{j:08d}" for j in row] for row in found_idx]
                rows.append(
                    (
                        f"FAISS HNSW M{args.hnsw_m} efSearch {ef}",
                        f"{t_hnsw_build:.0f} s" if ef == 32 else "",
                        pct(t, 50),
                        pct(t, 99),
                        recall(found, truth, k),
                    )
                )
            hidx = None

        m_bf = min(m, 50)
        t, found_idx = latencies(
            lambda i: np.argpartition(-(vectors @ queries[i]), k)[:k], m_bf, warmup=1
        )
        numpy_p50 = pct(t, 50)
        rows.append(("NumPy brute force", "-", numpy_p50, pct(t, 99), 1.0))

        # ---- batched queries -------------------------------------------------------------------
        b = min(args.batch, m)
        batched = {}
        for name, fn in (
            ("lance_search", lambda: ann.lance_search(table, queries[:b], k)),
            ("ServingIndex", lambda: serving.search(queries[:b], k)),
            ("NumPy", lambda: ann.top_k_exact(vectors, queries[:b], k)),
        ):
            fn()
            tb, _ = timed(fn)
            batched[name] = tb / b * 1e3
        batched["FAISS IVF-PQ + refine"] = faiss_batched
        res["batched_ms_per_query"] = batched
        print(
            "batched, ms per query at batch "
            + str(b)
            + ": "
            + ", ".join(f"{kk} {v:.3f}" for kk, v in batched.items())
        )

        # ---- crossover: flat vs IVF-PQ at small sizes ------------------------------------------
        cross = []
        for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
            if size > n:
                continue
            sub = vectors[:size]
            qs = queries_near(sub, min(m, 50), args.seed + 2)
            _, gt = ann.top_k_exact(sub, qs, k)
            sub_truth = [[f"g{i:08d}" for i in row] for row in gt]
            st = db.create_table(f"size_{size}", arrow_table(sub, 0, args.seed))
            t_flat, _ = latencies(
                lambda i, st=st, qs=qs: ann.lance_search(st, qs[i], k), qs.shape[0]
            )
            p = ann.index_params(size, dim, brute_force_max_rows=0)
            if p is None:
                print(f"  size {size}: too small for an IVF index (index_params)")
                continue
            if args.lance_iterations:
                p = replace(p, max_iterations=args.lance_iterations)
            try:
                b_s = ann.ensure_vector_index(st, params=p)["seconds"]
                t_ivf, f = latencies(
                    lambda i, st=st, qs=qs, p=p: ann.lance_search(
                        st, qs[i], k, nprobes=p.nprobes, refine_factor=p.refine_factor
                    )[0]["object_id"].to_list(),
                    qs.shape[0],
                )
                lance_ivf, lance_rec = pct(t_ivf, 50), recall(f, sub_truth, k)
            except ann.VectorIndexError as exc:
                print(f"  size {size}: no LanceDB index ({exc})")
                b_s, lance_ivf, lance_rec = float("nan"), float("nan"), float("nan")
            exact_si = ann.ServingIndex.from_table(st, exact=True)
            t_sflat, _ = latencies(lambda i, s=exact_si, qs=qs: s.search(qs[i], k), qs.shape[0])
            try:
                ivf_si = ann.ServingIndex.from_table(st, p)
                t_sivf, f = latencies(
                    lambda i, s=ivf_si, qs=qs: s.search(qs[i], k)[1][0], qs.shape[0]
                )
                s_ivf, s_rec = pct(t_sivf, 50), recall(f, sub_truth, k)
            except ann.VectorIndexError:
                s_ivf, s_rec = float("nan"), float("nan")
            cross.append(
                {
                    "rows": size,
                    "partitions": p.num_partitions,
                    "lance_build_s": b_s,
                    "lance_flat_ms": pct(t_flat, 50),
                    "lance_ivf_ms": lance_ivf,
                    "lance_ivf_recall": lance_rec,
                    "serving_flat_ms": pct(t_sflat, 50),
                    "serving_ivf_ms": s_ivf,
                    "serving_ivf_recall": s_rec,
                }
            )
            db.drop_table(f"size_{size}")
        res["crossover"] = cross

        # ---- 1% new rows: deferred / folded vs full build; serving refresh vs rebuild -----------
        n_new = max(1, n // 100)
        new_vecs = queries_near(vectors, n_new, 7, 0.3)  # new galaxies like the old ones
        t_add, _ = timed(lambda: table.add(arrow_table(new_vecs, n, args.seed + 3)))
        assert not serving.is_current(table)
        deferred = ann.ensure_vector_index(table)
        t_refresh, refreshed = timed(lambda: serving.refresh(table))
        all_vecs = np.concatenate([vectors, new_vecs])
        q2 = queries_near(all_vecs[-n_new:], min(m, 100), 11)
        _, gt2 = ann.top_k_exact(all_vecs, q2, k)
        truth2 = [[f"g{i:08d}" for i in row] for row in gt2]

        def lance_q2(i: int) -> list[str]:
            return ann.lance_search(table, q2[i], k)[0]["object_id"].to_list()

        _, f_serve = latencies(lambda i: serving.search(q2[i], k)[1][0], q2.shape[0])
        t_def, f_def = latencies(lance_q2, q2.shape[0])
        folded = ann.ensure_vector_index(table, fold=True)
        t_fold, f_fold = latencies(lance_q2, q2.shape[0])
        res["incremental"] = {
            "rows_added": n_new,
            "table_add_s": t_add,
            "lance_default": deferred["action"],
            "lance_default_s": deferred["seconds"],
            "lance_deferred_p50": pct(t_def, 50),
            "lance_deferred_recall": recall(f_def, truth2, k),
            "lance_fold": folded["action"],
            "lance_fold_s": folded["seconds"],
            "lance_fold_vs_build": folded["seconds"] / t_lance_build,
            "lance_unindexed_after": folded["rows_unindexed"],
            "lance_folded_p50": pct(t_fold, 50),
            "lance_folded_recall": recall(f_fold, truth2, k),
            "serving_refresh": refreshed["action"],
            "serving_refresh_s": t_refresh,
            "serving_refresh_vs_build": t_refresh / t_serve_build,
            "recall_new_rows_serving": recall(f_serve, truth2, k),
        }
        # a 0.1% upsert of existing rows (new vectors for old object_ids)
        n_up = max(1, n // 1000)
        rng = np.random.default_rng(5)
        up_rows = np.sort(rng.choice(n, n_up, replace=False))
        up_vecs = queries_near(vectors, n_up, 13, 0.5)
        up_tab = arrow_table(up_vecs, 0, args.seed).set_column(
            0, "object_id", __import__("pyarrow").array([f"g{i:08d}" for i in up_rows])
        )
        t_up, _ = timed(
            lambda: (
                table.merge_insert("object_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(up_tab)
            )
        )
        t_refresh2, refreshed2 = timed(lambda: serving.refresh(table))
        res["upsert"] = {
            "rows": n_up,
            "merge_insert_s": t_up,
            "serving_refresh": refreshed2["action"],
            "serving_refresh_s": t_refresh2,
            "added": refreshed2["added"],
            "removed": refreshed2["removed"],
        }
        t_maint, maint = timed(lambda: ann.maintain(table, older_than=timedelta(0)))
        t_refresh3, refreshed3 = timed(lambda: serving.refresh(table))
        res["maintain"] = {
            "seconds": t_maint,
            "versions_pruned": maint["versions_pruned"],
            "fragments": (maint["fragments_before"], maint["fragments_after"]),
            "serving_refresh_after": refreshed3["action"],
            "serving_refresh_after_s": t_refresh3,
            "moved": refreshed3.get("moved", 0),
        }

        # ---- the whole text query path ---------------------------------------------------------
        if not args.no_text:
            from galaxy_assets.alignment.model import build_from_config, encode_queries
            from galaxy_assets.embedding.text import SentenceTransformerEmbedder

            t_load, embedder = timed(SentenceTransformerEmbedder)
            aligned = build_from_config(
                {"image_dim": 256, "text_dim": embedder.dim, "output_dim": dim}
            )
            texts = QUERY_TEXTS
            mt = len(texts)
            t_emb, _ = latencies(lambda i: embedder.embed([texts[i]]), mt)
            vecs = embedder.embed(texts)
            t_head, _ = latencies(lambda i: aligned.embed_texts(vecs[i : i + 1]), mt)
            t_path, _ = latencies(
                lambda i: serving.search(encode_queries([texts[i]], embedder, aligned), k), mt
            )
            t_path_l, _ = latencies(
                lambda i: ann.lance_search(table, encode_queries([texts[i]], embedder, aligned), k),
                mt,
            )
            res["text_path_ms"] = {
                "model_load_s": t_load,
                "embed_p50": pct(t_emb, 50),
                "head_p50": pct(t_head, 50),
                "serving_p50": pct(t_path, 50),
                "serving_p99": pct(t_path, 99),
                "lance_p50": pct(t_path_l, 50),
                "lance_p99": pct(t_path_l, 99),
            }
            rows.append(
                (
                    "text query path: MiniLM + head + ServingIndex",
                    "",
                    pct(t_path, 50),
                    pct(t_path, 99),
                    None,
                )
            )
            rows.append(
                (
                    "text query path: MiniLM + head + lance_search",
                    "",
                    pct(t_path_l, 50),
                    pct(t_path_l, 99),
                    None,
                )
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    res["wall_s"] = time.perf_counter() - wall0
    res["load_after"] = load_info()
    res["rows"] = rows

    # ---- report ------------------------------------------------------------------------------
    print()
    print(
        f"{n:,} x {dim}-d clustered unit vectors ({args.clusters} clusters), {m} queries, "
        f"recall@{k} against exact search; p50/p99 of single queries"
    )
    print()
    print("| path | build | p50 ms | p99 ms | recall@10 | p50 / FAISS IVF-PQ | p50 / NumPy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, build, p50, p99, rec in rows:
        rec_s = "" if rec is None else f"{rec:.3f}"
        print(
            f"| {name} | {build} | {p50:.2f} | {p99:.2f} | {rec_s} | "
            f"{p50 / faiss_p50:.2f} | {p50 / numpy_p50:.3f} |"
        )
    print()
    print("ServingIndex nprobes / refine sweep:")
    print("| nprobes | refine | p50 ms | recall@10 |")
    print("|---:|---:|---:|---:|")
    for s in res["serving_sweep"]:
        print(f"| {s['nprobes']} | {s['refine_factor']} | {s['p50_ms']:.2f} | {s['recall']:.3f} |")
    print()
    print("Crossover (p50 ms of one query; IVF-PQ with index_params at that size):")
    print(
        "| rows | lists | LanceDB flat | LanceDB IVF-PQ (recall) | build s | FAISS flat | "
        "FAISS IVF-PQ (recall) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for c in res["crossover"]:
        print(
            f"| {c['rows']:,} | {c['partitions']} | {c['lance_flat_ms']:.2f} | "
            f"{c['lance_ivf_ms']:.2f} ({c['lance_ivf_recall']:.3f}) | {c['lance_build_s']:.1f} | "
            f"{c['serving_flat_ms']:.3f} | {c['serving_ivf_ms']:.3f} "
            f"({c['serving_ivf_recall']:.3f}) |"
        )
    inc = res["incremental"]
    print()
    print(
        f"1% new rows ({inc['rows_added']:,}): table.add {inc['table_add_s']:.1f} s. LanceDB: "
        f"ensure_vector_index {inc['lance_default']} in {inc['lance_default_s']:.2f} s (queries "
        f"near the new rows p50 {inc['lance_deferred_p50']:.2f} ms, recall@{k} "
        f"{inc['lance_deferred_recall']:.3f}); fold=True {inc['lance_fold']} in "
        f"{inc['lance_fold_s']:.1f} s = {inc['lance_fold_vs_build']:.1%} of the full build "
        f"({inc['lance_unindexed_after']} rows left unindexed; p50 "
        f"{inc['lance_folded_p50']:.2f} ms, recall {inc['lance_folded_recall']:.3f}). "
        f"ServingIndex {inc['serving_refresh']} in {inc['serving_refresh_s']:.2f} s = "
        f"{inc['serving_refresh_vs_build']:.1%} of its build (recall@{k} near the new rows "
        f"{inc['recall_new_rows_serving']:.3f})"
    )
    up = res["upsert"]
    print(
        f"0.1% upsert ({up['rows']:,} rows, merge_insert {up['merge_insert_s']:.1f} s): "
        f"ServingIndex {up['serving_refresh']} in {up['serving_refresh_s']:.2f} s "
        f"(+{up['added']} / -{up['removed']})"
    )
    mt_ = res["maintain"]
    print(
        f"maintain (compact + prune to the latest version): {mt_['seconds']:.1f} s, fragments "
        f"{mt_['fragments'][0]} -> {mt_['fragments'][1]}, {mt_['versions_pruned']} versions "
        f"pruned; ServingIndex refresh after it: {mt_['serving_refresh_after']} in "
        f"{mt_['serving_refresh_after_s']:.2f} s ({mt_['moved']} rows moved unchanged)"
    )
    if "text_path_ms" in res:
        tp = res["text_path_ms"]
        print(
            f"text path: MiniLM load {tp['model_load_s']:.1f} s; per query p50 embed "
            f"{tp['embed_p50']:.1f} ms + head {tp['head_p50']:.2f} ms; whole path p50 "
            f"{tp['serving_p50']:.1f} ms / p99 {tp['serving_p99']:.1f} ms with the serving "
            f"index, {tp['lance_p50']:.1f} / {tp['lance_p99']:.1f} ms with lance_search"
        )
    print(f"\nwall time {res['wall_s']:.0f} s; after: {res['load_after']}")
    if args.json:
        print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
