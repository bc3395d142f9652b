"""A tiny OpenAI-compatible HTTP server for tests, on 127.0.0.1 and a free port.

It speaks ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` and can be told to fail::

    with FakeOpenAIServer(api_key="sk-test") as server:
        server.add_fault("429", times=2, retry_after=0)      # the first two calls get 429
        server.add_fault("refusal", match=some_data_url)      # every call whose body holds it
        client = OpenAICompatibleClient(server.base_url, api_key="sk-test")
        ...
        assert server.requests[0].headers["Authorization"] == "Bearer sk-test"

Fault kinds (``FAULT_KINDS``): ``timeout`` (sleep ``delay_s`` before answering), ``429`` (with
``Retry-After: retry_after``), ``quota`` (429 with OpenAI's ``insufficient_quota`` code),
``500``, ``503``, ``400``, ``garbage`` (HTTP 200, body not JSON),
``disconnect`` (close the socket without an answer), and for chat only ``empty`` (content
""), ``length`` (finish_reason "length"), ``refusal`` (a refusing reply), ``refusal_field``
(the ``refusal`` field set, content null), ``non_english`` (a French reply), ``overlong``
(495 words). A fault applies to the requests whose route matches ``route`` (``"chat"``,
``"embeddings"`` or None for both) and, when ``match`` is given, whose raw body contains that
string (or for which ``match(body_dict)`` is true); ``times`` is how many matching requests
it hits (None: all). Faults are tried in the order they were added.

Replies when nothing fails: a chat request whose text asks for a "Score:" gets
``"Score: N\\n…"`` with N from a hash of the request (``score`` overrides it); any other gets
an English galaxy description (``caption`` overrides it; a callable gets the body). ``n``
choices are returned when the request asks for ``n``. Embeddings are deterministic hashed
bags of words (``embedding_dim`` wide, not normalised, so the client's normalisation is
exercised): texts that share words get close vectors.

``latency_s`` delays every answer; ``max_in_flight`` records the most requests that were being
answered at the same time (to check bounded concurrency). Use it in a test through a fixture::

    @pytest.fixture
    def server():
        with FakeOpenAIServer(api_key="sk-test") as srv:
            yield srv
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

__all__ = ["FAULT_KINDS", "Fault", "FakeOpenAIServer", "RecordedRequest", "fake_embedding"]

FAULT_KINDS = (
    "timeout", "429", "quota", "500", "503", "400", "garbage", "disconnect",
    "empty", "length", "refusal", "refusal_field", "non_english", "overlong",
)
_CHAT_ONLY = {"empty", "length", "refusal", "refusal_field", "non_english", "overlong"}

DEFAULT_CAPTIONS = (
    "The central object is a smooth elliptical galaxy with a bright, concentrated core and a "
    "red colour. No spiral arms, dust lanes or tidal features are visible. This is likely a "
    "quiescent early-type galaxy.",
    "This is a face-on spiral galaxy with two well-defined, loosely wound arms and a small "
    "yellow bulge. Blue clumps of star formation trace the arms. It is a star-forming "
    "late-type disc galaxy.",
    "An edge-on disc galaxy with a thin dark dust lane along its major axis and a faint "
    "bulge. There are no signs of interaction. It is a dusty spiral seen from the side.",
)
REFUSAL_TEXT = "I'm sorry, but I can't help with analysing this image."
NON_ENGLISH_TEXT = (
    "L'objet central est une galaxie spirale vue de face, avec deux bras bien définis et un "
    "petit bulbe jaune. Il s'agit d'une galaxie à disque qui forme des étoiles."
)


@dataclass
class Fault:
    kind: str
    times: int | None = 1
    match: str | Callable[[dict[str, Any]], bool] | None = None
    route: str | None = None  # "chat", "embeddings" or None (both)
    retry_after: float | str | None = None
    delay_s: float = 2.0
    hits: int = 0

    def applies(self, route: str, raw: bytes, body: dict[str, Any] | None) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.route is not None and self.route != route:
            return False
        if self.kind in _CHAT_ONLY and route != "chat":
            return False
        if self.match is None:
            return True
        if isinstance(self.match, str):
            return self.match.encode("utf-8") in raw
        return body is not None and bool(self.match(body))


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: dict[str, Any] | None
    fault: str | None = None
    time: float = field(default_factory=time.time)

    @property
    def image_urls(self) -> list[str]:
        """The ``image_url`` URLs of a chat request's messages."""
        urls = []
        for message in (self.body or {}).get("messages", []):
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and part.get("type") == "image_url":
                        urls.append(part["image_url"]["url"])
        return urls

    @property
    def text(self) -> str:
        """The text parts of a chat request's messages, joined."""
        out = []
        for message in (self.body or {}).get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out += [p.get("text", "") for p in content
                        if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(out)


_WORD = re.compile(r"[a-z0-9]+")


def fake_embedding(text: str, dim: int = 64) -> list[float]:
    """A deterministic hashed bag of words (plus a constant bias term), not normalised."""
    vec = np.zeros(dim, dtype=np.float64)
    vec[0] += 0.25
    for word in _WORD.findall(text.lower()):
        h = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
        idx = int.from_bytes(h[:4], "little") % dim
        sign = 1.0 if h[4] & 1 else -1.0
        vec[idx] += sign
    return [float(x) * 3.0 for x in vec]


def _stable_int(raw: bytes) -> int:
    return int.from_bytes(hashlib.sha256(raw).digest()[:4], "little")


class FakeOpenAIServer:
    """An OpenAI-compatible server in a thread; a context manager (or start()/stop())."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        caption: str | Callable[[dict[str, Any]], str] | None = None,
        score: int | None = None,
        embedding_dim: int = 64,
        latency_s: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.latency_s = latency_s  # added to every answer (to observe concurrency)
        self.caption = caption
        self.score = score
        self.embedding_dim = embedding_dim
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests handled at the same time
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------------------

    def add_fault(
        self,
        kind: str,
        times: int | None = 1,
        *,
        match: str | Callable[[dict[str, Any]], bool] | None = None,
        route: str | None = None,
        retry_after: float | str | None = None,
        delay_s: float = 2.0,
    ) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; use one of {FAULT_KINDS}")
        fault = Fault(kind, times, match, route, retry_after, delay_s)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget faults and recorded requests."""
        with self._lock:
            self.faults.clear()
            self.requests.clear()
            self.max_in_flight = 0

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """The API root to configure a client with (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def routed(self, route: str) -> list[RecordedRequest]:
        """Recorded requests of one route (``"chat"`` or ``"embeddings"``)."""
        suffix = "/chat/completions" if route == "chat" else "/embeddings"
        with self._lock:
            return [r for r in self.requests if r.path.endswith(suffix)]

    def start(self) -> FakeOpenAIServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-openai", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviour ------------------------------------------------------------------------

    def _take_fault(self, route: str, raw: bytes, body: dict[str, Any] | None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.applies(route, raw, body):
                    fault.hits += 1
                    return fault
        return None

    def _reply_text(self, body: dict[str, Any], raw: bytes, k: int) -> str:
        text = RecordedRequest("POST", "", {}, raw, body).text
        if "Score:" in text:
            score = self.score if self.score is not None else 1 + (_stable_int(raw) + k) % 10
            return f"Score: {score}\nThe image {'shows' if score > 5 else 'lacks'} the feature."
        if callable(self.caption):
            return self.caption(body)
        if self.caption is not None:
            return self.caption
        return DEFAULT_CAPTIONS[_stable_int(raw) % len(DEFAULT_CAPTIONS)]

    def chat_answer(self, body: dict[str, Any], raw: bytes, fault: str | None) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        choices = []
        for k in range(n):
            content: str | None = self._reply_text(body, raw, k)
            finish = "stop"
            refusal = None
            if fault == "empty":
                content = ""
            elif fault == "length":
                content = " ".join((content or "").split()[:12])
                finish = "length"
            elif fault == "refusal":
                content = REFUSAL_TEXT
            elif fault == "refusal_field":
                content, refusal = None, "I can't assist with that request."
            elif fault == "non_english":
                content = NON_ENGLISH_TEXT
            elif fault == "overlong":
                content = " ".join(DEFAULT_CAPTIONS * 5)  # long-winded, not a loop
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if refusal is not None:
                message["refusal"] = refusal
            choices.append({"index": k, "message": message, "finish_reason": finish})
        return {
            "id": f"chatcmpl-{_stable_int(raw):08x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
        }

    def embeddings_answer(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = [
            {"object": "embedding", "index": i, "embedding": fake_embedding(t, self.embedding_dim)}
            for i, t in enumerate(texts)
        ]
        data.reverse()  # OpenAI does not promise order; clients must sort by index
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "fake"),
            "usage": {"prompt_tokens": 10 * len(texts), "total_tokens": 10 * len(texts)},
        }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": "fake_error"}}, headers)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        fake = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        path = self.path.split("?", 1)[0]
        route = (
            "chat" if path.endswith("/v1/chat/completions")
            else "embeddings" if path.endswith("/v1/embeddings") else ""
        )
        authorised = fake.api_key is None or (
            self.headers.get("Authorization") == f"Bearer {fake.api_key}"
        )
        fault = fake._take_fault(route, raw, body) if route and authorised else None
        record = RecordedRequest(
            "POST", path, dict(self.headers.items()), raw, body, fault.kind if fault else None
        )
        with fake._lock:
            fake.requests.append(record)
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            if fake.latency_s:
                time.sleep(fake.latency_s)
            self._answer(route, raw, body, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before we answered
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _answer(self, route: str, raw: bytes, body: dict[str, Any] | None,
                fault: Fault | None) -> None:
        fake = self.fake
        if not route:
            self._error(404, f"no route {self.path}")
            return
        if fake.api_key is not None:
            if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                self._error(401, "Incorrect API key provided.")
                return
        kind = fault.kind if fault else None
        if kind == "timeout":
            time.sleep(fault.delay_s)  # type: ignore[union-attr]
            kind = None  # then answer normally (the client has usually gone)
        if kind == "disconnect":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if kind == "429":
            headers = {}
            if fault.retry_after is not None:  # type: ignore[union-attr]
                headers["Retry-After"] = str(fault.retry_after)  # type: ignore[union-attr]
            self._error(429, "Rate limit reached; slow down.", headers)
            return
        if kind == "quota":
            self._json(429, {"error": {"message": "You exceeded your current quota.",
                                       "type": "insufficient_quota",
                                       "code": "insufficient_quota"}})
            return
        if kind in ("500", "503"):
            self._error(int(kind), "The server had an error while processing your request.")
            return
        if kind == "400":
            self._error(400, "Invalid request.")
            return
        if kind == "garbage":
            self._send(200, b"<html><body>502 Bad Gateway</body>{not json", None)
            return
        if body is None or not isinstance(body, dict):
            self._error(400, "request body is not a JSON object")
            return
        if route == "chat":
            if not body.get("messages"):
                self._error(400, "'messages' is required")
                return
            self._json(200, fake.chat_answer(body, raw, kind))
        else:
            if body.get("input") is None:
                self._error(400, "'input' is required")
                return
            self._json(200, fake.embeddings_answer(body))
