"""The request bodies of ``/v1/chat/completions`` and ``/v1/completions`` (OpenAI's shapes, as
pydantic models), and the JSON of the answers and stream chunks.

Fields OpenAI defines that RAIN cannot honour (``logprobs``, ``top_p`` below 1, penalties,
``logit_bias``, a JSON ``response_format``, ``echo``, ``best_of``, ``suffix``) are refused with a
400 naming the field when a request sets them, never ignored; fields that change nothing here
(``user``, ``metadata``, ``store``, ...) are accepted and ignored. No string may hold a NUL byte."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from ..results import RainResult

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "new_id",
    "rain_usage",
    "usage",
]


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("contains a NUL byte (\\u0000); remove it")
    return text


Text = Annotated[str, AfterValidator(_no_nul)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TextPart(_Body):
    type: Literal["text"]
    text: Text


class FunctionCall(_Body):
    name: Text
    arguments: Union[Text, dict[str, Any]] = "{}"  # noqa: UP007 (pydantic reads the annotation at runtime)


class ToolCall(_Body):
    id: Text | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, list[TextPart], None] = None  # noqa: UP007
    name: Text | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Text | None = None

    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class FunctionSpec(_Body):
    name: Text
    description: Text | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionSpec


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """What both endpoints take: the model, limits, sampling, streaming, and RAIN's own settings."""

    model: Text = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[Text, list[Text], None] = None  # noqa: UP007
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    rain: dict[str, Any] | None = None
    """RAIN's settings for this request (the ``extra_body`` field ``rain``), see ``settings``."""

    def unsupported(self) -> tuple[str, str] | None:
        """(field, why) of the first field set to something RAIN cannot honour."""
        if self.top_p is not None and self.top_p != 1.0:
            return "top_p", "RAIN samples its candidates from the top_k most probable tokens; leave top_p out or 1"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name, "penalties are not supported by RAIN's search; leave it out or 0"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported by RAIN's search; leave it out"
        return None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None  # noqa: UP007
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> tuple[str, str] | None:
        found = super().unsupported()
        if found:
            return found
        if self.logprobs or self.top_logprobs:
            return "logprobs", "log-probabilities are not returned by rain serve; leave logprobs out"
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            return "response_format", f"response_format {kind!r} is not supported: RAIN cannot constrain its output"
        if self.tool_choice == "required" or isinstance(self.tool_choice, dict):
            return "tool_choice", "RAIN cannot force a tool call; use 'auto' or 'none'"
        return None


class CompletionRequest(_Sampling):
    prompt: Union[Text, list[Text]]  # noqa: UP007
    echo: bool = False
    suffix: Text | None = None
    best_of: int | None = None
    logprobs: int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if isinstance(value, list) and any(isinstance(x, (int, list)) for x in value):
            raise ValueError("token-id prompts are not supported by rain serve; send the prompt as text")
        return value

    def unsupported(self) -> tuple[str, str] | None:
        found = super().unsupported()
        if found:
            return found
        if self.echo:
            return "echo", "echo is not supported; leave it out"
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported; leave it out"
        if self.best_of not in (None, 1):
            return "best_of", "best_of is not supported; use n for independent answers"
        if self.logprobs is not None:
            return "logprobs", "log-probabilities are not returned by rain serve; leave logprobs out"
        return None


# --- answers ---------------------------------------------------------------------------------------
def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def finish_fields(result: RainResult, tool_calls: bool = False) -> dict[str, Any]:
    """OpenAI's ``finish_reason`` ("stop", "length", "tool_calls"; "time" reads "length") and RAIN's
    own reason beside it (``rain_finish_reason``: "eos", "stop", "length" or "time")."""
    reason = "tool_calls" if tool_calls else ("stop" if result.finish_reason in ("eos", "stop") else "length")
    return {"finish_reason": reason, "rain_finish_reason": result.finish_reason}


def rain_usage(results: Sequence[RainResult]) -> dict[str, Any]:
    """What the search cost, summed over a request's answers."""

    def total(key: str) -> int:
        return int(sum(r.stats.get(key, 0) for r in results))

    return {
        "searches": total("searches"),
        "commits": total("commits"),
        "rewinds": total("rewinds"),
        "model_calls": total("model_calls"),
        "evaluator_calls": total("evaluations"),
        "evaluator_cache_hits": total("evaluation_cache_hits"),
        "simulated_tokens": total("simulated_tokens"),
        "generated_tokens": total("simulated_tokens") + sum(r.completion_tokens for r in results),
        "seconds": round(sum(float(r.stats.get("seconds", 0.0)) for r in results), 3),
    }


def usage(prompt_tokens: int, results: Sequence[RainResult]) -> dict[str, Any]:
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "rain": rain_usage(results),
    }


def _head(rid: str, kind: str, model: str, created: int) -> dict[str, Any]:
    return {"id": rid, "object": kind, "created": created, "model": model, "system_fingerprint": "rain"}


def chat_response(
    rid: str, model: str, choices: list[dict[str, Any]], prompt_tokens: int, results: Sequence[RainResult]
) -> dict[str, Any]:
    """``chat.completion``: ``choices`` are ``{"index", "message", "finish_reason", ...}``."""
    body = _head(rid, "chat.completion", model, int(time.time()))
    body["choices"] = choices
    body["usage"] = usage(prompt_tokens, results)
    return body


def chat_chunk(
    rid: str, model: str, created: int, choices: list[dict[str, Any]], usage_: Any = None, with_usage: bool = False
) -> dict[str, Any]:
    body = _head(rid, "chat.completion.chunk", model, created)
    body["choices"] = choices
    if with_usage:
        body["usage"] = usage_
    return body


def completion_response(
    rid: str, model: str, choices: list[dict[str, Any]], prompt_tokens: int, results: Sequence[RainResult]
) -> dict[str, Any]:
    body = _head(rid, "text_completion", model, int(time.time()))
    body["choices"] = choices
    body["usage"] = usage(prompt_tokens, results)
    return body


def completion_chunk(
    rid: str, model: str, created: int, choices: list[dict[str, Any]], usage_: Any = None, with_usage: bool = False
) -> dict[str, Any]:
    body = _head(rid, "text_completion", model, created)
    body["choices"] = choices
    if with_usage:
        body["usage"] = usage_
    return body
