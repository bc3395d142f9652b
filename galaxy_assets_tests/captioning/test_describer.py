"""The morphology describer: protocol, determinism, bad input, pixels-only, and words that
follow the pixels on the mock survey."""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import galaxy_assets.captioning.describer as describer_mod
import galaxy_assets.captioning.feature_scores as feature_scores_mod
import galaxy_assets.captioning.keywords as keywords_mod
import galaxy_assets.captioning.measure as measure_mod
from galaxy_assets.captioning.base import Captioner, CaptionerError, CaptionRequest
from galaxy_assets.captioning.describer import MAX_WORDS, MorphologyDescriber, Reading
from galaxy_assets.captioning.keywords import FAMILIES, keyword_rates, mentions
from galaxy_assets_tests.captioning.test_measure import (
    BLUE,
    BRIGHT_BLUE,
    RED,
    arc_plane,
    elliptical,
    observe,
    sersic_plane,
    spiral_plane,
)

BANDS = ("g", "r", "z")
FAMILY = {f.name: f for f in FAMILIES}


def requests_of(images, prefix="obj", bands=BANDS):
    return [CaptionRequest(f"{prefix}{i}", img, bands) for i, img in enumerate(images)]


def few_images():
    return [
        elliptical(seed=1),
        # arms at full contrast: the describer calls arms from a score calibrated on mock-survey
        # galaxies, on which this bulgeless toy disc at 0.8 contrast sits just below the line
        observe([spiral_plane(6.0, 2, 18.0, amp=1.0)], [BRIGHT_BLUE], seed=2),
        observe([sersic_plane(10.0, 1.0, 0.18, 40.0)], [RED], seed=3),
        observe([sersic_plane(6.0, 1.0), sersic_plane(5.0, 1.0, x0=12.0)], [RED, RED], seed=4),
        observe([sersic_plane(5.0, 0.7, 0.7, 10.0)], [BLUE], seed=5),
    ]


# --------------------------------------------------------------------------- protocol
def test_protocol_conformance():
    d = MorphologyDescriber()
    assert isinstance(d, Captioner)
    assert d.backend == "morphology"
    assert d.model_id == "morphology-describer-v1"
    assert isinstance(d.prompt_sha, str) and len(d.prompt_sha) == 16
    assert MorphologyDescriber(seed=5).prompt_sha == d.prompt_sha  # the template set, not the seed
    results = d.caption(requests_of(few_images()))
    assert [r.object_id for r in results] == [f"obj{i}" for i in range(5)]
    assert all(r.ok for r in results)
    assert d.caption([]) == []
    d.close()


def test_bad_configuration_is_a_captioner_error():
    with pytest.raises(CaptionerError, match="version"):
        MorphologyDescriber(version="v0")
    with pytest.raises(CaptionerError, match="workers"):
        MorphologyDescriber(workers=0)


def test_captions_are_short_english_prose():
    for r in MorphologyDescriber().caption(requests_of(few_images())):
        words = r.caption.split()
        assert 8 <= len(words) <= MAX_WORDS
        assert r.caption[0].isupper() and r.caption.endswith(".")
        assert "{" not in r.caption and "  " not in r.caption


def test_words_describe_what_was_drawn():
    caps = [r.caption for r in MorphologyDescriber().caption(requests_of(few_images()))]
    ell, spi, edge, pair, _ = caps
    assert mentions(ell, FAMILY["elliptical"])
    assert mentions(spi, FAMILY["spiral"])
    assert mentions(edge, FAMILY["edge_on"])
    assert mentions(pair, FAMILY["merger"])
    assert not mentions(ell, FAMILY["spiral"]) and not mentions(ell, FAMILY["merger"])


def test_deterministic_and_seeded_phrasing():
    imgs = few_images()
    a = [r.caption for r in MorphologyDescriber(seed=0).caption(requests_of(imgs))]
    b = [r.caption for r in MorphologyDescriber(seed=0).caption(requests_of(imgs))]
    assert a == b
    # phrasing varies with the seed and the object id, over enough galaxies
    c = [r.caption for r in MorphologyDescriber(seed=1).caption(requests_of(imgs))]
    same_pixels = [elliptical(seed=1)] * 12
    d = {r.caption for r in MorphologyDescriber().caption(requests_of(same_pixels, "x"))}
    assert a != c
    assert len(d) >= 3


