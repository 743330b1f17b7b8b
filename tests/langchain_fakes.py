"""What the LangChain adapter tests build: ``ChatRain`` and ``RainLLM`` over the scripted fake
(``fakes.ScriptedLM`` over printable ASCII, so it can write JSON tool calls and structured output),
and callback handlers that record what LangChain reports."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from conftest import SMALL
from fakes import PRINTABLE, ScriptedLM
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler

from rain_core import RainDecoder
from rain_integrations.langchain import RAIN_COMMIT_EVENT, ChatRain, RainLLM

FAKE = dict(SMALL, max_new_tokens=200)
LM_OPTIONS = ("tools_in_template", "delay", "marker", "extra_chars", "name")


def always_good(prompt: str, response: str) -> float:
    return 1.0


def scripted(script: Any, *, extra_chars: str = "", **kwargs: Any) -> ScriptedLM:
    """A scripted fake over printable ASCII (plus ``extra_chars``)."""
    return ScriptedLM(script, vocab=PRINTABLE + extra_chars, **kwargs)


def decoder_for(lm: Any, evaluator: Any = always_good, **overrides: Any) -> RainDecoder:
    return RainDecoder(lm, evaluator, encoder=None, **{**FAKE, **overrides})


def chat_for(script: Any, **kwargs: Any) -> ChatRain:
    """``ChatRain`` over a fake that writes ``script``; ``LM_OPTIONS`` go to the fake, the rest to ChatRain."""
    lm_kwargs = {k: kwargs.pop(k) for k in LM_OPTIONS if k in kwargs}
    return ChatRain(decoder=decoder_for(scripted(script, **lm_kwargs)), **kwargs)


def completion_llm(**kwargs: Any) -> RainLLM:
    """``RainLLM`` over a fake that completes ``Q: word\\nA:`` with `` word done.``."""
    lm = scripted(lambda head: f" {head.strip().split()[-1]} done.", marker="A:")
    return RainLLM(decoder=decoder_for(lm), **kwargs)


def last_user(head: str) -> str:
    """The last user turn of a fake's rendered prompt."""
    return head.rsplit("user: ", 1)[-1].split("\n", 1)[0].strip()


def joined(chunks: Sequence[Any]) -> Any:
    """Streamed message chunks added up, as LangChain merges them."""
    return functools.reduce(operator.add, chunks)


class TokenRecorder(BaseCallbackHandler):
    """Records the tokens, model runs and ``rain_commit`` events LangChain reports."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.starts = 0
        self.commits: list[dict[str, Any]] = []
        self.commit_runs: set[UUID] = set()
        self.llm_runs: set[UUID] = set()

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_start(self, serialized: Any, prompts: list[str], *, run_id: UUID, **kwargs: Any) -> None:
        self.starts += 1
        self.llm_runs.add(run_id)

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.starts += 1
        self.llm_runs.add(run_id)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == RAIN_COMMIT_EVENT:
            self.commits.append(data)
            self.commit_runs.add(run_id)


class AsyncRecorder(AsyncCallbackHandler):
    """Records the ``rain_commit`` events of async runs."""

    def __init__(self) -> None:
        self.commits: list[dict[str, Any]] = []

    async def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == RAIN_COMMIT_EVENT:
            self.commits.append(data)
