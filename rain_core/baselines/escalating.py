"""``EscalatingDecoder``: plain decoding first, checked once; RAIN only when the evaluator rejects it.

Most requests then cost one plain answer and one evaluator call, and the search runs only where it
is needed. ``retries`` more plain samples may be checked before the search starts (each one model
call and one evaluator call). The plain answer, once approved, is handed out whole; an escalated
answer streams as RAIN commits it. The statistics are the whole decode's: ``model_calls``,
``evaluations`` and ``seconds`` count the check and the search together, ``escalated`` says whether
the search ran, and ``check`` holds the plain part's own figures.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..config import RainConfig
from ..control import Cancel, stop_test
from ..decoder import RainDecoder
from ..decoding import Prompt
from ..protocols import Encoder, Evaluator, LanguageModel
from ..results import Commit, RainResult
from ..search import engine_delta
from ..streams import AsyncRainStream, OnCommit, RainStream, in_threads
from . import methods
from .base import BaselineDecoder, check_count, check_threshold
from .run import BaselineRun, Steps

__all__ = ["EscalatingDecoder"]

_SUMMED = ("model_calls", "evaluations", "evaluation_cache_hits")


class EscalatingDecoder(BaselineDecoder):
    """Plain decoding, checked by ``evaluator`` (approved: a score above ``threshold``); when it is
    rejected, ``retries`` more plain samples are checked, and if none is approved the answer is
    decoded with RAIN (``RainDecoder(lm, evaluator, encoder=encoder, config=config, **overrides)``,
    in ``self.rain``). Every ``RainConfig`` field applies: the limits to both parts, the search
    settings to the search; the deadline (``max_seconds``) covers the whole decode.

    >>> from rain_core import load_default_model
    >>> from rain_core.baselines import EscalatingDecoder
    >>> dec = EscalatingDecoder(load_default_model(), lambda p, r: 1.0, max_new_tokens=8, max_searches=2)
    >>> result = dec.generate("Name a fruit.")
    >>> result.stats["escalated"], result.stats["model_calls"], result.stats["evaluations"]
    (False, 1, 1)
    """

    method = "escalating"

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Evaluator | Callable[[str, str], float] | None = None,
        *,
        retries: int = 0,
        threshold: float = 0.0,
        encoder: Encoder | str | None = "default",
        config: RainConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.retries = check_count("retries", retries, 0)
        self.threshold = check_threshold(threshold)
        super().__init__(lm, evaluator, config=config, **overrides)
        self.rain = RainDecoder(lm, self._evaluator, encoder=encoder, config=self.config)

    def _checked(self, base: RainConfig, config: RainConfig | None, overrides: Mapping[str, Any]) -> RainConfig:
        return base.merged(config, **overrides)  # the search's settings apply to the search

    def evaluator_for(self, cfg: RainConfig) -> Evaluator:
        return self.rain.evaluator_for(cfg)

    def describe(self) -> str:
        tries = f", {self.retries} retries" if self.retries else ""
        return f"escalating (plain, checked{tries}; then RAIN)"

    # --- one decode ------------------------------------------------------------------------------
    def _commits(
        self,
        run: BaselineRun,
        prompt: Prompt,
        cfg: RainConfig,
        chat: bool,
        chat_kwargs: Mapping[str, Any] | None,
        keep_trees: bool,
        should_stop: Callable[[], bool] | None,
    ) -> Iterator[Commit]:
        run.extra["escalated"] = False
        for commit in run.commits(self._check(run), closing=False):
            yield commit  # the approved plain answer, or the end at the deadline
            if commit.last:
                return
        if run.left <= 0:
            yield run.last_commit()
            return
        left = None if run.deadline is None else run.deadline - time.monotonic()
        if left is not None and left <= 0:
            yield run.last_commit("time")
            return
        search_cfg = cfg.merged(max_seconds=left) if left is not None else cfg
        check = run.result()
        search = self.rain.stream(
            prompt, config=search_cfg, chat=chat, chat_kwargs=chat_kwargs, keep_trees=keep_trees, cancel=should_stop
        )
        with search:
            for commit in search.commits():
                if commit.result is not None:
                    commit = dataclasses.replace(commit, result=self._escalated(run, check, commit.result))
                yield commit

    def _check(self, run: BaselineRun) -> Steps:
        if run.left > 0:
            yield from methods.checked(run, 1 + self.retries, self.threshold)

    def _escalated(self, run: BaselineRun, check: RainResult, searched: RainResult) -> RainResult:
        """The search's result with the whole decode's cost: the check's calls added, the engine's
        counters and the seconds over both parts."""
        plain = {k: v for k, v in check.stats.items() if k != "commit_log"}
        stats = dict(searched.stats)
        for key in _SUMMED:
            stats[key] = stats.get(key, 0) + plain.get(key, 0)
        stats.update(engine_delta(self.lm, run.engine_before))
        stats.update(method=self.method, escalated=True, seconds=time.perf_counter() - run.started)
        stats["check"] = {
            k: plain.get(k) for k in ("tries", "scores", "model_calls", "evaluations", "generated_tokens", "seconds")
        }
        return dataclasses.replace(searched, stats=stats)

    # --- public API ------------------------------------------------------------------------------
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
        """The plain answer once approved; else RAIN's commits as they are made (``keep_trees`` for
        the search). Closing the stream or ``cancel`` stops either part before its next model call."""
        cfg = self.resolve_config(config, **overrides)
        should_stop = stop_test(cancel)
        run = self._run(prompt, cfg, chat, chat_kwargs, should_stop)
        return RainStream(self._commits(run, prompt, cfg, chat, chat_kwargs, keep_trees, should_stop), on_commit)

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
        """``stream`` for async code, step by step in worker threads; cancelling the task or leaving
        the stream stops it before its next model call."""
        cfg = self.resolve_config(config, **overrides)
        left = threading.Event()
        should_stop = stop_test(cancel, left)
        run = self._run(prompt, cfg, chat, chat_kwargs, should_stop)
        commits = self._commits(run, prompt, cfg, chat, chat_kwargs, keep_trees, should_stop)
        return AsyncRainStream(in_threads(commits, left), on_commit)
