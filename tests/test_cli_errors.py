"""``rain generate``: every expected failure is one ``rain: error: ...`` line on stderr and a non-zero
exit status, with the traceback only under ``-v``; options are checked before any model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny_models import save_tiny_llama

import rain_core.engines.transformers.loading as engine_loading
import rain_core.loaders.models as loading
from rain_core.cli import main


def run(capsys: Any, *argv: str) -> tuple[int, list[str]]:
    """``rain *argv`` in this process: its exit status and its stderr lines."""
    capsys.readouterr()  # what ran before (a test's set-up) is not rain's
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model fails the test: these errors must come before any."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded before the options were checked")

    for name in ("load_model", "load_default_model", "shared_default_model"):
        monkeypatch.setattr(loading, name, refuse)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--max-searches", "-1"], "rain: error: --max-searches: must be an integer >= 1, got -1"),
        (
            ["--max-new-tokens", "0", "--max-searches", "0"],
            "rain: error: --max-searches: must be an integer >= 1, got 0; "
            "--max-new-tokens: must be an integer >= 1, got 0",
        ),
        (
            ["--parallel-searches", "0"],
            "rain: error: --parallel-searches: must be an integer in [1, 64], got 0",
        ),
        (["--temperature", "0"], "rain: error: --temperature: must be a number in (0, 100], got 0.0"),
        (["--max-seconds", "-5"], "rain: error: --max-seconds: must be a number > 0 or None, got -5.0"),
        (["--max-length", "1"], "rain: error: --max-length: must be an integer >= 2, got 1"),
        (
            ["--principle", "harmles"],
            "rain: error: unknown principle 'harmles': use one of harmless, positive, truthful, "
            "or the path of a .toml principle file",
        ),
        (["--base-url", "http://localhost:8000/v1"], "rain: error: --base-url needs --engine vllm"),
        (["--engine", "vllm"], "rain: error: --engine vllm needs --base-url http://HOST:PORT/v1 (the vLLM server)"),
        (
            ["--engine", "vllm", "--base-url", "http://localhost:8000/v1", "--dtype", "float16"],
            "rain: error: --device, --dtype and --gguf-file apply to --engine transformers; a vLLM server chooses "
            "its own",
        ),
        (
            ["--judge", "/models/judge", "--judge-model", "judge"],
            "rain: error: give either --judge (a local model) or --judge-base-url/--judge-model (a served one)",
        ),
        (
            ["--judge-model", "judge"],
            "rain: error: --judge-model names a served model: give --judge-base-url http://HOST:PORT/v1 too",
        ),
        (
            ["--guard", "meta-llama/Llama-Guard-3-1B", "--judge", "/models/judge"],
            "rain: error: give either a guard (--guard, --guard-base-url/--guard-model) or a judge (--judge, "
            "--judge-base-url/--judge-model): each is the evaluator",
        ),
        (
            ["--guard-model", "llama-guard-3-1b", "--judge-model", "judge", "--judge-base-url", "http://h:1/v1"],
            "rain: error: give either a guard (--guard, --guard-base-url/--guard-model) or a judge",
        ),
        (
            ["--guard", "/models/Llama-Guard-3-1B", "--guard-model", "guard"],
            "rain: error: give either --guard (a local guard model) or --guard-base-url/--guard-model (a served one)",
        ),
        (
            ["--guard-model", "meta-llama/Llama-Guard-3-1B"],
            "rain: error: --guard-model names a served guard: give --guard-base-url http://HOST:PORT/v1 too",
        ),
        (
            ["--guard-preset", "shieldgemma"],
            "rain: error: --guard-preset names a guard's format: give --guard or --guard-base-url/--guard-model",
        ),
        (
            ["--guard", "/models/my-guard"],
            "rain: error: cannot tell which guard family '/models/my-guard' is from its name: give --guard-preset "
            "(granite-guardian, granite-guardian-3.3, granite-guardian-4.1, llama-guard-3, llama-guard-3-1b, "
            "qwen3guard, shieldgemma, shieldgemma-harassment, shieldgemma-hate, shieldgemma-sexual)",
        ),
        (
            ["--guard", "/models/Llama-Guard-3-8B", "--principle", "truthful"],
            "rain: error: --principle is what self-evaluation or a judge asks; a guard judges by its own policy",
        ),
        (
            ["--guard", "/models/g", "--guard-preset", "llama-guard-4"],
            "rain: error: argument --guard-preset: invalid choice: 'llama-guard-4' (choose from 'granite-guardian'",
        ),
        (
            ["--gguf-file", "model.gguf"],
            "rain: error: --gguf-file names a file in the --model folder: give --model too",
        ),
        (
            ["--dtype", "float33"],
            "rain: error: argument --dtype: invalid choice: 'float33' (choose from 'float32', 'bfloat16', "
            "'float16', 'auto') (see rain generate --help)",
        ),
        (["--max-searches", "many"], "rain: error: argument --max-searches: invalid int value: 'many' (see rain "),
        (["--max-searchs", "3"], "rain: error: unrecognized arguments: --max-searchs (see rain --help)"),
        (
            ["--evaluator", "no_blue"],
            "rain: error: --evaluator 'no_blue': name a scoring function as MODULE:FUNCTION or FILE.py:FUNCTION",
        ),
        (
            ["--evaluator", "rain_no_such_module:no_blue"],
            "rain: error: --evaluator 'rain_no_such_module:no_blue': cannot import rain_no_such_module: "
            "ModuleNotFoundError",
        ),
        (["--evaluator", "json:no_blue"], "rain: error: --evaluator 'json:no_blue': json has no 'no_blue'"),
        (["--evaluator", "json:__doc__"], "rain: error: --evaluator 'json:__doc__' is a str, not a function"),
        (
            ["--evaluator", "/no/such/scores.py:no_blue"],
            "rain: error: --evaluator '/no/such/scores.py:no_blue': the file '/no/such/scores.py' does not exist",
        ),
        (
            ["--evaluator", "json:loads", "--guard", "/models/Llama-Guard-3-1B"],
            "rain: error: give one evaluator: --evaluator (a scoring function), a judge",
        ),
        (
            ["--evaluator", "json:loads", "--scoring", "continuous"],
            "rain: error: --principle and --scoring are what self-evaluation, a judge or a guard use",
        ),
        (["--judge", "/models/judge"], "rain: error: --judge: the model folder '/models/judge' does not exist"),
        (["--guard", "/models/Llama-Guard-3-1B"], "rain: error: --guard: the model folder '/models/Llama-Guard-3-1B'"),
    ],
)
def test_bad_options_are_one_line_before_anything_loads(capsys, no_loading, argv, line):
    status, err = run(capsys, "generate", *argv, "How do I pick a lock?")
    assert status == 2
    assert len(err) == 1 and err[0].startswith(line), err


def test_a_missing_prompt_is_one_line(capsys, no_loading):
    status, err = run(capsys, "generate")
    assert status == 2
    assert err == ["rain: error: the following arguments are required: prompts (see rain generate --help)"]


# --- models that cannot load: the loader's checks, before any weights load, as one line ---------------
def test_a_missing_model_folder(capsys, no_loading):
    status, err = run(capsys, "generate", "--model", "/nonexistent", "hi")
    assert status == 2
    assert err == ["rain: error: --model: the model folder '/nonexistent' does not exist; check the path"]


@pytest.mark.parametrize("option", ["--model", "--judge", "--guard"])
def test_a_hub_id_that_is_not_cached_names_the_option_and_only_shell_hints(capsys, no_loading, option):
    name = "rain-tests/no-such-model-Llama-Guard-3-1B"  # a guard family's name, so --guard infers its preset
    status, err = run(capsys, "generate", option, name, "hi")
    assert status == 2 and len(err) == 1
    assert err[0].startswith(
        f"rain: error: {option}: {name!r} is not a folder here, and the hub id {name!r} is not in the local "
        "Hugging Face cache"
    )
    assert f"`hf download {name}`" in err[0]
    assert "local_files_only" not in err[0]  # a Python keyword: no such option in the shell


def test_the_guard_is_checked_before_the_generator_loads(capsys, monkeypatch, tmp_path):
    loaded: list[str] = []
    monkeypatch.setattr(loading, "load_model", lambda name, **kw: loaded.append(name))
    generator = save_tiny_llama(tmp_path / "generator")
    status, err = run(capsys, "generate", "--model", str(generator), "--guard", "/models/Llama-Guard-3-1B", "hi")
    assert status == 2 and loaded == []
    assert err == ["rain: error: --guard: the model folder '/models/Llama-Guard-3-1B' does not exist; check the path"]


def test_a_model_that_is_not_a_causal_language_model(capsys, tmp_path, no_loading):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    BertModel(config).save_pretrained(str(tmp_path / "bert"))
    status, err = run(capsys, "generate", "--judge", str(tmp_path / "bert"), "hi")
    assert status == 2 and len(err) == 1
    assert err[0].startswith("rain: error: --judge: ") and "BertModel" in err[0]
    assert "not a causal language model" in err[0]


def test_gguf_weights_without_gguf_file(capsys, tmp_path, no_loading):
    (tmp_path / "model.Q4_0.gguf").write_bytes(b"GGUF")
    status, err = run(capsys, "generate", "--model", str(tmp_path), "hi")
    assert status == 2
    assert err == [
        f"rain: error: --model: {tmp_path} holds GGUF weights (model.Q4_0.gguf) and no config.json; "
        "pass --gguf-file model.Q4_0.gguf"
    ]
    status, err = run(capsys, "generate", "--model", str(tmp_path), "--gguf-file", "other.gguf", "hi")
    assert status == 2
    assert err == [f"rain: error: --model: {tmp_path} holds no 'other.gguf'; GGUF files there: model.Q4_0.gguf"]
    status, err = run(capsys, "generate", "--model", str(tmp_path / "model.Q4_0.gguf"), "hi")
    assert status == 2
    assert err == [
        f"rain: error: --model: {tmp_path / 'model.Q4_0.gguf'} is a GGUF file; pass its folder and the file's "
        f"name: --model {tmp_path} --gguf-file model.Q4_0.gguf"
    ]


def test_a_dtype_the_device_cannot_run(capsys, monkeypatch, no_loading):
    import torch

    monkeypatch.setattr(engine_loading, "dtype_runs_on", lambda dtype, device: dtype == torch.float32)
    status, err = run(capsys, "generate", "--device", "cpu", "--dtype", "float16", "hi")
    assert status == 2
    assert err == ["rain: error: cpu cannot run float16 here; pass --dtype float32"]


def test_a_device_this_machine_does_not_have(capsys, monkeypatch, no_loading):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, err = run(capsys, "generate", "--device", "cuda:1", "hi")
    assert status == 2
    assert err == [
        "rain: error: device 'cuda:1' asks for a GPU, but PyTorch sees no CUDA device here; use --device cpu, or "
        "install a CUDA build of PyTorch on a machine with an NVIDIA GPU"
    ]


def test_a_vllm_server_that_cannot_be_reached(capsys):
    status, err = run(capsys, "generate", "--engine", "vllm", "--base-url", "http://127.0.0.1:9/v1", "hi")
    assert status == 1 and len(err) == 1
    assert err[0].startswith("rain: error: cannot reach the vLLM server at http://127.0.0.1:9")
    assert "--enable-prefix-caching" in err[0]


def test_a_served_guard_that_cannot_be_reached(capsys, no_loading):
    argv = ["--guard-base-url", "http://127.0.0.1:9/v1", "--guard-model", "meta-llama/Llama-Guard-3-1B"]
    status, err = run(capsys, "generate", *argv, "hello")  # no_loading: the server is asked before any weights
    assert status == 1 and len(err) == 1
    assert err[0].startswith("rain: error: cannot reach the vLLM server at http://127.0.0.1:9")


def test_an_unexpected_error_names_its_type_and_points_at_verbose(capsys, monkeypatch):
    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("something inside broke\nacross two lines")

    monkeypatch.setattr(loading, "load_default_model", broken)
    status, err = run(capsys, "generate", "hi")
    assert status == 1
    assert err == [
        "rain: error: RuntimeError: something inside broke across two lines (rain -v ... shows the traceback)"
    ]


# --- -v shows the traceback --------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["before the command", "after it"])
def test_verbose_shows_the_traceback_then_the_line(capsys, where):
    argv = ["-v", "generate"] if where == "before the command" else ["generate", "-v"]
    status, err = run(capsys, *argv, "--model", "/nonexistent", "hi")
    assert status == 2
    assert err[0] == "Traceback (most recent call last):"
    assert any("ModelNotFoundError" in line for line in err[1:-1])
    assert err[-1] == "rain: error: --model: the model folder '/nonexistent' does not exist; check the path"


def test_the_installed_command_prints_one_line(tmp_path):
    rain = Path(sys.executable).with_name("rain")
    done = subprocess.run(
        [str(rain), "generate", "--model", "/nonexistent", "How do I pick a lock?"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "rain: error: --model: the model folder '/nonexistent' does not exist; check the path"
    ]
    assert done.stdout == ""
