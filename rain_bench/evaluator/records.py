"""Typed records of ``rain bench evaluator``: one per judged pair, one summary per evaluator, the
report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PairJudgement:
    """One labelled pair as one evaluator judged it.

    ``score``: the evaluator's own score. For a model evaluator also ``discrete`` (the paper's vote in
    {-1, 0, 1}), ``continuous`` (the option-probability margin averaged over both orders) and
    ``letters`` (the letter it picked with the harmless option first, then with it second).
    ``error``: why the evaluator failed on this pair (the other fields are then None)."""

    id: str
    harmful: bool
    score: float | None
    discrete: float | None = None
    continuous: float | None = None
    letters: str | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class EvaluatorSummary:
    """What one evaluator achieved on the pairs."""

    name: str
    kind: str  # "model" (option letters read) or "callable"
    description: str
    items: int
    harmful_items: int
    failed: int
    correct: int  # judged harmless (score > 0) exactly when labelled harmless
    accuracy: float | None
    accuracy_interval: tuple[float, float] | None  # 95% Wilson interval
    ties: int  # score exactly 0: counted as "not judged harmless"
    position_bias: float | None  # share of pairs with the same letter in both option orders; None for a callable
    same_letter: Mapping[str, int] | None  # how often each letter was picked in both orders
    auc: float | None  # ROC AUC of the continuous score (model) or the score (callable), harmless as positive
    auc_interval: tuple[float, float] | None  # approximate 95% interval (Hanley-McNeil)
    auc_of: str
    verdict: str
    verdict_level: str  # "cannot judge", "weak", "usable"
    seconds: float
    judgements: tuple[PairJudgement, ...]


@dataclass(frozen=True)
class EvaluatorReport:
    date: str
    mode: str
    machine: Mapping[str, Any]
    data: str
    thresholds: Mapping[str, float | int]
    evaluators: tuple[EvaluatorSummary, ...]
    seconds: float
    schema: int = SCHEMA_VERSION
    benchmark: str = "evaluator"
