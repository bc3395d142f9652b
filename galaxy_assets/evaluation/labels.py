"""Evaluation targets and the labels that grade search results against them.

A **target** (:class:`Target`, loaded from ``targets.yaml`` or a user's file) is something a
reader searches for, with several phrasings of the query and a rule that gives every labelled
galaxy a relevance in [0, 1]:

* ``vote_fraction``: graded relevance = the fraction of Galaxy Zoo votes for the target's answers
  to its question, e.g. spirals = ``has-spiral-arms_yes / has-spiral-arms_total-votes`` and
  mergers = ``(merging_merger + merging_major-disturbance) / merging_total-votes`` (the AION-Search
  paper graded spirals and mergers by vote fraction). Only galaxies with at least ``min_votes``
  votes on the question (3 by default, as the paper) are labelled; the others are left out of the
  target's candidate set, so no method is rewarded or punished for them.
* ``binary``: relevance 1 for a positive (the truth table's flag, or a row of a lens catalogue),
  0 for every other galaxy; every galaxy is labelled.

Labels come from the mock survey's truth tables (:func:`labels_from_truth`,
:func:`load_truth_labels`) or from user catalogues matched to the survey manifest
(:func:`labels_from_vote_catalogue`, :func:`labels_from_lens_catalogue`): by object_id, or by
position within a radius (1" by default) with astropy, the nearest survey galaxy for each row; a
survey galaxy claimed by several rows keeps the nearest row. Each match is summarised in a
:class:`CrossmatchReport` (rows matched, unmatched, survey galaxies matched twice).

Plain Python + polars + astropy; knows nothing of Dagster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import yaml

from galaxy_assets.evaluation.errors import (
    CatalogueError,
    EvaluationError,
    NoTruthTableError,
    TargetConfigError,
)
from galaxy_assets.evaluation.metrics import TARGET_RELEVANCE

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MATCH_RADIUS_ARCSEC",
    "DEFAULT_MIN_VOTES",
    "CrossmatchReport",
    "EvaluationLabels",
    "Target",
    "TargetLabels",
    "crossmatch",
    "default_targets",
    "labels_from_lens_catalogue",
    "labels_from_truth",
    "labels_from_vote_catalogue",
    "load_targets",
    "load_truth_labels",
    "match_by_id",
    "read_catalogue",
    "targets_from_dict",
    "vote_relevance",
]

DEFAULT_MIN_VOTES = 3
DEFAULT_MATCH_RADIUS_ARCSEC = 1.0
KINDS = ("vote_fraction", "binary")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_TARGETS_RESOURCE = "targets.yaml"


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """One evaluation target: its relevance rule and its query phrasings (primary first)."""

    name: str
    kind: Literal["vote_fraction", "binary"]
    queries: tuple[str, ...]
    question: str | None = None  # vote_fraction: the Galaxy Zoo question
    answers: tuple[str, ...] = ()  # vote_fraction: the answers that count for the target
    flag: str | None = None  # binary: the truth-table flag column
    min_votes: int = DEFAULT_MIN_VOTES  # vote_fraction: votes on the question needed
    min_ndcg_at_10: float | None = None  # quality bar the report checks, if any
    description: str = ""

    @property
    def primary_query(self) -> str:
        return self.queries[0]

    @property
    def answer_columns(self) -> tuple[str, ...]:
        return tuple(f"{self.question}_{a}" for a in self.answers)

    @property
    def total_column(self) -> str:
        return f"{self.question}_total-votes"

    @property
    def definition(self) -> str:
        """A one-line statement of the relevance rule, for reports."""
        if self.kind == "binary":
            return f"binary: {self.flag} (or a catalogue row)"
        num = " + ".join(self.answer_columns)
        return f"({num}) / {self.total_column}, ≥ {self.min_votes} votes"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "vote_fraction":
            out.update(question=self.question, answers=list(self.answers), min_votes=self.min_votes)
        else:
            out["flag"] = self.flag
        if self.min_ndcg_at_10 is not None:
            out["min_ndcg_at_10"] = self.min_ndcg_at_10
        if self.description:
            out["description"] = self.description
        out["queries"] = list(self.queries)
        return out


def _target_from_dict(raw: Any, i: int, source: str) -> Target:
    where = f"{source}: targets[{i}]"
    if not isinstance(raw, Mapping):
        raise TargetConfigError(
            f"{where} is a {type(raw).__name__}; expected a mapping with "
            "name, kind, queries and the label definition"
        )
    known = {
        "name",
        "kind",
        "queries",
        "question",
        "answers",
        "flag",
        "min_votes",
        "min_ndcg_at_10",
        "description",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TargetConfigError(
            f"{where}: unknown keys {unknown}; allowed keys are {sorted(known)}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TargetConfigError(
            f"{where}: name {name!r} must be a lower-case word of letters, digits, '_' or '-' "
            "(it names report files and JSON keys)"
        )
    where = f"{source}: target {name!r}"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise TargetConfigError(f"{where}: kind {kind!r}; expected one of {list(KINDS)}")
    queries = raw.get("queries")
    if isinstance(queries, str):
        queries = [queries]
    if (
        not isinstance(queries, list)
        or not queries
        or not all(isinstance(q, str) and q.strip() for q in queries)
    ):
        raise TargetConfigError(
            f"{where}: queries must be a non-empty list of non-empty strings "
            "(the first is the primary phrasing)"
        )
    queries = [q.strip() for q in queries]
    if len(set(queries)) != len(queries):
        raise TargetConfigError(f"{where}: a query phrasing is repeated in {queries}")
    bar = raw.get("min_ndcg_at_10")
    if bar is not None:
        if isinstance(bar, bool) or not isinstance(bar, int | float) or not 0.0 <= bar <= 1.0:
            raise TargetConfigError(f"{where}: min_ndcg_at_10={bar!r} must be a number in [0, 1]")
        bar = float(bar)
    description = str(raw.get("description") or "")
    if kind == "binary":
        flag = raw.get("flag")
        if not isinstance(flag, str) or not flag:
            raise TargetConfigError(
                f"{where}: a binary target needs flag: <truth-table column> (e.g. is_lens)"
            )
        for key in ("question", "answers"):
            if raw.get(key) is not None:
                raise TargetConfigError(
                    f"{where}: {key!r} belongs to vote_fraction targets; a "
                    "binary target has a flag only"
                )
        return Target(
            name=name,
            kind="binary",
            queries=tuple(queries),
            flag=flag,
            min_votes=0,
            min_ndcg_at_10=bar,
            description=description,
        )
    question = raw.get("question")
    answers = raw.get("answers")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(question, str) or not question:
        raise TargetConfigError(
            f"{where}: a vote_fraction target needs question: <Galaxy Zoo "
            "question> (e.g. has-spiral-arms)"
        )
    if (
        not isinstance(answers, list)
        or not answers
        or not all(isinstance(a, str | int | bool) for a in answers)
    ):
        raise TargetConfigError(
            f"{where}: answers must be a non-empty list of the question's "
            'answers (e.g. ["yes"]; quote yes/no in YAML)'
        )
    answers = [_answer_name(a) for a in answers]
    if len(set(answers)) != len(answers):
        raise TargetConfigError(f"{where}: an answer is repeated in {answers}")
    if raw.get("flag") is not None:
        raise TargetConfigError(f"{where}: 'flag' belongs to binary targets")
    min_votes = raw.get("min_votes", DEFAULT_MIN_VOTES)
    if isinstance(min_votes, bool) or not isinstance(min_votes, int) or min_votes < 1:
        raise TargetConfigError(f"{where}: min_votes={min_votes!r} must be an integer ≥ 1")
    _check_against_tree(question, answers, where)
    return Target(
        name=name,
        kind="vote_fraction",
        queries=tuple(queries),
        question=question,
        answers=tuple(answers),
        min_votes=min_votes,
        min_ndcg_at_10=bar,
        description=description,
    )


def _answer_name(a: str | int | bool) -> str:
    # YAML 1.1 reads an unquoted yes/no as a boolean
    if isinstance(a, bool):
        return "yes" if a else "no"
    return str(a)


def _check_against_tree(question: str, answers: Sequence[str], where: str) -> None:
    """Answers of a question of the Galaxy Zoo DECaLS tree must be that question's answers;
    a question outside the tree is allowed (a catalogue from another tree) with a warning."""
    from galaxy_assets.morphology.decision_tree import default_tree

    tree = default_tree()
    if question not in tree:
        log.warning(
            "%s: question %r is not in the %s decision tree; labels need the columns "
            "%s_<answer> and %s_total-votes",
            where,
            question,
            tree.name,
            question,
            question,
        )
        return
    valid = tree[question].answers
    bad = [a for a in answers if a not in valid]
    if bad:
        raise TargetConfigError(
            f"{where}: {bad} are not answers of {question!r}; its answers are {list(valid)}"
        )


def targets_from_dict(data: Any, source: str = "<dict>") -> dict[str, Target]:
    """Targets from a parsed targets file (``{"targets": [...]}``), in file order."""
    if not isinstance(data, Mapping) or "targets" not in data:
        raise TargetConfigError(f"{source}: expected a mapping with a 'targets' list at the top")
    version = data.get("version", 1)
    if version != 1:
        raise TargetConfigError(f"{source}: version {version!r}; this code reads version 1")
    raw = data["targets"]
    if not isinstance(raw, list) or not raw:
        raise TargetConfigError(f"{source}: 'targets' must be a non-empty list")
    out: dict[str, Target] = {}
    for i, item in enumerate(raw):
        t = _target_from_dict(item, i, source)
        if t.name in out:
            raise TargetConfigError(f"{source}: target name {t.name!r} appears twice")
        out[t.name] = t
    return out


def load_targets(path: str | Path | None = None) -> dict[str, Target]:
    """Targets from a YAML file, or the package's ``targets.yaml`` when ``path`` is None."""
    if path is None:
        text = (
            resources.files("galaxy_assets.evaluation")
            .joinpath(_TARGETS_RESOURCE)
            .read_text(encoding="utf-8")
        )
        source = f"galaxy_assets/evaluation/{_TARGETS_RESOURCE}"
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise TargetConfigError(
                f"targets file {p} does not exist; pass the path of a YAML "
                "file laid out like galaxy_assets/evaluation/targets.yaml"
            )
        text = p.read_text(encoding="utf-8")
        source = str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TargetConfigError(f"{source} is not valid YAML: {exc}") from exc
    return targets_from_dict(data, source)


