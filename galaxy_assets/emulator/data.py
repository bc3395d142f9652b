"""Training tables for the emulator: the mock survey's catalogue, or any user Parquet.

An :class:`EmulatorTable` is one row per object: an id column, numeric *input* columns and
numeric *label* columns (NaN / null = missing). The model is generic over tables; this module
builds them two ways.

**The survey catalogue** (:func:`build_survey_table`, inputs only: :func:`survey_features`):

* photometry, per band ``b`` of ``g, r, i, z``: ``mag_<b>``, an asinh magnitude (Lupton, Gunn
  & Szalay 1999) of the catalogue flux corrected for Galactic extinction
  (``f * 10^(0.4 R_b E(B-V))``, ``R_b`` of Schlafly & Finkbeiner 2011),
  ``m = 22.5 - 2.5/ln10 * (asinh(f / 2b) + ln b)`` with ``f`` and the softening ``b`` in
  nanomaggies. It equals ``22.5 - 2.5 log10 f`` for bright galaxies and stays finite for
  faint or negative fluxes (noise), so the noisy faint end is not thrown away. The default
  softening is the 1-sigma point-source flux at the median depth of each band
  (:data:`galaxy_assets.survey.mock_photometry.PSF_DEPTH_MEDIAN`);
* colours ``colour_g_r``, ``colour_r_i``, ``colour_i_z`` (differences of those magnitudes);
* ``mag_err_<b>``, the magnitude error ``2.5/ln10 * sigma_f / sqrt(f^2 + 4 b^2)``, when flux
  errors are given. The manifest carries no flux errors, and neither do the mock shards'
  catalogue columns, so :func:`flux_errors_from_shard` derives a point-source (PSF) flux
  error per galaxy and band from the shard itself: the pixel noise ``1/sqrt(ivar)`` (median
  over the stamp) times ``sqrt(NEA)``, with the noise-equivalent area of a Moffat PSF
  (``beta = 3``, the middle of the mock's 2.5-3.5 and typical of ground-based seeing) of the
  shard's FWHM, ``NEA = pi a^2 (2 beta - 1) / (beta - 1)^2`` with
  ``a = FWHM / (2 sqrt(2^(1/beta) - 1))``, in pixels. That is what a survey's
  ``FLUX_IVAR`` holds for a point source; extended galaxies have larger errors (the mock adds
  the galaxy's area, which only the truth table knows). Without flux errors the
  ``mag_err_*`` columns are simply absent;
* morphology: the encoder's summary vote fractions (``p_smooth``, ``p_featured``, ``p_spiral``…;
  see :mod:`galaxy_assets.morphology.predict`);
* image embedding: ``pc_1 … pc_k``, the first ``k`` principal components of the image
  embeddings (the ``vector`` column of ``image_embeddings``), fitted once (:class:`EmbeddingPCA`)
  and kept in the model config so inference projects new galaxies the same way.

Labels come from the truth table: ``redshift``, ``log_stellar_mass``,
``half_light_radius_arcsec``, ``sersic_n`` (:data:`SURVEY_LABELS`). How inputs were built is a
:class:`FeatureSpec`, stored with the model (``EmulatorConfig.features``). Derived input
columns that cannot be used (a band the survey lacks is all-missing, say) are dropped with a
warning and listed in :attr:`EmulatorTable.dropped`; an unusable *label* is an error.

**Any Parquet** (:func:`load_table`) with a column-role config (YAML or a mapping)::

    name: gaia_xp_apogee
    id_column: source_id          # null: rows are numbered
    inputs: [bp_coef_*, rp_coef_*, phot_g_mean_mag, bp_rp, parallax]   # names or globs
    labels: [teff, logg, m_h]

A name that matches no column, an unknown key, a column both input and label: clear errors
(:class:`EmulatorConfigError`); an all-missing, constant, infinite or non-numeric column:
:class:`EmulatorDataError`. Rows with nothing known, a null id or a repeated id are skipped
and counted (:attr:`EmulatorTable.skipped`). ``configs/gaia_xp_apogee.yaml`` ships as an
example (:func:`example_config`).
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from galaxy_assets.emulator.errors import EmulatorConfigError, EmulatorDataError
from galaxy_assets.emulator.tokenizer import column_array, column_problems
from galaxy_assets.morphology.columns import SUMMARY_COLUMNS

log = logging.getLogger(__name__)

__all__ = [
    "MORPHOLOGY_COLUMNS",
    "SURVEY_LABELS",
    "EmbeddingPCA",
    "EmulatorTable",
    "FeatureSpec",
    "TableConfig",
    "build_survey_table",
    "example_config",
    "flux_errors_from_shard",
    "load_table",
    "load_table_config",
    "make_table",
    "survey_features",
    "survey_input_subsets",
]

SURVEY_LABELS: tuple[str, ...] = (
    "redshift",
    "log_stellar_mass",
    "half_light_radius_arcsec",
    "sersic_n",
)
MORPHOLOGY_COLUMNS: tuple[str, ...] = SUMMARY_COLUMNS  # the encoder's vote fractions
LN10_2_5 = 2.5 / math.log(10.0)
AB_ZP_NMGY = 22.5
PSF_BETA = 3.0
ROW_ID = "row_id"
_CONFIG_KEYS = ("name", "description", "id_column", "inputs", "labels", "source")
_GLOB = set("*?[")


# --------------------------------------------------------------------------- the table
@dataclass
class EmulatorTable:
    """One row per object: ``id_column`` (str), then the inputs and labels (float64, NaN
    missing). ``skipped`` counts rows left out (``nothing_known``, ``null_id``,
    ``duplicate_id``), ``dropped`` names derived columns left out and why, ``features`` is
    the :class:`FeatureSpec` config of a survey table (None for a user table)."""

    frame: pl.DataFrame
    inputs: tuple[str, ...]
    labels: tuple[str, ...]
    id_column: str = "object_id"
    source: str = "<frame>"
    n_input_rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    features: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.frame.height

    @property
    def columns(self) -> tuple[str, ...]:
        """Inputs then labels: the model's vocabulary."""
        return self.inputs + self.labels

    @property
    def object_ids(self) -> np.ndarray:
        return self.frame.get_column(self.id_column).cast(pl.Utf8).to_numpy().astype(str)

    @property
    def n_skipped(self) -> int:
        return int(sum(self.skipped.values()))

    def values(self, columns: Sequence[str] | None = None) -> np.ndarray:
        """``(N, C)`` float64 of ``columns`` (default: :attr:`columns`), NaN where missing."""
        cols = list(columns) if columns is not None else list(self.columns)
        if not cols:
            return np.zeros((len(self), 0))
        return np.stack([column_array(self.frame, c) for c in cols], axis=1)

    def subset(self, rows: np.ndarray) -> EmulatorTable:
        """Rows selected by a boolean mask or an index array (counts are not carried)."""
        idx = np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return EmulatorTable(
            self.frame[idx.tolist()],
            self.inputs,
            self.labels,
            self.id_column,
            self.source,
            n_input_rows=len(idx),
            dropped=dict(self.dropped),
            features=self.features,
        )

    def summary(self) -> dict[str, Any]:
        """Counts, flat and JSON-friendly (for metadata and MLflow params)."""
        known = np.isfinite(self.values()) if len(self) else np.zeros((0, len(self.columns)))
        return {
            "source": self.source,
            "rows": len(self),
            "rows_read": self.n_input_rows,
            "rows_skipped": self.n_skipped,
            **{f"skipped_{k}": v for k, v in self.skipped.items()},
            "inputs": len(self.inputs),
            "labels": ",".join(self.labels),
            "dropped_columns": ",".join(self.dropped) or "none",
            "known_fraction": float(known.mean()) if known.size else 0.0,
        }


