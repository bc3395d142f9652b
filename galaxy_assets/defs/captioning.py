"""Caption assets: which galaxies get a caption, the captions, and their text vectors."""

import dagster as dg
import polars as pl
from dagster_polars import DataFramePartitions

from galaxy_assets.alignment.data import CAPTION_VIEW, SENTENCE_VIEW, caption_sentences
from galaxy_assets.captioning.factory import LOCAL_BACKENDS
from galaxy_assets.captioning.keywords import keyword_rates
from galaxy_assets.captioning.run import caption_galaxies, current_captions, sample_for_captions
from galaxy_assets.captioning.store import CaptionStore
from galaxy_assets.defs.execution import gpu_step
from galaxy_assets.defs.metadata import all_manifests, reusable_output
from galaxy_assets.defs.resources import (
    CaptionerResource,
    ComputeResource,
    HomeResource,
    SurveyResource,
    TextEmbedderResource,
)
from galaxy_assets.embedding.caption_vectors import embed_captions
from galaxy_assets.settings import load_settings
from galaxy_assets.survey.truth import load_truth
from galaxy_assets.tables import to_markdown

_CAPTIONER = load_settings().captioner  # read once, when the definitions load
# A local VLM runs on the GPU: one such step per GPU at a time (the `gpu` pool).
CAPTION_POOL = "gpu" if _CAPTIONER.backend in LOCAL_BACKENDS else None


class CaptionSampleConfig(dg.Config):
    n: int = _CAPTIONER.sample_size
    seed: int = _CAPTIONER.sample_seed


@dg.asset(
    group_name="captions",
    ins={
        "raw_cutouts": dg.AssetIn(
            partition_mapping=dg.AllPartitionMapping(),
            metadata={"allow_missing_partitions": True},
        )
    },
    kinds={"polars"},
)
def caption_sample(
    context: dg.AssetExecutionContext,
    config: CaptionSampleConfig,
    raw_cutouts: DataFramePartitions,
) -> pl.DataFrame:
    """A seeded random sample of galaxies across all shards that the captioner describes.
    No curation toward rare classes: the sample has the survey's class rates."""
    manifest = all_manifests(raw_cutouts, "caption_sample")
    sample = sample_for_captions(manifest, min(config.n, manifest.height), config.seed)
    context.add_output_metadata(
        {
            "galaxies": sample.height,
            "survey_galaxies": manifest.height,
            "shards": len(raw_cutouts),
            "seed": config.seed,
        }
    )
    return sample


def _caption_store(home: HomeResource) -> CaptionStore:
    return CaptionStore(home.home().root / "captions")


@dg.asset(group_name="captions", kinds={"polars"}, **gpu_step(enabled=CAPTION_POOL is not None))
def vlm_captions(
    context: dg.AssetExecutionContext,
    caption_sample: pl.DataFrame,
    home: HomeResource,
    survey: SurveyResource,
    compute: ComputeResource,
    captioner: CaptionerResource,
) -> pl.DataFrame:
    """Captions of the sample (object_id, caption, backend, model, prompt_sha, source,
    created_at, pixels). Incremental: only galaxies without a caption for the same (backend,
    model, prompt) described from the same pixels (the bands drawn and the crop, e.g.
    "z,r,g@64x64") are described, so a new survey.cutout_size recaptions. Failures go to
    caption_failures with their reason. Imported captions (`galaxy-assets import-captions`) of
    sampled galaxies are included with their source."""
    store = _caption_store(home)
    model = captioner.build(compute)
    # the galaxies that failed before with this captioner
    failures = store.failures()
    failed_before = set(failures.filter(
        (pl.col("backend") == model.backend) & (pl.col("model") == model.model_id)
        & (pl.col("prompt_sha") == model.prompt_sha))["object_id"].to_list())
    try:
        run = caption_galaxies(
            caption_sample,
            model,
            store,
            lambda uri: survey.open(uri),
            batch_size=captioner.batch_size,
        )
    finally:
        model.close()
    ids = caption_sample["object_id"]
    current = current_captions(store.captions(), caption_sample, model.backend, model.model_id,
                               model.prompt_sha)
    if run.attempted and run.captioned == 0 and run.failed == run.attempted:
        reasons = ", ".join(f"{k}: {v}" for k, v in run.failure_reasons.items())
        if current.height and set(run.asked) <= failed_before:
            # a rerun retries only the galaxies that failed before; some fail every time (a
            # blank cutout, a refusal): the sample's other captions still stand
            context.log.warning(f"vlm_captions: the {run.attempted} galaxies retried failed "
                                f"again ({reasons}); {current.height} captions stand")
        else:
            # a wrong key, base_url or model fails every galaxy: say so, not an empty table
            first = store.failures().filter(
                pl.col("object_id").is_in(ids.to_list()) & (pl.col("backend") == model.backend)
                & (pl.col("model") == model.model_id)
                & (pl.col("prompt_sha") == model.prompt_sha))["reason"].tail(1).to_list()
            raise dg.Failure(
                f"vlm_captions: all {run.attempted} caption requests failed ({reasons}); a "
                f"reason: {first[0] if first else 'unknown'}. Check the captioner settings "
                f"(backend {model.backend}, model {model.model_id}); failures are in "
                f"{store.failures_path}",
                metadata={"failure_reasons": dg.MetadataValue.json(run.failure_reasons)},
            )
    metadata = {
        "captions": current.height,
        "sample": caption_sample.height,
        "described_now": run.captioned,
        "failed_now": run.failed,
        "reused": run.skipped_existing,
        # redescribed: of the galaxies asked now (described_now + failed_now), those whose
        # captions by this captioner were all of other pixels (another crop or bands drawn);
        # adopted: captions stored before pixels were recorded, taken as of the current pixels
        "redescribed": run.redescribed,
        "adopted": run.adopted,
        "backend": model.backend,
        "model": model.model_id,
        "prompt_sha": model.prompt_sha,
        "caption_failures": dg.MetadataValue.path(str(store.failures_path)),
        "failure_reasons": dg.MetadataValue.json(run.failure_reasons),
        "examples": dg.MetadataValue.md(to_markdown(current.select("object_id", "caption"), 5)),
    }
    truth = load_truth(caption_sample["shard_uri"].unique().to_list())
    if truth is not None:  # the mock survey: how well do caption words follow the truth?
        rates = keyword_rates(current.select("object_id", "caption"), truth)
        metadata["keyword_rates"] = dg.MetadataValue.md(to_markdown(rates, 30))
        for row in rates.iter_rows(named=True):
            for measure in ("precision", "recall"):
                if row[measure] is not None:  # undefined when a class has no galaxy
                    metadata[f"{measure}_{row['family']}"] = float(row[measure])
    context.add_output_metadata(metadata)
    return current


