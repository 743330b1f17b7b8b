"""LangChain adapters for RAIN.

- ``ChatRain``: a ``BaseChatModel`` over a ``RainDecoder`` (invoke, stream, batch, async, tools).
- ``RainLLM``: a text-completion ``BaseLLM`` over a ``RainDecoder``.
- ``RainGuard``: a ``Runnable`` that scores text or a message with a RAIN evaluator and blocks,
  rewrites or flags it when the score falls below a threshold (``chain | RainGuard(...)``).
- ``RainToolGuard``: the same check as an ``AgentMiddleware`` around every tool call of an agent
  built with ``langchain.agents.create_agent``.

The adapters translate and delegate: messages become ``{"role", "content", ...}`` dicts through
``to_rain_messages`` (the one place prompts are built), options become ``RainConfig`` overrides,
and ``RainResult`` becomes LangChain messages, chunks and metadata. The search lives in
``rain_core``.

Install with the ``langchain`` extra: ``pip install -e '.[langchain]'`` in the rain checkout.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence
from weakref import WeakKeyDictionary

try:
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.callbacks import (
        AsyncCallbackManagerForLLMRun,
        CallbackManagerForLLMRun,
    )
    from langchain_core.language_models import BaseChatModel, BaseLLM, LanguageModelInput
    from langchain_core.language_models.base import LangSmithParams
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        BaseMessage,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
    )
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
    from langchain_core.outputs import (
        ChatGeneration,
        ChatGenerationChunk,
        ChatResult,
        Generation,
        GenerationChunk,
        LLMResult,
    )
    from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.tools import BaseTool
    from langchain_core.utils.function_calling import convert_to_openai_tool
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rain_integrations.langchain needs LangChain: pip install -e '.[langchain]' in the rain checkout"
    ) from exc

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rain_core import CallableEvaluator, Evaluator, RainConfig, RainDecoder, RainResult
from rain_core.decoder import transcript

logger = logging.getLogger(__name__)

__all__ = [
    "ChatRain",
    "GuardStrategy",
    "GuardVerdict",
    "RainGuard",
    "RainLLM",
    "RainToolGuard",
    "parse_tool_calls",
    "to_rain_messages",
]

MIN_TEMPERATURE = 0.01
"""LangChain's ``temperature=0`` means "as greedy as possible"; RAIN samples candidates, so 0 becomes
this small positive temperature instead of an error."""

_PROBE = "rain_template_probe"
_TOOL_CALL_OPEN, _TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*(?:```)?\s*\Z", re.DOTALL)


# --- the default model: one copy per process, shared with the other adapters ---------------------
def _default_lm() -> Any:
    from rain_core.lm import shared_default_model

    return shared_default_model()


# --- messages in: one function for every path ----------------------------------------------------
@dataclass(frozen=True)
class TemplateSupport:
    """What a model's chat template renders by itself (probed once per model)."""

    tools: bool = True
    """The template puts a ``tools=[...]`` list into the prompt."""
    tool_calls: bool = True
    """The template renders an assistant message's ``tool_calls``."""
    tool_role: bool = True
    """The template accepts messages with role ``tool``."""


_SUPPORT: "WeakKeyDictionary[Any, TemplateSupport]" = WeakKeyDictionary()


def _renders(lm: Any, messages: list[dict[str, Any]], **kwargs: Any) -> bool:
    try:
        return _PROBE in lm.chat_prompt(messages, add_generation_prompt=False, **kwargs)
    except Exception:  # a template that raises on this input does not support it
        return False


def template_support(lm: Any) -> TemplateSupport:
    """Probe ``lm``'s chat template with a throw-away tool, tool call and tool message."""
    try:
        return _SUPPORT[lm]
    except (KeyError, TypeError):
        pass
    user = {"role": "user", "content": "Hi"}
    probe_tool = {"type": "function", "function": {
        "name": _PROBE, "description": "probe", "parameters": {"type": "object", "properties": {}}}}
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": _PROBE, "arguments": {}}}]}
    support = TemplateSupport(
        tools=_renders(lm, [user], tools=[probe_tool]),
        tool_calls=_renders(lm, [user, call]),
        tool_role=_renders(lm, [user, {"role": "assistant", "content": "Ok"},
                                {"role": "tool", "content": _PROBE, "tool_call_id": "call_0"}]),
    )
    try:
        _SUPPORT[lm] = support
    except TypeError:  # not weak-referenceable: probe again next time
        pass
    logger.debug("chat template support of %s: %s", getattr(lm, "name", lm), support)
    return support


