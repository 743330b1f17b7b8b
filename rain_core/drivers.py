"""Who answers the search's requests: a blocking driver and an asynchronous one.

The search (``search.py``) yields batches: a tuple of requests of one kind (``TopTokensRequest``,
``SampleRequest``, ``GenerateRequest``, ``ScoreRequest``, ``EncodeRequest``), one per search in
flight. ``Answerer`` answers a batch with one call where the engine, evaluator or encoder can take
a batch (``BatchedLanguageModel``, ``BatchEvaluator``, an encoder always can) and with one call per
request where it cannot. ``drive`` runs a search step with it; ``adrive`` awaits the async twins
(``AsyncBatchedLanguageModel``, ``AsyncLanguageModel``, ``AsyncBatchEvaluator``, ``AsyncEvaluator``)
or runs the blocking answer in a worker thread, so a decode on a served model leaves the event loop
free. Nothing here imports torch, transformers or an engine.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

from .phases import EncodeRequest, Phase, Request, ScoreRequest
from .protocols import (
    AsyncBatchedLanguageModel,
    AsyncBatchEvaluator,
    AsyncEvaluator,
    AsyncLanguageModel,
    BatchedLanguageModel,
    BatchEvaluator,
    Encoder,
    Evaluator,
    GenerateRequest,
    LanguageModel,
    SampleRequest,
    TopTokensRequest,
)

T = TypeVar("T")
Batch = tuple[Request, ...]
Round = Generator[Batch, list[Any], T]
"""A search step as the drivers see it: yields batches, receives their answers (a list, in order)."""


def _call_with_timeout(fn: Callable[[], T], seconds: float, name: str) -> T:
    """Run ``fn`` in a daemon thread and wait at most ``seconds`` (a stuck call is abandoned there)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            done.set()

    context = contextvars.copy_context()  # the decode's session goes with the call
    threading.Thread(target=context.run, args=(run,), name=f"rain-evaluator-{name}", daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError(f"no score within evaluator_timeout={seconds:g}s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _one(lm: LanguageModel, r: Request) -> Any:
    if isinstance(r, TopTokensRequest):
        return lm.top_tokens(r.prefix, r.k, r.temperature, r.exclude)
    if isinstance(r, SampleRequest):
        return lm.sample(
            r.prefix, r.n, r.length, top_k=r.top_k, temperature=r.temperature, seed=r.seed, greedy_first=r.greedy_first
        )
    if isinstance(r, GenerateRequest):
        return lm.generate(
            r.prefix,
            r.max_tokens,
            top_k=r.top_k,
            temperature=r.temperature,
            seed=r.seed,
            stop=r.stop,
            stop_token_ids=r.stop_token_ids,
        )
    raise TypeError(f"not a model request: {r!r}")


async def _aone(lm: Any, r: Request) -> Any:
    if isinstance(r, TopTokensRequest):
        return await lm.atop_tokens(r.prefix, r.k, r.temperature, r.exclude)
    if isinstance(r, SampleRequest):
        return await lm.asample(
            r.prefix, r.n, r.length, top_k=r.top_k, temperature=r.temperature, seed=r.seed, greedy_first=r.greedy_first
        )
    if isinstance(r, GenerateRequest):
        return await lm.agenerate(
            r.prefix,
            r.max_tokens,
            top_k=r.top_k,
            temperature=r.temperature,
            seed=r.seed,
            stop=r.stop,
            stop_token_ids=r.stop_token_ids,
        )
    raise TypeError(f"not a model request: {r!r}")


_BATCHED = {TopTokensRequest: "top_tokens_batch", SampleRequest: "sample_batch", GenerateRequest: "generate_batch"}


class Answerer:
    """Answers batches of one decode's requests: the model, the evaluator (about ``eval_prompt``,
    the conversation) and the encoder. ``evaluator_timeout``: seconds per reply an evaluator call
    may take (a call scoring n replies gets n times that)."""

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Evaluator,
        encoder: Encoder | None,
        eval_prompt: str,
        evaluator_timeout: float | None = None,
    ) -> None:
        self.lm = lm
        self.evaluator = evaluator
        self.encoder = encoder
        self.eval_prompt = eval_prompt
        self.evaluator_timeout = evaluator_timeout
        self.name = str(getattr(evaluator, "name", type(evaluator).__name__))

    # --- blocking ------------------------------------------------------------------------------
    def answer(self, batch: Batch) -> list[Any]:
        """The answers to ``batch`` (requests of one kind), in order."""
        first = batch[0]
        if isinstance(first, ScoreRequest):
            texts = [r.text for r in batch]  # type: ignore[union-attr]
            if self.evaluator_timeout is None:
                return self._scores(texts)
            return _call_with_timeout(lambda: self._scores(texts), self.evaluator_timeout * len(texts), self.name)
        if isinstance(first, EncodeRequest):
            return self._embeddings([r.texts for r in batch])  # type: ignore[union-attr]
        if len(batch) > 1 and isinstance(self.lm, BatchedLanguageModel):
            return list(getattr(self.lm, _BATCHED[type(first)])(list(batch)))
        return [_one(self.lm, r) for r in batch]

    def _scores(self, texts: Sequence[str]) -> list[float]:
        if len(texts) > 1 and isinstance(self.evaluator, BatchEvaluator):
            values = list(self.evaluator.score_batch(self.eval_prompt, texts))
            if len(values) != len(texts):
                raise ValueError(f"score_batch returned {len(values)} scores for {len(texts)} replies")
            return values
        return [self.evaluator.score(self.eval_prompt, t) for t in texts]

    def _embeddings(self, groups: Sequence[Sequence[str]]) -> list[Any]:
        """One encoder call for every group's texts, split back per group."""
        assert self.encoder is not None
        flat = [t for g in groups for t in g]
        if not flat:
            return [[] for _ in groups]
        rows = self.encoder.encode(flat)
        out, start = [], 0
        for g in groups:
            out.append(rows[start : start + len(g)])
            start += len(g)
        return out

    # --- asynchronous --------------------------------------------------------------------------
    async def aanswer(self, batch: Batch) -> list[Any]:
        """``answer`` without blocking the event loop."""
        first = batch[0]
        if isinstance(first, ScoreRequest) and isinstance(self.evaluator, (AsyncEvaluator, AsyncBatchEvaluator)):
            coro = self._ascores([r.text for r in batch])  # type: ignore[union-attr]
            if self.evaluator_timeout is None:
                return await coro
            limit = self.evaluator_timeout * len(batch)
            try:
                return await asyncio.wait_for(coro, limit)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no score within evaluator_timeout={limit:g}s") from None
        if isinstance(first, (TopTokensRequest, SampleRequest, GenerateRequest)):
            if len(batch) > 1 and isinstance(self.lm, AsyncBatchedLanguageModel):
                return list(await getattr(self.lm, "a" + _BATCHED[type(first)])(list(batch)))
            if isinstance(self.lm, AsyncLanguageModel):
                return list(await asyncio.gather(*(_aone(self.lm, r) for r in batch)))
        return await asyncio.to_thread(self.answer, batch)

    async def _ascores(self, texts: Sequence[str]) -> list[float]:
        if len(texts) > 1 and isinstance(self.evaluator, AsyncBatchEvaluator):
            values = list(await self.evaluator.ascore_batch(self.eval_prompt, texts))
            if len(values) != len(texts):
                raise ValueError(f"ascore_batch returned {len(values)} scores for {len(texts)} replies")
            return values
        if isinstance(self.evaluator, AsyncEvaluator):
            return list(await asyncio.gather(*(self.evaluator.ascore(self.eval_prompt, t) for t in texts)))
        return await asyncio.to_thread(self._scores, texts)


# --- running phases ----------------------------------------------------------------------------------
def one_at_a_time(phase: Phase[T], before_call: Callable[[Batch], Batch]) -> Round[T]:
    """Run one phase, its requests one at a time; ``before_call`` sees each batch before it goes out
    (it may raise to stop the phase, which is then closed)."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = phase.throw(error) if error is not None else phase.send(answer)
        except StopIteration as stop:
            value: T = stop.value
            return value
        error = None
        try:
            batch = before_call((request,))
        except BaseException:
            phase.close()
            raise
        try:
            (answer,) = yield batch
        except Exception as exc:
            error = exc


def side_by_side(
    phases: list[Phase[T]], order: tuple[type, ...], before_call: Callable[[Batch], Batch]
) -> Round[list[T]]:
    """Run phases side by side: each batch holds the requests of one kind of every phase waiting on that
    kind, answered once no phase waits on a kind that comes earlier in ``order``. Every phase is closed
    on the way out, whatever ends the round."""
    results: dict[int, T] = {}
    waiting: dict[int, Request] = {}

    def advance(i: int, answer: Any = None, error: BaseException | None = None) -> None:
        try:
            request = phases[i].throw(error) if error is not None else phases[i].send(answer)
        except StopIteration as stop:
            results[i] = stop.value
            waiting.pop(i, None)
            return
        waiting[i] = request

    try:
        for i in range(len(phases)):
            advance(i)
        while waiting:
            kind = next(k for k in order if any(type(r) is k for r in waiting.values()))
            ids = [i for i, r in waiting.items() if type(r) is kind]
            batch = before_call(tuple(waiting[i] for i in ids))
            try:
                answers = yield batch
            except Exception as exc:
                for i in ids:  # the first phase turns it into a clearer error and raises it
                    advance(i, error=exc)
                continue
            for i, answer in zip(ids, answers):
                advance(i, answer)
    finally:
        for phase in phases:
            phase.close()
    return [results[i] for i in range(len(phases))]


def drive(steps: Round[T], answerer: Answerer) -> T:
    """Run ``steps`` to the end, answering each batch with ``answerer.answer``. An error of a call
    is handed to the step, which may turn it into a clearer one."""
    answers: Any = None
    error: BaseException | None = None
    while True:
        try:
            batch = steps.throw(error) if error is not None else steps.send(answers)
        except StopIteration as stop:
            value: T = stop.value
            return value
        error = None
        try:
            answers = answerer.answer(batch)
        except Exception as exc:
            error = exc


async def adrive(steps: Round[T], answerer: Answerer) -> T:
    """``drive`` on an event loop (``answerer.aanswer``)."""
    answers: Any = None
    error: BaseException | None = None
    while True:
        try:
            batch = steps.throw(error) if error is not None else steps.send(answers)
        except StopIteration as stop:
            value: T = stop.value
            return value
        error = None
        try:
            answers = await answerer.aanswer(batch)
        except Exception as exc:
            error = exc
