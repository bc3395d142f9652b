"""The execution layer (defs/execution.py): profiles, the cluster instance yaml, GPU steps
(Kubernetes op tags, dask resources, CUDA_VISIBLE_DEVICES leases), and real runs through the
dask executor on a LocalCluster: a multi-shard backfill, pools honoured, a worker killed
mid-backfill, a transient failure retried, a shard that fails for good."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from galaxy_assets.defs import execution
from galaxy_assets.defs.execution import (
    DASK_RESOURCES_TAG,
    GPU_TAG,
    K8S_CONFIG_TAG,
    ExecutionError,
    cluster_instance_config,
    executor_for,
    gpu_pinning_plugin,
    gpu_step,
    k8s_executor_config,
    lease_gpus,
    pin_gpus,
    render_cluster_instance,
)
from galaxy_assets.settings import ClusterSettings, SettingsError, load_settings

TORCH_ASSETS = [
    "morphology_encoder",
    "morphology_predictions",
    "image_embeddings",
    "aligned_model",
    "caption_embeddings",
    "search_evaluation",
    "morphology_scaling_point",
    "morphology_transfer_report",
]


def _cluster_env(monkeypatch, shared: Path, **extra: str) -> None:
    env = {
        "GALAXY_ASSETS_PROFILE": "cluster",
        "GALAXY_ASSETS_CLUSTER_EXECUTOR": "dask",
        "GALAXY_ASSETS_CLUSTER_DASK_ADDRESS": "tcp://127.0.0.1:8786",
        "GALAXY_ASSETS_CLUSTER_MLFLOW_TRACKING_URI": f"sqlite:///{shared}/mlflow.db",
        "GALAXY_ASSETS_CLUSTER_LANCEDB_URI": str(shared / "lancedb"),
        "GALAXY_ASSETS_CLUSTER_IO_BASE_DIR": str(shared / "parquet"),
        **extra,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)


# --- profiles ------------------------------------------------------------------------------


def test_local_profile_is_the_default_and_unchanged(isolated_home):
    from galaxy_assets.defs.resources import default_resources

    settings = load_settings()
    assert settings.profile == "local" and executor_for(settings) is None
    resources = default_resources()
    assert resources["io_manager"].base_dir == str(isolated_home / "parquet")
    assert resources["search_index"].uri == "" and resources["mlflow"].tracking_uri == ""


def test_max_concurrent_under_dask_is_said_to_be_ignored(monkeypatch, tmp_path, caplog):
    """The dask executor does not apply cluster.max_concurrent: it was dropped silently."""
    from galaxy_assets.defs.execution import executor_for, profile_summary

    _cluster_env(monkeypatch, tmp_path, GALAXY_ASSETS_CLUSTER_MAX_CONCURRENT="4")
    settings = load_settings()
    with caplog.at_level("WARNING", logger="galaxy_assets.defs.execution"):
        executor_for(settings)
    assert "max_concurrent is not applied by the dask executor" in caplog.text
    assert "ignored" in profile_summary(settings)["executor"]["max_concurrent"]


def test_cluster_profile_names_the_missing_settings(monkeypatch):
    monkeypatch.setenv("GALAXY_ASSETS_PROFILE", "cluster")
    monkeypatch.setenv("GALAXY_ASSETS_CLUSTER_LANCEDB_URI", "s3://bucket/lancedb")
    settings = load_settings()
    with pytest.raises(SettingsError) as err:
        executor_for(settings)
    message = str(err.value)
    for var in (
        "GALAXY_ASSETS_CLUSTER_DASK_ADDRESS",
        "GALAXY_ASSETS_CLUSTER_MLFLOW_TRACKING_URI",
        "GALAXY_ASSETS_CLUSTER_IO_BASE_DIR",
    ):
        assert var in message
    assert "LANCEDB_URI" not in message  # it is set
    from galaxy_assets.defs.resources import default_resources

    with pytest.raises(SettingsError, match="DASK_ADDRESS"):
        default_resources()
    monkeypatch.setenv("GALAXY_ASSETS_PROFILE", "cloud")
    with pytest.raises(SettingsError, match="profile must be one of"):
        load_settings()


def test_cluster_profile_points_resources_and_executor_at_the_cluster(monkeypatch, tmp_path):
    from galaxy_assets.defs.resources import default_resources

    _cluster_env(
        monkeypatch,
        tmp_path,
        GALAXY_ASSETS_CLUSTER_MLFLOW_TRACKING_URI="http://mlflow:5000",
        GALAXY_ASSETS_CLUSTER_LANCEDB_URI="s3://galaxies/lancedb",
    )
    resources = default_resources()
    assert resources["io_manager"].base_dir == str(tmp_path / "parquet")
    assert resources["mlflow"].tracking_uri == "http://mlflow:5000"
    assert resources["search_index"].uri == "s3://galaxies/lancedb"
    dask = executor_for(load_settings())
    assert dask.name == "dask"
    assert dask.config_schema.as_field().is_required is False  # configured: address baked in
    # `galaxy-assets search` / `serve` and the demo's registry look-ups open what the graph
    # writes (they opened the home's LanceDB and SQLite registry under the cluster profile)
    from galaxy_assets.search.service import tracker_for

    settings = load_settings()
    home = settings.home_folder()
    assert settings.lancedb_location(home) == resources["search_index"].location(home)
    assert tracker_for(home).tracking_uri == "http://mlflow:5000"

    monkeypatch.setenv("GALAXY_ASSETS_CLUSTER_EXECUTOR", "k8s")
    monkeypatch.setenv("GALAXY_ASSETS_CLUSTER_K8S_NAMESPACE", "galaxy")
    monkeypatch.setenv("GALAXY_ASSETS_CLUSTER_K8S_ENV_SECRETS", "aws-creds,mlflow-creds")
    settings = load_settings()
    assert executor_for(settings).name == "k8s"
    config = k8s_executor_config(settings.cluster)
    assert config["job_namespace"] == "galaxy"
    assert config["env_secrets"] == ["aws-creds", "mlflow-creds"]
    monkeypatch.setenv("GALAXY_ASSETS_CLUSTER_EXECUTOR", "multiprocess")
    assert executor_for(load_settings()).name == "multiprocess"


@pytest.mark.parametrize("kind", ["dask", "k8s"])
def test_rendered_cluster_instance_is_valid_dagster_config(monkeypatch, tmp_path, kind):
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher

    _cluster_env(
        monkeypatch,
        tmp_path,
        GALAXY_ASSETS_CLUSTER_EXECUTOR=kind,
        GALAXY_ASSETS_CLUSTER_K8S_NAMESPACE="galaxy",
    )
    settings = load_settings()
    folder = tmp_path / "instance"
    folder.mkdir()
    (folder / "dagster.yaml").write_text(render_cluster_instance(settings))
    config, _ = dagster_instance_config(str(folder))  # raises on any schema error
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert config["run_retries"]["enabled"] and config["run_retries"]["max_retries"] == 2
    assert config["concurrency"]["pools"]["granularity"] == "op"
    if kind == "k8s":
        launcher = config["run_launcher"]
        assert launcher["class"] == "K8sRunLauncher"
        checked = validate_config(K8sRunLauncher.config_type(), launcher["config"])
        assert checked.success, checked.errors
        assert launcher["config"]["job_namespace"] == "galaxy"
    else:
        assert "run_launcher" not in config
    # the CLI writes the same text
    from galaxy_assets.cli import main

    out = tmp_path / "rendered.yaml"
    assert main(["profile", "render-instance", "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == cluster_instance_config(settings)


# --- GPU steps: one declaration, every executor ----------------------------------------------


# torch assets that run on the CPU on purpose
CPU_TORCH_ASSETS = {"search_vectors"}  # the aligner's heads: a small MLP, no compute resource


def test_every_torch_asset_is_a_gpu_step():
    from galaxy_assets.definitions import defs

    torch_assets = {
        spec.key.to_user_string() for spec in defs.resolve_all_asset_specs()
        if "pytorch" in spec.kinds
    } - CPU_TORCH_ASSETS
    assert set(TORCH_ASSETS) <= torch_assets  # the list other tests use
    assert {"property_emulator", "property_posteriors"} <= torch_assets
    for name in sorted(torch_assets):
        op = defs.resolve_assets_def(name).op
        assert op.pool == "gpu", name
        assert json.loads(op.tags[DASK_RESOURCES_TAG]) == {"GPU": 1}, name
        assert op.tags[GPU_TAG] == "1", name
    assert defs.resolve_assets_def("galaxy_index").op.pool == "lancedb_writer"
    assert gpu_step(enabled=False) == {"pool": None, "op_tags": None}


def test_kubernetes_job_of_a_gpu_asset_has_the_gpu_limit_and_node_selector():
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    from galaxy_assets.definitions import defs

    # the declared asset, with the default cluster settings
    tags = dict(defs.resolve_assets_def("image_embeddings").op.tags)
    k8s = get_user_defined_k8s_config(tags)
    assert k8s.container_config["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert k8s.pod_spec_config["tolerations"][0]["key"] == "nvidia.com/gpu"

    # settings choose the node pool: the same helper, rendered into the step's Job
    cluster = ClusterSettings(
        gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        gpu_memory="40Gi",
    )

    @dg.asset(**gpu_step(cluster=cluster))
    def gpu_asset() -> None:
        return None

    user = get_user_defined_k8s_config(dict(gpu_asset.op.tags))
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(
            job_image="galaxy-assets:test",
            dagster_home="/opt/dagster/home",
            instance_config_map="dagster-instance",
        ),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-test",
        user_defined_k8s_config=user,
    )
    pod = job.spec.template.spec
    assert pod.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pod.tolerations[0].key == "nvidia.com/gpu" and pod.tolerations[0].effect == "NoSchedule"
    resources = pod.containers[0].resources
    assert resources.limits == {"nvidia.com/gpu": "1"}
    assert resources.requests == {"cpu": "4", "memory": "40Gi"}


def test_shard_stages_split_backfills_into_parallel_runs_on_a_cluster(monkeypatch, tmp_path):
    from galaxy_assets.defs.execution import shard_backfill_policy

    local = shard_backfill_policy()
    assert local.max_partitions_per_run is None  # one run: the model loads once
    _cluster_env(monkeypatch, tmp_path, GALAXY_ASSETS_CLUSTER_SHARDS_PER_RUN="8")
    assert shard_backfill_policy().max_partitions_per_run == 8
    # the graph's per-shard model stages take it when the definitions load
    probe = subprocess.run(
        [sys.executable, "-c", "from galaxy_assets.definitions import defs; "
         "print({a.key.to_user_string(): a.backfill_policy.max_partitions_per_run "
         "for a in defs.assets if a.backfill_policy})"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert probe.returncode == 0, probe.stderr[-2000:]
    policies = eval(probe.stdout.strip().splitlines()[-1])  # noqa: S307 - our own dict repr
    for asset in ("image_embeddings", "morphology_predictions", "property_posteriors",
                  "search_vectors"):
        assert policies[asset] == 8, asset
    assert policies["galaxy_index"] is None  # one writer: one run


def test_node_selector_from_the_environment(monkeypatch):
    monkeypatch.setenv("GALAXY_ASSETS_CLUSTER_GPU_NODE_SELECTOR", "{gpu: h100}")
    monkeypatch.setenv("GALAXY_ASSETS_CLUSTER_GPU_TOLERATIONS", "[]")
    tags = gpu_step(gpus=2)["op_tags"]
    k8s = json.loads(tags[K8S_CONFIG_TAG])
    assert k8s["pod_spec_config"] == {"node_selector": {"gpu": "h100"}}
    assert k8s["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert json.loads(tags[DASK_RESOURCES_TAG]) == {"GPU": 2}
    with pytest.raises(ValueError, match="at least one GPU"):
        gpu_step(gpus=0)


def _release_leases():
    for gpu in list(execution._LEASES):
        execution._LEASES.pop(gpu).close()


def _lease_in_child(lock_dir: str, candidates: list[str], queue) -> None:
    os.environ["GALAXY_ASSETS_GPU_LOCK_DIR"] = lock_dir
    try:
        queue.put(lease_gpus(1, candidates))
        time.sleep(3)  # hold it while the parent tries
    except ExecutionError as exc:
        queue.put(str(exc))


def test_gpu_leases_give_each_process_its_own_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("GALAXY_ASSETS_GPU_LOCK_DIR", str(tmp_path))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_lease_in_child, args=(str(tmp_path), ["0", "1"], queue))
    child.start()
    try:
        assert queue.get(timeout=60) == ["0"]
        try:
            assert lease_gpus(1, ["0", "1"]) == ["1"]  # "0" is the child's
            assert lease_gpus(1, ["0", "1"]) == ["1"]  # a process keeps its lease
            with pytest.raises(ExecutionError, match="no free GPU"):
                lease_gpus(2, ["0", "1"])
        finally:
            _release_leases()
    finally:
        child.join(timeout=30)
    assert lease_gpus(1, ["0", "1"]) == ["0"]  # the child ended: its lease went with it
    _release_leases()


def test_compute_resource_pins_one_gpu_before_choosing_the_device(monkeypatch, tmp_path):
    from galaxy_assets.defs.resources import ComputeResource

    monkeypatch.setenv("GALAXY_ASSETS_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # a launcher gave us two GPUs
    monkeypatch.setattr(execution, "_cuda_initialized", lambda: False)
    try:
        ComputeResource(device="auto").torch_device()
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
        ComputeResource(device="auto").torch_device()  # already pinned: unchanged
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
        assert pin_gpus() == ["3"]  # an executor pinned the process: respected
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        assert pin_gpus() == []  # a CPU worker sees no GPU
        assert ComputeResource(device="cpu").torch_device() == "cpu"
    finally:
        _release_leases()


# --- real runs through the dask executor -----------------------------------------------------

N_PER_SHARD = 10


def _shards(root: Path, keys: list[str]) -> None:
    import numpy as np

    from galaxy_assets.survey.mmu import write_mmu_shard

    bands = ["g", "r", "i", "z"]
    for i, key in enumerate(keys):
        rng = np.random.default_rng(i)
        images = rng.normal(0, 1, (N_PER_SHARD, 4, 20, 20)).astype(np.float32)
        healpix, name = key.split("__")
        write_mmu_shard(
            root / healpix / f"{name}.hdf5",
            images=images,
            bands=bands,
            object_id=[f"{healpix}-{j}" for j in range(N_PER_SHARD)],
            ra=rng.uniform(149, 151, N_PER_SHARD),
            dec=rng.uniform(1, 3, N_PER_SHARD),
            ivar=np.ones_like(images),
            fluxes={b: rng.uniform(1, 10, N_PER_SHARD) for b in bands},
            ebv=np.full(N_PER_SHARD, 0.02),
        )


def _definitions() -> dg.Definitions:
    """The real assets, resources and executor of the configured profile (the cluster one in
    these tests), plus test jobs; a tiny random-weight timm encoder on CPU."""
    from galaxy_assets.definitions import defs
    from galaxy_assets.defs.execution import default_executor
    from galaxy_assets.defs.partitions import shard_partitions
    from galaxy_assets.defs.resources import (
        ComputeResource,
        ImageEncoderResource,
        default_resources,
    )

    jobs = [
        dg.define_asset_job(
            "survey_only", selection=["raw_cutouts"], partitions_def=shard_partitions
        ),
        dg.define_asset_job(
            "embed_only", selection=["image_embeddings"], partitions_def=shard_partitions
        ),
        dg.define_asset_job(
            "index_only", selection=["galaxy_index"], partitions_def=shard_partitions
        ),
    ]
    resources = {
        **default_resources(),
        "compute": ComputeResource(device="cpu", batch_size=8),
        "image_encoder": ImageEncoderResource(kind="timm", name="resnet10t", batch_size=8),
    }
    return dg.Definitions(
        assets=list(defs.assets), jobs=jobs, resources=resources, executor=default_executor()
    )


def survey_only_job():
    return _definitions().resolve_job_def("survey_only")


def embed_only_job():
    return _definitions().resolve_job_def("embed_only")


def index_only_job():
    return _definitions().resolve_job_def("index_only")


@dg.op(pool="lancedb_writer")
def _write_a(context) -> int:
    return _record_interval(context, "a")


@dg.op(pool="lancedb_writer")
def _write_b(context) -> int:
    return _record_interval(context, "b")


def _record_interval(context, name: str) -> int:
    start = time.time()
    time.sleep(1.5)
    folder = Path(os.environ["GA_TEST_INTERVALS"])
    (folder / f"{context.run_id}-{name}.json").write_text(
        json.dumps({"start": start, "end": time.time(), "pid": os.getpid()})
    )
    return 1


@dg.job(executor_def=execution.pooled_dask_executor())
def two_writers_pooled():
    _write_a()
    _write_b()


def _stock_dask():
    from dagster_dask import dask_executor

    return dask_executor


@dg.job(executor_def=_stock_dask())
def two_writers_stock():
    _write_a()
    _write_b()


# Fault injection, active only in dask workers started by the fault test (env var + marker):
# after the commit of one shard the worker process dies; another shard fails once before its
# commit.
if os.environ.get("GA_TEST_FAULTS"):
    import galaxy_assets.defs.search as _search

    _upsert = _search.upsert_shard

    def _faulty_upsert(table, key, rows):
        faults = json.loads(os.environ["GA_TEST_FAULTS"])
        marker = Path(faults["markers"]) / f"{key}.done"
        if key == faults["fail_once"] and not marker.exists():
            marker.write_text(str(os.getpid()))
            raise RuntimeError(f"transient failure injected before the commit of {key}")
        stats = _upsert(table, key, rows)
        if key == faults["kill_after_commit"] and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(17)  # the worker process dies with the slot and the step unfinished
        return stats

    _search.upsert_shard = _faulty_upsert


@contextlib.contextmanager
def _local_cluster(monkeypatch, tmp_path, **extra_env: str):
    """Two worker processes on 127.0.0.1, each declaring one GPU, with the cluster profile's
    environment (set before the workers start: they inherit it)."""
    import distributed
    shared = Path(os.environ["GALAXY_ASSETS_HOME"])  # the home: a shared mount on a cluster
    _cluster_env(
        monkeypatch,
        shared,
        GALAXY_ASSETS_GPU_LOCK_DIR=str(tmp_path / "gpu-locks"),
        GA_TEST_INTERVALS=str(tmp_path),
        **extra_env,
    )
    cluster = distributed.LocalCluster(
        n_workers=2,
        processes=True,
        host="127.0.0.1",
        threads_per_worker=1,
        resources={"GPU": 1},
        dashboard_address=None,
    )
    client = distributed.Client(cluster)
    # two GPUs per host as far as the pinning knows (this machine has none)
    client.register_plugin(gpu_pinning_plugin(gpus=["0", "1"]))
    monkeypatch.setenv("GALAXY_ASSETS_CLUSTER_DASK_ADDRESS", cluster.scheduler_address)
    try:
        yield cluster, client, shared
    finally:
        client.close()
        cluster.close()


def _instance(tmp_path, **overrides):
    (tmp_path / "dagster").mkdir(exist_ok=True)
    return dg.instance_for_test(temp_dir=str(tmp_path / "dagster"), overrides=overrides or None)


def _step_pids(instance, run_id: str) -> set[int]:
    logs = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    return {e.dagster_event.pid for e in logs}


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # see pyproject's addopts
def test_dask_executor_runs_a_multi_shard_backfill(tmp_path, monkeypatch):
    from galaxy_assets.defs.partitions import shard_partitions

    keys = ["healpix=11__001-of-001", "healpix=12__001-of-001", "healpix=13__001-of-001"]
    root = tmp_path / "survey"
    _shards(root, keys)
    with (
        _local_cluster(
            monkeypatch,
            tmp_path,
            GALAXY_ASSETS_SURVEY_ROOTS=str(root),
            GALAXY_ASSETS_SURVEY_CUTOUT_SIZE="16",
        ) as (
            _,
            client,
            shared,
        ),
        _instance(tmp_path) as instance,
    ):
        worker_pids = set(client.run(os.getpid).values())
        assert len(worker_pids) == 2
        # each worker holds its own GPU (CUDA_VISIBLE_DEVICES set by the worker plugin)
        pinned = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(pinned.values()) == ["0", "1"]
        instance.add_dynamic_partitions(shard_partitions.name, keys)
        instance.event_log_storage.set_concurrency_slots("gpu", 2)
        survey = dg.reconstructable(survey_only_job)
        pids: set[int] = set()
        for key in keys:  # the backfill of a per-partition asset: one run per shard
            result = dg.execute_job(survey, instance=instance, tags={"dagster/partition": key})
            assert result.success, key
            pids |= _step_pids(instance, result.run_id)
        # the shard-batched stage: one run over the range, the encoder loaded once
        embed = dg.execute_job(
            dg.reconstructable(embed_only_job),
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            },
        )
        assert embed.success
        pids |= _step_pids(instance, embed.run_id)
        materialized = embed.get_asset_materialization_events()
        assert {e.partition for e in materialized} == set(keys)

    assert pids and pids <= worker_pids and os.getpid() not in pids  # ran on the workers
    for key in keys:
        manifest = pl.read_parquet(shared / "parquet" / "raw_cutouts" / f"{key}.parquet")
        vectors = pl.read_parquet(shared / "parquet" / "image_embeddings" / f"{key}.parquet")
        assert manifest.height == N_PER_SHARD and vectors.height == N_PER_SHARD
        assert set(vectors["object_id"]) == set(manifest["object_id"])


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # see pyproject's addopts
def test_dask_executor_honours_instance_pools(tmp_path, monkeypatch):
    """Two steps in pool lancedb_writer (limit 1) on two free workers run one after the other.
    The stock dagster-dask executor cannot even submit them with this dask (its arguments
    include Dagster records, which dask's task parser iterates into); it would not claim pool
    slots either (it has no instance concurrency context)."""
    with _local_cluster(monkeypatch, tmp_path), _instance(tmp_path) as instance:
        instance.event_log_storage.set_concurrency_slots("lancedb_writer", 1)
        config = {
            "execution": {
                "config": {
                    "cluster": {
                        "existing": {"address": os.environ["GALAXY_ASSETS_CLUSTER_DASK_ADDRESS"]}
                    }
                }
            }
        }
        result = dg.execute_job(
            dg.reconstructable(two_writers_pooled), instance=instance, run_config=config
        )
        assert result.success
        spans = sorted(
            (json.loads(p.read_text()) for p in tmp_path.glob(f"{result.run_id}-*.json")),
            key=lambda s: s["start"],
        )
        assert len(spans) == 2
        assert spans[0]["end"] <= spans[1]["start"]  # serialised by the pool slot
        assert instance.event_log_storage.get_concurrency_info("lancedb_writer").claimed_slots == []
        waits = [
            e
            for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if "waits for a slot in pool 'lancedb_writer'" in e.message
        ]
        assert len(waits) == 1

        stock = dg.execute_job(
            dg.reconstructable(two_writers_stock), instance=instance, run_config=config
        )
        assert not stock.success
        failure = instance.all_logs(stock.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        engine = instance.all_logs(stock.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        errors = " ".join(str(e.dagster_event.event_specific_data) for e in failure + engine)
        assert "Iteration is not allowed on `@record`" in errors


def _write_upstream(base: Path, keys: list[str], n: int) -> dict[str, list[str]]:
    from galaxy_assets_tests.search.conftest import synthetic_shard_frames

    ids, captions = {}, []
    for i, key in enumerate(keys):
        frames = synthetic_shard_frames(n, key, seed=i, start=100 * i)
        for asset, frame in (
            ("raw_cutouts", frames["manifest"]),
            ("search_vectors", frames["vectors"]),
            ("morphology_predictions", frames["predictions"]),
        ):
            (base / asset).mkdir(parents=True, exist_ok=True)
            frame.write_parquet(base / asset / f"{key}.parquet")
        # posterior summaries (galaxy_index reads them when they exist)
        (base / "property_posteriors").mkdir(parents=True, exist_ok=True)
        frames["manifest"].select(
            "object_id", redshift_mean=pl.lit(0.1 * (i + 1), dtype=pl.Float32)
        ).write_parquet(base / "property_posteriors" / f"{key}.parquet")
        captions.append(frames["captions"])
        ids[key] = frames["manifest"]["object_id"].to_list()
    pl.concat(captions).write_parquet(base / "vlm_captions.parquet")
    return ids


def _checksum(ids) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


FAULT_KEYS = [f"healpix={i}__001-of-001" for i in (21, 22, 23, 24, 25)]
KILLED, TRANSIENT, BROKEN = FAULT_KEYS[1], FAULT_KEYS[2], FAULT_KEYS[3]


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # see pyproject's addopts
def test_faults_killed_worker_transient_failure_and_broken_shard(monkeypatch, tmp_path):
    """A worker dies right after committing its shard: dask reruns the step on the other
    worker, the upsert is idempotent. A step fails once: the run fails, the run-retry policy
    of the cluster instance re-executes it from the failure. A shard whose input is corrupt
    fails with its error; the other shards complete. Then every object_id is in the table
    exactly once."""
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

    from galaxy_assets.defs.partitions import shard_partitions
    from galaxy_assets.search.table import open_table

    markers = tmp_path / "markers"
    markers.mkdir()
    faults = {"markers": str(markers), "kill_after_commit": KILLED, "fail_once": TRANSIENT}
    with _local_cluster(monkeypatch, tmp_path, GA_TEST_FAULTS=json.dumps(faults)) as (_, _, shared):
        ids = _write_upstream(shared / "parquet", FAULT_KEYS, n=15)
        (shared / "parquet" / "search_vectors" / f"{BROKEN}.parquet").write_bytes(b"not parquet")
        with _instance(tmp_path, run_retries={"enabled": True, "max_retries": 2}) as instance:
            instance.add_dynamic_partitions(shard_partitions.name, FAULT_KEYS)
            instance.event_log_storage.set_concurrency_slots("lancedb_writer", 1)
            job = dg.reconstructable(index_only_job)
            runs = {
                key: dg.execute_job(job, instance=instance, tags={"dagster/partition": key})
                for key in FAULT_KEYS
            }

            # the killed worker: its step ran twice (two STEP_STARTs), the run succeeded
            assert (markers / f"{KILLED}.done").exists()
            assert runs[KILLED].success
            starts = instance.all_logs(runs[KILLED].run_id, of_type=dg.DagsterEventType.STEP_START)
            assert len(starts) == 2
            assert len({e.dagster_event.pid for e in starts}) == 2  # another worker process

            # the transient failure: the instance's run-retry policy retries it from failure
            failed = instance.get_run_by_id(runs[TRANSIENT].run_id)
            assert not runs[TRANSIENT].success and should_retry(failed, instance)
            retry = dg.execute_job(
                job,
                instance=instance,
                reexecution_options=dg.ReexecutionOptions.from_failure(failed.run_id, instance),
                tags={"dagster/partition": TRANSIENT},  # the daemon copies the parent's tags
            )
            assert retry.success, [
                str(e.dagster_event.event_specific_data)[:3000]
                for e in instance.all_logs(retry.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            ]

            # the broken shard: reported with its error, the others complete
            assert not runs[BROKEN].success
            failure = runs[BROKEN].get_step_failure_events()[0]
            assert "search_vectors" in failure.step_failure_data.error.to_string()
            for key in (FAULT_KEYS[0], FAULT_KEYS[4]):
                assert runs[key].success
            assert (
                instance.event_log_storage.get_concurrency_info("lancedb_writer").claimed_slots
                == []
            )

        table = open_table(shared / "lancedb")
        stored = pl.from_arrow(table.to_arrow().select(["object_id", "shard"]))
        expected = [i for key in FAULT_KEYS if key != BROKEN for i in ids[key]]
        assert stored.height == len(expected) == 4 * 15  # nothing lost, nothing twice
        assert stored["object_id"].n_unique() == stored.height
        assert _checksum(stored["object_id"]) == _checksum(expected)
        assert BROKEN not in set(stored["shard"])


class _ClaimSlots:
    """What ``pool_slot`` calls ``claim`` on: one run's claims against the instance storage."""

    def __init__(self, instance, run_id: str) -> None:
        self.instance, self.run_id = instance, run_id

    def claim(self, pool: str, step_key: str, priority: int) -> bool:
        storage = self.instance.event_log_storage
        return storage.claim_concurrency_slot(pool, self.run_id, step_key, priority).is_claimed


def _claim_at_once(refs, run_id: str, barrier, results) -> None:
    """For each instance in turn: wait for the other process, then claim the one slot."""
    from galaxy_assets.defs.execution import _claim

    for round_, ref in enumerate(refs):
        instance = dg.DagsterInstance.from_ref(ref)
        barrier.wait()
        results.put((round_, _claim(_ClaimSlots(instance, run_id), instance, "one", run_id, 0)))


@pytest.mark.slow
def test_two_processes_never_both_claim_the_one_slot_of_a_sqlite_pool(tmp_path):
    """Dagster claims a slot by select-then-update and SQLite ignores FOR UPDATE: without the
    claim lock two processes claiming at once both got the one slot in 7 of 40 rounds."""
    ctx = multiprocessing.get_context("spawn")
    rounds = 30
    with contextlib.ExitStack() as stack:
        refs = []
        for round_ in range(rounds):
            (tmp_path / f"r{round_}").mkdir()
            instance = stack.enter_context(_instance(tmp_path / f"r{round_}"))
            instance.event_log_storage.set_concurrency_slots("one", 1)
            refs.append(instance.get_ref())
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_claim_at_once, args=(refs, f"run{i}", barrier, results))
            for i in range(2)
        ]
        for p in procs:
            p.start()
        claimed = [0] * rounds
        for _ in range(2 * rounds):
            round_, ok = results.get(timeout=120)
            claimed[round_] += ok
        for p in procs:
            p.join(timeout=60)
    assert claimed == [1] * rounds  # exactly one process holds the slot in every round


