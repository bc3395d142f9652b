"""The ``transformers`` captioner: a local vision-language model describes each cutout.

Any model that ``AutoProcessor`` + ``AutoModelForImageTextToText`` load (Qwen2.5-VL, SmolVLM,
Idefics3, LLaVA…) works, from a local folder saved with ``save_pretrained`` or from a hub id
the user configured. Nothing model-specific is coded here: the prompt goes through the
processor's own chat template (one user turn: the picture, then the prompt text), batches are
left-padded for decoder-only generation, and decoding is greedy unless ``do_sample``.

Each reply is checked (:func:`galaxy_assets.captioning.validation.validate_reply`): an empty,
cut-off, refusing or non-English reply becomes a recorded error for that galaxy, never a
placeholder caption. A batch that raises is retried one galaxy at a time, so one bad galaxy
does not sink the others. Configuration mistakes (a folder that does not exist, a folder
without a processor or chat template, a model class transformers cannot load) raise
:class:`CaptionerError` when the captioner is built.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galaxy_assets.captioning.base import CaptionerError, CaptionRequest, CaptionResult, load_prompt
from galaxy_assets.captioning.validation import (
    BAD_IMAGE,
    GENERATION_FAILED,
    RatingResult,
    parse_score,
    validate_image,
    validate_reply,
)

log = logging.getLogger(__name__)

__all__ = ["RatingResult", "TransformersCaptioner"]

# Files that hold a processor (image processor + tokenizer glue) in a saved model folder.
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# A hub id is "owner/name"; anything else that does not exist on disk is a missing folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_RATE_BUDGET = 64  # tokens for "Score: N" and one sentence
_SETTING = "captioner.model"


@dataclass(frozen=True)
class _Reply:
    """What generation produced for one input (one per sample when sampling several)."""

    texts: tuple[str, ...] = ()
    truncated: tuple[bool, ...] = ()
    error: str | None = None


def _resolve_source(model: str) -> tuple[str, bool]:
    """``(what to pass to from_pretrained, is a local folder)``, or a CaptionerError."""
    name = (model or "").strip()
    if not name:
        raise CaptionerError(
            f"{_SETTING} is empty; set it to a model folder saved with save_pretrained or to "
            "a Hugging Face hub id such as 'HuggingFaceTB/SmolVLM-256M-Instruct'"
        )
    path = Path(name).expanduser()
    if path.exists():
        folder = path.resolve()
        if not folder.is_dir():
            raise CaptionerError(
                f"{_SETTING}={model!r}: {folder} is a file, not a model folder; point it at the "
                "folder that save_pretrained wrote (config.json, weights, processor files)"
            )
        return str(folder), True
    # "owner/name" is a hub id, unless "owner" is a folder here: then it is a missing path
    if _HUB_ID.match(name) and not path.parent.is_dir():
        return name, False
    raise CaptionerError(
        f"{_SETTING}={model!r}: the model folder {path.absolute()} does not exist; set "
        f"{_SETTING} to a folder saved with save_pretrained (model, processor and chat "
        "template) or to a Hugging Face hub id of the form 'owner/name'"
    )


def _check_folder(folder: Path) -> None:
    """Fail early, with the folder's name, when a local folder cannot be a VLM."""
    if not (folder / "config.json").is_file():
        raise CaptionerError(
            f"{_SETTING}: {folder} holds no config.json, so it is not a saved model; save the "
            "model there with model.save_pretrained(folder) or point the setting at another folder"
        )
    if not any((folder / f).is_file() for f in _PROCESSOR_FILES):
        raise CaptionerError(
            f"{_SETTING}: {folder} has no processor ({' or '.join(_PROCESSOR_FILES)}); save it "
            "there with AutoProcessor.from_pretrained(<source>).save_pretrained(folder)"
        )


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for value in (
        getattr(model.generation_config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if value is None:
            continue
        ids.extend(int(v) for v in (value if isinstance(value, list | tuple) else [value]))
    return sorted(set(ids))


class TransformersCaptioner:
    """Captions galaxies with a local vision-language model through ``transformers``.

    Parameters
    ----------
    model:
        A folder saved with ``save_pretrained`` (config, weights, processor, chat template),
        or a Hugging Face hub id ``owner/name``. Only a hub id can download anything.
    prompt:
        Name of the versioned prompt in ``galaxy_assets/captioning/prompts/``.
    device, dtype:
        As ``galaxy_assets.runtime.select_device`` / ``select_dtype`` ("auto", "cuda:1",
        "bfloat16"…).
    batch_size:
        Galaxies per ``generate`` call.
    max_new_tokens:
        Generation budget per caption; a reply that reaches it without an end-of-sequence
        token is recorded as cut off.
    do_sample:
        False (default) decodes greedily, so the same galaxy gets the same caption.
    temperature:
        The sampling temperature when sampling (None: the checkpoint's own).
    image_size:
        Resize the rendered RGB picture to this many pixels a side before the processor
        sees it (None: keep the cutout's size; the processor still applies its own resizing).
    local_files_only:
        None: True for a local folder, False for a hub id (downloads into the Hugging Face
        cache). True with a hub id loads only from that cache.
    trust_remote_code:
        Allow model code shipped with the checkpoint (off by default).
    rate_prompt:
        Name of the prompt used by :meth:`rate`; it must hold a ``{question}`` placeholder.
    seed:
        Seeds sampling (``do_sample=True`` or ``rate(n_samples>1)``) without touching the
        global random state.
    """

    backend = "transformers"

    def __init__(
        self,
        model: str,
        prompt: str = "describe_v1",
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 8,
        max_new_tokens: int = 200,
        do_sample: bool = False,
        image_size: int | None = None,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        *,
        temperature: float | None = None,
        rate_prompt: str = "rate_v1",
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise CaptionerError(f"captioner.batch_size={batch_size}: must be at least 1")
        if max_new_tokens < 1:
            raise CaptionerError(f"captioner.max_new_tokens={max_new_tokens}: must be at least 1")
        if image_size is not None and image_size < 8:
            raise CaptionerError(
                f"captioner.image_size={image_size}: must be None (keep the cutout size) or >= 8"
            )
        self.prompt = load_prompt(prompt)
        self.rate_prompt = load_prompt(rate_prompt)
        if "{question}" not in self.rate_prompt.text:
            raise CaptionerError(
                f"prompt {rate_prompt!r} has no {{question}} placeholder; rate() needs one"
            )
        self.prompt_sha = self.prompt.sha
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.do_sample = bool(do_sample)
        if temperature is not None and not float(temperature) > 0:
            raise CaptionerError(
                f"captioner.temperature={temperature}: must be > 0 when sampling (0 means "
                "greedy decoding: leave it out)"
            )
        self.temperature = float(temperature) if temperature is not None else None
        self.image_size = image_size
        self.seed = int(seed)

        source, is_local = _resolve_source(model)
        self.model_id = source
        if is_local:
            _check_folder(Path(source))
            local_only = True
        else:
            local_only = bool(local_files_only)

        from galaxy_assets.runtime import RuntimeConfigError, select_device, select_dtype

        try:
            self.device = select_device(device)
            self.torch_dtype = select_dtype(dtype, self.device)
        except RuntimeConfigError as exc:
            raise CaptionerError(str(exc)) from exc

        started = time.perf_counter()
        self._is_local = is_local
        self.processor = self._load_processor(source, local_only, trust_remote_code)
        self.model = self._load_model(source, local_only, trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # decoder-only batches generate after the prompt
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token is None:
                raise CaptionerError(
                    f"{_SETTING}: the tokenizer of {source} has neither a pad nor an eos token; "
                    "batched generation needs one (set tokenizer.pad_token and save it again)"
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_token_ids = _eos_ids(self.model, self.tokenizer)
        self._encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        log.info(
            "loaded %s (%s) on %s as %s in %.1f s; prompt %s (%s)",
            source,
            type(self.model).__name__,
            self.device,
            dtype,
            time.perf_counter() - started,
            self.prompt.name,
            self.prompt_sha,
        )

    # ------------------------------------------------------------------ loading
    def _load_processor(self, source: str, local_only: bool, trust_remote_code: bool) -> Any:
        from transformers import AutoProcessor
        from transformers.processing_utils import ProcessorMixin

        try:
            processor = AutoProcessor.from_pretrained(
                source, local_files_only=local_only, trust_remote_code=trust_remote_code
            )
        except Exception as exc:  # noqa: BLE001 - any failure is a configuration error
            raise CaptionerError(
                f"{_SETTING}: could not load a processor from {source}: "
                f"{type(exc).__name__}: {str(exc).strip().rstrip('.')}. {self._where_hint()}"
            ) from exc
        if (
            not isinstance(processor, ProcessorMixin)
            or getattr(processor, "image_processor", None) is None
        ):
            raise CaptionerError(
                f"{_SETTING}: {source} has no image processor (AutoProcessor gave "
                f"{type(processor).__name__}); it is not a vision-language model folder, or its "
                "preprocessor_config.json / processor_config.json is missing"
            )
        template = processor.chat_template or getattr(processor.tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise CaptionerError(
                f"{_SETTING}: {source} has no chat template (chat_template.jinja, or "
                "chat_template in processor_config.json / tokenizer_config.json); save the "
                "processor of an instruction-tuned model, or set processor.chat_template before "
                "save_pretrained"
            )
        self._chat_template = template
        return processor

    def _load_model(self, source: str, local_only: bool, trust_remote_code: bool) -> Any:
        from transformers import AutoModelForImageTextToText

        try:
            model = AutoModelForImageTextToText.from_pretrained(
                source,
                dtype=self.torch_dtype,
                local_files_only=local_only,
                trust_remote_code=trust_remote_code,
            )
        except Exception as exc:  # noqa: BLE001
            raise CaptionerError(
                f"{_SETTING}: could not load an image-text-to-text model from {source}: "
                f"{type(exc).__name__}: {str(exc).strip().rstrip('.')}. The model must be one "
                "AutoModelForImageTextToText supports (Qwen2.5-VL, SmolVLM, Idefics3, LLaVA…), "
                "or set trust_remote_code=True for a checkpoint that ships its own code. "
                + self._where_hint()
            ) from exc
        return model.to(self.device).eval()

    def _where_hint(self) -> str:
        if self._is_local:
            return "Check that the folder was written by save_pretrained and is complete."
        return (
            "Check the hub id and your network; with local_files_only=True or HF_HUB_OFFLINE=1 "
            f"only the Hugging Face cache is read. Or set {_SETTING} to a local folder."
        )

    # ------------------------------------------------------------------ public API
    def caption(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        """One result per request, in order: a caption, or the reason there is none."""
        results: list[CaptionResult | None] = [None] * len(requests)
        replies = self._run(
            requests,
            self.prompt.text,
            self.max_new_tokens,
            1,
            self.do_sample,
            results_for_bad=results,
        )
        for index, reply in replies.items():
            req = requests[index]
            if reply.error is not None:
                results[index] = CaptionResult(req.object_id, None, reply.error)
                continue
            caption, error = validate_reply(reply.texts[0], reply.truncated[0])
            results[index] = CaptionResult(req.object_id, caption, error)
        done = [r for r in results if r is not None]
        assert len(done) == len(requests)
        failed = sum(1 for r in done if r.error is not None)
        if failed:
            log.info("%d of %d galaxies got no caption", failed, len(done))
        return done

    def rate(
        self,
        requests: Sequence[CaptionRequest],
        question: str,
        n_samples: int = 1,
        *,
        max_new_tokens: int | None = None,
    ) -> list[RatingResult]:
        """Rate each galaxy 1–10 for ``question`` (VLM re-ranking), one result per request.

        The rating prompt asks for "Score: N" on its first line. With ``n_samples`` 1 the
        decoding is as configured (greedy by default); with more, that many replies are
        sampled (seeded) and the parsed scores averaged. A galaxy none of whose replies
        holds a score gets ``error`` set and ``score`` None.
        """
        if n_samples < 1:
            raise CaptionerError(f"rate: n_samples={n_samples} must be at least 1")
        if not question or not question.strip():
            raise CaptionerError("rate: the question is empty")
        text = self.rate_prompt.text.replace("{question}", question.strip())
        budget = int(max_new_tokens or min(self.max_new_tokens, _RATE_BUDGET))
        sample = self.do_sample or n_samples > 1
        bad: list[CaptionResult | None] = [None] * len(requests)
        replies = self._run(requests, text, budget, n_samples, sample, results_for_bad=bad)
        out: list[RatingResult] = []
        for index, req in enumerate(requests):
            if bad[index] is not None:
                out.append(RatingResult(req.object_id, None, (), bad[index].error))
                continue
            reply = replies[index]
            if reply.error is not None:
                out.append(RatingResult(req.object_id, None, (), reply.error))
                continue
            scores, errors = [], []
            for reply_text in reply.texts:
                value, error = parse_score(reply_text)
                if value is None:
                    errors.append(error)
                else:
                    scores.append(value)
            if scores:
                out.append(RatingResult(req.object_id, float(np.mean(scores)), tuple(scores)))
            else:
                out.append(RatingResult(req.object_id, None, (), errors[0]))
        return out

    def close(self) -> None:
        """Free the model (and the GPU memory it holds)."""
        model = getattr(self, "model", None)
        if model is None:
            return
        self.model = None
        del model
        if str(getattr(self, "device", "cpu")).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def __enter__(self) -> TransformersCaptioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TransformersCaptioner(model={self.model_id!r}, prompt={self.prompt.name!r}, "
            f"device={self.device!r}, batch_size={self.batch_size})"
        )

    # ------------------------------------------------------------------ internals
    def render(self, request: CaptionRequest) -> Any:
        """The RGB PIL picture the model sees for ``request``."""
        from PIL import Image

        from galaxy_assets.survey.rgb import lupton_rgb

        picture = Image.fromarray(lupton_rgb(request.image, request.bands))
        if self.image_size is not None and picture.size != (self.image_size, self.image_size):
            picture = picture.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        return picture

    def _run(
        self,
        requests: Sequence[CaptionRequest],
        text: str,
        budget: int,
        n_samples: int,
        do_sample: bool,
        *,
        results_for_bad: list[CaptionResult | None],
    ) -> dict[int, _Reply]:
        """Render, batch and generate; bad images are written into ``results_for_bad``."""
        if self.model is None:
            raise CaptionerError("this captioner was closed; build a new one")
        replies: dict[int, _Reply] = {}
        for start in range(0, len(requests), self.batch_size):
            indices, pictures = [], []
            for index in range(start, min(start + self.batch_size, len(requests))):
                req = requests[index]
                problem = validate_image(req.image, req.bands)
                if problem is None:
                    try:
                        pictures.append(self.render(req))
                        indices.append(index)
                        continue
                    except Exception as exc:  # noqa: BLE001 - recorded for this galaxy
                        problem = f"{BAD_IMAGE}: could not render an RGB picture: {exc}"
                log.warning("galaxy %s skipped: %s", req.object_id, problem)
                results_for_bad[index] = CaptionResult(req.object_id, None, problem)
            if not pictures:
                continue
            batch_replies = self._generate_safely(
                pictures,
                text,
                budget,
                n_samples,
                do_sample,
                [requests[i].object_id for i in indices],
            )
            replies.update(zip(indices, batch_replies, strict=True))
        return replies

    def _generate_safely(
        self,
        pictures: list[Any],
        text: str,
        budget: int,
        n_samples: int,
        do_sample: bool,
        object_ids: list[str],
    ) -> list[_Reply]:
        try:
            return self._generate(pictures, text, budget, n_samples, do_sample)
        except Exception as exc:  # noqa: BLE001 - fall back to one galaxy at a time
            if len(pictures) == 1:
                log.warning("generation failed for galaxy %s: %s", object_ids[0], exc)
                return [_Reply(error=f"{GENERATION_FAILED}: {type(exc).__name__}: {exc}")]
            log.warning(
                "a batch of %d failed (%s: %s); retrying one galaxy at a time",
                len(pictures),
                type(exc).__name__,
                exc,
            )
            self._free_cache()
        return [
            self._generate_safely([p], text, budget, n_samples, do_sample, [oid])[0]
            for p, oid in zip(pictures, object_ids, strict=True)
        ]

    def _free_cache(self) -> None:
        if str(self.device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _generate(
        self, pictures: list[Any], text: str, budget: int, n_samples: int, do_sample: bool
    ) -> list[_Reply]:
        import torch

        conversations = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            for _ in pictures
        ]
        prompts = [
            self.processor.apply_chat_template(
                conv,
                chat_template=self._chat_template,
                add_generation_prompt=True,
                tokenize=False,
            )
            for conv in conversations
        ]
        kwargs: dict[str, Any] = {"padding": True, "return_tensors": "pt"}
        bos = self.tokenizer.bos_token
        if bos and prompts[0].startswith(bos):  # the template wrote it already
            kwargs["add_special_tokens"] = False
        inputs = self.processor(text=prompts, images=[[p] for p in pictures], **kwargs)
        inputs = inputs.to(self.device, dtype=self.torch_dtype)
        generation: dict[str, Any] = {
            "max_new_tokens": budget,
            "do_sample": do_sample,
            "num_return_sequences": n_samples,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if self.eos_token_ids:
            generation["eos_token_id"] = self.eos_token_ids
        if not do_sample:  # silence the sampling settings a checkpoint may carry
            generation.update(temperature=None, top_p=None, top_k=None)
        elif self.temperature is not None:
            generation["temperature"] = self.temperature
        with torch.inference_mode(), torch.random.fork_rng(devices=self._rng_devices()):
            if do_sample:
                torch.manual_seed(self.seed)
            output = self.model.generate(**inputs, **generation)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        new = sequences if self._encoder_decoder else sequences[:, inputs["input_ids"].shape[1] :]
        new = new.cpu()
        if self.eos_token_ids:
            ended = torch.isin(new, torch.tensor(self.eos_token_ids)).any(dim=1)
        else:
            ended = torch.zeros(new.shape[0], dtype=torch.bool)
        truncated = (~ended) & (new.shape[1] >= budget)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        replies = []
        for k in range(len(pictures)):
            rows = range(k * n_samples, (k + 1) * n_samples)
            replies.append(
                _Reply(
                    texts=tuple(texts[r].strip() for r in rows),
                    truncated=tuple(bool(truncated[r]) for r in rows),
                )
            )
        return replies

    def _rng_devices(self) -> list[int]:
        if str(self.device).startswith("cuda"):
            import torch

            return [
                torch.cuda.current_device()
                if ":" not in self.device
                else int(self.device.split(":", 1)[1])
            ]
        return []
