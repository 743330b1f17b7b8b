"""Agent middleware for ``langchain.agents.create_agent``: RAIN guards on both sides of the model.

Needs the ``langchain`` package (``pip install "rain-align[agents]"``); the rest of
``rain_integrations.langchain`` needs only ``langchain-core``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .._extras import missing

try:
    from langchain.agents.middleware import AgentMiddleware, hook_config
except ImportError as exc:  # pragma: no cover - depends on the environment
    needs = "RainGuardMiddleware and RainToolGuard need the `langchain` package (create_agent's middleware)"
    raise missing(needs, "agents", "pip install langchain") from exc
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.tool import tool_call
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import BaseTool

from rain_core import Decoder
from rain_core.chat import transcript

from .guards import GuardStrategy, RainGuard
from .messages import messages_from_langchain

logger = logging.getLogger(__name__)

__all__ = ["RainGuardMiddleware", "RainToolGuard"]


def _messages(state: Any) -> list[BaseMessage]:
    messages = state.get("messages", []) if hasattr(state, "get") else getattr(state, "messages", [])
    return list(messages or [])


def _context(messages: Sequence[BaseMessage]) -> str:
    """The conversation as the evaluator's ``Role: content`` lines."""
    return transcript(messages_from_langchain(messages)[0]) if messages else ""