def default_targets() -> dict[str, Target]:
    """The package's default targets: spirals, mergers, lenses, edge-on discs, rings, bars."""
    return load_targets(None)


def _as_target_map(targets: Mapping[str, Target] | Sequence[Target] | None) -> dict[str, Target]:
    if targets is None:
        return default_targets()
    if isinstance(targets, Mapping):
        return dict(targets)
    return {t.name: t for t in targets}


# --------------------------------------------------------------------------- labels
@dataclass
class TargetLabels:
    """One target's candidate set (labelled galaxies) and their relevances."""

    target: Target
    object_ids: np.ndarray  # str, unique
    relevance: np.ndarray  # float64 in [0, 1], aligned with object_ids
    source: str
    n_excluded: int = 0  # galaxies left out (too few votes, unknown flag)
    # the expected relevance of each galaxy where a simulator knows it (the mock's noise-free
    # vote fractions), else None: ranking by it gives the labels' ceiling (label_ceiling)
    expected: np.ndarray | None = field(default=None, repr=False, compare=False)
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.object_ids = np.asarray(self.object_ids).astype(str)
        self.relevance = np.asarray(self.relevance, dtype=np.float64)
        if self.object_ids.shape != self.relevance.shape or self.object_ids.ndim != 1:
            raise EvaluationError(
                f"labels of {self.target.name!r}: {self.object_ids.shape} ids but "
                f"{self.relevance.shape} relevances"
            )
        if self.relevance.size and (
            not np.isfinite(self.relevance).all()
            or self.relevance.min() < 0.0
            or self.relevance.max() > 1.0
        ):
            raise EvaluationError(
                f"labels of {self.target.name!r} ({self.source}): relevances must lie in [0, 1]"
            )
        if self.expected is not None:
            self.expected = np.asarray(self.expected, dtype=np.float64)
            if self.expected.shape != self.relevance.shape:
                raise EvaluationError(
                    f"labels of {self.target.name!r}: {self.expected.shape} expected relevances "
                    f"for {self.relevance.shape} galaxies"
                )
        self.index = {oid: j for j, oid in enumerate(self.object_ids.tolist())}
        if len(self.index) != self.object_ids.size:
            raise EvaluationError(
                f"labels of {self.target.name!r} ({self.source}) list an object_id twice"
            )

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def n_candidates(self) -> int:
        return int(self.object_ids.size)

    @property
    def n_targets(self) -> int:
        """Galaxies with relevance ≥ 0.5 (binary positives; graded: most votes for the class)."""
        return int((self.relevance >= TARGET_RELEVANCE).sum())

    @property
    def fingerprint(self) -> str:
        """A short hash of (object_id, relevance) pairs: equal labels, equal fingerprints."""
        order = np.argsort(self.object_ids, kind="stable")
        h = hashlib.sha256()
        h.update(self.target.name.encode())
        for oid, r in zip(
            self.object_ids[order].tolist(), self.relevance[order].tolist(), strict=True
        ):
            h.update(f"{oid}\t{r:.6f}\n".encode())
        return h.hexdigest()[:16]

    def as_mapping(self) -> dict[str, float]:
        return dict(zip(self.object_ids.tolist(), self.relevance.tolist(), strict=True))

    def restrict(self, object_ids: Iterable[str]) -> TargetLabels:
        """The labels of the candidates among ``object_ids`` (e.g. the galaxies in the index)."""
        keep_ids = {str(o) for o in object_ids}
        keep = np.fromiter(
            (o in keep_ids for o in self.object_ids.tolist()),
            dtype=bool,
            count=self.object_ids.size,
        )
        return TargetLabels(
            self.target,
            self.object_ids[keep],
            self.relevance[keep],
            self.source,
            self.n_excluded,
            None if self.expected is None else self.expected[keep],
        )

    def label_ceiling(self, k: int = 10) -> float | None:
        """nDCG@k of the ranking by :attr:`expected` (ties by object_id): the best a method can
        expect against these noisy labels; 1 for binary labels, None where unknown."""
        from galaxy_assets.evaluation.metrics import ndcg_at_k

        if self.target.kind == "binary":
            return 1.0 if self.n_targets else None
        if self.expected is None or self.n_candidates == 0:
            return None
        order = np.lexsort((self.object_ids, -self.expected))
        value = ndcg_at_k(self.object_ids[order].tolist(), self.as_mapping(), k)
        # undefined (NaN) when no galaxy is relevant at all: no ceiling to state
        return float(value) if value is not None and np.isfinite(value) else None

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {"object_id": self.object_ids.tolist(), "relevance": self.relevance.tolist()},
            schema={"object_id": pl.Utf8, "relevance": pl.Float64},
        )

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.name,
            "kind": self.target.kind,
            "definition": self.target.definition,
            "source": self.source,
            "n_candidates": self.n_candidates,
            "n_targets": self.n_targets,
            "n_excluded": self.n_excluded,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class CrossmatchReport:
    """How a user catalogue met the survey manifest."""

    source: str
    method: str  # "position" or "object_id"
    radius_arcsec: float | None
    n_rows: int
    n_matched: int  # rows that kept a survey galaxy
    n_unmatched: int  # rows with no survey galaxy within the radius (or an unknown id)
    n_bad_coordinates: int  # rows without finite ra/dec (counted in n_unmatched too)
    n_matched_twice: int  # survey galaxies claimed by two or more rows
    n_dropped_doubles: int  # rows dropped because a nearer row claimed the same galaxy
    # lens catalogues: rows left out before matching, their grade not a lens grade (counted
    # in n_rows, not in the other counts)
    n_other_grade: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "method": self.method,
            "radius_arcsec": self.radius_arcsec,
            "n_rows": self.n_rows,
            "n_matched": self.n_matched,
            "n_unmatched": self.n_unmatched,
            "n_bad_coordinates": self.n_bad_coordinates,
            "n_matched_twice": self.n_matched_twice,
            "n_dropped_doubles": self.n_dropped_doubles,
            "n_other_grade": self.n_other_grade,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrossmatchReport:
        radius = data.get("radius_arcsec")
        return cls(
            source=str(data["source"]),
            method=str(data["method"]),
            radius_arcsec=None if radius is None else float(radius),
            n_rows=int(data["n_rows"]),
            n_matched=int(data["n_matched"]),
            n_unmatched=int(data["n_unmatched"]),
            n_bad_coordinates=int(data.get("n_bad_coordinates", 0)),
            n_matched_twice=int(data["n_matched_twice"]),
            n_dropped_doubles=int(data.get("n_dropped_doubles", 0)),
            n_other_grade=int(data.get("n_other_grade", 0)),
        )

    def describe(self) -> str:
        how = f'within {self.radius_arcsec:g}"' if self.method == "position" else "by object_id"
        text = (
            f"{self.source}: {self.n_rows} rows, {self.n_matched} matched {how}, "
            f"{self.n_unmatched} unmatched"
        )
        if self.n_bad_coordinates:
            text += f" ({self.n_bad_coordinates} without valid coordinates)"
        if self.n_other_grade:
            text += f", {self.n_other_grade} not matched for their grade (not a lens grade)"
        text += f"; {self.n_matched_twice} survey galaxies matched twice"
        if self.n_dropped_doubles:
            keep = "the nearest row kept" if self.method == "position" else "the first row kept"
            text += f" ({keep}, {self.n_dropped_doubles} rows dropped)"
        return text


