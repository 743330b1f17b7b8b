"""``ChatRain``: a LangChain chat model that decodes with RAIN."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, Field

from rain_core import RainResult

from .._decoding import Commit, Done, Event, Text, adecode_events, arun_events, decode_events, run_events
from .._tools import ToolCallHoldback, tool_names
from .messages import messages_from_langchain
from .params import Commits, RainCall, RainParams
from .structured_output import json_instruction, structured_output
from .tools import parse_reply, tool_call_chunks

__all__ = ["ChatRain"]


@dataclass
class _Request:
    prompt: list[dict[str, Any]]
    chat_kwargs: dict[str, Any]
    call: RainCall
    tools: list[dict[str, Any]] = field(default_factory=list)
    """Tools whose calls are parsed from the reply (none when ``tool_choice="none"``)."""


def _usage(result: RainResult) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


class ChatRain(RainParams, BaseChatModel):
    """A LangChain chat model that decodes with RAIN.

    ```python
    from rain_integrations.langchain import ChatRain

    chat = ChatRain.from_model_id("Qwen/Qwen2.5-7B-Instruct", device_map="auto", max_searches=10)
    chat = ChatRain.from_model_id("meta-llama/Llama-3.1-8B-Instruct", device_map="auto",
                                  guard="meta-llama/Llama-Guard-3-1B")   # a guard model judges the replies
    chat = ChatRain.from_default(max_tokens=64)          # the embedded SmolLM2-135M-Instruct
    chat.invoke("How do I stay safe online?", max_searches=5)   # per-call RAIN overrides
    ```

    Messages of every kind (system, human, AI with tool calls, tool) are rendered through the
    model's chat template; ``bind_tools`` adds tools and parses tool calls from the reply;
    ``with_structured_output`` returns validated objects. RAIN's search statistics are in
    ``response_metadata["rain"]``. Each committed token set sends a ``rain_commit`` custom callback
    event with that commit's statistics (``invoke``, ``batch``, ``generate`` and their async forms);
    in ``stream``/``astream``, where LangChain reports the tokens itself, the same statistics ride on
    the chunks as ``response_metadata["rain_commits"]``. Async calls stop their decode when the caller's
    task is cancelled or the stream is abandoned, and ``timeout`` ends a reply with what is committed
    (``finish_reason == "time"``).

    Streams (``stream``, ``astream``, and chains such as ``prompt | chat | StrOutputParser()``) send
    one chunk per committed token set, as soon as it is committed. The last chunk carries the reply's
    last token set together with what LangChain reads from the final chunk: ``usage_metadata``,
    ``response_metadata`` (``finish_reason``, ``rain``) and ``chunk_position="last"`` (which
    completes streamed tool calls). So a stream does not end with an empty chunk, except when the
    decode ended with no text left to send: an empty reply, or a deadline (``timeout``) that passed
    before the search could commit again. Then the last chunk is empty and carries the metadata.

    Example, on the embedded model with tiny budgets and an evaluator that likes every reply:

    >>> from rain_integrations.langchain import ChatRain
    >>> small = dict(max_searches=2, extra_searches=1, num_candidates=3, max_simulation_tokens=4)
    >>> chat = ChatRain.from_default(evaluator=lambda prompt, reply: 1.0, encoder=None, max_tokens=8, **small)
    >>> chunks = list(chat.stream("Name a fruit."))
    >>> last = chunks[-1]  # the last token set, with the usage and RAIN's statistics
    >>> last.chunk_position, bool(last.content), "rain" in last.response_metadata, bool(last.usage_metadata)
    ('last', True, True, True)
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for the model's chat template."""
    streaming: bool = False
    """Send ``invoke`` through the streaming path, so callbacks receive each committed token set."""

    # --- LangChain plumbing -------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "rain-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._identifying()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_model_type="chat", **self._ls_common(stop, kwargs))  # type: ignore[typeddict-item]

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: they go into the chat template (or the system message when the template has
        no tool support) and tool calls are parsed from the reply (with the model's own response
        parser where its engine has one).

        ``tool_choice``: ``"auto"``/``None``, ``"none"`` (tools hidden), ``"any"``/``"required"``/
        ``True`` (the model is told it must call a tool) or a tool name. A small model may still
        answer in text: the choice is an instruction, not a constraint on decoding.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        names = tool_names(formatted)
        if isinstance(tool_choice, dict):
            tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if (
            isinstance(tool_choice, str)
            and tool_choice not in ("auto", "none", "any", "required")
            and tool_choice not in names
        ):
            raise ValueError(f"tool_choice {tool_choice!r} names no bound tool; bound tools: {names}")
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """A runnable that returns the reply as a validated object of ``schema`` (a pydantic class,
        a ``TypedDict``, a JSON schema or an OpenAI tool schema: pydantic gives an instance, the
        others a dict).

        ``method``: ``"json_schema"`` (default: the schema goes into the prompt and the reply must be
        a JSON object that follows it), ``"function_calling"`` (the schema is bound as a tool the
        model must call) or ``"json_mode"`` (a JSON object; the schema, if any, is described and
        checked). A reply that does not parse or validate raises ``OutputParserException`` naming
        the reply; with ``include_raw=True`` the result is ``{"raw", "parsed", "parsing_error"}``
        instead. Decoding is not constrained: a model must be able to write JSON (see README)."""
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        return structured_output(self, schema, method=method, include_raw=include_raw)

    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
        return {"model_name": self.model_name}

    # --- translation --------------------------------------------------------------------------
    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Request:
        kwargs = dict(kwargs)
        tools = kwargs.pop("tools", None) or []
        tool_choice = kwargs.pop("tool_choice", None)
        response_format = kwargs.pop("response_format", None)
        extra_template_kwargs = kwargs.pop("chat_template_kwargs", None) or {}
        kwargs.pop("ls_structured_output_format", None)
        prompt, chat_kwargs = messages_from_langchain(
            messages, tools=tools, tool_choice=tool_choice, support=self.decoder.template_support
        )
        if response_format is not None:
            instruction = json_instruction(response_format)
            if prompt and prompt[0]["role"] == "system":
                prompt[0] = {**prompt[0], "content": f"{prompt[0]['content']}\n\n{instruction}".strip()}
            else:
                prompt.insert(0, {"role": "system", "content": instruction})
        chat_kwargs = {**self.chat_template_kwargs, **extra_template_kwargs, **chat_kwargs}
        parsed_tools = tools if tool_choice != "none" else []
        return _Request(prompt, chat_kwargs, self.call_options(stop, **kwargs), parsed_tools)

    def _message(self, result: RainResult, request: _Request) -> AIMessage:
        content, calls, invalid = result.text, [], []
        if request.tools:
            content, calls, invalid = parse_reply(
                self.decoder.lm,
                result.text,
                request.tools,
                prefix=lambda: self.decoder.chat_prompt(request.prompt, **request.chat_kwargs),
            )
        return AIMessage(
            content=content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            usage_metadata=_usage(result),
            response_metadata=self._metadata(result, request.call),
        )

    def _metadata(self, result: RainResult, call: RainCall) -> dict[str, Any]:
        return {"model_name": self.model_name, **self._info(result, call)}

    def _decode_kwargs(self, request: _Request) -> dict[str, Any]:
        return {"chat": True, "chat_kwargs": request.chat_kwargs, **request.call.decode_kwargs()}

    def _chunk(self, request: _Request, event: Event, holdback: ToolCallHoldback) -> ChatGenerationChunk | None:
        """A text event as a chunk of what may be shown (call syntax held back while tools are bound),
        the end as the last chunk: the last text, the usage, the metadata and any tool calls."""
        if isinstance(event, Text):
            new = holdback.release(event.text)
            return ChatGenerationChunk(message=AIMessageChunk(content=new)) if new else None
        if not isinstance(event, Done):
            return None
        final = self._message(event.result, request)
        rest = holdback.last(event.text, final.text, bool(final.tool_calls or final.invalid_tool_calls))
        message = AIMessageChunk(
            content=rest,
            tool_call_chunks=tool_call_chunks(final.tool_calls, final.invalid_tool_calls),
            usage_metadata=final.usage_metadata,
            response_metadata=final.response_metadata,
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message, generation_info=self._info(event.result, request.call))

    # --- the four paths -----------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        on_commit = Commits(run_manager).send
        events = decode_events(self.decoder, request.prompt, on_commit=on_commit, **self._decode_kwargs(request))
        return self._chat_result(run_events(events), request)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        events = adecode_events(self.decoder, request.prompt, **self._decode_kwargs(request))
        return self._chat_result(await arun_events(events, Commits(run_manager).asend), request)

    def _chat_result(self, result: RainResult, request: _Request) -> ChatResult:
        message = self._message(result, request)
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=self._info(result, request.call))],
            llm_output={"model_name": self.model_name},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        commits, holdback = Commits(run_manager), ToolCallHoldback(bool(request.tools))
        events = decode_events(self.decoder, request.prompt, **self._decode_kwargs(request))
        with contextlib.closing(events):  # a consumer that stops early stops the decode now
            for event in events:
                if isinstance(event, Commit):
                    commits.send(event.data)
                elif chunk := self._chunk(request, event, holdback):
                    if run_manager:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield commits.on(chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        commits, holdback = Commits(run_manager), ToolCallHoldback(bool(request.tools))
        events = adecode_events(self.decoder, request.prompt, **self._decode_kwargs(request))
        async with contextlib.aclosing(events):  # a consumer that stops early stops the decode now
            async for event in events:
                if isinstance(event, Commit):
                    await commits.asend(event.data)
                elif chunk := self._chunk(request, event, holdback):
                    if run_manager:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield commits.on(chunk)
