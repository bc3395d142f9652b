"""Where steps run: the executor of each profile, the one declaration of GPU steps, GPU pinning.

* ``executor_for(settings)``: ``None`` for the ``local`` profile (Dagster's default
  multiprocess executor, as before); for ``cluster`` the configured distributed executor:
  ``dask`` (``pooled_dask_executor``, below), ``k8s`` (dagster-k8s' ``k8s_job_executor``)
  or ``multiprocess``.
* ``gpu_step()``: the decorator arguments of every torch asset: ``pool="gpu"`` (instance
  pools: the multiprocess and Kubernetes executors claim a slot per step; the limit is the
  number of GPUs), ``dagster-dask/resource_requirements`` = ``{"GPU": n}`` (a dask worker
  runs at most its declared GPUs' worth of such steps at once), and ``dagster-k8s/config``
  (``nvidia.com/gpu`` limit, node selector and tolerations from the ``cluster`` settings).
* ``pin_gpus()``: sets ``CUDA_VISIBLE_DEVICES`` to GPUs leased by this process alone (a lock
  file per GPU and host, released when the process ends), unless the executor already pinned
  the process. Kubernetes pins through its device plugin; Dagster's multiprocess executor and
  plain dask workers do not, so ``ComputeResource.torch_device()`` calls ``pin_gpus()``
  before torch first touches CUDA, and ``pooled_dask_executor`` registers
  ``gpu_pinning_plugin()`` so every dask worker is pinned when it starts (before any task can
  initialise CUDA): a worker declaring ``--resources GPU=1`` holds one GPU, a worker
  declaring none sees no GPU.

Dagster's stock dask executor ignores instance pools (it submits steps to dask without
claiming concurrency slots; see docs/cluster.md), so the single-writer rule of
``galaxy_index`` (pool ``lancedb_writer``, limit 1) would not hold. ``pooled_dask_executor``
is the stock executor with one change: the dask task claims the step's pool slot from the
Dagster instance before it executes the step and frees it afterwards, exactly as the
multiprocess executor does. Slots are instance-wide, so the rule holds across runs and
executors. On SQLite storage the claim holds a lock file (``_claim``): Dagster's claim is not
atomic there.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from galaxy_assets.runtime import restore_interrupt_signals
from galaxy_assets.settings import ClusterSettings, Settings, load_settings

log = logging.getLogger(__name__)

GPU_POOL = "gpu"
LANCEDB_WRITER_POOL = "lancedb_writer"
GPU_TAG = "galaxy-assets/gpus"
DASK_RESOURCES_TAG = "dagster-dask/resource_requirements"
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_LOCK_DIR_ENV = "GALAXY_ASSETS_GPU_LOCK_DIR"


class ExecutionError(Exception):
    """A step cannot be placed: no free GPU, an executor that cannot be built."""


# --- the one declaration of GPU steps -------------------------------------------------------


def gpu_step(
    gpus: int = 1, *, enabled: bool = True, cluster: ClusterSettings | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``@dg.asset`` of a step that runs torch on a GPU when one exists.

    ``enabled=False`` (a step that uses no GPU in this configuration) returns no pool and no
    tags. ``cluster`` defaults to the loaded settings' ``cluster`` section (node selector,
    tolerations, CPU and memory requests of GPU pods)."""
    if not enabled:
        return {"pool": None, "op_tags": None}
    if gpus < 1:
        raise ValueError(f"gpu_step(gpus={gpus}): a GPU step needs at least one GPU")
    c = cluster if cluster is not None else _settings_or_default().cluster
    pod_spec: dict[str, Any] = {}
    if c.gpu_node_selector:
        pod_spec["node_selector"] = dict(c.gpu_node_selector)
    if c.gpu_tolerations:
        pod_spec["tolerations"] = [dict(t) for t in c.gpu_tolerations]
    k8s = {
        "container_config": {
            "resources": {
                "limits": {"nvidia.com/gpu": str(gpus)},
                "requests": {"cpu": c.gpu_cpu, "memory": c.gpu_memory},
            }
        },
        "pod_spec_config": pod_spec,
    }
    return {
        "pool": GPU_POOL,
        "op_tags": {
            GPU_TAG: str(gpus),
            DASK_RESOURCES_TAG: json.dumps({"GPU": gpus}),
            K8S_CONFIG_TAG: json.dumps(k8s),
        },
    }


