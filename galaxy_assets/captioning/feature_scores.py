"""Feature scores for the describer: how clearly each feature shows, from all measurements.

A feature's visibility shows in several measurements at once (spiral arms: the winding mode's
S/N, but also smoothness, asymmetry, Gini, a ring-like bump, the colour gradient...), and one
threshold on one of them throws the rest away. :class:`FeatureScorer` scores each feature from
every numeric field of :class:`~galaxy_assets.captioning.measure.Measurements`, robustly
standardised:

    z = arcsinh((x - centre) / scale)         NaN -> centre, plus a 0/1 "missing" column

Lensing arcs and edge-on discs get a linear model, ``score_f = [z, missing, 1] · w_f``. The
other features get a one-hidden-layer network, ``out(w2 · relu(W1ᵀ [z, missing] + b1) + b2)``,
whose ``output`` says what it gives: ``"logistic"`` (the default; out = sigmoid) the
probability that the feature is there (mergers, whose evidence is not additive: a second
nucleus *and* asymmetric light), ``"identity"`` a regression of the feature's visibility (arms,
bars and rings since version 4). Version 3 scored arms with a linear model and bars and rings
with classifiers; the regressions order galaxies by their vote fractions better (the
classifiers' probabilities pile up near 0 and 1), and the re-ranker sorts by the score
(``benchmarks/fit_describer_scores.py`` has the figures).

The centre, scale, weights and networks live in ``feature_scores.json`` beside this module
(under 400 kB, NumPy only to evaluate). They were fitted to the truth's visibility scores and
flags on simulated development surveys, never the check or demo surveys, with
``benchmarks/fit_describer_scores.py``, which prints the held-out figures and writes the file
only when given ``--out``.
Linear and regression scores are on the scale of a visibility (about 0 absent, about 1
unmistakable; they may stray a little outside [0, 1]).

The describer never sees a truth table: the file holds numbers fitted offline, like the
thresholds in :mod:`~galaxy_assets.captioning.describer`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from galaxy_assets.captioning.measure import Measurements

__all__ = [
    "SCORES_PATH",
    "FeatureScorer",
    "default_scorer",
    "design_matrix",
    "fit_standardisation",
]

NETWORK_OUTPUTS = ("logistic", "identity")

SCORES_PATH = Path(__file__).with_name("feature_scores.json")


def fit_standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust centre (median) and scale (IQR / 1.35, 1 where undefined) of each column."""
    x = np.where(np.isfinite(x), x, np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            centre = np.nanmedian(x, axis=0)
            q25, q75 = np.nanpercentile(x, [25, 75], axis=0)
    centre = np.where(np.isfinite(centre), centre, 0.0)
    scale = (q75 - q25) / 1.35
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return centre, scale


def design_matrix(x: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``[arcsinh((x - centre) / scale), missing]`` with NaN / inf replaced by the centre."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    finite = np.isfinite(x)
    z = np.arcsinh((np.where(finite, x, centre) - centre) / scale)
    return np.hstack([z, (~finite).astype(np.float64)])


@dataclass(frozen=True)
class FeatureScorer:
    """Feature scores over the measurement fields (see the module docstring): linear ones in
    :attr:`weights`, small networks giving probabilities in :attr:`networks`."""

    fields: tuple[str, ...]
    centre: np.ndarray
    scale: np.ndarray
    weights: Mapping[str, np.ndarray]  # feature -> (2 * len(fields) + 1,) incl. intercept
    version: int = 0
    # feature -> one-hidden-layer network (W1 (2n, h), b1 (h,), w2 (h,), b2 ()): ReLU, then the
    # output in :attr:`network_outputs` (rare features whose evidence is not additive: a second
    # nucleus *and* asymmetric light make a merger)
    networks: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    # feature -> "logistic" (a probability; the default) or "identity" (a visibility regression)
    network_outputs: Mapping[str, str] = field(default_factory=dict)
    # feature -> the development residuals' standard deviation of each visibility regression
    residual_sd: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureScorer:
        fields = tuple(str(f) for f in data["fields"])
        n = len(fields)
        centre = np.asarray(data["centre"], dtype=np.float64)
        scale = np.asarray(data["scale"], dtype=np.float64)
        weights = {k: np.asarray(v, dtype=np.float64) for k, v in data["weights"].items()}
        bad = [k for k, w in weights.items() if w.shape != (2 * n + 1,)]
        if centre.shape != (n,) or scale.shape != (n,) or bad:
            raise ValueError(
                f"feature scores: {n} fields but centre {centre.shape}, scale {scale.shape}"
                + (f", wrong weight length for {bad}" if bad else "")
                + "; refit with benchmarks/fit_describer_scores.py"
            )
        networks = {
            k: {p: np.asarray(net[p], dtype=np.float64) for p in ("W1", "b1", "w2", "b2")}
            for k, net in data.get("networks", {}).items()
        }
        for k, net in networks.items():
            h = net["b1"].shape[0] if net["b1"].ndim == 1 else -1
            if net["W1"].shape != (2 * n, h) or net["w2"].shape != (h,) or net["b2"].size != 1:
                raise ValueError(
                    f"feature scores: network {k!r} has W1 {net['W1'].shape}, b1 "
                    f"{net['b1'].shape}, w2 {net['w2'].shape} for {n} fields; refit with "
                    "benchmarks/fit_describer_scores.py"
                )
        outputs = {
            k: str(net.get("output", "logistic")) for k, net in data.get("networks", {}).items()
        }
        odd = {k: v for k, v in outputs.items() if v not in NETWORK_OUTPUTS}
        if odd:
            raise ValueError(
                f"feature scores: network outputs {odd} are not one of {NETWORK_OUTPUTS}; refit "
                "with benchmarks/fit_describer_scores.py"
            )
        residual_sd = {
            k: float(net["residual_sd"])
            for k, net in data.get("networks", {}).items()
            if outputs[k] == "identity" and "residual_sd" in net
        }
        unsure = [
            k
            for k, v in outputs.items()
            if v == "identity" and not (residual_sd.get(k, math.nan) > 0.0)
        ]
        if unsure:
            raise ValueError(
                f"feature scores: regression networks {unsure} have no positive residual_sd; "
                "refit with benchmarks/fit_describer_scores.py"
            )
        both = sorted(set(weights) & set(networks))
        if both:
            raise ValueError(f"feature scores: {both} have both a linear and a network model")
        known = set(Measurements.field_names())
        unknown = [f for f in fields if f not in known]
        if unknown:
            raise ValueError(
                f"feature scores use measurements {unknown} that Measurements no longer has; "
                "refit with benchmarks/fit_describer_scores.py"
            )
        version = int(data.get("version", 0))
        return cls(fields, centre, scale, weights, version, networks, outputs, residual_sd)

    @classmethod
    def load(cls, path: str | Path = SCORES_PATH) -> FeatureScorer:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def sha(self) -> str:
        """A short hash of the fitted numbers (part of the describer's ``prompt_sha``)."""
        import hashlib

        blob = json.dumps(self.as_dict(), sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def features(self) -> tuple[str, ...]:
        return (*self.weights, *self.networks)

    def score_matrix(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Scores of each feature for rows of measurements in :attr:`fields` order."""
        z = design_matrix(x, self.centre, self.scale)
        out = {k: z @ w[:-1] + w[-1] for k, w in self.weights.items()}
        for k, net in self.networks.items():
            hidden = np.maximum(z @ net["W1"] + net["b1"], 0.0)
            y = hidden @ net["w2"] + float(net["b2"].reshape(-1)[0])
            if self.network_outputs.get(k, "logistic") == "identity":
                out[k] = y
            else:
                out[k] = 1.0 / (1.0 + np.exp(-np.clip(y, -60.0, 60.0)))
        return out

    def score(self, m: Measurements) -> dict[str, float]:
        """Scores of each feature for one galaxy's measurements."""
        row = np.array([[float(getattr(m, f)) for f in self.fields]], dtype=np.float64)
        return {k: float(v[0]) for k, v in self.score_matrix(row).items()}

    def presence(self, scores: Mapping[str, float]) -> dict[str, float]:
        """Each score as a probability in [0, 1] that the feature is there.

        A network's probability stays as it is. A visibility regression's score ``v`` becomes
        ``Φ((v - 0.5) / σ)``, the chance that the visibility is at least 0.5 (what the fit
        calls present) given the development residuals' spread ``σ``: strictly increasing, so
        a clear feature still outranks a fainter one where a clip to [0, 1] would tie them. A
        linear score (fitted to a 0/1 flag) is clipped to [0, 1]. Non-finite scores are
        dropped."""
        out = {}
        for k, v in scores.items():
            v = float(v)
            if not math.isfinite(v):
                continue
            if self.network_outputs.get(k) == "identity":
                z = (v - 0.5) / self.residual_sd[k]
                out[k] = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
            else:
                out[k] = min(max(v, 0.0), 1.0)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fields": list(self.fields),
            "centre": self.centre.tolist(),
            "scale": self.scale.tolist(),
            "weights": {k: v.tolist() for k, v in self.weights.items()},
            "networks": {
                k: {
                    **{p: np.asarray(v).tolist() for p, v in net.items()},
                    "output": self.network_outputs.get(k, "logistic"),
                    **({"residual_sd": self.residual_sd[k]} if k in self.residual_sd else {}),
                }
                for k, net in self.networks.items()
            },
        }


@lru_cache(maxsize=1)
def default_scorer() -> FeatureScorer:
    """The scorer shipped with the package (``feature_scores.json``)."""
    return FeatureScorer.load(SCORES_PATH)
