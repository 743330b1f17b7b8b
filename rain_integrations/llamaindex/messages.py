"""LlamaIndex chat messages in: ``messages_from_llamaindex`` turns them into RAIN's neutral message
dicts (assistant tool calls and tool results included, see ``rain_integrations._tools``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole

__all__ = ["messages_from_llamaindex", "text_of"]

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}
if hasattr(MessageRole, "DEVELOPER"):
    _ROLES[MessageRole.DEVELOPER] = "system"

_SKIPPED_BLOCKS = {"thinking", "tool_call", "cache"}
"""Blocks that carry no prompt text: reasoning is not replayed, tool calls travel in the message's
``tool_calls``, and cache points are provider hints."""


def text_of(message: ChatMessage) -> str:
    """The text blocks of a message; other media are refused (RAIN's models are text-only)."""
    parts = []
    for block in message.blocks:
        kind = getattr(block, "block_type", type(block).__name__)
        if kind == "text":
            parts.append(block.text)
        elif kind not in _SKIPPED_BLOCKS:
            raise ValueError(
                f"RainLlamaIndexLLM is text-only: a {message.role.value} message has a {kind!r} block; "
                "pass text (images, audio, video and documents are not supported)"
            )
    return "\n".join(parts)


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return {}
    return dict(raw) if isinstance(raw, Mapping) else {}


def tool_calls_of(message: ChatMessage) -> list[dict[str, Any]]:
    """A message's tool calls, neutral: from ``additional_kwargs["tool_calls"]`` (OpenAI style, as this
    adapter writes them) and from ``ToolCallBlock`` blocks."""
    calls: list[dict[str, Any]] = []
    for entry in message.additional_kwargs.get("tool_calls") or []:
        if not isinstance(entry, Mapping):
            entry = getattr(entry, "model_dump", lambda: {})()
        function = entry.get("function") if isinstance(entry.get("function"), Mapping) else entry
        if function.get("name"):
            calls.append(
                {
                    "id": entry.get("id"),
                    "name": function["name"],
                    "arguments": _arguments(function.get("arguments", {})),
                }
            )
    seen = {c["id"] for c in calls if c["id"]}
    for block in message.blocks:
        if getattr(block, "block_type", None) == "tool_call" and getattr(block, "tool_call_id", None) not in seen:
            calls.append(
                {"id": block.tool_call_id, "name": block.tool_name, "arguments": _arguments(block.tool_kwargs)}
            )
    return calls


def messages_from_llamaindex(messages: Sequence[ChatMessage], system_prompt: str | None = None) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as RAIN's neutral message dicts; ``system_prompt`` becomes the first
    message unless the conversation already starts with a system message. Assistant tool calls and
    tool results keep their ids (``tool_call_id`` from ``additional_kwargs``)."""
    out = []
    for message in messages:
        role = _ROLES.get(MessageRole(message.role))
        if role is None:  # pragma: no cover - a role added to LlamaIndex after this adapter
            raise ValueError(f"RainLlamaIndexLLM cannot render a message with role {message.role!r}")
        entry: dict[str, Any] = {"role": role, "content": text_of(message)}
        if role == "assistant":
            calls = tool_calls_of(message)
            if calls:
                entry["tool_calls"] = calls
        elif role == "tool":
            extra = message.additional_kwargs
            entry.update({k: extra[k] for k in ("tool_call_id", "name") if extra.get(k)})
        out.append(entry)
    if system_prompt and not (out and out[0]["role"] == "system"):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out
