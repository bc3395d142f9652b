"""The search web page and its JSON API (FastAPI), over the same query API as the CLI.

:func:`create_app` wraps a :class:`~galaxy_assets.search.query.GalaxySearch` (or a
zero-argument factory that builds one on the first request, e.g.
``lambda: open_search(image_queries=True)``) in an ASGI app:

``GET  /``                               the page (static HTML + JS + CSS, no build step)
``GET  /api/info``                       table version, size, models, filterable columns,
                                         limits, example queries, what this server can do
``GET  /api/search``                     ``q`` (text), ``term`` (repeatable, CLI form
                                         ``[+|-][text:|object:]VALUE[^WEIGHT]``), ``object``,
                                         ``filter`` (repeatable), ``k``, ``offset``, ``rerank``…
``POST /api/search``                     the same as JSON, terms structured
``POST /api/search/image``               multipart: a FITS or PNG ``file`` (+ optional terms)
``GET  /api/galaxy/{object_id}``         every indexed column, grouped: caption with its model
                                         and prompt, morphology, posteriors, lineage
``GET  /api/galaxy/{object_id}/thumbnail``  a PNG rendered from the shard pixels (cached)

Safety: ``k`` and ``offset + k`` are at most :data:`MAX_K`; queries, terms and filters have
length and count limits; request bodies over the limit are refused with 413 before they are
parsed; an upload is sniffed as FITS or PNG, written only inside a fresh temporary folder
that is removed after the query, and tile-compressed FITS (a decompression bomb risk) and
oversized PNGs are refused; a client can never name a file (``image:`` terms are refused;
thumbnails are drawn only for object_ids found in the table); filters go through
:func:`~galaxy_assets.search.filters.parse_filters`. Every error is JSON
``{"error": ..., "detail": ...}``; an unexpected failure is logged and answered with a
generic 500 message, never a stack trace.

Plain Python; knows nothing of Dagster.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from galaxy_assets.search.errors import (
    FilterError,
    IndexMismatchError,
    IndexMissingError,
    QueryError,
    SearchError,
)
from galaxy_assets.search.query import (
    MAX_QUERY_CHARS,
    MAX_TERMS,
    QueryTerm,
    parse_term,
    to_json_records,
    viewer_url,
)
from galaxy_assets.search.rerank import DEFAULT_K_RERANK
from galaxy_assets.settings import MAX_K_RERANK
from galaxy_assets.web.errors import (
    NotFoundError,
    PayloadTooLarge,
    StalePageError,
    UnavailableError,
    UploadError,
    WebError,
)
from galaxy_assets.web.thumbnails import ThumbnailCache, pixel_source, render_thumbnail

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EXAMPLES",
    "MAX_K",
    "MAX_K_RERANK",
    "create_app",
    "is_loopback",
]

STATIC = Path(__file__).resolve().parent / "static"
MAX_K = 1000
MAX_FILTERS = 32
MAX_FILTER_CHARS = 512
MAX_OBJECT_ID_CHARS = 512
MAX_JSON_BODY_BYTES = 256 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_PNG_SIDE = 4096
MAX_FITS_HDUS = 64
DEFAULT_PAGE = 24
THUMB_SIZES = (64, 96, 128, 192, 256, 384, 512)
DEFAULT_EXAMPLES = (
    "visible spiral arms",
    "merging galaxies with tidal tails",
    "a gravitational lens with a blue arc",
    "edge-on disc with a dust lane",
    "smooth elliptical galaxy",
    "ring galaxy",
)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_FITS_MAGIC = b"SIMPLE  ="
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server on this machine (127.0.0.0/8, ::1,
    localhost)."""
    name = str(host).strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- engine state
