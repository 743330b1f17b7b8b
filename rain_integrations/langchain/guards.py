"""Guards as LCEL runnables: ``RainGuard`` scores a text with a RAIN evaluator and blocks, rewrites or
flags it when it scores below a threshold; ``RainGuardedRunnable`` is ``guard | chain`` for an
input guard. (What a guard decides and says is in ``guard_verdicts``.)

``RainGuard`` is an LCEL runnable (traced as a chain). At the end of a chain it checks the answer;
with ``check_input=True`` at the front it checks the input before the rest of the chain runs::

    guarded = RainGuard(evaluator=..., check_input=True) | prompt | chat | RainGuard(evaluator=...)

It streams: the chunks of an answer are held until the whole answer has passed, then released
as they came; an answer that fails is replaced by one chunk (blocked, rewritten or flagged).
The agent middleware (``RainGuardMiddleware``) uses the same checks.

A guard is only as good as its evaluator. A guard model (``rain_core.GuardEvaluator``: Llama Guard,
ShieldGemma, ...) judges a request as a request (``score_request``) and a reply or tool result as
what the assistant says. A guard built on an evaluator known to give no signal (the embedded
SmolLM2-135M-Instruct judging itself) warns when it is built (``GuardSignalWarning`` and a log
warning), and a run of identical scores is reported: in the verdict (``identical_scores``), in the
metadata of the texts it checks once the run reaches ``same_score_alert``, and in one warning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
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
    RunnableSerializable,
)
from langchain_core.runnables.base import coerce_to_runnable
from langchain_core.runnables.config import get_config_list, run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from rain_core import CallableEvaluator, Decoder, Evaluator, RainResult
from rain_core.chat import transcript
from rain_core.protocols import BatchEvaluator

from .._decoding import stats_of
from .guard_verdicts import (
    DEFAULT_BLOCK_MESSAGE,
    DEFAULT_INPUT_BLOCK_MESSAGE,
    DEFAULT_REWRITE_INSTRUCTION,
    DEFAULT_TOOL_BLOCK_MESSAGE,
    GuardSignalWarning,
    GuardStrategy,
    GuardVerdict,
    RainGuardViolation,
    ScoreRun,
    Screened,
    no_signal_warning,
    same_score_warning,
    same_scores_message,
    warn_no_signal,
)
from .guarded import GuardStep, RainGuardedRunnable, join_chunks
from .messages import messages_from_langchain, text_of

logger = logging.getLogger(__name__)

# the verdict's types stay importable from here, where the API reference documents them
__all__ = [
    "GuardSignalWarning",
    "GuardStrategy",
    "GuardVerdict",
    "RainGuard",
    "RainGuardViolation",
    "RainGuardedRunnable",
]


class RainGuard(GuardStep, RunnableSerializable[Any, Any]):
    """Score text with a RAIN evaluator and act when it falls below ``threshold``.

    Input and output: a string or a message (``AIMessage``, ``ToolMessage``, ...), returned as the
    same type; with ``check_input=True`` also chat messages, a prompt value or a dict of prompt
    variables (each string checked). A passing value comes back untouched. At the end of a chain::

        chain = prompt | chat | RainGuard(decoder=decoder, strategy="rewrite")

    At the front with ``check_input=True`` (``guard | chain`` wraps the chain: a blocked input
    returns the block message without running it). The context the evaluator sees is the
    conversation before the checked text (empty for a single string). An input is a user's request:
    an evaluator with ``score_request`` (``rain_core.GuardEvaluator``) judges it as one; answers and
    tool results are judged as what the assistant says (``score(context, text)``).

    What replaces blocked text is written for the end user (``block_message``,
    ``input_block_message``, ``tool_block_message``); the score, threshold and evaluator are in
    ``response_metadata["rain_guard"]``. A guard whose evaluator is known to give no signal warns
    when built (``GuardSignalWarning``), and ``same_score_alert`` reports a run of identical scores.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    decoder: Decoder | None = None
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
    """What the reader sees in place of a blocked answer: written for the end user (the score and the
    evaluator are in the metadata); may use ``{score}``, ``{threshold}`` and ``{evaluator}``."""
    input_block_message: str = DEFAULT_INPUT_BLOCK_MESSAGE
    """The answer to a blocked input (same placeholders)."""
    tool_block_message: str = DEFAULT_TOOL_BLOCK_MESSAGE
    """What replaces a blocked tool result, which the model reads next (same placeholders)."""
    rewrite_instruction: str = DEFAULT_REWRITE_INSTRUCTION
    """System instruction for the rewrite decode."""
    rewrite_options: dict[str, Any] = Field(default_factory=dict)
    """``RainConfig`` overrides for the rewrite decode, e.g. ``{"max_new_tokens": 64}``."""
    same_score_alert: int = Field(5, ge=0)
    """After this many identical scores in a row, warn once (log and ``GuardSignalWarning``) and record
    the run in the metadata of every text checked while it lasts, passing ones included
    (``rain_guard["identical_scores"]``, ``rain_guard["warning"]``); 0 switches this off. A scorer with
    few values (+1/-1) repeats on similar traffic by design: the warning says what to check."""

    _runs: ScoreRun = PrivateAttr(default_factory=ScoreRun)

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
        message = no_signal_warning(self.scorer, self.threshold)
        if message is not None:
            warn_no_signal(message)
        return self

    @property
    def scorer(self) -> Evaluator:
        return self.evaluator if self.evaluator is not None else self.decoder.evaluator  # type: ignore[union-attr]

    # --- the check ----------------------------------------------------------------------------
    def _same_as_before(self, score: float) -> int:
        """Count ``score`` in the run of identical scores (warning once when it reaches
        ``same_score_alert``); its length, this score included."""
        length = self._runs.count(score)
        if self.same_score_alert and length == self.same_score_alert:
            warn_no_signal(same_scores_message(self.scorer_name, length, score, score >= self.threshold))
        return length

    @property
    def scorer_name(self) -> str:
        return str(getattr(self.scorer, "name", "evaluator"))

    def _verdict(self, score: float) -> GuardVerdict:
        return GuardVerdict(
            score=score,
            threshold=self.threshold,
            passed=score >= self.threshold,
            evaluator=self.scorer_name,
            strategy=self.strategy,
            identical_scores=self._same_as_before(score),
        )

    def check(self, text: str, context: str = "", *, checked: str = "output") -> GuardVerdict:
        """Score ``text`` (with ``context``, the conversation before it as ``Role: content`` lines).

        ``checked="input"``: ``text`` is a user's request; an evaluator that judges requests as such
        (``score_request(context, request)``, as ``GuardEvaluator`` does) is asked that way, any other
        is asked ``score(context, text)``."""
        scorer = self.scorer
        score_request = getattr(scorer, "score_request", None) if checked == "input" else None
        return self._verdict(
            float(score_request(context, text) if callable(score_request) else scorer.score(context, text))
        )

    def check_many(
        self, texts: Sequence[str], context: str | Sequence[str] = "", *, checked: str = "output"
    ) -> list[GuardVerdict]:
        """``check`` for many texts in one evaluator call where the evaluator batches (one forward pass
        of a guard model): requests (``checked="input"``) with ``score_request_batch`` (as
        ``GuardEvaluator`` does), texts after one shared context with ``score_batch``; others one by
        one. ``context``: the conversation before all of them, or one per text."""
        contexts = [context] * len(texts) if isinstance(context, str) else list(context)
        if len(contexts) != len(texts):
            raise ValueError(f"give one context or one per text: got {len(contexts)} contexts for {len(texts)} texts")
        if not texts:
            return []
        scorer = self.scorer
        requests = getattr(scorer, "score_request_batch", None) if checked == "input" else None
        if callable(requests):
            scores = requests(contexts, list(texts))
        elif (
            (checked != "input" or not hasattr(scorer, "score_request"))
            and len(set(contexts)) == 1
            and isinstance(scorer, BatchEvaluator)
        ):
            scores = scorer.score_batch(contexts[0], list(texts))
        else:
            return [self.check(t, c, checked=checked) for t, c in zip(texts, contexts)]
        return [self._verdict(float(s)) for s in scores]

    def rewrite(self, text: str) -> RainResult:
        """A harmless restatement of ``text``, decoded with RAIN."""
        assert self.decoder is not None
        prompt, chat_kwargs = messages_from_langchain(
            [SystemMessage(self.rewrite_instruction), HumanMessage(f"Text to restate:\n{text}")],
            support=self.decoder.template_support,
        )
        return self.decoder.generate(prompt, chat=True, chat_kwargs=chat_kwargs, **self.rewrite_options)

    def screen(
        self, text: str, context: str = "", *, checked: str = "output", verdict: GuardVerdict | None = None
    ) -> Screened:
        """Check ``text`` (or take its ``verdict``, from ``check_many``) and apply the strategy: what to
        use instead, and the verdict's metadata (``checked``: "input", "output" or "tool_result",
        recorded in it)."""
        if verdict is None:
            verdict = self.check(text, context, checked=checked)
        if verdict.passed:
            if self.same_score_alert and verdict.identical_scores >= self.same_score_alert:
                return Screened(
                    text, False, {**verdict.metadata(), "checked": checked, "warning": same_score_warning(verdict)}
                )
            return Screened(text, False, None)
        if self.raise_on_violation:
            raise RainGuardViolation(verdict, text, checked)
        meta = {**verdict.metadata(), "checked": checked}
        if self.same_score_alert and verdict.identical_scores >= self.same_score_alert:
            meta["warning"] = same_score_warning(verdict)
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
            again = self.check(new_text, context, checked=checked)
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
        template = {"input": self.input_block_message, "tool_result": self.tool_block_message}.get(
            checked, self.block_message
        )
        return Screened(
            template.format(score=verdict.score, threshold=verdict.threshold, evaluator=verdict.evaluator), True, meta
        )

    def apply_message(
        self, value: Any, context: str = "", *, checked: str = "output", verdict: GuardVerdict | None = None
    ) -> tuple[Any, Screened]:
        """Check a string or message (or take its ``verdict``); the value to use instead (same type, the
        verdict in ``response_metadata["rain_guard"]``) and what the guard decided."""
        if isinstance(value, BaseMessage):
            text = text_of(value.content, value.type)
        elif isinstance(value, str):
            text = value
        else:
            raise TypeError(f"RainGuard checks strings and messages, got {type(value).__name__}")
        if isinstance(value, ToolMessage) and checked == "output":
            checked = "tool_result"
        out = self.screen(text, context, checked=checked, verdict=verdict)
        if out.meta is None:
            return value, out
        failed = out.meta["verdict"] == "fail"
        if isinstance(value, str):
            if failed and self.strategy is GuardStrategy.FLAG:
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
        if isinstance(value, AIMessage) and failed and self.strategy is not GuardStrategy.FLAG:
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
            keys = [key for key, item in value.items() if isinstance(item, str) and item.strip()]
            for key, verdict in zip(keys, self.check_many([value[k] for k in keys], checked="input")):
                new, out = self.apply_message(value[key], checked="input", verdict=verdict)
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

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Check many strings or messages with one evaluator call (``check_many``: a guard model judges
        them in one forward pass), then handle each as ``invoke`` would (traced one by one). Other
        inputs (chat messages, prompt values or variables) are checked one at a time."""
        if not inputs or not all(isinstance(v, (str, BaseMessage)) for v in inputs):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        checked = "input" if self.check_input else "output"
        texts = [v if isinstance(v, str) else text_of(v.content, v.type) for v in inputs]
        verdicts = self.check_many(texts, checked=checked)
        out: list[Any] = []
        for value, verdict, cfg in zip(inputs, verdicts, get_config_list(config, len(inputs))):
            run = functools.partial(self._run_checked, checked=checked, verdict=verdict)
            try:
                out.append(self._call_with_config(run, value, cfg, run_type="chain"))
            except Exception as exc:
                if not return_exceptions:
                    raise
                out.append(exc)
        return out

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        batch = functools.partial(self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs)
        return await run_in_executor(None, batch)

    def _run_checked(self, value: Any, *, checked: str, verdict: GuardVerdict) -> Any:
        return self.apply_message(value, checked=checked, verdict=verdict)[0]

    def _buffered(self, chunks: Iterator[Any]) -> Iterator[Any]:
        """Hold every chunk; release them as they came if the whole text passes, else one checked value."""
        held = list(chunks)
        if not held:
            return
        whole = join_chunks(held)
        checked = self._run(whole)
        if checked is whole:
            yield from held
        else:
            yield checked

    async def _abuffered(self, chunks: AsyncIterator[Any], config: RunnableConfig) -> AsyncIterator[Any]:
        held = [c async for c in chunks]
        if not held:
            return
        whole = join_chunks(held)
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
