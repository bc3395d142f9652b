"""The exception family of the web layer (the search layer's own errors are the
:class:`~galaxy_assets.search.errors.SearchError` family, answered with the same JSON shape).

Each error carries the HTTP status it is answered with::

    WebError                 the base (400)
    ├── UploadError          an uploaded file is not a FITS or PNG cutout we accept (400/415)
    ├── PayloadTooLarge      a request body or an upload is over the server's limit (413)
    ├── NotFoundError        no indexed galaxy with that object_id, or no pixels for it (404)
    └── UnavailableError     the index cannot be opened (missing table, model) (503)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "NotFoundError",
    "PayloadTooLarge",
    "StalePageError",
    "UnavailableError",
    "UploadError",
    "WebError",
]


class WebError(Exception):
    """A request the web layer refuses; ``status`` is the HTTP status of the answer and
    ``detail`` optional structured context (JSON-safe)."""

    status: int = 400
    error: str = "bad request"

    def __init__(self, message: str, *, detail: Any = None, status: int | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        if status is not None:
            self.status = int(status)


class UploadError(WebError):
    """The upload is not a FITS or PNG cutout this server accepts."""

    error = "bad upload"


class PayloadTooLarge(WebError):
    """The request body or the uploaded file is over the configured limit."""

    status = 413
    error = "request too large"


class NotFoundError(WebError):
    """No indexed galaxy has this object_id (or its pixels cannot be read)."""

    status = 404
    error = "not found"


class StalePageError(WebError):
    """A later page asked for a table version the server no longer holds a ranking of."""

    status = 409
    error = "index changed"


class UnavailableError(WebError):
    """The search index or its models cannot be opened right now."""

    status = 503
    error = "search unavailable"
