"""Guards: score a text with a RAIN evaluator and block, rewrite or flag it when it scores below a
threshold.

``RainGuard`` is an LCEL runnable (traced as a chain). At the end of a chain it checks the answer;
with ``check_input=True`` at the front it checks the input before the rest of the chain runs::

    guarded = RainGuard(evaluator=..., check_input=True) | prompt | chat | RainGuard(evaluator=...)

It streams: the chunks of an answer are held until the whole answer has passed, then released
as they came; an answer that fails is replaced by one chunk (blocked, rewritten or flagged).
The agent middleware (``RainGuardMiddleware``) uses the same checks.
"""

from __future__ import annotations

import enum
import functools
import logging
import operator
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.utils import convert_to_messages
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableSequence,
    RunnableSerializable,
)
from langchain_core.runnables.base import coerce_to_runnable
from langchain_core.runnables.config import patch_config, run_in_executor
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rain_core import CallableEvaluator, Evaluator, RainDecoder, RainResult
from rain_core.chat import transcript

from .._common import stats_of
from .messages import messages_from_langchain, text_of

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BLOCK_MESSAGE",
    "DEFAULT_INPUT_BLOCK_MESSAGE",
    "DEFAULT_REWRITE_INSTRUCTION",
    "GuardStrategy",
    "GuardVerdict",
    "RainGuard",
    "RainGuardViolation",
    "RainGuardedRunnable",
    "Screened",
]


class GuardStrategy(str, enum.Enum):
    """What a guard does with text that scores below its threshold."""

    BLOCK = "block"
    """Replace it with a short reason (a tool result becomes a ``ToolMessage`` with status error; in an
    agent, a blocked input or answer ends the run)."""
    REWRITE = "rewrite"
    """Replace it with a harmless restatement decoded with RAIN; if the restatement still fails the
    check, block instead (``response_metadata["rain_guard"]["fallback"] == "block"``)."""
    FLAG = "flag"
    """Keep it; record the verdict and score in the message's ``response_metadata["rain_guard"]``."""


class GuardVerdict(BaseModel):
    """One guard decision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    score: float
    """The evaluator's value in [-1, 1]; higher is better."""
    threshold: float
    """Scores below this fail."""
    passed: bool
    """``score >= threshold``."""
    evaluator: str
    """The evaluator's name."""
    strategy: GuardStrategy
    """What is done when the check fails."""

    def metadata(self) -> dict[str, Any]:
        return {
            "verdict": "pass" if self.passed else "fail",
            "score": self.score,
            "threshold": self.threshold,
            "evaluator": self.evaluator,
            "strategy": self.strategy.value,
        }


class RainGuardViolation(ValueError):
    """Raised instead of blocking, rewriting or flagging when a guard has ``raise_on_violation=True``.
    ``verdict`` is the ``GuardVerdict``, ``text`` the text that failed, ``checked`` what it was
    ("input", "output" or "tool_result")."""

    def __init__(self, verdict: GuardVerdict, text: str, checked: str) -> None:
        super().__init__(
            f"a RAIN guard rejected the {checked.replace('_', ' ')}: it scored {verdict.score:.2f} on "
            f"{verdict.evaluator}, below the threshold {verdict.threshold:.2f}"
        )
        self.verdict = verdict
        self.text = text
        self.checked = checked


@dataclass(frozen=True)
class Screened:
    """What a guard made of a text: the text to use, whether it was blocked, and the metadata to
    record (``None`` when the text passed)."""

    text: str
    blocked: bool
    meta: dict[str, Any] | None


DEFAULT_BLOCK_MESSAGE = (
    "This content was withheld by a RAIN guard: it scored {score:.2f} on {evaluator}, "
    "below the threshold {threshold:.2f}."
)
DEFAULT_INPUT_BLOCK_MESSAGE = (
    "This request was declined by a RAIN guard: it scored {score:.2f} on {evaluator}, "
    "below the threshold {threshold:.2f}."
)
DEFAULT_REWRITE_INSTRUCTION = (
    "You restate text for a reader. Keep any harmless facts, drop everything that could help someone "
    "cause harm, and answer with the restatement only."
)


