"""Simulated Galaxy Zoo volunteers for the mock survey.

Each galaxy is classified by 30-50 simulated volunteers (uniform integer), who walk the
decision tree: the root questions are asked to everyone, and a question that depends on
(question, answer) is asked only to the volunteers who gave that answer. Counts are drawn
question by question: ``counts(q) ~ Multinomial(n_q, p_q)`` with ``n_q`` the count of the
answer ``q`` depends on.

The answer probabilities ``p_q`` follow the truth through *visibility scores* in [0, 1]
computed from the physics (feature surface brightness against the sky noise, size against
the seeing, inclination; see ``mock_population``), so faint arms, bars, tails and arcs get
low vote fractions as they do in Galaxy Zoo. Ordinal questions (bulge size, roundness,
winding, arm count, merging) put most weight on the true bin and spill into neighbours.
Realistic noise and confusion come from

* volunteer error: each vote is, with probability ``EPSILON``, a uniformly random answer;
* per-galaxy disagreement: ``p_q`` is redrawn from ``Dirichlet(KAPPA * p_q)`` for each galaxy
  (over-dispersion, as the Dirichlet-Multinomial model of Walmsley et al. 2022 assumes);
* systematic confusions: rings and flocculent clumps draw some spiral votes, projected
  neighbours some merger votes, lensing arcs some disturbance votes, strongly inclined
  ellipticals some edge-on votes, bright stars artifact votes.

Vote models exist for the questions of the Galaxy Zoo DECaLS tree; a tree with other
questions raises :class:`~galaxy_assets.survey.errors.SurveyConfigError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from galaxy_assets.morphology.decision_tree import DecisionTree, default_tree
from galaxy_assets.survey.errors import SurveyConfigError

EPSILON = 0.04  # probability that a vote is a random answer
KAPPA = 30.0  # Dirichlet concentration of per-galaxy vote probabilities
N_VOLUNTEERS = (30, 50)  # inclusive range of volunteers per galaxy

Truth = Mapping[str, Any]
Vis = Mapping[str, float]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _ordinal(x: float, n: int, width: float) -> np.ndarray:
    """Weights over ``n`` ordered bins peaked at continuous position ``x``."""
    k = np.arange(n)
    w = np.exp(-0.5 * ((k - x) / width) ** 2)
    return w / w.sum()


def _num(t: Truth, key: str, default: float = math.nan) -> float:
    v = t.get(key, default)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(v) else v


def _is_disc(t: Truth) -> bool:
    return t.get("morph_type") in ("spiral", "lenticular", "disc")


def feature_score(t: Truth, v: Vis) -> float:
    """Probability-like score that a volunteer sees *any* feature or disc."""
    terms = [
        0.95 * v.get("arms", 0.0),
        0.6 * v.get("bar", 0.0),
        0.5 * v.get("ring", 0.0),
        0.85 * v.get("clumps", 0.0),
        0.8 * v.get("irregular", 0.0),
        0.65 * v.get("tails", 0.0),
        0.35 * v.get("arc", 0.0),
        (0.5 if _is_disc(t) else 0.2) * v.get("disc", 0.0),
    ]
    if _is_disc(t):  # an inclined disc is seen as a disc even without features
        incl = _num(t, "inclination_deg", 0.0)
        terms.append(0.9 * _sig((incl - 72.0) / 4.0) * (1 - 0.6 * _num(t, "bulge_to_total", 0)))
    if t.get("merger_kind") == "major":
        terms.append(0.7)
    p_none = 1.0
    for w in terms:
        p_none *= 1.0 - min(max(w, 0.0), 0.99)
    return 1.0 - p_none


def _smooth_or_featured(t: Truth, v: Vis) -> dict[str, float]:
    star = _num(t, "bright_star_mag_r", math.inf)
    p_art = 0.01 + (0.3 * _sig((16.5 - star) / 0.7) if math.isfinite(star) else 0.0)
    f = 0.05 + 0.9 * feature_score(t, v)
    return {"smooth": (1 - p_art) * (1 - f), "featured-or-disk": (1 - p_art) * f, "artifact": p_art}


def _disk_edge_on(t: Truth, v: Vis) -> dict[str, float]:
    if _is_disc(t) or t.get("merger_kind") == "major":
        incl = _num(t, "inclination_deg", 45.0)
        bt = _num(t, "bulge_to_total", 0.3)
        e = _sig((incl - 77.0) / 3.5) * (1.0 - 0.5 * max(bt - 0.4, 0.0))
    else:
        e = 0.7 * _sig((0.33 - _num(t, "axis_ratio", 1.0)) / 0.05)
    p = 0.03 + 0.94 * e
    return {"yes": p, "no": 1 - p}


def _has_spiral_arms(t: Truth, v: Vis) -> dict[str, float]:
    a = v.get("arms", 0.0)
    p = 0.06 + 0.9 * a + 0.3 * (1 - a) * v.get("ring", 0.0) + 0.25 * (1 - a) * v.get("clumps", 0.0)
    p = min(p, 0.97)
    return {"yes": p, "no": 1 - p}


def _bar(t: Truth, v: Vis) -> dict[str, float]:
    b = v.get("bar", 0.0)
    strong = _sig((_num(t, "bar_flux_fraction", 0.0) - 0.09) / 0.025)
    return {
        "strong": 0.03 + 0.9 * b * strong,
        "weak": 0.12 + 0.75 * b * (1 - strong) + 0.1 * b * strong,
        "no": max(1.0 - 0.85 * b, 0.05),
    }


def _bulge_size(t: Truth, v: Vis) -> dict[str, float]:
    bt = _num(t, "bulge_to_total", 0.3)
    x = float(np.interp(bt, [0.0, 0.04, 0.15, 0.35, 0.6, 1.0], [4.0, 3.5, 2.5, 1.5, 0.5, 0.0]))
    w = _ordinal(x, 5, 0.7)
    return dict(zip(("dominant", "large", "moderate", "small", "none"), w, strict=True))


def _how_rounded(t: Truth, v: Vis) -> dict[str, float]:
    q = _num(t, "axis_ratio", 0.8)
    x = float(np.interp(q, [0.2, 0.45, 0.7, 0.9, 1.0], [2.0, 1.5, 1.0, 0.3, 0.0]))
    w = _ordinal(x, 3, 0.5)
    return dict(zip(("round", "in-between", "cigar-shaped"), w, strict=True))


def _edge_on_bulge(t: Truth, v: Vis) -> dict[str, float]:
    bt = _num(t, "bulge_to_total", 0.2)
    bar = 1.0 if t.get("has_bar_model") else 0.0
    return {
        "boxy": 0.08 + 0.5 * bar,
        "none": 0.1 + 0.8 * (1 - _sig((bt - 0.1) / 0.04)),
        "rounded": 0.1 + 0.8 * _sig((bt - 0.15) / 0.05),
    }


def _spiral_winding(t: Truth, v: Vis) -> dict[str, float]:
    pitch = _num(t, "arm_pitch_deg")
    if math.isnan(pitch):
        return {"tight": 0.35, "medium": 0.4, "loose": 0.25}
    x = float(np.interp(pitch, [5.0, 12.0, 18.0, 25.0, 40.0], [0.0, 0.5, 1.0, 1.5, 2.0]))
    a = v.get("arms", 0.0)
    w = a * _ordinal(x, 3, 0.55) + (1 - a) * np.array([0.35, 0.4, 0.25])
    return dict(zip(("tight", "medium", "loose"), w, strict=True))


def _spiral_arm_count(t: Truth, v: Vis) -> dict[str, float]:
    m = _num(t, "arm_count")
    a = v.get("arms", 0.0)
    names = ("1", "2", "3", "4", "more-than-4")
    if math.isnan(m):
        base = np.array([0.1, 0.45, 0.2, 0.1, 0.15])
    else:
        base = _ordinal(min(m, 5.0) - 1.0, 5, 0.55)
        base = 0.8 * base + 0.2 * np.array([0.05, 0.6, 0.15, 0.1, 0.1])  # two-arm prior
    cant = 0.1 + 0.55 * (1 - a)
    out = dict(zip(names, (1 - cant) * base, strict=True))
    out["cant-tell"] = cant
    return out


def _merging(t: Truth, v: Vis) -> dict[str, float]:
    kind = t.get("merger_kind")
    tails = v.get("tails", 0.0)
    if kind == "major":
        level = 3.0 * max(0.85, tails) if _num(t, "merger_separation_arcsec", 0) > 1.0 else 2.5
    elif kind == "post":
        level = 0.4 + 1.8 * tails
    elif kind == "shells":
        level = 1.2 * tails
    elif t.get("morph_type") == "irregular":
        level = 0.8 * v.get("irregular", 0.0)
    elif t.get("morph_type") == "lens":
        level = 0.6 * v.get("arc", 0.0)
    else:
        level = 0.0
    level = max(level, 0.9 * v.get("neighbour", 0.0))
    w = _ordinal(level, 4, 0.6)
    w[0] += 0.05
    return dict(zip(("none", "minor-disturbance", "major-disturbance", "merger"), w, strict=True))


VOTE_MODELS: dict[str, Callable[[Truth, Vis], dict[str, float]]] = {
    "smooth-or-featured": _smooth_or_featured,
    "disk-edge-on": _disk_edge_on,
    "has-spiral-arms": _has_spiral_arms,
    "bar": _bar,
    "bulge-size": _bulge_size,
    "how-rounded": _how_rounded,
    "edge-on-bulge": _edge_on_bulge,
    "spiral-winding": _spiral_winding,
    "spiral-arm-count": _spiral_arm_count,
    "merging": _merging,
}


def answer_probabilities(
    truth: Truth, vis: Vis, tree: DecisionTree | None = None
) -> dict[str, np.ndarray]:
    """Noise-free answer probabilities per question (before volunteer error and Dirichlet)."""
    tree = tree or default_tree()
    out: dict[str, np.ndarray] = {}
    for q in tree:
        model = VOTE_MODELS.get(q.name)
        if model is None:
            raise SurveyConfigError(
                f"mock votes: no volunteer model for question {q.name!r} of tree {tree.name!r} "
                f"({tree.source}); the mock simulates {sorted(VOTE_MODELS)}"
            )
        w = model(truth, vis)
        p = np.array([max(float(w.get(a, 0.0)), 1e-4) for a in q.answers])
        out[q.name] = p / p.sum()
    return out


def simulate_votes(
    truth: Truth, vis: Vis, rng: np.random.Generator, tree: DecisionTree | None = None
) -> dict[str, int]:
    """Vote counts ``<question>_<answer>`` and ``<question>_total-votes`` for one galaxy."""
    tree = tree or default_tree()
    probs = answer_probabilities(truth, vis, tree)
    n_vol = int(rng.integers(N_VOLUNTEERS[0], N_VOLUNTEERS[1] + 1))
    counts: dict[str, int] = {}
    for q in tree:
        n_q = n_vol if q.depends_on is None else counts[tree.column(*q.depends_on)]
        p = (1 - EPSILON) * probs[q.name] + EPSILON / len(q.answers)
        p = rng.dirichlet(KAPPA * p + 1e-3)
        c = rng.multinomial(n_q, p) if n_q > 0 else np.zeros(len(q.answers), dtype=np.int64)
        for col, k in zip(q.columns, c, strict=True):
            counts[col] = int(k)
        counts[q.total_column] = int(n_q)
    return counts


def _truth_visibility(row: Mapping[str, Any]) -> dict[str, float]:
    """The visibility scores a truth-table row stores (``<feature>_visibility``; NaN: the
    galaxy lacks the feature) as :func:`answer_probabilities` takes them."""
    vis: dict[str, float] = {}
    for key, value in row.items():
        if key.endswith("_visibility") and value is not None:
            v = float(value)
            if not math.isnan(v):
                vis[key.removesuffix("_visibility")] = v
    vis["neighbour"] = 1.0 if row.get("has_neighbour") else 0.0
    return vis


def expected_vote_fraction(
    truth_rows: Any, question: str, answers: Any, tree: DecisionTree | None = None
) -> np.ndarray:
    """The expected fraction of votes for ``answers`` of ``question``, per truth-table row
    (an iterable of mappings, e.g. ``polars.DataFrame.iter_rows(named=True)``): the noise-free
    answer probabilities mixed with the volunteers' random answers, the mean of the Dirichlet
    that :func:`simulate_votes` draws from. Ranking galaxies by it is the best any method can
    do on average against the drawn votes (the label-noise ceiling of the evaluation)."""
    tree = tree or default_tree()
    q = next((x for x in tree if x.name == question), None)
    if q is None:
        raise SurveyConfigError(f"question {question!r} is not in tree {tree.name!r}")
    unknown = [a for a in answers if a not in q.answers]
    if unknown:
        raise SurveyConfigError(f"question {question!r} has no answers {unknown}")
    cols = [list(q.answers).index(a) for a in answers]
    out = []
    for row in truth_rows:
        probs = answer_probabilities(row, _truth_visibility(row), tree)[question]
        p = (1 - EPSILON) * probs + EPSILON / len(q.answers)
        out.append(float(p[cols].sum()))
    return np.asarray(out, dtype=np.float64)
