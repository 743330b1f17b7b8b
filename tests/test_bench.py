"""The speed benchmark (``rain_bench.speed``) runs end to end (quick mode) and writes a complete report.

No timing assertions: the targets live in the report, not in tests.
"""

import json
import math
import mmap
import time

import pytest

from rain_bench import harness, output
from rain_bench.speed.plan import PARALLEL_WIDTHS

pytestmark = pytest.mark.model


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    from rain_core.cli import main

    assert main(["bench", "speed", "--quick", "--out", str(out)]) == 0
    return out


def test_report_files_exist_and_are_complete(report):
    md = (report / "speed-quick.md").read_text()
    data = json.loads((report / "speed-quick.json").read_text())
    assert not list(report.glob("*.tmp")), "temporary files left behind"
    assert data["benchmark"] == "speed" and data["schema"] == 3
    assert data["config"]["mode"] == "quick"
    for key in ("cpu_count", "torch", "date"):
        assert key in data["machine"] or key in data
    for heading in ("### 1.", "### 2–3.", "### 4.", "### 5.", "### 6.", "### 7.", "## Targets", "## Summary"):
        assert heading in md
    assert "fast preset" in md and set(data["config"]["presets"]) == {"official", "fast"}
    assert "cpu" in data["devices"]
    for name, dev in data["devices"].items():
        o, e, w, m, s = dev["overhead"], dev["engine"], dev["forward_work"], dev["memory"], dev["scaling"]
        for evaluator in ("self", "everything", "nothing"):
            assert _finite(o["rain"][evaluator]["wall_ratio"]), (name, evaluator)
            assert _finite(o["rain"][f"fast:{evaluator}"]["per_token_ratio"]), (name, evaluator)
        fid = dev["fidelity"]
        assert [r["scenario"]["name"] for r in fid["results"]] == ["france-paris"]
        assert set(fid["results"][0]["outcomes"]) == {"official", "fast", "official B=4", "official B=8"}
        assert fid["results"][0]["outcomes"]["fast"]["seeds"] == data["config"]["fidelity_seeds"] == 2
        assert _finite(o["vanilla"]["seconds"])
        assert _finite(e["gain"]) and isinstance(e["same_decisions"], bool)
        assert _finite(e["on"]["seconds_per_search"]) and _finite(e["off"]["seconds_per_search"])
        assert _finite(w["on_forward_tokens_per_token"]) and _finite(w["off_forward_tokens_per_token"])
        assert _finite(w["reduction"])
        assert _finite(m["ratio"]) and m["vanilla_peak_bytes"] > 0 and m["rain_peak_bytes"] > 0
        assert m["kv_cache_bytes_after"] >= 0
        assert [r["max_new_tokens"] for r in s["rows"]] == list(data["config"]["lengths"])
        assert all(_finite(r["rain_seconds_per_token"]) for r in s["rows"])
        assert _finite(s["growth"])
        assert set(dev["targets"]) == {
            "best_case_overhead",
            "fast_best_case",
            "engine_gain",
            "peak_memory",
            "linear_cost",
            "parallel_worst_case_official",
            "parallel_worst_case_fast",
            "parallel_memory",
            "round_forward",
        }
        # section 7: every preset, evaluator and width, each with its cost per commit
        p = dev["parallel"]
        keys = {(r["preset"], r["evaluator"], r["width"]) for r in p["rows"]}
        presets, evaluators = ("official", "fast"), ("nothing", "self", "mixed")
        assert keys == {(a, b, w) for a in presets for b in evaluators for w in PARALLEL_WIDTHS}
        for r in p["rows"]:
            assert _finite(r["per_token_ratio"]) and _finite(r["versus_one"]) and r["model_calls_per_commit"] > 0
            assert r["width"] != 1 or r["versus_one"] == 1.0
        assert p["memory"]["width"] == max(PARALLEL_WIDTHS) and p["memory"]["vanilla_peak_bytes"] > 0
        for target in dev["targets"].values():
            assert _finite(target["value"]) and isinstance(target["met"], bool)
            assert ("met" in md) and target["target"] in md
        # the per-prompt rows add up to the summaries the ratios are computed from
        v = o["vanilla"]
        assert v["new_tokens"] == sum(r["new_tokens"] for r in v["per_prompt"])
        assert math.isclose(v["seconds"], sum(r["seconds"] for r in v["per_prompt"]))


def test_engine_sections_read_the_engine_through_public_methods_only():
    import inspect

    from rain_bench.speed import sections

    source = inspect.getsource(sections)
    for private in ("lm.model", "lm.tokenizer", "lm.cache", "TransformersLM("):
        assert private not in source, private


def test_atomic_write_replaces_without_leftovers(tmp_path):
    path = tmp_path / "r.md"
    output.write_atomic(path, "one")
    output.write_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "r.json"
    output.write_atomic(path, "old")

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        output.write_atomic(path, Boom())  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_peak_memory_sampler_sees_a_short_lived_allocation():
    with harness.PeakMemory("cpu", interval=0.001) as mem:
        # A fresh anonymous mapping, written page by page: new resident memory whatever the
        # allocator has kept from earlier tests (a malloc'd block may reuse freed, resident pages).
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
        during = harness.rss_bytes()
        time.sleep(0.3)  # the sampler wakes every millisecond; leave it time on a busy machine
        block.close()
    after = harness.rss_bytes()
    # The block was resident and then unmapped, so only the sampler can have seen it.
    assert during - after >= 48 * 2**20
    assert mem.peak >= during - 4 * 2**20
