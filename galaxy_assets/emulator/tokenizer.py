"""Catalogue values as tokens: a column vocabulary and robust per-column standardisation.

Every column of a table (an input such as ``mag_r`` or a label such as ``redshift``) is a
*name* in the vocabulary of a :class:`Tokenizer`. A value ``x`` of column ``c`` is
standardised with the median and the MAD of that column over the training rows,

    z = (x - median_c) / (1.4826 * MAD_c)

(the factor makes the MAD a standard deviation for Gaussian data), and the model turns it
into the token ``activation(w_c * z + b_c)`` (see :mod:`.model`). A missing value (NaN or
null) becomes *padding*: its value is set to 0 and its ``known`` flag to False, and the
model masks it out of attention, so a padded slot can never carry information.

The tokenizer is fitted on training rows only (:meth:`Tokenizer.fit`), and refuses columns
it cannot standardise, all at once in one message: a column with no value at all, a column
with a single distinct value (nothing to learn, and a zero scale), or a column holding
infinities (replace them with nulls first: a flux of +inf is a bad measurement, not a
large one). When more than half the values of a column are identical (MAD = 0) but the
column still varies, the scale falls back to the standard deviation, with a warning.

Its state (vocabulary, medians, scales and the standardised range of each column) is plain
JSON (:meth:`Tokenizer.to_config`), stored in the model config of the registry.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from galaxy_assets.emulator.errors import EmulatorConfigError, EmulatorDataError

log = logging.getLogger(__name__)

__all__ = [
    "MAD_TO_SIGMA",
    "TokenBatch",
    "Tokenizer",
    "column_array",
    "column_problems",
    "values_matrix",
]

MAD_TO_SIGMA = 1.4826
_EXAMPLES = 3

Frame = pl.DataFrame | Mapping[str, Any]


def column_array(data: Frame, name: str) -> np.ndarray:
    """Column ``name`` of a polars frame or a mapping of arrays as float64 (nulls → NaN)."""
    if isinstance(data, pl.DataFrame):
        series = data.get_column(name)
        if not (series.dtype.is_numeric() or series.dtype == pl.Boolean or series.dtype == pl.Null):
            raise EmulatorDataError(
                f"column {name!r} has type {series.dtype}, not a number; the emulator takes "
                "numeric columns only (encode categories as numbers, or leave the column out)"
            )
        return series.cast(pl.Float64).fill_null(math.nan).to_numpy().astype(np.float64)
    value = np.asarray(data[name])
    if value.dtype.kind not in "biuf":
        raise EmulatorDataError(
            f"column {name!r} has dtype {value.dtype}, not a number; the emulator takes "
            "numeric columns only"
        )
    return value.astype(np.float64).reshape(-1)


def _n_rows(data: Frame) -> int:
    if isinstance(data, pl.DataFrame):
        return data.height
    for value in data.values():
        return len(np.asarray(value).reshape(-1))
    return 0


def _has(data: Frame, name: str) -> bool:
    return name in (data.columns if isinstance(data, pl.DataFrame) else data)


def values_matrix(
    data: Frame,
    columns: Sequence[str],
    *,
    on_infinite: str = "raise",
    source: str = "<frame>",
) -> tuple[np.ndarray, int]:
    """Raw values ``(N, len(columns))`` float64, NaN where missing or where ``data`` lacks the
    column. ``on_infinite``: ``"raise"`` (:class:`EmulatorDataError` naming the columns) or
    ``"mask"`` (treated as missing). Returns the matrix and the number of infinite values."""
    if on_infinite not in ("raise", "mask"):
        raise EmulatorConfigError(f"on_infinite={on_infinite!r}; use 'raise' or 'mask'")
    n = _n_rows(data)
    out = np.full((n, len(columns)), np.nan, dtype=np.float64)
    bad: dict[str, int] = {}
    for j, name in enumerate(columns):
        if not _has(data, name):
            continue
        col = column_array(data, name)
        inf = np.isinf(col)
        if inf.any():
            bad[name] = int(inf.sum())
            col = np.where(inf, np.nan, col)
        out[:, j] = col
    n_inf = int(sum(bad.values()))
    if bad and on_infinite == "raise":
        listing = ", ".join(f"{k} ({v} rows)" for k, v in bad.items())
        raise EmulatorDataError(
            f"{source}: infinite values in {listing}; infinities are bad measurements, not "
            "large ones. Replace them with nulls (missing values are allowed and masked)"
        )
    return out, n_inf


def column_problems(data: Frame, columns: Sequence[str]) -> dict[str, str]:
    """Why each unusable column of ``columns`` cannot be standardised (empty when all can):
    absent, not numeric, infinite values, no value at all, or a single distinct value."""
    problems: dict[str, str] = {}
    for name in columns:
        if not _has(data, name):
            problems[name] = "no such column"
            continue
        try:
            col = column_array(data, name)
        except EmulatorDataError as exc:
            problems[name] = str(exc).split(";")[0]
            continue
        inf = np.isinf(col)
        if inf.any():
            problems[name] = f"{int(inf.sum())} infinite values (replace them with nulls)"
            continue
        finite = col[np.isfinite(col)]
        if finite.size == 0:
            problems[name] = "every value is missing"
        elif np.all(finite == finite[0]):
            problems[name] = (
                f"constant (every known value is {finite[0]:.6g}): it carries no information "
                "and has no scale; leave it out"
            )
    return problems


@dataclass(frozen=True)
class TokenBatch:
    """Standardised values ``(N, C)`` float32 (0 where unknown) and ``known`` ``(N, C)`` bool,
    in the order of the tokenizer's vocabulary."""

    values: torch.Tensor
    known: torch.Tensor

    def __len__(self) -> int:
        return int(self.values.shape[0])


