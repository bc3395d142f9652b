"""The ``galaxy-assets`` command.

galaxy-assets demo [--n N]          simulate a mock survey into the home and run the graph
galaxy-assets simulate --out DIR    write a mock survey (MMU HDF5 shards + truth tables)
galaxy-assets gallery --out PNG     draw examples of every mock class as RGB
galaxy-assets import-captions FILE  add captions made elsewhere (object_id, caption)
galaxy-assets dev                   start `dagster dev` on the home's Dagster instance
galaxy-assets search QUERY [--k 10] [--json] [--html FILE] [--filter EXPR] [--rerank]
                                    search the galaxy_index table
galaxy-assets evaluate [--json]     the latest search evaluation's figures
galaxy-assets serve [--port 8000]   the search web page and JSON API on 127.0.0.1
galaxy-assets profile show|render-instance [--out FILE]
                                    the deployment profile; the cluster's dagster.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from galaxy_assets.runtime import HOME_ENV, SIMULATION_MARKER, Home, restore_interrupt_signals

log = logging.getLogger("galaxy_assets.cli")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Runs started by the CLI log warnings and errors to the terminal; everything is in the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _dagster_yaml() -> Path:
    path = REPO_ROOT / "dagster.yaml"
    if not path.is_file():
        raise SystemExit(
            f"dagster.yaml not found at {path}: install galaxy-assets from a checkout "
            "(pip install -e .) or set DAGSTER_HOME to a folder holding your own dagster.yaml"
        )
    return path


def command_home(args: argparse.Namespace) -> Home:
    """The home a command works in: ``--home``, else the settings' (``$GALAXY_ASSETS_HOME``,
    else a settings file's ``home:``, else ``./.galaxy_home``): the rule the graph's resources
    follow, so the demo, the UI, search and evaluate all read and write one home."""
    if getattr(args, "home", None):
        return Home.from_env(args.home)
    from galaxy_assets.settings import CONFIG_ENV, load_settings

    settings = load_settings()
    home = settings.home_folder()
    default_file = Home.from_env(None).root / "config.yaml"
    if settings.home and not os.environ.get(CONFIG_ENV) and default_file.is_file():
        # the home came from the `home:` of <default home>/config.yaml: the command then sets
        # $GALAXY_ASSETS_HOME to it, after which settings would be read from <that
        # home>/config.yaml; the file that named it stays the settings file
        os.environ[CONFIG_ENV] = str(default_file.resolve())
    return home


# settings given as paths in the environment: `galaxy-assets dev` runs Dagster from the
# repository, where a relative path would name another folder than the user's
_ENV_PATHS = ("GALAXY_ASSETS_CONFIG", "GALAXY_ASSETS_SEARCH_URI", "GALAXY_ASSETS_CLUSTER_IO_BASE_DIR",
              "GALAXY_ASSETS_CLUSTER_LANCEDB_URI")
# names that may be a path or a model id ("org/name"): made absolute only where that path
# exists (not the captioner's or the text embedder's model: for an openai backend that is the
# name the endpoint serves, "models/qwen-vl" as vLLM was started, and must go as it is)
_ENV_MAYBE_PATHS = ("GALAXY_ASSETS_IMAGE_ENCODER_CHECKPOINT", "GALAXY_ASSETS_IMAGE_ENCODER_MODEL")


def absolute_env_paths(environ=None, cwd: Path | None = None) -> dict[str, str]:
    """Make the relative paths among the settings' environment variables absolute against
    ``cwd`` (the current folder), in place; returns what changed. URIs (``s3://…``) and model
    ids are left alone."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    changed: dict[str, str] = {}

    def fix(value: str, must_exist: bool) -> str:
        if not value or "://" in value or Path(value).expanduser().is_absolute():
            return value
        path = cwd / Path(value).expanduser()
        return str(path) if (path.exists() or not must_exist) else value

    for var in (*_ENV_PATHS, *_ENV_MAYBE_PATHS):
        if environ.get(var):
            new = fix(environ[var], must_exist=var in _ENV_MAYBE_PATHS)
            if new != environ[var]:
                environ[var] = changed[var] = new
    # a SQLite tracking store named relative to the current folder ("sqlite:///mlflow.db")
    uri = environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        environ["MLFLOW_TRACKING_URI"] = changed["MLFLOW_TRACKING_URI"] = (
            "sqlite:///" + str(cwd / uri[len("sqlite:///"):]))
    roots = environ.get("GALAXY_ASSETS_SURVEY_ROOTS")
    if roots:
        new = os.pathsep.join(fix(r, must_exist=False) for r in roots.split(os.pathsep))
        if new != roots:
            environ["GALAXY_ASSETS_SURVEY_ROOTS"] = changed["GALAXY_ASSETS_SURVEY_ROOTS"] = new
    return changed


def prepare_dagster_home(home: Home) -> Path:
    """Point DAGSTER_HOME at ``<home>/dagster`` (unless the user set it) with our dagster.yaml,
    and set the pool limits: ``gpu`` = number of GPUs (at least 1), ``lancedb_writer`` = 1."""
    home.ensure()
    os.environ[HOME_ENV] = str(home.root)
    absolute_env_paths()  # Dagster's processes may run in another folder (dev: the repository)
    if os.environ.get("DAGSTER_HOME") and Path(os.environ["DAGSTER_HOME"]) != home.dagster:
        return Path(os.environ["DAGSTER_HOME"])
    os.environ["DAGSTER_HOME"] = str(home.dagster)
    target = home.dagster / "dagster.yaml"
    text = render_dagster_yaml(home)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return home.dagster


def render_dagster_yaml(home: Home) -> str:
    """The repository's dagster.yaml with its storage paths moved into ``home``."""
    import yaml

    config = yaml.safe_load(_dagster_yaml().read_text())
    config["storage"]["sqlite"]["base_dir"] = str(home.dagster / "storage")
    config["local_artifact_storage"]["config"]["base_dir"] = str(home.dagster)
    config["compute_logs"]["config"]["base_dir"] = str(home.dagster / "logs")
    header = f"# Written by galaxy-assets from {_dagster_yaml()} for the home {home.root}\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def set_pool_limits(instance) -> dict[str, int]:
    try:
        import torch

        gpus = max(1, torch.cuda.device_count())
    except Exception:  # torch missing or broken CUDA: one slot
        gpus = 1
    limits = {"gpu": gpus, "lancedb_writer": 1}
    for pool, limit in limits.items():
        instance.event_log_storage.set_concurrency_slots(pool, limit)
    return limits


def _simulate(out: Path, n: int, size: int, seed: int, nside: int, workers: int) -> dict:
    from tqdm import tqdm

    from galaxy_assets.survey.mock import simulate_survey

    with tqdm(total=n, unit="gal", desc="simulating", file=sys.stderr) as bar:
        result = simulate_survey(
            out, n, size=size, seed=seed, nside=nside, workers=workers,
            progress=lambda k: bar.update(k),
        )
    from galaxy_assets.survey.mock import GENERATOR_VERSION

    info = {
        "n": n,
        "size": size,
        "seed": seed,
        "nside": nside,
        "generator": GENERATOR_VERSION,
        "shards": len(result.shards),
        "seconds": round(result.seconds, 2),
    }
    (out / SIMULATION_MARKER).write_text(json.dumps(info, indent=2))
    return info


def cmd_simulate(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    info = _simulate(out, args.n, args.size, args.seed, args.nside, args.workers)
    print(
        f"wrote {info['n']} galaxies in {info['shards']} shard(s) to {out} "
        f"in {info['seconds']:.1f} s ({info['n'] / max(info['seconds'], 1e-9):.0f} galaxies/s)"
    )
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from galaxy_assets.survey.mock_gallery import render_class_gallery

    out = render_class_gallery(
        Path(args.out), per_class=args.per_class, seed=args.seed, max_search=args.max_search
    )
    print(f"wrote {out}")
    return 0


def ensure_mock_survey(home: Home, n: int, size: int, seed: int, workers: int) -> dict:
    """Simulate the demo survey unless one with the same settings is already there."""
    from galaxy_assets.survey.mock import GENERATOR_VERSION

    marker = home.mock_survey / SIMULATION_MARKER
    wanted = {"n": n, "size": size, "seed": seed, "generator": GENERATOR_VERSION}
    marker_existed = marker.is_file()
    if marker.is_file():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in wanted} == wanted:
            print(f"mock survey: reusing {have['n']} galaxies in {have['shards']} shard(s) at {home.mock_survey}")
            return have
        print(f"mock survey: settings changed ({have} -> {wanted}); simulating again")
        shutil.rmtree(home.mock_survey)
        home.mock_survey.mkdir(parents=True)
    info = _simulate(home.mock_survey, n, size, seed, nside=16, workers=workers)
    print(f"mock survey: simulated {info['n']} galaxies in {info['shards']} shard(s) in {info['seconds']:.1f} s")
    # a survey simulated again keeps its shard keys (healpix=N__001-of-001) but holds other
    # galaxies: whatever was built from the old one must be built again
    return {**info, "resimulated": marker_existed}


def cmd_demo(args: argparse.Namespace) -> int:
    home = command_home(args)
    prepare_dagster_home(home)
    print(f"home: {home.root}")
    size = _demo_read_size(args.size)
    from galaxy_assets.settings import load_settings

    roots = load_settings().survey.roots
    if roots:  # the user's survey: the mock one is not simulated (--n, --seed do not apply)
        print(f"survey: reading survey.roots {roots}")
        survey_info: dict = {}
    else:
        survey_info = ensure_mock_survey(home, args.n, size, args.seed, args.workers)

    import dagster as dg

    from galaxy_assets.definitions import defs
    from galaxy_assets.defs.partitions import shard_partitions

    instance = dg.DagsterInstance.get()
    set_pool_limits(instance)
    survey = defs.resources["survey"]
    found = survey.discover(home)
    known = set(instance.get_dynamic_partitions(shard_partitions.name))
    if survey_info.get("resimulated"):
        # same shard keys, other galaxies: every manifest, model and index row is rebuilt
        # (as --force)
        args.force = True
    # the shards no root holds any more (another survey.roots, files removed) leave the
    # partitions and the index, as the sensor drops them: the models would otherwise train on
    # them and the index keep their rows under the old aligner (unless a root is missing or
    # empty: an unmounted disk is not a survey that shrank)
    from galaxy_assets.defs.survey import vanished_shards

    vanished, warning = vanished_shards(survey.root_paths(home), known, found)
    if warning:
        print(f"survey: {warning}")
    if vanished:
        print(f"survey: {len(vanished)} shard(s) are no longer under the survey's roots "
              f"(e.g. {vanished[0]}); dropping them")
        for key in vanished:
            instance.delete_dynamic_partition(shard_partitions.name, key)
        index = load_settings().lancedb_location(home)
        if "://" in index or Path(index).exists():  # their index rows go too
            defs.resolve_job_def("index_maintenance_job").execute_in_process(
                instance=instance, run_config=QUIET, raise_on_error=False
            )
        known = set(instance.get_dynamic_partitions(shard_partitions.name))
    new = sorted(set(found) - known)
    if new:
        instance.add_dynamic_partitions(shard_partitions.name, new)
    done = instance.get_materialized_partitions(dg.AssetKey("raw_cutouts"))
    if not args.force:
        changed = _shards_changed(instance, survey, found, done)
        if changed:
            # another survey under the same keys (survey.roots now names real MMU shards keyed
            # by HEALPix cell), files replaced, or other bands or crop: the manifests, models
            # and index rows were built from other pixels, so every stage runs again
            key, why = changed[0]
            print(f"survey: {len(changed)} shard(s) are not what the graph was built from "
                  f"(e.g. {key}: {why}); rebuilding everything, as --force")
            args.force = True
    todo = sorted(k for k in found if args.force or k not in done)
    print(f"survey: {len(found)} shard(s); materializing raw_cutouts for {len(todo)}")
    job = defs.resolve_job_def("survey_job")
    failed: list[str] = []
    t0 = time.perf_counter()
    from tqdm import tqdm

    for key in tqdm(todo, unit="shard", desc="raw_cutouts", file=sys.stderr):
        result = job.execute_in_process(
            partition_key=key, instance=instance, run_config=QUIET, raise_on_error=False
        )
        if not result.success:
            failed.append(key)
    print(f"raw_cutouts: {len(todo) - len(failed)} shard(s) materialized in {time.perf_counter() - t0:.1f} s")
    _print_survey_summary(instance, sorted(found), failed)
    # A failed shard fails only its own partition: the rest of the graph runs on the others.
    good = sorted(k for k in found if k not in failed)
    from galaxy_assets.survey.truth import truth_path

    args.has_votes = any(truth_path(found[k]).exists() for k in good)
    ok = _run_captions(defs, instance, args) and _run_models(defs, instance, good, args)
    ok = ok and not failed
    print(f"\nNext: `{_dev_command(args, home)}` opens the Dagster UI on this home "
          "(http://127.0.0.1:3000).")
    return 0 if ok else 1


def _dev_command(args: argparse.Namespace, home: Home) -> str:
    """The command that opens the Dagster UI on ``home``: with ``--home`` when the demo was
    given one (a plain `dev` would open the home the environment or settings name)."""
    return ".venv/bin/galaxy-assets dev" + (f" --home {home.root}" if args.home else "")


def _demo_read_size(size: int | None) -> int:
    """The mock survey's cutout size (``--size``, else DEMO_SIZE). The demo reads cutouts at
    that size, unless the settings (the home's config.yaml or the environment) give a
    ``survey.cutout_size`` and ``--size`` was not given. Other processes (`galaxy-assets dev`,
    the sensor) read the simulated size from the mock survey's SIMULATION.json, unless the
    settings give one (``defs.resources.default_resources``)."""
    from galaxy_assets.settings import load_settings

    if size is not None or "cutout_size" not in load_settings().survey.model_fields_set:
        os.environ["GALAXY_ASSETS_SURVEY_CUTOUT_SIZE"] = str(size or DEMO_SIZE)
    return size or DEMO_SIZE


def _shards_changed(instance, survey, found: dict, done) -> list[tuple[str, str]]:
    """(key, why) for every built shard whose manifest came from another file, or was read
    with other bands or another crop than the settings now give."""
    from galaxy_assets.defs.survey import shard_changed

    bands = ",".join(survey.bands)
    out = []
    for key in sorted(k for k in found if k in done):
        meta = _partition_metadata(instance, "raw_cutouts", key)
        why = shard_changed(meta, found[key])
        if why is None and meta.get("bands") not in (None, bands):
            why = f"read with bands {meta['bands']}, the settings now say {bands}"
        size = meta.get("cutout_size")
        if why is None and size is not None and int(size) != int(survey.cutout_size):
            why = f"read at cutout_size {size}, the settings now say {survey.cutout_size}"
        if why is not None:
            out.append((key, why))
    return out


def _partition_metadata(instance, asset: str, key: str) -> dict:
    """The metadata of partition ``key``'s latest materialization of ``asset`` ({} if none)."""
    from galaxy_assets.defs.metadata import partition_metadata

    return partition_metadata(instance, asset, key)


def _latest_metadata(instance, asset: str) -> dict:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _run_captions(defs, instance, args: argparse.Namespace) -> bool:
    from galaxy_assets.settings import load_settings

    # --n is the mock survey's size; the user's survey (survey.roots) is as large as it is
    n = args.captions if load_settings().survey.roots else min(args.captions, args.n)
    print(f"\ncaptions: describing a random sample of {n} galaxies, embedding the captions")
    t0 = time.perf_counter()
    result = defs.resolve_job_def("captions_job").execute_in_process(
        instance=instance,
        run_config={**QUIET, "ops": {"caption_sample": {"config": {"n": n, "seed": args.seed}}}},
        raise_on_error=False,
    )
    if not result.success:
        for event in result.get_step_failure_events():
            print(f"  FAILED {event.step_key}: {event.event_specific_data.error.message.strip()}")
        return False
    meta = _latest_metadata(instance, "vlm_captions")
    print(
        f"captions: {meta.get('captions')} ({meta.get('described_now')} new"
        + (f", {meta['redescribed']} asked again: their captions were of other pixels"
           if meta.get("redescribed") else "")
        + f", {meta.get('reused')} reused, {meta.get('failed_now')} failed) by "
        f"{meta.get('backend')}:{meta.get('model')} in {time.perf_counter() - t0:.1f} s"
    )
    if "keyword_rates" in meta:
        print("\nHow caption words follow the mock survey's truth:\n" + str(meta["keyword_rates"]))
    emb = _latest_metadata(instance, "caption_embeddings")
    print(
        f"\ncaption_embeddings: {emb.get('captions')} captions + {emb.get('sentence_views', 0)} "
        f"sentence views ({emb.get('distinct_texts', '?')} distinct texts embedded), dim "
        f"{emb.get('dim')}, from {emb.get('embedder')}"
    )
    return True


RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
DEMO_SIZE = 64  # pixels: the mock survey's cutouts and, unless configured, the read crop
DEMO_QUERIES = ("a galaxy with visible spiral arms", "merging galaxies with tidal tails",
                "gravitational lens with a blue arc")
# A semantic query with a posterior filter: spirals whose photometric redshift is below 0.07
# at 84% confidence (the emulator's post_* columns in galaxy_index).
DEMO_FILTERED = ("spiral galaxies", "post_redshift_p84 < 0.07")


def _run_stage(defs, instance, job_name: str, keys: list[str] | None, run_config=None,
               *, batched: bool = False) -> bool:
    """Run one job: once (``keys`` None), per partition, or over all ``keys`` in one run
    (``batched``: assets with a single-run backfill policy load their model once). Prints
    failures; True if all passed."""
    from tqdm import tqdm

    job = defs.resolve_job_def(job_name)
    config = {**QUIET, **(run_config or {})}
    t0 = time.perf_counter()
    failures = []
    if keys is None:
        result = job.execute_in_process(instance=instance, run_config=config,
                                        raise_on_error=False)
        failures = [] if result.success else [("", result)]
    elif batched:
        from galaxy_assets.defs.partitions import contiguous_ranges

        for first, last in contiguous_ranges(instance, keys):
            result = job.execute_in_process(
                instance=instance, run_config=config, raise_on_error=False,
                tags={RANGE_START: first, RANGE_END: last})
            if not result.success:
                failures.append((f"{first}..{last}", result))
    else:
        for key in tqdm(keys, unit="shard", desc=job_name, file=sys.stderr):
            result = job.execute_in_process(partition_key=key, instance=instance,
                                            run_config=config, raise_on_error=False)
            if not result.success:
                failures.append((key, result))
    for key, result in failures:
        for event in result.get_step_failure_events():
            err = event.event_specific_data.error
            cause = err.cause.message.strip() if err.cause else err.message.strip()
            print(f"  FAILED {job_name} {key} {event.step_key}: {cause[:500]}")
        for check in result.get_asset_check_evaluations():
            if not check.passed:
                print(f"  CHECK FAILED {check.check_name}: {check.description or ''}"[:600])
    print(f"{job_name}: {'ok' if not failures else f'{len(failures)} failed'} "
          f"in {time.perf_counter() - t0:.1f} s")
    return not failures


def _emulator_config(budget_s: float) -> dict:
    """The demo trains the emulator on a short budget (the asset's default is 300 s)."""
    return {"ops": {"property_emulator": {"config": {"time_budget_s": float(budget_s)}}}}


def _encoder_epochs(args: argparse.Namespace) -> int:
    """``--encoder-epochs``, or the encoder's own default schedule."""
    from galaxy_assets.morphology.train import TrainConfig

    return int(args.encoder_epochs or TrainConfig.epochs)


def _morphology_config(epochs: int) -> dict:
    """The demo's encoder schedule: ``epochs`` at most, with a time budget that lets them run
    (20 s an epoch, at least the asset's default budget)."""
    from galaxy_assets.defs.morphology import MorphologyTrainConfig

    floor = MorphologyTrainConfig().time_budget_s
    return {"ops": {"morphology_encoder": {"config": {
        "epochs": int(epochs), "time_budget_s": max(floor, 20.0 * epochs)}}}}


def _encoder_schedule_changed(meta: dict, epochs: int) -> bool:
    """Whether the latest encoder was trained with another epoch limit than ``epochs`` (a
    materialization from before the limit was recorded counts as the default)."""
    from galaxy_assets.morphology.train import TrainConfig

    return int(meta.get("epochs_max", TrainConfig.epochs)) != int(epochs)


def _embeddings_outdated(meta: dict, champion_version: int | None) -> bool:
    """Whether a shard's image embeddings (``meta``, its latest materialization's metadata)
    came from another encoder than the graph's image encoder now is: other test-time views than
    the settings' ``image_encoder.tta``
    (embeddings from before the views existed, or from another setting), or, for the registry
    encoder, another version than its champion (``champion_version``, None when unknown), e.g.
    an encoder promoted from the Dagster UI. Such embeddings are redone with everything that
    reads them."""
    from galaxy_assets.defs.resources import ImageEncoderResource
    from galaxy_assets.embedding.image import registry_encoder_id, split_tta

    encoder = meta.get("encoder")
    if not encoder:
        return False
    resource = ImageEncoderResource.from_settings()
    base, views = split_tta(str(encoder))
    if views != resource.tta:
        return True
    if resource.kind != "registry" or champion_version is None:
        return False
    return base != registry_encoder_id(resource.model_name, champion_version)


def _encoder_champion(home: Home) -> int | None:
    """The version of the image encoder's registry model under its alias, if any."""
    from galaxy_assets.defs.resources import ImageEncoderResource
    from galaxy_assets.search.service import tracker_for

    resource = ImageEncoderResource.from_settings()
    # the registry the graph uses (MLFLOW_TRACKING_URI or the cluster's), not always the home's
    version = tracker_for(home).get_alias_version(resource.model_name, resource.alias)
    return int(version.version) if version is not None else None


def _unevaluated_aligner(aligned: dict, evaluated: dict) -> bool:
    """Whether the latest aligner (``aligned``, its metadata) is not the candidate the latest
    evaluation (``evaluated``) scored: that run's evaluation failed or never ran, so the
    evaluation, the gate and the index are redone."""
    version = str(aligned.get("aligner_version") or "")
    if "/v" not in version:
        return False
    return str(evaluated.get("candidate_version")) != version.rsplit("/v", 1)[1]


def _gate_refused(aligned: dict, evaluated: dict) -> bool:
    """Whether a failed evaluation run is the gate refusing the latest aligner (it was
    evaluated, not promoted): an outcome, not a failure, so the demo exits 0 as a rerun that
    reuses that evaluation does; the champion still serves. Anything else failed."""
    return bool(aligned) and not _unevaluated_aligner(aligned, evaluated) and not evaluated.get(
        "promoted")


def _captions_changed(aligned: dict, captions: dict) -> bool:
    """Whether the caption texts or their embedder differ from those the last aligner learned
    from (a smaller --captions sample, imported captions, a cached captioner switched back to,
    another text embedder: nothing is described anew, yet the training texts changed). An
    aligner from before this was recorded counts as unchanged."""
    pairs = (("caption_texts_fingerprint", "texts_fingerprint"), ("caption_embedder", "embedder"))
    return any(
        aligned.get(mine) is not None and captions.get(theirs) is not None
        and aligned[mine] != captions[theirs]
        for mine, theirs in pairs
    )


def _report_outdated(meta: dict) -> bool:
    """Whether the latest evaluation (its metadata) was written by code whose report held less
    than this code's (no ``report_version``, or an older one)."""
    from galaxy_assets.evaluation.report import REPORT_VERSION

    return bool(meta) and int(meta.get("report_version", 1)) < REPORT_VERSION


def _latest_ids(instance, asset: str, keys: list[str] | None = None) -> dict[str | None, int]:
    """The event-log storage id (increasing with time) of the latest materialization of
    ``asset``: per partition of ``keys``, or under None for an unpartitioned asset."""
    import dagster as dg
    from dagster._core.events import DagsterEventType

    if keys is None:
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=50).records
        for record in records:  # newest first
            meta = record.asset_materialization.metadata if record.asset_materialization else {}
            model = meta.get("registered_model")
            # a user-table emulator (property-emulator-table-…) is not the survey's: the
            # survey's posteriors and the demo's stages do not follow it
            if asset == "property_emulator" and model is not None and str(
                    getattr(model, "value", model)) != "property-emulator":
                continue
            return {None: record.storage_id}
        return {}
    ids = instance.get_latest_storage_id_by_partition(
        dg.AssetKey(asset), DagsterEventType.ASSET_MATERIALIZATION, set(keys))
    return dict(ids)