@dataclass
class EvaluationLabels:
    """The labels of every target, keyed by target name, and how catalogues were matched."""

    targets: dict[str, TargetLabels]
    crossmatch: list[CrossmatchReport] = field(default_factory=list)

    def __getitem__(self, name: str) -> TargetLabels:
        try:
            return self.targets[name]
        except KeyError:
            raise EvaluationError(
                f"no labels for target {name!r}; labelled targets are {list(self.targets)}"
            ) from None

    def __iter__(self) -> Iterator[TargetLabels]:
        return iter(self.targets.values())

    def __len__(self) -> int:
        return len(self.targets)

    def __contains__(self, name: object) -> bool:
        return name in self.targets

    @property
    def names(self) -> list[str]:
        return list(self.targets)

    def restrict(self, object_ids: Iterable[str]) -> EvaluationLabels:
        """Every target's labels restricted to ``object_ids`` (the galaxies a method can return)."""
        ids = {str(o) for o in object_ids}
        return EvaluationLabels(
            {n: t.restrict(ids) for n, t in self.targets.items()}, list(self.crossmatch)
        )

    def merged(self, other: EvaluationLabels) -> EvaluationLabels:
        """These labels with ``other``'s targets added; a target in both takes ``other``'s
        labels (e.g. a real lens catalogue replacing the mock truth)."""
        return EvaluationLabels(
            {**self.targets, **other.targets}, [*self.crossmatch, *other.crossmatch]
        )

    def summary_frame(self) -> pl.DataFrame:
        rows = [t.summary() for t in self.targets.values()]
        return pl.DataFrame(rows) if rows else pl.DataFrame()


