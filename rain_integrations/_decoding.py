"""One decode as an adapter sees it, for blocking and async callers: ``Commit``, ``Text`` and a last
``Done`` that carries the reply's last text together with the result (so a stream's last chunk has
both); a call's temperature as RAIN's; the result's usage and statistics.

The decode is the decoder's ``stream`` / ``astream`` (``RainDecoder``, or any ``Decoder``: a
baseline), read as the ``Commit`` values the decoder hands up (``stream.commits()``): each carries
its text and statistics, and the last one the result. A decode that ends with no new text (an
empty reply, a deadline before the next commit) ends with ``Done(result)`` and no text.
Closing the events (or, async, cancelling the task that reads them) stops the decode and frees the
model: the decoder's ``astream`` is the one bridge from the blocking search to ``async for``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Union

from rain_core import Decoder, RainResult
from rain_core.decoder import Cancel
from rain_core.results import Commit as SearchCommit

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


def _events(commits: Iterable[SearchCommit], on_commit: Callable[[dict[str, Any]], None] | None) -> Iterator[Event]:
    """The events of one commit after another: its ``Commit`` event (``on_commit`` told first), then its
    text as ``Text``, or, on the last commit, ``Done`` with the last text and the result."""
    count = 0
    for commit in commits:
        if commit.stats is not None:
            data = commit_payload(commit.stats, count)
            count += 1
            if on_commit is not None:
                on_commit(data)
            yield Commit(data)
        if commit.result is not None:
            yield Done(commit.result, commit.text)
            return
        if commit.text:
            yield Text(commit.text)


def decode_events(
    decoder: Decoder,
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
    with decoder.stream(prompt, cancel=cancel, **options) as stream:
        yield from _events(stream.commits(), on_commit)


async def adecode_events(
    decoder: Decoder, prompt: Any, *, plain: bool = False, cancel: Cancel = None, **options: Any
) -> AsyncGenerator[Event, None]:
    """``decode_events`` for ``async for``, over the decoder's ``astream``: the search runs commit by
    commit in worker threads (on the loop itself for an async server engine), and leaving (a
    cancelled task, ``aclose``, the iterator collected) stops it before its next model call."""
    if plain:  # one blocking call, no search to stop
        result = await asyncio.to_thread(decoder.vanilla, prompt, **options)
        yield Done(result, result.text)
        return
    async with decoder.astream(prompt, cancel=cancel, **options) as stream:
        count = 0
        async for commit in stream.commits():
            if commit.stats is not None:
                yield Commit(commit_payload(commit.stats, count))
                count += 1
            if commit.result is not None:
                yield Done(commit.result, commit.text)
                return
            if commit.text:
                yield Text(commit.text)


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
