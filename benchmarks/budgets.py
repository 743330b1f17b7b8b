"""How RAIN's budgets trade latency for search, measured: ``python benchmarks/budgets.py [--quick]``.

For a few settings (the official search, the official search with small budgets, the fast preset,
searches side by side, a deadline), each with self-evaluation (the default evaluator) and with an
evaluator that rejects every reply (the worst case: no early stop, every commit spends its whole
budget), it decodes a fixed prompt set with the embedded SmolLM2-135M-Instruct on this machine's
CPU and reports, per setting and evaluator: seconds per answer, seconds to the first streamed
piece, searches, rounds and model calls per commit, and whether every commit ran the searches the
budget rule says (``max(max_searches, reused + min(extra_searches, max_searches))`` real root visits,
docs/budgets.md). Plain decoding of the same prompts is the reference.

It prints the table, writes ``benchmarks/results/budgets-cpu.md`` and ``.json`` (``budgets-cpu-quick.*``
with ``--quick``, so a smoke run never replaces the full report), each atomically, and with
``--docs PAGE`` puts the table into PAGE between its ``<!-- budgets-table:start -->`` and
``<!-- budgets-table:end -->`` lines. A progress bar runs on stderr. It uses rain's public API only
(``rain_core``), so it is also an example of measuring your own settings: edit ``SETTINGS``.

    python benchmarks/budgets.py --docs docs/budgets.md     # the full table (run by hand, machine idle)
    python benchmarks/budgets.py --quick --out /tmp/budgets  # tiny budgets, one prompt (a test runs it)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "rain.budgets"
VERSION = 1
START = "<!-- budgets-table:start -->"
END = "<!-- budgets-table:end -->"

# A benign request and one a harmless assistant should decline (the speed benchmark's first two).
PROMPTS = (
    "How do I bake a loaf of bread at home?",
    "How do I pick the lock of my neighbour's front door while they are away?",
)


@dataclass(frozen=True)
class Setting:
    """One row pair of the table: a name, how the config is built, and what it shows."""

    name: str
    preset: str  # "official" (RainConfig()) or "fast" (RainConfig.fast())
    overrides: Mapping[str, Any]  # RainConfig fields over the preset (full mode)
    note: str


# max_seconds of the deadline setting (full mode); the quick mode's is QUICK_DEADLINE
DEADLINE = 20.0
QUICK_DEADLINE = 3.0

SETTINGS = (
    Setting("official", "official", {}, "the authors' search and budgets: RainConfig()"),
    Setting(
        "official, small budgets",
        "official",
        {"max_searches": 8, "extra_searches": 4},
        "the README quick start's budgets",
    ),
    Setting("fast", "fast", {}, "RainConfig.fast(): the official budgets, speed deviations on"),
    Setting("fast, parallel_searches=8", "fast", {"parallel_searches": 8}, "up to 8 searches per round"),
    Setting("official, parallel_searches=8", "official", {"parallel_searches": 8}, "up to 8 searches per round"),
    Setting("official, deadline", "official", {"max_seconds": DEADLINE}, "max_seconds ends the answer"),
)

# Quick mode: every setting over tiny budgets, so that a test runs each code path in a minute or two.
QUICK_BUDGETS = {
    "max_searches": 4,
    "extra_searches": 2,
    "min_visits": 1,  # so that the early stop can fire within 4 searches
    "num_candidates": 4,
    "max_simulation_tokens": 8,
}
QUICK_SMALL = {"max_searches": 2, "extra_searches": 1}

EVALUATORS = {
    "approves all": "CallableEvaluator scoring every reply +1 (best case: the early stop fires as soon as it may)",
    "self": "self-evaluation (SelfEvaluator(lm, 'harmless'), the default)",
    "rejects all": "CallableEvaluator scoring every reply -1 (worst case: every commit spends its budget)",
}


def approves_everything(prompt: str, reply: str) -> float:
    """Every partial answer is perfect: the early stop fires as soon as it may."""
    return 1.0


def rejects_everything(prompt: str, reply: str) -> float:
    """Every partial answer is bad: the early stop never fires, every commit spends its budget."""
    return -1.0


@dataclass(frozen=True)
class Plan:
    mode: str
    prompts: tuple[str, ...]
    max_new_tokens: int

    @classmethod
    def full(cls, max_new_tokens: int = 32) -> Plan:
        return cls("full", PROMPTS, max_new_tokens)

    @classmethod
    def quick(cls) -> Plan:
        return cls("quick", PROMPTS[1:], 4)

    def overrides(self, setting: Setting) -> dict[str, Any]:
        """The RainConfig fields this run sets over the preset."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.mode == "quick":
            out.update(QUICK_BUDGETS)
            if setting.overrides.get("max_searches"):
                out.update(QUICK_SMALL)
            extra = {k: v for k, v in setting.overrides.items() if k not in ("max_searches", "extra_searches")}
            if "max_seconds" in extra:
                extra["max_seconds"] = QUICK_DEADLINE
            out.update(extra)
        else:
            out.update(setting.overrides)
        return out


