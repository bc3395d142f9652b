"""`galaxy-assets search` and `evaluate` refuse bad input with a clear message and exit 2."""

from __future__ import annotations

import pytest

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


def test_evaluate_with_an_unreadable_or_empty_report(isolated_home, capsys):
    from galaxy_assets.evaluation.report import EvaluationResult
    from galaxy_assets.runtime import Home

    folder = Home.from_env().reports / "search_evaluation" / "v1"
    folder.mkdir(parents=True)
    (folder / "evaluation.json").write_text("{not json")
    assert main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert "evaluation.json cannot be read: evaluation result is not valid JSON" in err
    assert "materialize search_evaluation again" in err

    empty = EvaluationResult(k_list=(10, 100), curve_k=100, n_boot=10, seed=0,
                             targets={"lenses": {}}, scores=[], phrasings=[], rankings={},
                             versions={"aligner": "search-aligner/v1"})
    empty.to_json(folder / "evaluation.json")
    assert main(["evaluate"]) == 0
    out = capsys.readouterr().out
    assert "no target was scored" in out and "aligner search-aligner/v1" in out


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


def test_rerank_depth_defaults_to_the_settings(monkeypatch, tmp_path):
    """`search --rerank` without --k-rerank re-ranks the settings' search.k_rerank results: the
    depth the evaluation report measures; --k-rerank overrides it, and a depth below 1 is
    refused before any search."""
    from types import SimpleNamespace

    import polars as pl

    import galaxy_assets.search.rerank as rerank_module
    import galaxy_assets.search.service as service
    from galaxy_assets.cli import build_parser, run_search
    from galaxy_assets.runtime import Home
    from galaxy_assets.settings import Settings

    fetched: list[int] = []
    depths: list[int] = []

    class Search:
        text_embedder = None

        def search(self, query, k, **kwargs):
            fetched.append(k)
            frame = pl.DataFrame({"rank": list(range(1, k + 1)), "object_id": [str(i) for i in range(k)]})
            return SimpleNamespace(frame=frame)

    rated: list[str] = []
    opened: list[dict] = []

    def fake_rerank(frame, rater, *, query, k_rerank, n_samples):
        depths.append(k_rerank)
        rated.append(query)
        return SimpleNamespace(frame=frame)

    def fake_open(**kwargs):
        opened.append(kwargs)
        return Search()

    monkeypatch.setattr(service, "open_search", fake_open)
    monkeypatch.setattr(service, "build_rater", lambda settings, embedder: object())
    monkeypatch.setattr(rerank_module, "vlm_rerank", fake_rerank)
    settings = Settings(search={"k_rerank": 37})
    home = Home.from_env(tmp_path)
    parser = build_parser()

    results, _ = run_search(parser.parse_args(["search", "spiral", "--k", "5", "--rerank"]), settings, home)
    assert (fetched, depths, results.frame.height) == ([37], [37], 5)
    run_search(parser.parse_args(["search", "spiral", "--rerank", "--k-rerank", "8"]), settings, home)
    assert depths[-1] == 8
    with pytest.raises(ValueError, match="--k-rerank 0"):
        run_search(parser.parse_args(["search", "spiral", "--rerank", "--k-rerank", "0"]), settings, home)
    assert len(fetched) == 2
    # the rater judges the wanted words, not the term syntax; no text, no re-ranking
    negative = parser.parse_args(["search", "spiral arms", "--rerank"])
    negative.query.append("-text:bar^0.5")  # main() hands negative terms over like this
    run_search(negative, settings, home)
    assert rated[-1] == "spiral arms"
    with pytest.raises(ValueError, match="give a text query"):
        run_search(parser.parse_args(["search", "object:g7", "--rerank"]), settings, home)
    # a table smaller than the re-rank depth: the depth is clamped, not refused
    Search.table = SimpleNamespace(count_rows=lambda: 20)
    run_search(parser.parse_args(["search", "spiral", "--k", "5", "--rerank"]), settings, home)
    assert fetched[-1] == 20
    # a positional image:FILE term builds the image encoder, as --image does
    opened.clear()
    run_search(parser.parse_args(["search", "spiral", "image:q.fits^0.5"]), settings, home)
    assert opened[-1]["image_queries"] is True
    run_search(parser.parse_args(["search", "spiral"]), settings, home)
    assert opened[-1]["image_queries"] is False


def test_negative_terms_are_query_terms_not_options(monkeypatch):
    """'-halo' is a negative term, not -h with the value 'alo' (argparse's reading)."""
    import galaxy_assets.cli as cli

    seen = []
    monkeypatch.setattr(cli, "cmd_search", lambda args: seen.append(args) or 0)
    assert cli.main(["search", "spiral", "-halo", "--k", "3", "-text:bar^0.5"]) == 0
    assert seen[-1].query == ["spiral", "-halo", "-text:bar^0.5"] and seen[-1].k == 3
    assert cli.main(["-v", "search", "-hii", "spiral"]) == 0
    assert seen[-1].query == ["spiral", "-hii"] and seen[-1].verbose


