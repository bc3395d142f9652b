"""Build the configured captioner: one registry, one way to build any backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from galaxy_assets.captioning.base import Captioner, CaptionerError


def _morphology(cfg: dict[str, Any]) -> Captioner:
    from galaxy_assets.captioning.describer import MorphologyDescriber

    return MorphologyDescriber(seed=cfg.get("seed", 0), workers=cfg.get("workers", 1))


def _transformers(cfg: dict[str, Any]) -> Captioner:
    from galaxy_assets.captioning.transformers_backend import TransformersCaptioner

    if not cfg.get("model"):
        raise CaptionerError(
            "captioner.backend='transformers' needs captioner.model: a local model folder "
            "or a hub id (e.g. HuggingFaceTB/SmolVLM-256M-Instruct)"
        )
    return TransformersCaptioner(
        cfg["model"],
        prompt=cfg.get("prompt", "describe_v1"),
        device=cfg.get("device", "auto"),
        dtype=cfg.get("dtype", "float32"),
        batch_size=cfg.get("batch_size", 8),
        max_new_tokens=cfg.get("max_new_tokens", 300),
        do_sample=float(cfg.get("temperature") or 0.0) > 0.0,  # 0: greedy decoding
        temperature=float(cfg["temperature"]) if cfg.get("temperature") else None,
        image_size=cfg.get("image_size"),
    )


def _openai(cfg: dict[str, Any]) -> Captioner:
    from galaxy_assets.captioning.openai_backend import OpenAICaptioner

    if not cfg.get("base_url") or not cfg.get("model"):
        raise CaptionerError(
            "captioner.backend='openai' needs captioner.base_url (e.g. http://127.0.0.1:8000/v1 "
            "for vLLM) and captioner.model"
        )
    return OpenAICaptioner(
        cfg["base_url"],
        cfg["model"],
        api_key=cfg.get("api_key"),
        prompt=cfg.get("prompt", "describe_v1"),
        max_tokens=cfg.get("max_new_tokens", 300),
        max_words=cfg.get("max_words", 200),
        concurrency=cfg.get("concurrency", 4),
        request_budget=cfg.get("request_budget"),
        temperature=cfg.get("temperature", 0.0),
        timeout_s=cfg.get("timeout_s", 60.0),
        max_retries=cfg.get("max_retries", 4),
        image_size=cfg.get("image_size"),
    )


CAPTIONERS: dict[str, Callable[[dict[str, Any]], Captioner]] = {
    "morphology": _morphology,
    "transformers": _transformers,
    "openai": _openai,
}
LOCAL_BACKENDS = frozenset({"transformers"})  # run in the `gpu` pool


def build_captioner(backend: str, **cfg: Any) -> Captioner:
    """The captioner named by ``backend`` (morphology, transformers, openai) with ``cfg``."""
    try:
        factory = CAPTIONERS[backend]
    except KeyError:
        raise CaptionerError(
            f"captioner.backend={backend!r} is unknown; use one of {sorted(CAPTIONERS)}"
        ) from None
    return factory(cfg)