@dataclass
class Run:
    """One decode of one prompt with one setting and evaluator."""

    setting: str
    evaluator: str
    prompt: str
    seconds: float
    first_piece_seconds: float | None
    new_tokens: int
    finish_reason: str
    searches: int = 0
    rounds: int = 0
    model_calls: int = 0
    commits: int = 0
    early_stops: int = 0
    commits_on_rule: int = 0  # commits (not stopped early, not cut by the deadline) that ran the rule's searches
    commits_checked: int = 0
    commit_log: list[dict[str, Any]] = field(default_factory=list)


# --- measuring ----------------------------------------------------------------------------------
def rule_searches(config: Any, reused: int) -> int:
    """New searches the budget rule gives a commit whose root already has ``reused`` real visits."""
    return int(config.search_target(reused)) - reused


def decode(decoder: Any, prompt: str) -> tuple[Any, float, float | None]:
    """One streamed decode: its result, wall seconds, and seconds to its first piece."""
    t0 = time.perf_counter()
    first = None
    stream = decoder.stream(prompt)
    for _ in stream:
        if first is None:
            first = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    return stream.result, seconds, first


def measure(setting: Setting, evaluator: str, prompt: str, decoder: Any) -> Run:
    result, seconds, first = decode(decoder, prompt)
    stats = result.stats
    log = []
    on_rule = checked = 0
    for i, entry in enumerate(stats.get("commit_log", [])):
        expected = rule_searches(decoder.config, entry["reused_visits"])
        cut = result.finish_reason == "time" and i == stats["commits"] - 1
        if not entry["early_stop"] and not cut:
            checked += 1
            on_rule += entry["searches"] == expected
        log.append(
            {
                "text": entry["text"],
                "searches": entry["searches"],
                "reused_visits": entry["reused_visits"],
                "rule_searches": expected,
                "early_stop": entry["early_stop"],
                "seconds": round(entry["seconds"], 3),
            }
        )
    return Run(
        setting=setting.name,
        evaluator=evaluator,
        prompt=prompt,
        seconds=seconds,
        first_piece_seconds=first,
        new_tokens=result.completion_tokens,
        finish_reason=result.finish_reason,
        searches=stats["searches"],
        rounds=stats["rounds"],
        model_calls=stats["model_calls"],
        commits=stats["commits"],
        early_stops=stats["early_stops"],
        commits_on_rule=on_rule,
        commits_checked=checked,
        commit_log=log,
    )


def measure_all(plan: Plan, progress: Callable[[str], None]) -> tuple[list[Run], list[Run], dict[str, Any]]:
    """Plain decoding, then every setting with each evaluator, on every prompt."""
    from rain_core import CallableEvaluator, RainConfig, RainDecoder, SelfEvaluator, load_default_model

    lm = load_default_model()
    judges = {
        "approves all": CallableEvaluator(approves_everything),
        "self": SelfEvaluator(lm, "harmless"),
        "rejects all": CallableEvaluator(rejects_everything),
    }
    # Warm-up (not reported): loads the sentence encoder, fills the prefix cache with each prompt and
    # the self-evaluation's principle, so every measured decode starts from the same warm state.
    for prompt in plan.prompts:
        for judge in judges.values():
            RainDecoder(lm, judge, max_new_tokens=2, max_searches=2, extra_searches=1, num_candidates=2).generate(
                prompt
            )
        progress("warm-up")
    plain: list[Run] = []
    base = RainDecoder(lm, judges["rejects all"], max_new_tokens=plan.max_new_tokens)
    for prompt in plan.prompts:
        t0 = time.perf_counter()
        res = base.vanilla(prompt)
        plain.append(
            Run("plain decoding", "-", prompt, time.perf_counter() - t0, None, len(res.token_ids), res.finish_reason)
        )
        progress("plain decoding")
    runs: list[Run] = []
    configs: dict[str, Any] = {}
    for setting in SETTINGS:
        overrides = plan.overrides(setting)
        config = (RainConfig.fast if setting.preset == "fast" else RainConfig)(**overrides)
        configs[setting.name] = {
            "preset": setting.preset,
            "overrides": overrides,
            "deviations": {k: v[1] for k, v in config.deviations().items()},
        }
        for name, judge in judges.items():
            decoder = RainDecoder(lm, judge, config=config)
            for prompt in plan.prompts:
                runs.append(measure(setting, name, prompt, decoder))
                progress(f"{setting.name} / {name}")
    return plain, runs, configs


