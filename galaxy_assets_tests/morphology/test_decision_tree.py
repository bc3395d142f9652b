"""The Galaxy Zoo decision tree as data: the shipped DECaLS tree, helpers, loading, errors."""

from __future__ import annotations

import json

import pytest

from galaxy_assets.morphology import DecisionTree, DecisionTreeError, default_tree, load_tree
from galaxy_assets.morphology.decision_tree import DEFAULT_TREE_FILE

GZ_DECALS_QUESTIONS = (
    "smooth-or-featured",
    "disk-edge-on",
    "has-spiral-arms",
    "bar",
    "bulge-size",
    "how-rounded",
    "edge-on-bulge",
    "spiral-winding",
    "spiral-arm-count",
    "merging",
)


def test_default_tree_is_gz_decals():
    tree = default_tree()
    assert tree.name == "gz_decals"
    assert tree.question_names == GZ_DECALS_QUESTIONS
    assert tree.n_answers == 34  # as zoobot's decals_dr5 schema
    assert tree["bar"].answers == ("strong", "weak", "no")
    assert tree["spiral-arm-count"].answers == ("1", "2", "3", "4", "more-than-4", "cant-tell")
    assert tree.roots() == ("smooth-or-featured", "merging")
    assert load_tree() is tree


def test_columns_and_slices():
    tree = default_tree()
    cols = tree.answer_columns
    assert len(cols) == len(set(cols)) == tree.n_answers
    assert cols[0] == "smooth-or-featured_smooth"
    assert tree.column("has-spiral-arms", "yes") == "has-spiral-arms_yes"
    assert tree.total_columns[0] == "smooth-or-featured_total-votes"
    slices = tree.answer_slices()
    ranges = tree.answer_index_ranges()
    assert ranges[0][0] == 0 and ranges[-1][1] == tree.n_answers
    for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False):
        assert b == c  # contiguous
    for q in tree:
        assert cols[slices[q.name]] == q.columns
    assert tree.answer_index("bar", "weak") == cols.index("bar_weak")
    with pytest.raises(DecisionTreeError, match="no answer 'maybe'"):
        tree.column("bar", "maybe")
    with pytest.raises(DecisionTreeError, match="no question 'colour'"):
        tree.question("colour")


def test_dependencies():
    tree = default_tree()
    assert tree.dependency("smooth-or-featured") is None
    assert tree.dependency("disk-edge-on") == ("smooth-or-featured", "featured-or-disk")
    assert tree.dependency_column("spiral-winding") == "has-spiral-arms_yes"
    assert tree.ancestors("spiral-arm-count") == [
        ("smooth-or-featured", "featured-or-disk"),
        ("disk-edge-on", "no"),
        ("has-spiral-arms", "yes"),
    ]
    assert tree.children("disk-edge-on", "no") == ("has-spiral-arms", "bar", "bulge-size")
    assert set(tree.children("disk-edge-on")) == {
        "has-spiral-arms",
        "bar",
        "bulge-size",
        "edge-on-bulge",
    }
    # every dependency refers to an earlier question
    for i, q in enumerate(tree):
        if q.depends_on is not None:
            assert tree.question_index(q.depends_on[0]) < i


def test_round_trip_dict_yaml_json(tmp_path):
    tree = default_tree()
    again = DecisionTree.from_dict(tree.to_dict())
    assert again.questions == tree.questions
    for name in ("t.yaml", "t.json"):
        path = tree.to_file(tmp_path / name)
        loaded = DecisionTree.from_file(path)
        assert loaded.questions == tree.questions
        assert loaded.source == str(path)
    assert json.loads((tmp_path / "t.json").read_text())["name"] == "gz_decals"


def test_missing_columns():
    tree = default_tree()
    have = list(tree.answer_columns[:-1])
    assert tree.missing_columns(have) == [tree.answer_columns[-1]]
    assert len(tree.missing_columns(tree.answer_columns, totals=True)) == len(tree)


def _tree(questions):
    return {"name": "t", "questions": questions}


@pytest.mark.parametrize(
    ("questions", "message"),
    [
        ([], "has no questions"),
        ([{"name": "a", "answers": ["x"]}], "at least two"),
        ([{"name": "a", "answers": ["x", "x"]}], "repeats an answer"),
        (
            [{"name": "a", "answers": ["x", "y"]}, {"name": "a", "answers": ["x", "y"]}],
            "appears twice",
        ),
        ([{"name": "a_b", "answers": ["x", "y"]}], "use '-' instead"),
        (
            [
                {"name": "a", "answers": ["x", "y"], "depends_on": ["b", "x"]},
                {"name": "b", "answers": ["x", "y"]},
            ],
            "list it before",
        ),
        ([{"name": "a", "answers": ["x", "y"], "depends_on": ["zz", "x"]}], "not defined before"),
        (
            [
                {"name": "a", "answers": ["x", "y"]},
                {"name": "b", "answers": ["x", "y"], "depends_on": ["a", "q"]},
            ],
            "depends on answer 'q'",
        ),
        ([{"name": "a", "answers": ["x", "y"], "depends_on": "a"}], "two strings"),
        ([{"name": "a", "answers": [True, False]}], "quote it in YAML"),
        ([{"answers": ["x", "y"]}], "non-empty string"),
    ],
)
def test_bad_trees(questions, message):
    with pytest.raises(DecisionTreeError, match=message):
        DecisionTree.from_dict(_tree(questions))


def test_bad_files(tmp_path):
    with pytest.raises(DecisionTreeError, match="not found"):
        DecisionTree.from_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("questions: [a, : b")
    with pytest.raises(DecisionTreeError, match="cannot parse"):
        DecisionTree.from_file(bad)
    unquoted = tmp_path / "unquoted.yaml"
    unquoted.write_text("name: t\nquestions:\n  - name: q\n    answers: [yes, no]\n")
    with pytest.raises(DecisionTreeError, match=str(unquoted)):
        DecisionTree.from_file(unquoted)
    assert DEFAULT_TREE_FILE.is_file()
