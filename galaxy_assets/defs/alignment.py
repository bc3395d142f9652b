"""Image embeddings, the aligned search model (AION-Search heads), and search vectors."""

import dagster as dg
import polars as pl
from dagster_polars import DataFramePartitions, LazyFramePartitions

from galaxy_assets.alignment.model import (
    SEARCH_MODEL_CONFIG,
    ProjectStats,
    load_aligner,
    project_shard,
)
from galaxy_assets.alignment.train import TrainConfig, register_aligner, train_aligner
from galaxy_assets.defs.execution import gpu_step, shard_backfill_policy
from galaxy_assets.defs.metadata import reusable_output, scalar_metadata
from galaxy_assets.defs.partitions import shard_partitions
from galaxy_assets.defs.resources import (
    ComputeResource,
    HomeResource,
    ImageEncoderResource,
    MLflowResource,
    SearchIndexResource,
    TextEmbedderResource,
)
from galaxy_assets.defs.shards import each_shard, read_input, settle
from galaxy_assets.embedding.image import (
    EmbedStats,
    embed_shard,
    manifest_vectors,
    open_shard_for,
)
from galaxy_assets.survey.manifest import shard_fingerprint


class ImageEmbeddingsConfig(dg.Config):
    force: bool = False  # re-embed even when the shard and the encoder are unchanged


@dg.asset(group_name="search", partitions_def=shard_partitions, **gpu_step(),
          deps=["morphology_encoder"], kinds={"pytorch", "polars"},
          backfill_policy=shard_backfill_policy())
def image_embeddings(
    context: dg.AssetExecutionContext, config: ImageEmbeddingsConfig,
    raw_cutouts: LazyFramePartitions, home: HomeResource, compute: ComputeResource,
    mlflow: MLflowResource, image_encoder: ImageEncoderResource,
) -> DataFramePartitions:
    """Unit vectors of the frozen image encoder for every galaxy of the shard(s) (object_id,
    encoder, vector), streamed in batches; a backfill runs its shards in one run with the
    encoder loaded once. A shard's previous vectors are reused when neither the shard (its
    fingerprint) nor the encoder (id and version) changed."""
    encoder = image_encoder.build(compute, mlflow.tracker(home.home()))
    folder = home.outputs_dir() / "image_embeddings"
    meta: dict[str, dict] = {}

    def embed(key: str) -> pl.DataFrame:
        manifest = read_input("raw_cutouts", raw_cutouts, key)
        fingerprint = shard_fingerprint(manifest)
        previous = None if config.force else reusable_output(
            context, folder / f"{key}.parquet", key,
            encoder=encoder.encoder_id, shard_fingerprint=fingerprint)
        meta[key] = {"encoder": encoder.encoder_id, "dim": encoder.dim,
                     "shard_fingerprint": fingerprint, "reused": previous is not None}
        if previous is not None:
            context.log.info(f"{key}: shard and encoder {encoder.encoder_id} unchanged: "
                             "vectors reused")
            frame = previous
        else:
            stats = EmbedStats()
            with open_shard_for(encoder, manifest["shard_uri"][0]) as reader:
                vectors = embed_shard(reader, encoder, stats=stats, with_rows=True)
            frame = manifest_vectors(vectors, manifest)
            meta[key].update(scalar_metadata(stats.as_metadata()))
        meta[key]["galaxies"] = frame.height
        return frame

    built, failed = each_shard(context, embed)
    return settle(context, built, failed, meta, outputs=folder)


class AlignerTrainConfig(dg.Config):
    # defaults: SEARCH_MODEL_CONFIG's and TrainConfig's (one source of truth each, measured in
    # galaxy_assets/alignment/)
    output_dim: int = SEARCH_MODEL_CONFIG["output_dim"]  # the search vector's width
    hidden_dim: int = SEARCH_MODEL_CONFIG["hidden_dim"]
    n_members: int = SEARCH_MODEL_CONFIG["n_members"]  # ensemble members (1: a single aligner)
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size
    learning_rate: float = TrainConfig.learning_rate
    temperature_learning_rate: float | None = TrainConfig.temperature_learning_rate
    duplicate_text_threshold: float | None = TrainConfig.duplicate_text_threshold
    select_by: str = TrainConfig.select_by  # caption_loss | view_loss | last
    seed: int = 0


