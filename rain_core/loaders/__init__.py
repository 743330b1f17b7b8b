"""Composition: the one place that knows both the core and the engines. The CLI, the adapters,
``rain serve`` and users load models, guards and encoders from here (``rain_core`` re-exports them).

- ``load_model``, ``served_model``, ``load_default_model``, ``shared_default_model`` (``models``):
  language models in this process or on a vLLM server;
- ``load_guard``, ``served_guard`` (``guards``): guard evaluators over a local or served model;
- ``load_default_encoder``, ``SentenceEncoder``, ``served_encoder`` (``encoders``): the similarity
  update's encoder, in this process or on a server's ``/v1/embeddings``;
- ``materialize_default_model`` (``embedded``): the embedded model's one-time set-up.

Names are imported on first use, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_model": "models",
    "load_default_model": "models",
    "shared_default_model": "models",
    "served_model": "models",
    "load_guard": "guards",
    "served_guard": "guards",
    "load_default_encoder": "encoders",
    "SentenceEncoder": "encoders",
    "served_encoder": "encoders",
    "materialize_default_model": "embedded",
    "DEFAULT_MODEL_NAME": "embedded",
    "MissingModelError": "embedded",
    "ModelNotFoundError": "models",
    "UnsupportedModelError": "models",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
