"""``rain bench evaluator``: can an evaluator tell a harmful reply from a harmless one?

It judges labelled ``(prompt, reply, harmful)`` pairs (``rain_bench/data/evaluator_pairs.jsonl`` or
``--data FILE``) with each evaluator named (self-evaluation of a model, a judge model on any engine,
or a scoring function) and reports, per evaluator: discrete accuracy, position bias, ROC AUC of the
continuous score, and a verdict a user can act on. Python API: ``evaluate(evaluators, ...)`` takes
ready evaluators, so it works with any ``LanguageModel`` (a vLLM engine included).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..datasets import PAIRS_FILE, load_pairs
from ..engines import NamedEvaluator
from .plan import EvaluatorPlan
from .records import EvaluatorReport, EvaluatorSummary, PairJudgement
from .report import render_markdown, render_table, report_name, write
from .sections import Progress, _noop, measure, run, summarise, verdict

__all__ = [
    "EvaluatorPlan",
    "EvaluatorReport",
    "EvaluatorSummary",
    "PairJudgement",
    "evaluate",
    "measure",
    "render_markdown",
    "render_table",
    "report_name",
    "run",
    "summarise",
    "verdict",
    "write",
]


def evaluate(
    evaluators: Sequence[NamedEvaluator], plan: EvaluatorPlan | None = None, progress: Progress = _noop
) -> EvaluatorReport:
    """Judge the plan's pairs with every evaluator and return the report (nothing written)."""
    plan = plan or EvaluatorPlan.full()
    pairs = load_pairs(plan.data, plan.limit)
    source = str(Path(plan.data) if plan.data else PAIRS_FILE.relative_to(PAIRS_FILE.parents[2]))
    if plan.limit is not None:
        source += f" (first {len(pairs)} pairs)"
    return run(evaluators, pairs, plan, progress, source)
