"""The prepared GPU check's parts that can be checked without a GPU: its random MiniLM-shaped encoder,
the device it reads memory from, rows that fail or run out of time being recorded and written at once,
and the pins of what gpu_prep.sh carries. The whole check runs in benchmarks/gpu_rehearsal.sh."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import word_tokenizer

from rain_core import RainConfig
from rain_core.protocols import Encoder

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _module("gpu_check")
gpu_image = _module("gpu_image")


def _report(tmp_path: Path):
    meta = {"device": "cpu", "device_name": "cpu", "torch": "t", "transformers": "x", "python": "3"}
    meta.update(max_new_tokens=4, prompts=1, budget="b", encoder="e")
    return gpu_check.Report(tmp_path, meta)


def test_the_random_encoder_is_an_encoder_of_minilm_shape_with_unit_rows():
    enc = gpu_check.RandomMiniLM(word_tokenizer(), "cpu")
    assert isinstance(enc, Encoder)
    vectors = enc.encode(["hello world", "the a", "hello world", ""])
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)  # padding does not change a row
    assert not np.allclose(vectors[0], vectors[1])
    again = gpu_check.RandomMiniLM(word_tokenizer(), "cpu").encode(["hello world"])
    np.testing.assert_allclose(again[0], vectors[0], atol=1e-6)  # seeded


def test_a_second_gpu_is_read_as_itself(monkeypatch):
    seen: list = []

    class Props:
        name = "GPU number one"
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: (seen.append(("props", index)), Props)[1])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: seen.append(("sync", device)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: seen.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: (seen.append(("peak", device)), 7)[1])
    info = gpu_check.device_info("cuda:1")
    assert info == {"device": "cuda:1", "device_name": "GPU number one", "device_memory_bytes": 80 * 2**30}
    gpu_check.peak_reset("cuda:1")
    assert gpu_check.peak("cuda:1") == 7
    one = torch.device("cuda", 1)
    assert seen == [("props", 1), ("sync", one), ("reset", one), ("sync", one), ("peak", one)]
    assert gpu_check.peak("cpu") is None


def test_every_row_is_written_as_it_ends_and_a_failing_row_does_not_stop_the_check(tmp_path):
    check = gpu_check.Check(_report(tmp_path), budget_seconds=600)
    check.row("m", "plain", lambda: {"tokens": 3, "tokens_per_s": 30.0, "seconds": 0.1})
    written = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [r["decoding"] for r in written["rows"]] == ["plain"] and written["failed"] == []

    def broken():
        raise IndexError("index 49 is out of bounds for dimension 0 with size 1")

    check.row("m", "RAIN official, self-evaluation", broken, B=1)
    check.row("m", "RAIN official, judge", lambda: {"tokens": 3, "tokens_per_s": 3.0, "seconds": 1.0}, B=1)
    written = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [r["status"] for r in written["rows"]] == ["ok", "failed", "ok"]
    assert written["rows"][1]["error"] == "IndexError: index 49 is out of bounds for dimension 0 with size 1"
    assert "test_gpu_check.py" in written["rows"][1]["where"]
    assert written["failed"] == ["m / RAIN official, self-evaluation"]
    markdown = (tmp_path / "gpu-check.md").read_text()
    assert "| m | RAIN official, self-evaluation | 1 | failed |" in markdown
    assert "FAILED: m / RAIN official, self-evaluation" in markdown


def test_an_error_is_located_where_its_root_cause_was_raised(tmp_path):
    check = gpu_check.Check(_report(tmp_path), budget_seconds=600)

    def wrapped():
        try:
            raise IndexError("inner")
        except IndexError as exc:
            raise RuntimeError("outer") from exc

    row = check.row("m", "x", wrapped)
    assert row["error"] == "RuntimeError: outer"
    assert "wrapped" in row["where"]


def test_after_a_cuda_error_the_rows_left_are_marked_not_run(tmp_path):
    check = gpu_check.Check(_report(tmp_path), budget_seconds=600)

    def assert_on_device():
        raise RuntimeError("CUDA error: device-side assert triggered")

    check.row("m", "a", assert_on_device)
    row = check.row("m", "b", lambda: pytest.fail("a row ran after the GPU state was lost"))
    check.compare("m", lambda: pytest.fail("a comparison ran after the GPU state was lost"))
    assert row["status"] == "not run" and "lost at m / a" in row["reason"]
    assert check.report.comparisons[0]["status"] == "not run"


def test_rows_past_the_time_budget_are_reported_as_skipped(tmp_path):
    check = gpu_check.Check(_report(tmp_path), budget_seconds=-1)
    row = check.row("m", "plain", lambda: pytest.fail("a row started after the budget was spent"))
    assert row["status"] == "skipped" and "time budget" in row["reason"]
    assert check.report.failed == []


def test_a_comparison_over_tolerance_fails_the_check(tmp_path):
    check = gpu_check.Check(_report(tmp_path), budget_seconds=600)
    result = {"dtype": "torch.bfloat16", "max_abs_difference": 0.5, "tolerance": 0.1, "spread": 0.4}
    check.compare("m", lambda: {**result, "status": "over tolerance"})
    assert check.report.failed == ["m / log-probabilities"]
    assert "| m | torch.bfloat16 | over tolerance | 0.5 | 0.1 | 0.4 |" in (tmp_path / "gpu-check.md").read_text()


def test_parallel_rows_follow_the_config():
    assert gpu_check.parallel_available() == ("parallel_searches" in RainConfig.model_fields)


def test_the_carried_pins_work_together_and_pin_pydantic_core_exactly():
    import importlib.metadata as md

    from packaging.requirements import Requirement

    pins = dict(p.split("==") for p in gpu_image.pins())
    required = [Requirement(r) for r in md.requires("pydantic") or [] if r.startswith("pydantic-core")]
    assert required and required[0].specifier.contains(pins["pydantic-core"])
    assert str(required[0].specifier) == f"=={pins['pydantic-core']}"
    assert pins["pydantic"] == md.version("pydantic")
    assert {"langchain-core", "llama-index-core"} <= set(pins)
    assert not (set(pins) & gpu_image.IMAGE) - gpu_image.CARRY_OVER_IMAGE  # nothing the image already has
    assert "greenlet" in pins  # llama-index-core needs sqlalchemy[asyncio]: extras are followed


def test_a_failed_adapter_call_fails_the_check_and_a_skipped_comparison_does_not(tmp_path):
    check = gpu_check.Check(_report(tmp_path), budget_seconds=-1)
    check.compare("m", lambda: pytest.fail("a comparison started after the budget was spent"))
    assert check.report.comparisons[0]["status"] == "skipped" and check.report.failed == []
    check.report.smoke = {"langchain": "ok: 8 characters", "llamaindex": "FAILED: TypeError: no"}
    assert check.report.failed == ["adapters / llamaindex"]
