"""Caption store (incremental, failures, import) and the shard-by-shard caption run."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from galaxy_assets.captioning.base import CaptionerError, CaptionRequest, CaptionResult
from galaxy_assets.captioning.run import (
    caption_galaxies,
    current_captions,
    described_pixels,
    sample_for_captions,
)
from galaxy_assets.captioning.store import CaptionStore
from galaxy_assets.survey.mmu import write_mmu_shard
from galaxy_assets.survey.readers import open_shard


class BrightnessCaptioner:
    """Test double: describes total flux; fails on galaxies whose pixels are all zero."""

    backend = "test"
    prompt_sha = "p1"

    def __init__(self, model_id="bright-v1"):
        self.model_id = model_id
        self.calls = 0

    def caption(self, requests):
        self.calls += len(requests)
        out = []
        for r in requests:
            total = float(np.nansum(r.image))
            if total == 0:
                out.append(CaptionResult(r.object_id, None, "empty image: all pixels are zero"))
            else:
                out.append(CaptionResult(r.object_id, f"a source of flux {total:.1f}"))
        return out

    def close(self):
        pass


def _manifest(tmp_path, n_per=6):
    frames = []
    for s in range(2):
        images = np.random.default_rng(s).uniform(1, 2, (n_per, 2, 8, 8)).astype(np.float32)
        images[0] = 0  # one blank galaxy per shard
        path = write_mmu_shard(
            tmp_path / f"healpix={s}" / "001-of-001.hdf5", images=images, bands=["g", "r"],
            object_id=[f"s{s}-{i}" for i in range(n_per)], ra=np.full(n_per, 10.0),
            dec=np.full(n_per, 5.0),
        )
        frames.append(pl.DataFrame({
            "object_id": [f"s{s}-{i}" for i in range(n_per)], "shard": [f"k{s}"] * n_per,
            "shard_uri": [str(path)] * n_per, "row": list(range(n_per)),
        }))
    return pl.concat(frames)


def test_sample_is_seeded_uncurated_and_stable():
    manifest = pl.DataFrame({
        "object_id": [f"g{i}" for i in range(1000)], "shard": ["a"] * 1000,
        "shard_uri": ["u"] * 1000, "row": list(range(1000)),
    })
    a = sample_for_captions(manifest, 100, seed=1)
    b = sample_for_captions(manifest.reverse(), 100, seed=1)
    assert a["object_id"].to_list() == b["object_id"].to_list()  # order of shards irrelevant
    assert a["object_id"].n_unique() == 100
    c = sample_for_captions(manifest, 100, seed=2)
    assert set(a["object_id"]) != set(c["object_id"])
    # adding galaxies keeps most of the sample
    more = pl.concat([manifest, manifest.with_columns(pl.col("object_id") + "x")])
    d = sample_for_captions(more, 100, seed=1)
    assert len(set(a["object_id"]) & set(d["object_id"])) > 30
    with pytest.raises(ValueError):
        sample_for_captions(manifest, 0)


def test_caption_run_is_incremental_and_records_failures(tmp_path):
    manifest = _manifest(tmp_path)
    store = CaptionStore(tmp_path / "captions")
    cap = BrightnessCaptioner()
    run = caption_galaxies(manifest, cap, store, lambda u: open_shard(u), batch_size=4)
    assert run.attempted == 12 and run.captioned == 10 and run.failed == 2
    captions = store.captions()
    assert captions.height == 10 and set(captions["source"]) == {"generated"}
    assert "s0-0" not in captions["object_id"].to_list()
    failures = store.failures()
    assert sorted(failures["object_id"]) == ["s0-0", "s1-0"]
    assert failures["reason"][0].startswith("empty image")
    # rerun: only the failed galaxies are tried again
    cap2 = BrightnessCaptioner()
    run2 = caption_galaxies(manifest, cap2, store, lambda u: open_shard(u))
    assert cap2.calls == 2 and run2.skipped_existing == 10
    # ...and a galaxy that fails again keeps one failure row, the latest
    again = store.failures()
    assert sorted(again["object_id"]) == ["s0-0", "s1-0"]
    assert (again["created_at"] >= failures["created_at"].max()).all()
    # a new model recaptions everything
    cap3 = BrightnessCaptioner("bright-v2")
    caption_galaxies(manifest, cap3, store, lambda u: open_shard(u))
    assert cap3.calls == 12
    assert store.captions().height == 20
    # so does the same model name under another backend (a local folder and an endpoint that
    # serves that name are different captioners)
    cap4 = BrightnessCaptioner("bright-v2")
    cap4.backend = "openai"
    assert len(store.missing(manifest["object_id"].to_list(), "bright-v2", "p1", "openai")) == 12
    caption_galaxies(manifest, cap4, store, lambda u: open_shard(u))
    assert cap4.calls == 12 and store.captions().height == 30


def test_batches_gather_galaxies_across_shards(tmp_path):
    """A sample spread thin over many shards (a galaxy or two in each, as on a real survey)
    still reaches the captioner in full batches, so an endpoint's concurrency is used."""
    manifest = pl.concat([_manifest(tmp_path / f"part{p}", n_per=2) for p in range(5)])
    sizes = []

    class Counting(BrightnessCaptioner):
        def caption(self, requests):
            sizes.append(len(requests))
            return super().caption(requests)

    run = caption_galaxies(manifest, Counting(), CaptionStore(tmp_path / "c"),
                           lambda u: open_shard(u), batch_size=8)
    assert sizes == [8, 8, 4] and run.attempted == 20 and run.captioned == 10


