"""Guard models as evaluators: a safety classifier's verdict on a reply (or a request) as a score.

- ``presets``: each family's format (Llama Guard 3, ShieldGemma, Granite Guardian, Qwen3Guard) and
  the transcript's turns;
- ``prompts``: rendering a guard prompt with the untrusted text kept as text (``GuardFormat``);
- ``evaluator``: reading the verdict and scoring it (``GuardEvaluator``).
"""

from .evaluator import GuardEvaluator
from .presets import GUARD_PRESETS, GuardPreset, infer_preset, named_preset
from .prompts import GuardFormat

__all__ = ["GUARD_PRESETS", "GuardEvaluator", "GuardFormat", "GuardPreset", "infer_preset", "named_preset"]
