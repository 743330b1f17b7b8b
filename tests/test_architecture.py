"""The seam holds: the core never imports torch, transformers or an engine, and runs without them.

Import graph: tree <- phases <- drivers <- search <- decoder <- adapters (the decoder also reads
results and streams), with the engines as one plug-in below the
protocols. These tests read every import statement of the core modules (also those inside
functions) and run a decode in a fresh interpreter where torch, transformers and the engines cannot
be imported."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = [
    "tree",
    "phases",
    "drivers",
    "search",
    "results",
    "streams",
    "control",
    "decoder",
    "config",
    "evaluators",
    "guard_presets",
    "guard_prompts",
    "guard_evaluator",
    "protocols",
    "chat",
    "principles/__init__",
]
FORBIDDEN = ("torch", "transformers", "rain_core.engines", "rain_integrations", "rain_bench")
# What each core module may import from rain_core: the one-way graph.
ALLOWED = {
    "protocols": set(),
    "config": set(),
    "tree": set(),
    "principles/__init__": set(),
    "chat": {"protocols"},
    "evaluators": {"config", "principles", "protocols"},
    "guard_presets": {"protocols"},
    "guard_prompts": {"guard_presets", "protocols"},
    "guard_evaluator": {"config", "guard_presets", "guard_prompts", "protocols"},
    "phases": {"chat", "config", "protocols", "tree"},
    "drivers": {"phases", "protocols"},
    "search": {"config", "drivers", "phases", "protocols", "tree"},
    "results": set(),
    "streams": {"chat", "results"},
    "control": set(),
    "decoder": {"chat", "config", "control", "evaluators", "protocols", "results", "search", "streams"},
}


def _imports(module: str) -> list[str]:
    """Absolute names of every module imported anywhere in ``rain_core/<module>.py``."""
    path = ROOT / "rain_core" / f"{module}.py"
    package = "rain_core" + ("" if "/" not in module else "." + module.split("/")[0])
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
                if not node.module:  # "from . import x"
                    names += [f"{base}.{a.name}" for a in node.names]
                    continue
            names.append(base)
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_no_engine(module):
    imported = _imports(module)
    assert imported, module
    bad = [n for n in imported if n.split(".")[0] in ("torch", "transformers") or n.startswith(FORBIDDEN)]
    assert not bad, f"rain_core/{module}.py imports {bad}"


@pytest.mark.parametrize("module", CORE)
def test_core_imports_follow_the_one_way_graph(module):
    own = {n.split(".", 2)[1] for n in _imports(module) if n.startswith("rain_core.")}
    assert own <= ALLOWED[module], f"rain_core/{module}.py imports {sorted(own - ALLOWED[module])} from rain_core"


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


PACKAGES = ("rain_core", "rain_integrations")
MAX_LINES = 450


def _modules(package: str) -> dict[str, Path]:
    """Dotted name -> path of every module of ``package``."""
    base = ROOT / package
    out = {}
    for path in base.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _absolute_imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, as absolute dotted names (relative imports resolved)."""
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


def test_no_module_is_longer_than_450_lines():
    long = {
        name: n
        for package in PACKAGES
        for name, path in _modules(package).items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_rain_core_never_imports_the_benchmarks():
    for name, path in _modules("rain_core").items():
        bad = [m for m in _absolute_imports(name, path) if m.split(".")[0] == "rain_bench"]
        assert not bad, f"{name} imports {bad}: rain bench is a plug-in (entry point rain.commands)"


def test_no_import_circle_among_the_modules():
    modules = {name: path for package in PACKAGES for name, path in _modules(package).items()}
    graph = {
        name: {m for m in _absolute_imports(name, path) if m in modules and m != name} for name, path in modules.items()
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
