"""Survey assets: the shard sensor and the per-shard ``raw_cutouts`` manifest."""

import hashlib
import json
import os
import time

import dagster as dg
import polars as pl

from galaxy_assets.defs.metadata import partition_metadata
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import HomeResource, SurveyResource
from galaxy_assets.survey.checks import (
    check_consistency,
    check_finite,
    check_schema,
    check_unique_across_shards,
)
from galaxy_assets.survey.manifest import build_manifest
from galaxy_assets.tables import to_markdown

RAW_CUTOUTS_CHECKS = [
    dg.AssetCheckSpec(name, asset="raw_cutouts", blocking=True, description=desc)
    for name, desc in (
        ("manifest_schema", "The manifest matches the pandera schema"),
        ("finite_pixels", "Few galaxies have NaN/inf pixels"),
        ("bands_and_shape", "All galaxies carry the configured bands and one cutout shape"),
        ("unique_object_ids", "No object_id appears in another shard's manifest"),
    )
]


@dg.asset(
    partitions_def=shard_partitions,
    check_specs=RAW_CUTOUTS_CHECKS,
    group_name="survey",
    kinds={"polars", "hdf5"},
)
def raw_cutouts(
    context: dg.AssetExecutionContext, home: HomeResource, survey: SurveyResource
):
    """One row per galaxy of the shard: object_id, sky position, HEALPix cell, fluxes,
    bands, cutout shape, non-finite pixel fraction, shard URI and row. Pixels stay in
    the shard file. Galaxies that cannot be used are recorded in the metadata and skipped."""
    h = home.home()
    key = context.partition_key
    path = survey.locate(h, key)
    with survey.open(path) as reader:
        result = build_manifest(reader, key, progress=None)
    frame = result.frame
    rejects_path = h.parquet / "raw_cutouts_rejected" / f"{key}.parquet"
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    rejects = pl.DataFrame(
        result.rejected, schema={"object_id": pl.Utf8, "row": pl.Int64, "reason": pl.Utf8}
    )
    rejects.write_parquet(rejects_path)
    stored = home.outputs_dir() / "raw_cutouts"  # where the IO manager keeps manifests
    # only the shards that are partitions now: a vanished or moved shard's old manifest is no
    # rival (its rows leave the index at the next maintenance)
    current = set(context.instance.get_dynamic_partitions(shard_partitions.name)) - {key}
    others = [str(stored / f"{k}.parquet") for k in sorted(current)
              if (stored / f"{k}.parquet").exists()]
    outcomes = [
        check_schema(frame),
        check_finite(frame),
        check_consistency(frame, survey.bands),
        check_unique_across_shards(frame, key, others),
    ]
    checks = [
        dg.AssetCheckResult(check_name=o.name, passed=o.passed, description=o.description,
                            metadata=o.metadata, severity=dg.AssetCheckSeverity.ERROR)
        for o in outcomes
    ]
    failed = [o for o in outcomes if not o.passed]
    if failed:
        # blocking checks: the manifest is not stored, so no later run (caption_sample, the
        # encoder's training set) reads a shard the checks refused; nor the manifest of the
        # file this one replaced, whose rows now point at other galaxies' pixels
        withdrawn = stored / f"{key}.parquet"
        had = withdrawn.exists()
        if had:
            withdrawn.unlink()
        yield from checks
        raise dg.Failure(
            f"raw_cutouts[{key}]: blocking check(s) failed, the manifest was not stored"
            + (" and the shard's previous manifest was withdrawn (its index rows stay until "
               "the shard is fixed or removed)" if had else "") + ": "
            + "; ".join(f"{o.name}: {o.description}" for o in failed),
            metadata={"rejected_table": dg.MetadataValue.path(str(rejects_path))},
        )
    yield dg.Output(
        frame,
        metadata={
            "shard_uri": dg.MetadataValue.path(str(path)),
            "galaxies": frame.height,
            "rejected": len(result.rejected),
            "rejected_table": dg.MetadataValue.path(str(rejects_path)),
            "rejected_sample": dg.MetadataValue.md(
                to_markdown(rejects) if rejects.height else "No galaxy was rejected."
            ),
            "bands": ",".join(survey.bands),
            "cutout_size": int(survey.cutout_size),
            "shard_state": _state(path),  # size-mtime: a file replaced in place differs
            "preview": dg.MetadataValue.md(to_markdown(frame, max_rows=5)),
        },
    )
    yield from checks


