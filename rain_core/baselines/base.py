"""``BaselineDecoder``: what every baseline shares with ``RainDecoder`` (the ``Decoder`` protocol):
the model and evaluator, prompts rendered with the chat template, the ``RainConfig`` limits, streams
of ``Commit`` values, the ``RainResult`` and its statistics, cancel, deadlines and seeds.

A baseline takes the ``RainConfig`` fields that any decoding has (``SHARED_FIELDS``); RAIN's search
settings (``max_searches``, ``num_candidates``, ...) mean nothing to it, so setting one, on the
decoder or per call, is an error that says so rather than an option silently ignored.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..chat import check_room, render_prompt
from ..config import RainConfig
from ..control import Cancel, resolve_seed, stop_test
from ..decoder import DecoderParts
from ..decoding import Prompt
from ..evaluators import CallableEvaluator
from ..protocols import AsyncLanguageModel, Evaluator, LanguageModel, is_concurrent
from ..results import RainResult
from ..streams import AsyncRainStream, OnCommit, RainStream, in_threads
from . import methods
from .run import BaselineRun, Steps

__all__ = ["SHARED_FIELDS", "BaselineDecoder", "PlainDecoder"]

SHARED_FIELDS = frozenset(
    {
        "max_new_tokens",
        "max_length",
        "temperature",
        "top_k",
        "seed",
        "stop",
        "max_seconds",
        "evaluator_timeout",
        "scoring",
    }
)
"""The ``RainConfig`` fields a baseline takes: the limits, sampling, seed, stop strings, deadline, the
evaluator's timeout, and ``scoring`` (of the default self-evaluation)."""


def as_evaluator(evaluator: Evaluator | Callable[[str, str], float] | None) -> Evaluator | None:
    """An ``Evaluator``, a function ``fn(prompt, response) -> float`` wrapped as one, or None."""
    if evaluator is None or isinstance(evaluator, Evaluator):
        return evaluator
    if callable(evaluator):
        return CallableEvaluator(evaluator)
    raise TypeError(f"evaluator must be an Evaluator or a callable, got {type(evaluator).__name__}")


