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
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

import numpy as np

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
    MixedBatchLanguageModel,
    SampleRequest,
    TopTokensRequest,
)
from .requests import MODEL_REQUESTS, EncodeRequest, Phase, Request, ScoreRequest, Together

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
EMBEDDING_CACHE = 4096  # texts whose embeddings a decode keeps (the similarity update embeds paths again)


def _by_kind(batch: Sequence[Request]) -> dict[type, list[int]]:
    """The positions of each kind of request in ``batch``, kinds in order of first appearance."""
    out: dict[type, list[int]] = {}
    for i, r in enumerate(batch):
        out.setdefault(type(r), []).append(i)
    return out


class Answerer:
    """Answers batches of one decode's requests: the model, the evaluator (about ``eval_prompt``,
    the conversation) and the encoder. ``evaluator_timeout``: seconds per reply an evaluator call
    may take (a call scoring n replies gets n times that). ``between_calls``: run between the calls
    of a batch that the engine takes in several (it may raise to stop the decode there)."""

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Evaluator,
        encoder: Encoder | None,
        eval_prompt: str,
        evaluator_timeout: float | None = None,
        between_calls: Callable[[], None] | None = None,
    ) -> None:
        self.lm = lm
        self.between_calls = between_calls
        self.evaluator = evaluator
        self.encoder = encoder
        self.eval_prompt = eval_prompt
        self.evaluator_timeout = evaluator_timeout
        self.name = str(getattr(evaluator, "name", type(evaluator).__name__))
        self._embedded: OrderedDict[str, Any] = OrderedDict()  # text -> embedding, most recent last

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
        kinds = {type(r) for r in batch}
        if len(kinds) > 1 and isinstance(self.lm, MixedBatchLanguageModel):
            return list(self.lm.answer_batch(list(batch)))  # type: ignore[arg-type]
        out: list[Any] = [None] * len(batch)
        for n, (kind, where) in enumerate(_by_kind(batch).items()):
            if n and self.between_calls is not None:
                self.between_calls()  # a batch answered in several calls may stop between them
            group = [batch[i] for i in where]
            if len(group) > 1 and isinstance(self.lm, BatchedLanguageModel):
                answers = list(getattr(self.lm, _BATCHED[kind])(group))
            else:
                answers = [_one(self.lm, r) for r in group]
            for i, a in zip(where, answers):
                out[i] = a
        return out

    def _scores(self, texts: Sequence[str]) -> list[float]:
        if len(texts) > 1 and isinstance(self.evaluator, BatchEvaluator):
            values = list(self.evaluator.score_batch(self.eval_prompt, texts))
            if len(values) != len(texts):
                raise ValueError(f"score_batch returned {len(values)} scores for {len(texts)} replies")
            return values
        return [self.evaluator.score(self.eval_prompt, t) for t in texts]

    def _embeddings(self, groups: Sequence[Sequence[str]]) -> list[Any]:
        """One encoder call for every group's texts that this decode has not embedded yet (each
        distinct text once), split back per group."""
        assert self.encoder is not None
        new = [t for t in dict.fromkeys(t for g in groups for t in g) if t not in self._embedded]
        if new:
            for text, row in zip(new, self.encoder.encode(new)):
                self._embedded[text] = row
                self._embedded.move_to_end(text)
            while len(self._embedded) > EMBEDDING_CACHE:
                self._embedded.popitem(last=False)
        return [np.stack([self._embedded[t] for t in g]) if g else [] for g in groups]

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
        if isinstance(first, MODEL_REQUESTS) and isinstance(self.lm, (AsyncBatchedLanguageModel, AsyncLanguageModel)):
            # every kind at once: a server runs the round's requests together
            groups = _by_kind(batch)
            answers = await asyncio.gather(*(self._agroup([batch[i] for i in where]) for where in groups.values()))
            out: list[Any] = [None] * len(batch)
            for where, group_answers in zip(groups.values(), answers):
                for i, a in zip(where, group_answers):
                    out[i] = a
            return out
        return await asyncio.to_thread(self.answer, batch)

    async def _agroup(self, group: list[Request]) -> list[Any]:
        if len(group) > 1 and isinstance(self.lm, AsyncBatchedLanguageModel):
            return list(await getattr(self.lm, "a" + _BATCHED[type(group[0])])(group))
        if isinstance(self.lm, AsyncLanguageModel):
            return list(await asyncio.gather(*(_aone(self.lm, r) for r in group)))
        return await asyncio.to_thread(lambda: [_one(self.lm, r) for r in group])

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
def _requests(item: Request | Together) -> tuple[Request, ...]:
    return item.requests if isinstance(item, Together) else (item,)


def _stage(item: Request | Together) -> int:
    """When a waiting request goes out in a round: model requests first (all kinds in one batch),
    then the evaluator's, then the encoder's."""
    first = _requests(item)[0]
    return 0 if isinstance(first, MODEL_REQUESTS) else (1 if isinstance(first, ScoreRequest) else 2)


def one_at_a_time(phase: Phase[T], before_call: Callable[[Batch], Batch]) -> Round[T]:
    """Run one phase, each request (or ``Together`` bundle) as one batch; ``before_call`` sees each
    batch before it goes out (it may raise to stop the phase, which is then closed)."""
    return run_phases([phase], before_call, one=True)


def run_phases(phases: list[Phase[T]], before_call: Callable[[Batch], Batch], one: bool = False) -> Round[Any]:
    """Run phases side by side, one stage at a time: every model request the phases wait on goes out in
    one batch (expansions, completions and simulations of every kind step together), then every score
    (one per distinct text), then every embedding. ``before_call`` sees each batch before it goes out
    (it may raise to stop the round). Every phase is closed on the way out, whatever ends the round
    (an error, a cancellation, an early exit). Returns the phases' results in order (``one``: the
    single phase's result)."""
    results: dict[int, Any] = {}
    waiting: dict[int, Request | Together] = {}

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
            stage = min(_stage(item) for item in waiting.values())
            ids = [i for i, item in waiting.items() if _stage(item) == stage]
            flat = [(i, r) for i in ids for r in _requests(waiting[i])]
            batch = before_call(tuple(_unique_requests(flat, stage).values()))
            try:
                answers = yield batch
            except Exception as exc:
                for i in ids:  # the first phase turns it into a clearer error and raises it
                    advance(i, error=exc)
                continue
            by_key = dict(zip(_unique_requests(flat, stage), answers))
            got: dict[int, list[Any]] = {i: [] for i in ids}
            for i, r in flat:
                got[i].append(by_key[r if stage else id(r)])
            for i in ids:
                item = waiting[i]
                advance(i, tuple(got[i]) if isinstance(item, Together) else got[i][0])
    finally:
        for phase in phases:
            phase.close()
    return results[0] if one else [results[i] for i in range(len(phases))]


def _unique_requests(flat: list[tuple[int, Request]], stage: int) -> dict[Any, Request]:
    """The requests of a batch in order, one per key: model requests by identity (each its own row
    draws), scores and embeddings by value (the same text is asked once)."""
    out: dict[Any, Request] = {}
    for _, r in flat:
        out.setdefault(r if stage else id(r), r)
    return out


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