def _built_before(instance, asset: str, upstream: str, keys: list[str]) -> list[str]:
    """The ``keys`` whose ``upstream`` partition was materialized after that partition of
    ``asset``: a run stopped between the two stages left ``asset`` built from the old one."""
    ups, mine = _latest_ids(instance, upstream, keys), _latest_ids(instance, asset, keys)
    return [k for k in keys if k in ups and k in mine and ups[k] > mine[k]]


def _older_than_run(instance, asset: str, upstream: str) -> bool:
    """Whether the unpartitioned ``asset`` was last materialized before ``upstream`` was."""
    mine, ups = _latest_ids(instance, asset).get(None), _latest_ids(instance, upstream).get(None)
    return mine is not None and ups is not None and ups > mine


def _older_than(instance, asset: str, upstream: str, keys: list[str]) -> list[str]:
    """The ``keys`` whose partition of ``asset`` was materialized before the latest run of the
    unpartitioned ``upstream`` (the emulator, the evaluation that promoted an aligner)."""
    latest = _latest_ids(instance, upstream).get(None)
    mine = _latest_ids(instance, asset, keys)
    return [] if latest is None else [k for k in keys if k in mine and mine[k] < latest]


def _run_models(defs, instance, keys: list[str], args: argparse.Namespace) -> bool:
    """Morphology encoder -> per-shard predictions and embeddings -> aligner -> evaluation and
    champion gate -> search vectors and galaxy_index (one run over every shard)."""
    import dagster as dg

    def missing(asset: str) -> list[str]:
        done = instance.get_materialized_partitions(dg.AssetKey(asset))
        return [k for k in keys if args.force or k not in done]

    def absent(asset: str) -> bool:
        return instance.get_latest_materialization_event(dg.AssetKey(asset)) is None

    # A rerun reuses what exists: each stage runs when it is missing or its inputs changed.
    epochs = _encoder_epochs(args)
    retrain = (args.force or absent("morphology_encoder") or _encoder_schedule_changed(
        _latest_metadata(instance, "morphology_encoder"), epochs))
    # a survey without votes (no truth tables: a real one) cannot train the morphology
    # encoder; with a pretrained image encoder the graph does not need it
    from galaxy_assets.defs.resources import ImageEncoderResource

    if (retrain and not getattr(args, "has_votes", True)
            and ImageEncoderResource.from_settings().kind != "registry"):
        print("morphology_job: no Galaxy Zoo votes in this survey (no truth tables); the "
              "morphology encoder is skipped (the image encoder is "
              f"{ImageEncoderResource.from_settings().kind}; to train it, materialize "
              "morphology_encoder with a vote_catalogue in the Dagster UI)")
        retrain = False
    # shards embedded by another encoder than the graph's now (a new champion, other views);
    # each shard's own record, so that an interrupted re-embedding resumes where it stopped
    champion = None if retrain else _encoder_champion(command_home(args))
    outdated = [] if retrain else [
        k for k in keys
        if _embeddings_outdated(_partition_metadata(instance, "image_embeddings", k), champion)]
    shards = keys if retrain else sorted(set(outdated) | set(missing("image_embeddings"))
                                         | set(missing("morphology_predictions")))
    new_captions = bool(_latest_metadata(instance, "vlm_captions").get("described_now")) or (
        _captions_changed(_latest_metadata(instance, "aligned_model"),
                          _latest_metadata(instance, "caption_embeddings")))
    # a rerun after a run stopped half-way (Ctrl-C, a failed stage): a model trained before
    # the embeddings it reads were rebuilt is trained again, though nothing is missing now
    aligned = _latest_metadata(instance, "aligned_model")
    embedded_by = {_partition_metadata(instance, "image_embeddings", k).get("encoder")
                   for k in keys} - {None}
    realign = bool(retrain or shards or new_captions or absent("aligned_model")
                   or (aligned.get("image_encoder") and embedded_by - {aligned["image_encoder"]}))
    reemulate = bool(retrain or shards or absent("property_emulator")
                     or _older_than_run(instance, "property_emulator", "morphology_encoder"))
    # a new rating rule or another captioner makes the re-ranked figures stale
    from galaxy_assets.search.service import reranker_id

    evaluated = _latest_metadata(instance, "search_evaluation")
    rerater = evaluated.get("reranker") != reranker_id()
    # an evaluation from older code lacks figures the report now holds
    old_report = _report_outdated(evaluated)
    # the last aligner was never scored (its evaluation failed): score, gate and index it
    unevaluated = _unevaluated_aligner(aligned, evaluated)
    posterior_keys = keys if reemulate else sorted(
        set(missing("property_posteriors")) | set(_older_than(instance, "property_posteriors",
                                                              "property_emulator", keys)))
    emulator_skipped = "inputs unchanged: property emulator reused"
    if not getattr(args, "has_votes", True) and absent("property_emulator"):
        # no truth tables (a real survey): the emulator has no labels to learn from unless its
        # labels_table is given, which the demo cannot do; the index is built without
        # posteriors (galaxy_index reads them when present)
        reemulate, posterior_keys = False, []
        emulator_skipped = ("no truth tables in this survey, so no labels: the property "
                            "emulator is skipped (materialize property_emulator with a "
                            "labels_table in the Dagster UI to train it)")
    stages = [
        ("morphology_job", None, retrain, False, "reusing the registered model (--force retrains)"),
        ("shard_embeddings_job", shards, bool(shards), False, "every shard is embedded"),
        ("emulator_job", None, reemulate, False, emulator_skipped),
        ("posteriors_job", posterior_keys, bool(posterior_keys), True,
         "every shard has posteriors"),
        ("aligner_job", None, realign, False, "captions and embeddings unchanged: aligner reused"),
        ("evaluation_job", None,
         realign or absent("search_evaluation") or rerater or old_report or unevaluated, False,
         "aligner and re-ranker unchanged: evaluation reused"),
    ]
    print()
    ok = True
    for job_name, stage_keys, needed, batched, why in stages:
        if not needed:
            print(f"{job_name}: {why}")
            continue
        run_config = {"emulator_job": _emulator_config(args.emulator_budget),
                      "morphology_job": _morphology_config(epochs)}.get(job_name)
        passed = _run_stage(defs, instance, job_name, stage_keys, run_config, batched=batched)
        if not passed and job_name != "evaluation_job":
            return False
        if not passed and _gate_refused(_latest_metadata(instance, "aligned_model"),
                                        _latest_metadata(instance, "search_evaluation")):
            print("evaluation_job: the champion gate kept the champion; the candidate stays a "
                  "candidate (the report says why)")
            passed = True
        ok = ok and passed
    # shards indexed before the index's inputs were rebuilt (an index run stopped part-way
    # after a promotion, or after new posteriors): indexed again
    stale_index = set(_built_before(instance, "galaxy_index", "property_posteriors", keys))
    if _latest_metadata(instance, "search_evaluation").get("promoted"):
        stale_index |= set(_older_than(instance, "galaxy_index", "search_evaluation", keys))
    index_keys = keys if realign or unevaluated else sorted(
        set(missing("galaxy_index")) | set(posterior_keys) | stale_index)
    if index_keys:
        if not _run_stage(defs, instance, "index_job", index_keys, batched=True):
            return False
    else:
        print("index_job: every shard is indexed with the current aligner")
    meta = _latest_metadata(instance, "morphology_encoder")
    print(f"\nmorphology-encoder ({meta.get('epochs_max', '?')} epochs at most): held-out loss "
          f"{meta.get('val_loss', float('nan')):.3f}, "
          f"vote-fraction MAE {meta.get('val_vote_mae', float('nan')):.3f}")
    meta = _latest_metadata(instance, "aligned_model")
    print(f"search-aligner: {meta.get('aligner_version')}; "
          + ", ".join(f"{k} {v:.3f}" for k, v in meta.items()
                      if isinstance(v, float) and "recall_at_5" in k))
    meta = _latest_metadata(instance, "property_emulator")
    if meta:
        print(f"{meta.get('registered_model') or 'property-emulator'} v{meta.get('version')}: "
              + ", ".join(f"{lab} NMAD {meta.get(f'{lab}_diffusion_nmad', float('nan')):.3f} "
                          f"68% coverage {meta.get(f'{lab}_diffusion_coverage_68', float('nan')):.2f}"
                          for lab in ("redshift", "log_stellar_mass"))
              + f"; {'champion' if meta.get('promoted') else 'not promoted'}: {meta.get('gate')}")
    return _print_results(instance, args) and ok


