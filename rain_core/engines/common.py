"""Pieces every engine shares: work counters, the suffix-token table, the plain chat transcript."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


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
