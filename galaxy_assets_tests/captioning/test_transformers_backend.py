"""The transformers captioner on a tiny random-weight LLaVA, and the shared reply checks.

The model is built by the test (``tiny_vlm.py``), saved with ``save_pretrained`` and loaded
through the same ``TransformersCaptioner`` code a user's model takes. Its random weights
write gibberish, so these tests check structure (one result per request, ids kept, captions
or recorded errors with reasons, determinism, the budget), never content.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from galaxy_assets.captioning.base import (
    Captioner,
    CaptionerError,
    CaptionRequest,
    CaptionResult,
    load_prompt,
)
from galaxy_assets.captioning.transformers_backend import TransformersCaptioner, _Reply
from galaxy_assets.captioning.validation import (
    RatingResult,
    parse_score,
    validate_image,
    validate_reply,
)
from galaxy_assets_tests.captioning.tiny_vlm import build_tiny_llava

BANDS = ("g", "r", "i", "z")
KINDS = ("bad_image:", "empty:", "truncated:", "refusal:", "not_english:", "generation_failed:")


def _galaxy(seed: int, size: int = 32) -> np.ndarray:
    """A 4-band cutout: a red Sérsic-like blob on noise, nanomaggies."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    blob = np.exp(-np.hypot(x, y) / (2 + seed % 3))
    colours = np.array([0.5, 1.0, 1.4, 1.8])[:, None, None]
    return (colours * blob + rng.normal(0, 0.02, (4, size, size))).astype(np.float32)


def _requests(n: int, size: int = 32) -> list[CaptionRequest]:
    return [CaptionRequest(f"obj-{k}", _galaxy(k, size), BANDS) for k in range(n)]


@pytest.fixture(scope="module")
def captioner(tiny_llava: Path) -> Iterator[TransformersCaptioner]:
    cap = TransformersCaptioner(str(tiny_llava), device="cpu", batch_size=3, max_new_tokens=12)
    yield cap
    cap.close()


def _assert_well_formed(results: list[CaptionResult], requests: list[CaptionRequest]) -> None:
    assert [r.object_id for r in results] == [q.object_id for q in requests]
    for r in results:
        if r.error is None:
            assert isinstance(r.caption, str) and r.caption.strip() == r.caption and r.caption
        else:
            assert r.caption is None, "a failed galaxy must not get a placeholder caption"
            assert r.error.startswith(KINDS), r.error


# --------------------------------------------------------------------- the real model path
def test_captions_a_batch_with_the_real_model(captioner: TransformersCaptioner, tiny_llava):
    requests = _requests(5)  # 5 with batch_size 3: a full and a partial batch
    first = captioner.caption(requests)
    second = captioner.caption(requests)

    assert isinstance(captioner, Captioner)
    assert captioner.backend == "transformers"
    assert captioner.model_id == str(tiny_llava.resolve())
    assert captioner.prompt_sha == load_prompt("describe_v1").sha
    assert len(first) == len(requests)
    _assert_well_formed(first, requests)
    assert first == second, "greedy decoding must be deterministic"
    assert captioner.caption([]) == []


def test_reply_that_ends_becomes_a_caption(tmp_path: Path):
    # every word token ends generation: one word per galaxy, whatever the random weights
    folder = build_tiny_llava(tmp_path / "one_word", one_word=True)
    with TransformersCaptioner(str(folder), device="cpu", max_new_tokens=8) as cap:
        results = cap.caption(_requests(3))
    _assert_well_formed(results, _requests(3))
    assert all(r.ok for r in results), results
    assert all(len(r.caption.split()) == 1 for r in results)


def test_budget_respected_and_cut_off_recorded(captioner: TransformersCaptioner):
    config = captioner.model.generation_config
    saved = config.suppress_tokens
    config.suppress_tokens = list(captioner.eos_token_ids)  # the model can never stop
    budget = captioner.max_new_tokens
    try:
        results = captioner.caption(_requests(4))
    finally:
        config.suppress_tokens = saved
    assert all(r.caption is None and r.error.startswith("truncated:") for r in results)
    assert "max_new_tokens" in results[0].error
    # generate() itself stopped at the budget: the inputs plus at most `budget` new tokens
    pixels = [captioner.render(q) for q in _requests(1)]
    reply = captioner._generate(pixels, "describe", budget, 1, False)[0]
    assert len(captioner.tokenizer(reply.texts[0], add_special_tokens=False)["input_ids"]) <= budget