def _settings_or_default() -> Settings:
    try:
        return load_settings()
    except Exception as exc:  # definitions must load; the resources report the settings error
        log.warning("settings could not be read (%s): GPU step tags use the defaults", exc)
        return Settings()


def shard_backfill_policy() -> dg.BackfillPolicy:
    """The backfill policy of the per-shard model stages (image embeddings, vote fractions,
    posteriors, search vectors). ``local``: one run for the whole backfill, so the model loads
    once. ``cluster`` with ``shards_per_run`` N > 0: runs of at most N shards, which the run
    queue starts side by side and the executor spreads over workers (each run still loads its
    model once), so these stages scale with workers. ``galaxy_index`` keeps one run: its
    writes are serialised anyway (pool ``lancedb_writer``)."""
    n = shards_per_run()
    return dg.BackfillPolicy.multi_run(n) if n > 0 else dg.BackfillPolicy.single_run()


def shards_per_run() -> int:
    """``cluster.shards_per_run`` under the cluster profile, else 0 (no limit)."""
    settings = _settings_or_default()
    return settings.cluster.shards_per_run if settings.is_cluster else 0


# --- executors per profile ------------------------------------------------------------------


DASK_MAX_CONCURRENT = (
    "cluster.max_concurrent is not applied by the dask executor: the workers' threads "
    "(dask worker --nthreads) and the pools bound how many steps run at once"
)


def executor_for(settings: Settings) -> dg.ExecutorDefinition | None:
    """The executor of the profile: ``None`` (Dagster's default) for ``local``."""
    if not settings.is_cluster:
        return None
    c = settings.cluster_settings()
    if c.executor == "dask":
        if c.max_concurrent:
            log.warning(DASK_MAX_CONCURRENT)
        return pooled_dask_executor().configured(
            {"cluster": {"existing": {"address": c.dask_address}}}, name="dask"
        )
    if c.executor == "k8s":
        return k8s_executor_for(c)
    config = {"max_concurrent": c.max_concurrent} if c.max_concurrent else {}
    return dg.multiprocess_executor.configured(config, name="multiprocess")


def _k8s_job_fields(c: ClusterSettings) -> dict[str, Any]:
    """The step/run job fields the k8s executor and the K8sRunLauncher share (set ones only)."""
    fields = {
        "job_namespace": c.k8s_namespace,
        "job_image": c.k8s_image,
        "service_account_name": c.k8s_service_account,
        "env_secrets": list(c.k8s_env_secrets),
    }
    return {k: v for k, v in fields.items() if v}


def k8s_executor_config(c: ClusterSettings) -> dict[str, Any]:
    """``k8s_job_executor`` config: namespace, image, service account, env secrets, retries."""
    config: dict[str, Any] = {"retries": {"enabled": {}}, **_k8s_job_fields(c)}
    if c.max_concurrent:
        config["max_concurrent"] = c.max_concurrent
    return config


def k8s_executor_for(c: ClusterSettings) -> dg.ExecutorDefinition:
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(k8s_executor_config(c), name="k8s")


# --- instance yaml of the cluster profile ---------------------------------------------------


def cluster_instance_config(settings: Settings) -> dict[str, Any]:
    """The Dagster instance (dagster.yaml) of the cluster profile: Postgres storage (URL from
    the env var ``cluster.postgres_url_env``), a run queue, op-level pools, run monitoring and
    automatic run retries from the failed steps; with ``executor=k8s``, the K8sRunLauncher."""
    c = settings.cluster_settings()
    config: dict[str, Any] = {
        "storage": {"postgres": {"postgres_url": {"env": c.postgres_url_env}}},
        "concurrency": {
            "runs": {"max_concurrent_runs": 20},
            "pools": {"granularity": "op", "default_limit": 1},
        },
        "run_monitoring": {"enabled": True, "poll_interval_seconds": 30},
        "run_retries": {
            "enabled": c.run_retries > 0,
            "max_retries": c.run_retries,
            "retry_on_asset_or_op_failure": True,
        },
        "telemetry": {"enabled": False},
    }
    if c.executor == "k8s":
        launcher: dict[str, Any] = {
            "instance_config_map": "dagster-instance",
            "dagster_home": "/opt/dagster/dagster_home",
            "postgres_password_secret": "dagster-postgresql-secret",
            **_k8s_job_fields(c),
        }
        config["run_launcher"] = {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": launcher,
        }
    return config


