"""rain: align a frozen local language model at decoding time with RAIN (Rewindable Auto-regressive
INference, Li et al., ICLR 2024).

The core (config, tree, search, decoder, evaluators, protocols) imports no torch; the engines
(``TransformersLM``, ``VLLMEngine``) and the loaders (``load_model``, ``load_default_model``,
``load_guard``, ...) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .baselines import (
    BestOfNDecoder,
    BlockwiseBestOfKDecoder,
    CheckRetryDecoder,
    EscalatingDecoder,
    PlainDecoder,
)
from .chat import TemplateSupport, template_support, transcript
from .config import ConfigError, RainConfig, Scoring
from .decoder import RainDecoder
from .decoding import Decoder
from .evaluators import GUARD_PRESETS, CallableEvaluator, GuardEvaluator, GuardPreset, JudgeEvaluator, SelfEvaluator
from .principles import BUILTIN_PRINCIPLES, Principle, load_principle
from .protocols import (
    ContextTooLongError,
    Continuation,
    DecodeCancelled,
    Encoder,
    EngineError,
    Evaluator,
    EvaluatorError,
    LanguageModel,
)
from .results import RainResult
from .streams import AsyncRainStream, RainStream

_LAZY = {
    "TransformersLM": "engines",
    "VLLMEngine": "engines",
    "load_model": "loaders",
    "load_default_model": "loaders",
    "shared_default_model": "loaders",
    "load_guard": "loaders",
    "served_guard": "loaders",
    "served_encoder": "loaders",
}

__all__ = [
    "BUILTIN_PRINCIPLES",
    "BestOfNDecoder",
    "BlockwiseBestOfKDecoder",
    "CallableEvaluator",
    "CheckRetryDecoder",
    "ConfigError",
    "ContextTooLongError",
    "Continuation",
    "DecodeCancelled",
    "Decoder",
    "Encoder",
    "EscalatingDecoder",
    "EngineError",
    "Evaluator",
    "EvaluatorError",
    "GUARD_PRESETS",
    "GuardEvaluator",
    "GuardPreset",
    "JudgeEvaluator",
    "LanguageModel",
    "PlainDecoder",
    "Principle",
    "RainConfig",
    "RainDecoder",
    "RainResult",
    "RainStream",
    "AsyncRainStream",
    "Scoring",
    "SelfEvaluator",
    "TemplateSupport",
    "TransformersLM",
    "VLLMEngine",
    "load_default_model",
    "load_guard",
    "load_model",
    "load_principle",
    "served_encoder",
    "served_guard",
    "shared_default_model",
    "template_support",
    "transcript",
]
__version__ = "0.4.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
