"""One request, from its body to its answer: the plan (which decodes, with which settings), the
answer as one JSON object, or the answer as server-sent events, one ``chunk`` per committed token
set the moment RAIN commits it (committed text is final: a stream never takes anything back)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..decoder import RainDecoder
from ..results import RainResult
from ..streams import AsyncRainStream, RainStream
from . import schemas
from .errors import APIError, from_exception, sse_error
from .runtime import Decode, Runtime
from .schemas import ChatRequest, CompletionRequest
from .settings import Limits, parse_model, request_settings
from .tools import call_start, chat_messages, parse_calls

__all__ = ["Plan", "answer_json", "answer_events", "plan_request"]

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a request asks for: ``decodes`` (``n`` per prompt, ``index = prompt * n + choice``)."""

    chat: bool
    rid: str
    model: str
    n: int
    stream: bool
    include_usage: bool
    decoder: RainDecoder
    decodes: list[Decode]
    tools: list[dict[str, Any]] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def endpoint(self) -> str:
        return "chat" if self.chat else "completions"


def plan_request(body: ChatRequest | CompletionRequest, runtime: Runtime, limits: Limits) -> Plan:
    """The request's decodes and settings, checked (400s naming the field; 404 for the model)."""
    bad = body.unsupported()
    if bad:
        raise APIError(400, f"{bad[0]}: {bad[1]}", param=bad[0], code="unsupported_parameter")
    parts = runtime.parts
    choice = parse_model(body.model, parts.served_names)
    if body.n > limits.n:
        raise APIError(
            400,
            f"n={body.n} is above this server's limit of {limits.n} (rain serve --limit-n)",
            param="n",
            code="above_limit",
        )
    chat = isinstance(body, ChatRequest)
    max_tokens = body.max_completion_tokens or body.max_tokens if isinstance(body, ChatRequest) else body.max_tokens
    sampling = {"max_new_tokens": max_tokens, "temperature": body.temperature, "seed": body.seed, "stop": body.stop}
    settings = request_settings(parts.config, limits, choice, body.rain, sampling)
    decoder = runtime.decoder(settings.principle, settings.scoring)
    if isinstance(body, ChatRequest):
        messages, chat_kwargs = chat_messages(body, parts.lm)
        prompts: list[Any] = [messages]
        tools = list(chat_kwargs.get("tools", []))
    else:
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError(400, "prompt is an empty list; send a text", param="prompt", code="invalid_value")
        chat_kwargs, tools = {}, []
    decodes = []
    for p, prompt in enumerate(prompts):
        for i in range(body.n):
            cfg = settings.config
            if cfg.seed is not None and i:
                cfg = cfg.merged(seed=cfg.seed + i)  # n independent answers, each reproducible
            decodes.append(Decode(p * body.n + i, prompt, chat, chat_kwargs, cfg))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return Plan(
        chat=chat,
        rid=schemas.new_id("chatcmpl" if chat else "cmpl"),
        model=body.model,
        n=body.n,
        stream=body.stream,
        include_usage=include_usage,
        decoder=decoder,
        decodes=decodes,
        tools=tools,
    )


def open_streams(plan: Plan, runtime: Runtime) -> list[RainStream | AsyncRainStream]:
    """Every decode's stream, its prompt rendered and checked (blocking: the tokenizer runs)."""
    return [runtime.open(plan.decoder, job, plan.cancel) for job in plan.decodes]


def _prompt_tokens(plan: Plan, results: list[RainResult | None]) -> int:
    return sum(r.prompt_tokens for i, r in enumerate(results) if r is not None and i % plan.n == 0)


def _choice(plan: Plan, index: int, result: RainResult) -> dict[str, Any]:
    if not plan.chat:
        return {"index": index, "text": result.text, "logprobs": None, **schemas.finish_fields(result)}
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    calls: list[dict[str, Any]] = []
    if plan.tools:
        content, calls = parse_calls(plan.decoder.lm, result.text, plan.tools)
        if calls:
            message = {"role": "assistant", "content": content or None, "tool_calls": calls}
    return {"index": index, "message": message, "logprobs": None, **schemas.finish_fields(result, bool(calls))}


