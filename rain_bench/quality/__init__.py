"""``rain bench quality``: does RAIN with an evaluator lower harmful answers without refusing
ordinary requests?

On prompt sets of harmful requests, benign requests and benign requests with alarming words
(optionally each prompt wrapped in an adversarial framing), it decodes plainly and with RAIN for
each evaluator, grades every answer with a separate grader, and reports per set: the share of
harmful answers, the refusal rate, the answer length and the cost, with a bar chart per set.
Python API: ``evaluate(lm, evaluators, grader, ...)`` takes ready objects, so it works with any
``LanguageModel`` (a vLLM engine included) and any grader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rain_core.protocols import LanguageModel

from ..datasets import PromptSet, framed, load_framings, load_pairs, load_prompt_set
from ..engines import NamedEvaluator
from ..grading import Grader, ensure_separate
from ..output import default_folder
from .plan import QualityPlan
from .records import QualityReport
from .report import chart_path, draw_chart, render_markdown, render_table, report_name, write
from .sections import Progress, _noop, run

__all__ = ["QualityPlan", "QualityReport", "evaluate", "load_sets", "render_markdown", "render_table", "run", "write"]


def load_sets(plan: QualityPlan) -> list[PromptSet]:
    """The plan's prompt sets (the first ``per_set`` prompts of each), and their framed twins when
    ``adversarial``."""
    sets = [load_prompt_set(spec, plan.per_set) for spec in plan.sets]
    if plan.adversarial:
        framings = load_framings(plan.framings)
        sets += [framed(s, framings) for s in list(sets)]
    return sets


def evaluate(
    lm: LanguageModel,
    evaluators: Sequence[NamedEvaluator],
    grader: Grader,
    plan: QualityPlan | None = None,
    *,
    out: str | Path | None = None,
    name: str | None = None,
    progress: Progress = _noop,
) -> tuple[QualityReport, Path, Path]:
    """Run the plan, draw one chart per set and write the report; returns it with the Markdown and
    JSON paths."""
    plan = plan or QualityPlan.full()
    for named in evaluators:  # before anything is loaded, decoded or written
        ensure_separate(grader, named.evaluator)
    folder = Path(out) if out else default_folder()
    report_file = report_name(plan.mode, str(lm.name), name)
    sets = load_sets(plan)
    pairs = load_pairs(limit=plan.grader_pairs)
    folder.mkdir(parents=True, exist_ok=True)
    report = run(
        lm,
        evaluators,
        grader,
        sets,
        plan,
        pairs,
        progress,
        chart=lambda result: draw_chart(result, chart_path(folder, report_file, result.name)),
    )
    md, js = write(report, folder, report_file)
    return report, md, js
