"""``RainLlamaIndexLLM``: a LlamaIndex function-calling LLM that decodes with RAIN."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from typing import Any, TypeVar, Union

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from pydantic import Field, model_validator

from rain_core import Decoder, LanguageModel, RainConfig, RainResult

from .._build import RainConstructors
from .._decoding import (
    Done,
    Event,
    Text,
    adecode_events,
    arun_events,
    decode_events,
    rain_temperature,
    run_events,
    stats_of,
    usage_of,
)
from .._tools import ToolCallHoldback, parse_reply, render_tools
from ..options import DecoderOptions, LoadOptions, constructor
from .events import DecodeReport, current_span_id
from .messages import messages_from_llamaindex

__all__ = ["RainLlamaIndexLLM"]

Prompt = Union[str, Sequence[ChatMessage]]  # noqa: UP007 (a runtime alias)
R = TypeVar("R")
Respond = Callable[[Event], list[R]]


@dataclasses.dataclass
class _Request:
    prompt: Any
    chat: bool
    chat_kwargs: dict[str, Any]
    options: dict[str, Any]
    tools: list[dict[str, Any]]
    cancel: Any = None


def _openai_calls(calls: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutral tool calls as OpenAI-style dicts in ``additional_kwargs["tool_calls"]``."""
    return [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)},
        }
        for c in calls
    ]


def _responses(events: Generator[Event, None, None], respond: Respond[R]) -> Generator[R, None, None]:
    with contextlib.closing(events):
        for event in events:
            yield from respond(event)


async def _aresponses(events: AsyncGenerator[Event, None], respond: Respond[R]) -> AsyncGenerator[R, None]:
    async with contextlib.aclosing(events):
        async for event in events:
            for response in respond(event):
                yield response