def test_a_queued_step_of_a_run_that_ended_does_not_start(tmp_path, monkeypatch):
    """An interrupted or failed dask run frees its pool slots; a step of it still queued on a
    worker must not start then (two lancedb writers ran side by side)."""
    import pickle

    import dagster_dask.executor as dask_exec

    from galaxy_assets.defs.execution import run_step_on_dask_worker

    started = []
    monkeypatch.setattr(dask_exec, "query_on_dask_worker",
                        lambda *args: started.append(args) or ["events"])
    with _instance(tmp_path) as instance:
        instance.event_log_storage.set_concurrency_slots("lancedb_writer", 1)
        run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), run_id=None)

        def payload(r):
            return pickle.dumps((None, r, {}, "write", "lancedb_writer", 0, instance.get_ref(),
                                 None))

        instance.handle_run_event(run.run_id, dg.DagsterEvent(
            event_type_value="PIPELINE_START", job_name=run.job_name))
        assert run_step_on_dask_worker([], payload(run)) == ["events"] and len(started) == 1
        instance.report_run_failed(instance.get_run_by_id(run.run_id))
        assert run_step_on_dask_worker([], payload(run)) == [] and len(started) == 1


def test_a_step_whose_upstream_failed_does_not_run_on_dask(tmp_path, monkeypatch):
    """A dask future finishes normally when its step fails (the task returns the failure's
    events): the downstream step ran anyway and read the upstream's previous stored output."""
    import pickle

    import dagster_dask.executor as dask_exec

    from galaxy_assets.defs.execution import run_step_on_dask_worker

    started = []
    monkeypatch.setattr(dask_exec, "query_on_dask_worker",
                        lambda *args: started.append(args) or ["events"])

    from dagster._core.events import StepFailureData, StepSuccessData

    def event(kind, step):
        data = {"STEP_SUCCESS": StepSuccessData(duration_ms=1.0),
                "STEP_FAILURE": StepFailureData(error=None, user_failure_data=None)}.get(kind)
        return dg.DagsterEvent(event_type_value=kind, job_name="j", step_key=step,
                               event_specific_data=data)

    with _instance(tmp_path) as instance:
        run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), run_id=None)
        instance.handle_run_event(run.run_id, dg.DagsterEvent(
            event_type_value="PIPELINE_START", job_name=run.job_name))
        payload = pickle.dumps((None, run, {}, "down", None, 0, instance.get_ref(), None))
        ok = [event("STEP_START", "up"), event("STEP_SUCCESS", "up")]
        failed = [event("STEP_START", "up2"), event("STEP_FAILURE", "up2")]
        assert run_step_on_dask_worker([ok, failed], payload) == [] and not started
        assert run_step_on_dask_worker([ok, []], payload) == [] and not started  # run ended
        assert run_step_on_dask_worker([ok], payload) == ["events"] and len(started) == 1


