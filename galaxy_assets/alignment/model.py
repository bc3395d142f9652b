"""The search aligner: an image head and a text head into one space, plus a learned temperature.

:class:`AlignedModel` is rebuilt from a JSON-able :class:`AlignerConfig` by
:func:`build_from_config` (the registry's loader reference :data:`CODE_REF`), so the MLflow
registry stores it as a state dict plus that config, never as a pickle.

* ``embed_images(vectors)`` — image-encoder vectors (N, image_dim) → unit search vectors;
* ``embed_texts(vectors)`` — text-embedder vectors (N, text_dim) → unit search vectors;
* ``dim=`` truncates to a Matryoshka width the model was trained for, then re-normalises.

The config also records the ids of the image encoder and text embedder the heads were trained
on; :func:`project_shard` and :func:`encode_queries` refuse vectors made by any other.
Both embed functions run in float32 in eval mode, so a model reloaded in a fresh process gives
bit-identical vectors for the same inputs and batch size on the same machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from galaxy_assets.alignment.errors import AlignmentError
from galaxy_assets.alignment.heads import ProjectionHead
from galaxy_assets.alignment.loss import INIT_LOGIT_SCALE, MAX_LOGIT_SCALE

if TYPE_CHECKING:
    import polars as pl

    from galaxy_assets.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = [
    "CODE_REF",
    "PAPER_MODEL_CONFIG",
    "AlignedModel",
    "AlignerConfig",
    "ProjectStats",
    "build_from_config",
    "encode_queries",
    "load_aligner",
    "project_shard",
]

CODE_REF = "galaxy_assets.alignment.model:build_from_config"
REGISTERED_NAME = "search-aligner"


@dataclass
class AlignerConfig:
    """Everything needed to rebuild an :class:`AlignedModel` (JSON-able via ``to_dict``).

    ``image_hidden_dim`` / ``text_hidden_dim`` default to ``hidden_dim``. ``matryoshka_dims``:
    widths the loss also trains (e.g. ``[64, 128]`` beside ``output_dim`` 256), any of which
    can serve as a smaller search vector. ``image_encoder`` / ``text_embedder``: the ids of the
    vectors the heads were trained on (set by training). ``n_members``: an ensemble of this many
    independently trained head pairs (different seeds), each ``output_dim / n_members`` wide; a
    search vector is the members' unit vectors side by side, scaled by 1/sqrt(n_members), so its
    cosine similarity is the mean of the members' (see :class:`AlignedModel`).
    """

    image_dim: int
    text_dim: int
    output_dim: int = 256
    hidden_dim: int = 512
    image_hidden_dim: int | None = None
    text_hidden_dim: int | None = None
    n_blocks: int = 2
    dropout: float = 0.1
    matryoshka_dims: list[int] | None = None
    image_encoder: str | None = None
    text_embedder: str | None = None
    n_members: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.n_members, bool) or int(self.n_members) < 1:
            raise AlignmentError(f"aligner config: n_members={self.n_members!r}; it must be >= 1")
        self.n_members = int(self.n_members)
        if self.n_members > 1 and int(self.output_dim) % self.n_members:
            raise AlignmentError(
                f"aligner config: output_dim={self.output_dim} must be a multiple of "
                f"n_members={self.n_members} (each member gives output_dim / n_members)"
            )
        if self.n_members > 1 and self.matryoshka_dims:
            raise AlignmentError(
                "aligner config: matryoshka_dims cannot be combined with n_members > 1 (a prefix "
                "of an ensemble's vector is one member's, not a smaller search vector)"
            )
        for name in ("image_dim", "text_dim", "output_dim", "hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) < 1:
                raise AlignmentError(f"aligner config: {name}={value!r}; it must be >= 1")
        if int(self.n_blocks) < 0:
            raise AlignmentError(f"aligner config: n_blocks={self.n_blocks}; it must be >= 0")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise AlignmentError(f"aligner config: dropout={self.dropout}; use 0 <= dropout < 1")
        if self.matryoshka_dims:
            dims = sorted({int(d) for d in self.matryoshka_dims})
            if dims[0] < 1 or dims[-1] > int(self.output_dim):
                raise AlignmentError(
                    f"aligner config: matryoshka_dims={self.matryoshka_dims} must lie in "
                    f"1..output_dim ({self.output_dim})"
                )
            self.matryoshka_dims = dims
        else:
            self.matryoshka_dims = None

    def member(self) -> AlignerConfig:
        """The configuration of one ensemble member (itself when ``n_members`` is 1)."""
        if self.n_members == 1:
            return self
        return AlignerConfig.from_dict(
            {**self.to_dict(), "n_members": 1, "output_dim": int(self.output_dim) // self.n_members}
        )

    @property
    def widths(self) -> list[int]:
        """The trained widths: the Matryoshka dims plus the full output width."""
        return sorted(set(self.matryoshka_dims or []) | {int(self.output_dim)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlignerConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise AlignmentError(
                f"aligner config has unknown keys {unknown}; known keys are {sorted(known)} "
                "(was it written by a newer galaxy-assets?)"
            )
        return cls(**dict(data))


# The graph's search aligner (the `aligned_model` asset's defaults): an ensemble of four head
# pairs, each 256 wide inside and 64 out, side by side a 256-d search vector. On the demo survey
# single aligners swung by up to ±0.15 nDCG@10 between training seeds (mergers 0.48–0.61 over
# five); the ensemble's mean similarity is steadier and at least as good as the seeds' mean on
# every target, in 1.6x the training time of one 512-wide aligner at 60 epochs (5,000 captions:
# 79 s against 49 s; at the default 80 epochs the ensemble took 112.6 s; benchmarks/RESULTS.md).
SEARCH_MODEL_CONFIG: dict[str, Any] = {"output_dim": 256, "hidden_dim": 256, "n_members": 4}

# The AION-Search paper's heads (AION-1-Base 768-d images, text-embedding-3-large 3072-d texts).
PAPER_MODEL_CONFIG: dict[str, Any] = {
    "image_dim": 768,
    "text_dim": 3072,
    "output_dim": 1024,
    "hidden_dim": 1024,
    "image_hidden_dim": 768,
    "text_hidden_dim": 1024,
    "n_blocks": 2,
    "dropout": 0.1,
}


class AlignedModel(nn.Module):
    """Image head + text head + learned logit scale (see the module docstring)."""

    def __init__(self, config: AlignerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.aligner_version: str | None = None  # "search-aligner/v3" once registered/loaded
        if c.n_members > 1:
            # an ensemble: independently trained members (train_on_pairs trains each alone)
            self.members = nn.ModuleList(AlignedModel(c.member()) for _ in range(c.n_members))
            return
        self.image_head = ProjectionHead(
            c.image_dim, c.output_dim, c.image_hidden_dim or c.hidden_dim, c.n_blocks, c.dropout
        )
        self.text_head = ProjectionHead(
            c.text_dim, c.output_dim, c.text_hidden_dim or c.hidden_dim, c.n_blocks, c.dropout
        )
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE, dtype=torch.float32))

    @property
    def is_ensemble(self) -> bool:
        return self.config.n_members > 1

    # -- training-time API -------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` clamped to at most 100 (an ensemble: the members' mean)."""
        if self.is_ensemble:
            return torch.stack([m.scale() for m in self.members]).mean()
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the parameter itself at most ``log(100)`` (call after each optimiser step)."""
        if self.is_ensemble:
            for m in self.members:
                m.clamp_logit_scale_()
            return
        self.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))

    def project(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """Raw projection of image (``side="image"``) or text vectors. An ensemble gives its
        members' unit vectors side by side (norm sqrt(n_members)): normalised, its cosine
        similarity is the mean of the members'."""
        if self.is_ensemble:
            return torch.cat(
                [torch.nn.functional.normalize(m.project(x, side), dim=-1) for m in self.members],
                dim=-1,
            )
        head = self.image_head if side == "image" else self.text_head
        return head(x, normalize=False)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw (unnormalised) projections of both sides and the clamped scale."""
        return self.project(image, "image"), self.project(text, "text"), self.scale()

    # -- inference API -------------------------------------------------------------------
    def _check_dim(self, dim: int | None) -> int:
        full = int(self.config.output_dim)
        if dim is None:
            return full
        dim = int(dim)
        if not 1 <= dim <= full:
            raise AlignmentError(f"dim={dim}: the aligner's vectors have {full} dimensions")
        if self.config.n_members > 1 and dim != full:
            # a prefix of an ensemble vector is its first members' vectors, not a smaller
            # search vector of the whole ensemble
            raise AlignmentError(
                f"dim={dim}: this aligner is an ensemble of {self.config.n_members} members "
                f"whose vectors are {full} wide side by side; search with all {full} "
                "(a shorter vector would be only its first members')")
        if dim not in self.config.widths:
            log.warning(
                "truncating to %d dimensions, which the aligner was not trained for (trained "
                "widths: %s); retrieval may suffer",
                dim,
                self.config.widths,
            )
        return dim

    @torch.no_grad()
    def _embed(
        self,
        side: str,
        vectors: np.ndarray | torch.Tensor,
        in_dim: int,
        what: str,
        batch_size: int,
        dim: int | None,
    ) -> np.ndarray:
        width = self._check_dim(dim)
        x = vectors if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
        if x.ndim != 2 or x.shape[1] != in_dim:
            raise AlignmentError(
                f"embed_{what}: vectors of shape {tuple(x.shape)}; this aligner takes (N, {in_dim}) "
                f"{'image-encoder' if what == 'images' else 'text-embedder'} vectors"
            )
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = np.empty((x.shape[0], width), np.float32)
        try:
            for s in range(0, x.shape[0], int(batch_size)):
                part = x[s : s + int(batch_size)]
                if not isinstance(part, torch.Tensor):  # copy: inputs may be read-only views
                    part = torch.from_numpy(np.array(part, dtype=np.float32))
                xb = part.to(device=device, dtype=torch.float32)
                z = self.project(xb, side)[:, :width].float()
                z = torch.nn.functional.normalize(z, dim=-1)
                out[s : s + xb.shape[0]] = z.cpu().numpy()
        finally:
            self.train(was_training)
        return out

    def embed_images(
        self, vectors: np.ndarray | torch.Tensor, *, batch_size: int = 8192, dim: int | None = None
    ) -> np.ndarray:
        """Unit search vectors (N, dim or output_dim) float32 for image-encoder vectors."""
        return self._embed("image", vectors, self.config.image_dim, "images", batch_size, dim)

    def embed_texts(
        self, vectors: np.ndarray | torch.Tensor, *, batch_size: int = 8192, dim: int | None = None
    ) -> np.ndarray:
        """Unit search vectors (N, dim or output_dim) float32 for text-embedder vectors."""
        return self._embed("text", vectors, self.config.text_dim, "texts", batch_size, dim)

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()


def build_from_config(config: Mapping[str, Any] | AlignerConfig) -> AlignedModel:
    """Rebuild an :class:`AlignedModel` (random weights; load a state dict next). This is the
    registry's loader reference (:data:`CODE_REF`)."""
    cfg = config if isinstance(config, AlignerConfig) else AlignerConfig.from_dict(config)
    return AlignedModel(cfg)


