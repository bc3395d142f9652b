"""The OpenAI-compatible HTTP client against a fake endpoint on 127.0.0.1."""

from __future__ import annotations

import logging
import pickle
import socket
import time
from email.utils import formatdate

import pytest

from galaxy_assets.http_client import (
    HTTPClientError,
    OpenAICompatibleClient,
    RequestBudgetExceeded,
    Secret,
    _retry_after_seconds,
    bounded_map,
)
from galaxy_assets_tests.fake_openai import FakeOpenAIServer

KEY = "sk-test-SECRET-0123456789"


@pytest.fixture
def server():
    with FakeOpenAIServer(api_key=KEY) as srv:
        yield srv


def make_client(server: FakeOpenAIServer, **kw) -> OpenAICompatibleClient:
    kw.setdefault("api_key", KEY)
    kw.setdefault("backoff_base_s", 0.001)
    kw.setdefault("timeout_s", 5)
    return OpenAICompatibleClient(server.base_url, **kw)


def emb(text: str) -> dict:
    return {"model": "fake-embed", "input": [text]}


def test_round_trip_sends_key_and_decodes_json(server):
    with make_client(server) as client:
        result = client.post_json("embeddings", emb("a red galaxy"))
    assert result.ok and result.status == 200 and result.attempts == 1
    assert len(result.data["data"][0]["embedding"]) == 64
    (req,) = server.requests
    assert req.path == "/v1/embeddings"
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert req.headers["Content-Type"] == "application/json"
    assert req.body == emb("a red galaxy")


def test_key_never_in_repr_errors_or_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-SECRET-999"
    client = make_client(server, api_key=wrong, max_retries=2)
    assert wrong not in repr(client) and "***" in repr(client)
    assert wrong not in str(vars(client))
    result = client.post_json("embeddings", emb("x"))  # 401: not retried
    assert not result.ok and result.status == 401 and result.attempts == 1
    assert "check endpoint.api_key" in result.error and wrong not in result.error
    server.api_key = wrong  # now accepted, but the endpoint fails
    server.add_fault("500", times=None)
    result = client.post_json("embeddings", emb("x"))
    assert result.attempts == 3 and "HTTP 500" in result.error
    assert wrong not in result.error and wrong not in repr(result)
    assert "retry 1/2" in caplog.text
    assert wrong not in caplog.text
    # anything that echoes the key is scrubbed
    assert client.redact(f"boom {wrong} boom") == "boom *** boom"
    secret = Secret(wrong)
    assert wrong not in repr(secret) and wrong not in str(secret) and secret.reveal() == wrong
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_a_key_read_with_its_line_break_works_and_never_leaks(server):
    """A key read from a file or variable often ends in a newline: it is stripped (requests
    refuses a header with one and quotes the header, key included, in its error); a line break
    inside the key is a configuration error that does not show the key."""
    with make_client(server, api_key=f"{KEY}\n") as client:
        assert client.post_json("embeddings", emb("x")).ok
    assert server.requests[-1].headers["Authorization"] == f"Bearer {KEY}"
    with pytest.raises(HTTPClientError, match="the API key holds a control character") as err:
        make_client(server, api_key="sk-a\nSECRET-b")
    assert "SECRET" not in str(err.value)
    client = make_client(server, api_key="sk-tab\\SECRET")
    assert client.redact(f"header value: {'sk-tab' + chr(92) + 'SECRET'!r}") == "header value: '***'"


def test_429_honours_retry_after(server):
    sleeps: list[float] = []
    server.add_fault("429", times=2, retry_after=3)
    client = make_client(server, max_retries=4, sleep=sleeps.append)
    result = client.post_json("embeddings", emb("x"))
    assert result.ok and result.attempts == 3
    assert len(sleeps) == 2 and all(3.0 <= s <= 3.5 for s in sleeps)
    # a Retry-After above the cap waits only the cap
    server.add_fault("429", times=1, retry_after=1000)
    sleeps.clear()
    client = make_client(server, sleep=sleeps.append, retry_after_max_s=7)
    assert client.post_json("embeddings", emb("x")).ok
    assert sleeps == [7.0]


def test_retry_after_header_forms():
    assert _retry_after_seconds("2.5") == 2.5
    assert _retry_after_seconds(None) is None
    assert _retry_after_seconds("soon") is None
    now = time.time()
    assert 8 <= _retry_after_seconds(formatdate(now + 10, usegmt=True), now=now) <= 10
    assert _retry_after_seconds(formatdate(now - 100, usegmt=True), now=now) == 0.0


def test_backoff_is_exponential_with_jitter(server):
    client = make_client(server, backoff_base_s=1.0, backoff_max_s=5.0)
    for attempt, full in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (8, 5.0)]:
        waits = [client._backoff(attempt, None) for _ in range(50)]
        assert all(0.5 * full <= w <= full for w in waits)
        assert len(set(waits)) > 1  # jitter


