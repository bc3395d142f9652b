"""A small client for OpenAI-compatible HTTP endpoints (vLLM, Ollama, OpenAI, TGI…).

:class:`OpenAICompatibleClient` POSTs JSON to ``<base_url>/<route>`` (``base_url`` usually
ends in ``/v1``) and gives back an :class:`HTTPResult` per request: the decoded JSON, or a
recorded error that says what went wrong. One bad request never aborts a batch.

What it handles:

* **API key**: sent as ``Authorization: Bearer …``; kept in a :class:`Secret` whose ``repr``
  is ``'***'``, and scrubbed from every error message the client writes.
* **Timeouts**: ``timeout_s`` is the read timeout of each attempt (the connect timeout is
  ``min(timeout_s, 10)``).
* **Retries**: HTTP 429 and 5xx, timeouts and connection errors are retried up to
  ``max_retries`` times with exponential backoff and jitter
  (``min(backoff_max_s, backoff_base_s * 2**k)``, times a random factor in [0.5, 1]); a
  ``Retry-After`` header (seconds or an HTTP date) is honoured as the minimum wait, up to
  ``retry_after_max_s``. Other 4xx answers and undecodable JSON are not retried.
* **Request budget**: every HTTP attempt (retries included) counts against
  ``request_budget``; an attempt past it raises :class:`RequestBudgetExceeded` from
  :meth:`OpenAICompatibleClient.post_json`. :meth:`~OpenAICompatibleClient.post_many` raises
  it up front when the batch alone does not fit in what is left, and records it as the error
  of the requests it could not send when retries use the rest up mid-batch.
* **Bounded concurrency**: :meth:`~OpenAICompatibleClient.post_many` (and :func:`bounded_map`
  for callers that do their own per-item work) run at most ``concurrency`` requests at once on
  a thread pool and return results in input order.

Plain Python on ``requests``; knows nothing of Dagster.
"""

from __future__ import annotations

import email.utils
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

__all__ = [
    "HTTPClientError",
    "HTTPResult",
    "OpenAICompatibleClient",
    "RequestBudgetExceeded",
    "Secret",
    "bounded_map",
]

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504}) | frozenset(range(505, 600))
_BODY_SNIPPET = 200


class HTTPClientError(Exception):
    """The client is misconfigured (bad base URL, negative timeout…): raised at start-up."""


class RequestBudgetExceeded(HTTPClientError):
    """The configured request budget is spent; no request was sent."""