def test_a_mistyped_home_is_left_as_it_was(isolated_home, tmp_path, capsys):
    missing = tmp_path / "no_such_home"
    assert main(["search", "spiral", "--home", str(missing)]) == 2
    assert "no LanceDB database at" in capsys.readouterr().err
    assert not missing.exists()  # connecting used to create <home>/lancedb


def test_home_option_reads_that_homes_config(isolated_home, tmp_path, capsys):
    # --home stands for GALAXY_ASSETS_HOME: the home's config.yaml decides the table searched
    other = tmp_path / "other_home"
    other.mkdir()
    (other / "config.yaml").write_text("search:\n  table: my_table\n")
    assert main(["search", "spiral", "--home", str(other)]) == 2
    err = capsys.readouterr().err
    assert "no 'my_table' table" in err and str(other / "lancedb") in err


def test_the_demo_keeps_a_configured_cutout_size(isolated_home, monkeypatch):
    """The demo reads its mock cutouts at the size it simulated them, unless config.yaml says
    otherwise and --size was not given (it overrode the file through the environment)."""
    import os

    from galaxy_assets.cli import _demo_read_size
    from galaxy_assets.settings import load_settings

    monkeypatch.delenv("GALAXY_ASSETS_SURVEY_CUTOUT_SIZE", raising=False)
    assert _demo_read_size(None) == 64 and load_settings().survey.cutout_size == 64
    monkeypatch.delenv("GALAXY_ASSETS_SURVEY_CUTOUT_SIZE")
    (isolated_home / "config.yaml").write_text("survey:\n  cutout_size: 48\n")
    assert _demo_read_size(None) == 64  # simulated at 64 ...
    assert "GALAXY_ASSETS_SURVEY_CUTOUT_SIZE" not in os.environ
    assert load_settings().survey.cutout_size == 48  # ... read at the configured 48
    assert _demo_read_size(96) == 96 and load_settings().survey.cutout_size == 96


def test_an_embedder_or_rater_that_cannot_be_built_is_a_one_line_error(
        monkeypatch, isolated_home, capsys):
    """Building the engine probes the text embedder (its width) and the re-ranker's captioner:
    their errors ended `galaxy-assets search` in a traceback."""
    import galaxy_assets.search.service as service
    from galaxy_assets.captioning.base import CaptionerError
    from galaxy_assets.embedding.text import TextEmbedderError

    for error in (TextEmbedderError("http://127.0.0.1:9/v1/embeddings: connection refused"),
                  CaptionerError("no vision model at /models/none")):
        def broken(_error=error, **kwargs):
            raise _error

        monkeypatch.setattr(service, "open_search", broken)
        assert main(["search", "spiral"]) == 2
        assert capsys.readouterr().err.strip() == f"galaxy-assets search: {error}"


def test_re_ranked_json_names_its_rater_and_a_failed_re_ranking_fails(monkeypatch, isolated_home,
                                                                       capsys):
    """`search --rerank --json` dropped which rater ordered the results, and exited 0 when
    every rating failed (an endpoint down), with every rating null."""
    import json
    from types import SimpleNamespace

    import galaxy_assets.cli as cli

    results = SimpleNamespace(to_json_records=lambda: [{"object_id": "g1", "rating": 7.0}])
    for n_rated, n_failed, code in ((1, 0, 0), (0, 1, 1)):
        rerank = SimpleNamespace(rater="openai:vlm@abc", n_rated=n_rated, n_failed=n_failed,
                                 failures={"g1": "connection refused"} if n_failed else {})
        monkeypatch.setattr(cli, "run_search", lambda *a, _r=rerank: (results, _r))
        assert main(["search", "spiral", "--rerank", "--json"]) == code
        out = capsys.readouterr()
        assert json.loads(out.out) == [{"object_id": "g1", "rating": 7.0,
                                        "reranker": "openai:vlm@abc"}]
        assert f"re-ranked by openai:vlm@abc: {n_rated} rated, {n_failed} failed" in out.err
    assert "(e.g. connection refused)" in out.err


def test_demo_size_is_what_later_processes_read(isolated_home, monkeypatch):
    """`demo --size 32` set the crop in its own process only: `galaxy-assets dev` then read
    the 32 px survey at 64 px and every raw_cutouts run failed. The graph's survey resource
    reads the size the home's mock survey was simulated at, unless the settings give one."""
    import json

    from galaxy_assets.defs.resources import default_resources
    from galaxy_assets.runtime import SIMULATION_MARKER

    monkeypatch.delenv("GALAXY_ASSETS_SURVEY_CUTOUT_SIZE", raising=False)
    assert default_resources()["survey"].cutout_size == 64  # nothing simulated yet
    (isolated_home / "mock_survey").mkdir(parents=True, exist_ok=True)
    (isolated_home / "mock_survey" / SIMULATION_MARKER).write_text(json.dumps({"size": 32}))
    assert default_resources()["survey"].cutout_size == 32
    (isolated_home / "config.yaml").write_text("survey:\n  cutout_size: 48\n")
    assert default_resources()["survey"].cutout_size == 48  # the settings say otherwise
    (isolated_home / "config.yaml").write_text(f"survey:\n  roots: [{isolated_home}]\n")
    assert default_resources()["survey"].cutout_size == 64  # another survey than the mock
