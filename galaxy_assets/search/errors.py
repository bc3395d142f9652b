"""The exception family of the search domain.

Every message says what was wrong, where, and what to do::

    SearchError              the base: anything the search layer refuses or cannot do
    ├── IndexMissingError    there is no galaxy_index table at the URI (materialize it)
    ├── IndexMismatchError   the table was built for other vectors (dimension, aligner version)
    ├── RowsError            rows handed to an upsert are unusable as a whole (wrong shard, duplicates)
    └── QueryError           a query is invalid (empty, too long, unknown object_id, bad file, k…)
        └── FilterError      a filter names an unknown column or carries something that is not a value
"""

from __future__ import annotations

__all__ = [
    "FilterError",
    "IndexMismatchError",
    "IndexMissingError",
    "QueryError",
    "RowsError",
    "SearchError",
]


class SearchError(Exception):
    """The search layer refused an input or could not do its work."""


class IndexMissingError(SearchError):
    """No ``galaxy_index`` table exists at the configured LanceDB URI."""


class IndexMismatchError(SearchError):
    """The table holds vectors of another width or another aligner version than the caller's."""


class RowsError(SearchError):
    """Rows handed to :func:`galaxy_assets.search.table.upsert_shard` cannot be written as a whole."""


class QueryError(SearchError):
    """A query is invalid: empty or too long text, k out of range, unknown object_id, a file
    that cannot be read as a cutout."""


class FilterError(QueryError):
    """A filter names an unknown column, uses an operator the column does not take, or holds
    something other than a plain value (quotes, parentheses, SQL)."""