class Secret:
    """A string that never shows itself in ``repr``/``str`` (API keys)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self):  # never pickle the value into an artifact by accident
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class HTTPResult:
    """The outcome of one request: ``data`` (decoded JSON) when ``ok``, else ``error``."""

    ok: bool
    data: Any = None
    error: str | None = None
    status: int | None = None  # HTTP status of the last attempt (None: no answer)
    attempts: int = 0
    elapsed_s: float = 0.0


def bounded_map(fn: Callable[[T], R], items: Sequence[T], concurrency: int) -> list[R]:
    """``[fn(x) for x in items]`` on at most ``concurrency`` threads, in input order.

    ``fn`` should record its own failures in what it returns; an exception it raises
    propagates (after the running calls finish) like in the plain loop.
    """
    if concurrency < 1:
        raise HTTPClientError(f"concurrency={concurrency}; it must be at least 1")
    if concurrency == 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(
        max_workers=min(concurrency, len(items)), thread_name_prefix="galaxy-http"
    ) as pool:
        return list(pool.map(fn, items))


def _retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class OpenAICompatibleClient:
    """JSON over HTTP to an OpenAI-compatible endpoint, with retries, a budget and a pool.

    ``base_url`` is the API root, e.g. ``http://localhost:8000/v1`` (vLLM),
    ``http://localhost:11434/v1`` (Ollama) or ``https://api.openai.com/v1``; routes such as
    ``chat/completions`` are appended to it. ``api_key`` (optional: local servers rarely want
    one) is sent as a bearer token and never logged. ``setting`` names the configuration
    section in error messages (e.g. ``"captioner"``), so a user knows what to change.

    A breaker stops a run from spending an hour on an endpoint that cannot answer: after
    ``breaker_threshold`` requests in a row end in a connection error, 401/403/404 or an
    exhausted quota (OpenAI's 429 ``insufficient_quota``, which is never retried), the next
    requests are not sent for ``breaker_cooldown_s`` seconds; each returns an error that says
    why. Then one request tries again; any success closes the breaker.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | Secret | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_after_max_s: float = 120.0,
        request_budget: int | None = None,
        concurrency: int = 4,
        setting: str = "endpoint",
        sleep: Callable[[float], None] = time.sleep,
        breaker_threshold: int = 5,
        breaker_cooldown_s: float = 30.0,
    ) -> None:
        self.setting = setting
        self.base_url = self._check_base_url(base_url, setting)
        if timeout_s is None or not timeout_s > 0:
            raise HTTPClientError(f"{setting}.timeout_s={timeout_s!r}; it must be > 0 seconds")
        if max_retries < 0:
            raise HTTPClientError(f"{setting}.max_retries={max_retries}; it must be >= 0")
        if concurrency < 1:
            raise HTTPClientError(f"{setting}.concurrency={concurrency}; it must be >= 1")
        if request_budget is not None and request_budget < 0:
            raise HTTPClientError(
                f"{setting}.request_budget={request_budget}; use a count >= 0, or None for no limit"
            )
        if backoff_base_s < 0 or backoff_max_s < 0 or retry_after_max_s < 0:
            raise HTTPClientError(f"{setting}: backoff and retry-after limits must be >= 0")
        key = api_key.reveal() if isinstance(api_key, Secret) else api_key
        key = key.strip() if key else key  # a key read from a file often ends in a newline
        if key and any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise HTTPClientError(
                f"{setting}: the API key holds a control character (a line break inside it?); "
                "set the variable the settings' api_key_env names to the bare key"
            )
        self._api_key = Secret(key) if key else None
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.retry_after_max_s = float(retry_after_max_s)
        self.request_budget = request_budget
        self.concurrency = int(concurrency)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._requests_made = 0
        self._idle: queue.SimpleQueue[requests.Session] = queue.SimpleQueue()
        self._sessions: list[requests.Session] = []
        self._rng = random.Random()
        self.breaker_threshold = int(breaker_threshold)
        self.breaker_cooldown_s = float(breaker_cooldown_s)
        self._dead_streak = 0
        self._dead_error = ""
        self._opened_at: float | None = None
        self._trial = 0  # the token of the one request trying the endpoint after the cool-down
        self._trials = 0

    # -- configuration -------------------------------------------------------------------

    @staticmethod
    def _check_base_url(base_url: str, setting: str) -> str:
        url = (base_url or "").strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise HTTPClientError(
                f"{setting}.base_url={base_url!r} is not an http(s) URL; set it to the API root, "
                "e.g. 'http://localhost:8000/v1' (vLLM) or 'https://api.openai.com/v1'"
            )
        if parts.username or parts.password:
            raise HTTPClientError(
                f"{setting}.base_url must not carry credentials; pass the key as api_key"
            )
        return url.rstrip("/")

    @property
    def host(self) -> str:
        """``host[:port]`` of the endpoint (used in model ids)."""
        return urlsplit(self.base_url).netloc

    @property
    def has_api_key(self) -> bool:
        return self._api_key is not None

    @property
    def requests_made(self) -> int:
        """HTTP attempts sent so far (retries included)."""
        return self._requests_made

    @property
    def budget_left(self) -> int | None:
        """Attempts left in the request budget (None: no budget)."""
        if self.request_budget is None:
            return None
        return max(0, self.request_budget - self._requests_made)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, "
            f"api_key={'***' if self._api_key else None}, timeout_s={self.timeout_s}, "
            f"max_retries={self.max_retries}, request_budget={self.request_budget}, "
            f"concurrency={self.concurrency})"
        )

    # -- plumbing --------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """``text`` with the API key (if any) replaced by ``***``."""
        if self._api_key is not None and self._api_key.reveal():
            key = self._api_key.reveal()
            # the key itself, and its repr as an exception may quote it
            for form in (repr(key)[1:-1], key):
                text = text.replace(form, "***")
        return text

    def _acquire(self) -> requests.Session:
        """An idle pooled session (keep-alive connections), or a new one; at most as many
        exist as requests ever ran at the same time."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        session = requests.Session()
        session.headers["Content-Type"] = "application/json"
        session.headers["Accept"] = "application/json"
        if self._api_key is not None:
            session.headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        with self._lock:
            self._sessions.append(session)
        return session

    def _take_budget(self, route: str) -> None:
        with self._lock:
            if self.request_budget is not None and self._requests_made >= self.request_budget:
                raise RequestBudgetExceeded(
                    f"request budget of {self.request_budget} requests to {self.host} is spent "
                    f"(POST {route} not sent); raise {self.setting}.request_budget or rerun later"
                )
            self._requests_made += 1

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        delay *= 0.5 + 0.5 * self._rng.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max_s))
        return delay

    def url(self, route: str) -> str:
        return f"{self.base_url}/{route.lstrip('/')}"

    # -- requests ----------------------------------------------------------------------------

    def post_json(self, route: str, payload: Mapping[str, Any]) -> HTTPResult:
        """POST ``payload`` as JSON to ``<base_url>/<route>``; retry what is worth retrying.

        Returns an :class:`HTTPResult`: ``ok`` with the decoded JSON, or the error of the last
        attempt. Raises :class:`RequestBudgetExceeded` when the budget is spent before an
        attempt (earlier attempts' errors are lost then; the message says so).
        """
        url = self.url(route)
        t0 = time.perf_counter()
        try:
            body = json.dumps(payload, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            return self._done(
                False, None, f"request for POST {url} is not valid JSON: {exc}", None, 0, t0
            )
        refused, trial = self._breaker_open(url)
        if refused is not None:
            return self._done(False, None, refused, None, 0, t0)
        try:
            return self._attempts(route, url, body, t0, trial)
        finally:
            if trial:  # whatever ended it (an invalid answer, a spent budget): the next may try
                self._breaker_settle_trial(trial)

    def _attempts(
        self, route: str, url: str, body: bytes, t0: float, trial: int = 0
    ) -> HTTPResult:
        """The attempts of one request (see :meth:`post_json`)."""
        attempts = 0
        status: int | None = None
        error = "not sent"
        for attempt in range(self.max_retries + 1):
            self._take_budget(route)
            attempts += 1
            dead = False  # the endpoint cannot answer anyone (unreachable, key, route, quota)
            retry_after: float | None = None
            session = self._acquire()
            try:
                try:
                    resp = session.post(
                        url, data=body, timeout=(min(self.timeout_s, 10.0), self.timeout_s)
                    )
                except requests.exceptions.ConnectTimeout:  # unreachable (blackholed) host
                    status = None
                    error = f"could not connect within {min(self.timeout_s, 10.0):g} s (POST {url})"
                    retryable, dead = True, True
                except requests.Timeout:
                    status = None
                    error = f"timed out after {self.timeout_s:g} s (POST {url})"
                    retryable = True
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                    status = None
                    error = f"connection error (POST {url}): {type(exc).__name__}: {exc}"
                    retryable = True
                    dead = isinstance(exc, requests.ConnectionError) and not isinstance(
                        exc, requests.exceptions.ChunkedEncodingError)
                except requests.RequestException as exc:
                    status = None
                    error = f"request failed (POST {url}): {type(exc).__name__}: {exc}"
                    retryable = False
                else:
                    status = resp.status_code
                    if 200 <= status < 300:
                        try:
                            data = json.loads(resp.content)
                        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                            snippet = resp.content[:_BODY_SNIPPET].decode("utf-8", "replace")
                            error = (
                                f"invalid JSON in the HTTP {status} answer to POST {url} ({exc}); "
                                f"body starts with {snippet!r}; is {self.setting}.base_url an "
                                "OpenAI-compatible API root?"
                            )
                            return self._done(False, None, error, status, attempts, t0)
                        self._breaker_record(None)
                        return self._done(True, data, None, status, attempts, t0)
                    retryable = status in RETRY_STATUSES
                    retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
                    error = f"HTTP {status} from POST {url}: {self._server_message(resp)}"
                    if status == 404:
                        error += f" (check {self.setting}.base_url: it usually ends in /v1)"
                        dead = True
                    elif status in (401, 403):
                        error += f" (check {self.setting}.api_key)"
                        dead = True
                    elif status == 429 and self._error_code(resp) == "insufficient_quota":
                        error += " (the account's quota is spent: waiting will not help)"
                        retryable, dead = False, True
                    resp.close()
            finally:
                self._idle.put(session)
            if not retryable or attempt == self.max_retries:
                break
            delay = self._backoff(attempt, retry_after)
            log.warning(
                "%s; retry %d/%d in %.2f s",
                self.redact(error),
                attempt + 1,
                self.max_retries,
                delay,
            )
            self._sleep(delay)
        if attempts > 1:
            error = f"{error} (gave up after {attempts} attempts)"
        if dead:  # otherwise the endpoint answered (or timed out reading): no verdict on it
            self._breaker_record(error, trial)
        return self._done(False, None, error, status, attempts, t0)

    # -- the breaker ---------------------------------------------------------------------

    def _breaker_open(self, url: str) -> tuple[str | None, int]:
        """``(why url is not sent now or None, the trial's token or 0)``. After the cool-down
        one request (the trial) goes; the others are refused until it ends."""
        with self._lock:
            if self._opened_at is None:
                return None, 0
            waited = time.monotonic() - self._opened_at
            if waited >= self.breaker_cooldown_s and not self._trial:
                self._trials += 1  # this request tries again; the breaker closes on success
                self._trial = self._trials
                return None, self._trial
            wait = max(self.breaker_cooldown_s - waited, 0.0)
            return (
                f"not sent (POST {url}): the last {self._dead_streak} requests to "
                f"{self.host} failed the same way, the last with: {self._dead_error}; trying "
                + (f"again in {wait:.0f} s" if not self._trial else "again now (one request)")
            ), 0

    def _breaker_record(self, dead_error: str | None, trial: int = 0) -> None:
        """A success (None) closes the breaker; a request the endpoint could not answer counts
        towards opening it, and a failed trial (its ``trial`` token) opens it for another
        cool-down. Another request's failure never ends a trial."""
        with self._lock:
            if dead_error is None:
                self._dead_streak, self._opened_at, self._trial = 0, None, 0
                return
            self._dead_streak += 1
            self._dead_error = self.redact(dead_error)
            failed_trial = bool(trial) and trial == self._trial
            if failed_trial or (self._dead_streak >= self.breaker_threshold > 0
                                and self._opened_at is None):
                if failed_trial:
                    self._trial = 0
                self._opened_at = time.monotonic()
                log.error("%s: %d requests in a row failed (%s); not sending more for %.0f s",
                          self.host, self._dead_streak, self._dead_error,
                          self.breaker_cooldown_s)

    def _breaker_settle_trial(self, trial: int) -> None:
        """Trial ``trial`` ended without a verdict on the endpoint (a 5xx, a read timeout, an
        invalid answer, a spent budget): the next request may try."""
        with self._lock:
            if self._trial == trial:
                self._trial = 0

    @staticmethod
    def _error_code(resp: requests.Response) -> str | None:
        """OpenAI's ``{"error": {"code": …}}`` (or ``type``), if the body has one."""
        try:
            data = resp.json()
        except ValueError:
            return None
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            code = err.get("code") or err.get("type")
            return str(code) if code else None
        return None

    def _done(
        self,
        ok: bool,
        data: Any,
        error: str | None,
        status: int | None,
        attempts: int,
        t0: float,
    ) -> HTTPResult:
        return HTTPResult(
            ok=ok,
            data=data,
            error=None if error is None else self.redact(error),
            status=status,
            attempts=attempts,
            elapsed_s=time.perf_counter() - t0,
        )

    @staticmethod
    def _server_message(resp: requests.Response) -> str:
        """The endpoint's own error text (OpenAI's ``{"error": {"message": …}}``), short."""
        try:
            data = resp.json()
        except ValueError:
            text = resp.text[:_BODY_SNIPPET].strip()
            return text or resp.reason or "no body"
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict):
                msg = err.get("message") or err.get("detail") or json.dumps(err)[:_BODY_SNIPPET]
                return str(msg)[:_BODY_SNIPPET]
            return str(err)[:_BODY_SNIPPET]
        return json.dumps(data)[:_BODY_SNIPPET]

    def post_many(self, route: str, payloads: Sequence[Mapping[str, Any]]) -> list[HTTPResult]:
        """POST every payload (at most ``concurrency`` at once); one result each, in order.

        Raises :class:`RequestBudgetExceeded` before sending anything when the batch does not
        fit in the budget left; when retries spend the rest of the budget mid-batch, the
        requests that could not be sent get that as their recorded error.
        """
        left = self.budget_left
        if left is not None and len(payloads) > left:
            raise RequestBudgetExceeded(
                f"a batch of {len(payloads)} requests to {self.host} does not fit in the "
                f"{left} left of the request budget ({self.request_budget}); raise "
                f"{self.setting}.request_budget or send a smaller batch"
            )

        def one(payload: Mapping[str, Any]) -> HTTPResult:
            try:
                return self.post_json(route, payload)
            except RequestBudgetExceeded as exc:
                return HTTPResult(ok=False, error=self.redact(str(exc)))

        return bounded_map(one, payloads, self.concurrency)

    def close(self) -> None:
        """Close the pooled connections (idempotent)."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._idle = queue.SimpleQueue()

    def __enter__(self) -> OpenAICompatibleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
