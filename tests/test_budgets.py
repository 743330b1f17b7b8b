"""benchmarks/budgets.py (the table of docs/budgets.md) in its quick mode, end to end on the embedded
model: it writes both reports atomically, fills a page's table block, and what it measured obeys the
rules docs/budgets.md states (the budget rule on every commit of the worst case, early stops only when
the evaluator is satisfied, rounds of several searches with parallel_searches). No timing is asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rain_core import RainConfig

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- budgets-table:start -->", "<!-- budgets-table:end -->"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("budgets")
    page = out / "page.md"
    shutil.copy(ROOT / "docs" / "budgets.md", page)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "budgets.py"),
            "--quick",
            "--out",
            str(out / "results"),
            "--docs",
            str(page),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((out / "results" / "budgets-cpu-quick.json").read_text())
    return out, page, done, report


pytestmark = pytest.mark.model


def _config(report, setting):
    c = report["configs"][setting]
    return (RainConfig.fast if c["preset"] == "fast" else RainConfig)(**c["overrides"])


def test_it_writes_both_reports_and_nothing_else(quick):
    out, _, done, report = quick
    assert sorted(p.name for p in (out / "results").iterdir()) == ["budgets-cpu-quick.json", "budgets-cpu-quick.md"]
    md = (out / "results" / "budgets-cpu-quick.md").read_text()
    assert report["schema"] == "rain.budgets" and report["version"] == 1 and report["plan"]["mode"] == "quick"
    settings = list(report["configs"])
    assert settings == [
        "official",
        "official, small budgets",
        "fast",
        "fast, parallel_searches=8",
        "official, parallel_searches=8",
        "official, deadline",
    ]
    rows = {(r["setting"], r["evaluator"]) for r in report["rows"]}
    assert rows == {("plain decoding", "-")} | {(s, e) for s in settings for e in report["evaluators"]}
    table = md.split(START, 1)[1].split(END, 1)[0].strip()
    assert table.startswith("| setting | evaluator | s / answer |")
    assert table in done.stdout  # the table is printed
    assert len(table.splitlines()) == 2 + len(rows)
    decodes = len(report["runs"]) + len(report["plan"]["prompts"])  # and one warm-up per prompt
    assert f"{decodes}/{decodes}" in done.stderr and f"{decodes}/{decodes}" not in done.stdout  # progress: stderr


def test_the_configs_are_the_settings_they_are_named_after(quick):
    _, _, _, report = quick
    budgets = {"max_searches", "extra_searches", "min_visits", "num_candidates", "max_simulation_tokens"}
    assert _config(report, "official").deviations().keys() <= budgets | {"max_new_tokens"}
    assert _config(report, "fast").lazy_expansion and _config(report, "fast, parallel_searches=8").lazy_expansion
    assert _config(report, "fast, parallel_searches=8").parallel_searches == 8
    assert _config(report, "official, parallel_searches=8").parallel_searches == 8
    assert not _config(report, "official, parallel_searches=8").lazy_expansion
    assert _config(report, "official, deadline").max_seconds is not None
    small, official = _config(report, "official, small budgets"), _config(report, "official")
    assert small.max_searches < official.max_searches


def test_the_worst_case_runs_the_budget_rule_on_every_commit(quick):
    _, _, _, report = quick
    worst = [r for r in report["runs"] if r["evaluator"] == "rejects all" and r["setting"] != "official, deadline"]
    assert len(worst) == 5
    for run in worst:
        config = _config(report, run["setting"])
        assert run["early_stops"] == 0 and run["commits"] == len(run["commit_log"]) > 0
        for entry in run["commit_log"]:
            reused = entry["reused_visits"]
            expected = max(config.max_searches, reused + min(config.extra_searches, config.max_searches)) - reused
            assert entry["searches"] == expected, (run["setting"], entry)
        assert run["commits_on_rule"] == run["commits_checked"] == run["commits"]
        assert run["searches"] == sum(e["searches"] for e in run["commit_log"])


def test_only_a_satisfied_evaluator_stops_early(quick):
    _, _, _, report = quick
    rows = {(r["setting"], r["evaluator"]): r for r in report["rows"]}
    assert rows["official", "approves all"]["early_stops"] > 0
    assert rows["fast", "approves all"]["early_stops"] > 0
    assert all(rows[s, "rejects all"]["early_stops"] == 0 for s in report["configs"])


def test_parallel_searches_run_several_searches_per_round(quick):
    _, _, _, report = quick
    for run in report["runs"]:
        if "parallel_searches=8" in run["setting"]:
            assert run["rounds"] <= run["searches"], run
        # official expansions give every leaf its candidates at once, so a round finds several leaves
        # (under lazy expansion a fresh node has one child, and a small tree may have one leaf a round)
        if run["evaluator"] == "rejects all" and run["setting"] == "official, parallel_searches=8":
            assert run["rounds"] < run["searches"], run
        if run["setting"] in ("official", "fast") and run["evaluator"] != "-":
            assert run["rounds"] == run["searches"], run


def test_the_deadline_ends_answers_with_time_or_earlier(quick):
    _, _, _, report = quick
    for run in report["runs"]:
        if run["setting"] == "official, deadline":
            assert run["finish_reason"] in ("time", "length", "eos"), run
        elif run["evaluator"] != "-":
            assert run["finish_reason"] != "time", run


def test_the_page_gets_the_table_and_keeps_the_rest(quick):
    out, page, _, _ = quick
    before = (ROOT / "docs" / "budgets.md").read_text()
    after = page.read_text()
    md = (out / "results" / "budgets-cpu-quick.md").read_text()
    table = md.split(START, 1)[1].split(END, 1)[0].strip()
    assert before.split(START, 1)[0] == after.split(START, 1)[0]
    assert before.split(END, 1)[1] == after.split(END, 1)[1]
    block = after.split(START, 1)[1].split(END, 1)[0]
    assert block.strip().endswith(table)
    assert "python benchmarks/budgets.py --quick" in block  # where the numbers come from
