"""Ratings for VLM re-ranking: the :class:`Rater` protocol, the question, score parsing, and
the offline describer's rater.

A rater scores how well each galaxy matches a question, 1 (certainly not) to 10 (certainly
yes). The VLM backends (:class:`~galaxy_assets.captioning.openai_backend.OpenAICaptioner`,
:class:`~galaxy_assets.captioning.transformers_backend.TransformersCaptioner`) do it with
the versioned prompt ``prompts/rate_v1.txt`` (its ``{question}`` filled in): each answer
must hold ``Score: N`` (:func:`parse_score`); the mean over ``n_samples`` answers is the
score, and a galaxy none of whose answers holds a score gets ``error`` set (``no_score: …``)
and no score — never a default.

:class:`DescriberRater` is the offline default. It rates from the measured-morphology
describer's own evidence, in one of two ways:

* **a query that names a feature the describer scores** (spiral arms, a bar, a ring, a merger,
  a lens, an edge-on disc; found with the caption keyword families of
  :mod:`~galaxy_assets.captioning.keywords`, negation-aware): the score is
  ``1 + 9 p`` with ``p`` the describer's feature score for the candidate (fitted on the
  development surveys, the score its feature words are called from;
  :mod:`~galaxy_assets.captioning.feature_scores`) as the probability that the feature is
  there (``FeatureScorer.presence``: a visibility regression's score through the normal
  CDF of its residuals, which keeps clear features apart where a clip to [0, 1] tied all
  scores above 1). Several named
  features multiply ("barred spiral": P(bar) · P(arms)); a negated one counts as ``1 - p``
  ("a spiral without a bar"). The score is not rounded: ``p`` stands for the mean over many
  samples a VLM would be asked for. A caption's words are one threshold on ``p``; a rating
  from ``p`` itself orders candidates by how sure the describer is, which the words cannot.
* **any other query**: the describer writes a fresh description of each candidate, and the
  score is the best cosine similarity between the query's text embedding and the
  description's (the whole description or any one of its sentences: a query names one
  feature, and one sentence says whether it is there), mapped linearly from [-1, 1] onto
  [1, 10] (``score = 1 + 4.5 (cos + 1)``) and rounded to a whole number, as a VLM answers
  ``Score: N``; equal scores then keep their similarity order in
  :func:`~galaxy_assets.search.rerank.rerank`, as VLM ties do. A describer without
  ``feature_evidence`` (a stand-in) is always rated this way.

On the demo survey, sentence-similarity scores for feature queries were coarse (nearly every
candidate 8 or 9). Over six targets and three demo rankings, re-ranking the top 50 with them
changed nDCG@10 by +0.031 on average against semantic search and lowered 7 of the 18 (by up to
0.136); with feature-score ratings the change was +0.084 and 2 of 18 were lowered (by at most
0.028; ``benchmarks/RESULTS.md``, "Re-ranking by the describer's feature scores"). Either way
it is deterministic: one sample whatever ``n_samples``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from galaxy_assets.captioning.base import (
    CaptionerError,
    CaptionRequest,
    caption_sentences_of,
    load_prompt,
)
from galaxy_assets.captioning.keywords import named_families
from galaxy_assets.captioning.validation import (
    GENERATION_FAILED,
    NO_SCORE,
    RatingResult,
    parse_score,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RATE_PROMPT",
    "DescriberRater",
    "FEATURE_OF_FAMILY",
    "RATING_REVISION",
    "Rater",
    "RatingResult",
    "evidence_to_score",
    "named_features",
    "parse_score",
    "question_for",
    "rating_prompt",
    "similarity_to_score",
]

DEFAULT_RATE_PROMPT = "rate_v1"
MAX_QUESTION_CHARS = 500
# How the offline describer turns its evidence into ratings (part of the re-ranker's identity,
# search.service.reranker_id): 2 = feature-score ratings for queries naming a feature.
# 3 = visibility regressions enter as FeatureScorer.presence, not clipped to [0, 1].
RATING_REVISION = 3
# caption keyword family (captioning.keywords) -> the describer's feature score for it
FEATURE_OF_FAMILY: dict[str, str] = {
    "spiral": "arms",
    "bar": "bar",
    "ring": "ring",
    "merger": "merger",
    "lens": "lens",
    "edge_on": "edge_on",
}


@runtime_checkable
class Rater(Protocol):
    """Rates galaxies for a question: one :class:`RatingResult` per request, in order;
    a galaxy that could not be rated has ``score`` None and ``error`` set."""

    def rate(
        self, requests: Sequence[CaptionRequest], question: str, n_samples: int = 1
    ) -> list[RatingResult]: ...


def question_for(query: str) -> str:
    """The rating question for a text query: ``"Does this galaxy show <query>?"``.

    A query that already is a question (ends with ``?``) is used as it is.
    """
    text = " ".join(str(query).split())
    if not text:
        raise CaptionerError("cannot make a rating question from an empty query")
    if len(text) > MAX_QUESTION_CHARS:
        raise CaptionerError(
            f"the query has {len(text)} characters; a rating question holds at most "
            f"{MAX_QUESTION_CHARS}"
        )
    if text.endswith("?"):
        return text
    return f"Does this galaxy show {text.rstrip('.!')}?"


def rating_prompt(question: str, name: str = DEFAULT_RATE_PROMPT) -> str:
    """The rating prompt ``name`` with its ``{question}`` filled in."""
    prompt = load_prompt(name)
    if "{question}" not in prompt.text:
        raise CaptionerError(f"prompt {name!r} has no {{question}} placeholder")
    if not question or not question.strip():
        raise CaptionerError("the rating question is empty")
    return prompt.text.replace("{question}", question.strip())


def similarity_to_score(cosine: float) -> float:
    """Cosine similarity in [-1, 1] → a 1–10 score (linear, order-preserving)."""
    c = float(np.clip(cosine, -1.0, 1.0))
    return 1.0 + 4.5 * (c + 1.0)


def named_features(question: str) -> dict[str, bool]:
    """The describer's features a query names (feature → True, or False under a negation),
    through the caption keyword families (:data:`FEATURE_OF_FAMILY`)."""
    return {
        FEATURE_OF_FAMILY[f]: wanted
        for f, wanted in named_families(question).items()
        if f in FEATURE_OF_FAMILY
    }


def evidence_to_score(scores: dict[str, float], named: dict[str, bool]) -> float:
    """``1 + 9 ∏ p`` over the named features (``1 - p`` for a negated one), ``p`` in [0, 1].
    Raises KeyError when a named feature has no score."""
    prob = 1.0
    for feature, wanted in named.items():
        p = min(max(float(scores[feature]), 0.0), 1.0)
        prob *= p if wanted else 1.0 - p
    return 1.0 + 9.0 * prob


class DescriberRater:
    """Re-ranks offline with the measured-morphology describer: from its feature scores when
    the query names a feature it scores, else from the cosine between a fresh description's
    and the question's text embeddings (see the module doc).

    ``text_embedder``: ``.embed(list[str]) -> unit vectors``. ``describer``: a
    :class:`~galaxy_assets.captioning.describer.MorphologyDescriber` (default: a new one).
    ``uses_query_text`` tells :func:`galaxy_assets.search.rerank.vlm_rerank` to hand over
    the plain query text rather than the yes/no question, which a description matches better.
    """

    backend = "morphology"
    uses_query_text = True

    def __init__(self, text_embedder: Any, describer: Any | None = None, *, seed: int = 0) -> None:
        if describer is None:
            from galaxy_assets.captioning.describer import MorphologyDescriber

            describer = MorphologyDescriber(seed=seed)
        self.describer = describer
        self.text_embedder = text_embedder
        self.model_id = f"{getattr(describer, 'model_id', 'describer')}+" + str(
            getattr(text_embedder, "embedder_id", type(text_embedder).__name__)
        )

    def rate(
        self, requests: Sequence[CaptionRequest], question: str, n_samples: int = 1
    ) -> list[RatingResult]:
        if not question or not question.strip():
            raise CaptionerError("rate: the question is empty")
        if n_samples < 1:
            raise CaptionerError(f"rate: n_samples={n_samples}; it must be >= 1")
        requests = list(requests)
        if not requests:
            return []
        named = named_features(question)
        if named and callable(getattr(self.describer, "feature_evidence", None)):
            return self._rate_from_evidence(requests, named)
        captions = self.describer.caption(requests)
        ok = [c for c in captions if c.ok]
        scores: dict[str, float] = {}
        if ok:
            # one embedder call: the question, each whole description, then their sentences
            texts = [(c.object_id, c.caption) for c in ok]
            texts += [(c.object_id, p) for c in ok for p in caption_sentences_of(c.caption)]
            try:
                vectors = np.asarray(
                    self.text_embedder.embed([question.strip()] + [t for _, t in texts]),
                    dtype=np.float64,
                )
            except Exception as exc:  # noqa: BLE001 - every candidate fails the same way
                reason = f"{GENERATION_FAILED}: text embedder failed: {type(exc).__name__}: {exc}"
                log.warning("describer rating: %s", reason)
                return [RatingResult(r.object_id, None, (), reason) for r in requests]
            unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            best: dict[str, float] = {}
            for (oid, _), x in zip(texts, unit[1:] @ unit[0], strict=True):
                best[oid] = max(best.get(oid, -1.0), float(x))
            scores = {oid: float(round(similarity_to_score(x))) for oid, x in best.items()}
        out = []
        for request, caption in zip(requests, captions, strict=True):
            if request.object_id in scores and caption.ok:
                s = scores[request.object_id]
                out.append(RatingResult(request.object_id, s, (s,)))
            else:
                out.append(
                    RatingResult(
                        request.object_id,
                        None,
                        (),
                        caption.error or f"{NO_SCORE}: the describer wrote no description",
                    )
                )
        return out

    def _rate_from_evidence(
        self, requests: list[CaptionRequest], named: dict[str, bool]
    ) -> list[RatingResult]:
        evidence = {
            oid: (scores, err) for oid, scores, err in self.describer.feature_evidence(requests)
        }
        out = []
        for request in requests:
            scores, error = evidence.get(request.object_id, (None, None))
            if scores is None:
                why = error or f"{NO_SCORE}: the describer returned no feature scores"
                out.append(RatingResult(request.object_id, None, (), why))
                continue
            try:
                s = evidence_to_score(scores, named)
            except KeyError as exc:
                why = f"{NO_SCORE}: the describer has no score for feature {exc.args[0]!r}"
                out.append(RatingResult(request.object_id, None, (), why))
                continue
            out.append(RatingResult(request.object_id, s, (s,)))
        return out

    def close(self) -> None:
        close = getattr(self.describer, "close", None)
        if callable(close):
            close()


def rating_from_reply(object_id: str, replies: Sequence[str | None]) -> RatingResult:
    """The :class:`RatingResult` of one galaxy from its raw replies (mean of the parsed
    scores; the first parse error when none parses)."""
    scores, errors = [], []
    for text in replies:
        value, error = parse_score(text)
        if value is None:
            errors.append(error or f"{NO_SCORE}: no score")
        else:
            scores.append(value)
    if not scores:
        return RatingResult(object_id, None, (), errors[0] if errors else f"{NO_SCORE}: no reply")
    return RatingResult(object_id, float(np.mean(scores)), tuple(scores))
