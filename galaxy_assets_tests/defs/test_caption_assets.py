"""Caption assets through Dagster: sample -> captions (openai backend on a loopback fake
server, key from an EnvVar) -> text embeddings; incremental reruns; failures recorded."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import polars as pl
import pytest

from galaxy_assets.alignment.data import caption_sentences
from galaxy_assets.captioning.base import CaptionerError
from galaxy_assets.defs.captioning import caption_embeddings, caption_sample, vlm_captions
from galaxy_assets.defs.io import ShardParquetIOManager
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import (
    CaptionerResource,
    ComputeResource,
    HomeResource,
    SurveyResource,
    TextEmbedderResource,
)
from galaxy_assets.defs.survey import raw_cutouts
from galaxy_assets.survey.mmu import write_mmu_shard
from galaxy_assets_tests.fake_openai import FakeOpenAIServer

KEY = "sk-very-secret-key-123"
BANDS = ["g", "r", "i", "z"]


def _survey(root, n=30):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24] - 12
    blob = np.exp(-(xx**2 + yy**2) / 18.0).astype(np.float32)
    for s in range(2):
        images = (blob[None, None] * rng.uniform(1, 5, (n, 4, 1, 1))
                  + rng.normal(0, 0.02, (n, 4, 24, 24))).astype(np.float32)
        write_mmu_shard(root / f"healpix={s}" / "001-of-001.hdf5", images=images, bands=BANDS,
                        object_id=[f"s{s}-{i}" for i in range(n)], ra=np.full(n, 150.0),
                        dec=np.full(n, 2.0), ivar=np.ones_like(images))


def _ingested(instance, home, root, captioner: CaptionerResource) -> dict:
    """The resources of the caption assets, with both shards of ``_survey`` materialized."""
    resources = {
        "home": HomeResource(root=str(home)),
        "survey": SurveyResource(roots=[str(root)], bands=BANDS, cutout_size=0),
        "compute": ComputeResource(device="cpu"),
        "captioner": captioner,
        "text_embedder": TextEmbedderResource(),
        "io_manager": ShardParquetIOManager(base_dir=str(home / "parquet")),
    }
    keys = ["healpix=0__001-of-001", "healpix=1__001-of-001"]
    instance.add_dynamic_partitions(shard_partitions.name, keys)
    for key in keys:
        dg.materialize([raw_cutouts], partition_key=key, instance=instance, resources=resources)
    return resources


@pytest.mark.slow
def test_caption_assets_with_openai_backend(isolated_home, tmp_path, monkeypatch):
    root = tmp_path / "survey"
    _survey(root)
    monkeypatch.setenv("FAKE_VLM_KEY", KEY)
    with FakeOpenAIServer(api_key=KEY) as server, dg.instance_for_test() as instance:
        server.add_fault("refusal", times=1)  # the first galaxy asked gets a refusal
        resources = _ingested(instance, isolated_home, root, CaptionerResource(
            backend="openai", base_url=server.base_url, model="fake-vlm",
            api_key=dg.EnvVar("FAKE_VLM_KEY"), concurrency=2,
        ))
        run_config = {"ops": {"caption_sample": {"config": {"n": 20, "seed": 1}}}}
        result = dg.materialize(
            [raw_cutouts, caption_sample, vlm_captions, caption_embeddings],
            selection=[caption_sample, vlm_captions, caption_embeddings],
            instance=instance, resources=resources, run_config=run_config,
        )
        assert result.success
        captions = result.output_for_node("vlm_captions")
        assert captions.height == 19  # one refusal: no caption, no placeholder
        assert set(captions["backend"]) == {"openai"} and set(captions["model"]) == {"fake-vlm"}
        failures = pl.read_parquet(isolated_home / "captions" / "caption_failures.parquet")
        assert failures.height == 1 and failures["reason"][0].startswith("refusal")
        vectors = result.output_for_node("caption_embeddings")
        whole = vectors.filter(pl.col("view") == "caption")
        assert whole["object_id"].sort().to_list() == captions["object_id"].sort().to_list()
        # each caption's sentences are embedded too (view "sentence"), for the aligner
        sentences = caption_sentences(captions)
        assert sentences.height > 0
        assert vectors.filter(pl.col("view") == "sentence").height == sentences.height
        assert vectors.height == 19 + sentences.height
        v = np.stack(vectors["vector"].to_numpy())
        assert v.shape == (vectors.height, 384)
        assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
        mat = result.asset_materializations_for_node("caption_embeddings")[0].metadata
        assert mat["captions"].value == 19 and mat["sentence_views"].value == sentences.height
        # all requests carried the key; neither metadata nor logs show it
        assert all(r.headers.get("Authorization") == f"Bearer {KEY}" for r in server.requests)
        mats = [e.step_materialization_data.materialization
                for e in result.get_asset_materialization_events()]
        assert KEY not in json.dumps([{k: str(v) for k, v in m.metadata.items()} for m in mats])
        logs = instance.all_logs(result.run_id)
        assert not any(KEY in (e.user_message or "") for e in logs)
        def rerun() -> tuple[int, int]:
            """(chat requests sent, captions) of a rerun of the sample."""
            n_before = len(server.routed("chat"))
            out = dg.materialize(
                [raw_cutouts, caption_sample, vlm_captions],
                selection=[caption_sample, vlm_captions],
                instance=instance, resources=resources, run_config=run_config,
            )
            return len(server.routed("chat")) - n_before, out.output_for_node("vlm_captions").height

        # a rerun retries only the refused galaxy; refused again, it must not fail the asset
        # (all of this run's requests failed, but the sample's other captions stand)
        server.add_fault("refusal", times=1)
        assert rerun() == (1, 19)
        # rerun: only the refused galaxy is asked again, and answers now
        assert rerun() == (1, 20)


@pytest.mark.slow
def test_a_captioner_that_fails_every_galaxy_fails_the_asset(isolated_home, tmp_path):
    """A wrong API key fails each request: vlm_captions says so and why, instead of
    materializing an empty table that the aligner then cannot train on."""
    root = tmp_path / "survey"
    _survey(root, n=6)
    with FakeOpenAIServer(api_key=KEY) as server, dg.instance_for_test() as instance:
        resources = _ingested(instance, isolated_home, root, CaptionerResource(
            backend="openai", base_url=server.base_url, model="fake-vlm", api_key="sk-wrong-key",
        ))
        result = dg.materialize(
            [raw_cutouts, caption_sample, vlm_captions], selection=[caption_sample, vlm_captions],
            instance=instance, resources=resources, raise_on_error=False,
            run_config={"ops": {"caption_sample": {"config": {"n": 4, "seed": 1}}}},
        )
        assert not result.success
        (failure,) = [e for e in result.get_step_failure_events()
                      if e.step_key == "vlm_captions"]
        message = failure.event_specific_data.error.message
        assert "all 4 caption requests failed" in message and "401" in message
        assert "sk-wrong-key" not in message


def test_captioner_resource_errors():
    with pytest.raises(CaptionerError, match="base_url"):
        CaptionerResource(backend="openai").build(ComputeResource(device="cpu"))
    with pytest.raises(CaptionerError, match="captioner.model"):
        CaptionerResource(backend="transformers").build(ComputeResource(device="cpu"))
    with pytest.raises(CaptionerError, match="unknown"):
        CaptionerResource(backend="gpt-vision").build(ComputeResource(device="cpu"))
    built = CaptionerResource().build(ComputeResource(device="cpu"))
    assert built.backend == "morphology"


def test_every_captioner_setting_reaches_the_captioner(isolated_home, tmp_path, monkeypatch):
    """temperature, timeout_s and image_size were validated and then dropped on the way."""
    from galaxy_assets.defs.resources import default_resources

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("captioner:\n  backend: openai\n  base_url: http://127.0.0.1:9/v1\n"
                   "  model: vlm\n  temperature: 0.7\n  timeout_s: 5\n  image_size: 64\n"
                   "  request_budget: 10\n  max_words: 300\n")
    monkeypatch.setenv("GALAXY_ASSETS_CONFIG", str(cfg))
    built = default_resources()["captioner"].build(ComputeResource(device="cpu"))
    assert (built.temperature, built.image_size) == (0.7, 64)
    assert (built.client.timeout_s, built.client.request_budget) == (5.0, 10)
    assert built.max_words == 300  # the too_long message names this setting


def test_caption_vectors_are_not_reused_across_captioners():
    """Identical texts from another captioner are embedded again: the reused vectors would
    carry the old captioner into the aligner's lineage."""
    import polars as pl

    from galaxy_assets.defs.captioning import _texts_fingerprint

    def texts(model: str, sha: str) -> pl.DataFrame:
        return pl.DataFrame({"object_id": ["a", "b"], "view": ["caption"] * 2,
                             "caption": ["a spiral", "a lens"], "backend": ["morphology"] * 2,
                             "model": [model] * 2, "prompt_sha": [sha] * 2})

    same = _texts_fingerprint(texts("describer-3", "aaaa"))
    assert _texts_fingerprint(texts("describer-3", "aaaa")) == same
    assert _texts_fingerprint(texts("describer-4", "aaaa")) != same
    assert _texts_fingerprint(texts("describer-3", "bbbb")) != same