class _RWLock:
    """Many concurrent searches, or one :meth:`GalaxySearch.refresh` alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class _Engine:
    """The GalaxySearch (built on first use from a factory), refreshed to the table's latest
    version at most every ``refresh_seconds``; the row count cached per version.

    A table dropped and built again starts its versions at 1 again, so a version number alone
    does not name a table state: each refresh compares the commit time of the version held
    before with the table's version list. When the table was recreated (its latest version is
    below the one held, or that version has another commit time), ``epoch`` goes up (every
    cache is keyed by it), the ``on_recreated`` hooks clear the caches, and the engine is
    built again from the factory (a GalaxySearch given as such answers 503 until the server
    is restarted: its handle reads a dataset that is gone). While the table is missing
    (dropped, not yet built again), requests get 503."""

    def __init__(self, source: Any, refresh_seconds: float | None) -> None:
        if hasattr(source, "search") and hasattr(source, "table"):
            self._search, self._factory = source, None
        elif callable(source):
            self._search, self._factory = None, source
        else:
            raise TypeError("create_app takes a GalaxySearch or a function that returns one")
        self.refresh_seconds = refresh_seconds
        self._last_refresh = time.monotonic()
        self._build_lock = threading.Lock()
        self.lock = _RWLock()
        self._counts: dict[tuple[int, int], int] = {}
        self.epoch = 0
        self.on_recreated: list[Callable[[], None]] = []
        self._held: tuple[int, Any] | None = None  # (version, commit time) last seen
        self._seen = False
        self._missing: str | None = None  # the table cannot be read now
        self._gone: str | None = None  # a given GalaxySearch whose table was recreated

    def get(self) -> Any:
        if self._gone is not None:
            raise UnavailableError(self._gone)
        if self._search is None:
            with self._build_lock:
                if self._search is None:
                    try:
                        search = self._factory()  # type: ignore[misc]
                    except IndexMissingError as exc:
                        raise UnavailableError(str(exc)) from exc
                    except SearchError as exc:
                        raise UnavailableError(str(exc)) from exc
                    self._held, self._seen = self._stamp(search), True
                    self._missing = None
                    self._search = search
                    self._last_refresh = time.monotonic()
        search = self._search
        if not self._seen:  # a GalaxySearch given: what it holds, to tell a recreated table
            self._held, self._seen = self._stamp(search), True
        due = self.refresh_seconds is not None and (
            time.monotonic() - self._last_refresh >= self.refresh_seconds
        )
        if due:
            with self.lock.write():
                if time.monotonic() - self._last_refresh >= (self.refresh_seconds or 0):
                    search = self._refresh(search)
                    self._last_refresh = time.monotonic()
        if self._gone is not None:
            raise UnavailableError(self._gone)
        if self._missing is not None:
            raise UnavailableError(self._missing)
        if self._search is None:  # dropped: the factory opens the table once it is back
            return self.get()
        return search

    def _refresh(self, search: Any) -> Any:
        """Move ``search`` to the table's latest version, or notice that the table was
        dropped or recreated (call it holding the write lock)."""
        name = search.table.name
        try:
            search.refresh()
            failed = None
        except Exception as exc:  # noqa: BLE001 - keep serving the version held
            log.warning("cannot refresh %s (%s)", name, exc)
            failed = exc
        try:
            listed = {int(e["version"]): e.get("timestamp") for e in search.table.list_versions()}
        except Exception:  # noqa: BLE001 - no version list: the version alone names a state
            listed = None
            if failed is None:
                self._held = None
                return self._follow_the_table(search)
        if not listed:  # the table is gone (dropped, not built again yet)
            if self._missing is None:
                log.warning("%s cannot be read (dropped, or being rebuilt)", name)
            self._forget()
            self._missing = (f"{name} cannot be read: it was dropped or is being rebuilt; try "
                             "again once it is indexed")
            if self._factory is not None:
                self._search = None  # the next request opens it again
            return search
        held = self._held
        if held is not None and (
            max(listed) < held[0] or (held[0] in listed and listed[held[0]] != held[1])
        ):
            why = (f"{name} was dropped and built again since this server opened it; restart "
                   "the server to serve the new table")
            log.warning("%s", why if self._factory is None else f"{name} was dropped and "
                        "built again: its caches dropped, the engine opened again")
            self._forget()
            if self._factory is None:
                self._gone = why
                return search
            self._search = None  # the next request opens the new table
            self._missing = None
            return search
        self._missing = None
        if failed is not None:
            return search
        version = int(search.version)
        self._held = (version, listed.get(version))
        return self._follow_the_table(search)

    def _forget(self) -> None:
        """The table held is gone: a new epoch, every cache dropped."""
        self.epoch += 1
        self._counts = {}
        for hook in self.on_recreated:
            hook()

    @staticmethod
    def _stamp(search: Any) -> tuple[int, Any] | None:
        """(version, commit time) of the version ``search`` holds (None when not known)."""
        try:
            version = int(search.version)
            for entry in search.table.list_versions():
                if int(entry["version"]) == version:
                    return version, entry.get("timestamp")
        except Exception:  # noqa: BLE001 - a table without a version list: versions alone
            return None
        return None

    def current(self, fallback: Any) -> Any:
        """The engine now (call it holding the read lock: a refresh, which may replace the
        engine after a re-index with another aligner, holds the write lock)."""
        return self._search if self._search is not None else fallback

    def _follow_the_table(self, search: Any) -> Any:
        """After a re-index with another aligner (a new champion), the engine built from the
        factory again, with that aligner: the one held could not search the new vectors."""
        held = getattr(search, "table_aligner_version", lambda: None)()
        mine = getattr(search, "aligner_version", None)
        if self._factory is None or held is None or mine is None or held == mine:
            return search
        try:
            fresh = self._factory()
        except Exception as exc:  # noqa: BLE001 - keep the engine held; queries say why
            log.warning("the table now holds %s vectors but no engine for it: %s", held, exc)
            return search
        log.info("the table now holds %s vectors: search engine rebuilt (was %s)", held, mine)
        self._search = fresh
        return fresh

    def n_rows(self, search: Any) -> int:
        key = (self.epoch, int(search.version))
        n = self._counts.get(key)
        if n is None:
            try:
                n = int(search.table.count_rows())
            except Exception as exc:  # noqa: BLE001 - e.g. the table dropped meanwhile
                raise UnavailableError(
                    f"cannot count the rows of {search.table.name} v{key[1]} "
                    f"({type(exc).__name__}); it may be being rebuilt: try again shortly"
                ) from exc
            self._counts = {key: n}
        return n


def thumbnail_url(object_id: Any, table_version: int | None = None) -> str:
    """The thumbnail route of a galaxy, its id percent-encoded (ids from FITS headers may hold
    '?', '#' or '/'), with the table version it was listed at: a browser caches thumbnails for
    a day, and another version's row may point at other pixels."""
    from urllib.parse import quote

    url = f"/api/galaxy/{quote(str(object_id), safe='')}/thumbnail"
    return url if table_version is None else f"{url}?v={int(table_version)}"


# --------------------------------------------------------------------------- request models
class TermModel(BaseModel):
    """One term of a combined query: text or an indexed galaxy's object_id."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["text", "object"] = "text"
    value: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    weight: float = Field(1.0, gt=0, le=1000)
    negative: bool = False


class SearchRequest(BaseModel):
    """A search: ``q`` (free text) and/or ``object`` and/or structured ``terms``."""

    model_config = ConfigDict(extra="forbid")
    q: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    object: str | None = Field(None, max_length=MAX_OBJECT_ID_CHARS)
    terms: list[TermModel] = Field(default_factory=list, max_length=MAX_TERMS)
    filters: list[Annotated[str, Field(max_length=MAX_FILTER_CHARS)]] = Field(
        default_factory=list, max_length=MAX_FILTERS
    )
    k: int = Field(DEFAULT_PAGE, ge=1, le=MAX_K)
    offset: int = Field(0, ge=0, le=MAX_K - 1)
    rerank: bool = False
    # None: the server's depth (create_app's k_rerank, the settings' search.k_rerank)
    k_rerank: int | None = Field(None, ge=1, le=MAX_K_RERANK)
    nprobes: int | None = Field(None, ge=1, le=100_000)
    refine_factor: int | None = Field(None, ge=1, le=1000)
    # a later page names the table version its first page came from, so that every page
    # continues the same ranking (the server answers 409 once it holds none of that version)
    table_version: int | None = Field(None, ge=0)
    # and the table's epoch then (a table dropped and built again reuses version numbers)
    table_epoch: int | None = Field(None, ge=0)


# what read_cutouts needs to read a galaxy's pixels as the graph read them
PIXEL_COLUMNS = ("object_id", "shard_uri", "row", "bands", "height", "width")

# rankings (query x table version) the server keeps for later pages, and how many pages a
# first page ranks ahead
PAGE_CACHE_QUERIES = 64
PAGES_AHEAD = 4


@dataclass(frozen=True)
class _Ranking:
    """A query's ranking at one table version: ``depth`` rows asked for, ``frame`` (fewer
    when fewer matched), the search summary, the re-ranking summary and the table's rows."""

    depth: int
    frame: pl.DataFrame
    summary: dict[str, Any]
    rerank: dict[str, Any] | None
    n_rows: int


