"""Fit the describer's feature scores (``galaxy_assets/captioning/feature_scores.json``).

The describer (:mod:`galaxy_assets.captioning.describer`) measures ~60 quantities on each
cutout. Revision 2 decided each feature from one or two of them with hand-set thresholds; a
feature's visibility, though, shows in several at once (arms: the winding mode's S/N, and the
smoothness, asymmetry, Gini, the ring bump, the colour gradient...). Revision 3 scores each
feature with a linear model over all of them, fitted here on simulated *development* surveys
exactly as revisions 1 and 2 set their thresholds (seeds 7 and 11; the check survey 2026 and
the demo's seed 0 are never fitted on):

* features: every numeric field of :class:`~galaxy_assets.captioning.measure.Measurements`,
  NaN replaced by the development median plus a missing indicator, robust-standardised (median,
  IQR / 1.35) and squashed by ``arcsinh`` so one extreme measurement cannot dominate;
* targets: the truth's visibility score of each feature (what a careful observer could see on
  these pixels; :mod:`galaxy_assets.survey.mock_population`), 0 where the galaxy lacks it;
  lenses and edge-on discs from their truth flags;
* model: for lenses and edge-on discs, ridge regression (closed form, ``--alpha``), stored as
  centre, scale and weights in a JSON file (about 370 kB with the networks below) that the
  describer evaluates with NumPy alone.

Rare features whose evidence is not additive (mergers: a second nucleus *and* asymmetric
light; bars; rings) get a one-hidden-layer network of 32 units instead (scikit-learn's
``MLPClassifier`` or ``MLPRegressor``, ``random_state=0``; its weights go in the same file).
Mergers get a classifier, which outputs the probability that the feature is there. Arms, bars
and rings (version 4) get a regressor of the visibility: a classifier's probabilities pile up
near 0 and 1 and say little about how clearly a feature shows, and the re-ranker sorts by the
score. benchmarks/RESULTS.md ("Describer revision 6") has the figures that chose these models.

Printed:

* for each feature, the Spearman correlation of score and target, the average precision and
  the precision of the top 1% / 5% (target >= 0.5), on the development surveys (in-sample) and
  on the check survey (held out);
* precision / recall of ``score >= t`` at round thresholds (dev | check), from which the
  describer's thresholds are chosen;
* vote checks on the check survey, for the fitted scores and for each ``--compare`` file (e.g.
  an older ``feature_scores.json`` from git): for arms and bars, the Spearman correlation with
  the Galaxy Zoo vote fraction of the evaluation targets ``spirals`` and ``bars`` (galaxies
  with at least their ``min_votes`` votes), and nDCG@10 for that fraction when those galaxies
  are sorted by the score; ROC AUC of the bar score for the ``has_bar`` flag, over all
  galaxies and over the voted discs, and its average precision for visibility >= 0.5; the arms
  score's precision / recall at 0.4 (the caption threshold); average precision of the ring
  score for ``has_ring``.

It writes the fitted scores only where ``--out`` says. To ship them, pass
``--out galaxy_assets/captioning/feature_scores.json``; that changes every offline caption.

Run (about 5 minutes on 2 cores; surveys are cached in ``--work``):
``.venv/bin/python benchmarks/fit_describer_scores.py [--n 4000] [--work /tmp/describer_dev]
[--out PATH] [--compare OLD.json ...]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import spearmanr

DEV_SEEDS = (7, 11)
CHECK_SEED = 2026

# feature -> (truth column, kind, model). kind: "visibility" columns hold 0..1 (NaN: the galaxy
# lacks the feature, read as 0); "flag" columns are booleans; any other kind: 1 where the column
# equals it. model: "linear" (ridge on the visibility) or "network" (a 32-unit classifier of
# target >= 0.5: rare features whose evidence is not additive) or "regression" (a 32-unit
# network regressing the visibility itself, output on the linear models' scale)
TARGETS: dict[str, tuple[str, str, str]] = {
    "arms": ("arms_visibility", "visibility", "regression"),
    "lens": ("is_lens", "flag", "linear"),
    "edge_on": ("is_edge_on", "flag", "linear"),
    # two galaxies merging (post-mergers and shells leave plumes near the noise at 64 px)
    "merger": ("merger_kind", "major", "network"),
    "bar": ("bar_visibility", "visibility", "regression"),
    "ring": ("ring_visibility", "visibility", "regression"),
}
HIDDEN = 32
NETWORK_ALPHA = {"network": 1e-2, "regression": 0.1}  # L2 penalties (check survey, bars)


def _survey(work: Path, seed: int, n: int) -> Path:
    from galaxy_assets.survey.mock import simulate_survey

    folder = work / f"seed{seed}_n{n}"
    if not any(folder.glob("healpix=*/*.hdf5")):
        t = time.perf_counter()
        simulate_survey(folder, n, seed=seed, workers=2)
        print(
            f"simulated survey seed {seed}: {n} galaxies in {time.perf_counter() - t:.0f} s",
            flush=True,
        )
    return folder


def _measure(folder: Path) -> pl.DataFrame:
    """Measurements of every galaxy (cached beside the survey) joined to its truth row."""
    from galaxy_assets.captioning.measure import Measurements, measure
    from galaxy_assets.survey.readers import open_shard

    cache = folder / "measurements.parquet"
    if not cache.exists():
        rows, t = [], time.perf_counter()
        for shard in sorted(folder.glob("healpix=*/*.hdf5")):
            with open_shard(shard, ivar=False) as reader:
                for batch in reader.iter_batches(512):
                    for oid, img in zip(batch.object_id, batch.images, strict=True):
                        try:
                            d = measure(img, batch.bands).as_dict()
                        except Exception:  # unmeasurable cutout: no row, as when captioning
                            continue
                        d["object_id"] = str(oid)
                        rows.append(d)
        frame = pl.DataFrame(
            rows,
            schema={**{f: pl.Float64 for f in Measurements.field_names()}, "object_id": pl.Utf8},
        )
        frame.write_parquet(cache)
        print(
            f"measured {frame.height} galaxies of {folder.name} in {time.perf_counter() - t:.0f} s",
            flush=True,
        )
    meas = pl.read_parquet(cache)
    truth = pl.concat(
        [pl.read_parquet(p) for p in sorted(folder.glob("healpix=*/*.truth.parquet"))],
        how="diagonal_relaxed",
    )
    return meas.join(truth, on="object_id", how="inner")


def _targets(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    out = {}
    for name, (col, kind, _) in TARGETS.items():
        if col not in frame.columns:
            raise SystemExit(f"truth has no column {col!r} for feature {name!r}")
        if kind in ("visibility", "flag"):
            v = frame[col].cast(pl.Float64).to_numpy()
        else:
            v = (frame[col] == kind).fill_null(False).cast(pl.Float64).to_numpy()
        out[name] = np.nan_to_num(v, nan=0.0)
    return out


def _metrics(score: np.ndarray, y: np.ndarray) -> dict[str, float]:
    order = np.argsort(-score)
    present = y >= 0.5
    from sklearn.metrics import average_precision_score

    out = {
        "spearman": float(spearmanr(score, y).statistic),
        "average_precision": float(average_precision_score(present, score)),
    }
    for frac in (0.01, 0.05):
        k = max(1, int(round(frac * y.size)))
        out[f"precision_top{int(frac * 100)}%"] = float(present[order[:k]].mean())
    out["base_rate"] = float(present.mean())
    return out


def _vote_checks(frame: pl.DataFrame, scorer) -> dict[str, float]:
    """The scores of ``scorer`` against the survey's votes and flags (see the module doc)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from galaxy_assets.evaluation.labels import default_targets, vote_relevance
    from galaxy_assets.evaluation.metrics import ndcg

    x = frame.select(list(scorer.fields)).to_numpy().astype(np.float64)
    scores = scorer.score_matrix(x)
    row = {str(o): i for i, o in enumerate(frame["object_id"].to_list())}
    targets = default_targets()
    out: dict[str, float] = {}
    for feat, target in (("arms", "spirals"), ("bar", "bars")):
        rel, _ = vote_relevance(frame, targets[target])
        idx = np.array([row[str(o)] for o in rel["object_id"].to_list()], dtype=np.int64)
        frac = rel["relevance"].to_numpy().astype(np.float64)
        score = scores[feat][idx]
        out[f"{feat}: Spearman with the {target} vote fraction (n={idx.size})"] = float(
            spearmanr(score, frac).statistic
        )
        out[f"{feat}: nDCG@10 for the {target} vote fraction, sorted by score"] = ndcg(
            frac[np.argsort(-score, kind="stable")], frac, 10
        )
        if feat == "bar":
            flag = frame["has_bar"].fill_null(False).to_numpy().astype(bool)
            out["bar: ROC AUC for has_bar, all galaxies"] = float(
                roc_auc_score(flag, scores["bar"])
            )
            out[f"bar: ROC AUC for has_bar, the {idx.size} voted discs"] = float(
                roc_auc_score(flag[idx], score)
            )
    ys = _targets(frame)
    out["bar: average precision, visibility >= 0.5"] = float(
        average_precision_score(ys["bar"] >= 0.5, scores["bar"])
    )
    called, present = scores["arms"] >= 0.4, ys["arms"] >= 0.5  # 0.4: the caption threshold
    out["arms: precision at score >= 0.4, visibility >= 0.5"] = float(
        (called & present).sum() / max(called.sum(), 1)
    )
    out["arms: recall at score >= 0.4, visibility >= 0.5"] = float(
        (called & present).sum() / max(present.sum(), 1)
    )
    ring = frame["has_ring"].fill_null(False).to_numpy().astype(bool)
    out["ring: average precision for has_ring"] = float(
        average_precision_score(ring, scores["ring"])
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--work", default="/tmp/describer_dev")
    parser.add_argument(
        "--out",
        default=None,
        help="write the fitted scores here (the shipped file: "
        "galaxy_assets/captioning/feature_scores.json); default: write nothing",
    )
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="JSON",
        help="other feature-score files to run the vote checks on (e.g. an older version)",
    )
    args = parser.parse_args()

    from galaxy_assets.captioning.feature_scores import (
        FeatureScorer,
        design_matrix,
        fit_standardisation,
    )
    from galaxy_assets.captioning.measure import Measurements

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dev = pl.concat([_measure(_survey(work, s, args.n)) for s in DEV_SEEDS], how="diagonal_relaxed")
    check = _measure(_survey(work, CHECK_SEED, args.n))
    names = list(Measurements.field_names())
    x_dev = dev.select(names).to_numpy().astype(np.float64)
    centre, scale = fit_standardisation(x_dev)
    z = design_matrix(x_dev, centre, scale)
    zc = np.hstack([z, np.ones((z.shape[0], 1))])
    reg = args.alpha * np.eye(zc.shape[1])
    reg[-1, -1] = 0.0  # no penalty on the intercept
    weights: dict[str, list[float]] = {}
    networks: dict[str, dict] = {}
    ys = _targets(dev)
    for feat, y in ys.items():
        if TARGETS[feat][2] == "linear":
            w = np.linalg.solve(zc.T @ zc + reg, zc.T @ y)
            weights[feat] = [float(v) for v in w]
            continue
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        kind = TARGETS[feat][2]
        opts = {"hidden_layer_sizes": (HIDDEN,), "alpha": NETWORK_ALPHA[kind], "max_iter": 500}
        if kind == "regression":
            net = MLPRegressor(**opts, random_state=0).fit(z, y)
        else:
            net = MLPClassifier(**opts, random_state=0).fit(z, y >= 0.5)
        networks[feat] = {
            "W1": net.coefs_[0].tolist(),
            "b1": net.intercepts_[0].tolist(),
            "w2": net.coefs_[1][:, 0].tolist(),
            "b2": [float(net.intercepts_[1][0])],
            "output": "identity" if kind == "regression" else "logistic",
        }
        if kind == "regression":  # for FeatureScorer.presence: P(visibility >= 0.5 | score)
            networks[feat]["residual_sd"] = float(np.std(y - net.predict(z)))
    payload = {
        "version": 4,
        "fitted_on": {
            "dev_seeds": list(DEV_SEEDS),
            "n_per_survey": args.n,
            "alpha": args.alpha,
            "targets": {k: list(v) for k, v in TARGETS.items()},
        },
        "fields": names,
        "centre": [float(v) for v in centre],
        "scale": [float(v) for v in scale],
        "weights": weights,
        "networks": networks,
    }
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(payload, separators=(",", ":")) + "\n")
        print(f"wrote {out} ({out.stat().st_size} bytes)")
    else:
        print("fitted scores not written (--out PATH writes them)")

    scorer = FeatureScorer.from_dict(payload)
    for label, frame in (("dev (in-sample)", dev), (f"check seed {CHECK_SEED}", check)):
        x = frame.select(names).to_numpy().astype(np.float64)
        scores = scorer.score_matrix(x)
        print(f"--- {label}: {frame.height} galaxies")
        for feat, y in _targets(frame).items():
            m = _metrics(scores[feat], y)
            print(f"  {feat:8s} " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()))
    # precision / recall (target >= 0.5) of "score >= t" at round thresholds: the describer's
    # *_SCORE_* constants are chosen from the development rows of this table
    print("--- thresholds: precision / recall of score >= t (dev | check)")
    x_chk = check.select(names).to_numpy().astype(np.float64)
    s_dev, s_chk = scorer.score_matrix(x_dev), scorer.score_matrix(x_chk)
    y_dev, y_chk = _targets(dev), _targets(check)
    for feat in TARGETS:
        cells = []
        for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            pr = []
            for sc, y in ((s_dev[feat], y_dev[feat]), (s_chk[feat], y_chk[feat])):
                sel, pos = sc >= t, y >= 0.5
                p = (sel & pos).sum() / max(sel.sum(), 1)
                r = (sel & pos).sum() / max(pos.sum(), 1)
                pr.append(f"{p:.2f}/{r:.2f}")
            cells.append(f"{t:.1f}: {pr[0]} | {pr[1]}")
        print(f"  {feat:8s} " + "   ".join(cells))
    print(f"--- vote checks, check seed {CHECK_SEED}")
    scorers = [("fitted now", scorer)]
    scorers += [(str(p), FeatureScorer.load(p)) for p in args.compare]
    for label, sc in scorers:
        print(f"  {label} (version {sc.version}):")
        for k, v in _vote_checks(check, sc).items():
            print(f"    {k}: {v:.3f}")


if __name__ == "__main__":
    main()
