"""Benchmark: the HTTP API (``galaxy-assets serve``) against the bare query API, same run.

On a synthetic ``galaxy_index`` of ``--n`` galaxies (random unit vectors of ``--dim``
dimensions, captions, two shards) with the MiniLM text embedder from disk (or, with
``--fake-embedder``, a hashed bag of words) and a random-init aligner text head:

* **in-process, 1 thread** — ``GalaxySearch.search_text(q, k)`` called in a loop;
* **in-process, ``--clients`` threads** — the same calls from a thread pool;
* **HTTP** — ``GET /api/search?q=…&k=…`` from ``--clients`` concurrent keep-alive clients
  (``requests`` sessions in threads) against uvicorn serving :func:`create_app` on a free
  loopback port in a separate process (so client and server do not share one GIL).

Each path runs ``--requests`` queries (a fixed list of texts, each request's text made unique
with its number, so the server's per-query page cache never answers) after a warm-up,
and the table reports requests/s, p50/p99 latency and the ratios against the in-process runs.
Data lives in a temporary folder, deleted at the end.

Run: ``.venv/bin/python benchmarks/bench_web.py [--n 2000] [--requests 400] [--clients 8]
[--k 50] [--fake-embedder] [--json]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import galaxy_assets  # noqa: E402,F401  (torchvision guard before transformers loads)

ALIGNER_VERSION = "search-aligner/v1"
WORDS = ("spiral", "arms", "bar", "merger", "tidal", "tails", "lens", "arc", "ring", "smooth",
         "elliptical", "edge-on", "dust", "lane", "clumpy", "blue", "red", "compact", "faint")
QUERY_TEXTS = [
    f"{a} {b}"
    for a in ("a galaxy with", "bright", "faint", "a red galaxy with", "a blue galaxy with")
    for b in ("visible spiral arms", "a gravitational lens arc", "tidal tails from a merger",
              "a prominent central bar", "an edge-on dust lane", "a faint outer ring")
]


class HashEmbedder:
    """A deterministic hashed bag of words (for machines without the MiniLM package)."""

    embedder_id = "bench:hash@1"
    dim = 384
    max_seq_length = None

    def embed(self, texts):
        import hashlib

        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            out[i, 0] = 0.3
            for word in text.lower().split():
                h = hashlib.blake2b(word.encode(), digest_size=8).digest()
                out[i, int.from_bytes(h[:4], "little") % self.dim] += 1.0 if h[4] & 1 else -1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_embedder(fake: bool):
    if fake:
        return HashEmbedder()
    from galaxy_assets.embedding.text import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


def make_aligner(text_dim: int, dim: int):
    import torch

    from galaxy_assets.alignment.model import build_from_config

    torch.manual_seed(0)
    model = build_from_config({"image_dim": 256, "text_dim": text_dim, "output_dim": dim}).eval()
    model.aligner_version = ALIGNER_VERSION
    return model


def build_index(uri: Path, n: int, dim: int, seed: int) -> None:
    import polars as pl

    from galaxy_assets.search.table import build_shard_rows, upsert_shard

    rng = np.random.default_rng(seed)
    half = n // 2
    for s, (start, stop) in enumerate(((0, half), (half, n))):
        m = stop - start
        ids = [f"bench{i:07d}" for i in range(start, stop)]
        shard = f"shard-{s}"
        manifest = pl.DataFrame({
            "object_id": ids,
            "ra": rng.uniform(0, 360, m),
            "dec": rng.uniform(-30, 30, m),
            "healpix": np.full(m, 1000 + s, np.int64),
            "flux_g": rng.lognormal(0, 1, m).astype(np.float32),
            "flux_r": rng.lognormal(0.5, 1, m).astype(np.float32),
            "flux_i": rng.lognormal(0.7, 1, m).astype(np.float32),
            "flux_z": rng.lognormal(0.9, 1, m).astype(np.float32),
            "shard": [shard] * m,
            "shard_uri": [f"/nonexistent/{shard}.hdf5"] * m,
            "row": np.arange(m, dtype=np.int64),
        })
        vec = rng.standard_normal((m, dim)).astype(np.float32)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        vectors = pl.DataFrame([
            pl.Series("object_id", ids),
            pl.Series("aligner_version", [ALIGNER_VERSION] * m),
            pl.Series("vector", vec, dtype=pl.Array(pl.Float32, dim)),
        ])
        captions = pl.DataFrame({
            "object_id": ids,
            "caption": [" ".join(rng.choice(WORDS, 12)) for _ in range(m)],
            "backend": ["morphology"] * m,
            "model": ["morphology-describer-v1"] * m,
        })
        upsert_shard(uri, shard, build_shard_rows(shard, manifest, vectors, None, captions))


def open_engine(uri: Path, fake: bool, dim: int):
    from galaxy_assets.search.query import GalaxySearch

    embedder = make_embedder(fake)
    return GalaxySearch(uri, text_embedder=embedder, aligner=make_aligner(embedder.dim, dim))


def _serve(uri: str, fake: bool, dim: int, threads: int, ready: Any) -> None:
    """The server process: the same index and models behind uvicorn on 127.0.0.1:0."""
    import torch
    import uvicorn

    from galaxy_assets.web.app import create_app

    torch.set_num_threads(threads)
    app = create_app(open_engine(Path(uri), fake, dim), refresh_seconds=None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

    def announce() -> None:
        while not server.started:
            time.sleep(0.02)
        ready.put(sock.getsockname()[1])

    threading.Thread(target=announce, daemon=True).start()
    server.run(sockets=[sock])


def pct(times: np.ndarray, p: float) -> float:
    return float(np.percentile(times, p)) if len(times) else float("nan")


def run_load(call, m: int, clients: int) -> tuple[float, np.ndarray]:
    """``m`` calls of ``call(i)`` from ``clients`` threads: (wall seconds, latencies ms)."""
    lat = np.zeros(m)
    counter = iter(range(m))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            call(i)
            lat[i] = (time.perf_counter() - t0) * 1e3

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    return time.perf_counter() - t0, lat


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="galaxies in the index")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--fake-embedder", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import requests
    import torch

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-web-"))
    proc = None
    res: dict[str, Any] = {"machine": f"{cpu_model()}, {os.cpu_count()} cores",
                           "args": vars(args)}
    try:
        uri = tmp / "lancedb"
        build_index(uri, args.n, args.dim, args.seed)
        engine = open_engine(uri, args.fake_embedder, args.dim)
        m = args.requests

        def text(i: int) -> str:
            # every request its own text: the server keeps each query's ranking for its later
            # pages, and a repeated text would measure that cache instead of a search
            return f"{QUERY_TEXTS[i % len(QUERY_TEXTS)]} {i}"

        def direct(i: int) -> None:
            out = engine.search_text(text(i), args.k)
            assert out.frame.height == args.k

        for i in range(10):
            direct(10**6 + i)  # texts the timed runs do not use
        rows = []
        wall, lat = run_load(direct, m, 1)
        rows.append(("in-process search_text, 1 thread", 1, m / wall, pct(lat, 50), pct(lat, 99)))
        wall, lat = run_load(direct, m, args.clients)
        rows.append((f"in-process search_text, {args.clients} threads", args.clients, m / wall,
                     pct(lat, 50), pct(lat, 99)))

        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        proc = ctx.Process(target=_serve, args=(str(uri), args.fake_embedder, args.dim,
                                                args.threads, ready), daemon=True)
        proc.start()
        port = ready.get(timeout=300)
        ready.close()
        ready.join_thread()
        base = f"http://127.0.0.1:{port}/api/search"
        local = threading.local()

        def http(i: int) -> None:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = requests.Session()
            r = session.get(base, params={"q": text(i), "k": args.k}, timeout=60)
            if r.status_code != 200 or r.json()["n"] != args.k:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

        for i in range(10):
            http(10**6 + i)
        wall, lat = run_load(http, m, args.clients)
        rows.append((f"HTTP GET /api/search, {args.clients} clients", args.clients, m / wall,
                     pct(lat, 50), pct(lat, 99)))
    finally:
        if proc is not None:
            proc.terminate()
            proc.join(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    res["rows"] = [dict(zip(("path", "clients", "req_s", "p50_ms", "p99_ms"), r, strict=True))
                   for r in rows]
    if args.json:
        print(json.dumps(res, indent=2))
        return
    one, many, web = rows
    print(f"\nText search, k={args.k}, {args.n} galaxies (dim {args.dim}), {m} requests per "
          f"path; {'hash' if args.fake_embedder else 'MiniLM'} embedder; {res['machine']}\n")
    print("| path | clients | req/s | p50 ms | p99 ms | req/s vs in-process 1 thread | "
          f"req/s vs in-process {args.clients} threads | p50 vs in-process 1 thread |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, clients, rps, p50, p99 in rows:
        print(f"| {name} | {clients} | {rps:.1f} | {p50:.1f} | {p99:.1f} | "
              f"{rps / one[2]:.2f} | {rps / many[2]:.2f} | {p50 / one[3]:.2f} |")
    print(f"\nHTTP overhead per request at {args.clients} clients: "
          f"{1e3 / web[2] - 1e3 / many[2]:+.2f} ms of throughput time "
          f"({web[2] / many[2]:.2f}× the in-process rate)")


if __name__ == "__main__":
    main()