class RainGuardMiddleware(AgentMiddleware):
    """RAIN guards around an agent's model and tools.

    ```python
    from langchain.agents import create_agent
    agent = create_agent(chat, tools=[search], middleware=[
        RainGuardMiddleware(decoder, strategy="block", apply_to_tool_results=True)])
    ```

    ``apply_to_input``: a new user message is checked before the model runs (``before_model``), as a
    request (a ``GuardEvaluator`` is asked ``score_request``). A blocked one ends the run at once with
    an ``AIMessage`` saying so to the user (the model is not called); a rewritten one replaces the
    user's message; a flagged one carries the verdict.
    ``apply_to_output``: the model's reply (its text) is checked after it (``after_model``). A
    blocked reply is replaced (tool calls dropped) and the run ends; a rewritten reply replaces it
    (tool calls dropped); a flagged one carries the verdict.
    ``apply_to_tool_results``: every tool result is checked before the model sees it
    (``wrap_tool_call``; ``tools`` limits this to some tools): blocked results become a
    ``ToolMessage`` with status error and the same ``tool_call_id``.

    Verdicts of failing texts are in the message's ``response_metadata["rain_guard"]`` (with
    ``checked``: "input", "output" or "tool_result"); passing texts are left untouched, unless the
    evaluator has scored ``same_score_alert`` texts in a row the same (then the run is recorded on
    every checked message, ``identical_scores``). An evaluator that passes everything leaves no
    metadata by itself: a guard on the embedded model's self-evaluation (which scores every text 0,
    and 0 passes the default threshold) warns when built. ``raise_on_violation=True`` raises
    ``RainGuardViolation`` instead. Other options are ``RainGuard``'s (``threshold``,
    ``block_message``, ``tool_block_message``, ``same_score_alert``, ``rewrite_options``, ...).

    With a guard model as the evaluator (docs/guards.md):

    ```python
    from rain_core import load_guard
    guard = RainGuardMiddleware(evaluator=load_guard("meta-llama/Llama-Guard-3-1B"), apply_to_tool_results=True)
    ```
    """

    def __init__(
        self,
        decoder: Decoder | None = None,
        *,
        evaluator: Any = None,
        threshold: float = 0.0,
        strategy: GuardStrategy | str = GuardStrategy.BLOCK,
        apply_to_input: bool = True,
        apply_to_output: bool = True,
        apply_to_tool_results: bool = False,
        tools: Sequence[str | BaseTool] | None = None,
        raise_on_violation: bool = False,
        **guard_options: Any,
    ) -> None:
        super().__init__()
        self.guard = RainGuard(
            decoder=decoder,
            evaluator=evaluator,
            threshold=threshold,
            strategy=strategy,
            raise_on_violation=raise_on_violation,
            **guard_options,
        )
        self.apply_to_input = apply_to_input
        self.apply_to_output = apply_to_output
        self.apply_to_tool_results = apply_to_tool_results
        self.guarded_tools = None if tools is None else frozenset(t if isinstance(t, str) else t.name for t in tools)

    # --- input: before the model --------------------------------------------------------------
    def _screen_input(self, state: Any) -> dict[str, Any] | None:
        if not self.apply_to_input:
            return None
        messages = _messages(state)
        # only a new user turn: later model calls of the same run see tool results last
        if not messages or not isinstance(messages[-1], HumanMessage) or "rain_guard" in messages[-1].response_metadata:
            return None
        checked, out = self.guard.apply_message(messages[-1], _context(messages[:-1]), checked="input")
        if out.meta is None:
            return None
        if not out.blocked:
            return {"messages": [checked]}
        refusal = AIMessage(out.text, response_metadata={"rain_guard": out.meta})
        flagged = messages[-1].model_copy(
            update={"response_metadata": {**messages[-1].response_metadata, "rain_guard": out.meta}}
        )
        return {"messages": [flagged, refusal], "jump_to": "end"}

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return self._screen_input(state)

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return await run_in_executor(None, self._screen_input, state)

    # --- output: after the model --------------------------------------------------------------
    def _screen_output(self, state: Any) -> dict[str, Any] | None:
        if not self.apply_to_output:
            return None
        messages = _messages(state)
        if not messages or not isinstance(messages[-1], AIMessage) or "rain_guard" in messages[-1].response_metadata:
            return None
        reply = messages[-1]
        if not (reply.text or "").strip():
            return None  # only tool calls: nothing to read yet
        checked, out = self.guard.apply_message(reply, _context(messages[:-1]), checked="output")
        if out.meta is None:
            return None
        update: dict[str, Any] = {"messages": [checked]}
        if out.blocked:
            update["jump_to"] = "end"
        return update

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return self._screen_output(state)

    @hook_config(can_jump_to=["end"])
    async def aafter_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return await run_in_executor(None, self._screen_output, state)

    # --- tool results -------------------------------------------------------------------------
    def _applies(self, request: Any, result: Any) -> bool:
        name = request.tool_call.get("name")
        return (
            self.apply_to_tool_results
            and isinstance(result, ToolMessage)
            and (self.guarded_tools is None or name in self.guarded_tools)
        )

    @staticmethod
    def _tool_context(request: Any) -> str:
        """The last user turn and the tool call, as the evaluator's ``Role: content`` lines."""
        users = [m for m in _messages(request.state) if isinstance(m, HumanMessage)]
        call = request.tool_call
        turn = [
            AIMessage("", tool_calls=[tool_call(name=call["name"], args=call.get("args") or {}, id=call.get("id"))])
        ]
        return _context(users[-1:] + turn)

    def _screen_tool(self, request: Any, result: Any) -> Any:
        if not self._applies(request, result):
            return result
        return self.guard.apply_message(result, self._tool_context(request), checked="tool_result")[0]

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return self._screen_tool(request, handler(request))

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        result = await handler(request)
        if not self._applies(request, result):
            return result
        return await run_in_executor(None, self._screen_tool, request, result)


class RainToolGuard(RainGuardMiddleware):
    """``RainGuardMiddleware`` that checks tool results only (``apply_to_tool_results=True``; input and
    output off unless switched on)::

        agent = create_agent(chat, tools=[search], middleware=[RainToolGuard(decoder, strategy="block")])
    """

    def __init__(
        self,
        decoder: Decoder | None = None,
        *,
        apply_to_input: bool = False,
        apply_to_output: bool = False,
        apply_to_tool_results: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(
            decoder,
            apply_to_input=apply_to_input,
            apply_to_output=apply_to_output,
            apply_to_tool_results=apply_to_tool_results,
            **options,
        )
