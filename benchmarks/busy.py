"""The README's core quick start, idle and beside one CPU-bound job, before and after rain's choice of
CPU threads: ``python benchmarks/busy.py``.

Each run is the quick start's Python block (read from README.md, "## Quick start") pasted into a
fresh interpreter, model loading included, timed by the wall clock. "before" is PyTorch's own
threads (``RAIN_THREADS=off``, or the checkout of ``--before REV``); "after" is this checkout as a
user gets it. "beside one job" runs one CPU-bound process (a Python loop on one core) for the
whole run. Every repeat runs the four (condition, variant) pairs, the variants in alternating
order; a row is the median of the repeats with their range. Target: beside the job, the quick start
takes at most 2x its idle time. It prints the table, writes ``busy-cpu.md`` and ``busy-cpu.json``
into ``--out`` (``busy-cpu-quick.*`` with ``--quick``), each atomically, and with ``--docs PAGE`` puts
the table into PAGE between its ``<!-- busy-table:start -->`` and ``<!-- busy-table:end -->`` lines.

    python benchmarks/busy.py --docs docs/troubleshooting.md   # the full run (nothing else running)
    python benchmarks/busy.py --quick --out /tmp/busy          # a tiny decode, one repeat (a test runs it)

Only on a quiet machine do the figures mean anything: the report records the load average at the
start and the end, and says when the machine was not quiet.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA, VERSION = "rain.busy", 1
START, END = "<!-- busy-table:start -->", "<!-- busy-table:end -->"
TARGET = 2.0  # beside one job, at most this many times the idle time
CONDITIONS = ("idle", "beside one CPU-bound job")
VARIANTS = ("before", "after")
# The variables that steer threads: a run gets none of them from this process, only what its variant sets.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "RAIN_THREADS")
QUICK_CODE = """
from rain_core import CallableEvaluator, RainDecoder, load_default_model

lm = load_default_model()
no_blue = CallableEvaluator(lambda prompt, reply: -1.0 if "blue" in reply.lower() else 1.0)
dec = RainDecoder(lm, no_blue, max_new_tokens=4, max_searches=2, extra_searches=1)
print(dec.generate("What colour is the sky on a clear day?").text)
"""
BUSY_JOB = "while True: pass"


def quick_start(readme: Path = ROOT / "README.md") -> str:
    """The first Python block under the README's "## Quick start" heading."""
    text = readme.read_text()
    if "\n## Quick start" not in text:
        raise SystemExit(f"{readme} has no '## Quick start' section")
    section = text.split("\n## Quick start", 1)[1]
    if "```python\n" not in section:
        raise SystemExit(f"{readme}'s Quick start has no Python block")
    return section.split("```python\n", 1)[1].split("\n```", 1)[0] + "\n"


@dataclass
class Run:
    condition: str
    variant: str
    repeat: int
    seconds: float | None  # None: past the timeout
    status: int | None
    output: str


def checkout(rev: str, into: Path) -> Path:
    """The files of git revision ``rev`` in ``into`` (for ``--before REV``)."""
    archive, tree = into / "before.tar", into / "tree"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), rev], cwd=ROOT, check=True)
    tree.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(tree)], check=True)
    return tree


