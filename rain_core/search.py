"""RAIN's search: the outer loop (search, commit, stream) and the scheduler of its inner loop.

A commit runs searches in rounds. A round selects up to ``parallel_searches`` leaves one after
another (each selection sees the searches already in flight, ``tree.in_flight``, and notes the
lazy completions and node additions it passes, which the round then draws in one batch), runs the
rest of those searches side by side (``phases.leaf_value``) with their requests gathered into batches
of one kind, embeds every path in one encoder call, and backs the searches up in the order they
started. With ``parallel_searches=1`` a round is one search: the authors' search, decision for
decision (docs/algorithm.md). The search does no I/O: it yields batches of requests that a driver
(``drivers.py``) answers, blocking (``run``, ``next_commit``) or on an event loop (``arun``,
``anext_commit``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import numpy as np

from .config import RainConfig
from .drivers import Answerer, Round, adrive, drive, one_at_a_time, run_phases
from .phases import back_up, backup_texts, deferred_changes, leaf_value, select
from .protocols import (
    DecodeCancelled,
    Encoder,
    EngineError,
    Evaluator,
    EvaluatorError,
    LanguageModel,
    ReportsStats,
)
from .requests import EncodeRequest, Phase, Request, ScoreRequest
from .results import Commit, RainResult
from .rounds import defers, round_width, worth_another_search
from .state import Decode, SearchStats
from .text import AnswerText
from .tree import ROOT_INDEX, Tree, best_child, early_stop, mark_in_flight, reroot

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["RainSearch", "SearchStats", "engine_counters", "engine_delta", "stats_difference"]


def stats_difference(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` for every counter of ``after`` (a decode's share of an engine's work)."""
    return {key: value - before.get(key, 0) for key, value in after.items()}


def engine_counters(lm: LanguageModel) -> dict[str, float]:
    """The engine's work counters now (none when it keeps none)."""
    return lm.engine_stats() if isinstance(lm, ReportsStats) else {}


def engine_delta(lm: LanguageModel, before: Mapping[str, float]) -> dict[str, float]:
    """The engine's counters since ``before`` (its ``seconds`` as ``engine_seconds``)."""
    delta = stats_difference(engine_counters(lm), before)
    if "seconds" in delta:
        delta["engine_seconds"] = delta.pop("seconds")
    return delta


class _DeadlinePassed(Exception):
    """Raised inside a round when the decode's deadline passes between two calls."""