def _print_results(instance, args: argparse.Namespace) -> bool:
    """The evaluation table, the top results of the demo queries with contact sheets, and
    where the report and the UIs are."""
    from galaxy_assets.evaluation.report import EvaluationResult
    from galaxy_assets.settings import load_settings

    home = command_home(args)
    report = latest_report(home)
    if report is not None:
        print("\n" + format_evaluation(EvaluationResult.from_json(report)))
        gate = _latest_metadata(instance, "search_evaluation")
        cand = gate.get("candidate_version")
        if not gate.get("promoted") and cand and cand == gate.get("champion_version"):
            print(f"champion gate: candidate v{cand} already is the champion")
        else:
            print(f"champion gate: {'promoted' if gate.get('promoted') else 'not promoted'} "
                  f"candidate v{cand}")
    index = _latest_metadata(instance, "galaxy_index")
    print(f"\ngalaxy_index: {index.get('rows')} rows, table version {index.get('table_version')}"
          f" at {index.get('table_uri')}")
    from galaxy_assets.search.contact import write_contact_sheet
    from galaxy_assets.search.service import open_search

    sheets = home.reports / "contact_sheets"
    try:  # one engine (text embedder, aligner) for every demo query
        search = open_search(home=home, settings=load_settings())
    except Exception as exc:  # noqa: BLE001 - the demo reports and goes on
        print(f"\ncannot open the index for the demo searches: {exc}")
        return False
    queries = [(q, None) for q in DEMO_QUERIES]
    if "post_redshift_p84" in search.table.schema.names:
        queries.append(DEMO_FILTERED)
    for query, flt in queries:
        try:
            results = search.search(query, 8, filters=flt)
        except Exception as exc:  # noqa: BLE001 - the demo reports and goes on
            print(f"\nsearch {query!r} failed: {exc}")
            return False
        name = query.replace(" ", "_") + ("_filtered" if flt else "")
        sheet = write_contact_sheet(results.frame, sheets / f"{name}.html", title=query)
        print("\n" + (f"filter: {flt}\n" if flt else "") + format_results(results)
              + f"\n  contact sheet: {sheet}")
    print(f"\nevaluation report: {report.with_name('report.md') if report else 'none'}")
    print(f"Dagster UI: `{_dev_command(args, home)}` → http://127.0.0.1:3000")
    print(f"MLflow UI: `.venv/bin/mlflow ui --backend-store-uri "
          f"{load_settings().tracking_location(home)[0]}` "
          "→ http://127.0.0.1:5000 (runs, search-aligner@champion, morphology-encoder@champion)")
    return True


