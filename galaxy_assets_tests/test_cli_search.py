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


def test_re_ranked_results_show_the_rating_and_the_rank_by_similarity():
    from types import SimpleNamespace

    import polars as pl

    from galaxy_assets.cli import format_results

    frame = pl.DataFrame(
        {
            "rank": [1, 2, 3],
            "object_id": ["b", "a", "c"],
            "score": [0.41, 0.52, 0.40],
            "rating": [9.1, 3.0, None],
            "similarity_rank": [2, 1, 3],
            "ra": [1.0, 2.0, 3.0],
            "dec": [0.0, 0.0, 0.0],
            "mag_r": [17.0, 18.0, None],
            "caption": ["A barred spiral.", None, "x"],
        }
    )
    results = SimpleNamespace(
        frame=frame, query="barred galaxy", table_version=4, path=None,
        timings_ms={"search": 1.0}, explanation=None,
    )
    rerank = SimpleNamespace(k_rerank=3, rater="morphology:describer", n_rated=2, n_failed=1)
    lines = format_results(results, rerank).splitlines()
    assert "re-ranked top 3 by morphology:describer: 2 rated, 1 failed" in lines[1]
    assert "rating sim#" in lines[2]
    first, second, failed = lines[3:]
    assert first.split()[:4] == ["1", "0.410", "9.1", "2"] and first.split()[4] == "b"
    assert second.split()[:4] == ["2", "0.520", "3.0", "1"]
    assert failed.split()[:4] == ["3", "0.400", "-", "3"]  # a failed rating shows no number
    plain = format_results(SimpleNamespace(**{**vars(results), "frame": frame.drop("rating")}))
    assert "rating" not in plain
