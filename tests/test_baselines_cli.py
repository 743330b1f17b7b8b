"""``rain generate --method ...``: a baseline with the same model, evaluator and limits as RAIN; a
baseline's options checked before any model loads, each failure one line."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from fakes import PRINTABLE, ScriptedLM

import rain_core.loaders.models as loading
from rain_core.cli import main


def run(capsys: Any, *argv: str) -> tuple[int, list[str], str]:
    capsys.readouterr()
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.err.strip().splitlines(), captured.out


class HashEncoder:
    """Unit vectors from a hash of each text (a stand-in sentence encoder)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts]
        return np.array([r / np.linalg.norm(r) for r in rows])


class FakeDefault(ScriptedLM):
    def default_encoder(self) -> HashEncoder:
        return HashEncoder()


@pytest.fixture
def fake_default(monkeypatch):
    """The embedded model replaced by a scripted fake (loading it counted)."""
    loads = []

    def load(*args: Any, **kwargs: Any) -> Any:
        loads.append(1)
        return FakeDefault("it is blue.", vocab=PRINTABLE, strength=6.0)

    monkeypatch.setattr(loading, "load_default_model", load)
    return loads


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--method", "best-of-n", "--max-searches", "3"], "rain: error: --max-searches: options of RAIN's search"),
        (["--method", "plain", "--preset", "fast"], "rain: error: --preset fast: options of RAIN's search"),
        (["--method", "blockwise", "--plot", "t.png"], "rain: error: --plot: options of RAIN's search"),
        (["--method", "check-retry", "--n", "3"], "rain: error: n: not an option of the method check-retry"),
        (["--method", "best-of-n", "--n", "0"], "rain: error: n must be between 1 and 1024, got 0"),
        (["--method", "blockwise", "--block-tokens", "0"], "rain: error: block_tokens must be between 1 and 4096"),
        (["--method", "best-of-m"], "rain: error: argument --method: invalid choice: 'best-of-m'"),
    ],
)
def test_a_baselines_bad_options_are_one_line_before_anything_loads(capsys, fake_default, argv, line):
    status, err, _ = run(capsys, "generate", *argv, "What colour is the sky?")
    assert status == 2 and len(err) == 1 and err[0].startswith(line), err
    assert fake_default == []


@pytest.mark.parametrize(
    ("argv", "method", "calls"),
    [
        (["--method", "best-of-n", "--n", "3"], "best-of-n", 1),
        (["--method", "check-retry", "--max-tries", "2"], "check-retry", None),
        (["--method", "blockwise", "--n", "2", "--block-tokens", "4"], "blockwise", None),
        (["--method", "plain"], "plain", 1),
        (["--method", "escalating", "--max-searches", "2"], "escalating", None),
    ],
)
def test_generate_with_a_baseline(capsys, fake_default, argv, method, calls):
    status, err, out = run(capsys, "generate", *argv, "--max-new-tokens", "12", "--json", "What colour is the sky?")
    assert status == 0, err
    result = json.loads(out)
    assert result["stats"]["method"] == method and result["finish_reason"] in ("eos", "length", "stop", "refused")
    assert calls is None or result["stats"]["model_calls"] == calls
    status, err, out = run(capsys, "generate", *argv, "--max-new-tokens", "12", "--compare", "What colour is the sky?")
    assert status == 0 and f"--- {method} ---" in out and "method=" + method in out