def make_table(
    frame: pl.DataFrame,
    inputs: Sequence[str],
    labels: Sequence[str],
    *,
    id_column: str | None = "object_id",
    source: str = "<frame>",
    features: Mapping[str, Any] | None = None,
    dropped: Mapping[str, str] | None = None,
) -> EmulatorTable:
    """Validate ``frame`` and keep ``id_column`` + ``inputs`` + ``labels`` (see the module
    docstring for what is an error and what is skipped)."""
    inputs, labels = list(inputs), list(labels)
    if not inputs and not labels:
        raise EmulatorConfigError(f"{source}: no input and no label column given")
    both = sorted(set(inputs) & set(labels))
    if both:
        raise EmulatorConfigError(
            f"{source}: columns {both} are both inputs and labels; give each one role"
        )
    if id_column and id_column in inputs + labels:
        raise EmulatorConfigError(
            f"{source}: the id column {id_column!r} is also an input or label; an identifier "
            "carries no property: leave it out of inputs and labels"
        )
    for what, names in (("inputs", inputs), ("labels", labels)):
        rep = sorted({c for c in names if names.count(c) > 1})
        if rep:
            raise EmulatorConfigError(f"{source}: {what} repeat {rep}")
    wanted = inputs + labels + ([id_column] if id_column else [])
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise EmulatorConfigError(
            f"{source}: unknown column(s) {missing}; the table has {_preview(frame.columns)}"
        )
    problems = column_problems(frame, inputs + labels)
    if problems:
        listing = "; ".join(f"{k}: {v}" for k, v in problems.items())
        raise EmulatorDataError(
            f"{source}: {len(problems)} unusable column(s) — {listing}. Fix the data or drop "
            "these columns from the config"
        )
    n_read = frame.height
    if id_column is None:
        id_column = ROW_ID
        frame = frame.with_row_index(ROW_ID).with_columns(pl.col(ROW_ID).cast(pl.Utf8))
    cols = inputs + labels
    out = frame.select(
        pl.col(id_column).cast(pl.Utf8),
        *[pl.col(c).cast(pl.Float64).fill_nan(None).fill_null(math.nan) for c in cols],
    )
    skipped = {"nothing_known": 0, "null_id": 0, "duplicate_id": 0}
    null_id = out.get_column(id_column).is_null().to_numpy()
    skipped["null_id"] = int(null_id.sum())
    values = np.stack([out.get_column(c).to_numpy() for c in cols], axis=1)
    nothing = ~np.isfinite(values).any(axis=1) & ~null_id
    skipped["nothing_known"] = int(nothing.sum())
    keep = ~null_id & ~nothing
    out = out.filter(pl.Series(keep))
    dup = ~out.get_column(id_column).is_first_distinct()
    skipped["duplicate_id"] = int(dup.sum())
    out = out.filter(~dup)
    if skipped["nothing_known"]:
        log.info("%s: %d rows with no known value skipped", source, skipped["nothing_known"])
    if skipped["duplicate_id"]:
        log.warning("%s: %d rows repeat an id; the first was kept", source, skipped["duplicate_id"])
    if out.height == 0:
        raise EmulatorDataError(
            f"{source}: no usable row ({n_read} read; skipped: {skipped}); every row lacks an "
            "id or every value"
        )
    return EmulatorTable(
        out,
        tuple(inputs),
        tuple(labels),
        id_column,
        source,
        n_input_rows=n_read,
        skipped=skipped,
        dropped=dict(dropped or {}),
        features=dict(features) if features is not None else None,
    )