def _covers(ranking: _Ranking, want: int) -> bool:
    """Whether ``ranking`` answers a page ending at rank ``want``: it is that deep, or it
    holds every matching row."""
    return ranking.depth >= want or ranking.frame.height < ranking.depth


def _has_more(held: int, depth: int, end: int, limit: int, *, extendable: bool) -> bool:
    """Whether a page ending at rank ``end`` has a next one: the ranking held (``held`` rows
    of the ``depth`` asked for) goes on past ``end``, or it is full and can be extended
    (only at the table's current version) below rank ``limit``."""
    if end >= limit:
        return False
    if held > end:
        return True
    return held == end and held >= depth and extendable


def _terms_of(req: SearchRequest, extra: Sequence[str] = ()) -> list[QueryTerm]:
    terms: list[QueryTerm] = []
    if req.q is not None and req.q.strip():
        terms.append(QueryTerm.text(req.q))
    if req.object is not None and req.object.strip():
        terms.append(QueryTerm.object(req.object.strip()))
    for t in req.terms:
        terms.append(QueryTerm(t.kind, t.value, t.weight, t.negative))
    for spec in extra:
        term = parse_term(spec)
        if term.kind == "image":
            raise QueryError(
                f"term {spec[:80]!r}: image terms name files on the server and are not taken "
                "from clients; upload the cutout to /api/search/image instead"
            )
        terms.append(term)
    if len(terms) > MAX_TERMS:
        raise QueryError(f"{len(terms)} query terms; at most {MAX_TERMS}")
    return terms


def _term_json(term: QueryTerm) -> dict[str, Any]:
    return {
        "kind": term.kind,
        "value": term.value,
        "weight": term.weight,
        "negative": term.negative,
    }