# --------------------------------------------------------------------------- votes → relevance
def vote_relevance(
    frame: pl.DataFrame, target: Target, *, source: str = "<frame>"
) -> tuple[pl.DataFrame, int]:
    """``(object_id, relevance)`` rows of ``frame`` with at least ``target.min_votes`` votes on
    the target's question, and the number of rows left out (too few votes, or bad counts).

    The total is ``<question>_total-votes``; when that column is missing it is the sum of the
    question's answer columns in the Galaxy Zoo DECaLS tree (all must then be present). Missing
    counts (null or NaN) count as no votes, so a row with a missing total is left out. A row with
    a negative count or more votes for the answers than its total is bad input for that galaxy:
    it is logged and left out, and only when every row with votes is bad (counts that are really
    fractions, or the wrong columns) is the whole table refused.
    """
    if target.kind != "vote_fraction":
        raise EvaluationError(
            f"target {target.name!r} is {target.kind}; vote_relevance needs a vote_fraction target"
        )
    missing = [c for c in target.answer_columns if c not in frame.columns]
    if missing:
        raise CatalogueError(
            f"{source} lacks the vote-count columns {missing} that target {target.name!r} needs "
            f"(columns <question>_<answer> holding counts; its columns start {frame.columns[:8]})"
        )
    total_expr = _total_expr(frame, target, source)
    votes = pl.sum_horizontal(
        [pl.col(c).cast(pl.Float64).fill_nan(None).fill_null(0.0) for c in target.answer_columns]
    )
    try:
        counted = frame.select(
            pl.col("object_id").cast(pl.Utf8),
            votes.alias("_votes"),
            total_expr.cast(pl.Float64).fill_nan(None).alias("_total"),  # null: unknown
        )
    except pl.exceptions.PolarsError as exc:
        raise CatalogueError(
            f"{source}: the vote columns of target {target.name!r} "
            f"({[*target.answer_columns, target.total_column]}) must be numbers: {exc}"
        ) from exc
    bad_expr = (
        (pl.col("_votes") < 0)
        | (pl.col("_total") < 0)
        | ~pl.col("_votes").is_finite()
        | ~pl.col("_total").is_finite()
        | (pl.col("_votes") > pl.col("_total") + 1e-6)
    )
    bad = counted.filter(bad_expr)  # a null total is not bad, only unknown (left out below)
    good = counted.filter(~bad_expr)
    if bad.height:
        where = (
            f"{source}: {bad.height} of {counted.height} rows have negative or infinite vote "
            f"counts, or more votes for {list(target.answers)} than {target.total_column} "
            f"(e.g. object_id {bad['object_id'][0]!r})"
        )
        if good.filter(pl.col("_total") > 0).is_empty():
            raise CatalogueError(
                f"{where}, and no other row has votes; vote columns must hold counts, not fractions"
            )
        log.warning("%s; those galaxies are left out of target %r", where, target.name)
    enough = good.filter(pl.col("_total") >= target.min_votes)
    out = enough.select("object_id", (pl.col("_votes") / pl.col("_total")).alias("relevance"))
    return out, counted.height - enough.height