class RainLlamaIndexLLM(FunctionCallingLLM, RainConstructors):
    """A LlamaIndex LLM that decodes with RAIN: ``complete``, ``chat``, their streaming and async
    variants, and tool calling (``chat_with_tools``, ``FunctionAgent``). Usable as ``Settings.llm``
    or as the ``llm=`` of query and chat engines.

    Build it with ``RainLlamaIndexLLM.from_model_name("Qwen/Qwen2.5-7B-Instruct", device_map="auto")``
    (``guard="meta-llama/Llama-Guard-3-1B"`` to have a guard model judge the replies),
    ``from_engine(lm)`` (any ready ``LanguageModel``), ``from_default()`` (the embedded
    SmolLM2-135M-Instruct, offline) or ``RainLlamaIndexLLM(decoder)``. Keyword arguments of
    ``complete``/``chat`` and friends are ``RainConfig`` overrides for that call (``max_new_tokens=32``,
    ``seed=1``, ...). Async calls stop their decode when the caller's task is cancelled or the stream
    is abandoned. Each decode dispatches ``RainSearchStartEvent``, ``RainCommitEvent`` and
    ``RainSearchEndEvent`` instrumentation events.

    Streams (``stream_complete``, ``stream_chat`` and their async forms) yield one response per
    committed token set, as soon as it is committed; the last one carries the reply's last token set
    as its ``delta`` together with the token counts and RAIN statistics (``raw``,
    ``additional_kwargs``), so a stream does not end with an empty delta, except when the decode
    ended with no text left to send (an empty reply, or a ``max_seconds`` deadline that passed before
    the search could commit again): then the last response has an empty delta and the statistics.

    Example, on the embedded model with tiny budgets and an evaluator that likes every reply:

    >>> from rain_integrations.llamaindex import RainLlamaIndexLLM
    >>> small = dict(max_searches=2, extra_searches=1, num_candidates=3, max_simulation_tokens=4)
    >>> llm = RainLlamaIndexLLM.from_default(lambda prompt, reply: 1.0, encoder=None, max_new_tokens=8, **small)
    >>> responses = list(llm.stream_complete("Name a fruit."))
    >>> "".join(r.delta for r in responses) == responses[-1].text, "rain_stats" in responses[-1].additional_kwargs
    (True, True)
    """

    decoder: Decoder = Field(
        exclude=True, description="The decoder every call delegates to: a RainDecoder, or any Decoder (a baseline)."
    )
    context_window: int | None = Field(
        default=None,
        gt=1,
        description="Prompt plus answer token cap, passed to RAIN as max_length; LlamaIndex packs "
        "retrieved context up to it. Default: the model's real context window.",
    )
    chat_template: bool = Field(
        default=True,
        description="Render prompts with the model's chat template (completions as one user turn). "
        "False sends text as-is: completion_to_prompt / messages_to_prompt apply, as for any "
        "LlamaIndex completion model (and tools are not offered).",
    )
    plain: bool = Field(
        default=False,
        description="Decode without the search (plain sampling with the same model, limits and seed): "
        "the baseline to compare RAIN against.",
    )
    return_trace: bool = Field(
        default=False,
        description="Put the decode's trace (RainResult.trace, docs/integrations.md) in "
        "additional_kwargs['rain_trace'].",
    )

    def __init__(self, decoder: Decoder | None = None, **kwargs: Any) -> None:
        if decoder is None and "decoder" not in kwargs:
            raise TypeError(
                "RainLlamaIndexLLM needs a decoder: RainLlamaIndexLLM(RainDecoder(lm, ...)) or a baseline, "
                "or use RainLlamaIndexLLM.from_model_name(...) / .from_default()"
            )
        if decoder is not None:
            kwargs["decoder"] = decoder
        super().__init__(**kwargs)

    @model_validator(mode="after")
    def _fill_context_window(self) -> RainLlamaIndexLLM:
        if self.context_window is None:
            self.context_window = int(self.decoder.lm.context_length)
        return self

    # --- constructors: one body (RainConstructors), signatures and docs from rain_integrations.options
    @classmethod
    def check_config(cls, fields: dict[str, Any], config: RainConfig) -> None:
        """``context_window`` as RAIN's ``max_length``, over the decoder's ``config``."""
        if fields.get("context_window") is not None:
            config.merged(max_length=fields["context_window"])

    @classmethod
    @constructor(LoadOptions)
    def from_model_name(
        cls, model_name: str, *, llm_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> RainLlamaIndexLLM:
        """Load ``model_name`` (a local folder or a hub id in the local cache) and decode with RAIN on it:
        ``RainLlamaIndexLLM.from_model_name("Qwen/Qwen2.5-7B-Instruct", device_map="auto",
        guard="meta-llama/Llama-Guard-3-1B")``.

        ``kwargs``: the options below (``rain_integrations.options.LoadOptions``), fields of this class
        (``context_window``, ``system_prompt``, ...; or all of them as ``llm_kwargs``) and
        ``RainConfig`` fields (``max_searches``, ...). Every option is checked before any weights load."""
        return cls._from_options(model_name, kwargs, LoadOptions, llm_kwargs)

    @classmethod
    @constructor(DecoderOptions)
    def from_engine(
        cls, lm: LanguageModel, *, llm_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> RainLlamaIndexLLM:
        """RAIN on a ready ``LanguageModel`` (a loaded model, a served one, your own); ``kwargs``: the
        options below (``rain_integrations.options.DecoderOptions``), fields of this class and
        ``RainConfig`` fields."""
        return cls._from_options(lm, kwargs, DecoderOptions, llm_kwargs)

    @classmethod
    @constructor(DecoderOptions)
    def from_default(
        cls, evaluator: Any = None, *, llm_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> RainLlamaIndexLLM:
        """RAIN on the embedded SmolLM2-135M-Instruct (loaded once per process, offline, shared with
        the LangChain adapter); ``evaluator`` and ``kwargs`` as in ``from_engine``, checked before the
        model loads."""
        options = kwargs if evaluator is None else {**kwargs, "evaluator": evaluator}
        return cls._from_options(None, options, DecoderOptions, llm_kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "RainLlamaIndexLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.decoder.config.max_new_tokens,
            is_chat_model=self.chat_template,
            is_function_calling_model=self.chat_template,
            model_name=self.decoder.model_name,
        )

    # --- the one prompt builder -------------------------------------------------------------------
    def _request(self, prompt: Prompt, formatted: bool, kwargs: dict[str, Any]) -> _Request:
        """What ``RainDecoder`` receives for a completion (``str``) or a chat (messages), with tools
        and this call's options. Every public method builds its request here."""
        kwargs = dict(kwargs)
        tools = list(kwargs.pop("tools", None) or [])
        tool_choice = kwargs.pop("tool_choice", None)
        cancel = kwargs.pop("cancel", None)
        keep_trees = bool(kwargs.pop("keep_trees", False))
        config = kwargs.pop("rain_config", None)
        if isinstance(tool_choice, dict):
            tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if tools and not self.chat_template:
            raise ValueError("tools need the chat template (chat_template=True)")
        chat_kwargs: dict[str, Any] = {}
        if isinstance(prompt, str) and not self.chat_template:
            rain_prompt: Any = prompt if formatted else self._extend_prompt(self.completion_to_prompt(prompt))
        elif not self.chat_template:
            rain_prompt = self.messages_to_prompt(self._extend_messages(list(prompt)))
        else:
            if isinstance(prompt, str):
                system = None if formatted else self.system_prompt
                neutral = messages_from_llamaindex([ChatMessage(role=MessageRole.USER, content=prompt)], system)
            else:
                neutral = messages_from_llamaindex(prompt, self.system_prompt)
            rain_prompt, chat_kwargs = render_tools(
                neutral, tools=tools, tool_choice=tool_choice, support=self.decoder.template_support
            )
        if "temperature" in kwargs:
            kwargs["temperature"] = rain_temperature(kwargs["temperature"])
        options = {"max_length": self.context_window, **kwargs}
        self.decoder.resolve_config(
            config, **options
        )  # checked now: a stream fails at the call, not at its first chunk
        if config is not None:
            options["config"] = config
        if keep_trees and not self.plain:
            options["keep_trees"] = True
        parsed_tools = tools if tool_choice != "none" else []
        return _Request(rain_prompt, self.chat_template, chat_kwargs, options, parsed_tools, cancel)

    def _events(self, request: _Request, span_id: str | None = None) -> Generator[Event, None, None]:
        report = self._report(request, span_id)
        events = decode_events(self.decoder, request.prompt, plain=self.plain, **self._decode_kwargs(request))
        with contextlib.closing(events):  # leaving the stream stops the decode
            for event in events:
                yield report(event)

    async def _aevents(self, request: _Request, span_id: str | None = None) -> AsyncGenerator[Event, None]:
        report = self._report(request, span_id)
        events = adecode_events(self.decoder, request.prompt, plain=self.plain, **self._decode_kwargs(request))
        async with contextlib.aclosing(events):  # leaving the stream stops the decode
            async for event in events:
                yield report(event)

    def _decode_kwargs(self, request: _Request) -> dict[str, Any]:
        extra = {"chat_kwargs": request.chat_kwargs} if request.chat_kwargs else {}
        return {"chat": request.chat, "cancel": request.cancel, **extra, **request.options}

    def _report(self, request: _Request, span_id: str | None) -> DecodeReport:
        overrides = {k: v for k, v in request.options.items() if k not in ("config", "keep_trees")}
        config = self.decoder.resolve_config(request.options.get("config"), **overrides).model_dump(mode="json")
        return DecodeReport(self.decoder.model_name, plain=self.plain, config=config, span_id=span_id)

    # --- results out ------------------------------------------------------------------------------
    def _extras(self, result: RainResult) -> dict[str, Any]:
        """``additional_kwargs`` and ``raw`` of a response: token counts, finish reason, RAIN stats.
        ``raw["usage"]`` is where LlamaIndex's token counter looks."""
        info = {**usage_of(result), "finish_reason": result.finish_reason, "rain_stats": stats_of(result)}
        if self.return_trace:
            info["rain_trace"] = result.trace
        raw = {**dataclasses.asdict(result), "completion_tokens": result.completion_tokens, "usage": usage_of(result)}
        return {"additional_kwargs": info, "raw": raw}

    def _reply(self, result: RainResult, request: _Request) -> tuple[str, list[dict[str, Any]]]:
        """The reply's text and its tool calls (OpenAI style) when tools were offered."""
        if not request.tools:
            return result.text, []
        content, calls, _invalid = parse_reply(
            self.decoder.lm,
            result.text,
            tools=request.tools,
            prefix=lambda: self.decoder.chat_prompt(request.prompt, **request.chat_kwargs),
        )
        return content, _openai_calls(calls)

    def _message(self, content: str, calls: list[dict[str, Any]]) -> ChatMessage:
        extra = {"tool_calls": calls} if calls else {}
        return ChatMessage(role=MessageRole.ASSISTANT, content=content, additional_kwargs=extra)

    def _chat_response(self, request: _Request, result: RainResult) -> ChatResponse:
        content, calls = self._reply(result, request)
        return ChatResponse(message=self._message(content, calls), **self._extras(result))

    def _chat_responses(self, request: _Request) -> Respond[ChatResponse]:
        """A stream's responses to each event: one per committed token set (cumulative ``message``,
        new ``delta``; tool-call syntax held back while tools are offered), the last with the
        statistics and any tool calls."""
        holdback = ToolCallHoldback(bool(request.tools))

        def respond(event: Event) -> list[ChatResponse]:
            if isinstance(event, Text):
                delta = holdback.release(event.text)
                return [ChatResponse(message=self._message(holdback.shown, []), delta=delta)] if delta else []
            if not isinstance(event, Done):
                return []
            content, calls = self._reply(event.result, request)
            delta = holdback.last(event.text, content, bool(calls))
            return [ChatResponse(message=self._message(content, calls), delta=delta, **self._extras(event.result))]

        return respond

    def _completion_responses(self) -> Respond[CompletionResponse]:
        """A stream's responses to each event: the text so far and the new ``delta``, the last with
        the statistics."""
        text = ""

        def respond(event: Event) -> list[CompletionResponse]:
            nonlocal text
            if not isinstance(event, (Text, Done)):
                return []
            text += event.text
            extras = self._extras(event.result) if isinstance(event, Done) else {}
            return [CompletionResponse(text=text, delta=event.text, **extras)]

        return respond

    def _stream(self, request: _Request, respond: Respond[R]) -> Generator[R, None, None]:
        # the events carry the LLM call's span: the stream is read after the call returned
        return _responses(self._events(request, current_span_id()), respond)

    def _astream(self, request: _Request, respond: Respond[R]) -> AsyncGenerator[R, None]:
        return _aresponses(self._aevents(request, current_span_id()), respond)

    # --- LlamaIndex API -----------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result = run_events(self._events(self._request(prompt, formatted, kwargs)))
        return CompletionResponse(text=result.text, **self._extras(result))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream(self._request(prompt, formatted, kwargs), self._completion_responses())

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = self._request(messages, False, kwargs)
        return self._chat_response(request, run_events(self._events(request)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        request = self._request(messages, False, kwargs)
        return self._stream(request, self._chat_responses(request))

    # Async: RainDecoder.astream runs the search commit by commit in worker threads (the event loop
    # stays free); cancelling the caller's task or abandoning the stream stops it within one search.
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result = await arun_events(self._aevents(self._request(prompt, formatted, kwargs)))
        return CompletionResponse(text=result.text, **self._extras(result))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return self._astream(self._request(prompt, formatted, kwargs), self._completion_responses())

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = self._request(messages, False, kwargs)
        return self._chat_response(request, await arun_events(self._aevents(request)))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        request = self._request(messages, False, kwargs)
        return self._astream(request, self._chat_responses(request))

    # --- tools --------------------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments for a turn with tools: the messages, the tools in OpenAI format and
        the tool choice (``tool_required`` means "required")."""
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg
            )
        specs = [t.metadata.to_openai_tool(skip_length_check=True) for t in tools]
        if tool_choice is None:
            tool_choice = "required" if tool_required else "auto"
        return {"messages": messages, "tools": specs, "tool_choice": tool_choice, **kwargs}

    def _validate_chat_with_tools_response(
        self, response: ChatResponse, tools: Sequence[Any], allow_parallel_tool_calls: bool = False, **kwargs: Any
    ) -> ChatResponse:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not allow_parallel_tool_calls and len(calls) > 1:
            response.message.additional_kwargs["tool_calls"] = calls[:1]
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The tool calls of a reply (parsed when it was decoded: with the model's own response
        parser where its engine has one, else the shared ``<tool_call>``/JSON parser)."""
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError(
                f"Expected at least one tool call, but got 0 tool calls; the model replied: "
                f"{response.message.content!r}"
            )
        return [
            ToolSelection(
                tool_id=c["id"],
                tool_name=c["function"]["name"],
                tool_kwargs=json.loads(c["function"]["arguments"] or "{}"),
            )
            for c in calls
        ]
