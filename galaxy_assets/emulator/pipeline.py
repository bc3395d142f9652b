"""The emulator's two graph steps, as plain functions the Dagster assets call.

* :func:`training_table` — the table to train on: the survey catalogue (photometry with flux
  errors from the shards, morphology vote fractions, image-embedding PCs; labels from the
  mock survey's truth tables) or a user Parquet with a column-role config.
* :func:`train_evaluate_register` — train, score both heads on the evaluation half of the
  held-out rows (the half that did not choose the weights) for each input subset (all inputs, photometry only, two bands only, image embedding only), draw
  the figures, log everything to MLflow and register ``property-emulator``; the alias
  ``champion`` moves only when the calibration gate passes
  (:meth:`~galaxy_assets.emulator.calibration.CalibrationReport.gate`).
* :func:`serving_emulator` — the version posteriors come from: ``champion``, else (before any
  version passed the gate) the newest registered version, said so in ``source``.
* :func:`shard_posteriors` — for every galaxy of one shard and every label: median, 16th and
  84th percentile and the multimodality flag, from the same survey features the model was
  trained on.

Plain Python; knows nothing of Dagster.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from galaxy_assets.emulator.calibration import CalibrationReport, evaluate_emulator
from galaxy_assets.emulator.data import (
    SURVEY_LABELS,
    EmulatorTable,
    FeatureSpec,
    build_survey_table,
    flux_errors_from_shard,
    load_table,
    survey_features,
    survey_input_subsets,
)
from galaxy_assets.emulator.errors import EmulatorConfigError, EmulatorDataError
from galaxy_assets.emulator.model import REGISTERED_NAME, PropertyEmulator, load_emulator
from galaxy_assets.emulator.posterior import PosteriorSummary, posterior_summaries
from galaxy_assets.emulator.train import (
    EmulatorRegistration,
    TrainConfig,
    TrainResult,
    register_emulator,
    train_emulator,
)

log = logging.getLogger(__name__)

__all__ = [
    "EmulatorOutcome",
    "EmulatorRunConfig",
    "catalogue_labels",
    "match_catalogue_labels",
    "ServingEmulator",
    "serving_emulator",
    "shard_flux_errors",
    "shard_posteriors",
    "train_evaluate_register",
    "training_table",
]


@dataclass
class EmulatorRunConfig:
    """What ``property_emulator`` does. ``table`` + ``table_config``: train on a user Parquet
    (column roles in YAML, or the name of a shipped example such as ``gaia_xp_apogee``)
    instead of the survey catalogue; ``labels_table``: the survey catalogue's labels from a
    user Parquet instead of the mock's truth tables (a real survey: e.g. spectroscopic
    redshifts), joined on ``object_id`` or, without one (or when none of its ids is a survey
    galaxy's: another survey's ids), matched by position within ``match_radius_arcsec`` on
    its columns ``labels_ra_column``/``labels_dec_column`` (degrees); ``gate_labels``: the
    labels the champion gate checks (None: every evaluated label)."""

    table: str = ""
    table_config: str = ""
    labels_table: str = ""
    match_radius_arcsec: float = 1.0
    labels_ra_column: str = "ra"
    labels_dec_column: str = "dec"
    labels: Sequence[str] = SURVEY_LABELS
    n_components: int = 8
    flux_errors: bool = True
    epochs: int = 200
    batch_size: int = 256
    lr: float = 2e-3
    patience: int = 30
    time_budget_s: float | None = 300.0
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    eval_samples: int = 500
    eval_rows: int = 1500
    tolerance: float = 0.03
    gate_labels: Sequence[str] | None = None

    def train_config(self, device: str = "cpu") -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            patience=self.patience,
            time_budget_s=self.time_budget_s,
            seed=self.seed,
            device=device,
            model=dict(self.model),
        )


# --------------------------------------------------------------------------- inputs
def shard_flux_errors(manifest: pl.DataFrame) -> pl.DataFrame:
    """Point-source flux errors (:func:`flux_errors_from_shard`) of the manifest's galaxies,
    read from every shard file the manifest names: one row per manifest row, matched by the
    shard's row (a shard may repeat an object_id in a row the manifest left out)."""
    frames = []
    for uri in manifest["shard_uri"].unique().sort():
        rows = manifest.filter(pl.col("shard_uri") == uri).select(
            pl.col("row").cast(pl.Int64), pl.col("object_id").cast(pl.Utf8)
        )
        errors = flux_errors_from_shard(uri).drop("object_id")
        frames.append(rows.join(errors, on="row", how="inner").drop("row"))
    if not frames:
        return pl.DataFrame(schema={"object_id": pl.Utf8})
    return pl.concat(frames, how="diagonal_relaxed")


