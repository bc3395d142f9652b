"""Typed, validated filters on ``galaxy_index``, turned into a Lance SQL ``where`` by this
module only.

User text never reaches SQL as it is: a :class:`Filters` holds numbers, booleans and plain
strings; column names are checked against the table's schema; numbers are formatted by
Python; strings (shard keys, aligner versions, caption keywords) are quoted with their
quotes doubled (:func:`galaxy_assets.search.table.sql_string`). The CLI-friendly
:func:`parse_filters` accepts ``COLUMN OP VALUE`` strings::

    mag_r<19   p_spiral>=0.8   healpix=1722,1723   has_caption=true   ebv<=0.05
    shard=healpix=1722__001-of-001   aligner_version=search-aligner/v3
    cone=150.1,2.2,30        (ra deg, dec deg, radius arcsec)
    box=359,2,-1,1           (ra_min, ra_max, dec_min, dec_max; ra_min > ra_max wraps 0/360)
    keyword=tidal tails      (captions holding every word, through the full-text index)

A value that is not a plain number / boolean / identifier (quotes, parentheses, ``;``,
spaces in numbers…) is a :class:`FilterError`, as is a column the table does not have (the
error lists the columns that can be filtered).

A cone is applied in two steps: a dec band and an RA window in SQL (exact bounds of the
circle, wrapping at 0/360, no RA bound when the circle holds a pole), then the exact
angular distance in Python (:meth:`Filters.post_filter`), which also adds
``distance_arcsec``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from galaxy_assets.search.errors import FilterError, RowsError
from galaxy_assets.search.table import BANDS, P_COLUMNS, sql_string, table_schema

__all__ = [
    "Cone",
    "Filters",
    "Range",
    "SkyBox",
    "angular_distance_deg",
    "filterable_columns",
    "parse_filters",
]

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|=|<|>)\s*(.*?)\s*$", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_SAFE_STRING = re.compile(r"^[A-Za-z0-9_.:/=+@-]{1,512}$")
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 -]{0,199}$")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}
_SPECIAL = ("cone", "box", "keyword", "has_caption", "shard", "aligner_version", "healpix")
_NOT_FILTERABLE = {"object_id", "vector", "caption", "caption_source", "shard_uri", "bands"}
_ARCSEC = 1.0 / 3600.0
_MARGIN_DEG = 1e-9


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or value is None:
        raise FilterError(f"{what}: {value!r} is not a number")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise FilterError(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise FilterError(f"{what}: {value!r} is not a finite number")
    return x


def _sql_number(x: float) -> str:
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return np.format_float_positional(float(x), trim="-")


def _exact_text(x: float) -> str:
    """``x`` in the fewest digits that read back as the same float (``20``, ``150.1234567``)."""
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


def _integer_sql(column: str, r: Range, arrow_type: pa.DataType) -> list[str]:
    """``r`` on an integer column as SQL with integer literals the column's type can hold:
    a bound past the type's range selects every galaxy with a value, or none, as the
    comparison would (Lance refuses a literal its column cannot hold, e.g. ``height >
    2147483648``, and reads ``-9223372036854775808`` as a float)."""
    info = np.iinfo(np.dtype(arrow_type.to_pandas_dtype()))
    lo, hi = int(info.min), int(info.max)
    none, every = f"{column} > {hi}", f"{column} IS NOT NULL"
    out = []
    if r.low is not None:  # the smallest integer that passes
        first = math.ceil(r.low) if r.low_inclusive else math.floor(r.low) + 1
        out.append(none if first > hi else every if first <= lo else f"{column} >= {first}")
    if r.high is not None:  # the largest integer that passes
        last = math.floor(r.high) if r.high_inclusive else math.ceil(r.high) - 1
        out.append(none if last < lo else every if last >= hi else f"{column} < {last + 1}")
    return out


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (either bound may be None; each may be strict)."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def __post_init__(self) -> None:
        if self.low is not None:
            object.__setattr__(self, "low", _number(self.low, "range low"))
        if self.high is not None:
            object.__setattr__(self, "high", _number(self.high, "range high"))
        if self.low is not None and self.high is not None and self.low > self.high:
            raise FilterError(f"range [{self.low}, {self.high}]: low is above high")

    @classmethod
    def of(cls, value: Range | Sequence[float | None] | float) -> Range:
        """A Range from a Range, a ``(low, high)`` pair (inclusive) or one value (equality)."""
        if isinstance(value, Range):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls(value, value)
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
            return cls(value[0], value[1])
        raise FilterError(f"{value!r}: give a Range, a (low, high) pair or a number")

    def intersect(self, other: Range) -> Range:
        low, low_inc = self.low, self.low_inclusive
        if other.low is not None and (
            low is None or other.low > low or (other.low == low and not other.low_inclusive)
        ):
            low, low_inc = other.low, other.low_inclusive
        high, high_inc = self.high, self.high_inclusive
        if other.high is not None and (
            high is None or other.high < high or (other.high == high and not other.high_inclusive)
        ):
            high, high_inc = other.high, other.high_inclusive
        return Range(low, high, low_inc, high_inc)

    def sql(self, column: str) -> list[str]:
        out = []
        if self.low is not None:
            out.append(f"{column} {'>=' if self.low_inclusive else '>'} {_sql_number(self.low)}")
        if self.high is not None:
            op = "<=" if self.high_inclusive else "<"
            out.append(f"{column} {op} {_sql_number(self.high)}")
        return out

    def describe(self) -> str:
        """The bounds as applied, every digit kept (results record it: a rounded bound would
        not say which galaxies passed)."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>=' if self.low_inclusive else '>'}{_exact_text(self.low)}")
        if self.high is not None:
            parts.append(f"{'<=' if self.high_inclusive else '<'}{_exact_text(self.high)}")
        return " and ".join(parts) or "any"


