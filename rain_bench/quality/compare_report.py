"""The report of ``rain bench quality --methods ...``: the verdict lines, a table per scenario with
every level's cost and outcomes, the equal-compute pairings (model calls, generated tokens, wall
time), the plots (outcome against cost, one line per method) and every answer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..output import fmt_num, fmt_pct, md_cell, pyplot, save_figure, write_report
from .compare_records import MEASURE_NAMES, MEASURES, CompareReport, LevelResult, Match
from .matching import FIGURES
from .report import ANSWER_CHARS, slug

__all__ = ["draw_charts", "methods_report_name", "render_methods_markdown", "render_methods_table", "write_methods"]

COLOURS = {
    "plain": "#7f8c8d",
    "rain": "#c0392b",
    "best-of-n": "#2e86c1",
    "check-retry": "#27ae60",
    "blockwise": "#8e44ad",
    "escalating": "#d68910",
}


MARKERS = {"RAIN official": "s", "best-of-n": "D", "check-retry": "^", "blockwise": "v", "escalating": "P"}


def methods_report_name(mode: str, model: str, name: str | None = None) -> str:
    if name:
        return name
    return "quality-methods-quick" if mode != "full" else f"quality-methods-{slug(Path(model).name)}"


# --- plots ----------------------------------------------------------------------------------------------
def _line_of(r: LevelResult) -> str:
    """The line a level belongs to: its method, RAIN's two presets apart."""
    if r.method == "rain":
        return "RAIN " + r.level.split()[1]  # "RAIN fast 8" -> "RAIN fast"
    return r.method


def _lines(results: Sequence[LevelResult], x: str, y: str) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        xv, yv = getattr(r, x), getattr(r, y)
        if xv is not None and yv is not None and xv > 0:
            out.setdefault(_line_of(r), []).append((float(xv), 100 * float(yv)))
    return {m: sorted(points) for m, points in out.items()}


def _figure(report: CompareReport, kind: str, y: str, ylabel: str, path: Path) -> str | None:
    scenarios = [s.name for s in report.scenarios if s.kind == kind or (kind == "any")]
    if not scenarios:
        return None
    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, len(scenarios), figsize=(3.6 * len(scenarios) + 0.6, 6.4), squeeze=False)
    for col, name in enumerate(scenarios):
        results = [r for r in report.results if r.scenario == name]
        for row, x in enumerate(("model_calls", "generated_tokens")):
            ax = axes[row][col]
            for line, points in _lines(results, x, y).items():
                xs, ys = zip(*points)
                style = "--" if line == "RAIN official" else "-"
                colour = COLOURS.get("rain" if line.startswith("RAIN") else line)
                marker = MARKERS.get(line, "o")
                ax.plot(xs, ys, style, marker=marker, ms=4, lw=1.4, label=line, color=colour, alpha=0.85)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(-5, 105)
            ax.set_xlabel(f"{MEASURE_NAMES[x]} per answer (log)", fontsize=7)
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel(ylabel, fontsize=8)
            if row == 0:
                ax.set_title(name, fontsize=9)
    seen: dict[str, object] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    labels, handles = list(seen), list(seen.values())
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, path)
    plt.close(fig)
    return path.name


def draw_charts(report: CompareReport, folder: Path, name: str) -> tuple[str, ...]:
    """Approval against cost (every scenario), and the harmful share and the refusals against cost (harm
    scenarios: on the benign and alarming sets every refusal is an over-refusal), one line per method
    through its levels; each PNG written atomically. Returns the file names."""
    folder = Path(folder)
    made = [
        _figure(
            report, "any", "answered_approved", "approved answers, % (not refusals)", folder / f"{name}-approval.png"
        ),
        _figure(report, "harm", "harmful", "harmful answers, % (grader)", folder / f"{name}-harmful.png"),
        _figure(report, "harm", "refusals", "refusals, % (of requests)", folder / f"{name}-refusals.png"),
    ]
    return tuple(m for m in made if m)


