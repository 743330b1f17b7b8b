"""A decode's session: one random id that every request of one decode carries, so that a router in
front of many replicas of a served model keeps the decode on one replica (its prefix cache).

Part of the seam (beside ``protocols``): the decoder opens a session for each step of a decode,
and an engine that talks to a server reads ``current_session()`` when it sends a request
(``VLLMEngine`` puts it in the ``X-Session-ID`` header). The id lives in a context variable, so it
follows the code that runs for the decode: the thread or task of the step, the tasks it starts,
``asyncio.to_thread`` and any worker started with ``contextvars.copy_context()``; a judge or guard
on another engine object sends the same id. Concurrent decodes have different ids, even when they
share one engine object or one thread (a session is set for one step at a time, never across a
``yield`` to the caller).

Nothing here imports anything of rain.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

__all__ = ["ain_session", "current_session", "decode_session", "in_session", "new_session_id"]

T = TypeVar("T")

_SESSION: ContextVar[str | None] = ContextVar("rain_decode_session", default=None)


def new_session_id() -> str:
    """A fresh random session id: 32 hex digits (128 bits), nothing of the user's in it."""
    return secrets.token_hex(16)


def current_session() -> str | None:
    """The session id of the code running now, or None outside a decode's session."""
    return _SESSION.get()


@contextmanager
def decode_session(session_id: str | None = None) -> Iterator[str]:
    """Every request made inside the block belongs to the session ``session_id`` (default: a fresh
    random one). A decode started inside the block keeps that session for all its requests, so
    ``with decode_session(conversation_id): ...`` keeps the turns of one conversation on one replica."""
    if session_id is not None and (not isinstance(session_id, str) or not session_id.isprintable()):
        raise ValueError(f"a session id must be printable text (it travels in an HTTP header), got {session_id!r}")
    sid = session_id or new_session_id()
    token = _SESSION.set(sid)
    try:
        yield sid
    finally:
        _SESSION.reset(token)


def in_session(steps: Iterator[T], session_id: str) -> Iterator[T]:
    """``steps`` with each step run inside the session ``session_id`` (and the caller's own context
    in between, so many decodes can be stepped by one thread). Closing it closes ``steps``."""
    try:
        while True:
            with decode_session(session_id):
                try:
                    item = next(steps)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()


async def ain_session(steps: AsyncIterator[T], session_id: str) -> AsyncIterator[T]:
    """``in_session`` for an async iterator (each ``__anext__`` inside the session)."""
    try:
        while True:
            with decode_session(session_id):
                try:
                    item = await steps.__anext__()
                except StopAsyncIteration:
                    return
            yield item
    finally:
        aclose = getattr(steps, "aclose", None)
        if aclose is not None:
            await aclose()
