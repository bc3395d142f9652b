"""Thumbnails of indexed galaxies, rendered from the shard pixels and cached.

A thumbnail is the Lupton RGB picture (:func:`galaxy_assets.survey.rgb.lupton_rgb`) of the
cutout that the index row points at (``shard_uri`` / ``row``, read by
:func:`galaxy_assets.search.pixels.read_cutouts`), as PNG bytes at a square size. The web
layer asks for a thumbnail only after it found the object_id in the table, so no client
text ever names a file.

:class:`ThumbnailCache` keeps PNG bytes in an in-memory LRU and, when given a folder, in
files named by a hash of (object_id, the pixels' source, size). The source
(:func:`pixel_source`) is what the picture is drawn from: the row's shard file (with its
size and modification time), row, bands and crop. It is not the table version: a table
dropped and built again restarts its versions at 1, so a version named other pixels then,
while a new version whose row points at the same pixels needs no new picture. A restarted
server finds its files; the folder is held under ``max_bytes``: every ``prune_every``
writes, the files used longest ago go first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import polars as pl

from galaxy_assets.web.errors import NotFoundError

log = logging.getLogger(__name__)

__all__ = ["ThumbnailCache", "pixel_source", "render_thumbnail"]


def pixel_source(row: pl.DataFrame) -> str:
    """What the thumbnail of the galaxy in ``row`` is drawn from: shard_uri (with the file's
    size and modification time when it is a local file), row, bands and crop."""
    first = row.row(0, named=True)
    uri = str(first.get("shard_uri") or "").removeprefix("file://")
    try:
        st = os.stat(uri)
        state = f"{st.st_size}:{st.st_mtime_ns}"
    except (OSError, ValueError):  # not a local file (or none): its name alone
        state = ""
    if state and Path(uri).is_dir():
        # a FITS folder: a file rewritten in place leaves the folder's own size and mtime as
        # they were, so the galaxy's own file (named after its object_id, the reader's rule
        # without an OBJID keyword) keys it too
        from galaxy_assets.survey.fits import FITS_SUFFIXES

        for suffix in FITS_SUFFIXES:
            try:
                fst = os.stat(Path(uri) / f"{first.get('object_id')}{suffix}")
            except (OSError, ValueError):
                continue
            state += f":{fst.st_size}:{fst.st_mtime_ns}"
            break
    parts = (uri, state, first.get("row"), first.get("bands"), first.get("height"),
             first.get("width"))
    return "\x1f".join("" if p is None else str(p) for p in parts)


def render_thumbnail(row: pl.DataFrame, size: int) -> bytes:
    """PNG bytes of the galaxy in ``row`` (one row with object_id, shard_uri, row); a
    :class:`NotFoundError` saying why when its pixels cannot be read."""
    from galaxy_assets.search.pixels import Cutout, read_cutouts
    from galaxy_assets.survey.rgb import lupton_rgb, to_png

    oid = str(row["object_id"][0])
    cut = read_cutouts(row).get(oid)
    if not isinstance(cut, Cutout):
        raise NotFoundError(
            f"no pixels for {oid!r}: {cut or 'the shard holds no such row'}",
            detail={"object_id": oid},
        )
    return to_png(lupton_rgb(cut.image, cut.bands), size=int(size))


# a new revision draws every thumbnail again (2: the galaxy's own bands and crop, as the
# encoder read them, instead of every band of the shard at its native size)
RENDER_REVISION = 2


class ThumbnailCache:
    """PNG bytes keyed by (object_id, source, size): an LRU of ``max_items`` in memory,
    backed by files under ``folder`` when one is given (written atomically). ``source`` names
    the pixels (:func:`pixel_source`)."""

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        max_items: int = 2048,
        *,
        max_bytes: int = 512 * 2**20,
        prune_every: int = 200,
    ) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.max_items = max(1, int(max_items))
        self.max_bytes = int(max_bytes)
        self.prune_every = max(1, int(prune_every))
        self._writes = 0
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(object_id: str, source: str | int, size: int) -> str:
        raw = f"{object_id}\x00{source}\x00{int(size)}\x00{RENDER_REVISION}".encode()
        return hashlib.sha256(raw).hexdigest()[:40]

    def _file(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / key[:2] / f"{key}.png"

    def _remember(self, key: str, data: bytes) -> None:
        with self._lock:
            self._memory[key] = data
            self._memory.move_to_end(key)
            while len(self._memory) > self.max_items:
                self._memory.popitem(last=False)

    def get(
        self, object_id: str, source: str | int, size: int, render: Callable[[], bytes]
    ) -> bytes:
        """The cached PNG, or ``render()``'s (then cached)."""
        key = self.key(object_id, source, size)
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return data
        path = self._file(key)
        if path is not None and path.is_file():
            try:
                data = path.read_bytes()
            except OSError as exc:  # unreadable cache file: render again
                log.warning("thumbnail cache file %s unreadable (%s)", path, exc)
                data = None
            if data:
                try:  # the files used longest ago are pruned first
                    os.utime(path)
                except OSError:
                    pass
                self._remember(key, data)
                with self._lock:
                    self.hits += 1
                return data
        with self._lock:
            self.misses += 1
        data = render()
        self._remember(key, data)
        if path is not None:
            tmp = None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
                with self._lock:
                    self._writes += 1
                    due = self._writes % self.prune_every == 0
                if due:
                    self.prune()
            except OSError as exc:  # a read-only cache folder only costs re-rendering
                log.warning("cannot write thumbnail cache file %s (%s)", path, exc)
                if tmp is not None:
                    Path(tmp).unlink(missing_ok=True)
        return data

    def prune(self) -> int:
        """Delete the least recently used files until the folder holds at most 80% of
        ``max_bytes``; returns how many were deleted."""
        if self.folder is None or not self.folder.is_dir():
            return 0
        files = []
        for f in self.folder.glob("*/*.png"):
            try:
                st = f.stat()
            except OSError:  # removed meanwhile
                continue
            files.append((st.st_mtime, st.st_size, f))
        total = sum(size for _, size, _ in files)
        if total <= self.max_bytes:
            return 0
        deleted = 0
        for _, size, f in sorted(files, key=lambda t: t[0]):
            if total <= 0.8 * self.max_bytes:
                break
            f.unlink(missing_ok=True)
            total -= size
            deleted += 1
        log.info("thumbnail cache: %d old files removed (%d bytes kept)", deleted, total)
        return deleted

    def forget(self) -> None:
        """Empty the in-memory LRU (the table was recreated; files are keyed by their
        pixels' source and stay valid)."""
        with self._lock:
            self._memory.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._memory)
