"""The load test of ``rain serve`` (``benchmarks/serve_load.py``): its summary from outcomes made by
hand, and a short run of its quick mode against a server it starts on the embedded model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import serve_load  # noqa: E402


def test_the_summary_counts_each_outcome_and_the_target():
    out = [
        serve_load.Outcome(0, "stream-disconnect", 200, "disconnected", 1.0, 1.0),
        serve_load.Outcome(1, "json", 200, "served", 4.0),
        serve_load.Outcome(2, "stream", 200, "served", 6.0, 2.0),
        serve_load.Outcome(3, "json", 429, "429", 0.0, None, "3"),
    ]
    run = serve_load.Run(4, 60.0, out)
    s = serve_load.summarise(run, {"rain_decodes_in_flight": 0.0}, 0.1)
    assert (s["requests"], s["served"], s["served_json"], s["served_streams"]) == (4, 2, 1, 1)
    assert (s["disconnected"], s["rejected_429"], s["errors"], s["broken_streams"]) == (1, 1, 0, 0)
    assert s["latency_p50"] == 5.0 and s["served_per_minute"] == 2.0 and s["target_met"]
    assert "| broken streams | 0 |" in serve_load.render_table(s)
    run.outcomes.append(serve_load.Outcome(2, "stream", 200, "broken", 3.0, 1.0, "stream ended without [DONE]"))
    s = serve_load.summarise(run, {}, 0.0)
    assert s["broken_streams"] == 1 and not s["target_met"] and "NOT met" in serve_load.render_table(s)


@pytest.mark.model
def test_the_quick_mode_runs_and_writes_its_report(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--quick", "--clients", "2", "--seconds", "3",
           "--report", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "serve-load-quick.json").read_text())
    summary = report["summary"]
    assert summary["target_met"] and summary["served"] + summary["disconnected"] >= 1
    assert summary["in_flight_after"] == 0
    assert "| errors (other than 429) | 0 |" in (tmp_path / "serve-load-quick.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serve-load-quick.json", "serve-load-quick.md"]
