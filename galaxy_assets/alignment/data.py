"""Training pairs for the aligner: caption vectors joined to cached image vectors.

:func:`prepare_pairs` takes the ``caption_embeddings`` frame (object_id, model, prompt_sha,
embedder, vector) and the ``image_embeddings`` frame or lazy frame (object_id, encoder,
vector; every shard, possibly far more rows than captions: only captioned galaxies are
collected) and returns :class:`PairedData`. It checks and records:

* one text embedder id and one image encoder id, equal to the expected ones when given
  (a mismatch is an error naming both ids: the vectors would live in different spaces);
* captions whose galaxy has no image vector: skipped, counted, a few ids kept;
* non-finite or zero vectors on either side: skipped, counted;
* a galaxy embedded twice (two shards): the first vector kept, counted;
* at least :data:`MIN_PAIRS` captioned galaxies with image vectors, else an error.

Sentence views. A search query names one feature in a few words ("gravitational lens",
"visible spiral arms"); a caption describes a whole galaxy in four or five sentences. Heads
trained on whole captions only learn to place long, multi-feature texts, and a short query
lands where no caption did (on the mock survey, "visible spiral arms" found 0 spirals in the
top 10 while "a galaxy with visible spiral arms" found 10). :func:`caption_sentences` splits
each caption into its sentences; embedded like captions and passed to :func:`prepare_pairs`
beside them with ``view="sentence"`` (whole captions: ``view="caption"`` or no ``view``
column), each becomes another text of the same galaxy. The training loop then draws one text
per galaxy per epoch among the caption and its sentences, and validation keeps using the
whole caption (a galaxy's ``caption`` view always comes first). No label is read: the views
are the captioner's own words.

:func:`split_by_object` splits galaxies (never single captions) into train and validation by
a salted BLAKE2b hash of ``object_id``: a galaxy stays on its side as the caption set grows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from galaxy_assets.alignment.errors import AlignmentError
from galaxy_assets.captioning.base import MIN_SENTENCE_WORDS, caption_sentences_of

if TYPE_CHECKING:  # polars is imported where frames are read: the training loop needs none
    import polars as pl

log = logging.getLogger(__name__)

__all__ = [
    "CAPTION_VIEW",
    "MIN_PAIRS",
    "SENTENCE_VIEW",
    "MIN_VALIDATION",
    "PairedData",
    "caption_sentences",
    "object_hash",
    "prepare_pairs",
    "split_by_object",
]

MIN_PAIRS = 64  # captioned galaxies with image vectors needed to train at all
MIN_VALIDATION = 16  # validation galaxies kept at least (topped up by hash order)
_SAMPLE = 20
CAPTION_VIEW = "caption"  # a whole caption (the validation text of its galaxy)
SENTENCE_VIEW = "sentence"  # one sentence of a caption (an extra training text)


def caption_sentences(
    captions: pl.DataFrame, *, min_words: int = MIN_SENTENCE_WORDS
) -> pl.DataFrame:
    """The sentences of each caption as extra training texts (see the module docstring).

    ``captions`` has ``object_id`` and ``caption`` (the ``vlm_captions`` frame; other columns
    such as ``model`` and ``prompt_sha`` are carried along). Returns one row per sentence of at
    least ``min_words`` words, with the caption's columns, ``caption`` replaced by the sentence
    and ``view`` = ``"sentence"``; a one-sentence caption gives no view (it would repeat the
    caption). Rows whose caption is null or empty are skipped.
    """
    import polars as pl

    _require(captions, ("object_id", "caption"), "captions")
    if min_words < 1:
        raise AlignmentError(f"caption_sentences: min_words={min_words}; use 1 or more")
    rows = captions.filter(
        pl.col("caption").is_not_null() & (pl.col("caption").str.len_chars() > 0)
    )
    out_cols = [c for c in rows.columns if c not in ("caption", "view")]
    split = [caption_sentences_of(c, min_words) for c in rows["caption"].to_list()]
    frame = rows.select(out_cols).with_columns(pl.Series("caption", split, dtype=pl.List(pl.Utf8)))
    return (
        frame.explode("caption")
        .drop_nulls("caption")
        .with_columns(pl.lit(SENTENCE_VIEW).alias("view"))
    )


@dataclass
class PairedData:
    """Image vectors, one row per galaxy, and caption vectors pointing at them.

    ``image[pair_object[j]]`` is the image vector of caption ``j``; captions are sorted by
    galaxy, so ``caption_start[k] : caption_start[k] + caption_count[k]`` are galaxy k's.
    """

    object_ids: np.ndarray  # (n_objects,) str
    image: np.ndarray  # (n_objects, image_dim) float32
    text: np.ndarray  # (n_captions, text_dim) float32
    pair_object: np.ndarray  # (n_captions,) int64 index into object_ids
    caption_start: np.ndarray  # (n_objects,) int64
    caption_count: np.ndarray  # (n_objects,) int64
    image_encoder: str
    text_embedder: str
    caption_models: list[str]
    prompt_shas: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_arrays(
        cls,
        image: np.ndarray,
        text: np.ndarray,
        *,
        object_ids: Sequence[str] | np.ndarray | None = None,
        image_encoder: str = "unknown",
        text_embedder: str = "unknown",
        caption_models: Sequence[str] = (),
        prompt_shas: Sequence[str] = (),
    ) -> PairedData:
        """One caption per galaxy, row i of ``image`` matching row i of ``text`` (benchmarks,
        callers that hold arrays rather than frames). No checks beyond shapes."""
        image = np.ascontiguousarray(image, dtype=np.float32)
        text = np.ascontiguousarray(text, dtype=np.float32)
        if image.ndim != 2 or text.ndim != 2 or len(image) != len(text):
            raise AlignmentError(
                f"PairedData.from_arrays: image {image.shape} and text {text.shape} must be "
                "(N, image_dim) and (N, text_dim)"
            )
        n = len(image)
        ids = np.asarray(object_ids if object_ids is not None else [f"{i}" for i in range(n)])
        return cls(
            object_ids=ids.astype(str),
            image=image,
            text=text,
            pair_object=np.arange(n, dtype=np.int64),
            caption_start=np.arange(n, dtype=np.int64),
            caption_count=np.ones(n, dtype=np.int64),
            image_encoder=image_encoder,
            text_embedder=text_embedder,
            caption_models=list(caption_models),
            prompt_shas=list(prompt_shas),
            report={"n_pairs": n, "n_objects": n},
        )

    @property
    def n_objects(self) -> int:
        return int(self.object_ids.shape[0])

    @property
    def n_captions(self) -> int:
        return int(self.text.shape[0])

    @property
    def image_dim(self) -> int:
        return int(self.image.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])


def _require(frame: pl.DataFrame | pl.LazyFrame, columns: Sequence[str], what: str) -> None:
    import polars as pl

    have = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    missing = [c for c in columns if c not in have]
    if missing:
        raise AlignmentError(
            f"{what} lacks column(s) {missing} (has {have}); pass the {what} asset's frame"
        )


def _single_id(
    frame: pl.DataFrame | pl.LazyFrame, column: str, what: str, kind: str, expected: str | None
) -> str:
    import polars as pl

    counts = (
        frame.lazy().group_by(column).agg(pl.len().alias("n")).sort("n", descending=True).collect()
    )
    ids = counts[column].to_list()
    if not ids:
        raise AlignmentError(f"{what} is empty")
    if len(ids) > 1:
        listing = ", ".join(
            f"{i!r} ({n} rows)" for i, n in zip(ids, counts["n"].to_list(), strict=True)
        )
        raise AlignmentError(
            f"{what} mixes {kind}s: {listing}. Vectors of different models live in different "
            f"spaces; re-materialize {what} with one {kind} before training"
        )
    got = str(ids[0])
    if expected is not None and got != expected:
        raise AlignmentError(
            f"{what} was made with {kind} {got!r}, but the configured {kind} is {expected!r}: "
            f"the {kind} changed between embedding and training. Re-materialize {what} with "
            f"{expected!r}, or configure {got!r}"
        )
    return got


def _vectors(series: pl.Series, what: str) -> np.ndarray:
    import polars as pl

    dtype = series.dtype
    if isinstance(dtype, pl.List):
        series = series.list.to_array(int(series.list.len().max() or 0))
    elif not isinstance(dtype, pl.Array):
        raise AlignmentError(f"{what}.vector has dtype {dtype}; expected Array[Float32, dim]")
    arr = series.to_numpy()
    if arr.ndim != 2:
        raise AlignmentError(f"{what}.vector does not hold fixed-width vectors (got {arr.shape})")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _usable(v: np.ndarray) -> np.ndarray:
    return np.isfinite(v).all(axis=1) & (np.abs(v).sum(axis=1) > 0)


def prepare_pairs(
    image_embeddings: pl.DataFrame | pl.LazyFrame,
    caption_embeddings: pl.DataFrame | pl.LazyFrame,
    *,
    expected_image_encoder: str | None = None,
    expected_text_embedder: str | None = None,
    min_pairs: int = MIN_PAIRS,
) -> PairedData:
    """Join captions to image vectors (see the module docstring)."""
    import polars as pl

    _require(caption_embeddings, ("object_id", "embedder", "vector"), "caption_embeddings")
    _require(image_embeddings, ("object_id", "encoder", "vector"), "image_embeddings")
    captions = (
        caption_embeddings.lazy().collect()
        if isinstance(caption_embeddings, pl.LazyFrame)
        else caption_embeddings
    )
    if captions.height == 0:
        raise AlignmentError(
            f"caption_embeddings is empty; training needs at least {min_pairs} captioned "
            "galaxies with image vectors (materialize vlm_captions and caption_embeddings)"
        )
    text_embedder = _single_id(
        captions, "embedder", "caption_embeddings", "text embedder", expected_text_embedder
    )
    image_encoder = _single_id(
        image_embeddings, "encoder", "image_embeddings", "image encoder", expected_image_encoder
    )
    report: dict[str, Any] = {"n_captions_in": captions.height}

    captions = captions.with_columns(pl.col("object_id").cast(pl.Utf8))
    if "view" in captions.columns:
        # whole captions first: within a galaxy the first text is the validation text
        bad_views = sorted(
            str(v)
            for v in captions["view"].unique().to_list()
            if v not in (CAPTION_VIEW, SENTENCE_VIEW)
        )
        if bad_views:
            raise AlignmentError(
                f"caption_embeddings.view holds {bad_views}; use {CAPTION_VIEW!r} for whole "
                f"captions and {SENTENCE_VIEW!r} for sentence views (caption_sentences)"
            )
        captions = (
            captions.with_row_index("_order")
            .sort(pl.col("view") != CAPTION_VIEW, "_order")
            .drop("_order")
        )
        report["n_sentence_views"] = int((captions["view"] == SENTENCE_VIEW).sum())
        whole = captions.filter(pl.col("view") == CAPTION_VIEW)["object_id"].unique()
        only_views = captions.filter(~pl.col("object_id").is_in(whole.implode()))
        if only_views.height:
            raise AlignmentError(
                f"{only_views['object_id'].n_unique()} galaxies have sentence views but no "
                f"whole caption (e.g. {only_views['object_id'].head(3).to_list()}); pass the "
                "captions' own embeddings (view 'caption') beside their sentence views"
            )
    models = (
        sorted(str(m) for m in captions["model"].unique().to_list())
        if "model" in captions.columns
        else []
    )
    shas = (
        sorted(str(s) for s in captions["prompt_sha"].unique().to_list())
        if "prompt_sha" in captions.columns
        else []
    )

    text_all = _vectors(captions["vector"], "caption_embeddings")
    ok_text = _usable(text_all)
    report["n_captions_nonfinite"] = int((~ok_text).sum())
    if report["n_captions_nonfinite"]:
        log.warning(
            "caption_embeddings: %d captions with non-finite or zero vectors skipped",
            report["n_captions_nonfinite"],
        )
    caption_ids = captions["object_id"].to_numpy().astype(str)

    wanted = pl.Series("object_id", np.unique(caption_ids[ok_text]), dtype=pl.Utf8)
    images = (
        image_embeddings.lazy()
        .with_columns(pl.col("object_id").cast(pl.Utf8))
        .filter(pl.col("object_id").is_in(wanted.implode()))
        .select("object_id", "vector")
        .collect()
    )
    n_dup = images.height - images["object_id"].n_unique()
    report["n_duplicate_image_rows"] = int(n_dup)
    if n_dup:
        log.warning(
            "image_embeddings: %d galaxies appear more than once; the first usable vector is "
            "used", n_dup
        )
    image_all = (
        _vectors(images["vector"], "image_embeddings")
        if images.height
        else np.zeros((0, 0), np.float32)
    )
    ok_image = _usable(image_all) if images.height else np.zeros(0, bool)
    all_ids = images["object_id"].to_numpy().astype(str)
    # the first usable row of each galaxy (sorted by id): a galaxy whose first row is broken
    # keeps a later good one
    img_ids, first = np.unique(all_ids[ok_image], return_index=True)
    image = image_all[ok_image][first]
    report["n_images_nonfinite"] = int(len(np.unique(all_ids)) - len(img_ids))
    if report["n_images_nonfinite"]:
        log.warning(
            "image_embeddings: %d captioned galaxies have non-finite or zero image vectors "
            "(skipped)",
            report["n_images_nonfinite"],
        )

    # captions → galaxy index (captions of galaxies without a usable image vector are skipped)
    pos = np.searchsorted(img_ids, caption_ids)
    pos_c = np.minimum(pos, max(len(img_ids) - 1, 0))
    has_image = (
        (len(img_ids) > 0) & (img_ids[pos_c] == caption_ids)
        if len(img_ids)
        else np.zeros(len(caption_ids), bool)
    )
    no_image = ok_text & ~has_image
    report["n_captions_without_image"] = int(no_image.sum())
    report["captions_without_image_sample"] = caption_ids[no_image][:_SAMPLE].tolist()
    if no_image.any():
        log.warning(
            "%d of %d captions have no image vector (their galaxies' shards are not embedded, "
            "or their vectors are unusable) and are skipped, e.g. %s",
            int(no_image.sum()),
            len(caption_ids),
            report["captions_without_image_sample"][:5],
        )
    keep = ok_text & has_image
    pair_object = pos_c[keep].astype(np.int64)
    text = np.ascontiguousarray(text_all[keep])
    # sort captions by galaxy, then keep only galaxies with at least one caption
    corder = np.argsort(pair_object, kind="stable")
    pair_object, text = pair_object[corder], text[corder]
    used, remap = np.unique(pair_object, return_inverse=True)
    img_ids, image = img_ids[used], np.ascontiguousarray(image[used])
    pair_object = remap.astype(np.int64)
    counts = np.bincount(pair_object, minlength=len(img_ids)).astype(np.int64)
    starts = (
        np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64) if len(counts) else counts
    )

    report.update(
        n_pairs=int(len(pair_object)),
        n_objects=int(len(img_ids)),
        max_captions_per_object=int(counts.max()) if len(counts) else 0,
    )
    if len(img_ids) < int(min_pairs):
        raise AlignmentError(
            f"only {len(img_ids)} captioned galaxies have usable image vectors "
            f"({report['n_captions_in']} captions, {report['n_captions_without_image']} without "
            f"an image vector, {report['n_captions_nonfinite']} with bad text vectors); training "
            f"needs at least {min_pairs}. Caption more galaxies (a larger caption_sample) or "
            "materialize image_embeddings for their shards"
        )
    return PairedData(
        object_ids=img_ids,
        image=image,
        text=text,
        pair_object=pair_object,
        caption_start=starts,
        caption_count=counts,
        image_encoder=image_encoder,
        text_embedder=text_embedder,
        caption_models=models,
        prompt_shas=shas,
        report=report,
    )


def object_hash(object_ids: Sequence[str] | np.ndarray, salt: str = "") -> np.ndarray:
    """A uint64 per id from BLAKE2b(salt + id): stable across processes, platforms, versions."""
    prefix = salt.encode()
    return np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(prefix + str(o).encode(), digest_size=8).digest(), "little"
            )
            for o in object_ids
        ),
        dtype=np.uint64,
        count=len(object_ids),
    )


def split_by_object(
    object_ids: Sequence[str] | np.ndarray,
    val_fraction: float = 0.1,
    *,
    min_validation: int = MIN_VALIDATION,
    salt: str = "aligner-v1",
) -> np.ndarray:
    """Boolean mask: True for validation galaxies.

    A galaxy is in validation when its hash falls below ``val_fraction`` of the hash range, so
    it stays there as data grows; when that gives fewer than ``min_validation`` galaxies, the
    next-smallest hashes top it up. At least one galaxy always remains for training.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise AlignmentError(f"val_fraction={val_fraction}; use a value between 0 and 1")
    n = len(object_ids)
    h = object_hash(object_ids, salt)
    threshold = np.uint64(min(int(float(val_fraction) * 2.0**64), 2**64 - 1))
    is_val = h < threshold
    want = min(max(int(min_validation), 1), n - 1)
    if is_val.sum() < want:
        is_val = np.zeros(n, bool)
        is_val[np.argsort(h, kind="stable")[:want]] = True
    return is_val