def cmd_import_captions(args: argparse.Namespace) -> int:
    from galaxy_assets.captioning.base import CaptionerError
    from galaxy_assets.captioning.store import CaptionStore

    home = command_home(args).ensure()
    store = CaptionStore(home.root / "captions")
    try:
        n = store.import_table(args.table, source=args.source)
    except CaptionerError as exc:
        print(f"import-captions: {exc}", file=sys.stderr)
        return 2
    print(f"imported {n} captions from {args.table}")
    import polars as pl

    mine = pl.col("source") == f"import:{Path(args.table).name}"
    ids = store.captions().filter(mine)["object_id"]
    surveyed, sampled = _ids_known(home, ids.to_list())
    if surveyed is None:
        print("no survey manifest yet: run the graph (galaxy-assets demo) to see which of them "
              "are galaxies of the survey")
        return 0
    print(f"{surveyed} of them are galaxies of the survey; {sampled} are in caption_sample "
          "and appear in vlm_captions at its next run")
    if surveyed == 0:
        print(f"warning: no imported id is a survey object_id (they look like {ids[:3].to_list()}"
              "); the table may use another id scheme: match it to the survey first",
              file=sys.stderr)
    return 0


def _ids_known(home: Home, ids: list[str]) -> tuple[int | None, int]:
    """How many of ``ids`` the stored manifests hold (None: no manifest yet), and how many
    the stored caption_sample holds."""
    import polars as pl

    manifests = sorted((home.parquet / "raw_cutouts").glob("*.parquet"))
    if not manifests:
        return None, 0
    wanted = pl.Series("object_id", ids, dtype=pl.Utf8).implode()
    surveyed = pl.scan_parquet(manifests).filter(pl.col("object_id").is_in(wanted))
    n_surveyed = surveyed.select(pl.len()).collect().item()
    sample = home.parquet / "caption_sample.parquet"
    n_sampled = 0
    if sample.is_file():
        n_sampled = (pl.scan_parquet(sample).filter(pl.col("object_id").is_in(wanted))
                     .select(pl.len()).collect().item())
    return int(n_surveyed), int(n_sampled)


