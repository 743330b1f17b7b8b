"""The speed report: one summary table (a row per figure, a column per device), the details as
Markdown, and the records as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from ..harness import ratio
from ..output import fmt_mib, fmt_x, write_report
from .plan import (
    TARGET_BEST_CASE_OVERHEAD,
    TARGET_ENGINE_GAIN,
    TARGET_FAST_BEST_CASE,
    TARGET_LINEAR_GROWTH,
    TARGET_PARALLEL_MEMORY,
    TARGET_PARALLEL_WORST_CASE,
    TARGET_PEAK_MEMORY,
    TARGET_ROUND_FORWARD,
    variant_key,
)
from .records import Device, DeviceError, DeviceResult, Parallel, SpeedReport


def _fmt_config(cfg: object) -> str:
    if isinstance(cfg, dict):
        return ", ".join(f"{k}={v}" for k, v in cfg.items())
    return str(cfg)


def met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def _cells(dev: Device) -> list[str]:
    """One column of the summary table for one device."""
    if isinstance(dev, DeviceError):
        return [f"error: {dev.error}"] + [""] * 16
    o, e, w, m, s, t = dev.overhead, dev.engine, dev.forward_work, dev.memory, dev.scaling, dev.targets
    r = o.rain
    fast = {name: r[variant_key(name, "fast")] for name in ("self", "everything", "nothing")}
    fid = dev.fidelity
    return [
        f"{fmt_x(fast['everything'].per_token_ratio)} per token ({fast['everything'].searches_per_commit:.1f} "
        f"searches/commit) — {met(t['fast_best_case'].met)}",
        f"{fmt_x(fast['self'].per_token_ratio)} per token ({fast['self'].searches_per_commit:.1f} searches/commit)",
        f"{fmt_x(fast['nothing'].per_token_ratio)} per token ({fast['nothing'].searches_per_commit:.1f} "
        f"searches/commit)",
        "n/a"
        if fid is None
        else (
            f"{'acceptable' if fid.acceptable('fast') else 'NOT acceptable'} "
            f"({sum(x.acceptable('fast') for x in fid.results)}/{len(fid.results)} scenarios)"
        ),
        _side_by_side_fidelity(fid),
        f"{fmt_x(r['self'].wall_ratio)} ({r['self'].searches_per_commit:.1f} searches/commit)",
        f"{fmt_x(r['everything'].wall_ratio)} ({r['everything'].searches_per_commit:.1f} searches/commit)"
        f" — {met(t['best_case_overhead'].met)}",
        f"{fmt_x(r['nothing'].wall_ratio)} ({r['nothing'].searches_per_commit:.1f} searches/commit)",
        f"{fmt_x(e.gain)} ({e.off.seconds_per_search:.3f} s → {e.on.seconds_per_search:.3f} s; "
        f"same tokens {e.identical_prompts}/{e.prompts}) — {met(t['engine_gain'].met)}",
        f"{w.on_forward_tokens_per_token:.0f} on / {w.off_forward_tokens_per_token:.0f} off "
        f"({fmt_x(w.reduction, 1)} fewer)",
        f"{fmt_x(m.ratio)} ({fmt_mib(m.rain_peak_bytes)} / {fmt_mib(m.vanilla_peak_bytes)})"
        f" — {met(t['peak_memory'].met)}",
        " / ".join(f"{row.rain_seconds_per_token:.3f}" for row in s.rows)
        + " s/token ("
        + ", ".join(str(row.max_new_tokens) for row in s.rows)
        + " tokens)",
        f"{fmt_x(s.growth)} (vanilla {fmt_x(s.vanilla_growth)})"
        + ("" if s.reached_cap else ", EOS before cap")
        + f" — {met(t['linear_cost'].met)}",
        *_parallel_cells(dev),
    ]


def _side_by_side_fidelity(fid: object) -> str:
    """Each ``official B=n`` preset of the fidelity section: within the official interval on how many scenarios."""
    if fid is None:
        return "n/a"
    names = [n for n in getattr(fid, "presets", {}) if n.startswith("official B=")]
    if not names:
        return "n/a"
    results = getattr(fid, "results", [])
    return "; ".join(f"{n[len('official ') :]}: {sum(r.acceptable(n) for r in results)}/{len(results)}" for n in names)


def _parallel_cells(dev: DeviceResult) -> list[str]:
    """Section 7's summary cells: the worst case and self-evaluation at the widest width against 1 (the
    median of the repetitions and its range), a round's forward passes against one search's, and the
    memory at the widest width."""
    p, t = dev.parallel, dev.targets
    if p is None:
        return ["n/a"] * 5
    widest, one = max(p.widths), min(p.widths)
    cells = []
    for preset, name in (("official", "nothing"), ("fast", "nothing"), ("official", "self")):
        row, base = p.row(preset, name, widest), p.row(preset, name, one)
        lo, hi = row.versus_one_range
        cell = (
            f"{fmt_x(row.versus_one)} (range {fmt_x(lo)}-{fmt_x(hi)}, {p.repeats} runs; {fmt_x(row.per_token_ratio)} "
            f"against {fmt_x(base.per_token_ratio)} plain per token; {row.model_calls_per_commit:.1f} against "
            f"{base.model_calls_per_commit:.1f} model calls/commit)"
        )
        key = f"parallel_worst_case_{preset}"
        if name == "nothing" and key in t:
            cell += f" — {met(t[key].met)}"
        cells.append(cell)
    row, base = p.row("official", "nothing", widest), p.row("official", "nothing", one)
    cells.append(
        f"{fmt_x(row.round_over_one_search)} ({row.forward_calls_per_round:.1f} forward passes per round of "
        f"{row.searches_per_round:.1f} searches, {ratio(base.decodes.forward_calls, base.decodes.searches):.1f} "
        "per search at 1)" + (f" — {met(t['round_forward'].met)}" if "round_forward" in t else "")
    )
    m = p.memory
    cells.append(
        "n/a"
        if m is None
        else f"{fmt_x(m.ratio)} ({fmt_mib(m.rain_peak_bytes)} / {fmt_mib(m.vanilla_peak_bytes)})"
        + (f" — {met(t['parallel_memory'].met)}" if "parallel_memory" in t else "")
    )
    return cells


def render_table(report: SpeedReport) -> str:
    """The one summary table: a row per figure, a column per device."""
    plan = report.config
    lengths, budget = plan["lengths"], plan["fixed_budget_overrides"]["max_searches"]
    wide = max(plan.get("parallel_widths", [8]))
    labels = [
        (
            "1f",
            "**fast preset**, satisfied with everything (best case): RAIN / plain per token",
            f"≤ {TARGET_FAST_BEST_CASE:g}x",
        ),
        ("1f", "fast preset, self-evaluation: RAIN / plain per token", "—"),
        ("1f", "fast preset, satisfied with nothing (worst case): RAIN / plain per token", "—"),
        ("6", "fast preset's avoidance within the official search's 95% interval (fidelity)", "every scenario"),
        ("6", "avoidance of searches side by side within the official search's interval", "every scenario"),
        ("1", "RAIN / vanilla wall time, self-evaluation", "—"),
        ("1", "RAIN / vanilla wall time, satisfied with everything (best case)", f"≤ {TARGET_BEST_CASE_OVERHEAD:g}x"),
        ("1", "RAIN / vanilla wall time, satisfied with nothing (worst case)", "—"),
        (
            "2",
            f"engine gain: time per search off / on ({budget} searches/commit)",
            f"≥ {TARGET_ENGINE_GAIN:g}x, same tokens",
        ),
        ("3", "model forward tokens per committed token", "—"),
        ("4", "peak memory RAIN / vanilla", f"≤ {TARGET_PEAK_MEMORY:g}x"),
        ("5", "RAIN seconds per token by max_new_tokens", "—"),
        ("5", f"per-token cost at {lengths[-1]} / at {lengths[0]} tokens", f"≤ {TARGET_LINEAR_GROWTH:g}x (linear)"),
        (
            "7",
            f"worst case, official search: time per token at parallel_searches={wide} / at 1",
            f"≤ {TARGET_PARALLEL_WORST_CASE:g}x",
        ),
        (
            "7",
            f"worst case, fast preset: time per token at parallel_searches={wide} / at 1",
            f"≤ {TARGET_PARALLEL_WORST_CASE:g}x",
        ),
        ("7", f"self-evaluation, official search: time per token at parallel_searches={wide} / at 1", "—"),
        (
            "7",
            f"worst case, official search: forward passes of a round at {wide} / of one search at 1",
            f"≤ {TARGET_ROUND_FORWARD:g}x",
        ),
        ("7", f"peak memory at parallel_searches={wide} / plain decoding", f"≤ {TARGET_PARALLEL_MEMORY:g}x"),
    ]
    names = list(report.devices)
    columns = {name: _cells(report.devices[name]) for name in names}
    head = "| # | figure | target | " + " | ".join(names) + " |\n"
    head += "|---|---|---|" + "---|" * len(names) + "\n"
    body = ""
    for i, (num, label, target) in enumerate(labels):
        body += f"| {num} | {label} | {target} | " + " | ".join(columns[n][i] for n in names) + " |\n"
    return head + body


def render_markdown(report: SpeedReport) -> str:
    m, cfg = report.machine, report.config
    lines = [
        f"# rain speed benchmark ({cfg['mode']})",
        "",
        f"Date: {report.date}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable, torch threads {m['torch_threads']}), "
        f"load average at start {m['load_average_at_start']}; GPU: {m['gpu'] or 'none'}  ",
        f"Software: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, rain {m['rain']}"
        f" (git {m['git']}), {m['platform']}  ",
        f"Wall time of the whole run: {report.seconds:.0f} s",
        "",
    ]
    if cfg["mode"] == "quick":
        lines += [
            "**Quick mode**: tiny budgets, not the official defaults; the verdicts below only show the",
            "program works. Run the full benchmark for figures to quote.",
            "",
        ]
    lines += ["## Summary", "", render_table(report), "## Targets", ""]
    for dev_name, dev in report.devices.items():
        if isinstance(dev, DeviceError):
            lines.append(f"- {dev_name}: not measured ({dev.error})")
            continue
        for t in dev.targets.values():
            lines.append(f"- {dev_name}: {t.target}: measured {fmt_x(t.value)} — **{met(t.met)}**")
    lines += ["", "## Configuration", "", "```json", json.dumps(cfg, indent=2), "```", ""]
    for dev_name, dev in report.devices.items():
        if isinstance(dev, DeviceError):
            continue
        o, e, mem, s = dev.overhead, dev.engine, dev.memory, dev.scaling
        lines += [
            f"## Details: {dev_name} ({dev.model}, {dev.dtype}, {dev.seconds:.0f} s)",
            "",
            f"### 1. RAIN / vanilla wall time ({o.max_new_tokens} new tokens, {_fmt_config(o.config)})",
            "",
            "| decoder | seconds | new tokens | searches | commits | early stops | wall ratio | per-token ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        v = o.vanilla
        lines.append(f"| vanilla | {v.seconds:.2f} | {v.new_tokens} | — | — | — | 1.00x | 1.00x |")
        for var in o.rain.values():
            d = var.decodes
            lines.append(
                f"| RAIN, {var.label} | {d.seconds:.2f} | {d.new_tokens} | {d.searches} | "
                f"{d.commits} | {d.early_stops} | {fmt_x(var.wall_ratio)} | "
                f"{fmt_x(var.per_token_ratio)} |"
            )
        lines += [
            "",
            f"### 2–3. Engine on / off ({e.searches_per_commit} searches per commit, no early stop, "
            f"{e.max_new_tokens} new tokens)",
            "",
            "| engine | seconds | searches | s/search | forward calls | forward tokens | forward tokens / token |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, d in (("on", e.on), ("off", e.off)):
            lines.append(
                f"| {name} | {d.seconds:.2f} | {d.searches} | {d.seconds_per_search:.4f} | "
                f"{d.forward_calls} | {d.forward_tokens} | {d.forward_tokens_per_token:.1f} |"
            )
        lines += [
            "",
            f"Gain {fmt_x(e.gain)}; committed token ids identical for "
            f"{e.identical_prompts} of {e.prompts} prompts. Vanilla for comparison: "
            f"{v.forward_tokens_per_token:.1f} forward tokens per token.",
            "",
            f"### 4. Peak memory ({mem.measure})",
            "",
            f"Vanilla {fmt_mib(mem.vanilla_peak_bytes)}, RAIN {fmt_mib(mem.rain_peak_bytes)} "
            f"(by evaluator: "
            + ", ".join(f"{k} {fmt_mib(b)}" for k, b in mem.rain_peak_by_evaluator.items())
            + f"), ratio {fmt_x(mem.ratio)}; KV cache held afterwards {fmt_mib(mem.kv_cache_bytes_after)}.",
            "",
            f"### 5. Cost against max_new_tokens ({s.searches_per_commit} searches per commit)",
            "",
            "| max_new_tokens | RAIN tokens | RAIN s/token | RAIN s/search | vanilla tokens | vanilla s/token |",
            "|---|---|---|---|---|---|",
        ]
        for r in s.rows:
            lines.append(
                f"| {r.max_new_tokens} | {r.rain_new_tokens} | {r.rain_seconds_per_token:.4f} | "
                f"{(r.rain_seconds_per_search or float('nan')):.4f} | {r.vanilla_new_tokens} | "
                f"{r.vanilla_seconds_per_token:.4f} |"
            )
        lines += [
            "",
            f"Growth of RAIN's per-token cost: {fmt_x(s.growth)} "
            f"(vanilla {fmt_x(s.vanilla_growth)})"
            + ("." if s.reached_cap else "; some answers ended (EOS) before the cap."),
            "",
        ]
        if dev.parallel is not None:
            lines += _parallel_details(dev.parallel)
        if dev.fidelity is not None:
            from ..fidelity import render_table as fidelity_table

            lines += [
                "### 6. Fidelity of the fast preset and of searches side by side to the official search",
                "",
                f"{dev.fidelity.seeds} seeds per scenario and preset; evaluator -1 when the answer so far "
                "contains the penalised word, +1 otherwise; acceptable when a preset's avoidance rate "
                "lies inside the official search's 95% Wilson interval "
                f"({dev.fidelity.seconds:.0f} s).",
                "",
                fidelity_table(dev.fidelity),
                "",
            ]
    return "\n".join(lines)


def _parallel_details(p: Parallel) -> list[str]:
    lines = [
        f"### 7. Searches side by side ({p.max_new_tokens} new tokens, {_fmt_config(p.config)})",
        "",
        f"Plain decoding: {p.vanilla.seconds:.2f} s for {p.vanilla.new_tokens} tokens over {p.repeats} repetitions. "
        "Every timed decode starts from an emptied cache, and the widths run in the opposite order in every "
        "other repetition. Per-token ratios are over plain decoding in the same repetition; 'against 1' is the "
        "time per token over the same preset and evaluator at parallel_searches=1 in the same repetition: the "
        "median of the repetitions, with the lowest and highest. Model calls count a batch once; forward passes "
        "are the engine's; 'round / search at 1' is the forward passes of a round over those of one search at "
        "parallel_searches=1.",
        "",
        "| preset | evaluator | parallel_searches | seconds | tokens | RAIN / plain per token | against 1 (range) "
        "| searches/commit | searches/round | model calls/commit | forward passes/commit | forward passes/round "
        "| round / search at 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in p.rows:
        d = r.decodes
        lo, hi = r.versus_one_range
        lines.append(
            f"| {r.preset} | {r.evaluator} | {r.width} | {d.seconds:.1f} | {d.new_tokens} | "
            f"{fmt_x(r.per_token_ratio)} | {fmt_x(r.versus_one)} ({fmt_x(lo)}-{fmt_x(hi)}) | "
            f"{r.searches_per_commit:.1f} | {r.searches_per_round:.1f} | {r.model_calls_per_commit:.1f} | "
            f"{r.forward_calls_per_commit:.1f} | {r.forward_calls_per_round:.1f} | {fmt_x(r.round_over_one_search)} |"
        )
    if p.memory is not None:
        m = p.memory
        lines += [
            "",
            f"Peak memory at parallel_searches={m.width} ({m.measure}; {', '.join(m.evaluators)}): "
            f"{fmt_mib(m.rain_peak_bytes)} against plain decoding's {fmt_mib(m.vanilla_peak_bytes)}, "
            f"{fmt_x(m.ratio)}.",
        ]
    return lines + [""]


def report_name(report: SpeedReport) -> str:
    if report.config["mode"] == "quick":
        return "speed-quick"
    return "speed-" + "-".join(report.devices)


def write(report: SpeedReport, folder: Path) -> tuple[Path, Path]:
    """``<folder>/speed-*.md`` and ``.json``, written atomically."""
    return write_report(folder, report_name(report), render_markdown(report), report)
