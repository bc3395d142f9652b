"""Targets files, labels from truth tables and catalogues, and the crossmatch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from galaxy_assets.evaluation.errors import CatalogueError, EvaluationError, TargetConfigError
from galaxy_assets.evaluation.labels import (
    EvaluationLabels,
    TargetLabels,
    crossmatch,
    default_targets,
    labels_from_lens_catalogue,
    labels_from_truth,
    labels_from_vote_catalogue,
    load_targets,
    load_truth_labels,
    match_by_id,
    read_catalogue,
    vote_relevance,
)

ARCSEC = 1.0 / 3600.0


# --------------------------------------------------------------------------- targets
def test_default_targets_load():
    targets = default_targets()
    assert list(targets) == ["spirals", "mergers", "lenses", "edge_on_discs", "rings", "bars"]
    assert targets["spirals"].primary_query == "visible spiral arms"
    assert targets["mergers"].primary_query == "merging"
    assert targets["lenses"].primary_query == "gravitational lens"
    for t in targets.values():
        assert len(t.queries) >= 3
    assert targets["spirals"].answer_columns == ("has-spiral-arms_yes",)
    assert targets["mergers"].answer_columns == ("merging_merger", "merging_major-disturbance")
    assert targets["lenses"].kind == "binary" and targets["lenses"].flag == "is_lens"
    assert targets["rings"].flag == "has_ring"
    assert targets["spirals"].min_votes == 3
    assert (
        targets["spirals"].min_ndcg_at_10,
        targets["mergers"].min_ndcg_at_10,
        targets["lenses"].min_ndcg_at_10,
    ) == (0.9, 0.6, 0.4)


def test_user_targets_file_loads(tmp_path: Path):
    p = tmp_path / "t.yaml"
    p.write_text(
        "targets:\n"
        "  - name: spirals\n    kind: vote_fraction\n    question: has-spiral-arms\n"
        "    answers: [yes]\n    min_votes: 5\n    queries: [spiral arms, a spiral]\n"
        "  - name: lenses\n    kind: binary\n    flag: is_lens\n    queries: lens\n"
    )
    targets = load_targets(p)
    # an unquoted YAML yes reads as True: it is taken as the answer "yes"
    assert targets["spirals"].answers == ("yes",)
    assert targets["spirals"].min_votes == 5
    assert targets["lenses"].queries == ("lens",)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("targets: [", "not valid YAML"),
        ("foo: 1\n", "'targets' list"),
        ("targets: []\n", "non-empty list"),
        ("targets:\n  - name: x\n    kind: fuzzy\n    queries: [q]\n", "kind 'fuzzy'"),
        (
            "targets:\n  - name: Bad Name\n    kind: binary\n    flag: f\n    queries: [q]\n",
            "lower-case word",
        ),
        ("targets:\n  - name: x\n    kind: binary\n    queries: [q]\n", "needs flag"),
        (
            "targets:\n  - name: x\n    kind: binary\n    flag: f\n    queries: []\n",
            "queries must be",
        ),
        ("targets:\n  - name: x\n    kind: binary\n    flag: f\n    queries: [a, a]\n", "repeated"),
        (
            "targets:\n  - name: x\n    kind: vote_fraction\n    question: has-spiral-arms\n"
            "    answers: [maybe]\n    queries: [q]\n",
            r"\['maybe'\] are not answers",
        ),
        (
            "targets:\n  - name: x\n    kind: vote_fraction\n    question: bar\n"
            "    answers: [strong]\n    min_votes: 0\n    queries: [q]\n",
            "min_votes=0",
        ),
        (
            "targets:\n  - name: x\n    kind: binary\n    flag: f\n    queries: [q]\n"
            "    colour: red\n",
            "unknown keys",
        ),
        (
            "targets:\n  - name: x\n    kind: binary\n    flag: f\n    queries: [q]\n"
            "  - name: x\n    kind: binary\n    flag: g\n    queries: [q]\n",
            "appears twice",
        ),
        (
            "targets:\n  - name: x\n    kind: binary\n    flag: f\n    queries: [q]\n"
            "    min_ndcg_at_10: 1.5\n",
            "min_ndcg_at_10",
        ),
    ],
)
def test_bad_targets_file_errors_clearly(tmp_path: Path, body: str, match: str):
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    with pytest.raises(TargetConfigError, match=match) as err:
        load_targets(p)
    assert str(p) in str(err.value)  # the message names the file


def test_missing_targets_file(tmp_path: Path):
    with pytest.raises(TargetConfigError, match="does not exist"):
        load_targets(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- truth labels
def _truth() -> pl.DataFrame:
    """Five galaxies with hand-set spiral votes and lens flags."""
    return pl.DataFrame(
        {
            "object_id": ["a", "b", "c", "d", "e"],
            "is_lens": [True, False, False, None, False],
            "has-spiral-arms_yes": [9, 1, 2, 0, 3],
            "has-spiral-arms_no": [1, 1, 0, 0, 0],
            "has-spiral-arms_total-votes": [10, 2, 2, 0, 3],
        }
    )


def test_labels_from_truth_min_votes_and_binary():
    t = default_targets()
    labels = labels_from_truth(_truth(), [t["spirals"], t["lenses"]])
    sp = labels["spirals"]
    # b, c (2 votes) and d (0 votes) have fewer than 3 votes: not candidates
    assert sp.object_ids.tolist() == ["a", "e"]
    assert sp.relevance.tolist() == pytest.approx([0.9, 1.0])
    assert sp.n_excluded == 3
    assert sp.n_targets == 2
    lens = labels["lenses"]
    # d's flag is unknown: left out; every other galaxy is a candidate
    assert lens.object_ids.tolist() == ["a", "b", "c", "e"]
    assert lens.relevance.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert lens.n_excluded == 1
    # a stricter min_votes
    from dataclasses import replace

    strict = labels_from_truth(_truth(), [replace(t["spirals"], min_votes=4)])
    assert strict["spirals"].object_ids.tolist() == ["a"]


def test_labels_from_truth_restricted_to_manifest():
    labels = labels_from_truth(
        _truth(), [default_targets()["lenses"]], manifest=pl.DataFrame({"object_id": ["a", "c"]})
    )
    assert sorted(labels["lenses"].object_ids.tolist()) == ["a", "c"]


def test_labels_from_truth_errors():
    t = default_targets()
    with pytest.raises(EvaluationError, match="no column 'has_ring'"):
        labels_from_truth(_truth(), [t["rings"]])
    with pytest.raises(CatalogueError, match="merging_merger"):
        labels_from_truth(_truth(), [t["mergers"]])
    # every row with votes is bad: the columns hold something else than counts
    fractions = _truth().with_columns(
        pl.Series("has-spiral-arms_yes", [0.9, 0.5, 1.0, 0.0, 1.0]),
        pl.Series("has-spiral-arms_total-votes", [0.5, 0.2, 0.1, 0.0, 0.3]),
    )
    with pytest.raises(CatalogueError, match="4 of 5 rows .*more votes.*no other row has votes; "
                       "vote columns must hold counts, not fractions"):
        labels_from_truth(fractions, [t["spirals"]])


def test_bad_vote_rows_are_left_out_not_fatal(caplog):
    """One galaxy's bad counts are recorded and skipped; the others keep their labels."""
    t = default_targets()["spirals"]
    frame = pl.DataFrame(
        {
            "object_id": ["a", "b", "c", "d", "e", "f"],
            "has-spiral-arms_yes": [11.0, 3.0, -1.0, math.nan, 4.0, 2.0],
            "has-spiral-arms_total-votes": [10.0, 4.0, 5.0, 5.0, math.nan, None],
        }
    )
    with caplog.at_level("WARNING", logger="galaxy_assets.evaluation.labels"):
        rel, n_left_out = vote_relevance(frame, t, source="votes.csv")
    # a: more votes than its total; c: a negative count (both logged); d: a missing answer
    # count is no votes; e, f: an unknown total is too few votes
    assert rel["object_id"].to_list() == ["b", "d"]
    assert rel["relevance"].to_list() == pytest.approx([0.75, 0.0])
    assert n_left_out == 4
    assert "votes.csv: 2 of 6 rows have negative or infinite vote counts" in caplog.text
    assert "object_id 'a'" in caplog.text and "left out of target 'spirals'" in caplog.text
    text = frame.with_columns(pl.lit("many").alias("has-spiral-arms_total-votes"))
    with pytest.raises(CatalogueError, match="votes.csv: the vote columns of target 'spirals' "
                       r"\(\['has-spiral-arms_yes', 'has-spiral-arms_total-votes'\]\) must be "
                       "numbers"):
        vote_relevance(text, t, source="votes.csv")