class RainSearch:
    """One RAIN decode over token ids. Iterate ``run()`` to receive committed token sets.

    ``should_stop``: called between model calls; True stops the decode with ``DecodeCancelled``.
    ``deadline``: a ``time.monotonic()`` instant; once it passes (checked between model calls, so
    a decode overshoots it by at most one call) the round in flight is dropped, the best branch
    found so far is committed and the decode ends (``finished_by == "time"``).
    ``turn``: a context manager held while one commit is searched (a local model's lock).
    """

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Evaluator,
        encoder: Encoder | None,
        config: RainConfig,
        prompt_ids: Sequence[int],
        eval_prompt: str,
        *,
        seed: int,
        keep_trees: bool = False,
        should_stop: Callable[[], bool] | None = None,
        deadline: float | None = None,
        turn: AbstractContextManager[Any] | None = None,
    ) -> None:
        uses_embeddings = encoder is not None and (config.similarity_update or config.dynamic_node_addition)
        self.answerer = Answerer(
            lm, evaluator, encoder if uses_embeddings else None, eval_prompt, config.evaluator_timeout, self._cancelled
        )
        self.decode = Decode(lm, config, list(prompt_ids), self.answerer.name, uses_embeddings)
        self.rng = np.random.default_rng(seed)
        self.keep_trees = keep_trees
        self.should_stop = should_stop
        self.deadline = deadline
        self.turn = turn if turn is not None else contextlib.nullcontext()
        self.finished_by: str | None = None
        self.answer = AnswerText(lm.decode, config.stop)
        self._engine_before = engine_counters(lm)
        self._started: float | None = None
        self._prev_leaf: int | None = None

    # --- views of the decode --------------------------------------------------------------------
    @property
    def lm(self) -> LanguageModel:
        return self.decode.lm

    @property
    def cfg(self) -> RainConfig:
        return self.decode.cfg

    @property
    def tree(self) -> Tree:
        return self.decode.tree

    @property
    def committed(self) -> list[int]:
        return self.decode.committed

    @property
    def prompt_ids(self) -> list[int]:
        return self.decode.prompt_ids

    @property
    def stats(self) -> SearchStats:
        return self.decode.stats

    # --- scheduling -----------------------------------------------------------------------------
    def _cancelled(self) -> None:
        """Raise if the caller went away (checked inside a model call made of several)."""
        if self.should_stop is not None and self.should_stop():
            raise DecodeCancelled("the caller stopped waiting for this decode")

    def _interrupted(self) -> bool:
        """Raise if the caller went away; True once the deadline has passed."""
        self._cancelled()
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _search_rng(self) -> np.random.Generator:
        """The random draws of one search: the decode's own stream for the official one-at-a-time
        search; with searches side by side each gets a stream of its own, drawn when it starts, so
        what a search draws does not depend on how the round interleaves its requests."""
        if self.cfg.parallel_searches == 1:
            return self.rng
        return np.random.default_rng(int(self.rng.integers(0, 2**63 - 1)))

    def _before_call(self, batch: tuple[Request, ...]) -> tuple[Request, ...]:
        """Every call waits for this: the caller may have gone away, the deadline may have passed."""
        if self._interrupted():
            raise _DeadlinePassed
        if not isinstance(batch[0], (ScoreRequest, EncodeRequest)):
            self.decode.stats.model_calls += 1
        return batch

    def _alone(self, phase: Phase[T]) -> Round[T]:
        """Run one phase, each request (or ``Together`` bundle) as one call."""
        result: T = yield from one_at_a_time(phase, self._before_call)
        return result

    def _together(self, phases: list[Phase[Any]]) -> Round[list[Any]]:
        """Run phases side by side: every model request they wait on in one call, then the scores,
        then the embeddings (``drivers.run_phases``)."""
        results: list[Any] = yield from run_phases(phases, self._before_call)
        return results

    def _round(self, n: int) -> Round[int]:
        """Up to ``n`` searches side by side; returns how many completed. Selections run one after
        another, each seeing the searches already in flight; their deferred completions and node
        additions and the searches' leaf phases then run together (``rounds`` has the rules). Two
        searches that select the same leaf (as WU-UCT allows) each sample its value, the one that
        started first expanding it; a selection of a taken leaf with nothing new to sample ends the
        round's selections (selecting on would push the round onto siblings that one search at a time
        would not visit)."""
        d = self.decode
        flights: list[tuple[int, np.random.Generator]] = []
        deferred: dict[int, tuple[str, np.random.Generator]] | None = {} if defers(n) else None
        try:
            for _ in range(n):
                rng = self._search_rng()
                leaf = yield from self._alone(select(d, rng, deferred))
                if not worth_another_search(d, leaf, {f for f, _ in flights}):
                    break
                mark_in_flight(d.tree, leaf, 1)
                flights.append((leaf, rng))
            starts = [
                i == next(j for j, (other, _) in enumerate(flights) if other == leaf)
                for i, (leaf, _) in enumerate(flights)
            ]
            changes = deferred_changes(d, deferred) if deferred else []
            values = [leaf_value(d, leaf, rng, first) for (leaf, rng), first in zip(flights, starts)]
            results = (yield from self._together(changes + values))[len(changes) :]
        finally:
            for leaf, _ in flights:
                mark_in_flight(d.tree, leaf, -1)
        yield from self._back_up_all(flights, results)
        return len(flights)

    def _back_up_all(
        self, flights: list[tuple[int, np.random.Generator]], results: list[tuple[float, list[int]]]
    ) -> Round[None]:
        """Embed every searched path in one call, then back the searches up in the order they started."""
        d = self.decode
        texts = [backup_texts(d, leaf, simulation) for (leaf, _), (_, simulation) in zip(flights, results)]
        embeddings: list[Any] = [[] for _ in flights]
        if any(texts):
            embeddings = yield self._before_call(tuple(EncodeRequest(tuple(t)) for t in texts))
        for (leaf, _), (value, simulation), emb in zip(flights, results, embeddings):
            if self._prev_leaf is not None and not d.tree.is_ancestor(self._prev_leaf, leaf):
                d.stats.rewinds += 1
            self._prev_leaf = leaf
            back_up(d, leaf, value, emb)
            d.stats.searches += 1
            d.stats.simulated_tokens += len(simulation)
        d.stats.rounds += 1

    def _search_from(self, leaves: Sequence[int]) -> Round[int]:
        flights = [(leaf, self._search_rng()) for leaf in leaves]
        results = yield from self._together(
            [leaf_value(self.decode, leaf, rng, leaf not in leaves[:i]) for i, (leaf, rng) in enumerate(flights)]
        )
        yield from self._back_up_all(flights, results)
        return len(flights)

    # --- the outer loop -------------------------------------------------------------------------
    def _next_commit(self) -> Round[list[int] | None]:
        """Search from the committed context, then commit the best root child's token set. Returns
        None when the deadline passed before the root had any child to commit."""
        d, cfg = self.decode, self.cfg
        t0 = time.perf_counter()
        i0 = d.tree.real_visits[ROOT_INDEX]
        target = cfg.search_target(i0)
        i, searches, stopped_early = i0, 0, False
        while i < target or not d.tree.children[ROOT_INDEX]:
            try:
                if self._interrupted():
                    raise _DeadlinePassed
                done = yield from self._round(round_width(d.tree, cfg, target - i))
            except _DeadlinePassed:
                self.finished_by = "time"
                if not d.tree.children[ROOT_INDEX]:
                    return None
                break
            if not d.tree.children[ROOT_INDEX]:
                raise RuntimeError(f"{self.lm.name} proposed no continuation of the context")
            i += done
            searches += done
            if early_stop(d.tree, cfg.min_visits, cfg.value_threshold):
                stopped_early = True
                d.stats.early_stops += 1
                break
        return self._commit(searches, i0, stopped_early, time.perf_counter() - t0)

    def _commit(self, searches: int, reused: int, stopped_early: bool, seconds: float) -> list[int]:
        d = self.decode
        best = best_child(d.tree)
        tokens = list(d.tree.tokens[best])
        entry: dict[str, Any] = {
            "tokens": tokens,
            "text": self.lm.decode(tokens),
            "searches": searches,
            "reused_visits": reused,
            "visits": d.tree.visits[best],
            "real_visits": d.tree.real_visits[best],
            "value": d.tree.value[best],
            "early_stop": stopped_early,
            "seconds": seconds,
        }
        if self.keep_trees:
            entry["tree"] = d.tree.to_dict()
            entry["tree"]["texts"] = [self.lm.decode(t) for t in d.tree.tokens]
            entry["chosen"] = best
        d.stats.commit_log.append(entry)
        terminal = d.tree.terminal[best]
        d.commit(tokens)
        d.tree = reroot(d.tree, best, self.cfg.root_uniform_mix)
        d.tree.terminal[ROOT_INDEX] = terminal
        self._prev_leaf = None
        d.stats.commits += 1
        d.stats.new_tokens = len(d.committed)
        return tokens

    def _finished(self, tokens: list[int]) -> bool:
        """After a commit: has the answer ended (EOS, a stop string, the budget, the deadline)?"""
        d = self.decode
        if tokens and tokens[-1] in self.lm.eos_token_ids:
            self.finished_by = "eos"
        elif self.answer.stopped:
            self.finished_by = "stop"
        elif len(d.committed) >= d.budget:
            self.finished_by = "length"
        return self.finished_by is not None

    # --- driven forms ---------------------------------------------------------------------------
    def run_phase(self, phase: Phase[T]) -> T:
        """Run one phase of ``phases`` on this decode, e.g. ``run_phase(simulate(s.decode, node, s.rng))``."""
        return drive(self._alone(phase), self.answerer)

    def search_once(self, width: int | None = None) -> None:
        """One round of up to ``width`` searches (default ``parallel_searches``; one search with 1)."""
        drive(self._round(width or self.cfg.parallel_searches), self.answerer)

    def search_from(self, leaves: Sequence[int]) -> None:
        """One search from each of ``leaves``, side by side, as a round runs them once it has
        selected them (for experiments and tests that choose the leaves themselves)."""
        drive(self._search_from(leaves), self.answerer)

    def next_commit(self) -> list[int] | None:
        """Search from the committed context and commit one token set (None: the deadline passed
        before there was anything to commit)."""
        return drive(self._next_commit(), self.answerer)

    async def anext_commit(self) -> list[int] | None:
        return await adrive(self._next_commit(), self.answerer)

    def run(self) -> Generator[Commit, None, None]:
        """Hand up each commit as it is made (``Commit``: the token ids, the final text they add, the
        commit's statistics) until EOS, a stop string, the token budget or the deadline; the last one
        carries the decode's ``RainResult``. Each commit is searched inside one model turn (``turn``).
        An evaluator failure raises ``EvaluatorError`` carrying the result so far."""
        self._started = time.perf_counter()
        try:
            while True:
                if self.decode.budget <= len(self.decode.committed):
                    self.finished_by = "length"
                    yield self._last(None)
                    return
                with self.turn:
                    tokens = self.next_commit()
                commit = self._handed_up(tokens)
                yield commit
                if commit.last:
                    return
        except (EvaluatorError, EngineError) as exc:
            if exc.partial is not None:
                raise
            raise self._with_partial(exc) from exc

    async def arun(self) -> AsyncIterator[Commit]:
        """``run`` on an event loop, for engines that serve decodes side by side (no model turn);
        cancelling the task stops the search at once."""
        self._started = time.perf_counter()
        try:
            while True:
                if self.decode.budget <= len(self.decode.committed):
                    self.finished_by = "length"
                    yield self._last(None)
                    return
                commit = self._handed_up(await self.anext_commit())
                yield commit
                if commit.last:
                    return
        except (EvaluatorError, EngineError) as exc:
            if exc.partial is not None:
                raise
            raise self._with_partial(exc) from exc

    # --- what is handed up ----------------------------------------------------------------------
    def _handed_up(self, tokens: list[int] | None) -> Commit:
        """The commit of ``tokens`` as the caller receives it; None: the deadline passed before there
        was anything to commit, and the decode ends."""
        if tokens is None:
            return self._last(None)
        self.answer.extend(tokens)
        entry = self.stats.commit_log[-1]
        if self._finished(tokens):
            return self._last(tokens, entry)
        return Commit(tuple(tokens), self.answer.release(), entry)

    def _last(self, tokens: list[int] | None, entry: dict[str, Any] | None = None) -> Commit:
        self.answer.finish()
        return Commit(tuple(tokens or ()), self.answer.release(final=True), entry, self.result())

    def result(self) -> RainResult:
        """The decode's result so far: the answer, why it ended, and what it cost (the engine's
        counters are this decode's share; on a shared server engine they include the decodes that ran
        beside it)."""
        if self._started is not None:
            self.stats.seconds = time.perf_counter() - self._started
        stats = self.stats.as_dict()
        stats.update(engine_delta(self.lm, self._engine_before))
        return RainResult(
            text=self.answer.text,
            token_ids=list(self.decode.committed),
            finish_reason=self.finished_by or ("stop" if self.answer.stopped else "length"),
            prompt_tokens=len(self.decode.prompt_ids),
            stats=stats,
        )

    def _with_partial(self, exc: EvaluatorError | EngineError) -> EvaluatorError | EngineError:
        """``exc`` again, carrying the result so far (an engine's own error class stays the cause)."""
        return (EvaluatorError if isinstance(exc, EvaluatorError) else EngineError)(str(exc), partial=self.result())