def _preview(names: Sequence[str], n: int = 12) -> str:
    names = list(names)
    more = f" … ({len(names) - n} more)" if len(names) > n else ""
    return str(names[:n]) + more


# --------------------------------------------------------------------------- user tables
@dataclass(frozen=True)
class TableConfig:
    """Column roles of a user table: ``inputs`` and ``labels`` are names or glob patterns
    (``bp_coef_*``), ``id_column`` None numbers the rows."""

    inputs: tuple[str, ...]
    labels: tuple[str, ...]
    id_column: str | None = "object_id"
    name: str = "table"
    description: str = ""
    origin: str = "<mapping>"

    def resolve(self, columns: Sequence[str]) -> tuple[list[str], list[str]]:
        """Expand patterns against ``columns`` (in table order); unknown names raise."""
        unknown: list[str] = []

        def expand(entries: Sequence[str]) -> list[str]:
            out: list[str] = []
            for entry in entries:
                if _GLOB & set(entry):  # a pattern never takes the id column
                    hits = [
                        c for c in columns if fnmatch.fnmatchcase(c, entry) and c != self.id_column
                    ]
                else:
                    hits = [entry] if entry in columns else []
                if not hits:
                    unknown.append(entry)
                out.extend(h for h in hits if h not in out)
            return out

        inputs, labels = expand(self.inputs), expand(self.labels)
        if self.id_column is not None and self.id_column not in columns:
            unknown.append(f"{self.id_column} (id_column)")
        if unknown:
            raise EmulatorConfigError(
                f"config {self.origin!r}: unknown column name(s) {unknown}: nothing in the "
                f"table matches them; the table has {_preview(columns)}"
            )
        labels_set = set(labels)
        inputs = [c for c in inputs if c not in labels_set or c in self.inputs]
        return inputs, labels