def _error(status: int, error: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- same origin
class _SameOrigin:
    """Pure ASGI middleware against other websites' pages: a request whose Host is not one of
    ``allowed_hosts`` (DNS rebinding) gets 400, and an API request whose ``Origin`` names
    another host and port than the request's own (its Host, the scheme's default port when
    it names none), or another name than the ``X-Forwarded-Host`` a reverse proxy sets, gets
    403: a cross-site fetch (another local port is another site), e.g. one that spends
    re-ranking requests. A malformed ``Origin`` gets 403 too, and so does an API request
    whose ``Sec-Fetch-Site`` (sent by browsers, with or without ``Origin``) is neither
    ``same-origin`` nor ``none`` (typed or bookmarked): another site's ``<img src>`` sends no
    Origin. ``allowed_hosts`` None: any Host (a server bound for remote use)."""

    def __init__(self, app: Any, allowed_hosts: Sequence[str] | None) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed_hosts} if allowed_hosts is not None else None

    @staticmethod
    def _port(netloc: str, default: int) -> int:
        netloc = netloc.strip()
        tail = netloc[netloc.find("]") + 1:] if netloc.startswith("[") else netloc
        if tail.count(":") == 1 and tail.rsplit(":", 1)[1].isdigit():
            return int(tail.rsplit(":", 1)[1])
        return default

    @staticmethod
    def _hostname(netloc: str) -> str:
        netloc = netloc.strip().lower()
        if netloc.startswith("["):  # [::1]:8000
            return netloc[: netloc.find("]") + 1]
        return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowed is not None and self._hostname(host) not in self.allowed:
            await _error(400, "bad request", f"Host {host[:100]!r} is not served here")(
                scope, receive, send)
            return
        api = scope.get("path", "").startswith("/api/")
        # a browser names where a request comes from in Sec-Fetch-Site even when it sends no
        # Origin (an <img src> or a link on another site's page: a GET that could spend
        # re-ranking requests); clients that are not browsers send none and are served
        fetch_site = headers.get(b"sec-fetch-site")
        if api and fetch_site is not None and fetch_site.decode(
            "latin-1"
        ).strip().lower() not in ("same-origin", "none"):
            await _error(403, "forbidden", "API requests from another site's page are refused "
                         f"(Sec-Fetch-Site: {fetch_site.decode('latin-1')[:40]}): use the page "
                         "this server serves")(scope, receive, send)
            return
        origin = headers.get(b"origin")
        if origin is not None and api:
            from urllib.parse import urlsplit

            try:
                parts = urlsplit(origin.decode("latin-1"))
            except ValueError:  # e.g. "http://[::1": not an origin this server serves
                await _error(403, "forbidden", f"Origin {origin.decode('latin-1')[:100]!r} is "
                             "malformed; cross-origin API requests are refused: use the page "
                             "this server serves")(scope, receive, send)
                return
            default = {"http": 80, "https": 443}.get(parts.scheme, 0)
            asked = (self._hostname(parts.netloc), self._port(parts.netloc, default))
            own = {(self._hostname(host), self._port(host, default))}
            # behind a reverse proxy: the public name it forwarded (its port is the proxy's)
            forwarded = [f for f in headers.get(b"x-forwarded-host", b"").decode(
                "latin-1").split(",") if f.strip()]
            if asked not in own and asked[0] not in {self._hostname(f) for f in forwarded}:
                await _error(403, "forbidden", "cross-origin API requests are refused: use "
                             "the page this server serves")(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- body limit
class _BodyLimit:
    """Pure ASGI middleware: a request whose body is over the limit gets 413 before anything
    parses it (by Content-Length, or by counting a chunked body while buffering it). An
    upload's body may be ``upload_slack`` bytes over the configured ``max_upload`` (the
    multipart framing and form fields); the answer names the configured limit, in the shape
    the upload handler answers a file over it with."""

    def __init__(self, app: Any, max_json: int, max_upload: int, upload_slack: int) -> None:
        self.app = app
        self.max_json = max_json
        self.max_upload = max_upload
        self.upload_slack = upload_slack

    @staticmethod
    def _is_upload(path: str) -> bool:
        return path.startswith("/api/search/image")

    def _limit(self, path: str) -> int:
        if self._is_upload(path):
            return self.max_upload + self.upload_slack
        return self.max_json

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope.get("path", ""))
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n < 0:
                await _error(400, "bad request", "invalid Content-Length")(scope, receive, send)
                return
            if n > limit:
                await self._too_large(n, False, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # no Content-Length (chunked): buffer up to the limit, then replay
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # disconnect: let the app see it
                return
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                await self._too_large(total, True, scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Any:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _too_large(
        self, n: int, counted: bool, scope: Any, receive: Any, send: Any
    ) -> None:
        size = f"{'at least ' if counted else ''}{n} bytes"
        if self._is_upload(scope.get("path", "")):
            response = _error(
                413,
                f"the upload ({size}) is over this server's limit of {self.max_upload} bytes "
                "per file (galaxy-assets serve --max-upload-mb); send a single cutout",
                {"max_upload_bytes": int(self.max_upload)},
            )
        else:
            response = _error(
                413,
                f"the request body ({size}) is over {self.max_json} bytes, the most a JSON "
                "search takes; send fewer or shorter terms and filters",
                {"max_body_bytes": int(self.max_json)},
            )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


# --------------------------------------------------------------------------- uploads
def _sniff_upload(head: bytes, name: str) -> str:
    """The suffix to save an upload under (".fits" or ".png") from its first bytes."""
    if head.startswith(_PNG_MAGIC):
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise UploadError(f"{name}: a PNG signature without an image header; give a valid PNG")
        width = int.from_bytes(head[16:20], "big")
        height = int.from_bytes(head[20:24], "big")
        if not (0 < width <= MAX_PNG_SIDE and 0 < height <= MAX_PNG_SIDE):
            raise UploadError(
                f"{name}: a PNG of {width}x{height} pixels; at most {MAX_PNG_SIDE} per side",
                status=413 if width and height else 400,
            )
        return ".png"
    if head.startswith(_FITS_MAGIC):
        return ".fits"
    if head.startswith(b"\x1f\x8b"):
        raise UploadError(
            f"{name}: a gzip-compressed file; upload the uncompressed FITS cutout", status=415
        )
    raise UploadError(
        f"{name}: neither a FITS file (it would start with 'SIMPLE  =') nor a PNG; upload a "
        "FITS cutout in the survey's bands (or a PNG for RGB image encoders)",
        status=415,
    )


def _check_fits_structure(path: Path, name: str) -> None:
    """Refuse tile-compressed FITS (decompression bomb risk) and files with many HDUs before
    the query API reads the pixels."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True, disable_image_compression=True) as hdul:
            count = 0
            for hdu in hdul:
                count += 1
                if count > MAX_FITS_HDUS:
                    raise UploadError(f"{name}: more than {MAX_FITS_HDUS} HDUs; upload one cutout")
                header = hdu.header
                if header.get("ZIMAGE") or header.get("ZCMPTYPE"):
                    raise UploadError(
                        f"{name}: tile-compressed FITS is not accepted; upload the "
                        "uncompressed cutout (funpack it first)",
                        status=415,
                    )
    except UploadError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for a bad file
        raise UploadError(
            f"{name}: cannot be read as FITS ({type(exc).__name__}: {exc}); upload a valid "
            "FITS cutout"
        ) from None


def _display_name(filename: str | None) -> str:
    base = Path(filename or "upload").name[:80]
    return _SAFE_NAME.sub("_", base) or "upload"


# --------------------------------------------------------------------------- detail
def _split_source(source: str | None) -> tuple[str | None, str | None]:
    if not source:
        return None, None
    backend, _, model = str(source).partition(":")
    return backend or None, model or None


def _prompt_by_sha(sha: str | None) -> dict[str, Any] | None:
    """The prompt file of ``galaxy_assets/captioning/prompts`` whose sha is ``sha``."""
    if not sha:
        return None
    from importlib import resources

    from galaxy_assets.captioning.base import load_prompt

    folder = resources.files("galaxy_assets.captioning") / "prompts"
    for entry in folder.iterdir():
        if entry.name.endswith(".txt"):
            prompt = load_prompt(entry.name[:-4])
            if prompt.sha == sha:
                return {"name": prompt.name, "text": prompt.text}
    return None


def _caption_lineage(
    store: Path | None,
    object_id: str,
    backend: str | None,
    model: str | None,
    text: str,
    prompt_sha: str | None = None,
) -> dict[str, Any]:
    """created_at / source (and the prompt) of the galaxy's caption in the caption store: of
    the store's row holding the indexed ``text`` by the indexed backend, model and
    ``prompt_sha`` (a galaxy captioned again since the index was built has a newer row whose
    prompt and date are not those of the text shown; the same text from another prompt is
    another caption). The indexed ``prompt_sha`` is never replaced; the store's is given
    only when the index holds none (a table built before lineage columns)."""
    if store is None:
        return {}
    path = store / "captions.parquet"
    if not path.is_file():
        return {}
    try:
        import pyarrow.parquet as pq

        # read through one open handle: polars given the path opens it twice (footer, then
        # pages), and a captioning run replacing the file between them made the read fail
        with open(path, "rb") as handle:
            table = pq.read_table(handle, filters=[("object_id", "==", object_id)])
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
    except FileNotFoundError:
        return {}
    except Exception as exc:  # noqa: BLE001 - the store is optional lineage
        log.warning("cannot read the caption store %s (%s)", path, exc)
        return {}
    if frame.height == 0:
        return {}
    if backend and "backend" in frame.columns:
        frame = frame.filter(pl.col("backend") == backend)
    if model and "model" in frame.columns:
        frame = frame.filter(pl.col("model") == model)
    if frame.height == 0:
        return {}
    if "caption" in frame.columns:
        frame = frame.filter(pl.col("caption") == text)
    if prompt_sha and "prompt_sha" in frame.columns:
        frame = frame.filter(pl.col("prompt_sha") == prompt_sha)
    if frame.height == 0:
        return {"note": "the caption store holds another caption of this galaxy now (it "
                "was captioned again after it was indexed); its prompt is not known here"}
    if "created_at" in frame.columns:
        frame = frame.sort("created_at")
    row = frame.row(-1, named=True)
    sha = prompt_sha or row.get("prompt_sha")
    out: dict[str, Any] = {
        "origin": row.get("source"),
        "created_at": row["created_at"].isoformat() if row.get("created_at") else None,
    }
    if not prompt_sha:
        out["prompt_sha"] = sha
    prompt = _prompt_by_sha(sha)
    if prompt is not None:
        out["prompt"] = prompt
    elif backend == "morphology":
        out["prompt"] = {
            "name": "describe_v1",
            "text": "the measured-morphology describer answers prompts/describe_v1.txt with "
            f"its template set (sha {sha})",
        }
    return out


def _detail(
    search: Any, row: dict[str, Any], version: int, store: Path | None
) -> dict[str, Any]:
    from galaxy_assets.search.table import BANDS, P_COLUMNS, POSTERIOR_PREFIX

    record = {
        k: v for k, v in to_json_records(pl.DataFrame([row]))[0].items() if k in row
    }
    oid = record["object_id"]
    backend, model = _split_source(record.get("caption_source"))
    caption = None
    if record.get("caption") is not None:
        caption = {
            "text": record["caption"],
            "source": record.get("caption_source"),
            "backend": backend,
            "model": model,
            # as indexed; the store adds the prompt, its date and origin (its sha only when
            # the index holds none)
            "prompt_sha": record.get("caption_prompt_sha"),
            **_caption_lineage(store, oid, backend, model, record["caption"],
                               record.get("caption_prompt_sha")),
        }
    morphology = {c: record.get(c) for c in P_COLUMNS if c in record}
    morphology.update(
        {c: v for c, v in record.items() if c.startswith("vf_") and c not in morphology}
    )
    posteriors = {
        c[len(POSTERIOR_PREFIX) :]: v for c, v in record.items()
        # a table built before lineage columns held the emulator's number as post_*
        if c.startswith(POSTERIOR_PREFIX) and c != "post_emulator_version"
    }
    aligner = getattr(search, "aligner", None)
    config = getattr(aligner, "config", None)
    lineage = {
        "shard": record.get("shard"),
        "shard_uri": record.get("shard_uri"),
        "row": record.get("row"),
        "bands": record.get("bands"),
        "height": record.get("height"),
        "width": record.get("width"),
        "aligner_version": record.get("aligner_version"),
        "morphology_version": record.get("morphology_version"),
        "emulator_version": record.get("emulator_version"),
        "serving_aligner_version": getattr(search, "aligner_version", None),
        "image_encoder": getattr(config, "image_encoder", None),
        "text_embedder": getattr(config, "text_embedder", None),
        "table": search.table.name,
        "table_version": version,
    }
    photometry = {
        key: record.get(key)
        for key in (*[f"flux_{b}" for b in BANDS], *[f"mag_{b}" for b in BANDS], "ebv")
        if key in record
    }
    return {
        "object_id": oid,
        "ra": record.get("ra"),
        "dec": record.get("dec"),
        "healpix": record.get("healpix"),
        "viewer_url": viewer_url(record.get("ra"), record.get("dec")),
        "thumbnail_url": thumbnail_url(oid, version),
        "caption": caption,
        "photometry": photometry,
        "morphology": morphology,
        "posteriors": posteriors,
        "lineage": lineage,
        "columns": record,
    }


# --------------------------------------------------------------------------- the app
def create_app(
    search: Any,
    *,
    rater: Any | None = None,
    rater_factory: Callable[[], Any] | None = None,
    rerank_samples: int = 1,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    thumbnail_dir: str | Path | None = None,
    thumbnail_cache_items: int = 2048,
    caption_store: str | Path | None = None,
    upload_dir: str | Path | None = None,
    refresh_seconds: float | None = 10.0,
    examples: Sequence[str] = DEFAULT_EXAMPLES,
    k_rerank: int = DEFAULT_K_RERANK,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The web app over ``search`` (a GalaxySearch, or a function building one on first use).

    ``rater`` (or ``rater_factory``, called once on the first re-ranking request) rates the
    top results when a request asks for ``rerank``; without either, re-ranking is refused.
    ``thumbnail_dir``: where rendered thumbnails are kept between runs (memory only when
    None). ``caption_store``: the caption store folder (``<home>/captions``), read for each
    caption's prompt. ``upload_dir``: where the temporary folders of uploads are made (the
    system's temporary folder when None). ``refresh_seconds``: how often the engine moves to
    the table's latest version (None: never). ``k_rerank``: how many top results a re-ranking
    request re-orders when it names no depth (the page's default too); give the settings'
    ``search.k_rerank`` so the page, the API, the CLI and the evaluation report agree.
    ``allowed_hosts``: the host names requests may be addressed to (None: any); API requests
    from another origin are refused either way.
    """
    if int(max_upload_bytes) < 1:
        raise ValueError(f"max_upload_bytes={max_upload_bytes}: give a positive size")
    if isinstance(k_rerank, bool) or not isinstance(k_rerank, int) or not (
        1 <= k_rerank <= MAX_K_RERANK
    ):
        raise ValueError(
            f"k_rerank={k_rerank!r} (the settings' search.k_rerank): the page and the API "
            f"re-rank 1 to {MAX_K_RERANK} results; set a whole number in that range"
        )
    engine = _Engine(search, refresh_seconds)
    thumbs = ThumbnailCache(thumbnail_dir, thumbnail_cache_items)
    store = Path(caption_store) if caption_store is not None else None
    rater_state: dict[str, Any] = {"rater": rater}
    rater_lock = threading.Lock()
    page_cache: OrderedDict[tuple[Any, ...], _Ranking] = OrderedDict()
    page_lock = threading.Lock()

    def _forget_rankings() -> None:
        with page_lock:
            page_cache.clear()

    engine.on_recreated += [_forget_rankings, thumbs.forget]

    app = FastAPI(
        title="galaxy-assets search",
        version="1",
        description="Semantic search over galaxy images: text, example galaxy, uploaded "
        "cutout and combined queries over the galaxy_index table.",
    )
    app.state.engine = engine
    app.state.thumbnails = thumbs
    app.add_middleware(
        _BodyLimit, max_json=MAX_JSON_BODY_BYTES, max_upload=int(max_upload_bytes),
        upload_slack=64 * 1024,
    )
    app.add_middleware(_SameOrigin, allowed_hosts=allowed_hosts)

    # ------------------------------------------------------------------ error handlers
    @app.exception_handler(WebError)
    async def _web_error(request: Request, exc: WebError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.detail)

    @app.exception_handler(FilterError)
    async def _filter_error(request: Request, exc: FilterError) -> JSONResponse:
        return _error(400, str(exc), {"kind": "filter"})

    @app.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
        return _error(400, str(exc), {"kind": "query"})

    @app.exception_handler(IndexMissingError)
    async def _missing(request: Request, exc: IndexMissingError) -> JSONResponse:
        return _error(503, str(exc), {"kind": "index_missing"})

    @app.exception_handler(IndexMismatchError)
    async def _mismatch(request: Request, exc: IndexMismatchError) -> JSONResponse:
        return _error(409, str(exc), {"kind": "index_mismatch"})

    @app.exception_handler(SearchError)
    async def _search_error(request: Request, exc: SearchError) -> JSONResponse:
        log.warning("search failed for %s: %s", request.url.path, exc)
        return _error(500, str(exc), {"kind": "search"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path"))
        return _error(422, f"invalid request: {where or 'request'}: {first['msg']}", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such page or API route: {request.url.path}"
        return _error(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.error("unexpected error %s on %s %s", ref, request.method, request.url.path,
                  exc_info=exc)
        return _error(500, "internal error; the server log has the details", {"ref": ref})

    # ------------------------------------------------------------------ helpers
    def get_rater() -> Any:
        with rater_lock:
            if rater_state["rater"] is None and rater_factory is not None:
                try:
                    rater_state["rater"] = rater_factory()
                except SearchError:
                    raise
                except Exception as exc:  # noqa: BLE001 - e.g. captioner settings
                    raise UnavailableError(
                        f"the re-ranking rater cannot be built ({type(exc).__name__}: {exc}); "
                        "check the captioner settings"
                    ) from exc
            if rater_state["rater"] is None:
                raise WebError(
                    "re-ranking is not configured on this server (start it with a captioner "
                    "able to rate); search without rerank"
                )
            return rater_state["rater"]

    def run_query(
        req: SearchRequest,
        terms: list[QueryTerm],
        *,
        rename: tuple[str, str] | None = None,
        cacheable: bool = True,
    ) -> dict[str, Any]:
        if not terms:
            raise QueryError(
                "the query is empty; type what to find (e.g. 'spiral arms'), or give an "
                "object_id or terms"
            )
        if req.k_rerank is None:
            req = req.model_copy(update={"k_rerank": k_rerank})
        if req.offset >= MAX_K:
            raise QueryError(
                f"offset {req.offset} is at or past rank {MAX_K}: results are served up to "
                f"rank {MAX_K}; narrow the query with filters instead"
            )
        if req.offset + req.k > MAX_K:  # the last page stops at rank MAX_K
            req = req.model_copy(update={"k": MAX_K - req.offset})
        # One ranking per query and table version, in a small cache: a later page extends it
        # (the rows below its depth, in similarity order), so pages never repeat or skip a
        # galaxy, a re-ranked head is rated once (a VLM's requests), and a page that names
        # its first page's table_version is served from that ranking after the index moved.
        query_key = (
            tuple(terms),
            tuple(req.filters),
            req.rerank,
            req.k_rerank if req.rerank else None,
            req.nprobes,
            req.refine_factor,
        )
        rerank_summary = None
        to_rate = False
        search = engine.get()
        with engine.lock.read():
            search = engine.current(search)  # not one a refresh replaced meanwhile
            version = current = int(search.version)
            epoch = engine.epoch  # a table dropped and built again reuses version numbers
            if req.offset and req.table_epoch is not None and req.table_epoch != epoch:
                raise StalePageError(
                    "the index was dropped and built again since the first page; search again "
                    "from the first page",
                    detail={"kind": "stale_page", "table_version": int(search.version)})
            n_rows = engine.n_rows(search)
            cached = None
            if cacheable:
                with page_lock:
                    if req.table_version is not None and req.table_version != version:
                        cached = page_cache.get((epoch, req.table_version, *query_key))
                        # a last page stops at that version's row count, as at the current
                        # version (unclamped, a last page after the index moved was a 409)
                        if cached is None or not _covers(
                            cached, min(req.offset + req.k, cached.n_rows)
                        ):
                            raise StalePageError(
                                f"the index moved from table version {req.table_version} to "
                                f"{version} since the first page, and the server no longer "
                                "holds that ranking; search again from the first page",
                                detail={"kind": "stale_page", "table_version": version},
                            )
                        version, n_rows = req.table_version, cached.n_rows
                    else:
                        cached = page_cache.get((epoch, version, *query_key))
                if cached is None and req.offset and req.table_version is not None:
                    # the ranking this page continues left the cache: ranking again could
                    # repeat or skip galaxies (approximate search, a sampling rater)
                    raise StalePageError(
                        "the server no longer holds the ranking of the first page (it keeps "
                        f"the last {PAGE_CACHE_QUERIES} queries); search again from the first "
                        "page", detail={"kind": "stale_page", "table_version": version})
            want = min(req.offset + req.k, n_rows)
            # a first page ranks a few pages ahead, so "more" can continue it after the
            # index moved on
            ahead = want if req.offset else min(max(want, PAGES_AHEAD * req.k, 1), MAX_K, n_rows)
            fetch = max(ahead, min(req.k_rerank, n_rows)) if req.rerank else ahead
            depth = fetch
            if cached is not None and _covers(cached, want):
                frame, summary, rerank_summary = cached.frame, cached.summary, cached.rerank
                depth = cached.depth
            elif fetch < 1 or req.offset >= n_rows:
                frame = pl.DataFrame()
                summary = {
                    "query": " ".join(t.label for t in terms),
                    "filters": {},
                    "explanation": None,
                    "timings_ms": {},
                    "path": "",
                }
            else:
                results = search.search(
                    terms,
                    fetch,
                    filters=list(req.filters) or None,
                    nprobes=req.nprobes,
                    refine_factor=req.refine_factor,
                )
                frame, summary = results.frame, results.summary()
                if cached is not None:  # deeper than the cached pages: extend them
                    head, rerank_summary = cached.frame, cached.rerank
                    tail = frame.filter(~pl.col("object_id").is_in(head["object_id"]))
                    if "similarity_rank" in head.columns and "rank" in tail.columns:
                        tail = tail.with_columns(pl.col("rank").alias("similarity_rank"))
                    frame = pl.concat([head, tail], how="diagonal_relaxed").select(head.columns)
                    if "rank" in frame.columns:
                        frame = frame.with_columns(
                            pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("rank")
                        )
                    if cacheable:
                        _keep_ranking((epoch, version), query_key, fetch, frame, summary,
                                      rerank_summary, n_rows)
                elif req.rerank:
                    to_rate = True  # below, without the engine's lock
                elif cacheable:
                    _keep_ranking((epoch, version), query_key, fetch, frame, summary, None, n_rows)
        if to_rate:
            # the rater reads pixels from the shard files and may ask a VLM up to k_rerank
            # times: holding the engine's lock meanwhile stalled every request behind the next
            # refresh; the frame is this version's snapshot
            frame, rerank_summary = _rerank(search, frame, terms, req)
            if cacheable:
                _keep_ranking((epoch, version), query_key, fetch, frame, summary, rerank_summary, n_rows)
        page = frame.slice(req.offset, req.k) if frame.height else frame
        records = to_json_records(page) if page.height else []
        for record in records:
            record["thumbnail_url"] = thumbnail_url(record["object_id"], version)
        query_label = summary["query"]
        explanation = summary.get("explanation")
        shown = terms
        if rename is not None:  # an upload's temporary path is shown as upload:<name>
            shown = [
                QueryTerm(t.kind, t.value.replace(*rename), t.weight, t.negative) for t in terms
            ]
            query_label = query_label.replace(*rename)
            if explanation:
                explanation = [
                    {**e, "term": t.label, "value": t.value}
                    for e, t in zip(explanation, shown, strict=True)
                ]
                query_label = " ".join(e["term"] for e in explanation)
        return _json_safe(
            {
                "query": query_label,
                "terms": [_term_json(t) for t in shown],
                "filters": summary.get("filters") or {},
                "filter_exprs": list(req.filters),
                "table_version": version,
                "table_epoch": epoch,
                "n_indexed": n_rows,
                "k": req.k,
                "offset": req.offset,
                "n": len(records),
                "has_more": _has_more(frame.height, depth, req.offset + req.k,
                                      min(n_rows, MAX_K), extendable=version == current),
                "path": summary.get("path") or "",
                "timings_ms": summary.get("timings_ms") or {},
                "explanation": explanation,
                "rerank": rerank_summary,
                "results": records,
            }
        )

    def _keep_ranking(at: tuple[int, int], query_key: tuple[Any, ...], depth: int,
                      frame: pl.DataFrame, summary: dict[str, Any],
                      rerank_summary: dict[str, Any] | None, n_rows: int) -> None:
        with page_lock:
            key = (*at, *query_key)
            page_cache[key] = _Ranking(depth, frame, summary, rerank_summary, n_rows)
            page_cache.move_to_end(key)
            while len(page_cache) > PAGE_CACHE_QUERIES:
                page_cache.popitem(last=False)

    def _rerank(
        search: Any, frame: pl.DataFrame, terms: list[QueryTerm], req: SearchRequest
    ) -> tuple[pl.DataFrame, dict[str, Any]]:
        from galaxy_assets.search.rerank import vlm_rerank

        text = " ".join(t.value for t in terms if t.kind == "text" and not t.negative)
        if not text:
            raise QueryError(
                "re-ranking rates each galaxy against the query text; give a text query (or "
                "search without rerank)"
            )
        rater_obj = get_rater()
        outcome = vlm_rerank(
            frame, rater_obj, query=text, k_rerank=min(req.k_rerank, frame.height or 1),
            n_samples=int(rerank_samples),
        )
        return outcome.frame, outcome.summary()

    def lookup(search: Any, object_id: str, columns: list[str] | None = None) -> pl.DataFrame:
        from galaxy_assets.search.table import sql_string

        oid = object_id.strip()
        if not oid or "\x00" in oid or len(oid) > MAX_OBJECT_ID_CHARS:
            raise QueryError(f"object_id {object_id[:80]!r} is not a galaxy id")
        cols = columns or [c for c in search.table.schema.names if c != "vector"]
        try:
            frame = (
                search.table.search()
                .where(f"object_id = {sql_string(oid)}")
                .select(cols)
                .limit(1)
                .to_polars()
            )
        except Exception as exc:  # noqa: BLE001 - LanceDB errors become ours
            raise SearchError(
                f"looking up {oid!r} in {search.table.name} failed ({type(exc).__name__}: {exc})"
            ) from exc
        if frame.height == 0:
            raise NotFoundError(
                f"object_id {oid!r} is not in {search.table.name} (v{search.version}); pick a "
                "galaxy from the search results",
                detail={"object_id": oid},
            )
        return frame

    # ------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health", summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/info", summary="The index, models, limits and capabilities")
    def info() -> dict[str, Any]:
        from galaxy_assets.search.filters import filterable_columns

        search = engine.get()
        with engine.lock.read():
            search = engine.current(search)  # not one a refresh replaced meanwhile
            n_rows = engine.n_rows(search)
            version = int(search.version)
            schema = search.table.schema
        config = getattr(getattr(search, "aligner", None), "config", None)
        return _json_safe(
            {
                "table": search.table.name,
                "table_version": version,
                "n_indexed": n_rows,
                "aligner_version": getattr(search, "aligner_version", None),
                "image_encoder": getattr(config, "image_encoder", None),
                "text_embedder": getattr(config, "text_embedder", None),
                "capabilities": {
                    "text": search.text_embedder is not None and search.aligner is not None,
                    "object": True,
                    "image_upload": search.image_encoder is not None
                    and search.aligner is not None,
                    "rerank": rater_state["rater"] is not None or rater_factory is not None,
                },
                "filterable_columns": filterable_columns(schema),
                "examples": list(examples),
                "defaults": {"k": DEFAULT_PAGE, "k_rerank": k_rerank},
                "limits": {
                    "max_k": MAX_K,
                    "max_k_rerank": MAX_K_RERANK,
                    "max_query_chars": MAX_QUERY_CHARS,
                    "max_terms": MAX_TERMS,
                    "max_filters": MAX_FILTERS,
                    "max_upload_bytes": int(max_upload_bytes),
                    "thumbnail_sizes": list(THUMB_SIZES),
                },
            }
        )

    @app.get("/api/search", summary="Search by text, object_id, terms and filters")
    def search_get(
        q: Annotated[str | None, Query(max_length=MAX_QUERY_CHARS, description="free text")] = None,
        term: Annotated[
            list[Annotated[str, Field(max_length=MAX_QUERY_CHARS + 64)]],
            Query(
                max_length=MAX_TERMS,
                description="[+|-][text:|object:]VALUE[^WEIGHT], e.g. '-text:bar^0.5'",
            ),
        ] = [],  # noqa: B006 - FastAPI copies defaults
        object: Annotated[
            str | None, Query(max_length=MAX_OBJECT_ID_CHARS, description="an indexed object_id")
        ] = None,
        filter: Annotated[
            list[Annotated[str, Field(max_length=MAX_FILTER_CHARS)]],
            Query(max_length=MAX_FILTERS, description="e.g. 'mag_r<19', 'p_spiral>=0.5'"),
        ] = [],  # noqa: B006
        k: Annotated[int, Query(ge=1, le=MAX_K)] = DEFAULT_PAGE,
        offset: Annotated[int, Query(ge=0, le=MAX_K - 1)] = 0,
        rerank: bool = False,
        k_rerank: Annotated[
            int | None, Query(ge=1, le=MAX_K_RERANK, description="default: the server's depth")
        ] = None,
        nprobes: Annotated[int | None, Query(ge=1, le=100_000)] = None,
        refine_factor: Annotated[int | None, Query(ge=1, le=1000)] = None,
        table_version: Annotated[
            int | None,
            Query(ge=0, description="a later page: the table_version its first page returned"),
        ] = None,
        table_epoch: Annotated[
            int | None,
            Query(ge=0, description="a later page: the table_epoch its first page returned"),
        ] = None,
    ) -> dict[str, Any]:
        req = SearchRequest(
            q=q,
            object=object,
            filters=filter,
            k=k,
            offset=offset,
            rerank=rerank,
            k_rerank=k_rerank,
            nprobes=nprobes,
            refine_factor=refine_factor,
            table_version=table_version,
            table_epoch=table_epoch,
        )
        return run_query(req, _terms_of(req, term))

    @app.post("/api/search", summary="Search (JSON body: q, object, structured terms, filters)")
    def search_post(req: SearchRequest) -> dict[str, Any]:
        return run_query(req, _terms_of(req))

    @app.post(
        "/api/search/image",
        summary="Search by an uploaded FITS (or PNG) cutout, optionally with more terms",
    )
    def search_image(
        file: Annotated[UploadFile, File(description="a FITS cutout (or PNG for RGB encoders)")],
        k: Annotated[int, Form(ge=1, le=MAX_K)] = DEFAULT_PAGE,
        offset: Annotated[int, Form(ge=0, le=MAX_K - 1)] = 0,
        weight: Annotated[float, Form(gt=0, le=1000)] = 1.0,
        term: Annotated[
            list[Annotated[str, Field(max_length=MAX_QUERY_CHARS + 64)]],
            Form(max_length=MAX_TERMS),
        ] = [],  # noqa: B006
        filter: Annotated[
            list[Annotated[str, Field(max_length=MAX_FILTER_CHARS)]],
            Form(max_length=MAX_FILTERS),
        ] = [],  # noqa: B006
    ) -> dict[str, Any]:
        name = _display_name(file.filename)
        req = SearchRequest(filters=filter, k=k, offset=offset)
        extra = _terms_of(req, term)
        with tempfile.TemporaryDirectory(prefix="galaxy-upload-", dir=upload_dir) as tmp:
            head = file.file.read(32)
            suffix = _sniff_upload(head, name)
            target = Path(tmp) / f"upload{suffix}"
            total = len(head)
            with target.open("wb") as out:
                out.write(head)
                while chunk := file.file.read(1 << 20):
                    total += len(chunk)
                    if total > max_upload_bytes:
                        raise PayloadTooLarge(
                            f"{name}: the upload is over {max_upload_bytes} bytes; send a "
                            "single cutout",
                            detail={"max_upload_bytes": int(max_upload_bytes)},
                        )
                    out.write(chunk)
            if suffix == ".fits":
                _check_fits_structure(target, name)
            terms = [QueryTerm.image(target, weight), *extra]
            rename = (str(target), f"upload:{name}")
            try:
                return run_query(req, terms, rename=rename, cacheable=False)
            except SearchError as exc:
                message = str(exc).replace(str(target), name)
                raise type(exc)(message) from None

    # an id may hold '/' (FITS OBJID): the thumbnail route must be tried first
    @app.get(
        "/api/galaxy/{object_id:path}/thumbnail",
        summary="A PNG of the galaxy rendered from its shard pixels (Lupton RGB)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def thumbnail(
        object_id: Annotated[str, PathParam(max_length=MAX_OBJECT_ID_CHARS)],
        size: Annotated[int, Query(ge=min(THUMB_SIZES), le=max(THUMB_SIZES))] = 128,
    ) -> Response:
        size = min((s for s in THUMB_SIZES if s >= size), default=max(THUMB_SIZES))
        search = engine.get()
        with engine.lock.read():
            search = engine.current(search)  # not one a refresh replaced meanwhile
            version = int(search.version)
            # bands and crop of the galaxy's manifest row: the picture the encoder saw
            names = set(search.table.schema.names)
            row = lookup(search, object_id, [c for c in PIXEL_COLUMNS if c in names])
        oid = str(row["object_id"][0])
        data = thumbs.get(oid, pixel_source(row), size, lambda: render_thumbnail(row, size))
        return Response(
            data,
            media_type="image/png",
            headers={"Cache-Control": "public, max-age=86400", "X-Table-Version": str(version)},
        )

    @app.get("/api/galaxy/{object_id:path}", summary="Everything indexed about one galaxy")
    def galaxy(
        object_id: Annotated[str, PathParam(max_length=MAX_OBJECT_ID_CHARS)],
    ) -> dict[str, Any]:
        search = engine.get()
        with engine.lock.read():
            search = engine.current(search)  # not one a refresh replaced meanwhile
            version = int(search.version)
            frame = lookup(search, object_id)
        return _json_safe(_detail(search, frame.row(0, named=True), version, store))

    return app
