"""Embeddings: text embedders (captions, queries) and image encoders.

Plain Python/PyTorch; knows nothing of Dagster. The text side lives in
:mod:`galaxy_assets.embedding.text`; its public names are re-exported here.
"""

from galaxy_assets.embedding.text import (
    DEFAULT_MODEL_NAME,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    TextEmbedder,
    TextEmbedderError,
    build_text_embedder,
    default_model_path,
)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "TextEmbedder",
    "TextEmbedderError",
    "build_text_embedder",
    "default_model_path",
]
