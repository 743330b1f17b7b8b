"""Tool calls out, as LangChain types: the shared parser's plain dicts become ``ToolCall`` and
``InvalidToolCall`` dicts, and streamed calls become ``ToolCallChunk`` dicts."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall, ToolCallChunk
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk

from rain_core.protocols import LanguageModel

from .. import _tools

__all__ = ["parse_tool_calls", "parse_reply", "tool_call_chunks"]


def _as_langchain(
    calls: list[dict[str, Any]], invalid: list[dict[str, Any]]
) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    return (
        [tool_call(name=c["name"], args=c["arguments"], id=c["id"]) for c in calls],
        [invalid_tool_call(name=c["name"], args=c["arguments"], id=c["id"], error=c["error"]) for c in invalid],
    )


def parse_tool_calls(text: str, tool_names: Sequence[str]) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split a reply into (text, tool calls, invalid tool calls); the formats are those of
    ``rain_integrations._tools.parse_tool_calls`` (``<tool_call>`` blocks, bare JSON calls)."""
    content, calls, invalid = _tools.parse_tool_calls(text, tool_names)
    return (content, *_as_langchain(calls, invalid))


def parse_reply(
    lm: LanguageModel, text: str, tools: Sequence[Mapping[str, Any]], prefix: str | Callable[[], str] = ""
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """As ``parse_tool_calls``, with the model's own response parser first where its engine has one."""
    content, calls, invalid = _tools.parse_reply(lm, text, tools=tools, prefix=prefix)
    return (content, *_as_langchain(calls, invalid))


def tool_call_chunks(calls: Sequence[ToolCall], invalid: Sequence[InvalidToolCall]) -> list[ToolCallChunk]:
    """The calls of a finished reply as the chunks of its last streamed message."""
    chunks = [
        tool_call_chunk(name=c["name"], args=json.dumps(c["args"], ensure_ascii=False), id=c["id"], index=i)
        for i, c in enumerate(calls)
    ]
    chunks += [
        tool_call_chunk(name=c.get("name"), args=c.get("args"), id=c.get("id"), index=len(chunks) + i)
        for i, c in enumerate(invalid)
    ]
    return chunks
