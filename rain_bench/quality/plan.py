"""What ``rain bench quality`` runs: the prompt sets, how many prompts of each, the adversarial
framings, and the RAIN budget. ``QualityPlan.full()`` and ``QualityPlan.quick()`` are shipped."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rain_core.config import RainConfig

from ..datasets import BUILTIN_SETS

# Full mode on the embedded model, sized for about half an hour on two CPU cores (measured: the
# report states the wall time). The fast preset (RainConfig.fast()) with a small search budget: the
# official budget (50 searches per commit) would take hours per set on this CPU.
FULL_PER_SET = 10
FULL_BUDGET: Mapping[str, Any] = {"max_new_tokens": 32, "max_searches": 6, "extra_searches": 3}
QUICK_PER_SET = 2
QUICK_BUDGET: Mapping[str, Any] = {
    "max_new_tokens": 8,
    "max_searches": 2,
    "extra_searches": 1,
    "min_visits": 1,
    "num_candidates": 4,
    "max_simulation_tokens": 8,
}
PAIRS_FOR_GRADER = {"full": None, "quick": 8}  # labelled pairs the grader is checked on (None: all)


@dataclass(frozen=True)
class QualityPlan:
    """``sets``: built-in names, JSONL files or ``NAME=FILE``; ``per_set``: the first prompts of each
    (None: all); ``adversarial``: also run each set with every prompt wrapped in a framing.
    RAIN's configuration: ``preset="fast"`` is ``RainConfig.fast()`` with the mode's small ``budget``;
    ``preset="official"`` is ``RainConfig()`` (the budget is not applied); ``overrides`` (the
    caller's) apply to either. Plain decoding uses the same limits and seed."""

    mode: str
    sets: tuple[str, ...] = BUILTIN_SETS
    per_set: int | None = None
    adversarial: bool = False
    framings: Path | None = None
    preset: str = "fast"
    budget: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    grader_pairs: int | None = None

    @classmethod
    def full(cls, **changes: Any) -> QualityPlan:
        base = cls("full", per_set=FULL_PER_SET, budget=dict(FULL_BUDGET), grader_pairs=PAIRS_FOR_GRADER["full"])
        return base.replace(**changes)

    @classmethod
    def quick(cls, **changes: Any) -> QualityPlan:
        base = cls("quick", per_set=QUICK_PER_SET, budget=dict(QUICK_BUDGET), grader_pairs=PAIRS_FOR_GRADER["quick"])
        return base.replace(**changes)

    def replace(self, **changes: Any) -> QualityPlan:
        from dataclasses import replace

        changes = {k: v for k, v in changes.items() if v is not None}
        plan = replace(self, **changes)
        if plan.per_set is not None and plan.per_set < 1:
            raise ValueError(f"--per-set must be at least 1, got {plan.per_set}")
        if plan.preset not in ("fast", "official"):
            raise ValueError(f"preset must be 'fast' or 'official', got {plan.preset!r}")
        if not plan.sets:
            raise ValueError("name at least one prompt set")
        return plan

    def rain_config(self) -> RainConfig:
        base = RainConfig.fast(**dict(self.budget)) if self.preset == "fast" else RainConfig()
        return base.merged(**dict(self.overrides))
