"""`galaxy-assets demo`: the encoder schedule it passes, when it retrains, when it re-evaluates."""

from __future__ import annotations

import pytest

from galaxy_assets.cli import (
    _captions_changed,
    _embeddings_outdated,
    _encoder_epochs,
    _encoder_schedule_changed,
    _morphology_config,
    _report_outdated,
    _unevaluated_aligner,
    build_parser,
)
from galaxy_assets.defs.morphology import MorphologyTrainConfig
from galaxy_assets.evaluation.report import REPORT_VERSION
from galaxy_assets.morphology.train import TrainConfig


def test_the_default_schedule_is_the_encoders_own():
    assert MorphologyTrainConfig().epochs == TrainConfig.epochs == 12
    assert _encoder_epochs(build_parser().parse_args(["demo"])) == TrainConfig.epochs
    assert _encoder_epochs(build_parser().parse_args(["demo", "--encoder-epochs", "36"])) == 36


def test_the_run_config_sets_epochs_and_a_budget_that_lets_them_run():
    cfg = _morphology_config(36)["ops"]["morphology_encoder"]["config"]
    assert cfg == {"epochs": 36, "time_budget_s": 720.0}
    # short schedules keep the asset's default budget
    assert _morphology_config(6)["ops"]["morphology_encoder"]["config"]["time_budget_s"] == 240.0
    MorphologyTrainConfig(**cfg)  # valid asset config


def test_a_changed_schedule_retrains_and_an_unrecorded_one_counts_as_the_default():
    assert not _encoder_schedule_changed({"epochs_max": 36}, 36)
    assert _encoder_schedule_changed({"epochs_max": 12}, 36)
    # a home trained before the limit was recorded: the default, so a plain rerun reuses it
    assert not _encoder_schedule_changed({}, TrainConfig.epochs)
    assert _encoder_schedule_changed({}, 36)


def test_an_evaluation_from_older_code_is_redone():
    assert _report_outdated({"reranker": "x"})  # written before report_version existed
    assert _report_outdated({"report_version": REPORT_VERSION - 1})
    assert not _report_outdated({"report_version": REPORT_VERSION})
    assert not _report_outdated({})  # none yet: the "absent" rule decides


def test_embeddings_from_another_encoder_or_other_views_are_redone():
    """A home embedded before the views existed, with other views, or by another version of
    the registry encoder than its champion now is, re-embeds every shard."""
    from galaxy_assets.defs.resources import ImageEncoderResource

    views = ImageEncoderResource().tta
    assert _embeddings_outdated({"encoder": "registry:morphology-encoder/v1"}, 1)
    assert _embeddings_outdated({"encoder": "registry:morphology-encoder/v1+d8"}, 1) == (
        views != "d8")
    assert not _embeddings_outdated({"encoder": f"registry:morphology-encoder/v3+{views}"}, 3)
    assert _embeddings_outdated({"encoder": f"registry:morphology-encoder/v3+{views}"}, 4)
    assert not _embeddings_outdated({"encoder": f"registry:morphology-encoder/v3+{views}"}, None)
    assert not _embeddings_outdated({}, 3)  # none yet: the missing shards decide


def test_an_aligner_whose_evaluation_failed_is_evaluated_and_indexed_on_rerun():
    assert not _unevaluated_aligner({"aligner_version": "search-aligner/v2"},
                                    {"candidate_version": 2})
    assert _unevaluated_aligner({"aligner_version": "search-aligner/v3"}, {"candidate_version": 2})
    assert _unevaluated_aligner({"aligner_version": "search-aligner/v1"}, {})
    assert not _unevaluated_aligner({}, {"candidate_version": 2})  # no aligner yet


def test_a_gate_that_keeps_the_champion_is_an_outcome_not_a_failure():
    """The first run whose gate refuses a candidate exits as the rerun that reuses that
    evaluation does (it exited 1, then 0); an evaluation that did not run is a failure."""
    from galaxy_assets.cli import _gate_refused

    v2 = {"aligner_version": "search-aligner/v2"}
    assert _gate_refused(v2, {"candidate_version": 2, "promoted": False})
    assert not _gate_refused(v2, {"candidate_version": 1, "promoted": True})  # v2 not scored
    assert not _gate_refused(v2, {})
    assert not _gate_refused({}, {"candidate_version": 2})


