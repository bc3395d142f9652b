import os
from pathlib import Path

import pytest

from galaxy_assets.runtime import Home, RuntimeConfigError, select_device, select_dtype
from galaxy_assets.settings import SettingsError, load_settings


def test_home_defaults_to_env(isolated_home):
    home = Home.from_env()
    assert home.root == Path(isolated_home).resolve()
    home.ensure()
    for sub in ("dagster", "lancedb", "mlflow/artifacts", "parquet", "mock_survey", "reports"):
        assert (home.root / sub).is_dir()
    assert home.mlflow_tracking_uri == f"sqlite:///{home.root}/mlflow/mlflow.db"


def test_home_explicit_and_fallback(tmp_path, monkeypatch):
    assert Home.from_env(tmp_path / "x").root == (tmp_path / "x").resolve()
    monkeypatch.delenv("GALAXY_ASSETS_HOME")
    monkeypatch.chdir(tmp_path)
    assert Home.from_env().root == (tmp_path / ".galaxy_home").resolve()


def test_select_device_cpu_and_errors():
    assert select_device("cpu") == "cpu"
    assert select_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(RuntimeConfigError, match="is not a device"):
        select_device("tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeConfigError, match="no CUDA device"):
            select_device("cuda:0")


def test_select_dtype():
    import torch

    assert select_dtype("float32", "cpu") is torch.float32
    assert select_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(RuntimeConfigError, match="not supported on the CPU"):
        select_dtype("float16", "cpu")
    with pytest.raises(RuntimeConfigError, match="not supported"):
        select_dtype("int8", "cpu")


def test_settings_file_and_env(tmp_path, isolated_home, monkeypatch):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("survey:\n  roots: [/data/a]\n  cutout_size: 96\ncompute:\n  batch_size: 64\n")
    monkeypatch.setenv("GALAXY_ASSETS_CONFIG", str(cfg))
    monkeypatch.setenv("GALAXY_ASSETS_SURVEY_BANDS", "g,r,z")
    s = load_settings()
    assert s.survey.roots == ["/data/a"]
    assert s.survey.cutout_size == 96
    assert s.survey.bands == ["g", "r", "z"]
    assert s.compute.batch_size == 64
    assert s.survey_roots() == [Path("/data/a")]


def test_settings_default_roots_is_mock_survey(isolated_home):
    s = load_settings()
    assert s.survey_roots() == [Path(isolated_home).resolve() / "mock_survey"]


def test_settings_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("GALAXY_ASSETS_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(SettingsError, match="does not name a file"):
        load_settings()
    bad = tmp_path / "bad.yaml"
    bad.write_text("survey:\n  bands: [g, q]\n")
    monkeypatch.setenv("GALAXY_ASSETS_CONFIG", str(bad))
    with pytest.raises(SettingsError, match="unknown bands"):
        load_settings()
    bad.write_text("survey:\n  colour: red\n")
    with pytest.raises(SettingsError, match="colour"):
        load_settings()
    # a bad value from the environment names its variable, not the (valid) file beside it
    bad.write_text("survey:\n  cutout_size: 64\n")
    monkeypatch.setenv("GALAXY_ASSETS_COMPUTE_DEVICE", "gpu")
    with pytest.raises(SettingsError, match=r"invalid settings \(from GALAXY_ASSETS_COMPUTE_DEVICE\)"):
        load_settings()


def test_image_encoder_settings_reach_the_graphs_resource(tmp_path, isolated_home, monkeypatch):
    """The image encoder is a settings section like the captioner's: file, then environment."""
    from galaxy_assets.defs.resources import default_resources

    resource = default_resources()["image_encoder"]
    assert (resource.kind, resource.model_name, resource.alias, resource.tta) == (
        "registry", "morphology-encoder", "champion", "rot4")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("image_encoder:\n  kind: zoobot\n  name: convnext_nano\n"
                   "  checkpoint: /models/zoobot.pt\n")
    monkeypatch.setenv("GALAXY_ASSETS_CONFIG", str(cfg))
    monkeypatch.setenv("GALAXY_ASSETS_IMAGE_ENCODER_TTA", "none")
    s = load_settings()
    assert s.image_encoder.kind == "timm"  # the alias is resolved
    resource = default_resources()["image_encoder"]
    assert (resource.kind, resource.name, resource.checkpoint, resource.tta) == (
        "timm", "convnext_nano", "/models/zoobot.pt", "none")
    monkeypatch.setenv("GALAXY_ASSETS_IMAGE_ENCODER_TTA", "rot8")
    with pytest.raises(SettingsError, match=r"tta must be one of \['d8', 'none', 'rot4'\], got 'rot8'"):
        load_settings()
    monkeypatch.delenv("GALAXY_ASSETS_IMAGE_ENCODER_TTA")
    cfg.write_text("image_encoder:\n  kind: clip\n")
    with pytest.raises(SettingsError, match=r"image_encoder.kind='clip' is unknown; use one of "
                       r"\['aion', 'registry', 'timm'\]"):
        load_settings()


def test_torchvision_guard_lets_timm_import():
    import timm

    import galaxy_assets  # noqa: F401  (installs the guard)

    model = timm.create_model("resnet18", in_chans=4, num_classes=0)
    assert model.num_features == 512


_CHILD_AFTER_DAGSTER = """
import signal, subprocess, sys
from galaxy_assets.runtime import restore_interrupt_signals
if sys.argv[1] == "restore":
    restore_interrupt_signals()
from dagster._core.errors import DagsterUserCodeExecutionError, user_code_error_boundary
with user_code_error_boundary(DagsterUserCodeExecutionError, lambda: "user code"):
    pass
child = subprocess.Popen(["sleep", "30"])  # what compute-log capture does with `tail -F`
child.terminate()
try:
    child.wait(timeout=5)
    print("terminated")
except subprocess.TimeoutExpired:
    child.kill()
    print("ignored SIGTERM")
"""


@pytest.mark.parametrize("restore", [False, True])
def test_background_launch_keeps_sigterm_working_for_children(restore):
    """A process started with SIGINT ignored (a background job of a non-interactive shell, as
    CI runners and `nohup … &` start it) ends up with SIGTERM ignored once Dagster has run
    user code, because Dagster copies SIGINT's handler onto SIGTERM; its children then survive
    `terminate()`. `restore_interrupt_signals` (the CLI and every dask worker call it) undoes
    the ignored SIGINT first. If the unrestored case ever terminates, Dagster stopped copying
    the handler and the workaround can go."""
    import signal
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _CHILD_AFTER_DAGSTER, "restore" if restore else "plain"],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == ("terminated" if restore else "ignored SIGTERM"), out.stderr


def test_restore_interrupt_signals_changes_only_ignored_handlers():
    import signal

    from galaxy_assets.runtime import restore_interrupt_signals

    def handler(signo, frame):
        return None

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert restore_interrupt_signals() is False
        assert signal.getsignal(signal.SIGINT) is handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert restore_interrupt_signals() is True
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_backend_settings_the_errors_name_are_settings(tmp_path, isolated_home, monkeypatch):
    """Every setting an error message tells the user to set exists and reaches its backend:
    the openai text embedder's dim, budget and HTTP knobs, the captioner's retries, a timm
    encoder's input size and normalisation, AION's survey."""
    from types import SimpleNamespace

    from galaxy_assets.defs.resources import default_resources
    from galaxy_assets.embedding import image as image_mod
    from galaxy_assets.embedding import text as text_mod
    from galaxy_assets.embedding.image import image_encoder_from_settings
    from galaxy_assets.search.service import build_text_embedder_from

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "text_embedder:\n  backend: openai\n  base_url: http://127.0.0.1:9/v1\n  model: emb\n"
        "  dim: 1536\n  concurrency: 8\n  timeout_s: 5\n  max_retries: 1\n  request_budget: 10\n"
        "captioner:\n  max_retries: 7\n"
        "image_encoder:\n  kind: timm\n  name: resnet10t\n  image_size: 96\n  normalize: none\n"
        "  survey: hsc\n")
    monkeypatch.setenv("GALAXY_ASSETS_CONFIG", str(cfg))
    settings = load_settings()
    embedder = build_text_embedder_from(settings)  # dim given: no probe request is sent
    assert isinstance(embedder, text_mod.OpenAIEmbedder) and embedder.dim == 1536
    client = embedder.client
    # a query embedder lives as long as the server: no budget that, once spent, refuses all
    assert (client.concurrency, client.timeout_s, client.max_retries, client.request_budget) == (
        8, 5.0, 1, None)
    resources = default_resources()
    assert resources["captioner"].max_retries == 7
    resource_embedder = resources["text_embedder"].build(SimpleNamespace(torch_device=lambda: "cpu"))
    assert resource_embedder.dim == 1536 and resource_embedder.client.request_budget == 10
    timm_encoder = image_encoder_from_settings(settings.image_encoder).base  # rot4 wraps it
    assert (timm_encoder.image_size, timm_encoder.normalize) == (96, "none")
    seen = {}
    monkeypatch.setattr(image_mod, "build_image_encoder",
                        lambda kind, tta, **kw: seen.update(kind=kind, **kw))
    image_encoder_from_settings(settings.image_encoder.model_copy(update={"kind": "aion"}))
    assert seen["kind"] == "aion" and seen["survey"] == "hsc"
    # a local sentence-transformers model ignores the HTTP settings instead of refusing them
    local = settings.text_embedder.model_copy(update={"backend": "sentence-transformers", "base_url": "",
                                                      "model": ""})
    assert build_text_embedder_from(settings.model_copy(update={"text_embedder": local})).dim == 384