def load_aligner(
    tracker: Tracker,
    name: str = REGISTERED_NAME,
    alias_or_version: str | int = "champion",
    *,
    device: str = "cpu",
) -> AlignedModel:
    """The registered aligner at an alias or version, with ``aligner_version`` set to
    ``"<name>/v<version>"`` (the alias is resolved once, so version and weights agree)."""
    from galaxy_assets.tracking import TrackingError

    try:
        mv = tracker.resolve_version(name, alias_or_version)
        module, _ = tracker.load_torch_artifact(
            mv.source, device=device, what=f"{name} version {mv.version}"
        )
    except TrackingError as exc:
        raise AlignmentError(
            f"cannot load the search aligner {name}@{alias_or_version}: {exc}. Materialize "
            "aligned_model first (it registers the 'candidate' alias)"
        ) from exc
    if not isinstance(module, AlignedModel):
        raise AlignmentError(
            f"{name} version {mv.version} rebuilds a {type(module).__name__}, not an "
            "AlignedModel; is the name right?"
        )
    module.aligner_version = f"{name}/v{mv.version}"
    return module


def _check_id(kind: str, got: Sequence[str], want: str | None, model: AlignedModel) -> None:
    if want is None:
        return
    other = sorted({g for g in got if g != want})
    if other:
        name = model.aligner_version or "this aligner"
        asset = (
            "image_embeddings"
            if kind == "image encoder"
            else "caption_embeddings / the query embedder"
        )
        raise AlignmentError(
            f"vectors made by {kind} {other[0]!r} cannot go through {name}, which was trained on "
            f"{kind} {want!r}; re-materialize {asset} with {want!r}, or retrain the aligner on "
            f"{other[0]!r}"
        )


