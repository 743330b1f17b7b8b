"""One decode as an adapter sees it, for blocking and async callers: ``Commit``, ``Text`` and a last
``Done`` that carries the reply's last text together with the result (so a stream's last chunk has
both); a call's temperature as RAIN's; the result's usage and statistics.

The decode is ``RainDecoder.stream`` / ``astream``: a ``RainStream`` sets its result before it
yields the last piece, so ``stream.done`` tells a piece that is the last. A decode that ends with no
new text (an empty reply, a deadline before the next commit) ends with ``Done(result)`` and no text.
Closing the events (or, async, cancelling the task that reads them) stops the decode and frees the
model: the decoder's ``astream`` is the one bridge from the blocking search to ``async for``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from rain_core import RainDecoder, RainResult
from rain_core.decoder import Cancel

__all__ = [
    "MIN_TEMPERATURE",
    "Commit",
    "Done",
    "Event",
    "Text",
    "adecode_events",
    "arun_events",
    "commit_payload",
    "decode_events",
    "rain_temperature",
    "run_events",
    "stats_of",
    "usage_of",
]

MIN_TEMPERATURE = 0.01
"""Frameworks' ``temperature=0`` means "as greedy as possible"; RAIN samples candidates, so 0 becomes
this small positive temperature instead of an error."""


def rain_temperature(value: float | None) -> float | None:
    """A framework's temperature as RAIN's: 0 becomes ``MIN_TEMPERATURE``."""
    if value is None:
        return None
    return MIN_TEMPERATURE if value == 0 else value


# --- results out -----------------------------------------------------------------------------------
def stats_of(result: RainResult) -> dict[str, Any]:
    """The search statistics of a result, without the per-commit log."""
    return {k: v for k, v in result.stats.items() if k != "commit_log"}


def usage_of(result: RainResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def commit_payload(entry: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A commit's log entry as a callback or instrumentation event: its index and statistics
    (``tokens``, ``text``, ``searches``, ``visits``, ``real_visits``, ``value``, ``early_stop``,
    ``seconds``, ...); the search tree (``keep_trees``) stays in the trace."""
    return {"index": index, **{k: v for k, v in entry.items() if k not in ("tree", "chosen")}}


# --- one decode as events --------------------------------------------------------------------------
@dataclass(frozen=True)
class Commit:
    """A token set was committed; ``data`` is ``commit_payload`` of its log entry."""

    data: dict[str, Any]


@dataclass(frozen=True)
class Text:
    """New final text of the reply (more follows)."""

    text: str


@dataclass(frozen=True)
class Done:
    """The decode ended: its result, and the reply's last new text (empty when it ended without any)."""

    result: RainResult
    text: str = ""


Event = Union[Commit, Text, Done]  # noqa: UP007 (a runtime alias)


class _Events:
    """The rule both loops follow: the commits seen since the last piece come before it, and the piece
    handed out once the decode is done is the last text, sent as ``Done``."""

    def __init__(self, on_commit: Callable[[dict[str, Any]], None] | None) -> None:
        self.on_commit = on_commit
        self.pending: list[Commit] = []
        self.count = 0
        self.ended = False

    def committed(self, entry: dict[str, Any]) -> None:
        data = commit_payload(entry, self.count)
        self.count += 1
        if self.on_commit is not None:
            self.on_commit(data)
        self.pending.append(Commit(data))

    def _drain(self) -> list[Event]:
        out: list[Event] = list(self.pending)
        self.pending.clear()
        return out

    def piece(self, piece: str, result: RainResult | None) -> list[Event]:
        if result is None:
            return [*self._drain(), Text(piece)]
        self.ended = True
        return [*self._drain(), Done(result, piece)]

    def end(self, result: RainResult | None) -> list[Event]:
        if self.ended:
            return []
        assert result is not None, "the decode ended without a result"
        return [*self._drain(), Done(result)]


def decode_events(
    decoder: RainDecoder,
    prompt: Any,
    *,
    plain: bool = False,
    cancel: Cancel = None,
    on_commit: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> Generator[Event, None, None]:
    """Decode ``prompt`` and yield what happens: ``Commit`` (after ``on_commit`` saw it, as it
    happened), ``Text`` pieces, and one ``Done`` with the last text. ``plain`` decodes without the
    search (one ``Done``). Closing the iterator, or ``cancel``, stops the decode."""
    if plain:
        result = decoder.vanilla(prompt, **options)
        yield Done(result, result.text)
        return
    events = _Events(on_commit)
    with decoder.stream(prompt, cancel=cancel, on_commit=events.committed, **options) as stream:
        for piece in stream:
            yield from events.piece(piece, stream.result)
        yield from events.end(stream.result)


async def adecode_events(
    decoder: RainDecoder, prompt: Any, *, plain: bool = False, cancel: Cancel = None, **options: Any
) -> AsyncGenerator[Event, None]:
    """``decode_events`` for ``async for``, over ``RainDecoder.astream``: the search runs commit by
    commit in worker threads (on the loop itself for an async server engine), and leaving (a
    cancelled task, ``aclose``, the iterator collected) stops it before its next model call."""
    if plain:  # one blocking call, no search to stop
        result = await asyncio.to_thread(decoder.vanilla, prompt, **options)
        yield Done(result, result.text)
        return
    events = _Events(None)
    async with decoder.astream(prompt, cancel=cancel, on_commit=events.committed, **options) as stream:
        async for piece in stream:
            for event in events.piece(piece, stream.result):
                yield event
        for event in events.end(stream.result):
            yield event


def run_events(events: Iterable[Event]) -> RainResult:
    """Consume ``events`` and return the result."""
    for event in events:
        if isinstance(event, Done):
            return event.result
    raise RuntimeError("the decode ended without a result")


async def arun_events(
    events: AsyncGenerator[Event, None], on_commit: Callable[[dict[str, Any]], Awaitable[None]] | None = None
) -> RainResult:
    """Consume ``events`` (``on_commit`` awaited for each commit) and return the result; cancelling
    the awaiting task stops the decode."""
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, Commit) and on_commit is not None:
                await on_commit(event.data)
            elif isinstance(event, Done):
                return event.result
    raise RuntimeError("the decode ended without a result")