def _total_expr(frame: pl.DataFrame, target: Target, source: str) -> pl.Expr:
    if target.total_column in frame.columns:
        return pl.col(target.total_column)
    from galaxy_assets.morphology.decision_tree import default_tree

    tree = default_tree()
    if target.question in tree:
        cols = list(tree[target.question].columns)
        if all(c in frame.columns for c in cols):
            return pl.sum_horizontal([pl.col(c).cast(pl.Float64).fill_null(0.0) for c in cols])
    raise CatalogueError(
        f"{source} lacks {target.total_column!r} (the votes cast on "
        f"{target.question!r}), needed by target {target.name!r}, and not all of "
        "the question's answer columns are there to add it up"
    )


def _dedupe(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    n = frame.height
    frame = frame.unique(subset="object_id", keep="first", maintain_order=True)
    if frame.height < n:
        log.warning("%s: %d repeated object_ids dropped (first row kept)", source, n - frame.height)
    return frame


def labels_from_truth(
    truth: pl.DataFrame,
    targets: Mapping[str, Target] | Sequence[Target] | None = None,
    *,
    manifest: pl.DataFrame | None = None,
    source: str = "mock truth tables",
) -> EvaluationLabels:
    """Labels of every target from a truth frame (:func:`galaxy_assets.survey.truth.load_truth`):
    vote fractions from its Galaxy Zoo vote counts, binary targets from its class flags.

    With ``manifest``, only its galaxies are labelled (the galaxies the graph ingested).
    """
    tmap = _as_target_map(targets)
    if "object_id" not in truth.columns:
        raise EvaluationError(
            f"{source} has no object_id column; columns start {truth.columns[:8]}"
        )
    truth = _dedupe(truth.with_columns(pl.col("object_id").cast(pl.Utf8)), source)
    if manifest is not None:
        if "object_id" not in manifest.columns:
            raise EvaluationError("the manifest has no object_id column")
        ids = manifest["object_id"].cast(pl.Utf8)
        truth = truth.filter(pl.col("object_id").is_in(ids.implode()))
        if truth.height < ids.n_unique():
            log.warning(
                "%s: %d manifest galaxies have no truth row", source, ids.n_unique() - truth.height
            )
    out: dict[str, TargetLabels] = {}
    for t in tmap.values():
        expected = None
        if t.kind == "vote_fraction":
            frame, n_ex = vote_relevance(truth, t, source=source)
            expected = _expected_relevance(truth, frame, t)
        else:
            if t.flag not in truth.columns:
                raise EvaluationError(
                    f"{source} has no column {t.flag!r} for binary target "
                    f"{t.name!r}; set the target's flag to one of the truth "
                    "table's boolean columns (e.g. is_lens, has_ring)"
                )
            flag = truth[t.flag]
            known = truth.filter(flag.is_not_null())
            n_ex = truth.height - known.height
            frame = known.select("object_id", pl.col(t.flag).cast(pl.Float64).alias("relevance"))
        out[t.name] = TargetLabels(
            t,
            frame["object_id"].to_numpy(),
            frame["relevance"].to_numpy(),
            source,
            n_ex,
            expected,
        )
        log.info(
            "labels %s from %s: %d candidates, %d targets, %d left out",
            t.name,
            source,
            out[t.name].n_candidates,
            out[t.name].n_targets,
            n_ex,
        )
    return EvaluationLabels(out)


def _expected_relevance(
    truth: pl.DataFrame, frame: pl.DataFrame, target: Target
) -> np.ndarray | None:
    """The mock's expected vote fractions for ``frame``'s galaxies (in its order) when the truth
    table holds the simulator's visibility scores; None for any other table."""
    if not any(c.endswith("_visibility") for c in truth.columns):
        return None
    from galaxy_assets.survey.mock_votes import expected_vote_fraction

    rows = frame.select("object_id").join(truth, on="object_id", how="left", maintain_order="left")
    try:
        return expected_vote_fraction(rows.iter_rows(named=True), target.question, target.answers)
    except Exception as exc:  # noqa: BLE001 - the ceiling is a reading aid, never a blocker
        log.warning("no label ceiling for %s: %s", target.name, exc)
        return None


def load_truth_labels(
    shard_uris: Iterable[str | Path],
    targets: Mapping[str, Target] | Sequence[Target] | None = None,
    *,
    manifest: pl.DataFrame | None = None,
) -> EvaluationLabels:
    """Labels from the truth tables beside the given mock-survey shards."""
    from galaxy_assets.survey.truth import load_truth

    uris = list(shard_uris)
    truth = load_truth(uris)
    if truth is None:
        raise NoTruthTableError(
            f"none of the {len(uris)} shards has a truth table (<shard>.truth.parquet): a real "
            "survey has none; give Galaxy Zoo vote and lens catalogues instead "
            "(labels_from_vote_catalogue, labels_from_lens_catalogue)"
        )
    return labels_from_truth(truth, targets, manifest=manifest)


# --------------------------------------------------------------------------- catalogues
def read_catalogue(path: str | Path) -> pl.DataFrame:
    """A user catalogue from ``.parquet``, ``.csv`` or FITS (``.fits``, ``.fit``, ``.fits.gz``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CatalogueError(
            f"catalogue {p} does not exist; give the path of a Parquet, CSV or FITS table"
        )
    name = p.name.lower()
    try:
        if name.endswith(".parquet"):
            return pl.read_parquet(p)
        if name.endswith(".csv"):
            return pl.read_csv(p, infer_schema_length=10000)
        if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
            from astropy.table import Table

            return pl.from_pandas(Table.read(p).to_pandas())
    except Exception as exc:
        raise CatalogueError(f"catalogue {p} cannot be read: {exc}") from exc
    raise CatalogueError(f"catalogue {p}: unknown format; use .parquet, .csv or .fits")


def _as_frame(catalogue: pl.DataFrame | str | Path) -> tuple[pl.DataFrame, str]:
    if isinstance(catalogue, pl.DataFrame):
        return catalogue, "<catalogue frame>"
    return read_catalogue(catalogue), str(catalogue)


def _require_manifest(manifest: pl.DataFrame, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in manifest.columns]
    if missing:
        raise CatalogueError(
            f"the survey manifest lacks {missing}; pass raw_cutouts' manifest (object_id, ra, dec)"
        )
    if manifest.height == 0:
        raise CatalogueError("the survey manifest is empty: nothing to match a catalogue to")


def _degrees(frame: pl.DataFrame, column: str, source: str) -> np.ndarray:
    """``frame[column]`` as float degrees (null → NaN); a CatalogueError for text such as
    sexagesimal coordinates."""
    raw = frame[column]
    values = raw.cast(pl.Float64, strict=False)
    failed = raw.is_not_null() & values.is_null()
    if failed.any():
        bad = raw.filter(failed)
        if failed.sum() == raw.is_not_null().sum():  # nothing parses: a format, not a typo
            raise CatalogueError(
                f"{source}: column {column!r} ({raw.dtype}) must hold decimal degrees (e.g. "
                f"{bad[0]!r} is not); convert sexagesimal coordinates first, e.g. with "
                "astropy.coordinates.SkyCoord"
            )
        # a placeholder such as '--' in a few rows: those rows have no position (counted and
        # left unmatched), the rest are read
        log.warning(
            "%s: %d value(s) of column %r are not numbers (e.g. %r); those rows are left out",
            source,
            int(failed.sum()),
            column,
            bad[0],
        )
    return values.fill_null(math.nan).to_numpy()


def crossmatch(
    catalogue: pl.DataFrame,
    manifest: pl.DataFrame,
    *,
    radius_arcsec: float = DEFAULT_MATCH_RADIUS_ARCSEC,
    ra_column: str = "ra",
    dec_column: str = "dec",
    source: str = "<catalogue>",
) -> tuple[pl.DataFrame, CrossmatchReport]:
    """Match catalogue rows to survey galaxies by position.

    Each row goes to its nearest manifest galaxy (``SkyCoord.match_to_catalog_sky``) if that lies
    within ``radius_arcsec``; a galaxy claimed by several rows keeps the nearest one (ties: the
    first row). Returns the kept rows with ``object_id`` (the survey's; a catalogue column of that
    name is renamed ``catalogue_object_id``) and ``match_sep_arcsec``, and the report.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    if not (
        isinstance(radius_arcsec, int | float)
        and radius_arcsec > 0
        and math.isfinite(radius_arcsec)
    ):
        raise CatalogueError(f"match radius {radius_arcsec!r} arcsec must be a positive number")
    for c in (ra_column, dec_column):
        if c not in catalogue.columns:
            raise CatalogueError(
                f"{source} has no column {c!r} to match on position; name the "
                f"right columns (ra_column=, dec_column=) or match by object_id"
            )
    _require_manifest(manifest, ("object_id", "ra", "dec"))
    n = catalogue.height
    ra = _degrees(catalogue, ra_column, source)
    dec = _degrees(catalogue, dec_column, source)
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    rows = np.flatnonzero(ok)
    # survey galaxies without a sound position cannot be matched (recorded, not fatal)
    m_ra = _degrees(manifest, "ra", "the survey manifest")
    m_dec = _degrees(manifest, "dec", "the survey manifest")
    placed = np.flatnonzero(np.isfinite(m_ra) & np.isfinite(m_dec) & (np.abs(m_dec) <= 90.0))
    if placed.size < manifest.height:
        log.warning(
            "crossmatch %s: %d survey galaxies have no valid ra/dec and cannot be matched",
            source,
            manifest.height - placed.size,
        )
    if rows.size and placed.size:
        cat = SkyCoord(ra=ra[rows] * u.deg, dec=dec[rows] * u.deg)
        ref = SkyCoord(ra=m_ra[placed] * u.deg, dec=m_dec[placed] * u.deg)
        idx, sep2d, _ = cat.match_to_catalog_sky(ref)
        sep = np.atleast_1d(sep2d.to_value(u.arcsec))
        idx = placed[np.atleast_1d(idx)]  # back to manifest rows
    else:
        idx = np.zeros(0, dtype=np.int64)
        sep = np.zeros(0)
    within = sep <= radius_arcsec
    m_rows, m_gal, m_sep = rows[within], idx[within], sep[within]
    # nearest row wins each survey galaxy: sort by (galaxy, separation, row), keep the first
    order = np.lexsort((m_rows, m_sep, m_gal))
    g_sorted = m_gal[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = g_sorted[1:] != g_sorted[:-1]
    keep = np.sort(order[first])
    _, counts = np.unique(m_gal, return_counts=True)
    report = CrossmatchReport(
        source=source,
        method="position",
        radius_arcsec=float(radius_arcsec),
        n_rows=n,
        n_matched=int(keep.size),
        n_unmatched=int(n - m_rows.size),
        n_bad_coordinates=int(n - rows.size),
        n_matched_twice=int((counts > 1).sum()),
        n_dropped_doubles=int(m_rows.size - keep.size),
    )
    kept = catalogue
    if "object_id" in kept.columns:
        kept = kept.rename({"object_id": "catalogue_object_id"})
    survey_ids = manifest["object_id"].cast(pl.Utf8).to_numpy().astype(str)
    kept = kept[m_rows[keep].tolist()].with_columns(
        pl.Series("object_id", survey_ids[m_gal[keep]].tolist(), dtype=pl.Utf8),
        pl.Series("match_sep_arcsec", m_sep[keep], dtype=pl.Float64),
    )
    log.info("crossmatch %s", report.describe())
    return kept, report


def match_by_id(
    catalogue: pl.DataFrame,
    manifest: pl.DataFrame,
    *,
    id_column: str = "object_id",
    source: str = "<catalogue>",
) -> tuple[pl.DataFrame, CrossmatchReport]:
    """Match catalogue rows to survey galaxies by object_id (a repeated id keeps its first row)."""
    if id_column not in catalogue.columns:
        raise CatalogueError(
            f"{source} has no column {id_column!r} to match on; name the id "
            "column (id_column=) or match on position (ra, dec)"
        )
    _require_manifest(manifest, ("object_id",))
    frame = catalogue.with_columns(pl.col(id_column).cast(pl.Utf8).alias("object_id"))
    survey = manifest["object_id"].cast(pl.Utf8).implode()
    found = frame.filter(pl.col("object_id").is_in(survey))
    counts = found.group_by("object_id").len()
    kept = found.unique(subset="object_id", keep="first", maintain_order=True)
    report = CrossmatchReport(
        source=source,
        method="object_id",
        radius_arcsec=None,
        n_rows=frame.height,
        n_matched=kept.height,
        n_unmatched=frame.height - found.height,
        n_bad_coordinates=0,
        n_matched_twice=int((counts["len"] > 1).sum()),
        n_dropped_doubles=found.height - kept.height,
    )
    log.info("crossmatch %s", report.describe())
    return kept, report


def _match(
    frame: pl.DataFrame,
    manifest: pl.DataFrame,
    *,
    match_on: str,
    radius_arcsec: float,
    id_column: str,
    ra_column: str,
    dec_column: str,
    source: str,
) -> tuple[pl.DataFrame, CrossmatchReport]:
    if match_on not in ("auto", "position", "object_id"):
        raise CatalogueError(f"match_on={match_on!r}; use 'auto', 'position' or 'object_id'")
    if match_on == "auto":
        has_pos = ra_column in frame.columns and dec_column in frame.columns
        match_on = "position" if has_pos else "object_id"
    if match_on == "position":
        return crossmatch(
            frame,
            manifest,
            radius_arcsec=radius_arcsec,
            ra_column=ra_column,
            dec_column=dec_column,
            source=source,
        )
    return match_by_id(frame, manifest, id_column=id_column, source=source)


def _require_matches(
    report: CrossmatchReport,
    manifest: pl.DataFrame,
    frame: pl.DataFrame,
    *,
    radius_arcsec: float,
    id_column: str,
    ra_column: str,
    dec_column: str,
    kind: str,
) -> None:
    """A catalogue that matched no survey galaxy: an error when that looks like a mistake
    (an id match that found none of its ids, no row with usable coordinates, or coordinates
    that all lie within radian ranges while the survey's do not), else a warning. A lens
    catalogue may well hold no lens in a survey that covers a few HEALPix cells so far: its
    target is then left without relevant galaxies (undefined, skipped) and the rest are
    evaluated."""
    if report.n_matched:
        return
    how = f'within {radius_arcsec:g}"' if report.method == "position" else f"by {id_column!r}"
    rows = report.n_rows - report.n_other_grade
    detail = []
    if report.n_bad_coordinates:
        detail.append(f"{report.n_bad_coordinates} rows have no valid ra/dec")
    if report.n_other_grade:
        detail.append(f"{report.n_other_grade} rows have a grade that is not a lens grade")
    what = (f"{kind} {report.source}: none of its {rows} rows matched any of the "
            f"{manifest.height} survey galaxies {how}"
            + (f" ({'; '.join(detail)})" if detail else ""))
    mistake = None
    if rows and report.method != "position":
        mistake = f"check the id column {id_column!r} holds the survey's object_ids"
    elif rows and report.n_bad_coordinates >= rows:
        mistake = "give each row its ra/dec in degrees"
    elif rows and _looks_like_radians(frame, ra_column, dec_column) and not _looks_like_radians(
            manifest, "ra", "dec"):
        mistake = "its ra/dec all lie within radian ranges: convert them to degrees (ICRS)"
    if mistake:
        raise CatalogueError(f"{what}; {mistake}, or leave the catalogue out")
    log.warning("%s; its targets have no labelled galaxy in this survey (check that its "
                "ra/dec are degrees, ICRS, and cover the survey's area)", what)


def _looks_like_radians(frame: pl.DataFrame, ra_column: str, dec_column: str) -> bool:
    """Whether every finite position of ``frame`` lies within |ra| <= 2 pi, |dec| <= pi / 2."""
    if ra_column not in frame.columns or dec_column not in frame.columns:
        return False
    pos = frame.select(pl.col(ra_column).cast(pl.Float64, strict=False).alias("ra"),
                       pl.col(dec_column).cast(pl.Float64, strict=False).alias("dec"))
    pos = pos.filter(pl.col("ra").is_finite() & pl.col("dec").is_finite())
    if pos.height == 0:
        return False
    return bool((pos["ra"].abs() <= 2 * np.pi).all() and (pos["dec"].abs() <= np.pi / 2).all())


def labels_from_vote_catalogue(
    catalogue: pl.DataFrame | str | Path,
    manifest: pl.DataFrame,
    targets: Mapping[str, Target] | Sequence[Target] | None = None,
    *,
    radius_arcsec: float = DEFAULT_MATCH_RADIUS_ARCSEC,
    match_on: str = "auto",
    id_column: str = "object_id",
    ra_column: str = "ra",
    dec_column: str = "dec",
) -> EvaluationLabels:
    """Graded labels of the vote-fraction targets from a Galaxy Zoo vote table.

    The table holds vote counts ``<question>_<answer>`` (and ``<question>_total-votes``) and
    either ra/dec (matched by position, the default when present) or object_id. Each target's
    candidate set is the matched galaxies with enough votes on its question; survey galaxies
    the table does not list are unlabelled. Targets whose question the table lacks are skipped
    (logged); binary targets are skipped (see :func:`labels_from_lens_catalogue`).
    """
    frame, source = _as_frame(catalogue)
    matched, report = _match(
        frame,
        manifest,
        match_on=match_on,
        radius_arcsec=radius_arcsec,
        id_column=id_column,
        ra_column=ra_column,
        dec_column=dec_column,
        source=source,
    )
    _require_matches(report, manifest, frame, radius_arcsec=radius_arcsec, id_column=id_column,
                     ra_column=ra_column, dec_column=dec_column, kind="vote catalogue")
    out: dict[str, TargetLabels] = {}
    skipped: list[str] = []
    tmap = _as_target_map(targets)
    for t in tmap.values():
        if t.kind != "vote_fraction":
            continue
        if not any(c in frame.columns for c in t.answer_columns):
            skipped.append(t.name)
            continue
        rel, n_ex = vote_relevance(matched, t, source=source)
        # two rows within the radius of one galaxy: the nearest wins it, so a nearer row with
        # too few votes on this question would hide one with enough; match only the rows
        # with enough votes for this target
        usable = None
        if report.n_matched_twice:  # only a galaxy matched twice can lose a usable row
            usable, _ = vote_relevance(
                frame.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Utf8).alias(
                    "object_id")), t, source=source)
        if usable is not None and usable.height < frame.height:
            rows = usable["object_id"].cast(pl.Int64).to_list()
            again, _ = _match(frame[rows], manifest, match_on=match_on,
                              radius_arcsec=radius_arcsec, id_column=id_column,
                              ra_column=ra_column, dec_column=dec_column, source=source)
            rel, _ = vote_relevance(again, t, source=source)
            n_ex = matched.height - rel.height  # matched galaxies left without a usable row
        out[t.name] = TargetLabels(
            t, rel["object_id"].to_numpy(), rel["relevance"].to_numpy(), source, n_ex
        )
    if skipped:
        log.info("vote catalogue %s has no votes for targets %s (skipped)", source, skipped)
    if not out:
        wanted = [c for t in tmap.values() if t.kind == "vote_fraction" for c in t.answer_columns]
        raise CatalogueError(
            f"vote catalogue {source} has vote counts for none of the vote-fraction targets "
            f"(looked for columns such as {wanted[:4]}; its columns start {frame.columns[:8]})"
        )
    return EvaluationLabels(out, [report])


