"""How a decode is stopped and how decodes take turns: the caller's cancel, one lock per model, seeds."""

from __future__ import annotations

import secrets
import threading
import weakref
from collections.abc import Callable
from typing import Any, Union

Cancel = Union[threading.Event, Callable[[], bool], None]  # noqa: UP007 (a runtime alias)
"""A caller's way to stop a decode: an ``Event`` it sets, or a function that returns True."""

_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(lm: Any) -> threading.RLock:
    """One lock per model that serves one decode at a time (its KV cache and weights): every
    decoder of that model takes it for each commit."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(lm)
        if lock is None:
            lock = _MODEL_LOCKS[lm] = threading.RLock()
        return lock


def resolve_seed(seed: int | None) -> int:
    """The config's seed, or a fresh random one when it is None."""
    return seed if seed is not None else secrets.randbelow(2**31 - 1)


def stop_test(cancel: Cancel, left: threading.Event | None = None) -> Callable[[], bool] | None:
    """The search's stop test: the caller's ``cancel``, or ``left`` (the stream was abandoned)."""
    if cancel is not None and not isinstance(cancel, threading.Event) and not callable(cancel):
        raise TypeError(
            f"cancel must be a threading.Event or a function returning True to stop, got {type(cancel).__name__}"
        )
    tests = [t for t in (cancel.is_set if isinstance(cancel, threading.Event) else cancel, left and left.is_set) if t]
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return lambda: any(test() for test in tests)
