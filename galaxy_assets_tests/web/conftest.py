"""Fixtures of the web tests: the tiny indexes of the search tests behind the app.

* ``text_app``: the 60-galaxy ``text_index`` (fake text embedder, tiny aligner; its shard
  files do not exist, so it has no pixels) with FTS-free filters, a caption store and a rater;
* ``survey_app``: the 80-galaxy mock survey with real shard pixels and the fake image
  encoder (uploads, thumbnails), thumbnails cached in a folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import polars as pl
import pytest
from fastapi.testclient import TestClient

from galaxy_assets.captioning.rating import RatingResult
from galaxy_assets.search.query import GalaxySearch
from galaxy_assets.web.app import create_app
from galaxy_assets_tests.search import conftest as search_fixtures
from galaxy_assets_tests.search.conftest import FakeImageEncoder

# the search tests' fixtures, shared here (pytest finds fixtures by name in a conftest)
_one_torch_thread = search_fixtures._one_torch_thread
aligner = search_fixtures.aligner
mock_survey = search_fixtures.mock_survey
survey_index = search_fixtures.survey_index
text_embedder = search_fixtures.text_embedder
text_index = search_fixtures.text_index


class WordRater:
    """Rates a galaxy by whether its id's number is odd (deterministic, no pixels needed
    beyond what vlm_rerank reads); records what it was asked."""

    backend = "test"
    model_id = "word-rater"
    uses_query_text = True

    def __init__(self) -> None:
        self.asked: list[tuple[int, str]] = []

    def rate(self, requests: Sequence, text: str, n_samples: int = 1) -> list[RatingResult]:
        self.asked.append((len(requests), text))
        out = []
        for r in requests:
            score = float(int(r.object_id[-1], 36) % 2) * 10
            out.append(RatingResult(r.object_id, score, (score,)))
        return out


@pytest.fixture
def text_engine(text_index, text_embedder, aligner) -> GalaxySearch:
    """The text index (its captions' prompt sha made describe_v1's, in the table and in the
    frames, as the caption store below holds: the detail view matches the store's rows on
    the indexed sha) behind a GalaxySearch."""
    from galaxy_assets.captioning.base import load_prompt

    sha = load_prompt("describe_v1").sha
    for frames in text_index.frames.values():
        frames["captions"] = frames["captions"].with_columns(pl.lit(sha).alias("prompt_sha"))
    text_index.table().update(values={"caption_prompt_sha": sha})
    return GalaxySearch(
        text_index.uri, text_embedder=text_embedder, aligner=aligner, serving_index=False
    )


@pytest.fixture
def caption_store(tmp_path, text_index):
    """A caption store holding the captions of the text index with describe_v1's prompt sha
    (as ``text_engine`` indexes them)."""
    from galaxy_assets.captioning.base import load_prompt

    folder = tmp_path / "captions"
    folder.mkdir()
    sha = load_prompt("describe_v1").sha
    caps = pl.concat([f["captions"] for f in text_index.frames.values()])
    caps.with_columns(
        pl.lit(sha).alias("prompt_sha"), pl.lit(datetime.now(UTC)).alias("created_at")
    ).write_parquet(folder / "captions.parquet")
    return folder


@pytest.fixture
def text_app(text_engine, caption_store):
    app = create_app(text_engine, caption_store=caption_store, refresh_seconds=None)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def survey_engine(survey_index, text_embedder, aligner) -> GalaxySearch:
    uri, _ = survey_index
    return GalaxySearch(
        uri, text_embedder=text_embedder, aligner=aligner, image_encoder=FakeImageEncoder()
    )


@pytest.fixture
def rater() -> WordRater:
    return WordRater()


@pytest.fixture
def survey_app(survey_engine, tmp_path, rater):
    app = create_app(
        survey_engine,
        rater=rater,
        thumbnail_dir=tmp_path / "thumbs",
        upload_dir=tmp_path / "uploads",
        max_upload_bytes=200_000,
        refresh_seconds=None,
    )
    (tmp_path / "uploads").mkdir()
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
