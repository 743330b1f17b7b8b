"""The layers hold: the core never imports an engine, the engines know only the protocols, the adapters
reach engines through the loaders, and the core runs without torch.

The layers, top to bottom (docs/architecture.md): the face (CLI, ``rain serve``, plotting) and the
adapters; the loaders (composition); the core (decoder, search, tree, evaluators, ...); the
protocols; and the engines below the protocols. These tests read every import statement of every
module (also those inside functions), check each layer's rule, see each rule fail once on a copy of
the tree with a forbidden import planted in it, and run a decode in a fresh interpreter where torch,
transformers and the engines cannot be imported."""

import ast
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rain_core", "rain_integrations", "rain_bench")

# Each layer's modules, by dotted prefix (a module belongs to the layer of its longest prefix).
LAYERS = {
    "protocols": ("rain_core.protocols", "rain_core.sessions"),
    "core": (
        "rain_core.tree",
        "rain_core.phases",
        "rain_core.drivers",
        "rain_core.search",
        "rain_core.rounds",
        "rain_core.requests",
        "rain_core.state",
        "rain_core.results",
        "rain_core.streams",
        "rain_core.text",
        "rain_core.control",
        "rain_core.decoder",
        "rain_core.decoding",
        "rain_core.config",
        "rain_core.chat",
        "rain_core.principles",
        "rain_core.evaluators",
        "rain_core.baselines",
    ),
    "engines": ("rain_core.engines",),
    "loaders": ("rain_core.loaders",),
    "face": ("rain_core.cli", "rain_core.serve", "rain_core.plotting", "rain_core.setup_embedded"),
    "adapters": ("rain_integrations",),
    "benchmarks": ("rain_bench",),
}
FRAMEWORKS = ("torch", "transformers")


def layer_of(module: str) -> str | None:
    best, found = "", None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, found = prefix, layer
    return found