def _concat(frames: Sequence[pl.DataFrame] | pl.DataFrame | None) -> pl.DataFrame | None:
    if frames is None:
        return None
    if isinstance(frames, pl.DataFrame):
        return frames
    frames = [f for f in frames if f is not None and f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def training_table(
    config: EmulatorRunConfig,
    manifest: Sequence[pl.DataFrame] | pl.DataFrame | None = None,
    *,
    predictions: Sequence[pl.DataFrame] | pl.DataFrame | None = None,
    embeddings: Sequence[pl.DataFrame] | pl.DataFrame | None = None,
) -> EmulatorTable:
    """The table ``property_emulator`` trains on (see the module docstring).

    The survey catalogue needs the mock survey's truth tables for its labels; a real survey
    has none, so training there takes a user table (``config.table``) of objects with known
    properties (a spectroscopic catalogue, say).
    """
    if config.table:
        if not config.table_config:
            raise EmulatorConfigError(
                f"table={config.table!r} was given without table_config; name a YAML file of "
                "column roles (id_column, inputs, labels) or a shipped example "
                "('gaia_xp_apogee')"
            )
        from galaxy_assets.emulator.data import example_config

        roles: str | Path = config.table_config
        if not Path(config.table_config).suffix:
            roles = example_config(config.table_config)
        return load_table(config.table, roles)
    from galaxy_assets.survey.truth import load_truth

    manifest = _concat(manifest)
    if manifest is None or manifest.height == 0:
        raise EmulatorDataError(
            "no galaxies to train the property emulator on: raw_cutouts is empty; "
            "materialize the survey first"
        )
    matched_how = ""
    if config.labels_table:
        truth, matched_how = match_catalogue_labels(config, manifest)
    else:
        truth = load_truth(manifest["shard_uri"].unique().to_list())
    if truth is None:
        raise EmulatorDataError(
            f"none of the {manifest['shard_uri'].n_unique()} shards has a truth table, so the "
            "survey catalogue has no labels to train on (a real survey): set the emulator's "
            "`labels_table` to a catalogue of known properties for some of its galaxies "
            "(object_id or ra/dec + label columns), or train on a table of your own with "
            "`table` and `table_config`"
        )
    errors = shard_flux_errors(manifest) if config.flux_errors else None
    table = build_survey_table(
        manifest,
        truth,
        predictions=_concat(predictions),
        embeddings=_concat(embeddings),
        flux_errors=errors,
        labels=config.labels,
        n_components=config.n_components,
    )
    if matched_how:  # the table's summary says where its labels came from
        table = replace(
            table, source=f"{table.source}, labels from {config.labels_table} {matched_how}"
        )
    return table


def catalogue_labels(config: EmulatorRunConfig, manifest: pl.DataFrame) -> pl.DataFrame:
    """``object_id`` + the label columns of ``config.labels_table`` for the manifest's
    galaxies (see :func:`match_catalogue_labels`)."""
    return match_catalogue_labels(config, manifest)[0]


def match_catalogue_labels(
    config: EmulatorRunConfig, manifest: pl.DataFrame
) -> tuple[pl.DataFrame, str]:
    """``object_id`` + the label columns of ``config.labels_table`` for the manifest's
    galaxies, and how they were matched (one line). Joined on ``object_id`` when the
    catalogue has one; else, or when none of its ids is a survey galaxy's (another survey's
    ids), matched by position on ``labels_ra_column``/``labels_dec_column`` (nearest survey
    galaxy within ``match_radius_arcsec``; see
    :func:`galaxy_assets.evaluation.labels.crossmatch`)."""
    path = Path(config.labels_table)
    if not path.is_file():
        raise EmulatorDataError(f"labels_table {path} does not exist")
    catalogue = pl.read_parquet(path)
    missing = [c for c in config.labels if c not in catalogue.columns]
    if missing:
        raise EmulatorConfigError(
            f"labels_table {path} lacks the label column(s) {missing} (it has "
            f"{catalogue.columns[:20]}); set the emulator's `labels` to columns it holds"
        )
    ra, dec = config.labels_ra_column, config.labels_dec_column
    has_position = ra in catalogue.columns and dec in catalogue.columns
    keys = "the emulator's labels_ra_column and labels_dec_column"
    if "object_id" in catalogue.columns:
        matched = catalogue.with_columns(pl.col("object_id").cast(pl.Utf8)).join(
            manifest.select(pl.col("object_id").cast(pl.Utf8)), on="object_id", how="semi"
        )
        how = "by object_id"
        if matched.height == 0 and has_position:
            log.warning(
                "labels_table %s: none of its %d object_ids is a survey galaxy's (another "
                "survey's ids?); matching it by position (%s, %s) instead",
                path,
                catalogue.height,
                ra,
                dec,
            )
            matched, how = _match_by_position(config, catalogue, manifest, path)
            how += " (its object_id matched no survey galaxy)"
        elif matched.height == 0:
            raise EmulatorDataError(
                f"no object_id of labels_table {path} is a survey galaxy's (ids of another "
                f"survey?), and it has no position columns {ra!r}/{dec!r} to match on instead "
                f"(it has {catalogue.columns[:20]}); set {keys} to its RA/Dec columns "
                "(degrees), or give it the survey's object_ids"
            )
    elif has_position:
        matched, how = _match_by_position(config, catalogue, manifest, path)
    else:
        raise EmulatorConfigError(
            f"labels_table {path} has neither object_id nor the position columns "
            f"{ra!r}/{dec!r} (it has {catalogue.columns[:20]}); set {keys} to its RA/Dec "
            "columns in degrees (e.g. 'RA'/'DEC', 'PLUG_RA'/'PLUG_DEC'), or add an object_id "
            "column of the survey's ids"
        )
    log.info(
        "labels_table %s: %d of %d rows matched %s", path, matched.height, catalogue.height, how
    )
    if matched.height == 0:
        raise EmulatorDataError(
            f"no row of labels_table {path} matches a survey galaxy ({how}); check its "
            f"object_id or position columns ({keys}: {ra!r}, {dec!r}) and "
            "match_radius_arcsec"
        )
    return matched.select("object_id", *config.labels), how


def _match_by_position(
    config: EmulatorRunConfig, catalogue: pl.DataFrame, manifest: pl.DataFrame, path: Path
) -> tuple[pl.DataFrame, str]:
    """:func:`~galaxy_assets.evaluation.labels.crossmatch` on the configured columns; its
    errors (text coordinates, say) come back as emulator errors that name the settings."""
    from galaxy_assets.evaluation.labels import CatalogueError, crossmatch

    radius = config.match_radius_arcsec
    if not (isinstance(radius, int | float) and math.isfinite(radius) and radius > 0):
        raise EmulatorConfigError(
            f"match_radius_arcsec={radius!r}; it must be a positive number of arcseconds"
        )
    try:
        matched, report = crossmatch(
            catalogue,
            manifest,
            radius_arcsec=radius,
            ra_column=config.labels_ra_column,
            dec_column=config.labels_dec_column,
            source=str(path),
        )
    except CatalogueError as exc:
        raise EmulatorDataError(
            f"labels_table {path} could not be matched by position on "
            f"labels_ra_column={config.labels_ra_column!r}, "
            f"labels_dec_column={config.labels_dec_column!r}: {exc}"
        ) from exc
    how = (
        f'by position ({config.labels_ra_column}, {config.labels_dec_column}) within {radius}" '
        f"({report.n_unmatched} unmatched, {report.n_matched_twice} survey galaxies claimed "
        "twice)"
    )
    return matched, how


# --------------------------------------------------------------------------- training
@dataclass
class EmulatorOutcome:
    """What :func:`train_evaluate_register` did."""

    table: EmulatorTable
    result: TrainResult
    report: CalibrationReport
    registration: EmulatorRegistration
    figures: dict[str, Path]
    tolerance: float = 0.03  # the gate's coverage tolerance (the run's config)

    def metadata(self) -> dict[str, Any]:
        gate = self.report.gate(tolerance=self.tolerance)
        out: dict[str, Any] = {
            **{f"table_{k}": v for k, v in self.table.summary().items()},
            **self.result.metrics,
            "registered_model": self.registration.name,
            "version": self.registration.version,
            "run_id": self.registration.run_id,
            "promoted": self.registration.promoted,
            "gate": self.registration.reason,
            "gate_all_labels": gate.reason,
        }
        for m in self.report.metrics:
            if m.subset == "all":
                for key in ("nmad", "outlier_fraction", "crps", "coverage_68", "coverage_95"):
                    out[f"{m.label}_{m.head}_{key}"] = float(getattr(m, key))
        return out


def registered_name_for(table: EmulatorTable) -> str:
    """``property-emulator`` for the survey catalogue; ``property-emulator-table-<name>`` for a
    user table. A user-table model passing its own gate took the survey's ``champion``, and
    every shard's posteriors then failed (it reads other columns than the survey's)."""
    if table.features:
        return REGISTERED_NAME
    stem = Path(str(table.source)).name.split(".")[0] or "table"
    return f"{REGISTERED_NAME}-table-" + re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")


def train_evaluate_register(
    tracker: Any,
    table: EmulatorTable,
    config: EmulatorRunConfig,
    *,
    device: str = "cpu",
    figure_dir: Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    tags: dict[str, Any] | None = None,
) -> EmulatorOutcome:
    """Train on ``table``, evaluate on the evaluation half of its held-out rows
    (:func:`~galaxy_assets.emulator.train.split_held_out`), log and register (see the module
    docstring). Figures are also written as PNG under ``figure_dir`` when given. A training
    that diverges raises :class:`~galaxy_assets.emulator.errors.TrainingDivergedError` before
    anything is registered."""
    from galaxy_assets.emulator.plots import (
        coverage_curve_figure,
        coverage_figure,
        pit_figure,
        posterior_figure,
    )

    result = train_emulator(table, config.train_config(device), progress=progress)
    # the evaluation half of the held-out rows: the other half chose the best weights, and
    # scoring (and gating on) the rows that chose them would be optimistic
    held_out = table.subset(np.isin(table.object_ids, result.eval_ids))
    training = table.subset(np.isin(table.object_ids, result.train_ids))
    subsets = survey_input_subsets(table.inputs) if table.features else {"all": None}
    report, kept = evaluate_emulator(
        result.model,
        held_out,
        subsets=subsets,
        n_samples=config.eval_samples,
        max_rows=config.eval_rows,
        seed=config.seed,
        keep_samples=True,
        # the skill floor is the label's distribution over the training rows (out of sample)
        prior_values={lab: training.frame[lab].to_numpy() for lab in table.labels},
    )
    figures: dict[str, Any] = {
        "calibration_coverage": coverage_figure(report),
        "pit_all_inputs": pit_figure(report, "all"),
        "coverage_curve": coverage_curve_figure(kept, "all"),
    }
    for label in report.labels:
        key = ("all", label)
        if key in kept.samples:
            figures[f"posteriors_{label}"] = posterior_figure(
                kept.samples[key],
                truth=kept.truth[key],
                gaussian=kept.gaussians[key],
                title=f"{label}: held-out posteriors (all inputs)",
            )
    # the gate checks the configured labels this table has (a user table has its own)
    gate_labels = [lab for lab in (config.gate_labels or ()) if lab in table.labels] or None
    registration = register_emulator(
        tracker,
        result,
        registered_name=registered_name_for(table),
        report=report,
        figures=figures,
        tolerance=config.tolerance,
        gate_labels=gate_labels,
        tags=tags,
        extra_params={"table": table.source, "gate_labels": ",".join(gate_labels or table.labels)},
    )
    paths: dict[str, Path] = {}
    if figure_dir is not None:
        figure_dir.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            # named after the registered model: a user-table model numbers its versions too,
            # and its v1 figures overwrote the survey emulator's v1 figures
            prefix = registration.name.removeprefix("property-")
            path = figure_dir / f"{prefix}_v{registration.version}_{name}.png"
            fig.savefig(path, dpi=80, bbox_inches="tight")
            paths[name] = path
    return EmulatorOutcome(table, result, report, registration, paths, config.tolerance)


# --------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class ServingEmulator:
    model: PropertyEmulator
    version: int
    source: str

    @property
    def emulator_version(self) -> str:
        return f"{REGISTERED_NAME}/v{self.version}"


def serving_emulator(
    tracker: Any, alias: str = "champion", device: str = "cpu", *, required: bool = True
) -> ServingEmulator | None:
    """``property-emulator@alias``; before any version passed the gate (``champion`` unset),
    the newest version (``source`` says which). Another alias that is not set is an error: a
    mistyped alias must not serve a version that failed the gate. With no version registered
    at all: an error, or None when not ``required``."""
    if tracker.get_alias_version(REGISTERED_NAME, alias) is not None:
        model, version = load_emulator(tracker, alias, device=device)
        return ServingEmulator(model, version, alias)
    latest = tracker.latest_version(REGISTERED_NAME)
    if latest is None:
        if not required:
            return None
        raise EmulatorConfigError(
            f"no {REGISTERED_NAME} is registered yet: materialize property_emulator first"
        )
    if alias != "champion":
        raise EmulatorConfigError(
            f"{REGISTERED_NAME} has no version with alias {alias!r} (newest: "
            f"v{latest.version}): check the alias in the run config, set it in the MLflow UI, "
            "or use 'champion'"
        )
    model, version = load_emulator(tracker, int(latest.version), device=device)
    return ServingEmulator(model, version, f"newest version (no {alias} yet)")


def shard_posteriors(
    serving: ServingEmulator,
    manifest: pl.DataFrame,
    *,
    predictions: pl.DataFrame | None = None,
    embeddings: pl.DataFrame | None = None,
    flux_errors: pl.DataFrame | None = None,
    n_samples: int = 1000,
    seed: int = 0,
) -> tuple[pl.DataFrame, PosteriorSummary]:
    """Posterior summaries of one shard's galaxies: ``object_id``, then per label
    ``<label>_median``, ``_p16``, ``_p84`` (the label's units) and ``_multimodal`` (bool),
    and ``emulator_version`` (the registered version number). Galaxies with no usable
    input are skipped and counted in the returned summary. An emulator trained on a user
    table cannot be applied to survey shards (its inputs are other columns): clear error."""
    features_cfg = serving.model.config.features
    if not features_cfg:
        raise EmulatorConfigError(
            f"{serving.emulator_version} was trained on a user table, not on the survey "
            "catalogue; survey posteriors need an emulator trained by property_emulator with "
            "an empty `table` setting"
        )
    spec = FeatureSpec.from_config(features_cfg)
    if spec.pca is None:
        embeddings = None
    elif embeddings is None:
        log.warning(
            "%s was trained with image-embedding PCs but this shard has no image embeddings; "
            "posteriors use the other inputs",
            serving.emulator_version,
        )
    features = survey_features(
        manifest,
        predictions=predictions,
        embeddings=embeddings,
        flux_errors=flux_errors,
        spec=spec,
    )
    known = [c for c in serving.model.columns if c in features.columns]
    summary = posterior_summaries(
        serving.model,
        features.select("object_id", *known),
        n_samples=n_samples,
        seed=seed,
        on_infinite="mask",
    )
    frame = summary.frame.with_columns(
        pl.lit(serving.version, dtype=pl.Int32).alias("emulator_version")
    )
    return frame, summary
