"""The champion gate: may a candidate search aligner replace the current champion?

Rule (issue 7): no target's nDCG@10 may drop by more than its bootstrap uncertainty. Precisely,
for each target evaluated for both models on the **same labels** (equal label fingerprints),
with Δ = nDCG@10(candidate) − nDCG@10(champion) on the full labels,

* **paired bootstrap** (used when the shared labels are at hand and both results hold the
  target's ranking): draw the candidate set with replacement B times, score both rankings on the same
  draw (:func:`~galaxy_assets.evaluation.metrics.bootstrap_galaxies`), and take
  σ = the standard deviation of the B differences. Pairing removes the variance the two
  models share (the same hard and easy galaxies), so σ is the uncertainty of the change itself;
* otherwise (**independent**): σ = sqrt(σ_candidate² + σ_champion²) from each result's own
  bootstrap.

The target fails when Δ < −n_sigma · σ (n_sigma = 1 by default, as the issue states). The
candidate passes when no target fails. A target undefined for either model (no relevant
galaxy) is skipped with a reason; a target only the candidate has is new and passes; a target
only the champion has fails (the candidate was not measured on it), and so does a candidate
with no target compared at all (no evidence). With no champion yet the
candidate passes as the first champion. A champion trained on another image encoder or text
embedder than the candidate cannot search the current vectors, nor serve an index built from
them, so the candidate replaces it without a comparison (:func:`lineage_mismatch`,
:func:`replaces_unservable_champion`).

Note: with n_sigma = 1 and two models of truly equal quality, each target's Δ falls below −σ
about 16% of the time, so with six targets an equally good retrain fails the gate often; a
bitwise-identical model never does (Δ = 0). Raise ``n_sigma`` for a looser gate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from galaxy_assets.evaluation.errors import EvaluationError
from galaxy_assets.evaluation.labels import EvaluationLabels
from galaxy_assets.evaluation.metrics import finite_mean, paired_change_std, ranked_indices
from galaxy_assets.evaluation.report import EvaluationResult

log = logging.getLogger(__name__)

__all__ = [
    "FIRST_CHAMPION",
    "GateDecision",
    "already_champion",
    "compare_to_champion",
    "decision_from_dict",
    "lineage_mismatch",
    "replaces_unservable_champion",
]

FIRST_CHAMPION = "first champion: no aligner holds the champion alias yet"
_COLUMNS = {
    "target": pl.Utf8,
    "champion": pl.Float64,
    "candidate": pl.Float64,
    "change": pl.Float64,
    "sigma": pl.Float64,
    "allowed_drop": pl.Float64,
    "uncertainty": pl.Utf8,
    "passed": pl.Boolean,
    "reason": pl.Utf8,
}


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict, every reason, and the per-target comparison."""

    passed: bool
    reasons: list[str]
    per_target: pl.DataFrame  # target, champion, candidate, change, sigma, allowed_drop, …
    method: str = "semantic"
    k: int = 10
    n_sigma: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.per_target.iter_rows(named=True):
            rows.append(
                {
                    k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in r.items()
                }
            )
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "method": self.method,
            "k": self.k,
            "n_sigma": self.n_sigma,
            "per_target": rows,
        }

    def to_markdown(self) -> str:
        from galaxy_assets.tables import to_markdown

        head = "passes" if self.passed else "**fails**"
        lines = [
            "## Champion gate",
            "",
            f"The candidate {head}: no target's {self.method} nDCG@{self.k} may drop by more "
            f"than {self.n_sigma:g} σ of its bootstrap uncertainty.",
            "",
        ]
        lines += [f"- {r}" for r in self.reasons]
        if self.per_target.height:
            lines += ["", to_markdown(self.per_target, max_rows=self.per_target.height)]
        return "\n".join(lines)


def lineage_mismatch(champion: Any, candidate: Any) -> str | None:
    """Why aligner ``champion`` cannot search the vectors ``candidate`` was trained on (their
    ``config.image_encoder`` or ``config.text_embedder`` differ), or None when it can."""
    parts = []
    for field, what in (("image_encoder", "image encoder"), ("text_embedder", "text embedder")):
        old = getattr(champion.config, field, None)
        new = getattr(candidate.config, field, None)
        if old and new and str(old) != str(new):
            parts.append(f"{what} {old!r}, the candidate on {new!r}")
    if not parts:
        return None
    return "the champion was trained on " + "; and on ".join(parts)


