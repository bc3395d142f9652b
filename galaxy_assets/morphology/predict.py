"""Expected vote fractions and embeddings for every galaxy of a shard.

Output columns (:func:`prediction_columns`):

* ``object_id``, ``row`` (the galaxy's row in the shard);
* one ``vf_<question>_<answer>`` per answer of the tree (``-`` → ``_``), e.g.
  ``vf_has_spiral_arms_yes``: the expected fraction of the volunteers *asked that question*
  who would give that answer (as Galaxy Zoo catalogues report them);
* for the Galaxy Zoo DECaLS tree, summary columns: ``p_smooth``, ``p_featured``,
  ``p_artifact``, ``p_edge_on``, ``p_spiral``, ``p_bar`` (strong + weak), ``p_merger``
  (merger + major disturbance), each the same kind of conditional fraction;
* optionally ``embedding``: the pooled backbone features (fixed-size float32 array).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from galaxy_assets.morphology.decision_tree import DecisionTree
from galaxy_assets.morphology.errors import MorphologyError
from galaxy_assets.morphology.loss import expected_fractions
from galaxy_assets.morphology.model import MorphologyModel

if TYPE_CHECKING:
    from galaxy_assets.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = [
    "SUMMARY_ANSWERS",
    "answer_column",
    "encode_images",
    "load_encoder",
    "predict_images",
    "predict_manifest",
    "predict_shard",
    "prediction_columns",
]

# summary column → the (question, answer) pairs whose expected fractions are added
SUMMARY_ANSWERS: dict[str, tuple[tuple[str, str], ...]] = {
    "p_smooth": (("smooth-or-featured", "smooth"),),
    "p_featured": (("smooth-or-featured", "featured-or-disk"),),
    "p_artifact": (("smooth-or-featured", "artifact"),),
    "p_edge_on": (("disk-edge-on", "yes"),),
    "p_spiral": (("has-spiral-arms", "yes"),),
    "p_bar": (("bar", "strong"), ("bar", "weak")),
    "p_merger": (("merging", "merger"), ("merging", "major-disturbance")),
}


def answer_column(question: str, answer: str) -> str:
    """``vf_<question>_<answer>`` with ``-`` replaced by ``_``."""
    return f"vf_{question}_{answer}".replace("-", "_")


def _summaries(tree: DecisionTree) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, pairs in SUMMARY_ANSWERS.items():
        if all(q in tree and a in tree[q].answers for q, a in pairs):
            out[name] = [tree.answer_index(q, a) for q, a in pairs]
    return out


def prediction_columns(tree: DecisionTree) -> list[str]:
    """The fraction columns predictions carry for ``tree`` (summary first, then per answer)."""
    cols = list(_summaries(tree)) + [answer_column(q.name, a) for q in tree for a in q.answers]
    if len(set(cols)) != len(cols):
        raise MorphologyError(
            f"tree {tree.name!r} gives clashing column names once '-' becomes '_'; rename "
            "its questions or answers"
        )
    return cols


def _device_dtype(device: str, dtype: str) -> tuple[str, torch.dtype]:
    from galaxy_assets.runtime import select_device, select_dtype

    dev = select_device(device)
    return dev, select_dtype(dtype, dev)


@torch.inference_mode()
def _run(
    model: MorphologyModel,
    images: np.ndarray | torch.Tensor,
    device: str,
    dtype: torch.dtype,
    want_fractions: bool,
) -> tuple[np.ndarray | None, np.ndarray]:
    x = torch.as_tensor(images, dtype=torch.float32).to(device, non_blocking=True)
    ctx = (
        torch.autocast(device_type=device.split(":")[0], dtype=dtype)
        if dtype != torch.float32
        else contextlib.nullcontext()
    )
    with ctx:
        feats = model.encode(x)
        conc = model.concentrations(feats) if want_fractions else None
    frac = expected_fractions(conc, model.ranges).cpu().numpy() if conc is not None else None
    return frac, feats.float().cpu().numpy()


def predict_images(
    model: MorphologyModel,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """Expected fractions ``(N, n_answers)`` and features ``(N, D)`` of raw cutouts."""
    dev, dt = _device_dtype(device, dtype)
    model.eval().to(dev)
    fr, fe = [], []
    for s in range(0, len(images), batch_size):
        f, e = _run(model, images[s : s + batch_size], dev, dt, True)
        fr.append(f)
        fe.append(e)
    if not fr:
        return (
            np.zeros((0, model.tree.n_answers), np.float32),
            np.zeros((0, model.embedding_dim), np.float32),
        )
    return np.concatenate(fr), np.concatenate(fe)


def encode_images(
    model: MorphologyModel,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: str = "float32",
) -> np.ndarray:
    """Embeddings ``(N, embedding_dim)`` float32 of raw cutouts (no head)."""
    dev, dt = _device_dtype(device, dtype)
    model.eval().to(dev)
    out = [
        _run(model, images[s : s + batch_size], dev, dt, False)[1]
        for s in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.embedding_dim), np.float32)


def _batches(reader, rows: Sequence[int] | None, batch_size: int) -> Iterator:
    if rows is None:
        yield from reader.iter_batches(batch_size)
        return
    order = np.sort(np.asarray(rows, dtype=np.int64))
    for s in range(0, len(order), batch_size):
        yield reader.read_rows(order[s : s + batch_size])


def predict_shard(
    model: MorphologyModel,
    shard_uri: str,
    *,
    rows: Sequence[int] | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: str = "float32",
    embeddings: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Predictions for the galaxies of one shard (``rows``: the manifest's rows; None: all).

    Reads with the bands and cutout size in the model's config. Returns one row per galaxy
    in row order with the columns of the module docstring.
    """
    from galaxy_assets.survey.readers import open_shard

    dev, dt = _device_dtype(device, dtype)
    model.eval().to(dev)
    tree = model.tree
    summaries = _summaries(tree)
    answer_cols = [answer_column(q.name, a) for q in tree for a in q.answers]
    prediction_columns(tree)  # clash check
    cfg = model.config
    ids: list[np.ndarray] = []
    row_list: list[np.ndarray] = []
    fracs: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    with open_shard(shard_uri, bands=cfg.bands, size=cfg.image_size, ivar=False) as reader:
        total = len(reader) if rows is None else len(rows)
        done = 0
        for batch in _batches(reader, rows, batch_size):
            f, e = _run(model, batch.images, dev, dt, True)
            ids.append(np.asarray(batch.object_id).astype(str))
            row_list.append(np.asarray(batch.rows, dtype=np.int64))
            fracs.append(f)
            if embeddings:
                feats.append(e)
            done += len(batch)
            if progress is not None:
                progress(done, total)
    frac = np.concatenate(fracs) if fracs else np.zeros((0, tree.n_answers), np.float32)
    data: dict[str, object] = {
        "object_id": np.concatenate(ids) if ids else np.zeros(0, dtype=str),
        "row": np.concatenate(row_list) if row_list else np.zeros(0, dtype=np.int64),
    }
    for name, cols in summaries.items():
        data[name] = frac[:, cols].sum(axis=1).astype(np.float32)
    for j, name in enumerate(answer_cols):
        data[name] = frac[:, j].astype(np.float32)
    frame = pl.DataFrame(data)
    if embeddings:
        emb = np.concatenate(feats) if feats else np.zeros((0, model.embedding_dim), np.float32)
        frame = frame.with_columns(
            pl.Series(
                "embedding", emb.astype(np.float32), dtype=pl.Array(pl.Float32, model.embedding_dim)
            )
        )
    log.info("predicted %d galaxies of %s", frame.height, shard_uri)
    return frame