def _text_of(content: Any, role: str) -> str:
    """The text of a message's content: a string, or the text blocks of a content list."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind in ("tool_use", "tool_call", "tool_call_chunk", "reasoning", "thinking"):
            continue  # tool calls travel in ``tool_calls``; reasoning is not replayed
        else:
            raise ValueError(
                f"ChatRain is text-only: a {role} message has a {kind!r} content block; "
                "pass text (images, audio and files are not supported)"
            )
    return "\n".join(p for p in parts if p)


def _call_json(name: str, args: Mapping[str, Any]) -> str:
    return json.dumps({"name": name, "arguments": dict(args)}, ensure_ascii=False)


def _tools_instruction(tools: Sequence[Mapping[str, Any]], tool_choice: Any, in_template: bool) -> str:
    """System text for tools: their schemas when the template cannot show them, and the call format
    and tool choice, which no template states for us."""
    lines = []
    if not in_template:
        lines.append("You can call these tools:")
        lines.extend(json.dumps(t["function"], ensure_ascii=False) for t in tools)
        lines.append(
            f"To call a tool, reply with only:\n{_TOOL_CALL_OPEN}\n"
            '{"name": "<tool name>", "arguments": {<arguments as JSON>}}\n'
            f"{_TOOL_CALL_CLOSE}"
        )
    if tool_choice in ("any", "required", True):
        lines.append("You must call one of the tools.")
    elif isinstance(tool_choice, str) and tool_choice not in ("auto", "none"):
        lines.append(f"You must call the tool {tool_choice}.")
    return "\n".join(lines)


def to_rain_messages(
    messages: Sequence[BaseMessage],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: Any = None,
    support: TemplateSupport | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """LangChain messages (and bound tools) as RAIN chat messages plus ``apply_chat_template`` kwargs.

    Every prompt the adapters send goes through here. System, human, AI (with tool calls) and tool
    messages keep their roles; what the model's template cannot render (``support``) is written
    into the text instead: tool schemas into the system message, tool calls as
    ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` lines, tool results as user turns.
    """
    support = support or TemplateSupport()
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text_of(m.content, "system")})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text_of(m.content, "human")})
        elif isinstance(m, AIMessage):
            text = _text_of(m.content, "ai")
            if not m.tool_calls:
                out.append({"role": "assistant", "content": text})
            elif support.tool_calls:
                out.append({"role": "assistant", "content": text, "tool_calls": [
                    {"id": c.get("id"), "type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
                    for c in m.tool_calls
                ]})
            else:
                calls = "\n".join(f"{_TOOL_CALL_OPEN}\n{_call_json(c['name'], c['args'])}\n{_TOOL_CALL_CLOSE}"
                                  for c in m.tool_calls)
                out.append({"role": "assistant", "content": f"{text}\n{calls}".strip()})
        elif isinstance(m, (ToolMessage, FunctionMessage)):
            text = _text_of(m.content, "tool")
            if getattr(m, "status", "success") == "error":
                text = f"(tool error) {text}"
            call_id = getattr(m, "tool_call_id", None)
            if support.tool_role:
                msg = {"role": "tool", "content": text}
                if call_id:
                    msg["tool_call_id"] = call_id
                if m.name:
                    msg["name"] = m.name
                out.append(msg)
            else:
                label = f"Result of tool {m.name}" if m.name else "Tool result"
                out.append({"role": "user", "content": f"{label}:\n{text}"})
        elif isinstance(m, ChatMessage):
            role = {"human": "user", "ai": "assistant", "developer": "system"}.get(m.role, m.role)
            if role not in ("system", "user", "assistant", "tool"):
                raise ValueError(f"ChatMessage role {m.role!r} is not one of system, user, assistant, tool")
            out.append({"role": role, "content": _text_of(m.content, role)})
        else:
            raise TypeError(f"ChatRain cannot render a {type(m).__name__}")

    chat_kwargs: dict[str, Any] = {}
    if tools and tool_choice != "none":
        if support.tools:
            chat_kwargs["tools"] = [dict(t) for t in tools]
        instruction = _tools_instruction(tools, tool_choice, in_template=support.tools)
        if instruction:
            if out and out[0]["role"] == "system":
                out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{instruction}".strip()}
            else:
                out.insert(0, {"role": "system", "content": instruction})
    return out, chat_kwargs


# --- tool calls out ------------------------------------------------------------------------------
def _unfence(text: str) -> str:
    match = _FENCE_RE.match(text.strip())
    return match.group(1) if match else text.strip()


def _call_entries(obj: Any) -> list[Any]:
    return obj if isinstance(obj, list) else [obj]


def _as_call(entry: Any) -> tuple[str | None, Any]:
    """(name, arguments) of one decoded call: ``{"name", "arguments"|"parameters"}``, optionally
    wrapped as ``{"type": "function", "function": {...}}``."""
    if not isinstance(entry, Mapping):
        return None, None
    if isinstance(entry.get("function"), Mapping):
        entry = entry["function"]
    name = entry.get("name")
    args = entry.get("arguments", entry.get("parameters", {}))
    return (name if isinstance(name, str) else None), args


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _decode_args(args: Any) -> dict[str, Any] | None:
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    return dict(args) if isinstance(args, Mapping) else None


def parse_tool_calls(
    text: str, tool_names: Sequence[str]
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Split a reply into (text, tool calls, invalid tool calls).

    Understands ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Hermes/Qwen
    style, the closing tag may be missing at the end) and a reply that is only a JSON call or a
    list of them (optionally in a code fence), with ``arguments`` or ``parameters``. A bare JSON
    reply naming no bound tool is ordinary text; a ``<tool_call>`` block that cannot be used
    becomes an invalid tool call.
    """
    names = set(tool_names)
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []

    if _TOOL_CALL_OPEN in text:
        for match in _TOOL_CALL_RE.finditer(text):
            body = _unfence(match.group(1))
            try:
                entries = _call_entries(json.loads(body))
            except json.JSONDecodeError as exc:
                invalid.append(invalid_tool_call(name=None, args=body, id=_new_id(), error=f"invalid JSON: {exc}"))
                continue
            for entry in entries:
                name, raw = _as_call(entry)
                args = _decode_args(raw)
                if name is None or args is None or (names and name not in names):
                    why = ("unknown tool " + repr(name)) if name and args is not None else "not a {name, arguments} call"
                    invalid.append(invalid_tool_call(name=name, args=json.dumps(entry, ensure_ascii=False),
                                                     id=_new_id(), error=why))
                else:
                    calls.append(tool_call(name=name, args=args, id=str(entry.get("id") or _new_id())))
        content = _TOOL_CALL_RE.sub("", text).strip()
        return content, calls, invalid

    body = _unfence(text)
    if body[:1] in ("{", "["):
        try:
            obj, end = json.JSONDecoder().raw_decode(body)
        except json.JSONDecodeError:
            return text, [], []
        parsed = [(_as_call(e), e) for e in _call_entries(obj)]
        if parsed and all(n is not None and n in names and _decode_args(a) is not None for (n, a), _ in parsed):
            for (name, raw), entry in parsed:
                calls.append(tool_call(name=name, args=_decode_args(raw) or {}, id=str(entry.get("id") or _new_id())))
            return body[end:].strip(), calls, invalid
    return text, [], []


def _tool_call_start(text: str) -> int:
    """Where a tool call may begin in a partial reply: streaming holds the text from here back until
    the reply is complete, so call syntax never reaches the user as content."""
    stripped = text.lstrip()
    if not stripped or stripped[0] in "{[`":
        return 0
    idx = text.find(_TOOL_CALL_OPEN)
    if idx >= 0:
        return idx
    for n in range(min(len(_TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(_TOOL_CALL_OPEN[:n]):
            return len(text) - n
    return len(text)


# --- options: what the adapters share -----------------------------------------------------------
def _temperature(value: float | None) -> float | None:
    if value is None:
        return None
    return MIN_TEMPERATURE if value == 0 else value


def _stats(result: RainResult) -> dict[str, Any]:
    return {k: v for k, v in result.stats.items() if k != "commit_log"}


def _usage(result: RainResult) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


class _RainParams(BaseModel):
    """Fields and option handling shared by ``ChatRain`` and ``RainLLM``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    decoder: RainDecoder
    """The ``RainDecoder`` that decodes every call (its model, evaluator and base ``RainConfig``)."""
    max_tokens: int | None = Field(None, ge=1)
    """Most new tokens per call (RAIN's ``max_new_tokens``); ``None`` keeps the decoder's."""
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    """Sampling temperature; 0 becomes ``MIN_TEMPERATURE`` (RAIN must sample); ``None`` keeps the decoder's."""
    stop: list[str] | None = None
    """Stop strings of any length; the reply ends before the first one. A call's ``stop`` replaces these."""
    rain_options: dict[str, Any] = Field(default_factory=dict)
    """Further ``RainConfig`` overrides for every call, e.g. ``{"max_searches": 10}``."""

    @model_validator(mode="after")
    def _check_options(self) -> Any:
        self.decoder.resolve_config(**self.rain_options)  # unknown or invalid options fail here
        return self

    @property
    def model_name(self) -> str:
        """The decoder's model name, reported in metadata and traces."""
        return str(self.decoder.lm.name)

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``RainDecoder.generate``/``stream``: the decoder's config, then this
        object's options, then the call's (standard names first mapped to RAIN's)."""
        kwargs = dict(kwargs)
        model = kwargs.pop("model", None)
        if model is not None and model != self.model_name:
            raise ValueError(
                f"this {type(self).__name__} decodes with {self.model_name!r}; build another one "
                f"over a RainDecoder for {model!r} instead of passing model=..."
            )
        kwargs.pop("stream", None)
        options: dict[str, Any] = dict(self.rain_options)
        standard = {"max_new_tokens": self.max_tokens, "temperature": _temperature(self.temperature), "stop": self.stop}
        options.update({k: v for k, v in standard.items() if v is not None})
        config = kwargs.pop("rain_config", None)
        if "max_tokens" in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("max_tokens")
        if "temperature" in kwargs:
            kwargs["temperature"] = _temperature(kwargs["temperature"])
        options.update({k: v for k, v in kwargs.items() if v is not None})
        if stop is not None:
            options["stop"] = list(stop)
        if config is not None:
            options["config"] = config
        return options

    def _ls_common(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        cfg = self.decoder.config
        temperature = kwargs.get("temperature", self.temperature)
        params: dict[str, Any] = {
            "ls_provider": "rain",
            "ls_model_name": kwargs.get("model") or self.model_name,
            "ls_temperature": float(temperature if temperature is not None else cfg.temperature),
            "ls_max_tokens": int(kwargs.get("max_tokens") or self.max_tokens or cfg.max_new_tokens),
        }
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def _identifying(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": self.stop,
            "rain_config": self.decoder.resolve_config(**self.rain_options).model_dump(mode="json"),
        }


def _split_default_kwargs(cls: type[BaseModel], kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    own = {k: v for k, v in kwargs.items() if k in cls.model_fields}
    rain = {k: v for k, v in kwargs.items() if k not in cls.model_fields}
    unknown = sorted(set(rain) - set(RainConfig.model_fields))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}: pass {cls.__name__} fields or RainConfig fields")
    return own, rain


# --- ChatRain ------------------------------------------------------------------------------------
@dataclass
class _Request:
    prompt: list[dict[str, Any]]
    chat_kwargs: dict[str, Any]
    options: dict[str, Any]
    tool_names: list[str] = field(default_factory=list)


class ChatRain(_RainParams, BaseChatModel):
    """A LangChain chat model that decodes with RAIN.

    ```python
    from rain_core import RainDecoder, load_default_model
    from rain_integrations.langchain import ChatRain

    chat = ChatRain(decoder=RainDecoder(load_default_model(), max_searches=10))
    chat = ChatRain.from_default(max_tokens=64)          # the embedded SmolLM2-135M-Instruct
    chat.invoke("How do I stay safe online?", max_searches=5)   # per-call RAIN overrides
    ```

    Messages of every kind (system, human, AI with tool calls, tool) are rendered through the
    model's chat template; ``bind_tools`` adds tools and parses tool calls from the reply.
    RAIN's search stats are in ``response_metadata["rain"]``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for the tokenizer's ``apply_chat_template``."""
    streaming: bool = False
    """Send ``invoke`` through the streaming path, so callbacks receive each committed token set."""

    @classmethod
    def from_default(cls, *, evaluator: Any = None, encoder: Any = "default", config: RainConfig | None = None,
                     **kwargs: Any) -> "ChatRain":
        """A ``ChatRain`` over the embedded SmolLM2-135M-Instruct (loaded once per process, offline).

        ``kwargs`` are ``ChatRain`` fields (``max_tokens``, ``temperature``, ``stop``, ...) or
        ``RainConfig`` fields for the decoder (``max_searches``, ``seed``, ...).
        """
        own, rain = _split_default_kwargs(cls, kwargs)
        return cls(decoder=RainDecoder(_default_lm(), evaluator, encoder=encoder, config=config, **rain), **own)

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
        no tool support) and tool calls are parsed from the reply.

        ``tool_choice``: ``"auto"``/``None``, ``"none"`` (tools hidden), ``"any"``/``"required"``/
        ``True`` (the model is told it must call a tool) or a tool name. A small model may still
        answer in text: the choice is an instruction, not a constraint on decoding.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        names = [t["function"]["name"] for t in formatted]
        if isinstance(tool_choice, dict):
            tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "any", "required") \
                and tool_choice not in names:
            raise ValueError(f"tool_choice {tool_choice!r} names no bound tool; bound tools: {names}")
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
        return {"model_name": self.model_name}

    # --- translation --------------------------------------------------------------------------
    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Request:
        kwargs = dict(kwargs)
        tools = kwargs.pop("tools", None) or []
        tool_choice = kwargs.pop("tool_choice", None)
        extra_template_kwargs = kwargs.pop("chat_template_kwargs", None) or {}
        prompt, chat_kwargs = to_rain_messages(
            messages, tools=tools, tool_choice=tool_choice, support=template_support(self.decoder.lm)
        )
        chat_kwargs = {**self.chat_template_kwargs, **extra_template_kwargs, **chat_kwargs}
        names = [t["function"]["name"] for t in tools] if tool_choice != "none" else []
        return _Request(prompt, chat_kwargs, self._options(stop, kwargs), names)

    def _message(self, result: RainResult, tool_names: Sequence[str]) -> AIMessage:
        content, calls, invalid = parse_tool_calls(result.text, tool_names) if tool_names else (result.text, [], [])
        return AIMessage(
            content=content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            usage_metadata=_usage(result),
            response_metadata=self._metadata(result),
        )

    def _metadata(self, result: RainResult) -> dict[str, Any]:
        return {"model_name": self.model_name, "finish_reason": result.finish_reason, "rain": _stats(result)}

    def _chunks(self, request: _Request) -> Iterator[ChatGenerationChunk]:
        """Chunks of one streamed decode: one per committed token set, then a last chunk with the
        usage, the metadata and any tool calls."""
        holder: list[RainResult] = []
        text, sent = "", 0
        pieces = self.decoder.stream(request.prompt, chat=True, chat_kwargs=request.chat_kwargs, result=holder,
                                     **request.options)
        for piece in pieces:
            text += piece
            safe = _tool_call_start(text) if request.tool_names else len(text)
            if safe > sent:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text[sent:safe]))
                sent = safe
        result = holder[0]
        final = self._message(result, request.tool_names)
        content = final.text
        rest = content[sent:] if content.startswith(text[:sent]) else ""
        if not final.tool_calls and not final.invalid_tool_calls:
            rest = text[sent:]
        chunks = [tool_call_chunk(name=c["name"], args=json.dumps(c["args"], ensure_ascii=False), id=c["id"], index=i)
                  for i, c in enumerate(final.tool_calls)]
        chunks += [tool_call_chunk(name=c.get("name"), args=c.get("args"), id=c.get("id"), index=len(chunks) + i)
                   for i, c in enumerate(final.invalid_tool_calls)]
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=rest,
                tool_call_chunks=chunks,
                usage_metadata=final.usage_metadata,
                response_metadata=final.response_metadata,
                chunk_position="last",
            ),
            generation_info={"finish_reason": result.finish_reason, "rain": _stats(result)},
        )

    # --- the four paths -----------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        result = self.decoder.generate(request.prompt, chat=True, chat_kwargs=request.chat_kwargs, **request.options)
        message = self._message(result, request.tool_names)
        info = {"finish_reason": result.finish_reason, "rain": _stats(result)}
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)],
                          llm_output={"model_name": self.model_name})

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The decode is CPU/GPU-bound and synchronous: run it in a worker thread.
        return await run_in_executor(None, self._generate, messages, stop, None, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._request(messages, stop, kwargs)):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        chunks = self._chunks(self._request(messages, stop, kwargs))
        async for chunk in _in_thread(chunks):
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


