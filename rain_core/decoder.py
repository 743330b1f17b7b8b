"""RainDecoder: the public entry point. Validates input, renders prompts, runs the search, streams
committed text, stops when its caller stops or its deadline passes, and offers plain decoding with
the same model and limits for comparison."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from .chat import Message, TemplateSupport, cut_at_stop, holdback, template_support, transcript, validate_messages
from .config import RainConfig, Scoring
from .evaluators import CallableEvaluator, SelfEvaluator
from .protocols import (
    AsyncLanguageModel,
    ContextTooLongError,
    Encoder,
    Evaluator,
    EvaluatorError,
    LanguageModel,
    ProvidesEncoder,
    ReportsStats,
    is_concurrent,
)
from .search import RainSearch, stats_difference

logger = logging.getLogger(__name__)

Prompt = Union[str, Sequence[Message]]  # noqa: UP007 (a runtime alias: Python 3.10 needs Union here)
Cancel = Union[threading.Event, Callable[[], bool], None]  # noqa: UP007
"""A caller's way to stop a decode: an ``Event`` it sets, or a function that returns True."""

FINISH_REASONS = ("eos", "stop", "length", "time")
TRACE_VERSION = 1
OnCommit = Callable[[dict[str, Any]], None]
"""Told each commit as it happens: its ``commit_log`` entry (tokens, text, searches, value, ...)."""

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_for(lm: Any) -> threading.RLock:
    """One lock per model that serves one decode step at a time (its KV cache and weights)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(lm)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[lm] = lock
        return lock


def resolve_seed(seed: int | None) -> int:
    """The config's seed, or a fresh random one when it is None."""
    return seed if seed is not None else secrets.randbelow(2**31 - 1)


def _new_text(search: RainSearch, emitted: int) -> tuple[str, int]:
    """The committed text not yet streamed that is safe to stream (a possible stop string's start
    and an unfinished character wait), and the new count of streamed characters."""
    text, _ = cut_at_stop(search.response_text(), search.cfg.stop)
    safe = len(text) - holdback(text, search.cfg.stop)
    return (text[emitted:safe], safe) if safe > emitted else ("", emitted)


def _should_stop(cancel: Cancel) -> Callable[[], bool] | None:
    if cancel is None:
        return None
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise TypeError(
        f"cancel must be a threading.Event or a function returning True to stop, got {type(cancel).__name__}"
    )


