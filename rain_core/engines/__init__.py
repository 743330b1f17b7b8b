"""Engines below the ``LanguageModel`` seam (``rain_core.protocols``).

- ``TransformersLM`` (``rain_core.engines.transformers_lm``): a transformers causal LM in this
  process, with a prefix-aware KV cache, batched candidates and CPU small-batch linear layers.
- ``VLLMEngine`` (``rain_core.engines.vllm``): a vLLM server over its OpenAI-compatible API, with
  the server's automatic prefix caching as the KV cache.
- ``load_model`` / ``load_default_model`` / ``shared_default_model`` (``rain_core.engines.loading``),
  the embedded default model (``rain_core.engines.embedded``) and the sentence encoder
  (``rain_core.engines.encoder``); ``load_guard`` / ``served_guard`` (``rain_core.engines.guards``),
  guard evaluators over a model loaded here or served by vLLM.

Names are imported lazily, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TransformersLM": "transformers_lm",
    "PrefixKVCache": "kv_cache",
    "load_model": "loading",
    "load_default_model": "loading",
    "shared_default_model": "loading",
    "materialize_default_model": "embedded",
    "SentenceEncoder": "encoder",
    "load_default_encoder": "encoder",
    "VLLMEngine": "vllm",
    "load_guard": "guards",
    "served_guard": "guards",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