def _print_survey_summary(instance, keys: list[str], failed: list[str]) -> None:

    total = rejected = 0
    rows = []
    for key in keys:
        meta = _partition_metadata(instance, "raw_cutouts", key)
        if not meta:
            rows.append((key, "-", "-", "FAILED" if key in failed else "not materialized"))
            continue
        n = int(meta["galaxies"])
        r = int(meta["rejected"])
        total += n
        rejected += r
        rows.append((key, str(n), str(r), "FAILED (latest run)" if key in failed else "ok"))
    width = max([len(r[0]) for r in rows] + [5])
    print(f"\n{'shard':<{width}}  {'galaxies':>8}  {'rejected':>8}  status")
    for key, n, r, status in rows:
        print(f"{key:<{width}}  {n:>8}  {r:>8}  {status}")
    print(f"{'total':<{width}}  {total:>8}  {rejected:>8}")


def cmd_dev(args: argparse.Namespace) -> int:
    home = command_home(args)
    dagster_home = prepare_dagster_home(home)
    import dagster as dg

    set_pool_limits(dg.DagsterInstance.get())
    exe = Path(sys.executable).with_name("dagster")
    cmd = [str(exe if exe.exists() else "dagster"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
           "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={dagster_home}\n$ {' '.join(cmd)}")
    # run from the repository, where README's relative paths (galaxy_assets/emulator/configs/…
    # in a run config) and a .env file are found; Dagster notes there that the repository's
    # dagster.yaml "will not be used": the home's rendered copy of it is. Relative path
    # settings in the environment were made absolute by prepare_dagster_home
    return run_until_done(cmd, cwd=REPO_ROOT)


def run_until_done(cmd: list[str], **kwargs) -> int:
    """Run ``cmd`` and return its exit code. Ctrl-C reaches the child too (same process
    group): it is given time to shut down its own services instead of being killed half-way,
    and the command ends quietly with 130."""
    proc = subprocess.Popen(cmd, **kwargs)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=60)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C: stop now
            proc.kill()
            proc.wait()
        return 130


