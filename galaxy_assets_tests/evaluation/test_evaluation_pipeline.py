"""``run_search_evaluation`` and ``load_labels``: the gate's outcomes as the graph runs them
(first champion, the same version evaluated again, a failing candidate), the order of report
and promotion, and where labels come from (truth tables, catalogues, the user's targets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from galaxy_assets.evaluation import pipeline
from galaxy_assets.evaluation.errors import EvaluationError, TargetConfigError
from galaxy_assets.evaluation.gate import FIRST_CHAMPION
from galaxy_assets.evaluation.labels import labels_from_truth, load_targets
from galaxy_assets.evaluation.pipeline import EvaluationConfig, load_labels, run_search_evaluation
from galaxy_assets.survey.truth import truth_path


@dataclass
class FakeTracker:
    """The registry calls the evaluation makes: the alias, its moves, and no MLflow run."""

    champion: int | None = None
    moves: list[tuple[str, str, int]] = field(default_factory=list)
    on_set_alias: object = None

    def get_alias_version(self, name, alias):
        return None if self.champion is None else SimpleNamespace(version=str(self.champion))

    def set_alias(self, name, alias, version):
        if callable(self.on_set_alias):
            self.on_set_alias()
        self.moves.append((name, alias, int(version)))
        self.champion = int(version)

    def resolve_version(self, name, version):
        return SimpleNamespace(run_id=None)  # nothing to log to


def _patch(monkeypatch, world, noise: dict[int, float]) -> None:
    """Aligner version v searches ``world`` with class noise ``noise[v]`` (lower is better)."""
    import galaxy_assets.alignment.model as model

    def load_aligner(tracker, name, version):
        cfg = SimpleNamespace(image_encoder="test-encoder", text_embedder="test-text")
        return SimpleNamespace(aligner_version=f"{name}/v{version}", config=cfg,
                               noise=noise[int(version)])

    class Search:
        def __init__(self, aligner, text_embedder, image_embeddings):
            self.ids = world.object_ids
            self.fn = world.search_fn(noise=aligner.noise, seed=int(aligner.noise * 100))

        def __len__(self):
            return int(self.ids.size)

        def __call__(self, queries, k):
            return self.fn(queries, k)

    monkeypatch.setattr(model, "load_aligner", load_aligner)
    monkeypatch.setattr(pipeline, "ExactSemanticSearch", Search)
    monkeypatch.setattr(pipeline, "load_labels",
                        lambda manifest, config: labels_from_truth(world.truth, manifest=manifest))
    monkeypatch.setattr(pipeline, "_example_grids", lambda result, manifest: {})


def _run(world, tracker: FakeTracker, version: int, reports: Path):
    return run_search_evaluation(
        candidate_version=version, image_embeddings=world.embeddings, manifest=world.manifest,
        tracker=tracker, text_embedder=None, rater=None, reports=reports,
        config=EvaluationConfig(rerank=False, n_boot=50), log=lambda msg: None)


def test_first_champion_is_promoted_after_its_report_is_written(monkeypatch, world, tmp_path):
    _patch(monkeypatch, world, {1: 0.3})
    written = []
    tracker = FakeTracker(on_set_alias=lambda: written.append(
        (tmp_path / "v1" / "report.md").is_file()))
    out = _run(world, tracker, 1, tmp_path)
    assert out.promoted and out.decision.passed and out.decision.reasons == [FIRST_CHAMPION]
    assert tracker.moves == [("search-aligner", "champion", 1)]
    assert written == [True]  # the alias moved only once the report was on disk
    assert "is now `champion`" in out.files.text


def test_report_failure_leaves_the_alias_where_it_was(monkeypatch, world, tmp_path):
    _patch(monkeypatch, world, {1: 0.3})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "write_report", broken)
    tracker = FakeTracker()
    with pytest.raises(OSError, match="disk full"):
        _run(world, tracker, 1, tmp_path)
    assert tracker.moves == [] and tracker.champion is None


def test_the_champion_evaluated_again_says_so(monkeypatch, world, tmp_path):
    _patch(monkeypatch, world, {2: 0.3})
    tracker = FakeTracker(champion=2)
    out = _run(world, tracker, 2, tmp_path)
    assert out.decision.passed and not out.promoted and tracker.moves == []
    (reason,) = out.decision.reasons
    assert "search-aligner v2 already is `champion`" in reason and reason != FIRST_CHAMPION
    assert "already was the champion" in out.files.text
    assert "no aligner holds the champion alias yet" not in out.files.text


def test_a_worse_candidate_stays_a_candidate(monkeypatch, world, tmp_path):
    _patch(monkeypatch, world, {1: 0.05, 2: 3.0})  # v2 ranks nearly at random
    tracker = FakeTracker(champion=1)
    out = _run(world, tracker, 2, tmp_path)
    assert not out.decision.passed and not out.promoted
    assert tracker.moves == [] and tracker.champion == 1
    assert out.champion_result is not None
    assert "stays a candidate; `champion` remains v1" in out.files.text
    failed = out.decision.per_target.filter(~pl.col("passed"))
    assert failed.height >= 1
    assert (failed["change"] < -failed["allowed_drop"]).all()


def test_a_better_candidate_replaces_the_champion(monkeypatch, world, tmp_path):
    _patch(monkeypatch, world, {1: 3.0, 2: 0.05})
    tracker = FakeTracker(champion=1)
    out = _run(world, tracker, 2, tmp_path)
    assert out.decision.passed and out.promoted and tracker.moves[-1][2] == 2
    assert out.decision.per_target.height > 0  # compared target by target


def test_the_gate_resamples_as_the_config_says(monkeypatch, world, tmp_path):
    """The gate's paired bootstrap uses the evaluation's n_boot and seed, as the report's
    uncertainties do (it used its own 1,000 resamples and seed 0)."""
    _patch(monkeypatch, world, {1: 3.0, 2: 0.05})
    seen = {}
    real = pipeline.compare_to_champion

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "compare_to_champion", spy)
    run_search_evaluation(
        candidate_version=2, image_embeddings=world.embeddings, manifest=world.manifest,
        tracker=FakeTracker(champion=1), text_embedder=None, rater=None, reports=tmp_path,
        config=EvaluationConfig(rerank=False, n_boot=40, seed=7), log=lambda msg: None)
    assert (seen["n_boot"], seen["seed"]) == (40, 7)


# --------------------------------------------------------------------------- load_labels
def _survey_on_disk(world, tmp_path: Path, truth: pl.DataFrame | None) -> pl.DataFrame:
    shard = tmp_path / "healpix=1" / "001-of-001.hdf5"
    shard.parent.mkdir(parents=True)
    if truth is not None:
        truth.write_parquet(truth_path(shard))
    return world.manifest.with_columns(pl.lit(str(shard)).alias("shard_uri"))


def _targets_file(tmp_path: Path, **renames: str) -> str:
    """The default targets with the lenses target renamed and re-phrased."""
    import yaml

    data = yaml.safe_load(
        (Path(pipeline.__file__).parent / "targets.yaml").read_text(encoding="utf-8"))
    for t in data["targets"]:
        if t["name"] == "lenses":
            t["name"] = renames.get("lenses", "lenses")
            t["queries"] = ["my own lens phrasing"]
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_a_lens_catalogue_labels_the_users_target(world, tmp_path):
    manifest = _survey_on_disk(world, tmp_path, world.truth)
    lenses = world.flags[:, 2]
    catalogue = tmp_path / "lenses.csv"
    world.truth.filter(pl.Series(lenses)).select("ra", "dec").write_csv(catalogue)
    targets = _targets_file(tmp_path, lenses="strong_lenses")
    cfg = EvaluationConfig(targets_file=targets, lens_catalogue=str(catalogue),
                           lens_target="strong_lenses")
    labels = load_labels(manifest, cfg)
    got = labels.targets["strong_lenses"]
    assert got.target.queries == ("my own lens phrasing",)
    assert got.source == str(catalogue) and got.n_targets == int(lenses.sum())
    assert "lenses" not in labels.targets

    with pytest.raises(EvaluationError, match=r"labels target 'lenses', which .*targets.yaml do "
                       r"not define; set lens_target to one of the binary targets \["):
        load_labels(manifest, EvaluationConfig(targets_file=targets,
                                               lens_catalogue=str(catalogue)))


def test_catalogues_alone_when_the_survey_has_no_truth(world, tmp_path):
    manifest = _survey_on_disk(world, tmp_path, None)
    catalogue = tmp_path / "lenses.parquet"
    world.truth.filter(pl.Series(world.flags[:, 2])).select("ra", "dec").write_parquet(catalogue)
    with pytest.raises(EvaluationError, match="has a truth table.*give search_evaluation a "
                       "vote_catalogue"):
        load_labels(manifest, EvaluationConfig())
    labels = load_labels(manifest, EvaluationConfig(lens_catalogue=str(catalogue)))
    assert list(labels.targets) == ["lenses"]
    assert labels.targets["lenses"].n_targets == int(world.flags[:, 2].sum())


def test_a_truth_table_error_is_not_hidden_by_a_catalogue(world, tmp_path):
    """A targets file naming a flag the truth table lacks is an error even when a catalogue is
    given (before, it read as "no truth tables" and dropped every truth-labelled target)."""
    manifest = _survey_on_disk(world, tmp_path, world.truth.drop("is_lens"))
    catalogue = tmp_path / "lenses.parquet"
    world.truth.filter(pl.Series(world.flags[:, 2])).select("ra", "dec").write_parquet(catalogue)
    with pytest.raises(EvaluationError, match="has no column 'is_lens' for binary target"):
        load_labels(manifest, EvaluationConfig(lens_catalogue=str(catalogue)))
    assert np.any(world.flags[:, 2])


def test_targets_file_errors_reach_the_user(world, tmp_path):
    manifest = _survey_on_disk(world, tmp_path, world.truth)
    with pytest.raises(TargetConfigError, match="targets file .*nope.yaml does not exist"):
        load_labels(manifest, EvaluationConfig(targets_file=str(tmp_path / "nope.yaml")))
    assert set(load_targets()) <= set(load_labels(manifest, EvaluationConfig()).targets)


@pytest.mark.parametrize("every_phrasing", [True, False])
def test_re_ranking_covers_every_phrasing_unless_told_not_to(monkeypatch, world, tmp_path,
                                                            every_phrasing):
    """The per-phrasing table compares both text methods for each wording (the default); a
    VLM rater's cost can be cut to the primary phrasings."""
    _patch(monkeypatch, world, {1: 0.3})
    asked: list[str] = []

    class Rerank:
        n_rated = n_failed = 0
        seconds = 0.0

        def __init__(self, rater, manifest, search, n_samples=1):
            pass

        def __call__(self, query, ids):
            asked.append(query)
            return list(ids)[::-1]

    monkeypatch.setattr(pipeline, "RerankCallable", Rerank)
    cfg = EvaluationConfig(n_boot=20, rerank_depth=20, rerank_phrasings=every_phrasing)
    out = run_search_evaluation(
        candidate_version=1, image_embeddings=world.embeddings, manifest=world.manifest,
        tracker=FakeTracker(), text_embedder=None, rater=object(), reports=tmp_path,
        config=cfg, log=lambda msg: None)
    targets = out.result.targets
    primaries = {t["primary_query"] for t in targets.values()}
    every = {q for t in targets.values() for q in t["queries"]}
    assert set(asked) == (every if every_phrasing else primaries)
    assert len(every) > len(primaries)
    reranked = {s.query for s in out.result.phrasings if s.method == "semantic_rerank"}
    assert reranked == set(asked)


def test_a_champion_that_cannot_be_loaded_is_replaced(monkeypatch, world, tmp_path):
    """A champion whose artifacts are gone is replaced with the reason (it failed the whole
    evaluation on every rerun, leaving the alias on a model nothing could load)."""
    import galaxy_assets.alignment.model as model
    from galaxy_assets.alignment.errors import AlignmentError
    from galaxy_assets.tracking import TrackingError

    _patch(monkeypatch, world, {2: 0.05})
    loads = model.load_aligner

    def load(tracker, name, version):
        if int(version) == 1:
            try:
                raise TrackingError("artifact folder /gone does not exist")
            except TrackingError as exc:
                raise AlignmentError(f"cannot load the search aligner {name}@1: {exc}") from exc
        return loads(tracker, name, version)

    monkeypatch.setattr(model, "load_aligner", load)
    tracker = FakeTracker(champion=1)
    out = _run(world, tracker, 2, tmp_path)
    assert out.decision.passed and out.promoted and tracker.champion == 2
    (reason,) = out.decision.reasons[:1]
    assert "search-aligner v1 cannot be compared: it cannot be loaded (artifact folder /gone" in reason
    assert "is now `champion`" in out.files.text
