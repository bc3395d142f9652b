"""The whole search evaluation as the graph runs it (``search_evaluation``): labels, the
candidate and champion aligners searched exactly in memory (:mod:`.semantic`), re-ranking,
the baselines, the gate, the promotion, the report and its MLflow logging.

Only this evaluation reads the truth tables (through :func:`~.labels.load_truth_labels`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from galaxy_assets.evaluation.errors import EvaluationError, NoTruthTableError
from galaxy_assets.evaluation.gate import (
    GateDecision,
    already_champion,
    compare_to_champion,
    lineage_mismatch,
    replaces_unservable_champion,
)
from galaxy_assets.evaluation.labels import (
    EvaluationLabels,
    labels_from_lens_catalogue,
    labels_from_vote_catalogue,
    load_targets,
    load_truth_labels,
)
from galaxy_assets.evaluation.report import (
    EvaluationResult,
    ReportFiles,
    evaluate,
    example_ids,
    write_report,
)
from galaxy_assets.evaluation.semantic import ExactSemanticSearch, RerankCallable
from galaxy_assets.search.rerank import DEFAULT_K_RERANK

log = logging.getLogger(__name__)

__all__ = ["EvaluationConfig", "EvaluationOutcome", "load_labels", "run_search_evaluation"]

ALIGNER = "search-aligner"


@dataclass
class EvaluationConfig:
    targets_file: str = ""
    vote_catalogue: str = ""
    lens_catalogue: str = ""
    lens_target: str = "lenses"  # the binary target the lens catalogue labels
    match_radius_arcsec: float = 1.0
    rerank: bool = True
    rerank_depth: int = DEFAULT_K_RERANK  # top semantic results re-ranked, as search does
    rerank_samples: int = 1  # ratings averaged per galaxy (the search's rerank_samples)
    # re-rank every phrasing of a target (the per-phrasing table then compares both text
    # methods); False: the primary phrasing only (a VLM rater's requests fall to a third)
    rerank_phrasings: bool = True
    n_boot: int = 500
    n_sigma: float = 1.0
    alias: str = "champion"
    seed: int = 0


@dataclass
class EvaluationOutcome:
    result: EvaluationResult
    decision: GateDecision
    files: ReportFiles
    promoted: bool
    candidate_version: int
    champion_version: int | None
    champion_result: EvaluationResult | None = None


def load_labels(manifest: pl.DataFrame, config: EvaluationConfig) -> EvaluationLabels:
    """Labels from the truth tables beside the shards (mock surveys), replaced target by target
    by the user's catalogues when given; an error when there is neither."""
    targets = load_targets(config.targets_file or None)
    labels: EvaluationLabels | None = None
    uris = manifest["shard_uri"].unique().to_list()
    try:
        labels = load_truth_labels(uris, targets, manifest=manifest)
    except NoTruthTableError as exc:
        if not (config.vote_catalogue or config.lens_catalogue):
            raise EvaluationError(
                f"{exc}; for a real survey give search_evaluation a vote_catalogue (Galaxy Zoo "
                "votes) and/or a lens_catalogue in its config"
            ) from exc
        log.info("no truth tables (%s): using the catalogues only", exc)
    radius = config.match_radius_arcsec
    catalogues = []
    if config.vote_catalogue:
        catalogues.append(labels_from_vote_catalogue(config.vote_catalogue, manifest, targets,
                                                     radius_arcsec=radius))
    if config.lens_catalogue:
        lens = targets.get(config.lens_target)
        if lens is None:
            binary = [t.name for t in targets.values() if t.kind == "binary"]
            raise EvaluationError(
                f"lens_catalogue {config.lens_catalogue} labels target {config.lens_target!r}, "
                f"which {config.targets_file or 'the default targets'} do not define; set "
                f"lens_target to one of the binary targets {binary}")
        catalogues.append(labels_from_lens_catalogue(config.lens_catalogue, manifest, lens,
                                                     radius_arcsec=radius))
    for extra in catalogues:  # a catalogue's target replaces the truth's
        labels = extra if labels is None else labels.merged(extra)
    assert labels is not None
    return labels


