"""One baseline decode: the requests a method makes, who answers them, and what is handed up.

A method (``methods.py``) is a generator of steps. It yields either a batch of requests of one kind
(``GenerateRequest`` rows for the model, ``ScoreRequest`` texts for the evaluator), and receives
their answers in order, or an ``Emit``: a piece of the answer it has chosen, final at once. A
``BaselineRun`` answers the batches through the drivers' ``Answerer`` (one ``generate_batch`` call
for many rows where the engine batches, one ``score_batch`` call for many texts where the evaluator
does), counts what each cost, and turns each ``Emit`` into a ``Commit``, the same value RAIN hands
up, the last one carrying the ``RainResult``.

Before every call the run checks the caller's cancel (``DecodeCancelled``) and the deadline: once
``max_seconds`` has passed, the method is stopped and the decode ends with what it had chosen
(``finish_reason == "time"``); text the method had not chosen yet is never handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ..chat import cut_at_stop
from ..config import RainConfig
from ..drivers import Answerer
from ..phases import ScoreRequest
from ..protocols import (
    DecodeCancelled,
    Evaluator,
    EvaluatorError,
    GenerateRequest,
    LanguageModel,
    check_score,
)
from ..results import Commit, RainResult
from ..search import engine_counters, engine_delta
from ..text import AnswerText

logger = logging.getLogger(__name__)

__all__ = ["BaselineRun", "Emit", "Steps"]


@dataclass(frozen=True)
class Emit:
    """A piece of the answer the method has chosen: its token ids and its log entry (``entry``: what
    the choice cost and why it won). ``last``: the method ends the answer here; ``finish``: a reason
    of its own (``"refused"``) instead of the one the tokens give (EOS, stop string, length)."""

    token_ids: tuple[int, ...]
    entry: dict[str, Any]
    last: bool = False
    finish: str | None = None


Batch = tuple[Union[GenerateRequest, ScoreRequest], ...]  # noqa: UP007
Steps = Generator[Union[Batch, Emit], Any, None]  # noqa: UP007
"""A method's decode: yields batches (answered with a list, in order) and ``Emit`` pieces."""


class _Deadline(Exception):
    """The decode's deadline passed before a call."""


@dataclass
class Counts:
    """What a decode cost, in the figures RAIN reports too: model calls (a batch of rows counts
    once), evaluator calls and replies scored (``evaluations``, distinct texts; repeats are served
    from the decode's cache), tokens the model generated for every candidate (``generated_tokens``,
    kept or not) and for the answer (``new_tokens``)."""

    model_calls: int = 0
    evaluator_calls: int = 0
    evaluations: int = 0
    evaluation_cache_hits: int = 0
    generated_tokens: int = 0
    new_tokens: int = 0
    commits: int = 0
    seconds: float = 0.0
    commit_log: list[dict[str, Any]] = field(default_factory=list)