@pytest.mark.slow
def test_new_galaxies_that_all_fail_still_fail_the_asset(isolated_home, tmp_path):
    """Captions standing from an earlier run excuse only galaxies that failed before (a
    blank cutout, a refusal): a spent quota over a grown sample must still fail the asset."""
    root = tmp_path / "survey"
    _survey(root, n=6)
    with FakeOpenAIServer(api_key=KEY) as server, dg.instance_for_test() as instance:
        resources = _ingested(instance, isolated_home, root, CaptionerResource(
            backend="openai", base_url=server.base_url, model="fake-vlm", api_key=KEY))

        def caption(n):
            return dg.materialize(
                [raw_cutouts, caption_sample, vlm_captions],
                selection=[caption_sample, vlm_captions], instance=instance,
                resources=resources, raise_on_error=False,
                run_config={"ops": {"caption_sample": {"config": {"n": n, "seed": 1}}}})

        assert caption(4).success
        server.add_fault("quota", times=None)
        grown = caption(10)
        assert not grown.success
        message = grown.get_step_failure_events()[0].event_specific_data.error.message
        assert "caption requests failed" in message and "quota" in message


@pytest.mark.slow
def test_a_new_cutout_size_recaptions_and_says_so(isolated_home, tmp_path):
    """After survey.cutout_size changed and the manifests were rebuilt, vlm_captions reused
    every caption described from the old crop (a reviewer's run: 64 px -> 96 px gave
    described_now 0, reused 100, and the VLM got no request). Dropping a band that is not
    drawn shows the VLM the same picture: those captions are reused."""
    root = tmp_path / "survey"
    _survey(root, n=6)
    with FakeOpenAIServer(api_key=KEY) as server, dg.instance_for_test() as instance:
        resources = _ingested(instance, isolated_home, root, CaptionerResource(
            backend="openai", base_url=server.base_url, model="fake-vlm", api_key=KEY))

        def survey(bands, size) -> None:  # new survey settings, and survey_job again
            resources["survey"] = SurveyResource(roots=[str(root)], bands=bands, cutout_size=size)
            for key in ("healpix=0__001-of-001", "healpix=1__001-of-001"):
                dg.materialize([raw_cutouts], partition_key=key, instance=instance,
                               resources=resources)

        def caption() -> tuple[int, dict, pl.DataFrame]:
            """(chat requests sent, vlm_captions' counts, its table) of captions_job."""
            n_before = len(server.routed("chat"))
            out = dg.materialize(
                [raw_cutouts, caption_sample, vlm_captions],
                selection=[caption_sample, vlm_captions], instance=instance,
                resources=resources,
                run_config={"ops": {"caption_sample": {"config": {"n": 8, "seed": 1}}}})
            meta = out.asset_materializations_for_node("vlm_captions")[0].metadata
            counts = {k: meta[k].value for k in ("captions", "described_now", "reused",
                                                 "redescribed")}
            return len(server.routed("chat")) - n_before, counts, out.output_for_node(
                "vlm_captions")

        sent, counts, captions = caption()  # the native 24 px
        assert sent == 8
        assert counts == {"captions": 8, "described_now": 8, "reused": 0, "redescribed": 0}
        assert set(captions["pixels"]) == {"z,r,g@24x24"}
        survey(BANDS, 20)
        sent, counts, captions = caption()
        assert sent == 8
        assert counts == {"captions": 8, "described_now": 8, "reused": 0, "redescribed": 8}
        assert set(captions["pixels"]) == {"z,r,g@20x20"}
        survey(["g", "r", "z"], 20)
        sent, counts, captions = caption()
        assert sent == 0
        assert counts == {"captions": 8, "described_now": 0, "reused": 8, "redescribed": 0}
        assert set(captions["pixels"]) == {"z,r,g@20x20"}