def load_table_config(config: str | Path | Mapping[str, Any]) -> TableConfig:
    """A :class:`TableConfig` from a YAML file or a mapping (keys: ``name``, ``description``,
    ``id_column``, ``inputs``, ``labels``, ``source``)."""
    origin = "<mapping>"
    if isinstance(config, str | Path):
        import yaml

        path = Path(config)
        origin = str(path)
        if not path.is_file():
            raise EmulatorConfigError(f"table config {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise EmulatorConfigError(f"table config {path} is not valid YAML ({exc})") from exc
    else:
        data = dict(config)
    if not isinstance(data, Mapping):
        raise EmulatorConfigError(
            f"table config {origin}: expected a mapping with inputs/labels, got "
            f"{type(data).__name__}"
        )
    extra = sorted(set(data) - set(_CONFIG_KEYS))
    if extra:
        raise EmulatorConfigError(
            f"table config {origin}: unknown key(s) {extra}; allowed: {list(_CONFIG_KEYS)}"
        )

    def names(key: str) -> tuple[str, ...]:
        value = data.get(key) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise EmulatorConfigError(
                f"table config {origin}: {key} must be a list of column names or patterns"
            )
        return tuple(value)

    inputs, labels = names("inputs"), names("labels")
    if not labels:
        raise EmulatorConfigError(f"table config {origin}: labels is empty; name the outputs")
    id_column = data.get("id_column", "object_id")
    if id_column is not None and not isinstance(id_column, str):
        raise EmulatorConfigError(f"table config {origin}: id_column must be a name or null")
    return TableConfig(
        inputs=inputs,
        labels=labels,
        id_column=id_column,
        name=str(data.get("name", Path(origin).stem if origin != "<mapping>" else "table")),
        description=str(data.get("description", "")),
        origin=origin,
    )


def example_config(name: str = "gaia_xp_apogee") -> Path:
    """Path of a column-role config shipped in ``galaxy_assets/emulator/configs/``."""
    folder = resources.files("galaxy_assets.emulator") / "configs"
    path = Path(str(folder / f"{name}.yaml"))
    if not path.is_file():
        shipped = sorted(p.stem for p in Path(str(folder)).glob("*.yaml"))
        raise EmulatorConfigError(f"no example config {name!r}; shipped: {shipped}")
    return path


def load_table(
    source: str | Path | pl.DataFrame,
    config: TableConfig | str | Path | Mapping[str, Any],
) -> EmulatorTable:
    """An :class:`EmulatorTable` from a Parquet file (or a frame) and a column-role config."""
    cfg = config if isinstance(config, TableConfig) else load_table_config(config)
    if isinstance(source, pl.DataFrame):
        frame, where = source, f"<frame> ({cfg.name})"
        inputs, labels = cfg.resolve(frame.columns)
    else:
        path = Path(source)
        if not path.exists():
            raise EmulatorDataError(f"table {path} does not exist")
        where = str(path)
        lazy = pl.scan_parquet(path)
        inputs, labels = cfg.resolve(lazy.collect_schema().names())
        keep = inputs + labels + ([cfg.id_column] if cfg.id_column else [])
        frame = lazy.select(keep).collect()
    return make_table(frame, inputs, labels, id_column=cfg.id_column, source=where)


# --------------------------------------------------------------------------- survey
def _default_softening() -> dict[str, float]:
    from galaxy_assets.survey import mock_photometry as ph

    return {b: float(ph.mag_to_nmgy(d)) / 5.0 for b, d in ph.PSF_DEPTH_MEDIAN.items()}


def _default_extinction() -> dict[str, float]:
    from galaxy_assets.survey import mock_photometry as ph

    return dict(ph.EXTINCTION_COEFF)


class EmbeddingPCA:
    """The first ``k`` principal components of image embeddings (mean-centred; SVD)."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, explained: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)  # (k, D)
        self.explained = np.asarray(explained, dtype=np.float64)

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, vectors: np.ndarray, k: int) -> EmbeddingPCA:
        x = np.asarray(vectors, dtype=np.float64)
        x = x[np.isfinite(x).all(axis=1)]
        if x.shape[0] < 2:
            raise EmulatorDataError(
                f"image embeddings: {x.shape[0]} finite vectors; need at least 2 for a PCA"
            )
        k = int(min(k, x.shape[0] - 1, x.shape[1]))
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        var = s**2
        return cls(mean, vt[:k], var[:k] / max(var.sum(), 1e-300))

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise EmulatorDataError(
                f"image embeddings of shape {x.shape}; the PCA was fitted on dimension "
                f"{self.mean.shape[0]} (another image encoder?) — retrain the emulator"
            )
        return (x - self.mean) @ self.components.T

    def to_config(self) -> dict[str, Any]:
        return {
            "mean": self.mean.round(7).tolist(),
            "components": self.components.round(7).tolist(),
            "explained": self.explained.tolist(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EmbeddingPCA:
        return cls(config["mean"], config["components"], config.get("explained", []))


@dataclass
class FeatureSpec:
    """How survey inputs are built (see the module docstring); JSON-able via
    :meth:`to_config`, stored in the model config."""

    bands: tuple[str, ...] = ("g", "r", "i", "z")
    softening_nmgy: dict[str, float] = field(default_factory=_default_softening)
    extinction: dict[str, float] = field(default_factory=_default_extinction)
    morphology: tuple[str, ...] = MORPHOLOGY_COLUMNS
    pca: EmbeddingPCA | None = None
    embedding_encoder: str | None = None
    # the morphology encoder whose vote fractions (the p_* inputs) it was trained on
    morphology_encoder: str | None = None

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": "survey",
            "bands": list(self.bands),
            "softening_nmgy": dict(self.softening_nmgy),
            "extinction": dict(self.extinction),
            "morphology": list(self.morphology),
            "pca": self.pca.to_config() if self.pca is not None else None,
            "embedding_encoder": self.embedding_encoder,
            "morphology_encoder": self.morphology_encoder,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FeatureSpec:
        if config.get("kind") != "survey":
            raise EmulatorConfigError(
                f"feature recipe of kind {config.get('kind')!r} is not a survey recipe; this "
                "emulator was trained on a user table: pass that table's columns instead"
            )
        pca = config.get("pca")
        return cls(
            bands=tuple(config["bands"]),
            softening_nmgy={k: float(v) for k, v in config["softening_nmgy"].items()},
            extinction={k: float(v) for k, v in config["extinction"].items()},
            morphology=tuple(config.get("morphology", ())),
            pca=EmbeddingPCA.from_config(pca) if pca else None,
            embedding_encoder=config.get("embedding_encoder"),
            morphology_encoder=config.get("morphology_encoder"),
        )


def _asinh_mag(flux: np.ndarray, b: float) -> np.ndarray:
    return AB_ZP_NMGY - LN10_2_5 * (np.arcsinh(flux / (2.0 * b)) + math.log(b))


def _embedding_matrix(embeddings: pl.DataFrame) -> np.ndarray:
    if "vector" not in embeddings.columns:
        raise EmulatorDataError(
            "image embeddings have no 'vector' column (columns: "
            f"{embeddings.columns}); pass the image_embeddings asset's frame"
        )
    vec = embeddings.get_column("vector")
    if vec.dtype == pl.List(pl.Float32) or isinstance(vec.dtype, pl.List):
        return np.asarray(vec.to_list(), dtype=np.float64)
    return vec.to_numpy().astype(np.float64)


def survey_features(
    manifest: pl.DataFrame,
    *,
    predictions: pl.DataFrame | None = None,
    embeddings: pl.DataFrame | None = None,
    flux_errors: pl.DataFrame | None = None,
    spec: FeatureSpec | None = None,
) -> pl.DataFrame:
    """Input columns for the galaxies of ``manifest`` (one row each, its order): ``object_id``
    then photometry, morphology and embedding PCs as far as the given frames allow.

    ``predictions``: ``morphology_predictions`` (``p_*`` columns); ``embeddings``:
    ``image_embeddings`` (``vector``); ``flux_errors``: ``object_id`` + ``flux_err_<b>``
    (:func:`flux_errors_from_shard`); ``spec``: the recipe (a trained model's, for inference;
    its PCA must be fitted when embeddings are given).
    """
    spec = spec or FeatureSpec()
    if "object_id" not in manifest.columns:
        raise EmulatorDataError("manifest has no object_id column; pass a raw_cutouts frame")
    base = manifest.select("object_id").with_columns(pl.col("object_id").cast(pl.Utf8))
    frame = base
    if flux_errors is not None:
        # one row per galaxy whatever the caller passed (a shard that repeats an id gives two)
        frame = frame.join(
            flux_errors.with_columns(pl.col("object_id").cast(pl.Utf8))
            .drop("row", strict=False)
            .unique("object_id", keep="first", maintain_order=True),
            on="object_id",
            how="left",
        )
    ebv = column_array(manifest, "ebv") if "ebv" in manifest.columns else None
    cols: dict[str, np.ndarray] = {}
    for b in spec.bands:
        fcol = f"flux_{b}"
        if fcol not in manifest.columns:
            continue
        flux = column_array(manifest, fcol)
        soft = float(spec.softening_nmgy[b])
        corr = np.ones_like(flux)
        if ebv is not None and b in spec.extinction:
            corr = 10.0 ** (0.4 * spec.extinction[b] * np.where(np.isfinite(ebv), ebv, 0.0))
        cols[f"mag_{b}"] = _asinh_mag(flux * corr, soft)
        ecol = f"flux_err_{b}"
        if ecol in frame.columns:
            err = column_array(frame, ecol) * corr
            err = np.where(err > 0, err, np.nan)
            f = flux * corr
            cols[f"mag_err_{b}"] = LN10_2_5 * err / np.sqrt(f**2 + 4.0 * soft**2)
    mags = [b for b in spec.bands if f"mag_{b}" in cols]
    for b1, b2 in zip(mags[:-1], mags[1:], strict=True):
        cols[f"colour_{b1}_{b2}"] = cols[f"mag_{b1}"] - cols[f"mag_{b2}"]
    order = (
        [f"mag_{b}" for b in mags]
        + [f"colour_{b1}_{b2}" for b1, b2 in zip(mags[:-1], mags[1:], strict=True)]
        + [f"mag_err_{b}" for b in mags if f"mag_err_{b}" in cols]
    )
    out = base.with_columns(pl.Series(name, cols[name], dtype=pl.Float64) for name in order)
    if predictions is not None:
        have = [c for c in spec.morphology if c in predictions.columns]
        if have:
            # vote fractions of another encoder (a new champion) mean other things to the
            # emulator than those it learned from
            predictions = _of_encoder(
                predictions,
                spec.morphology_encoder,
                "vote fractions",
                "the emulator was trained on: their morphology inputs",
                "predictions",
            )
        if have:
            pred = predictions.select(
                pl.col("object_id").cast(pl.Utf8), *[pl.col(c).cast(pl.Float64) for c in have]
            ).unique("object_id", keep="first")
            out = out.join(pred, on="object_id", how="left")
    if embeddings is not None:
        if spec.pca is None:
            raise EmulatorConfigError(
                "image embeddings were given but the feature recipe has no fitted PCA; "
                "build the training table with build_survey_table (which fits it)"
            )
        emb = embeddings.unique("object_id", keep="first")
        # the PCA projects one encoder's space: vectors of another encoder (a new encoder
        # champion, other test-time views) of the same width would pass unnoticed
        emb = _of_encoder(
            emb,
            spec.embedding_encoder,
            "image embeddings",
            "whose space the emulator's PCA projects: their embedding inputs",
            "embeddings",
        )
        pcs = spec.pca.transform(_embedding_matrix(emb))
        pc_frame = pl.DataFrame(
            {
                "object_id": emb.get_column("object_id").cast(pl.Utf8),
                **{f"pc_{i + 1}": pcs[:, i] for i in range(spec.pca.k)},
            }
        )
        out = out.join(pc_frame, on="object_id", how="left")
    return out.with_columns(pl.col(pl.Float64).fill_nan(None))


def _of_encoder(
    frame: pl.DataFrame, expected: str | None, what: str, whose: str, retrain_on: str
) -> pl.DataFrame:
    """The rows of ``frame`` made by the ``expected`` encoder (its ``encoder`` column); the
    others are left out with a warning. Unchanged without an expectation or the column."""
    if not expected or "encoder" not in frame.columns:
        return frame
    mine = pl.col("encoder").cast(pl.Utf8) == expected
    other = frame.filter(~mine)
    if not other.height:
        return frame
    log.warning(
        "%d galaxies' %s come from %s, not %s %s are left out; retrain property_emulator "
        "on the current %s",
        other.height,
        what,
        ", ".join(sorted(set(other.get_column("encoder").cast(pl.Utf8)))),
        expected,
        whose,
        retrain_on,
    )
    return frame.filter(mine)


def build_survey_table(
    manifest: pl.DataFrame | Sequence[pl.DataFrame],
    truth: pl.DataFrame | None,
    *,
    predictions: pl.DataFrame | None = None,
    embeddings: pl.DataFrame | None = None,
    flux_errors: pl.DataFrame | None = None,
    labels: Sequence[str] = SURVEY_LABELS,
    n_components: int = 8,
    spec: FeatureSpec | None = None,
) -> EmulatorTable:
    """The training table of the mock survey: :func:`survey_features` of the manifest(s)
    joined on ``object_id`` to the truth table's ``labels``.

    The embedding PCA is fitted here (``n_components``) unless ``spec`` brings one; the
    recipe goes into :attr:`EmulatorTable.features`. ``truth`` None (a real survey) gives a
    table without labels, usable only as inference input.
    """
    if not isinstance(manifest, pl.DataFrame):
        manifest = pl.concat(list(manifest), how="diagonal_relaxed")
    spec = spec or FeatureSpec()
    if embeddings is not None and spec.pca is None:
        ids = manifest.get_column("object_id").cast(pl.Utf8)
        emb = embeddings.filter(pl.col("object_id").cast(pl.Utf8).is_in(ids.implode()))
        if "encoder" in emb.columns and emb.height:
            encoders = sorted(set(emb.get_column("encoder").cast(pl.Utf8).to_list()))
            if len(encoders) > 1:
                raise EmulatorDataError(
                    f"the image embeddings come from {len(encoders)} encoders "
                    f"({', '.join(encoders)}): one PCA cannot describe them all; re-embed "
                    "the shards with the current encoder (shard_embeddings_job) first"
                )
            spec.embedding_encoder = encoders[0]
        spec.pca = EmbeddingPCA.fit(_embedding_matrix(emb), n_components)
    if (
        predictions is not None
        and spec.morphology_encoder is None
        and ("encoder" in predictions.columns)
    ):
        ids = manifest.get_column("object_id").cast(pl.Utf8)
        used = predictions.filter(pl.col("object_id").cast(pl.Utf8).is_in(ids.implode()))
        encoders = sorted(set(used.get_column("encoder").cast(pl.Utf8).drop_nulls().to_list()))
        if len(encoders) > 1:
            raise EmulatorDataError(
                f"the vote fractions come from {len(encoders)} morphology encoders "
                f"({', '.join(encoders)}): predict every shard with the current encoder "
                "(shard_embeddings_job) first"
            )
        spec.morphology_encoder = encoders[0] if encoders else None
    features = survey_features(
        manifest,
        predictions=predictions,
        embeddings=embeddings,
        flux_errors=flux_errors,
        spec=spec,
    )
    inputs = [c for c in features.columns if c != "object_id"]
    dropped = column_problems(features, inputs)
    for name, why in dropped.items():
        log.warning("survey table: input %s left out (%s)", name, why)
    inputs = [c for c in inputs if c not in dropped]
    labels = list(labels)
    frame = features
    if truth is not None:
        missing = [c for c in labels if c not in truth.columns]
        if missing:
            raise EmulatorConfigError(
                f"truth table lacks label column(s) {missing}; it has {_preview(truth.columns)}"
            )
        lab = truth.select(
            pl.col("object_id").cast(pl.Utf8), *[pl.col(c).cast(pl.Float64) for c in labels]
        ).unique("object_id", keep="first")
        frame = features.join(lab, on="object_id", how="left")
    else:
        labels = []
    return make_table(
        frame.drop([c for c in dropped if c in frame.columns]),
        inputs,
        labels,
        id_column="object_id",
        source="mock survey catalogue",
        features=spec.to_config(),
        dropped=dropped,
    )


def moffat_nea_arcsec2(fwhm: np.ndarray | float, beta: float = PSF_BETA) -> np.ndarray:
    """Noise-equivalent area ``1 / integral(PSF^2)`` (arcsec^2) of a Moffat PSF."""
    alpha = np.asarray(fwhm, dtype=np.float64) / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return math.pi * alpha**2 * (2.0 * beta - 1.0) / (beta - 1.0) ** 2


def flux_errors_from_shard(
    shard_uri: str | Path, batch_size: int = 512, psf_beta: float = PSF_BETA
) -> pl.DataFrame:
    """``object_id``, ``row`` (the shard's row, as the manifest's) and ``flux_err_<band>``
    (nanomaggies): point-source flux errors from the shard's pixel inverse variance and PSF
    FWHM (see the module docstring), one row per shard row (a repeated object_id too: match
    them to a manifest by row). Bands without ivar or PSF give NaN."""
    from galaxy_assets.survey.readers import open_shard

    with open_shard(shard_uri, ivar=True) as reader:
        bands = tuple(reader.bands)
        psf = np.asarray(
            getattr(reader, "psf_fwhm", np.full((len(reader), len(bands)), np.nan)),
            dtype=np.float64,
        )
        scale = float(getattr(reader, "pixel_scale", 0.262))
        ids: list[np.ndarray] = []
        sigma = np.full((len(reader), len(bands)), np.nan)
        rows_all: list[np.ndarray] = []
        for batch in reader.iter_batches(batch_size):
            rows = np.asarray(batch.rows, dtype=np.int64)
            ids.append(np.asarray(batch.object_id).astype(str))
            rows_all.append(rows)
            if batch.ivar is None:
                continue
            iv = batch.ivar.reshape(len(batch), len(bands), -1).astype(np.float64)
            iv = np.where(np.isfinite(iv) & (iv > 0), iv, np.nan)
            with np.errstate(all="ignore"):
                sigma[rows] = 1.0 / np.sqrt(np.nanmedian(iv, axis=2))
    rows = np.concatenate(rows_all) if rows_all else np.zeros(0, dtype=np.int64)
    nea = moffat_nea_arcsec2(psf, psf_beta) / scale**2
    err = sigma * np.sqrt(nea)
    data: dict[str, Any] = {
        "object_id": np.concatenate(ids) if ids else np.zeros(0, dtype=str),
        "row": rows,
    }
    for j, b in enumerate(bands):
        data[f"flux_err_{b}"] = err[rows, j]
    return pl.DataFrame(data).with_columns(pl.col(pl.Float64).fill_nan(None))


def survey_input_subsets(inputs: Sequence[str]) -> dict[str, list[str]]:
    """The input subsets the evaluation compares: ``all``, ``photometry`` (magnitudes,
    colours, errors), ``two_bands`` (g and r only) and ``image_embedding`` (``pc_*``); empty
    subsets are left out."""
    inputs = list(inputs)
    phot = [c for c in inputs if c.startswith(("mag_", "colour_"))]
    two = [c for c in inputs if c in ("mag_g", "mag_r", "mag_err_g", "mag_err_r", "colour_g_r")]
    emb = [c for c in inputs if c.startswith("pc_")]
    subsets = {"all": inputs, "photometry": phot, "two_bands": two, "image_embedding": emb}
    return {k: v for k, v in subsets.items() if v}
