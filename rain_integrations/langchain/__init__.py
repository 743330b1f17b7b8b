"""LangChain adapters for RAIN (``pip install "rain-align[langchain]"``: only ``langchain-core``).

- ``ChatRain``: a chat model over a ``RainDecoder`` or any ``Decoder`` (invoke, stream, batch, async with
  cancellation, tools, structured output, ``rain_commit`` callback events).
- ``RainLLM``: a text-completion model over a ``RainDecoder`` or any ``Decoder``.
- ``RainEmbeddings``: LangChain embeddings from the packaged all-MiniLM-L6-v2 (or any
  sentence-transformers folder), so a vector store and a RAG chain run offline.
- ``RainGuard``: an LCEL runnable that checks text with a RAIN evaluator and blocks, rewrites or
  flags it (``guard | chain | guard``).
- ``RainGuardMiddleware`` / ``RainToolGuard``: the same checks as agent middleware for
  ``langchain.agents.create_agent`` (input, output, tool results). They need the ``langchain``
  package (``pip install "rain-align[agents]"``) and are imported on first use.

The adapters translate and delegate: messages become RAIN chat messages through
``messages_from_langchain``, options become ``RainConfig`` overrides, and ``RainResult`` becomes
LangChain messages, chunks and metadata. The search lives in ``rain_core``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .._extras import missing

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise missing(
        "rain_integrations.langchain needs langchain-core", "langchain", "pip install -e '.[langchain]'"
    ) from exc

from rain_core.chat import TemplateSupport, template_support

from .._decoding import MIN_TEMPERATURE
from .chat_models import ChatRain
from .embeddings import DEFAULT_EMBEDDINGS_MODEL, RainEmbeddings
from .guards import (
    DEFAULT_BLOCK_MESSAGE,
    DEFAULT_INPUT_BLOCK_MESSAGE,
    DEFAULT_REWRITE_INSTRUCTION,
    GuardStrategy,
    GuardVerdict,
    RainGuard,
    RainGuardedRunnable,
    RainGuardViolation,
)
from .llms import RainLLM
from .messages import messages_from_langchain
from .params import RAIN_COMMIT_EVENT
from .structured_output import StructuredOutputParser
from .tools import parse_tool_calls

_MIDDLEWARE = ("RainGuardMiddleware", "RainToolGuard")

__all__ = [
    "ChatRain",
    "DEFAULT_BLOCK_MESSAGE",
    "DEFAULT_EMBEDDINGS_MODEL",
    "DEFAULT_INPUT_BLOCK_MESSAGE",
    "DEFAULT_REWRITE_INSTRUCTION",
    "GuardStrategy",
    "GuardVerdict",
    "MIN_TEMPERATURE",
    "RAIN_COMMIT_EVENT",
    "RainEmbeddings",
    "RainGuard",
    "RainGuardMiddleware",
    "RainGuardViolation",
    "RainGuardedRunnable",
    "RainLLM",
    "RainToolGuard",
    "StructuredOutputParser",
    "TemplateSupport",
    "messages_from_langchain",
    "parse_tool_calls",
    "template_support",
]


def __getattr__(name: str) -> Any:
    if name in _MIDDLEWARE:  # needs the `langchain` package: imported on first use
        return getattr(importlib.import_module(".middleware", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
