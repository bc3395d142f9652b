"""VLM re-ranking of the top search results.

:func:`vlm_rerank` reads the pixels of the top ``k_rerank`` results from their shards,
asks a rater (:class:`galaxy_assets.captioning.rating.Rater`: the OpenAI-compatible or
transformers captioner's ``rate``, or the offline
:class:`~galaxy_assets.captioning.rating.DescriberRater`) to score each against the question
("Does this galaxy show <query>?") averaged over ``n_samples``, and reorders them with
:func:`rerank`.

The order :func:`rerank` gives, precisely:

1. Rows below the top ``k_rerank`` keep their order, after the top ones.
2. A top row whose rating failed (no score: unparseable reply, refusal, unreadable pixels,
   not rated at all) stays at its own position — it is never given a default score.
3. The rated top rows fill the remaining top positions, in order of rating (descending);
   equal ratings are ordered by the original similarity score (descending), then by the
   original position.

The output keeps every input column and adds ``rating`` (the mean score, null when failed),
``rating_samples`` (the parsed samples), ``rating_error`` (why there is no rating) and
``similarity_rank`` (the position before re-ranking); ``rank`` is renumbered 1..n.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from galaxy_assets.captioning.base import CaptionerError, CaptionRequest
from galaxy_assets.captioning.rating import Rater, RatingResult, question_for
from galaxy_assets.search.errors import SearchError
from galaxy_assets.search.pixels import Cutout, read_cutouts

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_K_RERANK", "RerankOutcome", "rerank", "vlm_rerank"]

DEFAULT_K_RERANK = 100
NOT_RATED = "not_rated: the rater returned no result for this galaxy"


def _as_ratings(
    ratings: Sequence[RatingResult] | Mapping[str, RatingResult | float | None],
) -> dict[str, RatingResult]:
    out: dict[str, RatingResult] = {}
    if isinstance(ratings, Mapping):
        for oid, value in ratings.items():
            if isinstance(value, RatingResult):
                out[str(oid)] = value
            elif value is None:
                out[str(oid)] = RatingResult(str(oid), None, (), "no_score: no rating")
            else:
                x = float(value)
                if not math.isfinite(x):
                    out[str(oid)] = RatingResult(str(oid), None, (), f"no_score: rating {value!r}")
                else:
                    out[str(oid)] = RatingResult(str(oid), x, (x,))
        return out
    for r in ratings:
        if not isinstance(r, RatingResult):
            raise SearchError(f"ratings must be RatingResult objects, not {type(r).__name__}")
        out[r.object_id] = r
    return out


def rerank(
    results: pl.DataFrame,
    ratings: Sequence[RatingResult] | Mapping[str, RatingResult | float | None],
    k_rerank: int = DEFAULT_K_RERANK,
) -> pl.DataFrame:
    """``results`` (ordered best first, with object_id and score) reordered by ``ratings``
    in the top ``k_rerank`` rows (see the module doc for the exact rule)."""
    if isinstance(k_rerank, bool) or not isinstance(k_rerank, int) or k_rerank < 1:
        raise SearchError(f"k_rerank={k_rerank!r}: give a whole number >= 1")
    for column in ("object_id", "score"):
        if column not in results.columns:
            raise SearchError(f"results lack column {column!r}; pass a frame from GalaxySearch")
    frame = results.sort("rank") if "rank" in results.columns else results
    by_id = _as_ratings(ratings)
    n = frame.height
    top = min(k_rerank, n)
    ids = frame["object_id"].to_list()
    sims = frame["score"].cast(pl.Float64).fill_null(float("-inf")).to_list()
    rating: list[float | None] = [None] * n
    samples: list[list[float] | None] = [None] * n
    errors: list[str | None] = [None] * n
    for i in range(top):
        r = by_id.get(ids[i])
        if r is None:
            errors[i] = NOT_RATED
        elif r.score is None or not math.isfinite(float(r.score)) or r.error is not None:
            errors[i] = r.error or "no_score: no rating"
            samples[i] = [float(s) for s in r.scores]
        else:
            rating[i] = float(r.score)
            samples[i] = [float(s) for s in r.scores]
    rated = [i for i in range(top) if rating[i] is not None]
    failed = {i for i in range(top) if rating[i] is None}
    rated.sort(key=lambda i: (-rating[i], -sims[i], i))  # type: ignore[operator]
    order: list[int] = []
    fill = iter(rated)
    for position in range(top):
        order.append(position if position in failed else next(fill))
    order.extend(range(top, n))
    out = frame.with_columns(
        pl.Series("similarity_rank", np.arange(1, n + 1, dtype=np.int64)),
        pl.Series("rating", rating, dtype=pl.Float64),
        pl.Series("rating_samples", samples, dtype=pl.List(pl.Float64)),
        pl.Series("rating_error", errors, dtype=pl.Utf8),
    )[order]
    out = out.with_columns(pl.Series("rank", np.arange(1, n + 1, dtype=np.int64)))
    lead = ["rank", "object_id", "score", "rating", "similarity_rank"]
    return out.select(lead + [c for c in out.columns if c not in lead])


@dataclass
class RerankOutcome:
    """The re-ranked frame and what the rating did."""

    frame: pl.DataFrame
    question: str
    k_rerank: int
    n_rated: int = 0
    n_failed: int = 0
    rater: str = ""
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # object_id → reason (first 20)

    def summary(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "k_rerank": self.k_rerank,
            "n_rated": self.n_rated,
            "n_failed": self.n_failed,
            "rater": self.rater,
            "seconds": round(self.seconds, 3),
            "failures": self.failures,
        }


def vlm_rerank(
    results: pl.DataFrame,
    rater: Rater,
    *,
    query: str | None = None,
    question: str | None = None,
    k_rerank: int = DEFAULT_K_RERANK,
    n_samples: int = 1,
    bands: Sequence[str] | None = None,
) -> RerankOutcome:
    """Rate the top ``k_rerank`` of ``results`` with ``rater`` and reorder them (:func:`rerank`).

    The question is ``question`` if given, else ``question_for(query)``; a rater that
    declares ``uses_query_text`` (the describer) gets the plain ``query`` instead. Pixels
    come from the shards at each row's ``shard_uri`` / ``row`` (``bands``: which to read;
    default all). A galaxy whose pixels cannot be read, or whose rating fails, keeps its
    similarity rank and has ``rating_error`` set.
    """
    started = time.perf_counter()
    if question is None and not query:
        raise SearchError("vlm_rerank needs the query text or an explicit question")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise SearchError(f"n_samples={n_samples!r}: give a whole number >= 1")
    try:
        asked = question.strip() if question else question_for(query or "")
    except CaptionerError as exc:
        raise SearchError(str(exc)) from None
    if not asked:
        raise SearchError("the rating question is empty")
    text = query.strip() if getattr(rater, "uses_query_text", False) and query else asked
    frame = results.sort("rank") if "rank" in results.columns else results
    top = frame.head(int(k_rerank))
    cutouts = read_cutouts(top, bands=bands)
    requests: list[CaptionRequest] = []
    ratings: dict[str, RatingResult] = {}
    for oid in top["object_id"].to_list():
        cut = cutouts.get(oid)
        if isinstance(cut, Cutout):
            requests.append(CaptionRequest(oid, cut.image, cut.bands))
        else:
            ratings[oid] = RatingResult(oid, None, (), f"no_pixels: {cut}")
    if requests:
        try:
            got = rater.rate(requests, text, n_samples)
        except CaptionerError as exc:
            raise SearchError(f"re-ranking failed: {exc}") from exc
        if len(got) != len(requests) or any(
            g.object_id != r.object_id for g, r in zip(got, requests, strict=False)
        ):
            raise SearchError(
                f"the rater {type(rater).__name__} returned {len(got)} ratings for "
                f"{len(requests)} galaxies (or out of order); a rater returns one per request"
            )
        ratings.update({g.object_id: g for g in got})
    out = rerank(frame, ratings, int(k_rerank))
    failed = {
        oid: err
        for oid, err in zip(out["object_id"].to_list(), out["rating_error"].to_list(), strict=True)
        if err is not None
    }
    n_top = top.height
    outcome = RerankOutcome(
        frame=out,
        question=text,
        k_rerank=int(k_rerank),
        n_rated=n_top - len(failed),
        n_failed=len(failed),
        rater=f"{getattr(rater, 'backend', type(rater).__name__)}:{getattr(rater, 'model_id', '')}",
        seconds=time.perf_counter() - started,
        failures=dict(list(failed.items())[:20]),
    )
    if failed:
        log.warning(
            "re-ranking: %d of %d galaxies could not be rated and keep their similarity rank",
            len(failed),
            n_top,
        )
    return outcome