def labels_from_lens_catalogue(
    catalogue: pl.DataFrame | str | Path,
    manifest: pl.DataFrame,
    target: Target | str = "lenses",
    *,
    radius_arcsec: float = DEFAULT_MATCH_RADIUS_ARCSEC,
    grade_column: str = "grade",
    positive_grades: Sequence[str] = ("A", "B", "C"),
    match_on: str = "auto",
    id_column: str = "object_id",
    ra_column: str = "ra",
    dec_column: str = "dec",
) -> EvaluationLabels:
    """Binary labels of a lens target from a lens catalogue (ra, dec [, grade]).

    Every manifest galaxy is a candidate: relevance 1 where a catalogue row matched it (and,
    when the catalogue has ``grade_column``, the row's grade is one of ``positive_grades``, as
    the paper counted grades A, B and C), 0 elsewhere.
    """
    t = default_targets().get(target) if isinstance(target, str) else target
    if t is None:
        raise EvaluationError(f"no default target named {target!r}; pass a Target")
    if t.kind != "binary":
        raise EvaluationError(
            f"target {t.name!r} is {t.kind}; a lens catalogue gives binary labels"
        )
    frame, source = _as_frame(catalogue)
    if grade_column in frame.columns:
        # graded before matching: a galaxy matched by a near low-grade entry and a farther
        # confirmed one of the same system must keep the confirmed one (the crossmatch keeps
        # the nearest row of each galaxy)
        grades = {str(g).strip().upper() for g in positive_grades}
        graded = frame.filter(
            pl.col(grade_column)
            .cast(pl.Utf8)
            .str.strip_chars()
            .str.to_uppercase()
            .is_in(list(grades))
        )
        if graded.height < frame.height:
            log.info(
                "lens catalogue %s: %d of %d rows have a grade outside %s and are not lenses",
                source,
                frame.height - graded.height,
                frame.height,
                sorted(grades),
            )
        n_other_grade = frame.height - graded.height
        frame = graded
    else:
        n_other_grade = 0
    positive, report = _match(
        frame,
        manifest,
        match_on=match_on,
        radius_arcsec=radius_arcsec,
        id_column=id_column,
        ra_column=ra_column,
        dec_column=dec_column,
        source=source,
    )
    if n_other_grade:
        report = dataclasses.replace(report, n_rows=report.n_rows + n_other_grade,
                                     n_other_grade=n_other_grade)
    _require_matches(report, manifest, frame, radius_arcsec=radius_arcsec, id_column=id_column,
                     ra_column=ra_column, dec_column=dec_column, kind="lens catalogue")
    ids = manifest["object_id"].cast(pl.Utf8).unique(maintain_order=True)
    pos = set(positive["object_id"].to_list())
    rel = np.fromiter(
        (1.0 if o in pos else 0.0 for o in ids.to_list()), dtype=np.float64, count=ids.len()
    )
    labels = TargetLabels(t, ids.to_numpy(), rel, source, 0)
    log.info(
        "lens catalogue %s: %d positives among %d survey galaxies",
        source,
        labels.n_targets,
        labels.n_candidates,
    )
    return EvaluationLabels({t.name: labels}, [report])
