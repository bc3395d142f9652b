"""The query API over ``galaxy_index``: text, image and combined queries with filters.

:class:`GalaxySearch` turns a query into a unit search vector and returns the nearest
galaxies by cosine similarity:

* free text → the text embedder → the aligner's text head
  (:func:`galaxy_assets.alignment.model.encode_queries`);
* an indexed galaxy (``object_id``) → its stored search vector;
* a cutout file → the image encoder → the aligner's image head. FITS: a (B, H, W) cube
  whose planes are named by ``BANDS`` / ``BAND0``… keywords (else taken to be in the
  encoder's band order), or one 2-D HDU per band named by ``BAND`` / ``FILTER`` /
  ``EXTNAME``, in nanomaggies. PNG: only for an encoder that declares ``accepts_rgb`` (it
  takes 3-band 8-bit pictures); the survey encoders take calibrated fluxes, so a PNG is
  refused with a message saying so;
* combined: several positive and negative terms (each text, object_id or file) with
  weights: ``normalise(Σ w_i v_i − Σ w_j v_j)``, explained term by term.

Filters (:class:`galaxy_assets.search.filters.Filters`) become a LanceDB ``where`` prefilter;
unfiltered queries may be answered by the in-memory FAISS copy
(:class:`galaxy_assets.search.ann.ServingIndex`) while it holds the table's current version,
so the table stays the system of record. Results are polars frames ordered by score with
rank, object_id, score (cosine), position, caption, magnitudes, morphology, shard, row,
aligner version and a Legacy Survey viewer link (:class:`SearchResults` also carries the
table version read).

Plain Python; knows nothing of Dagster.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from galaxy_assets.search.errors import IndexMismatchError, QueryError, SearchError
from galaxy_assets.search.filters import Filters, parse_filters
from galaxy_assets.search.table import (
    BANDS,
    P_COLUMNS,
    column_counts,
    open_table,
    sql_string,
    table_version,
    vector_dim,
)

if TYPE_CHECKING:
    from lancedb.table import Table

    from galaxy_assets.alignment.model import AlignedModel

log = logging.getLogger(__name__)

__all__ = [
    "MAX_QUERY_CHARS",
    "MAX_TERMS",
    "VIEWER_URL",
    "GalaxySearch",
    "QueryTerm",
    "SearchResults",
    "parse_term",
    "read_fits_cutout",
    "results_table",
    "to_json_records",
    "viewer_url",
]

MAX_QUERY_CHARS = 2000
MAX_TERMS = 32
MAX_OBJECT_ID_CHARS = 512
VIEWER_URL = "https://www.legacysurvey.org/viewer?ra={ra:.6f}&dec={dec:.6f}&layer=ls-dr10&zoom=16"
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
PNG_SUFFIXES = (".png",)
_FETCH_CHUNK = 1000
_LEADING = (
    "rank",
    "object_id",
    "score",
    "ra",
    "dec",
    "caption",
    *[f"mag_{b}" for b in BANDS],
    *P_COLUMNS,
    "shard",
    "row",
    "aligner_version",
    "viewer_url",
)
_TERM = re.compile(
    r"^\s*([+-])?\s*(?:(text|object|image):)?(.*?)(?:\^([0-9]*\.?[0-9]+))?\s*$", re.S
)

TermKind = Literal["text", "object", "image"]


def viewer_url(ra: float | None, dec: float | None) -> str | None:
    """The Legacy Survey sky viewer (DR10) centred on (ra, dec); None without a position."""
    if ra is None or dec is None or not (math.isfinite(ra) and math.isfinite(dec)):
        return None
    return VIEWER_URL.format(ra=ra, dec=dec)


# --------------------------------------------------------------------------- terms
@dataclass(frozen=True)
class QueryTerm:
    """One term of a combined query: ``kind`` text / object (an indexed object_id) / image
    (a cutout file), a weight > 0, and whether it pulls towards (positive) or away."""

    kind: TermKind
    value: str
    weight: float = 1.0
    negative: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("text", "object", "image"):
            raise QueryError(f"query term kind {self.kind!r}; use text, object or image")
        if not isinstance(self.value, str | os.PathLike):
            raise QueryError(f"query term value {self.value!r} must be a string")
        if isinstance(self.weight, bool):
            raise QueryError(f"query term weight {self.weight!r} must be a number > 0")
        try:
            w = float(self.weight)
        except (TypeError, ValueError):
            raise QueryError(f"query term weight {self.weight!r} must be a number > 0") from None
        if not math.isfinite(w) or w <= 0:
            raise QueryError(
                f"query term weight {self.weight!r} must be a finite number > 0 (make a term "
                "negative to push results away from it)"
            )
        object.__setattr__(self, "weight", w)
        value = os.fspath(self.value)
        if self.kind == "object":  # ids are looked up stripped; exclusions must match them
            value = value.strip()
        object.__setattr__(self, "value", value)

    @classmethod
    def text(cls, value: str, weight: float = 1.0, *, negative: bool = False) -> QueryTerm:
        return cls("text", value, weight, negative)

    @classmethod
    def object(cls, object_id: str, weight: float = 1.0, *, negative: bool = False) -> QueryTerm:
        return cls("object", object_id, weight, negative)

    @classmethod
    def image(
        cls, path: str | os.PathLike[str], weight: float = 1.0, *, negative: bool = False
    ) -> QueryTerm:
        return cls("image", os.fspath(path), weight, negative)

    @property
    def sign(self) -> int:
        return -1 if self.negative else 1

    @property
    def label(self) -> str:
        text = self.value if len(self.value) <= 80 else self.value[:79] + "…"
        return f"{'-' if self.negative else '+'}{self.kind}:{text}^{self.weight:g}"


def parse_term(spec: str) -> QueryTerm:
    """A :class:`QueryTerm` from ``[+|-][text:|object:|image:]VALUE[^WEIGHT]`` (CLI form):
    ``"spiral arms"``, ``"-text:bar^0.5"``, ``"object:obj000123"``, ``"image:q.fits^2"``."""
    if not isinstance(spec, str):
        raise QueryError(f"query term {spec!r} must be a string")
    if len(spec) > MAX_QUERY_CHARS + 64:
        raise QueryError(
            f"query term of {len(spec)} characters; at most {MAX_QUERY_CHARS} are accepted"
        )
    match = _TERM.match(spec)
    if match is None or not match.group(3).strip():
        raise QueryError(
            f"cannot read query term {spec[:80]!r}; write [+|-][text:|object:|image:]VALUE[^WEIGHT]"
        )
    sign, kind, value, weight = match.groups()
    return QueryTerm(
        kind or "text",  # type: ignore[arg-type]
        value.strip(),
        float(weight) if weight else 1.0,
        negative=sign == "-",
    )


# --------------------------------------------------------------------------- results
@dataclass
class SearchResults:
    """The answer to one query: the ranked frame, the table version it came from, and (for
    combined queries) how the query vector was made."""

    frame: pl.DataFrame
    table_version: int
    query: str
    k: int
    filters: dict[str, Any] = field(default_factory=dict)
    explanation: list[dict[str, Any]] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    path: str = ""  # "serving" (FAISS copy) or "lance"

    def __len__(self) -> int:
        return self.frame.height

    def to_json_records(self) -> list[dict[str, Any]]:
        """The rows as JSON-safe dicts, each naming the table version it was read from."""
        records = to_json_records(self.frame)
        for record in records:
            record["table_version"] = self.table_version
        return records

    def summary(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "k": self.k,
            "n": self.frame.height,
            "table_version": self.table_version,
            "filters": self.filters,
            "explanation": self.explanation,
            "timings_ms": self.timings_ms,
            "path": self.path,
        }


def _json_safe(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        x = float(value)
        return x if math.isfinite(x) else None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value if isinstance(value, str) else str(value)


def to_json_records(frame: pl.DataFrame | SearchResults) -> list[dict[str, Any]]:
    """The rows as JSON-safe dicts (None for nulls, NaN and inf; no vectors), with at least
    object_id, score, ra, dec and caption."""
    if isinstance(frame, SearchResults):
        frame = frame.frame
    keep = [c for c in frame.columns if c != "vector" and not c.startswith("_")]
    records = [{k: _json_safe(v) for k, v in row.items()} for row in frame.select(keep).to_dicts()]
    for record in records:
        for key in ("object_id", "score", "ra", "dec", "caption"):
            record.setdefault(key, None)
    json.dumps(records)  # guarantees the promise above
    return records


def _order_columns(frame: pl.DataFrame) -> pl.DataFrame:
    lead = [c for c in _LEADING if c in frame.columns]
    rest = [c for c in frame.columns if c not in lead and c != "vector"]
    return frame.select(lead + rest)


def _finish(frame: pl.DataFrame, k: int) -> pl.DataFrame:
    """Sort by score (ties: object_id), keep k, number the ranks, add viewer links."""
    frame = frame.sort(["score", "object_id"], descending=[True, False]).head(k)
    urls = [
        viewer_url(ra, dec)
        for ra, dec in zip(frame["ra"].to_list(), frame["dec"].to_list(), strict=True)
    ]
    frame = frame.with_columns(
        pl.Series("rank", np.arange(1, frame.height + 1, dtype=np.int64)),
        pl.Series("viewer_url", urls, dtype=pl.Utf8),
        pl.col("score").cast(pl.Float64),
    )
    return _order_columns(frame)


# --------------------------------------------------------------------------- files
def _band_names_from_header(headers: Sequence[Any], n: int) -> list[str] | None:
    from galaxy_assets.survey.mmu import normalize_band

    for header in headers:
        bands = header.get("BANDS")
        if isinstance(bands, str) and bands.strip():
            names = [b for b in re.split(r"[,\s]+", bands.strip()) if b]
            if len(names) == n:
                return [normalize_band(b) for b in names]
        for start in (0, 1):
            keys = [f"BAND{i}" for i in range(start, start + n)]
            if all(k in header for k in keys):
                return [normalize_band(str(header[k])) for k in keys]
    return None


def _hdu_band(header: Any) -> str | None:
    from galaxy_assets.survey.mmu import normalize_band

    for key in ("BAND", "FILTER", "EXTNAME"):
        value = header.get(key)
        if isinstance(value, str) and value.strip():
            word = value.strip().split()[0]
            for prefix in ("IMAGE_", "IMG_", "SCI_"):
                if word.upper().startswith(prefix):
                    word = word[len(prefix) :]
            try:
                return normalize_band(word)
            except Exception:  # noqa: BLE001 - not a band name: try the next keyword
                continue
    return None


def _is_ivar(header: Any) -> bool:
    name = str(header.get("EXTNAME", "")).upper()
    return name.startswith(("IVAR", "INVVAR")) or str(header.get("IMTYPE", "")).upper() == "IVAR"


def read_fits_cutout(path: str | os.PathLike[str], bands: Sequence[str] | None) -> np.ndarray:
    """A (B, H, W) float32 cutout from a FITS file, planes in the order of ``bands`` (see the
    module doc for the layouts read). Any problem is a :class:`QueryError` naming the file."""
    from astropy.io import fits

    path = Path(path)
    want = [str(b) for b in bands] if bands else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False) as hdul:
                primary = hdul[0].header
                planes: list[tuple[Any, np.ndarray]] = []
                for hdu in hdul:
                    if not getattr(hdu, "is_image", False) or hdu.data is None:
                        continue
                    if _is_ivar(hdu.header):
                        continue
                    # display order (row 0 on top), as the survey's FITS reader returns
                    data = np.asarray(hdu.data, dtype=np.float32)
                    planes.append((hdu.header, data[..., ::-1, :] if data.ndim >= 2 else data))
        truncated = [str(w.message) for w in caught if "truncated" in str(w.message)]
        if truncated:
            raise QueryError(f"{path}: the FITS file is truncated ({truncated[0]})")
    except QueryError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for a bad file
        raise QueryError(
            f"{path}: cannot be read as a FITS cutout ({type(exc).__name__}: {exc}); give a "
            "valid FITS file"
        ) from None
    if not planes:
        raise QueryError(f"{path}: the FITS file holds no image data")
    cubes = [(h, d) for h, d in planes if d.ndim == 3]
    if cubes:
        header, cube = cubes[0]
        names = _band_names_from_header([header, primary], cube.shape[0])
        if names is None:
            if want is not None and cube.shape[0] != len(want):
                raise QueryError(
                    f"{path}: the cube has {cube.shape[0]} planes and no BANDS keyword, but the "
                    f"image encoder takes {len(want)} bands ({','.join(want)}); add BANDS="
                    "'g,r,i,z' to the header or give a cube of those bands in that order"
                )
            return np.ascontiguousarray(cube)
        if want is None:
            return np.ascontiguousarray(cube)
        missing = [b for b in want if b not in names]
        if missing:
            raise QueryError(
                f"{path}: the cube holds bands {names} but the image encoder needs {want} "
                f"(missing {missing})"
            )
        return np.ascontiguousarray(np.stack([cube[names.index(b)] for b in want]))
    flat = [(h, d) for h, d in planes if d.ndim == 2]
    if not flat:
        raise QueryError(f"{path}: no 2-D or 3-D image HDU (shapes {[d.shape for _, d in planes]})")
    if len(flat) == 1 and (want is None or len(want) == 1):
        return flat[0][1][None].copy()
    named = {}
    for header, data in flat:
        band = _hdu_band(header)
        if band is None:
            raise QueryError(
                f"{path}: an image HDU has no BAND, FILTER or EXTNAME naming its band; name "
                "every band's HDU"
            )
        if band in named:  # e.g. a mask or variance HDU carrying the band's FILTER keyword
            raise QueryError(
                f"{path}: two image HDUs name band {band!r} (the second is "
                f"{header.get('EXTNAME') or 'unnamed'}); keep one image per band, or mark "
                "inverse variance with EXTNAME='IVAR_<band>' (as the survey's FITS reader does)"
            )
        named[band] = data
    order = want or list(named)
    missing = [b for b in order if b not in named]
    if missing:
        raise QueryError(
            f"{path}: the file holds bands {sorted(named)} but the image encoder needs {order} "
            f"(missing {missing})"
        )
    shapes = {named[b].shape for b in order}
    if len(shapes) != 1:
        raise QueryError(f"{path}: the band images have different shapes {sorted(shapes)}")
    return np.stack([named[b] for b in order]).astype(np.float32)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise QueryError(
            f"{path}: cannot be read as a PNG picture ({type(exc).__name__}: {exc})"
        ) from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


# --------------------------------------------------------------------------- backends
def _lance_search_fallback(
    table: Table,
    queries: np.ndarray,
    k: int,
    *,
    where: str | None,
    nprobes: int | None,
    refine_factor: int | None,
    columns: list[str],
) -> list[pl.DataFrame]:
    """LanceDB's own vector search, one query at a time (used when ann.py is absent)."""
    out = []
    for vec in queries:
        q = table.search(vec, vector_column_name="vector").distance_type("cosine").limit(int(k))
        if where:
            q = q.where(where, prefilter=True)
        if nprobes:
            q = q.nprobes(int(nprobes))
        if refine_factor:
            q = q.refine_factor(int(refine_factor))
        out.append(q.select([*columns, "_distance"]).to_polars())
    return out