def test_merger_relevance_counts_merger_and_major_disturbance():
    frame = pl.DataFrame(
        {
            "object_id": ["m"],
            "merging_merger": [4],
            "merging_major-disturbance": [3],
            "merging_minor-disturbance": [2],
            "merging_none": [1],
            "merging_total-votes": [10],
        }
    )
    rel, _ = vote_relevance(frame, default_targets()["mergers"])
    assert rel["relevance"].to_list() == pytest.approx([0.7])
    # without a total column, the question's answers are added up
    rel2, _ = vote_relevance(frame.drop("merging_total-votes"), default_targets()["mergers"])
    assert rel2["relevance"].to_list() == pytest.approx([0.7])


def test_labels_from_the_default_world(world):
    labels = labels_from_truth(world.truth)
    assert labels.names == list(default_targets())
    sp = labels["spirals"]
    # galaxies with < 3 spiral votes are left out
    totals = dict(
        zip(
            world.truth["object_id"].to_list(),
            world.truth["has-spiral-arms_total-votes"].to_list(),
            strict=True,
        )
    )
    assert all(totals[o] >= 3 for o in sp.object_ids)
    assert sp.n_excluded == sum(1 for v in totals.values() if v < 3)
    assert labels["lenses"].n_candidates == world.truth.height
    assert labels["spirals"].fingerprint == labels_from_truth(world.truth)["spirals"].fingerprint
    frame = labels.summary_frame()
    assert frame["target"].to_list() == labels.names