def test_unreadable_shard_records_every_galaxy(tmp_path):
    manifest = _manifest(tmp_path)
    bad_uri = manifest["shard_uri"][0]
    open(bad_uri, "wb").write(b"garbage")
    store = CaptionStore(tmp_path / "c")

    def opener(uri):
        return open_shard(uri)

    run = caption_galaxies(manifest, BrightnessCaptioner(), store, opener)
    assert run.failed == 7 and run.captioned == 5  # 6 of the bad shard + 1 blank galaxy
    failures = store.failures().filter(pl.col("object_id").str.starts_with("s0-"))
    assert failures.height == 6
    assert all("shard unreadable" in r and "healpix=0" in r for r in failures["reason"])


def test_import_captions(tmp_path):
    store = CaptionStore(tmp_path / "c")
    table = tmp_path / "aion_search.csv"
    pl.DataFrame({"object_id": ["a", "b", "c"], "caption": ["spiral", "", "lens"]}).write_csv(table)
    assert store.import_table(table, source="aion-search-v1") == 2
    got = store.captions()
    assert set(got["backend"]) == {"import"} and set(got["model"]) == {"aion-search-v1"}
    assert set(got["source"]) == {"import:aion_search.csv"}
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"id": ["a"], "text": ["x"]}).write_parquet(bad)
    with pytest.raises(CaptionerError, match="missing column"):
        store.import_table(bad)
    with pytest.raises(CaptionerError, match="does not exist"):
        store.import_table(tmp_path / "nope.csv")
    with pytest.raises(CaptionerError, match="unsupported"):
        (tmp_path / "x.json").write_text("{}")
        store.import_table(tmp_path / "x.json")
    # numeric-looking ids stay text: leading zeros and 17-digit ids survive
    ids = tmp_path / "ids.csv"
    ids.write_text("object_id,caption\n000123,a bar\n9007199254740993,a ring\n")
    assert store.import_table(ids, source="numeric") == 2
    got = store.captions().filter(pl.col("model") == "numeric")
    assert sorted(got["object_id"].to_list()) == ["000123", "9007199254740993"]
    # ids are stripped; rows without an id are dropped; a repeated id counts once (the last
    # caption wins), and the count says what was stored
    messy = tmp_path / "messy.csv"
    messy.write_text(
        "object_id,caption\n gal9 ,a spiral\n,orphan caption\ngal7,first\ngal7,second\n"
    )
    assert store.import_table(messy, source="messy") == 2
    got = store.captions().filter(pl.col("model") == "messy").sort("object_id")
    assert got["object_id"].to_list() == ["gal7", "gal9"]
    assert got["caption"].to_list() == ["second", "a spiral"]