def test_relative_survey_roots_belong_to_the_config_files_folder(tmp_path, isolated_home,
                                                                   monkeypatch):
    """`roots: [own]` in a home's config.yaml means the folder beside the file, whichever
    folder a process runs in (`galaxy-assets dev` runs from the repository)."""
    (isolated_home / "config.yaml").write_text("survey:\n  roots: [own, /abs/data]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_settings().survey_roots() == [(isolated_home / "own").resolve(),
                                              Path("/abs/data")]
    monkeypatch.setenv("GALAXY_ASSETS_SURVEY_ROOTS", "env_rel")  # the current folder's
    assert load_settings().survey_roots() == [(elsewhere / "env_rel").resolve()]


def test_ctrl_c_lets_the_child_shut_down_and_ends_quietly(tmp_path):
    """`galaxy-assets dev` on Ctrl-C: dagster dev gets the signal too and finishes its own
    shutdown (it was killed half-way, with a traceback)."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "parent.py"
    done = tmp_path / "child_done"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, threading, time
        from galaxy_assets.cli import run_until_done
        child = ("import signal, time, pathlib\\n"
                 "signal.signal(signal.SIGINT, lambda *a: (time.sleep(0.5), "
                 "pathlib.Path({str(done)!r}).write_text('clean'), exit(0)))\\n"
                 "print('ready', flush=True)\\n"
                 "time.sleep(30)\\n")
        threading.Timer(2.0, lambda: os.killpg(os.getpgid(0), signal.SIGINT)).start()
        sys.exit(run_until_done([sys.executable, "-c", child]))
    """))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, start_new_session=True)
    assert run.returncode == 130, run.stderr
    assert "Traceback" not in run.stderr and done.read_text() == "clean"


