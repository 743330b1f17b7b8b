"""LangChain messages in: every prompt the LangChain adapters send is built by
``messages_from_langchain``, which turns messages (and bound tools) into RAIN's chat messages plus
the chat template's keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from rain_core.chat import TemplateSupport

from .._tools import render_tools

__all__ = ["messages_from_langchain", "text_of"]

_SKIPPED_BLOCKS = ("tool_use", "tool_call", "tool_call_chunk", "reasoning", "thinking")
"""Content blocks that carry no prompt text: tool calls travel in ``tool_calls``; reasoning is not
replayed."""


def text_of(content: Any, role: str) -> str:
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
        elif kind not in _SKIPPED_BLOCKS:
            raise ValueError(
                f"ChatRain is text-only: a {role} message has a {kind!r} content block; "
                "pass text (images, audio and files are not supported)"
            )
    return "\n".join(p for p in parts if p)


def _neutral(m: BaseMessage) -> dict[str, Any]:
    """One LangChain message as a neutral message dict (see ``rain_integrations._tools``)."""
    if isinstance(m, SystemMessage):
        return {"role": "system", "content": text_of(m.content, "system")}
    if isinstance(m, HumanMessage):
        return {"role": "user", "content": text_of(m.content, "human")}
    if isinstance(m, AIMessage):
        out: dict[str, Any] = {"role": "assistant", "content": text_of(m.content, "ai")}
        if m.tool_calls:
            out["tool_calls"] = [{"id": c.get("id"), "name": c["name"], "arguments": c["args"]} for c in m.tool_calls]
        return out
    if isinstance(m, (ToolMessage, FunctionMessage)):
        return {
            "role": "tool",
            "content": text_of(m.content, "tool"),
            "tool_call_id": getattr(m, "tool_call_id", None),
            "name": m.name,
            "error": getattr(m, "status", "success") == "error",
        }
    if isinstance(m, ChatMessage):
        role = {"human": "user", "ai": "assistant", "developer": "system"}.get(m.role, m.role)
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"ChatMessage role {m.role!r} is not one of system, user, assistant, tool")
        return {"role": role, "content": text_of(m.content, role)}
    raise TypeError(f"ChatRain cannot render a {type(m).__name__}")


def messages_from_langchain(
    messages: Sequence[BaseMessage],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: Any = None,
    support: TemplateSupport | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """LangChain messages (and bound OpenAI-format tools) as RAIN chat messages plus the chat
    template's keyword arguments.

    System, human, AI (with tool calls) and tool messages keep their roles; what the model's
    template cannot render (``support``, see ``RainDecoder.template_support``) is written into the
    text instead: tool schemas into the system message, tool calls as
    ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` lines, tool results as user turns.
    """
    return render_tools([_neutral(m) for m in messages], tools=tools, tool_choice=tool_choice, support=support)
