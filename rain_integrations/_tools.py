"""Tools for any framework: how bound tools and tool calls reach a model's prompt, how tool calls are
read back out of its reply, and what a streamed reply may show while a call may be coming
(``ToolCallHoldback``). Plain dicts in, plain dicts out; each adapter converts them to its
framework's types (LangChain ``ToolCall``, LlamaIndex ``ToolSelection``).

Neutral shapes:

- a tool: OpenAI's ``{"type": "function", "function": {"name", "description", "parameters"}}``;
- a tool call: ``{"id": str, "name": str, "arguments": dict}``;
- an unusable call: ``{"id": str, "name": str | None, "arguments": str, "error": str}``;
- messages: RAIN's ``{"role", "content"}`` dicts, where an assistant message may carry
  ``"tool_calls": [tool call, ...]`` and a tool message ``"tool_call_id"``, ``"name"`` and
  ``"error": True`` (the tool failed).

Where a chat template cannot render tools, tool calls or tool messages (``TemplateSupport``), they
are written into the text: schemas into the system message, calls as
``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` lines, results as user turns.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rain_core.chat import TemplateSupport
from rain_core.protocols import LanguageModel, ParsesResponses

logger = logging.getLogger(__name__)

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*(?:```)?\s*\Z", re.DOTALL)
MUST_CALL_ANY = ("any", "required", True)

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "call_json",
    "new_call_id",
    "parse_reply",
    "parse_tool_calls",
    "render_tools",
    "ToolCallHoldback",
    "tool_call_start",
    "tool_names",
    "tools_instruction",
]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_names(tools: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The names of OpenAI-format tools."""
    return [str(t["function"]["name"]) for t in tools or []]


def call_json(name: str, args: Mapping[str, Any]) -> str:
    """One call as the JSON a model writes inside ``<tool_call>`` (non-ASCII kept as characters)."""
    return json.dumps({"name": name, "arguments": dict(args)}, ensure_ascii=False)


def tools_instruction(tools: Sequence[Mapping[str, Any]], tool_choice: Any, in_template: bool) -> str:
    """System text for tools: their schemas when the template cannot show them, and the call format
    and tool choice, which no template states for us."""
    lines = []
    if not in_template:
        lines.append("You can call these tools:")
        lines.extend(json.dumps(t["function"], ensure_ascii=False) for t in tools)
        lines.append(
            f"To call a tool, reply with only:\n{TOOL_CALL_OPEN}\n"
            '{"name": "<tool name>", "arguments": {<arguments as JSON>}}\n'
            f"{TOOL_CALL_CLOSE}"
        )
    if tool_choice in MUST_CALL_ANY:
        lines.append("You must call one of the tools.")
    elif isinstance(tool_choice, str) and tool_choice not in ("auto", "none"):
        lines.append(f"You must call the tool {tool_choice}.")
    return "\n".join(lines)