def environment(variant: str, before_tree: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    tree = before_tree if variant == "before" and before_tree is not None else ROOT
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)
    if variant == "before" and before_tree is None:
        env["RAIN_THREADS"] = "off"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def timed(
    code: str | list[str], env: dict[str, str], timeout: float, cwd: str | None = None
) -> tuple[float | None, int | None, str]:
    """Seconds ``python -c code`` (or the command ``code``) took in a fresh process, its status and its
    output (None, None, "" past the timeout)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", code] if isinstance(code, str) else code,
            env=env,
            cwd=cwd or tempfile.gettempdir(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, None, ""
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-2000:])
    return seconds, done.returncode, done.stdout


class BusyJob:
    """One CPU-bound process for the length of a ``with`` block."""

    def __enter__(self) -> BusyJob:
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY_JOB])
        time.sleep(1.0)  # let it take its core
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def measure(code: str, repeats: int, timeout: float, before_tree: Path | None, say: Any) -> list[Run]:
    runs = []
    for repeat in range(repeats):
        order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
        for condition in CONDITIONS:
            with BusyJob() if condition != "idle" else contextlib.nullcontext():
                for variant in order:
                    say(f"repeat {repeat + 1}/{repeats}: {condition}, {variant}")
                    seconds, status, output = timed(code, environment(variant, before_tree), timeout)
                    runs.append(Run(condition, variant, repeat, seconds, status, output))
                    shown = f"{seconds:.1f} s" if seconds is not None else f"over {timeout:.0f} s"
                    say(f"repeat {repeat + 1}/{repeats}: {condition}, {variant}: {shown}")
    return runs


def summarise(runs: list[Run], timeout: float) -> dict[str, dict[str, dict[str, Any]]]:
    """Per condition and variant: the median seconds (a run past the timeout counts as the timeout,
    and the cell says so), the range, the repeats, and whether every run succeeded."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for condition in CONDITIONS:
        for variant in VARIANTS:
            mine = [r for r in runs if r.condition == condition and r.variant == variant]
            seconds = [r.seconds if r.seconds is not None else timeout for r in mine]
            cells.setdefault(condition, {})[variant] = {
                "median": statistics.median(seconds) if seconds else None,
                "min": min(seconds, default=None),
                "max": max(seconds, default=None),
                "repeats": len(mine),
                "timed_out": sum(r.seconds is None for r in mine),
                "failed": sum(r.status not in (0, None) for r in mine),
            }
    return cells


def _cell(c: dict[str, Any]) -> str:
    if c["median"] is None:
        return "n/a"
    text = f"{c['median']:.1f} s ({c['min']:.1f}-{c['max']:.1f})"
    if c["timed_out"]:
        text += f", {c['timed_out']} past the timeout"
    if c["failed"]:
        text += f", {c['failed']} failed"
    return text


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def render_table(cells: dict[str, dict[str, dict[str, Any]]], before: str) -> str:
    idle, busy = (cells[c] for c in CONDITIONS)
    rows = [
        f"| condition | before ({before}) | after (rain's threads) | after / before |",
        "|---|---|---|---|",
    ]
    for name in CONDITIONS:
        c = cells[name]
        rows.append(
            f"| {name} | {_cell(c['before'])} | {_cell(c['after'])} | "
            f"{_ratio(c['after']['median'], c['before']['median'])} |"
        )
    rows.append(
        f"| beside the job / idle | {_ratio(busy['before']['median'], idle['before']['median'])} | "
        f"{_ratio(busy['after']['median'], idle['after']['median'])} (target at most {TARGET:g}x) | |"
    )
    return "\n".join(rows) + "\n"


def verdict(cells: dict[str, dict[str, dict[str, Any]]]) -> str:
    idle, busy = (cells[c]["after"]["median"] for c in CONDITIONS)
    if idle is None or busy is None:
        return "not measured"
    return f"{'met' if busy <= TARGET * idle else 'not met'} ({busy / idle:.2f}x)"


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    dirty = "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "python": platform.python_version(),
        "git": git("rev-parse", "--short", "HEAD") + dirty,
    }


