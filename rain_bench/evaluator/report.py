"""The evaluator report: a table (one row per evaluator), each verdict, and per-pair details."""

from __future__ import annotations

import re
from pathlib import Path

from ..output import fmt_num, fmt_pct, md_cell, write_report
from .records import EvaluatorReport, EvaluatorSummary


def _bias(s: EvaluatorSummary) -> str:
    if s.position_bias is None:
        return "n/a (callable)"
    letters = ", ".join(f"{k} {v}" for k, v in (s.same_letter or {}).items() if v)
    return f"{fmt_pct(s.position_bias)}" + (f" ({letters})" if letters else "")


def _accuracy(s: EvaluatorSummary) -> str:
    if s.accuracy is None:
        return "n/a"
    lo, hi = s.accuracy_interval or (float("nan"), float("nan"))
    return f"{fmt_pct(s.accuracy)} ({s.correct}/{s.items - s.failed}; 95% {fmt_pct(lo)}-{fmt_pct(hi)})"


def _auc(s: EvaluatorSummary) -> str:
    if s.auc is None:
        return "n/a"
    if s.auc_interval is None:
        return fmt_num(s.auc)
    return f"{fmt_num(s.auc)} ({fmt_num(s.auc_interval[0])}-{fmt_num(s.auc_interval[1])})"


def render_table(report: EvaluatorReport) -> str:
    rows = [
        "| evaluator | items (harmful) | discrete accuracy | ties at 0 | position bias | ROC AUC (95%) | failed | "
        "s/item | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report.evaluators:
        per_item = s.seconds / s.items if s.items else float("nan")
        rows.append(
            f"| {md_cell(s.name)} | {s.items} ({s.harmful_items}) | {_accuracy(s)} | {s.ties} | {_bias(s)} | "
            f"{_auc(s)} | {s.failed} | {per_item:.2f} | {s.verdict_level} |"
        )
    return "\n".join(rows) + "\n"


def render_markdown(report: EvaluatorReport) -> str:
    m, t = report.machine, report.thresholds
    lines = [
        f"# rain evaluator benchmark ({report.mode})",
        "",
        f"Date: {report.date}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, load average at start "
        f"{m['load_average_at_start']}; GPU: {m['gpu'] or 'none'}  ",
        f"Software: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, rain {m['rain']}"
        f" (git {m['git']})  ",
        f"Data: {report.data}  ",
        f"Wall time of the whole run: {report.seconds:.0f} s",
        "",
    ]
    if report.mode != "full":
        lines += [
            f"**{report.mode.capitalize()} mode**: a small slice of the pairs; the figures only show the program "
            "works. Run the full benchmark for figures to quote.",
            "",
        ]
    lines += ["## Summary", "", render_table(report), "## Verdicts", ""]
    lines += [f"- {s.verdict}" for s in report.evaluators]
    lines += [
        "",
        "## How to read it",
        "",
        "- **Discrete accuracy**: a pair counts as judged harmless when the score is above 0 (for a model "
        "evaluator, the paper's discrete vote over both option orders), as judged harmful otherwise; a score of "
        "exactly 0 (the two orders disagree, or both pick the same letter) is a tie and counts as *not judged "
        "harmless*, the side RAIN treats it on (0 never passes the early stop's 0.8). On a balanced set an "
        "evaluator that scores everything 0 gets exactly 50%.",
        "- **Position bias**: the share of pairs on which the model picked the same option letter in both "
        "option orders; such an answer ignores what the options say. n/a for a callable.",
        "- **ROC AUC**: how well the continuous score (model: the option-probability margin averaged over both "
        "orders; callable: its score) ranks harmless replies above harmful ones (0.5 = chance, 1 = perfect; "
        "rank-based, ties count one half; the interval is the Hanley-McNeil approximation).",
        "- **Verdict thresholds**: *cannot judge* when the position bias is at least "
        f"{fmt_pct(t['max_position_bias'])}, "
        f"or when accuracy is below {fmt_pct(t['chance_accuracy'])} and AUC below {t['chance_auc']}; *usable* "
        f"when accuracy is at least {fmt_pct(t['usable_accuracy'])} and AUC at least {t['usable_auc']}; *weak* in "
        f"between. Fewer than {t['few_items']} pairs: the verdict quotes the accuracy's 95% interval.",
        "",
    ]
    for s in report.evaluators:
        lines += [f"## {s.name}", "", f"{s.description}. {s.seconds:.1f} s for {s.items} pairs; AUC of {s.auc_of}.", ""]
        if s.kind == "model":
            lines += [
                "| pair | label | letters (harmless first, second) | discrete | continuous |",
                "|---|---|---|---|---|",
            ]
            for j in s.judgements:
                label = "harmful" if j.harmful else "harmless"
                if j.error:
                    lines.append(f"| {j.id} | {label} | failed: {md_cell(j.error)} | | |")
                else:
                    lines.append(f"| {j.id} | {label} | {j.letters} | {j.discrete:+.0f} | {j.continuous:+.4f} |")
        else:
            lines += ["| pair | label | score |", "|---|---|---|"]
            for j in s.judgements:
                label = "harmful" if j.harmful else "harmless"
                cell = f"failed: {md_cell(j.error)}" if j.error else f"{j.score:+.3f}"
                lines.append(f"| {j.id} | {label} | {cell} |")
        lines.append("")
    return "\n".join(lines)


def report_name(report: EvaluatorReport, name: str | None = None) -> str:
    if name:
        return name
    if report.mode != "full":
        return f"evaluator-{report.mode}"
    first = report.evaluators[0].name if report.evaluators else "none"
    return "evaluator-" + re.sub(r"[^A-Za-z0-9.]+", "-", first).strip("-")


def write(report: EvaluatorReport, folder: Path, name: str | None = None) -> tuple[Path, Path]:
    return write_report(folder, report_name(report, name), render_markdown(report), report)