class BaselineRun:
    """One decode of ``prompt_ids`` with ``method`` (its name in the statistics). ``seed``: the
    first generation request draws with it (so a method's first sample is plain decoding's answer),
    later ones with seeds drawn from it. ``turn``: held while a batch is answered (a local model's
    lock); ``should_stop``: checked before every call; ``deadline``: a ``time.monotonic()`` instant."""

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Evaluator | None,
        cfg: RainConfig,
        prompt_ids: Sequence[int],
        eval_prompt: str,
        *,
        method: str,
        seed: int,
        should_stop: Callable[[], bool] | None = None,
        deadline: float | None = None,
        turn: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.lm = lm
        self.cfg = cfg
        self.method = method
        self.prompt_ids = list(prompt_ids)
        self.answerer = Answerer(lm, evaluator, None, eval_prompt, cfg.evaluator_timeout)  # type: ignore[arg-type]
        self.evaluator_name = self.answerer.name if evaluator is not None else "none"
        self.budget = cfg.token_budget(len(self.prompt_ids), lm.context_length)
        self.answer = AnswerText(lm.decode, cfg.stop)
        self.committed: list[int] = []
        self.counts = Counts()
        self.extra: dict[str, Any] = {}
        self.should_stop = should_stop
        self.deadline = deadline
        self.turn = turn if turn is not None else contextlib.nullcontext()
        self.finished_by: str | None = None
        self._seed = seed
        self._rng: np.random.Generator | None = None
        self._scores: dict[str, float] = {}
        self.engine_before = engine_counters(lm)
        self.started = time.perf_counter()

    # --- what methods ask for ---------------------------------------------------------------------
    def next_seed(self) -> int:
        """The seed of the next generation request: the decode's own seed first, then draws from it."""
        if self._rng is None:
            self._rng = np.random.default_rng(self._seed)
            return self._seed
        return int(self._rng.integers(0, 2**31 - 1))

    @property
    def left(self) -> int:
        """Tokens the answer may still take."""
        return self.budget - len(self.committed)

    def generate(self, n: int, max_tokens: int | None = None) -> Batch:
        """``n`` sampled continuations of the prompt and the answer so far (one request per row, each
        with its own seed), sampled as plain decoding samples (``top_k``, ``temperature``, ``stop``)."""
        prefix = tuple(self.prompt_ids + self.committed)
        length = self.left if max_tokens is None else min(max_tokens, self.left)
        cfg = self.cfg
        return tuple(
            GenerateRequest(prefix, length, cfg.top_k, cfg.temperature, self.next_seed(), cfg.stop) for _ in range(n)
        )

    def text_with(self, ids: Sequence[int]) -> str:
        """The answer's text with ``ids`` appended, cut at the first stop string (what the evaluator reads)."""
        text, _ = cut_at_stop(self.lm.decode(self.committed + list(ids)), self.cfg.stop)
        return text

    def scores(self, texts: Sequence[str]) -> Generator[Batch, Any, list[float]]:
        """The evaluator's scores of ``texts`` (replies to the prompt): each distinct text not scored
        before in this decode goes out in one batch (one ``score_batch`` call)."""
        fresh = list(dict.fromkeys(t for t in texts if t not in self._scores))
        self.counts.evaluation_cache_hits += len(texts) - len(fresh)
        if fresh:
            values = yield tuple(ScoreRequest(t) for t in fresh)
            self._scores.update(zip(fresh, values))
        return [self._scores[t] for t in texts]

    def ends(self, ids: Sequence[int]) -> bool:
        """Whether an answer that continues with ``ids`` ends there: EOS, a stop string, the budget."""
        if ids and ids[-1] in self.lm.eos_token_ids:
            return True
        if self.cfg.stop and cut_at_stop(self.lm.decode(self.committed + list(ids)), self.cfg.stop)[1]:
            return True
        return len(self.committed) + len(ids) >= self.budget

    # --- answering -------------------------------------------------------------------------------
    def _before(self, batch: Batch) -> None:
        if self.should_stop is not None and self.should_stop():
            raise DecodeCancelled("the caller stopped waiting for this decode")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise _Deadline

    def _counted(self, batch: Batch, answers: list[Any]) -> list[Any]:
        if isinstance(batch[0], ScoreRequest):
            self.counts.evaluator_calls += 1
            self.counts.evaluations += len(batch)
            name = f"evaluator {self.evaluator_name!r}"
            return [check_score(v, name) for v in answers]
        self.counts.model_calls += 1
        self.counts.generated_tokens += sum(len(a) for a in answers)
        return answers

    def _evaluator_error(self, batch: Batch, exc: Exception) -> EvaluatorError:
        """An evaluator's failure, with the answer so far."""
        longest = max(len(r.text) for r in batch)  # type: ignore[union-attr]
        return EvaluatorError(
            f"evaluator {self.evaluator_name!r} failed on a reply of up to {longest} characters: "
            f"{type(exc).__name__}: {exc}",
            partial=self.result(),
        )

    def answer_batch(self, batch: Batch) -> list[Any]:
        self._before(batch)
        try:
            with self.turn:
                return self._counted(batch, self.answerer.answer(batch))
        except (DecodeCancelled, KeyboardInterrupt):
            raise
        except Exception as exc:
            if isinstance(batch[0], ScoreRequest):
                raise self._evaluator_error(batch, exc) from exc
            raise

    async def aanswer_batch(self, batch: Batch) -> list[Any]:
        self._before(batch)
        try:
            return self._counted(batch, await self.answerer.aanswer(batch))
        except (DecodeCancelled, KeyboardInterrupt, asyncio.CancelledError):
            raise
        except Exception as exc:
            if isinstance(batch[0], ScoreRequest):
                raise self._evaluator_error(batch, exc) from exc
            raise

    # --- what is handed up -----------------------------------------------------------------------
    def _handed_up(self, emit: Emit) -> Commit:
        ids = list(emit.token_ids)
        ended = emit.last or self.ends(ids)
        self.committed.extend(ids)
        self.answer.extend(ids)
        self.counts.commits += 1
        self.counts.new_tokens = len(self.committed)
        entry = {"tokens": ids, "text": self.lm.decode(ids), **emit.entry}
        self.counts.commit_log.append(entry)
        if ended:
            self.finished_by = emit.finish or self._reason()
            return self._last(tuple(ids), entry)
        return Commit(tuple(ids), self.answer.release(), entry)

    def _reason(self) -> str:
        if self.committed and self.committed[-1] in self.lm.eos_token_ids:
            return "eos"
        return "stop" if self.answer.stopped else "length"

    def _last(self, ids: tuple[int, ...] = (), entry: dict[str, Any] | None = None) -> Commit:
        self.answer.finish()
        return Commit(ids, self.answer.release(final=True), entry, self.result())

    def last_commit(self, reason: str | None = None) -> Commit:
        """A last ``Commit`` with no new ids and the result (``reason``: why the decode ended)."""
        if reason is not None:
            self.finished_by = reason
        return self._last()

    def result(self) -> RainResult:
        """The decode's result so far: the answer, why it ended, what it cost (the engine's counters
        are this decode's share; on a shared server engine they include decodes beside it)."""
        c = self.counts
        c.seconds = time.perf_counter() - self.started
        stats: dict[str, Any] = {"method": self.method, **c.__dict__, **self.extra}
        stats["commit_log"] = list(c.commit_log)
        stats.update(engine_delta(self.lm, self.engine_before))
        return RainResult(
            text=self.answer.text,
            token_ids=list(self.committed),
            finish_reason=self.finished_by or self._reason(),
            prompt_tokens=len(self.prompt_ids),
            stats=stats,
        )

    # --- driving a method ------------------------------------------------------------------------
    def commits(self, steps: Steps, *, closing: bool = True) -> Iterator[Commit]:
        """The method's commits, its batches answered here. ``closing``: hand up a last ``Commit`` with
        the result when the method ends without a last piece (False: the caller goes on with
        another method, as the escalating decoder does)."""
        self.started = time.perf_counter()
        answers: Any = None
        with contextlib.closing(steps):
            while True:
                try:
                    item = steps.send(answers)
                except StopIteration:
                    break
                answers = None
                if isinstance(item, Emit):
                    commit = self._handed_up(item)
                    yield commit
                    if commit.last:
                        return
                    continue
                try:
                    answers = self.answer_batch(item)
                except _Deadline:
                    self.finished_by = "time"
                    break
        if closing or self.finished_by == "time":
            yield self._last()

    async def acommits(self, steps: Steps, *, closing: bool = True) -> AsyncIterator[Commit]:
        """``commits`` on an event loop (the async twins of the engine and the evaluator)."""
        self.started = time.perf_counter()
        answers: Any = None
        with contextlib.closing(steps):
            while True:
                try:
                    item = steps.send(answers)
                except StopIteration:
                    break
                answers = None
                if isinstance(item, Emit):
                    commit = self._handed_up(item)
                    yield commit
                    if commit.last:
                        return
                    continue
                try:
                    answers = await self.aanswer_batch(item)
                except _Deadline:
                    self.finished_by = "time"
                    break
        if closing or self.finished_by == "time":
            yield self._last()