def cmd_search(args: argparse.Namespace) -> int:
    from galaxy_assets.captioning.base import CaptionerError
    from galaxy_assets.embedding.text import TextEmbedderError
    from galaxy_assets.search.errors import SearchError
    from galaxy_assets.settings import load_settings

    settings = load_settings()
    home = command_home(args)
    try:
        results, rerank = run_search(args, settings, home)
    # the embedder and the re-ranker's captioner are built from the settings on the way
    except (SearchError, ValueError, TextEmbedderError, CaptionerError) as exc:
        print(f"galaxy-assets search: {exc}", file=sys.stderr)
        return 2
    if args.html:
        from galaxy_assets.search.contact import write_contact_sheet

        path = write_contact_sheet(results.frame, args.html,
                                   title=f"{results.query} (table v{results.table_version})")
        print(f"contact sheet: {path}", file=sys.stderr)
    # every rating failed (an endpoint down, a spent quota): the order is the similarity's,
    # the results are printed as such, and the command fails
    rerank_failed = rerank is not None and rerank.n_rated == 0 and rerank.n_failed > 0
    if rerank is not None:
        first = next(iter(rerank.failures.values()), "")
        print(f"re-ranked by {rerank.rater}: {rerank.n_rated} rated, {rerank.n_failed} failed"
              + (f" (e.g. {first})" if rerank_failed and first else ""), file=sys.stderr)
    if args.json:
        records = results.to_json_records()
        if rerank is not None:  # which rater ordered them, beside each rating
            records = [{**r, "reranker": rerank.rater} for r in records]
        print(json.dumps(records, indent=2))
    else:
        print(format_results(results, rerank))
    return 1 if rerank_failed else 0


