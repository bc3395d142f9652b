"""Benchmark: caption embeddings per second with MiniLM on the CPU.

Compares, in the same process, ``SentenceTransformerEmbedder.embed`` (the packaged
all-MiniLM-L6-v2, with its truncation count and unit-norm check) against the plain
``SentenceTransformer.encode`` call on a second instance of the same model folder, on
~2,000 caption-like sentences (seeded templates, 25–90 words, a few longer than the
256-token limit). Repetitions of the two sides are interleaved, so drifts in CPU clock or
load hit both alike; each side is warmed up once first.

It prints texts per second (median and best over the repetitions) for both sides and the
ratio ours / plain (target ≥ 0.9).

Run: ``.venv/bin/python benchmarks/bench_text_embed.py [--n 2000] [--reps 5] [--batch 64]
[--threads N]``
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import time

import numpy as np

import galaxy_assets  # noqa: F401  (installs the torchvision guard before transformers loads)

SHAPES = ["smooth elliptical", "face-on spiral", "barred spiral", "edge-on disc",
          "irregular", "lenticular", "compact", "disturbed", "ring"]
COLOURS = ["red", "blue", "yellowish", "bluish-white", "orange", "pale"]
FEATURES = [
    "two loosely wound spiral arms", "tightly wound arms traced by blue knots",
    "a prominent central bar", "a thin dark dust lane along the major axis",
    "clumpy star-forming regions", "a faint tidal tail to the north-east",
    "shells around the core", "a close companion to the south",
    "a bright foreground star at the edge of the frame",
    "a thin blue arc curving around the centre, suggestive of strong lensing",
    "a faint outer ring", "a bright concentrated bulge", "an extended low surface brightness halo",
]
INTERPRETATIONS = [
    "This is likely a quiescent early-type galaxy.",
    "It is a star-forming late-type disc galaxy.",
    "The system appears to be an ongoing merger.",
    "This may be a galaxy-scale strong gravitational lens.",
    "It is probably a dusty spiral seen from the side.",
]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        feats = rng.sample(FEATURES, rng.randint(1, 4))
        text = (
            f"The central object is a {rng.choice(COLOURS)} {rng.choice(SHAPES)} galaxy "
            f"with {', '.join(feats[:-1]) + ' and ' if len(feats) > 1 else ''}{feats[-1]}. "
            f"{rng.choice(INTERPRETATIONS)}"
        )
        if i % 97 == 0:  # a few over-long replies, as a chatty VLM writes
            text = " ".join([text] * 8)
        out.append(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import torch
    from sentence_transformers import SentenceTransformer

    from galaxy_assets.embedding.text import SentenceTransformerEmbedder, default_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = captions(args.n)
    ours = SentenceTransformerEmbedder(device="cpu", batch_size=args.batch)
    plain = SentenceTransformer(str(default_model_path()), device="cpu")

    def run_ours() -> None:
        ours.embed(texts)

    def run_plain() -> None:
        plain.encode(texts, batch_size=args.batch)

    for fn in (run_ours, run_plain):  # warm-up
        fn()
    rates: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(args.reps):
        for name, fn in (("ours", run_ours), ("plain", run_plain)):
            t0 = time.perf_counter()
            fn()
            rates[name].append(len(texts) / (time.perf_counter() - t0))

    # The extra work of ours, timed alone in CPU seconds (insensitive to other processes).
    from galaxy_assets.embedding.text import _unit_rows

    vectors = plain.encode(texts[:1], batch_size=1)
    t0 = time.process_time()
    for _ in range(3):
        ours.count_truncated(texts)
        _unit_rows(np.repeat(vectors, len(texts), axis=0), "bench")
    extra_cpu = (time.process_time() - t0) / 3

    words = sum(len(t.split()) for t in texts) / len(texts)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"{len(texts)} captions, mean {words:.0f} words, {ours.last_truncated} over "
          f"{ours.max_seq_length} tokens; batch {args.batch}; {args.reps} interleaved reps")
    for name in ("plain", "ours"):
        r = rates[name]
        print(f"  {name:6s} median {statistics.median(r):7.1f} texts/s   best {max(r):7.1f}")
    med = statistics.median(rates["ours"]) / statistics.median(rates["plain"])
    paired = statistics.median(o / p for o, p in zip(rates["ours"], rates["plain"], strict=True))
    print(f"ratio ours/plain: {med:.3f} (medians), {paired:.3f} (median of paired reps); "
          "target >= 0.9")
    plain_cpu = len(texts) / statistics.median(rates["plain"]) * torch.get_num_threads()
    print(f"extra work of ours (truncation count + unit-norm check): {extra_cpu * 1e3:.1f} ms "
          f"CPU per {len(texts)} texts, about {extra_cpu / plain_cpu:.2%} of a plain encode")


if __name__ == "__main__":
    main()
