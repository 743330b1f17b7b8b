"""Guard-model formats: how each family of safety classifiers is asked and how it answers
(``GuardPreset``, the presets written from the families' published formats, and telling a guard's
family from its name)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...protocols import LanguageModel
from .turns import alternating_turns, parse_transcript
from .wording import (
    GRANITE_GUARDIAN_4_1_HARM,
    GRANITE_GUARDIAN_4_1_PROMPT_ONLY,
    GRANITE_GUARDIAN_4_1_PROMPT_RESPONSE,
    SHIELDGEMMA_HARM_TYPES,
    granite_guardian_4_1_block,
)

__all__ = [
    "GRANITE_GUARDIAN",
    "GRANITE_GUARDIAN_3_3",
    "GRANITE_GUARDIAN_4_1",
    "GUARD_PRESETS",
    "LLAMA_GUARD_3",
    "LLAMA_GUARD_3_1B",
    "QWEN3GUARD",
    "SHIELDGEMMA",
    "SHIELDGEMMA_DEFAULT_HARM",
    "GuardPreset",
    "alternating_turns",
    "infer_preset",
    "named_preset",
    "parse_transcript",
    "preset_for",
    "shieldgemma",
]

PLACEHOLDERS = ("conversation", "request", "response", "policy")
PLACEHOLDER = re.compile(r"\{(conversation|request|response|policy)\}")


@dataclass(frozen=True)
class GuardPreset:
    """How to ask one family of guard models, and how to read its answer.

    ``safe`` / ``unsafe``: the verdict word(s) the guard writes (several words on one side add up,
    e.g. Qwen3Guard's "Controversial" counted as unsafe). Each word's first token, as the guard's
    tokenizer encodes it in position (after the prompt and ``verdict_prefix``), is read; the two
    sides must start with different tokens. ``variants``: also read each word's case and
    leading-space variants that the tokenizer writes as one token there ("yes", " Yes", "YES"), as
    IBM's evaluation code does for Granite Guardian.

    ``template``: ``None`` renders the conversation with the guard's own chat template (it writes its
    policy itself); a string is a text prompt in the guard's published shape, with the placeholders
    ``{conversation}`` (the turns before the judged one, as ``User:``/``Assistant:`` lines),
    ``{request}`` (the user's last request), ``{response}`` (the judged reply) and ``{policy}``
    (``policy``); other braces are literal. ``request_template``: the text prompt for judging a
    request alone (an input check); default ``template`` with an empty ``{response}``.

    ``verdict_prefix``: what the guard always writes after its generation prompt and before the
    verdict word (Qwen3Guard: ``Safety:``); only the part the rendered prompt does not already end
    with is appended. Whitespace that the tokenizer joins to the verdict word belongs in the word
    (``" Safe"``), not in the prefix. ``optional_prefix``: what the guard may or may not write before
    the verdict word (Llama Guard 3: a blank line); the verdict is read both right after the prompt
    and after this text, weighted by the guard's probability of writing it.

    ``template_kwargs``: passed to the chat template (ShieldGemma's ``guideline``, Granite
    Guardian's ``guardian_config``); ``request_template_kwargs``: the same when a request is judged
    (default ``template_kwargs``). ``instruction`` / ``request_instruction``: a last user message the
    chat template renders after the judged turn (Granite Guardian 4.1's ``<guardian>`` block).
    ``content_parts``: message contents as ``[{"type": "text", "text": ...}]`` (Llama Guard 3 1B's
    template).

    The family check, done before any scoring: ``special_tokens`` must each be one special token of
    the guard's tokenizer; ``expects`` is text the guard's template must render and ``rejects`` text
    it must not. A tokenizer or template that fails is another model's, which is an error that names
    the mismatch.
    """

    safe: str | tuple[str, ...]
    unsafe: str | tuple[str, ...]
    template: str | None = None
    request_template: str | None = None
    verdict_prefix: str = ""
    optional_prefix: str = ""
    variants: bool = False
    policy: str = ""
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    request_template_kwargs: Mapping[str, Any] | None = None
    instruction: str | None = None
    request_instruction: str | None = None
    content_parts: bool = False
    special_tokens: tuple[str, ...] = ()
    expects: tuple[str, ...] = ()
    rejects: tuple[str, ...] = ()
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
        for key in ("template", "request_template", "instruction", "request_instruction"):
            text = getattr(self, key)
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise ValueError(f"GuardPreset {key}= must be a non-blank string or None, got {text!r}")
        if self.template is None and self.request_template is not None:
            raise ValueError("GuardPreset request_template= needs template= (the text form) as well")
        if self.template is not None and self.instruction is not None:
            raise ValueError(
                "GuardPreset instruction= is a message for the guard's chat template; with template= write it there"
            )
        if self.instruction is None and self.request_instruction is not None:
            raise ValueError("GuardPreset request_instruction= needs instruction= as well")
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
        for key in ("special_tokens", "expects", "rejects"):
            value = getattr(self, key)
            object.__setattr__(self, key, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "template_kwargs", dict(self.template_kwargs))
        if self.request_template_kwargs is not None:
            object.__setattr__(self, "request_template_kwargs", dict(self.request_template_kwargs))

    @property
    def safe_words(self) -> tuple[str, ...]:
        return self.safe if isinstance(self.safe, tuple) else (self.safe,)

    @property
    def unsafe_words(self) -> tuple[str, ...]:
        return self.unsafe if isinstance(self.unsafe, tuple) else (self.unsafe,)

    def kwargs_for(self, request: bool) -> dict[str, Any]:
        """The chat-template arguments when judging a request (``request``) or a reply."""
        if request and self.request_template_kwargs is not None:
            return dict(self.request_template_kwargs)
        return dict(self.template_kwargs)

    def instruction_for(self, request: bool) -> str | None:
        """The last user message after the judged turn, if the family has one."""
        return (self.request_instruction or self.instruction) if request else self.instruction

    def replace(self, **changes: Any) -> GuardPreset:
        """A copy with some fields changed (``LLAMA_GUARD_3.replace(template_kwargs={...})``)."""
        return dataclasses.replace(self, **changes)


LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLAMA_GUARD_3 = GuardPreset(
    name="llama-guard-3",
    safe="safe",
    unsafe="unsafe",
    optional_prefix="\n\n",
    special_tokens=LLAMA3_SPECIALS,
    expects=("Task: Check if there is unsafe content in '", "<BEGIN UNSAFE CONTENT CATEGORIES>"),
)
"""Llama Guard 3 8B: its chat template writes the categories (S1-S14) and the task, and ends with the
assistant header. The guard answers "safe", or "unsafe" and the violated categories on the next
line; the 8B model writes a blank line first (third-party API outputs ``"\\n\\nsafe"``), so the verdict
is read both right after the header and after a blank line, weighted by the guard's probability of
the blank line. The card reads "the probability for the first token" as the unsafe probability.
Sources: https://github.com/meta-llama/PurpleLlama/blob/main/Llama-Guard3/8B/MODEL_CARD.md and the
model's chat template (tokenizer_config.json of meta-llama/Llama-Guard-3-8B)."""

LLAMA_GUARD_3_1B = LLAMA_GUARD_3.replace(name="llama-guard-3-1b", content_parts=True)
"""Llama Guard 3 1B: the 8B format (categories S1-S13), with message contents as lists of text parts
as its chat template requires. Meta's ExecuTorch guide reads the first generated token straight
after the template (19193 "safe", 39257 "unsafe"); the blank line is read as for the 8B model.
Sources: https://github.com/meta-llama/PurpleLlama/blob/main/Llama-Guard3/1B/MODEL_CARD.md,
https://github.com/meta-llama/PurpleLlama/blob/main/Llama-Guard3/1B/ET_INSTRUCTIONS.md."""

SHIELDGEMMA_DEFAULT_HARM = "dangerous"
"""ShieldGemma's default harm type in rain: Dangerous Content, the closest of its four to RAIN's
harmlessness principle (and the one Google's cookbook examples use)."""


def shieldgemma(harm: str = SHIELDGEMMA_DEFAULT_HARM) -> GuardPreset:
    """The ShieldGemma preset for one harm type: ``"dangerous"`` (Dangerous Content, the default),
    ``"harassment"``, ``"hate"`` (Hate Speech) or ``"sexual"`` (Sexually Explicit Information). A
    request is judged with the model card's prompt-only guideline, a reply with its prompt-response
    guideline, word for word (``wording.SHIELDGEMMA_HARM_TYPES``). ShieldGemma judges one harm type per
    prompt: to check several, build one evaluator per harm type."""
    try:
        title, prompt_only, prompt_response = SHIELDGEMMA_HARM_TYPES[harm]
    except KeyError:
        raise ValueError(
            f"unknown ShieldGemma harm type {harm!r}; use one of {', '.join(SHIELDGEMMA_HARM_TYPES)}"
        ) from None
    return GuardPreset(
        name="shieldgemma" if harm == SHIELDGEMMA_DEFAULT_HARM else f"shieldgemma-{harm}",
        safe="No",
        unsafe="Yes",
        template_kwargs={"guideline": prompt_response},
        request_template_kwargs={"guideline": prompt_only},
        special_tokens=("<bos>", "<start_of_turn>", "<end_of_turn>"),
        expects=("You are a policy expert trying to help determine whether", "Our safety principle is defined"),
    )


SHIELDGEMMA = shieldgemma()
"""ShieldGemma (2B, 9B, 27B) on Dangerous Content: "Yes" means the text violates the guideline. Its
chat template writes the published pattern around the last exchange and the ``guideline``; the
verdict is the next token after the prompt, read as Google's cookbook reads it (softmax over
"Yes"/"No" at the last position). Other harm types: ``shieldgemma("hate")`` or the presets
``shieldgemma-harassment``, ``shieldgemma-hate``, ``shieldgemma-sexual``. Sources:
https://ai.google.dev/gemma/docs/shieldgemma/model_card, google-gemini/gemma-cookbook
responsible/shieldgemma_on_huggingface.ipynb, and the model's chat template."""

GRANITE_SPECIALS = ("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>")
GRANITE_GUARDIAN = GuardPreset(
    name="granite-guardian",
    safe="No",
    unsafe="Yes",
    variants=True,
    template_kwargs={"guardian_config": {"risk_name": "harm"}},
    special_tokens=GRANITE_SPECIALS,
    expects=("You are a safety agent trying to help determine",),
)
"""Granite Guardian 3.0-3.2: its chat template (``guardian_config={"risk_name": "harm"}``) ends with
the assistant header and the guard writes "Yes" (the risk is present) or "No" first (3.2 adds a
``<confidence>`` line after it). Read at that first token, every token that reads yes/no once
stripped and lowercased counting, as IBM's code does; IBM's code also adds the yes/no probability of
the later generated steps, which rain does not read. Sources:
https://github.com/ibm-granite/granite-guardian (cookbooks/granite-guardian-3.0 to 3.2,
evaluation/models/granite_guardian_3.py) and the model's chat template."""

GRANITE_GUARDIAN_3_3 = GuardPreset(
    name="granite-guardian-3.3",
    safe=" no",
    unsafe=" yes",
    variants=True,
    verdict_prefix="<think>\n</think><score>",
    template_kwargs={"guardian_config": {"criteria_id": "harm"}, "think": False},
    special_tokens=GRANITE_SPECIALS,
    expects=("<|start_of_role|>judge_protocol<|end_of_role|>### Criteria: ",),
)
"""Granite Guardian 3.3 without thinking: the template ends with ``<|start_of_role|>judge{no_think}
<|end_of_role|>`` and the guard writes an empty think block, then ``<score> yes </score>`` or
``<score> no </score>`` (IBM's no-think notebook parses a trace of "\\n" and a score of " yes ").
Whether anything comes between ``</think>`` and ``<score>`` was not observed (IBM strips and parses
the text). Sources: https://github.com/ibm-granite/granite-guardian cookbooks/granite-guardian-3.3,
evaluation/models/granite_guardian_3_3.py, and the model's chat template."""

GRANITE_GUARDIAN_4_1 = GuardPreset(
    name="granite-guardian-4.1",
    safe=" no",
    unsafe=" yes",
    variants=True,
    verdict_prefix="<think>\n</think><score>",
    instruction=granite_guardian_4_1_block(GRANITE_GUARDIAN_4_1_HARM, GRANITE_GUARDIAN_4_1_PROMPT_RESPONSE),
    request_instruction=granite_guardian_4_1_block(GRANITE_GUARDIAN_4_1_HARM, GRANITE_GUARDIAN_4_1_PROMPT_ONLY),
    special_tokens=GRANITE_SPECIALS,
    expects=("<|start_of_role|>user<|end_of_role|><guardian><no-think>",),
    rejects=("judge_protocol", "You are a safety agent"),
)
"""Granite Guardian 4.1 without thinking: the conversation, then a last user message holding the
``<guardian>`` block (IBM's no-think judge instruction, the harm criterion of IBM's evaluation code,
and the prompt-response or prompt-only scoring schema), rendered with the model's chat template.
The guard writes ``<think>\\n</think><score> yes </score>``; IBM's evaluation code reads the yes/no
probability. Sources: https://github.com/ibm-granite/granite-guardian README.md,
cookbooks/granite-guardian-4.1, evaluation/models/granite_guardian_4_1.py."""

QWEN3GUARD = GuardPreset(
    name="qwen3guard",
    safe=" Safe",
    unsafe=(" Unsafe", " Controversial"),
    verdict_prefix="Safety:",
    special_tokens=("<|im_start|>", "<|im_end|>"),
    expects=("<BEGIN SAFETY POLICY>", "Provide your safety assessment for ONLY THE LAST"),
)
"""Qwen3Guard-Gen (0.6B, 4B, 8B): the template ends with an empty think block and the answer starts
``Safety: Safe|Unsafe|Controversial``. "Controversial" counts as unsafe, as Qwen's evaluation
(eval/eval_gen.py) counts it; ``QWEN3GUARD.replace(safe=(" Safe", " Controversial"), unsafe=" Unsafe")``
is the loose reading. Qwen's card parses the generated text; rain reads the probabilities of the
word after "Safety:". Sources: https://github.com/QwenLM/Qwen3Guard README.md and the model's chat
template."""

GUARD_PRESETS: dict[str, GuardPreset] = {
    p.name: p
    for p in (
        LLAMA_GUARD_3,
        LLAMA_GUARD_3_1B,
        SHIELDGEMMA,
        *(shieldgemma(h) for h in SHIELDGEMMA_HARM_TYPES if h != SHIELDGEMMA_DEFAULT_HARM),
        GRANITE_GUARDIAN,
        GRANITE_GUARDIAN_3_3,
        GRANITE_GUARDIAN_4_1,
        QWEN3GUARD,
    )
}

_GRANITE_VERSION = re.compile(r"granite[-_ ]?guardian[-_ ]?(\d+)(?:\.(\d+))?")
_GRANITE_SUPPORTED = "3.0, 3.1 and 3.2 (granite-guardian), 3.3 (granite-guardian-3.3), 4.1 (granite-guardian-4.1)"


def _granite(name: str) -> GuardPreset:
    m = _GRANITE_VERSION.search(name.lower())
    version = (int(m.group(1)), int(m.group(2) or 0)) if m and m.group(2) else None
    if version in ((3, 0), (3, 1), (3, 2)):
        return GRANITE_GUARDIAN
    if version == (3, 3):
        return GRANITE_GUARDIAN_3_3
    if version == (4, 1):
        return GRANITE_GUARDIAN_4_1
    found = f"version {version[0]}.{version[1]}" if version else "no version"
    raise ValueError(
        f"{name!r} names Granite Guardian with {found}; rain has the formats of versions {_GRANITE_SUPPORTED}. "
        "Pass preset= one of those if the model uses that format, or a GuardPreset written from its model card"
    )


def infer_preset(name: str) -> GuardPreset:
    """The preset for a guard model's folder, hub id or served name (``meta-llama/Llama-Guard-3-1B``
    -> ``LLAMA_GUARD_3_1B``), or a ``ValueError`` saying what to pass."""
    key = re.sub(r"[^a-z0-9.]", "", str(name).lower().rsplit("/", 1)[-1])
    if "llamaguard3" in key and "vision" not in key:
        return LLAMA_GUARD_3_1B if "llamaguard31b" in key else LLAMA_GUARD_3
    if "shieldgemma" in key and not re.search(r"shieldgemma[-_ ]?2[-_ ]\d", str(name).lower()):
        return SHIELDGEMMA  # ShieldGemma 2 (shieldgemma-2-4b-it) judges images
    if "graniteguardian" in key:
        return _granite(str(name).rsplit("/", 1)[-1])
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