survey_job = dg.define_asset_job(
    "survey_job", selection=[raw_cutouts], partitions_def=shard_partitions,
    description="Build the raw_cutouts manifest of one shard.",
)
ingest_shard_job = dg.define_asset_job(
    "ingest_shard_job",
    selection=dg.AssetSelection.assets("raw_cutouts", "morphology_predictions",
                                       "image_embeddings", "property_posteriors",
                                       "search_vectors", "galaxy_index"),
    partitions_def=shard_partitions,
    description="Take a new shard all the way into galaxy_index: manifest, vote fractions, "
    "image embeddings, property posteriors, search vectors, index rows.",
)
index_maintenance_job = dg.define_asset_job(
    "index_maintenance_job", selection=dg.AssetSelection.assets("index_maintenance"),
    description="Compact galaxy_index, refresh its indexes, drop the rows of vanished shards.",
)


SETTLE_S = 60.0  # a shard file is taken once unchanged this long (copies finish first)


def _mtime(path) -> float:
    """The newest modification time of a shard (a file, or a FITS folder and its files)."""
    try:
        times = [path.stat().st_mtime]
        if path.is_dir():
            times += [p.stat().st_mtime for p in path.iterdir()]
        return max(times)
    except OSError:
        return time.time()  # vanished meanwhile: not settled


def _state(path) -> str:
    """Size and modification time of a shard, for its run key."""
    try:
        st = path.stat()
        size = st.st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir())
        return f"{size}-{int(_mtime(path))}"
    except OSError:
        return "unknown"


def _path_id(path) -> str:
    """A short hash of a shard's absolute path (the sensor's cursor keeps one per shard)."""
    return hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]


def _cursor_paths(cursor: str | None, field: str = "at") -> dict[str, str]:
    """The sensor cursor's ``key → path hash`` map (``field="state"``: ``key → size-mtime``);
    an old or unreadable cursor is empty (the next evaluation records the current values
    without running anything)."""
    try:
        at = json.loads(cursor or "{}").get(field, {})
    except (ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in at.items()} if isinstance(at, dict) else {}


def _built_from(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, dict]:
    """The latest raw_cutouts metadata of each of these partitions that has one."""
    found = {key: partition_metadata(instance, "raw_cutouts", key) for key in keys}
    return {key: meta for key, meta in found.items() if meta}


def shard_changed(meta: dict, path, state: str | None = None, *, bands=None,
                  cutout_size: int | None = None) -> str | None:
    """Why the shard file at ``path`` is not the one the manifest with ``meta`` (raw_cutouts'
    metadata) was built from, or None: another path (another root: the same HEALPix keys as
    the mock survey, a remount), another size or mtime (replaced in place), or, when
    ``bands`` / ``cutout_size`` are given (the settings now), other bands or another crop
    than the manifest was read with."""
    was = meta.get("shard_uri")
    if was is not None and os.path.abspath(str(was)) != os.path.abspath(str(path)):
        return f"was read from {was}, now found at {path}"
    before = meta.get("shard_state")
    now = state if state is not None else _state(path)
    if before is not None and before != now:
        return f"its file changed since it was read ({before} → {now}, size-mtime)"
    if bands is not None and meta.get("bands") not in (None, ",".join(bands)):
        return f"read with bands {meta['bands']}, the settings now say {','.join(bands)}"
    size = meta.get("cutout_size")
    if cutout_size is not None and size is not None and int(size) != int(cutout_size):
        return f"read at cutout_size {size}, the settings now say {cutout_size}"
    return None


def _read_settings(survey: SurveyResource) -> str:
    """The settings a manifest depends on besides its file, as the cursor records them."""
    return f"{','.join(survey.bands)}|{int(survey.cutout_size)}"


