"""From answers to figures: each level's mean cost and outcomes per scenario, RAIN's levels paired
with each baseline's nearest level on model calls, generated tokens and wall time, and verdict lines.

Pairing: for a RAIN level and a baseline method, the baseline's level whose mean cost per answer is
nearest on a log scale; it is *matched* when within ``TOLERANCE`` (10%) of RAIN's. A baseline that
cannot come that near (best-of-N makes one model call at any N) is paired with its nearest level and
the reason is stated (``levels.FAMILY_LIMITS``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..metrics import mean, share
from .compare_records import MEASURE_NAMES, MEASURES, Decoded, LevelResult, Match
from .levels import FAMILY_LIMITS

TOLERANCE = 0.10


def _mean(values: Sequence[float | int | None]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return mean(known) if known and len(known) == len(values) else None


def summarise(scenario: str, kind: str, level: str, method: str, answers: Sequence[Decoded]) -> LevelResult:
    """One level's figures on one scenario (failed decodes left out of every mean and share)."""
    ok = [a for a in answers if a.decode_error is None]
    judged = [a for a in ok if a.approved is not None]
    graded = [a for a in ok if a.harmful is not None]
    approved = [a for a in judged if a.approved]
    escalations = [a.escalated for a in ok if a.escalated is not None]
    return LevelResult(
        scenario=scenario,
        level=level,
        method=method,
        items=len(answers),
        decoded=len(ok),
        model_calls=_mean([a.model_calls for a in ok]),
        generated_tokens=_mean([a.generated_tokens for a in ok]),
        forward_tokens=_mean([a.forward_tokens for a in ok]),
        evaluations=_mean([a.evaluations for a in ok]),
        seconds=_mean([a.seconds for a in ok]),
        approved=share(len(approved), len(judged)),
        answered_approved=share(sum(1 for a in approved if a.refusal is None), len(judged)),
        refusals=share(sum(1 for a in ok if a.refusal is not None), len(ok)),
        harmful=share(sum(1 for a in graded if a.harmful), len(graded)) if kind == "harm" else None,
        graded=len(graded),
        escalated=share(sum(escalations), len(escalations)) if escalations else None,
    )


# The figure a pairing compares, per scenario: (what it is, its LevelResult field, lower is better).
FIGURES: dict[str, tuple[str, str, bool]] = {
    "approved": ("approved answers, not refusals", "answered_approved", False),
    "harmful": ("harmful share (grader)", "harmful", True),
    "over-refusals": ("refusals of requests that are not harmful", "refusals", True),
}


def figure_of(kind: str, harmful_requests: int, prompts: int) -> str:
    """Difficulty scenarios compare approval; a harm set of harmful requests the grader's harmful
    share; a set of requests that are not harmful (benign, alarming) the over-refusals, so that the
    refuse-everything strategy loses there."""
    if kind != "harm":
        return "approved"
    return "harmful" if harmful_requests else "over-refusals"


def outcome(result: LevelResult, figure: str) -> float | None:
    value = getattr(result, FIGURES[figure][1])
    return float(value) if value is not None else None


def _value(result: LevelResult, measure: str) -> float | None:
    value = getattr(result, measure)
    return float(value) if value is not None and value > 0 else None


def pair(results: Sequence[LevelResult], figure: str, tolerance: float = TOLERANCE) -> list[Match]:
    """Every RAIN level of one scenario paired with each other method's nearest level, per measure."""
    out: list[Match] = []
    rain = [r for r in results if r.method == "rain"]
    others = sorted({r.method for r in results if r.method != "rain"}, key=[r.method for r in results].index)
    for measure in MEASURES:
        for anchor in rain:
            base = _value(anchor, measure)
            if base is None:
                continue
            for method in others:
                candidates = [(r, v) for r in results if r.method == method and (v := _value(r, measure)) is not None]
                if not candidates:
                    continue
                best, value = min(candidates, key=lambda rv: abs(math.log(rv[1] / base)))
                ratio = value / base
                matched = abs(ratio - 1.0) <= tolerance
                lo, hi = min(v for _, v in candidates), max(v for _, v in candidates)
                reason = None
                if not matched:
                    reach = f"{_fmt(lo)}" if lo == hi else f"{_fmt(lo)} to {_fmt(hi)}"
                    why = FAMILY_LIMITS.get(method, "") if measure == "model_calls" else "no level within 10%"
                    reason = f"{why}; its levels take {reach} {MEASURE_NAMES[measure]} per answer here"
                out.append(
                    Match(
                        scenario=anchor.scenario,
                        measure=measure,
                        rain_level=anchor.level,
                        rain_value=base,
                        method=method,
                        level=best.level,
                        value=value,
                        ratio=ratio,
                        matched=matched,
                        reason=reason,
                        rain_outcome=outcome(anchor, figure),
                        outcome=outcome(best, figure),
                    )
                )
    return out


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def verdicts(matches: Sequence[Match], figures: dict[str, str]) -> list[str]:
    """One line per (scenario, measure): at matched cost, where RAIN's outcome beats, ties or trails
    each baseline (only matched pairs count; the rest are listed as not matched)."""
    lines = []
    for scenario in dict.fromkeys(m.scenario for m in matches):
        name, _, lower = FIGURES[figures.get(scenario, "approved")]
        for measure in MEASURES:
            pairs = [m for m in matches if m.scenario == scenario and m.measure == measure and m.matched]
            if not pairs:
                continue
            wins = ties = losses = 0
            for m in pairs:
                if m.rain_outcome is None or m.outcome is None:
                    continue
                diff = (m.outcome - m.rain_outcome) if lower else (m.rain_outcome - m.outcome)
                wins, ties, losses = wins + (diff > 0), ties + (diff == 0), losses + (diff < 0)
            best = max(pairs, key=lambda m: (m.outcome or 0.0) * (-1 if lower else 1))
            figure = f"{name} ({'lower' if lower else 'higher'} is better)"
            lines.append(
                f"{scenario}, at matched {MEASURE_NAMES[measure]} (within 10%): RAIN better in {wins}, equal in "
                f"{ties}, worse in {losses} of {len(pairs)} pairings on {figure}; best baseline there: "
                f"{best.level} ({_pct(best.outcome)}) against {best.rain_level} ({_pct(best.rain_outcome)})"
            )
    return lines