class CaptionEmbeddingsConfig(dg.Config):
    # also embed each caption's sentences (view "sentence"): the aligner trains on them so
    # that short queries land where captions did
    sentence_views: bool = True


@dg.asset(group_name="captions", kinds={"polars", "pytorch"}, **gpu_step())
def caption_embeddings(
    context: dg.AssetExecutionContext,
    config: CaptionEmbeddingsConfig,
    vlm_captions: pl.DataFrame,
    home: HomeResource,
    compute: ComputeResource,
    text_embedder: TextEmbedderResource,
) -> pl.DataFrame:
    """Unit-normalised text vectors of every caption (view "caption") and of each caption's
    sentences (view "sentence", the aligner's extra training texts), with the embedder's id."""
    embedder = text_embedder.build(compute)
    texts = vlm_captions.with_columns(pl.lit(CAPTION_VIEW).alias("view"))
    if config.sentence_views:
        sentences = caption_sentences(vlm_captions).select(texts.columns)
        texts = pl.concat([texts, sentences])
    fingerprint = _texts_fingerprint(texts)
    vectors = reusable_output(
        context, home.outputs_dir() / "caption_embeddings.parquet", None,
        embedder=embedder.embedder_id, texts_fingerprint=fingerprint)
    reused = vectors is not None
    if vectors is None:
        vectors = embed_captions(texts, embedder)  # the embedder batches by its batch_size
    else:
        context.log.info("captions and text embedder unchanged: vectors reused")
    n_sentences = int((vectors["view"] == SENTENCE_VIEW).sum())
    context.add_output_metadata(
        {
            "captions": vectors.height - n_sentences,
            "sentence_views": n_sentences,
            "distinct_texts": texts["caption"].n_unique(),
            "embedder": embedder.embedder_id,
            "dim": embedder.dim,
            "texts_fingerprint": fingerprint,
            "reused": reused,
        }
    )
    return vectors


def _texts_fingerprint(texts: pl.DataFrame) -> str:
    """A short hash of every (object_id, view, text) to embed and of the captioner that wrote
    it (backend, model, prompt): equal hashes, equal inputs. The captioner is part of it because
    the reused vectors carry it into the aligner's lineage."""
    import hashlib

    lineage = [c for c in ("backend", "model", "prompt_sha") if c in texts.columns]
    rows = texts.select("object_id", "view", "caption", *lineage).sort(
        "object_id", "view", "caption", *lineage)
    digest = hashlib.sha256()
    for column in rows.columns:
        digest.update(rows[column].cast(pl.Utf8).fill_null("").str.join("\x1f").item().encode())
    return digest.hexdigest()[:16]


captions_job = dg.define_asset_job(
    "captions_job",
    selection=[caption_sample, vlm_captions, caption_embeddings],
    description="Sample galaxies, caption them with the configured backend, embed the captions.",
)