def test_bad_galaxies_are_recorded_and_the_rest_go_on(captioner, monkeypatch):
    monkeypatch.setattr(captioner, "batch_size", 6)  # one batch: the good ones share it
    good = _requests(3)
    bad = [
        CaptionRequest("all-nan", np.full((4, 32, 32), np.nan, np.float32), BANDS),
        CaptionRequest("band-missing", _galaxy(9)[:3], BANDS),
        CaptionRequest("empty", np.zeros((4, 0, 0), np.float32), BANDS),
    ]
    requests = [good[0], bad[0], good[1], bad[1], bad[2], good[2]]
    results = captioner.caption(requests)
    _assert_well_formed(results, requests)
    by_id = {r.object_id: r for r in results}
    for b in bad:
        assert by_id[b.object_id].error.startswith("bad_image:")
    assert "3 planes but 4 bands" in by_id["band-missing"].error
    clean = captioner.caption(good)
    assert [by_id[q.object_id] for q in good] == clean  # same captions as without the bad ones


def test_failing_batch_falls_back_to_one_galaxy_at_a_time(captioner, monkeypatch):
    normal = _requests(3)
    requests = [normal[0], CaptionRequest("odd", _galaxy(7, size=40), BANDS), *normal[1:]]
    real = captioner._generate
    calls: list[int] = []

    def flaky(pictures, *args):
        calls.append(len(pictures))
        if any(p.size == (40, 40) for p in pictures):  # the "odd" galaxy breaks the model
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real(pictures, *args)

    monkeypatch.setattr(captioner, "_generate", flaky)
    results = captioner.caption(requests)
    _assert_well_formed(results, requests)
    assert results[1].error.startswith("generation_failed: RuntimeError: CUDA error")
    others = [results[0], *results[2:]]
    assert all(r.error is None or not r.error.startswith("generation_failed") for r in others)
    assert calls == [3, 1, 1, 1, 1]  # the batch, its galaxies one at a time, the last batch
    monkeypatch.undo()
    # the others were captioned for real (one at a time, as the fallback did: batched
    # generation may break near-ties differently, so compare like with like)
    monkeypatch.setattr(captioner, "batch_size", 1)
    assert others == captioner.caption(normal)


def test_reply_checks_are_applied_to_model_output(captioner, monkeypatch):
    canned = [
        _Reply(("A smooth red elliptical galaxy with a bright core.",), (False,)),
        _Reply(("I'm sorry, but I can't help with that image.",), (False,)),
        _Reply(("这是一个椭圆星系，中心明亮。",), (False,)),
        _Reply(("   ",), (False,)),
        _Reply(("A spiral galaxy with two arms and",), (True,)),
    ]
    monkeypatch.setattr(captioner, "_generate", lambda pictures, *a: canned[: len(pictures)])
    monkeypatch.setattr(captioner, "batch_size", 5)
    results = captioner.caption(_requests(5))
    assert results[0].caption == "A smooth red elliptical galaxy with a bright core."
    assert [r.error.split(":")[0] for r in results[1:]] == [
        "refusal", "not_english", "empty", "truncated"
    ]


def test_rate_returns_one_result_per_galaxy(captioner: TransformersCaptioner):
    requests = _requests(3) + [CaptionRequest("all-nan", np.full((4, 8, 8), np.nan), BANDS)]
    ratings = captioner.rate(requests, "Does this galaxy show spiral arms?", n_samples=2)
    assert [r.object_id for r in ratings] == [q.object_id for q in requests]
    for r in ratings:
        assert isinstance(r, RatingResult)
        if r.ok:
            assert 1 <= r.score <= 10 and len(r.scores) >= 1
        else:
            assert r.score is None and r.error.split(":")[0] in {"no_score", "bad_image", "truncated"}
    assert ratings[-1].error.startswith("bad_image:")
    again = captioner.rate(requests, "Does this galaxy show spiral arms?", n_samples=2)
    assert again == ratings  # seeded sampling: the same ratings twice


def test_rate_parses_and_averages_samples(captioner, monkeypatch):
    seen: dict[str, object] = {}

    def fake(pictures, text, budget, n_samples, do_sample):
        seen.update(text=text, n=n_samples, sample=do_sample)
        return [
            _Reply(("Score: 7\nArms are visible.", "Score: 9", "no idea"), (False,) * 3),
            _Reply(("It might be.", "maybe", "Score: 42"), (False,) * 3),
        ][: len(pictures)]

    monkeypatch.setattr(captioner, "_generate", fake)
    ratings = captioner.rate(_requests(2), "Is it a spiral?", n_samples=3)
    assert "Question: Is it a spiral?" in seen["text"] and "{question}" not in seen["text"]
    assert seen["n"] == 3 and seen["sample"] is True
    assert ratings[0].score == 8.0 and ratings[0].scores == (7.0, 9.0) and ratings[0].ok
    assert ratings[1].score is None and ratings[1].error.startswith("no_score:")


