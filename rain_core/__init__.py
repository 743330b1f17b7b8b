"""rain: align a frozen local language model at decoding time with RAIN (Rewindable
Auto-regressive INference, Li et al., ICLR 2024)."""

from .config import RainConfig, Scoring
from .decoder import RainDecoder, RainResult
from .evaluators import CallableEvaluator, Evaluator, JudgeEvaluator, SelfEvaluator
from .lm import ContextTooLongError, LanguageModel, TransformersLM, load_default_model, load_model
from .principles import BUILTIN_PRINCIPLES, Principle, load_principle

__all__ = [
    "BUILTIN_PRINCIPLES",
    "CallableEvaluator",
    "ContextTooLongError",
    "Evaluator",
    "JudgeEvaluator",
    "LanguageModel",
    "Principle",
    "RainConfig",
    "RainDecoder",
    "RainResult",
    "Scoring",
    "SelfEvaluator",
    "TransformersLM",
    "load_default_model",
    "load_model",
    "load_principle",
]
__version__ = "0.1.0"