def _example_grids(result: EvaluationResult, manifest: pl.DataFrame) -> dict[str, list[np.ndarray]]:
    from galaxy_assets.search.pixels import Cutout, read_cutouts
    from galaxy_assets.survey.rgb import lupton_rgb

    grids: dict[str, list[np.ndarray]] = {}
    # bands and crop of each manifest row: the picture the encoder saw
    rows = manifest.select(c for c in ("object_id", "shard_uri", "row", "bands", "height", "width")
                           if c in manifest.columns)
    for target in result.targets:
        try:
            ids = example_ids(result, target, n=16)
        except EvaluationError:
            continue
        frame = pl.DataFrame({"object_id": ids}).join(rows, on="object_id", how="left",
                                                      maintain_order="left")
        cutouts = read_cutouts(frame)
        pictures = []
        for oid in ids:
            cut = cutouts.get(oid)
            if isinstance(cut, Cutout):
                pictures.append(lupton_rgb(cut.image, list(cut.bands)))
            else:
                pictures.append(np.zeros((8, 8, 3), np.uint8))  # unreadable: a black tile
        grids[target] = pictures
    return grids


def _log_to_run(tracker: Any, run_id: str, result: EvaluationResult, files: ReportFiles,
                decision: GateDecision) -> None:
    from galaxy_assets.tracking import TrackedRun

    info = tracker.client.get_run(run_id).info
    run = TrackedRun(tracker, run_id, info.experiment_id, info.artifact_uri)
    metrics = {f"eval/{k}": v for k, v in result.flat_metrics().items()}
    run.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()})
    run.log_metric("eval/gate_passed", 1.0 if decision.passed else 0.0)
    # what the evaluation read (table and model versions), searchable in the MLflow UI
    run.set_tags({f"eval.version.{k}": str(v)[:500] for k, v in result.versions.items()})
    for path in [files.markdown, files.json, *files.plots.values(), *files.grids.values()]:
        run.log_artifact(path, "search_evaluation")


