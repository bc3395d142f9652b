"""The search aligner (AION-Search): projection heads that map frozen image-encoder vectors and
caption vectors into one space, trained contrastively on cached embeddings.

* :mod:`~galaxy_assets.alignment.heads` — the residual-MLP projection head;
* :mod:`~galaxy_assets.alignment.loss` — symmetric InfoNCE with a learned temperature;
* :mod:`~galaxy_assets.alignment.metrics` — recall@k and median rank;
* :mod:`~galaxy_assets.alignment.data` — caption ↔ image pairs, the object-hash split;
* :mod:`~galaxy_assets.alignment.model` — :class:`AlignedModel`, loading, ``project_shard``;
* :mod:`~galaxy_assets.alignment.train` — ``train_aligner`` and ``register_aligner``.

Plain Python/PyTorch; knows nothing of Dagster.
"""

from galaxy_assets.alignment.data import MIN_PAIRS, PairedData, prepare_pairs, split_by_object
from galaxy_assets.alignment.errors import AlignmentError
from galaxy_assets.alignment.heads import ProjectionHead
from galaxy_assets.alignment.loss import clip_loss, contrastive_loss
from galaxy_assets.alignment.metrics import retrieval_metrics
from galaxy_assets.alignment.model import (
    CODE_REF,
    PAPER_MODEL_CONFIG,
    AlignedModel,
    AlignerConfig,
    ProjectStats,
    build_from_config,
    encode_queries,
    load_aligner,
    project_shard,
)
from galaxy_assets.alignment.train import (
    PAPER_TRAIN_CONFIG,
    AlignmentResult,
    RegisteredAligner,
    TrainConfig,
    register_aligner,
    train_aligner,
    train_on_pairs,
)

__all__ = [
    "CODE_REF",
    "MIN_PAIRS",
    "PAPER_MODEL_CONFIG",
    "PAPER_TRAIN_CONFIG",
    "AlignedModel",
    "AlignerConfig",
    "AlignmentError",
    "AlignmentResult",
    "PairedData",
    "ProjectStats",
    "ProjectionHead",
    "RegisteredAligner",
    "TrainConfig",
    "build_from_config",
    "clip_loss",
    "contrastive_loss",
    "encode_queries",
    "load_aligner",
    "prepare_pairs",
    "project_shard",
    "register_aligner",
    "retrieval_metrics",
    "split_by_object",
    "train_aligner",
    "train_on_pairs",
]
