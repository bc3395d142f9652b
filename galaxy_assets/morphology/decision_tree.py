"""Galaxy Zoo decision trees as data.

A tree is an ordered list of questions; each question has answers and, optionally, the single
(question, answer) pair a volunteer must have given to be asked it. Vote tables hold one
integer column per answer, named ``<question>_<answer>``, and one ``<question>_total-votes``
column per question (the number of volunteers who answered it).

The default tree is Galaxy Zoo DECaLS (DR5 workflow, Walmsley et al. 2022), shipped as
``galaxy_assets/morphology/trees/gz_decals.yaml``; others load with
:meth:`DecisionTree.from_file` (YAML or JSON with the same keys).

The answer columns of all questions, concatenated in tree order, define the layout a model
head uses: :meth:`DecisionTree.answer_slices` gives each question's ``[start, stop)`` range in
that vector, which is what a Dirichlet-Multinomial loss needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from galaxy_assets.morphology.errors import DecisionTreeError

TREES_DIR = Path(__file__).resolve().parent / "trees"
DEFAULT_TREE_FILE = TREES_DIR / "gz_decals.yaml"
TOTAL_SUFFIX = "total-votes"
_SEP = "_"


@dataclass(frozen=True)
class Question:
    """One question of a decision tree.

    ``depends_on`` is the (question, answer) a volunteer must have chosen to be asked this
    question, or ``None`` when every volunteer is asked it.
    """

    name: str
    answers: tuple[str, ...]
    depends_on: tuple[str, str] | None = None
    text: str = ""

    def column(self, answer: str) -> str:
        """Vote-count column of ``answer``: ``<question>_<answer>``."""
        if answer not in self.answers:
            raise DecisionTreeError(
                f"question {self.name!r} has no answer {answer!r}; its answers are "
                f"{list(self.answers)}"
            )
        return f"{self.name}{_SEP}{answer}"

    @property
    def columns(self) -> tuple[str, ...]:
        """Vote-count columns of all answers, in answer order."""
        return tuple(f"{self.name}{_SEP}{a}" for a in self.answers)

    @property
    def total_column(self) -> str:
        """Column holding how many volunteers answered this question."""
        return f"{self.name}{_SEP}{TOTAL_SUFFIX}"


@dataclass(frozen=True)
class DecisionTree:
    """An ordered, validated decision tree.

    Construct with :meth:`from_dict`, :meth:`from_file` or :func:`default_tree`; the
    constructor validates names, answers and dependencies and raises
    :class:`DecisionTreeError` naming what is wrong.
    """

    name: str
    questions: tuple[Question, ...]
    description: str = ""
    source: str = "<dict>"
    _by_name: dict[str, Question] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {})
        _validate(self)
        object.__setattr__(self, "_by_name", {q.name: q for q in self.questions})

    # ----------------------------------------------------------------- lookups
    def __iter__(self) -> Iterator[Question]:
        return iter(self.questions)

    def __len__(self) -> int:
        return len(self.questions)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Question:
        return self.question(name)

    @property
    def question_names(self) -> tuple[str, ...]:
        """Question names in tree order."""
        return tuple(q.name for q in self.questions)

    def question(self, name: str) -> Question:
        """The question called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise DecisionTreeError(
                f"tree {self.name!r} ({self.source}) has no question {name!r}; its questions "
                f"are {list(self.question_names)}"
            ) from None

    def question_index(self, name: str) -> int:
        """Position of question ``name`` in tree order."""
        return self.question_names.index(self.question(name).name)

    def column(self, question: str, answer: str) -> str:
        """Vote-count column ``<question>_<answer>`` (validated)."""
        return self.question(question).column(answer)

    @property
    def answer_columns(self) -> tuple[str, ...]:
        """All vote-count columns, question by question in tree order."""
        return tuple(c for q in self.questions for c in q.columns)

    @property
    def total_columns(self) -> tuple[str, ...]:
        """One ``<question>_total-votes`` column per question, in tree order."""
        return tuple(q.total_column for q in self.questions)

    @property
    def n_answers(self) -> int:
        """Total number of answers over all questions (length of a flat head output)."""
        return sum(len(q.answers) for q in self.questions)

    def answer_slices(self) -> dict[str, slice]:
        """For each question, the ``slice(start, stop)`` of its answers in the flat layout."""
        out: dict[str, slice] = {}
        start = 0
        for q in self.questions:
            out[q.name] = slice(start, start + len(q.answers))
            start += len(q.answers)
        return out

    def answer_index_ranges(self) -> list[tuple[int, int]]:
        """``(start, stop)`` index range of each question's answers, in tree order."""
        return [(s.start, s.stop) for s in self.answer_slices().values()]

    def answer_index(self, question: str, answer: str) -> int:
        """Index of one answer in the flat layout of :attr:`answer_columns`."""
        return self.answer_columns.index(self.column(question, answer))

    # ------------------------------------------------------------ dependencies
    def dependency(self, question: str) -> tuple[str, str] | None:
        """The (question, answer) that ``question`` depends on, or None for a root question."""
        return self.question(question).depends_on

    def dependency_column(self, question: str) -> str | None:
        """Vote column of the answer ``question`` depends on, or None for a root question."""
        dep = self.dependency(question)
        return None if dep is None else self.column(*dep)

    def ancestors(self, question: str) -> list[tuple[str, str]]:
        """The chain of (question, answer) a volunteer must take to reach ``question``.

        Ordered from the root towards ``question``; empty for a root question.
        """
        chain: list[tuple[str, str]] = []
        dep = self.dependency(question)
        while dep is not None:
            chain.append(dep)
            dep = self.dependency(dep[0])
        return chain[::-1]

    def children(self, question: str, answer: str | None = None) -> tuple[str, ...]:
        """Questions that depend on ``question`` (on ``answer`` of it, when given)."""
        self.question(question)
        if answer is not None:
            self.column(question, answer)
        return tuple(
            q.name
            for q in self.questions
            if q.depends_on is not None
            and q.depends_on[0] == question
            and (answer is None or q.depends_on[1] == answer)
        )

    def missing_columns(self, columns: Sequence[str], *, totals: bool = False) -> list[str]:
        """Vote columns of this tree absent from ``columns`` (also totals when ``totals``)."""
        have = set(columns)
        wanted = self.answer_columns + (self.total_columns if totals else ())
        return [c for c in wanted if c not in have]

    def roots(self) -> tuple[str, ...]:
        """Questions every volunteer is asked."""
        return tuple(q.name for q in self.questions if q.depends_on is None)

    # ------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (the same keys :meth:`from_dict` and the YAML files use)."""
        return {
            "name": self.name,
            "description": self.description,
            "questions": [
                {
                    "name": q.name,
                    "text": q.text,
                    "answers": list(q.answers),
                    "depends_on": None if q.depends_on is None else list(q.depends_on),
                }
                for q in self.questions
            ],
        }

    def to_file(self, path: str | Path) -> Path:
        """Write the tree as YAML (``.yaml``/``.yml``) or JSON (any other suffix)."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(data, sort_keys=False))
        else:
            path.write_text(json.dumps(data, indent=2))
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> DecisionTree:
        """Build a tree from ``{"name", "description"?, "questions": [...]}``.

        Each question is ``{"name", "answers": [...], "depends_on": [question, answer] | null,
        "text"?}``.
        """
        if not isinstance(data, Mapping):
            raise DecisionTreeError(
                f"{source}: a decision tree must be a mapping with keys 'name' and "
                f"'questions', got {type(data).__name__}"
            )
        if "questions" not in data:
            raise DecisionTreeError(
                f"{source}: missing key 'questions'; expected a list of "
                "{name, answers, depends_on} mappings"
            )
        raw_questions = data["questions"]
        if not isinstance(raw_questions, Sequence) or isinstance(raw_questions, str | bytes):
            raise DecisionTreeError(f"{source}: 'questions' must be a list, got {raw_questions!r}")
        questions = [_question_from_dict(q, i, source) for i, q in enumerate(raw_questions)]
        return cls(
            name=str(data.get("name") or Path(source).stem or "tree"),
            questions=tuple(questions),
            description=str(data.get("description") or ""),
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> DecisionTree:
        """Load a tree from a YAML (``.yaml``/``.yml``) or JSON file."""
        path = Path(path)
        if not path.is_file():
            raise DecisionTreeError(
                f"{path}: decision-tree file not found; pass a YAML or JSON tree file (the "
                f"default is {DEFAULT_TREE_FILE})"
            )
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
            raise DecisionTreeError(f"{path}: cannot parse decision tree: {exc}") from exc
        return cls.from_dict(data, source=str(path))


def _question_from_dict(raw: Any, index: int, source: str) -> Question:
    where = f"{source}: question #{index}"
    if not isinstance(raw, Mapping):
        raise DecisionTreeError(f"{where} must be a mapping with 'name' and 'answers'")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise DecisionTreeError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    where = f"{source}: question {name!r}"
    answers = raw.get("answers")
    if not isinstance(answers, Sequence) or isinstance(answers, str | bytes):
        raise DecisionTreeError(f"{where}: 'answers' must be a list of strings, got {answers!r}")
    for a in answers:
        if not isinstance(a, str):
            raise DecisionTreeError(
                f"{where}: answer {a!r} is a {type(a).__name__}, not a string; quote it in "
                "YAML (yes/no/1/2 are parsed as booleans or numbers otherwise)"
            )
    dep = raw.get("depends_on")
    if dep is not None:
        if (
            not isinstance(dep, Sequence)
            or isinstance(dep, str | bytes)
            or len(dep) != 2
            or not all(isinstance(d, str) for d in dep)
        ):
            raise DecisionTreeError(
                f"{where}: 'depends_on' must be null or [question, answer] (two strings, "
                f"quoted in YAML), got {dep!r}"
            )
        dep = (dep[0], dep[1])
    return Question(
        name=name, answers=tuple(answers), depends_on=dep, text=str(raw.get("text") or "")
    )


def _validate(tree: DecisionTree) -> None:
    src = tree.source
    if not tree.questions:
        raise DecisionTreeError(f"{src}: tree {tree.name!r} has no questions")
    seen: dict[str, Question] = {}
    for q in tree.questions:
        if _SEP in q.name:
            raise DecisionTreeError(
                f"{src}: question name {q.name!r} contains {_SEP!r}, which separates question "
                "and answer in column names; use '-' instead"
            )
        if q.name in seen:
            raise DecisionTreeError(f"{src}: question {q.name!r} appears twice")
        if len(q.answers) < 2:
            raise DecisionTreeError(
                f"{src}: question {q.name!r} has {len(q.answers)} answer(s); a question needs "
                "at least two"
            )
        if len(set(q.answers)) != len(q.answers):
            raise DecisionTreeError(f"{src}: question {q.name!r} repeats an answer: {q.answers}")
        for a in q.answers:
            if not a or a == TOTAL_SUFFIX:
                raise DecisionTreeError(
                    f"{src}: question {q.name!r} has invalid answer name {a!r} (empty or the "
                    f"reserved {TOTAL_SUFFIX!r})"
                )
        if q.depends_on is not None:
            dq, da = q.depends_on
            if dq == q.name:
                raise DecisionTreeError(f"{src}: question {q.name!r} depends on itself")
            if dq not in seen:
                later = any(o.name == dq for o in tree.questions)
                hint = (
                    "list it before the questions that depend on it"
                    if later
                    else f"known questions are {list(seen)}"
                )
                raise DecisionTreeError(
                    f"{src}: question {q.name!r} depends on question {dq!r}, which is not "
                    f"defined before it; {hint}"
                )
            if da not in seen[dq].answers:
                raise DecisionTreeError(
                    f"{src}: question {q.name!r} depends on answer {da!r} of {dq!r}, which has "
                    f"answers {list(seen[dq].answers)}"
                )
        seen[q.name] = q


@cache
def default_tree() -> DecisionTree:
    """The Galaxy Zoo DECaLS tree shipped with the package (loaded once, immutable)."""
    return DecisionTree.from_file(DEFAULT_TREE_FILE)


def load_tree(path: str | Path | None = None) -> DecisionTree:
    """Load the tree at ``path``, or the default Galaxy Zoo DECaLS tree when ``path`` is None."""
    return default_tree() if path is None else DecisionTree.from_file(path)
