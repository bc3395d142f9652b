"""Captioning: natural-language descriptions of galaxy cutouts.

One protocol (``Captioner``), one class per backend: ``transformers`` (a local VLM),
``openai`` (any OpenAI-compatible endpoint) and ``morphology`` (the offline describer that
writes what it measures on the pixels). Plain Python; knows nothing of Dagster.
"""
