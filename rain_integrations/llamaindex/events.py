"""LlamaIndex instrumentation events of a RAIN decode, dispatched through
``llama_index.core.instrumentation`` (so Arize Phoenix, LangSmith's LlamaIndex handler or any event
handler sees where the time went): ``RainSearchStartEvent`` when a decode starts,
``RainCommitEvent`` per committed token set (with that commit's search statistics) and
``RainSearchEndEvent`` when it ends. Events carry the span of the LLM call that made them."""

from __future__ import annotations

from typing import Any

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span import active_span_id

from .._decoding import Commit, Done, Event, stats_of

__all__ = [
    "DecodeReport",
    "RainCommitEvent",
    "RainSearchEndEvent",
    "RainSearchStartEvent",
    "current_span_id",
    "dispatcher",
]

dispatcher = get_dispatcher(__name__)


class RainSearchStartEvent(BaseEvent):
    """A RAIN decode starts."""

    model_name: str
    plain: bool = False
    """Plain decoding (no search) for comparison."""
    config: dict[str, Any] = {}
    """The ``RainConfig`` of this decode (JSON)."""

    @classmethod
    def class_name(cls) -> str:
        return "RainSearchStartEvent"


class RainCommitEvent(BaseEvent):
    """A token set was committed. ``commit``: its index and statistics (``tokens``, ``text``,
    ``searches``, ``visits``, ``real_visits``, ``value``, ``early_stop``, ``seconds``, ...)."""

    model_name: str
    commit: dict[str, Any]

    @classmethod
    def class_name(cls) -> str:
        return "RainCommitEvent"


class RainSearchEndEvent(BaseEvent):
    """A RAIN decode ended: why, its token counts, and the decode's statistics."""

    model_name: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    stats: dict[str, Any] = {}

    @classmethod
    def class_name(cls) -> str:
        return "RainSearchEndEvent"


def current_span_id() -> str | None:
    """The active instrumentation span (the LLM call's, inside its method)."""
    return active_span_id.get()


class DecodeReport:
    """The instrumentation events of one decode: ``RainSearchStartEvent`` when it is made, then, as the
    decode's events pass through it (``report(event)``), ``RainCommitEvent`` per commit and
    ``RainSearchEndEvent`` at the end. They carry ``span_id`` (default: the active span): a stream is
    read after the LLM call returned, so its events carry the span of the call that made it (as
    LlamaIndex's own in-progress events do)."""

    def __init__(self, model_name: str, *, plain: bool, config: dict[str, Any], span_id: str | None = None) -> None:
        self.model_name = model_name
        self.span_id = span_id or active_span_id.get()
        dispatcher.event(RainSearchStartEvent(model_name=model_name, plain=plain, config=config, span_id=self.span_id))

    def __call__(self, event: Event) -> Event:
        if isinstance(event, Commit):
            dispatcher.event(RainCommitEvent(model_name=self.model_name, commit=event.data, span_id=self.span_id))
        elif isinstance(event, Done):
            result = event.result
            end = RainSearchEndEvent(
                model_name=self.model_name,
                span_id=self.span_id,
                finish_reason=result.finish_reason,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                stats=stats_of(result),
            )
            dispatcher.event(end)
        return event
