"""benchmarks/busy.py (the core quick start idle and beside a CPU-bound job, before and after rain's
choice of threads): what it runs (the README's block), the table and report it writes, and its quick
mode end to end on the embedded model. No timing is asserted: the figures need a quiet machine."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("busy", ROOT / "benchmarks" / "busy.py")
assert spec is not None and spec.loader is not None
busy = importlib.util.module_from_spec(spec)
sys.modules["busy"] = busy  # its dataclasses look their module up
spec.loader.exec_module(busy)


def test_it_times_the_readmes_core_quick_start():
    code = busy.quick_start()
    assert code.startswith("from rain_core import")
    assert "load_default_model()" in code and "dec.generate(question)" in code
    compile(code, "README.md", "exec")


def test_before_is_pytorchs_threads_and_after_is_the_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # this process's settings never reach a run
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    before, after = busy.environment("before", None), busy.environment("after", None)
    assert before["RAIN_THREADS"] == "off" and "RAIN_THREADS" not in after
    for env in (before, after):
        assert "OMP_NUM_THREADS" not in env and "OMP_WAIT_POLICY" not in env
        assert env["PYTHONPATH"].split(":")[0] == str(ROOT)
    tree = Path("/some/old/checkout")
    assert busy.environment("before", tree)["PYTHONPATH"].split(":")[0] == str(tree)
    assert "RAIN_THREADS" not in busy.environment("before", tree)


def runs(seconds: dict[tuple[str, str], list[float | None]]) -> list:
    return [
        busy.Run(condition, variant, i, s, 0 if s is not None else None, "same")
        for (condition, variant), values in seconds.items()
        for i, s in enumerate(values)
    ]


def test_medians_ranges_and_the_target():
    idle, job = busy.CONDITIONS
    cells = busy.summarise(
        runs(
            {
                (idle, "before"): [30.0, 32.0, 31.0],
                (idle, "after"): [29.0, 30.0, 35.0],
                (job, "before"): [200.0, None, 240.0],  # one past the timeout (counted as the timeout)
                (job, "after"): [50.0, 58.0, 55.0],
            }
        ),
        timeout=900.0,
    )
    assert cells[job]["before"] == {
        "median": 240.0, "min": 200.0, "max": 900.0, "repeats": 3, "timed_out": 1, "failed": 0,
    }  # fmt: skip
    table = busy.render_table(cells, "RAIN_THREADS=off")
    assert f"| {idle} | 31.0 s (30.0-32.0) | 30.0 s (29.0-35.0) | 0.97x |" in table
    assert "240.0 s (200.0-900.0), 1 past the timeout" in table
    assert "| beside the job / idle | 7.74x | 1.83x (target at most 2x) | |" in table
    assert busy.verdict(cells) == "met (1.83x)"
    slow = busy.summarise(runs({(idle, "after"): [20.0], (job, "after"): [50.0]}), timeout=900.0)
    assert busy.verdict(slow) == "not met (2.50x)"


def test_the_table_goes_between_the_pages_markers(tmp_path):
    page = tmp_path / "page.md"
    shutil.copy(ROOT / "docs" / "troubleshooting.md", page)
    busy.put_table_into(page, "| a | b |\n", "Measured by me.")
    text = page.read_text()
    assert f"{busy.START}\nMeasured by me.\n\n| a | b |\n{busy.END}" in text
    assert text.count(busy.START) == 1 and "## Errors from `rain generate`" in text


@pytest.mark.model
def test_the_quick_mode_writes_both_reports_and_fills_the_table(tmp_path):
    page = tmp_path / "page.md"
    shutil.copy(ROOT / "docs" / "troubleshooting.md", page)
    out = tmp_path / "results"
    command = [sys.executable, str(ROOT / "benchmarks" / "busy.py"), "--quick", "--out", str(out), "--docs", str(page)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["busy-cpu-quick.json", "busy-cpu-quick.md"]
    report = json.loads((out / "busy-cpu-quick.json").read_text())
    assert report["schema"] == "rain.busy" and report["mode"] == "quick" and report["repeats"] == 1
    assert {(r["condition"], r["variant"]) for r in report["runs"]} == {
        (c, v) for c in busy.CONDITIONS for v in busy.VARIANTS
    }
    assert all(r["status"] == 0 and r["seconds"] > 0 for r in report["runs"])
    assert isinstance(report["same_output"], bool)  # recorded; thread counts may differ in rounding
    md = (out / "busy-cpu-quick.md").read_text()
    assert "beside the job / idle" in md and report["verdict"] in md
    assert "beside the job / idle" in page.read_text()
    assert "wrote " in done.stdout


# --- benchmarks/commands.py: the README's shell commands, idle and beside one job -------------------
def test_the_commands_are_the_readmes_and_parse():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import commands

    from rain_core.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    for line, _ in commands.COMMANDS:
        argv = commands.shlex.split(line)
        assert argv[0] == "rain"
        if argv[1] == "generate":
            build_parser().parse_args(argv[1:])  # every option exists
    assert 'rain generate --compare --max-searches 8 "..."' in readme  # the README shows these forms
    assert "rain demo" in readme


@pytest.mark.model
def test_commands_times_a_command_idle_and_beside_a_job(tmp_path):
    out = tmp_path / "results"
    script = ROOT / "benchmarks" / "commands.py"
    done = subprocess.run(
        [sys.executable, str(script), "--only", "6", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
        timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((out / "commands-cpu.json").read_text())
    (row,) = report["rows"]
    assert row["command"] == "rain bench evaluator --quick --out ."
    for condition in busy.CONDITIONS:
        assert row[condition]["status"] == 0 and row[condition]["seconds"] > 0
    assert "| `rain bench evaluator --quick --out .` |" in (out / "commands-cpu.md").read_text()