def angular_distance_deg(
    ra1: np.ndarray | float, dec1: np.ndarray | float, ra2: float, dec2: float
) -> np.ndarray:
    """Great-circle distance in degrees (haversine; accurate at all separations)."""
    r1, d1 = np.radians(np.asarray(ra1, float)), np.radians(np.asarray(dec1, float))
    r2, d2 = math.radians(ra2), math.radians(dec2)
    h = np.sin((d1 - d2) / 2) ** 2 + np.cos(d1) * math.cos(d2) * np.sin((r1 - r2) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def _check_ra(value: Any, what: str, *, allow_360: bool = False) -> float:
    x = _number(value, what)
    if not (0.0 <= x < 360.0 or (allow_360 and x == 360.0)):
        raise FilterError(f"{what}={x}: right ascension must lie in [0, 360) degrees")
    return x


def _check_dec(value: Any, what: str) -> float:
    x = _number(value, what)
    if not -90.0 <= x <= 90.0:
        raise FilterError(f"{what}={x}: declination must lie in [-90, 90] degrees")
    return x


def _ra_window(lo: float, hi: float) -> str:
    """SQL for ``lo <= ra <= hi`` on the circle (lo > hi, or bounds outside [0, 360), wrap)."""
    if hi - lo >= 360.0:
        return ""
    lo_w, hi_w = lo % 360.0, hi % 360.0
    if lo_w <= hi_w:
        return f"(ra >= {_sql_number(lo_w)} AND ra <= {_sql_number(hi_w)})"
    return f"(ra >= {_sql_number(lo_w)} OR ra <= {_sql_number(hi_w)})"


@dataclass(frozen=True)
class Cone:
    """Galaxies within ``radius_arcsec`` of (``ra``, ``dec``) degrees."""

    ra: float
    dec: float
    radius_arcsec: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "ra", _check_ra(self.ra, "cone ra"))
        object.__setattr__(self, "dec", _check_dec(self.dec, "cone dec"))
        r = _number(self.radius_arcsec, "cone radius_arcsec")
        if not 0.0 < r <= 180.0 * 3600.0:
            raise FilterError(f"cone radius_arcsec={r}: it must lie in (0, 648000]")
        object.__setattr__(self, "radius_arcsec", r)

    @property
    def radius_deg(self) -> float:
        return self.radius_arcsec * _ARCSEC

    def prefilter_sql(self) -> list[str]:
        """A dec band and an RA window that hold the whole circle (cheap SQL prefilter)."""
        r = self.radius_deg + _MARGIN_DEG
        lo, hi = self.dec - r, self.dec + r
        out = []
        if lo > -90.0:
            out.append(f"dec >= {_sql_number(lo)}")
        if hi < 90.0:
            out.append(f"dec <= {_sql_number(hi)}")
        if lo <= -90.0 or hi >= 90.0:
            return out  # a pole lies in the circle: every RA
        # the exact RA half-width of a small circle that does not hold a pole
        s = math.sin(math.radians(r)) / math.cos(math.radians(self.dec))
        if s >= 1.0:
            return out
        half = math.degrees(math.asin(s)) + _MARGIN_DEG
        window = _ra_window(self.ra - half, self.ra + half)
        if window:
            out.append(window)
        return out

    def distance_arcsec(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        return angular_distance_deg(ra, dec, self.ra, self.dec) * 3600.0


@dataclass(frozen=True)
class SkyBox:
    """``ra_min <= ra <= ra_max`` (wrapping through 0 when ra_min > ra_max) and
    ``dec_min <= dec <= dec_max``, degrees."""

    ra_min: float
    ra_max: float
    dec_min: float
    dec_max: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "ra_min", _check_ra(self.ra_min, "box ra_min"))
        object.__setattr__(self, "ra_max", _check_ra(self.ra_max, "box ra_max", allow_360=True))
        object.__setattr__(self, "dec_min", _check_dec(self.dec_min, "box dec_min"))
        object.__setattr__(self, "dec_max", _check_dec(self.dec_max, "box dec_max"))
        if self.dec_min > self.dec_max:
            raise FilterError(f"box: dec_min={self.dec_min} is above dec_max={self.dec_max}")

    def sql(self) -> list[str]:
        out = [f"dec >= {_sql_number(self.dec_min)}", f"dec <= {_sql_number(self.dec_max)}"]
        if self.ra_min <= self.ra_max:
            out.append(f"(ra >= {_sql_number(self.ra_min)} AND ra <= {_sql_number(self.ra_max)})")
        else:
            out.append(f"(ra >= {_sql_number(self.ra_min)} OR ra <= {_sql_number(self.ra_max)})")
        return out


