"""Chat messages as RAIN sees them: validation, the rendered prompt and the transcript evaluators
read, what a model's chat template can render (probed through the protocol's ``chat_prompt``), and
stop-string helpers shared by the decoder and the adapters."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from .protocols import ContextTooLongError, LanguageModel

logger = logging.getLogger(__name__)

Message = Mapping[str, Any]
ROLES = ("system", "user", "assistant", "tool")


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Chat messages as a list of ``{"role", "content", ...}`` dicts, or a clear error."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError("the prompt has no messages; pass at least one {'role': 'user', 'content': ...}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        content = m.get("content")
        if content is None and not m.get("tool_calls"):
            raise ValueError(f"message {i} ({role}) has no 'content'")
        if content is not None and not isinstance(content, str):
            raise TypeError(f"message {i} content must be a string, got {type(content).__name__}")
        out.append(dict(m))
    if not any((m.get("content") or "").strip() or m.get("tool_calls") for m in out):
        raise ValueError("the prompt is empty: every message's content is blank")
    return out


def transcript(messages: Sequence[Message]) -> str:
    """A plain-text view of the conversation for evaluators: ``Role: content`` lines (system
    messages left out; tool calls named)."""
    lines = []
    for m in messages:
        if m["role"] == "system":
            continue
        content = (m.get("content") or "").strip()
        if m.get("tool_calls"):
            names = ", ".join(str(c.get("name") or c.get("function", {}).get("name")) for c in m["tool_calls"])
            content = (content + f" [calls tools: {names}]").strip()
        lines.append(f"{str(m['role']).capitalize()}: {content}")
    return "\n".join(lines)


def render_prompt(
    lm: LanguageModel, prompt: Any, *, chat: bool = True, chat_kwargs: Mapping[str, Any] | None = None
) -> tuple[list[int], str]:
    """Token ids of ``prompt`` (text, or chat messages) rendered for ``lm``, and the transcript the
    evaluator reads. ``chat=False`` encodes a text as it is, without the chat template."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty; pass some text or chat messages")
        if not chat:
            return lm.encode(prompt), f"Text: {prompt.strip()}"
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, bytes):
        raise TypeError("the prompt must be text (str) or chat messages, not bytes; decode it first")
    else:
        messages = validate_messages(prompt)
    rendered = lm.chat_prompt(messages, add_generation_prompt=True, **dict(chat_kwargs or {}))
    return lm.encode(rendered), transcript(messages)


def check_room(lm: LanguageModel, prompt_ids: Sequence[int], max_length: int) -> None:
    """A ``ContextTooLongError`` unless ``prompt_ids`` leave room for an answer."""
    limit = min(max_length, lm.context_length)
    if len(prompt_ids) >= limit:
        raise ContextTooLongError(
            f"the prompt is {len(prompt_ids)} tokens; it must be shorter than {limit} "
            f"(min of max_length={max_length} and {lm.name}'s context {lm.context_length}) "
            "to leave room for an answer. Shorten it or raise max_length."
        )


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first of ``stops`` it contains, and whether one was found."""
    cut = min((text.index(s) for s in stops if s in text), default=None)
    return (text, False) if cut is None else (text[:cut], True)


def holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of a streamed ``text`` must wait: an unfinished character, or the
    start of a stop string that the next piece might complete."""
    keep = 0
    while keep < len(text) and text[len(text) - 1 - keep] == "\ufffd":
        keep += 1
    body = text[: len(text) - keep]
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(body)), 0, -1):
            if body.endswith(s[:n]):
                longest = max(longest, n)
                break
    return keep + longest


# --- what a chat template renders ------------------------------------------------------------------
_PROBE = "rain_template_probe"


@dataclass(frozen=True)
class TemplateSupport:
    """What a model's chat template renders by itself (probed once per model)."""

    tools: bool = True
    """The template puts a ``tools=[...]`` list into the prompt."""
    tool_calls: bool = True
    """The template renders an assistant message's ``tool_calls``."""
    tool_role: bool = True
    """The template accepts messages with role ``tool``."""


_SUPPORT: WeakKeyDictionary[Any, TemplateSupport] = WeakKeyDictionary()


def _renders(lm: LanguageModel, messages: list[dict[str, Any]], **kwargs: Any) -> bool:
    try:
        return _PROBE in lm.chat_prompt(messages, add_generation_prompt=False, **kwargs)
    except Exception:  # a template that raises on this input does not support it
        return False


def template_support(lm: LanguageModel) -> TemplateSupport:
    """Probe ``lm``'s chat template with a throw-away tool, tool call and tool message."""
    try:
        return _SUPPORT[lm]
    except (KeyError, TypeError):
        pass
    user = {"role": "user", "content": "Hi"}
    probe_tool = {
        "type": "function",
        "function": {"name": _PROBE, "description": "probe", "parameters": {"type": "object", "properties": {}}},
    }
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": _PROBE, "arguments": {}}}],
    }
    support = TemplateSupport(
        tools=_renders(lm, [user], tools=[probe_tool]),
        tool_calls=_renders(lm, [user, call]),
        tool_role=_renders(
            lm,
            [
                user,
                {"role": "assistant", "content": "Ok"},
                {"role": "tool", "content": _PROBE, "tool_call_id": "call_0"},
            ],
        ),
    )
    try:
        _SUPPORT[lm] = support
    except TypeError:  # not weak-referenceable: probe again next time
        pass
    logger.debug("chat template support of %s: %s", getattr(lm, "name", lm), support)
    return support