@dg.asset(
    group_name="search", **gpu_step(), kinds={"pytorch", "mlflow"},
    ins={"image_embeddings": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(),
                                        metadata={"allow_missing_partitions": True})},
)
def aligned_model(
    context: dg.AssetExecutionContext, config: AlignerTrainConfig,
    image_embeddings: LazyFramePartitions, caption_embeddings: pl.DataFrame,
    home: HomeResource, compute: ComputeResource, mlflow: MLflowResource,
    text_embedder: TextEmbedderResource, image_encoder: ImageEncoderResource,
) -> pl.DataFrame:
    """Projection heads that map image and caption embeddings into one space (symmetric
    InfoNCE, learned temperature), registered as `search-aligner` with alias `candidate`.
    Vectors from another text embedder or image encoder than the configured ones (stale
    caption embeddings, a moved encoder champion) are refused: queries could not use them."""
    if not image_embeddings:
        raise dg.Failure("aligned_model: no image_embeddings partition is materialized; "
                         "materialize shard_embeddings_job first")
    # which captions it learns from (read now, beside the input just loaded, not after a
    # training run during which they may be materialized again): a rerun retrains when they
    # change (galaxy-assets demo)
    captions = context.instance.get_latest_materialization_event(
        dg.AssetKey("caption_embeddings"))
    texts = {}
    if captions is not None and captions.asset_materialization is not None:
        meta = captions.asset_materialization.metadata
        texts = {f"caption_{k}": meta[k].value for k in ("texts_fingerprint", "embedder")
                 if k in meta}
    # lazily: only the captioned galaxies' vectors are read (train_aligner filters first), not
    # every shard's, which at survey scale would not fit in memory
    images = pl.concat(list(image_embeddings.values()), how="vertical")
    tracker = mlflow.tracker(home.home())
    result = train_aligner(
        images, caption_embeddings,
        model_config={k: getattr(config, k) for k in SEARCH_MODEL_CONFIG},
        train_config={**config.model_dump(exclude=set(SEARCH_MODEL_CONFIG)),
                      "device": compute.torch_device()},
        expected_text_embedder=text_embedder.build(compute).embedder_id,
        expected_image_encoder=image_encoder.expected_id(tracker),
        progress=lambda m: context.log.info(f"aligner epoch: {m}"),
    )
    reg = register_aligner(result, tracker)
    context.add_output_metadata({**scalar_metadata(result.summary()), **texts,
                                 "aligner_version": reg.aligner_version, "run_id": reg.run_id})
    return pl.DataFrame([{"name": reg.name, "version": reg.version, "alias": reg.alias,
                          "aligner_version": reg.aligner_version, "run_id": reg.run_id}])


@dg.asset(group_name="search", partitions_def=shard_partitions, kinds={"pytorch", "polars"},
          backfill_policy=shard_backfill_policy(), deps=["search_evaluation"])
def search_vectors(
    context: dg.AssetExecutionContext, image_embeddings: LazyFramePartitions,
    aligned_model: pl.DataFrame, home: HomeResource, mlflow: MLflowResource,
    search_index: SearchIndexResource,
) -> DataFramePartitions:
    """Aligned image vectors for every galaxy of the shard(s), from the aligner the index serves
    (`search-aligner@champion` by default; before any champion exists, the candidate that
    `aligned_model` registered). A backfill runs all its shards in one run: the aligner is
    loaded once."""
    tracker = mlflow.tracker(home.home())
    alias = search_index.aligner_alias
    if tracker.get_alias_version("search-aligner", alias) is not None:
        aligned, source = load_aligner(tracker, "search-aligner", alias), alias
    else:
        aligned = load_aligner(tracker, "search-aligner", int(aligned_model["version"][0]))
        source = f"candidate (no {alias} yet)"
    meta = {key: {"aligner_version": aligned.aligner_version, "aligner_source": source}
            for key in context.partition_keys}

    def project(key: str) -> pl.DataFrame:
        stats = ProjectStats()
        frame = project_shard(read_input("image_embeddings", image_embeddings, key), aligned,
                              stats=stats)
        meta[key].update({"galaxies": frame.height, "skipped": stats.n_skipped,
                          "skipped_examples": ", ".join(stats.skipped_object_ids[:5])})
        return frame

    built, failed = each_shard(context, project)
    out = settle(context, built, failed, meta,
                 outputs=home.outputs_dir() / "search_vectors")
    context.add_output_metadata({"galaxies": sum(f.height for f in out.values()),
                                 "shards": len(out), "aligner_version": aligned.aligner_version,
                                 "aligner_source": source,
                                 "skipped": sum(int(m.get("skipped", 0)) for m in meta.values())})
    return out