def settings_changed_since_load(survey: SurveyResource) -> str:
    """What differs between the survey settings the definitions were loaded with and the
    settings now (a config.yaml edited while `galaxy-assets dev` runs), as a message saying to
    reload; empty when they agree, or when the resource was not built from the settings."""
    if not survey.from_settings:
        return ""
    from galaxy_assets.defs.resources import survey_fields
    from galaxy_assets.settings import SettingsError, load_settings

    try:
        now = survey_fields(load_settings())
    except SettingsError as exc:
        return f"the settings cannot be read ({exc}); fix them, then reload the definitions"
    differ = [k for k in ("roots", "bands")
              if list(now.get(k) or []) != list(getattr(survey, k) or [])]
    if int(now.get("cutout_size") or 0) != int(survey.cutout_size or 0):
        differ.append("cutout_size")
    if not differ:
        return ""
    return (f"survey.{', survey.'.join(differ)} changed since the definitions were loaded "
            f"(now {', '.join(f'{k}={now.get(k)!r}' for k in differ)}): reload them (Deployment "
            "→ Reload definitions in the UI) or restart `galaxy-assets dev`")


def vanished_shards(roots, known, found: dict) -> tuple[list[str], str]:
    """The ``known`` partitions that ``found`` (key → path) no longer holds, and a warning
    when none may be dropped: a missing root, or one that holds no shard at all (an
    unmounted disk leaves its empty mount point), must not read as "every shard
    disappeared"."""
    gone = sorted(set(known) - set(found))
    unavailable = [r for r in roots
                   if not r.exists() or not any(p.is_relative_to(r) for p in found.values())]
    if gone and unavailable:
        return [], (
            f"{len(gone)} known shard(s) not found, but root(s) {[str(r) for r in unavailable]} "
            "are missing or empty (an unmounted disk?): nothing is deleted. Remove a root from "
            "survey.roots to drop its shards on purpose.")
    return gone, ""


