"""The property emulator (Leung, Bovy & Speagle 2024): a transformer over catalogue tokens
with a denoising-diffusion head, giving full (possibly multimodal) posteriors of any label
from whatever inputs a row has.

* :mod:`~galaxy_assets.emulator.tokenizer` — column vocabulary, robust standardisation, masks;
* :mod:`~galaxy_assets.emulator.model` — :class:`PropertyEmulator` (encoder, DDPM head,
  Gaussian baseline head), its config, registry save/load;
* :mod:`~galaxy_assets.emulator.diffusion` — schedules, noise-prediction loss, samplers
  (DPM-Solver++(2M) ``dpm++2m`` by default, 25 steps; DDIM, DDPM);
* :mod:`~galaxy_assets.emulator.data` — the survey catalogue table, user Parquet + YAML roles;
* :mod:`~galaxy_assets.emulator.train` — ``train_emulator`` and ``register_emulator``;
* :mod:`~galaxy_assets.emulator.posterior` — samples, summaries, multimodality, joint draws;
* :mod:`~galaxy_assets.emulator.calibration` — accuracy, CRPS, coverage, PIT, the champion gate;
* :mod:`~galaxy_assets.emulator.plots` — example posteriors and calibration figures.

Plain Python/PyTorch; knows nothing of Dagster.
"""

from galaxy_assets.emulator.calibration import (
    CalibrationReport,
    EvaluationSamples,
    GateResult,
    HeadMetrics,
    evaluate_emulator,
)
from galaxy_assets.emulator.data import (
    MORPHOLOGY_COLUMNS,
    SURVEY_LABELS,
    EmbeddingPCA,
    EmulatorTable,
    FeatureSpec,
    TableConfig,
    build_survey_table,
    example_config,
    flux_errors_from_shard,
    load_table,
    load_table_config,
    make_table,
    survey_features,
    survey_input_subsets,
)
from galaxy_assets.emulator.errors import (
    EmulatorConfigError,
    EmulatorDataError,
    EmulatorError,
    TrainingDivergedError,
    UnknownLabelError,
)
from galaxy_assets.emulator.model import (
    CODE_REF,
    DEFAULT_KNOTS,
    DEFAULT_SAMPLING_STEPS,
    DEFAULT_SOLVER,
    REGISTERED_NAME,
    EmulatorConfig,
    PropertyEmulator,
    build_from_config,
    load_emulator,
    log_emulator,
)
from galaxy_assets.emulator.posterior import (
    GaussianPosterior,
    JointSamples,
    PosteriorSamples,
    PosteriorSummary,
    gaussian_posterior,
    joint_posterior,
    multimodality,
    posterior_summaries,
    sample_posterior,
    summary_columns,
)
from galaxy_assets.emulator.tokenizer import Tokenizer
from galaxy_assets.emulator.train import (
    EmulatorRegistration,
    TrainConfig,
    TrainResult,
    register_emulator,
    train_emulator,
)

__all__ = [
    "CODE_REF",
    "DEFAULT_KNOTS",
    "DEFAULT_SAMPLING_STEPS",
    "DEFAULT_SOLVER",
    "MORPHOLOGY_COLUMNS",
    "REGISTERED_NAME",
    "SURVEY_LABELS",
    "CalibrationReport",
    "EmbeddingPCA",
    "EmulatorConfig",
    "EmulatorConfigError",
    "EmulatorDataError",
    "EmulatorError",
    "EmulatorRegistration",
    "EmulatorTable",
    "EvaluationSamples",
    "FeatureSpec",
    "GateResult",
    "GaussianPosterior",
    "HeadMetrics",
    "JointSamples",
    "PosteriorSamples",
    "PosteriorSummary",
    "PropertyEmulator",
    "TableConfig",
    "Tokenizer",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "UnknownLabelError",
    "build_from_config",
    "build_survey_table",
    "evaluate_emulator",
    "example_config",
    "flux_errors_from_shard",
    "gaussian_posterior",
    "joint_posterior",
    "load_emulator",
    "load_table",
    "load_table_config",
    "log_emulator",
    "make_table",
    "multimodality",
    "posterior_summaries",
    "register_emulator",
    "sample_posterior",
    "summary_columns",
    "survey_features",
    "survey_input_subsets",
    "train_emulator",
]