def _ann_module() -> Any | None:
    try:
        from galaxy_assets.search import ann
    except ImportError:
        return None
    return ann


@dataclass
class _State:
    version: int
    n_rows: int
    aligner_versions: dict[str, int]
    columns: tuple[str, ...]  # the result columns (all but the vector) at this version


# --------------------------------------------------------------------------- the engine
class GalaxySearch:
    """Queries over one ``galaxy_index`` table (see the module doc).

    Parameters
    ----------
    table:
        An open LanceDB table, or a LanceDB URI (None: the home's); a missing table is an
        :class:`IndexMissingError`.
    text_embedder:
        ``.embed(list[str]) -> (n, d)`` unit vectors and ``.embedder_id``; needed for text.
    aligner:
        The :class:`AlignedModel` whose heads made the table's vectors; needed for text and
        image-file queries.
    image_encoder:
        An :class:`~galaxy_assets.embedding.image.ImageEncoder`; needed for image files.
    aligner_version:
        The aligner's version (default ``aligner.aligner_version``, set by ``load_aligner``).
        Text and image-file queries refuse to run when the table's rows come from another
        version (or mix versions) unless ``allow_version_mismatch``.
    serving_index:
        ``"auto"``: build the FAISS serving copy (``ann.ServingIndex``) for batched
        queries and reuse it for single ones while it is current; True: also for single
        queries; False: always ask LanceDB; or a ready ``ServingIndex``.
    max_query_chars:
        Longer text queries are refused before anything is embedded.

    The table handle is read at one version until :meth:`refresh`; every result carries
    the version it read.
    """

    def __init__(
        self,
        table: Table | str | os.PathLike[str] | None = None,
        *,
        text_embedder: Any | None = None,
        aligner: AlignedModel | None = None,
        image_encoder: Any | None = None,
        aligner_version: str | None = None,
        allow_version_mismatch: bool = False,
        serving_index: bool | str | Any = "auto",
        max_query_chars: int = MAX_QUERY_CHARS,
    ) -> None:
        self.table: Table = table if hasattr(table, "search") else open_table(table)  # type: ignore[assignment]
        self.dim = vector_dim(self.table)
        self.text_embedder = text_embedder
        self.aligner = aligner
        self.image_encoder = image_encoder
        self.aligner_version = aligner_version or getattr(aligner, "aligner_version", None)
        self.allow_version_mismatch = bool(allow_version_mismatch)
        self.max_query_chars = int(max_query_chars)
        self._state_cache: _State | None = None
        self._serving: Any | None = None
        self._serving_table: Any | None = None
        if serving_index in (True, False, "auto"):
            self.serving_mode: bool | str = serving_index
        else:
            self.serving_mode, self._serving = "auto", serving_index
        self._aligner_dim: int | None = None
        if aligner is not None:
            cfg = aligner.config
            if self.dim not in cfg.widths:
                raise IndexMismatchError(
                    f"{self.table.name} holds {self.dim}-d vectors but the aligner "
                    f"{self.aligner_version or ''} makes {cfg.output_dim}-d ones (trained widths "
                    f"{cfg.widths}); rebuild the index with this aligner (materialize "
                    "galaxy_index) or load the aligner that built it"
                )
            self._aligner_dim = None if self.dim == cfg.output_dim else self.dim

    # ------------------------------------------------------------------ table state
    def refresh(self) -> int:
        """Move to the table's latest version (drops caches); returns it."""
        self.table.checkout_latest()
        self._state_cache = None
        ann = _ann_module()
        if ann is not None:  # its cached columns are those of the old version
            ann.forget_table_info(self.table)
        return table_version(self.table)

    @property
    def version(self) -> int:
        return table_version(self.table)

    def _state(self) -> _State:
        version = table_version(self.table)
        if self._state_cache is None or self._state_cache.version != version:
            n = int(self.table.count_rows())
            versions = column_counts(self.table, "aligner_version") if n else {}
            columns = tuple(c for c in self.table.schema.names if c != "vector")
            self._state_cache = _State(
                version, n, {str(k): v for k, v in versions.items()}, columns
            )
        return self._state_cache

    @property
    def _columns(self) -> list[str]:
        """The result columns of the version held: columns added later (posteriors indexed
        after the first shards) appear once the engine moves to that version."""
        return list(self._state().columns)

    def table_aligner_version(self) -> str | None:
        """The aligner version of the table's vectors at the version held, or None when the
        table is empty or mixes versions (a re-index under way)."""
        versions = self._state().aligner_versions
        return next(iter(versions)) if len(versions) == 1 else None

    def _check_versions(self, needs_aligner: bool) -> None:
        if self.allow_version_mismatch:
            return
        versions = self._state().aligner_versions
        if len(versions) > 1:
            raise IndexMismatchError(
                f"{self.table.name} v{self.version} mixes vectors of aligner versions {versions}: "
                "a re-index is under way or failed; re-materialize galaxy_index for every shard "
                "(or pass allow_version_mismatch=True to search anyway)"
            )
        if not needs_aligner or not versions:
            return
        if self.aligner_version is None:
            raise QueryError(
                "the engine does not know its aligner's version, so it cannot check that the "
                "table was built with it: load the aligner with load_aligner(tracker, ...) or "
                "pass aligner_version='search-aligner/vN'"
            )
        (have,) = versions
        if have != self.aligner_version:
            raise IndexMismatchError(
                f"{self.table.name} v{self.version} holds vectors of {have} but this query "
                f"uses {self.aligner_version}; the index must be rebuilt with "
                f"{self.aligner_version} (materialize galaxy_index), or load {have} "
                "(pass allow_version_mismatch=True to search anyway)"
            )

    def _check_k(self, k: Any) -> int:
        n = self._state().n_rows
        if n == 0:
            raise QueryError(
                f"{self.table.name} holds no galaxies at v{self.version}: materialize "
                "galaxy_index (galaxy-assets demo, or index_job in the Dagster UI) first"
            )
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise QueryError(f"k={k!r}: give a whole number of results, 1 <= k <= {n}")
        if not 1 <= int(k) <= n:
            raise QueryError(
                f"k={k}: it must lie in 1..{n} (the table holds {n} galaxies at v{self.version})"
            )
        return int(k)

    @staticmethod
    def _check_probe(name: str, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise QueryError(f"{name}={value!r}: give a whole number >= 1 (or None: the default)")
        return int(value)

    def _filters(self, filters: Filters | str | Sequence[str] | None) -> Filters:
        if filters is None:
            return Filters()
        if isinstance(filters, Filters):
            filters.to_where(self.table.schema)  # columns checked against this table
            return filters
        return parse_filters(filters, self.table.schema)

    # ------------------------------------------------------------------ query vectors
    def _check_text(self, text: Any) -> str:
        if not isinstance(text, str):
            raise QueryError(f"a text query must be a string, not {type(text).__name__}")
        if len(text) > self.max_query_chars:
            raise QueryError(
                f"the query has {len(text)} characters; at most {self.max_query_chars} are "
                "accepted (describe what to find in a sentence or two)"
            )
        stripped = " ".join(text.split())
        if not stripped:
            raise QueryError("the query is empty; describe what to find, e.g. 'spiral arms'")
        return stripped

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Unit search vectors (n, dim) for text queries (one embedder call)."""
        from galaxy_assets.alignment.errors import AlignmentError
        from galaxy_assets.alignment.model import encode_queries
        from galaxy_assets.embedding.text import TextEmbedderError

        if isinstance(texts, str):
            texts = [texts]
        clean = [self._check_text(t) for t in texts]
        if self.text_embedder is None or self.aligner is None:
            raise QueryError(
                "text queries need the text embedder and the search aligner; build "
                "GalaxySearch with text_embedder= and aligner= (load_aligner(tracker, "
                "'search-aligner', 'champion'))"
            )
        self._check_versions(needs_aligner=True)
        if not clean:
            return np.zeros((0, self.dim), np.float32)
        try:
            vecs = encode_queries(clean, self.text_embedder, self.aligner, dim=self._aligner_dim)
        except AlignmentError as exc:
            raise QueryError(str(exc)) from exc
        except TextEmbedderError as exc:  # an endpoint down, its budget spent, a bad answer
            name = getattr(self.text_embedder, "model_id", type(self.text_embedder).__name__)
            raise QueryError(
                f"the text embedder {name} could not embed the query: {exc}. Check the "
                "text_embedder settings (base_url, model) and that its endpoint answers"
            ) from exc
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def _check_object_id(self, object_id: Any) -> str:
        if not isinstance(object_id, str) or not object_id.strip():
            raise QueryError(f"object_id {object_id!r}: give the id of an indexed galaxy")
        if len(object_id) > MAX_OBJECT_ID_CHARS or "\x00" in object_id:
            raise QueryError(f"object_id of {len(object_id)} characters is not a galaxy id")
        return object_id.strip()

    def _fetch(self, object_ids: Sequence[str], columns: list[str]) -> pl.DataFrame:
        """Rows of the given ids (any order; unknown ids are absent)."""
        ids = list(dict.fromkeys(object_ids))
        parts = []
        for s in range(0, len(ids), _FETCH_CHUNK):
            chunk = ids[s : s + _FETCH_CHUNK]
            where = "object_id IN (" + ", ".join(sql_string(i) for i in chunk) + ")"
            parts.append(
                self.table.search().where(where).select(columns).limit(len(chunk)).to_polars()
            )
        if not parts:
            return pl.DataFrame()
        return pl.concat(parts, how="vertical_relaxed")

    def object_vectors(self, object_ids: Sequence[str]) -> np.ndarray:
        """The stored search vectors of indexed galaxies (n, dim), in the given order."""
        ids = [self._check_object_id(o) for o in object_ids]
        rows = self._fetch(ids, ["object_id", "vector"])
        found = (
            dict(zip(rows["object_id"].to_list(), rows["vector"].to_list(), strict=True))
            if rows.height
            else {}
        )
        missing = [i for i in ids if i not in found]
        if missing:
            raise QueryError(
                f"object_id {missing[0]!r} is not in {self.table.name} (v{self.version}); search "
                "by an indexed galaxy's id"
                + (f" ({len(missing)} ids unknown)" if len(missing) > 1 else "")
            )
        return np.asarray([found[i] for i in ids], dtype=np.float32).reshape(len(ids), self.dim)

    def image_vector(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The unit search vector (dim,) of a cutout file (FITS, or PNG for RGB encoders)."""
        from galaxy_assets.alignment.errors import AlignmentError

        p = Path(os.fspath(path)).expanduser()
        if self.image_encoder is None or self.aligner is None:
            raise QueryError(
                f"{p}: image-file queries need the image encoder and the search aligner; build "
                "GalaxySearch with image_encoder= and aligner= (or search by object_id)"
            )
        if not p.is_file():
            raise QueryError(f"{p}: no such file")
        enc = self.image_encoder
        name = p.name.lower()
        bands = tuple(getattr(enc, "bands", None) or ())
        if name.endswith(PNG_SUFFIXES):
            if not getattr(enc, "accepts_rgb", False):
                raise QueryError(
                    f"{p}: a PNG is an 8-bit RGB picture without flux calibration, and the "
                    f"image encoder {enc.encoder_id} takes {len(bands) or 'survey'}-band cutouts "
                    f"({','.join(bands) or 'nanomaggies'}); give a FITS cutout in those bands, "
                    "or search by the object_id of an indexed galaxy"
                )
            image = _read_png(p)
        elif name.endswith(FITS_SUFFIXES):
            image = read_fits_cutout(p, bands or None)
        else:
            raise QueryError(
                f"{p}: unsupported file type; give a FITS cutout ({', '.join(FITS_SUFFIXES)}) "
                "or, for RGB encoders, a PNG"
            )
        if not np.isfinite(image).any():
            raise QueryError(f"{p}: every pixel is NaN or infinite")
        expected_id = getattr(self.aligner.config, "image_encoder", None)
        if expected_id and enc.encoder_id != expected_id:
            raise QueryError(
                f"the image encoder {enc.encoder_id!r} is not the one the aligner was trained on "
                f"({expected_id!r}); configure image_encoder to match the aligner"
            )
        self._check_versions(needs_aligner=True)
        try:
            raw = np.asarray(enc.encode(image[None].astype(np.float32)), dtype=np.float32)
        except QueryError:
            raise
        except Exception as exc:  # noqa: BLE001 - the encoder refuses this cutout
            raise QueryError(
                f"{p}: the image encoder cannot embed this cutout ({type(exc).__name__}: {exc})"
            ) from None
        if raw.ndim != 2 or raw.shape[0] != 1 or not np.isfinite(raw).all():
            raise QueryError(
                f"{p}: the image encoder gave no usable vector for this cutout (empty or "
                "blank image?)"
            )
        try:
            vec = self.aligner.embed_images(raw, dim=self._aligner_dim)
        except AlignmentError as exc:
            raise QueryError(f"{p}: {exc}") from exc
        return np.ascontiguousarray(vec[0], dtype=np.float32)

    # ------------------------------------------------------------------ nearest neighbours
    def _serving_handle(self, version: int) -> Any:
        """A second handle on the table, checked out at ``version`` (the one this engine
        reads), for the serving copy to read from: whatever the serving index does with its
        handle, this engine's own handle stays where it is until :meth:`refresh`."""
        if self._serving_table is None:
            conn = getattr(self.table, "_conn", None)
            if conn is None or not hasattr(conn, "open_table"):
                raise SearchError("cannot open a second handle on this table for serving")
            self._serving_table = conn.open_table(self.table.name)
        self._serving_table.checkout(int(version))
        return self._serving_table

    def _serving_for(self, batched: bool) -> Any | None:
        """The FAISS serving copy when it holds exactly the version this engine reads (built
        or brought up to date here when the mode allows; else None: LanceDB answers)."""
        ann = _ann_module()
        if ann is None or self.serving_mode is False:
            return None
        version = table_version(self.table)
        if self._serving is not None and self._serving.version == version:
            return self._serving
        if not (self.serving_mode is True or batched):
            return None
        started = time.perf_counter()
        try:
            handle = self._serving_handle(version)
            if self._serving is not None and self._serving_table is not None:
                self._serving.refresh(handle)  # incremental when few rows changed
            else:
                self._serving = ann.ServingIndex.from_table(handle)
        except Exception as exc:  # noqa: BLE001 - LanceDB answers instead
            log.warning("cannot build or refresh the serving index (%s); using LanceDB", exc)
            self._serving = None
            return None
        log.info(
            "serving index of %s at v%s ready in %.2f s",
            self.table.name,
            self._serving.version,
            time.perf_counter() - started,
        )
        return self._serving if self._serving.version == version else None

    def _serve(
        self, serving: Any, queries: np.ndarray, k: int, nprobes: int | None, rf: int | None
    ) -> tuple[np.ndarray, list[list[str]]] | None:
        ann = _ann_module()
        stale = getattr(ann, "StaleIndexError", ()) if ann is not None else ()
        try:
            return serving.search(
                np.ascontiguousarray(queries, dtype=np.float32),
                k,
                nprobes=nprobes,
                refine_factor=rf,
            )
        except stale as exc:  # type: ignore[misc]
            log.info("serving index is stale (%s); using LanceDB", exc)
            return None

    def _lance(
        self,
        queries: np.ndarray,
        limit: int,
        where: str | None,
        nprobes: int | None,
        refine_factor: int | None,
        columns: list[str],
    ) -> list[pl.DataFrame]:
        ann = _ann_module()
        search = ann.lance_search if ann is not None else _lance_search_fallback
        try:
            frames = search(
                self.table,
                np.ascontiguousarray(queries, dtype=np.float32),
                int(limit),
                where=where,
                nprobes=nprobes,
                refine_factor=refine_factor,
                columns=columns,
            )
        except SearchError:
            raise
        except Exception as exc:  # noqa: BLE001 - LanceDB/ann errors become ours
            raise SearchError(
                f"searching {self.table.name} v{self.version} failed"
                + (f" with filter {where!r}" if where else "")
                + f": {type(exc).__name__}: {exc}"
            ) from exc
        out = []
        for frame in frames:
            score = (1.0 - pl.col("_distance").cast(pl.Float64)).alias("score")
            out.append(frame.with_columns(score).drop("_distance"))
        return out

    def _neighbours(
        self,
        queries: np.ndarray,
        k: int,
        filters: Filters,
        *,
        nprobes: int | None,
        refine_factor: int | None,
        exclude: Sequence[set[str]] | None = None,
        details: bool = True,
        batched: bool = False,
        extra_columns: Sequence[str] = (),
    ) -> tuple[list[pl.DataFrame], str, dict[str, float]]:
        """Per query: a frame of its k best rows (score desc), the path used, timings."""
        n_rows = self._state().n_rows
        where = filters.to_where(self.table.schema)
        exclude = exclude or [set() for _ in range(len(queries))]
        if details:
            columns = self._columns + [c for c in extra_columns if c not in self._columns]
        else:  # ids and scores only (plus the position a cone needs)
            columns = ["object_id", "ra", "dec"] if filters.needs_post_filter else ["object_id"]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        served = None
        if where is None and not filters.needs_post_filter:
            serving = self._serving_for(batched)
            if serving is not None:
                extra = max(len(e) for e in exclude) if exclude else 0
                served = self._serve(
                    serving, queries, min(n_rows, k + extra), nprobes, refine_factor
                )
        if served is not None:
            scores, ids = served
            timings["ann_ms"] = (time.perf_counter() - t0) * 1e3
            frames = []
            for q in range(len(queries)):
                pairs = [
                    (oid, float(s))
                    for oid, s in zip(ids[q], np.asarray(scores[q]).tolist(), strict=True)
                    if oid is not None and oid != "" and oid not in exclude[q]
                ][:k]
                frames.append(
                    pl.DataFrame(
                        {"object_id": [p[0] for p in pairs], "score": [p[1] for p in pairs]},
                        schema={"object_id": pl.Utf8, "score": pl.Float64},
                    )
                )
            if details:
                t1 = time.perf_counter()
                all_ids = [oid for f in frames for oid in f["object_id"].to_list()]
                rows = self._fetch(all_ids, columns) if all_ids else None
                frames = [
                    f.join(rows, on="object_id", how="left") if rows is not None else f
                    for f in frames
                ]
                timings["fetch_ms"] = (time.perf_counter() - t1) * 1e3
            return frames, "serving", timings

        factor = 2 if filters.needs_post_filter else 1
        limit = min(n_rows, factor * k + max((len(e) for e in exclude), default=0))
        pending = list(range(len(queries)))
        results: list[pl.DataFrame | None] = [None] * len(queries)
        while pending:
            got = self._lance(queries[pending], limit, where, nprobes, refine_factor, columns)
            again = []
            for q, frame in zip(pending, got, strict=True):
                raw_n = frame.height
                if exclude[q]:
                    frame = frame.filter(~pl.col("object_id").is_in(list(exclude[q])))
                frame = filters.post_filter(frame)
                if frame.height >= k or raw_n < limit or limit >= n_rows:
                    results[q] = frame
                else:
                    again.append(q)
            if not again:
                break
            pending, limit = again, min(n_rows, limit * 4)
        timings["ann_ms"] = (time.perf_counter() - t0) * 1e3
        frames = [f if f is not None else pl.DataFrame() for f in results]
        return frames, "lance", timings

    # ------------------------------------------------------------------ public queries
    def _results(
        self,
        frame: pl.DataFrame,
        k: int,
        query: str,
        filters: Filters,
        version: int,
        timings: dict[str, float],
        path: str,
        explanation: list[dict[str, Any]] | None = None,
    ) -> SearchResults:
        if "ra" in frame.columns:
            frame = _finish(frame, k)
        else:
            frame = frame.sort(["score", "object_id"], descending=[True, False]).head(k)
            frame = frame.with_columns(
                pl.Series("rank", np.arange(1, frame.height + 1, dtype=np.int64))
            ).select(["rank", *[c for c in frame.columns if c != "rank"]])
        return SearchResults(
            frame=frame,
            table_version=version,
            query=query,
            k=k,
            filters=filters.describe(),
            explanation=explanation,
            timings_ms={key: round(v, 3) for key, v in timings.items()},
            path=path,
        )

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        *,
        filters: Filters | str | Sequence[str] | None = None,
        nprobes: int | None = None,
        refine_factor: int | None = None,
        exclude: Sequence[str] = (),
        query: str = "<vector>",
    ) -> SearchResults:
        """Nearest galaxies to a search vector (dim,) (normalised here)."""
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dim or not np.isfinite(vec).all():
            raise QueryError(f"query vector of shape {vec.shape}; expected ({self.dim},) finite")
        norm = float(np.linalg.norm(vec))
        if norm == 0:
            raise QueryError("the query vector is zero")
        k = self._check_k(k)
        flt = self._filters(filters)
        version = self.version
        frames, path, timings = self._neighbours(
            (vec / norm)[None],
            k,
            flt,
            nprobes=self._check_probe("nprobes", nprobes),
            refine_factor=self._check_probe("refine_factor", refine_factor),
            exclude=[set(exclude)],
        )
        return self._results(frames[0], k, query, flt, version, timings, path)

    def search_text(
        self,
        text: str,
        k: int = 10,
        *,
        filters: Filters | str | Sequence[str] | None = None,
        nprobes: int | None = None,
        refine_factor: int | None = None,
    ) -> SearchResults:
        """Galaxies that look like ``text`` describes."""
        clean = self._check_text(text)
        k = self._check_k(k)
        flt = self._filters(filters)
        t0 = time.perf_counter()
        vec = self.text_vectors([clean])
        embed_ms = (time.perf_counter() - t0) * 1e3
        out = self.search_vector(
            vec[0], k, filters=flt, nprobes=nprobes, refine_factor=refine_factor, query=clean
        )
        out.timings_ms = {"embed_ms": round(embed_ms, 3), **out.timings_ms}
        return out

    def search_object(
        self,
        object_id: str,
        k: int = 10,
        *,
        filters: Filters | str | Sequence[str] | None = None,
        nprobes: int | None = None,
        refine_factor: int | None = None,
        include_self: bool = False,
    ) -> SearchResults:
        """Galaxies like the indexed galaxy ``object_id`` (itself left out unless
        ``include_self``)."""
        oid = self._check_object_id(object_id)
        self._check_versions(needs_aligner=False)
        k = self._check_k(k)
        vec = self.object_vectors([oid])[0]
        return self.search_vector(
            vec,
            k,
            filters=filters,
            nprobes=nprobes,
            refine_factor=refine_factor,
            exclude=() if include_self else (oid,),
            query=f"object:{oid}",
        )

    def search_image(
        self,
        path: str | os.PathLike[str],
        k: int = 10,
        *,
        filters: Filters | str | Sequence[str] | None = None,
        nprobes: int | None = None,
        refine_factor: int | None = None,
    ) -> SearchResults:
        """Galaxies like the cutout in ``path`` (FITS; PNG for RGB encoders)."""
        k = self._check_k(k)
        flt = self._filters(filters)
        t0 = time.perf_counter()
        vec = self.image_vector(path)
        embed_ms = (time.perf_counter() - t0) * 1e3
        out = self.search_vector(
            vec,
            k,
            filters=flt,
            nprobes=nprobes,
            refine_factor=refine_factor,
            query=f"image:{os.fspath(path)}",
        )
        out.timings_ms = {"embed_ms": round(embed_ms, 3), **out.timings_ms}
        return out

    def combined_vector(
        self, terms: Sequence[QueryTerm | str]
    ) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
        """``(unit combined vector, explanation, term vectors (n, dim))`` for ``terms``.

        combined = normalise(Σ w_i v_i − Σ w_j v_j) over positive terms i and negative terms
        j; the explanation lists each term with its weight, sign and the cosine between the
        combined vector and the term's vector.
        """
        parsed = [t if isinstance(t, QueryTerm) else parse_term(t) for t in terms]
        if not parsed:
            raise QueryError("a combined query needs at least one term")
        if len(parsed) > MAX_TERMS:
            raise QueryError(f"{len(parsed)} query terms; at most {MAX_TERMS}")
        if all(t.negative for t in parsed):
            raise QueryError(
                "every term is negative; give at least one positive term (what to find)"
            )
        vectors = np.zeros((len(parsed), self.dim), np.float32)
        texts = [(i, t) for i, t in enumerate(parsed) if t.kind == "text"]
        if texts:
            vecs = self.text_vectors([t.value for _, t in texts])
            for (i, _), v in zip(texts, vecs, strict=True):
                vectors[i] = v
        objects = [(i, t) for i, t in enumerate(parsed) if t.kind == "object"]
        if objects:
            self._check_versions(needs_aligner=False)
            vecs = self.object_vectors([t.value for _, t in objects])
            for (i, _), v in zip(objects, vecs, strict=True):
                vectors[i] = v
        for i, t in enumerate(parsed):
            if t.kind == "image":
                vectors[i] = self.image_vector(t.value)
        weights = np.asarray([t.sign * t.weight for t in parsed], np.float64)
        combined = (weights[:, None] * vectors.astype(np.float64)).sum(axis=0)
        norm = float(np.linalg.norm(combined))
        if not math.isfinite(norm) or norm < 1e-6:
            raise QueryError(
                "the query terms cancel out (their weighted sum is zero); change the weights "
                "or the terms"
            )
        unit = (combined / norm).astype(np.float32)
        explanation = [
            {
                "term": t.label,
                "kind": t.kind,
                "value": t.value,
                "weight": t.weight,
                "sign": "-" if t.negative else "+",
                "cosine": round(float(vectors[i] @ unit), 6),
            }
            for i, t in enumerate(parsed)
        ]
        return unit, explanation, vectors

    def search_combined(
        self,
        terms: Sequence[QueryTerm | str],
        k: int = 10,
        *,
        filters: Filters | str | Sequence[str] | None = None,
        nprobes: int | None = None,
        refine_factor: int | None = None,
        include_query_objects: bool = False,
    ) -> SearchResults:
        """The AION-Search "advanced search": positive and negative terms with weights.

        The result frame has one ``term_<i>_cosine`` column per term (the result's similarity
        to that term); :attr:`SearchResults.explanation` lists the terms. Galaxies named by
        object terms are left out unless ``include_query_objects``.
        """
        k = self._check_k(k)
        flt = self._filters(filters)
        t0 = time.perf_counter()
        unit, explanation, vectors = self.combined_vector(terms)
        embed_ms = (time.perf_counter() - t0) * 1e3
        label = " ".join(e["term"] for e in explanation)
        exclude = (
            ()
            if include_query_objects
            else tuple(e["value"] for e in explanation if e["kind"] == "object")
        )
        version = self.version
        frames, path, timings = self._neighbours(
            unit[None],
            k,
            flt,
            nprobes=self._check_probe("nprobes", nprobes),
            refine_factor=self._check_probe("refine_factor", refine_factor),
            exclude=[set(exclude)],
            extra_columns=["vector"],
        )
        frame = frames[0]
        if frame.height:
            if "vector" not in frame.columns:  # the serving path fetched details without it
                frame = frame.join(
                    self._fetch(frame["object_id"].to_list(), ["object_id", "vector"]),
                    on="object_id",
                    how="left",
                )
            mat = np.asarray(frame["vector"].to_list(), np.float32).reshape(-1, self.dim)
            sims = mat @ vectors.T
            frame = frame.with_columns(
                [
                    pl.Series(f"term_{i + 1}_cosine", sims[:, i].astype(np.float64))
                    for i in range(len(explanation))
                ]
            ).drop("vector")
        elif "vector" in frame.columns:
            frame = frame.drop("vector")
        out = self._results(frame, k, label, flt, version, timings, path, explanation)
        out.timings_ms = {"embed_ms": round(embed_ms, 3), **out.timings_ms}
        return out

    def search(
        self,
        query: str | QueryTerm | Sequence[QueryTerm | str],
        k: int = 10,
        **kwargs: Any,
    ) -> SearchResults:
        """Dispatch: a string is a text query, a :class:`QueryTerm` or a list of terms a
        combined query (an object or image term alone searches by that galaxy or file)."""
        if isinstance(query, str):
            return self.search_text(query, k, **kwargs)
        if isinstance(query, QueryTerm):
            query = [query]
        if isinstance(query, Sequence) and len(query) == 1:
            term = query[0] if isinstance(query[0], QueryTerm) else parse_term(query[0])
            if not term.negative:
                if term.kind == "text":
                    return self.search_text(term.value, k, **kwargs)
                if term.kind == "object":
                    return self.search_object(term.value, k, **kwargs)
                return self.search_image(term.value, k, **kwargs)
        if isinstance(query, Sequence):
            return self.search_combined(list(query), k, **kwargs)
        raise QueryError(f"query {query!r}: give text, a QueryTerm or a list of terms")

    def search_many(
        self,
        queries: Sequence[str] | np.ndarray,
        k: int = 10,
        *,
        filters: Filters | str | Sequence[str] | None = None,
        nprobes: int | None = None,
        refine_factor: int | None = None,
        details: bool = True,
    ) -> list[SearchResults]:
        """Many text queries (or an (n, dim) array of query vectors) at once: one embedder
        call and one batched nearest-neighbour call (the FAISS serving copy when unfiltered,
        else LanceDB). ``details=False`` returns only rank, object_id and score (faster)."""
        if isinstance(queries, np.ndarray):
            if queries.ndim != 2 or queries.shape[1] != self.dim:
                raise QueryError(
                    f"query vectors of shape {queries.shape}; expected (n, {self.dim})"
                )
            vecs = queries.astype(np.float32)
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            if not np.isfinite(vecs).all() or (norms == 0).any():
                raise QueryError("query vectors must be finite and non-zero")
            vecs = vecs / norms
            labels = [f"<vector {i}>" for i in range(len(vecs))]
            embed_ms = 0.0
        else:
            if isinstance(queries, str):
                raise QueryError("search_many takes a list of queries; use search_text for one")
            labels = [self._check_text(q) for q in queries]
            t0 = time.perf_counter()
            vecs = self.text_vectors(labels)
            embed_ms = (time.perf_counter() - t0) * 1e3
        k = self._check_k(k)
        flt = self._filters(filters)
        if not len(vecs):
            return []
        version = self.version
        frames, path, timings = self._neighbours(
            vecs,
            k,
            flt,
            nprobes=self._check_probe("nprobes", nprobes),
            refine_factor=self._check_probe("refine_factor", refine_factor),
            details=details,
            batched=True,
        )
        timings = {"embed_ms": embed_ms, **timings}
        per_query = {key: v / len(vecs) for key, v in timings.items()}
        out = []
        for label, frame in zip(labels, frames, strict=True):
            if not details:
                frame = frame.select("object_id", "score")
            out.append(self._results(frame, k, label, flt, version, per_query, path))
        return out

    def search_keyword(
        self,
        text: str,
        k: int = 10,
        *,
        filters: Filters | str | Sequence[str] | None = None,
    ) -> SearchResults:
        """Full-text (BM25) search of the captions; ``score`` is the BM25 score. Galaxies
        without a caption are never found. A query wrapped in double quotes is a phrase query,
        which the caption index (built without word positions) cannot answer: a
        :class:`QueryError`."""
        clean = self._check_text(text)
        k = self._check_k(k)
        flt = self._filters(filters)
        where = flt.to_where(self.table.schema)
        version = self.version
        t0 = time.perf_counter()
        n_rows = self._state().n_rows
        limit = min(n_rows, k * (2 if flt.needs_post_filter else 1))
        while True:
            q = self.table.search(clean, query_type="fts", fts_columns="caption")
            if where:
                q = q.where(where, prefilter=True)
            try:
                raw = q.select(self._columns).limit(limit).to_polars()
            except Exception as exc:  # noqa: BLE001 - e.g. no FTS index yet
                if "phrase quer" in str(exc):
                    # Lance reads a query wrapped in double quotes as a phrase, which needs
                    # word positions; ensure_fts_index builds without them, so rebuilding the
                    # index would not help
                    raise QueryError(
                        f"phrase queries (text in double quotes, here {clean!r}) are not "
                        "supported by the caption index, which does not store word positions; "
                        "drop the quotes to search for the words"
                    ) from exc
                raise SearchError(
                    f"full-text search of {self.table.name} failed ({type(exc).__name__}: "
                    f"{exc}); build the caption index with "
                    "galaxy_assets.search.table.ensure_fts_index"
                ) from exc
            frame = flt.post_filter(raw.rename({"_score": "score"}))
            # the cone's exact distance drops rows after the search: ask for more until k
            # remain or nothing more matches
            if frame.height >= k or raw.height < limit or limit >= n_rows:
                break
            limit = min(n_rows, limit * 4)
        timings = {"fts_ms": (time.perf_counter() - t0) * 1e3}
        return self._results(frame, k, f"keyword:{clean}", flt, version, timings, "fts")


def results_table(results: SearchResults, columns: Mapping[str, str] | None = None) -> pl.DataFrame:
    """A compact frame for printing: rank, score, object_id, ra, dec, mag_r, caption."""
    wanted = columns or {
        "rank": "rank",
        "score": "score",
        "object_id": "object_id",
        "ra": "ra",
        "dec": "dec",
        "mag_r": "mag_r",
        "caption": "caption",
    }
    frame = results.frame
    return frame.select([pl.col(c).alias(a) for c, a in wanted.items() if c in frame.columns])
