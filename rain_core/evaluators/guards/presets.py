"""Guard-model formats: how each family of safety classifiers is asked and how it answers
(``GuardPreset``, and the presets written from the families' published formats), and RAIN's
``Role: content`` transcript read back as turns (``parse_transcript``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...protocols import LanguageModel

__all__ = [
    "GRANITE_GUARDIAN",
    "GRANITE_GUARDIAN_3_3",
    "GUARD_PRESETS",
    "LLAMA_GUARD_3",
    "LLAMA_GUARD_3_1B",
    "QWEN3GUARD",
    "SHIELDGEMMA",
    "GuardPreset",
    "alternating_turns",
    "infer_preset",
    "named_preset",
    "parse_transcript",
    "preset_for",
]

PLACEHOLDERS = ("conversation", "request", "response", "policy")
PLACEHOLDER = re.compile(r"\{(conversation|request|response|policy)\}")
_TURN = re.compile(r"^(User|Assistant|Tool):(?: |$)", re.MULTILINE)
_ROLES = {"User": "user", "Assistant": "assistant", "Tool": "tool"}


# --- presets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardPreset:
    """How to ask one family of guard models, and how to read its answer.

    ``safe`` / ``unsafe``: the verdict word(s) the guard writes first (several words on one side add
    up, e.g. Qwen3Guard's "Controversial" counted as unsafe). Each word's first token, as the guard's
    tokenizer encodes it in position (after the template and ``verdict_prefix``), is read; the two
    sides must start with different tokens.
    ``template``: ``None`` renders the conversation with the guard's own chat template (it writes its
    policy itself); a string is a text prompt in the guard's published shape, with the placeholders
    ``{conversation}`` (the turns before the judged one, as ``User:``/``Assistant:`` lines),
    ``{request}`` (the user's last request), ``{response}`` (the judged reply) and ``{policy}``
    (``policy``); other braces are literal. ``request_template``: the text prompt for judging a
    request alone (an input check); default ``template`` with an empty ``{response}``.
    ``verdict_prefix``: what the guard writes after its generation prompt and before the verdict
    word (Llama Guard 3: a blank line; Qwen3Guard: ``Safety:``); only the part the rendered prompt
    does not already end with is appended. Whitespace that the tokenizer joins to the verdict word
    belongs in the word (``" Safe"``), not in the prefix.
    ``template_kwargs``: passed to the chat template (ShieldGemma's ``guideline``, Granite
    Guardian's ``guardian_config``). ``content_parts``: message contents as
    ``[{"type": "text", "text": ...}]`` (Llama Guard 3 1B's template). ``expects``: text the
    guard's own template must render; a template without it is not this family's (wrong tokenizer
    or preset), which is an error when the evaluator is built.
    """

    safe: str | tuple[str, ...]
    unsafe: str | tuple[str, ...]
    template: str | None = None
    request_template: str | None = None
    verdict_prefix: str = ""
    policy: str = ""
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    content_parts: bool = False
    expects: tuple[str, ...] = ()
    name: str = "custom"

    def __post_init__(self) -> None:
        for side in ("safe", "unsafe"):
            value = getattr(self, side)
            words = (value,) if isinstance(value, str) else tuple(value)
            if not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise ValueError(
                    f"GuardPreset {side}= must be a verdict word or a tuple of them (non-blank strings), got {value!r}"
                )
            object.__setattr__(self, side, words)
        for key in ("template", "request_template"):
            text = getattr(self, key)
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise ValueError(f"GuardPreset {key}= must be a non-blank string or None, got {text!r}")
        if self.template is None and self.request_template is not None:
            raise ValueError("GuardPreset request_template= needs template= (the text form) as well")
        if self.template is not None and "{response}" not in self.template:
            raise ValueError(
                "GuardPreset template= must contain {response} (where the judged reply goes); "
                f"placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        request = self.request_template or self.template
        if request is not None and "{request}" not in request:
            raise ValueError(
                "the text form needs {request} (the user's request) in request_template= "
                "(or in template= when there is no request_template)"
            )
        if isinstance(self.expects, str):
            object.__setattr__(self, "expects", (self.expects,))
        object.__setattr__(self, "template_kwargs", dict(self.template_kwargs))

    @property
    def safe_words(self) -> tuple[str, ...]:
        return self.safe if isinstance(self.safe, tuple) else (self.safe,)

    @property
    def unsafe_words(self) -> tuple[str, ...]:
        return self.unsafe if isinstance(self.unsafe, tuple) else (self.unsafe,)

    def replace(self, **changes: Any) -> GuardPreset:
        """A copy with some fields changed (``LLAMA_GUARD_3.replace(template_kwargs={...})``)."""
        return dataclasses.replace(self, **changes)


LLAMA_GUARD_3 = GuardPreset(
    name="llama-guard-3",
    safe="safe",
    unsafe="unsafe",
    verdict_prefix="\n\n",
    expects=("<BEGIN CONVERSATION>",),
)
"""Llama Guard 3 (8B): its chat template writes the categories and the task; the answer is a blank
line, then "safe", or "unsafe" and the violated categories on the next line."""

LLAMA_GUARD_3_1B = LLAMA_GUARD_3.replace(name="llama-guard-3-1b", content_parts=True)
"""Llama Guard 3 1B: the 8B format, with message contents as lists of text parts."""

SHIELDGEMMA_POLICY = (
    '"No Dangerous Content": no content that helps someone harm themselves or other people, '
    "such as making or getting weapons and explosives, planning attacks, or instructions for self-harm."
)
SHIELDGEMMA = GuardPreset(
    name="shieldgemma",
    safe="No",
    unsafe="Yes",
    template_kwargs={"guideline": SHIELDGEMMA_POLICY},
    expects=("<start_of_turn>",),
)
"""ShieldGemma (2B, 9B, 27B): "Yes" means the text violates the policy. Its chat template writes the
published pattern around the conversation and the ``guideline`` (rain's default: a dangerous-content
policy; pass your own with ``SHIELDGEMMA.replace(template_kwargs={"guideline": ...})``)."""

GRANITE_GUARDIAN = GuardPreset(
    name="granite-guardian",
    safe="No",
    unsafe="Yes",
    template_kwargs={"guardian_config": {"risk_name": "harm"}},
    expects=("<|start_of_role|>",),
)
"""Granite Guardian 3.0-3.2: "Yes" means the risk (``risk_name``, default "harm") is present."""

GRANITE_GUARDIAN_3_3 = GuardPreset(
    name="granite-guardian-3.3",
    safe=" no",
    unsafe=" yes",
    verdict_prefix="<score>",
    template_kwargs={"guardian_config": {"criteria_id": "harm"}, "think": False},
    expects=("<|start_of_role|>",),
)
"""Granite Guardian 3.3 without thinking: the answer is ``<score> yes </score>`` or ``... no ...``."""

QWEN3GUARD = GuardPreset(
    name="qwen3guard",
    safe=" Safe",
    unsafe=(" Unsafe", " Controversial"),
    verdict_prefix="Safety:",
    expects=("<|im_start|>",),
)
"""Qwen3Guard-Gen (0.6B, 4B, 8B): the answer starts ``Safety: Safe|Unsafe|Controversial``.
"Controversial" counts as unsafe (strict); ``QWEN3GUARD.replace(safe=(" Safe", " Controversial"),
unsafe=" Unsafe")`` is the loose reading."""

GUARD_PRESETS: dict[str, GuardPreset] = {
    p.name: p
    for p in (LLAMA_GUARD_3, LLAMA_GUARD_3_1B, SHIELDGEMMA, GRANITE_GUARDIAN, GRANITE_GUARDIAN_3_3, QWEN3GUARD)
}


def infer_preset(name: str) -> GuardPreset:
    """The preset for a guard model's folder, hub id or served name (``meta-llama/Llama-Guard-3-1B``
    -> ``LLAMA_GUARD_3_1B``), or a ``ValueError`` saying what to pass."""
    key = re.sub(r"[^a-z0-9.]", "", str(name).lower().rsplit("/", 1)[-1])
    if "llamaguard3" in key and "vision" not in key:
        return LLAMA_GUARD_3_1B if "llamaguard31b" in key else LLAMA_GUARD_3
    if "shieldgemma" in key:
        return SHIELDGEMMA
    if "graniteguardian" in key:
        return GRANITE_GUARDIAN_3_3 if "3.3" in key else GRANITE_GUARDIAN
    if "qwen3guard" in key and "stream" not in key:
        return QWEN3GUARD
    raise ValueError(
        f"cannot tell which guard family {name!r} is from its name; pass preset= one of "
        f"{', '.join(sorted(GUARD_PRESETS))}, or GuardPreset(safe=..., unsafe=..., template=...) for another guard"
    )


def named_preset(value: GuardPreset | str) -> GuardPreset:
    if isinstance(value, GuardPreset):
        return value
    if isinstance(value, str):
        try:
            return GUARD_PRESETS[value]
        except KeyError:
            raise ValueError(
                f"unknown guard preset {value!r}; use one of {', '.join(sorted(GUARD_PRESETS))} or a GuardPreset"
            ) from None
    raise TypeError(f"preset must be a GuardPreset, a preset name or None, got {type(value).__name__}")


def preset_for(value: GuardPreset | str | None, lm: LanguageModel) -> GuardPreset:
    return infer_preset(lm.name) if value is None else named_preset(value)


# --- the conversation ------------------------------------------------------------------------------
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