def replaces_unservable_champion(
    champion: str,
    why: str,
    candidate: EvaluationResult,
    *,
    method: str = "semantic",
    k: int = 10,
    n_sigma: float = 1.0,
) -> GateDecision:
    """The candidate replaces ``champion`` (its name) without a comparison: that champion
    cannot search the current vectors (``why``: from :func:`lineage_mismatch`, or it cannot be
    loaded at all), so it cannot
    serve the index rebuilt from them either, and keeping it would leave nothing to serve. A
    floor still holds: averaged over the targets both define, the candidate's ``method``
    nDCG@k must beat random order's (a broken candidate fails instead of serving)."""
    reason = (
        f"{champion} cannot be compared: {why}. It cannot serve the index rebuilt from these "
        "vectors either; the candidate replaces it without a comparison"
    )
    pairs = [
        (candidate.ndcg(t, method, k), candidate.ndcg(t, "random", k)) for t in candidate.targets
    ]
    pairs = [(ours, chance) for ours, chance in pairs if math.isfinite(ours + chance)]
    empty = pl.DataFrame(schema=_COLUMNS)
    if not pairs:
        reason += " (no target has a random baseline to check it against)"
        return GateDecision(True, [reason], empty, method, k, n_sigma)
    ours = finite_mean(p[0] for p in pairs)
    chance = finite_mean(p[1] for p in pairs)
    figures = (
        f"its mean {method} nDCG@{k} over {len(pairs)} targets, {ours:.3f}, against random "
        f"order's {chance:.3f}"
    )
    if ours > chance:
        return GateDecision(True, [f"{reason}; {figures}"], empty, method, k, n_sigma)
    reason = (
        f"{champion} cannot serve the current vectors ({why}), and the candidate does not beat "
        f"random order ({figures}): it stays a candidate and nothing can serve these vectors; "
        "check the captions, the aligner's training metrics and the image embeddings, then "
        "retrain the aligner"
    )
    return GateDecision(False, [reason], empty, method, k, n_sigma)


def already_champion(
    name: str, alias: str, *, method: str = "semantic", k: int = 10, n_sigma: float = 1.0
) -> GateDecision:
    """The candidate ``name`` already holds ``alias`` (it was evaluated again, e.g. for a new
    re-ranker or report contents): there is no other model to compare it to, and it stays."""
    reason = (
        f"{name} already is `{alias}`: evaluated again (e.g. for another re-ranker or report "
        "contents), with no other model to compare it to; it stays"
    )
    return GateDecision(True, [reason], pl.DataFrame(schema=_COLUMNS), method, k, n_sigma)


def _fingerprint(result: EvaluationResult, target: str) -> str | None:
    fp = result.targets.get(target, {}).get("fingerprint")
    return None if fp is None else str(fp)


