"""Choosing which galaxies get a caption, and captioning them shard by shard."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from galaxy_assets.captioning.base import (
    Captioner,
    CaptionerError,
    CaptionRequest,
    CaptionResult,
)
from galaxy_assets.captioning.store import CaptionStore, results_to_frames
from galaxy_assets.survey.base import CutoutReader

log = logging.getLogger(__name__)

# the manifest columns that say what a galaxy's pixels are: the bands in the order of the pixel
# axis, and the size after the survey's crop (survey.cutout_size)
PIXEL_COLUMNS = ("bands", "height", "width")


def described_pixels(backend: str, bands: Sequence[str] | str, height: int, width: int) -> str:
    """What a captioner of ``backend`` is shown of a cutout with these bands and size: the
    bands it uses and the crop, e.g. ``"z,r,g@64x64"``. A caption is reused only for the same.

    The morphology describer measures the g, r and z planes; every other backend (a VLM) is
    shown the RGB picture of :func:`galaxy_assets.survey.rgb.choose_rgb_bands` (red, green,
    blue; "mean" for a green drawn as the mean of two bands). So adding or dropping a band
    that is not drawn (``i`` beside ``g, r, z``) changes nothing, and another crop does.
    """
    from galaxy_assets.captioning.measure import REQUIRED_BANDS
    from galaxy_assets.survey.rgb import choose_rgb_bands

    names = [b.strip() for b in bands.split(",")] if isinstance(bands, str) else list(bands)
    lowered = [str(b).strip().lower() for b in names]
    if backend == "morphology":
        used = list(REQUIRED_BANDS) if set(REQUIRED_BANDS) <= set(lowered) else lowered
    else:
        try:
            used = [b or "mean" for b in choose_rgb_bands(names)]
        except ValueError:  # no band at all: the captioner fails it; say what it had
            used = lowered
    return f"{','.join(used)}@{int(height)}x{int(width)}"


def expected_pixels(sample: pl.DataFrame, backend: str) -> list[str | None]:
    """``described_pixels`` of each sampled galaxy from its manifest columns (bands, height,
    width); None for each when the sample lacks them (a caption_sample stored before they
    were kept: then a caption of any pixels counts)."""
    if not set(PIXEL_COLUMNS) <= set(sample.columns):
        return [None] * sample.height
    memo: dict[tuple, str] = {}
    out: list[str | None] = []
    for key in zip(*(sample[c].to_list() for c in PIXEL_COLUMNS), strict=True):
        if any(v is None for v in key):
            out.append(None)
            continue
        if key not in memo:
            memo[key] = described_pixels(backend, *key)
        out.append(memo[key])
    return out


def current_captions(
    captions: pl.DataFrame, sample: pl.DataFrame, backend: str, model: str, prompt_sha: str
) -> pl.DataFrame:
    """The captions of the sampled galaxies that stand now: this captioner's, described from
    the pixels each galaxy has now, and every imported caption of them. Where the sample does
    not say its pixels, the latest caption of this captioner stands."""
    ids = sample["object_id"].to_list()
    captions = captions.filter(pl.col("object_id").is_in(ids)).with_row_index("_row")
    mine = (
        (pl.col("backend") == backend)
        & (pl.col("model") == model)
        & (pl.col("prompt_sha") == prompt_sha)
    )
    now = pl.DataFrame(
        {"object_id": ids, "_now": expected_pixels(sample, backend)},
        schema={"object_id": pl.Utf8, "_now": pl.Utf8},
    ).unique("object_id", keep="first")
    ours = captions.filter(mine).join(now, on="object_id", how="left")
    known = ours.filter(pl.col("_now").is_not_null() & (pl.col("pixels") == pl.col("_now")))
    unknown = (
        ours.filter(pl.col("_now").is_null())
        .sort("created_at", maintain_order=True)
        .unique("object_id", keep="last")
    )
    keep = pl.concat([known["_row"], unknown["_row"]])
    return captions.filter(
        pl.col("_row").is_in(keep.implode()) | (pl.col("backend") == "import")
    ).drop("_row")


def sample_for_captions(manifest: pl.DataFrame, n: int, seed: int = 0) -> pl.DataFrame:
    """A seeded random sample of ``n`` galaxies across all shards, with no curation.

    Each galaxy's rank is a hash of (seed, object_id), so the sample does not depend on shard
    order, and adding shards keeps most of an earlier sample (a galaxy leaves it only when a
    new galaxy ranks lower). Returns object_id, shard, shard_uri, row — and the manifest's
    bands, height and width when it has them (what the captioner will be shown) —, ordered by
    rank.
    """
    if n <= 0:
        raise ValueError(f"caption sample size must be positive, got {n}")
    keys = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{seed}:{oid}".encode(), digest_size=8).digest(), "big")
            for oid in manifest["object_id"].to_list()
        ),
        dtype=np.uint64,
        count=manifest.height,
    )
    pixels = [c for c in PIXEL_COLUMNS if c in manifest.columns]
    ranked = manifest.select("object_id", "shard", "shard_uri", "row", *pixels).with_columns(
        pl.Series("sample_rank", keys)
    )
    return ranked.sort("sample_rank").head(n).drop("sample_rank")


@dataclass
class CaptionRun:
    attempted: int = 0
    captioned: int = 0
    failed: int = 0
    skipped_existing: int = 0  # galaxies with a caption of the pixels they have now
    # of those asked, galaxies whose only captions (of this captioner) are of other pixels
    redescribed: int = 0
    # captions stored before pixels were recorded, taken as of the current pixels (once)
    adopted: int = 0
    asked: list[str] = field(default_factory=list)  # the ids this run tried to caption
    failure_reasons: dict[str, int] = field(default_factory=dict)


def caption_galaxies(
    sample: pl.DataFrame,
    captioner: Captioner,
    store: CaptionStore,
    open_reader: Callable[[str], CutoutReader],
    *,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> CaptionRun:
    """Caption every sampled galaxy that has no caption for the captioner's (backend, model,
    prompt) described from the pixels it has now (see :func:`described_pixels`; the sample's
    bands, height and width say them, and a sample without them accepts a caption of any
    pixels).

    Pixels are read shard by shard (``open_reader(shard_uri)``); the captioner gets batches
    of ``batch_size`` galaxies gathered across shards, and results are stored after each
    batch, with the pixels each galaxy was shown, so an interrupted run keeps what it
    finished. A galaxy whose pixels cannot be read or whose caption failed is recorded in
    the failure table. Captions stored before pixels were recorded are taken as described
    from the current pixels (:meth:`CaptionStore.adopt_unrecorded`).
    """
    run = CaptionRun()
    ids = sample["object_id"].to_list()
    pixels_now = expected_pixels(sample, captioner.backend)
    known = {oid: px for oid, px in zip(ids, pixels_now, strict=True) if px is not None}
    run.adopted = store.adopt_unrecorded(
        known, captioner.backend, captioner.model_id, captioner.prompt_sha
    )
    if run.adopted:
        log.warning(
            "%d captions of %s/%s were stored before the caption store recorded what the "
            "captioner was shown: they are taken as described from the current pixels (e.g. "
            "%s) and are re-described only when the crop or the bands drawn change",
            run.adopted,
            captioner.backend,
            captioner.model_id,
            next(iter(known.values())),
        )
    todo_list = store.missing(
        ids, captioner.model_id, captioner.prompt_sha, captioner.backend, pixels=pixels_now
    )
    todo_ids = set(todo_list)
    run.asked = todo_list
    run.skipped_existing = sample.height - len(todo_ids)
    run.redescribed = len(
        todo_ids
        - set(store.missing(todo_list, captioner.model_id, captioner.prompt_sha, captioner.backend))
    )
    left = getattr(captioner, "requests_left", None)  # a paid endpoint's request budget
    if left is not None and len(todo_ids) > left:
        raise CaptionerError(
            f"{len(todo_ids)} galaxies to caption but only {left} requests left of the "
            "captioner's request budget (captioner.request_budget): raise it, or caption a "
            "smaller sample (captioner.sample_size); nothing was sent"
        )
    todo = sample.filter(pl.col("object_id").is_in(list(todo_ids)))
    # Requests gather across shards: a sample spread over thousands of shards holds a galaxy
    # or two per shard, and batches of those would leave an endpoint's concurrency idle.
    pending: list[CaptionRequest] = []
    shown: dict[str, str] = {}  # object_id -> the pixels its request carries
    warned: set[tuple[str, str]] = set()

    def record(results: list[CaptionResult]) -> None:
        captions, failures = results_to_frames(
            results,
            captioner.backend,
            captioner.model_id,
            captioner.prompt_sha,
            pixels={r.object_id: shown.pop(r.object_id, None) for r in results},
        )
        store.add(captions, failures)
        run.attempted += len(results)
        run.captioned += captions.height
        run.failed += failures.height
        for reason in failures["reason"].to_list():
            key = reason.split(":")[0][:80]
            run.failure_reasons[key] = run.failure_reasons.get(key, 0) + 1
        if progress:
            progress(len(results))

    def flush(n: int) -> None:
        batch, pending[:] = pending[:n], pending[n:]
        got = {r.object_id: r for r in captioner.caption(batch)}
        record(
            [
                got.get(
                    r.object_id, CaptionResult(r.object_id, None, "captioner returned no result")
                )
                for r in batch
            ]
        )

    for (uri,), group in todo.group_by(["shard_uri"], maintain_order=True):
        rows = group["row"].to_list()
        ids = group["object_id"].to_list()
        try:
            reader = open_reader(uri)
        except Exception as exc:  # a bad shard: record its galaxies, go on with the others
            log.warning("cannot open shard %s: %s", uri, exc)
            record([CaptionResult(oid, None, f"shard unreadable: {exc}") for oid in ids])
            continue
        with reader:
            for start in range(0, len(rows), batch_size):
                requests, unread = _read_requests(
                    reader, rows[start : start + batch_size], ids[start : start + batch_size]
                )
                if unread:
                    record(unread)
                for r in requests:
                    px = described_pixels(captioner.backend, r.bands, *r.image.shape[-2:])
                    shown[r.object_id] = px
                    expected = known.get(r.object_id)
                    if expected is not None and expected != px and (uri, px) not in warned:
                        warned.add((uri, px))
                        log.warning(
                            "%s: the manifest says the captioner is shown %s but the reader "
                            "returns %s (a manifest built under other survey settings?); the "
                            "caption records %s: rebuild the manifests (survey_job)",
                            uri,
                            expected,
                            px,
                            px,
                        )
                pending.extend(requests)
                while len(pending) >= batch_size:
                    flush(batch_size)
    while pending:
        flush(batch_size)
    return run


def _read_requests(
    reader: CutoutReader, rows: list[int], ids: list[str]
) -> tuple[list[CaptionRequest], list[CaptionResult]]:
    """The caption requests of these rows, and the failures of galaxies that could not be
    read (the whole batch when its rows cannot be read)."""
    try:
        batch = reader.read_rows(rows)
    except Exception as exc:  # an unreadable batch: record every galaxy in it
        log.warning("cannot read rows %s… of %s: %s", rows[:3], reader.uri, exc)
        return [], [CaptionResult(oid, None, f"pixels unreadable: {exc}") for oid in ids]
    by_id = {str(o): i for i, o in enumerate(batch.object_id)}
    requests, failed = [], []
    for oid in ids:
        i = by_id.get(oid)
        if i is None:
            failed.append(
                CaptionResult(oid, None, f"object_id not found at its row in {reader.uri}")
            )
            continue
        requests.append(CaptionRequest(oid, batch.images[i], tuple(batch.bands)))
    return requests, failed
