"""``guard | chain`` for an input guard: ``RainGuardedRunnable`` runs a chain behind a check of its
input. ``GuardStep`` is what such a check is (a runnable that checks a value and passes it on, which a
chain's output type looks past); ``StreamsByTransform`` streams one value through ``transform``."""

from __future__ import annotations

import functools
import operator
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSequence, RunnableSerializable
from langchain_core.runnables.base import coerce_to_runnable
from langchain_core.runnables.config import patch_config, run_in_executor
from pydantic import ConfigDict

from .guard_verdicts import Screened

__all__ = ["GuardStep", "RainGuardedRunnable", "StreamsByTransform", "join_chunks"]


def join_chunks(chunks: Sequence[Any]) -> Any:
    """Streamed chunks as one value (strings and message chunks add up)."""
    try:
        return functools.reduce(operator.add, chunks)
    except TypeError:
        return chunks[-1]


class StreamsByTransform:
    """``stream``/``astream`` of one input through ``transform``/``atransform`` (which LCEL sequences
    call), so a single value and a stream of chunks take the same path."""

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self.transform(iter([input]), config, **kwargs)  # type: ignore[attr-defined]

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):  # type: ignore[attr-defined]
            yield chunk


class GuardStep(StreamsByTransform):
    """A runnable that checks a value and passes it on (``RainGuard``): ``screen_input(value)`` returns
    the value to use and, when it was blocked, what the guard decided."""

    def screen_input(self, value: Any) -> tuple[Any, Screened | None]:
        raise NotImplementedError


def _final_output_type(runnable: Runnable[Any, Any]) -> Any:
    """What a chain returns, looking past guards at its end."""
    while True:
        if isinstance(runnable, RainGuardedRunnable):
            runnable = runnable.runnable
        elif isinstance(runnable, RunnableSequence):
            steps = [s for s in runnable.steps if not isinstance(s, GuardStep)]
            runnable = steps[-1] if steps else runnable.steps[-1]
            if isinstance(runnable, RunnableSequence | RainGuardedRunnable):
                continue
            return runnable.OutputType
        else:
            return runnable.OutputType


class RainGuardedRunnable(StreamsByTransform, RunnableSerializable[Any, Any]):
    """``guard | runnable`` for a guard with ``check_input=True``: the input is checked first; a
    blocked input returns the guard's ``input_block_message`` (a string when the runnable returns
    strings, else an ``AIMessage`` with the verdict in ``response_metadata["rain_guard"]``) without
    running the runnable; a rewritten input runs in place of the original. Anything piped after
    this joins the guarded runnable."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: GuardStep
    """The input check (a ``RainGuard`` with ``check_input=True``)."""
    runnable: Runnable[Any, Any]

    def __or__(self, other: Any) -> Runnable[Any, Any]:
        return RainGuardedRunnable(guard=self.guard, runnable=self.runnable | coerce_to_runnable(other))

    def _blocked(self, out: Screened) -> Any:
        if _final_output_type(self.runnable) is str:
            return out.text
        return AIMessage(out.text, response_metadata={"rain_guard": out.meta})

    def _invoke(self, value: Any, run_manager: Any, config: RunnableConfig) -> Any:
        new, blocked = self.guard.screen_input(value)
        if blocked is not None:
            return self._blocked(blocked)
        return self.runnable.invoke(new, patch_config(config, callbacks=run_manager.get_child()))

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, run_type="chain")

    async def _ainvoke(self, value: Any, run_manager: Any, config: RunnableConfig) -> Any:
        new, blocked = await run_in_executor(config, self.guard.screen_input, value)
        if blocked is not None:
            return self._blocked(blocked)
        return await self.runnable.ainvoke(new, patch_config(config, callbacks=run_manager.get_child()))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, run_type="chain")

    def _transform(self, inputs: Iterator[Any], run_manager: Any, config: RunnableConfig) -> Iterator[Any]:
        new, blocked = self.guard.screen_input(join_chunks(list(inputs)))
        if blocked is not None:
            yield self._blocked(blocked)
            return
        yield from self.runnable.stream(new, patch_config(config, callbacks=run_manager.get_child()))

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self._transform_stream_with_config(input, self._transform, config, run_type="chain")

    async def _atransform(
        self, inputs: AsyncIterator[Any], run_manager: Any, config: RunnableConfig
    ) -> AsyncIterator[Any]:
        new, blocked = await run_in_executor(config, self.guard.screen_input, join_chunks([i async for i in inputs]))
        if blocked is not None:
            yield self._blocked(blocked)
            return
        async for chunk in self.runnable.astream(new, patch_config(config, callbacks=run_manager.get_child())):
            yield chunk

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, run_type="chain"):
            yield chunk