def render_markdown(report: dict[str, Any], table: str) -> str:
    m = report["machine"]
    quiet = report["load_start"][0] <= 0.5
    warning = (
        ""
        if quiet
        else f"\n**The machine was not quiet** (load average {report['load_start'][0]} at the start): these "
        "figures mix in other work and are not a measurement of rain.\n"
    )
    outputs = "yes" if report["same_output"] else "no (see the JSON report)"
    header = "  \n".join(
        [
            f"Date: {report['date']}",
            f"Machine: {m['cpu']}, {m['cpus']} CPUs ({m['usable_cpus']} usable); Python {m['python']}; "
            f"rain git {m['git']}",
            f"Command: `{report['command']}`",
            f"Load average at start {report['load_start']}, at end {report['load_end']}; wall time of the whole "
            f"run {report['wall_seconds']:.0f} s",
        ]
    )
    return f"""# The core quick start on a busy CPU ({report["mode"]})

{header}
{warning}
Seconds for {report["workload"]} in a fresh interpreter, model loading included; median of
{report["repeats"]} repeat(s) with the range, the variants in alternating order. "before":
{report["before"]}; "after": this checkout's default (the engine's thread choice: the cores this
process may use, fewer while other work keeps some of them busy). "beside one CPU-bound job": a Python loop on one core
runs for the whole run. Target: beside the job, at most {TARGET:g}x the idle time: **{report["verdict"]}**.
Every run printed the same text: {outputs}.

{START}
{table}{END}
"""


def put_table_into(page: Path, table: str, source: str) -> None:
    text = page.read_text()
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise SystemExit(f"{page} has no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    write_atomic(page, f"{head}{START}\n{source}\n\n{table}{END}{tail}")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 4-token decode, one repeat (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 3; 1 with --quick)")
    parser.add_argument(
        "--before",
        default=None,
        metavar="REV",
        help="a git revision as 'before' (default: this checkout with RAIN_THREADS=off)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take (default 900)")
    parser.add_argument(
        "--out", default=None, help="report folder (default benchmarks/results; a temporary folder with --quick)"
    )
    parser.add_argument("--docs", default=None, help="a page whose busy-table block gets the table")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1 or args.timeout <= 0:
        parser.error("--repeats and --timeout must be positive")
    code = QUICK_CODE if args.quick else quick_start()
    out = (
        Path(args.out)
        if args.out
        else (Path(tempfile.mkdtemp(prefix="rain-busy-")) if args.quick else ROOT / "benchmarks" / "results")
    )
    name = "busy-cpu-quick" if args.quick else "busy-cpu"
    command = ("python benchmarks/busy.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    load_start = [round(x, 2) for x in os.getloadavg()]
    if load_start[0] > 0.5:
        sys.stderr.write(f"busy.py: the load average is {load_start[0]}: the figures will mix in other work\n")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rain-busy-before-") as scratch:
        before_tree = checkout(args.before, Path(scratch)) if args.before else None
        before = f"git {args.before}" if args.before else "PyTorch's own threads, RAIN_THREADS=off"
        runs = measure(code, repeats, args.timeout, before_tree, lambda text: sys.stderr.write(f"busy.py: {text}\n"))
    cells = summarise(runs, args.timeout)
    table = render_table(cells, before)
    report = {
        "schema": SCHEMA,
        "version": VERSION,
        "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": time.perf_counter() - t0,
        "workload": "a 4-token decode (quick mode)" if args.quick else "the README's core quick start",
        "code": code,
        "before": before,
        "repeats": repeats,
        "timeout": args.timeout,
        "cells": cells,
        "verdict": verdict(cells),
        "same_output": len({r.output for r in runs if r.status == 0}) <= 1,
        "runs": [asdict(r) for r in runs],
    }
    md_path, json_path = out / f"{name}.md", out / f"{name}.json"
    write_atomic(json_path, json.dumps(report, indent=2) + "\n")
    write_atomic(md_path, render_markdown(report, table))
    if args.docs:
        where = md_path.resolve().relative_to(ROOT) if md_path.resolve().is_relative_to(ROOT) else md_path
        source = (
            f"Measured by `{command}` on {report['date'][:10]} (git {report['machine']['git']}, load average "
            f"{load_start[0]} at the start); the full report: `{where}`."
        )
        put_table_into(Path(args.docs), table, source)
    print(table, end="")
    print(f"target (beside the job at most {TARGET:g}x idle, after): {report['verdict']}")
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