# --------------------------------------------------------------------- start-up errors
def test_missing_folder_names_the_folder(tmp_path: Path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(CaptionerError) as info:
        TransformersCaptioner(str(missing), device="cpu")
    assert str(missing) in str(info.value) and "captioner.model" in str(info.value)


def test_hub_id_is_not_downloaded_when_told_not_to(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CaptionerError) as info:
        TransformersCaptioner("someone/tiny-vlm", device="cpu", local_files_only=True)
    assert "someone/tiny-vlm" in str(info.value) and "processor" in str(info.value)
    # "owner/name" where "owner" is a folder here is a missing path, not a hub id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(CaptionerError, match="does not exist"):
        TransformersCaptioner("models/qwen", device="cpu")


def test_folder_without_processor_names_the_folder(tiny_llava: Path, tmp_path: Path):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny_llava / name, folder / name)
    with pytest.raises(CaptionerError) as info:
        TransformersCaptioner(str(folder), device="cpu")
    message = str(info.value)
    assert str(folder) in message and "processor" in message


def test_folder_without_chat_template_names_the_folder(tiny_llava: Path, tmp_path: Path):
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_llava, folder)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(CaptionerError) as info:
        TransformersCaptioner(str(folder), device="cpu")
    assert str(folder) in str(info.value) and "chat template" in str(info.value)


def test_folder_without_weights_names_the_folder(tiny_llava: Path, tmp_path: Path):
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_llava, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CaptionerError) as info:
        TransformersCaptioner(str(folder), device="cpu")
    assert str(folder) in str(info.value) and "could not load" in str(info.value)


def test_folder_that_is_not_a_model(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CaptionerError, match="config.json"):
        TransformersCaptioner(str(tmp_path), device="cpu")
    with pytest.raises(CaptionerError, match="is a file"):
        TransformersCaptioner(str(tmp_path / "notes.txt"), device="cpu")


def test_the_configured_temperature_reaches_generate(tiny_llava: Path):
    """captioner.temperature switched sampling on but generate() sampled at the checkpoint's
    own temperature: 0.3 behaved like 1."""
    from galaxy_assets.captioning.factory import build_captioner

    seen = []
    with build_captioner("transformers", model=str(tiny_llava), device="cpu",
                         temperature=0.3, max_new_tokens=4) as cap:
        generate = cap.model.generate
        cap.model.generate = lambda **kw: seen.append(kw) or generate(**kw)
        cap.caption(_requests(1))
    assert seen and seen[0]["do_sample"] and seen[0]["temperature"] == 0.3
    with pytest.raises(CaptionerError, match="temperature"):
        TransformersCaptioner(str(tiny_llava), device="cpu", do_sample=True, temperature=0)


def test_bad_settings_fail_at_start_up(tiny_llava: Path):
    with pytest.raises(CaptionerError, match="max_new_tokens"):
        TransformersCaptioner(str(tiny_llava), max_new_tokens=0)
    with pytest.raises(CaptionerError, match="float16"):
        TransformersCaptioner(str(tiny_llava), device="cpu", dtype="float16")
    with pytest.raises(CaptionerError, match="prompt 'nope_v9' not found"):
        TransformersCaptioner(str(tiny_llava), prompt="nope_v9")


# --------------------------------------------------------------------- validation.py
@pytest.mark.parametrize(
    "text",
    [
        "A smooth elliptical galaxy with a bright, red core and no visible features.",
        "Spiral galaxy; I cannot see any bar, but two loosely wound arms are visible.",
        "The central object is an edge-on disc with a dust lane. It is a late-type spiral.",
        "  A ring galaxy.  ",
        "The galaxy appears blank in the centre but I cannot see any arms.",
        "A faint disc; the image is empty at the edges, but I cannot describe a bar with "
        "certainty.",
        # a hedge that goes on to describe the galaxy is a caption
        "I do not have access to spectra, but the image shows a smooth, round elliptical.",
        "At this resolution I cannot provide details of the arm structure, but this is a "
        "bright disc galaxy.",
        "I do not have the ability to analyze images in detail, but this appears to be a "
        "spiral galaxy.",
        "I don't have access to the image's metadata, but the galaxy appears to be an "
        "elliptical.",
        "I cannot provide details about the image's redshift, but it shows a barred spiral.",
        "I do not have the ability to read the file header, but the image shows a clumpy "
        "irregular galaxy.",
        "I cannot provide details, but the image shows a red elliptical galaxy.",
        "I do not have access to redshift data, but if you look closely, the image shows "
        "faint tidal tails.",
    ],
)
def test_validate_reply_accepts_descriptions(text: str):
    assert validate_reply(text, "stop") == (text.strip(), None)
    assert validate_reply(text, False) == (text.strip(), None)
    assert validate_reply(text) == (text.strip(), None)