def test_load_truth_labels_reads_mock_truth_files(tmp_path: Path, world):
    from galaxy_assets.survey.truth import truth_path

    shard = tmp_path / "healpix=1" / "001-of-001.hdf5"
    shard.parent.mkdir()
    world.truth.write_parquet(truth_path(shard))
    labels = load_truth_labels([str(shard)])
    assert labels["rings"].n_candidates == world.truth.height
    with pytest.raises(EvaluationError, match="has a truth table"):
        load_truth_labels([str(tmp_path / "other.hdf5")])


# --------------------------------------------------------------------------- crossmatch
def _manifest() -> pl.DataFrame:
    return pl.DataFrame(
        {"object_id": ["A", "B", "C"], "ra": [10.0, 10.1, 200.0], "dec": [0.0, 0.0, -30.0]}
    )


def test_crossmatch_known_offsets():
    cat = pl.DataFrame(
        {
            "name": ["near A", "far from B", "C close", "C closer", "no coords"],
            "ra": [10.0, 10.1, 200.0, 200.0, None],
            "dec": [0.5 * ARCSEC, 1.5 * ARCSEC, -30.0 + 0.8 * ARCSEC, -30.0 - 0.3 * ARCSEC, 0.0],
        }
    )
    matched, rep = crossmatch(cat, _manifest(), radius_arcsec=1.0, source="test cat")
    # 0.5" matches; 1.5" does not; both rows within 1" of C: the nearer (0.3") wins
    assert matched["name"].to_list() == ["near A", "C closer"]
    assert matched["object_id"].to_list() == ["A", "C"]
    assert matched["match_sep_arcsec"].to_list() == pytest.approx([0.5, 0.3], abs=1e-3)
    assert rep.n_rows == 5
    assert rep.n_matched == 2
    assert rep.n_unmatched == 2  # the 1.5" row and the row without coordinates
    assert rep.n_bad_coordinates == 1
    assert rep.n_matched_twice == 1
    assert rep.n_dropped_doubles == 1
    assert rep.n_matched + rep.n_unmatched + rep.n_dropped_doubles == rep.n_rows
    text = rep.describe()
    assert "test cat" in text and "1 survey galaxies matched twice" in text
    # a wider radius takes the 1.5" row
    matched2, rep2 = crossmatch(cat, _manifest(), radius_arcsec=2.0)
    assert "far from B" in matched2["name"].to_list()
    assert rep2.n_unmatched == 1


def test_crossmatch_renames_a_catalogue_object_id():
    cat = pl.DataFrame({"object_id": ["J1"], "ra": [10.0], "dec": [0.2 * ARCSEC]})
    matched, _ = crossmatch(cat, _manifest())
    assert matched["object_id"].to_list() == ["A"]
    assert matched["catalogue_object_id"].to_list() == ["J1"]