def test_5xx_retried_then_recorded(server):
    server.add_fault("503", times=1)
    client = make_client(server, max_retries=2)
    assert client.post_json("embeddings", emb("x")).ok
    server.add_fault("500", times=None)
    result = client.post_json("embeddings", emb("x"))
    assert not result.ok and result.status == 500 and result.attempts == 3
    assert "HTTP 500 from POST" in result.error and "gave up after 3 attempts" in result.error
    assert "server had an error" in result.error  # the endpoint's own message


def test_400_and_404_not_retried(server):
    server.add_fault("400", times=None)
    client = make_client(server, max_retries=3)
    result = client.post_json("embeddings", emb("x"))
    assert result.attempts == 1 and "HTTP 400" in result.error and "Invalid request" in result.error
    result = client.post_json("no/such/route", emb("x"))
    assert result.status == 404 and result.attempts == 1 and "ends in /v1" in result.error


def test_timeout_retried(server):
    server.add_fault("timeout", times=1, delay_s=1.0)
    client = make_client(server, timeout_s=0.25, max_retries=1)
    t0 = time.perf_counter()
    result = client.post_json("embeddings", emb("x"))
    assert result.ok and result.attempts == 2
    assert time.perf_counter() - t0 < 0.9
    server.add_fault("timeout", times=None, delay_s=1.0)
    result = client.post_json("embeddings", emb("x"))
    assert not result.ok and "timed out after 0.25 s" in result.error and result.attempts == 2


def test_connection_errors_retried(server):
    server.add_fault("disconnect", times=1)
    client = make_client(server, max_retries=1)
    assert client.post_json("embeddings", emb("x")).ok
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = OpenAICompatibleClient(f"http://127.0.0.1:{port}/v1", max_retries=2,
                                  backoff_base_s=0.001)
    result = dead.post_json("embeddings", emb("x"))
    assert not result.ok and result.status is None and result.attempts == 3
    assert "connection error" in result.error


def test_an_exhausted_quota_is_not_retried(server):
    server.add_fault("quota", times=None)
    client = make_client(server, max_retries=3)
    result = client.post_json("embeddings", emb("x"))
    assert result.attempts == 1 and "quota is spent" in result.error


def test_the_breaker_stops_sending_to_an_endpoint_that_cannot_answer(server):
    """A wrong key fails every request: after five in a row the rest are not sent (a
    sample of 2,000 galaxies spent an hour of retries); after the cool-down one tries again,
    and a success closes the breaker."""
    server.add_fault("quota", times=None)
    client = make_client(server, max_retries=2, breaker_threshold=5, breaker_cooldown_s=0.3)
    results = [client.post_json("embeddings", emb(str(i))) for i in range(12)]
    assert len(server.requests) == 5
    assert all("not sent" in r.error and "quota is spent" in r.error for r in results[5:])
    assert all(r.attempts == 0 for r in results[5:])
    server.clear()
    time.sleep(0.35)
    assert client.post_json("embeddings", emb("again")).ok  # half-open: one tries, succeeds
    assert client.post_json("embeddings", emb("more")).ok
    assert len(server.requests) == 2


