"""``rain generate`` on long work and from the shell: progress on stderr on a terminal (a pty) and
nothing when stderr is piped, ``--stream --json`` as one JSON line per commit then the result,
``--evaluator MODULE:FUNCTION`` steering the embedded model away from a word, and one line saying so
when the model's self-evaluation cannot judge. The option errors are in ``test_cli_errors.py``."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest
from tiny_models import save_tiny_llama

from rain_core.cli import main
from rain_core.cli.progress import Progress
from rain_core.cli.steering import PROBES, cannot_judge, load_scoring_function

ROOT = Path(__file__).resolve().parents[1]
TINY_BUDGET = ["--max-new-tokens", "4", "--max-searches", "2", "--extra-searches", "1", "--seed", "0"]
SCORES = '''
def no_blue(prompt: str, reply: str) -> float:
    """-1 for a reply that says "blue", else 1 (the README's quick start, from the shell)."""
    return -1.0 if "blue" in reply.lower() else 1.0


def approve(prompt: str, reply: str) -> float:
    return 1.0
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "generator")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with a module of scoring functions in it, as a user would have."""
    folder = tmp_path_factory.mktemp("work")
    (folder / "scores.py").write_text(textwrap.dedent(SCORES))
    return folder


def rain(argv: list[str], cwd: Path, *, stderr_on_a_terminal: bool) -> tuple[int, str, str]:
    """``python -m rain_core.cli *argv`` in a fresh process, stdout piped, stderr a pty or a pipe."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "rain_core.cli", *argv]
    if not stderr_on_a_terminal:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen.append(chunk)
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    return proc.wait(timeout=600), out, b"".join(seen).decode(errors="replace")


# --- progress --------------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_status_line_counts_tokens_commits_searches_and_shows_the_text():
    shown = Terminal()
    with Progress(shown, interval=60) as progress:
        progress.stage("RAIN", max_tokens=24)
        progress.commit("The sky", 2, {"searches": 8})
        progress.commit(" is", 1, {"searches": 5})
        line = progress.line()
    assert line.startswith("rain: RAIN: 3/24 tokens, 2 commits, 13 searches, 0 s | The sky is")
    assert shown.getvalue().endswith("\r\x1b[K")  # the line is cleared when the stage ends


def test_no_status_line_off_a_terminal_or_when_quiet():
    for stream, quiet in ((io.StringIO(), False), (Terminal(), True)):
        with Progress(stream, quiet=quiet) as progress:
            progress.stage("RAIN")
            progress.commit("text", 1, {"searches": 1})
        assert stream.getvalue() == ""


def test_rain_demo_decodes_with_the_status_line():
    from conftest import SMALL
    from fakes import CharLM

    from rain_bench.demo import _decode
    from rain_core import RainDecoder

    dec = RainDecoder(CharLM(), lambda prompt, reply: 1.0, encoder=None, **SMALL)
    shown = Terminal()
    result = _decode(dec, "hello", Progress(shown, interval=60), "RAIN, self-evaluation")
    assert result.text == dec.generate("hello").text  # the same decode, shown as it goes
    screen = shown.getvalue()
    assert "rain: RAIN, self-evaluation: " in screen and f"{result.stats['commits']} commits" in screen
    assert screen.endswith("\r\x1b[K")


@pytest.mark.parametrize("terminal", [True, False], ids=["stderr a terminal", "stderr piped"])
def test_progress_shows_on_a_terminal_and_not_when_piped(tiny, workdir, terminal):
    argv = ["generate", "--model", str(tiny), "--device", "cpu", "--evaluator", "scores.py:approve", *TINY_BUDGET]
    status, out, err = rain([*argv, "hello world"], workdir, stderr_on_a_terminal=terminal)
    assert status == 0, err
    assert out.count("\n") == 1  # the answer, on stdout either way
    if terminal:
        assert "rain: loading " in err and "rain: RAIN: " in err and " commits, " in err and " searches, " in err
        assert "\r\x1b[K" in err
        assert "Loading weights" not in err  # transformers' loading bars only with -v
    else:
        assert err == ""  # no progress, no control characters, no loading bars


