"""Running request plans over the transport: each call's answer read (an error answer becomes the
exception a user can act on, counted once; a good one's token usage counted), the calls one plan
waits on sent at the same time, many plans driven together (their calls go out at once and the
server batches them), and the same on an event loop.

The one fact learnt here is the server's ``--max-logprobs``: a refusal that names it is recorded in
``ServerFacts`` before it is thrown into the plan, which may then ask for less."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Sequence
from typing import Any, TypeVar

from ...protocols import ContextTooLongError, EngineError
from .facts import ServerFacts
from .http import LogprobsLimitError, ModelNotServedError, Transport, raise_for_answer
from .plans import Call, Calls, Plan
from .probe import served_models
from .stats import EngineStats

R = TypeVar("R")


class Sender:
    """Sends calls about one served ``model`` and reads their answers. ``send_seeds``: whether
    sampled requests carry seeds (a crash message then names the seed fix)."""

    def __init__(self, transport: Transport, stats: EngineStats, *, model: str, send_seeds: bool) -> None:
        self.transport = transport
        self.stats = stats
        self.model = model
        self.send_seeds = send_seeds
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=transport.max_concurrency, thread_name_prefix="vllm-engine"
        )

    def read(self, response: Any) -> Any:
        """The JSON of a good answer; the matching exception for an error answer."""
        base_url = self.transport.base_url
        try:
            raise_for_answer(response, base_url, self.model, self.send_seeds)
        except (EngineError, ContextTooLongError) as exc:
            self.stats.error()
            if isinstance(exc, ModelNotServedError):
                names = [str(m.get("id")) for m in served_models(self.transport, base_url, self.model)]
                raise ModelNotServedError(
                    f"{base_url} does not serve {self.model!r}; it serves {names}", served=names
                ) from None
            raise
        try:
            body = response.json()
        except ValueError:
            raise EngineError(f"{base_url} answered with something that is not JSON: {response.text[:200]!r}") from None
        self.stats.usage(body)
        return body

    def send(self, call: Call) -> Any:
        return self.read(self.transport.request(*call))

    async def asend(self, call: Call) -> Any:
        return self.read(await self.transport.arequest(*call))

    def post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to ``path`` (the server's /tokenize and /detokenize)."""
        answer: dict[str, Any] = self.send(Call("POST", path, payload))
        return answer

    def send_all(self, calls: Sequence[Call]) -> list[Any]:
        """The calls' answers, in order; more than one go out at the same time (the worker threads
        run in a copy of the caller's context: the decode's session goes with them)."""
        if len(calls) == 1:
            return [self.send(calls[0])]
        futures = [self._pool.submit(contextvars.copy_context().run, self.send, c) for c in calls[:-1]]
        last = self.send(calls[-1])
        return [f.result() for f in futures] + [last]

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class PlanRunner:
    """Drives request plans with a ``Sender``; records a refused ``--max-logprobs`` in ``facts``."""

    def __init__(self, sender: Sender, facts: ServerFacts) -> None:
        self.sender = sender
        self.facts = facts

    def _sending(self, calls: Calls) -> tuple[Call, ...]:
        if calls.resend:
            self.sender.stats.resend()
        return calls.calls

    def _resume(self, plan: Plan[R], outcome: list[Any] | LogprobsLimitError) -> Calls:
        """Hand ``plan`` its answers, or the refusal sending met (its limit recorded first)."""
        if isinstance(outcome, LogprobsLimitError):
            self.facts.learn_logprobs_limit(outcome.limit)
            return plan.throw(outcome)
        return plan.send(outcome)

    def _answers(self, calls: Calls) -> list[Any] | LogprobsLimitError:
        try:
            return self.sender.send_all(self._sending(calls))
        except LogprobsLimitError as exc:
            return exc

    async def _aanswers(self, calls: Calls) -> list[Any] | LogprobsLimitError:
        try:
            return list(await asyncio.gather(*(self.sender.asend(c) for c in self._sending(calls))))
        except LogprobsLimitError as exc:
            return exc

    def run(self, plan: Plan[R]) -> R:
        """Drive one plan to its answer (its calls of one yield go out together)."""
        try:
            calls = next(plan)
            while True:
                calls = self._resume(plan, self._answers(calls))
        except StopIteration as stop:
            result: R = stop.value
            return result

    async def arun(self, plan: Plan[R]) -> R:
        """``run`` on the running event loop (the calls of one yield gathered)."""
        try:
            calls = next(plan)
            while True:
                calls = self._resume(plan, await self._aanswers(calls))
        except StopIteration as stop:
            result: R = stop.value
            return result

    def run_many(self, plans: Sequence[Plan[R]]) -> list[R]:
        """Drive several plans together: the calls every plan waits on go out at the same time (the
        server batches them), and each plan receives its own answers. A ``LogprobsLimitError`` closes
        every plan and is raised (the limit learnt: plans run one at a time then adapt to it)."""
        results: dict[int, R] = {}
        waiting: dict[int, Calls] = {}

        def advance(i: int, answers: list[Any] | None) -> None:
            try:
                waiting[i] = next(plans[i]) if answers is None else plans[i].send(answers)
            except StopIteration as stop:
                results[i] = stop.value
                waiting.pop(i, None)

        for i in range(len(plans)):
            advance(i, None)
        while waiting:
            order = [(i, self._sending(calls)) for i, calls in waiting.items()]
            try:
                answers = self.sender.send_all([c for _, calls in order for c in calls])
            except LogprobsLimitError as exc:
                self.facts.learn_logprobs_limit(exc.limit)
                for plan in plans:
                    plan.close()
                raise
            at = 0
            for i, calls in order:
                advance(i, answers[at : at + len(calls)])
                at += len(calls)
        return [results[i] for i in range(len(plans))]
