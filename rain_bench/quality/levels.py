"""The decoding methods ``rain bench quality --methods ...`` compares, each at its compute levels.

A ``Level`` is one method at one setting: RAIN at a search budget in one preset, best-of-N at one
N, check-retry at one number of tries, blockwise at one K and block length, escalating to one RAIN
setting. ``levels(methods, mode)`` lists them; ``decoder(level, lm, evaluator, ...)`` builds one.
Every level decodes with the same model, token limit, temperature, top-k and seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rain_core.baselines import METHODS, make_decoder
from rain_core.config import RainConfig
from rain_core.decoding import Decoder
from rain_core.protocols import Evaluator, LanguageModel

__all__ = ["FAMILY_LIMITS", "Level", "decoder", "levels", "parse_methods"]

# RAIN's budgets: max_searches per commit, and extra_searches (official 50/15; a smaller budget lowers both).
RAIN_BUDGETS: tuple[tuple[int, int], ...] = ((4, 4), (8, 8), (16, 15), (50, 15))
QUICK_RAIN_BUDGETS: tuple[tuple[int, int], ...] = ((2, 1),)


@dataclass(frozen=True)
class Level:
    """One method at one compute setting. ``options``: the method's own (``n``, ``max_tries``, ``k``,
    ``block_tokens``, ``retries``); ``preset`` and ``budget``: RAIN's, for ``rain`` and ``escalating``."""

    method: str
    label: str
    options: Mapping[str, Any] = field(default_factory=dict)
    preset: str | None = None
    budget: tuple[int, int] | None = None
    search: Mapping[str, Any] = field(default_factory=dict)  # more RainConfig fields for the search only

    @property
    def searches(self) -> bool:
        return self.method in ("rain", "escalating")

    @property
    def expensive(self) -> bool:
        """RAIN's official preset from 16 searches per commit, and any level at the official 50/15:
        minutes per answer on a CPU (the full run keeps them to the difficulty scenarios)."""
        if self.budget is None:
            return False
        return self.budget == (50, 15) or (self.method == "rain" and self.preset == "official" and self.budget[0] >= 16)

    def rain_config(self, limits: Mapping[str, Any]) -> RainConfig:
        """The ``RainConfig`` of this level: the shared ``limits`` (token limit, seed, ...), and for a
        searching method its preset and budget."""
        if not self.searches:
            return RainConfig(**dict(limits))
        assert self.budget is not None
        base = RainConfig.fast() if self.preset == "fast" else RainConfig()
        budget = {"max_searches": self.budget[0], "extra_searches": self.budget[1], **dict(self.search)}
        return base.merged(**budget, **dict(limits))


def _rain(preset: str, budget: tuple[int, int]) -> Level:
    tag = "50/15" if budget == (50, 15) else f"{budget[0]}"
    return Level("rain", f"RAIN {preset} {tag}", preset=preset, budget=budget)


def levels(methods: Sequence[str], mode: str = "full") -> list[Level]:
    """Every level of ``methods`` (in the given order) for ``mode`` ("full" or "quick")."""
    quick = mode != "full"
    out: list[Level] = []
    for method in methods:
        if method == "plain":
            out.append(Level("plain", "plain"))
        elif method == "rain":
            budgets = QUICK_RAIN_BUDGETS if quick else RAIN_BUDGETS
            out += [_rain(preset, b) for preset in ("fast", "official") for b in budgets]
        elif method == "best-of-n":
            out += [Level("best-of-n", f"best-of-{n}", {"n": n}) for n in ((2,) if quick else (2, 4, 8, 16))]
        elif method == "check-retry":
            tries = (2,) if quick else (2, 3, 4, 5)
            out += [Level("check-retry", f"check-retry {t - 1}", {"max_tries": t}) for t in tries]
        elif method == "blockwise":
            shapes = ((2, 4),) if quick else ((2, 8), (4, 8), (8, 8), (4, 2), (4, 1))
            out += [Level("blockwise", f"blockwise {k}x{b}", {"k": k, "block_tokens": b}) for k, b in shapes]
        elif method == "escalating":
            budgets = QUICK_RAIN_BUDGETS if quick else ((8, 8), (50, 15))
            out += [
                Level("escalating", f"escalating to {_rain('fast', b).label}", preset="fast", budget=b) for b in budgets
            ]
        else:
            raise ValueError(f"unknown method {method!r}: use {', '.join(METHODS)}")
    return out


def parse_methods(spec: str) -> tuple[str, ...]:
    """``"plain,rain,best-of-n"`` as method names, checked (at least one, no repeats)."""
    names = tuple(m.strip() for m in spec.split(",") if m.strip())
    if not names:
        raise ValueError("--methods names no method: give e.g. plain,rain,best-of-n,check-retry,blockwise")
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)} in --methods: use {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods names a method twice: {spec}")
    return names


def decoder(
    level: Level, lm: LanguageModel, evaluator: Evaluator, limits: Mapping[str, Any], encoder: Any = "default"
) -> Decoder:
    """The decoder of ``level`` over ``lm`` judged by ``evaluator``, with the shared ``limits``."""
    return make_decoder(level.method, lm, evaluator, level.rain_config(limits), encoder=encoder, **dict(level.options))


FAMILY_LIMITS: Mapping[str, str] = {
    "plain": "one model call",
    "best-of-n": "one model call at any N (the N answers are rows of one generation request)",
    "check-retry": "one model call per try: at most max_tries, one when the first answer is approved",
    "blockwise": "one model call per block: about max_new_tokens / block_tokens at any K",
    "rain": "several model calls per search, many searches per commit",
    "escalating": "one model call when the plain answer is approved; one plus RAIN's when it is not",
}
"""Why a method's model calls cannot reach another's (the equal-compute tables quote it)."""
