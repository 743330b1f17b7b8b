"""Language models as users load them: any causal LM folder or cached hub id in this process
(``load_model``, the in-process engine's loader, every option checked before any weights load), a
model a vLLM server serves (``served_model``), and the embedded default model
(``load_default_model``, and one copy per process shared by every caller: ``shared_default_model``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..engines.transformers.lm import TransformersLM
from ..engines.transformers.loading import ModelNotFoundError, UnsupportedModelError, load_model
from .embedded import DEFAULT_MODEL_NAME, materialize_default_model

if TYPE_CHECKING:
    from ..engines.vllm import VLLMEngine

__all__ = [
    "ModelNotFoundError",
    "UnsupportedModelError",
    "load_default_model",
    "load_model",
    "served_model",
    "shared_default_model",
]


def served_model(base_url: str, model: str | None = None, **engine_options: Any) -> VLLMEngine:
    """The model a vLLM server at ``base_url`` serves, as a ``VLLMEngine`` (``model`` None: the one it
    serves; ``engine_options``: ``api_key``, ``tokenizer``, ``seed_mode``, ...)."""
    from ..engines.vllm import VLLMEngine

    return VLLMEngine(base_url, model, **engine_options)


def load_default_model(**options: Any) -> TransformersLM:
    """The embedded SmolLM2-135M-Instruct, offline (materialised once into the user cache).
    ``options`` are ``load_model``'s (default ``device="cpu"``)."""
    folder = materialize_default_model()
    if "device_map" not in options:
        options.setdefault("device", "cpu")
    options.setdefault("name", DEFAULT_MODEL_NAME)
    return load_model(str(folder), **options)


_SHARED_DEFAULT: TransformersLM | None = None
_SHARED_LOCK = threading.Lock()


def shared_default_model() -> TransformersLM:
    """The embedded model, loaded once per process and shared by every caller (the adapters'
    ``from_default()`` constructors use it, so LangChain and LlamaIndex share one copy)."""
    global _SHARED_DEFAULT
    with _SHARED_LOCK:
        if _SHARED_DEFAULT is None:
            _SHARED_DEFAULT = load_default_model()
        return _SHARED_DEFAULT