def test_a_plan_reexecuted_from_failure_waits_only_on_its_own_steps():
    """Re-executing from a failure leaves out the steps that succeeded: their outputs are in
    the known state. Looking up their futures raised KeyError, so run retries never worked
    for a job of more than one step on dask."""
    from types import SimpleNamespace

    from galaxy_assets.defs.execution import upstream_futures

    step = SimpleNamespace(step_inputs=[SimpleNamespace(dependency_keys=["raw_cutouts"]),
                                        SimpleNamespace(dependency_keys=["image_embeddings"])])
    assert upstream_futures(step, {"image_embeddings": "future"}) == ["future"]
    assert upstream_futures(step, {}) == []


def test_gpu_steps_on_workers_without_the_resource_are_refused_at_once():
    """A dask cluster whose workers declare no GPU resource never schedules a GPU step: the run
    used to wait forever without a word."""
    from types import SimpleNamespace

    from galaxy_assets.defs.execution import ExecutionError, _check_worker_resources

    def client(*resources):
        workers = {f"tcp://w{i}": {"resources": r} for i, r in enumerate(resources)}
        return SimpleNamespace(scheduler_info=lambda: {"workers": workers})

    needs = {"image_embeddings": {"GPU": 1}, "raw_cutouts": {}}
    with pytest.raises(ExecutionError, match=r"image_embeddings needs \{'GPU': 1\}.*--resources GPU=1"):
        _check_worker_resources(client({}, {}), needs)
    _check_worker_resources(client({}, {"GPU": 1}), needs)  # one worker offers it
    _check_worker_resources(client(), needs)  # no worker yet (adaptive): nothing to judge


def test_search_opens_the_cluster_index(monkeypatch, tmp_path, isolated_home):
    from galaxy_assets.search.errors import SearchError
    from galaxy_assets.search.service import open_search

    _cluster_env(monkeypatch, tmp_path / "shared", GALAXY_ASSETS_CLUSTER_EXECUTOR="multiprocess")
    with pytest.raises(SearchError, match=str(tmp_path / "shared" / "lancedb")):
        open_search()