def check_count(name: str, value: Any, low: int = 1, high: int = 1024) -> int:
    """``value`` as an int in ``[low, high]``, or a one-line error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= float(value) < 1.0:
        raise ValueError(f"threshold must be a number in [-1, 1) (approved: score above it), got {value!r}")
    return float(value)


class BaselineDecoder(DecoderParts):
    """The parts of a baseline decoder that do not depend on its method (``_steps``).

    ``lm``: a ``LanguageModel``; ``evaluator``: an ``Evaluator`` or ``fn(prompt, response) ->
    float`` (default ``SelfEvaluator(lm, "harmless")``, as for ``RainDecoder``); ``config`` and
    keyword overrides: the ``RainConfig`` limits (``SHARED_FIELDS``) of every call."""

    method = "baseline"
    judges = True  # whether the method asks the evaluator (plain decoding does not)

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Evaluator | Callable[[str, str], float] | None = None,
        *,
        config: RainConfig | None = None,
        **overrides: Any,
    ) -> None:
        self._init_parts(lm, as_evaluator(evaluator), config)
        self.config = self._checked(RainConfig(), config, overrides)

    # --- options ---------------------------------------------------------------------------------
    def _checked(self, base: RainConfig, config: RainConfig | None, overrides: Mapping[str, Any]) -> RainConfig:
        """``base`` with ``config``'s set fields and ``overrides``; a RAIN search setting among them is
        a ``TypeError`` naming it."""
        named = set(overrides) | (set(config.model_fields_set) if config is not None else set())
        search = sorted(named & set(RainConfig.model_fields) - SHARED_FIELDS)
        if search:
            raise TypeError(
                f"{search} {'is a setting' if len(search) == 1 else 'are settings'} of RAIN's search; "
                f"{type(self).__name__} does not search (it takes {', '.join(sorted(SHARED_FIELDS))})"
            )
        return base.merged(config, **overrides)

    def resolve_config(self, config: RainConfig | None = None, **overrides: Any) -> RainConfig:
        """The config of a call: this decoder's, then ``config``'s set fields, then ``overrides``."""
        if config is None and not overrides:
            return self.config
        return self._checked(self.config, config, overrides)

    # --- parts ----------------------------------------------------------------------------------
    def prepare(
        self, prompt: Prompt, *, chat: bool = True, chat_kwargs: Mapping[str, Any] | None = None
    ) -> tuple[list[int], str]:
        """Token ids of the rendered prompt, and the transcript the evaluator reads."""
        return render_prompt(self.lm, prompt, chat=chat, chat_kwargs=chat_kwargs)

    def describe(self) -> str:
        """The method and its settings, for reports and metadata."""
        return self.method

    # --- one decode ------------------------------------------------------------------------------
    def _steps(self, run: BaselineRun) -> Steps:
        raise NotImplementedError

    def _model_turn(self) -> Any:
        return contextlib.nullcontext() if is_concurrent(self.lm) else self._lock

    def _run(
        self,
        prompt: Prompt,
        cfg: RainConfig,
        chat: bool,
        chat_kwargs: Mapping[str, Any] | None,
        should_stop: Callable[[], bool] | None,
        plain: bool = False,
    ) -> BaselineRun:
        prompt_ids, eval_prompt = self.prepare(prompt, chat=chat, chat_kwargs=chat_kwargs)
        check_room(self.lm, prompt_ids, cfg.max_length)
        deadline = time.monotonic() + cfg.max_seconds if cfg.max_seconds is not None else None
        return BaselineRun(
            self.lm,
            self.evaluator_for(cfg) if self.judges and not plain else None,
            cfg,
            prompt_ids,
            eval_prompt,
            method="plain" if plain else self.method,
            seed=resolve_seed(cfg.seed),
            should_stop=should_stop,
            deadline=deadline,
            turn=self._model_turn(),
        )

    # --- public API (as RainDecoder's) -----------------------------------------------------------
    def stream(
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
    ) -> RainStream:
        """The answer as the method chooses it: a ``RainStream`` of final text pieces (one piece for a
        method that chooses a whole answer, one per block for blockwise), whose ``result`` is the
        ``RainResult``. Closing the stream or ``cancel`` stops the decode before its next model call
        (``DecodeCancelled``). ``keep_trees`` is accepted for ``RainDecoder``'s callers: a baseline
        has no search tree to keep."""
        cfg = self.resolve_config(config, **overrides)
        run = self._run(prompt, cfg, chat, chat_kwargs, stop_test(cancel))
        return RainStream(run.commits(self._steps(run)), on_commit)

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
        """Decode ``prompt`` (text or chat messages) and return the ``RainResult``."""
        stream = self.stream(
            prompt,
            config=config,
            chat=chat,
            chat_kwargs=chat_kwargs,
            keep_trees=keep_trees,
            cancel=cancel,
            on_commit=on_commit,
            **overrides,
        )
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def astream(
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
    ) -> AsyncRainStream:
        """``stream`` for async code: on the event loop for a served model with an async client,
        else step by step in worker threads; cancelling the task or leaving the stream stops it."""
        cfg = self.resolve_config(config, **overrides)
        on_loop = isinstance(self.lm, AsyncLanguageModel) and is_concurrent(self.lm)
        left = threading.Event()
        run = self._run(prompt, cfg, chat, chat_kwargs, stop_test(cancel, None if on_loop else left))
        steps = self._steps(run)
        commits = run.acommits(steps) if on_loop else in_threads(iter(run.commits(steps)), left)
        return AsyncRainStream(commits, on_commit)

    async def agenerate(
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
        """``generate`` for async code (see ``astream``)."""
        stream = self.astream(
            prompt,
            config=config,
            chat=chat,
            chat_kwargs=chat_kwargs,
            keep_trees=keep_trees,
            cancel=cancel,
            on_commit=on_commit,
            **overrides,
        )
        async for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def vanilla(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> RainResult:
        """Plain sampling with the same model, temperature, top-k, seed and limits (no check): the
        answer ``RainDecoder.vanilla`` gives, and the first sample of every baseline."""
        cfg = self.resolve_config(config, **overrides)
        run = self._run(prompt, cfg, chat, chat_kwargs, None, plain=True)
        result = None
        for commit in run.commits(methods.plain(run)):
            result = commit.result
        assert result is not None
        return result


class PlainDecoder(BaselineDecoder):
    """Plain decoding as a decoder: one sampled answer, never checked (the evaluator is not asked).
    The reference every method is compared with, at the cost of one model call."""

    method = "plain"
    judges = False

    def _steps(self, run: BaselineRun) -> Steps:
        return methods.plain(run)
