"""The quality report: who graded, a table per set and method, a bar chart per set, the answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..output import fmt_num, fmt_pct, md_cell, pyplot, save_figure, write_report
from .records import PLAIN, MethodResult, QualityReport, SetResult

ANSWER_CHARS = 160


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-")


def report_name(mode: str, model: str, name: str | None = None) -> str:
    if name:
        return name
    return "quality-quick" if mode != "full" else f"quality-{slug(Path(model).name)}"


def chart_path(folder: Path, report: str, set_name: str) -> Path:
    return Path(folder) / f"{report}-{slug(set_name)}.png"


def draw_chart(result: SetResult, path: Path) -> str:
    """Bars of the harmful-answer share and the refusal rate of each method on one set (PNG,
    written atomically); returns the file name."""
    plt = pyplot()
    methods = result.methods
    fig, ax = plt.subplots(figsize=(1.9 + 1.6 * len(methods), 3.4))
    xs = range(len(methods))
    width = 0.38
    harmful = [100 * (m.harmful_share or 0.0) for m in methods]
    refusal = [100 * (m.refusal_rate or 0.0) for m in methods]
    b1 = ax.bar([x - width / 2 for x in xs], harmful, width, label="harmful answers (grader)", color="#c0392b")
    b2 = ax.bar([x + width / 2 for x in xs], refusal, width, label="refusals", color="#2e86c1")
    for bars, values in ((b1, methods), (b2, methods)):
        for bar, m in zip(bars, values):
            n = m.graded if bars is b1 else m.decoded
            ax.annotate(
                f"{bar.get_height():.0f}%\n(n={n})",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_short(m) for m in methods], fontsize=8)
    ax.set_ylim(0, 135)
    ax.set_ylabel("% of answers")
    kind = f"{result.harmful_requests} of {result.items} requests harmful"
    ax.set_title(f"{result.name} ({kind})", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=2, frameon=False)
    save_figure(fig, path)
    plt.close(fig)
    return path.name


def _short(m: MethodResult) -> str:
    label = m.method.replace("RAIN + ", "RAIN\n")
    cost = "" if m.method == PLAIN or m.cost_vs_plain is None else f"\n{m.cost_vs_plain:.1f}x time"
    return label + cost


def _method_row(set_name: str, m: MethodResult) -> str:
    cost = "1.00x" if m.method == PLAIN else (f"{m.cost_vs_plain:.2f}x" if m.cost_vs_plain else "n/a")
    work = "1.00x" if m.method == PLAIN else (f"{m.work_vs_plain:.1f}x" if m.work_vs_plain else "n/a")
    spt = fmt_num(m.searches_per_token) if m.searches_per_token is not None else "—"
    failed = f"{m.failed_grades}" + (f" (+{m.failed_decodes} decodes)" if m.failed_decodes else "")
    return (
        f"| {md_cell(set_name)} | {md_cell(m.method)} | {m.items} | "
        f"{fmt_pct(m.harmful_share)} ({m.harmful}/{m.graded}) "
        f"| {fmt_pct(m.refusal_rate)} ({m.refusals}/{m.decoded}) | {fmt_num(m.mean_tokens, 1)} | "
        f"{fmt_num(m.seconds_per_token, 3)} | {spt} | {cost} | {fmt_num(m.forward_tokens_per_token, 0)} | "
        f"{work} | {failed} |"
    )


def render_table(report: QualityReport) -> str:
    rows = [
        "| set | method | prompts | harmful answers (grader) | refusals | tokens | s/token | searches/token | "
        "time vs plain | model tokens/token | work vs plain | failed grades |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report.sets:
        rows += [_method_row(s.name, m) for m in s.methods]
    return "\n".join(rows) + "\n"


def render_markdown(report: QualityReport) -> str:
    m, g = report.machine, report.grader
    lines = [
        f"# rain quality benchmark ({report.mode})",
        "",
        f"Date: {report.date}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, load average at start "
        f"{m['load_average_at_start']}; GPU: {m['gpu'] or 'none'}  ",
        f"Software: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, rain {m['rain']}"
        f" (git {m['git']})  ",
        f"Model: {report.model}  ",
        f"Wall time of the whole run: {report.seconds:.0f} s",
        "",
    ]
    if report.mode != "full":
        lines += [
            "**Quick mode**: two prompts per set and tiny budgets; the figures only show the program works. "
            "Run the full benchmark for figures to quote.",
            "",
        ]
    lines += [
        "## Who graded",
        "",
        f"Graded by **{g.name}**: {g.description}. The grader is not one of the evaluators RAIN used (checked in "
        "code before any decoding: the same object, the same function, or the same model asked the same "
        "principle's question is refused).",
        "",
        f"The grader's own agreement with the labelled evaluator pairs: {fmt_pct(g.pairs_accuracy)} "
        f"({g.pairs_correct}/{g.pairs - g.pairs_failed}"
        + (f", {g.pairs_failed} failed" if g.pairs_failed else "")
        + ").",
        "",
        f"Failed grades: {report.failed_grades} of {len(report.answers)} answers (left out of the harmful share)"
        + (f"; failed decodes: {report.failed_decodes}" if report.failed_decodes else "")
        + ".",
        "",
        "RAIN's evaluators:",
        "",
    ]
    lines += [f"- {e.method}: {e.description}" for e in report.evaluators]
    lines += ["", "## Summary", "", render_table(report)]
    for s in report.sets:
        if s.chart:
            lines += [f"![{s.name}]({s.chart})", ""]
    lines += [
        "## Definitions",
        "",
        "- **harmful answers**: the share of graded answers the grader calls harmful (failed grades left out).",
        f"- **refusals**: answers whose first {report.refusal_window} characters contain one of these phrases "
        "(case and curly apostrophes ignored): " + ", ".join(f"`{p}`" for p in report.refusal_phrases) + ".",
        "- **tokens**: mean answer length in model tokens; **s/token**: wall seconds per generated token; "
        "**searches/token**: RAIN searches per generated token; **time vs plain**: RAIN's wall time over plain "
        "decoding's on the same prompts, decoded back to back (wall time on this machine, which other jobs may "
        "share: see the load average above); **model tokens/token**: tokens the generator's engine processed "
        "per answer token (its own self-evaluation included; the embedding scorer's sentence-encoder passes "
        "not), and **work vs plain** the same over plain decoding's: a cost that does not depend on the "
        "machine's load.",
        "- Plain decoding samples with the same model, temperature, top-k, seed and token limit as RAIN.",
        "",
        "## Configuration",
        "",
        "RAIN configuration (fields that differ from the official `RainConfig()`):",
        "",
        "```json",
        json.dumps(report.config_deviations, indent=2),
        "```",
        "",
    ]
    for s in report.sets:
        lines += [
            f"## Answers: {s.name}",
            "",
            f"Source: `{s.source}`.",
            "",
            "| prompt | method | answer (first characters) | tokens | refusal | harmful |",
            "|---|---|---|---|---|---|",
        ]
        for a in report.answers:
            if a.set != s.name:
                continue
            if a.decode_error:
                text, verdict = f"decode failed: {a.decode_error}", "—"
            else:
                text = a.text[:ANSWER_CHARS] + ("…" if len(a.text) > ANSWER_CHARS else "")
                verdict = "failed" if a.grade_error else ("yes" if a.harmful else "no")
            lines.append(
                f"| {a.item} | {md_cell(a.method)} | {md_cell(text)} | {a.tokens} | "
                f"{'yes' if a.refusal else 'no'} | {verdict} |"
            )
        lines.append("")
    return "\n".join(lines)


def write(report: QualityReport, folder: Path, name: str) -> tuple[Path, Path]:
    return write_report(folder, name, render_markdown(report), report)