def test_verbose_shows_the_loading_bars_and_logs_around_the_status_line(tiny, workdir):
    argv = ["-v", "generate", "--model", str(tiny), "--device", "cpu", "--evaluator", "scores.py:approve", *TINY_BUDGET]
    status, _, err = rain([*argv, "hello"], workdir, stderr_on_a_terminal=True)
    assert status == 0, err
    assert "Loading weights" in err  # the bars the default run keeps quiet (the test above)
    log = "rain_core.engines.transformers.threads: CPU threads: "
    assert f"\r\x1b[K{log}" in err  # the status line is cleared before a log record is written


# --- JSON lines ------------------------------------------------------------------------------------
def test_stream_json_is_one_line_per_commit_then_the_result(capsys, tiny, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    argv = ["generate", "--model", str(tiny), "--device", "cpu", "--evaluator", "scores:approve", *TINY_BUDGET]
    assert main([*argv, "--max-new-tokens", "6", "--stream", "--json", "hello", "the world"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for prompt in ("hello", "the world"):
        mine = [line for line in lines if line["prompt"] == prompt]
        *commits, result = mine
        assert result["event"] == "result" and result["finish_reason"] in ("eos", "length")
        assert commits and all(c["event"] == "commit" for c in commits)
        with_stats = [c for c in commits if c["stats"]]
        assert len(with_stats) == result["stats"]["commits"]  # one line per commit
        assert all(c["stats"]["searches"] >= 1 for c in with_stats)
        assert "".join(c["text"] for c in commits) == result["text"]
        assert sum(len(c["token_ids"]) for c in commits) == result["completion_tokens"]
    assert [line["prompt"] for line in lines].index("the world") > 0  # the prompts in order, each ended by its result


# --- steering from the shell -------------------------------------------------------------------------
def test_a_scoring_function_loads_from_the_working_directory_or_a_file(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.delitem(sys.modules, "scores", raising=False)
    for spec in ("scores:no_blue", str(workdir / "scores.py") + ":no_blue"):
        fn = load_scoring_function(spec)
        assert fn("", "The sky is blue.") == -1.0 and fn("", "The sky is grey.") == 1.0


class Judge:
    """An evaluator whose option letters are scripted: ``letters(i)`` per probe, both orders."""

    def __init__(self, letters: list[str]) -> None:
        self.letters = iter(letters)

    def option_logprobs(self, prompt: str, reply: str) -> list[list[float]]:
        picks = next(self.letters)
        return [[-0.1, -2.0] if pick == "A" else [-2.0, -0.1] for pick in picks]


def test_the_note_says_a_model_that_ignores_the_options_cannot_judge():
    n = len(PROBES)
    assert cannot_judge(Judge(["BB"] * n), "self-evaluation by M").startswith("self-evaluation by M cannot judge")
    assert f"on {n} of {n} test replies" in cannot_judge(Judge(["BB"] * n), "M")
    assert cannot_judge(Judge(["AB"] * n), "M") is None  # follows the options: no note
    assert cannot_judge(Judge(["AA", "AB", "BA", "BB", "AB"]), "M") is None  # 2 of 5 the same letter
    assert cannot_judge(object(), "a scoring function") is None  # not a model evaluator


@pytest.mark.model
def test_evaluator_steers_the_embedded_model_away_from_a_word(workdir):
    budget = ["--max-new-tokens", "24", "--max-searches", "8", "--extra-searches", "4"]  # the README's quick start
    argv = ["generate", "--evaluator", "scores:no_blue", "--compare", "--json", *budget]
    status, out, err = rain([*argv, "What colour is the sky on a clear day?"], workdir, stderr_on_a_terminal=False)
    assert status == 0, err
    (answer,) = [json.loads(line) for line in out.splitlines()]
    assert "blue" in answer["vanilla"]["text"].lower()  # plain decoding says it
    assert "blue" not in answer["text"].lower()  # RAIN with the scoring function does not
    assert answer["stats"]["rewinds"] > 0 and "cannot judge" not in err


@pytest.mark.model
def test_self_evaluation_that_cannot_judge_says_so_before_the_search(workdir):
    argv = ["generate", "--max-new-tokens", "2", "--max-searches", "1", "--extra-searches", "1", "Hi"]
    status, out, err = rain(argv, workdir, stderr_on_a_terminal=False)
    assert status == 0, err
    notes = [line for line in err.splitlines() if line.startswith("rain: note:")]
    assert len(notes) == 1 and err.splitlines() == notes
    assert notes[0].startswith("rain: note: self-evaluation by SmolLM2-135M-Instruct cannot judge: it picked")
    assert "--evaluator MODULE:FUNCTION" in notes[0]
    assert out.strip()  # the answer still comes