def test_crossmatch_skips_survey_galaxies_without_a_position(caplog):
    manifest = _manifest().with_columns(
        pl.when(pl.col("object_id") == "A").then(None).otherwise(pl.col("ra")).alias("ra")
    )
    cat = pl.DataFrame({"ra": [10.0, 200.0], "dec": [0.0, -30.0]})
    with caplog.at_level("WARNING", logger="galaxy_assets.evaluation.labels"):
        matched, rep = crossmatch(cat, manifest, source="cat")
    assert matched["object_id"].to_list() == ["C"]  # A has no ra: nothing to match to
    assert (rep.n_matched, rep.n_unmatched) == (1, 1)
    assert "1 survey galaxies have no valid ra/dec" in caplog.text


def test_crossmatch_errors():
    with pytest.raises(CatalogueError, match="no column 'ra'"):
        crossmatch(pl.DataFrame({"x": [1.0]}), _manifest())
    with pytest.raises(CatalogueError, match="radius"):
        crossmatch(pl.DataFrame({"ra": [1.0], "dec": [1.0]}), _manifest(), radius_arcsec=0)
    with pytest.raises(CatalogueError, match="manifest is empty"):
        crossmatch(pl.DataFrame({"ra": [1.0], "dec": [1.0]}), _manifest().head(0))
    with pytest.raises(CatalogueError, match=r"lenses.csv: column 'ra' \(String\) must hold "
                       r"decimal degrees \(e.g. '10:00:00' is not\); convert sexagesimal"):
        crossmatch(pl.DataFrame({"ra": ["10:00:00"], "dec": ["+00:00:00"]}), _manifest(),
                   source="lenses.csv")


def test_a_placeholder_in_a_few_coordinates_leaves_those_rows_out(caplog):
    """One '--' made the whole column text and the error blamed sexagesimal coordinates,
    quoting a valid value; now that row has no position and the rest are matched."""
    from galaxy_assets.evaluation.labels import labels_from_lens_catalogue

    manifest = pl.DataFrame({"object_id": ["g0", "g1"], "ra": [150.0, 151.0], "dec": [2.0, 2.0]})
    catalogue = pl.DataFrame({"ra": ["150.0", "--", "151.0"], "dec": ["2.0", "--", "2.0"],
                              "grade": ["A", "B", "C"]})
    with caplog.at_level("WARNING"):
        labels = labels_from_lens_catalogue(catalogue, manifest)["lenses"]
    assert labels.n_targets == 2
    assert "are not numbers (e.g. '--')" in caplog.text


def test_match_by_id():
    cat = pl.DataFrame({"object_id": ["A", "A", "Z", "C"], "v": [1, 2, 3, 4]})
    kept, rep = match_by_id(cat, _manifest())
    assert kept["v"].to_list() == [1, 4]
    assert (rep.n_matched, rep.n_unmatched, rep.n_matched_twice, rep.n_dropped_doubles) == (
        2,
        1,
        1,
        1,
    )


def test_vote_catalogue_by_position(tmp_path: Path):
    cat = pl.DataFrame(
        {
            "ra": [10.0, 10.1, 200.0],
            "dec": [0.4 * ARCSEC, 5 * ARCSEC, -30.0],
            "has-spiral-arms_yes": [8, 5, 1],
            "has-spiral-arms_no": [2, 5, 1],
            "has-spiral-arms_total-votes": [10, 10, 2],
        }
    )
    path = tmp_path / "gz.csv"
    cat.write_csv(path)
    labels = labels_from_vote_catalogue(path, _manifest())
    assert labels.names == ["spirals"]  # the only question the catalogue has votes for
    sp = labels["spirals"]
    # A matched with 10 votes; B's row is 5" away; C matched but has 2 votes (< 3)
    assert sp.object_ids.tolist() == ["A"]
    assert sp.relevance.tolist() == pytest.approx([0.8])
    assert sp.n_excluded == 1
    assert labels.crossmatch[0].n_unmatched == 1
    assert labels.crossmatch[0].source == str(path)
    with pytest.raises(CatalogueError, match="none of the vote-fraction targets"):
        labels_from_vote_catalogue(cat.select("ra", "dec"), _manifest())


