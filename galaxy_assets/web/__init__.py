"""The search web page and HTTP API (``galaxy-assets serve``).

* :mod:`~galaxy_assets.web.app` — :func:`create_app`, the FastAPI app over a
  :class:`~galaxy_assets.search.query.GalaxySearch` (same query API as the CLI);
* :mod:`~galaxy_assets.web.thumbnails` — thumbnails rendered from the shard pixels, cached;
* :mod:`~galaxy_assets.web.server` — :func:`serve`: the configured index on loopback;
* :mod:`~galaxy_assets.web.errors` — the :class:`WebError` family;
* ``static/`` — the page (HTML, JS, CSS; no build step).

Submodules are imported on use, so importing this package stays cheap.
"""

from galaxy_assets.web.errors import (
    NotFoundError,
    PayloadTooLarge,
    UnavailableError,
    UploadError,
    WebError,
)

__all__ = ["NotFoundError", "PayloadTooLarge", "UnavailableError", "UploadError", "WebError"]