def _join(chunks: Sequence[Any]) -> Any:
    """Streamed chunks as one value (strings and message chunks add up)."""
    try:
        return functools.reduce(operator.add, chunks)
    except TypeError:
        return chunks[-1]


class _StreamsByTransform:
    """``stream``/``astream`` of one input through ``transform``/``atransform`` (which LCEL sequences
    call), so a single value and a stream of chunks take the same path."""

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self.transform(iter([input]), config, **kwargs)  # type: ignore[attr-defined]

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):  # type: ignore[attr-defined]
            yield chunk


class RainGuard(_StreamsByTransform, RunnableSerializable[Any, Any]):
    """Score text with a RAIN evaluator and act when it falls below ``threshold``.

    Input and output: a string or a message (``AIMessage``, ``ToolMessage``, ...), returned as the
    same type; with ``check_input=True`` also chat messages, a prompt value or a dict of prompt
    variables (each string checked). A passing value comes back untouched. At the end of a chain::

        chain = prompt | chat | RainGuard(decoder=decoder, strategy="rewrite")

    At the front with ``check_input=True`` (``guard | chain`` wraps the chain: a blocked input
    returns the block message without running it). The context the evaluator sees is the
    conversation before the checked text (empty for a single string).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    decoder: RainDecoder | None = None
    """Decodes rewrites; its evaluator scores when ``evaluator`` is not given."""
    evaluator: Any = None
    """An ``Evaluator`` or a function ``fn(context, text) -> float`` in [-1, 1]; default: the decoder's."""
    threshold: float = Field(0.0, ge=-1.0, le=1.0)
    """Scores strictly below this fail the check."""
    strategy: GuardStrategy = GuardStrategy.BLOCK
    """``"block"``, ``"rewrite"`` or ``"flag"`` (see ``GuardStrategy``)."""
    raise_on_violation: bool = False
    """Raise ``RainGuardViolation`` for text that fails, instead of the strategy."""
    check_input: bool = False
    """At the front of a chain (``guard | chain``), check the chain's input before the chain runs."""
    block_message: str = DEFAULT_BLOCK_MESSAGE
    """What replaces blocked content; may use ``{score}``, ``{threshold}`` and ``{evaluator}``."""
    input_block_message: str = DEFAULT_INPUT_BLOCK_MESSAGE
    """The answer to a blocked input (same placeholders)."""
    rewrite_instruction: str = DEFAULT_REWRITE_INSTRUCTION
    """System instruction for the rewrite decode."""
    rewrite_options: dict[str, Any] = Field(default_factory=dict)
    """``RainConfig`` overrides for the rewrite decode, e.g. ``{"max_new_tokens": 64}``."""

    @model_validator(mode="after")
    def _check(self) -> RainGuard:
        if self.evaluator is not None and not isinstance(self.evaluator, Evaluator):
            if not callable(self.evaluator):
                raise ValueError("evaluator must be an Evaluator or a function fn(context, text) -> float")
            self.evaluator = CallableEvaluator(self.evaluator)
        if self.decoder is None and self.evaluator is None:
            raise ValueError("RainGuard needs a decoder (its evaluator scores) or an evaluator")
        if self.strategy is GuardStrategy.REWRITE:
            if self.decoder is None:
                raise ValueError('strategy "rewrite" needs a decoder to decode the restatement')
            self.decoder.resolve_config(**self.rewrite_options)
        return self

    @property
    def scorer(self) -> Evaluator:
        return self.evaluator if self.evaluator is not None else self.decoder.evaluator  # type: ignore[union-attr]

    # --- the check ----------------------------------------------------------------------------
    def check(self, text: str, context: str = "") -> GuardVerdict:
        """Score ``text`` (with ``context``, the conversation as ``Role: content`` lines)."""
        score = float(self.scorer.score(context, text))
        return GuardVerdict(
            score=score,
            threshold=self.threshold,
            passed=score >= self.threshold,
            evaluator=str(getattr(self.scorer, "name", "evaluator")),
            strategy=self.strategy,
        )

    def rewrite(self, text: str) -> RainResult:
        """A harmless restatement of ``text``, decoded with RAIN."""
        assert self.decoder is not None
        prompt, chat_kwargs = messages_from_langchain(
            [SystemMessage(self.rewrite_instruction), HumanMessage(f"Text to restate:\n{text}")],
            support=self.decoder.template_support,
        )
        return self.decoder.generate(prompt, chat=True, chat_kwargs=chat_kwargs, **self.rewrite_options)

    def screen(self, text: str, context: str = "", *, checked: str = "output") -> Screened:
        """Check ``text`` and apply the strategy: what to use instead, and the verdict's metadata
        (``checked``: "input", "output" or "tool_result", recorded in it)."""
        verdict = self.check(text, context)
        if verdict.passed:
            return Screened(text, False, None)
        if self.raise_on_violation:
            raise RainGuardViolation(verdict, text, checked)
        meta = {**verdict.metadata(), "checked": checked}
        logger.info(
            "RainGuard: %s failed (%.3f < %.3f), strategy %s",
            checked,
            verdict.score,
            verdict.threshold,
            self.strategy.value,
        )
        if self.strategy is GuardStrategy.FLAG:
            return Screened(text, False, meta)
        if self.strategy is GuardStrategy.REWRITE:
            result = self.rewrite(text)
            new_text = result.text.strip()
            again = self.check(new_text, context)
            meta["rewrite"] = {
                "score": again.score,
                "passed": again.passed,
                "finish_reason": result.finish_reason,
                "rain": stats_of(result),
            }
            if again.passed:
                return Screened(new_text, False, meta)
            # A restatement that still fails the check must not reach the reader: block instead.
            logger.warning(
                "RainGuard: the rewrite still scored %.3f < %.3f; blocking instead", again.score, self.threshold
            )
            meta["fallback"] = GuardStrategy.BLOCK.value
        template = self.input_block_message if checked == "input" else self.block_message
        return Screened(
            template.format(score=verdict.score, threshold=verdict.threshold, evaluator=verdict.evaluator), True, meta
        )

    def apply_message(self, value: Any, context: str = "", *, checked: str = "output") -> tuple[Any, Screened]:
        """Check a string or message; the value to use instead (same type, the verdict in
        ``response_metadata["rain_guard"]``) and what the guard decided."""
        if isinstance(value, BaseMessage):
            text = text_of(value.content, value.type)
        elif isinstance(value, str):
            text = value
        else:
            raise TypeError(f"RainGuard checks strings and messages, got {type(value).__name__}")
        out = self.screen(text, context, checked=checked)
        if out.meta is None:
            return value, out
        if isinstance(value, str):
            if self.strategy is GuardStrategy.FLAG:
                logger.warning(
                    "RainGuard flagged a string (score %.3f); pass messages to keep the verdict in metadata",
                    out.meta["score"],
                )
            return out.text, out
        update: dict[str, Any] = {"response_metadata": {**value.response_metadata, "rain_guard": out.meta}}
        if out.text != text:
            update["content"] = out.text
        if isinstance(value, ToolMessage) and out.blocked:
            update["status"] = "error"
        if isinstance(value, AIMessage) and self.strategy is not GuardStrategy.FLAG:
            update.update(tool_calls=[], invalid_tool_calls=[])
            if hasattr(value, "tool_call_chunks"):
                update["tool_call_chunks"] = []
        return value.model_copy(update=update), out

    def apply(self, value: Any, context: str = "") -> Any:
        """Check ``value`` (a string or a message) and return it, or its blocked/rewritten/flagged form."""
        return self.apply_message(value, context)[0]

    # --- inputs -------------------------------------------------------------------------------
    def screen_input(self, value: Any) -> tuple[Any, Screened | None]:
        """Check a chain's input: a string, a message, chat messages or a prompt value (the last human
        message, in the context of the ones before) or a dict of prompt variables (each string).
        Returns the input to use and, when it was blocked, what the guard decided."""
        if isinstance(value, (str, BaseMessage)):
            new, out = self.apply_message(value, checked="input")
            return new, out if out.blocked else None
        if isinstance(value, Mapping):
            updated = dict(value)
            for key, item in value.items():
                if isinstance(item, str) and item.strip():
                    new, out = self.apply_message(item, checked="input")
                    if out.blocked:
                        return value, out
                    updated[key] = new
            return updated, None
        messages = value.to_messages() if isinstance(value, PromptValue) else convert_to_messages(value)
        humans = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
        if not humans:
            return value, None
        i = humans[-1]
        context = transcript(messages_from_langchain(messages[:i])[0])
        new, out = self.apply_message(messages[i], context, checked="input")
        if out.blocked:
            return value, out
        return (messages[:i] + [new] + messages[i + 1 :]) if new is not messages[i] else value, None

    # --- Runnable -----------------------------------------------------------------------------
    def __or__(self, other: Any) -> Runnable[Any, Any]:
        if self.check_input:
            return RainGuardedRunnable(guard=self, runnable=coerce_to_runnable(other))
        return super().__or__(other)

    def _run(self, value: Any) -> Any:
        if isinstance(value, (str, BaseMessage)):
            return self.apply_message(value, checked="input" if self.check_input else "output")[0]
        if not self.check_input:
            raise TypeError(
                f"RainGuard checks strings and messages, got {type(value).__name__}; "
                "check_input=True also checks chat messages, prompt values and prompt variables"
            )
        new, blocked = self.screen_input(value)
        return new if blocked is None else AIMessage(blocked.text, response_metadata={"rain_guard": blocked.meta})

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._run, input, config, run_type="chain")

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await run_in_executor(config, self.invoke, input, config)

    def _buffered(self, chunks: Iterator[Any]) -> Iterator[Any]:
        """Hold every chunk; release them as they came if the whole text passes, else one checked value."""
        held = list(chunks)
        if not held:
            return
        whole = _join(held)
        checked = self._run(whole)
        if checked is whole:
            yield from held
        else:
            yield checked

    async def _abuffered(self, chunks: AsyncIterator[Any], config: RunnableConfig) -> AsyncIterator[Any]:
        held = [c async for c in chunks]
        if not held:
            return
        whole = _join(held)
        checked = await run_in_executor(config, self._run, whole)
        if checked is whole:
            for c in held:
                yield c
        else:
            yield checked

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self._transform_stream_with_config(input, self._buffered, config, run_type="chain")

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async def buffered(chunks: AsyncIterator[Any], run_manager: Any, config: RunnableConfig) -> AsyncIterator[Any]:
            async for c in self._abuffered(chunks, config):
                yield c

        async for chunk in self._atransform_stream_with_config(input, buffered, config, run_type="chain"):
            yield chunk