def test_lens_catalogue_with_grades(tmp_path: Path):
    cat = pl.DataFrame(
        {
            "ra": [10.0, 10.1, 200.0],
            "dec": [0.3 * ARCSEC, 0.2 * ARCSEC, -30.0],
            "grade": ["A", "N", " c "],
        }
    )
    labels = labels_from_lens_catalogue(cat, _manifest())
    lens = labels["lenses"]
    assert lens.object_ids.tolist() == ["A", "B", "C"]  # every survey galaxy is a candidate
    assert lens.relevance.tolist() == [1.0, 0.0, 1.0]  # grade N is not a lens
    no_grade = labels_from_lens_catalogue(cat.drop("grade"), _manifest())
    assert no_grade["lenses"].relevance.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(EvaluationError, match="binary"):
        labels_from_lens_catalogue(cat, _manifest(), "spirals")


def test_read_catalogue_errors(tmp_path: Path):
    with pytest.raises(CatalogueError, match="does not exist"):
        read_catalogue(tmp_path / "none.csv")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(CatalogueError, match="unknown format"):
        read_catalogue(tmp_path / "x.txt")


def test_merged_and_restricted_labels(world):
    truth_labels = labels_from_truth(world.truth)
    lens_rows = world.manifest.filter(pl.col("object_id") == world.object_ids[5])
    cat = labels_from_lens_catalogue(lens_rows, world.manifest)
    merged = truth_labels.merged(cat)
    assert merged["lenses"].n_targets == 1  # the catalogue replaced the truth's lenses
    assert merged["spirals"] is truth_labels["spirals"]
    assert len(merged.crossmatch) == 1
    sub = merged.restrict(world.object_ids[:10].tolist())
    assert sub["lenses"].n_candidates == 10
    assert isinstance(sub, EvaluationLabels)
    assert math.isfinite(float(np.sum(sub["lenses"].relevance)))


# --------------------------------------------------------------------------- label ceiling
def _with_visibility(world) -> pl.DataFrame:
    """The world's truth plus the simulator's columns the expected vote fractions read."""
    rng = np.random.default_rng(3)
    spiral = np.asarray(world.truth["is_spiral"].to_list())
    arms = np.where(spiral, rng.uniform(0.5, 1.0, spiral.size), np.nan)
    return world.truth.with_columns(
        pl.Series("arms_visibility", arms),
        pl.Series("morph_type", np.where(spiral, "spiral", "elliptical").tolist()),
    )


def test_label_ceiling_ranks_by_the_expected_vote_fractions(world):
    from galaxy_assets.evaluation.metrics import ndcg_at_k
    from galaxy_assets.survey.mock_votes import expected_vote_fraction

    truth = _with_visibility(world)
    labels = labels_from_truth(truth)
    sp = labels["spirals"]
    assert sp.expected is not None and sp.expected.shape == sp.relevance.shape
    rows = {r["object_id"]: r for r in truth.iter_rows(named=True)}
    want = expected_vote_fraction([rows[o] for o in sp.object_ids], "has-spiral-arms", ("yes",))
    np.testing.assert_allclose(sp.expected, want)
    order = sp.object_ids[np.lexsort((sp.object_ids, -want))]
    assert sp.label_ceiling(10) == pytest.approx(ndcg_at_k(order.tolist(), sp.as_mapping(), 10))
    assert 0.0 < sp.label_ceiling(10) <= 1.0
    # restricting keeps each galaxy's expected value with it
    half = sp.object_ids[::2]
    sub = sp.restrict(half)
    np.testing.assert_allclose(sub.expected, sp.expected[::2])
    # binary labels carry no vote noise; catalogue-like labels have no known ceiling
    assert labels["lenses"].label_ceiling() == 1.0
    assert labels_from_truth(world.truth)["spirals"].label_ceiling() is None
    with pytest.raises(EvaluationError, match="expected relevances"):
        TargetLabels(sp.target, sp.object_ids, sp.relevance, "x", 0, sp.expected[:-1])


