"""Counting the tokens a generator produces, the same way for every decoding method.

``counted(lm)`` wraps a ``LanguageModel`` so that every request of the protocol that makes the model
produce tokens is counted where it is answered: a ``sample`` row's tokens, a ``generate`` answer's
tokens, and one token per ``top_tokens`` request (one next-token distribution read, whatever ``k``),
in their single and batched forms. RAIN's expansions and simulations, best-of-N's rows, a check's
retries and blockwise's blocks are all counted by the same rule, so "generated tokens" means the same
thing in every row of a report. Prompt tokens (and their prefill) are not counted here; the engine's
own ``forward_tokens`` counts them.

The wrapper offers the optional protocols the wrapped model offers (batching, statistics, the
default encoder, prefix pinning, ``concurrent``) and passes anything else through.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from rain_core.protocols import (
    BatchedLanguageModel,
    Continuation,
    GenerateRequest,
    LanguageModel,
    PrefixPinning,
    ProvidesEncoder,
    ReportsStats,
    SampleRequest,
    TopTokensRequest,
)

__all__ = ["TokenCounter", "counted"]

_ASYNC = frozenset(
    {
        "atop_tokens",
        "asample",
        "agenerate",
        "anext_token_logprobs",
        "atop_tokens_batch",
        "asample_batch",
        "agenerate_batch",
    }
)


class TokenCounter:
    """A ``LanguageModel`` that counts the tokens it generates (``generated``) for ``inner``."""

    def __init__(self, inner: LanguageModel) -> None:
        self.inner = inner
        self.generated = 0
        self._lock = threading.Lock()

    def _add(self, n: int) -> None:
        with self._lock:
            self.generated += n

    def __getattr__(self, name: str) -> Any:
        """Anything not counted passes through, except the async requests (not counted, so not offered)."""
        if name == "inner" or name in _ASYNC:
            raise AttributeError(name)
        return getattr(self.inner, name)

    # --- the protocol ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.inner.name)

    @property
    def context_length(self) -> int:
        return int(self.inner.context_length)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.inner.eos_token_ids

    @property
    def concurrent(self) -> bool:
        return bool(getattr(self.inner, "concurrent", False))

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        return self.inner.encode(text, parse_special=parse_special)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.inner.decode(token_ids)

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        return self.inner.chat_prompt(messages, add_generation_prompt, **kwargs)

    def token_ids_ending_with(self, suffixes: Sequence[str]) -> frozenset[int]:
        return self.inner.token_ids_ending_with(suffixes)

    def top_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        out = self.inner.top_tokens(prefix, k, temperature, exclude)
        self._add(1)
        return out

    def sample(
        self,
        prefix: Sequence[int],
        n: int,
        length: int,
        *,
        top_k: int,
        temperature: float,
        seed: int,
        greedy_first: bool = True,
    ) -> list[Continuation]:
        out = self.inner.sample(
            prefix, n, length, top_k=top_k, temperature=temperature, seed=seed, greedy_first=greedy_first
        )
        self._add(sum(len(c.token_ids) for c in out))
        return out

    def generate(
        self,
        prefix: Sequence[int],
        max_tokens: int,
        *,
        top_k: int | None,
        temperature: float,
        seed: int,
        stop: Sequence[str] = (),
        stop_token_ids: Collection[int] = (),
    ) -> list[int]:
        out = self.inner.generate(
            prefix,
            max_tokens,
            top_k=top_k,
            temperature=temperature,
            seed=seed,
            stop=stop,
            stop_token_ids=stop_token_ids,
        )
        self._add(len(out))
        return out

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> list[list[float]]:
        return self.inner.next_token_logprobs(prompts, candidates)


class _Batched(TokenCounter):
    def top_tokens_batch(self, requests: Sequence[TopTokensRequest]) -> list[list[Continuation]]:
        out = self.inner.top_tokens_batch(requests)  # type: ignore[attr-defined]
        self._add(len(requests))
        return list(out)

    def sample_batch(self, requests: Sequence[SampleRequest]) -> list[list[Continuation]]:
        out = self.inner.sample_batch(requests)  # type: ignore[attr-defined]
        self._add(sum(len(c.token_ids) for rows in out for c in rows))
        return list(out)

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[list[int]]:
        out = self.inner.generate_batch(requests)  # type: ignore[attr-defined]
        self._add(sum(len(ids) for ids in out))
        return list(out)


def _stats(self: TokenCounter) -> dict[str, float]:
    return self.inner.engine_stats()  # type: ignore[attr-defined,no-any-return]


def _encoder(self: TokenCounter) -> Any:
    return self.inner.default_encoder()  # type: ignore[attr-defined]


def _pin(self: TokenCounter, prefix: Sequence[int]) -> None:
    self.inner.cache_prefix(prefix)  # type: ignore[attr-defined]


def _unpin(self: TokenCounter, prefix: Sequence[int]) -> None:
    self.inner.release_prefix(prefix)  # type: ignore[attr-defined]


def counted(lm: LanguageModel) -> TokenCounter:
    """``lm`` wrapped in a ``TokenCounter`` with the optional protocols ``lm`` offers."""
    base: type[TokenCounter] = _Batched if isinstance(lm, BatchedLanguageModel) else TokenCounter
    methods: dict[str, Any] = {}
    if isinstance(lm, ReportsStats):
        methods["engine_stats"] = _stats
    if isinstance(lm, ProvidesEncoder):
        methods["default_encoder"] = _encoder
    if isinstance(lm, PrefixPinning):
        methods.update(cache_prefix=_pin, release_prefix=_unpin)
    cls = type(f"Counted{type(lm).__name__}", (base,), methods)
    counter: TokenCounter = cls(lm)
    return counter
