"""Chat messages and tools of an OpenAI request as the model's chat template receives them, and
tool calls read back out of a reply.

Tools are offered to a model whose chat template renders them (``rain_core.chat.template_support``);
a request with tools for any other model gets a 400 saying so. A reply's calls are read by the
model's own parser when its engine has one (``ParsesResponses``), else from Hermes/Qwen-style
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks. While a reply with tools
offered streams, text from where a call may begin is held back until the reply is complete."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any

from ..chat import template_support
from ..protocols import LanguageModel, ParsesResponses
from .errors import APIError
from .schemas import ChatRequest

__all__ = ["call_start", "chat_messages", "parse_calls"]

logger = logging.getLogger(__name__)

OPEN = "<tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)


def _arguments(raw: Any, param: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise APIError(400, f"{param} is not valid JSON ({exc})", param=param, code="invalid_value") from None
    if not isinstance(value, dict):
        raise APIError(400, f"{param} must encode a JSON object", param=param, code="invalid_value")
    return value


def chat_messages(request: ChatRequest, lm: LanguageModel) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The request's messages as rain's message dicts (``developer`` reads as ``system``; text parts
    joined; tool-call arguments as objects), and the chat template's keyword arguments (``tools``)."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(request.messages):
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            if m.role != "assistant":
                raise APIError(
                    400,
                    f"messages[{i}] has tool_calls but role {m.role!r}; only assistant messages carry tool calls",
                    param=f"messages[{i}].tool_calls",
                    code="invalid_value",
                )
            msg["tool_calls"] = [
                {
                    "id": c.id or f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {
                        "name": c.function.name,
                        "arguments": _arguments(
                            c.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments"
                        ),
                    },
                }
                for j, c in enumerate(m.tool_calls)
            ]
        elif m.content is None:
            raise APIError(400, f"messages[{i}].content is required", param=f"messages[{i}].content", code="missing")
        if m.role == "tool" and m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        if m.name:
            msg["name"] = m.name
        out.append(msg)
    kwargs: dict[str, Any] = {}
    if request.tools and request.tool_choice != "none":
        if not template_support(lm).tools:
            raise APIError(
                400,
                f"{lm.name}'s chat template does not render tools, so it cannot be offered any; leave tools out "
                "or serve a model whose template takes tools (tool_choice 'none' also leaves them out)",
                param="tools",
                code="tools_not_supported",
            )
        kwargs["tools"] = [t.model_dump(exclude_none=True) for t in request.tools]
    return out, kwargs


def call_start(text: str) -> int:
    """Where a tool call may begin in a partial reply (the text before it may be shown)."""
    stripped = text.lstrip()
    if not stripped or stripped[0] in "{[`":
        return 0
    found = text.find(OPEN)
    if found >= 0:
        return found
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:n]):
            return len(text) - n
    return len(text)


def _call(entry: Any, names: set[str]) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        return None
    entry = entry.get("function", entry) if isinstance(entry.get("function"), dict) else entry
    name, args = entry.get("name"), entry.get("arguments", entry.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(args, dict):
        return None
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
    }


def parse_calls(lm: LanguageModel, text: str, tools: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(content, OpenAI ``tool_calls``) of a finished reply; calls naming no offered tool, or whose
    arguments are not a JSON object, stay text."""
    names = {str(t["function"]["name"]) for t in tools}
    if isinstance(lm, ParsesResponses):
        try:
            parsed = lm.parse_response(text, tools=tools)
        except Exception as exc:  # a model's parser that cannot read this reply: the generic one reads it
            logger.debug("%s's response parser failed (%s)", lm.name, exc)
            parsed = None
        if isinstance(parsed, dict) and parsed.get("tool_calls"):
            calls = [c for c in (_call(e, names) for e in parsed["tool_calls"]) if c]
            if calls:
                return str(parsed.get("content") or "").strip(), calls
    entries: list[Any] = []
    if OPEN in text:
        for match in _BLOCK.finditer(text):
            try:
                value = json.loads(match.group(1))
            except json.JSONDecodeError:
                continue
            entries.extend(value if isinstance(value, list) else [value])
        rest = _BLOCK.sub("", text).strip()
    else:
        body = text.strip()
        try:
            value = json.loads(body) if body[:1] in "{[" and body else None
        except json.JSONDecodeError:
            value = None
        entries = value if isinstance(value, list) else ([value] if value is not None else [])
        rest = ""
    calls = [c for c in (_call(e, names) for e in entries) if c]
    if not calls:
        return text, []
    return rest, calls
