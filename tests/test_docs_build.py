"""The documentation site builds offline with no warnings (``mkdocs build --strict``, as ``make docs``),
its API reference shows each public class's own docstring, every guide in docs/ is in the nav, and
every relative link in the docs resolves to a file of the repository (the site leaves links outside
docs/ to GitHub readers, so mkdocs does not check those)."""

from __future__ import annotations

import html
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# (page, object): the API reference pages and what each must document
API = [
    ("langchain", "rain_integrations.langchain.chat_models.ChatRain"),
    ("langchain", "rain_integrations.langchain.llms.RainLLM"),
    ("langchain", "rain_integrations.langchain.embeddings.RainEmbeddings"),
    ("langchain", "rain_integrations.langchain.guards.RainGuard"),
    ("langchain", "rain_integrations.langchain.middleware.RainGuardMiddleware"),
    ("langchain", "rain_integrations.options.DecoderOptions"),
    ("langchain", "rain_integrations.options.LoadOptions"),
    ("llamaindex", "rain_integrations.llamaindex.llm.RainLlamaIndexLLM"),
    ("llamaindex", "rain_integrations.llamaindex.embeddings.RainEmbedding"),
    ("core", "rain_core.decoder.RainDecoder"),
    ("core", "rain_core.config.RainConfig"),
    ("core", "rain_core.streams.RainStream"),
    ("evaluators", "rain_core.evaluators.SelfEvaluator"),
    ("evaluators", "rain_core.evaluators.JudgeEvaluator"),
    ("evaluators", "rain_core.evaluators.CallableEvaluator"),
    ("evaluators", "rain_core.evaluators.guards.evaluator.GuardEvaluator"),
    ("engines", "rain_core.engines.vllm.VLLMEngine"),
    ("engines", "rain_core.loaders.models.load_model"),
]


def page_text(path: Path) -> str:
    """A built page's text: tags removed, entities decoded, white space collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", path.read_text())).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    dead = "http://127.0.0.1:9"  # nothing listens: any download the build tried would fail it
    env = {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead}
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "WARNING" not in done.stderr, done.stderr[-4000:]
    return out


@pytest.mark.parametrize(("page", "dotted"), API, ids=[d.rsplit(".", 1)[1] for _, d in API])
def test_the_api_reference_shows_each_docstring(site, page, dotted):
    module, name = dotted.rsplit(".", 1)
    obj = getattr(importlib.import_module(module), name)
    first = " ".join(inspect.getdoc(obj).split("\n\n")[0].replace("`", "").split())
    text = page_text(site / "api" / page / "index.html")
    assert name in text
    assert first[:60] in text, (first[:60], page)


def test_pydantic_fields_are_listed_with_their_descriptions(site):
    core = page_text(site / "api" / "core" / "index.html")
    assert "max_searches" in core and "T_max: search budget per commit (official 50)" in core
    langchain = page_text(site / "api" / "langchain" / "index.html")
    assert "Most new tokens per call (RAIN's max_new_tokens)" in langchain
    assert "Texts per forward pass in embed_documents" in langchain
    assert "guard_preset" in langchain and "judges replies by its own policy" in langchain  # DecoderOptions


def test_every_guide_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(node: object) -> set[str]:
        if isinstance(node, str):
            return {node}
        if isinstance(node, list):
            return set().union(*(pages(n) for n in node))
        if isinstance(node, dict):
            return set().union(*(pages(v) for v in node.values()))
        return set()

    in_nav = pages(config["nav"])
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk - in_nav == set(), "add these pages to the nav in mkdocs.yml"
    assert in_nav - on_disk == set()


def test_the_build_fetches_nothing():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["name"] == "mkdocs" and config["theme"]["highlightjs"] is False  # no CDN
    assert "http" not in yaml.safe_dump(config["plugins"])  # no remote inventories


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md")))
def test_relative_links_resolve_in_the_repository(doc):
    path = ROOT / doc
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # not inside code blocks
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        assert (path.parent / file).exists(), f"{doc} links to {target}, which does not exist"
