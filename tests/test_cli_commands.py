"""The ``rain`` command's parts: plug-in subcommands come from the entry-point group ``rain.commands``
(``rain bench`` and ``rain demo`` from ``rain_bench``; the core names neither), a plug-in that cannot
load is reported and left out, and ``rain generate --guard FOLDER`` decodes with the guard model as
the evaluator, its format inferred from the folder's name and its score continuous. Failures are
one line each (``test_cli_errors.py``)."""

from __future__ import annotations

import json
import logging
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from test_guard_evaluator import tiny_model
from tiny_models import save_tiny_llama

import rain_core.cli as cli
import rain_core.loaders.guards as guards
from rain_core import Scoring
from rain_core.evaluators.guards.presets import LLAMA_GUARD_3


def help_of(capsys: Any, *argv: str) -> str:
    """``rain *argv --help``: its text (argparse exits with 0)."""
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_bench_and_demo_are_subcommands_from_entry_points(capsys):
    names = {e.name: e.value for e in cli.entry_points(group=cli.COMMANDS_GROUP)}
    assert names == {
        "bench": "rain_bench.cli:add_bench_command",
        "demo": "rain_bench.cli:add_demo_command",
        "serve": "rain_core.serve.cli:add_serve_command",
    }
    top = help_of(capsys)
    assert "bench" in top and "demo" in top and "generate" in top
    assert help_of(capsys, "bench", "speed").startswith("usage: rain bench speed")
    assert help_of(capsys, "demo").startswith("usage: rain demo")


def test_a_plugin_that_cannot_load_is_reported_and_left_out(capsys, monkeypatch, caplog):
    real = list(cli.entry_points(group=cli.COMMANDS_GROUP))
    broken = EntryPoint(name="broken", value="rain_no_such_package.cli:add", group=cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [*real, broken])
    with caplog.at_level(logging.WARNING, logger="rain"):
        top = help_of(capsys)
    assert "bench" in top and "broken" not in top
    assert any("`rain broken`" in r.getMessage() and "rain_no_such_package" in r.getMessage() for r in caplog.records)


@pytest.fixture
def guard_folder(tmp_path: Path) -> Path:
    """A tiny random model in Llama Guard 3's shape, in a folder whose name names the family."""
    lm = tiny_model("llama-guard-3")
    folder = tmp_path / "Llama-Guard-3-tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def test_generate_with_a_guard_folder_judges_with_the_guard(capsys, monkeypatch, tmp_path, guard_folder):
    built: list[Any] = []
    load_guard = guards.load_guard

    def recording(*args: Any, **kwargs: Any) -> Any:
        built.append(load_guard(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(guards, "load_guard", recording)
    generator = save_tiny_llama(tmp_path / "generator")
    budget = ["--max-new-tokens", "3", "--max-searches", "2", "--extra-searches", "1", "--seed", "0"]
    status = cli.main(
        [
            "generate",
            "--model",
            str(generator),
            "--guard",
            str(guard_folder),
            "--device",
            "cpu",
            *budget,
            "--json",
            "hello",
        ]
    )
    assert status == 0
    out = json.loads(capsys.readouterr().out)
    (guard,) = built
    assert guard.preset is LLAMA_GUARD_3 and guard.scoring is Scoring.CONTINUOUS
    assert guard.lm.engine_stats()["forward_calls"] > 0  # the search asked the guard
    assert out["stats"]["evaluations"] > 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"max_searches": 50, "extra_searches": 15, "parallel_searches": 1}),
        (["--max-searches", "4"], {"max_searches": 4, "extra_searches": 15, "parallel_searches": 1}),
        (["--parallel-searches", "8", "--preset", "fast"], {"parallel_searches": 8, "lazy_expansion": True}),
    ],
)
def test_generate_options_reach_the_config(argv, expected):
    config = cli.check(cli.build_parser().parse_args(["generate", *argv, "hello"]))
    assert {name: getattr(config, name) for name in expected} == expected
    # the budget the user set is the one a commit runs (max_searches below extra_searches lowers both)
    assert config.search_target(reused_visits=0) == config.max_searches


def test_generate_help_says_a_low_max_searches_lowers_both(capsys):
    text = " ".join(help_of(capsys, "generate").split())
    assert "below --extra-searches it lowers both" in text
    assert "--parallel-searches" in text


def test_bench_writes_where_asked_and_by_default_outside_the_working_directory(capsys, monkeypatch, tmp_path):
    work, results = tmp_path / "some-checkout", tmp_path / "data"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_DATA_HOME", str(results))
    monkeypatch.delenv("RAIN_RESULTS_DIR", raising=False)
    argv = ["bench", "evaluator", "--quick", "--evaluator", "keyword"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    folder = results / "rain" / "results"
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["evaluator-quick.json", "evaluator-quick.md"]
    assert f"report: {folder / 'evaluator-quick.md'}" in out  # the output names the folder
    assert list(work.iterdir()) == []  # nothing in the working directory
    asked = tmp_path / "asked"
    assert cli.main([*argv, "--out", str(asked)]) == 0
    assert sorted(p.name for p in asked.iterdir()) == written
    monkeypatch.setenv("RAIN_RESULTS_DIR", str(tmp_path / "env"))
    assert cli.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "env").iterdir()) == written


def test_generate_help_has_the_shell_steering_options(capsys):
    text = " ".join(help_of(capsys, "generate").split())
    for option in ("--evaluator MODULE:FUNCTION", "--max-length", "--quiet", "--stream"):
        assert option in text
    assert "--quiet" in help_of(capsys, "demo")