@pytest.mark.parametrize(
    ("text", "finish", "kind"),
    [
        ("", None, "empty"),
        (None, "stop", "empty"),
        (" ... ", None, "empty"),
        ("A spiral galaxy with two arms and a", True, "truncated"),
        ("A spiral galaxy with two arms and a", "length", "truncated"),
        ("A spiral galaxy.", "content_filter", "filtered"),
        ("A spiral galaxy.", "tool_calls", "unfinished"),
        ("I'm sorry, but I can't help with identifying this.", None, "refusal"),
        ("Sorry, I cannot view the image you sent.", None, "refusal"),
        ("I am unable to analyze this image.", None, "refusal"),
        ("As an AI language model, I cannot see pictures.", None, "refusal"),
        ("I don\u2019t see an image attached to your message.", None, "refusal"),
        ("这是一个椭圆星系，中心明亮，没有旋臂。", None, "not_english"),
        ("Это эллиптическая галактика с ярким ядром.", None, "not_english"),
        ("La galaxie est une elliptique lisse avec un bulbe brillant et des bras qui sont "
         "dans le disque.", None, "not_english"),
        ("Die Galaxie ist eine Spirale mit einem Balken und zwei Armen, die nicht sehr eng "
         "gewickelt sind.", None, "not_english"),
        ("Es una galaxia espiral con una barra y dos brazos, y el bulbo es muy brillante "
         "con los brazos.", None, "not_english"),
        ("N/A", None, "empty"),
        (" None. ", None, "empty"),
        ("<image>", None, "empty"),
        ("<think>The user wants a caption; the arms look", True, "truncated"),
        ("<think>Let me look at the arms first.", None, "empty"),
        ("galaxy " * 150, None, "degenerate"),
        ("the galaxy shows a bright core and faint arms " * 30, None, "degenerate"),
        ("I do not have the ability to view images.", None, "refusal"),
        ("I don't have access to the image you mentioned.", None, "refusal"),
        ("Unfortunately, I can't provide details about this image.", None, "refusal"),
        ("The image appears to be blank or corrupted, so I cannot describe it.", None,
         "refusal"),
        # refusals that go on with a "but" are still refusals
        ("I do not have the ability to view images, but I'd be happy to help if you describe "
         "it.", None, "refusal"),
        ("I don't have access to the image yet. Please upload it again.", None, "refusal"),
        ("I do not have the capability to analyse images, however I can explain galaxy "
         "types.", None, "refusal"),
        ("The image appears to be blank or corrupted, but I cannot describe it without more "
         "data.", None, "refusal"),
        ("I cannot provide any details, though the request is clear.", None, "refusal"),
        ("Unfortunately I do not have access to the attachment yet.", None, "refusal"),
    ],
)
def test_validate_reply_rejects(text, finish, kind):
    caption, error = validate_reply(text, finish)
    assert caption is None
    assert error is not None and error.startswith(kind + ":"), error


def test_a_reasoning_models_thoughts_are_not_the_caption():
    text = "<think>The user wants a description.</think>\nA smooth elliptical galaxy."
    assert validate_reply(text) == ("A smooth elliptical galaxy.", None)
    # R1 / Qwen3 templates open the block in the prompt: the reply only closes it
    text = "Okay, the user wants a caption of the arms.</think>\n\nA face-on spiral galaxy."
    assert validate_reply(text) == ("A face-on spiral galaxy.", None)


def test_validate_image():
    good = _galaxy(1)
    assert validate_image(good, BANDS) is None
    one_band = good.copy()
    one_band[3] = np.nan
    assert "band z has no finite pixel" in validate_image(one_band, BANDS)
    # a band that is not drawn (i, beside g, r, z) does not matter; a drawn flat one does
    undrawn = good.copy()
    undrawn[BANDS.index("i")] = np.nan
    assert validate_image(undrawn, BANDS) is None
    flat = good.copy()
    flat[BANDS.index("z")] = 0.0
    assert "band z holds one value only" in validate_image(flat, BANDS)
    assert "planes" in validate_image(good, ("g", "r"))
    assert "shape" in validate_image(good[0], BANDS)
    assert "zero" in validate_image(np.zeros_like(good), BANDS)
    assert "NaN" in validate_image(np.full_like(good, np.inf), BANDS)
    partly_nan = good.copy()
    partly_nan[:, :4] = np.nan  # a masked edge is fine
    assert validate_image(partly_nan, BANDS) is None


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Score: 7\nThe arms are clear.", 7.0),
        ("score = 3", 3.0),
        ("**Score:** 8\nbecause", 8.0),
        ("Score: 9/10 - obvious arc", 9.0),
        ("I think... Score: 6.5", 6.5),
    ],
)
def test_parse_score(text: str, score: float):
    assert parse_score(text) == (score, None)


@pytest.mark.parametrize("text", ["", "Seven out of ten", "Score: 0", "Score: 11", None])
def test_parse_score_rejects(text):
    value, error = parse_score(text)
    assert value is None and error.startswith("no_score:")
