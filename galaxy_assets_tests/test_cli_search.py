"""`galaxy-assets search` and `evaluate` refuse bad input with a clear message and exit 2."""

from __future__ import annotations

from galaxy_assets.cli import main


def test_search_without_an_index_says_what_to_materialize(isolated_home, capsys):
    assert main(["search", "gravitational lens", "--k", "5"]) == 2
    err = capsys.readouterr().err
    assert "no 'galaxy_index' table" in err and "materialize" in err


def test_search_without_a_query(isolated_home, capsys):
    assert main(["search"]) == 2
    assert "give a query" in capsys.readouterr().err


def test_evaluate_before_any_evaluation(isolated_home, capsys):
    assert main(["evaluate", "--json"]) == 2
    assert "materialize search_evaluation first" in capsys.readouterr().err
