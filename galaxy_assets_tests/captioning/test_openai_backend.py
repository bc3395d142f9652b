"""The openai captioner against a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pytest
from PIL import Image

from galaxy_assets.captioning.base import (
    Captioner,
    CaptionerError,
    CaptionRequest,
    load_prompt,
)
from galaxy_assets.captioning.openai_backend import (
    OpenAICaptioner,
    check_reply,
    encode_image,
)
from galaxy_assets_tests.fake_openai import FakeOpenAIServer

KEY = "sk-caption-SECRET-42"
BANDS = ("g", "r", "z")


def galaxy(i: int, size: int = 32) -> CaptionRequest:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:size, :size] - size / 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * (2 + i % 4) ** 2))
    image = np.stack([blob * (0.5 + 0.3 * b) + rng.normal(0, 0.01, blob.shape)
                      for b in range(3)]).astype(np.float32)
    return CaptionRequest(f"obj{i:03d}", image, BANDS)


@pytest.fixture
def server():
    with FakeOpenAIServer(api_key=KEY) as srv:
        yield srv


def make(server: FakeOpenAIServer, **kw) -> OpenAICaptioner:
    kw.setdefault("api_key", KEY)
    kw.setdefault("backoff_base_s", 0.001)
    kw.setdefault("timeout_s", 5)
    return OpenAICaptioner(server.base_url, "fake-vlm", **kw)


def test_captions_and_what_was_sent(server):
    captioner = make(server, max_tokens=123, temperature=0.0)
    assert isinstance(captioner, Captioner)
    assert captioner.backend == "openai" and captioner.model_id == "fake-vlm"
    assert captioner.prompt_sha == load_prompt("describe_v1").sha
    requests = [galaxy(i) for i in range(5)]
    results = captioner.caption(requests)
    assert [r.object_id for r in results] == [r.object_id for r in requests]
    assert all(r.ok and "galaxy" in r.caption for r in results)
    chats = server.routed("chat")
    assert len(chats) == 5
    for req in chats:
        assert req.headers["Authorization"] == f"Bearer {KEY}"
        body = req.body
        assert body["model"] == "fake-vlm" and body["max_tokens"] == 123
        assert body["temperature"] == 0.0 and "n" not in body
        assert req.text == load_prompt("describe_v1").text
        (url,) = req.image_urls
        assert url.startswith("data:image/png;base64,")
        png = base64.b64decode(url.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        im = Image.open(io.BytesIO(png))
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
    # each galaxy's own picture was sent
    sent = {url for req in chats for url in req.image_urls}
    assert sent == {encode_image(r.image, r.bands) for r in requests}


def test_a_prompt_file_of_your_own_is_sent_and_recorded(server, tmp_path):
    """captioner.prompt may name a file: another survey's bands, pixel scale or units."""
    own = tmp_path / "describe_hsc.txt"
    own.write_text("Describe this HSC cutout (g, r, i as blue, green, red; 0.168 arcsec/px).\n")
    captioner = make(server, prompt=str(own))
    assert captioner.prompt_sha == load_prompt(str(own)).sha != load_prompt("describe_v1").sha
    (result,) = captioner.caption([galaxy(1)])
    assert result.ok and server.routed("chat")[0].text == own.read_text().strip()
    with pytest.raises(CaptionerError, match="prompt file .*missing.txt' does not exist"):
        make(server, prompt=str(tmp_path / "missing.txt"))
    with pytest.raises(CaptionerError, match="available prompts: .*your own prompt file"):
        make(server, prompt="describe_v9")


def test_image_size_resizes(server):
    captioner = make(server, image_size=96)
    assert captioner.caption([galaxy(0)])[0].ok
    url = server.routed("chat")[0].image_urls[0]
    im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert im.size == (96, 96)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("empty", "empty: "),
        ("length", "truncated: "),
        ("refusal", "refusal: "),
        ("refusal_field", "refusal: the model declined (refusal field"),
        ("non_english", "not_english: "),
        ("overlong", "too_long: the reply has 495 words, more than max_words=200"),
        ("garbage", "generation_failed: invalid JSON"),
        ("500", "generation_failed: HTTP 500"),
        ("400", "generation_failed: HTTP 400"),
    ],
)
def test_a_bad_reply_is_recorded_for_that_galaxy_only(server, kind, expected):
    requests = [galaxy(i) for i in range(4)]
    target = requests[2]
    server.add_fault(kind, times=None, match=encode_image(target.image, target.bands))
    results = make(server, max_retries=1).caption(requests)
    assert [r.ok for r in results] == [True, True, False, True]
    bad = results[2]
    assert bad.caption is None and bad.error.startswith(expected), bad.error
    assert all(r.error is None for r in results if r.ok)


def test_retries_429_and_timeouts(server):
    server.add_fault("429", times=2, retry_after=0)
    server.add_fault("timeout", times=1, delay_s=1.0)
    captioner = make(server, timeout_s=0.3, max_retries=3, concurrency=1)
    results = captioner.caption([galaxy(0), galaxy(1)])
    assert all(r.ok for r in results)
    assert [r.fault for r in server.routed("chat")] == ["429", "429", "timeout", None, None]


def test_timeout_without_retries_is_recorded(server):
    requests = [galaxy(i) for i in range(3)]
    server.add_fault("timeout", times=None, delay_s=1.0,
                     match=encode_image(requests[0].image, requests[0].bands))
    results = make(server, timeout_s=0.3, max_retries=0).caption(requests)
    assert [r.ok for r in results] == [False, True, True]
    assert results[0].error.startswith("generation_failed: timed out after 0.3 s")


