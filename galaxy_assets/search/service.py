"""Ready-to-query objects built from the settings: what the CLI, the evaluation and the web
page share, so that they all serve the same table with the same models.

:func:`open_search` opens ``galaxy_index`` (``search.uri`` / ``search.table``), loads from the
MLflow registry the aligner version that made the table's vectors (so query vectors and row
vectors always come from the same heads), and builds the configured text embedder.
:func:`build_rater` gives the re-ranking rater of the configured captioner backend.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from galaxy_assets.runtime import Home
from galaxy_assets.search.errors import IndexMismatchError, SearchError
from galaxy_assets.settings import Settings, load_settings

log = logging.getLogger(__name__)

__all__ = [
    "aligner_of_table",
    "build_rater",
    "build_text_embedder_from",
    "open_search",
    "tracker_for",
]

_VERSION = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)/v(?P<version>\d+)$")


def tracker_for(home: Home, settings: Settings | None = None):
    """The MLflow tracker the graph registers models in (:meth:`Settings.tracking_location`:
    the cluster profile's server, ``MLFLOW_TRACKING_URI``, or the home's SQLite store)."""
    from galaxy_assets.tracking import Tracker

    uri, artifacts = (settings or load_settings()).tracking_location(home)
    return Tracker(uri, artifacts)


def build_text_embedder_from(settings: Settings, device: str = "cpu"):
    """The query-time text embedder of ``settings.text_embedder`` (the one the aligner was
    trained with, unless the settings changed since — :class:`GalaxySearch` then refuses
    text queries), without the section's request budget, which is for embedding runs."""
    from galaxy_assets.embedding.text import build_text_embedder

    cfg = settings.text_embedder
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    return build_text_embedder(
        cfg.backend,
        model=cfg.model or None,
        base_url=cfg.base_url or None,
        api_key=key,
        # no request budget: it counts over the client's life, and a query embedder lives as
        # long as the server (a budget spent once would refuse every later query)
        **cfg.model_dump(include={"batch_size", "dim", "concurrency", "timeout_s",
                                  "max_retries"}),
        device=device,
    )


def aligner_of_table(table: Any) -> tuple[str, int]:
    """``(registered name, version)`` of the aligner whose vectors fill ``table``."""
    from galaxy_assets.search.table import column_counts

    versions = sorted(v for v in column_counts(table, "aligner_version") if v)
    if not versions:
        raise SearchError(f"{table.name} is empty: materialize galaxy_index for some shards first")
    if len(versions) > 1:
        raise IndexMismatchError(
            f"{table.name} mixes vectors of {versions}: a re-index is under way or failed "
            "half-way; wait for it, or run reindex_job over every shard"
        )
    match = _VERSION.match(versions[0])
    if match is None:
        raise SearchError(f"{table.name}: aligner_version {versions[0]!r} is not '<name>/v<N>'")
    return match["name"], int(match["version"])


def open_search(
    *,
    home: Home | None = None,
    settings: Settings | None = None,
    image_queries: bool = False,
    serving_index: bool | str = "auto",
):
    """A :class:`~galaxy_assets.search.query.GalaxySearch` over the configured table, with the
    table's own aligner version and the configured text embedder; ``image_queries`` also
    builds the image encoder the aligner was trained on (for FITS/PNG query files)."""
    from galaxy_assets.alignment.errors import AlignmentError
    from galaxy_assets.alignment.model import load_aligner
    from galaxy_assets.search.query import GalaxySearch
    from galaxy_assets.search.table import open_table

    settings = settings or load_settings()
    home = home or settings.home_folder()
    table = open_table(settings.lancedb_location(home), name=settings.search.table)
    name, version = aligner_of_table(table)
    tracker = tracker_for(home, settings)
    try:
        aligner = load_aligner(tracker, name, version)
    except AlignmentError as exc:
        raise IndexMismatchError(
            f"{table.name} holds vectors of {name}/v{version}, which the model registry "
            f"({getattr(tracker, 'tracking_uri', 'unknown')}) cannot give: {exc}. Point the "
            "home (GALAXY_ASSETS_HOME) or the MLflow settings at the registry that trained "
            "it, or rebuild the index with the current champion (index_job)"
        ) from exc
    encoder = None
    if image_queries:
        encoder = _image_encoder_for(aligner, tracker, settings)
    return GalaxySearch(
        table,
        text_embedder=build_text_embedder_from(settings),
        aligner=aligner,
        image_encoder=encoder,
        serving_index=serving_index,
    )