def run_search(args: argparse.Namespace, settings, home: Home):
    """The query of ``args`` on the configured index: (SearchResults, RerankOutcome | None)."""
    from galaxy_assets.search.query import parse_term
    from galaxy_assets.search.service import build_rater, open_search

    terms = list(args.query)
    if args.image:
        terms.append(f"image:{args.image}")
    if args.object:
        terms.append(f"object:{args.object}")
    if not terms:
        raise ValueError("give a query: text, --object ID or --image FILE")
    query = [parse_term(t) for t in terms]  # one text term is a plain text query
    depth = settings.search.k_rerank if args.k_rerank is None else args.k_rerank
    if depth < 1:
        raise ValueError(f"--k-rerank {depth}: give a positive number of results to re-rank")
    # the rater judges the wanted words only, as the web API does (not '-text:bar^0.5' syntax)
    rated_text = " ".join(t.value for t in query if t.kind == "text" and not t.negative)
    if args.rerank and not rated_text:
        raise ValueError("re-ranking rates each galaxy against the query text; give a text "
                         "query (or search without --rerank)")
    # an image term (image:FILE, or --image) needs the encoder the aligner was trained on
    search = open_search(home=home, settings=settings,
                         image_queries=any(t.kind == "image" for t in query))
    fetch = args.k
    if args.rerank:  # the re-ranked head, within the table (the web API clamps it too)
        n_rows = getattr(getattr(search, "table", None), "count_rows", lambda: depth)()
        fetch = max(args.k, min(depth, int(n_rows)))
    results = search.search(query, fetch, filters=args.filter or None, nprobes=args.nprobes,
                            refine_factor=args.refine_factor)
    rerank = None
    if args.rerank:
        from galaxy_assets.search.rerank import vlm_rerank

        rater = build_rater(settings, search.text_embedder)
        rerank = vlm_rerank(results.frame, rater, query=rated_text,
                            k_rerank=depth, n_samples=settings.search.rerank_samples)
        results.frame = rerank.frame
    results.frame = results.frame.head(args.k)
    return results, rerank


def format_results(results, rerank=None) -> str:
    """A plain-text table of results (rank, score, object_id, position, r mag, caption)."""
    frame = results.frame
    lines = [f"{results.query!s} — top {frame.height} of galaxy_index v{results.table_version}"
             f" ({results.path or 'lance'}, {sum(results.timings_ms.values()):.0f} ms)"]
    if results.explanation:
        for term in results.explanation:
            lines.append("  term: " + ", ".join(f"{k}={v}" for k, v in term.items()))
    if rerank is not None:
        lines.append(f"  re-ranked top {rerank.k_rerank} by {rerank.rater}: {rerank.n_rated} "
                     f"rated, {rerank.n_failed} failed")
    z = "post_redshift_median" in frame.columns  # the emulator's photometric redshift
    rated = "rating" in frame.columns  # re-ranked: the rating and the rank by similarity
    lines.append(f"{'#':>3} {'score':>6}  " + ("rating sim#  " if rated else "")
                 + f"{'object_id':<18} {'ra':>9} {'dec':>8} {'mag_r':>6}  "
                 + ("z (p16-p84)        " if z else "") + "caption")
    for row in frame.iter_rows(named=True):
        caption = (row.get("caption") or "-").replace("\n", " ")
        mag = row.get("mag_r")
        zcol = ""
        if z:
            med, lo, hi = (row.get(f"post_redshift_{q}") for q in ("median", "p16", "p84"))
            zcol = (f"{med:.3f} ({lo:.3f}-{hi:.3f})  " if None not in (med, lo, hi)
                    else f"{'-':<19}")
        rating = ""
        if rated:
            r = row.get("rating")
            rating = (f"{'-' if r is None else f'{r:.1f}':>6} "
                      f"{row.get('similarity_rank') or '-'!s:>4}  ")
        lines.append(
            f"{row['rank']:>3} {row['score']:>6.3f}  {rating}{str(row['object_id']):<18} "
            f"{row['ra']:>9.4f} {row['dec']:>8.4f} {mag if mag is None else f'{mag:.2f}'!s:>6}  "
            f"{zcol}{caption[:110 - len(zcol)]}"
        )
    return "\n".join(lines)


def latest_report(home: Home) -> Path | None:
    """The newest ``evaluation.json`` under ``<home>/reports/search_evaluation/``."""
    folder = home.reports / "search_evaluation"
    found = sorted(folder.glob("v*/evaluation.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from galaxy_assets.evaluation.errors import EvaluationError
    from galaxy_assets.evaluation.report import EvaluationResult

    home = command_home(args)
    path = latest_report(home)
    if path is None:
        print(f"no search evaluation under {home.reports / 'search_evaluation'}: materialize "
              "search_evaluation first (galaxy-assets demo, or evaluation_job in the UI)",
              file=sys.stderr)
        return 2
    try:
        result = EvaluationResult.from_json(path)
    except (EvaluationError, OSError, ValueError) as exc:
        print(f"the search evaluation {path} cannot be read: {exc}; materialize "
              "search_evaluation again (galaxy-assets demo, or evaluation_job in the UI)",
              file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**result.summary(), "report": str(path.with_name("report.md"))},
                         indent=2, default=str))
        return 0
    print(format_evaluation(result))
    print(f"\nreport: {path.with_name('report.md')}")
    return 0


