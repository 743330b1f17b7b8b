"""``rain bench quality``: does RAIN with an evaluator lower harmful answers without refusing
ordinary requests?

On prompt sets of harmful requests, benign requests and benign requests with alarming words
(optionally each prompt wrapped in an adversarial framing), it decodes plainly and with RAIN for
each evaluator, grades every answer with a separate grader, and reports per set: the share of
harmful answers, the refusal rate, the answer length and the cost, with a bar chart per set.
Python API: ``evaluate(lm, evaluators, grader, ...)`` takes ready objects, so it works with any
``LanguageModel`` (a vLLM engine included) and any grader.

``rain bench quality --methods plain,rain,best-of-n,check-retry,blockwise,escalating`` (Python:
``evaluate_methods``) compares RAIN with the baselines of ``rain_core.baselines`` at several compute
levels each, on scenarios of known difficulty and on the harm sets, and pairs them at equal compute
(``compare.py``, ``matching.py``, ``compare_report.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rain_core.protocols import LanguageModel

from ..datasets import PromptSet, framed, load_framings, load_pairs, load_prompt_set
from ..engines import NamedEvaluator
from ..grading import Grader, ensure_separate
from ..output import default_folder
from .compare import run_methods
from .compare_records import CompareReport
from .compare_report import draw_charts, methods_report_name, render_methods_table, write_methods
from .methods_plan import MethodsPlan
from .plan import QualityPlan
from .records import QualityReport
from .report import chart_path, draw_chart, render_markdown, render_table, report_name, write
from .scenarios import Scenario, difficulty_scenarios, harm_scenario
from .sections import Progress, _noop, run

__all__ = [
    "CompareReport",
    "MethodsPlan",
    "QualityPlan",
    "QualityReport",
    "evaluate",
    "evaluate_methods",
    "load_sets",
    "method_scenarios",
    "render_markdown",
    "render_methods_table",
    "render_table",
    "run",
    "run_methods",
    "write",
]


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


def method_scenarios(plan: MethodsPlan, harm_evaluators: Sequence[NamedEvaluator]) -> list[Scenario]:
    """The plan's scenarios: the difficulty levels (word scorers), then each harm set with each harm
    evaluator. Bad data fails here, before any model is used."""
    out: list[Scenario] = []
    if "difficulty" in plan.scenarios:
        out += difficulty_scenarios(plan.per_level, plan.difficulties, plan.difficulty_file)
    if "harm" in plan.scenarios:
        if not harm_evaluators:
            raise ValueError("the harm scenarios need an evaluator (--evaluator embedding, guard-standin, self, ...)")
        sets = [load_prompt_set(spec, plan.per_set) for spec in plan.sets]
        out += [harm_scenario(s, ev) for ev in harm_evaluators for s in sets]
    if not out:
        raise ValueError("the plan has no scenario to run")
    return out


def evaluate_methods(
    lm: LanguageModel,
    harm_evaluators: Sequence[NamedEvaluator],
    grader: Grader,
    plan: MethodsPlan | None = None,
    *,
    out: str | Path | None = None,
    name: str | None = None,
    progress: Progress = _noop,
    encoder: Any = "default",
) -> tuple[CompareReport, Path, Path]:
    """Run the methods plan on ``lm`` (any ``LanguageModel``), draw the plots and write the report;
    returns it with the Markdown and JSON paths. The grader is checked against every evaluator first."""
    plan = plan or MethodsPlan.full()
    scenarios = method_scenarios(plan, harm_evaluators)
    for scenario in scenarios:
        for named in scenario.evaluators:
            ensure_separate(grader, named.evaluator)
    folder = Path(out) if out else default_folder()
    report_file = methods_report_name(plan.mode, str(lm.name), name)
    pairs = load_pairs(limit=plan.grader_pairs)
    folder.mkdir(parents=True, exist_ok=True)
    report = run_methods(
        lm,
        scenarios,
        plan.levels(),
        grader,
        mode=plan.mode,
        limits=plan.limits,
        pairs=pairs,
        progress=progress,
        chart=lambda r: draw_charts(r, folder, report_file),
        encoder=encoder,
        runs_on=plan.runs_on,
    )
    md, js = write_methods(report, folder, report_file)
    return report, md, js
