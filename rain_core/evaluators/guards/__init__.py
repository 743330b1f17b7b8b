"""Guard models as evaluators: a safety classifier's verdict on a reply (or a request) as a score.

- ``presets``: each family's format (Llama Guard 3, ShieldGemma, Granite Guardian, Qwen3Guard), the
  family check's fields, and the preset from a model's name;
- ``wording``: the instructions the presets send, word for word as their publishers wrote them;
- ``turns``: RAIN's ``Role: content`` transcript read back as turns;
- ``tokens``: a prompt in the tokens the guard's tokenizer gives it in one piece, and the verdict tokens;
- ``prompts``: rendering a guard prompt with the untrusted text kept as text (``GuardFormat``);
- ``evaluator``: reading the verdict and scoring it (``GuardEvaluator``).
"""

from .evaluator import GuardEvaluator
from .presets import GUARD_PRESETS, GuardPreset, infer_preset, named_preset, shieldgemma
from .prompts import GuardFormat

__all__ = [
    "GUARD_PRESETS",
    "GuardEvaluator",
    "GuardFormat",
    "GuardPreset",
    "infer_preset",
    "named_preset",
    "shieldgemma",
]