async def answer_json(plan: Plan, commits: AsyncGenerator[tuple[int, Any], None]) -> dict[str, Any]:
    """The whole answer once every decode has ended."""
    results: list[RainResult | None] = [None] * len(plan.decodes)
    async for index, commit in commits:
        if commit.result is not None:
            results[index] = commit.result
    done = [r for r in results if r is not None]
    choices = [_choice(plan, i, r) for i, r in enumerate(done)]
    build = schemas.chat_response if plan.chat else schemas.completion_response
    return build(plan.rid, plan.model, choices, _prompt_tokens(plan, results), done)


class _Shown:
    """What one streamed answer has shown; with tools offered, text from where a call may begin
    waits for the end of the reply."""

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self.text = ""
        self.sent = 0

    def release(self, piece: str) -> str:
        self.text += piece
        safe = call_start(self.text) if self.hold else len(self.text)
        if safe <= self.sent:
            return ""
        new, self.sent = self.text[self.sent : safe], safe
        return new

    def rest(self) -> str:
        new, self.sent = self.text[self.sent :], len(self.text)
        return new


async def answer_events(plan: Plan, commits: AsyncGenerator[tuple[int, Any], None]) -> AsyncIterator[str]:
    """Server-sent events: the first chunk of each answer (its role), one chunk per commit that adds
    text, the last chunk with ``finish_reason``, the usage chunk when asked, and ``[DONE]``. A
    failure after the 200 goes out as one ``data: {"error": ...}`` event, then ``[DONE]``."""
    created = int(time.time())
    results: list[RainResult | None] = [None] * len(plan.decodes)
    shown = [_Shown(bool(plan.tools)) for _ in plan.decodes]
    usage_field = plan.include_usage

    def event(choices: list[dict[str, Any]], usage: Any = None) -> str:
        build = schemas.chat_chunk if plan.chat else schemas.completion_chunk
        body = build(plan.rid, plan.model, created, choices, usage, usage_field)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def delta(index: int, text: str, **extra: Any) -> dict[str, Any]:
        if plan.chat:
            body = {"content": text} if text or not extra else {}
            return {"index": index, "delta": body, "logprobs": None, "finish_reason": None, **extra}
        return {"index": index, "text": text, "logprobs": None, "finish_reason": None, **extra}

    if plan.chat:
        for job in plan.decodes:
            yield event(
                [
                    {
                        "index": job.index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
    try:
        async for index, commit in commits:
            new = shown[index].release(commit.text)
            if commit.result is None:
                if new:
                    yield event([delta(index, new)])
                continue
            results[index] = commit.result
            yield event(_last_delta(plan, index, commit.result, new, shown[index], delta))
        if plan.include_usage:
            done = [r for r in results if r is not None]
            yield event([], schemas.usage(_prompt_tokens(plan, results), done))
    except Exception as exc:
        error = from_exception(exc)
        _log_failure(plan, error, exc)
        yield sse_error(error)
    finally:
        await commits.aclose()  # the decodes' own clean-up runs at once, however this stream ends
    yield "data: [DONE]\n\n"


def _last_delta(plan: Plan, index: int, result: RainResult, new: str, shown: _Shown, delta: Any) -> list[Any]:
    """The chunk that ends answer ``index``: the rest of its text (or its tool calls) and why it ended."""
    if not plan.tools:
        return [delta(index, new + shown.rest(), **schemas.finish_fields(result))]
    content, calls = parse_calls(plan.decoder.lm, result.text, plan.tools)
    if not calls:
        return [delta(index, new + shown.rest(), **schemas.finish_fields(result))]
    out = []
    if new:
        out.append(delta(index, new))
    streamed = [{"index": k, **call} for k, call in enumerate(calls)]
    out.append(
        {"index": index, "delta": {"tool_calls": streamed}, "logprobs": None, **schemas.finish_fields(result, True)}
    )
    return out


def _log_failure(plan: Plan, error: APIError, exc: BaseException) -> None:
    if error.status >= 500 and error.code == "bug":
        logger.error("%s: %s", plan.rid, error.message, exc_info=exc)
    else:
        logger.warning("%s: %d %s", plan.rid, error.status, error.message)
