"""Choosing which galaxies get a caption, and captioning them shard by shard."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
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


def sample_for_captions(manifest: pl.DataFrame, n: int, seed: int = 0) -> pl.DataFrame:
    """A seeded random sample of ``n`` galaxies across all shards, with no curation.

    Each galaxy's rank is a hash of (seed, object_id), so the sample does not depend on shard
    order, and adding shards keeps most of an earlier sample (a galaxy leaves it only when a
    new galaxy ranks lower). Returns object_id, shard, shard_uri, row, ordered by rank.
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
    ranked = manifest.select("object_id", "shard", "shard_uri", "row").with_columns(
        pl.Series("sample_rank", keys)
    )
    return ranked.sort("sample_rank").head(n).drop("sample_rank")


@dataclass
class CaptionRun:
    attempted: int = 0
    captioned: int = 0
    failed: int = 0
    skipped_existing: int = 0
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
    """Caption every sampled galaxy that has no caption for the captioner's (model, prompt).

    Pixels are read shard by shard (``open_reader(shard_uri)``); the captioner gets batches
    of ``batch_size`` galaxies gathered across shards, and results are stored after each
    batch, so an interrupted run keeps what it finished. A galaxy whose
    pixels cannot be read or whose caption failed is recorded in the failure table.
    """
    run = CaptionRun()
    todo_ids = set(
        store.missing(
            sample["object_id"].to_list(),
            captioner.model_id,
            captioner.prompt_sha,
            captioner.backend,
        )
    )
    run.skipped_existing = sample.height - len(todo_ids)
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

    def record(results: list[CaptionResult]) -> None:
        captions, failures = results_to_frames(
            results, captioner.backend, captioner.model_id, captioner.prompt_sha
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