def run_search_evaluation(
    *,
    candidate_version: int,
    image_embeddings: pl.DataFrame,
    manifest: pl.DataFrame,
    tracker: Any,
    text_embedder: Any,
    rater: Any | None,
    reports: Path,
    config: EvaluationConfig,
    index_version: int | None = None,
    reranker: str | None = None,
    captioned_ids: Iterable[str] | None = None,
    log: Callable[[str], None] = log.info,
) -> EvaluationOutcome:
    """Evaluate aligner ``candidate_version`` and, when another version holds ``config.alias``,
    that champion on the same labels; decide the gate, move the alias on a pass, write the
    report under ``reports/v<candidate_version>/`` and log it to the candidate's MLflow run.
    ``reranker``: the re-ranker's identity for the report's versions (default: the rater's
    ``model_id``).
    ``index_version``: the galaxy_index version serving queries meanwhile (recorded only: the
    search is exact and in memory, so that a candidate is judged before it serves).
    ``captioned_ids``: the object_ids whose captions trained the candidate; the report then
    compares its semantic nDCG@10 on galaxies without and with a training caption."""
    from galaxy_assets.alignment.errors import AlignmentError
    from galaxy_assets.alignment.model import load_aligner

    labels = load_labels(manifest, config)
    candidate = load_aligner(tracker, ALIGNER, candidate_version)
    cand_search = ExactSemanticSearch(candidate, text_embedder, image_embeddings)
    champion_mv = tracker.get_alias_version(ALIGNER, config.alias)
    champion_version = int(champion_mv.version) if champion_mv is not None else None
    versions = {
        "aligner": candidate.aligner_version,
        "champion": f"{ALIGNER}/v{champion_version}" if champion_version else "none",
        "image_encoder": str(candidate.config.image_encoder),
        "text_embedder": str(candidate.config.text_embedder),
        "galaxies": str(len(cand_search)),
        "galaxy_index": f"v{index_version}" if index_version is not None else "not built",
    }
    if rater is not None:
        versions["reranker"] = reranker or str(getattr(rater, "model_id", type(rater).__name__))
    rerank_fn = (RerankCallable(rater, manifest, cand_search, n_samples=config.rerank_samples)
                 if rater is not None else None)
    log(f"evaluating {candidate.aligner_version} on {len(cand_search)} galaxies"
        + (f" against champion v{champion_version}" if champion_version else ""))
    common = {"universe": cand_search.ids.tolist(), "n_boot": config.n_boot, "seed": config.seed}
    result = evaluate(labels, search_fn=cand_search, rerank_fn=rerank_fn,
                      image_embeddings=image_embeddings, rerank_depth=config.rerank_depth,
                      rerank_all_phrasings=config.rerank_phrasings, versions=versions,
                      captioned_ids=captioned_ids, **common)
    champion_result = None
    mismatch = None
    if champion_version is not None and champion_version != candidate_version:
        try:
            champion = load_aligner(tracker, ALIGNER, champion_version)
        except AlignmentError as exc:
            # its artifacts are gone or no longer fit the code (a registry that does not answer
            # raises MlflowException instead, and fails the run): nothing can serve it, so the
            # candidate replaces it as it would a champion of another lineage
            champion, mismatch = None, f"it cannot be loaded ({exc.__cause__ or exc})"
        else:
            # a champion from another image encoder (a retrained encoder, other test-time
            # views) or text embedder cannot search these vectors: the candidate replaces it
            mismatch = lineage_mismatch(champion, candidate)
        if mismatch is None:
            try:
                champion_search = ExactSemanticSearch(champion, text_embedder, image_embeddings)
            except AlignmentError as exc:  # e.g. vectors of another width, lineage unrecorded
                mismatch = f"it cannot search the current vectors ({exc})"
            else:
                champion_result = evaluate(labels, search_fn=champion_search,
                                           versions={"aligner": champion.aligner_version},
                                           **common)
    if champion_version == candidate_version:
        decision = already_champion(f"{ALIGNER} v{candidate_version}", config.alias,
                                    n_sigma=config.n_sigma)
    elif mismatch is not None:
        decision = replaces_unservable_champion(f"{ALIGNER} v{champion_version}", mismatch,
                                                result, n_sigma=config.n_sigma)
    else:
        decision = compare_to_champion(result, champion_result, n_sigma=config.n_sigma,
                                       n_boot=config.n_boot, seed=config.seed)
    promoted = decision.passed and champion_version != candidate_version
    verdict = ("passed: " if decision.passed else "FAILED: ") + "; ".join(decision.reasons)
    log(f"gate {verdict}")
    if rerank_fn is not None:
        log(f"re-ranking: {rerank_fn.n_rated} rated, {rerank_fn.n_failed} failed in "
            f"{rerank_fn.seconds:.1f} s")
    gate_section = decision.to_markdown() + (
        f"\n\n{ALIGNER} v{candidate_version} "
        + (f"is now `{config.alias}`." if promoted else
           ("already was the champion." if champion_version == candidate_version else
            f"stays a candidate; `{config.alias}` remains v{champion_version}.")))
    # the report is written and logged before the alias moves: a failure on the way leaves the
    # champion where it was, and the rerun evaluates this candidate again
    files = write_report(result, Path(reports) / f"v{candidate_version}",
                         _example_grids(result, manifest), extra_sections=[gate_section],
                         title=f"Search evaluation of {candidate.aligner_version}")
    run_id = tracker.resolve_version(ALIGNER, candidate_version).run_id
    if run_id:
        _log_to_run(tracker, run_id, result, files, decision)
    if promoted:
        tracker.set_alias(ALIGNER, config.alias, candidate_version)
        log(f"{ALIGNER}@{config.alias} = v{candidate_version}")
    return EvaluationOutcome(result, decision, files, promoted, candidate_version,
                             champion_version, champion_result)
