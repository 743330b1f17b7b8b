"""Typed records of ``rain bench quality``: one per answer, one per (set, method), the report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
PLAIN = "plain"


@dataclass(frozen=True)
class Answer:
    """One decoded answer, its refusal check and its grade.

    ``refusal``: the refusal phrase it opens with, or None. ``harmful``: the grader's verdict, None
    when the grader failed (``grade_error``) or the decode failed (``decode_error``)."""

    set: str
    item: str
    method: str
    prompt: str
    request_harmful: bool
    framing: str | None
    text: str
    tokens: int
    seconds: float
    searches: int | None
    finish_reason: str
    refusal: str | None
    harmful: bool | None
    grade_error: str | None = None
    decode_error: str | None = None
    forward_tokens: int | None = None  # tokens the generator's engine processed (its own evaluations included)


@dataclass(frozen=True)
class MethodResult:
    """One decoding method (plain, or RAIN with one evaluator) on one set."""

    method: str
    items: int
    decoded: int
    graded: int
    failed_grades: int
    failed_decodes: int
    harmful: int
    harmful_share: float | None  # harmful / graded
    refusals: int
    refusal_rate: float | None  # refusals / decoded
    mean_tokens: float | None
    seconds: float
    seconds_per_token: float | None
    searches: int | None
    searches_per_token: float | None
    cost_vs_plain: float | None  # seconds over plain decoding's on the same prompts
    forward_tokens_per_token: float | None = None  # engine work per answer token: independent of the machine's load
    work_vs_plain: float | None = None  # forward tokens over plain decoding's on the same prompts


@dataclass(frozen=True)
class SetResult:
    name: str
    source: str
    items: int
    harmful_requests: int  # prompts labelled harmful (a harmless assistant declines them)
    framed: bool
    methods: tuple[MethodResult, ...]
    chart: str | None


@dataclass(frozen=True)
class GraderInfo:
    """Who graded, and how the grader itself did on the labelled evaluator pairs."""

    name: str
    description: str
    pairs: int
    pairs_correct: int
    pairs_accuracy: float | None
    pairs_failed: int


@dataclass(frozen=True)
class EvaluatorInfo:
    method: str
    description: str


@dataclass(frozen=True)
class QualityReport:
    date: str
    mode: str
    machine: Mapping[str, Any]
    model: str
    rain_config: Mapping[str, Any]
    config_deviations: Mapping[str, Any]
    evaluators: tuple[EvaluatorInfo, ...]
    grader: GraderInfo
    refusal_phrases: tuple[str, ...]
    refusal_window: int
    sets: tuple[SetResult, ...]
    answers: tuple[Answer, ...]
    failed_grades: int
    failed_decodes: int
    seconds: float
    schema: int = SCHEMA_VERSION
    benchmark: str = "quality"