def format_evaluation(result) -> str:
    """nDCG@10 (± bootstrap σ) per target and method, as a plain-text table."""
    import polars as pl

    frame = result.to_frame()
    if frame.is_empty():
        return ("no target was scored (no target has labelled galaxies among the searched ones; "
                "see the report's label counts); versions: "
                + ", ".join(f"{k} {v}" for k, v in result.versions.items()))
    methods = [m for m in ("semantic", "semantic_rerank", "image_similarity", "random")
               if m in set(frame["method"])]
    width = max(len(m) for m in methods) + 2
    lines = ["nDCG@10 (± bootstrap σ); versions: "
             + ", ".join(f"{k} {v}" for k, v in result.versions.items())]
    lines.append(f"{'target':<15}" + "".join(f"{m:>{width + 6}}" for m in methods))
    for target in frame["target"].unique(maintain_order=True):
        cells = []
        for m in methods:
            row = frame.filter((pl.col("target") == target) & (pl.col("method") == m))
            if row.height == 0:
                cells.append(f"{'-':>{width + 6}}")
                continue
            v, sd = row["ndcg@10"][0], row["ndcg@10_std"][0]
            cells.append(f"{v:>{width}.3f}±{sd:.2f}" if v == v else f"{'n/a':>{width + 6}}")
        lines.append(f"{target:<15}" + "".join(cells))
    splits = result.caption_splits()
    if splits:
        lines.append("semantic nDCG@10 on galaxies without / with a training caption (equal-sized "
                     "sets; see the report): "
                     + ", ".join(f"{t} {sp['uncaptioned']['ndcg']:.3f} / "
                                 f"{sp['captioned']['ndcg']:.3f}" for t, sp in splits.items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galaxy-assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="simulate a mock survey into the home and run the graph")
    p.add_argument("--n", type=int, default=3000, help="galaxies in the mock survey (default 3000)")
    p.add_argument("--size", type=int, default=None,
                   help=f"cutout size in pixels (default {DEMO_SIZE}; the graph, the UI "
                   "included, reads the mock survey at that size unless the settings give a "
                   "survey.cutout_size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--home", default=None, help=f"home folder (default ${HOME_ENV} or ./.galaxy_home)")
    p.add_argument("--force", action="store_true",
                   help="redo every stage: ingest every shard again, retrain the encoder and "
                   "everything after it")
    p.add_argument(
        "--captions", type=int, default=2000, help="galaxies in the caption sample (default 2000)"
    )
    p.add_argument("--encoder-epochs", type=int, default=None,
                   help="morphology-encoder epochs (default 12; with test-time views 36 epochs "
                   "lowered spirals and mergers, see benchmarks/RESULTS.md); a change retrains")
    p.add_argument("--emulator-budget", type=float, default=150.0,
                   help="seconds of property-emulator training (default 150)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "import-captions",
        help="import captions made elsewhere (Parquet/CSV with object_id, caption)",
    )
    p.add_argument("table")
    p.add_argument("--source", default=None, help="name recorded as the captions' model")
    p.add_argument("--home", default=None)
    p.set_defaults(func=cmd_import_captions)

    p = sub.add_parser("simulate", help="write a mock survey in the Multimodal Universe layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="number of galaxies")
    p.add_argument("--size", type=int, default=64, help="cutout size in pixels, up to 160")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nside", type=int, default=16, help="HEALPix nside of the shards")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("gallery", help="draw a labelled grid of every mock class")
    p.add_argument("--out", default="docs/mock_survey.png")
    p.add_argument("--per-class", type=int, default=6)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--max-search",
        type=int,
        default=40000,
        help="galaxies searched for clear examples of each class",
    )
    p.set_defaults(func=cmd_gallery)

    p = sub.add_parser("search", help="search galaxy_index by text, example galaxy or image",
                       description="Terms: free text, object:ID, image:FILE.fits, each with an "
                       "optional leading + or - and a trailing ^WEIGHT; several terms make a "
                       "combined query, e.g. 'spiral arms' '-text:bar^0.5'.")
    p.add_argument("query", nargs="*", help="query text or terms")
    p.add_argument("--k", type=int, default=10, help="results to return (default 10)")
    p.add_argument("--json", action="store_true", help="print a JSON list of results")
    p.add_argument("--html", default=None, help="also write a contact sheet (HTML) here")
    p.add_argument("--filter", action="append", default=[],
                   help="column filter, e.g. 'mag_r<19', 'p_spiral>=0.8', 'has_caption=true', "
                   "'post_redshift_p84<0.07' (the emulator's posteriors), 'cone=150.1,2.2,30' "
                   "(repeatable)")
    p.add_argument("--object", default=None, help="query by an indexed galaxy's object_id")
    p.add_argument("--image", default=None, help="query by a FITS/PNG cutout file")
    p.add_argument("--nprobes", type=int, default=None)
    p.add_argument("--refine-factor", type=int, default=None)
    p.add_argument("--rerank", action="store_true", help="re-rank the top results with the "
                   "configured captioner (the describer offline, or a VLM)")
    p.add_argument("--k-rerank", type=int, default=None, help="results re-ranked (default: the "
                   "settings' search.k_rerank, 100; the depth the evaluation report measures)")
    p.add_argument("--home", default=None)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("evaluate", help="print the latest search evaluation")
    p.add_argument("--json", action="store_true", help="for each target and method: nDCG@10, "
                   "recall@100 and targets in the top 100, with the versions read")
    p.add_argument("--home", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("dev", help="start the Dagster UI on the home's instance")
    p.add_argument("--home", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("serve", help="serve the search web page and its JSON API",
                       description="Serve galaxy_index through a web page and an HTTP API "
                       "(OpenAPI at /docs). Binds to 127.0.0.1 unless --allow-remote.")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (exposes the server to the network)")
    p.add_argument("--max-upload-mb", type=float, default=16.0,
                   help="largest FITS/PNG upload in MiB (default 16)")
    p.add_argument("--home", default=None)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("profile", help="show the deployment profile (GALAXY_ASSETS_PROFILE) or "
                       "write the cluster profile's Dagster instance yaml",
                       description="show: the profile, its executor and where the graph "
                       "writes. render-instance: the dagster.yaml of the cluster profile "
                       "(Postgres storage, run queue, pools, run retries; docs/cluster.md).")
    p.add_argument("action", choices=["show", "render-instance"])
    p.add_argument("--out", default=None, help="render-instance: write here (default stdout)")
    p.set_defaults(func=cmd_profile)
    return parser


def cmd_profile(args: argparse.Namespace) -> int:
    from galaxy_assets.defs.execution import profile_summary, render_cluster_instance
    from galaxy_assets.settings import SettingsError, load_settings

    try:
        settings = load_settings()
        if args.action == "show":
            print(json.dumps(profile_summary(settings), indent=2))
            return 0
        if not settings.is_cluster:
            print("galaxy-assets profile render-instance: the profile is 'local' (its instance "
                  "is the repository's dagster.yaml); set GALAXY_ASSETS_PROFILE=cluster",
                  file=sys.stderr)
            return 2
        text = render_cluster_instance(settings)
    except SettingsError as exc:
        print(f"galaxy-assets profile: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from galaxy_assets.settings import load_settings
    from galaxy_assets.web.errors import WebError
    from galaxy_assets.web.server import check_bind_host, serve

    try:
        check_bind_host(args.host, args.allow_remote)
    except WebError as exc:
        print(f"galaxy-assets serve: {exc}", file=sys.stderr)
        return 2
    if not args.max_upload_mb > 0:
        print("galaxy-assets serve: --max-upload-mb must be > 0", file=sys.stderr)
        return 2
    settings = load_settings()
    home = command_home(args)
    print(f"serving {home.root} on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          file=sys.stderr)
    serve(args.host, args.port, allow_remote=args.allow_remote, home=home, settings=settings,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    return 0


def main(argv: list[str] | None = None) -> int:
    restore_interrupt_signals()  # a background launch ignores SIGINT, which Dagster copies
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    held: list[str] = []
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if command is not None and argv[command] == "search":
        # negative query terms ("-text:bar^0.5", "-halo") are terms, not options: argparse
        # would read "-halo" as -h with the value "alo"
        rest = argv[command + 1 :]
        held = [a for a in rest if len(a) > 1 and a[0] == "-" and a[1] != "-" and a != "-h"]
        argv = argv[: command + 1] + [a for a in rest if a not in held]
    args, extra = parser.parse_known_args(argv)
    if held:
        args.query = [*args.query, *held]
    if extra:
        # negative query terms ("-text:bar^0.5", "-object:ID") look like options to argparse
        terms = [a for a in extra if args.command == "search" and not a.startswith("--")]
        if len(terms) != len(extra):
            parser.error(f"unrecognized arguments: {' '.join(a for a in extra if a not in terms)}")
        args.query = [*args.query, *terms]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("galaxy_assets").setLevel(logging.INFO)
    if getattr(args, "home", None):
        # --home stands for $GALAXY_ASSETS_HOME for the whole command, so the home's
        # config.yaml (read by load_settings through the variable) is that home's
        os.environ[HOME_ENV] = str(Home.from_env(args.home).root)
    from galaxy_assets.settings import SettingsError
    from galaxy_assets.survey.errors import SurveyConfigError

    try:
        return int(args.func(args) or 0)
    except (SettingsError, SurveyConfigError) as exc:  # the user's settings or arguments
        print(f"galaxy-assets {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
