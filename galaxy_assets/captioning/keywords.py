"""Keyword families for judging captions against the truth, and their precision and recall.

A caption *mentions* a family when one of the family's patterns occurs in it outside the
scope of a negation ("no spiral arms", "without tidal features", "lacks a bar" do not count).
:func:`keyword_rates` compares mentions with the truth table's class flags: for each family,
precision and recall of "mentioned" as a classifier of the class, the support, and the
mention rate among the true class and among the rest (their ratio is the lift).

The families follow the words an astronomer (or a VLM answering ``prompts/describe_v1.txt``)
uses for each class; patterns are case-insensitive regular expressions matched on word
boundaries. Plain Python + polars; no Dagster.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import polars as pl

log = logging.getLogger(__name__)

__all__ = [
    "FAMILIES",
    "KeywordFamily",
    "keyword_rates",
    "mentions",
    "named_families",
    "rates_markdown",
]


@dataclass(frozen=True)
class KeywordFamily:
    """A class of the truth table and the words that name it in a caption."""

    name: str
    truth: tuple[str, ...]  # truth-table flag columns; the class is their logical OR
    patterns: tuple[str, ...]  # regular expressions (case-insensitive, word-bounded)
    exclude: tuple[str, ...] = ()  # phrases removed before matching (e.g. "einstein ring")

    @property
    def regex(self) -> re.Pattern[str]:
        return _compile(self.patterns)


FAMILIES: tuple[KeywordFamily, ...] = (
    KeywordFamily(
        "lens",
        ("is_lens",),
        (
            r"(gravitational(ly)?\s+)?lens(ed|es|ing)?",
            r"arcs?",
            r"arclets?",
            r"einstein\s+(ring|cross|radius)",
            r"multiple(ly)?\s+imaged?",
        ),
    ),
    KeywordFamily(
        "spiral", ("is_spiral",), (r"spirals?", r"(spiral\s+)?arms?", r"grand[- ]design")
    ),
    KeywordFamily(
        "merger",
        ("is_merger",),
        (
            r"merg(er|ers|ing|ed)",
            r"tidal(ly)?",
            r"interact(ion|ions|ing)",
            r"tails?",
            r"disturbed",
            r"shells?",
            r"plumes?",
            r"(double|two|second|secondary)\s+nucle(us|i)",
            r"collision(al)?",
        ),
    ),
    KeywordFamily("edge_on", ("is_edge_on",), (r"edge[- ]on", r"dust\s+lanes?")),
    KeywordFamily(
        "ring",
        ("has_ring",),
        (r"rings?", r"ringed", r"annul(us|ar)", r"ring-like"),
        exclude=(r"einstein\s+rings?",),
    ),
    KeywordFamily("bar", ("has_bar",), (r"bars?", r"barred")),
    KeywordFamily("elliptical", ("is_elliptical",), (r"ellipticals?", r"early[- ]type")),
    KeywordFamily(
        "clumpy_irregular",
        ("is_clumpy", "is_irregular"),
        (
            r"clump(s|y)?",
            r"knots?",
            r"knotty",
            r"irregular",
            r"patchy",
            r"star[- ]forming\s+(regions?|knots?|clumps?)",
        ),
    ),
)

# a negation cue followed, within the same clause and at most NEGATION_WINDOW words, by the
# keyword: "no clear spiral arms", "without any tidal features", "shows no sign of a bar"
_NEGATION = re.compile(
    r"\b(no|not|without|lacks?|lacking|absence\s+of|absent|free\s+of|nor|neither|rather\s+than)\b",
    re.IGNORECASE,
)
NEGATION_WINDOW = 5
_CLAUSE_BREAK = re.compile(r"[.;:!?]|,\s*(but|while|although|though|and|with)\b|\bbut\b")


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    body = "|".join(f"(?:{p})" for p in patterns)
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)


def _negated(text: str, start: int) -> bool:
    """Is the match at ``start`` inside a negation's scope (same clause, few words after)?"""
    before = text[:start]
    breaks = [m.end() for m in _CLAUSE_BREAK.finditer(before)]
    clause = before[breaks[-1] :] if breaks else before
    cues = list(_NEGATION.finditer(clause))
    if not cues:
        return False
    words_between = len(clause[cues[-1].end() :].split())
    return words_between <= NEGATION_WINDOW


def _polarity(text: str | None, family: KeywordFamily) -> bool | None:
    """True: ``text`` names ``family`` outside a negation; False: only inside one ("no bar");
    None: not at all."""
    if not text:
        return None
    for ex in family.exclude:
        text = re.sub(ex, lambda m: " " * len(m.group(0)), text, flags=re.IGNORECASE)
    hits = [not _negated(text, m.start()) for m in family.regex.finditer(text)]
    return any(hits) if hits else None


