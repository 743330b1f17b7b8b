"""The seam between RAIN and the machines it runs on: typed protocols and the errors they raise.

Everything above this module (tree, search, decoder, evaluators, adapters) talks to a model only
through ``LanguageModel``, to a judge only through ``Evaluator`` and to a sentence encoder only
through ``Encoder``. Engines (``rain_core.engines``: transformers + torch in process, a vLLM server)
implement them below. Each ``LanguageModel`` method is one request a serving engine can answer on
token-id prompts, so a remote engine stands in for the local one without touching the search.

Optional capabilities are separate protocols that an engine may also implement; callers test for
them with ``isinstance`` and work without them:

- ``PrefixPinning``: keep a shared prompt prefix cached until released (the evaluators' few-shot
  preamble). Engines with automatic prefix caching need not offer it.
- ``ReportsStats``: counters of model work (forward passes, tokens, requests) for benchmarks and
  the ``stats`` of a result.
- ``ConcurrentModel``: ``concurrent = True`` when many decodes may call the engine at the same time
  (a server); otherwise the decoder serialises the decodes that share a model.
- ``ParsesResponses``: the model's own parser of its replies (tool calls, reasoning), where its
  tokenizer ships one; adapters fall back to their own parsing without it.
- ``AsyncLanguageModel``: ``async`` twins of the four model requests (``atop_tokens``, ``asample``,
  ``agenerate``, ``anext_token_logprobs``), for a remote engine with an async client; the
  decoder's ``agenerate``/``astream`` use them, so many decodes share one event loop.
- ``ProvidesEncoder``: the engine's default sentence encoder (all-MiniLM-L6-v2), which
  ``RainDecoder(encoder="default")`` uses; without it, pass an ``Encoder`` or ``encoder=None``.
- ``BatchedLanguageModel`` / ``AsyncBatchedLanguageModel``: many model requests of one kind
  (``TopTokensRequest``, ``SampleRequest``, ``GenerateRequest``) answered in one call, as the
  searches that run side by side need them; ``rain_core.drivers`` loops over the single methods
  for an engine without them.
- ``BatchEvaluator`` / ``AsyncBatchEvaluator``: an evaluator that scores many replies to one
  conversation in one call (``score_batch``), for the searches that run side by side
  (``RainConfig.parallel_searches``); evaluators without it are called once per reply.

Nothing here imports torch, transformers or an engine.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "AsyncBatchEvaluator",
    "AsyncBatchedLanguageModel",
    "AsyncEvaluator",
    "AsyncLanguageModel",
    "BatchEvaluator",
    "BatchedLanguageModel",
    "ConcurrentModel",
    "ContextTooLongError",
    "Continuation",
    "DecodeCancelled",
    "Encoder",
    "EngineError",
    "Evaluator",
    "EvaluatorError",
    "GenerateRequest",
    "LanguageModel",
    "MixedBatchLanguageModel",
    "ParsesResponses",
    "PrefixPinning",
    "ProvidesEncoder",
    "ReportsStats",
    "SampleRequest",
    "TopTokensRequest",
    "check_score",
    "is_concurrent",
]


@dataclass(frozen=True)
class Continuation:
    """A token set proposed by the model.

    ``token_ids``: the tokens, in order. ``logprob``: the sum over those tokens of the
    log-probability each had in the distribution it was chosen from (see each method)."""

    token_ids: tuple[int, ...]
    logprob: float


class ContextTooLongError(ValueError):
    """A prompt (plus the room its answer needs) does not fit the model's context window."""


