"""A tiny random-weight LLaVA, saved the way a user's model folder is.

CLIP vision tower (32 px, 8 px patches: 16 image tokens) + a 2-layer Llama, a WordLevel
tokenizer trained here on a few astronomy sentences with an ``<image>`` special token, and
a chat template. :func:`build_tiny_llava` writes config, weights, generation config,
processor, tokenizer and chat template with ``save_pretrained``, so the captioner loads it
through ``AutoProcessor`` + ``AutoModelForImageTextToText`` like any real checkpoint.
It generates on a CPU in well under a second. Its replies are gibberish made of the
training words: tests check structure, never content.

Usable outside pytest too::

    python -c "import galaxy_assets; from galaxy_assets_tests.captioning.tiny_vlm import \
build_tiny_llava; print(build_tiny_llava('/tmp/tiny-llava'))"
"""

from __future__ import annotations

from pathlib import Path

import galaxy_assets  # noqa: F401 - installs the torchvision import guard before transformers

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN)
IMAGE_SIZE = 32
PATCH_SIZE = 8
# "default" drops the CLS token: (32 / 8)**2 = 16 image tokens. The processor and the model
# must agree on it, or the number of <image> tokens and image features differ.
FEATURE_STRATEGY = "default"

CORPUS = (
    "user assistant system",
    "You are an expert extragalactic astronomer . Describe the central object in this cutout .",
    "The galaxy is a smooth elliptical with a bright bulge and no spiral arms .",
    "A face-on spiral galaxy with two tightly wound arms , a bar and a ring .",
    "An edge-on disc with a dust lane ; tidal tails and a close companion suggest a merger .",
    "Clumpy star-forming regions , a foreground star and a lensing arc around the red galaxy .",
    "Score : 1 2 3 4 5 6 7 8 9 10 Question",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + " "
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def build_tiny_llava(path: str | Path, seed: int = 0, *, one_word: bool = False) -> Path:
    """Build the tiny LLaVA with weights drawn from ``seed`` and save it into ``path``.

    ``one_word=True`` lists every word token as an end-of-sequence token in the saved
    generation config, so the model answers exactly one word and stops, whatever its random
    weights: a deterministic way to exercise the path of a reply that ends normally.
    """
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=CHAT_TEMPLATE,
    )
    n_image_tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=n_image_tokens,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_feature_layer=-1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if one_word:
        special = set(tokenizer.all_special_ids) | {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}
        words = [i for i in range(len(tokenizer)) if i not in special]
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, *words]
    processor.save_pretrained(out)
    model.save_pretrained(out)
    return out
