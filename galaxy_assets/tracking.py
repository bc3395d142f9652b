"""A small MLflow layer: runs, metrics, plots, and PyTorch models kept as state dicts.

Plain Python (no Dagster); the morphology encoder, the search aligner and the property
emulator all log through it. It talks to MLflow through an explicit :class:`MlflowClient`
(no global ``mlflow.set_tracking_uri``), so several trackers can live in one process.

Models are stored as *data*, never as pickles of arbitrary objects::

    <artifact_path>/
        model.safetensors   the state dict (tensors only)
        model.json          {"format", "code_ref", "config", "weights", "sha256", ...}

``code_ref`` ("package.module:function") names our own loader, called as
``function(config) -> nn.Module``; :meth:`Tracker.load_torch_model` imports it (only from
modules under ``allowed_loaders``, ``galaxy_assets.`` by default), rebuilds the module and
loads the tensors with ``load_state_dict(strict=True)``.

Typical use::

    tracker = Tracker.from_home(Home.from_env())
    with tracker.start_run("morphology", run_name="demo", tags={"shard_count": "3"}) as run:
        run.log_params({"lr": 1e-3})
        run.log_metrics({"val_loss": 12.3}, step=4)
        path = run.log_torch_model("model", model.state_dict(), config,
                                   "galaxy_assets.morphology.model:build_from_config")
    version = tracker.register(run.run_id, path, "morphology-encoder")
    tracker.promote_if_better("morphology-encoder", version, "val_loss")
    module, config = tracker.load_torch_model("morphology-encoder", "champion")
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:  # imported lazily: mlflow takes seconds to import
    import torch
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_FORMAT",
    "PromotionResult",
    "TrackedRun",
    "Tracker",
    "TrackingError",
]

MODEL_FORMAT = "galaxy-assets-torch/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
DEFAULT_ALLOWED_LOADERS: tuple[str, ...] = ("galaxy_assets.",)
_PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a parameter value
_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch


def _not_found(exc: Exception) -> bool:
    """Whether an MlflowException says the model or version does not exist (as opposed to a
    registry that did not answer)."""
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "RESOURCE_DOES_NOT_EXIST" in str(
        code)


class TrackingError(Exception):
    """MLflow tracking or registry problem: names the model / alias / run and what to do."""


# --------------------------------------------------------------------------- helpers
def _file_uri(path: str | Path) -> str:
    return Path(path).expanduser().resolve().as_uri()


def _local_path(uri: str) -> Path | None:
    """The local path of a ``file://`` URI or plain path, else None (remote store)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings → ``{"a.b": "value"}`` with values as strings (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        if isinstance(value, list | tuple):
            text = json.dumps(list(value), default=str)
        else:
            text = str(value)
        if len(text) > _PARAM_VALUE_LIMIT:
            text = text[: _PARAM_VALUE_LIMIT - 3] + "..."
        out[name] = text
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_loader(code_ref: str, allowed: tuple[str, ...] = DEFAULT_ALLOWED_LOADERS) -> Callable:
    """Import ``"package.module:function"``; only modules under one of ``allowed`` prefixes."""
    module_name, sep, attr = code_ref.partition(":")
    if not sep or not module_name or not attr:
        raise TrackingError(
            f"loader reference {code_ref!r} is not 'package.module:function'; log the model "
            "with code_ref like 'galaxy_assets.morphology.model:build_from_config'"
        )
    if not any(module_name == p.rstrip(".") or module_name.startswith(p) for p in allowed):
        raise TrackingError(
            f"loader {code_ref!r} is outside the trusted modules {list(allowed)}; a registry "
            "entry may only rebuild models through galaxy-assets code. Pass "
            "allowed_loaders=(...) to Tracker if this loader is yours"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrackingError(
            f"loader {code_ref!r}: cannot import {module_name!r} ({exc}); install the "
            "galaxy-assets version that logged the model"
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TrackingError(
            f"loader {code_ref!r}: {module_name} has no function {attr!r}; the model was "
            "logged by another galaxy-assets version"
        )
    return fn


def save_torch_model(
    folder: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    code_ref: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``folder`` (created) and return it."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TrackingError(
                f"state dict entry {key!r} is a {type(value).__name__}, not a tensor; put "
                "non-tensor settings in the config instead"
            )
        # clone: safetensors refuses tensors that share storage (tied weights, views)
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    try:
        json.dumps(dict(config))
    except TypeError as exc:
        raise TrackingError(
            f"model config is not JSON-serialisable ({exc}); use plain types"
        ) from exc
    resolve_loader(code_ref, allowed=(code_ref.partition(":")[0],))  # must at least import
    weights = folder / WEIGHTS_FILE
    save_file(tensors, str(weights))
    meta = {
        "format": MODEL_FORMAT,
        "code_ref": code_ref,
        "config": dict(config),
        "weights": WEIGHTS_FILE,
        "sha256": _sha256(weights),
        "n_tensors": len(tensors),
        "n_parameters": int(sum(t.numel() for t in tensors.values() if t.is_floating_point())),
        "torch_version": torch.__version__,
        **(dict(extra) if extra else {}),
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_torch_folder(
    folder: str | Path,
    *,
    device: str = "cpu",
    allowed_loaders: tuple[str, ...] = DEFAULT_ALLOWED_LOADERS,
    what: str | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a module saved by :func:`save_torch_model` (tensors only, strict keys)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    what = what or str(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise TrackingError(
            f"{what}: no {META_FILE} in {folder}; it was not logged with log_torch_model "
            "(state dict + config). Re-log it, or point at the right artifact path"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != MODEL_FORMAT:
        raise TrackingError(
            f"{what}: unknown model format {meta.get('format')!r} (expected {MODEL_FORMAT!r})"
        )
    weights = folder / str(meta.get("weights", WEIGHTS_FILE))
    if not weights.is_file():
        raise TrackingError(f"{what}: weights file {weights} is missing; re-log the model")
    if meta.get("sha256") and _sha256(weights) != meta["sha256"]:
        raise TrackingError(
            f"{what}: {weights.name} does not match the checksum in {META_FILE}; the artifact "
            "is corrupt or was modified. Re-register the model from its training run"
        )
    loader = resolve_loader(str(meta["code_ref"]), allowed=allowed_loaders)
    config = dict(meta["config"])
    module = loader(config)
    state = load_file(str(weights), device="cpu")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise TrackingError(
            f"{what}: the state dict does not fit the module built by {meta['code_ref']} "
            f"({str(exc).splitlines()[0]}); the loader changed since the model was logged"
        ) from exc
    module.to(device)
    module.eval()
    return module, config


# --------------------------------------------------------------------------- runs
class TrackedRun:
    """An active MLflow run (yielded by :meth:`Tracker.start_run`)."""

    def __init__(self, tracker: Tracker, run_id: str, experiment_id: str, artifact_uri: str):
        self.tracker = tracker
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.artifact_uri = artifact_uri

    @property
    def _client(self) -> MlflowClient:
        return self.tracker.client

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (nested mappings flattened to ``a.b``; values as strings)."""
        from mlflow.entities import Param

        flat = list(flatten_params(params).items())
        for i in range(0, len(flat), _BATCH):
            self._client.log_batch(
                self.run_id, params=[Param(k, v) for k, v in flat[i : i + _BATCH]]
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics at ``step``; non-numeric values are ignored with a warning."""
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items: list[Metric] = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                log.warning(
                    "run %s: metric %r=%r is not a number; not logged", self.run_id, key, value
                )
                continue
            items.append(Metric(key, number, ts, step or 0))
        for i in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as PNG at ``artifact_file`` (e.g. ``plots/votes.png``)."""
        if not artifact_file.lower().endswith(".png"):
            artifact_file += ".png"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            figure.savefig(path, format="png", dpi=110, bbox_inches="tight")
            self.log_artifact(path, str(Path(artifact_file).parent).strip("."))

    def log_markdown(self, text: str, artifact_file: str) -> None:
        """Store Markdown text at ``artifact_file`` (e.g. ``report.md``)."""
        self.log_text(text, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(text)
            self.log_artifact(path, str(Path(artifact_file).parent).strip("."))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2, default=str), artifact_file)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(local_path), artifact_path or None)

    def log_torch_model(
        self,
        name: str,
        state_dict: Mapping[str, torch.Tensor],
        config: Mapping[str, Any],
        code_ref: str,
    ) -> str:
        """Log a model as ``<name>/model.safetensors`` + ``<name>/model.json``.

        ``code_ref`` is ``"package.module:function"`` that rebuilds the module from
        ``config``. Returns the artifact path (``name``) to pass to :meth:`Tracker.register`.
        """
        if not name or name.startswith("/") or ".." in Path(name).parts:
            raise TrackingError(
                f"artifact name {name!r} must be a relative path inside the run, like 'model'"
            )
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_torch_model(Path(tmp) / "model", state_dict, config, code_ref)
            self._client.log_artifacts(self.run_id, str(folder), name)
        return name


# --------------------------------------------------------------------------- tracker
@dataclass(frozen=True)
class PromotionResult:
    """What :meth:`Tracker.promote_if_better` decided."""

    promoted: bool
    alias: str
    version: int
    value: float | None
    previous_version: int | None
    previous_value: float | None
    reason: str


def _is_remote_uri(text: str) -> bool:
    """Whether ``text`` is a URI with a scheme other than file (s3://, gs://, …), not a path
    (a Windows drive letter is a path)."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+)://", text)
    return match is not None and match.group(1).lower() != "file"


class Tracker:
    """MLflow tracking + registry in ``tracking_uri`` (``sqlite:///…`` by default), with new
    experiments storing artifacts under ``artifact_root/<experiment>``."""

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: str | Path,
        *,
        registry_uri: str | None = None,
        allowed_loaders: tuple[str, ...] = DEFAULT_ALLOWED_LOADERS,
    ) -> None:
        if not tracking_uri:
            raise TrackingError("tracking_uri is empty; use e.g. sqlite:///path/to/mlflow.db")
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        # an object-store URI (s3://bucket/mlflow, gs://…) stays a URI: as a Path it became a
        # local folder "s3:/bucket/…" and every model was written to one machine's disk
        root = str(artifact_root)
        self.artifact_uri: str | None = root.rstrip("/") if _is_remote_uri(root) else None
        self.artifact_root = (
            Path(artifact_root).expanduser().resolve() if self.artifact_uri is None else None
        )
        self.allowed_loaders = tuple(allowed_loaders)
        self._client: MlflowClient | None = None
        local_db = _sqlite_path(tracking_uri)
        if local_db is not None:
            local_db.parent.mkdir(parents=True, exist_ok=True)
        if self.artifact_root is not None:
            self.artifact_root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_home(cls, home: Any) -> Tracker:
        """The tracker of a :class:`galaxy_assets.runtime.Home` (its mlflow/ folder)."""
        return cls(home.mlflow_tracking_uri, home.mlflow_artifacts)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from mlflow import MlflowClient

            # Opening the stores creates or migrates a SQLite database; two run processes
            # doing that at once fail ("duplicate column name"), so building the client and
            # its first touch of the stores are serialised across processes by a lock file
            # beside the database.
            other = self.registry_uri if self.registry_uri != self.tracking_uri else ""
            with _sqlite_init_lock(self.tracking_uri), _sqlite_init_lock(other):
                client = MlflowClient(
                    tracking_uri=self.tracking_uri, registry_uri=self.registry_uri
                )
                client.search_experiments(max_results=1)
                client.search_registered_models(max_results=1)
            self._client = client
        return self._client

    def __repr__(self) -> str:
        return f"Tracker({self.tracking_uri!r}, {self.artifact_uri or str(self.artifact_root)!r})"

    # ------------------------------------------------------------- experiments / runs
    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``, created (artifacts in ``artifact_root/name``) if new."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"experiment {name!r} is deleted in {self.tracking_uri}; restore it "
                    "(mlflow experiments restore) or use another experiment name"
                )
            return exp.experiment_id
        from mlflow.exceptions import MlflowException

        location = (
            f"{self.artifact_uri}/{name}"
            if self.artifact_uri is not None
            else _file_uri(self.artifact_root / name)  # type: ignore[operator]
        )
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # another process created it between the lookup and the create
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @contextmanager
    def start_run(
        self,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> Iterator[TrackedRun]:
        """A run in ``experiment``; ends FINISHED, or FAILED when the block raises."""
        exp_id = self.experiment_id(experiment)
        run = self.client.create_run(
            exp_id, run_name=run_name, tags={k: str(v) for k, v in (tags or {}).items()}
        )
        handle = TrackedRun(self, run.info.run_id, exp_id, run.info.artifact_uri)
        try:
            yield handle
        except BaseException:
            self.client.set_terminated(handle.run_id, status="FAILED")
            raise
        self.client.set_terminated(handle.run_id, status="FINISHED")

    def log_report(
        self,
        experiment: str,
        run_name: str,
        *,
        markdown: str | None = None,
        figures: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        tables: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """One run holding a report: ``report.md``, ``plots/<name>.png`` per figure, metrics,
        params and ``tables/<name>.csv`` per polars/pandas frame. Returns the run id."""
        with self.start_run(experiment, run_name=run_name, tags=tags) as run:
            if params:
                run.log_params(params)
            if metrics:
                run.log_metrics(metrics)
            if markdown is not None:
                run.log_markdown(markdown, "report.md")
            for name, fig in (figures or {}).items():
                run.log_figure(fig, f"plots/{name}.png")
            for name, frame in (tables or {}).items():
                csv = (
                    frame.write_csv() if hasattr(frame, "write_csv") else frame.to_csv(index=False)
                )
                run.log_text(csv, f"tables/{name}.csv")
        return run.run_id

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """Latest value of every metric of a run."""
        return dict(self.client.get_run(run_id).data.metrics)

    # ------------------------------------------------------------------- registry
    def register(
        self,
        run_id: str,
        artifact_path: str,
        registered_name: str,
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> int:
        """Register the model logged at ``artifact_path`` of run ``run_id``; returns the version."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            raise TrackingError(
                f"cannot register {registered_name!r}: run {run_id!r} not found in "
                f"{self.tracking_uri} ({exc.message})"
            ) from exc
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path.strip('/')}"
        local = _local_path(source)
        if local is not None and not (local / META_FILE).is_file():
            raise TrackingError(
                f"cannot register {registered_name!r}: run {run_id} has no model at "
                f"{artifact_path!r} ({local} holds no {META_FILE}); log it with "
                "run.log_torch_model first"
            )
        try:
            self.client.get_registered_model(registered_name)
        except MlflowException:
            try:
                self.client.create_registered_model(registered_name)
            except MlflowException:
                self.client.get_registered_model(registered_name)  # created by another process
        mv = self.client.create_model_version(
            registered_name,
            source=source,
            run_id=run_id,
            tags={k: str(v) for k, v in (tags or {}).items()} or None,
            description=description,
        )
        log.info("registered %s version %s from run %s", registered_name, mv.version, run_id)
        return int(mv.version)

    def set_alias(self, name: str, alias: str, version: int | str) -> None:
        """Point ``alias`` of registered model ``name`` at ``version``."""
        self._model_version(name, int(version))  # clear error if absent
        self.client.set_registered_model_alias(name, alias, str(int(version)))

    def get_alias_version(self, name: str, alias: str) -> ModelVersion | None:
        """The version ``alias`` points at, or None (model unregistered or alias unset)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def latest_version(self, name: str) -> ModelVersion | None:
        """The highest version of ``name``, or None when it has none."""
        from mlflow.exceptions import MlflowException

        try:
            versions = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            return None
        return max(versions, key=lambda v: int(v.version), default=None)

    def version_metric(self, name: str, version: int | str, metric: str) -> float | None:
        """Metric ``metric`` of the run that produced ``name`` version ``version``."""
        mv = self._model_version(name, int(version))
        if not mv.run_id:
            return None
        value = self.run_metrics(mv.run_id).get(metric)
        return None if value is None or not math.isfinite(value) else float(value)

    def promote_if_better(
        self,
        name: str,
        version: int | str,
        metric: str,
        *,
        alias: str = "champion",
        higher_is_better: bool = False,
    ) -> PromotionResult:
        """Move ``alias`` to ``version`` when its run's ``metric`` beats the current holder's.

        With no current holder the alias moves; a candidate without a finite ``metric``
        never takes it. Compares values logged by the runs: only meaningful when both were
        measured on the same held-out set.
        """
        version = int(version)
        value = self.version_metric(name, version, metric)
        current = self.get_alias_version(name, alias)
        prev_v = int(current.version) if current is not None else None
        prev_value = self.version_metric(name, prev_v, metric) if prev_v is not None else None
        if value is None:
            return PromotionResult(
                False,
                alias,
                version,
                None,
                prev_v,
                prev_value,
                f"version {version} has no finite metric {metric!r}",
            )
        if prev_v == version:
            return PromotionResult(
                True,
                alias,
                version,
                value,
                prev_v,
                prev_value,
                f"{alias} already points at version {version}",
            )
        better = prev_value is None or (
            value > prev_value if higher_is_better else value < prev_value
        )
        if better:
            self.set_alias(name, alias, version)
            why = (
                f"no {alias} yet"
                if prev_v is None
                else f"{metric} {value:.5g} beats version {prev_v}'s {prev_value}"
            )
        else:
            why = f"{metric} {value:.5g} does not beat version {prev_v}'s {prev_value:.5g}"
        log.info("%s v%d: %s", name, version, why)
        return PromotionResult(better, alias, version, value, prev_v, prev_value, why)

    def _model_version(self, name: str, version: int) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        self._registered(name)
        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            if not _not_found(exc):
                raise  # the registry did not answer: not a missing version
            latest = self.latest_version(name)
            raise TrackingError(
                f"registered model {name!r} has no version {version} (latest: "
                f"{latest.version if latest else 'none'}) in {self.registry_uri}"
            ) from None

    def resolve_version(self, name: str, alias_or_version: str | int) -> ModelVersion:
        """A version given as a number (``3``, ``"3"``) or an alias (``"champion"``)."""
        if isinstance(alias_or_version, int) or str(alias_or_version).isdigit():
            return self._model_version(name, int(alias_or_version))
        alias = str(alias_or_version)
        mv = self.get_alias_version(name, alias)
        if mv is None:
            rm = self._registered(name)
            aliases = sorted(getattr(rm, "aliases", {}) or {})
            latest = self.latest_version(name)
            raise TrackingError(
                f"registered model {name!r} has no alias {alias!r} (aliases: {aliases or 'none'}, "
                f"latest version: {latest.version if latest else 'none'}); pass a version "
                f"number, or set the alias with Tracker.set_alias({name!r}, {alias!r}, version)"
            )
        return mv

    def _registered(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as exc:
            if not _not_found(exc):
                raise  # the registry did not answer (a connection error): not a missing model
            raise TrackingError(
                f"no registered model {name!r} in {self.registry_uri}; train and register it "
                f"first (for the morphology encoder: materialize morphology_encoder)"
            ) from None

    def load_torch_model(
        self,
        name: str,
        alias_or_version: str | int = "champion",
        *,
        device: str = "cpu",
    ) -> tuple[torch.nn.Module, dict[str, Any]]:
        """Rebuild registered model ``name`` at an alias or version: ``(module, config)``.

        The module is rebuilt by the logged loader reference and gets the logged tensors
        (``strict=True``); it is returned in eval mode on ``device``.
        """
        mv = self.resolve_version(name, alias_or_version)
        what = f"{name} version {mv.version}"
        return self.load_torch_artifact(mv.source, device=device, what=what)

    def load_torch_artifact(
        self,
        artifact_uri: str,
        *,
        device: str = "cpu",
        what: str | None = None,
    ) -> tuple[torch.nn.Module, dict[str, Any]]:
        """Rebuild a model from its artifact folder URI (``file://…`` or a remote store)."""
        local = _local_path(artifact_uri)
        if local is not None:
            if not local.is_dir():
                raise TrackingError(
                    f"{what or artifact_uri}: artifact folder {local} does not exist; the "
                    "MLflow artifacts were moved or deleted. Re-train or restore them"
                )
            return load_torch_folder(
                local, device=device, allowed_loaders=self.allowed_loaders, what=what
            )
        import mlflow.artifacts

        tmp = tempfile.mkdtemp(prefix="ga_model_")
        try:
            folder = mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=self.tracking_uri
            )
            return load_torch_folder(
                folder, device=device, allowed_loaders=self.allowed_loaders, what=what
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _sqlite_init_lock(uri: str) -> Iterator[None]:
    """An exclusive inter-process lock on ``<db>.lock`` for a ``sqlite:///`` URI (no-op for
    other stores and where ``fcntl`` is missing)."""
    from galaxy_assets.runtime import exclusive_file_lock

    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    with exclusive_file_lock(path.with_name(path.name + ".lock")):
        yield


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None
