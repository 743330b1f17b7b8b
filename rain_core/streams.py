"""A decode's answer as it is committed: ``RainStream`` (blocking) and ``AsyncRainStream``.

Committed token sets are final, so their text can be handed out at once. A stream hands out text
pieces and, once the decode has ended, carries its ``RainResult``: the result is set before the last
piece is handed out, so a consumer that holds a piece knows from ``done`` whether it is the last
one (an adapter sends the reply's last text and its metadata in one chunk). Closing a stream stops
its decode. ``safe_text`` is the rule for what may be handed out before the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from .chat import cut_at_stop, holdback
from .results import RainResult


def safe_text(text: str, stops: Sequence[str], emitted: int) -> tuple[str, int]:
    """The part of a decode's ``text`` past ``emitted`` characters that may be handed out now (the
    start of a possible stop string and an unfinished character wait), and the new count."""
    text, _ = cut_at_stop(text, stops)
    safe = len(text) - holdback(text, stops)
    return (text[emitted:safe], safe) if safe > emitted else ("", emitted)


class RainStream:
    """The text pieces of one decode, each final as soon as it is yielded. ``result`` is the
    ``RainResult`` once the decode has ended (set before the last piece is yielded: ``done`` says
    whether a piece just received is the last). Closing the stream, or leaving a ``with`` block,
    stops the decode and frees the model."""

    def __init__(self, pieces: Callable[[RainStream], Iterator[str]]) -> None:
        self.result: RainResult | None = None
        self._pieces = pieces(self)

    @property
    def done(self) -> bool:
        """Whether the decode has ended (``result`` is set)."""
        return self.result is not None

    def __iter__(self) -> RainStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop the decode (it ends before its next model call)."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> RainStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncRainStream:
    """``RainStream`` for ``async for``; ``aclose()`` stops the decode."""

    def __init__(self, pieces: Callable[[AsyncRainStream], AsyncIterator[str]]) -> None:
        self.result: RainResult | None = None
        self._pieces = pieces(self)

    @property
    def done(self) -> bool:
        return self.result is not None

    def __aiter__(self) -> AsyncRainStream:
        return self

    async def __anext__(self) -> str:
        return await self._pieces.__anext__()

    async def aclose(self) -> None:
        close = getattr(self._pieces, "aclose", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> AsyncRainStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