def test_a_blackholed_host_opens_the_breaker_and_one_request_tries_again(monkeypatch):
    """A connect timeout (a firewall that drops packets) is an endpoint that cannot answer:
    it was read as a slow reply, so the breaker never opened. After the cool-down one request
    tries while the others are refused."""
    import threading

    import requests

    calls = []
    gate = threading.Event()

    def post(self, url, **kw):
        calls.append(url)
        if gate.is_set():  # the endpoint is back: answer slowly, so the trial is in flight
            time.sleep(0.2)
            raise requests.exceptions.ConnectTimeout("connect timed out")
        raise requests.exceptions.ConnectTimeout("connect timed out")

    monkeypatch.setattr(requests.Session, "post", post)
    client = OpenAICompatibleClient("http://10.255.255.1:9/v1", max_retries=1,
                                    backoff_base_s=0.001, breaker_threshold=3,
                                    breaker_cooldown_s=0.2)
    results = [client.post_json("embeddings", emb(str(i))) for i in range(6)]
    assert len(calls) == 6  # three requests of two attempts each, then none
    assert "could not connect" in results[0].error
    assert all("not sent" in r.error for r in results[3:])
    time.sleep(0.25)
    gate.set()
    out = []
    threads = [threading.Thread(target=lambda: out.append(client.post_json("embeddings",
                                                                           emb("x"))))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 6 + 2  # one trial (two attempts); seven refused meanwhile
    assert sum("not sent" in r.error for r in out) == 7


def test_a_trial_that_ends_without_a_verdict_lets_the_next_request_try(server):
    """A trial request answered with invalid JSON returned early and kept the trial taken:
    every later request was refused for good."""
    server.add_fault("quota", times=2)
    client = make_client(server, max_retries=0, breaker_threshold=2, breaker_cooldown_s=0.05)
    assert [client.post_json("embeddings", emb(str(i))).attempts for i in range(3)] == [1, 1, 0]
    time.sleep(0.06)
    server.add_fault("garbage", times=1)
    assert "invalid JSON" in client.post_json("embeddings", emb("trial")).error
    assert client.post_json("embeddings", emb("next")).ok  # the next one may try, and succeeds


def test_only_the_trial_request_ends_its_trial(server):
    """An older request failing while a trial runs, or an earlier trial finishing late, let a
    second and third trial run at once."""
    client = make_client(server, breaker_threshold=1, breaker_cooldown_s=0)
    url = client.url("embeddings")
    client._breaker_record("connection error")  # open
    refused, first = client._breaker_open(url)
    assert refused is None and first
    client._breaker_record("connection error (an older request)")  # not the trial's verdict
    assert client._breaker_open(url)[0] is not None  # the trial still runs: refused
    client._breaker_settle_trial(first)
    refused, second = client._breaker_open(url)
    assert refused is None and second != first
    client._breaker_settle_trial(first)  # the first trial's late release: not the second's
    assert client._breaker_open(url)[0] is not None


def test_garbage_json_is_a_clear_error(server):
    server.add_fault("garbage", times=1)
    client = make_client(server, max_retries=3)
    result = client.post_json("embeddings", emb("x"))
    assert not result.ok and result.attempts == 1 and result.status == 200
    assert "invalid JSON" in result.error and "Bad Gateway" in result.error
    assert "base_url" in result.error


def test_request_budget(server):
    client = make_client(server, request_budget=3, setting="captioner")
    for _ in range(3):
        assert client.post_json("embeddings", emb("x")).ok
    assert client.budget_left == 0 and client.requests_made == 3
    with pytest.raises(RequestBudgetExceeded, match=r"captioner.request_budget"):
        client.post_json("embeddings", emb("x"))
    assert len(server.requests) == 3
    # a batch that cannot fit raises before sending anything
    client = make_client(server, request_budget=2)
    with pytest.raises(RequestBudgetExceeded, match="does not fit"):
        client.post_many("embeddings", [emb("a"), emb("b"), emb("c")])
    assert len(server.requests) == 3
    # retries that spend the budget mid-batch: the rest are recorded, not raised
    server.add_fault("500", times=2)
    client = make_client(server, request_budget=4, concurrency=1, max_retries=3)
    results = client.post_many("embeddings", [emb("a"), emb("b"), emb("c")])
    assert [r.ok for r in results] == [True, True, False]
    assert results[0].attempts == 3 and "request budget of 4" in results[2].error
    assert client.requests_made == 4


def test_post_many_bounded_concurrency_and_order(server):
    server.latency_s = 0.15
    client = make_client(server, concurrency=3)
    texts = [f"galaxy number {i}" for i in range(9)]
    t0 = time.perf_counter()
    results = client.post_many("embeddings", [emb(t) for t in texts])
    elapsed = time.perf_counter() - t0
    assert all(r.ok for r in results)
    assert server.max_in_flight == 3
    assert elapsed < 9 * 0.15 * 0.75  # ran in parallel
    from galaxy_assets_tests.fake_openai import fake_embedding

    for text, result in zip(texts, results, strict=True):
        assert result.data["data"][0]["embedding"] == fake_embedding(text)
    # connections are pooled across batches, not one new session per worker thread
    server.latency_s = 0.0
    for _ in range(3):
        client.post_many("embeddings", [emb(t) for t in texts])
    assert len(client._sessions) <= 3
    client.close()
    assert client._sessions == []


def test_unserialisable_payload_is_recorded(server):
    result = make_client(server).post_json("embeddings", {"input": [float("nan")]})
    assert not result.ok and "not valid JSON" in result.error and result.attempts == 0
    assert server.requests == []


def test_one_bad_request_does_not_abort_the_batch(server):
    server.add_fault("400", times=None, match="poison")
    server.add_fault("garbage", times=None, match="garbled")
    client = make_client(server, concurrency=2)
    results = client.post_many("embeddings", [emb("ok 1"), emb("poison"), emb("garbled"),
                                              emb("ok 2")])
    assert [r.ok for r in results] == [True, False, False, True]
    assert "HTTP 400" in results[1].error and "invalid JSON" in results[2].error


def test_configuration_errors():
    for bad in ["", "localhost:8000/v1", "ftp://x/v1", "http:///v1"]:
        with pytest.raises(HTTPClientError, match="base_url"):
            OpenAICompatibleClient(bad)
    with pytest.raises(HTTPClientError, match="credentials"):
        OpenAICompatibleClient("http://user:pw@host/v1")
    with pytest.raises(HTTPClientError, match="timeout_s"):
        OpenAICompatibleClient("http://host/v1", timeout_s=0)
    with pytest.raises(HTTPClientError, match="request_budget"):
        OpenAICompatibleClient("http://host/v1", request_budget=-1)
    with pytest.raises(HTTPClientError, match="concurrency"):
        OpenAICompatibleClient("http://host/v1", concurrency=0)
    client = OpenAICompatibleClient("http://host:8000/v1/")
    assert client.base_url == "http://host:8000/v1" and client.host == "host:8000"
    assert client.url("/chat/completions") == "http://host:8000/v1/chat/completions"


def test_bounded_map_keeps_order():
    assert bounded_map(lambda x: x * x, list(range(20)), 4) == [x * x for x in range(20)]
    with pytest.raises(HTTPClientError):
        bounded_map(str, [1], 0)