def test_import_captions_command_says_what_is_wrong(tmp_path, capsys, monkeypatch):
    from galaxy_assets.cli import main

    monkeypatch.setenv("GALAXY_ASSETS_HOME", str(tmp_path / "home"))
    assert main(["import-captions", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert "import-captions: caption table" in err and "does not exist" in err
    assert "Traceback" not in err


def test_import_captions_command_counts_the_survey_galaxies_among_the_ids(tmp_path, capsys,
                                                                         monkeypatch):
    """A table whose ids are not the survey's (another id scheme) imports, but says so:
    none of its captions can ever reach vlm_captions."""
    from galaxy_assets.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("GALAXY_ASSETS_HOME", str(home))
    (home / "parquet" / "raw_cutouts").mkdir(parents=True)
    pl.DataFrame({"object_id": ["g1", "g2", "g3"]}).write_parquet(
        home / "parquet" / "raw_cutouts" / "k.parquet")
    pl.DataFrame({"object_id": ["g2"]}).write_parquet(home / "parquet" / "caption_sample.parquet")
    ours = tmp_path / "ours.csv"
    pl.DataFrame({"object_id": ["g1", "g2"], "caption": ["a spiral", "a lens"]}).write_csv(ours)
    assert main(["import-captions", str(ours)]) == 0
    out = capsys.readouterr()
    assert "2 of them are galaxies of the survey; 1 are in caption_sample" in out.out
    foreign = tmp_path / "foreign.csv"
    pl.DataFrame({"object_id": ["J1", "J2"], "caption": ["x y z", "u v w"]}).write_csv(foreign)
    assert main(["import-captions", str(foreign)]) == 0
    out = capsys.readouterr()
    assert "0 of them are galaxies of the survey" in out.out
    assert "no imported id is a survey object_id" in out.err and "'J1'" in out.err


def test_request_shape():
    req = CaptionRequest("a", np.zeros((4, 8, 8), np.float32), ("g", "r", "i", "z"))
    assert req.image.shape == (4, 8, 8)


def test_a_run_beyond_the_request_budget_sends_nothing(tmp_path):
    """The budget is checked for the whole run before the first request (it was checked per
    batch, so a run that could not fit spent most of the budget and then stopped)."""
    from galaxy_assets.captioning.openai_backend import OpenAICaptioner
    from galaxy_assets_tests.fake_openai import FakeOpenAIServer

    manifest = _manifest(tmp_path)
    store = CaptionStore(tmp_path / "captions")
    with FakeOpenAIServer() as server:
        captioner = OpenAICaptioner(server.base_url, "vlm", request_budget=11, timeout_s=5)
        with pytest.raises(CaptionerError, match="12 galaxies to caption but only 11 requests "
                           r"left .*captioner.request_budget.*nothing was sent"):
            caption_galaxies(manifest, captioner, store, open_shard, batch_size=4)
        assert server.requests == [] and store.captions().height == 0
        captioner = OpenAICaptioner(server.base_url, "vlm", request_budget=12, timeout_s=5)
        run = caption_galaxies(manifest, captioner, store, open_shard, batch_size=4)
        assert run.attempted == 12 and captioner.requests_left == 2  # empty images: not sent


def test_concurrent_writers_keep_every_caption(tmp_path):
    """Two processes adding to one store (captions_job while `galaxy-assets import-captions`
    runs) lost each other's captions: each read the store, merged its rows and replaced the
    file, with no lock between the read and the replace (a reviewer's run: 2 x 20 x 100 rows
    onto 50,000 left 52,000 rows, not 54,000)."""
    import multiprocessing

    from galaxy_assets_tests.captioning import store_workers

    folder = tmp_path / "captions"
    store = CaptionStore(folder)
    store.add(store_workers.rows("base", 20_000))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    writers = [
        ctx.Process(target=store_workers.add_batches, args=(str(folder), p, 20, 100, barrier))
        for p in ("a", "b")
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    captions = store.captions()
    assert captions.height == 20_000 + 2 * 20 * 100
    assert captions["object_id"].n_unique() == captions.height


def test_reads_while_the_store_is_replaced_see_one_whole_version(tmp_path):
    """A reader died with "parquet: File out of specification" while a writer replaced the
    file: given a path, polars opens it twice (footer, then pages), and an os.replace between
    the two gave it one version's footer with another's pages. A read now opens it once."""
    import multiprocessing
    import time

    from galaxy_assets_tests.captioning import store_workers

    folder = tmp_path / "captions"
    store = CaptionStore(folder)
    store.add(store_workers.rows("base", 30_000))
    ctx = multiprocessing.get_context("spawn")
    started, stop, adds = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
    writer = ctx.Process(
        target=store_workers.rewrite_until, args=(str(folder), started, stop, adds)
    )
    writer.start()
    errors, reads = [], 0
    try:
        assert started.wait(timeout=60)
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            try:
                height = store.captions().height
                assert 30_000 <= height <= 30_000 + adds.value + 1
            except Exception as exc:  # noqa: BLE001 - every failed read is the finding
                errors.append(repr(exc)[:200])
            reads += 1
    finally:
        stop.set()
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert adds.value >= 10 and reads >= 10  # the reads did overlap many replaces
    assert errors == [], f"{len(errors)} of {reads} reads failed: {errors[:3]}"


def _survey4(tmp_path, n_per=6, size=12):
    """Two shards of g, r, i, z cutouts of ``size`` px, and the reader of them under survey
    settings ``bands``/``crop``: (shard paths, manifest of those settings, opener)."""
    paths = []
    for s in range(2):
        images = np.random.default_rng(s).uniform(1, 2, (n_per, 4, size, size))
        paths.append(write_mmu_shard(
            tmp_path / f"healpix={s}" / "001-of-001.hdf5", images=images.astype(np.float32),
            bands=["g", "r", "i", "z"], object_id=[f"s{s}-{i}" for i in range(n_per)],
            ra=np.full(n_per, 10.0), dec=np.full(n_per, 5.0),
        ))

    def settings(bands=("g", "r", "i", "z"), crop=None):
        side = crop or size
        manifest = pl.concat(pl.DataFrame({
            "object_id": [f"s{s}-{i}" for i in range(n_per)], "shard": [f"k{s}"] * n_per,
            "shard_uri": [str(path)] * n_per, "row": list(range(n_per)),
            "bands": [",".join(bands)] * n_per, "height": [side] * n_per,
            "width": [side] * n_per,
        }, schema_overrides={"height": pl.Int32, "width": pl.Int32})
            for s, path in enumerate(paths))
        return manifest, lambda uri: open_shard(uri, bands=list(bands), size=crop)

    return settings


def test_what_the_captioner_is_shown():
    """A VLM is shown the RGB picture of three bands, the describer measures g, r and z;
    other bands do not enter the key, the crop does."""
    assert described_pixels("openai", ["g", "r", "i", "z"], 64, 64) == "z,r,g@64x64"
    assert described_pixels("transformers", "g,r,z", 64, 64) == "z,r,g@64x64"
    assert described_pixels("openai", "g,r,i", 96, 96) == "i,r,g@96x96"
    assert described_pixels("openai", "g,r", 64, 64) == "r,mean,g@64x64"
    assert described_pixels("morphology", "g,r,i,z", 64, 64) == "g,r,z@64x64"
    assert described_pixels("morphology", "g,r,i,z", 96, 96) == "g,r,z@96x96"


def test_a_caption_of_other_pixels_is_described_again(tmp_path):
    """Captions were reused after survey.cutout_size changed: the store's key did not say
    which pixels were described (a reviewer's run: 64 px -> 96 px, 100 captions reused, the
    VLM asked for none). A caption now records the bands drawn and the crop."""
    settings = _survey4(tmp_path)
    store = CaptionStore(tmp_path / "captions")
    wide, wide_reader = settings()
    run = caption_galaxies(wide, BrightnessCaptioner(), store, wide_reader)
    assert run.captioned == 12 and set(store.captions()["pixels"]) == {"z,r,g@12x12"}
    # survey.cutout_size: 8 -> the manifests say 8 px, the reader crops to 8 px
    tight, tight_reader = settings(crop=8)
    cap = BrightnessCaptioner()
    run = caption_galaxies(tight, cap, store, tight_reader)
    assert cap.calls == 12 and run.skipped_existing == 0
    assert run.redescribed == 12 and run.captioned == 12
    # both are kept (going back reuses); the sample's captions are those of its pixels
    assert store.captions().height == 24
    now = current_captions(store.captions(), tight, "test", "bright-v1", "p1")
    assert now.height == 12 and set(now["pixels"]) == {"z,r,g@8x8"}
    back = BrightnessCaptioner()
    run = caption_galaxies(wide, back, store, wide_reader)
    assert back.calls == 0 and run.skipped_existing == 12 and run.redescribed == 0
    # dropping a band that is not drawn shows the captioner the same picture: reused
    no_i, no_i_reader = settings(bands=("g", "r", "z"), crop=8)
    same = BrightnessCaptioner()
    assert caption_galaxies(no_i, same, store, no_i_reader).skipped_existing == 12
    assert same.calls == 0
    # a sample without the manifest's pixel columns (stored before they were kept) accepts
    # a caption of any pixels, and the latest stands
    old_sample = tight.drop("bands", "height", "width")
    assert caption_galaxies(old_sample, same, store, tight_reader).skipped_existing == 12
    latest = current_captions(store.captions(), old_sample, "test", "bright-v1", "p1")
    assert latest.height == 12 and set(latest["pixels"]) == {"z,r,g@8x8"}


def test_captions_stored_before_pixels_were_recorded_are_adopted_once(tmp_path):
    """A store written before captions recorded their pixels is not recaptioned whole: its
    captions are taken as described from the current pixels, and stamped so, once; a later
    crop change recaptions them like any other. Imported captions keep no pixels."""
    settings = _survey4(tmp_path)
    manifest, reader = settings()
    folder = tmp_path / "captions"
    folder.mkdir()
    stamp = pl.Series([datetime.now(UTC)] * 12, dtype=pl.Datetime("us", "UTC"))
    ids = manifest["object_id"].to_list()
    pl.DataFrame({  # the columns of the store before this fix
        "object_id": ids + ["s0-0"], "caption": ["an old caption"] * 13,
        "backend": ["test"] * 12 + ["import"], "model": ["bright-v1"] * 12 + ["aion"],
        "prompt_sha": ["p1"] * 12 + ["external"], "source": ["generated"] * 12 + ["import:a.csv"],
        "created_at": pl.concat([stamp, stamp.head(1)]),
    }).write_parquet(folder / "captions.parquet")
    store = CaptionStore(folder)
    cap = BrightnessCaptioner()
    run = caption_galaxies(manifest, cap, store, reader)
    assert cap.calls == 0 and run.adopted == 12 and run.skipped_existing == 12
    stored = store.captions()
    assert stored.filter(pl.col("backend") == "test")["pixels"].to_list() == ["z,r,g@12x12"] * 12
    assert stored.filter(pl.col("backend") == "import")["pixels"].to_list() == [None]
    again = caption_galaxies(manifest, cap, store, reader)
    assert again.adopted == 0 and cap.calls == 0
    tight, tight_reader = settings(crop=8)
    assert caption_galaxies(tight, cap, store, tight_reader).redescribed == 12
    assert cap.calls == 12
