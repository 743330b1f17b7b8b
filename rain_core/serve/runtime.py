"""What the server decodes with, and how a decode runs under it.

``Parts`` holds what was loaded at start (the generator, the judge or guard, the sentence encoder):
a request never loads anything. ``Runtime`` gives each request a ``RainDecoder`` for its principle
and scoring (made once per pair, sharing the parts; a decoder keeps no state between calls) and
runs its decodes as async iterators of ``Commit`` values:

- on an engine that serves decodes side by side on an event loop (vLLM), ``astream`` on the
  server's loop: leaving cancels the task, which closes the decode's HTTP requests;
- otherwise (the in-process model) in a worker thread of its own: leaving sets the decode's cancel
  event, it stops before its next model call, and only then is it counted out of
  ``rain_decodes_in_flight`` and its request's slot freed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import RainConfig, Scoring
from ..decoder import Prompt, RainDecoder
from ..evaluators import JudgeEvaluator, SelfEvaluator
from ..principles import Principle
from ..protocols import AsyncLanguageModel, DecodeCancelled, Encoder, Evaluator, LanguageModel, is_concurrent
from ..results import Commit
from ..streams import AsyncRainStream, RainStream
from .errors import APIError
from .metrics import Metrics
from .queue import Ticket

__all__ = ["Decode", "Parts", "Runtime"]


@dataclass
class Parts:
    """The loaded parts. ``evaluator``: a fixed evaluator (a guard), or None for model evaluation
    by ``judge`` (None: the generator judges itself) against a principle."""

    lm: LanguageModel
    config: RainConfig
    principle: str | Principle = "harmless"
    judge: LanguageModel | None = None
    evaluator: Evaluator | None = None
    encoder: Encoder | None = None
    served_names: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decode:
    """One answer of a request: its index among the request's answers, the prompt and its settings."""

    index: int
    prompt: Prompt
    chat: bool
    chat_kwargs: dict[str, Any]
    config: RainConfig


class Runtime:
    def __init__(self, parts: Parts, metrics: Metrics) -> None:
        self.parts = parts
        self.metrics = metrics
        self.on_loop = isinstance(parts.lm, AsyncLanguageModel) and is_concurrent(parts.lm)
        self._decoders: dict[tuple[Any, Any], RainDecoder] = {}
        self._lock = threading.Lock()

    @property
    def concurrent(self) -> bool:
        """Whether the engine serves decodes side by side (a server), or one model takes turns."""
        return is_concurrent(self.parts.lm)

    def decoder(self, principle: str | None, scoring: Scoring | None) -> RainDecoder:
        """The decoder for a request's principle and scoring (None: the server's)."""
        parts = self.parts
        if parts.evaluator is not None and (principle is not None or scoring is not None):
            param = "rain.principle" if principle is not None else "rain.scoring"
            raise APIError(
                400,
                f"this server judges with {parts.evaluator.name if hasattr(parts.evaluator, 'name') else 'a guard'}, "
                f"which has its own policy and score; {param} applies to self-evaluation or a judge",
                param=param,
                code="invalid_value",
            )
        key = (principle or parts.principle, scoring or Scoring(parts.config.scoring))
        with self._lock:
            dec = self._decoders.get(key)
            if dec is None:
                evaluator = parts.evaluator or self._model_evaluator(*key)
                dec = RainDecoder(parts.lm, evaluator, encoder=parts.encoder, config=parts.config)
                self._decoders[key] = dec
            return dec

    def _model_evaluator(self, principle: str | Principle, scoring: Scoring) -> Evaluator:
        if self.parts.judge is not None:
            return JudgeEvaluator(self.parts.judge, principle, scoring=scoring)
        return SelfEvaluator(self.parts.lm, principle, scoring=scoring)

    def open(self, dec: RainDecoder, job: Decode, cancel: threading.Event) -> RainStream | AsyncRainStream:
        """The decode's stream, not started: the prompt rendered and checked (a prompt that does not
        fit raises ``ContextTooLongError`` here, before the request waits for a turn)."""
        opener = dec.astream if self.on_loop else dec.stream
        return opener(job.prompt, config=job.config, chat=job.chat, chat_kwargs=job.chat_kwargs, cancel=cancel)

    async def commits(
        self, streams: Sequence[RainStream | AsyncRainStream], cancel: threading.Event, ticket: Ticket
    ) -> AsyncGenerator[tuple[int, Commit], None]:
        """The commits of a request's decodes as they are made, as (answer index, commit); on an
        in-process model the decodes take turns per commit. Leaving stops every decode."""
        queue: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        tasks = []
        left = len(streams)
        try:
            for i, stream in enumerate(streams):
                if isinstance(stream, AsyncRainStream):
                    tasks.append(asyncio.ensure_future(self._on_loop(i, stream, queue, ticket)))
                else:
                    self._in_thread(i, stream, queue, loop, ticket, cancel)
            while left:
                index, kind, value = await queue.get()
                if kind == "commit":
                    yield index, value
                elif kind == "end":
                    left -= 1
                else:
                    raise value
        finally:
            cancel.set()
            for task in tasks:
                task.cancel()

    async def _on_loop(
        self, index: int, stream: AsyncRainStream, queue: asyncio.Queue[tuple[int, str, Any]], ticket: Ticket
    ) -> None:
        ticket.hold()
        self.metrics.decode_started()
        ended = False
        try:
            async for commit in stream.commits():
                self._count(commit)
                queue.put_nowait((index, "commit", commit))
            ended = True
            queue.put_nowait((index, "end", None))
        except asyncio.CancelledError:
            self.metrics.cancelled.inc()
            raise
        except BaseException as exc:  # handed to the request, which answers with it
            ended = True
            self.metrics.failed.labels(type(exc).__name__).inc()
            queue.put_nowait((index, "error", exc))
        finally:
            if not ended:
                await _quietly(stream.aclose())
            self.metrics.decode_stopped()
            ticket.drop()

    def _in_thread(
        self,
        index: int,
        stream: RainStream,
        queue: asyncio.Queue[tuple[int, str, Any]],
        loop: asyncio.AbstractEventLoop,
        ticket: Ticket,
        cancel: threading.Event,
    ) -> None:
        def post(*item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop has closed (the server is gone)
                pass

        def done() -> None:
            self.metrics.decode_stopped()
            ticket.drop()

        def work() -> None:
            try:
                for commit in stream.commits():
                    self._count(commit)
                    post(index, "commit", commit)
                post(index, "end", None)
            except DecodeCancelled:
                self.metrics.cancelled.inc()
                post(index, "error", DecodeCancelled("the client left"))
            except BaseException as exc:  # handed to the request, which answers with it
                self.metrics.failed.labels(type(exc).__name__).inc()
                post(index, "error", exc)
            finally:
                try:
                    loop.call_soon_threadsafe(done)
                except RuntimeError:
                    pass

        ticket.hold()
        self.metrics.decode_started()
        threading.Thread(target=work, name=f"rain-decode-{index}", daemon=True).start()

    def _count(self, commit: Commit) -> None:
        self.metrics.commit(commit.stats)
        if commit.result is not None:
            self.metrics.ended(commit.result)


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except BaseException:  # closing a decode that already failed or was cancelled
        pass
