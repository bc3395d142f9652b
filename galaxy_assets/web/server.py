"""``galaxy-assets serve``: the configured ``galaxy_index`` behind the web page, on loopback
unless told otherwise.

:func:`build_app` opens the index the way the CLI does (:func:`open_search`: the table's own
aligner version from MLflow, the configured text embedder, the image encoder when the
aligner's is a registry model) on the first request, so the server starts even before the
index exists and answers 503 with what to do until it does. :func:`serve` runs it with
uvicorn.
"""

from __future__ import annotations

import logging
from typing import Any

from galaxy_assets.runtime import Home
from galaxy_assets.search.errors import SearchError
from galaxy_assets.web.app import DEFAULT_MAX_UPLOAD_BYTES, create_app, is_loopback
from galaxy_assets.web.errors import WebError

log = logging.getLogger(__name__)

__all__ = ["build_app", "check_bind_host", "serve"]


def check_bind_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback ``host`` unless ``allow_remote``."""
    if not is_loopback(host) and not allow_remote:
        raise WebError(
            f"--host {host} would expose the search server to the network; it binds to "
            "loopback (127.0.0.1) by default. Pass --allow-remote to serve on another "
            "interface (put it behind an authenticating proxy)"
        )


def build_app(
    home: Home | None = None,
    settings: Any | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    refresh_seconds: float | None = 10.0,
    allowed_hosts: Any | None = None,
):
    """The app over the configured index (opened on first use), with the configured rater,
    thumbnails cached under ``<home>/cache/thumbnails`` and the caption store's prompts."""
    from galaxy_assets.search.service import build_rater, open_search
    from galaxy_assets.settings import load_settings

    settings = settings or load_settings()
    home = home or settings.home_folder()
    holder: dict[str, Any] = {}

    def factory():
        try:
            search = open_search(home=home, settings=settings, image_queries=True)
        except Exception as exc:  # noqa: BLE001 - retried without the image encoder below
            search = open_search(home=home, settings=settings, image_queries=False)
            log.warning("cutout uploads are disabled: %s", exc)
        holder["search"] = search
        return search

    def rater_factory():
        search = holder.get("search")
        return build_rater(settings, getattr(search, "text_embedder", None))

    return create_app(
        factory,
        rater_factory=rater_factory,
        rerank_samples=settings.search.rerank_samples,
        k_rerank=settings.search.k_rerank,
        max_upload_bytes=max_upload_bytes,
        thumbnail_dir=home.root / "cache" / "thumbnails",
        caption_store=home.root / "captions",
        refresh_seconds=refresh_seconds,
        allowed_hosts=allowed_hosts,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    allow_remote: bool = False,
    home: Home | None = None,
    settings: Any | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> None:
    """Run the app with uvicorn until interrupted (after :func:`check_bind_host`)."""
    import uvicorn

    check_bind_host(host, allow_remote)
    # on loopback, only requests addressed to loopback names (a page on another site that
    # rebinds its own name to 127.0.0.1 is refused); bound for remote use, any name
    allowed = None if allow_remote else [host, "localhost", "127.0.0.1", "[::1]", "::1"]
    app = build_app(home, settings, max_upload_bytes=max_upload_bytes, allowed_hosts=allowed)
    try:
        app.state.engine.get()
    except (SearchError, WebError) as exc:
        log.warning("the index is not ready yet (%s); the page will say so until it is", exc)
    uvicorn.run(app, host=host, port=int(port), log_level="info")