def compare_to_champion(
    candidate: EvaluationResult,
    champion: EvaluationResult | None,
    labels: EvaluationLabels | None = None,
    *,
    method: str = "semantic",
    k: int = 10,
    n_sigma: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> GateDecision:
    """Decide whether ``candidate`` may become the champion (see the module docstring).

    The paired bootstrap runs on ``labels`` or, when None, on the labels the candidate was
    evaluated on (``candidate.labels``, kept in memory by :func:`evaluate`; a result read back
    from JSON has none); labels whose fingerprint differs from the candidate's, or no labels,
    mean the two results' own bootstrap σ are combined instead (column ``uncertainty``). Raises :class:`EvaluationError` when the
    two results were computed on different labels for a shared target (re-evaluate the champion
    on the current labels), or when ``method`` or ``k`` is missing from the candidate.
    """
    if n_sigma < 0 or not math.isfinite(n_sigma):
        raise EvaluationError(f"n_sigma={n_sigma!r} must be a finite number ≥ 0")
    if k not in candidate.k_list:
        raise EvaluationError(
            f"the candidate was scored at k={list(candidate.k_list)}; the gate needs nDCG@{k}"
        )
    cand_targets = [t for t in candidate.targets if candidate.score(t, method) is not None]
    if not cand_targets:
        raise EvaluationError(
            f"the candidate's result has no {method!r} scores; evaluate it with "
            "search_fn before gating"
        )
    if champion is None:
        return GateDecision(
            True, [FIRST_CHAMPION], pl.DataFrame(schema=_COLUMNS), method, k, n_sigma
        )
    if k not in champion.k_list:
        raise EvaluationError(
            f"the champion was scored at k={list(champion.k_list)}; re-evaluate it with nDCG@{k}"
        )
    champ_targets = [t for t in champion.targets if champion.score(t, method) is not None]
    for t in set(cand_targets) & set(champ_targets):
        a, b = _fingerprint(candidate, t), _fingerprint(champion, t)
        if a is not None and b is not None and a != b:
            raise EvaluationError(
                f"target {t!r}: the candidate and the champion were evaluated on different labels "
                f"(fingerprints {a} vs {b}); evaluate the champion on the current labels before "
                "comparing"
            )
    rows: list[dict[str, Any]] = []
    reasons: list[str] = []
    for t in cand_targets:
        if t not in champ_targets:
            reasons.append(f"{t}: new target, nothing to compare (passes)")
            rows.append(
                _row(
                    t,
                    math.nan,
                    candidate.ndcg(t, method, k),
                    math.nan,
                    math.nan,
                    "",
                    True,
                    "new target",
                )
            )
            continue
        rows.append(
            _compare(t, candidate, champion, labels, method, k, n_sigma, n_boot, seed, reasons)
        )
    for t in champ_targets:
        if t not in cand_targets:
            reasons.append(
                f"{t}: the champion was measured on it but the candidate was not (fails)"
            )
            rows.append(
                _row(
                    t,
                    champion.ndcg(t, method, k),
                    math.nan,
                    math.nan,
                    math.nan,
                    "",
                    False,
                    "candidate not measured",
                )
            )
    passed = all(r["passed"] for r in rows)
    if passed and not any(r["reason"] not in ("undefined", "new target") for r in rows):
        # not one target was compared: passing would replace the champion on no evidence
        passed = False
        reasons.insert(
            0,
            f"no target has an nDCG@{k} for both models (no relevant galaxy among those "
            "searched): nothing was compared, so the champion stays (fails). Check the labels: "
            "the report's crossmatch counts and labelled galaxies per target",
        )
    if passed and not any("fails" in r for r in reasons):
        reasons.insert(0, f"no target's nDCG@{k} dropped by more than {n_sigma:g} σ")
    return GateDecision(passed, reasons, pl.DataFrame(rows, schema=_COLUMNS), method, k, n_sigma)


def _row(
    target: str,
    champ: float,
    cand: float,
    sigma: float,
    allowed: float,
    how: str,
    passed: bool,
    reason: str,
) -> dict[str, Any]:
    change = cand - champ if math.isfinite(cand) and math.isfinite(champ) else math.nan
    return {
        "target": target,
        "champion": champ,
        "candidate": cand,
        "change": change,
        "sigma": sigma,
        "allowed_drop": allowed,
        "uncertainty": how,
        "passed": passed,
        "reason": reason,
    }


def _compare(
    t: str,
    candidate: EvaluationResult,
    champion: EvaluationResult,
    labels: EvaluationLabels | None,
    method: str,
    k: int,
    n_sigma: float,
    n_boot: int,
    seed: int,
    reasons: list[str],
) -> dict[str, Any]:
    cand = candidate.ndcg(t, method, k)
    champ = champion.ndcg(t, method, k)
    if not (math.isfinite(cand) and math.isfinite(champ)):
        reasons.append(f"{t}: nDCG@{k} undefined (no relevant galaxy); skipped")
        return _row(t, champ, cand, math.nan, math.nan, "", True, "undefined")
    sigma, how = _paired_sigma(t, candidate, champion, labels, method, k, n_boot, seed)
    if not math.isfinite(sigma):
        sc, sh = candidate.score(t, method), champion.score(t, method)
        s1 = sc.ndcg_std(k) if sc is not None else math.nan
        s2 = sh.ndcg_std(k) if sh is not None else math.nan
        sigma = math.hypot(s1 if math.isfinite(s1) else 0.0, s2 if math.isfinite(s2) else 0.0)
        how = "independent"
    allowed = n_sigma * sigma
    change = cand - champ
    ok = change >= -allowed
    if ok:
        reason = "within uncertainty" if change < 0 else "no drop"
    else:
        reason = f"dropped {-change:.3f} > {allowed:.3f}"
        reasons.append(
            f"{t}: nDCG@{k} dropped from {champ:.3f} to {cand:.3f} "
            f"({change:+.3f}), more than {n_sigma:g} σ = {allowed:.3f} ({how}) (fails)"
        )
    return _row(t, champ, cand, sigma, allowed, how, ok, reason)


def _paired_sigma(
    t: str,
    candidate: EvaluationResult,
    champion: EvaluationResult,
    labels: EvaluationLabels | None,
    method: str,
    k: int,
    n_boot: int,
    seed: int,
) -> tuple[float, str]:
    """σ of the paired bootstrap difference, or NaN when it cannot be computed."""
    if labels is None:
        labels = candidate.labels
    if labels is None or t not in labels:
        return math.nan, ""
    a_ids, b_ids = candidate.ranking_ids(t, method), champion.ranking_ids(t, method)
    if a_ids is None or b_ids is None:
        return math.nan, ""
    tl = labels[t]
    fp = _fingerprint(candidate, t)
    if fp is not None and fp != tl.fingerprint:
        # the labels handed in are not the ones the results were computed on (e.g. restricted
        # to another universe): a paired bootstrap on them would compare the wrong thing
        log.warning(
            "gate: the labels given for %r are not those the results were computed on "
            "(fingerprint %s vs %s); using independent uncertainties",
            t,
            tl.fingerprint,
            fp,
        )
        return math.nan, ""
    a, b = ranked_indices(a_ids, tl.index), ranked_indices(b_ids, tl.index)
    sigma = paired_change_std(a, b, tl.relevance, k, n_boot, seed)
    return (sigma, "paired") if math.isfinite(sigma) else (math.nan, "")


def decision_from_dict(data: Mapping[str, Any]) -> GateDecision:
    """A :class:`GateDecision` back from :meth:`GateDecision.to_dict`."""
    rows = [
        {k: (math.nan if v is None and _COLUMNS[k] == pl.Float64 else v) for k, v in r.items()}
        for r in data.get("per_target", [])
    ]
    return GateDecision(
        bool(data["passed"]),
        list(data.get("reasons", [])),
        pl.DataFrame(rows, schema=_COLUMNS),
        str(data.get("method", "semantic")),
        int(data.get("k", 10)),
        float(data.get("n_sigma", 1.0)),
    )