def predict_manifest(
    model: MorphologyModel,
    manifest: pl.DataFrame,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: str = "float32",
    embeddings: bool = False,
) -> pl.DataFrame:
    """Predictions for every galaxy of a manifest (all its shards), with a ``shard`` column."""
    for c in ("object_id", "shard_uri", "row"):
        if c not in manifest.columns:
            raise MorphologyError(f"the manifest lacks column {c!r}; pass the raw_cutouts manifest")
    frames = []
    for uri in manifest["shard_uri"].unique(maintain_order=True).to_list():
        part = manifest.filter(pl.col("shard_uri") == uri)
        pred = predict_shard(
            model,
            uri,
            rows=part["row"].to_list(),
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            embeddings=embeddings,
        )
        if "shard" in part.columns:
            pred = pred.with_columns(pl.lit(part["shard"][0]).alias("shard"))
        frames.append(pred)
    return pl.concat(frames) if frames else pl.DataFrame()


def load_encoder(
    tracker: Tracker,
    alias_or_version: str | int = "champion",
    *,
    registered_name: str = "morphology-encoder",
    device: str = "cpu",
) -> tuple[MorphologyModel, int]:
    """The registered encoder at an alias or version, and its version number."""
    mv = tracker.resolve_version(registered_name, alias_or_version)
    model, _ = tracker.load_torch_model(registered_name, int(mv.version), device=device)
    if not isinstance(model, MorphologyModel):
        raise MorphologyError(
            f"{registered_name} version {mv.version} is a {type(model).__name__}, not a "
            "morphology encoder; register encoders with morphology.train.register_encoder"
        )
    return model, int(mv.version)