def test_workers_give_the_same_captions():
    imgs = few_images() * 8  # 40 galaxies: more than one chunk per worker
    reqs = requests_of(imgs)
    one = MorphologyDescriber(workers=1).caption(reqs)
    with MorphologyDescriber(workers=2, chunk_size=4) as d:
        two = d.caption(reqs)
        again = d.caption(reqs[:9])  # the pool is reused
    assert one == two
    assert again == one[:9]


# --------------------------------------------------------------------------- bad input
def test_bad_galaxies_are_recorded_and_the_batch_goes_on():
    good = elliptical(seed=7)
    nan = np.full_like(good, np.nan)
    blank = np.zeros_like(good)
    reqs = [
        CaptionRequest("good1", good, BANDS),
        CaptionRequest("nan", nan, BANDS),
        CaptionRequest("blank", blank, BANDS),
        CaptionRequest("noz", good[:2], ("g", "r")),
        CaptionRequest("mismatch", good, ("g", "r")),
        CaptionRequest("flat", good[0], BANDS),
        CaptionRequest("sky", np.random.default_rng(1).normal(0, 0.01, good.shape), BANDS),
        CaptionRequest("good2", good, BANDS),
    ]
    for workers in (1, 2):
        with MorphologyDescriber(workers=workers, chunk_size=2) as d:
            res = {r.object_id: r for r in d.caption(reqs)}
        assert res["good1"].ok and res["good2"].ok
        for oid, word in [
            ("nan", "NaN"),
            ("blank", "constant"),
            ("noz", "missing"),
            ("mismatch", "band"),
            ("flat", "shape"),
            ("sky", "no source"),
        ]:
            assert res[oid].caption is None, oid
            assert word in res[oid].error, (oid, res[oid].error)