def filterable_columns(schema: pa.Schema | None = None) -> dict[str, str]:
    """``column → kind`` ("number", "integer") of the numeric columns a range may use, plus the
    special names (cone, box, keyword, has_caption, shard, aligner_version, healpix)."""
    schema = schema if schema is not None else table_schema(1)
    out: dict[str, str] = {}
    for f in schema:
        if f.name in _NOT_FILTERABLE:
            continue
        if pa.types.is_integer(f.type):
            out[f.name] = "integer"
        elif pa.types.is_floating(f.type):
            out[f.name] = "number"
    for name in _SPECIAL:
        out.setdefault(name, "special")
    return dict(sorted(out.items()))


def _ranges(value: Mapping[str, Any] | None, what: str) -> dict[str, Range]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FilterError(f"{what}: give a mapping of column to (low, high), not {value!r}")
    return {str(k): Range.of(v) for k, v in value.items()}


@dataclass(frozen=True)
class Filters:
    """Validated filters (all conditions must hold). Build directly, or with
    :func:`parse_filters` from strings.

    ``mag``: band → range of ``mag_<band>``, e.g. ``{"r": (None, 19)}``; ``probabilities``:
    ``p_*`` column → range, e.g. ``{"p_spiral": (0.8, None)}``; ``ranges``: any other numeric
    column (``ebv``, ``post_*``, ``ra``…) → range; ``cone``, ``box``; ``healpix`` and
    ``shards``: allowed values; ``has_caption``; ``aligner_version``; ``keyword``: words every
    caption must hold (full-text index).
    """

    mag: Mapping[str, Any] = field(default_factory=dict)
    probabilities: Mapping[str, Any] = field(default_factory=dict)
    ranges: Mapping[str, Any] = field(default_factory=dict)
    cone: Cone | None = None
    box: SkyBox | None = None
    healpix: Sequence[int] | None = None
    shards: Sequence[str] | None = None
    has_caption: bool | None = None
    aligner_version: str | None = None
    keyword: str | None = None

    def __post_init__(self) -> None:
        mag = _ranges(self.mag, "mag")
        for band in mag:
            if band not in BANDS:
                raise FilterError(f"mag: band {band!r} is unknown; use one of {list(BANDS)}")
        object.__setattr__(self, "mag", mag)
        probs = _ranges(self.probabilities, "probabilities")
        for name, r in probs.items():
            if not name.startswith("p_"):
                raise FilterError(
                    f"probabilities: {name!r} is not a morphology probability column; use one "
                    f"of {list(P_COLUMNS)}"
                )
            for bound in (r.low, r.high):
                if bound is not None and not 0.0 <= bound <= 1.0:
                    raise FilterError(f"{name}: {bound} is outside [0, 1]")
        object.__setattr__(self, "probabilities", probs)
        ranges = _ranges(self.ranges, "ranges")
        for name in ranges:
            if not _NAME.match(name):
                raise FilterError(f"ranges: {name!r} is not a column name")
        object.__setattr__(self, "ranges", ranges)
        if self.cone is not None and not isinstance(self.cone, Cone):
            object.__setattr__(self, "cone", Cone(*self.cone))
        if self.box is not None and not isinstance(self.box, SkyBox):
            object.__setattr__(self, "box", SkyBox(*self.box))
        if self.healpix is not None:
            cells = []
            for h in [self.healpix] if isinstance(self.healpix, int) else self.healpix:
                if isinstance(h, bool) or not isinstance(h, int | np.integer) or h < 0:
                    raise FilterError(f"healpix: {h!r} is not a HEALPix cell number (an int >= 0)")
                cells.append(int(h))
            if not cells:
                raise FilterError("healpix: give at least one cell")
            object.__setattr__(self, "healpix", tuple(sorted(set(cells))))
        if self.shards is not None:
            shards = [self.shards] if isinstance(self.shards, str) else list(self.shards)
            if not shards or not all(isinstance(s, str) and s for s in shards):
                raise FilterError(f"shards: {self.shards!r}; give non-empty shard keys")
            object.__setattr__(self, "shards", tuple(sorted(set(shards))))
        if self.has_caption is not None and not isinstance(self.has_caption, bool):
            raise FilterError(f"has_caption: {self.has_caption!r}; use True or False")
        if self.aligner_version is not None and (
            not isinstance(self.aligner_version, str) or not self.aligner_version
        ):
            raise FilterError(f"aligner_version: {self.aligner_version!r}; give a version string")
        if self.keyword is not None:
            words = " ".join(str(self.keyword).split())
            if not _KEYWORD.match(words):
                raise FilterError(
                    f"keyword {self.keyword!r}: use words of letters, digits and hyphens "
                    "(at most 200 characters)"
                )
            object.__setattr__(self, "keyword", words.lower())

    # ------------------------------------------------------------------ combination
    def is_empty(self) -> bool:
        return self.to_where(validate=False) is None and self.cone is None

    @property
    def needs_post_filter(self) -> bool:
        """True when results must also pass :meth:`post_filter` (a cone's exact distance)."""
        return self.cone is not None

    def merge(self, other: Filters) -> Filters:
        """Both filters' conditions (ranges intersect; a second cone or box must not clash)."""

        def both(a: Mapping[str, Range], b: Mapping[str, Range]) -> dict[str, Range]:
            out = dict(a)
            for k, v in b.items():
                out[k] = out[k].intersect(v) if k in out else v
            return out

        def one(name: str) -> Any:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None and mine != theirs:
                if name in ("healpix", "shards"):
                    common = sorted(set(mine) & set(theirs))
                    if not common:
                        raise FilterError(f"{name}: {mine} and {theirs} have nothing in common")
                    return tuple(common)
                if name == "keyword":
                    return f"{mine} {theirs}"
                raise FilterError(f"two different {name} filters: {mine!r} and {theirs!r}")
            return mine if mine is not None else theirs

        return replace(
            self,
            mag=both(self.mag, other.mag),
            probabilities=both(self.probabilities, other.probabilities),
            ranges=both(self.ranges, other.ranges),
            **{
                n: one(n)
                for n in (
                    "cone",
                    "box",
                    "healpix",
                    "shards",
                    "has_caption",
                    "aligner_version",
                    "keyword",
                )
            },
        )

    # ------------------------------------------------------------------ SQL
    def _check_columns(self, schema: pa.Schema | None) -> None:
        numeric = {k for k, v in filterable_columns(schema).items() if v != "special"}
        wanted = [f"mag_{b}" for b in self.mag] + list(self.probabilities) + list(self.ranges)
        names = set(schema.names) if schema is not None else set(table_schema(1).names)
        for column in wanted:
            if column not in numeric:
                raise FilterError(
                    f"filter on unknown or non-numeric column {column!r}; columns that can be "
                    f"filtered: {', '.join(sorted(numeric))}"
                )
        if self.healpix is not None and "healpix" not in names:
            raise FilterError("the table has no healpix column")

    def to_where(self, schema: pa.Schema | None = None, *, validate: bool = True) -> str | None:
        """The Lance SQL ``where`` (None when nothing restricts), checked against ``schema``
        (default: the base ``galaxy_index`` schema)."""
        if validate:
            self._check_columns(schema)
        parts: list[str] = []
        kinds = filterable_columns(schema)
        ranged = [(f"mag_{band}", r) for band, r in self.mag.items()]
        ranged += [*self.probabilities.items(), *self.ranges.items()]
        for name, r in ranged:
            sql = r.sql(name)
            if sql and kinds.get(name) == "integer" and schema is not None:
                sql = _integer_sql(name, r, schema.field(name).type)
            elif sql and kinds.get(name) == "integer":
                sql = _integer_sql(name, r, table_schema(1).field(name).type)
            if sql and kinds.get(name) == "number":
                # Lance's SQL orders NaN above every number, so "p_spiral >= 0.8" would keep
                # the galaxies whose prediction is NaN (unknown): a range holds numbers only
                sql.append(f"NOT isnan({name})")
            parts += sql
        if self.cone is not None:
            parts += self.cone.prefilter_sql()
        if self.box is not None:
            parts += self.box.sql()
        if self.healpix is not None:
            parts.append("healpix IN (" + ", ".join(str(h) for h in self.healpix) + ")")
        try:
            if self.shards is not None:
                parts.append("shard IN (" + ", ".join(sql_string(s) for s in self.shards) + ")")
            if self.aligner_version is not None:
                parts.append(f"aligner_version = {sql_string(self.aligner_version)}")
        except RowsError as exc:
            raise FilterError(str(exc)) from None
        if self.has_caption is not None:
            parts.append("caption IS NOT NULL" if self.has_caption else "caption IS NULL")
        if self.keyword:
            parts.append(f"contains_tokens(caption, {sql_string(self.keyword)})")
        return " AND ".join(parts) if parts else None

    def post_filter(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Rows of ``frame`` (with ra, dec) inside the cone, with ``distance_arcsec`` added;
        ``frame`` unchanged without a cone."""
        if self.cone is None or frame.is_empty():
            if self.cone is not None and "distance_arcsec" not in frame.columns:
                return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("distance_arcsec"))
            return frame
        dist = self.cone.distance_arcsec(frame["ra"].to_numpy(), frame["dec"].to_numpy())
        keep = dist <= self.cone.radius_arcsec * (1 + 1e-12)
        return frame.with_columns(pl.Series("distance_arcsec", dist)).filter(pl.Series(keep))

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for metadata and explanations)."""
        out: dict[str, Any] = {}
        for band, r in self.mag.items():
            out[f"mag_{band}"] = r.describe()
        for name, r in {**self.probabilities, **self.ranges}.items():
            out[name] = r.describe()
        if self.cone is not None:
            out["cone"] = [self.cone.ra, self.cone.dec, self.cone.radius_arcsec]
        if self.box is not None:
            b = self.box
            out["box"] = [b.ra_min, b.ra_max, b.dec_min, b.dec_max]
        for name in ("healpix", "shards", "has_caption", "aligner_version", "keyword"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out


# --------------------------------------------------------------------------- parsing
def _parse_number(column: str, text: str) -> float:
    if not _NUMBER.match(text):
        raise FilterError(
            f"filter {column}: {text!r} is not a number (write e.g. {column}<19.5; quotes, "
            "spaces, parentheses and SQL are not accepted)"
        )
    return _number(text, column)


def _parse_list(column: str, text: str, pattern: re.Pattern[str], kind: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not items or any(not pattern.match(t) for t in items):
        raise FilterError(
            f"filter {column}={text!r}: give comma-separated {kind} (letters, digits and "
            "_ . : / = + @ - only; no quotes, spaces or parentheses)"
        )
    return items


def _parse_one(expr: str, kinds: Mapping[str, str]) -> Filters:
    match = _EXPR.match(expr)
    if match is None:
        raise FilterError(
            f"cannot parse filter {expr!r}; write COLUMN OP VALUE, e.g. mag_r<19, "
            "p_spiral>=0.8, healpix=1722, has_caption=true, cone=150.1,2.2,30"
        )
    column, op, value = match.group(1).lower(), match.group(2), match.group(3)
    if op == "==":
        op = "="
    if column not in kinds:
        valid = ", ".join(kinds)
        raise FilterError(f"filter {expr!r}: unknown column {column!r}; valid columns: {valid}")
    if op == "!=":
        raise FilterError(f"filter {expr!r}: '!=' is not supported; use <, <=, >, >= or =")
    if not value:
        raise FilterError(f"filter {expr!r}: no value after {op!r}")

    def equality_only() -> None:
        if op != "=":
            raise FilterError(f"filter {expr!r}: {column} takes '=' only")

    if column == "cone":
        equality_only()
        parts = [_parse_number("cone", t.strip()) for t in value.split(",")]
        if len(parts) != 3:
            raise FilterError(f"filter {expr!r}: write cone=RA,DEC,RADIUS_ARCSEC")
        return Filters(cone=Cone(*parts))
    if column == "box":
        equality_only()
        parts = [_parse_number("box", t.strip()) for t in value.split(",")]
        if len(parts) != 4:
            raise FilterError(f"filter {expr!r}: write box=RA_MIN,RA_MAX,DEC_MIN,DEC_MAX")
        return Filters(box=SkyBox(*parts))
    if column == "keyword":
        equality_only()
        return Filters(keyword=value)
    if column == "has_caption":
        equality_only()
        low = value.lower()
        if low not in _TRUE | _FALSE:
            raise FilterError(f"filter {expr!r}: has_caption takes true or false")
        return Filters(has_caption=low in _TRUE)
    if column == "shard":
        equality_only()
        return Filters(shards=_parse_list(column, value, _SAFE_STRING, "shard keys"))
    if column == "aligner_version":
        equality_only()
        versions = _parse_list(column, value, _SAFE_STRING, "one version")
        if len(versions) != 1:
            raise FilterError(
                f"filter {expr!r}: give one aligner version (e.g. search-aligner/v3); a table "
                "holds the vectors of one aligner"
            )
        return Filters(aligner_version=versions[0])
    if column == "healpix" and op == "=":
        cells = [int(c) for c in _parse_list(column, value, _INTEGER, "cell numbers")]
        bad = [c for c in cells if not 0 <= c < 2**63]
        if bad:
            raise FilterError(f"filter {expr!r}: {bad[0]} is not a HEALPix cell number")
        return Filters(healpix=cells)
    if column.endswith("_multimodal") and value.lower() in _TRUE | _FALSE:
        # the emulator's multimodality flag is stored as 0/1 (post_<label>_multimodal)
        equality_only()
        value = "1" if value.lower() in _TRUE else "0"
    x = _parse_number(column, value)
    if kinds[column] == "integer" and op == "=" and not x.is_integer():
        raise FilterError(f"filter {expr!r}: {column} holds integers")
    rng = {
        "<": Range(high=x, high_inclusive=False),
        "<=": Range(high=x),
        ">": Range(low=x, low_inclusive=False),
        ">=": Range(low=x),
        "=": Range(x, x),
    }[op]
    if column.startswith("mag_") and column[4:] in BANDS:
        return Filters(mag={column[4:]: rng})
    if column.startswith("p_"):
        return Filters(probabilities={column: rng})
    return Filters(ranges={column: rng})


def parse_filters(exprs: str | Iterable[str] | None, schema: pa.Schema | None = None) -> Filters:
    """One :class:`Filters` from ``COLUMN OP VALUE`` strings (all must hold), validated
    against ``schema`` (default: the base ``galaxy_index`` schema). See the module doc."""
    if exprs is None:
        return Filters()
    items = [exprs] if isinstance(exprs, str) else list(exprs)
    kinds = filterable_columns(schema)
    out = Filters()
    for expr in items:
        if not isinstance(expr, str):
            raise FilterError(f"filter {expr!r} is not a string")
        if len(expr) > 2000:
            raise FilterError(f"filter of {len(expr)} characters; a filter is one short condition")
        out = out.merge(_parse_one(expr, kinds))
    out.to_where(schema)  # the columns exist in this table
    return out
