"""Evaluators: ``score(prompt, response) -> value in [-1, 1]``, higher is better.

- ``SelfEvaluator`` and ``JudgeEvaluator`` (``judge``): a language model (the generator itself, or
  another one) answers a multiple-choice question about the reply, in both option orders.
- ``CallableEvaluator`` (``callable``): any function ``fn(prompt, response) -> float``.
- ``GuardEvaluator`` and its presets (``guards/``): a safety classifier's verdict as a score.
"""

from .callable import CallableEvaluator
from .guards import GUARD_PRESETS, GuardEvaluator, GuardFormat, GuardPreset
from .judge import JudgeEvaluator, SelfEvaluator

__all__ = [
    "GUARD_PRESETS",
    "CallableEvaluator",
    "GuardEvaluator",
    "GuardFormat",
    "GuardPreset",
    "JudgeEvaluator",
    "SelfEvaluator",
]
