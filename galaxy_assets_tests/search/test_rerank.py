"""Re-ranking: the exact order rule (ties, failures, rows below k), ratings parsed from
replies, and vlm_rerank with the OpenAI-compatible backend (fake server), a tiny local VLM
and the offline describer."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from galaxy_assets.captioning.base import CaptionerError, CaptionRequest
from galaxy_assets.captioning.rating import (
    DescriberRater,
    Rater,
    RatingResult,
    evidence_to_score,
    named_features,
    question_for,
    rating_from_reply,
    rating_prompt,
    similarity_to_score,
)
from galaxy_assets.search.errors import SearchError
from galaxy_assets.search.query import GalaxySearch
from galaxy_assets.search.rerank import rerank, vlm_rerank
from galaxy_assets_tests.fake_openai import FakeOpenAIServer


def _results(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "rank": np.arange(1, n + 1),
            "object_id": [f"o{i}" for i in range(1, n + 1)],
            "score": np.linspace(0.9, 0.5, n),
            "caption": [f"caption {i}" for i in range(1, n + 1)],
        }
    )


def _ok(oid: str, score: float) -> RatingResult:
    return RatingResult(oid, score, (score,))


def _fail(oid: str, why: str = "no_score: no 'Score: N' in the reply") -> RatingResult:
    return RatingResult(oid, None, (), why)


# ----------------------------------------------------------------------------- the rule
def test_rerank_order_with_ties_failures_and_rows_below_k():
    frame = _results(8)
    ratings = [
        _ok("o1", 5),
        _fail("o2"),
        _ok("o3", 9),
        _ok("o4", 5),  # ties with o1: o1 has the higher similarity, so it goes first
        # o5: never rated → keeps its position like a failure
        _ok("o6", 7),
        _ok("o7", 10),  # below k_rerank=6: ignored, keeps its order
    ]
    out = rerank(frame, ratings, k_rerank=6)
    assert out["object_id"].to_list() == ["o3", "o2", "o6", "o1", "o5", "o4", "o7", "o8"]
    assert out["rank"].to_list() == list(range(1, 9))
    assert out["similarity_rank"].to_list() == [3, 2, 6, 1, 5, 4, 7, 8]
    assert out["rating"].to_list() == [9.0, None, 7.0, 5.0, None, 5.0, None, None]
    errors = dict(zip(out["object_id"], out["rating_error"], strict=True))
    assert errors["o2"].startswith("no_score:") and errors["o5"].startswith("not_rated:")
    assert errors["o7"] is None  # below k: not rated, not an error
    assert out["caption"].to_list()[0] == "caption 3"  # every column travels with its row
    assert out.columns[:5] == ["rank", "object_id", "score", "rating", "similarity_rank"]


def test_equal_ratings_and_equal_similarity_keep_the_original_order():
    frame = _results(4).with_columns(pl.lit(0.7).alias("score"))
    out = rerank(frame, {"o1": 3.0, "o2": 8.0, "o3": 3.0, "o4": 8.0}, k_rerank=4)
    assert out["object_id"].to_list() == ["o2", "o4", "o1", "o3"]


def test_all_failed_changes_nothing_and_no_default_score_is_invented():
    frame = _results(5)
    out = rerank(frame, {f"o{i}": None for i in range(1, 6)}, k_rerank=5)
    assert out["object_id"].to_list() == frame["object_id"].to_list()
    assert out["rating"].null_count() == 5
    nan = rerank(frame, {"o1": float("nan"), "o2": 2.0}, k_rerank=2)
    assert nan["object_id"].to_list()[:2] == ["o1", "o2"] and nan["rating"][0] is None


def test_rerank_uses_rank_order_and_validates():
    shuffled = _results(5).sample(fraction=1.0, shuffle=True, seed=3)
    out = rerank(shuffled, {"o5": 9.0, "o1": 1.0, "o2": 1.0, "o3": 1.0, "o4": 1.0}, k_rerank=5)
    assert out["object_id"].to_list() == ["o5", "o1", "o2", "o3", "o4"]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(SearchError, match="k_rerank"):
            rerank(_results(3), {}, k_rerank=bad)
    with pytest.raises(SearchError, match="lack column 'score'"):
        rerank(_results(3).drop("score"), {})


# ----------------------------------------------------------------------------- ratings
def test_question_and_prompt():
    assert question_for("  gravitational   lens ") == "Does this galaxy show gravitational lens?"
    assert question_for("Is this a merger?") == "Is this a merger?"
    with pytest.raises(CaptionerError):
        question_for("   ")
    prompt = rating_prompt("Does this galaxy show spiral arms?")
    assert "Question: Does this galaxy show spiral arms?" in prompt and "{question}" not in prompt
    assert "Score: N" in prompt


@pytest.mark.parametrize(
    ("replies", "score", "error"),
    [
        (["Score: 7\nClear arms."], 7.0, None),
        (["Score: 7", "Score: 9", "garbage"], 8.0, None),
        (["Score: 11"], None, "no_score"),
        (["I cannot tell."], None, "no_score"),
        ([""], None, "no_score"),
        ([None], None, "no_score"),
    ],
)
def test_rating_from_replies(replies, score, error):
    r = rating_from_reply("x", replies)
    assert r.score == score
    assert (r.error or "").startswith(error or "")
    assert r.ok == (error is None)


def test_similarity_to_score_is_monotone_on_1_to_10():
    xs = np.linspace(-1, 1, 21)
    ys = [similarity_to_score(x) for x in xs]
    assert ys[0] == 1.0 and ys[-1] == 10.0 and all(np.diff(ys) > 0)


# ----------------------------------------------------------------------------- vlm_rerank
class RecordingRater:
    def __init__(self, scores: dict[str, float | None]):
        self.scores = scores
        self.seen: list[tuple[list[str], str, int]] = []

    def rate(self, requests, question, n_samples=1):
        self.seen.append(([r.object_id for r in requests], question, n_samples))
        return [
            RatingResult(r.object_id, s, (s,))
            if (s := self.scores.get(r.object_id)) is not None
            else RatingResult(r.object_id, None, (), "no_score: nothing")
            for r in requests
        ]


@pytest.fixture
def survey_results(survey_index, text_embedder, aligner):
    uri, survey = survey_index
    engine = GalaxySearch(uri, text_embedder=text_embedder, aligner=aligner)
    oid = survey.manifests[survey.shards[0]]["object_id"][0]
    return engine.search_object(oid, k=12, include_self=True).frame


def test_vlm_rerank_reads_pixels_and_asks_the_question(survey_results):
    ids = survey_results["object_id"].to_list()
    rater = RecordingRater({ids[5]: 10.0, ids[1]: 2.0, ids[2]: 6.0})
    assert isinstance(rater, Rater)
    out = vlm_rerank(survey_results, rater, query="gravitational lens", k_rerank=6, n_samples=3)
    ((seen_ids, question, n),) = rater.seen
    assert (
        seen_ids == ids[:6] and question == "Does this galaxy show gravitational lens?" and n == 3
    )
    # rated: ids[5]=10, ids[2]=6, ids[1]=2 fill the free slots 2, 3, 6; the rest stay
    assert out.frame["object_id"].to_list()[:6] == [ids[0], ids[5], ids[2], ids[3], ids[4], ids[1]]
    assert out.frame["object_id"].to_list()[6:] == ids[6:]
    assert (out.n_rated, out.n_failed) == (3, 3)
    explicit = RecordingRater({})
    vlm_rerank(survey_results, explicit, question="Is there an arc?", k_rerank=2)
    assert explicit.seen[0][1] == "Is there an arc?"


def test_unreadable_pixels_keep_their_rank(survey_results):
    ids = survey_results["object_id"].to_list()
    broken = survey_results.with_columns(
        pl.when(pl.col("object_id") == ids[0])
        .then(pl.lit("/gone.hdf5"))
        .otherwise(pl.col("shard_uri"))
        .alias("shard_uri")
    )
    rater = RecordingRater({i: float(k) for k, i in enumerate(ids)})  # later = better
    out = vlm_rerank(broken, rater, query="arcs", k_rerank=4)
    assert ids[0] not in rater.seen[0][0]
    assert out.frame["object_id"].to_list()[:4] == [ids[0], ids[3], ids[2], ids[1]]
    assert out.frame["rating_error"][0].startswith("no_pixels: cannot open shard")


def test_vlm_rerank_refuses_a_rater_that_drops_galaxies(survey_results):
    class Lossy:
        def rate(self, requests, question, n_samples=1):
            return [RatingResult(requests[0].object_id, 5.0, (5.0,))]

    with pytest.raises(SearchError, match="one per request"):
        vlm_rerank(survey_results, Lossy(), query="arcs", k_rerank=3)
    with pytest.raises(SearchError, match="query text or an explicit question"):
        vlm_rerank(survey_results, Lossy())


def test_vlm_rerank_with_the_openai_backend(survey_results):
    from galaxy_assets.captioning.openai_backend import OpenAICaptioner

    with FakeOpenAIServer(api_key="sk-t") as server:
        server.add_fault("refusal", times=2)  # two galaxies get a refusal instead of a score
        rater = OpenAICaptioner(
            server.base_url,
            "fake-vlm",
            api_key="sk-t",
            concurrency=2,
            temperature=0.7,
            backoff_base_s=0.001,
            timeout_s=5,
        )
        out = vlm_rerank(survey_results, rater, query="tidal tails", k_rerank=8, n_samples=2)
        chats = server.routed("chat")
    assert len(chats) == 8
    assert all("Does this galaxy show tidal tails?" in c.text for c in chats)
    assert all(c.body["n"] == 2 and c.image_urls[0].startswith("data:image/png") for c in chats)
    frame = out.frame
    assert out.n_failed == 2 and out.n_rated == 6
    original = survey_results["object_id"].to_list()
    failed = frame.filter(pl.col("rating_error").is_not_null())
    for oid, err in failed.select("object_id", "rating_error").iter_rows():
        assert err.startswith("no_score:")
        # a failed galaxy stays exactly where similarity put it
        assert frame["object_id"].to_list().index(oid) == original.index(oid)
    rated = frame.head(8).filter(pl.col("rating").is_not_null())
    keys = list(zip((-rated["rating"]).to_list(), (-rated["score"]).to_list(), strict=True))
    assert keys == sorted(keys)  # by rating, ties by similarity
    assert all(1 <= s <= 10 for s in rated["rating"])
    assert frame["object_id"].to_list()[8:] == original[8:]


def test_vlm_rerank_with_a_tiny_local_vlm(survey_results, tmp_path):
    from galaxy_assets.captioning.transformers_backend import TransformersCaptioner
    from galaxy_assets_tests.captioning.tiny_vlm import build_tiny_llava

    folder = build_tiny_llava(tmp_path / "vlm")
    with TransformersCaptioner(str(folder), device="cpu", batch_size=4, max_new_tokens=8) as vlm:
        out = vlm_rerank(survey_results, vlm, query="spiral arms", k_rerank=4)
    # random weights rarely write "Score: N": whatever happened, each galaxy is either
    # rated 1-10 or failed with a reason and left where it was
    original = survey_results["object_id"].to_list()
    for row in out.frame.head(4).iter_rows(named=True):
        if row["rating"] is None:
            assert row["rating_error"] and original.index(row["object_id"]) == row["rank"] - 1
        else:
            assert 1 <= row["rating"] <= 10
    assert out.n_rated + out.n_failed == 4


def test_describer_reranks_offline(survey_results, text_embedder):
    rater = DescriberRater(text_embedder)
    out = vlm_rerank(survey_results, rater, query="a smooth red elliptical galaxy", k_rerank=6)
    assert out.question == "a smooth red elliptical galaxy"  # the describer gets the query
    rated = out.frame.head(6).filter(pl.col("rating").is_not_null())
    assert rated.height >= 4 and ((rated["rating"] >= 1) & (rated["rating"] <= 10)).all()
    assert rated["rating"].is_sorted(descending=True)  # rated rows fill free slots in order
    blank = CaptionRequest("blank", np.full((4, 16, 16), np.nan, np.float32), ("g", "r", "i", "z"))
    (r,) = rater.rate([blank], "spiral arms")
    assert r.score is None and r.error
    with pytest.raises(CaptionerError, match="question is empty"):
        rater.rate([blank], "  ")


def test_describer_rating_is_the_best_sentence_rounded_like_a_vlm_score():
    """The score comes from the description's best-matching sentence (a query names one
    feature), rounded to a whole 1-10 number as a VLM answers ``Score: N``."""
    from galaxy_assets.captioning.base import CaptionResult

    descriptions = {
        "tails": "A red elliptical galaxy with a smooth profile. A long tidal tail extends east.",
        "plain": "A red elliptical galaxy with a smooth profile. Its outer light is round.",
    }
    axes = {"tidal": 0, "elliptical": 1, "round": 2}

    class Describer:
        def caption(self, requests):
            return [CaptionResult(r.object_id, descriptions[r.object_id]) for r in requests]

    class Embedder:
        embedder_id = "toy"

        def embed(self, texts):
            out = np.zeros((len(texts), 3))
            for i, t in enumerate(texts):
                for word, j in axes.items():
                    out[i, j] = t.lower().count(word)
            return out / np.linalg.norm(out, axis=1, keepdims=True)

    rater = DescriberRater(Embedder(), Describer())
    pixels = np.zeros((4, 8, 8), np.float32)
    reqs = [CaptionRequest(o, pixels, ("g", "r", "i", "z")) for o in descriptions]
    got = {r.object_id: r.score for r in rater.rate(reqs, "tidal tail")}
    # the tail sentence matches the query exactly (cos 1 -> 10); the whole description only
    # in part, which the best-sentence rule does not let dilute it
    assert got["tails"] == 10.0
    assert got["plain"] == round(similarity_to_score(0.0)) == 6.0
    assert all(float(v).is_integer() for v in got.values())


def test_a_query_naming_a_feature_is_rated_from_the_describers_feature_scores():
    """'barred spiral' names two features: the score is 1 + 9 P(bar) P(arms), unrounded; a
    negated feature counts as 1 - p; a galaxy without scores gets no rating, never a
    default; a query naming no feature falls back to sentence similarity."""
    from galaxy_assets.captioning.base import CaptionResult

    evidence = {
        "clear": {"bar": 1.0, "arms": 0.8, "ring": 0.1},
        "half": {"bar": 0.5, "arms": 0.5, "ring": 0.9},
        "none": None,
    }

    class Describer:
        def __init__(self):
            self.captioned = 0

        def feature_evidence(self, requests):
            return [
                (r.object_id, evidence[r.object_id], None if evidence[r.object_id] else "bad")
                for r in requests
            ]

        def caption(self, requests):
            self.captioned += len(requests)
            return [CaptionResult(r.object_id, "A round galaxy.") for r in requests]

    class Embedder:
        embedder_id = "toy"

        def embed(self, texts):
            return np.ones((len(texts), 2)) / np.sqrt(2.0)

    describer = Describer()
    rater = DescriberRater(Embedder(), describer)
    pixels = np.zeros((4, 8, 8), np.float32)
    reqs = [CaptionRequest(o, pixels, ("g", "r", "i", "z")) for o in evidence]
    got = {r.object_id: r for r in rater.rate(reqs, "barred spiral galaxy")}
    assert got["clear"].score == pytest.approx(1 + 9 * 0.8)
    assert got["half"].score == pytest.approx(1 + 9 * 0.25)
    assert got["none"].score is None and got["none"].error == "bad"
    assert describer.captioned == 0  # no description needed
    unbarred = {r.object_id: r.score for r in rater.rate(reqs[:2], "a spiral without a bar")}
    assert unbarred == {"clear": pytest.approx(1.0), "half": pytest.approx(1 + 9 * 0.25)}
    (no_ring,) = rater.rate(reqs[:1], "ringed spiral arms")  # arms and ring both named
    assert no_ring.score == pytest.approx(1 + 9 * 0.8 * 0.1)
    plain = rater.rate(reqs[:2], "a small round galaxy")  # names no feature
    assert describer.captioned == 2 and all(float(r.score).is_integer() for r in plain)
    assert named_features("visible spiral arms") == {"arms": True}
    with pytest.raises(KeyError):
        evidence_to_score({"arms": 0.5}, {"bar": True})


def test_the_real_describer_gives_feature_scores_in_0_1(survey_results):
    from galaxy_assets.captioning.describer import MorphologyDescriber
    from galaxy_assets.search.pixels import read_cutouts

    cutouts = read_cutouts(survey_results.head(4))
    reqs = [CaptionRequest(c.object_id, c.image, c.bands) for c in cutouts.values()]
    blank = CaptionRequest("blank", np.full((4, 16, 16), np.nan, np.float32), ("g", "r", "i", "z"))
    with MorphologyDescriber(workers=2, chunk_size=2) as describer:
        rows = describer.feature_evidence(reqs + [blank])
    assert [oid for oid, _, _ in rows] == [r.object_id for r in reqs] + ["blank"]
    for _, scores, error in rows[:-1]:
        assert error is None
        assert set(scores) == {"arms", "bar", "ring", "merger", "lens", "edge_on"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert rows[-1][1] is None and "unmeasurable" in rows[-1][2]


def test_reranker_id_names_the_rating_rule_or_the_vlm():
    """An evaluation records its re-ranker: the describer's templates and rating revision, or
    a VLM backend's model and prompt, and the depth it re-ranks, so that a rerun notices a new
    rater or a new depth."""
    from galaxy_assets.captioning.describer import MorphologyDescriber
    from galaxy_assets.captioning.rating import RATING_REVISION
    from galaxy_assets.search.service import reranker_id
    from galaxy_assets.settings import Settings

    describer = MorphologyDescriber()
    assert reranker_id(Settings()) == (
        f"morphology-describer-v1@{describer.prompt_sha}+rating-r{RATING_REVISION}+top100"
    )
    vlm = Settings(captioner={"backend": "openai", "model": "gpt-4.1-mini"})
    assert reranker_id(vlm) == "openai:gpt-4.1-mini+rate_v1+top100"
    deeper = Settings(captioner={"backend": "openai", "model": "gpt-4.1-mini"},
                      search={"k_rerank": 200})
    assert reranker_id(deeper) == "openai:gpt-4.1-mini+rate_v1+top200"
    assert reranker_id(deeper, depth=50) == "openai:gpt-4.1-mini+rate_v1+top50"