def mentions(caption: str | None, family: KeywordFamily) -> bool:
    """Does ``caption`` name ``family`` (outside a negation)?"""
    return _polarity(caption, family) is True


def named_families(
    text: str | None, families: Iterable[KeywordFamily] = FAMILIES
) -> dict[str, bool]:
    """The families a text (a search query, a question) names: family name → True where it
    asks for the class ("a barred spiral": bar and spiral), False where it names the class
    only under a negation ("a spiral without a bar": bar False)."""
    out: dict[str, bool] = {}
    for family in families:
        polarity = _polarity(text, family)
        if polarity is not None:
            out[family.name] = polarity
    return out


def keyword_rates(
    captions: pl.DataFrame,
    truth: pl.DataFrame,
    families: Iterable[KeywordFamily] = FAMILIES,
) -> pl.DataFrame:
    """Precision and recall of each keyword family against the truth table's class flags.

    ``captions`` has columns ``object_id`` and ``caption`` (null captions count as no
    mention); ``truth`` has ``object_id`` and the flag columns the families name. Only
    galaxies present in both are counted. Returns one row per family: ``family``,
    ``truth`` (the flag columns, joined by "|"), ``n`` (galaxies), ``support`` (true class),
    ``mentions``, ``tp``, ``precision``, ``recall``, ``rate_in_class`` (= recall),
    ``rate_in_rest`` (mention rate among the others) and ``lift`` (their ratio). Undefined
    ratios are null. A family whose flags are missing from ``truth`` is skipped with a
    warning.
    """
    for col in ("object_id", "caption"):
        if col not in captions.columns:
            raise ValueError(f"captions lacks column {col!r}; it has {captions.columns}")
    if "object_id" not in truth.columns:
        raise ValueError(f"truth lacks column 'object_id'; it has {truth.columns}")
    fams = list(families)
    flags = sorted({c for f in fams for c in f.truth if c in truth.columns})
    cap = captions.select(pl.col("object_id").cast(pl.Utf8), pl.col("caption").cast(pl.Utf8))
    tru = truth.select(pl.col("object_id").cast(pl.Utf8), *[pl.col(c) for c in flags])
    joined = cap.unique("object_id", keep="first").join(tru, on="object_id", how="inner")
    if joined.height < cap.height:
        log.info("keyword_rates: %d of %d captions have a truth row", joined.height, cap.height)
    texts = joined["caption"].to_list()
    rows = []
    for fam in fams:
        missing = [c for c in fam.truth if c not in truth.columns]
        if missing:
            log.warning("keyword_rates: truth lacks %s; family %r skipped", missing, fam.name)
            continue
        y = joined.select(
            pl.any_horizontal([pl.col(c).cast(pl.Boolean).fill_null(False) for c in fam.truth])
        ).to_series()
        said = pl.Series([mentions(t, fam) for t in texts], dtype=pl.Boolean)
        n = joined.height
        support = int(y.sum())
        n_said = int(said.sum())
        tp = int((y & said).sum())
        fp = n_said - tp
        rest = n - support
        rate_in = tp / support if support else None
        rate_out = fp / rest if rest else None
        rows.append(
            {
                "family": fam.name,
                "truth": "|".join(fam.truth),
                "n": n,
                "support": support,
                "mentions": n_said,
                "tp": tp,
                "precision": tp / n_said if n_said else None,
                "recall": rate_in,
                "rate_in_class": rate_in,
                "rate_in_rest": rate_out,
                "lift": (rate_in / rate_out) if (rate_in is not None and rate_out) else None,
            }
        )
    schema = {
        "family": pl.Utf8,
        "truth": pl.Utf8,
        "n": pl.Int64,
        "support": pl.Int64,
        "mentions": pl.Int64,
        "tp": pl.Int64,
        "precision": pl.Float64,
        "recall": pl.Float64,
        "rate_in_class": pl.Float64,
        "rate_in_rest": pl.Float64,
        "lift": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def rates_markdown(rates: pl.DataFrame, digits: int = 3) -> str:
    """The rates table as Markdown (for asset metadata and the closing note)."""
    cols = ["family", "support", "mentions", "precision", "recall", "rate_in_rest", "lift"]
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [head, sep]
    for row in rates.select(cols).iter_rows(named=True):
        cells = []
        for c in cols:
            v = row[c]
            if v is None:
                cells.append("–")
            elif isinstance(v, float):
                cells.append(f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def as_metadata(rates: pl.DataFrame) -> Mapping[str, float | None]:
    """Flat ``{family}_precision`` / ``{family}_recall`` / ``{family}_lift`` numbers."""
    out: dict[str, float | None] = {}
    for row in rates.iter_rows(named=True):
        for k in ("precision", "recall", "lift"):
            out[f"{row['family']}_{k}"] = row[k]
    return out
