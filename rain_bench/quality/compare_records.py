"""Typed records of ``rain bench quality --methods ...``: one per answer, one per (scenario, level),
the equal-compute pairings, and the report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COMPARE_SCHEMA = 1
MEASURES = ("model_calls", "generated_tokens", "seconds")
MEASURE_NAMES = {"model_calls": "model calls", "generated_tokens": "generated tokens", "seconds": "wall seconds"}


@dataclass(frozen=True)
class Decoded:
    """One answer of one level on one prompt, with what it cost and how it was judged.

    ``approved``: the scenario's evaluator (the one the method used) scores the final answer above 0;
    ``refusal``: the refusal phrase it opens with, or ``"refused"`` when the method answered with its
    refusal; ``harmful``: the grader's verdict (harm scenarios; None elsewhere or when grading failed)."""

    scenario: str
    item: str
    level: str
    method: str
    text: str
    tokens: int
    finish_reason: str
    model_calls: int | None
    generated_tokens: int | None  # counted at the LanguageModel protocol, the same way for every method
    forward_tokens: int | None  # the engine's: prompt tokens not served from its cache plus generated ones
    evaluations: int | None
    seconds: float
    score: float | None
    approved: bool | None
    refusal: str | None
    harmful: bool | None = None
    escalated: bool | None = None
    grade_error: str | None = None
    decode_error: str | None = None


@dataclass(frozen=True)
class LevelResult:
    """One level on one scenario: mean cost per answer and the outcome shares (None: not measured)."""

    scenario: str
    level: str
    method: str
    items: int
    decoded: int
    model_calls: float | None
    generated_tokens: float | None
    forward_tokens: float | None
    evaluations: float | None
    seconds: float | None
    approved: float | None  # share of answers the evaluator approves
    answered_approved: float | None  # ... that are not refusals (what the plots show)
    refusals: float | None
    harmful: float | None  # share the grader calls harmful (harm scenarios)
    graded: int
    escalated: float | None = None


@dataclass(frozen=True)
class Match:
    """A baseline's level nearest to a RAIN level on one measure, in one scenario. ``matched``: its mean
    cost is within ``tolerance`` of RAIN's; else ``reason`` says why none of its levels gets there."""

    scenario: str
    measure: str
    rain_level: str
    rain_value: float
    method: str
    level: str
    value: float
    ratio: float
    matched: bool
    reason: str | None
    rain_outcome: float | None
    outcome: float | None


@dataclass(frozen=True)
class ScenarioInfo:
    name: str
    kind: str
    prompts: int
    source: str
    evaluators: tuple[str, ...]  # each distinct evaluator: "name: description"
    note: str
    figure: str = "approved"  # what its pairings compare (matching.FIGURES)


@dataclass(frozen=True)
class LevelInfo:
    label: str
    method: str
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class CompareReport:
    date: str
    mode: str
    machine: Mapping[str, Any]
    model: str
    limits: Mapping[str, Any]
    levels: tuple[LevelInfo, ...]
    scenarios: tuple[ScenarioInfo, ...]
    grader: Any  # records.GraderInfo
    results: tuple[LevelResult, ...]
    matches: tuple[Match, ...]
    verdicts: tuple[str, ...]
    answers: tuple[Decoded, ...]
    charts: tuple[str, ...]
    tolerance: float
    seconds: float
    schema: int = COMPARE_SCHEMA
    benchmark: str = "quality-methods"
