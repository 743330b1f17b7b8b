"""What ``rain bench quality --methods ...`` runs: the methods and their levels, the scenarios, how
many prompts of each, and the limits every method shares. ``MethodsPlan.full()`` and ``.quick()``.

Full mode is sized for about an hour on two CPU cores with nothing else running (estimated from
per-level timings taken on a busy machine, so perhaps 45 to 90 minutes; the report states the measured
wall time): 24 new tokens per answer, the 4 shipped prompts of each difficulty level and the first 3
of each harm set. RAIN's most expensive levels cost
minutes per answer on a CPU, so they run where the comparison needs them most: every level at the
official 50/15 budget (RAIN in both presets, escalating to it) on the hard difficulty level only, the
official preset at 16 searches per commit on the difficulty levels only. Quick mode (in ``make
test``) shows the program works in about a minute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..datasets import BUILTIN_SETS
from .levels import Level, levels
from .scenarios import DIFFICULTIES, Scenario

ALL_METHODS = ("plain", "rain", "best-of-n", "check-retry", "blockwise", "escalating")
SCENARIO_KINDS = ("difficulty", "harm")
FULL_LIMITS: Mapping[str, Any] = {"max_new_tokens": 24, "seed": 0}
QUICK_LIMITS: Mapping[str, Any] = {"max_new_tokens": 8, "seed": 0}


@dataclass(frozen=True)
class MethodsPlan:
    """``methods``: the methods to compare (each at its ``levels``); ``scenarios``: ``difficulty``
    (word scorers, ``difficulties`` from ``difficulty_file``) and/or ``harm`` (``sets``, judged by the
    ``--evaluator``s, graded); ``per_level`` and ``per_set``: the first prompts of each difficulty
    level and of each harm set (None: all);
    ``limits``: the ``RainConfig`` limits every method shares; ``everywhere``: run every level on every
    scenario (default: RAIN's most expensive levels only where ``runs_on`` says)."""

    mode: str
    methods: tuple[str, ...] = ALL_METHODS
    scenarios: tuple[str, ...] = SCENARIO_KINDS
    difficulties: tuple[str, ...] = DIFFICULTIES
    difficulty_file: Path | None = None
    sets: tuple[str, ...] = BUILTIN_SETS
    per_level: int | None = 4
    per_set: int | None = 3
    limits: Mapping[str, Any] = field(default_factory=lambda: dict(FULL_LIMITS))
    everywhere: bool = False
    grader_pairs: int | None = None

    @classmethod
    def full(cls, **changes: Any) -> MethodsPlan:
        return cls("full").replace(**changes)

    @classmethod
    def quick(cls, **changes: Any) -> MethodsPlan:
        base = cls(
            "quick",
            difficulties=("hard",),
            sets=("harmful", "benign"),
            per_level=1,
            per_set=1,
            limits=dict(QUICK_LIMITS),
        )
        return replace(base, grader_pairs=8).replace(**changes)

    def replace(self, **changes: Any) -> MethodsPlan:
        plan = replace(self, **{k: v for k, v in changes.items() if v is not None})
        for count in (plan.per_set, plan.per_level):
            if count is not None and count < 1:
                raise ValueError(f"--per-set must be at least 1, got {count}")
        unknown = [s for s in plan.scenarios if s not in SCENARIO_KINDS]
        if unknown or not plan.scenarios:
            raise ValueError(f"scenarios must be among {', '.join(SCENARIO_KINDS)}, got {', '.join(plan.scenarios)}")
        bad = [d for d in plan.difficulties if d not in DIFFICULTIES]
        if bad:
            raise ValueError(f"difficulty levels must be among {', '.join(DIFFICULTIES)}, got {', '.join(bad)}")
        return plan

    def levels(self) -> list[Level]:
        return levels(self.methods, self.mode)

    def runs_on(self, level: Level, scenario: Scenario) -> bool:
        """Whether ``level`` decodes ``scenario``: levels at the official 50/15 budget only on the hard
        difficulty level, the official preset from 16 searches only on the difficulty levels (unless
        ``everywhere`` or in quick mode, whose levels are all cheap)."""
        if self.everywhere or not level.expensive:
            return True
        if level.budget == (50, 15):
            return scenario.kind == "difficulty" and scenario.name.endswith("hard")
        return scenario.kind == "difficulty"