class EngineError(RuntimeError):
    """An engine could not answer: a server unreachable, refusing the model name, lacking a feature,
    or failing after its retries. The message says what to start or change. When it ends a decode,
    the decoder raises it with what was committed before it as ``partial`` (a ``RainResult``) and
    the engine's own error as its cause."""

    def __init__(self, message: str = "", *, partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


class DecodeCancelled(RuntimeError):
    """The caller of a decode went away (closed stream, cancelled task) and the search stopped."""


class EvaluatorError(RuntimeError):
    """An evaluator raised, timed out, or returned something that is not a score in [-1, 1]. The
    decoder raises it with what was committed before it as ``partial`` (a ``RainResult``), so no
    text is lost; the model stays usable."""

    def __init__(self, message: str, *, partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


def check_score(value: object, source: str) -> float:
    """``value`` as a float in [-1, 1], or a ``TypeError``/``ValueError`` naming ``source``."""
    if isinstance(value, bool):
        raise TypeError(f"{source} must return a number in [-1, 1], got the bool {value!r}")
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{source} must return a number in [-1, 1], got {value!r}") from None
    if not math.isfinite(v) or v < -1.0 or v > 1.0:
        raise ValueError(f"{source} must return a finite number in [-1, 1], got {v!r}")
    return v


@runtime_checkable
class LanguageModel(Protocol):
    """What RAIN needs from a generator (and from a judge): token ids in; token ids and
    log-probabilities out.

    Attributes: ``name`` (shown in messages and metadata), ``context_length`` (tokens the model
    attends to: prompt plus answer), ``eos_token_ids`` (tokens that end an answer).

    Randomness enters only through the integer ``seed`` of a call: the same call with the same seed
    on the same engine returns the same tokens, unless the engine documents that it cannot (a
    server that refuses per-request seeds; see its ``deterministic`` attribute when it has one).
    Every method raises ``ContextTooLongError`` for a prefix that does not fit the context, and
    ``EngineError`` when the engine itself fails.
    """

    @property
    def name(self) -> str: ...

    @property
    def context_length(self) -> int: ...

    @property
    def eos_token_ids(self) -> frozenset[int]: ...

    # --- text ----------------------------------------------------------------------------------
    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``, no special tokens added. ``parse_special=False``: text that looks
        like a special token (``<|im_end|>``) is encoded as plain text, for untrusted text such as
        a reply being judged, which must not open or close turns of the judge's prompt."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids``, special tokens dropped."""
        ...

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """``messages`` (``{"role", "content", ...}`` dicts) rendered with the model's chat template,
        ``kwargs`` passed to it (``tools=...``). A model without a template renders a plain
        ``Role: content`` transcript. A template that cannot render an input raises ``ValueError``."""
        ...

    def token_ids_ending_with(self, suffixes: Sequence[str]) -> frozenset[int]:
        """Ids of the tokens whose text ends with one of ``suffixes``: after such a token, a text
        ends with that suffix. The search stops simulations on them (text ending a clause)."""
        ...

    # --- model requests -----------------------------------------------------------------------
    def top_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        """The ``k`` most probable next tokens after ``prefix`` that are not in ``exclude``, most
        probable first, each a one-token ``Continuation`` whose ``logprob`` is its log-probability
        in the full next-token distribution at ``temperature``. (At a temperature other than 1 an
        engine may shift all of one call's values by the same constant: RAIN only uses their
        ratios.)"""
        ...

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
        """``n`` continuations of ``length`` tokens after ``prefix``, in row order; a row that draws
        an EOS token ends there (shorter). Row 0 is the greedy continuation (argmax at every step)
        when ``greedy_first``; the other rows draw each token from the ``top_k`` most probable
        tokens, renormalised, at ``temperature``. ``logprob`` of a row sums, over its tokens, the
        log-probability of each token in that top-k renormalised distribution (the greedy row's
        too). Rows may repeat each other; the caller deduplicates."""
        ...

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
        """Sample up to ``max_tokens`` tokens after ``prefix`` (``top_k=None``: from the full
        distribution) and return them. Ends after an EOS token or a token of ``stop_token_ids``
        (both included), or once the new text contains one of ``stop`` (the tokens that complete it
        are included; the caller cuts the text). ``max_tokens <= 0`` returns ``[]``."""
        ...

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> list[list[float]]:
        """For each prompt, the exact log-probability (temperature 1) of each candidate token as the
        next token: a ``len(prompts) x len(candidates)`` table. The evaluators read option letters
        with it."""
        ...


@dataclass(frozen=True)
class TopTokensRequest:
    """``top_tokens(prefix, k, temperature, exclude)`` as data (one request of a batch)."""

    prefix: tuple[int, ...]
    k: int
    temperature: float = 1.0
    exclude: tuple[int, ...] = ()


@dataclass(frozen=True)
class SampleRequest:
    """``sample(prefix, n, length, top_k=, temperature=, seed=, greedy_first=)`` as data."""

    prefix: tuple[int, ...]
    n: int
    length: int
    top_k: int
    temperature: float
    seed: int
    greedy_first: bool = True


@dataclass(frozen=True)
class GenerateRequest:
    """``generate(prefix, max_tokens, top_k=, temperature=, seed=, stop=, stop_token_ids=)`` as data."""

    prefix: tuple[int, ...]
    max_tokens: int
    top_k: int | None
    temperature: float
    seed: int
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()


@runtime_checkable
class BatchedLanguageModel(Protocol):
    """Optional: answer many requests of one kind in one call. Each answer is the one the single
    method gives for that request (the same seeds draw the same tokens, up to float rounding of a
    batched forward pass); an engine batches them for real (rows of one forward pass, requests a
    server runs together)."""

    def top_tokens_batch(self, requests: Sequence[TopTokensRequest]) -> list[list[Continuation]]: ...

    def sample_batch(self, requests: Sequence[SampleRequest]) -> list[list[Continuation]]: ...

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[list[int]]: ...


@runtime_checkable
class AsyncBatchedLanguageModel(Protocol):
    """Optional: ``BatchedLanguageModel``'s methods as coroutines."""

    async def atop_tokens_batch(self, requests: Sequence[TopTokensRequest]) -> list[list[Continuation]]: ...

    async def asample_batch(self, requests: Sequence[SampleRequest]) -> list[list[Continuation]]: ...

    async def agenerate_batch(self, requests: Sequence[GenerateRequest]) -> list[list[int]]: ...


@runtime_checkable
class MixedBatchLanguageModel(Protocol):
    """Optional: answer requests of different kinds (``TopTokensRequest``, ``SampleRequest``,
    ``GenerateRequest``) in one call, their rows stepping together through the same forward passes
    (a row that finishes leaves). Each answer is the one the single method gives for that request
    (the same seeds draw the same tokens, up to float rounding of a batched forward pass)."""

    def answer_batch(
        self, requests: Sequence[TopTokensRequest | SampleRequest | GenerateRequest]
    ) -> list[list[Continuation] | list[int]]: ...


@runtime_checkable
class PrefixPinning(Protocol):
    """Optional: an engine with its own cache keeps a prefix that many later prompts share."""

    def cache_prefix(self, prefix: Sequence[int]) -> None:
        """Keep the state after ``prefix`` cached until ``release_prefix``."""
        ...

    def release_prefix(self, prefix: Sequence[int]) -> None:
        """Undo ``cache_prefix``: the state may be evicted again."""
        ...


@runtime_checkable
class ReportsStats(Protocol):
    """Optional: counters of model work since the engine was made."""

    def engine_stats(self) -> dict[str, float]:
        """A snapshot of the counters (e.g. ``forward_calls``, ``forward_tokens``, ``requests``,
        ``seconds``); the decoder reports the difference over a decode."""
        ...


@runtime_checkable
class ConcurrentModel(Protocol):
    """Optional: ``concurrent`` is True when decodes may call the engine from many threads at once
    (a server that batches requests). Engines without it get one decode step at a time."""

    concurrent: bool


@runtime_checkable
class ParsesResponses(Protocol):
    """Optional: parse a reply with the model's own response format."""

    def parse_response(
        self, text: str, *, prefix: str = "", tools: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        """The reply as a message dict (``content``, ``tool_calls`` as ``[{"type": "function",
        "function": {"name", "arguments"}}]``, ...), or None when the model has no response format.
        ``prefix``: the rendered prompt the reply continues."""
        ...


@runtime_checkable
class AsyncLanguageModel(Protocol):
    """Optional: the model requests as coroutines, same contracts as ``LanguageModel``'s."""

    async def atop_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]: ...

    async def asample(
        self,
        prefix: Sequence[int],
        n: int,
        length: int,
        *,
        top_k: int,
        temperature: float,
        seed: int,
        greedy_first: bool = True,
    ) -> list[Continuation]: ...

    async def agenerate(
        self,
        prefix: Sequence[int],
        max_tokens: int,
        *,
        top_k: int | None,
        temperature: float,
        seed: int,
        stop: Sequence[str] = (),
        stop_token_ids: Collection[int] = (),
    ) -> list[int]: ...

    async def anext_token_logprobs(
        self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]
    ) -> list[list[float]]: ...


@runtime_checkable
class AsyncEvaluator(Protocol):
    """Optional: ``score`` as a coroutine (an evaluator whose judge is a remote engine)."""

    async def ascore(self, prompt: str, response: str) -> float: ...


@runtime_checkable
class ProvidesEncoder(Protocol):
    """Optional: the engine can load the default sentence encoder for the similarity update."""

    def default_encoder(self) -> Encoder: ...


def is_concurrent(lm: object) -> bool:
    """Whether ``lm`` serves many decodes at once (see ``ConcurrentModel``)."""
    return bool(getattr(lm, "concurrent", False))


@runtime_checkable
class Evaluator(Protocol):
    """Scores a (conversation, partial response) pair: a number in [-1, 1], higher is more
    desirable. ``prompt`` is the conversation as ``Role: content`` lines; ``response`` the reply
    so far. Must be a pure function of its inputs for a decode to be reproducible (RAIN caches
    scores by text)."""

    name: str

    def score(self, prompt: str, response: str) -> float: ...


@runtime_checkable
class BatchEvaluator(Protocol):
    """Optional: score many replies to the same conversation in one call, same contract as
    ``score`` for each (a model evaluator runs them as one batch over the shared prefix)."""

    def score_batch(self, prompt: str, responses: Sequence[str]) -> list[float]:
        """One score in [-1, 1] per response, in order."""
        ...


@runtime_checkable
class AsyncBatchEvaluator(Protocol):
    """Optional: ``score_batch`` as a coroutine."""

    async def ascore_batch(self, prompt: str, responses: Sequence[str]) -> list[float]: ...


@runtime_checkable
class Encoder(Protocol):
    """A sentence encoder for the similarity update: texts in, unit vectors out."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dim)`` float array, each row L2-normalised."""
        ...