# --- tables ---------------------------------------------------------------------------------------------
def _row(r: LevelResult) -> str:
    esc = "" if r.escalated is None else f" (escalated {fmt_pct(r.escalated)})"
    return (
        f"| {md_cell(r.level)}{esc} | {r.decoded}/{r.items} | {fmt_num(r.model_calls, 1)} | "
        f"{fmt_num(r.generated_tokens, 0)} | {fmt_num(r.forward_tokens, 0)} | {fmt_num(r.evaluations, 1)} | "
        f"{fmt_num(r.seconds, 2)} | {fmt_pct(r.approved)} | {fmt_pct(r.answered_approved)} | "
        f"{fmt_pct(r.refusals)} | {fmt_pct(r.harmful)} |"
    )


def render_methods_table(report: CompareReport, scenario: str | None = None) -> str:
    """Every level's mean cost per answer and outcomes, per scenario."""
    lines = []
    for s in report.scenarios:
        if scenario is not None and s.name != scenario:
            continue
        lines += [
            f"**{s.name}** ({s.prompts} prompt{'s' if s.prompts != 1 else ''})",
            "",
            "| level | decoded | model calls | generated tokens | model tokens | evaluations | seconds | approved | "
            "approved, not refusals | refusals | harmful (grader) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_row(r) for r in report.results if r.scenario == s.name]
        lines.append("")
    return "\n".join(lines)


def _cell(m: Match | None) -> str:
    if m is None:
        return "—"
    mark = "**matched**" if m.matched else "not matched"
    return f"{md_cell(m.level)}: {fmt_num(m.value, 1)} ({m.ratio:.2f}x, {mark}), {fmt_pct(m.outcome)}"


def render_matches(report: CompareReport) -> list[str]:
    """Per scenario, one row per (RAIN level, baseline method): that method's nearest level by model
    calls, by generated tokens and by wall time, with its cost relative to RAIN's and its outcome;
    then why a method cannot be matched on model calls where it cannot."""
    lines: list[str] = []
    for s in report.scenarios:
        mine = [m for m in report.matches if m.scenario == s.name]
        if not mine:
            continue
        figure = FIGURES[s.figure][0]
        by = {(m.rain_level, m.method, m.measure): m for m in mine}
        rain = {m.rain_level: m for m in mine if m.measure == "model_calls"}
        lines += [
            f"**{s.name}** ({figure}; each cell: the nearest level, its cost against RAIN's, its {figure})",
            "",
            "| RAIN level: calls, tokens, seconds, outcome | method | by model calls | by generated tokens | "
            "by wall time |",
            "|---|---|---|---|---|",
        ]
        for level, method in dict.fromkeys((m.rain_level, m.method) for m in mine):
            r = [by.get((level, method, measure)) for measure in MEASURES]
            cost = ", ".join(
                fmt_num(by[(level, method, k)].rain_value, 1) if (level, method, k) in by else "n/a" for k in MEASURES
            )
            head = f"{md_cell(level)}: {cost}, {fmt_pct(rain[level].rain_outcome) if level in rain else 'n/a'}"
            lines.append(f"| {head} | {method} | {' | '.join(_cell(x) for x in r)} |")
        reasons = dict.fromkeys(
            f"- {m.method} on model calls: {m.reason}" for m in mine if m.measure == "model_calls" and not m.matched
        )
        lines += ["", *reasons, ""]
    return lines


def render_methods_markdown(report: CompareReport) -> str:
    m, g = report.machine, report.grader
    matched = sum(1 for x in report.matches if x.matched and x.measure == "model_calls")
    lines = [
        f"# rain quality benchmark: RAIN beside the baselines at equal compute ({report.mode})",
        "",
        f"Date: {report.date}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, load average at start "
        f"{m['load_average_at_start']}; GPU: {m['gpu'] or 'none'}  ",
        f"Software: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, rain {m['rain']}"
        f" (git {m['git']})  ",
        f"Model: {report.model}; every method with the same limits: `{json.dumps(dict(report.limits))}`  ",
        f"Wall time of the whole run: {report.seconds:.0f} s",
        "",
    ]
    if report.mode != "full":
        lines += ["**Quick mode**: one or two prompts, tiny budgets; the figures only show the program works.", ""]
    lines += ["## Verdict", ""]
    lines += [f"- {v}" for v in report.verdicts] or ["- no pairing came within 10% on any measure"]
    lines += [
        "",
        f"Pairings matched on model calls: {matched}. Small samples: each share is over the prompts of one "
        "scenario (see the counts); read the answers below before quoting a figure.",
        "",
        "## Scenarios and their evaluators",
        "",
    ]
    for s in report.scenarios:
        count = f"{s.prompts} prompt{'s' if s.prompts != 1 else ''}"
        lines.append(f"- **{s.name}** ({s.kind}, {count}, `{s.source}`){': ' + s.note if s.note else ''}")
        lines += [f"  - {e}" for e in s.evaluators]
    lines += [
        "",
        f"Harm sets graded by **{g.name}**: {g.description} (its agreement with the labelled pairs: "
        f"{fmt_pct(g.pairs_accuracy)}, {g.pairs_correct}/{g.pairs - g.pairs_failed}). The grader is never the "
        "evaluator a method used (checked in code before any decoding).",
        "",
        "## Every level",
        "",
        render_methods_table(report),
    ]
    for chart in report.charts:
        lines += [f"![{chart}]({chart})", ""]
    lines += ["## Equal compute", "", *render_matches(report), *_definitions(report), *_answers(report)]
    return "\n".join(lines)


def _definitions(report: CompareReport) -> list[str]:
    levels = [f"- {lv.label}: `{json.dumps(dict(lv.settings))}`" for lv in report.levels]
    return [
        "## Definitions",
        "",
        "- **model calls**: requests to the generator, a batch of rows counting once (`stats['model_calls']`, "
        "as RAIN counts them): best-of-N's N answers are one call; a RAIN search makes one or more.",
        "- **generated tokens**: tokens the generator produced for the method, kept or not (every sampled row, "
        "retry, block, RAIN candidate and simulation; one per read of a next-token distribution), counted where "
        "the model answers (`rain_bench.quality.counting`).",
        "- **model tokens**: the engine's own count of tokens it ran through the model (generated ones plus prompt "
        "tokens not served from its cache); **seconds**: wall time per answer on this machine, which other jobs "
        "may share (see the load average).",
        "- **evaluations**: replies the method's evaluator scored. **approved**: the evaluator scores the final "
        "answer above 0 (scored once more after decoding, not counted as the method's cost); **approved, not "
        "refusals**: the same without refusals (a refusal satisfies a word check but answers nothing).",
        "- **refusals**: the method's own refusal (check-retry after max_tries) or an answer opening with a "
        "refusal phrase; on the benign and alarming sets every refusal is an over-refusal.",
        f"- **matched**: the baseline level's mean cost is within {100 * report.tolerance:.0f}% of the RAIN "
        "level's in that scenario; otherwise the nearest level is shown with the reason no level gets there.",
        "",
        "Levels:",
        "",
        *levels,
        "",
    ]


def _answers(report: CompareReport) -> list[str]:
    lines = ["## Answers", ""]
    for s in report.scenarios:
        lines += [f"### {s.name}", "", "| prompt | level | answer (first characters) | approved | refusal | harmful |"]
        lines.append("|---|---|---|---|---|---|")
        for a in report.answers:
            if a.scenario != s.name:
                continue
            text = f"decode failed: {a.decode_error}" if a.decode_error else a.text[:ANSWER_CHARS]
            harm = "—" if a.harmful is None else ("yes" if a.harmful else "no")
            ok = "—" if a.approved is None else ("yes" if a.approved else "no")
            lines.append(f"| {a.item} | {md_cell(a.level)} | {md_cell(text)} | {ok} | {a.refusal or 'no'} | {harm} |")
        lines.append("")
    return lines


def write_methods(report: CompareReport, folder: Path, name: str) -> tuple[Path, Path]:
    return write_report(folder, name, render_methods_markdown(report), report)