def _final_output_type(runnable: Runnable[Any, Any]) -> Any:
    """What a chain returns, looking past guards at its end."""
    while True:
        if isinstance(runnable, RainGuardedRunnable):
            runnable = runnable.runnable
        elif isinstance(runnable, RunnableSequence):
            steps = [s for s in runnable.steps if not isinstance(s, RainGuard)]
            runnable = steps[-1] if steps else runnable.steps[-1]
            if isinstance(runnable, RunnableSequence | RainGuardedRunnable):
                continue
            return runnable.OutputType
        else:
            return runnable.OutputType


class RainGuardedRunnable(_StreamsByTransform, RunnableSerializable[Any, Any]):
    """``guard | runnable`` for a guard with ``check_input=True``: the input is checked first; a
    blocked input returns the guard's ``input_block_message`` (a string when the runnable returns
    strings, else an ``AIMessage`` with the verdict in ``response_metadata["rain_guard"]``) without
    running the runnable; a rewritten input runs in place of the original. Anything piped after
    this joins the guarded runnable."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: RainGuard
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
        new, blocked = self.guard.screen_input(_join(list(inputs)))
        if blocked is not None:
            yield self._blocked(blocked)
            return
        yield from self.runnable.stream(new, patch_config(config, callbacks=run_manager.get_child()))

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self._transform_stream_with_config(input, self._transform, config, run_type="chain")

    async def _atransform(
        self, inputs: AsyncIterator[Any], run_manager: Any, config: RunnableConfig
    ) -> AsyncIterator[Any]:
        new, blocked = await run_in_executor(config, self.guard.screen_input, _join([i async for i in inputs]))
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