def render_tools(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: Any = None,
    support: TemplateSupport | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Neutral messages (and tools) as what ``chat_prompt`` receives: the messages and its keyword
    arguments (``tools=[...]`` when the template renders tools). What the template cannot render
    (``support``) is written into the text instead."""
    support = support or TemplateSupport()
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        text = m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if support.tool_calls:
                out.append(
                    {
                        "role": "assistant",
                        "content": text,
                        "tool_calls": [
                            {
                                "id": c.get("id"),
                                "type": "function",
                                "function": {"name": c["name"], "arguments": dict(c.get("arguments") or {})},
                            }
                            for c in calls
                        ],
                    }
                )
            else:
                written = "\n".join(
                    f"{TOOL_CALL_OPEN}\n{call_json(c['name'], c.get('arguments') or {})}\n{TOOL_CALL_CLOSE}"
                    for c in calls
                )
                out.append({"role": "assistant", "content": f"{text}\n{written}".strip()})
        elif role == "tool":
            if m.get("error"):
                text = f"(tool error) {text}"
            if support.tool_role:
                msg = {"role": "tool", "content": text}
                if m.get("tool_call_id"):
                    msg["tool_call_id"] = m["tool_call_id"]
                if m.get("name"):
                    msg["name"] = m["name"]
                out.append(msg)
            else:
                label = f"Result of tool {m['name']}" if m.get("name") else "Tool result"
                out.append({"role": "user", "content": f"{label}:\n{text}"})
        else:
            out.append({"role": role, "content": text})

    chat_kwargs: dict[str, Any] = {}
    if tools and tool_choice != "none":
        if support.tools:
            chat_kwargs["tools"] = [dict(t) for t in tools]
        instruction = tools_instruction(tools, tool_choice, in_template=support.tools)
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


def _entries(obj: Any) -> list[Any]:
    return obj if isinstance(obj, list) else [obj]


def _name_and_args(entry: Any) -> tuple[str | None, Any]:
    """(name, arguments) of one decoded call: ``{"name", "arguments"|"parameters"}``, optionally
    wrapped as ``{"type": "function", "function": {...}}``."""
    if not isinstance(entry, Mapping):
        return None, None
    if isinstance(entry.get("function"), Mapping):
        entry = entry["function"]
    name = entry.get("name")
    args = entry.get("arguments", entry.get("parameters", {}))
    return (name if isinstance(name, str) else None), args


def _decode_args(args: Any) -> dict[str, Any] | None:
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    return dict(args) if isinstance(args, Mapping) else None


def _call_id(entry: Any) -> str:
    given = entry.get("id") if isinstance(entry, Mapping) else None
    return str(given) if given else new_call_id()


def _invalid(name: str | None, raw: Any, error: str) -> dict[str, Any]:
    args = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
    return {"id": new_call_id(), "name": name, "arguments": args, "error": error}


def _sort_call(entry: Any, names: set[str], calls: list[dict[str, Any]], invalid: list[dict[str, Any]]) -> None:
    name, raw = _name_and_args(entry)
    args = _decode_args(raw)
    if name is None or args is None or (names and name not in names):
        why = f"unknown tool {name!r}" if name and args is not None else "not a {name, arguments} call"
        invalid.append(_invalid(name, entry, why))
    else:
        calls.append({"id": _call_id(entry), "name": name, "arguments": args})


def parse_tool_calls(text: str, tool_names: Sequence[str]) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Split a reply into (text, tool calls, unusable tool calls).

    Understands ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Hermes/Qwen
    style; the closing tag may be missing at the end) and a reply that is only a JSON call or a
    list of them (optionally in a code fence), with ``arguments`` or ``parameters``. A bare JSON
    reply naming no bound tool is ordinary text; a ``<tool_call>`` block that cannot be used
    becomes an unusable call (with the reason in ``error``).
    """
    names = set(tool_names)
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []

    if TOOL_CALL_OPEN in text:
        for match in _TOOL_CALL_RE.finditer(text):
            body = _unfence(match.group(1))
            try:
                entries = _entries(json.loads(body))
            except json.JSONDecodeError as exc:
                invalid.append(_invalid(None, body, f"invalid JSON: {exc}"))
                continue
            for entry in entries:
                _sort_call(entry, names, calls, invalid)
        return _TOOL_CALL_RE.sub("", text).strip(), calls, invalid

    body = _unfence(text)
    if body[:1] in ("{", "["):
        try:
            obj, end = json.JSONDecoder().raw_decode(body)
        except json.JSONDecodeError:
            return text, [], []
        entries = _entries(obj)
        parsed = [_name_and_args(e) for e in entries]
        if parsed and all(n is not None and n in names and _decode_args(a) is not None for n, a in parsed):
            for entry in entries:
                _sort_call(entry, names, calls, invalid)
            return body[end:].strip(), calls, invalid
    return text, [], []


def _from_model_parse(
    parsed: Mapping[str, Any], names: Sequence[str]
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """A ``ParsesResponses`` result (``content``, OpenAI-style ``tool_calls``) in the neutral shape."""
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    for entry in parsed.get("tool_calls") or []:
        _sort_call(entry, set(names), calls, invalid)
    content = parsed.get("content")
    return (content if isinstance(content, str) else "").strip(), calls, invalid


def parse_reply(
    lm: LanguageModel,
    text: str,
    *,
    tools: Sequence[Mapping[str, Any]],
    prefix: str | Callable[[], str] = "",
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """``parse_tool_calls`` of a reply, using the model's own response parser first when its engine
    offers one (``rain_core.protocols.ParsesResponses``) and it returns a result; ``prefix`` is the
    rendered prompt the reply continues (or a function that renders it, called only for such an
    engine). A parser that fails falls back to the shared one."""
    names = tool_names(tools)
    if isinstance(lm, ParsesResponses):
        try:
            parsed = lm.parse_response(text, prefix=prefix() if callable(prefix) else prefix, tools=tools)
        except Exception as exc:  # a model-specific parser that cannot read this reply
            logger.debug(
                "%s's response parser failed (%s); using the generic tool-call parser", getattr(lm, "name", lm), exc
            )
            parsed = None
        if isinstance(parsed, Mapping):
            return _from_model_parse(parsed, names)
    return parse_tool_calls(text, names)


def tool_call_start(text: str) -> int:
    """Where a tool call may begin in a partial reply: streaming holds the text from here back until
    the reply is complete, so call syntax never reaches the user as content."""
    stripped = text.lstrip()
    if not stripped or stripped[0] in "{[`":
        return 0
    idx = text.find(TOOL_CALL_OPEN)
    if idx >= 0:
        return idx
    for n in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(TOOL_CALL_OPEN[:n]):
            return len(text) - n
    return len(text)


class ToolCallHoldback:
    """What a streamed reply may show as it comes, written once for every adapter. With tools offered,
    text from where a tool call may begin is held back until the reply is complete, so call syntax
    never reaches the user as content; the last delta is settled against the parsed reply."""

    def __init__(self, tools_offered: bool) -> None:
        self.hold = tools_offered
        self.text = ""
        self.sent = 0

    @property
    def shown(self) -> str:
        """The text handed out so far."""
        return self.text[: self.sent]

    def release(self, piece: str) -> str:
        """Take in ``piece``; the new text that may be shown now (maybe empty)."""
        self.text += piece
        safe = tool_call_start(self.text) if self.hold else len(self.text)
        if safe <= self.sent:
            return ""
        new, self.sent = self.text[self.sent : safe], safe
        return new

    def last(self, piece: str, content: str, has_calls: bool) -> str:
        """The last delta, after the reply's last ``piece``: the rest of its text, or when the reply
        held tool calls, the rest of its parsed ``content`` (nothing, if that no longer starts with
        what was shown)."""
        self.text += piece
        shown, self.sent = self.shown, len(self.text)
        if not has_calls:
            return self.text[len(shown) :]
        return content[len(shown) :] if content.startswith(shown) else ""