async def _in_thread(iterator: Iterator[Any]) -> AsyncIterator[Any]:
    """Drive a blocking iterator from async code: each ``next`` runs in a worker thread, so the event
    loop keeps serving other tasks while RAIN searches."""
    done = object()
    try:
        while True:
            item = await run_in_executor(None, next, iterator, done)
            if item is done:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:  # still running in its thread after a cancellation; it ends there
                logger.debug("stream abandoned while a search step was running")


# --- RainLLM -------------------------------------------------------------------------------------
class RainLLM(_RainParams, BaseLLM):
    """A LangChain text-completion model that decodes with RAIN (no chat template).

    ``generate``/``batch`` send all prompts through one ``_generate`` call; each prompt's committed
    token sets reach ``on_llm_new_token`` callbacks as they are found. RAIN's search stats are in
    each generation's ``generation_info["rain"]``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    @classmethod
    def from_default(cls, *, evaluator: Any = None, encoder: Any = "default", config: RainConfig | None = None,
                     **kwargs: Any) -> "RainLLM":
        """A ``RainLLM`` over the embedded SmolLM2-135M-Instruct (see ``ChatRain.from_default``)."""
        own, rain = _split_default_kwargs(cls, kwargs)
        return cls(decoder=RainDecoder(_default_lm(), evaluator, encoder=encoder, config=config, **rain), **own)

    @property
    def _llm_type(self) -> str:
        return "rain"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._identifying()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_model_type="llm", **self._ls_common(stop, kwargs))  # type: ignore[typeddict-item]

    def _pieces(self, prompt: str, options: dict[str, Any], holder: list[RainResult]) -> Iterator[str]:
        return self.decoder.stream(prompt, chat=False, result=holder, **options)

    @staticmethod
    def _info(result: RainResult) -> dict[str, Any]:
        return {"finish_reason": result.finish_reason, "rain": _stats(result),
                "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}}

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        options = self._options(stop, kwargs)
        generations, prompt_tokens, completion_tokens = [], 0, 0
        for prompt in prompts:
            holder: list[RainResult] = []
            for piece in self._pieces(prompt, options, holder):
                if run_manager:
                    run_manager.on_llm_new_token(piece)
            result = holder[0]
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
            generations.append([Generation(text=result.text, generation_info=self._info(result))])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        return LLMResult(generations=generations, llm_output={"model_name": self.model_name, "token_usage": usage})

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        options = self._options(stop, kwargs)
        generations = []
        for prompt in prompts:
            holder: list[RainResult] = []
            async for piece in _in_thread(self._pieces(prompt, options, holder)):
                if run_manager:
                    await run_manager.on_llm_new_token(piece)
            generations.append([Generation(text=holder[0].text, generation_info=self._info(holder[0]))])
        return LLMResult(generations=generations, llm_output={"model_name": self.model_name})

    def _chunks(self, prompt: str, options: dict[str, Any]) -> Iterator[GenerationChunk]:
        holder: list[RainResult] = []
        for piece in self._pieces(prompt, options, holder):
            yield GenerationChunk(text=piece)
        yield GenerationChunk(text="", generation_info=self._info(holder[0]))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for chunk in self._chunks(prompt, self._options(stop, kwargs)):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        async for chunk in _in_thread(self._chunks(prompt, self._options(stop, kwargs))):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


# --- guards --------------------------------------------------------------------------------------
class GuardStrategy(str, enum.Enum):
    """What a guard does with text that scores below its threshold."""

    BLOCK = "block"
    """Replace it with a short reason (a tool result becomes a ``ToolMessage`` with status error)."""
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
        return {"verdict": "pass" if self.passed else "fail", "score": self.score, "threshold": self.threshold,
                "evaluator": self.evaluator, "strategy": self.strategy.value}


DEFAULT_BLOCK_MESSAGE = (
    "This content was withheld by a RAIN guard: it scored {score:.2f} on {evaluator}, "
    "below the threshold {threshold:.2f}."
)
DEFAULT_REWRITE_INSTRUCTION = (
    "You restate text for a reader. Keep any harmless facts, drop everything that could help someone "
    "cause harm, and answer with the restatement only."
)


class RainGuard(RunnableSerializable[Any, Any]):
    """Score text with a RAIN evaluator and act when it falls below ``threshold``.

    Input and output: a string or a message (``AIMessage``, ``ToolMessage``, ...), returned as the
    same type. A passing input comes back untouched. Use it at the end of a chain::

        chain = prompt | chat | RainGuard(decoder=decoder, strategy="rewrite")

    The context the evaluator sees (``context``) is empty in a chain; ``RainToolGuard`` passes the
    conversation and the tool call.
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
    block_message: str = DEFAULT_BLOCK_MESSAGE
    """What replaces blocked content; may use ``{score}``, ``{threshold}`` and ``{evaluator}``."""
    rewrite_instruction: str = DEFAULT_REWRITE_INSTRUCTION
    """System instruction for the rewrite decode."""
    rewrite_options: dict[str, Any] = Field(default_factory=dict)
    """``RainConfig`` overrides for the rewrite decode, e.g. ``{"max_new_tokens": 64}``."""

    @model_validator(mode="after")
    def _check(self) -> "RainGuard":
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
    def scorer(self) -> Any:
        return self.evaluator if self.evaluator is not None else self.decoder.evaluator  # type: ignore[union-attr]

    # --- the check ----------------------------------------------------------------------------
    def check(self, text: str, context: str = "") -> GuardVerdict:
        """Score ``text`` (with ``context``, the conversation as ``Role: content`` lines)."""
        score = float(self.scorer.score(context, text))
        return GuardVerdict(score=score, threshold=self.threshold, passed=score >= self.threshold,
                            evaluator=str(getattr(self.scorer, "name", "evaluator")), strategy=self.strategy)

    def rewrite(self, text: str) -> RainResult:
        """A harmless restatement of ``text``, decoded with RAIN."""
        prompt, chat_kwargs = to_rain_messages(
            [SystemMessage(self.rewrite_instruction), HumanMessage(f"Text to restate:\n{text}")],
            support=template_support(self.decoder.lm),  # type: ignore[union-attr]
        )
        return self.decoder.generate(prompt, chat=True, chat_kwargs=chat_kwargs, **self.rewrite_options)  # type: ignore[union-attr]

    def apply(self, value: Any, context: str = "") -> Any:
        """Check ``value`` (a string or a message) and return it, or its blocked/rewritten/flagged form."""
        if isinstance(value, BaseMessage):
            text = _text_of(value.content, value.type)
        elif isinstance(value, str):
            text = value
        else:
            raise TypeError(f"RainGuard checks strings and messages, got {type(value).__name__}")
        verdict = self.check(text, context)
        if verdict.passed:
            return value
        meta = verdict.metadata()
        logger.info("RainGuard: content failed (%.3f < %.3f), strategy %s",
                    verdict.score, verdict.threshold, self.strategy.value)
        blocked = self.strategy is GuardStrategy.BLOCK
        if self.strategy is GuardStrategy.FLAG:
            new_text = text
            if isinstance(value, str):
                logger.warning("RainGuard flagged a string (score %.3f); pass messages to keep the verdict "
                               "in metadata", verdict.score)
        elif not blocked:
            result = self.rewrite(text)
            new_text = result.text.strip()
            again = self.check(new_text, context)
            meta["rewrite"] = {"score": again.score, "passed": again.passed,
                               "finish_reason": result.finish_reason, "rain": _stats(result)}
            if not again.passed:
                # A restatement that still fails the check must not reach the reader: block instead.
                logger.warning("RainGuard: the rewrite still scored %.3f < %.3f; blocking instead", again.score,
                               self.threshold)
                meta["fallback"] = GuardStrategy.BLOCK.value
                blocked = True
        if blocked:
            new_text = self.block_message.format(score=verdict.score, threshold=verdict.threshold,
                                                 evaluator=verdict.evaluator)
        if isinstance(value, str):
            return new_text
        update: dict[str, Any] = {"response_metadata": {**value.response_metadata, "rain_guard": meta}}
        if new_text != text:
            update["content"] = new_text
        if isinstance(value, ToolMessage) and blocked:
            update["status"] = "error"
        if isinstance(value, AIMessage) and self.strategy is not GuardStrategy.FLAG:
            update.update(tool_calls=[], invalid_tool_calls=[])
        return value.model_copy(update=update)

    # --- Runnable -----------------------------------------------------------------------------
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self.apply, input, config, run_type="tool")

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await run_in_executor(config, self.invoke, input, config)


