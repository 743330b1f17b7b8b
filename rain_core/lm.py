"""Old import path (rain 0.1): the protocol now lives in ``rain_core.protocols`` and the engine in
``rain_core.engines``. Kept as re-exports for one release."""

from .engines.common import EngineStats
from .engines.kv_cache import PrefixKVCache
from .engines.loading import load_default_model, load_model, shared_default_model
from .engines.transformers_lm import TransformersLM
from .protocols import ContextTooLongError, Continuation, LanguageModel

__all__ = [
    "ContextTooLongError",
    "Continuation",
    "EngineStats",
    "LanguageModel",
    "PrefixKVCache",
    "TransformersLM",
    "load_default_model",
    "load_model",
    "shared_default_model",
]
