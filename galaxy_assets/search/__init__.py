"""Search: the ``galaxy_index`` LanceDB table, its upserts and indexes, the query API,
filters, VLM re-ranking and contact sheets.

Modules (plain Python; nothing here imports Dagster):

* :mod:`~galaxy_assets.search.table` — schema, :func:`build_shard_rows`, :func:`upsert_shard`,
  :func:`remove_shards`, full-text and scalar indexes, maintenance;
* :mod:`~galaxy_assets.search.ann` — vector-index parameters and build, the FAISS serving copy;
* :mod:`~galaxy_assets.search.filters` — typed filters and the ``COLUMN OP VALUE`` parser;
* :mod:`~galaxy_assets.search.query` — :class:`GalaxySearch` (text, image, combined, batched);
* :mod:`~galaxy_assets.search.rerank` — re-ranking the top-k by a rater's scores;
* :mod:`~galaxy_assets.search.contact` — HTML contact sheets of results;
* :mod:`~galaxy_assets.search.errors` — the :class:`SearchError` family.

Submodules are imported on use (``from galaxy_assets.search.query import GalaxySearch``), so
importing this package stays cheap.
"""

from galaxy_assets.search.errors import (
    FilterError,
    IndexMismatchError,
    IndexMissingError,
    QueryError,
    RowsError,
    SearchError,
)

__all__ = [
    "FilterError",
    "IndexMismatchError",
    "IndexMissingError",
    "QueryError",
    "RowsError",
    "SearchError",
]
