"""``open_search``: the table's own aligner, and a clear error when the registry lacks it."""

from __future__ import annotations

import pytest

from galaxy_assets.runtime import Home
from galaxy_assets.search.errors import IndexMismatchError, SearchError
from galaxy_assets.search.service import open_search
from galaxy_assets.settings import Settings


def test_an_index_whose_aligner_the_registry_lacks_is_a_search_error(
    text_index, tmp_path, monkeypatch
):
    """A table built against another MLflow store (a moved home, another tracking URI): the
    web server answers 503 and the CLI exits 2 with what to do, not a traceback or a 500."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home = Home.from_env(tmp_path / "elsewhere")
    settings = Settings(search={"uri": str(text_index.uri)})
    with pytest.raises(IndexMismatchError, match=r"search-aligner/v1.*index_job") as err:
        open_search(home=home, settings=settings)
    assert isinstance(err.value, SearchError)
    assert "registry" in str(err.value) and str(home.root) in str(err.value)


@pytest.mark.parametrize(
    ("versions", "error", "message"),
    [
        ([], SearchError, "is empty: materialize galaxy_index"),
        ([None, ""], SearchError, "is empty: materialize galaxy_index"),
        (["search-aligner/v1", "search-aligner/v2"], IndexMismatchError,
         r"mixes vectors of \['search-aligner/v1', 'search-aligner/v2'\].*reindex_job"),
        (["aligner-one"], SearchError, "aligner_version 'aligner-one' is not '<name>/v<N>'"),
    ],
)
def test_the_tables_aligner_or_why_it_has_none(tmp_path, versions, error, message):
    import lancedb
    import pyarrow as pa

    from galaxy_assets.search.service import aligner_of_table

    db = lancedb.connect(str(tmp_path))
    table = db.create_table("galaxy_index", pa.table(
        {"object_id": [f"g{i}" for i in range(len(versions))],
         "aligner_version": pa.array(versions, pa.utf8())}))
    with pytest.raises(error, match=message):
        aligner_of_table(table)
    ok = db.create_table("ok", pa.table({"object_id": ["a", "b"],
                                         "aligner_version": ["search-aligner/v12"] * 2}))
    assert aligner_of_table(ok) == ("search-aligner", 12)
