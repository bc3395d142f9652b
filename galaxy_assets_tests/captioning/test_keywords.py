"""Keyword families and their precision/recall against the truth table."""

from __future__ import annotations

import polars as pl
import pytest

from galaxy_assets.captioning.keywords import (
    FAMILIES,
    as_metadata,
    keyword_rates,
    mentions,
    named_families,
    rates_markdown,
)

FAMILY = {f.name: f for f in FAMILIES}


@pytest.mark.parametrize(
    ("family", "text"),
    [
        ("lens", "Blue arcs curve around the galaxy."),
        ("lens", "A gravitational lens with an Einstein ring."),
        ("lens", "The source is strongly lensed."),
        ("spiral", "A grand-design spiral with two arms."),
        ("spiral", "Spiral arms wrap around the bulge."),
        ("merger", "Two galaxies merging, with long tidal tails."),
        ("merger", "An interacting pair; the disc is disturbed."),
        ("merger", "Faint shells surround the elliptical."),
        ("merger", "A second nucleus lies 3 arcsec away."),
        ("edge_on", "An edge-on disc galaxy."),
        ("edge_on", "Seen edge on, with a dark dust lane."),
        ("ring", "A ring encircles the bulge."),
        ("ring", "A ring-like structure."),
        ("bar", "A barred spiral."),
        ("bar", "A central bar crosses the nucleus."),
        ("elliptical", "A smooth elliptical galaxy."),
        ("elliptical", "A quiescent early-type galaxy."),
        ("clumpy_irregular", "Clumpy star-forming knots."),
        ("clumpy_irregular", "An irregular dwarf galaxy."),
    ],
)
def test_families_find_their_words(family, text):
    assert mentions(text, FAMILY[family])


@pytest.mark.parametrize(
    ("family", "text"),
    [
        ("lens", "The galaxy is 3.5 arcsec across."),  # arcsec is not an arc
        ("lens", "A lenticular galaxy."),
        ("bar", "A barely resolved source."),
        ("merger", "An undisturbed, smooth disc."),
        ("merger", "Detailed structure in the disc."),  # details is not tails
        ("ring", "An Einstein ring around the lens."),  # a lensing ring, not a ring galaxy
        ("ring", "A spring-like shape."),
        ("spiral", "A smooth elliptical galaxy."),
        ("elliptical", "A lenticular (S0) galaxy."),
        ("edge_on", "A face-on disc."),
    ],
)
def test_families_ignore_other_words(family, text):
    assert not mentions(text, FAMILY[family])


@pytest.mark.parametrize(
    ("family", "text", "expected"),
    [
        ("spiral", "There are no spiral arms.", False),
        ("spiral", "A disc without clear spiral structure.", False),
        ("merger", "It shows no sign of tidal features or interaction.", False),
        ("bar", "The galaxy lacks a bar.", False),
        ("merger", "No tidal tails, but a second nucleus is present.", True),
        ("spiral", "No bar is visible; two spiral arms wind outward.", True),
        ("spiral", "Not an elliptical: faint spiral arms surround a bulge.", True),
        ("lens", "A red galaxy. There are no arcs.", False),
    ],
)
def test_negation(family, text, expected):
    assert mentions(text, FAMILY[family]) is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("visible spiral arms", {"spiral": True}),
        ("barred spiral galaxy", {"spiral": True, "bar": True}),
        ("a spiral galaxy without a bar", {"spiral": True, "bar": False}),
        ("a gravitational lens with an Einstein ring", {"lens": True}),  # no ring family
        ("lensed blue arcs around an elliptical galaxy", {"lens": True, "elliptical": True}),
        ("two galaxies merging with tidal tails", {"merger": True}),
        ("a small round blue galaxy", {}),
        ("", {}),
    ],
)
def test_named_families_of_a_query(query, expected):
    assert named_families(query) == expected


def test_empty_and_null_captions():
    for fam in FAMILIES:
        assert not mentions(None, fam)
        assert not mentions("", fam)


