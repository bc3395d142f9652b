"""Benchmark: the highest nDCG@10 the mock survey's labels allow (the label-noise ceiling).

The evaluation grades a vote-fraction target by each galaxy's *observed* vote fraction: the
simulated volunteers' counts (:mod:`galaxy_assets.survey.mock_votes`: a noise-free answer
probability from the truth's visibility scores, then volunteer error, a per-galaxy Dirichlet and
a multinomial draw of 30-50 volunteers). The ideal ranking puts the galaxies whose draws came
out highest first; no method that sees pixels can know those draws. The best any method can
do is rank by the noise-free probability itself, which this script does, with the truth read
here only:

* **oracle**: rank every labelled galaxy by its expected vote fraction for the target's answers
  (:func:`~galaxy_assets.survey.mock_votes.expected_vote_fraction` on the truth row and its
  stored visibility scores; ties by object_id; ``TargetLabels.label_ceiling``, which the
  evaluation report shows too): the ceiling for any search method;
* **encoder** (when the home has ``morphology_predictions``): rank by the morphology encoder's
  predicted vote fractions, a classifier trained on these very votes;
* **random**: the expected nDCG@10 of a random order (mean of 200 shuffles), the floor.

Printed per target, with the quality bar of ``evaluation/targets.yaml`` where one is set and
the ratio bar / oracle. Binary targets (lenses, rings) have no label noise: their ceiling is 1.

Run: ``.venv/bin/python benchmarks/label_ceiling.py [--home .galaxy_home] [--json]`` after
``galaxy-assets demo`` (or any run that materialized ``raw_cutouts`` on a mock survey).

``--seeds 0 1 2 … [--n 3000]`` instead simulates one mock survey per seed (the demo's
generator and size, in a temporary folder) and prints the oracle's nDCG@10 on each, their mean
and spread, and in how many surveys the oracle itself meets each bar: a survey's ceiling is one
draw of the simulated volunteers, and a bar close to the ceiling is met or missed by the draw.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path

import numpy as np
import polars as pl


def _ranked(ids: np.ndarray, score: np.ndarray) -> list[str]:
    order = np.lexsort((ids, -score))
    return ids[order].tolist()


def across_surveys(seeds: list[int], n: int, as_json: bool) -> None:
    """The oracle's nDCG@10 on one freshly simulated survey per seed."""
    import tempfile

    from galaxy_assets.evaluation.labels import labels_from_truth, load_targets
    from galaxy_assets.survey.mock import simulate_survey
    from galaxy_assets.survey.truth import load_truth

    targets = {k: t for k, t in load_targets().items() if t.kind == "vote_fraction"}
    per_seed: dict[int, dict[str, float]] = {}
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="ceiling_") as tmp:
            result = simulate_survey(tmp, n, seed=seed, workers=os.cpu_count() or 1)
            truth = load_truth([str(p) for p in result.shards])
        labels = labels_from_truth(truth, targets)
        per_seed[seed] = {name: labels.targets[name].label_ceiling(10) for name in targets}
        if not as_json:
            print(
                f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in per_seed[seed].items()),
                flush=True,
            )
    rows = []
    for name, t in targets.items():
        values = np.array([per_seed[s][name] for s in seeds])
        row = {
            "target": name,
            "n_surveys": len(seeds),
            "oracle_mean": float(values.mean()),
            "oracle_std": float(values.std(ddof=1)) if len(seeds) > 1 else None,
            "oracle_min": float(values.min()),
            "oracle_max": float(values.max()),
            "bar": t.min_ndcg_at_10,
        }
        if t.min_ndcg_at_10 is not None:
            row["surveys_oracle_meets_bar"] = int((values >= t.min_ndcg_at_10).sum())
        rows.append(row)
    if as_json:
        print(json.dumps({"n": n, "seeds": seeds, "per_seed": per_seed, "targets": rows}, indent=2))
        return
    print(f"oracle nDCG@10 over {len(seeds)} simulated surveys of {n} galaxies")
    print(f"{'target':15s} {'mean':>6s} {'std':>6s} {'min':>6s} {'max':>6s} {'bar':>5s} met")
    for r in rows:
        bar = f"{r['bar']:.2f}" if r["bar"] is not None else "-"
        met = f"{r['surveys_oracle_meets_bar']}/{r['n_surveys']}" if r["bar"] is not None else "-"
        std = f"{r['oracle_std']:.3f}" if r["oracle_std"] is not None else "-"
        print(
            f"{r['target']:15s} {r['oracle_mean']:6.3f} {std:>6s} {r['oracle_min']:6.3f} "
            f"{r['oracle_max']:6.3f} {bar:>5s} {met}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("GALAXY_ASSETS_HOME", ".galaxy_home"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="simulate one survey per seed instead of a home"
    )
    parser.add_argument("--n", type=int, default=3000, help="galaxies per simulated survey")
    args = parser.parse_args()
    if args.seeds:
        across_surveys(args.seeds, args.n, args.json)
        return

    from galaxy_assets.evaluation.labels import labels_from_truth, load_targets
    from galaxy_assets.evaluation.metrics import ndcg_at_k
    from galaxy_assets.survey.truth import load_truth

    home = Path(args.home)
    manifests = sorted(glob.glob(str(home / "parquet" / "raw_cutouts" / "*.parquet")))
    if not manifests:
        raise SystemExit(f"no raw_cutouts manifests under {home}/parquet: run the demo first")
    manifest = pl.read_parquet(manifests)
    truth = load_truth(manifest["shard_uri"].unique().to_list())
    if truth is None:
        raise SystemExit("these shards have no truth tables: the ceiling needs a mock survey")
    targets = load_targets()
    labels = labels_from_truth(truth, targets, manifest=manifest)
    pred_files = sorted(glob.glob(str(home / "parquet" / "morphology_predictions" / "*.parquet")))
    pred = pl.read_parquet(pred_files) if pred_files else None

    rng = np.random.default_rng(0)
    rows = []
    for name, t in targets.items():
        tl = labels.targets[name]
        rel = tl.as_mapping()
        ids = tl.object_ids
        row: dict = {
            "target": name,
            "kind": t.kind,
            "n_candidates": int(ids.size),
            "bar": t.min_ndcg_at_10,
        }
        row["random"] = float(
            np.mean([ndcg_at_k(rng.permutation(ids).tolist(), rel, 10) for _ in range(200)])
        )
        row["oracle"] = tl.label_ceiling(10)  # the expected vote fractions' own ranking
        if t.kind == "vote_fraction" and pred is not None:
            # the encoder's predictions: vf_<question>_<answer>, dashes as underscores
            cols = [f"vf_{t.question}_{a}".replace("-", "_") for a in t.answers]
            if all(c in pred.columns for c in cols):
                pr = pred.filter(pl.col("object_id").is_in(pl.Series(ids.tolist()).implode()))
                score = pr.select(pl.sum_horizontal(cols)).to_series().to_numpy()
                row["encoder"] = ndcg_at_k(
                    _ranked(pr["object_id"].to_numpy().astype(str), score), rel, 10
                )
        if row["bar"] is not None:
            row["bar_over_oracle"] = row["bar"] / row["oracle"]
        rows.append(row)

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"label-noise ceiling of nDCG@10 on {manifest.height} galaxies ({home})")
    print(
        f"{'target':15s} {'n':>5s} {'random':>7s} {'encoder':>8s} {'oracle':>7s} "
        f"{'bar':>5s} {'bar/oracle':>10s}"
    )
    for r in rows:
        enc = f"{r['encoder']:.3f}" if "encoder" in r else "-"
        bar = f"{r['bar']:.2f}" if r["bar"] is not None else "-"
        ratio = f"{r['bar_over_oracle']:.3f}" if "bar_over_oracle" in r else "-"
        print(
            f"{r['target']:15s} {r['n_candidates']:5d} {r['random']:7.3f} {enc:>8s} "
            f"{r['oracle']:7.3f} {bar:>5s} {ratio:>10s}"
        )


if __name__ == "__main__":
    main()