@dg.sensor(
    name="survey_shards_sensor",
    jobs=[survey_job, ingest_shard_job, index_maintenance_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a survey_shards partition for every new shard file under the survey "
    "roots and requests its materialization down to galaxy_index (only raw_cutouts until an "
    "aligner exists); runs a known shard again when it is found at another path (a renamed "
    "or remounted root), when its file was replaced, or when survey.bands or "
    "survey.cutout_size differ from those its manifest was read with; removes the "
    "partitions of shard files that disappeared and requests index_maintenance, which "
    "deletes their rows.",
)
def survey_shards_sensor(
    context: dg.SensorEvaluationContext, home: HomeResource, survey: SurveyResource
):
    stale = settings_changed_since_load(survey)
    if stale:
        # the definitions (and this sensor's survey resource) were loaded with other
        # settings; runs started now read the new file, so deciding from the old ones would
        # request shards the runs then read differently
        return dg.SkipReason(stale)
    found = survey.discover(home.home())
    existing = set(context.instance.get_dynamic_partitions(shard_partitions.name))
    # a file still being copied is taken once it has not changed for SETTLE_S seconds
    now = time.time()
    new = sorted(k for k in set(found) - existing if now - _mtime(found[k]) >= SETTLE_S)
    waiting = len(set(found) - existing) - len(new)
    gone, warning = vanished_shards(survey.root_paths(home.home()), existing, found)
    if warning:
        context.log.warning(warning)
    # where each known shard was found (a short hash of its path), kept in the cursor: a
    # shard whose root was renamed or remounted elsewhere keeps its key, but its manifest
    # and index rows still name the old path; it runs again to record the new one
    # (and its size and mtime: a file replaced in place under the same name keeps the key
    # too, while the manifest's rows now point at other galaxies)
    seen, seen_state = _cursor_paths(context.cursor), _cursor_paths(context.cursor, "state")
    known = sorted(existing & set(found))
    state = {k: _state(found[k]) for k in known}
    # a shard the cursor has not seen yet (the first tick after `galaxy-assets demo`, or
    # after survey.roots changed) is compared with what its manifest was built from; so is
    # every known shard on the first tick under other survey.bands / survey.cutout_size than
    # the cursor recorded (or none: a cursor from older code), as the manifests were read
    # with the settings of their day
    rounds = _cursor_paths(context.cursor, "rounds")
    settings = _read_settings(survey)
    unseen = [k for k in known if k not in seen or rounds.get("read") != settings]
    built = _built_from(context.instance, unseen)
    moved = [k for k in known
             if ((k in seen and seen[k] != _path_id(found[k]))
                 or (k in seen_state and seen_state[k] != state[k])
                 or (k in built and shard_changed(built[k], found[k], state[k],
                                                  bands=survey.bands,
                                                  cutout_size=survey.cutout_size)))
             and now - _mtime(found[k]) >= SETTLE_S]
    at = {k: seen[k] for k in known if k in seen and k not in moved}
    at.update({k: _path_id(found[k]) for k in known if k not in at})
    at.update({k: _path_id(found[k]) for k in new})
    states = {k: seen_state[k] for k in known if k in seen_state and k not in moved}
    states.update({k: state[k] for k in known if k not in states})
    states.update({k: _state(found[k]) for k in new})
    # how often each shard was asked for, and how many vanishing rounds there were: part of the
    # run keys, so a shard moved away and back (mv keeps size and mtime) gets a new key, while
    # a tick that runs again before its cursor was saved (a daemon restart) repeats its keys
    # and the daemon skips them
    asked = {k: int(v) for k, v in _cursor_paths(context.cursor, "n").items() if v.isdigit()}
    for k in (*new, *moved):
        asked[k] = asked.get(k, 0) + 1
    vanishings = int(rounds.get("vanished", "0") or 0) + (1 if gone else 0)
    # the counters live in the cursor, the daemon's record of run keys for good: a cursor
    # made anew (reset, or from older code) starts a new epoch, so its keys are new too. The
    # new epoch comes from what the tick sees (the partitions and the shard files' states),
    # so the same first tick evaluated again after a restart repeats its keys (and the
    # settings: a cursor reset under other bands or crop must not repeat an older epoch's
    # keys for the shards it now asks for again)
    epoch = rounds.get("epoch") or hashlib.sha256(json.dumps(
        [sorted(existing), sorted((k, _state(p)) for k, p in found.items()), settings]).encode()
    ).hexdigest()[:12]
    cursor = json.dumps({"at": at, "state": states, "n": asked,
                         "rounds": {"vanished": vanishings, "epoch": epoch, "read": settings}},
                        sort_keys=True, separators=(",", ":"))
    if not new and not gone and not moved:
        note = f"; {waiting} still changing" if waiting else ""
        context.update_cursor(cursor)
        return dg.SkipReason(
            f"no new shards ({len(found)} known under {survey.roots or 'the mock survey'}{note})")
    indexed = context.instance.get_latest_materialization_event(dg.AssetKey("aligned_model"))
    job = ingest_shard_job if indexed is not None else survey_job
    context.log.info(f"{len(new)} new shard(s) for {job.name}: {new[:10]}; {len(gone)} gone: "
                     f"{gone[:10]}; {len(moved)} moved, replaced or read with other bands or "
                     f"crop: {moved[:10]}")
    # the run key names the file's state and how often the shard was asked for (the daemon
    # skips a run key it has seen)
    requests = [dg.RunRequest(partition_key=k, job_name=job.name,
                              run_key=f"{job.name}:{k}:{_state(found[k])}:{epoch}.{asked[k]}")
                for k in new]
    requests += [dg.RunRequest(
        partition_key=k, job_name=job.name,
        run_key=f"{job.name}:{k}:at-{at[k]}:{_state(found[k])}:{epoch}.{asked[k]}")
        for k in moved]
    partition_requests = [shard_partitions.build_add_request(new)] if new else []
    if gone:
        partition_requests.append(shard_partitions.build_delete_request(gone))
        digest = hashlib.sha256("\n".join(gone).encode()).hexdigest()[:16]
        requests.append(dg.RunRequest(
            run_key=f"vanished:{len(gone)}:{digest}:{epoch}.{vanishings}",
            job_name=index_maintenance_job.name))
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests,
                           cursor=cursor)