class Tokenizer:
    """Column vocabulary plus per-column median and robust scale.

    ``columns``: the vocabulary (token id = position); ``medians`` and ``scales``: the
    standardisation; ``lows``/``highs``: the standardised range seen in training (the
    sampler keeps its denoised estimates near it).
    """

    def __init__(
        self,
        columns: Sequence[str],
        medians: Sequence[float],
        scales: Sequence[float],
        lows: Sequence[float] | None = None,
        highs: Sequence[float] | None = None,
    ) -> None:
        columns = [str(c) for c in columns]
        if not columns:
            raise EmulatorConfigError("a tokenizer needs at least one column")
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise EmulatorConfigError(f"tokenizer columns repeat {dupes}; names must be unique")
        self.columns: tuple[str, ...] = tuple(columns)
        self.medians = np.asarray(medians, dtype=np.float64)
        self.scales = np.asarray(scales, dtype=np.float64)
        n = len(columns)
        self.lows = np.asarray(lows if lows is not None else [-10.0] * n, dtype=np.float64)
        self.highs = np.asarray(highs if highs is not None else [10.0] * n, dtype=np.float64)
        for what, arr in (
            ("medians", self.medians),
            ("scales", self.scales),
            ("lows", self.lows),
            ("highs", self.highs),
        ):
            if arr.shape != (n,) or not np.all(np.isfinite(arr)):
                raise EmulatorConfigError(
                    f"tokenizer {what} must be {n} finite numbers (one per column), got {arr}"
                )
        if np.any(self.scales <= 0):
            bad = [c for c, s in zip(columns, self.scales, strict=True) if s <= 0]
            raise EmulatorConfigError(f"tokenizer scales must be > 0; columns {bad} are not")
        self._index = {c: i for i, c in enumerate(self.columns)}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, data: Frame, columns: Sequence[str], *, source: str = "<table>") -> Tokenizer:
        """Medians and robust scales of ``columns`` over the rows of ``data``.

        Raises :class:`EmulatorDataError` listing every column that is absent, all-missing,
        constant, infinite or not numeric.
        """
        columns = list(columns)
        problems = column_problems(data, columns)
        if problems:
            listing = "; ".join(f"{k}: {v}" for k, v in problems.items())
            raise EmulatorDataError(
                f"{source}: cannot standardise {len(problems)} column(s) — {listing}. Fix or "
                "drop them from the table's inputs/labels"
            )
        medians, scales, lows, highs = [], [], [], []
        for name in columns:
            col = column_array(data, name)
            finite = col[np.isfinite(col)]
            med = float(np.median(finite))
            scale = MAD_TO_SIGMA * float(np.median(np.abs(finite - med)))
            if not scale > 0:
                scale = float(np.std(finite))
                log.warning(
                    "%s: column %r has MAD 0 (more than half its values are %.6g); using its "
                    "standard deviation %.4g as the scale",
                    source,
                    name,
                    med,
                    scale,
                )
            z = (finite - med) / scale
            medians.append(med)
            scales.append(scale)
            lows.append(float(z.min()))
            highs.append(float(z.max()))
        return cls(columns, medians, scales, lows, highs)

    # ------------------------------------------------------------------ vocabulary
    def __len__(self) -> int:
        return len(self.columns)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def index(self, name: str) -> int:
        """Token id of column ``name``."""
        try:
            return self._index[name]
        except KeyError:
            raise EmulatorConfigError(
                f"column {name!r} is not in the model's vocabulary {list(self.columns)}"
            ) from None

    def indices(self, names: Sequence[str]) -> list[int]:
        return [self.index(n) for n in names]

    # ------------------------------------------------------------------ values
    def standardize(self, raw: np.ndarray, columns: Sequence[str] | None = None) -> np.ndarray:
        """``(x - median) / scale`` per column (NaN stays NaN); ``columns`` default: all."""
        idx = self.indices(columns) if columns is not None else slice(None)
        return (np.asarray(raw, dtype=np.float64) - self.medians[idx]) / self.scales[idx]

    def to_physical(self, z: np.ndarray | torch.Tensor, column: str) -> np.ndarray:
        """Standardised values of ``column`` back in its own units (float64 array)."""
        j = self.index(column)
        arr = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
        return arr.astype(np.float64) * self.scales[j] + self.medians[j]

    def to_standard(self, x: np.ndarray, column: str) -> np.ndarray:
        """Values of ``column`` in its own units → standardised."""
        j = self.index(column)
        return (np.asarray(x, dtype=np.float64) - self.medians[j]) / self.scales[j]

    def encode(
        self,
        data: Frame,
        *,
        use: Sequence[str] | None = None,
        drop: Sequence[str] = (),
        on_infinite: str = "raise",
        source: str = "<frame>",
    ) -> TokenBatch:
        """Tokens for every row of ``data``, in vocabulary order.

        Columns of the vocabulary that ``data`` lacks are padding; columns of ``data`` outside
        the vocabulary are ignored. ``use`` (default: every column) restricts the known values
        to those columns, ``drop`` removes columns (a requested label is always dropped by the
        posterior code, so its own value can never be an input).
        """
        raw, _ = values_matrix(data, self.columns, on_infinite=on_infinite, source=source)
        # in float32, as training sees them: a value beyond float32's range is unknown, not
        # an infinite token that turns every output of the row into NaN
        with np.errstate(over="ignore"):
            z = self.standardize(raw).astype(np.float32)
        known = np.isfinite(z)
        if use is not None:
            keep = np.zeros(len(self.columns), dtype=bool)
            keep[self.indices(list(use))] = True
            known &= keep[None, :]
        if drop:
            known[:, self.indices(list(drop))] = False
        values = np.where(known, z, np.float32(0.0))
        return TokenBatch(torch.from_numpy(values), torch.from_numpy(known))

    # ------------------------------------------------------------------ persistence
    def to_config(self) -> dict[str, Any]:
        """JSON-able state: ``columns``, ``medians``, ``scales``, ``lows``, ``highs``."""
        return {
            "columns": list(self.columns),
            "medians": [float(v) for v in self.medians],
            "scales": [float(v) for v in self.scales],
            "lows": [float(v) for v in self.lows],
            "highs": [float(v) for v in self.highs],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Tokenizer:
        try:
            return cls(
                config["columns"],
                config["medians"],
                config["scales"],
                config.get("lows"),
                config.get("highs"),
            )
        except KeyError as exc:
            raise EmulatorConfigError(
                f"tokenizer config lacks {exc.args[0]!r}; it needs columns, medians and scales"
            ) from None

    def __repr__(self) -> str:
        return f"Tokenizer({len(self.columns)} columns: {', '.join(self.columns[:6])}…)"
