"""Text embedders: the packaged MiniLM offline, and an OpenAI-compatible endpoint (fake)."""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest

from galaxy_assets.embedding import (
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    TextEmbedder,
    TextEmbedderError,
    build_text_embedder,
    default_model_path,
)
from galaxy_assets.embedding.text import folder_fingerprint
from galaxy_assets_tests.fake_openai import FakeOpenAIServer

SPIRAL_A = "A face-on spiral galaxy with two well-defined spiral arms and a small bulge."
SPIRAL_B = "This barred spiral galaxy shows loosely wound arms with blue star-forming knots."
ELLIPTICAL = "A smooth, featureless red elliptical galaxy with a concentrated core."
UNRELATED = "The committee postponed the vote on the municipal budget until next Tuesday."
KEY = "sk-embed-SECRET-7"


def _no_network(*args, **kwargs):
    raise AssertionError("the text embedder tried to open a network connection")


@pytest.fixture(scope="module")
def minilm():
    """The packaged MiniLM, loaded with every socket connection refused."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket.socket, "connect_ex", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        embedder = SentenceTransformerEmbedder()
        vectors = embedder.embed([SPIRAL_A, SPIRAL_B, ELLIPTICAL, UNRELATED])
    return embedder, vectors


def test_minilm_loads_offline_and_gives_unit_384d(minilm):
    embedder, vectors = minilm
    assert isinstance(embedder, TextEmbedder)
    assert embedder.dim == 384 and embedder.max_seq_length == 256
    assert embedder.model_path == default_model_path()
    fingerprint = folder_fingerprint(default_model_path())
    assert embedder.embedder_id == f"sentence-transformers:all-MiniLM-L6-v2@{fingerprint}"
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_similar_captions_are_closer(minilm):
    _, v = minilm
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 3] + 0.3
    assert sim[0, 1] > sim[0, 2]  # spiral–spiral closer than spiral–elliptical
    assert sim[2, 0] > sim[2, 3]


def test_matches_plain_encode(minilm):
    embedder, vectors = minilm
    plain = embedder.model.encode([SPIRAL_A, UNRELATED], normalize_embeddings=True)
    assert np.allclose(vectors[[0, 3]], plain, atol=1e-5)


def test_truncation_is_counted_and_logged(minilm, caplog):
    embedder, _ = minilm
    long_caption = " ".join([SPIRAL_A] * 30)  # ~450 tokens
    caplog.set_level(logging.WARNING, logger="galaxy_assets.embedding.text")
    v = embedder.embed([SPIRAL_A, long_caption, ELLIPTICAL])
    assert v.shape == (3, 384)
    assert embedder.last_truncated == 1
    assert "1 of 3 captions truncated to 256 tokens" in caplog.text
    caplog.clear()
    embedder.embed([SPIRAL_A])
    assert embedder.last_truncated == 0 and "truncated" not in caplog.text


def test_bad_inputs(minilm):
    embedder, _ = minilm
    with pytest.raises(TextEmbedderError, match="text 1 is NoneType"):
        embedder.embed(["ok", None])
    with pytest.raises(TextEmbedderError, match="not one string"):
        embedder.embed("a single string")


def test_missing_model_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(TextEmbedderError, match="does not exist.*text_embedder.model_path"):
        SentenceTransformerEmbedder(str(missing))
    with pytest.raises(TextEmbedderError, match="does not exist"):
        SentenceTransformerEmbedder("./models/minilm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEmbedderError, match="neither modules.json nor config.json"):
        SentenceTransformerEmbedder(tmp_path / "empty")
    with pytest.raises(TextEmbedderError, match="batch_size"):
        SentenceTransformerEmbedder(batch_size=0)
    with pytest.raises(TextEmbedderError, match="text_embedder.device"):
        SentenceTransformerEmbedder(device="tpu")


def test_factory_errors():
    with pytest.raises(TextEmbedderError, match="unknown; use one of"):
        build_text_embedder("word2vec")
    with pytest.raises(TextEmbedderError, match=r"unknown setting\(s\) \['colour'\]"):
        build_text_embedder("openai", base_url="http://x/v1", model="m", colour="red")
    with pytest.raises(TextEmbedderError, match="model_path"):
        build_text_embedder("sentence-transformers", model_path="/no/such/folder")
    with pytest.raises(TextEmbedderError, match="does not exist"):
        build_text_embedder("st", model="/no/such/folder", base_url=None, device="cpu")
    with pytest.raises(TextEmbedderError, match="set only one of"):
        build_text_embedder("sentence-transformers", model="/a", model_path="/b")
    # empty settings arrive as None and are dropped: the error names them, not a TypeError
    with pytest.raises(TextEmbedderError, match="text_embedder.base_url, text_embedder.model"):
        build_text_embedder("openai", base_url=None, model=None, device="cpu")


# -- OpenAI-compatible endpoint ----------------------------------------------------------------


@pytest.fixture
def server():
    with FakeOpenAIServer(api_key=KEY, embedding_dim=32) as srv:
        yield srv


def make(server: FakeOpenAIServer, **kw) -> OpenAIEmbedder:
    kw.setdefault("api_key", KEY)
    kw.setdefault("backoff_base_s", 0.001)
    kw.setdefault("timeout_s", 5)
    kw.setdefault("device", "cpu")  # as the resource passes it: ignored by an endpoint
    return build_text_embedder("openai", base_url=server.base_url, model="fake-embed", **kw)


def test_openai_embedder(server):
    embedder = make(server, batch_size=2, concurrency=2, dim=32)
    assert isinstance(embedder, TextEmbedder)
    host = server.base_url.split("//")[1].split("/")[0]
    assert embedder.embedder_id == f"openai:fake-embed@{host}"
    assert KEY not in repr(embedder)
    texts = [SPIRAL_A, SPIRAL_B, ELLIPTICAL, UNRELATED, "spiral arms"]
    v = embedder.embed(texts)
    assert v.shape == (5, 32) and v.dtype == np.float32 and embedder.dim == 32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    reqs = server.routed("embeddings")
    assert len(reqs) == 3 and all(r.headers["Authorization"] == f"Bearer {KEY}" for r in reqs)
    assert sorted(len(r.body["input"]) for r in reqs) == [1, 2, 2]
    # rows in input order although the server answers in reverse index order
    single = np.stack([embedder.embed([t])[0] for t in texts])
    assert np.allclose(v, single, atol=1e-6)


def test_openai_embedder_dim_probe_and_mismatch(server):
    embedder = make(server)
    assert embedder.dim == 32  # learned at start-up from a one-text probe
    assert len(server.routed("embeddings")) == 1
    assert embedder.embed([]).shape == (0, 32)
    with pytest.raises(TextEmbedderError, match="returned 32-d vectors but text_embedder.dim=16"):
        make(server, dim=16).embed(["x"])
    with pytest.raises(TextEmbedderError, match="probe request .* HTTP 401.*api_key"):
        make(server, api_key="sk-wrong")


def test_openai_embedder_retries_then_raises_clearly(server):
    server.add_fault("500", times=1)
    server.add_fault("429", times=1, retry_after=0)
    embedder = make(server, max_retries=2, dim=32)
    assert embedder.embed(["a", "b"]).shape == (2, 32)
    server.add_fault("garbage", times=None, match="poison")
    with pytest.raises(TextEmbedderError, match=r"texts 2\.\.3: invalid JSON"):
        make(server, batch_size=2).embed(["a", "b", "poison", "c"])
    with pytest.raises(TextEmbedderError, match="HTTP 401.*text_embedder.api_key"):
        make(server, api_key="sk-wrong", dim=32).embed(["a"])


def test_openai_embedder_budget_and_config(server):
    embedder = make(server, batch_size=2, request_budget=2, dim=32)
    with pytest.raises(TextEmbedderError, match="need 3 requests but only 2"):
        embedder.embed(["a", "b", "c", "d", "e"])
    assert server.requests == []
    with pytest.raises(TextEmbedderError, match="base_url"):
        OpenAIEmbedder("not a url", "m")
    with pytest.raises(TextEmbedderError, match="model is empty"):
        OpenAIEmbedder("http://localhost:8000/v1", "")
    with pytest.raises(TextEmbedderError, match="probe request"):
        OpenAIEmbedder(server.base_url.replace("/v1", "/nope"), "m", max_retries=0)


def test_caption_embedding_keeps_an_endpoint_busy_and_names_where_it_failed():
    """caption_embeddings hands the embedder many of its batches per call, so an endpoint gets
    `concurrency` requests at once (they went one at a time), and a failure names the
    distinct captions of that call."""
    import polars as pl

    from galaxy_assets.embedding.caption_vectors import embed_captions

    caps = pl.DataFrame({"object_id": [str(i) for i in range(40)],
                         "caption": [f"galaxy number {i} is a spiral" for i in range(40)],
                         "model": "m", "prompt_sha": "p"})
    with FakeOpenAIServer(api_key=KEY, embedding_dim=32, latency_s=0.05) as srv:
        embedder = make(srv, batch_size=4, concurrency=3, dim=32)
        out = embed_captions(caps, embedder)
        assert out.height == 40 and srv.max_in_flight == 3
        srv.add_fault("garbage", times=None, match="galaxy number 33 ")
        with pytest.raises(TextEmbedderError, match=r"distinct captions 30\.\.39 of 40 .*"
                           r"count from 30\): .*texts 0\.\.3: invalid JSON"):
            embed_captions(caps, make(srv, batch_size=4, dim=32, max_retries=0), chunk_size=10)
