"""The captioner protocol, the request/result records, prompts and errors."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


class CaptionerError(Exception):
    """A captioner is misconfigured (missing model folder, no processor, bad endpoint URL…).

    Raised at start-up. Failures for one galaxy are never raised: they are returned as a
    CaptionResult with ``error`` set and ``caption`` None.
    """


@dataclass(frozen=True)
class CaptionRequest:
    """One galaxy to describe: its pixels (B, H, W) float32 in the order of ``bands``."""

    object_id: str
    image: np.ndarray
    bands: tuple[str, ...]


@dataclass(frozen=True)
class CaptionResult:
    """The caption of one galaxy, or the reason there is none (``error``)."""

    object_id: str
    caption: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.caption is not None and self.error is None


@runtime_checkable
class Captioner(Protocol):
    """Describes galaxies. ``caption`` returns one result per request, in order; a failed
    galaxy gets ``error`` set and no caption (never a placeholder)."""

    backend: str  # "transformers" | "openai" | "morphology"
    model_id: str  # model name / folder / describer version
    prompt_sha: str  # sha256 of the prompt text (or the describer's template set)

    def caption(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


def load_prompt(name: str = "describe_v1") -> Prompt:
    """A versioned prompt from ``galaxy_assets/captioning/prompts/<name>.txt``, or your own
    prompt file when ``name`` is a path to one (``*.txt``; for another survey's bands, pixel
    scale or units). Either way its sha is stored with every caption."""
    own = Path(name).expanduser()
    if name.endswith(".txt") or "/" in name or os.sep in name:
        if not own.is_file():
            raise CaptionerError(
                f"prompt file {name!r} does not exist; give a text file holding the prompt, "
                "or the name of a packaged prompt (e.g. describe_v1)"
            )
        text = own.read_text(encoding="utf-8").strip()
        if not text:
            raise CaptionerError(f"prompt file {name!r} is empty")
        return Prompt(own.stem, text)
    folder = resources.files("galaxy_assets.captioning") / "prompts"
    path = folder / f"{name}.txt"
    if not path.is_file():
        available = sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))
        raise CaptionerError(
            f"prompt {name!r} not found in {folder}; available prompts: {available}, or "
            "give the path of your own prompt file (*.txt)"
        )
    return Prompt(name, path.read_text(encoding="utf-8").strip())


# a sentence ends at . ! ? followed by space and a capital letter ("about 2.4 arcsec" and
# "Sérsic index about 2.1)" stay inside their sentence)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\u00C0-\u00DE])")
MIN_SENTENCE_WORDS = 3  # shorter fragments ("S0.") carry no description


def caption_sentences_of(text: str, min_words: int = MIN_SENTENCE_WORDS) -> list[str]:
    """The sentences of a caption with at least ``min_words`` words; none when fewer than two
    remain (the whole caption already says it)."""
    parts = [p.strip() for p in _SENTENCE_END.split(text)]
    parts = [p for p in parts if len(p.split()) >= min_words]
    return parts if len(parts) > 1 else []