# --------------------------------------------------------------------------- pixels only
def test_describer_imports_nothing_that_reads_truth():
    """The describer and its measurements import only numpy/scipy, the captioning base and
    each other: no survey, truth, polars/pyarrow or file readers."""
    allowed = {
        "__future__",
        "hashlib",
        "json",
        "logging",
        "math",
        "os",
        "re",
        "collections.abc",
        "concurrent.futures",
        "dataclasses",
        "functools",
        "multiprocessing",
        "numpy",
        "scipy",
        "scipy.ndimage",
        "scipy.special",
        "galaxy_assets.captioning.base",
        "galaxy_assets.captioning.measure",
        "galaxy_assets.captioning.feature_scores",
    }
    # the feature scores read one file, the fitted numbers shipped beside them, and import no
    # survey, table or truth reader
    scores_src = Path(inspect.getfile(feature_scores_mod)).read_text()
    assert scores_src.count("read_text(") == 1
    assert 'Path(__file__).with_name("feature_scores.json")' in scores_src
    scores_allowed = allowed | {"pathlib", "typing", "warnings"}
    for node in ast.walk(ast.parse(scores_src)):
        if isinstance(node, ast.Import):
            assert all(a.name in scores_allowed for a in node.names), ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "") in scores_allowed, node.module
    for mod in (describer_mod, measure_mod):
        tree = ast.parse(Path(inspect.getfile(mod)).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name in allowed, f"{mod.__name__} imports {name}"
        # no identifier that opens or reads files, tables or truth
        idents = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        idents |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for ident in idents:
            low = ident.lower()
            assert not any(w in low for w in ("truth", "parquet", "hdf5", "h5py", "read_")), (
                f"{mod.__name__} uses {ident}"
            )
        assert "open" not in idents and "Path" not in idents, mod.__name__


def test_same_pixels_same_features_whatever_the_id():
    d = MorphologyDescriber()
    for img in few_images():
        readings = {d.read(img, BANDS) for _ in range(2)}
        assert len(readings) == 1
        by_id = {
            oid: describer_mod.describe(img, BANDS, oid)[1] for oid in ("a", "zz-9", "mock7-000001")
        }
        assert len(set(by_id.values())) == 1
        assert isinstance(next(iter(by_id.values())), Reading)
    # ... and the words differ only in phrasing: the same families are mentioned
    img = few_images()[3]
    caps = [r.caption for r in d.caption(requests_of([img] * 10, "id"))]
    for fam in FAMILIES:
        assert len({mentions(c, fam) for c in caps}) == 1, fam.name


def test_pixels_change_the_words():
    d = MorphologyDescriber()
    a = d.caption([CaptionRequest("same", elliptical(seed=1), BANDS)])[0].caption
    b = d.caption(
        [CaptionRequest("same", observe([spiral_plane(6.0)], [BRIGHT_BLUE], seed=1), BANDS)]
    )[0].caption
    assert a != b


def _bin_index(kind: str, word: str) -> int:
    return [w for _, w in describer_mod.APPEARANCE_BINS[kind]].index(word)


def test_appearance_sentence_follows_brightness_size_tint_and_long_axis():
    d = MorphologyDescriber()
    # the long axis, clockwise from +x on a cutout drawn with its first row at the top
    for pa, words in [
        (0.0, "horizontally"),
        (45.0, "from upper left to lower right"),
        (90.0, "vertically"),
        (135.0, "from lower left to upper right"),
    ]:
        flat = d.read(observe([sersic_plane(6.0, 1.0, 0.35, pa)], [RED], seed=1), BANDS)
        assert flat.orientation == words, pa
    assert d.read(observe([sersic_plane(6.0, 1.0)], [RED], seed=1), BANDS).orientation == ""

    base = d.read(observe([sersic_plane(5.0, 1.0)], [RED], seed=2), BANDS)
    brighter = d.read(observe([sersic_plane(5.0, 1.0)], [tuple(8 * f for f in RED)], seed=2), BANDS)
    larger = d.read(observe([sersic_plane(9.0, 1.0)], [RED], seed=2), BANDS)
    bluer = d.read(observe([sersic_plane(5.0, 1.0)], [BLUE], seed=2), BANDS)
    assert _bin_index("brightness", brighter.brightness) < _bin_index("brightness", base.brightness)
    assert _bin_index("extent", larger.extent) > _bin_index("extent", base.extent)
    assert _bin_index("tint", bluer.tint) < _bin_index("tint", base.tint)
    assert base.tint in {"yellow-orange", "orange-red"} and bluer.tint == "blue"  # g - r 1.0, 0.24

    text = d.caption(
        [CaptionRequest("o", observe([sersic_plane(6.0, 1.0, 0.35, 90.0)], [RED], seed=1), BANDS)]
    )[0].caption
    flat = d.read(observe([sersic_plane(6.0, 1.0, 0.35, 90.0)], [RED], seed=1), BANDS)
    assert text.endswith(describer_mod.appearance_sentence(flat))
    assert text.endswith(" Its long axis runs vertically.")
    assert f"it looks {flat.brightness}, {flat.extent} and {flat.tint} in colour." in text
    # an undefined magnitude or size: no appearance sentence rather than a made-up one
    assert (
        describer_mod.appearance_sentence(Reading("disc", "red", "medium", "round", 1.0, 1.0)) == ""
    )
    assert describer_mod._binned("brightness", math.nan) == ""
    assert describer_mod._binned("brightness", 30.0) == "very faint"
    assert describer_mod._binned("tint", -1.0) == "blue"


def test_appearance_tint_never_contradicts_the_colour_word():
    colour_of = describer_mod._colour_word
    for gr in np.linspace(-0.5, 2.0, 501):
        tint, colour = describer_mod._binned("tint", float(gr)), colour_of(float(gr))
        allowed = {
            "blue": {"blue", "blue-white"},
            "white": {"white", "cream-white"},
            "yellow": {"yellow", "yellow-orange"},
            "red": {"orange-red", "deep red"},
        }[colour]
        assert tint in allowed, (gr, tint, colour)


# --------------------------------------------------------------------------- decisions
@pytest.fixture(scope="module")
def smooth_red():
    """Measurements of a smooth red elliptical, to be edited into the cases below."""
    return measure_mod.measure(elliptical(seed=11), BANDS)


LENS_LIKE = {
    "arc_fraction": 0.05,
    "arc_snr": 12.0,
    "arc_tangential": 2.5,
    "arc_colour_offset": -0.7,
    "arc_outer_excess": 0.0,
    "arc_radius": 6.0,
}


def test_lens_is_called_from_a_tangential_blue_arc(smooth_red):
    from dataclasses import replace

    assert describer_mod.interpret(smooth_red).lens == ""
    lens = describer_mod.interpret(replace(smooth_red, **LENS_LIKE))
    assert lens.lens == "candidate" and lens.morphology == "elliptical" and "lens" in lens.features
    strong = describer_mod.interpret(replace(smooth_red, **{**LENS_LIKE, "arc_fraction": 0.12}))
    assert strong.lens == "strong"
    # each of these alone is not a lens: too little arc light, too faint, radial rather
    # than tangential, no bluer than the host, blue light far out as well (a disc), arms
    for change in [
        {"arc_fraction": 0.02},
        {"arc_snr": 5.0},
        {"arc_tangential": 1.2},
        {"arc_colour_offset": -0.2},
        {"arc_outer_excess": 2.0},
        {"spiral_snr": 15.0},
    ]:
        r = describer_mod.interpret(replace(smooth_red, **{**LENS_LIKE, **change}))
        assert r.lens == "", change
    # the arcs' own asymmetry and a modest winding signal do not veto a lens
    r = describer_mod.interpret(
        replace(smooth_red, **{**LENS_LIKE, "asymmetry": 0.2, "spiral_snr": 5.0})
    )
    assert r.lens == "candidate"


TAILS = {
    "tidal_outer_fraction": 0.09,
    "tidal_outer_snr": 40.0,
    "tidal_outer_ratio": 0.7,
    "asymmetry": 0.3,
    "clump_count": 0,
}


def _merger_probability(monkeypatch, p: float) -> None:
    """The describer's feature scores with the merger network's output set to ``p``."""
    real = feature_scores_mod.default_scorer()

    class Scorer:
        def score(self, m):
            return {**real.score(m), "merger": p}

    monkeypatch.setattr(describer_mod, "default_scorer", lambda: Scorer())


def test_tidal_light_needs_a_disturbed_smooth_system(smooth_red, monkeypatch):
    from dataclasses import replace

    assert describer_mod.interpret(replace(smooth_red, **TAILS)).tidal == "weak"
    strong_tails = replace(smooth_red, **{**TAILS, "tidal_outer_fraction": 0.15})
    # strong tidal light makes a merger where the merger network does not doubt it
    _merger_probability(monkeypatch, describer_mod.MERGER_SCORE_FLOOR + 0.05)
    strong = describer_mod.interpret(strong_tails)
    assert strong.tidal == "strong" and strong.morphology == "merger"
    _merger_probability(monkeypatch, describer_mod.MERGER_SCORE_FLOOR - 0.05)
    doubted = describer_mod.interpret(strong_tails)
    assert doubted.tidal == "strong" and doubted.morphology != "merger"
    monkeypatch.undo()
    # the outer asymmetric light of a knotty star-forming disc, or of a mildly lopsided one
    assert describer_mod.interpret(replace(smooth_red, **{**TAILS, "clump_count": 5})).tidal == ""
    assert describer_mod.interpret(replace(smooth_red, **{**TAILS, "asymmetry": 0.15})).tidal == ""


def test_a_second_nucleus_must_be_resolved(smooth_red, monkeypatch):
    from dataclasses import replace

    pair = {"nucleus_flux_ratio": 0.6, "nucleus_extent": 1.5, "asymmetry": 0.25}
    _merger_probability(monkeypatch, describer_mod.MERGER_SCORE_FLOOR + 0.05)
    r = describer_mod.interpret(replace(smooth_red, **pair))
    assert r.second_nucleus and r.morphology == "merger"
    # the network alone, when sure, calls a merger without a resolved second nucleus
    _merger_probability(monkeypatch, describer_mod.MERGER_SCORE_MIN)
    assert describer_mod.interpret(smooth_red).morphology == "merger"
    monkeypatch.undo()
    star = describer_mod.interpret(replace(smooth_red, **{**pair, "nucleus_extent": 1.0}))
    assert not star.second_nucleus and star.star
    calm = describer_mod.interpret(replace(smooth_red, **{**pair, "asymmetry": 0.1}))
    assert not calm.second_nucleus


def test_lens_caption_from_pixels():
    host = sersic_plane(5.0, 4.0, 0.85, 10.0)
    plain = observe([host], [RED], seed=4)
    lensed = observe([host, arc_plane(6.0)], [RED, (4.0, 4.0, 4.0)], seed=4)
    caps = [r.caption for r in MorphologyDescriber().caption(requests_of([plain, lensed]))]
    assert not mentions(caps[0], FAMILY["lens"])
    assert mentions(caps[1], FAMILY["lens"]) and mentions(caps[1], FAMILY["elliptical"])


def _template_texts(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [t for v in node.values() for t in _template_texts(v)]
    return [t for v in node for t in _template_texts(v)]


def test_no_template_names_a_feature_inside_a_negation():
    """A text embedder puts "no visible spiral arms" close to "visible spiral arms": the
    describer says what it sees, and describes absences in positive words ("smooth")."""
    texts = _template_texts(describer_mod.TEMPLATES)
    assert len(texts) > 100
    for text in texts:
        for fam in FAMILIES:
            for hit in fam.regex.finditer(text):
                assert not keywords_mod._negated(text, hit.start()), (fam.name, text)
    assert any("smooth, featureless disc" in t for t in texts)


def test_prompt_sha_follows_thresholds_measurements_and_logic(monkeypatch):
    base = MorphologyDescriber().prompt_sha
    monkeypatch.setattr(describer_mod, "LENS_MIN_FRACTION", 0.05)
    assert MorphologyDescriber().prompt_sha != base
    monkeypatch.undo()
    assert MorphologyDescriber().prompt_sha == base
    monkeypatch.setattr(measure_mod, "ARC_NSIGMA", measure_mod.ARC_NSIGMA + 0.5)
    assert MorphologyDescriber().prompt_sha != base
    monkeypatch.undo()
    monkeypatch.setattr(describer_mod, "LOGIC_REVISION", describer_mod.LOGIC_REVISION + 1)
    assert MorphologyDescriber().prompt_sha != base
    monkeypatch.undo()
    # refitted feature scores are a different describer too
    fitted = feature_scores_mod.default_scorer().as_dict()
    fitted["weights"]["lens"][-1] += 0.01
    refit = feature_scores_mod.FeatureScorer.from_dict(fitted)
    monkeypatch.setattr(describer_mod, "default_scorer", lambda: refit)
    assert MorphologyDescriber().prompt_sha != base


# --------------------------------------------------------------------------- mock survey
N_SURVEY = 600
N_RARE = 30  # lenses and mergers drawn on top of the random sample to measure their recall
SURVEY_SEED = 42


def _rare_indices(seed: int, kind: str, n: int) -> list[int]:
    from galaxy_assets.survey.mock_population import morph_type_of

    out, i = [], 0
    while len(out) < n:
        if morph_type_of(seed, i) == kind:
            out.append(i)
        i += 1
    return out


@pytest.fixture(scope="module")
def survey_captions(tmp_path_factory):
    """Captions and truth of a 600-galaxy mock survey plus 30 lenses and 30 mergers.

    The random sample gives the mention rates among galaxies *not* in a class; lenses and
    mergers are rare (0.5% and 2%), so extra ones, found by the generator's own type sequence
    (no truth table involved), give their recall with useful precision. The truth table is
    read here, by the test, never by the describer.
    """
    from galaxy_assets.survey.mock import simulate_galaxy, simulate_survey
    from galaxy_assets.survey.readers import open_shard

    out = tmp_path_factory.mktemp("mock_survey")
    simulate_survey(out, N_SURVEY, seed=SURVEY_SEED, workers=2)
    reqs, truths = [], []
    for shard in sorted(out.glob("healpix=*/*.hdf5")):
        with open_shard(shard, ivar=False) as reader:
            for batch in reader.iter_batches(256):
                reqs += [
                    CaptionRequest(str(o), img, batch.bands)
                    for o, img in zip(batch.object_id, batch.images, strict=True)
                ]
        truths.append(pl.read_parquet(shard.with_name(shard.stem + ".truth.parquet")))
    truth = pl.concat(truths, how="diagonal_relaxed").with_columns(pl.lit("random").alias("sample"))
    # rare classes, beyond the random sample's indices
    extra_rows = []
    for kind in ("lens", "merger"):
        for idx in _rare_indices(SURVEY_SEED, kind, N_RARE + 40)[-N_RARE:]:
            if idx < N_SURVEY:
                continue
            gal = simulate_galaxy(SURVEY_SEED, idx)
            reqs.append(CaptionRequest(gal.object_id, gal.image, ("g", "r", "i", "z")))
            extra_rows.append({**gal.truth, "sample": kind})
    extra = pl.DataFrame(extra_rows, infer_schema_length=None)
    truth = pl.concat(
        [truth, extra.select([c for c in truth.columns if c in extra.columns])],
        how="diagonal_relaxed",
    )
    with MorphologyDescriber(workers=2) as d:
        results = d.caption(reqs)
    caps = pl.DataFrame(
        {
            "object_id": [r.object_id for r in results],
            "caption": [r.caption for r in results],
            "error": [r.error for r in results],
        }
    )
    return caps, truth


def test_survey_captions_are_valid(survey_captions):
    caps, truth = survey_captions
    assert caps.height == truth.height
    ok = caps.filter(pl.col("caption").is_not_null())
    assert ok.height >= 0.98 * caps.height, caps.filter(pl.col("error").is_not_null())
    words = ok["caption"].str.split(" ").list.len()
    assert words.max() <= MAX_WORDS
    assert ok["caption"].n_unique() > 0.8 * ok.height  # not one template for all


def _rate(caps, truth, family, flag, sample=None):
    """Mention rate of ``family`` in the class ``flag`` (optionally within ``sample``) and
    among the random sample's galaxies outside the class."""
    fam = FAMILY[family]
    j = caps.join(truth, on="object_id")
    said = pl.Series([mentions(c, fam) for c in j["caption"].to_list()])
    j = j.with_columns(said=said)
    cls = j.filter(pl.col(flag) & (pl.col("sample") == sample if sample else pl.lit(True)))
    rest = j.filter(~pl.col(flag) & (pl.col("sample") == "random"))
    return cls["said"].mean(), rest["said"].mean(), cls.height, rest.height


@pytest.mark.parametrize(
    ("family", "flag", "min_rate", "min_lift"),
    [
        # thresholds leave room under the rates measured on independent mock surveys
        # (lens 0.45-0.57 vs 0.001-0.002; mergers 0.14-0.24 vs 0.006-0.007; spirals
        # 0.66-0.69 vs 0.14; edge-on 0.72-0.76 vs 0.05), about two binomial sigmas here
        ("lens", "is_lens", 0.15, 10.0),
        ("merger", "is_merger", 0.12, 3.0),
        ("spiral", "is_spiral", 0.5, 2.5),
        ("edge_on", "is_edge_on", 0.5, 6.0),
    ],
)
def test_words_follow_the_pixels(survey_captions, family, flag, min_rate, min_lift):
    caps, truth = survey_captions
    rate_in, rate_out, n_in, n_out = _rate(caps, truth, family, flag)
    assert n_in >= 20 and n_out >= 300
    assert rate_in >= min_rate, (family, rate_in, rate_out)
    # far more often in the class than outside it (a rest rate of 0 counts as 1/n_out)
    assert rate_in >= min_lift * max(rate_out, 1.0 / n_out), (family, rate_in, rate_out)


def test_keyword_rates_on_the_survey(survey_captions):
    caps, truth = survey_captions
    random = truth.filter(pl.col("sample") == "random")
    rates = keyword_rates(caps, random)
    assert set(rates["family"]) == {f.name for f in FAMILIES}
    row = {r["family"]: r for r in rates.iter_rows(named=True)}
    assert row["edge_on"]["precision"] > 0.5
    assert row["elliptical"]["precision"] > 0.5 and row["elliptical"]["recall"] > 0.5
    assert row["spiral"]["lift"] > 2.5
    assert all(r["support"] + (r["mentions"] - r["tp"]) <= r["n"] for r in row.values())
    assert not any(math.isnan(v) for v in rates["rate_in_rest"].drop_nulls().to_list())
