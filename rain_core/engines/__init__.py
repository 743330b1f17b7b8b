"""Engines below the ``LanguageModel`` seam (``rain_core.protocols``). They know the protocols and their
own helpers, nothing of the search; ``rain_core.loaders`` composes them with the core.

- ``transformers/``: ``TransformersLM``, a transformers causal LM in this process, with a prefix-aware
  KV cache, packed batches of candidates and CPU small-batch linear layers.
- ``vllm/``: ``VLLMEngine``, a vLLM server over its OpenAI-compatible API, with the server's automatic
  prefix caching as the KV cache.
- Shared here: ``common`` (counters, the suffix-token table, one call at a time, out-of-memory),
  ``hf_text`` (the text side over a Hugging Face tokenizer) and ``encoder`` (``SentenceEncoder``,
  the similarity update's all-MiniLM-L6-v2).

Names are imported lazily, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TransformersLM": "transformers",
    "PrefixKVCache": "transformers",
    "VLLMEngine": "vllm",
    "SentenceEncoder": "encoder",
    "load_default_encoder": "encoder",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
