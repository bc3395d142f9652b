"""Evaluate search methods on the labelled targets, and write the report a person reads.

:func:`evaluate` scores, for every target, every method it is given on the same candidate set:

* ``semantic`` — text search with the aligned model (``search_fn``), each query phrasing;
* ``semantic_rerank`` — the same results re-ranked by a VLM (``rerank_fn``);
* ``image_similarity`` — cosine similarity in the raw image-encoder space from each confident
  member of the target (see :mod:`~galaxy_assets.evaluation.baselines`);
* ``random`` — random orders of the candidate set.

For each target × method it reports nDCG@k (± bootstrap), recall@k, precision@k and targets in
the top k for every k in ``k_list`` (10 and 100 by default), and the targets-in-top-k curve. A text
method's target-level figures are those of the target's **primary phrasing** (the first in
``targets.yaml``, the paper's query where it had one); the per-phrasing table shows every
phrasing. Uncertainties: bootstrap over labelled galaxies for a text query, over query galaxies
for image similarity, over draws for random (see :mod:`~galaxy_assets.evaluation.metrics`).

:class:`EvaluationResult` round-trips through JSON; :func:`write_report` writes Markdown, PNG plots
(matplotlib, no display needed) and optional example grids.

Plain Python; knows nothing of Dagster.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from galaxy_assets.evaluation.baselines import (
    IMAGE_QUERY_THRESHOLD,
    RerankFn,
    SearchFn,
    embedding_matrix,
    image_similarity_rankings,
    random_rankings,
    rerank_ranking,
    run_search,
)
from galaxy_assets.evaluation.caption_split import caption_split
from galaxy_assets.evaluation.errors import EvaluationError
from galaxy_assets.evaluation.labels import CrossmatchReport, EvaluationLabels, TargetLabels
from galaxy_assets.evaluation.metrics import (
    TARGET_RELEVANCE,
    Bootstrap,
    RankingMetrics,
    bootstrap_galaxies,
    bootstrap_mean,
    finite_mean,
    paired_change_std,
    ranked_indices,
    ranking_metrics,
    summarize_samples,
)
from galaxy_assets.search.rerank import DEFAULT_K_RERANK

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "PAPER_NDCG_AT_10",
    "EvaluationResult",
    "QualityCheck",
    "ReportFiles",
    "Scores",
    "evaluate",
    "example_ids",
    "write_report",
]

METHODS = ("semantic", "semantic_rerank", "image_similarity", "random")
METHOD_LABELS = {
    "semantic": "semantic search",
    "semantic_rerank": "semantic + VLM re-ranking",
    "image_similarity": "image similarity (raw encoder)",
    "random": "random",
}
TEXT_METHODS = ("semantic", "semantic_rerank")
# nDCG@10 in the AION-Search paper (Koblischke et al. 2025) on Legacy Survey images with Galaxy
# Zoo DECaLS votes (spirals, mergers) and lens catalogues (lenses).
PAPER_NDCG_AT_10: dict[str, dict[str, float]] = {
    "spirals": {"semantic": 0.941, "semantic_rerank": 0.992, "image_similarity": 0.643},
    "mergers": {"semantic": 0.554, "semantic_rerank": 0.678, "image_similarity": 0.384},
    "lenses": {"semantic": 0.180, "semantic_rerank": 0.290, "image_similarity": 0.015},
}
SCHEMA_VERSION = 1
# what a report measures: bump when it gains figures or sections (2: the caption split), so
# that a demo rerun re-evaluates instead of keeping an older report (3: precision in the
# per-phrasing table, the image-similarity queries in the JSON summary, grids in the metadata;
# 4: re-ranking scored for every phrasing; 5: the caption split counts the aligner's
# validation galaxies as without a training caption)
REPORT_VERSION = 5


# --------------------------------------------------------------------------- scores
def _f(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _unf(v: Any) -> float:
    return math.nan if v is None else float(v)


@dataclass
class Scores:
    """The figures of one method on one target (one phrasing for a text method)."""

    target: str
    method: str
    query: str | None  # the phrasing (text methods); None for baselines
    n_queries: int  # rankings averaged: 1 for a text query, query galaxies, random draws
    ndcg: dict[int, Bootstrap]  # k → value ± bootstrap
    recall: dict[int, float]
    precision: dict[int, float]
    found: dict[int, float]  # targets in the top k (mean over rankings)
    curve: list[float]  # targets in the top 1, 2, …, curve_k
    n_ranked: float  # labelled galaxies per ranking (mean), after dropping unlabelled ids
    n_targets: float  # targets a ranking could find (mean; a query galaxy is not its own)
    note: str = ""

    def ndcg_at(self, k: int) -> float:
        b = self.ndcg.get(k)
        return b.value if b is not None else math.nan

    def ndcg_std(self, k: int) -> float:
        b = self.ndcg.get(k)
        return b.std if b is not None else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "method": self.method,
            "query": self.query,
            "n_queries": self.n_queries,
            "ndcg": {str(k): b.to_dict() for k, b in self.ndcg.items()},
            "recall": {str(k): _f(v) for k, v in self.recall.items()},
            "precision": {str(k): _f(v) for k, v in self.precision.items()},
            "found": {str(k): _f(v) for k, v in self.found.items()},
            "curve": [_f(v) for v in self.curve],
            "n_ranked": _f(self.n_ranked),
            "n_targets": _f(self.n_targets),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scores:
        return cls(
            target=str(d["target"]),
            method=str(d["method"]),
            query=d.get("query"),
            n_queries=int(d["n_queries"]),
            ndcg={int(k): Bootstrap.from_dict(v) for k, v in d["ndcg"].items()},
            recall={int(k): _unf(v) for k, v in d["recall"].items()},
            precision={int(k): _unf(v) for k, v in d["precision"].items()},
            found={int(k): _unf(v) for k, v in d["found"].items()},
            curve=[_unf(v) for v in d.get("curve", [])],
            n_ranked=_unf(d.get("n_ranked")),
            n_targets=_unf(d.get("n_targets")),
            note=str(d.get("note", "")),
        )


def _sub_seed(seed: int, *parts: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32("/".join(parts).encode())) % (2**32)


def _score(
    labels: TargetLabels,
    rankings: Sequence[np.ndarray],
    *,
    method: str,
    query: str | None,
    k_list: Sequence[int],
    curve_k: int,
    n_boot: int,
    seed: int,
    over: str,
    excludes: Sequence[int] | None = None,
    note: str = "",
) -> Scores:
    rel = labels.relevance
    srt = np.sort(rel)[::-1]
    per: list[RankingMetrics] = [
        ranking_metrics(
            r,
            rel,
            k_list,
            curve_k=curve_k,
            sorted_relevance=srt,
            exclude=None if excludes is None else int(excludes[i]),
        )
        for i, r in enumerate(rankings)
    ]
    ndcg: dict[int, Bootstrap] = {}
    for k in k_list:
        values = np.array([m.ndcg[k] for m in per])
        if over == "galaxies":
            if len(rankings) != 1:
                raise EvaluationError("a bootstrap over galaxies scores one ranking at a time")
            samples = bootstrap_galaxies(rankings, rel, k, n_boot, _sub_seed(seed, str(k)))
            ndcg[k] = summarize_samples(float(values[0]), samples[:, 0], "galaxies")
        else:
            ndcg[k] = bootstrap_mean(values, n_boot, _sub_seed(seed, str(k)))
    return Scores(
        target=labels.name,
        method=method,
        query=query,
        n_queries=len(rankings),
        ndcg=ndcg,
        recall={k: finite_mean(m.recall[k] for m in per) for k in k_list},
        precision={k: finite_mean(m.precision[k] for m in per) for k in k_list},
        found={k: finite_mean(m.found[k] for m in per) for k in k_list},
        curve=np.mean([m.curve for m in per], axis=0).astype(float).tolist(),
        n_ranked=finite_mean(m.n_ranked for m in per),
        n_targets=finite_mean(m.n_targets for m in per),
        note=note,
    )


# --------------------------------------------------------------------------- quality bar
@dataclass(frozen=True)
class QualityCheck:
    """Issue 7's quality bar for one target: semantic search beats image similarity, reaches
    the target's ``min_ndcg_at_10`` (where it has one), and re-ranking does not lower it.
    A criterion that cannot be checked (a method not run, no bar set) is None."""

    target: str
    semantic: float
    image_similarity: float
    semantic_rerank: float
    min_ndcg_at_10: float | None
    beats_image: bool | None
    meets_bar: bool | None
    rerank_not_lower: bool | None
    label_ceiling: float | None = None  # nDCG@10 of the labels' own expected ranking
    # standard deviation of the re-ranking's change in nDCG@10 over paired bootstrap resamples
    # of the target's galaxies (both rankings scored on each resample): how much of the change
    # a resample of the labels could make
    rerank_change_std: float | None = None

    @property
    def passed(self) -> bool | None:
        checks = [
            c for c in (self.beats_image, self.meets_bar, self.rerank_not_lower) if c is not None
        ]
        return all(checks) if checks else None

    def reasons(self) -> list[str]:
        out = []
        if self.beats_image is False:
            out.append(
                f"semantic {self.semantic:.3f} ≤ image similarity {self.image_similarity:.3f}"
            )
        if self.meets_bar is False:
            ceiling = (
                f"; the labels allow at most about {self.label_ceiling:.3f}"
                if self.label_ceiling is not None
                else ""
            )
            out.append(f"semantic {_fmt(self.semantic)} < bar {self.min_ndcg_at_10:.2f}{ceiling}")
        if self.rerank_not_lower is False:
            paired = (
                f" (a change of {self.semantic_rerank - self.semantic:+.3f}; paired bootstrap σ "
                f"{self.rerank_change_std:.3f})"
                if self.rerank_change_std is not None
                else ""
            )
            out.append(
                f"re-ranking lowers nDCG@10 {self.semantic:.3f} → {self.semantic_rerank:.3f}"
                + paired
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "semantic": _f(self.semantic),
            "image_similarity": _f(self.image_similarity),
            "semantic_rerank": _f(self.semantic_rerank),
            "min_ndcg_at_10": self.min_ndcg_at_10,
            "beats_image": self.beats_image,
            "meets_bar": self.meets_bar,
            "rerank_not_lower": self.rerank_not_lower,
            "label_ceiling": self.label_ceiling,
            "rerank_change_std": self.rerank_change_std,
            "passed": self.passed,
            "reasons": self.reasons(),
        }


# --------------------------------------------------------------------------- result
@dataclass
class EvaluationResult:
    """Every figure of one evaluation, the labels it used and the versions it read."""

    k_list: tuple[int, ...]
    curve_k: int
    n_boot: int
    seed: int
    targets: dict[str, dict[str, Any]]  # label summary, queries, bar, image-query selection
    scores: list[Scores]  # target-level (text methods: primary phrasing)
    phrasings: list[Scores]  # text methods, every phrasing
    rankings: dict[str, dict[str, dict[str, list]]]  # target → method → {ids, relevance}
    versions: dict[str, str] = field(default_factory=dict)
    crossmatch: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # the labels the figures were computed on (after any universe restriction); kept in memory
    # for the champion gate's paired bootstrap, never written to JSON
    labels: EvaluationLabels | None = field(default=None, repr=False, compare=False)

    # ---- access
    @property
    def target_names(self) -> list[str]:
        return list(self.targets)

    @property
    def methods(self) -> list[str]:
        present = {s.method for s in self.scores}
        return [m for m in METHODS if m in present] + sorted(present - set(METHODS))

    def score(self, target: str, method: str) -> Scores | None:
        for s in self.scores:
            if s.target == target and s.method == method:
                return s
        return None

    def ndcg(self, target: str, method: str, k: int = 10) -> float:
        s = self.score(target, method)
        return s.ndcg_at(k) if s is not None else math.nan

    def ranking_ids(self, target: str, method: str) -> list[str] | None:
        entry = self.rankings.get(target, {}).get(method)
        return None if entry is None else list(entry["ids"])

    # ---- figures
    def to_frame(self) -> pl.DataFrame:
        """One row per target × method with every figure (NaN where undefined)."""
        rows = []
        for s in self.scores:
            row: dict[str, Any] = {"target": s.target, "method": s.method, "n_queries": s.n_queries}
            for k in self.k_list:
                row[f"ndcg@{k}"] = s.ndcg_at(k)
                row[f"ndcg@{k}_std"] = s.ndcg_std(k)
            for k in self.k_list:
                row[f"recall@{k}"] = s.recall.get(k, math.nan)
                row[f"precision@{k}"] = s.precision.get(k, math.nan)
                row[f"targets_in_top_{k}"] = s.found.get(k, math.nan)
            rows.append(row)
        return pl.DataFrame(rows) if rows else pl.DataFrame()

    def summary(self) -> dict[str, Any]:
        """What ``galaxy-assets evaluate --json`` prints: for each target and method nDCG@10
        (± its bootstrap σ), recall@100 and targets in the top 100, the versions read, and
        each target's labels (source, fingerprint, counts).
        (The smallest and largest k of ``k_list`` stand in for 10 and 100 if those are absent.)"""
        k_lo = 10 if 10 in self.k_list else min(self.k_list)
        k_hi = 100 if 100 in self.k_list else max(self.k_list)
        out: dict[str, Any] = {}
        for t in self.targets:
            per: dict[str, Any] = {}
            for m in self.methods:
                s = self.score(t, m)
                if s is None:
                    continue
                per[m] = {
                    f"ndcg@{k_lo}": _f(s.ndcg_at(k_lo)),
                    f"ndcg@{k_lo}_std": _f(s.ndcg_std(k_lo)),
                    f"recall@{k_hi}": _f(s.recall.get(k_hi, math.nan)),
                    f"targets_in_top_{k_hi}": _f(s.found.get(k_hi, math.nan)),
                }
                if m == "image_similarity":  # which galaxies were the queries
                    per[m]["n_queries"] = s.n_queries
                    per[m]["queries"] = s.note
            out[t] = per
        splits = {
            t: {
                "n_uncaptioned": sp["n_uncaptioned"],
                "n_captioned": sp["n_captioned"],
                f"uncaptioned_ndcg@{sp['k']}": _f(sp["uncaptioned"]["ndcg"]),
                f"captioned_ndcg@{sp['k']}": _f(sp["captioned"]["ndcg"]),
            }
            for t, sp in self.caption_splits().items()
        }
        labels = {
            t: {k: i.get(k) for k in ("source", "fingerprint", "n_candidates", "n_targets")}
            for t, i in self.targets.items()
        }
        return {
            "created_at": self.created_at,
            "versions": dict(self.versions),
            "labels": labels,  # which labels the figures are on (the gate compares these)
            "targets": out,
            "quality_bar": {q.target: q.passed for q in self.quality_bar()},
            **({"caption_split": splits} if splits else {}),
        }

    def caption_splits(self) -> dict[str, dict[str, Any]]:
        """Target → its semantic nDCG among galaxies without and with a training caption
        (:func:`~galaxy_assets.evaluation.caption_split.caption_split`), for the targets where
        both groups were scored."""
        return {
            t: info["caption_split"]
            for t, info in self.targets.items()
            if "uncaptioned" in info.get("caption_split", {})
        }

    def flat_metrics(self) -> dict[str, float]:
        """``"<target>/<method>/<metric>" → value`` for MLflow and Dagster metadata (finite
        values only)."""
        out: dict[str, float] = {}
        for s in self.scores:
            base = f"{s.target}/{s.method}"
            for k in self.k_list:
                out[f"{base}/ndcg_at_{k}"] = s.ndcg_at(k)
                out[f"{base}/ndcg_at_{k}_std"] = s.ndcg_std(k)
                out[f"{base}/recall_at_{k}"] = s.recall.get(k, math.nan)
                out[f"{base}/precision_at_{k}"] = s.precision.get(k, math.nan)
                out[f"{base}/targets_in_top_{k}"] = s.found.get(k, math.nan)
        for t, sp in self.caption_splits().items():
            for group in ("uncaptioned", "captioned"):
                out[f"{t}/semantic/{group}_ndcg_at_{sp['k']}"] = sp[group]["ndcg"]
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}

    def quality_bar(self, k: int = 10) -> list[QualityCheck]:
        """Issue 7's quality bar, per target that semantic search was scored on."""
        out = []
        for t, info in self.targets.items():
            sem = self.ndcg(t, "semantic", k)
            if self.score(t, "semantic") is None:
                continue
            img = self.ndcg(t, "image_similarity", k)
            rr = self.ndcg(t, "semantic_rerank", k)
            bar = info.get("min_ndcg_at_10")
            fin = math.isfinite
            # a target with no relevant galaxy has no defined nDCG: its bar cannot be checked
            meets = None if bar is None or not fin(sem) else sem >= bar
            out.append(
                QualityCheck(
                    target=t,
                    semantic=sem,
                    image_similarity=img,
                    semantic_rerank=rr,
                    min_ndcg_at_10=bar,
                    beats_image=(sem > img) if fin(sem) and fin(img) else None,
                    meets_bar=meets,
                    rerank_not_lower=(rr >= sem) if fin(rr) and fin(sem) else None,
                    label_ceiling=info.get("label_ceiling_ndcg@10"),
                    rerank_change_std=info.get("rerank_change_std_ndcg@10"),
                )
            )
        return out

    # ---- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "created_at": self.created_at,
            "k_list": list(self.k_list),
            "curve_k": self.curve_k,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "versions": dict(self.versions),
            "targets": self.targets,
            "summary": self.summary(),
            "scores": [s.to_dict() for s in self.scores],
            "phrasings": [s.to_dict() for s in self.phrasings],
            "quality_bar": [q.to_dict() for q in self.quality_bar()],
            "rankings": self.rankings,
            "crossmatch": self.crossmatch,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationResult:
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise EvaluationError(
                f"evaluation result schema_version {version!r}; this code "
                f"reads {SCHEMA_VERSION}: re-run the evaluation"
            )
        return cls(
            k_list=tuple(int(k) for k in d["k_list"]),
            curve_k=int(d["curve_k"]),
            n_boot=int(d["n_boot"]),
            seed=int(d["seed"]),
            targets={str(k): dict(v) for k, v in d["targets"].items()},
            scores=[Scores.from_dict(s) for s in d["scores"]],
            phrasings=[Scores.from_dict(s) for s in d.get("phrasings", [])],
            rankings={
                t: {
                    m: {"ids": list(v["ids"]), "relevance": list(v["relevance"])}
                    for m, v in per.items()
                }
                for t, per in d.get("rankings", {}).items()
            },
            versions={str(k): str(v) for k, v in d.get("versions", {}).items()},
            crossmatch=list(d.get("crossmatch", [])),
            notes=list(d.get("notes", [])),
            created_at=str(d.get("created_at", "")),
        )

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False, ensure_ascii=False)
        if path is not None:
            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> EvaluationResult:
        if isinstance(text_or_path, Path) or not str(text_or_path).lstrip().startswith("{"):
            p = Path(text_or_path)
            if not p.is_file():
                raise EvaluationError(f"evaluation result {p} does not exist")
            text = p.read_text(encoding="utf-8")
        else:
            text = str(text_or_path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"evaluation result is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


# --------------------------------------------------------------------------- evaluate
def _check_k_list(k_list: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(sorted({int(k) for k in k_list}))
    if not ks or ks[0] < 1 or any(int(k) != k for k in k_list):
        raise EvaluationError(f"k_list={list(k_list)} must hold positive integers")
    return ks


def _ranking_entry(labels: TargetLabels, ranked: np.ndarray, depth: int) -> dict[str, list]:
    head = ranked[:depth]
    return {
        "ids": labels.object_ids[head].tolist(),
        "relevance": [round(float(r), 6) for r in labels.relevance[head]],
    }


def evaluate(
    labels: EvaluationLabels,
    *,
    search_fn: SearchFn | None = None,
    rerank_fn: RerankFn | None = None,
    image_embeddings: pl.DataFrame
    | Sequence[pl.DataFrame]
    | Mapping[str, pl.DataFrame]
    | None = None,
    universe: Iterable[str] | None = None,
    targets: Sequence[str] | None = None,
    k_list: Sequence[int] = (10, 100),
    n_boot: int = 1000,
    seed: int = 0,
    n_random: int = 20,
    image_query_threshold: float = IMAGE_QUERY_THRESHOLD,
    max_image_queries: int = 200,
    min_image_queries: int = 5,
    fetch_k: int = 1000,
    rerank_depth: int = DEFAULT_K_RERANK,
    rerank_all_phrasings: bool = True,
    curve_k: int | None = None,
    versions: Mapping[str, Any] | None = None,
    captioned_ids: Iterable[str] | None = None,
) -> EvaluationResult:
    """Score every method given on every labelled target (or those named in ``targets``).

    ``search_fn(queries, k)`` returns ranked object_ids per query (one batched call, ``k =
    fetch_k``; a query whose results hold fewer than max(k_list, curve_k) labelled galaxies
    of its target is asked again, four times deeper, until they do or the search runs out;
    the result notes a list that still ran short). ``rerank_fn(query,
    ids)`` re-orders the first ``rerank_depth`` semantic results (every phrasing, or only the
    primary one with ``rerank_all_phrasings=False``). ``image_embeddings`` enables the
    image-similarity baseline. Random rankings are always scored.

    ``universe`` (the object_ids the index holds) restricts every candidate set, so that no
    method is charged for galaxies it could not return; when None and ``image_embeddings`` is
    given, the galaxies with an embedding are the universe.

    ``captioned_ids`` (the object_ids whose captions trained the aligner) adds, per target,
    the primary semantic ranking's nDCG@10 among galaxies without and with a training caption
    on equal-sized sets (:func:`~galaxy_assets.evaluation.caption_split.caption_split`), in
    ``targets[<name>]["caption_split"]``.
    """
    ks = _check_k_list(k_list)
    ck = int(curve_k or max(ks))
    depth = max(max(ks), ck)
    if fetch_k < depth:
        raise EvaluationError(f"fetch_k={fetch_k} must be at least max(k_list, curve_k)={depth}")
    if rerank_fn is not None and search_fn is None:
        raise EvaluationError("rerank_fn re-ranks semantic search results: give search_fn too")
    emb_ids: np.ndarray | None = None
    vectors: np.ndarray | None = None
    if image_embeddings is not None:
        emb_ids, vectors = embedding_matrix(image_embeddings)
    universe_ids = None if universe is None else [str(o) for o in universe]
    if universe_ids is not None:
        labels = labels.restrict(universe_ids)
    elif emb_ids is not None:
        labels = labels.restrict(emb_ids.tolist())
    names = list(labels.names) if targets is None else list(targets)
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise EvaluationError(
            f"no labels for targets {unknown}; labelled targets are {labels.names}"
        )
    notes: list[str] = []
    captioned = None if captioned_ids is None else {str(o) for o in captioned_ids}
    k_split = 10 if 10 in ks else ks[0]
    results: dict[str, list[str]] = {}
    split_rankings: dict[str, list[str]] = {}
    if search_fn is not None:
        queries = [q for n in names for q in labels[n].target.queries]
        if captioned is not None:
            # the caption split scores subsets of the galaxies, whose top k can lie deep in the
            # whole ranking: the primary phrasings rank every galaxy searched, and their first
            # fetch_k results serve the other metrics
            n_all = (
                len(universe_ids)
                if universe_ids is not None
                else (emb_ids.size if emb_ids is not None else fetch_k)
            )
            primaries = [labels[n].target.primary_query for n in names]
            split_rankings = run_search(search_fn, primaries, max(n_all, fetch_k))
            results = {q: ids[:fetch_k] for q, ids in split_rankings.items()}
        results |= run_search(search_fn, [q for q in queries if q not in results], fetch_k)
        # Unlabelled galaxies are dropped from a ranking before it is scored: where labels
        # cover a small part of the survey (a catalogue of a few per cent), fetch_k results
        # hold too few labelled ones, so those rankings are asked again, deeper.
        asked = fetch_k
        while True:
            short = [
                q for q in dict.fromkeys(queries)
                if len(results[q]) >= asked
                and any(
                    ranked_indices(results[q], labels[n].index).size
                    < min(depth, labels[n].n_candidates)
                    for n in names if q in labels[n].target.queries
                )
            ]
            if not short:
                break
            asked *= 4
            for q in short:
                if q in split_rankings:  # ranked through already
                    results[q] = split_rankings[q][:asked]
            results |= run_search(search_fn, [q for q in short if q not in split_rankings], asked)
        log.info("semantic search: %d queries, %d results each asked at most", len(results),
                 asked)

    target_info: dict[str, dict[str, Any]] = {}
    scores: list[Scores] = []
    phrasings: list[Scores] = []
    rankings: dict[str, dict[str, dict[str, list]]] = {}
    common = {"k_list": ks, "curve_k": ck, "n_boot": n_boot}
    for name in names:
        tl = labels[name]
        t = tl.target
        info = tl.summary() | {
            "queries": list(t.queries),
            "primary_query": t.primary_query,
            "min_ndcg_at_10": t.min_ndcg_at_10,
            "label_ceiling_ndcg@10": tl.label_ceiling(10),
        }
        target_info[name] = info
        if tl.n_candidates == 0:
            notes.append(f"{name}: no labelled galaxy among those searched; not scored")
            continue
        if tl.n_targets == 0:
            notes.append(
                f"{name}: no galaxy with relevance ≥ {TARGET_RELEVANCE}; recall is undefined"
            )
        rankings[name] = {}
        need = min(depth, tl.n_candidates)
        primary: dict[str, np.ndarray] = {}  # method -> the primary phrasing's ranking
        for qi, q in enumerate(t.queries if search_fn is not None else ()):
            methods = [("semantic", results[q])]
            if rerank_fn is not None and (rerank_all_phrasings or qi == 0):
                methods.append(
                    ("semantic_rerank", rerank_ranking(rerank_fn, q, results[q], rerank_depth))
                )
            for method, ids in methods:
                ranked = ranked_indices(ids, tl.index)
                note = ""
                if ranked.size < need:
                    note = (
                        f"only {ranked.size} labelled galaxies in the {len(ids)} results "
                        f"the search returned (wanted {need})"
                    )
                    notes.append(f"{name}/{method} “{q}”: {note}")
                # one seed per target: every text ranking of a target is scored on the same
                # resamples of its galaxies, so their uncertainties are comparable
                s = _score(
                    tl,
                    [ranked],
                    method=method,
                    query=q,
                    seed=_sub_seed(seed, name, "galaxies"),
                    over="galaxies",
                    note=note,
                    **common,
                )
                phrasings.append(s)
                if qi == 0:
                    scores.append(s)
                    rankings[name][method] = _ranking_entry(tl, ranked, depth)
                    primary[method] = ranked
        if captioned is not None and "semantic" in primary:
            split = caption_split(
                tl,
                ranked_indices(split_rankings[t.primary_query], tl.index),
                captioned,
                k=k_split,
                seed=_sub_seed(seed, name, "caption_split"),
            )
            info["caption_split"] = split
            if "reason" in split:
                notes.append(f"{name}: no caption split: {split['reason']}")
        if set(TEXT_METHODS) <= set(primary):
            # the re-ranking's change, on shared resamples of the galaxies (paired)
            sigma = paired_change_std(
                primary["semantic"],
                primary["semantic_rerank"],
                tl.relevance,
                10,
                n_boot,
                _sub_seed(seed, name, "rerank_change"),
            )
            if math.isfinite(sigma):
                info["rerank_change_std_ndcg@10"] = sigma
        if emb_ids is not None and vectors is not None:
            sim = image_similarity_rankings(
                tl,
                emb_ids,
                vectors,
                depth=depth,
                threshold=image_query_threshold,
                max_queries=max_image_queries,
                min_queries=min_image_queries,
                seed=_sub_seed(seed, name, "image_queries"),
            )
            info["image_queries"] = sim.selection.describe()
            if sim.rankings:
                scores.append(
                    _score(
                        tl,
                        sim.rankings,
                        method="image_similarity",
                        query=None,
                        seed=_sub_seed(seed, name, "image_similarity"),
                        over="queries",
                        excludes=sim.query_indices.tolist(),
                        note=sim.selection.describe(),
                        **common,
                    )
                )
            else:
                notes.append(f"{name}/image_similarity: {sim.selection.describe()}; not scored")
        draws = random_rankings(
            tl, n_draws=n_random, depth=depth, seed=_sub_seed(seed, name, "random")
        )
        scores.append(
            _score(
                tl,
                draws,
                method="random",
                query=None,
                seed=_sub_seed(seed, name, "random_boot"),
                over="queries",
                note=f"{n_random} random orders",
                **common,
            )
        )
    for n in notes:
        log.warning("evaluation: %s", n)
    return EvaluationResult(
        k_list=ks,
        curve_k=ck,
        n_boot=n_boot,
        seed=seed,
        targets=target_info,
        scores=scores,
        phrasings=phrasings,
        rankings=rankings,
        versions={str(k): str(v) for k, v in (versions or {}).items()},
        crossmatch=[c.to_dict() for c in labels.crossmatch],
        notes=notes,
        labels=labels,
    )


def example_ids(
    result: EvaluationResult, target: str, n: int = 16, method: str = "semantic"
) -> list[str]:
    """The object_ids whose pictures :func:`write_report` expects for ``target``'s example grid:
    the first ``n`` labelled results of ``method`` (primary phrasing), in rank order."""
    ids = result.ranking_ids(target, method)
    if ids is None:
        raise EvaluationError(
            f"the result holds no {method} ranking for {target!r}; methods "
            f"with rankings: {list(result.rankings.get(target, {}))}"
        )
    return ids[:n]


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    folder: Path
    markdown: Path
    json: Path
    plots: dict[str, Path]
    grids: dict[str, Path]
    text: str  # the Markdown itself


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _fmt_pm(b: Bootstrap | None) -> str:
    if b is None or not math.isfinite(b.value):
        return "n/a"
    if not math.isfinite(b.std):
        return f"{b.value:.3f}"
    return f"{b.value:.3f} ± {b.std:.3f}"


def _fmt_count(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def _verdict(v: bool | None) -> str:
    return "–" if v is None else ("pass" if v else "**FAIL**")


def _md_table(rows: list[dict[str, str]]) -> str:
    from galaxy_assets.tables import to_markdown

    if not rows:
        return "(none)"
    return to_markdown(pl.DataFrame(rows), max_rows=len(rows))


def _main_rows(result: EvaluationResult, scores: Sequence[Scores], *, phrasing: bool) -> list[dict]:
    ks = result.k_list
    rows = []
    for s in scores:
        row = {"target": s.target, "method": METHOD_LABELS.get(s.method, s.method)}
        if phrasing:
            row["phrasing"] = s.query or ""
        for k in ks:
            row[f"nDCG@{k}"] = _fmt_pm(s.ndcg.get(k)) if k == ks[0] else _fmt(s.ndcg_at(k))
        for k in ks:
            row[f"recall@{k}"] = _fmt(s.recall.get(k, math.nan))
        for k in ks:
            row[f"precision@{k}"] = _fmt(s.precision.get(k, math.nan))
        row[f"targets in top {ks[-1]}"] = (
            f"{_fmt_count(s.found.get(ks[-1], math.nan))} of {_fmt_count(s.n_targets)}"
        )
        if not phrasing:
            row["queries"] = str(s.n_queries)
        rows.append(row)
    return rows


def _paper_section(result: EvaluationResult) -> list[str]:
    rows = []
    for t, paper in PAPER_NDCG_AT_10.items():
        if t not in result.targets:
            continue
        for m, ref in paper.items():
            rows.append(
                {
                    "target": t,
                    "method": METHOD_LABELS[m],
                    "this run": _fmt(result.ndcg(t, m, 10)),
                    "AION-Search paper": f"{ref:.3f}",
                }
            )
    if not rows:
        return []
    return [
        "## Comparison with the AION-Search paper",
        "",
        "The paper (Koblischke et al. 2025) reports nDCG@10 of 0.941 / 0.554 / 0.180 for "
        "spirals / mergers / lenses with AION-Search, 0.992 / 0.678 / 0.290 with VLM "
        "re-ranking, and 0.643 / 0.384 / 0.015 for the best image-similarity baseline. Its "
        "labels were Galaxy Zoo DECaLS volunteer votes and lens catalogues on Legacy Survey "
        "images; here they are the labels listed above, on the survey this graph ingested (on "
        "the mock survey: simulated votes and simulated lenses). nDCG@10 depends on how many "
        "relevant galaxies the candidate set holds and how rare they are, so the figures are a "
        "sanity check on the ordering of methods and their rough size, not a like-for-like "
        "comparison.",
        "",
        _md_table(rows),
        "",
    ]


def _fmt_change(q: QualityCheck) -> str:
    d = q.semantic_rerank - q.semantic
    if not math.isfinite(d):
        return "–"
    return f"{d:+.3f}" + ("" if q.rerank_change_std is None else f" ± {q.rerank_change_std:.3f}")


def _unchecked_why(q: QualityCheck) -> str:
    """Why no criterion of ``q`` could be checked."""
    if not math.isfinite(q.semantic):
        return "no relevant galaxy: nDCG@10 undefined"
    missing = []
    if not math.isfinite(q.image_similarity):
        missing.append("image similarity not run")
    if q.min_ndcg_at_10 is None:
        missing.append("no bar set")
    if not math.isfinite(q.semantic_rerank):
        missing.append("re-ranking not run")
    return ", ".join(missing)


def _quality_verdict(checks: list[QualityCheck]) -> str:
    """The sentence under the quality-bar table; a target with nothing checkable (``passed``
    None, as in ``summary()["quality_bar"]``) is named as such, never counted as passing."""
    failed = [q for q in checks if q.passed is False]
    unchecked = [q for q in checks if q.passed is None]
    if len(unchecked) == len(checks):
        return "No target could be checked: " + "; ".join(
            f"{q.target} ({_unchecked_why(q)})" for q in unchecked
        ) + "."
    verdict = (
        ("Every checked target passes" if unchecked else "Every target passes")
        if not failed
        else "Failing: " + "; ".join(f"{q.target} ({', '.join(q.reasons())})" for q in failed)
    )
    if unchecked:
        verdict += ("; not checkable: " if not failed else ". Not checkable: ") + "; ".join(
            f"{q.target} ({_unchecked_why(q)})" for q in unchecked
        )
    return verdict + "."


def _quality_section(result: EvaluationResult) -> list[str]:
    checks = result.quality_bar()
    if not checks:
        return []
    rows = []
    for q in checks:
        rows.append(
            {
                "target": q.target,
                "semantic nDCG@10": _fmt(q.semantic),
                "image similarity": _fmt(q.image_similarity),
                "re-ranked": _fmt(q.semantic_rerank),
                "re-ranking change": _fmt_change(q),
                "bar": "–" if q.min_ndcg_at_10 is None else f"≥ {q.min_ndcg_at_10:.2f}",
                "label ceiling": "–" if q.label_ceiling is None else _fmt(q.label_ceiling),
                "beats image similarity": _verdict(q.beats_image),
                "meets bar": _verdict(q.meets_bar),
                "re-ranking does not lower": _verdict(q.rerank_not_lower),
                "target passes": _verdict(q.passed),
            }
        )
    verdict = _quality_verdict(checks)
    return [
        "## Quality bar",
        "",
        "Issue 7 asks, on the default mock survey: semantic search beats image similarity on "
        "every target; nDCG@10 ≥ 0.9 on spirals, ≥ 0.6 on mergers and ≥ 0.4 on lenses; and "
        "re-ranking does not lower any target (point estimates; – where a method was not run "
        "or no bar is set). **Re-ranking change**: re-ranked minus semantic nDCG@10, ± the "
        "standard deviation of that change over paired bootstrap resamples of the galaxies. "
        "**Label ceiling**: the nDCG@10 of ranking by the simulator's "
        "noise-free vote fractions, the best any method can expect against the drawn votes "
        "(1 for binary labels; – for catalogue labels, whose noise is unknown).",
        "",
        _md_table(rows),
        "",
        verdict,
        "",
    ]


def _caption_split_section(result: EvaluationResult) -> list[str]:
    splits = result.caption_splits()
    if not splits:
        return []
    rows = []
    for t, sp in splits.items():
        unc, cap = sp["uncaptioned"], sp["captioned"]

        def fig(side: dict[str, Any]) -> str:
            text = _fmt(side["ndcg"])
            return text if side["std"] is None else f"{text} ± {side['std']:.3f}"

        def ceiling(side: dict[str, Any]) -> str:
            return "–" if side["ceiling"] is None else _fmt(side["ceiling"])

        rows.append(
            {
                "target": t,
                "labelled without / with a training caption": (
                    f"{sp['n_uncaptioned']} / {sp['n_captioned']}"
                ),
                "galaxies per set": str(sp["size"]),
                f"nDCG@{sp['k']} without a training caption": fig(unc),
                f"nDCG@{sp['k']} with a training caption": fig(cap),
                "difference": f"{sp['difference']:+.3f}",
                "label ceiling without / with": f"{ceiling(unc)} / {ceiling(cap)}",
            }
        )
    return [
        "## Galaxies the aligner never saw",
        "",
        "The aligner trained on the caption sample's (image, caption) pairs, less the "
        "validation galaxies it held out, and the tables above search every galaxy, the "
        "captioned ones included. This table scores the same semantic ranking (primary "
        "phrasing) twice: among the labelled galaxies without a training caption (not captioned, "
        "or held out for validation: the aligner never trained on their pairs) and among those "
        "with one, on sets of equal size (the larger group subsampled, "
        "mean ± standard deviation over draws; nDCG@10 grows with the number of candidates, so "
        "sets of different sizes are not comparable). On a real survey nearly every galaxy is "
        "without a caption, so that column is the quality a user should expect; a difference "
        "well beyond the spread means part of the figure above comes from pairs the aligner "
        "remembers.",
        "",
        _md_table(rows),
        "",
    ]


_GLOSSARY = [
    "## What the numbers mean",
    "",
    "- **Relevance** of a galaxy to a target: for a vote-fraction target the fraction of Galaxy "
    "Zoo votes for the target's answers (only galaxies with at least `min_votes` votes on the "
    "question are evaluated); for a binary target 1 or 0. A **target** galaxy has relevance ≥ 0.5.",
    "- **nDCG@k**: the discounted gain of the top k results, Σ (2^r − 1)/log2(i + 1), divided by "
    "the best possible over the labelled galaxies; 1 is a perfect ranking. Unlabelled results "
    "are skipped before the cut at k. ± is the bootstrap standard deviation (over labelled "
    "galaxies for a text query, over query galaxies for image similarity, over draws for random).",
    "- **recall@k**: targets in the top k over all targets; **precision@k**: targets in the top "
    "k over k; **targets in top k**: the count (a mean over queries for image similarity and "
    "random).",
    "- **Image similarity**: each confident member of the target (vote fraction > 0.9, or every "
    "positive) ranks the other galaxies by cosine similarity of raw image-encoder embeddings, "
    "itself excluded (and left out of its ideal ranking); figures are averaged over queries.",
    "- Text methods' target-level rows use the target's primary phrasing; the phrasing table "
    "shows every phrasing.",
    "",
]


def _ndcg_figure(result: EvaluationResult, k: int):
    from matplotlib.figure import Figure

    targets = [t for t in result.targets if any(s.target == t for s in result.scores)]
    methods = result.methods
    fig = Figure(figsize=(max(6.0, 1.3 * len(targets) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colours = {
        "semantic": "tab:blue",
        "semantic_rerank": "tab:purple",
        "image_similarity": "tab:orange",
        "random": "tab:gray",
    }
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(targets))
    for j, m in enumerate(methods):
        vals, errs = [], []
        for t in targets:
            s = result.score(t, m)
            vals.append(s.ndcg_at(k) if s else math.nan)
            errs.append(s.ndcg_std(k) if s else math.nan)
        v = np.nan_to_num(np.array(vals), nan=0.0)
        e = np.nan_to_num(np.array(errs), nan=0.0)
        ax.bar(
            x + (j - (len(methods) - 1) / 2) * width,
            v,
            width,
            yerr=e,
            capsize=2,
            label=METHOD_LABELS.get(m, m),
            color=colours.get(m),
        )
        if m in ("semantic", "semantic_rerank", "image_similarity") and k == 10:
            px = [i for i, t in enumerate(targets) if m in PAPER_NDCG_AT_10.get(t, {})]
            if px:
                py = [PAPER_NDCG_AT_10[targets[i]][m] for i in px]
                ax.scatter(
                    np.array(px) + (j - (len(methods) - 1) / 2) * width,
                    py,
                    marker="_",
                    s=250,
                    color="black",
                    zorder=3,
                    label="AION-Search paper" if m == "semantic" else None,
                )
    ax.set_xticks(x, targets)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"nDCG@{k}")
    ax.set_title(f"nDCG@{k} per target and method (± bootstrap σ)")
    ax.legend(fontsize=8, ncols=2)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _curve_figure(result: EvaluationResult):
    from matplotlib.figure import Figure

    targets = [t for t in result.targets if any(s.target == t for s in result.scores)]
    ncols = min(3, max(1, len(targets)))
    nrows = -(-len(targets) // ncols) if targets else 1
    fig = Figure(figsize=(4.0 * ncols, 3.2 * nrows), layout="constrained")
    colours = {
        "semantic": "tab:blue",
        "semantic_rerank": "tab:purple",
        "image_similarity": "tab:orange",
        "random": "tab:gray",
    }
    ks = np.arange(1, result.curve_k + 1)
    for i, t in enumerate(targets):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        n_t = result.targets[t].get("n_targets", 0) or 0
        ax.plot(ks, np.minimum(ks, n_t), color="black", ls=":", lw=1, label="ideal")
        for m in result.methods:
            s = result.score(t, m)
            if s is None or not s.curve:
                continue
            ax.plot(
                ks[: len(s.curve)],
                s.curve,
                color=colours.get(m),
                lw=1.5,
                ls="--" if m == "semantic_rerank" else "-",
                label=METHOD_LABELS.get(m, m),
            )
        ax.set_title(f"{t} ({n_t} targets)", fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylabel("targets in top k")
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return fig


def write_report(
    result: EvaluationResult,
    folder: str | Path,
    example_grids: Mapping[str, Sequence[np.ndarray]] | None = None,
    *,
    grid_method: str = "semantic",
    title: str = "Search evaluation",
    extra_sections: Sequence[str] = (),
) -> ReportFiles:
    """Write ``report.md``, ``evaluation.json`` and the plots into ``folder``.

    Plots: ``ndcg_at_<k>.png`` (grouped bars per target and method with bootstrap error bars
    and the paper's values) and ``targets_in_top_k.png`` (one panel per target). With
    ``example_grids`` (target → pictures of :func:`example_ids`, in that order, rendered by the
    caller), ``grids/<target>.png`` contact sheets labelled with rank and relevance.
    ``extra_sections`` (Markdown) are appended, e.g. the champion gate's decision.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    k0 = result.k_list[0]
    plots: dict[str, Path] = {}
    if result.scores:
        p = out / f"ndcg_at_{k0}.png"
        _ndcg_figure(result, k0).savefig(p, dpi=100)
        plots["ndcg"] = p
        p = out / "targets_in_top_k.png"
        _curve_figure(result).savefig(p, dpi=90)
        plots["targets_in_top_k"] = p
    grids: dict[str, Path] = {}
    for target, pictures in (example_grids or {}).items():
        if not len(pictures):
            continue
        from galaxy_assets.survey.rgb import contact_sheet

        entry = result.rankings.get(target, {}).get(grid_method)
        labels = None
        if entry is not None and len(pictures) <= len(entry["ids"]):
            labels = [f"#{i + 1} r={entry['relevance'][i]:.2f}" for i in range(len(pictures))]
        query = result.targets.get(target, {}).get("primary_query", "")
        path = out / "grids" / f"{target}.png"
        contact_sheet(
            list(pictures),
            labels,
            ncols=min(8, len(pictures)),
            path=path,
            title=f"{target}: “{query}” ({METHOD_LABELS.get(grid_method, grid_method)})",
            label_lines=1,
        )
        grids[target] = path

    lines = [f"# {title}", "", f"Created {result.created_at}.", ""]
    if result.versions:
        lines += [
            "## Versions read",
            "",
            _md_table([{"what": k, "version": v} for k, v in result.versions.items()]),
            "",
        ]
    lines += ["## Labels", ""]
    lab_rows = [
        {
            "target": t,
            "kind": i.get("kind", ""),
            "relevance": i.get("definition", ""),
            "source": i.get("source", ""),
            "labelled": str(i.get("n_candidates", "")),
            "targets (r ≥ 0.5)": str(i.get("n_targets", "")),
            "left out": str(i.get("n_excluded", "")),
            "primary query": f"“{i.get('primary_query', '')}”",
        }
        for t, i in result.targets.items()
    ]
    lines += [_md_table(lab_rows), ""]
    if result.crossmatch:
        lines += ["Catalogue matches:", ""]
        lines += [f"- {CrossmatchReport.from_dict(c).describe()}" for c in result.crossmatch]
        lines += [""]
    imgq = [(t, i["image_queries"]) for t, i in result.targets.items() if "image_queries" in i]
    if imgq:
        lines += ["Image-similarity queries: " + "; ".join(f"{t}: {d}" for t, d in imgq) + ".", ""]
    lines += ["## Results", "", _md_table(_main_rows(result, result.scores, phrasing=False)), ""]
    if "ndcg" in plots:
        lines += [
            f"![nDCG@{k0} per target and method]({plots['ndcg'].name})",
            "",
            f"![targets in the top k]({plots['targets_in_top_k'].name})",
            "",
        ]
    lines += _quality_section(result)
    lines += _caption_split_section(result)
    lines += _paper_section(result)
    if result.phrasings:
        lines += [
            "## Sensitivity to the query's wording",
            "",
            "Every phrasing of every target, text methods only.",
            "",
            _md_table(_main_rows(result, result.phrasings, phrasing=True)),
            "",
        ]
    if grids:
        lines += ["## Example results", ""]
        lines += [f"![{t}](grids/{p.name})" for t, p in grids.items()]
        lines += [""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    lines += _GLOSSARY
    for section in extra_sections:
        lines += [section.rstrip(), ""]
    text = "\n".join(lines)
    md = out / "report.md"
    md.write_text(text, encoding="utf-8")
    js = out / "evaluation.json"
    result.to_json(js)
    log.info("evaluation report written to %s", md)
    return ReportFiles(out, md, js, plots, grids, text)