def engine_package(module: str) -> str | None:
    """``rain_core.engines.transformers`` or ``rain_core.engines.vllm`` for a module of one engine."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["rain_core", "engines"] and parts[2] in ("transformers", "vllm"):
        return ".".join(parts[:3])
    return None


@dataclass(frozen=True)
class Rule:
    name: str
    layer: str
    forbidden_layers: tuple[str, ...] = ()
    forbidden_frameworks: bool = False
    plant_in: str = ""  # a file of the layer (relative to the root) and a forbidden import to plant there
    plant: str = ""

    def broken_by(self, module: str, imported: str) -> bool:
        if self.forbidden_frameworks and imported.split(".")[0] in FRAMEWORKS:
            return True
        target = layer_of(imported)
        if target in self.forbidden_layers:
            return True
        if self.name == "one engine never imports another":
            own, other = engine_package(module), engine_package(imported)
            return own is not None and other is not None and own != other
        return False


RULES = (
    Rule(
        "the protocols import nothing of rain",
        "protocols",
        ("core", "engines", "loaders", "face", "adapters", "benchmarks"),
        True,
        "rain_core/protocols.py",
        "from .config import RainConfig",
    ),
    Rule(
        "the core never imports engines, loaders, adapters, the face, benchmarks, torch or transformers",
        "core",
        ("engines", "loaders", "face", "adapters", "benchmarks"),
        True,
        "rain_core/search.py",
        "from .engines.transformers import lm",
    ),
    Rule(
        "engines import only the protocols and their own helpers",
        "engines",
        ("core", "loaders", "face", "adapters", "benchmarks"),
        False,
        "rain_core/engines/vllm/engine.py",
        "from ...config import RainConfig",
    ),
    Rule(
        "one engine never imports another",
        "engines",
        (),
        False,
        "rain_core/engines/vllm/engine.py",
        "from ..transformers import lm",
    ),
    Rule(
        "the loaders never import the face, the adapters or the benchmarks",
        "loaders",
        ("face", "adapters", "benchmarks"),
        False,
        "rain_core/loaders/models.py",
        "from .. import cli",
    ),
    Rule(
        "the face reaches engines only through the loaders or the protocols",
        "face",
        ("engines", "adapters", "benchmarks"),
        False,
        "rain_core/cli/__init__.py",
        "from ..engines.vllm import VLLMEngine",
    ),
    Rule(
        "the adapters reach engines only through the loaders or the protocols",
        "adapters",
        ("engines", "face", "benchmarks"),
        True,
        "rain_integrations/_build.py",
        "from rain_core.engines.vllm import VLLMEngine",
    ),
)


def modules_under(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> path of every module of ``package`` under ``root``."""
    out = {}
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def absolute_imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, as absolute dotted names (relative imports resolved; ``from x
    import y`` counts as ``x`` and ``x.y``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def violations(root: Path) -> list[str]:
    """Every import under ``root`` that breaks a layer rule, as "RULE: MODULE imports NAME"."""
    found = []
    for package in PACKAGES:
        for name, path in sorted(modules_under(root, package).items()):
            layer = layer_of(name)
            for rule in RULES:
                if rule.layer != layer:
                    continue
                bad = sorted(m for m in absolute_imports(name, path) if rule.broken_by(name, m))
                found += [f"{rule.name}: {name} imports {m}" for m in bad]
    return found


def test_every_module_of_rain_core_has_a_layer():
    loose = [name for name in modules_under(ROOT, "rain_core") if name != "rain_core" and layer_of(name) is None]
    assert not loose, f"modules in no layer (add them to LAYERS): {loose}"


def test_the_layers_hold():
    assert violations(ROOT) == []


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_each_rule_fails_on_a_planted_import(tmp_path, rule):
    for package in ("rain_core", "rain_integrations"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "rain_bench").mkdir()
    target = tmp_path / rule.plant_in
    assert layer_of(".".join(Path(rule.plant_in).with_suffix("").parts)) == rule.layer
    target.write_text(rule.plant + "\n" + target.read_text())
    found = violations(tmp_path)
    assert found, f"planting {rule.plant!r} in {rule.plant_in} broke no rule"
    assert all(line.startswith(rule.name + ":") for line in found), found


# What each core module may import from the core: the one-way graph (tree <- phases <- drivers <-
# search <- decoder), by the module's name below rain_core.
ALLOWED = {
    "protocols": set(),
    "config": set(),
    "tree": set(),
    "text": set(),
    "principles": set(),
    "results": set(),
    "control": set(),
    "chat": {"protocols"},
    "evaluators": {"config", "principles", "protocols", "evaluators"},
    "phases": {"chat", "protocols", "requests", "state", "tree"},
    "drivers": {"protocols", "requests"},
    "requests": {"protocols"},
    "state": {"config", "protocols", "text", "tree"},
    "rounds": {"config", "phases", "state", "tree"},
    "search": {"config", "drivers", "phases", "protocols", "requests", "results", "rounds", "state", "text", "tree"},
    "streams": {"results"},
    "decoder": {"chat", "config", "control", "evaluators", "protocols", "results", "search", "streams"},
    "decoding": {"chat", "config", "control", "protocols", "results", "streams"},
    "baselines": {
        "baselines",
        "chat",
        "config",
        "control",
        "decoder",
        "decoding",
        "drivers",
        "evaluators",
        "phases",
        "protocols",
        "results",
        "search",
        "streams",
        "text",
    },
}


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_core_imports_follow_the_one_way_graph(module):
    modules = modules_under(ROOT, "rain_core")
    mine = {n: p for n, p in modules.items() if n == f"rain_core.{module}" or n.startswith(f"rain_core.{module}.")}
    assert mine, module
    own = {
        m.split(".")[1]
        for name, path in mine.items()
        for m in absolute_imports(name, path)
        if m.startswith("rain_core.") and m.split(".")[1] in ALLOWED
    }
    assert own <= ALLOWED[module], f"rain_core.{module} imports {sorted(own - ALLOWED[module])} from rain_core"


def test_the_core_decodes_on_a_fake_model_without_torch_or_engines():
    script = textwrap.dedent(
        """
        import sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers") or name.startswith("rain_core.engines"):
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Blocker())
        sys.path.insert(0, "tests")
        import rain_core
        from rain_core import RainDecoder, RainConfig, SelfEvaluator
        from fakes import CharLM, words_penalty
        lm = CharLM()
        text = RainDecoder(lm, words_penalty("zz"), encoder=None, max_new_tokens=12, max_searches=4).generate("hi").text
        score = SelfEvaluator(lm).score("User: hi", "hello")
        assert -1 <= score <= 1
        try:
            rain_core.TransformersLM
        except ImportError as exc:
            print("engine blocked:", exc)
        mods = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")
                      or m.startswith("rain_core.engines"))
        print("loaded:", mods)
        print("text:", len(text))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "loaded: []" in out.stdout
    assert "engine blocked: blocked: rain_core.engines" in out.stdout  # engines load only on demand


MAX_LINES = 450


def test_no_module_is_longer_than_450_lines():
    long = {
        name: n
        for package in ("rain_core", "rain_integrations")
        for name, path in modules_under(ROOT, package).items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_rain_core_never_imports_the_benchmarks():
    for name, path in modules_under(ROOT, "rain_core").items():
        bad = [m for m in absolute_imports(name, path) if m.split(".")[0] == "rain_bench"]
        assert not bad, f"{name} imports {bad}: rain bench is a plug-in (entry point rain.commands)"


def test_no_import_circle_among_the_modules():
    modules = {
        name: path
        for package in ("rain_core", "rain_integrations")
        for name, path in modules_under(ROOT, package).items()
    }
    graph = {
        name: {m for m in absolute_imports(name, path) if m in modules and m != name} for name, path in modules.items()
    }
    # a package's __init__ importing its own submodules is how a package exports; not a circle
    for name in graph:
        graph[name] = {m for m in graph[name] if not (name in modules and m.startswith(name + "."))}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
