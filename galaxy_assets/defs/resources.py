"""Dagster resources: the home folder, the compute device, the survey roots.

``default_resources()`` builds them from the settings; with ``GALAXY_ASSETS_PROFILE=cluster``
the IO manager, MLflow and LanceDB point at the ``cluster`` section's shared locations.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from galaxy_assets.runtime import Home, select_device, select_dtype
from galaxy_assets.settings import load_settings
from galaxy_assets.survey.errors import SurveyConfigError
from galaxy_assets.survey.readers import find_shards, open_shard, resolve_shard, shard_key

log = logging.getLogger(__name__)


class HomeResource(dg.ConfigurableResource):
    """The folder that holds everything the graph writes (``GALAXY_ASSETS_HOME``)."""

    root: str = Field("", description="Empty: $GALAXY_ASSETS_HOME, else ./.galaxy_home")
    outputs: str = Field(
        "", description="Where the IO manager stores asset outputs (a folder or an object-store "
        "URI such as s3://bucket/outputs); empty: <home>/parquet")

    def home(self) -> Home:
        return Home.from_env(self.root or None).ensure()

    def outputs_dir(self):
        """The IO manager's base folder (a ``UPath``): assets that look at stored outputs
        (earlier vectors to reuse, other shards' manifests) read them here."""
        from upath import UPath

        return UPath(self.outputs) if self.outputs else UPath(self.home().parquet)


class ComputeResource(dg.ConfigurableResource):
    """Where torch work runs: device (auto, cpu, cuda, cuda:N, mps), dtype and batch size."""

    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 256

    def torch_device(self) -> str:
        """The torch device. Before CUDA is first touched, a process that may use any GPU is
        pinned to one GPU it alone holds (``CUDA_VISIBLE_DEVICES``; see defs/execution.py):
        with Dagster's multiprocess executor and on dask workers nothing else does it."""
        if self.device in ("auto", "cuda"):
            from galaxy_assets.defs.execution import pin_gpus

            pin_gpus()
        return select_device(self.device)

    def torch_dtype(self):
        return select_dtype(self.dtype, self.torch_device().split(":")[0])


class SurveyResource(dg.ConfigurableResource):
    """Which shards make up the survey, and how cutouts are read from them."""

    roots: list[str] = Field(default_factory=list, description="Empty: the home's mock survey")
    bands: list[str] = Field(default_factory=lambda: ["g", "r", "i", "z"])
    cutout_size: int = Field(64, description="Centre crop in pixels; 0 keeps the native size")
    # built from the settings (default_resources): those settings, so that the survey sensor
    # can tell when the settings file changed under a running `galaxy-assets dev`
    from_settings: bool = False

    def root_paths(self, home: Home) -> list[Path]:
        if self.roots:
            return [Path(r).expanduser().resolve() for r in self.roots]
        return [home.mock_survey]

    def discover(self, home: Home) -> dict[str, Path]:
        """Every shard under the roots, by partition key. A file whose name gives no valid
        key is logged and left out. Two shards with the same key (two roots of the same
        layout, ``x.h5`` beside ``x.hdf5``) are logged with what to do; the first found keeps
        the key (dropping it would read as a vanished shard and delete its index rows)."""
        found: dict[str, Path] = {}
        clashes: dict[str, list[Path]] = {}
        for root in self.root_paths(home):
            if not root.exists():
                continue
            for path in find_shards(root):
                try:
                    key = shard_key(root, path)
                except SurveyConfigError as exc:
                    log.warning("survey shard left out: %s", exc)
                    continue
                if key in found:
                    clashes.setdefault(key, [found[key]]).append(path)
                else:
                    found[key] = path
        for key, paths in clashes.items():
            parent = Path(os.path.commonpath([str(p) for p in paths]))
            log.error(
                "survey shards %s all have the partition key %r: only the first is ingested "
                "(its manifest build will call the key ambiguous). Point survey.roots at a "
                "folder above them (e.g. %s) so that each key names its own dataset, or "
                "remove one", [str(p) for p in paths], key, parent)
        return found

    def locate(self, home: Home, key: str) -> Path:
        return resolve_shard(self.root_paths(home), key)

    def open(self, path: Path):
        return open_shard(path, bands=self.bands, size=self.cutout_size or None)


class CaptionerResource(dg.ConfigurableResource):
    """The configured captioner backend (morphology, transformers, openai).

    ``api_key`` is normally a ``dg.EnvVar``: Dagster shows the variable's name, never its value.
    """

    backend: str = "morphology"
    model: str = ""
    base_url: str = ""
    api_key: str | None = None
    prompt: str = "describe_v1"
    max_new_tokens: int = 200
    max_words: int = 200  # openai: a longer reply is recorded as a failure (too_long)
    temperature: float = 0.0
    timeout_s: float = 60.0
    max_retries: int = 4
    image_size: int | None = None
    concurrency: int = 4
    request_budget: int | None = None
    workers: int = 1
    batch_size: int = 32

    @property
    def is_local(self) -> bool:
        from galaxy_assets.captioning.factory import LOCAL_BACKENDS

        return self.backend in LOCAL_BACKENDS

    def build(self, compute: ComputeResource):
        from galaxy_assets.captioning.factory import build_captioner

        return build_captioner(
            self.backend,
            model=self.model,
            base_url=self.base_url,
            api_key=self.api_key,
            prompt=self.prompt,
            max_new_tokens=self.max_new_tokens,
            max_words=self.max_words,
            temperature=self.temperature,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            image_size=self.image_size,
            concurrency=self.concurrency,
            request_budget=self.request_budget,
            workers=self.workers,
            batch_size=self.batch_size,
            device=compute.torch_device() if self.is_local else compute.device,
            dtype=compute.dtype,
        )


class TextEmbedderResource(dg.ConfigurableResource):
    """The configured text embedder (sentence-transformers from disk, or an OpenAI endpoint)."""

    backend: str = "sentence-transformers"
    model: str = ""
    base_url: str = ""
    api_key: str | None = None
    batch_size: int = 64
    dim: int | None = None  # openai only from here on; None: the backend's default
    concurrency: int | None = None
    timeout_s: float | None = None
    max_retries: int | None = None
    request_budget: int | None = None

    def build(self, compute: ComputeResource):
        from galaxy_assets.embedding.text import build_text_embedder

        return build_text_embedder(
            self.backend,
            model=self.model or None,
            base_url=self.base_url or None,
            api_key=self.api_key,
            batch_size=self.batch_size,
            dim=self.dim,
            concurrency=self.concurrency,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            request_budget=self.request_budget,
            device=compute.torch_device(),
        )


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking + model registry. Empty ``tracking_uri``: the home's sqlite store."""

    tracking_uri: str = ""
    artifact_root: str = ""

    def tracker(self, home: Home):
        from galaxy_assets.tracking import Tracker

        if not self.tracking_uri:
            return Tracker.from_home(home)
        return Tracker(self.tracking_uri, self.artifact_root or str(home.mlflow_artifacts))


class ImageEncoderResource(dg.ConfigurableResource):
    """The frozen image encoder: ``registry`` (default: morphology-encoder@champion trained by
    this graph), ``timm`` (any backbone, optional local checkpoint) or ``aion`` (AION-1).
    The graph's resource comes from the settings' ``image_encoder`` section
    (:class:`~galaxy_assets.settings.ImageEncoderSettings`, which documents each field)."""

    kind: str = "registry"
    model_name: str = "morphology-encoder"
    alias: str = "champion"
    name: str = ""  # timm backbone name
    checkpoint: str = ""  # timm: local checkpoint file
    model: str = ""  # aion: weights folder or hub id
    bands: list[str] = []  # timm, aion: the bands read (empty: g, r, i, z)
    image_size: int | None = None  # timm: input crop (None: 64)
    normalize: str = ""  # timm: asinh or none (empty: asinh)
    survey: str = ""  # aion: legacysurvey or hsc (empty: legacysurvey)
    batch_size: int = 256
    tta: str = "rot4"  # test-time views: rot4, d8 or none

    @classmethod
    def from_settings(cls, settings=None) -> ImageEncoderResource:
        """The resource the graph uses: the settings' ``image_encoder`` section."""
        return cls(**(settings or load_settings()).image_encoder.model_dump())

    def expected_id(self, tracker) -> str | None:
        """The encoder id this resource builds, where it can be told without loading weights
        (the registry kind: the version its alias names now, and the views); None otherwise."""
        from galaxy_assets.embedding.image import image_encoder_kind, registry_encoder_id

        if image_encoder_kind(self.kind) != "registry":
            return None
        try:
            version = tracker.resolve_version(self.model_name, self.alias).version
        except Exception:  # noqa: BLE001 - nothing registered yet: nothing to check against
            return None
        views = "" if self.tta == "none" else f"+{self.tta}"
        return registry_encoder_id(self.model_name, int(version)) + views

    def build(self, compute: ComputeResource, tracker):
        from galaxy_assets.embedding.image import image_encoder_from_settings

        return image_encoder_from_settings(self, tracker=tracker, device=compute.torch_device(),
                                           dtype=compute.dtype)


class SearchIndexResource(dg.ConfigurableResource):
    """The LanceDB ``galaxy_index`` table: where it lives and which aligner it serves."""

    uri: str = Field("", description="LanceDB URI (folder or s3://…); empty: <home>/lancedb")
    table: str = "galaxy_index"
    aligner_alias: str = "champion"

    def location(self, home: Home) -> str:
        return self.uri or str(home.lancedb)


def _secret(env_name: str):
    return dg.EnvVar(env_name) if env_name else None


def survey_fields(settings) -> dict:
    """The survey resource's fields from ``settings``: the ``survey`` section, with the home's
    mock survey read at the size `demo --size` simulated it at unless the settings give one (a
    32 px survey read at the default 64 px failed every raw_cutouts run under `dev`)."""
    survey = settings.survey.model_dump()
    simulated = settings.home_folder().simulated_cutout_size()
    if not settings.survey.roots and "cutout_size" not in settings.survey.model_fields_set \
            and simulated is not None:
        survey["cutout_size"] = simulated
    return survey


def default_resources() -> dict[str, object]:
    """Resources configured from settings (config file + environment)."""
    from galaxy_assets.defs.io import ShardParquetIOManager

    settings = load_settings()
    home = settings.home_folder()
    io_base_dir = str(home.parquet)
    mlflow = MLflowResource(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", ""))
    lancedb_uri = settings.search.uri
    if settings.is_cluster:
        cluster = settings.cluster_settings()
        io_base_dir = cluster.io_base_dir or io_base_dir
        mlflow = MLflowResource(tracking_uri=cluster.mlflow_tracking_uri,
                                artifact_root=cluster.mlflow_artifact_root)
        lancedb_uri = cluster.lancedb_uri
    outputs = "" if io_base_dir == str(home.parquet) else io_base_dir
    survey = survey_fields(settings)
    return {
        "home": HomeResource(root=settings.home, outputs=outputs),
        "compute": ComputeResource(**settings.compute.model_dump()),
        "survey": SurveyResource(**survey, from_settings=True),
        "io_manager": ShardParquetIOManager(base_dir=io_base_dir),
        "mlflow": mlflow,
        "image_encoder": ImageEncoderResource.from_settings(settings),
        "search_index": SearchIndexResource(
            uri=lancedb_uri, table=settings.search.table,
            aligner_alias=settings.search.aligner_alias,
        ),
        # every setting of the section but the key's variable name (the key itself goes in
        # as an EnvVar) and the sample, which caption_sample reads
        "captioner": CaptionerResource(
            api_key=_secret(settings.captioner.api_key_env),
            **settings.captioner.model_dump(exclude={"api_key_env", "sample_size", "sample_seed"}),
        ),
        "text_embedder": TextEmbedderResource(
            api_key=_secret(settings.text_embedder.api_key_env),
            **settings.text_embedder.model_dump(exclude={"api_key_env"}),
        ),
    }
