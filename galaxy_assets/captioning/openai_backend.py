"""The ``openai`` captioner: any OpenAI-compatible chat-completions endpoint with vision.

Each galaxy is rendered as an RGB picture (:func:`galaxy_assets.survey.rgb.lupton_rgb`),
encoded as a PNG ``data:`` URL and sent with the versioned prompt as one user message::

    {"model": …, "max_tokens": …, "temperature": …,
     "messages": [{"role": "user", "content": [
         {"type": "text", "text": <prompt>},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,…"}}]}]}

Transport (timeouts, retries with backoff on 429/5xx, the request budget, bounded
concurrency) is :class:`galaxy_assets.http_client.OpenAICompatibleClient`.

Every reply is checked by :func:`check_reply` before it becomes a caption: the rules shared
by all backends (:mod:`galaxy_assets.captioning.validation`: empty, cut off, filtered,
refusal, not English), plus the API's ``refusal`` field and a word limit. A reply that fails
is a recorded error for that galaxy (``"<kind>: <why>"``, grouped by kind in the failures
table), never a placeholder caption. Endpoint failures are ``generation_failed: …``.

Plain Python; knows nothing of Dagster.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from galaxy_assets.captioning.base import (
    CaptionerError,
    CaptionRequest,
    CaptionResult,
    load_prompt,
)
from galaxy_assets.captioning.validation import (
    GENERATION_FAILED,
    REFUSAL,
    RatingResult,
    parse_score,
    validate_image,
    validate_reply,
)
from galaxy_assets.http_client import (
    HTTPClientError,
    OpenAICompatibleClient,
    RequestBudgetExceeded,
    bounded_map,
)
from galaxy_assets.survey import rgb

log = logging.getLogger(__name__)

__all__ = ["TOO_LONG", "OpenAICaptioner", "RatingResult", "check_reply", "encode_image"]

CHAT_ROUTE = "chat/completions"
TOO_LONG = "too_long"  # failure kind: the reply has more than max_words words


def check_reply(
    text: str | None,
    finish_reason: str | None = None,
    refusal: str | None = None,
    *,
    max_words: int = 200,
) -> tuple[str | None, str | None]:
    """``(caption, None)`` for a usable chat-completions reply, else ``(None, reason)``.

    Rejects a set ``refusal`` field (``refusal: …``), whatever
    :func:`~galaxy_assets.captioning.validation.validate_reply` rejects (``empty``,
    ``truncated`` for ``finish_reason == "length"``, ``filtered``, ``refusal``,
    ``not_english``…), and a reply of more than ``max_words`` words (``too_long: …``).
    """
    if refusal and refusal.strip():
        return None, f"{REFUSAL}: the model declined (refusal field: {_short(refusal)})"
    caption, error = validate_reply(text, finish_reason)
    if error is not None:
        return None, error
    n_words = len(caption.split())  # type: ignore[union-attr]
    if n_words > max_words:
        return None, (
            f"{TOO_LONG}: the reply has {n_words} words, more than max_words={max_words} "
            "(the prompt asks for at most 120); raise captioner.max_words or tighten the prompt"
        )
    return caption, None


def _short(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def encode_image(image: np.ndarray, bands: Sequence[str], size: int | None = None) -> str:
    """``data:image/png;base64,…`` of the Lupton RGB picture of ``image`` (B, H, W)."""
    picture = rgb.lupton_rgb(image, bands)
    png = rgb.to_png(picture, size=size)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# -- the captioner -----------------------------------------------------------------------------


class OpenAICaptioner:
    """Captions galaxies with a vision model behind an OpenAI-compatible endpoint.

    ``base_url`` is the API root (``http://localhost:8000/v1`` for vLLM,
    ``http://localhost:11434/v1`` for Ollama, ``https://api.openai.com/v1``), ``model`` the
    served model's name, ``api_key`` the bearer token if the endpoint wants one (never logged).
    ``prompt`` names a file in ``captioning/prompts``. ``image_size`` resizes the picture
    (square, px) before sending; None sends the cutout's own size. ``max_words`` bounds an
    acceptable reply (the prompt asks for at most 120 words).
    """

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        prompt: str = "describe_v1",
        max_tokens: int = 300,
        temperature: float = 0.0,
        concurrency: int = 4,
        timeout_s: float = 60,
        max_retries: int = 4,
        request_budget: int | None = None,
        image_size: int | None = None,
        *,
        max_words: int = 200,
        rate_prompt: str = "rate_v1",
        backoff_base_s: float = 0.5,
    ) -> None:
        if not model or not str(model).strip():
            raise CaptionerError(
                "captioner.model is empty; set it to the model name the endpoint serves "
                "(e.g. 'Qwen/Qwen2.5-VL-7B-Instruct' for vLLM, 'gpt-4o-mini' for OpenAI)"
            )
        if max_tokens < 1:
            raise CaptionerError(f"captioner.max_tokens={max_tokens}; it must be >= 1")
        if not 0.0 <= temperature <= 2.0:
            raise CaptionerError(f"captioner.temperature={temperature}; use a value in [0, 2]")
        if image_size is not None and image_size < 8:
            raise CaptionerError(
                f"captioner.image_size={image_size}; use None (native size) or >= 8 px"
            )
        if max_words < 1:
            raise CaptionerError(f"captioner.max_words={max_words}; it must be >= 1")
        try:
            self.client = OpenAICompatibleClient(
                base_url,
                api_key,
                timeout_s=timeout_s,
                max_retries=max_retries,
                request_budget=request_budget,
                concurrency=concurrency,
                backoff_base_s=backoff_base_s,
                setting="captioner",
            )
        except HTTPClientError as exc:
            raise CaptionerError(str(exc)) from None
        self.model = str(model).strip()
        self.model_id = self.model
        self.prompt = load_prompt(prompt)
        self.prompt_sha = self.prompt.sha
        self.rate_prompt = load_prompt(rate_prompt)  # for rate(); its sha: rate_prompt.sha
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.image_size = image_size
        self.max_words = int(max_words)

    def __repr__(self) -> str:
        return (
            f"OpenAICaptioner(base_url={self.client.base_url!r}, model={self.model!r}, "
            f"prompt={self.prompt.name!r}, api_key={'***' if self.client.has_api_key else None})"
        )

    # -- requests -----------------------------------------------------------------------------

    def _payload(
        self, text: str, data_url: str, *, max_tokens: int, temperature: float, n: int = 1
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": text},
                        {"type": "image_url", "image_url": {"url": data_url}},
                    ],
                }
            ],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if n > 1:
            payload["n"] = n
        return payload

    @property
    def requests_left(self) -> int | None:
        """Requests left of ``captioner.request_budget`` (None: no budget)."""
        return self.client.budget_left

    def _not_sent(self) -> str:
        return (
            f"{GENERATION_FAILED}: not sent: captioner.request_budget="
            f"{self.client.request_budget} is spent (retries used part of it); raise it and "
            "run again to caption this galaxy"
        )

    def _beyond_budget(self, requests: Sequence[CaptionRequest]) -> dict[str, str]:
        """The object_ids of ``requests`` the budget left cannot cover, with why."""
        left = self.client.budget_left
        if left is None:
            return {}
        sendable = [r for r in requests if validate_image(r.image, r.bands) is None]
        if len(sendable) <= left:
            return {}
        log.warning("captioner.request_budget is spent: %d galaxies of this batch are not sent",
                    len(sendable) - left)
        return {r.object_id: self._not_sent() for r in sendable[left:]}

    def _check_budget(self, requests: Sequence[CaptionRequest]) -> None:
        left = self.client.budget_left
        if left is None:
            return
        n = sum(validate_image(r.image, r.bands) is None for r in requests)  # bad: not sent
        if n > left:
            raise CaptionerError(
                f"{n} galaxies to send but only {left} requests left of "
                f"captioner.request_budget={self.client.request_budget}; raise the budget or "
                "caption a smaller sample (nothing of this batch was sent; the captions "
                "stored before it are kept and a rerun resumes after them)"
            )

    def _send(
        self, text: str, request: CaptionRequest, n: int, temperature: float, max_tokens: int
    ) -> tuple[list[dict[str, Any]] | None, str | None]:
        """The reply's choices for one galaxy, or why there are none."""
        bad = validate_image(request.image, request.bands)
        if bad:
            return None, bad
        try:
            data_url = encode_image(request.image, request.bands, self.image_size)
        except Exception as exc:  # a rendering failure is this galaxy's problem only
            return None, (
                f"{GENERATION_FAILED}: could not render the image: {type(exc).__name__}: {exc}"
            )
        payload = self._payload(text, data_url, max_tokens=max_tokens, temperature=temperature, n=n)
        try:
            result = self.client.post_json(CHAT_ROUTE, payload)
        except RequestBudgetExceeded as exc:
            return None, f"{GENERATION_FAILED}: {exc}"
        if not result.ok:
            return None, f"{GENERATION_FAILED}: {result.error}"
        choices = result.data.get("choices") if isinstance(result.data, dict) else None
        if not isinstance(choices, list) or not choices:
            return None, (
                f"{GENERATION_FAILED}: malformed chat-completions answer from "
                f"{self.client.host}: no 'choices' (got {_short(str(result.data), 160)})"
            )
        return choices, None

    @staticmethod
    def _choice_fields(choice: Any) -> tuple[str | None, str | None, str | None]:
        if not isinstance(choice, dict):
            return None, None, None
        message = choice.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        refusal = message.get("refusal") if isinstance(message, dict) else None
        return (
            content if isinstance(content, str) else None,
            choice.get("finish_reason"),
            refusal if isinstance(refusal, str) else None,
        )

    def caption(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        """One :class:`CaptionResult` per request, in order (failures recorded, not raised).

        When the request budget left (``captioner.request_budget``; the run checked it
        covered the sample, but retries spend it too) cannot cover the batch, the galaxies it
        covers are sent and the others recorded as not sent, so the run ends normally and a
        rerun with a larger budget asks for them.
        """
        requests = list(requests)
        spent = self._beyond_budget(requests)

        def one(request: CaptionRequest) -> CaptionResult:
            if request.object_id in spent:
                return CaptionResult(request.object_id, None, spent[request.object_id])
            try:
                choices, error = self._send(
                    self.prompt.text, request, 1, self.temperature, self.max_tokens
                )
                if error is not None:
                    return CaptionResult(request.object_id, None, error)
                content, finish, refusal = self._choice_fields(choices[0])  # type: ignore[index]
                caption, problem = check_reply(content, finish, refusal, max_words=self.max_words)
                return CaptionResult(request.object_id, caption, problem)
            except Exception as exc:  # never let one galaxy abort the batch
                log.exception("captioning %s failed", request.object_id)
                return CaptionResult(
                    request.object_id,
                    None,
                    self.client.redact(
                        f"{GENERATION_FAILED}: unexpected {type(exc).__name__}: {exc}"
                    ),
                )

        results = bounded_map(one, requests, self.client.concurrency)
        failed = sum(not r.ok for r in results)
        if failed:
            log.warning("openai captioner: %d of %d galaxies failed", failed, len(results))
        return results

    def rate(
        self,
        requests: Sequence[CaptionRequest],
        question: str,
        n_samples: int = 1,
        *,
        temperature: float | None = None,
    ) -> list[RatingResult]:
        """How well each galaxy matches ``question``: the mean ``Score: N`` (1–10) of
        ``n_samples`` answers to the ``rate_v1`` prompt (VLM re-ranking).

        The samples come from one request with ``n=n_samples`` choices; ``temperature``
        defaults to the captioner's (at 0 all samples agree; a warning says so). Each answer
        is parsed with :func:`~galaxy_assets.captioning.validation.parse_score`; answers with
        no score (refusals, empty answers…) are skipped, and a galaxy with no scored answer
        gets the first reason as its recorded error. Same result type as the transformers
        backend's ``rate``.
        """
        if not question or not question.strip():
            raise CaptionerError("rate: question is empty")
        if n_samples < 1:
            raise CaptionerError(f"rate: n_samples={n_samples}; it must be >= 1")
        temp = self.temperature if temperature is None else float(temperature)
        if n_samples > 1 and temp == 0.0:
            log.warning("rate: n_samples=%d at temperature 0 gives identical samples", n_samples)
        text = self.rate_prompt.text.replace("{question}", question.strip())
        requests = list(requests)
        self._check_budget(requests)

        def one(request: CaptionRequest) -> RatingResult:
            try:
                choices, error = self._send(text, request, n_samples, temp, self.max_tokens)
                if error is not None:
                    return RatingResult(request.object_id, None, (), error)
                scores: list[float] = []
                problems: list[str] = []
                for choice in choices:  # type: ignore[union-attr]
                    content, _, refusal = self._choice_fields(choice)
                    if refusal and refusal.strip():
                        problems.append(
                            f"{REFUSAL}: the model declined (refusal field: {_short(refusal)})"
                        )
                        continue
                    value, problem = parse_score(content)
                    if value is None:
                        problems.append(problem or "no score")
                    else:
                        scores.append(value)
                if not scores:
                    return RatingResult(request.object_id, None, (), problems[0])
                return RatingResult(request.object_id, float(np.mean(scores)), tuple(scores))
            except Exception as exc:
                log.exception("rating %s failed", request.object_id)
                return RatingResult(
                    request.object_id,
                    None,
                    (),
                    self.client.redact(
                        f"{GENERATION_FAILED}: unexpected {type(exc).__name__}: {exc}"
                    ),
                )

        return bounded_map(one, requests, self.client.concurrency)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> OpenAICaptioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