@dataclass
class RainResult:
    """A finished decode: the text, its token ids, why it ended, and what it cost.

    ``finish_reason``: "eos", "stop", "length", or "time" (``max_seconds`` passed)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def trace(self) -> dict[str, Any]:
        """The decode as JSON-ready data (schema ``rain.trace`` version 1, docs/integrations.md, "Trace schema"): the
        answer, why it ended, its cost, and one entry per commit (token ids, text, searches, visits,
        value, seconds; and the search tree when decoded with ``keep_trees=True``). Draw a commit's
        tree with ``rain_core.plotting.plot_tree(trace["commits"][i])``."""
        stats = {k: v for k, v in self.stats.items() if k != "commit_log"}
        return {
            "schema": "rain.trace",
            "version": TRACE_VERSION,
            "text": self.text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "stats": stats,
            "commits": list(self.stats.get("commit_log", [])),
        }


class RainDecoder:
    """Decode with RAIN.

    ``lm``: a ``LanguageModel`` (``load_default_model()``, ``load_model(...)``, ``VLLMEngine(...)``).
    ``evaluator``: an ``Evaluator`` or a function ``fn(prompt, response) -> float``; default
    ``SelfEvaluator(lm, "harmless")`` with the config's scoring mode.
    ``encoder``: sentence encoder for the similarity update and dynamic node addition; "default"
    asks the engine for its default (all-MiniLM-L6-v2, loaded when first needed), None turns both
    features off.
    ``config`` and keyword overrides: the ``RainConfig`` of every call (``RainConfig()`` is the
    official algorithm, ``RainConfig.fast()`` the fast preset).

    Decodes on an engine without ``concurrent = True`` (one local model) take turns one commit step
    at a time; on a server engine they run side by side.
    """

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Evaluator | Callable[[str, str], float] | None = None,
        *,
        encoder: Encoder | str | None = "default",
        config: RainConfig | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(lm, LanguageModel):
            raise TypeError(
                f"lm must be a LanguageModel (load_default_model(), load_model(...), VLLMEngine(...)), "
                f"got {type(lm).__name__}"
            )
        if config is not None and not isinstance(config, RainConfig):
            raise TypeError(f"config must be a RainConfig, got {type(config).__name__}")
        self.lm = lm
        base = config or RainConfig()
        self.config = base.merged(**overrides) if overrides else base
        judge: Evaluator | None
        if evaluator is None or isinstance(evaluator, Evaluator):
            judge = evaluator
        elif callable(evaluator):
            judge = CallableEvaluator(evaluator)
        else:
            raise TypeError(f"evaluator must be an Evaluator or a callable, got {type(evaluator).__name__}")
        if isinstance(encoder, str) and encoder != "default":
            raise ValueError(f'encoder must be an Encoder, "default" or None, got {encoder!r}')
        self._evaluator = judge
        self._default_evaluators: dict[Scoring, Evaluator] = {}
        self._encoder = encoder
        self._parts_lock = threading.Lock()
        self._lock = _lock_for(lm)

    # --- parts ----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return str(self.lm.name)

    @property
    def template_support(self) -> TemplateSupport:
        """What the model's chat template renders by itself (tools, tool calls, tool messages)."""
        return template_support(self.lm)

    def chat_prompt(self, messages: Sequence[Message], **chat_kwargs: Any) -> str:
        """``messages`` rendered as the model sees them (for inspection)."""
        return self.lm.chat_prompt(validate_messages(messages), add_generation_prompt=True, **chat_kwargs)

    def evaluator_for(self, cfg: RainConfig) -> Evaluator:
        if self._evaluator is not None:
            return self._evaluator
        with self._parts_lock:
            if cfg.scoring not in self._default_evaluators:
                self._default_evaluators[cfg.scoring] = SelfEvaluator(self.lm, "harmless", scoring=cfg.scoring)
            return self._default_evaluators[cfg.scoring]

    @property
    def evaluator(self) -> Evaluator:
        return self.evaluator_for(self.config)

    def encoder_for(self, cfg: RainConfig) -> Encoder | None:
        if not (cfg.similarity_update or cfg.dynamic_node_addition):
            return None
        with self._parts_lock:
            if isinstance(self._encoder, str):
                if not isinstance(self.lm, ProvidesEncoder):
                    raise TypeError(
                        f"{self.lm.name} offers no default sentence encoder for the similarity update; pass "
                        "encoder=SentenceEncoder(folder) (rain_core.engines.encoder), any Encoder, or encoder=None "
                        "to turn the similarity update and dynamic node addition off"
                    )
                self._encoder = self.lm.default_encoder()
            return self._encoder

    def resolve_config(self, config: RainConfig | None = None, **overrides: Any) -> RainConfig:
        if config is None and not overrides:
            return self.config
        return self.config.merged(config, **overrides)

    def prepare(
        self, prompt: Prompt, *, chat: bool = True, chat_kwargs: Mapping[str, Any] | None = None
    ) -> tuple[list[int], str]:
        """Token ids of the rendered prompt, and the transcript the evaluator reads."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("the prompt is empty; pass some text or chat messages")
            if not chat:
                return self.lm.encode(prompt), f"Text: {prompt.strip()}"
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, bytes):
            raise TypeError("the prompt must be text (str) or chat messages, not bytes; decode it first")
        else:
            messages = validate_messages(prompt)
        rendered = self.lm.chat_prompt(messages, add_generation_prompt=True, **dict(chat_kwargs or {}))
        return self.lm.encode(rendered), transcript(messages)

    def _check_room(self, prompt_ids: Sequence[int], cfg: RainConfig) -> None:
        limit = min(cfg.max_length, self.lm.context_length)
        if len(prompt_ids) >= limit:
            raise ContextTooLongError(
                f"the prompt is {len(prompt_ids)} tokens; it must be shorter than {limit} "
                f"(min of max_length={cfg.max_length} and {self.lm.name}'s context {self.lm.context_length}) "
                "to leave room for an answer. Shorten it or raise max_length."
            )

    def _search(
        self,
        prompt: Prompt,
        config: RainConfig | None,
        overrides: dict[str, Any],
        chat: bool,
        chat_kwargs: Mapping[str, Any] | None,
        keep_trees: bool,
        cancel: Cancel,
    ) -> RainSearch:
        cfg = self.resolve_config(config, **overrides)
        should_stop = _should_stop(cancel)
        prompt_ids, eval_prompt = self.prepare(prompt, chat=chat, chat_kwargs=chat_kwargs)
        self._check_room(prompt_ids, cfg)
        deadline = time.monotonic() + cfg.max_seconds if cfg.max_seconds is not None else None
        return RainSearch(
            self.lm,
            self.evaluator_for(cfg),
            self.encoder_for(cfg),
            cfg,
            prompt_ids,
            eval_prompt,
            seed=resolve_seed(cfg.seed),
            keep_trees=keep_trees,
            should_stop=should_stop,
            deadline=deadline,
        )

    def _turn(self) -> Any:
        """The model's lock for one commit step, unless the engine serves decodes side by side."""
        return contextlib.nullcontext() if is_concurrent(self.lm) else self._lock

    def _engine_stats(self) -> dict[str, float]:
        return self.lm.engine_stats() if isinstance(self.lm, ReportsStats) else {}

    def _engine_delta(self, before: Mapping[str, float]) -> dict[str, float]:
        """The engine's counters since ``before`` (its ``seconds`` as ``engine_seconds``)."""
        delta = stats_difference(self._engine_stats(), before)
        if "seconds" in delta:
            delta["engine_seconds"] = delta.pop("seconds")
        return delta

    def _steps(
        self, search: RainSearch, before: Mapping[str, float], on_commit: OnCommit | None = None
    ) -> Iterator[list[int]]:
        """The search's commits, one model turn each; an evaluator failure carries the partial result."""
        steps = search.run()
        try:
            while True:
                with self._turn():
                    tokens = next(steps, None)
                if tokens is None:
                    return
                if on_commit is not None:
                    on_commit(search.stats.commit_log[-1])
                yield tokens
        except EvaluatorError as exc:
            exc.partial = self._result(search, before)
            raise

    def _result(self, search: RainSearch, before: Mapping[str, float]) -> RainResult:
        """The result so far; engine counters are this decode's share (on a shared server engine
        they include the decodes that ran beside it)."""
        text, stopped = cut_at_stop(search.response_text(), search.cfg.stop)
        stats = search.stats.as_dict()
        stats.update(self._engine_delta(before))
        reason = search.finished_by or ("stop" if stopped else "length")
        return RainResult(
            text=text,
            token_ids=list(search.committed),
            finish_reason=reason,
            prompt_tokens=len(search.prompt_ids),
            stats=stats,
        )

    # --- public API -----------------------------------------------------------------------------
    def stream(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        result: list[RainResult] | None = None,
        keep_trees: bool = False,
        cancel: Cancel = None,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> Iterator[str]:
        """Yield the answer's text as each token set is committed (final as soon as it is yielded).
        Pass ``result=[]`` to receive the ``RainResult`` appended to it when the stream ends
        (with the per-commit log, and each commit's tree when ``keep_trees``). Closing the generator
        stops the decode; so does ``cancel`` (an ``Event`` set, or a function returning True),
        before its next model call, with ``DecodeCancelled``. ``on_commit`` is told each commit's log
        entry as it happens (for callbacks and traces)."""
        search = self._search(prompt, config, overrides, chat, chat_kwargs, keep_trees, cancel)
        before = self._engine_stats()
        emitted = 0
        for _ in self._steps(search, before, on_commit):
            piece, emitted = _new_text(search, emitted)
            if piece:
                yield piece
        final = self._result(search, before)
        if len(final.text) > emitted:
            yield final.text[emitted:]
        if result is not None:
            result.append(final)

    def generate(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        keep_trees: bool = False,
        cancel: Cancel = None,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> RainResult:
        """Decode ``prompt`` (text, or chat messages) with RAIN. ``keep_trees`` stores each commit's
        search tree in ``stats["commit_log"]`` (for plots, traces and debugging); ``cancel`` and
        ``on_commit`` as in ``stream``."""
        search = self._search(prompt, config, overrides, chat, chat_kwargs, keep_trees, cancel)
        before = self._engine_stats()
        for _ in self._steps(search, before, on_commit):
            pass
        return self._result(search, before)

    async def astream(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        result: list[RainResult] | None = None,
        keep_trees: bool = False,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> AsyncIterator[str]:
        """``stream`` for async code. On a remote engine with an async client (``AsyncLanguageModel``
        and ``concurrent``) the search runs on the event loop itself, so many decodes share it;
        otherwise each commit step runs in a worker thread. Cancelling the task, or abandoning or
        closing the stream, stops the decode before its next model call and frees the model."""
        on_loop = isinstance(self.lm, AsyncLanguageModel) and is_concurrent(self.lm)
        left = threading.Event()  # set when this stream is left: a step in a worker thread stops
        search = self._search(prompt, config, overrides, chat, chat_kwargs, keep_trees, None if on_loop else left)
        before = self._engine_stats()
        emitted = 0
        if on_loop:
            steps: AsyncIterator[list[int]] = search.arun()
        else:
            steps = self._steps_in_threads(search, before, on_commit, left)
            on_commit = None  # told by the thread-side steps
        try:
            async for _ in steps:
                if on_commit is not None:
                    on_commit(search.stats.commit_log[-1])
                piece, emitted = _new_text(search, emitted)
                if piece:
                    yield piece
        except EvaluatorError as exc:
            exc.partial = self._result(search, before)
            raise
        finally:
            aclose = getattr(steps, "aclose", None)
            if aclose is not None:
                await aclose()
        final = self._result(search, before)
        if len(final.text) > emitted:
            yield final.text[emitted:]
        if result is not None:
            result.append(final)

    async def _steps_in_threads(
        self, search: RainSearch, before: Mapping[str, float], on_commit: OnCommit | None, stop: threading.Event
    ) -> AsyncIterator[list[int]]:
        """The blocking commit steps, each in a worker thread; leaving (cancelled, closed, abandoned)
        sets ``stop``, the search's stop flag, so a step still running ends before its next call."""
        steps = self._steps(search, before, on_commit)
        try:
            while True:
                tokens = await asyncio.to_thread(next, steps, None)
                if tokens is None:
                    return
                yield tokens
        finally:
            stop.set()

    async def agenerate(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        keep_trees: bool = False,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> RainResult:
        """``generate`` for async code (see ``astream``)."""
        holder: list[RainResult] = []
        async for _ in self.astream(
            prompt,
            config=config,
            chat=chat,
            chat_kwargs=chat_kwargs,
            result=holder,
            keep_trees=keep_trees,
            on_commit=on_commit,
            **overrides,
        ):
            pass
        return holder[0]

    def vanilla(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> RainResult:
        """Plain sampling with the same model, temperature, top-k, seed and limits (no search)."""
        cfg = self.resolve_config(config, **overrides)
        prompt_ids, _ = self.prepare(prompt, chat=chat, chat_kwargs=chat_kwargs)
        self._check_room(prompt_ids, cfg)
        budget = cfg.token_budget(len(prompt_ids), self.lm.context_length)
        before = self._engine_stats()
        t0 = time.perf_counter()
        with self._turn():
            ids = self.lm.generate(
                prompt_ids,
                budget,
                top_k=cfg.top_k,
                temperature=cfg.temperature,
                seed=resolve_seed(cfg.seed),
                stop=cfg.stop,
            )
        text, stopped = cut_at_stop(self.lm.decode(ids), cfg.stop)
        reason = "stop" if stopped else ("eos" if ids and ids[-1] in self.lm.eos_token_ids else "length")
        stats: dict[str, Any] = {"seconds": time.perf_counter() - t0, "new_tokens": len(ids)}
        stats.update(self._engine_delta(before))
        return RainResult(text=text, token_ids=ids, finish_reason=reason, prompt_tokens=len(prompt_ids), stats=stats)
