"""LlamaIndex instrumentation events of a RAIN decode, dispatched through
``llama_index.core.instrumentation`` (so Arize Phoenix, LangSmith's LlamaIndex handler or any event
handler sees where the time went): ``RainSearchStartEvent`` when a decode starts,
``RainCommitEvent`` per committed token set (with that commit's search statistics) and
``RainSearchEndEvent`` when it ends. Events carry the span of the LLM call that made them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span import active_span_id

from .._common import Commit, Done, Event, stats_of

__all__ = [
    "RainCommitEvent",
    "RainSearchEndEvent",
    "RainSearchStartEvent",
    "current_span_id",
    "dispatcher",
    "instrumented",
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


def instrumented(
    events: Iterator[Event], model_name: str, *, plain: bool, config: dict[str, Any], span_id: str | None = None
) -> Iterator[Event]:
    """``events``, with the instrumentation events dispatched as they happen, in ``span_id`` (default:
    the active span). A stream is consumed after the LLM call returned, so its events carry the span
    of the call that made it (as LlamaIndex's own in-progress events do)."""
    return _dispatching(events, model_name, plain, config, span_id or active_span_id.get())


def _dispatching(
    events: Iterator[Event], model_name: str, plain: bool, config: dict[str, Any], span_id: str | None
) -> Iterator[Event]:
    dispatcher.event(RainSearchStartEvent(model_name=model_name, plain=plain, config=config, span_id=span_id))
    for event in events:
        if isinstance(event, Commit):
            dispatcher.event(RainCommitEvent(model_name=model_name, commit=event.data, span_id=span_id))
        elif isinstance(event, Done):
            result = event.result
            dispatcher.event(
                RainSearchEndEvent(
                    model_name=model_name,
                    span_id=span_id,
                    finish_reason=result.finish_reason,
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    stats=stats_of(result),
                )
            )
        yield event
