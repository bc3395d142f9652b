"""Find survey shards under root folders, name them as Dagster partition keys, open them.

A *shard* is either one MMU HDF5 file (``*.hdf5`` / ``*.h5``) or one folder directly holding
FITS cutouts (``*.fits``, ``*.fits.gz``, ``*.fit`` …). Its partition key is its path relative
to the root, without the HDF5 suffix, with path separators replaced by ``__``::

    <root>/healpix=1234/001-of-001.hdf5   →  healpix=1234__001-of-001
    <root>/fits/field_a/                  →  fits__field_a

Hidden files and folders (names starting with ``.``) are never shards: writers put their
temporary files there before renaming them into place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from galaxy_assets.survey.base import CutoutReader
from galaxy_assets.survey.errors import SurveyConfigError, SurveyFormatError
from galaxy_assets.survey.fits import FitsFolderReader, is_fits_file
from galaxy_assets.survey.mmu import MMUShardReader

__all__ = [
    "HDF5_SUFFIXES",
    "KEY_SEPARATOR",
    "find_shards",
    "open_shard",
    "resolve_shard",
    "shard_key",
]

HDF5_SUFFIXES: tuple[str, ...] = (".hdf5", ".h5")
KEY_SEPARATOR = "__"
# Substrings Dagster refuses in partition keys.
_INVALID_KEY_PARTS = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")


def _as_path(uri: str | Path) -> Path:
    text = str(uri)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Path(text)


def _is_hdf5(path: Path) -> bool:
    return path.suffix.lower() in HDF5_SUFFIXES


def open_shard(
    uri: str | Path,
    bands: Sequence[str] | None = None,
    size: int | None = None,
    *,
    ivar: bool = True,
) -> CutoutReader:
    """Open the shard at ``uri`` (a path or ``file://`` URI) with the reader its kind needs.

    An ``.hdf5`` / ``.h5`` file opens as :class:`MMUShardReader`, a folder as
    :class:`FitsFolderReader`; ``bands``, ``size`` and ``ivar`` are passed on. Anything else
    raises :class:`SurveyFormatError` naming the path. The caller closes the reader
    (both readers are context managers).
    """
    path = _as_path(uri)
    if not path.exists():
        raise SurveyFormatError(
            path,
            "does not exist",
            expected="an MMU HDF5 shard (.hdf5 / .h5) or a folder of FITS cutouts",
        )
    if path.is_dir():
        return FitsFolderReader(path, bands=bands, size=size, ivar=ivar)
    if path.is_file() and _is_hdf5(path):
        return MMUShardReader(path, bands=bands, size=size, ivar=ivar)
    hint = ""
    if is_fits_file(path):
        hint = " (a single FITS file: put the cutouts in a folder and open the folder)"
    raise SurveyFormatError(
        path,
        f"is neither an HDF5 shard nor a folder{hint}",
        expected="an MMU HDF5 shard (.hdf5 / .h5) or a folder of FITS cutouts",
    )


def find_shards(root: str | Path) -> list[Path]:
    """Every shard under ``root``: HDF5 files (recursively) and folders holding FITS files.

    Returned sorted by path, each as ``root / relative path``. ``root`` may itself be an
    HDF5 file or a FITS folder. Hidden entries are skipped. A missing root raises
    :class:`SurveyConfigError`.
    """
    root = _as_path(root)
    if root.is_file():
        return [root] if _is_hdf5(root) else []
    if not root.is_dir():
        raise SurveyConfigError(
            f"survey root {root} does not exist or is not a folder; point the survey roots "
            "at folders holding MMU .hdf5 shards or FITS cutout folders"
        )
    shards: list[Path] = []
    # symlinked folders are followed (data on another disk is often linked in), each real
    # folder once (a link cycle ends there)
    visited: set[str] = set()
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(folder)
        visible = [f for f in filenames if not f.startswith(".")]
        shards.extend(here / f for f in visible if _is_hdf5(Path(f)))
        if any(is_fits_file(f) for f in visible):
            shards.append(here)
    return sorted(shards, key=lambda p: p.as_posix())


def shard_key(root: str | Path, path: str | Path) -> str:
    """The Dagster partition key of shard ``path`` found under ``root`` (see module doc).

    Raises :class:`SurveyConfigError` when ``path`` is not under ``root`` or its key would
    hold characters Dagster refuses.
    """
    root_p = Path(os.path.abspath(_as_path(root)))
    path_p = Path(os.path.abspath(_as_path(path)))
    try:
        rel = path_p.relative_to(root_p)
    except ValueError as exc:
        raise SurveyConfigError(f"shard {path_p} is not under the survey root {root_p}") from exc
    parts = list(rel.parts) or [root_p.name]
    if _is_hdf5(Path(parts[-1])):
        parts[-1] = Path(parts[-1]).stem
    key = KEY_SEPARATOR.join(parts)
    bad = [s for s in _INVALID_KEY_PARTS if s in key]
    if bad or not key:
        raise SurveyConfigError(
            f"shard {path_p} gives the partition key {key!r}, which Dagster refuses "
            f"(contains {bad!r}); rename the file or folder"
        )
    return key


def resolve_shard(roots: Sequence[str | Path] | str | Path, key: str) -> Path:
    """The shard whose :func:`shard_key` is ``key`` under one of ``roots`` (the inverse).

    Tries the direct paths first (``key`` with ``__`` → ``/``, plus ``.hdf5`` / ``.h5`` or
    as a folder), then scans the roots. Raises :class:`SurveyConfigError` when no shard or
    more than one shard (under different roots) has that key.
    """
    if isinstance(roots, str | Path):
        roots = [roots]
    matches: list[Path] = []
    for root in roots:
        root_p = _as_path(root)
        rel = key.replace(KEY_SEPARATOR, os.sep)
        candidates = [root_p / (rel + s) for s in HDF5_SUFFIXES] + [root_p / rel]
        if root_p.is_file() or (root_p.is_dir() and root_p.name == key):
            candidates.append(root_p)
        found = [c for c in candidates if (c.is_file() and _is_hdf5(c)) or _holds_fits(c)]
        found = [c for c in found if _key_or_none(root_p, c) == key]
        if not found and root_p.exists():
            found = [p for p in find_shards(root_p) if _key_or_none(root_p, p) == key]
        matches.extend(found)
    unique = sorted({os.path.abspath(m): m for m in matches}.values(), key=str)
    if not unique:
        raise SurveyConfigError(
            f"no shard with partition key {key!r} under {', '.join(map(str, roots))}: the "
            "file may have been moved or deleted; re-run the shard sensor"
        )
    if len(unique) > 1:
        raise SurveyConfigError(
            f"partition key {key!r} is ambiguous: {', '.join(map(str, unique))}; give each "
            "survey root distinct shard paths"
        )
    return unique[0]


def _holds_fits(folder: Path) -> bool:
    return folder.is_dir() and any(is_fits_file(p) and p.is_file() for p in folder.iterdir())


def _key_or_none(root: Path, path: Path) -> str | None:
    try:
        return shard_key(root, path)
    except SurveyConfigError:
        return None