@pytest.mark.slow
def test_a_survey_simulated_again_is_ingested_again(tmp_path):
    """Another --seed simulates the survey again under the same shard keys: every manifest is
    rebuilt from the new files and the model stages run as with --force (the old manifests
    were kept and pointed at rows that now hold other galaxies). The demo runs in its own
    process (its definitions read the home when imported), with the model stages stubbed."""
    import os
    import subprocess
    import sys

    import polars as pl

    from galaxy_assets.survey.readers import find_shards, shard_key

    home = tmp_path / "home"
    driver = (
        "import sys, galaxy_assets.cli as c\n"
        "c._run_captions = lambda defs, instance, args: True\n"
        "c._run_models = lambda defs, instance, keys, args: print('FORCE', args.force) or True\n"
        "sys.exit(c.main(sys.argv[1:]))\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k != "DAGSTER_HOME" and not k.startswith("GALAXY_ASSETS_")}
    env["GALAXY_ASSETS_HOME"] = str(home)
    forced = []
    for seed in ("0", "1"):
        proc = subprocess.run(
            [sys.executable, "-c", driver, "demo", "--n", "40", "--size", "32", "--workers",
             "1", "--seed", seed],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        forced += [line.split()[1] for line in proc.stdout.splitlines()
                   if line.startswith("FORCE ")]
    assert forced == ["False", "True"]
    survey = home / "mock_survey"
    keys = [shard_key(survey, p) for p in find_shards(survey)]
    manifests = [home / "parquet" / "raw_cutouts" / f"{k}.parquet" for k in keys]
    ids = pl.concat([pl.read_parquet(p) for p in manifests])["object_id"]
    assert ids.len() == 40 and all(str(o).startswith("mock1-") for o in ids)

    # survey.roots now names another folder holding two of the shards: the others leave the
    # partitions (they stayed, and the models trained on both surveys' shards)
    import shutil

    other = tmp_path / "other"
    kept = sorted(find_shards(survey))[:2]
    for path in kept:
        target = other / path.relative_to(survey)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    proc = subprocess.run(
        [sys.executable, "-c", driver, "demo", "--size", "32", "--workers", "1"],
        env={**env, "GALAXY_ASSETS_SURVEY_ROOTS": str(other)}, capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert f"{len(keys) - 2} shard(s) are no longer under the survey's roots" in proc.stdout
    assert "reading survey.roots" in proc.stdout
    import dagster as dg

    from galaxy_assets.defs.partitions import shard_partitions

    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    left = set(instance.get_dynamic_partitions(shard_partitions.name))
    assert left == {shard_key(other, p) for p in find_shards(other)}


def test_changed_caption_texts_retrain_the_aligner():
    """A smaller --captions sample, imported captions or another embedder describe nothing
    new, yet change what the aligner learns from: the demo retrains it."""
    aligned = {"caption_texts_fingerprint": "abc", "caption_embedder": "minilm"}
    assert not _captions_changed(aligned, {"texts_fingerprint": "abc", "embedder": "minilm"})
    assert _captions_changed(aligned, {"texts_fingerprint": "def", "embedder": "minilm"})
    assert _captions_changed(aligned, {"texts_fingerprint": "abc", "embedder": "other"})
    # an aligner from before the texts were recorded, or no captions yet: no evidence
    assert not _captions_changed({}, {"texts_fingerprint": "def", "embedder": "minilm"})
    assert not _captions_changed(aligned, {})


def _demo_rerun(monkeypatch, events, champion: int | None,
                has_votes: bool = True) -> list[tuple[str, list | None]]:
    """The stages a demo rerun runs on an instance holding ``events`` (asset, partition or
    None, metadata), in order, with the image encoder's champion at ``champion``."""
    import argparse

    import dagster as dg

    import galaxy_assets.cli as cli

    instance = dg.DagsterInstance.ephemeral()
    for asset, key, meta in events:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=asset, partition=key, metadata=meta))
    ran: list[tuple[str, list | None]] = []
    monkeypatch.setattr(cli, "_encoder_champion", lambda home: champion)
    monkeypatch.setattr(cli, "_run_stage", lambda defs, inst, job, keys, cfg=None, batched=False:
                        ran.append((job, keys)) or True)
    monkeypatch.setattr(cli, "_print_results", lambda inst, args: True)
    args = argparse.Namespace(force=False, encoder_epochs=None, home=None, emulator_budget=60.0,
                              has_votes=has_votes)
    assert cli._run_models(None, instance, ["s1", "s2"], args)
    return ran


def _built_demo(version: int = 1) -> list:
    """The events of a finished demo whose encoder is morphology-encoder v``version``."""
    import argparse

    from galaxy_assets.cli import _encoder_epochs
    from galaxy_assets.defs.resources import ImageEncoderResource
    from galaxy_assets.evaluation.report import REPORT_VERSION
    from galaxy_assets.search.service import reranker_id

    epochs = _encoder_epochs(argparse.Namespace(encoder_epochs=None))
    encoder = f"registry:morphology-encoder/v{version}+{ImageEncoderResource.from_settings().tta}"
    shards = ("s1", "s2")
    return [
        ("vlm_captions", None, {"described_now": 0}),
        ("caption_embeddings", None, {"texts_fingerprint": "f", "embedder": "e"}),
        ("morphology_encoder", None, {"epochs_max": epochs, "version": version}),
        *[(a, k, {"encoder": encoder}) for a in ("morphology_predictions", "image_embeddings")
          for k in shards],
        ("property_emulator", None, {"version": 1}),
        *[("property_posteriors", k, {}) for k in shards],
        ("aligned_model", None, {"aligner_version": "search-aligner/v1", "image_encoder": encoder,
                                 "caption_texts_fingerprint": "f", "caption_embedder": "e"}),
        ("search_evaluation", None, {"candidate_version": "1", "promoted": True,
                                     "reranker": reranker_id(), "report_version": REPORT_VERSION}),
        *[(a, k, {}) for a in ("search_vectors", "galaxy_index") for k in shards],
    ]


def test_a_demo_rerun_finishes_what_a_stopped_run_left(monkeypatch, isolated_home):
    """A rerun decided only on what was missing: after a run stopped part-way it reported
    every stage reused and exit 0, leaving models trained on the old encoder's embeddings, or
    shards indexed with the old aligner."""
    from galaxy_assets.defs.resources import ImageEncoderResource

    done = _built_demo()
    assert _demo_rerun(monkeypatch, done, champion=1) == []  # nothing to do
    # an emulator trained on a user table since (its own registered model) is not the
    # survey's: the survey's posteriors and index are not redone for it
    user_table = [*done, ("property_emulator", None,
                          {"registered_model": "property-emulator-table-gaia", "version": 1})]
    assert _demo_rerun(monkeypatch, user_table, champion=1) == []

    # the encoder was retrained (v2) and every shard re-embedded, then the run stopped
    v2 = f"registry:morphology-encoder/v2+{ImageEncoderResource.from_settings().tta}"
    stopped = [*done, ("morphology_encoder", None, {**done[2][2], "version": 2}),
               *[("image_embeddings", k, {"encoder": v2}) for k in ("s1", "s2")]]
    jobs = [job for job, _ in _demo_rerun(monkeypatch, stopped, champion=2)]
    assert jobs == ["emulator_job", "posteriors_job", "aligner_job", "evaluation_job",
                    "index_job"]

    # aligner v2 was promoted, then the index run stopped after its first shard
    meta = {asset: m for asset, key, m in done if key is None}
    promoted = [*done, ("aligned_model", None, {**meta["aligned_model"], "aligner_version":
                                                "search-aligner/v2"}),
                ("search_evaluation", None, {**meta["search_evaluation"],
                                             "candidate_version": "2"}),
                ("galaxy_index", "s1", {})]
    assert _demo_rerun(monkeypatch, promoted, champion=1) == [("index_job", ["s2"])]


def test_a_survey_without_votes_skips_the_morphology_encoder_under_a_pretrained_encoder(
        monkeypatch, isolated_home, capsys):
    """A real survey has no truth tables: the morphology job failed and the demo stopped
    before embeddings, aligner and index, though a timm encoder needs no votes."""
    monkeypatch.setenv("GALAXY_ASSETS_IMAGE_ENCODER_KIND", "timm")
    monkeypatch.setenv("GALAXY_ASSETS_IMAGE_ENCODER_NAME", "resnet18")
    jobs = [job for job, _ in _demo_rerun(monkeypatch, [], champion=None, has_votes=False)]
    # nor labels for the emulator: the index is built without posteriors
    assert jobs == ["shard_embeddings_job", "aligner_job", "evaluation_job", "index_job"]
    out = capsys.readouterr().out
    assert "no Galaxy Zoo votes in this survey" in out and "no truth tables in this survey" in out
    # the graph's own encoder needs the votes: the job runs (and says what to do if it fails)
    monkeypatch.setenv("GALAXY_ASSETS_IMAGE_ENCODER_KIND", "registry")
    jobs = [job for job, _ in _demo_rerun(monkeypatch, [], champion=None, has_votes=False)]
    assert jobs[0] == "morphology_job"


def test_the_demo_names_its_home_in_the_dev_command_it_suggests(tmp_path):
    """`demo --home DIR` ended with "Next: galaxy-assets dev", which opens ./.galaxy_home."""
    import argparse

    from galaxy_assets.cli import _dev_command
    from galaxy_assets.runtime import Home

    home = Home.from_env(tmp_path / "h")
    assert _dev_command(argparse.Namespace(home=str(tmp_path / "h")), home).endswith(
        f"galaxy-assets dev --home {home.root}")
    assert _dev_command(argparse.Namespace(home=None), home) == ".venv/bin/galaxy-assets dev"
