"""The speed benchmark runs end to end (quick mode) and writes a complete report.

No timing assertions: the targets live in the report, not in tests.
"""

import json
import math
import mmap
import time

import pytest

from rain_core import bench

pytestmark = pytest.mark.model


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(quick=True, out=str(out)) == 0
    return out


def test_report_files_exist_and_are_complete(report):
    md = (report / "speed-quick.md").read_text()
    data = json.loads((report / "speed-quick.json").read_text())
    assert not list(report.glob("*.tmp")), "temporary files left behind"
    assert data["config"]["mode"] == "quick"
    for key in ("cpu_count", "torch", "date"):
        assert key in data["machine"] or key in data
    for heading in ("### 1.", "### 2–3.", "### 4.", "### 5.", "## Targets", "## Summary"):
        assert heading in md
    assert "cpu" in data["devices"]
    for name, dev in data["devices"].items():
        s1, s2, s3, s4, s5 = (dev[f"section{i}"] for i in range(1, 6))
        for evaluator in ("self", "everything", "nothing"):
            assert _finite(s1["rain"][evaluator]["wall_ratio"]), (name, evaluator)
        assert _finite(s1["vanilla"]["seconds"])
        assert _finite(s2["gain"]) and isinstance(s2["same_decisions"], bool)
        assert _finite(s2["on"]["seconds_per_search"]) and _finite(s2["off"]["seconds_per_search"])
        assert _finite(s3["on"]["forward_tokens_per_token"]) and _finite(s3["off"]["forward_tokens_per_token"])
        assert _finite(s3["reduction"])
        assert _finite(s4["ratio"]) and s4["vanilla_peak_bytes"] > 0 and s4["rain_peak_bytes"] > 0
        assert [r["max_new_tokens"] for r in s5["rows"]] == list(data["config"]["lengths"])
        assert all(_finite(r["rain_seconds_per_token"]) for r in s5["rows"])
        assert _finite(s5["growth"])
        assert set(dev["targets"]) == {"best_case_overhead", "engine_gain", "peak_memory", "linear_cost"}
        for target in dev["targets"].values():
            assert _finite(target["value"]) and isinstance(target["met"], bool)
            assert ("met" in md) and target["target"] in md


def test_atomic_write_replaces_without_leftovers(tmp_path):
    path = tmp_path / "r.md"
    bench.write_atomic(path, "one")
    bench.write_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]


def test_peak_memory_sampler_sees_a_short_lived_allocation():
    with bench.PeakMemory("cpu", interval=0.001) as mem:
        # A fresh anonymous mapping, written page by page: new resident memory whatever the
        # allocator has kept from earlier tests (a malloc'd block may reuse freed, resident pages).
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        during = bench._rss_bytes()
        time.sleep(0.3)  # the sampler wakes every millisecond; leave it time on a busy machine
        block.close()
    after = bench._rss_bytes()
    # The block was resident and then unmapped, so only the sampler can have seen it.
    assert during - after >= 48 * 2**20
    assert mem.peak >= during - 4 * 2**20