def render_cluster_instance(settings: Settings) -> str:
    import yaml

    header = (
        "# Dagster instance of the galaxy-assets cluster profile (galaxy-assets profile\n"
        "# render-instance). Needs dagster-postgres in the image. After the first start, set\n"
        f"# the pool limits: dagster instance concurrency set {GPU_POOL} <number of GPUs>;\n"
        f"# dagster instance concurrency set {LANCEDB_WRITER_POOL} 1 (docs/cluster.md).\n"
    )
    return header + yaml.safe_dump(cluster_instance_config(settings), sort_keys=False)


# --- GPU pinning ----------------------------------------------------------------------------

_LEASES: dict[str, Any] = {}  # GPU id -> open lock file, held for this process's lifetime


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every device
    NVML reports (torch's count does not initialise CUDA), else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch or no driver: no GPU
        return []


def _lock_dir() -> Path:
    folder = os.environ.get(GPU_LOCK_DIR_ENV) or str(
        Path(tempfile.gettempdir()) / f"galaxy-assets-gpu-leases-{os.getuid()}"
    )
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def lease_gpus(count: int, candidates: Sequence[str]) -> list[str]:
    """Lock ``count`` of ``candidates`` for this process (one lock file per GPU on this host)."""
    held = [g for g in candidates if g in _LEASES]
    if len(held) >= count:
        return held[:count]
    folder = _lock_dir()
    for gpu in candidates:
        if len(held) >= count:
            break
        if gpu in _LEASES:
            continue
        handle = open(folder / f"gpu-{gpu.replace('/', '_')}.lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _LEASES[gpu] = handle
        held.append(gpu)
    if len(held) < count:
        for gpu in held:
            _LEASES.pop(gpu).close()
        raise ExecutionError(
            f"no free GPU on this host for process {os.getpid()}: it needs {count} of "
            f"{list(candidates)} and the others are held by other processes (lock files in "
            f"{folder}). Run at most one GPU step per GPU: start one dask worker per GPU with "
            "--resources GPU=1, or set the gpu pool limit to the number of GPUs "
            "(dagster instance concurrency set gpu N)"
        )
    return held


def pin_gpus(count: int = 1, candidates: Sequence[str] | None = None) -> list[str]:
    """Make this process see only GPUs it alone holds; returns them (empty: no GPU here).

    Does nothing when ``CUDA_VISIBLE_DEVICES`` already names exactly ``count`` GPUs (an
    executor or device plugin pinned the process) or when CUDA is already initialised here
    (pinning would have no effect; a warning says so)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = list(candidates) if candidates is not None else visible_gpus()
    if env is not None and candidates is None and len(gpus) == count:
        return gpus
    if not gpus:
        return []
    if _cuda_initialized():
        log.warning(
            "CUDA is already initialised in process %s: CUDA_VISIBLE_DEVICES cannot "
            "be pinned any more (GPUs %s stay visible)",
            os.getpid(),
            gpus,
        )
        return gpus
    held = lease_gpus(min(count, len(gpus)), gpus)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(held)
    log.info("process %s pinned to GPU(s) %s", os.getpid(), held)
    return held


def _cuda_initialized() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


class GpuPinning:
    """Pins a dask worker process to the GPUs it declares as resources (``--resources GPU=n``)
    before it runs a task; a worker declaring no GPU sees none. ``gpus`` lists the candidate
    GPU ids of every host (default: what the worker sees). ``gpu_pinning_plugin()`` wraps it
    as a dask ``WorkerPlugin``."""

    def __init__(self, gpus: Sequence[str] | None = None):
        self.gpus = list(gpus) if gpus is not None else None

    def setup(self, worker) -> None:
        declared = int(worker.state.total_resources.get("GPU", 0))
        if declared <= 0:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
            return
        held = pin_gpus(declared, self.gpus)
        if not held:
            log.warning(
                "dask worker %s declares GPU=%s but sees no GPU: its GPU steps run on CPU",
                worker.name,
                declared,
            )


@functools.cache
def _plugin_class() -> type:
    from distributed.diagnostics.plugin import WorkerPlugin

    class GpuPinningPlugin(WorkerPlugin):
        name = "galaxy-assets-gpu-pinning"
        idempotent = True  # registered again by every run: workers keep their first pinning

        def __init__(self, gpus: list[str] | None):
            self.gpus = gpus

        def setup(self, worker) -> None:
            restore_interrupt_signals()
            GpuPinning(self.gpus).setup(worker)

    return GpuPinningPlugin


def gpu_pinning_plugin(gpus: Sequence[str] | None = None):
    """The dask ``WorkerPlugin`` running ``GpuPinning`` on every current and future worker
    (``client.register_plugin(gpu_pinning_plugin())``; the executor below registers it)."""
    return _plugin_class()(list(gpus) if gpus is not None else None)


def dask_setup(worker) -> None:
    """``dask worker --preload galaxy_assets.defs.execution``: pin at worker start (and undo
    the ignored SIGINT / SIGTERM of a worker started in the background; see
    :func:`galaxy_assets.runtime.restore_interrupt_signals`)."""
    restore_interrupt_signals()
    GpuPinning().setup(worker)


# --- the dask executor that honours instance pools ------------------------------------------


@contextlib.contextmanager
def pool_slot(
    instance, dagster_run, step_key: str, pool: str | None, priority: int = 0, poll_s: float = 0.25
) -> Iterator[None]:
    """Hold one slot of ``pool`` for the step while the block runs (no-op without a pool, with
    run-granularity pools, or on storage without concurrency support)."""
    from dagster._core.execution.plan.instance_concurrency_context import (
        InstanceConcurrencyContext,
    )

    if not pool:
        yield
        return
    with InstanceConcurrencyContext(instance, dagster_run) as slots:
        waited = False
        while not _claim(slots, instance, pool, step_key, priority):
            if not waited:
                instance.report_engine_event(
                    f"{step_key} waits for a slot in pool '{pool}'", dagster_run
                )
                waited = True
            time.sleep(poll_s)
        try:
            yield
        finally:
            slots.free_step(step_key)


def _claim(slots, instance, pool: str, step_key: str, priority: int) -> bool:
    """``slots.claim`` made atomic across processes on SQLite storage. Dagster claims a slot by
    selecting a free row FOR UPDATE, then updating it; SQLite ignores FOR UPDATE, so two dask
    workers could both take the one slot of a limit-1 pool and run side by side. On SQLite
    (one host by construction) a lock file beside the event log serialises the claims; other
    storages (Postgres) lock the row themselves."""
    from dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log import (
        ConsolidatedSqliteEventLogStorage,
    )
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    from galaxy_assets.runtime import exclusive_file_lock

    storage = instance.event_log_storage
    base = getattr(storage, "_base_dir", None)
    if (
        not isinstance(storage, SqliteEventLogStorage | ConsolidatedSqliteEventLogStorage)
        or not base
    ):
        return slots.claim(pool, step_key, priority)
    with exclusive_file_lock(Path(base) / "concurrency-claims.lock"):
        return slots.claim(pool, step_key, priority)


def _check_worker_resources(client, needs: dict[str, dict[str, float]]) -> None:
    """Refuse a run whose steps ask for a dask resource (``GPU``) that none of the cluster's
    workers offers: dask would hold those steps forever, with no message."""
    workers = (client.scheduler_info().get("workers") or {}).values()
    if not workers:
        return  # an adaptive cluster may add workers later
    offered: dict[str, float] = {}
    for worker in workers:
        for name, amount in (worker.get("resources") or {}).items():
            offered[name] = max(offered.get(name, 0.0), float(amount))
    short = {
        step: {name: amount for name, amount in need.items() if offered.get(name, 0.0) < amount}
        for step, need in needs.items()
    }
    short = {step: need for step, need in short.items() if need}
    if short:
        step, need = next(iter(short.items()))
        raise ExecutionError(
            f"{len(short)} step(s) need dask worker resources no worker offers (e.g. {step} "
            f"needs {need}; the workers offer {offered or 'none'}): start each dask worker with "
            "--resources GPU=1 (one per GPU, or one per worker on a CPU-only cluster, where it "
            "is the slot a torch step runs in)"
        )


def _run_is_over(instance, run_id: str) -> bool:
    """Whether the run has finished or is being cancelled: its queued steps must not start
    (the run's pool slots were freed when it ended, so they would run unguarded)."""
    run = instance.get_run_by_id(run_id)
    return run is None or run.is_finished or run.status == dg.DagsterRunStatus.CANCELING


def upstream_succeeded(dependencies) -> bool:
    """Whether every upstream step's events (one list per dask future) hold its success."""
    return all(any(getattr(e, "is_step_success", False) for e in events or [])
               for events in dependencies)


def upstream_futures(step, by_key: dict) -> list:
    """The futures of ``step``'s upstream steps in this plan. A plan re-executed from a
    failure leaves out the steps that succeeded before: their outputs are in the plan's
    known state, not in a future."""
    return [by_key[k] for i in step.step_inputs for k in i.dependency_keys if k in by_key]


def run_step_on_dask_worker(dependencies, payload: bytes):
    """The dask task of one step: claim its pool slot, then dagster-dask's step execution.

    ``dependencies`` are the upstream steps' futures (dask runs this task after them);
    ``payload`` pickles the rest, since dask would walk into Dagster's tuple-based records."""
    import pickle

    from dagster._core.instance import DagsterInstance
    from dagster_dask.executor import query_on_dask_worker

    (recon_job, dagster_run, run_config, step_key, pool, priority, instance_ref, known_state) = (
        pickle.loads(payload)
    )
    # a dask future finishes normally when its step failed (the task returns the failure's
    # events): a step whose upstream did not succeed must not run, or it would read the
    # upstream's previous stored output (the Parquet paths have no run id)
    if not upstream_succeeded(dependencies):
        return []
    with DagsterInstance.from_ref(instance_ref) as instance:
        if _run_is_over(instance, dagster_run.run_id):
            return []  # the run ended (interrupted, failed) while this step was queued
        with pool_slot(instance, dagster_run, step_key, pool, priority):
            if _run_is_over(instance, dagster_run.run_id):
                return []  # it ended while the step waited for its slot
            return query_on_dask_worker(
                dependencies,
                recon_job,
                dagster_run,
                run_config,
                [step_key],
                instance_ref,
                known_state,
            )


@functools.cache
def pooled_dask_executor() -> dg.ExecutorDefinition:
    """dagster-dask's executor (same config) whose steps hold their pool's slots."""
    import pickle

    import dask.distributed
    from dagster._core.definitions.executor_definition import executor
    from dagster._core.errors import raise_execution_interrupts
    from dagster._utils import iterate_with_context
    from dagster_dask.executor import DaskExecutor, dask_executor, get_dask_resource_requirements

    class PooledDaskExecutor(DaskExecutor):
        def execute(self, plan_context, execution_plan):
            if self.cluster_type not in ("existing", "local"):
                raise ExecutionError(
                    f"the galaxy-assets dask executor connects to a scheduler ('existing') or "
                    f"starts a LocalCluster ('local'), not '{self.cluster_type}': start the "
                    "cluster with its own tools and give its address "
                    "(GALAXY_ASSETS_CLUSTER_DASK_ADDRESS)"
                )
            if not plan_context.instance.is_persistent:
                raise ExecutionError(
                    "the dask executor needs a persistent Dagster instance "
                    "(DAGSTER_HOME), not an ephemeral one"
                )
            instance = plan_context.instance
            run = plan_context.dagster_run
            if self.cluster_type == "existing":
                cluster = self.cluster_configuration["address"]
            else:
                kwargs = self.build_dict(plan_context.job_name)
                # each local worker offers one GPU slot (a CPU torch step runs in it too): GPU
                # steps ask for one, and a cluster with no GPU resource never schedules them
                kwargs.setdefault("resources", {"GPU": 1})
                cluster = dask.distributed.LocalCluster(**kwargs)
            try:
                with dask.distributed.Client(cluster) as client:
                    client.register_plugin(gpu_pinning_plugin())
                    _check_worker_resources(
                        client,
                        {
                            step.key: get_dask_resource_requirements(step.tags)
                            for level in execution_plan.get_steps_to_execute_by_level()
                            for step in level
                        },
                    )
                    futures, by_key = [], {}
                    for level in execution_plan.get_steps_to_execute_by_level():
                        for step in level:
                            deps = upstream_futures(step, by_key)
                            payload = pickle.dumps(
                                (
                                    plan_context.reconstructable_job,
                                    run,
                                    plan_context.run_config,
                                    step.key,
                                    step.pool,
                                    int(step.tags.get("dagster/priority", 0) or 0),
                                    instance.get_ref(),
                                    execution_plan.known_state,
                                )
                            )
                            future = client.submit(
                                run_step_on_dask_worker,
                                deps,
                                payload,
                                key=f"{plan_context.job_name}.{run.run_id}.{step.key}",
                                resources=get_dask_resource_requirements(step.tags),
                                pure=False,
                            )
                            futures.append(future)
                            by_key[step.key] = future
                    try:
                        done = dask.distributed.as_completed(futures, with_results=True)
                        for _, events in iterate_with_context(raise_execution_interrupts, done):
                            yield from events
                    finally:
                        # an interrupted or failed run: its queued steps must not start after
                        # its slots are freed below (a step already running finishes alone)
                        client.cancel([f for f in futures if not f.done()])
            finally:
                instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
                if not isinstance(cluster, str):
                    cluster.close()

    @executor(
        name="dask",
        config_schema=dask_executor.config_schema,
        requirements=dg.multiple_process_executor_requirements(),
    )
    def _pooled_dask_executor(init_context):
        ((cluster_type, cluster_config),) = init_context.executor_config["cluster"].items()
        return PooledDaskExecutor(cluster_type, cluster_config)

    return _pooled_dask_executor


def default_executor() -> dg.ExecutorDefinition | None:
    """The executor of the configured profile (``definitions.py``)."""
    return executor_for(load_settings())


def profile_summary(settings: Settings) -> dict[str, Any]:
    """What ``galaxy-assets profile show`` prints: the profile, its executor, where it writes."""
    home = settings.home_folder()
    if not settings.is_cluster:
        return {
            "profile": "local",
            "executor": "multiprocess (Dagster's default)",
            "dagster_instance": "the repository's dagster.yaml (SQLite in the home)",
            "home": str(home.root),
            "io_base_dir": str(home.parquet),
            "mlflow_tracking_uri": settings.tracking_location(home)[0],
            "lancedb_uri": settings.lancedb_location(home),
        }
    c = settings.cluster_settings()
    executor: dict[str, Any] = {"kind": c.executor}
    if c.executor == "dask":
        executor["scheduler"] = c.dask_address
        if c.max_concurrent:
            executor["max_concurrent"] = f"{c.max_concurrent}: ignored ({DASK_MAX_CONCURRENT})"
    elif c.executor == "k8s":
        executor["config"] = k8s_executor_config(c)
    return {
        "profile": "cluster",
        "executor": executor,
        "dagster_instance": f"Postgres (URL in ${c.postgres_url_env}); "
        "galaxy-assets profile render-instance",
        "home": str(home.root),
        "io_base_dir": c.io_base_dir or str(home.parquet),
        "mlflow_tracking_uri": c.mlflow_tracking_uri,
        "lancedb_uri": c.lancedb_uri,
        "gpu_step_tags": gpu_step(cluster=c)["op_tags"],
    }
