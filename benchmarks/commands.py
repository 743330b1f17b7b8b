"""How long each of the README's shell commands takes on this machine, idle and beside one CPU-bound
job: ``python benchmarks/commands.py``.

Each command runs as a user types it (``rain ...``, here ``python -m rain_core.cli ...`` from this
checkout), offline on the embedded model, in a fresh process and a scratch working directory that
holds the README's ``scores.py``; the wall clock includes loading. "beside one job" runs one
CPU-bound process (a Python loop on one core) for the whole command. The report is written after
every command (``commands-cpu.md`` and ``.json`` in ``--out``, atomically), so a run stopped early
keeps what it measured; ``--only`` picks commands by number. The figures are for the README's
"what each command does and how long it takes" table and mean something only on a quiet machine.

    python benchmarks/commands.py                      # every command, idle and beside one job
    python benchmarks/commands.py --only 2,4 --out /tmp/commands
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from busy import CONDITIONS, ROOT, BusyJob, environment, machine, timed, write_atomic  # noqa: E402

SCORES = """def no_blue(prompt: str, reply: str) -> float:
    return -1.0 if "blue" in reply.lower() else 1.0
"""
LOCK = '"How do I pick a lock?"'
SKY = '"What colour is the sky on a clear day?"'
# (the command as the README shows it, what it does)
COMMANDS: tuple[tuple[str, str], ...] = (
    (f"rain generate {LOCK}", "the aligned answer: the official search, self-evaluation, up to 128 tokens"),
    (f"rain generate --compare --max-searches 8 {LOCK}", "plain decoding and RAIN side by side, with search stats"),
    (f"rain generate --preset fast --max-seconds 30 {LOCK}", "the fast preset, with a 30 s deadline per answer"),
    (
        f"rain generate --evaluator scores:no_blue --compare --max-new-tokens 24 --max-searches 8 "
        f"--extra-searches 4 {SKY}",
        "a scoring function steers the answer (the core quick start from the shell)",
    ),
    ("rain demo", "what RAIN can and cannot do with the embedded model"),
    ("rain bench evaluator --quick --out .", "can the model's self-evaluation judge harm? (a few pairs)"),
)


def run_all(chosen: list[int], timeout: float, out: Path, command: str) -> dict[str, Any]:
    report: dict[str, Any] = {
        "schema": "rain.commands",
        "version": 1,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "timeout": timeout,
        "rows": [],
    }
    t0 = time.perf_counter()
    for number in chosen:
        line, what = COMMANDS[number - 1]
        row: dict[str, Any] = {"number": number, "command": line, "what": what}
        for condition in CONDITIONS:
            sys.stderr.write(f"commands.py: {number}. {line} ({condition})\n")
            with tempfile.TemporaryDirectory(prefix="rain-command-") as cwd:
                (Path(cwd) / "scores.py").write_text(SCORES)
                argv = [sys.executable, "-m", "rain_core.cli", *shlex.split(line)[1:]]
                with BusyJob() if condition != "idle" else contextlib.nullcontext():
                    seconds, status, _ = timed(argv, environment("after", None), timeout, cwd=cwd)
            row[condition] = {"seconds": seconds, "status": status}
        report["rows"].append(row)
        report["load_end"] = [round(x, 2) for x in os.getloadavg()]
        report["wall_seconds"] = time.perf_counter() - t0
        write_atomic(out / "commands-cpu.json", json.dumps(report, indent=2) + "\n")
        write_atomic(out / "commands-cpu.md", render(report))
    return report


def _time(cell: dict[str, Any], timeout: float) -> str:
    if cell["seconds"] is None:
        return f"over {timeout / 60:.0f} min"
    s = cell["seconds"]
    text = f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"
    return text if cell["status"] == 0 else f"{text} (failed, status {cell['status']})"


def render(report: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| `{r['command']}` | {r['what']} | {_time(r[CONDITIONS[0]], report['timeout'])} | "
        f"{_time(r[CONDITIONS[1]], report['timeout'])} |"
        for r in report["rows"]
    )
    m = report["machine"]
    quiet = (
        "" if report["load_start"][0] <= 0.5 else "\n**The machine was not quiet**: these times mix in other work.\n"
    )
    header = "  \n".join(
        [
            f"Date: {report['date']}",
            f"Machine: {m['cpu']}, {m['cpus']} CPUs ({m['usable_cpus']} usable); Python {m['python']}; "
            f"rain git {m['git']}",
            f"Command: `{report['command']}`",
            f"Load average at start {report['load_start']}, at end {report.get('load_end')}; wall time "
            f"{report.get('wall_seconds', 0):.0f} s",
        ]
    )
    return f"""# How long each command takes (CPU)

{header}
{quiet}
Each command once, in a fresh process, model loading included, on the embedded SmolLM2-135M-Instruct;
"beside one CPU-bound job": a Python loop on one core runs for the whole command.

| command | what it does | idle | beside one CPU-bound job |
|---|---|---|---|
{rows}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="command numbers, comma-separated (default: all)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one command may take (default 3600)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    args = parser.parse_args(argv)
    try:
        chosen = [int(n) for n in args.only.split(",")] if args.only else list(range(1, len(COMMANDS) + 1))
    except ValueError:
        parser.error(f"--only takes command numbers such as 1,3, got {args.only!r}")
    if not chosen or any(n < 1 or n > len(COMMANDS) for n in chosen):
        parser.error(f"--only takes numbers from 1 to {len(COMMANDS)}")
    command = ("python benchmarks/commands.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    out = Path(args.out)
    report = run_all(chosen, args.timeout, out, command)
    sys.stdout.write(render(report))
    sys.stdout.write(f"wrote {out / 'commands-cpu.md'} and {out / 'commands-cpu.json'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