def test_a_confirmed_lens_is_kept_beside_a_nearer_low_grade_entry():
    """A merged lens list repeats a system: a grade-D entry 0.2" away and a grade-A one 0.5"
    away. The galaxy is a lens (the D row used to win the nearest-row match and the A row was
    dropped before grades were looked at)."""
    from galaxy_assets.evaluation.labels import labels_from_lens_catalogue

    manifest = pl.DataFrame({"object_id": ["g0", "g1"], "ra": [150.0, 151.0], "dec": [2.0, 2.0]})
    catalogue = pl.DataFrame({"ra": [150.0 + 0.5 / 3600, 150.0 + 0.2 / 3600],
                              "dec": [2.0, 2.0], "grade": ["A", "D"]})
    labels = labels_from_lens_catalogue(catalogue, manifest)["lenses"]
    assert dict(zip(labels.object_ids.tolist(), labels.relevance.tolist(), strict=True)) == {
        "g0": 1.0, "g1": 0.0}
    # every catalogue row is counted: the D row was left out for its grade, not lost
    (report,) = labels_from_lens_catalogue(catalogue, manifest).crossmatch
    assert (report.n_rows, report.n_matched, report.n_other_grade) == (2, 1, 1)
    assert "1 not matched for their grade" in report.describe()


def test_a_well_voted_row_is_kept_beside_a_nearer_row_with_too_few_votes():
    """Two vote rows of one galaxy: a 1-vote row 0.1" away and a 40-vote row 0.6" away. The
    galaxy keeps the 40 votes (the 1-vote row won the nearest-row match and the galaxy then
    left the candidate set for having too few votes)."""
    manifest = pl.DataFrame({"object_id": ["a"], "ra": [50.0], "dec": [20.0]})
    catalogue = pl.DataFrame({
        "ra": [50.0 + 0.1 * ARCSEC, 50.0 + 0.6 * ARCSEC], "dec": [20.0, 20.0],
        "has-spiral-arms_yes": [1, 38], "has-spiral-arms_no": [0, 2],
        "has-spiral-arms_total-votes": [1, 40]})
    labels = labels_from_vote_catalogue(catalogue, manifest,
                                        {"spirals": default_targets()["spirals"]})["spirals"]
    assert labels.object_ids.tolist() == ["a"]
    assert labels.relevance.tolist() == pytest.approx([38 / 40])
    assert labels.n_excluded == 0  # the galaxy kept its votes: nothing is left out


def test_a_catalogue_that_matches_no_galaxy(caplog):
    """Coordinates in radians (or ids of another survey) matched nothing and were accepted:
    the target then had no relevant galaxy. That is an error now; a catalogue in degrees that
    simply holds no lens of the area surveyed so far is a warning, and its target is left
    undefined (skipped) while the others are evaluated."""
    man = _manifest()
    in_radians = man.select(pl.col("ra").radians(), pl.col("dec").radians())
    with pytest.raises(CatalogueError, match=r"lens catalogue <.*>: none of its 3 rows matched "
                       r"any of the 3 survey galaxies within 1\"; its ra/dec all lie within "
                       r"radian ranges: convert them to degrees"):
        labels_from_lens_catalogue(in_radians, man)
    votes = in_radians.with_columns(
        pl.lit(8).alias("has-spiral-arms_yes"), pl.lit(2).alias("has-spiral-arms_no"))
    with pytest.raises(CatalogueError, match="vote catalogue .*none of its 3 rows matched"):
        labels_from_vote_catalogue(votes, man)
    by_id = pl.DataFrame({"object_id": ["X"], "has-spiral-arms_yes": [8],
                          "has-spiral-arms_no": [2]})
    with pytest.raises(CatalogueError, match="none of its 1 rows matched .* by 'object_id'; "
                       "check the id column"):
        labels_from_vote_catalogue(by_id, man)
    # lenses elsewhere on the sky, in degrees: no lens in this survey, not a mistake
    elsewhere = pl.DataFrame({"ra": [300.0, 301.0], "dec": [-60.0, -61.0]})
    with caplog.at_level("WARNING"):
        lenses = labels_from_lens_catalogue(elsewhere, man)["lenses"]
    assert lenses.relevance.tolist() == [0.0, 0.0, 0.0]
    assert "none of its 2 rows matched" in caplog.text
    graded_out = man.with_columns(grade=pl.lit("N"))
    assert labels_from_lens_catalogue(graded_out, man)["lenses"].relevance.sum() == 0
    assert np.isfinite(labels_from_lens_catalogue(man.head(1), man)["lenses"].relevance).all()
