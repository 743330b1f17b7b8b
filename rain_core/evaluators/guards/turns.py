"""RAIN's ``Role: content`` transcript read back as turns (``parse_transcript``), and the turns put in
the strict user/assistant alternation guard templates require (``alternating_turns``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["alternating_turns", "parse_transcript"]

_TURN = re.compile(r"^(User|Assistant|Tool):(?: |$)", re.MULTILINE)
_ROLES = {"User": "user", "Assistant": "assistant", "Tool": "tool"}


def parse_transcript(prompt: str) -> list[tuple[str, str]]:
    """``Role: content`` lines (``rain_core.chat.transcript``) back into ``(role, content)`` turns.

    A turn starts at a line beginning with ``User:``, ``Assistant:`` or ``Tool:``; the lines after it
    up to the next such line are its content. Text before the first such line is a user turn (a
    bare prompt). The transcript cannot tell a line of a message that itself starts with "User:" from
    a new turn: such a message is split there. No text is lost (every piece still reaches the guard,
    in order), only its role may be wrong; the judged reply or request is passed separately and is
    never split."""
    turns: list[tuple[str, str]] = []
    matches = list(_TURN.finditer(prompt))
    head = prompt[: matches[0].start()] if matches else prompt
    if head.strip():
        turns.append(("user", head.strip()))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(prompt)
        turns.append((_ROLES[m.group(1)], prompt[m.end() : end].strip()))
    return turns


def alternating_turns(turns: Sequence[tuple[str, str]], merge: bool = True) -> list[tuple[str, str]]:
    """Turns in the strict user/assistant alternation guard templates require: a tool turn becomes a
    user turn marked "Tool result:", consecutive turns of one role are joined by a blank line
    (``merge``), and a conversation that opens with the assistant gets an empty user turn first."""
    out: list[tuple[str, str]] = []
    for role, text in turns:
        if role == "tool":
            role, text = "user", f"Tool result: {text}".strip()
        if merge and out and out[-1][0] == role:
            out[-1] = (role, "\n\n".join(t for t in (out[-1][1], text) if t))
        else:
            out.append((role, text))
    if out and out[0][0] != "user":
        out.insert(0, ("user", ""))
    return out
