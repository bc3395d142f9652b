"""`search_evaluation`: search quality against labels, the image-similarity and random
baselines, and the champion gate that decides whether the candidate aligner may serve."""

import dagster as dg
import polars as pl
from dagster_polars import DataFramePartitions

from galaxy_assets.defs.execution import gpu_step
from galaxy_assets.defs.metadata import png_metadata
from galaxy_assets.defs.resources import (
    ComputeResource,
    HomeResource,
    MLflowResource,
    SearchIndexResource,
    TextEmbedderResource,
)
from galaxy_assets.evaluation.pipeline import EvaluationConfig, run_search_evaluation
from galaxy_assets.evaluation.report import REPORT_VERSION

ALL = dg.AssetIn(partition_mapping=dg.AllPartitionMapping(),
                 metadata={"allow_missing_partitions": True})
GATE = "no_regression_vs_champion"


class SearchEvaluationConfig(dg.Config):
    targets_file: str = ""  # YAML of targets and query phrasings; empty: the defaults
    vote_catalogue: str = ""  # Galaxy Zoo votes (object_id or ra/dec + counts); empty: truth
    lens_catalogue: str = ""  # lens catalogue (ra, dec[, grade]); empty: truth
    lens_target: str = "lenses"  # the binary target (in targets_file) the lens catalogue labels
    match_radius_arcsec: float = 1.0
    rerank: bool = True  # also score semantic search re-ranked by the configured captioner
    # top semantic results re-ranked; 0: the search settings' k_rerank (100 by default), so the
    # report measures the re-ranking `galaxy-assets search --rerank` gives
    rerank_depth: int = 0
    # re-rank every query phrasing, so the per-phrasing table has both text methods; False:
    # the primary phrasing only (with a VLM rater, a third of the requests)
    rerank_phrasings: bool = True
    n_boot: int = 500
    n_sigma: float = 1.0  # a target fails the gate when nDCG@10 drops by more than n_sigma σ


@dg.asset(
    group_name="search", kinds={"mlflow", "polars", "pytorch"}, **gpu_step(),
    ins={"image_embeddings": ALL, "raw_cutouts": ALL,
         # only which galaxies are captioned (the report's caption split, less the aligner's
         # validation galaxies)
         "caption_embeddings": dg.AssetIn(metadata={"columns": ["object_id"]})},
    check_specs=[dg.AssetCheckSpec(GATE, asset="search_evaluation", blocking=True,
                                   description="The candidate aligner's nDCG@10 drops on no "
                                   "target by more than its bootstrap uncertainty.")],
)
def search_evaluation(
    context: dg.AssetExecutionContext, config: SearchEvaluationConfig,
    aligned_model: pl.DataFrame, image_embeddings: DataFramePartitions,
    raw_cutouts: DataFramePartitions, caption_embeddings: pl.DataFrame, home: HomeResource,
    compute: ComputeResource, mlflow: MLflowResource, text_embedder: TextEmbedderResource,
    search_index: SearchIndexResource,
):
    """nDCG@10/100, recall and precision for semantic search (with and without re-ranking),
    image similarity and random on every target, and semantic nDCG@10 on galaxies without
    and with a training caption; a Markdown report with plots and example grids, logged to the
    aligner's MLflow run. The candidate becomes
    `search-aligner@champion` only when the blocking gate passes."""
    from galaxy_assets.search.service import build_rater, reranker_id
    from galaxy_assets.settings import load_settings

    for name, parts in (("image_embeddings", image_embeddings), ("raw_cutouts", raw_cutouts)):
        if not parts:
            raise dg.Failure(f"search_evaluation: no {name} partition is materialized; "
                             "materialize shard_embeddings_job (and survey_job) first")
    settings = load_settings()
    depth = config.rerank_depth or settings.search.k_rerank
    reranker = reranker_id(settings, depth) if config.rerank else None
    run_cfg = EvaluationConfig(**(config.model_dump() | {"rerank_depth": depth}),
                               rerank_samples=settings.search.rerank_samples,
                               alias=search_index.aligner_alias)
    tracker = mlflow.tracker(home.home())
    embedder = text_embedder.build(compute)
    images = pl.concat(list(image_embeddings.values()))
    trained, held_out = _training_caption_ids(
        tracker, aligned_model, caption_embeddings["object_id"], images["object_id"], context.log)
    outcome = run_search_evaluation(
        candidate_version=int(aligned_model["version"][0]),
        image_embeddings=images,
        manifest=pl.concat(list(raw_cutouts.values()), how="diagonal_relaxed"),
        tracker=tracker, text_embedder=embedder,
        rater=build_rater(settings, text_embedder=embedder) if config.rerank else None,
        reports=home.home().reports / "search_evaluation", config=run_cfg,
        index_version=_index_version(home, search_index),
        reranker=reranker, captioned_ids=trained,
        log=context.log.info,
    )
    decision = outcome.decision
    metadata = {
        "report": dg.MetadataValue.md(outcome.files.text),
        "report_path": dg.MetadataValue.path(str(outcome.files.markdown)),
        "summary": dg.MetadataValue.json(outcome.result.summary()),
        "gate": dg.MetadataValue.md(decision.to_markdown()),
        "promoted": outcome.promoted, "candidate_version": outcome.candidate_version,
        "champion_version": outcome.champion_version or 0,
        "reranker": reranker or "none", "report_version": REPORT_VERSION,
        "caption_split_training_galaxies": len(trained),
        "caption_split_validation_galaxies": len(held_out),
        **{k.replace("/", "__"): v for k, v in outcome.result.flat_metrics().items()
           if "ndcg_at_10" in k and not k.endswith("_std")},
    }
    for name, path in outcome.files.plots.items():
        metadata.update(png_metadata(path, key=f"plot_{name}"))
    for target, path in outcome.files.grids.items():  # the report's example grids, half size
        metadata.update(png_metadata(path, key=f"grid_{target}", max_width=548))
    yield dg.Output(outcome.result.to_frame(), metadata=metadata)
    yield dg.AssetCheckResult(
        check_name=GATE, passed=decision.passed, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(decision.reasons)[:1000],
        metadata={"promoted": outcome.promoted, "candidate_version": outcome.candidate_version,
                  "gate": dg.MetadataValue.md(decision.to_markdown())},
    )