class RainToolGuard(AgentMiddleware):
    """Agent middleware: every tool result is checked by a ``RainGuard`` before the model sees it.

    ```python
    from langchain.agents import create_agent
    agent = create_agent(chat, tools=[search], middleware=[RainToolGuard(decoder, strategy="block")])
    ```

    A failing result is blocked (``ToolMessage`` with status error, same ``tool_call_id``),
    rewritten with RAIN, or flagged (content kept, ``response_metadata["rain_guard"]``). A passing
    result comes back untouched. ``tools`` limits the guard to these tools (names or tools).
    """

    def __init__(
        self,
        decoder: RainDecoder | None = None,
        *,
        evaluator: Any = None,
        threshold: float = 0.0,
        strategy: GuardStrategy | str = GuardStrategy.BLOCK,
        tools: Sequence[str | BaseTool] | None = None,
        **guard_options: Any,
    ) -> None:
        super().__init__()
        self.guard = RainGuard(decoder=decoder, evaluator=evaluator, threshold=threshold, strategy=strategy,
                               **guard_options)
        self.guarded_tools = None if tools is None else frozenset(t if isinstance(t, str) else t.name for t in tools)

    def _applies(self, request: Any, result: Any) -> bool:
        name = request.tool_call.get("name")
        return isinstance(result, ToolMessage) and (self.guarded_tools is None or name in self.guarded_tools)

    @staticmethod
    def _context(request: Any) -> str:
        """The last user turn and the tool call, as the evaluator's ``Role: content`` lines."""
        state = request.state
        messages = state.get("messages", []) if isinstance(state, Mapping) else getattr(state, "messages", [])
        users = [m for m in messages if isinstance(m, HumanMessage)]
        call = request.tool_call
        turn = [AIMessage("", tool_calls=[tool_call(name=call["name"], args=call.get("args") or {}, id=call.get("id"))])]
        rendered, _ = to_rain_messages(users[-1:] + turn)
        return transcript(rendered)

    def _screen(self, request: Any, result: Any) -> Any:
        if not self._applies(request, result):
            return result
        return self.guard.apply(result, self._context(request))

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        return self._screen(request, handler(request))

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        result = await handler(request)
        if not self._applies(request, result):
            return result
        return await run_in_executor(None, self._screen, request, result)
