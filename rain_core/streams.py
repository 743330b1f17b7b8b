"""A decode's answer as it is committed: ``RainStream`` (blocking) and ``AsyncRainStream``.

A stream passes on the ``Commit`` values the search hands up, and asks the search nothing.
Committed token sets are final, so their text can be handed out at once: iterating a stream gives
the text pieces; ``commits()`` gives the ``Commit`` values themselves (ids, text, the commit's
statistics, and on the last one the result). A stream's ``result`` is the decode's ``RainResult``
once the decode has ended, set before the last piece is handed out, so a consumer that holds a piece
knows from ``done`` whether it is the last one (an adapter sends the reply's last text and its
metadata in one chunk). Closing a stream stops its decode.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .results import Commit, RainResult

__all__ = ["AsyncRainStream", "OnCommit", "RainStream", "in_threads"]

OnCommit = Callable[[dict[str, Any]], None]
"""Told each commit as it happens: its ``commit_log`` entry (tokens, text, searches, value, ...)."""


class RainStream:
    """The text pieces of one decode, each final as soon as it is yielded. ``result`` is the
    ``RainResult`` once the decode has ended (set before the last piece is yielded: ``done`` says
    whether a piece just received is the last). Closing the stream, or leaving a ``with`` block,
    stops the decode and frees the model."""

    def __init__(self, commits: Iterator[Commit], on_commit: OnCommit | None = None) -> None:
        self.result: RainResult | None = None
        self._source = commits
        self._commits = self._read(on_commit)

    def _read(self, on_commit: OnCommit | None) -> Iterator[Commit]:
        try:
            for commit in self._source:
                if commit.stats is not None and on_commit is not None:
                    on_commit(dict(commit.stats))
                if commit.result is not None:
                    self.result = commit.result
                yield commit
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    @property
    def done(self) -> bool:
        """Whether the decode has ended (``result`` is set)."""
        return self.result is not None

    def commits(self) -> Iterator[Commit]:
        """The decode's ``Commit`` values as they are made (the same ones the text pieces come from:
        read one way or the other)."""
        return self._commits

    def __iter__(self) -> RainStream:
        return self

    def __next__(self) -> str:
        while True:
            commit = next(self._commits)
            if commit.text:
                return commit.text

    def close(self) -> None:
        """Stop the decode (it ends before its next model call)."""
        close = getattr(self._commits, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> RainStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncRainStream:
    """``RainStream`` for ``async for``; ``aclose()`` stops the decode."""

    def __init__(self, commits: AsyncIterator[Commit], on_commit: OnCommit | None = None) -> None:
        self.result: RainResult | None = None
        self._source = commits
        self._commits = self._read(on_commit)

    async def _read(self, on_commit: OnCommit | None) -> AsyncIterator[Commit]:
        try:
            async for commit in self._source:
                if commit.stats is not None and on_commit is not None:
                    on_commit(dict(commit.stats))
                if commit.result is not None:
                    self.result = commit.result
                yield commit
        finally:
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                await aclose()

    @property
    def done(self) -> bool:
        return self.result is not None

    def commits(self) -> AsyncIterator[Commit]:
        """The decode's ``Commit`` values, for ``async for``."""
        return self._commits

    def __aiter__(self) -> AsyncRainStream:
        return self

    async def __anext__(self) -> str:
        while True:
            commit = await self._commits.__anext__()
            if commit.text:
                return commit.text

    async def aclose(self) -> None:
        aclose = getattr(self._commits, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncRainStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


async def in_threads(commits: Iterator[Commit], left: threading.Event) -> AsyncIterator[Commit]:
    """Blocking ``commits``, each made in a worker thread. Leaving (cancelled, closed, abandoned) sets
    ``left``, the search's stop flag, so a commit still running in its thread ends before its next
    model call; commits not yet started are dropped."""
    try:
        while True:
            commit = await asyncio.to_thread(next, commits, None)
            if commit is None:
                return
            yield commit
    finally:
        left.set()
        try:
            close = getattr(commits, "close", None)
            if close is not None:
                close()
        except ValueError:  # still running in its worker thread: it stops there at its next model call
            pass