def _frames():
    captions = pl.DataFrame(
        {
            "object_id": ["a", "b", "c", "d", "e", "f"],
            "caption": [
                "A spiral galaxy with two arms.",  # spiral, true
                "A spiral galaxy.",  # spiral, false positive
                "A smooth elliptical galaxy.",  # spiral missed (is_spiral)
                "Two galaxies merging with tidal tails.",
                None,  # failed caption: no mention
                "A smooth elliptical galaxy.",
            ],
        }
    )
    truth = pl.DataFrame(
        {
            "object_id": ["a", "b", "c", "d", "e", "f", "zz"],  # zz has no caption
            "is_spiral": [True, False, True, False, True, False, True],
            "is_merger": [False, False, False, True, True, False, False],
            "is_elliptical": [False, False, False, False, False, True, False],
        }
    )
    return captions, truth


def test_keyword_rates_by_hand():
    captions, truth = _frames()
    fams = [FAMILY["spiral"], FAMILY["merger"], FAMILY["elliptical"]]
    rates = keyword_rates(captions, truth, fams)
    row = {r["family"]: r for r in rates.iter_rows(named=True)}
    sp = row["spiral"]
    # spiral: class {a, c, e}; mentions {a, b}; tp {a}
    assert (sp["n"], sp["support"], sp["mentions"], sp["tp"]) == (6, 3, 2, 1)
    assert sp["precision"] == pytest.approx(0.5)
    assert sp["recall"] == pytest.approx(1 / 3)
    assert sp["rate_in_rest"] == pytest.approx(1 / 3)  # b among {b, d, f}
    assert sp["lift"] == pytest.approx(1.0)
    me = row["merger"]
    assert (me["support"], me["mentions"], me["tp"]) == (2, 1, 1)
    assert me["precision"] == 1.0 and me["recall"] == 0.5 and me["rate_in_rest"] == 0.0
    assert me["lift"] is None  # undefined: nothing outside the class mentions it
    el = row["elliptical"]
    assert (el["support"], el["mentions"], el["tp"]) == (1, 2, 1)
    assert el["precision"] == 0.5 and el["recall"] == 1.0


def test_keyword_rates_edge_cases():
    captions, truth = _frames()
    # integer object ids on one side are matched as strings
    ints = pl.DataFrame({"object_id": [1, 2], "caption": ["A spiral.", "An elliptical."]})
    tr = pl.DataFrame({"object_id": ["1", "2"], "is_spiral": [True, False]})
    r = keyword_rates(ints, tr, [FAMILY["spiral"]])
    assert r["tp"][0] == 1 and r["precision"][0] == 1.0
    # a family whose flags are missing is skipped (with a warning), others still reported
    r = keyword_rates(captions, truth.drop("is_merger"))
    assert "merger" not in r["family"].to_list() and "spiral" in r["family"].to_list()
    # a class with no members: recall undefined
    none = truth.with_columns(pl.lit(False).alias("is_spiral"))
    r = keyword_rates(captions, none, [FAMILY["spiral"]])
    assert r["recall"][0] is None and r["precision"][0] == 0.0
    with pytest.raises(ValueError, match="caption"):
        keyword_rates(captions.drop("caption"), truth)
    with pytest.raises(ValueError, match="object_id"):
        keyword_rates(captions, truth.drop("object_id"))


def test_union_of_flags_and_outputs():
    captions = pl.DataFrame({"object_id": ["a", "b"], "caption": ["Clumpy knots.", "Irregular."]})
    truth = pl.DataFrame(
        {"object_id": ["a", "b"], "is_clumpy": [True, False], "is_irregular": [False, True]}
    )
    rates = keyword_rates(captions, truth, [FAMILY["clumpy_irregular"]])
    assert rates["support"][0] == 2 and rates["recall"][0] == 1.0
    md = rates_markdown(rates)
    assert md.startswith("| family |") and "clumpy_irregular" in md
    meta = as_metadata(rates)
    assert meta["clumpy_irregular_recall"] == 1.0
