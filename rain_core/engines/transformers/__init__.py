"""The in-process engine: ``TransformersLM``, the ``LanguageModel`` protocol over a transformers causal
LM (``lm``), with a prefix-aware KV cache (``kv_cache``), packed batches of many rows over one shared
prefix (``packed``, ``packed_requests``), per-row sampling (``row_sampling``), CPU small-batch linear
layers (``cpu_linear``), its loader (``loading``) and GGUF dequantisation (``gguf``).

Names are imported on first use, so importing this package does not import torch. Importing it
chooses the CPU threads before torch starts its thread pool (``threads``: the cores this process may
use, fewer while other work keeps some of them busy; ``RAIN_THREADS=off`` leaves PyTorch's defaults).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import threads as _threads

_threads.prepare()  # before any module of this engine imports torch

_LAZY = {
    "TransformersLM": "lm",
    "PrefixKVCache": "kv_cache",
    "load_model": "loading",
    "ModelNotFoundError": "loading",
    "UnsupportedModelError": "loading",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