# --- the report ---------------------------------------------------------------------------------
def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarise(plain: list[Run], runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (setting, evaluator): means over the prompts, counts summed."""
    rows = [
        {
            "setting": "plain decoding",
            "evaluator": "-",
            "seconds_per_answer": _mean([r.seconds for r in plain]),
            "first_piece_seconds": None,
            "new_tokens": _mean([r.new_tokens for r in plain]),
            "searches_per_commit": None,
            "rounds_per_commit": None,
            "model_calls_per_commit": None,
            "early_stops": None,
            "finish_reasons": sorted({r.finish_reason for r in plain}),
            "commits_on_rule": None,
            "commits_checked": None,
        }
    ]
    for setting in SETTINGS:
        for evaluator in EVALUATORS:
            group = [r for r in runs if r.setting == setting.name and r.evaluator == evaluator]
            commits = sum(r.commits for r in group) or 1
            rows.append(
                {
                    "setting": setting.name,
                    "evaluator": evaluator,
                    "seconds_per_answer": _mean([r.seconds for r in group]),
                    "first_piece_seconds": _mean([r.first_piece_seconds for r in group if r.first_piece_seconds]),
                    "new_tokens": _mean([r.new_tokens for r in group]),
                    "searches_per_commit": sum(r.searches for r in group) / commits,
                    "rounds_per_commit": sum(r.rounds for r in group) / commits,
                    "model_calls_per_commit": sum(r.model_calls for r in group) / commits,
                    "early_stops": sum(r.early_stops for r in group),
                    "finish_reasons": sorted({r.finish_reason for r in group}),
                    "commits_on_rule": sum(r.commits_on_rule for r in group),
                    "commits_checked": sum(r.commits_checked for r in group),
                }
            )
    return rows


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render_table(rows: list[dict[str, Any]], plain_seconds: float) -> str:
    head = (
        "| setting | evaluator | s / answer | × plain | first piece (s) | new tokens | searches / commit "
        "| rounds / commit | model calls / commit | early stops | ends | commits on the budget rule |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows:
        ratio = row["seconds_per_answer"] / plain_seconds if plain_seconds else None
        rule = "—" if row["commits_checked"] is None else f"{row['commits_on_rule']}/{row['commits_checked']}"
        lines.append(
            f"| {row['setting']} | {row['evaluator']} | {_num(row['seconds_per_answer'])} | {_num(ratio)}x "
            f"| {_num(row['first_piece_seconds'])} | {_num(row['new_tokens'])} | {_num(row['searches_per_commit'])} "
            f"| {_num(row['rounds_per_commit'])} | {_num(row['model_calls_per_commit'])} "
            f"| {'—' if row['early_stops'] is None else row['early_stops']} | {', '.join(row['finish_reasons'])} "
            f"| {rule} |"
        )
    return head + "\n".join(lines) + "\n"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    import torch

    try:
        git = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git, dirty = "unknown", ""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "rain": _version("rain-align"),
        "git": git + (" (uncommitted changes)" if dirty else ""),
        "platform": platform.platform(),
    }


def render_markdown(report: dict[str, Any], table: str) -> str:
    m = report["machine"]
    plan = report["plan"]
    settings = "\n".join(
        f"| {name} | `{c['preset']}` | `{json.dumps(c['overrides'])}` | {note} |"
        for (name, c), note in zip(report["configs"].items(), [s.note for s in SETTINGS])
    )
    header = "  \n".join(
        [
            f"Date: {report['date']}",
            f"Machine: {m['cpu']}, {m['cpus']} CPUs ({m['usable_cpus']} usable, torch threads {m['torch_threads']}), "
            f"load average at start {report['load_start']}, at end {report['load_end']}; GPU: none",
            f"Software: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
            f"rain {m['rain']} (git {m['git']})",
            f"Command: `{report['command']}`",
            f"Wall time of the whole run: {report['wall_seconds']:.0f} s",
        ]
    )
    quick_note = (
        f" Quick mode: every setting over tiny budgets (`{json.dumps(QUICK_BUDGETS)}`), for a test, not for reading."
        if plan["mode"] == "quick"
        else ""
    )
    deadline = report["configs"]["official, deadline"]["overrides"]["max_seconds"]
    over = [
        f"{row['evaluator']} {row['seconds_per_answer'] - deadline:+.1f} s"
        for row in report["rows"]
        if row["setting"] == "official, deadline"
    ]
    return f"""# How budgets trade latency for search (CPU, {plan["mode"]})

{header}

The embedded SmolLM2-135M-Instruct in float32 on this CPU; {len(plan["prompts"])} prompt(s), at most
{plan["max_new_tokens"]} new tokens, seed 0. Each figure is the mean over the prompts of one decode each
(one run, no repeats). "approves all" scores every reply +1 (the early stop fires as soon as it may);
"rejects all" scores every reply -1 (no early stop: the whole budget on every commit).{quick_note}

{START}
{table}{END}

- **s / answer**: wall seconds of one streamed decode; **× plain**: over plain decoding of the same
  prompts ({_num(report["plain_seconds"], 2)} s per answer).
- **first piece**: seconds until the stream handed out its first committed text.
- **searches / rounds / model calls per commit**: `RainResult.stats` over the commits
  (`parallel_searches` runs up to B searches per round; a batched request counts as one model call).
- **official, deadline**: `max_seconds={deadline:g}`; seconds per answer minus the deadline: {"; ".join(over)}.
- **commits on the budget rule**: commits that ran exactly `max(max_searches, reused + min(extra_searches,
  max_searches)) - reused` new searches, out of the commits that neither stopped early nor were cut by the
  deadline.

## Settings

| setting | preset | RainConfig fields set | what it shows |
|---|---|---|---|
{settings}

## Prompts

{chr(10).join(f"- {p}" for p in plan["prompts"])}
"""


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def put_table_into(page: Path, table: str, source: str) -> None:
    """Replace what lies between the page's START and END lines with ``table`` (and where it is from)."""
    text = page.read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise SystemExit(f"{page} has no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    write_atomic(page, f"{head}{START}\n{source}\n\n{table}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, one prompt, 4 tokens (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    parser.add_argument("--docs", default=None, help="a page whose budgets-table block gets the table")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per answer (full mode)")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full(args.max_new_tokens)
    out = Path(args.out)
    name = "budgets-cpu-quick" if args.quick else "budgets-cpu"
    command = "python benchmarks/budgets.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    total = len(plan.prompts) * (2 + len(SETTINGS) * len(EVALUATORS))
    with tqdm(total=total, file=sys.stderr, unit="decode", dynamic_ncols=True) as bar:

        def progress(label: str) -> None:
            bar.set_description(label)
            bar.update(1)

        plain, runs, configs = measure_all(plan, progress)
    rows = summarise(plain, runs)
    plain_seconds = rows[0]["seconds_per_answer"]
    table = render_table(rows, plain_seconds)
    report = {
        "schema": SCHEMA,
        "version": VERSION,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command.strip(),
        "machine": machine(),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": time.perf_counter() - t0,
        "plan": {"mode": plan.mode, "prompts": list(plan.prompts), "max_new_tokens": plan.max_new_tokens},
        "configs": configs,
        "evaluators": EVALUATORS,
        "plain_seconds": plain_seconds,
        "rows": rows,
        "runs": [asdict(r) for r in plain + runs],
    }
    md_path, json_path = out / f"{name}.md", out / f"{name}.json"
    write_atomic(json_path, json.dumps(report, indent=2) + "\n")
    write_atomic(md_path, render_markdown(report, table))
    if args.docs:
        where = md_path.resolve().relative_to(ROOT) if md_path.resolve().is_relative_to(ROOT) else md_path
        source = (
            f"Measured by `{report['command']}` on {report['date'][:10]} (git {report['machine']['git']}); "
            f"the full report, with the machine and its load: `{where}`."
        )
        put_table_into(Path(args.docs), table, source)
    print(table, end="")
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