def test_bad_pixels_are_recorded_without_a_request(server):
    good = galaxy(0)
    nan = CaptionRequest("nan", np.full((3, 16, 16), np.nan, np.float32), BANDS)
    zeros = CaptionRequest("zeros", np.zeros((3, 16, 16), np.float32), BANDS)
    missing = CaptionRequest("missing", good.image[:2], BANDS)
    dead_band = good.image.copy()
    dead_band[1] = np.nan
    dead = CaptionRequest("dead", dead_band, BANDS)
    empty = CaptionRequest("empty", np.zeros((3, 0, 0), np.float32), BANDS)
    results = make(server).caption([nan, good, zeros, missing, dead, empty])
    assert [r.ok for r in results] == [False, True, False, False, False, False]
    errors = [r.error for r in results]
    assert "NaN" in errors[0] and "zero" in errors[2]
    assert "2 planes" in errors[3] and "band r" in errors[4] and "empty" in errors[5]
    assert all(e.startswith("bad_image: ") for e in errors if e)
    assert len(server.routed("chat")) == 1


def test_request_budget(server):
    captioner = make(server, request_budget=3, concurrency=1)
    # a batch the budget left cannot cover (retries spent part of it): what fits is sent and
    # the rest recorded, so the run ends normally (it aborted between batches)
    results = captioner.caption([galaxy(i) for i in range(4)])
    assert [r.ok for r in results] == [True, True, True, False] and len(server.requests) == 3
    assert "not sent: captioner.request_budget=3 is spent" in results[3].error
    server.clear()
    # retries spend the budget mid-batch: the unsent galaxy is recorded
    server.add_fault("500", times=1)
    results = make(server, request_budget=3, concurrency=1).caption(
        [galaxy(i) for i in range(3)]
    )
    assert [r.ok for r in results] == [True, True, False]
    assert results[2].error.startswith("generation_failed: request budget of 3")


def test_key_stays_secret(server, caplog):
    caplog.set_level(logging.DEBUG)
    captioner = make(server, max_retries=1)
    assert KEY not in repr(captioner) and "***" in repr(captioner)
    server.add_fault("500", times=None)
    (result,) = captioner.caption([galaxy(0)])
    assert not result.ok and KEY not in result.error
    assert KEY not in caplog.text
    # a wrong key: a clear error naming the setting
    (result,) = make(server, api_key="sk-wrong").caption([galaxy(0)])
    assert "HTTP 401" in result.error and "captioner.api_key" in result.error
    assert "sk-wrong" not in result.error


def test_configuration_errors():
    with pytest.raises(CaptionerError, match="base_url"):
        OpenAICaptioner("localhost:8000", "m")
    with pytest.raises(CaptionerError, match="model is empty"):
        OpenAICaptioner("http://localhost:8000/v1", " ")
    with pytest.raises(CaptionerError, match="prompt 'nope' not found"):
        OpenAICaptioner("http://localhost:8000/v1", "m", prompt="nope")
    with pytest.raises(CaptionerError, match="max_tokens"):
        OpenAICaptioner("http://localhost:8000/v1", "m", max_tokens=0)


def test_rate_parses_scores(server):
    server.score = 7
    captioner = make(server)
    results = captioner.rate([galaxy(0), galaxy(1)], "Does it have spiral arms?")
    assert [r.score for r in results] == [7.0, 7.0] and all(r.ok for r in results)
    assert results[0].scores == (7.0,)
    req = server.routed("chat")[0]
    assert "Question: Does it have spiral arms?" in req.text and "{question}" not in req.text
    # several samples in one request, averaged
    server.score = None
    server.clear()
    (res,) = captioner.rate([galaxy(3)], "Is it a merger?", n_samples=3, temperature=0.8)
    (req,) = server.routed("chat")
    assert req.body["n"] == 3 and req.body["temperature"] == 0.8
    assert len(res.scores) == 3 and res.score == pytest.approx(np.mean(res.scores))
    assert all(1 <= s <= 10 for s in res.scores)


def test_rate_failures_are_recorded(server):
    requests = [galaxy(i) for i in range(3)]
    server.score = 4
    server.add_fault("refusal", times=None, match=encode_image(requests[0].image, BANDS))
    server.add_fault("refusal_field", times=None, match=encode_image(requests[1].image, BANDS))
    server.add_fault("length", times=None, match=encode_image(requests[2].image, BANDS))
    results = make(server).rate(requests, "Is there a lensing arc?")
    assert results[0].score is None and results[0].error.startswith("no_score: ")
    assert results[1].score is None and results[1].error.startswith("refusal: ")
    assert results[2].score == 4.0  # cut off after the score line: still usable


def test_check_reply():
    ok = "A smooth elliptical galaxy with a bright core and no tidal features."
    assert check_reply(ok) == (ok, None)
    assert check_reply(f"  {ok}\n", "stop") == (ok, None)
    assert check_reply(None)[1].startswith("empty: ")
    assert check_reply(ok, "length")[1].startswith("truncated: ")
    assert check_reply(ok, "content_filter")[1].startswith("filtered: ")
    assert check_reply(None, None, "I can't help")[1].startswith("refusal: ")
    assert check_reply("I'm sorry, but I cannot view images.")[1].startswith("refusal: ")
    caption, error = check_reply(ok, max_words=5)
    assert caption is None and error.startswith("too_long: the reply has 12 words")