def test_dev_hands_dagster_absolute_paths(tmp_path):
    """`galaxy-assets dev` runs Dagster from the repository: relative paths in the settings'
    environment named folders there (GALAXY_ASSETS_SURVEY_ROOTS=data/mmu found nothing, a
    relative GALAXY_ASSETS_CONFIG failed the code location)."""
    from galaxy_assets.cli import absolute_env_paths

    (tmp_path / "conf.yaml").write_text("{}\n")
    (tmp_path / "ckpt.pt").write_text("")
    env = {
        "GALAXY_ASSETS_CONFIG": "conf.yaml",
        "GALAXY_ASSETS_SURVEY_ROOTS": os.pathsep.join(["data/mmu", "/abs/fits"]),
        "GALAXY_ASSETS_SEARCH_URI": "s3://bucket/lancedb",
        "GALAXY_ASSETS_IMAGE_ENCODER_CHECKPOINT": "ckpt.pt",
        "GALAXY_ASSETS_CAPTIONER_MODEL": "Qwen/Qwen2.5-VL-7B-Instruct",  # a hub id, not a path
    }
    env["MLFLOW_TRACKING_URI"] = "sqlite:///mlflow.db"
    changed = absolute_env_paths(env, tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/mlflow.db"
    changed.pop("MLFLOW_TRACKING_URI")
    assert env["GALAXY_ASSETS_CONFIG"] == str(tmp_path / "conf.yaml")
    assert env["GALAXY_ASSETS_SURVEY_ROOTS"].split(os.pathsep) == [str(tmp_path / "data/mmu"),
                                                                   "/abs/fits"]
    assert env["GALAXY_ASSETS_IMAGE_ENCODER_CHECKPOINT"] == str(tmp_path / "ckpt.pt")
    assert env["GALAXY_ASSETS_SEARCH_URI"] == "s3://bucket/lancedb"
    assert env["GALAXY_ASSETS_CAPTIONER_MODEL"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert set(changed) == {"GALAXY_ASSETS_CONFIG", "GALAXY_ASSETS_SURVEY_ROOTS",
                            "GALAXY_ASSETS_IMAGE_ENCODER_CHECKPOINT"}


def test_every_command_finds_the_home_a_settings_file_names(tmp_path, monkeypatch, capsys):
    """A settings file's `home:` was honoured by search, serve and the graph's resources, and
    ignored by demo, dev, evaluate and import-captions (they used ./.galaxy_home)."""
    import argparse

    from galaxy_assets.cli import command_home, main

    monkeypatch.delenv("GALAXY_ASSETS_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"home: {tmp_path / 'elsewhere'}\n")
    monkeypatch.setenv("GALAXY_ASSETS_CONFIG", str(conf))
    assert command_home(argparse.Namespace(home=None)).root == tmp_path / "elsewhere"
    assert command_home(argparse.Namespace(home=str(tmp_path / "h"))).root == tmp_path / "h"
    assert main(["evaluate"]) == 2
    assert str(tmp_path / "elsewhere") in capsys.readouterr().err
    # settings errors are one line and exit 2, not a traceback
    conf.write_text("survey:\n  colour: red\n")
    assert main(["evaluate"]) == 2
    assert capsys.readouterr().err.startswith("galaxy-assets evaluate: invalid settings (from ")


def test_a_home_named_by_the_default_settings_file_keeps_that_file(tmp_path, monkeypatch):
    """`home:` in ./.galaxy_home/config.yaml moved the demo to that home, whose own
    config.yaml was then read instead: the rest of the file that named it was lost."""
    import argparse

    from galaxy_assets.cli import command_home

    for var in ("GALAXY_ASSETS_HOME", "GALAXY_ASSETS_CONFIG"):  # restored after the test
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".galaxy_home").mkdir()
    (tmp_path / ".galaxy_home" / "config.yaml").write_text(
        f"home: {tmp_path / 'big'}\nsurvey:\n  cutout_size: 48\n")
    home = command_home(argparse.Namespace(home=None))
    assert home.root == tmp_path / "big"
    monkeypatch.setenv("GALAXY_ASSETS_HOME", str(home.root))  # what the command does next
    assert load_settings().survey.cutout_size == 48


def test_relative_folders_in_a_settings_file_are_the_files_folders(tmp_path, isolated_home,
                                                                  monkeypatch):
    """`search: {uri: mydb}` was handed to LanceDB as it was: the graph under `galaxy-assets
    dev` (run from the repository) and `search` (run from the user's folder) opened two
    different tables."""
    (isolated_home / "config.yaml").write_text(
        "search:\n  uri: mydb\ncluster:\n  io_base_dir: out\n  lancedb_uri: s3://b/lancedb\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings()
    assert settings.lancedb_location() == str(isolated_home / "mydb")
    assert settings.cluster.io_base_dir == str(isolated_home / "out")
    assert settings.cluster.lancedb_uri == "s3://b/lancedb"