@dataclass
class ProjectStats:
    """What :func:`project_shard` did (fill-in object)."""

    n_in: int = 0
    n_out: int = 0
    n_skipped: int = 0
    skipped_object_ids: list[str] = field(default_factory=list)


def project_shard(
    image_embeddings: pl.DataFrame,
    aligned: AlignedModel,
    *,
    aligner_version: str | None = None,
    batch_size: int = 8192,
    dim: int | None = None,
    stats: ProjectStats | None = None,
) -> pl.DataFrame:
    """Search vectors for one shard: ``object_id``, ``aligner_version``, ``vector``
    (Array[Float32, dim or output_dim], unit norm), in the input's row order.

    ``image_embeddings`` is the shard's ``image_embeddings`` frame (object_id, encoder, vector);
    its encoder must be the one the aligner was trained on. ``aligner_version`` defaults to
    ``aligned.aligner_version`` (set by :func:`load_aligner`). Rows with non-finite input
    vectors are skipped and counted in ``stats``.
    """
    import polars as pl

    version = aligner_version or aligned.aligner_version
    if not version:
        raise AlignmentError(
            "project_shard needs the aligner version for the search_vectors lineage: load the "
            "aligner with load_aligner(tracker, ...) or pass aligner_version='search-aligner/vN'"
        )
    missing = [c for c in ("object_id", "vector") if c not in image_embeddings.columns]
    if missing:
        raise AlignmentError(
            f"image_embeddings lacks column(s) {missing}; pass the image_embeddings asset's frame"
        )
    if "encoder" in image_embeddings.columns and image_embeddings.height:
        encoders = image_embeddings["encoder"].unique().to_list()
        _check_id("image encoder", encoders, aligned.config.image_encoder, aligned)
    width = aligned._check_dim(dim)
    stats = stats if stats is not None else ProjectStats()
    n = image_embeddings.height
    out = np.empty((n, width), np.float32)
    for s in range(0, n, int(batch_size)):
        part = image_embeddings["vector"].slice(s, int(batch_size)).to_numpy()
        out[s : s + part.shape[0]] = aligned.embed_images(part, batch_size=batch_size, dim=width)
    good = np.isfinite(out).all(axis=1)
    ids = image_embeddings["object_id"].cast(pl.Utf8)
    stats.n_in = n
    if not good.all():
        bad = ids.filter(pl.Series(~good)).to_list()
        stats.skipped_object_ids.extend(bad[:100])
        log.warning(
            "project_shard: %d of %d rows have non-finite vectors (skipped), e.g. %s",
            len(bad),
            n,
            bad[:5],
        )
        out, ids = out[good], ids.filter(pl.Series(good))
    stats.n_out = int(out.shape[0])
    stats.n_skipped = n - stats.n_out
    return pl.DataFrame(
        [ids.alias("object_id"), pl.Series("vector", out, dtype=pl.Array(pl.Float32, width))]
    ).select("object_id", pl.lit(version, dtype=pl.Utf8).alias("aligner_version"), "vector")


def encode_queries(
    texts: Sequence[str], text_embedder: Any, aligned: AlignedModel, *, dim: int | None = None
) -> np.ndarray:
    """Unit search vectors for free-text queries: the text embedder, then the text head of the
    same aligner version. The embedder must be the one the aligner was trained with."""
    embedder_id = str(getattr(text_embedder, "embedder_id", ""))
    _check_id("text embedder", [embedder_id], aligned.config.text_embedder, aligned)
    return aligned.embed_texts(text_embedder.embed(list(texts)), dim=dim)