def _training_caption_ids(
    tracker, aligned_model: pl.DataFrame, caption_ids: pl.Series, image_ids: pl.Series, log,
) -> tuple[list[str], list[str]]:
    """(trained on, held out): the captioned galaxies the candidate trained on and the
    validation galaxies it held out, split with the settings its MLflow run records
    (``train.val_fraction``, ``train.min_validation``, ``train.split_salt``; TrainConfig's
    defaults where the run lacks one). Held-out galaxies were never trained on: the caption
    split counts them as without a training caption."""
    from galaxy_assets.alignment.train import TrainConfig
    from galaxy_assets.evaluation.caption_split import training_split

    run_id = (str(aligned_model["run_id"][0])
              if "run_id" in aligned_model.columns and aligned_model.height else None)
    params: dict[str, str] = {}
    if run_id:
        try:
            params = dict(tracker.client.get_run(run_id).data.params)
        except Exception as exc:  # noqa: BLE001 - the split is a report detail: defaults
            log.warning(f"caption split: could not read the aligner's run {run_id} ({exc})")
    settings = {"val_fraction": float, "min_validation": int, "split_salt": str}
    missing = [k for k in settings if f"train.{k}" not in params]
    if missing:
        log.warning(f"caption split: the aligner's run {run_id or '(none)'} records no "
                    f"{', '.join(missing)}; splitting with TrainConfig's defaults")
    value = {k: cast(params[f"train.{k}"]) if f"train.{k}" in params
             else getattr(TrainConfig, k) for k, cast in settings.items()}
    trained, held_out = training_split(
        caption_ids, image_ids, val_fraction=value["val_fraction"],
        min_validation=value["min_validation"], salt=value["split_salt"])
    recorded = (params.get("data.n_train_objects"), params.get("data.n_val_objects"))
    if None not in recorded and (int(recorded[0]), int(recorded[1])) != (len(trained),
                                                                         len(held_out)):
        log.warning(f"caption split: {len(trained)} training and {len(held_out)} validation "
                    f"galaxies, where the aligner's run recorded {recorded[0]} and "
                    f"{recorded[1]}: its captions or image vectors changed since it trained, "
                    "so a few galaxies may sit in the wrong group")
    log.info(f"caption split: {len(trained)} galaxies with a training caption; "
             f"{len(held_out)} captioned validation galaxies count as without one")
    return trained, held_out


def _index_version(home: HomeResource, search_index: SearchIndexResource) -> int | None:
    from galaxy_assets.search.table import connect, table_exists, table_version

    db = connect(search_index.location(home.home()))
    if not table_exists(db, search_index.table):
        return None
    return table_version(db.open_table(search_index.table))


evaluation_job = dg.define_asset_job(
    "evaluation_job", selection=[search_evaluation],
    description="Evaluate the candidate aligner against the champion and the baselines; "
    "promote it when the gate passes.",
)