def _image_encoder_for(aligner: Any, tracker: Any, settings: Settings | None = None):
    """The image encoder named by the aligner's training lineage: a registry model is rebuilt
    from its version; another encoder (timm, AION) from the settings' ``image_encoder``
    section, which must name the same encoder (same weights, preprocessing and views)."""
    from galaxy_assets.embedding.image import (
        build_image_encoder,
        image_encoder_from_settings,
        split_tta,
    )
    from galaxy_assets.runtime import select_device

    encoder_id = str(aligner.config.image_encoder or "")
    base_id, tta = split_tta(encoder_id)
    match = re.match(r"^registry:(?P<name>[^/]+)/v(?P<version>\d+)$", base_id)
    if match is not None:
        return build_image_encoder(
            "registry",
            tta=tta,
            model_name=match["name"],
            alias=int(match["version"]),
            tracker=tracker,
        )
    settings = settings or load_settings()
    if settings.image_encoder.kind == "registry":
        raise SearchError(
            f"image-file queries need the image encoder {encoder_id!r} the aligner was trained "
            "on, but the settings' image_encoder is the registry model: set image_encoder "
            "(kind, name, checkpoint or model, tta) as it was when the vectors were made, or "
            "query by object_id instead"
        )
    encoder = image_encoder_from_settings(
        settings.image_encoder,
        tracker=tracker,
        device=select_device(settings.compute.device),
        dtype=settings.compute.dtype,
    )
    if encoder.encoder_id != encoder_id:
        raise SearchError(
            f"image-file queries need the image encoder {encoder_id!r} the aligner was trained "
            f"on; the settings' image_encoder builds {encoder.encoder_id!r}: set it as it was "
            "when the vectors were made, or query by object_id instead"
        )
    return encoder


def reranker_id(settings: Settings | None = None, depth: int | None = None) -> str:
    """What re-ranks under ``settings``, as an evaluation records it: the describer's model,
    template hash and rating revision, or a VLM backend's model and rating prompt, then how
    many top results it re-orders (``depth``; default the settings' ``search.k_rerank``). A
    demo rerun re-evaluates when it changes, so re-ranked figures never come from an older
    rater or another depth."""
    from galaxy_assets.captioning.rating import DEFAULT_RATE_PROMPT, RATING_REVISION

    settings = settings or load_settings()
    cfg = settings.captioner
    top = f"+top{int(depth or settings.search.k_rerank)}"
    if cfg.backend == "morphology":
        from galaxy_assets.captioning.describer import MorphologyDescriber

        describer = MorphologyDescriber()
        return f"{describer.model_id}@{describer.prompt_sha}+rating-r{RATING_REVISION}{top}"
    return f"{cfg.backend}:{cfg.model}+{DEFAULT_RATE_PROMPT}{top}"


def build_rater(settings: Settings | None = None, text_embedder: Any | None = None):
    """The re-ranking rater of ``settings.captioner``: the describer rates from its feature
    scores when the query names a feature it scores (arms, bar, ring, merger, lens, edge-on),
    else compares fresh descriptions with the query in text-embedding space; VLM backends
    answer the rating prompt (``prompts/rate_v1.txt``)."""
    from galaxy_assets.captioning.factory import build_captioner
    from galaxy_assets.captioning.rating import DescriberRater

    settings = settings or load_settings()
    cfg = settings.captioner
    if cfg.backend == "morphology":
        return DescriberRater(text_embedder or build_text_embedder_from(settings))
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    captioner = build_captioner(
        cfg.backend,
        model=cfg.model,
        base_url=cfg.base_url,
        api_key=key,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        image_size=cfg.image_size,
        concurrency=cfg.concurrency,
        # no request budget: it counts over the client's life, and a server's rater lives
        # across queries (it stopped re-ranking for good once spent); each query's requests
        # are bounded by its re-ranking depth (at most search.k_rerank, 200)
        request_budget=None,
        batch_size=cfg.batch_size,
        device=settings.compute.device,
        dtype=settings.compute.dtype,
    )
    if not hasattr(captioner, "rate"):
        raise SearchError(f"captioner backend {cfg.backend!r} cannot rate galaxies for re-ranking")
    return captioner
