"""Checks shared by the captioner backends: is a cutout fit to show, is a reply a caption.

Every check returns a reason instead of raising, so that one bad galaxy is recorded and the
rest of the batch goes on. Reasons start with a short kind and a colon, so a failures table
can be grouped by kind::

    bad_image:          the cutout cannot be shown (empty, all NaN, a band missing)
    empty:              the model answered nothing, only punctuation, only a placeholder
                        ("N/A", "None") or only its reasoning (a <think> block)
    degenerate:         one word or phrase repeated over and over
    truncated:          the reply hit the generation budget before the model ended it
    refusal:            the model declined ("I'm sorry, I can't…")
    not_english:        the reply is in another script or language
    filtered:           the endpoint withheld the reply (finish_reason "content_filter")
    unfinished:         any other finish reason than a normal stop
    no_score:           a rating reply holds no "Score: N" with 1 <= N <= 10
    generation_failed:  the model or endpoint raised (used by the backends)

:func:`validate_reply` never edits a caption beyond stripping surrounding white space and a
reasoning model's ``<think>…</think>`` block, and never returns a placeholder: a reply is
either accepted as it is or rejected with a reason.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BAD_IMAGE",
    "DEGENERATE",
    "EMPTY",
    "FILTERED",
    "GENERATION_FAILED",
    "NOT_ENGLISH",
    "NO_SCORE",
    "REFUSAL",
    "TRUNCATED",
    "UNFINISHED",
    "RatingResult",
    "parse_score",
    "validate_image",
    "validate_reply",
]

BAD_IMAGE = "bad_image"
EMPTY = "empty"
TRUNCATED = "truncated"
REFUSAL = "refusal"
NOT_ENGLISH = "not_english"
FILTERED = "filtered"
UNFINISHED = "unfinished"
NO_SCORE = "no_score"
DEGENERATE = "degenerate"
GENERATION_FAILED = "generation_failed"

# finish reasons of OpenAI-compatible endpoints (and "eos" for local generation)
_STOPPED = {"stop", "eos", "eos_token", "end_turn", "stop_sequence"}
_CUT = {"length", "max_tokens", "max_new_tokens"}
_FILTERED = {"content_filter", "safety"}

# A refusal is said up front: these are looked for in the first sentence only, and they are
# phrased so that a description ("I cannot see any spiral arms") does not match.
_OBJECT = (
    r"(?:the |this |that |your |an |any )?(?:image|picture|photo|cutout|file|request|attachment)"
)
# the image itself: not "the image's redshift", "the file header", "images in detail"
_OBJECT_NOUN = (
    r"(?:images?|pictures?|photos?|cutouts?|files?|attachments?)\b(?!'s\b)"
    r"(?!\s+(?:in detail|header|metadata|data|name)\b)"
)
_HELP = (
    r"(?:help|assist|comply|fulfil+|provide (?:a |an |any )?(?:description|analysis|answer)|"
    r"(?:view|see|open|access|analy[sz]e|process|describe|interpret|display|load) " + _OBJECT + r")"
)
_REFUSALS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"^\W*sorry\b",
        r"\bI(?:'m| am) (?:so |very |really )?sorry\b",
        r"\bI apologi[sz]e\b",
        r"\bas an (?:ai|a\.i\.|artificial intelligence|language model)\b",
        r"\bI(?:'m| am)? ?(?:not able|unable) to " + _HELP,
        r"\bI (?:cannot|can't|can not|won't|will not|am not able to) " + _HELP,
        r"\b(?:don't|do not|cannot|can't) see (?:an?|the|any) (?:image|picture|attachment)\b",
        r"\bno (?:image|picture|attachment) (?:was|is|has been|have been) (?:provided|attached|uploaded|shared|included)\b",
        # the model cannot see the image at all, whatever follows
        r"\bI (?:don't|do not) have (?:the )?(?:ability|capability|capacity) to (?:view|see|"
        r"analy[sz]e|process|open|interpret|read) (?:the |this |that |your |any )?" + _OBJECT_NOUN,
        r"\bI (?:don't|do not) have access to (?:the |this |that |your |any )?" + _OBJECT_NOUN,
        r"\b(?:cannot|can't|can not|unable to|not able to) provide (?:any )?(?:details|"
        r"information)(?:\s*[.!]|\s*$| about (?:the |this |that |your )?" + _OBJECT_NOUN + ")",
        r"\b(?:image|picture|cutout|file)\b[^.]*\b(?:blank|corrupted|unreadable|empty)\b[^.]*"
        r"\b(?:cannot|can't|can not|unable to) (?:describe|analy[sz]e|interpret) "
        r"(?:it|this|that|anything|the (?:image|picture|cutout))\b",
    )
]
# Refusals phrased like a hedge ("I do not have access to spectra, but the image shows…"):
# they count unless the first sentence goes on ("but", "however") to something other than an
# offer of help.
_HEDGED_REFUSALS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\bI (?:don't|do not) have (?:the )?(?:ability|capability|capacity|access)\b",
        r"\b(?:cannot|can't|can not|unable to|not able to) provide (?:any )?(?:details|information)\b",
    )
]
_GOES_ON = re.compile(r"\b(?:but|however|although|though)\b", re.IGNORECASE)
# what a description goes on to (a hedge followed by none of these is a refusal)
_DESCRIBES = re.compile(
    r"\b(?:galax(?:y|ies)|shows?|appears?|looks?|spiral|elliptical|dis[ck]s?|arms?|bars?|"
    r"rings?|core|bulge|tidal|merg\w*|lens\w*|arcs?|edge-on|bright|faint|red|blue|"
    r"irregular|clumpy|smooth|compact|companion)\b", re.IGNORECASE)
# replies that stand for no answer at all
_PLACEHOLDERS = frozenset({"n/a", "na", "none", "null", "nan", "nil", "unknown", "<image>", "ok",
                           "okay", "undefined", "-"})
_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)

# Common function words. English captions are full of the first set; a reply in French,
# Spanish, German, Italian or Portuguese is full of the second and nearly free of the first.
_ENGLISH_WORDS = frozenset(
    "the a an of and with in on is are was were to this that its it which as by from or "
    "at be has have appears appear shows show galaxy object central there these".split()
)
_OTHER_WORDS = (
    frozenset(
        "le la les des du un une et est sont avec dans pour sur qui que ce cette "
        "der die das den dem des und ist sind mit ein eine einer im zu von nicht auf "
        "el los las del y es son con una por para se lo al "
        "il gli di che è e con per una sono della nel "
        "o os as um uma é são com em da do dos das não".split()
    )
    - _ENGLISH_WORDS
)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")

_SCORE = re.compile(r"\bscore\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10\b)?", re.IGNORECASE)


def validate_image(image: np.ndarray, bands: Sequence[str]) -> str | None:
    """Why ``image`` (B, H, W) with planes ``bands`` cannot be shown to a model, or None.

    Rejected: not 3-D, a plane count that differs from ``bands``, zero size, no finite pixel,
    a drawn band (:func:`~galaxy_assets.survey.rgb.choose_rgb_bands`) whose plane holds no
    finite pixel or one value only (a missing band would be drawn black or flat and change
    the colours the model reads), and a cutout that is zero everywhere. A band that is not
    drawn does not matter.
    """
    from galaxy_assets.survey.rgb import choose_rgb_bands, normalize_band

    arr = np.asarray(image)
    if arr.ndim != 3:
        return f"{BAD_IMAGE}: image has shape {arr.shape}; expected (bands, height, width)"
    if arr.shape[0] != len(bands):
        return (
            f"{BAD_IMAGE}: image has {arr.shape[0]} planes but {len(bands)} bands are named "
            f"({', '.join(bands) or 'none'}); a band is missing from the cutout"
        )
    if arr.size == 0:
        return f"{BAD_IMAGE}: image is empty (shape {arr.shape})"
    if not np.issubdtype(arr.dtype, np.number):
        return f"{BAD_IMAGE}: image has dtype {arr.dtype}; expected floating-point pixels"
    finite = np.isfinite(arr)
    if not finite.any():
        return f"{BAD_IMAGE}: every pixel is NaN or infinite"
    if not np.any(arr[finite]):
        return f"{BAD_IMAGE}: every pixel is zero"
    try:
        drawn = set(choose_rgb_bands(bands)) - {""}
    except ValueError:
        drawn = set()
    for band, plane, ok in zip(bands, arr, finite, strict=True):
        if normalize_band(band) not in drawn:
            continue
        if not ok.any():
            return (
                f"{BAD_IMAGE}: band {band} has no finite pixel (the band is missing for this "
                "galaxy)"
            )
        values = plane[ok]
        if values.min() == values.max():
            return (
                f"{BAD_IMAGE}: band {band} holds one value only ({float(values[0]):g}): it "
                "would be drawn flat and change the colours"
            )
    return None


def _truncated(finish: str | bool | None) -> tuple[bool, str | None]:
    """(cut off?, the error for any other abnormal finish)."""
    if finish is None or finish is False:
        return False, None
    if finish is True:
        return True, None
    reason = str(finish).strip().lower()
    if reason in _STOPPED or reason == "":
        return False, None
    if reason in _CUT:
        return True, None
    if reason in _FILTERED:
        return False, f"{FILTERED}: the endpoint withheld the reply (finish_reason={finish!r})"
    return False, (
        f"{UNFINISHED}: the reply ended with finish_reason={finish!r} instead of a normal stop"
    )


def _first_sentence(text: str, limit: int = 240) -> str:
    head = text[:limit]
    match = _SENTENCE_END.search(head)
    return head[: match.start()] if match else head


def _language_problem(text: str) -> str | None:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    latin = sum(1 for c in letters if "LATIN" in unicodedata.name(c, ""))
    share = latin / len(letters)
    if share < 0.8:
        return (
            f"{NOT_ENGLISH}: {1 - share:.0%} of the letters are outside the Latin alphabet "
            f"(reply begins {text[:40]!r})"
        )
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < 8:
        return None
    english = sum(w in _ENGLISH_WORDS for w in words)
    other = sum(w in _OTHER_WORDS for w in words)
    if other >= 3 and other > 2 * english:
        return (
            f"{NOT_ENGLISH}: {other} of {len(words)} words are common non-English function "
            f"words and {english} English ones (reply begins {text[:40]!r})"
        )
    return None


def validate_reply(
    text: str | None, finish_reason_or_truncated: str | bool | None = None
) -> tuple[str | None, str | None]:
    """``(caption, None)`` when ``text`` is a usable caption, else ``(None, reason)``.

    ``finish_reason_or_truncated`` is either a bool (True: generation stopped at the token
    budget without an end-of-sequence token) or an OpenAI-style ``finish_reason`` ("stop",
    "length", "content_filter"…); None means a normal stop. The reply is rejected when it is
    empty, cut off, filtered, a refusal, or obviously not English.
    """
    body = (text or "").strip()
    cut, finish_error = _truncated(finish_reason_or_truncated)
    if finish_error:
        return None, finish_error
    low = body.lower()
    if "<think>" in low or "</think>" in low:  # a reasoning model's thoughts: not the caption
        thought = body
        body = _THINK.sub("", body).strip()
        if "</think>" in body.lower():  # the template opened the block: the reply only closes it
            body = body[body.lower().rfind("</think>") + len("</think>"):].strip()
        if "<think>" in body.lower():
            return None, (f"{TRUNCATED if cut else EMPTY}: the reply holds only the model's "
                          f"reasoning, never closed ({len(thought)} characters)")
    if not body or not any(c.isalnum() for c in body):
        return None, f"{EMPTY}: the model returned no text" + (f" ({body!r})" if body else "")
    if body.lower().strip(" .!\"'`*") in _PLACEHOLDERS:
        return None, f"{EMPTY}: the model returned a placeholder ({body!r})"
    if cut:
        return None, (
            f"{TRUNCATED}: the reply hit the generation budget before it ended "
            f"({len(body)} characters, ends {body[-40:]!r}); raise max_new_tokens / max_tokens "
            "or ask for a shorter answer"
        )
    head = _first_sentence(body).replace("\u2019", "'")
    for pattern in _REFUSALS:
        if pattern.search(head):
            return None, f"{REFUSAL}: the model declined ({head[:80]!r})"
    goes_on = _GOES_ON.search(head)
    if not goes_on or not _DESCRIBES.search(head[goes_on.end():]):
        for pattern in _HEDGED_REFUSALS:
            if pattern.search(head):
                return None, f"{REFUSAL}: the model declined ({head[:80]!r})"
    problem = _language_problem(body) or _repetition_problem(body)
    if problem:
        return None, problem
    return body, None


def _repetition_problem(text: str) -> str | None:
    """A reply stuck in a loop: at least 20 words, fewer than one in ten of them distinct (a
    long natural caption has about half)."""
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < 20:
        return None
    distinct = len(set(words))
    if distinct < 0.1 * len(words):
        return (f"{DEGENERATE}: {len(words)} words but only {distinct} distinct ones (reply "
                f"begins {text[:40]!r})")
    return None


@dataclass(frozen=True)
class RatingResult:
    """A model's 1–10 rating of one galaxy for a question (VLM re-ranking).

    ``score`` is the mean of the parsed samples in ``scores``; when no sample could be
    parsed, ``score`` is None and ``error`` says why.
    """

    object_id: str
    score: float | None
    scores: tuple[float, ...] = field(default=())
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.score is not None and self.error is None


def parse_score(
    text: str | None, low: float = 1, high: float = 10
) -> tuple[float | None, str | None]:
    """``(N, None)`` from a reply that holds "Score: N" (first occurrence), else ``(None, reason)``.

    Accepts "Score: 7", "score = 7.5", "**Score:** 8", "Score: 9/10"; N must lie in
    [``low``, ``high``].
    """
    body = (text or "").strip()
    if not body:
        return None, f"{NO_SCORE}: the model returned no text"
    match = _SCORE.search(body.replace("**", ""))
    if match is None:
        return None, f"{NO_SCORE}: no 'Score: N' in the reply (begins {body[:60]!r})"
    value = float(match.group(1))
    if not math.isfinite(value) or not low <= value <= high:
        return None, f"{NO_SCORE}: score {match.group(1)} is outside {low:g}..{high:g}"
    return value, None
