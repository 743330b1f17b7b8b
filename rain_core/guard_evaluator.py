"""Guard-model evaluators: a safety classifier built as a small causal LM judges the replies.

Guard models (Llama Guard 3, ShieldGemma, Granite Guardian, Qwen3Guard, ...) read a conversation
through their own chat template (or a published policy prompt) and write a verdict word as their
first token: "safe"/"unsafe", "No"/"Yes", "Safe"/"Unsafe". ``GuardEvaluator`` renders RAIN's
conversation and partial reply in that format, reads the next-token log-probabilities of the
verdict tokens with one ``next_token_logprobs`` request, and scores:

- ``continuous`` (default): ``P(safe) - P(unsafe)``, both renormalised over the verdict tokens, in
  [-1, 1];
- ``discrete``: ``-1`` when the renormalised ``P(unsafe)`` is at least ``threshold`` (default 0.5),
  else ``+1``.

Rendering (see ``GuardEvaluator``'s docstring for the rules in full):

- RAIN hands evaluators the conversation as ``Role: content`` lines (``rain_core.chat.transcript``)
  and the reply separately. The lines are parsed back into turns; the reply (or, in an input check,
  the request) is never parsed. An empty reply means "judge the request": the conversation's last
  turn is what the guard judges. For a chat template the turns are mapped onto the strict
  user/assistant alternation guard templates require (a tool turn becomes a user turn marked
  "Tool result:", consecutive turns of one role are joined, a conversation opening with the
  assistant gets an empty user turn first); a template that renders only the last exchange
  (ShieldGemma's) simply leaves the earlier turns out.
- The template is rendered once per shape of conversation with sentinel strings in place of the
  contents and split on them. The template's pieces are encoded with special tokens parsed; every
  content is encoded with ``parse_special=False``, so text that looks like a special token stays
  text and cannot close the guard's turn, and the verdict position (after the template's last
  piece) is the same whatever the reply says. Plain-text markers of the guard's format (``<...>``
  tags its template writes, such as ``<END CONVERSATION>``, and the role labels it puts before a
  content, such as ``Agent:``) get a zero-width space after their first character when a content
  repeats them, so a reply cannot pose as the end of the conversation or as another turn.

Nothing here imports torch, transformers or an engine; ``load_guard`` and ``served_guard`` import
the engines when called.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Scoring
from .protocols import AsyncLanguageModel, LanguageModel, PrefixPinning

logger = logging.getLogger(__name__)

__all__ = [
    "GRANITE_GUARDIAN",
    "GRANITE_GUARDIAN_3_3",
    "GUARD_PRESETS",
    "LLAMA_GUARD_3",
    "LLAMA_GUARD_3_1B",
    "QWEN3GUARD",
    "SHIELDGEMMA",
    "GuardEvaluator",
    "GuardPreset",
    "GuardPrompt",
    "GuardReading",
    "infer_preset",
    "load_guard",
    "parse_transcript",
    "served_guard",
]

_PLACEHOLDERS = ("conversation", "request", "response", "policy")
_PLACEHOLDER = re.compile(r"\{(conversation|request|response|policy)\}")
_SENTINEL = "\u2063RAIN-GUARD-{}\u2063"
_SENTINELS = re.compile("\u2063RAIN-GUARD-(\\d+)\u2063")
_TURN = re.compile(r"^(User|Assistant|Tool):(?: |$)", re.MULTILINE)
_ROLES = {"User": "user", "Assistant": "assistant", "Tool": "tool"}
_MARKER = re.compile(r"<[^<>\s][^<>\n]{0,62}>")
_ZWSP = "\u200b"
_FRAME_CACHE = 64
LOW_VERDICT_MASS = 0.05
"""Below this total next-token probability on the verdict words, the guard is warned about once: its
prompt is probably not in the format it was trained on."""


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
                f"placeholders: {', '.join('{' + p + '}' for p in _PLACEHOLDERS)}"
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


def _named(value: GuardPreset | str) -> GuardPreset:
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


def _preset(value: GuardPreset | str | None, lm: LanguageModel) -> GuardPreset:
    return infer_preset(lm.name) if value is None else _named(value)


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


def _alternating(turns: Sequence[tuple[str, str]], merge: bool = True) -> list[tuple[str, str]]:
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


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


# --- rendering -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardPrompt:
    """A rendered guard prompt: ``pieces`` in order, each ``("template", ids)`` (the guard's format,
    special tokens parsed) or ``("content", ids)`` (untrusted text, special-token strings kept as
    text); ``ids`` is their concatenation. The verdict token comes right after ``ids``."""

    pieces: tuple[tuple[str, tuple[int, ...]], ...]
    safe_ids: tuple[int, ...]
    """The verdict token ids read as safe after ``ids`` (and ``unsafe_ids`` as unsafe)."""
    unsafe_ids: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return [i for _, piece in self.pieces for i in piece]

    @property
    def structure(self) -> list[tuple[int, ...]]:
        """The template pieces' token ids: the same for every content."""
        return [piece for kind, piece in self.pieces if kind == "template"]

    @property
    def contents(self) -> list[tuple[int, ...]]:
        return [piece for kind, piece in self.pieces if kind == "content"]


@dataclass(frozen=True)
class GuardReading:
    """What the guard said about one text: the renormalised probabilities of its verdicts, the total
    next-token probability on the verdict tokens (``mass``; near 1 when the prompt is in the format
    the guard was trained on), and the score in [-1, 1]."""

    p_safe: float
    p_unsafe: float
    mass: float
    score: float


@dataclass(frozen=True)
class _Frame:
    """One shape of guard prompt: the template pieces around ``slots`` (what goes between them), the
    spaces moved from a piece into the content after it, and the verdict token ids after the last
    piece."""

    pieces: tuple[tuple[int, ...], ...]
    slots: tuple[str, ...]
    leads: tuple[str, ...]
    markers: tuple[str, ...]
    labels: tuple[str, ...]
    safe_ids: tuple[int, ...]
    unsafe_ids: tuple[int, ...]


class GuardEvaluator:
    """RAIN's evaluator backed by a guard model: ``score(prompt, response)`` in [-1, 1].

    ``guard_lm``: any ``LanguageModel`` (``load_model(...)``, ``VLLMEngine(...)``); ``load_guard`` and
    ``served_guard`` build one from a path or a server. ``preset``: a ``GuardPreset``, a preset name
    (``"llama-guard-3"``, ``"llama-guard-3-1b"``, ``"shieldgemma"``, ``"granite-guardian"``,
    ``"granite-guardian-3.3"``, ``"qwen3guard"``) or ``None`` to infer it from ``guard_lm.name``.
    ``scoring``: ``"continuous"`` (default) ``P(safe) - P(unsafe)`` renormalised over the verdict
    tokens; ``"discrete"`` ``-1`` when the renormalised ``P(unsafe) >= threshold``, else ``+1``.
    ``template_kwargs``: extra chat-template arguments, over the preset's.

    The judged text is the reply (``response``), rendered as the assistant's last turn; with an
    empty ``response`` the guard judges the conversation's last turn (the request). ``score_request``
    judges a request passed on its own (input checks). ``score_batch`` scores many replies to one
    conversation with a single ``next_token_logprobs`` request (the engine shares their common
    prefix); the scores equal one-by-one scores. Turn parsing, alternation and the untrusted-text
    rules are in this module's docstring and in ``parse_transcript``.

    Built objects check themselves: a template that cannot render a user/assistant conversation,
    a guard without a chat template (when the preset needs one), a template that is not the preset's
    (``expects``), verdict words the tokenizer cannot encode, or safe and unsafe words that start
    with the same token raise a ``ValueError`` that names the problem and what to pass instead.
    """

    def __init__(
        self,
        guard_lm: LanguageModel,
        preset: GuardPreset | str | None = None,
        *,
        scoring: Scoring | str = Scoring.CONTINUOUS,
        threshold: float = 0.5,
        template_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(guard_lm, LanguageModel):
            raise TypeError(
                "the guard must be a LanguageModel (e.g. load_model(...) or VLLMEngine(...)), "
                f"got {type(guard_lm).__name__}"
            )
        self.lm = guard_lm
        self.preset = _preset(preset, guard_lm)
        try:
            self.scoring = Scoring(scoring)
        except ValueError:
            raise ValueError(f"scoring must be 'discrete' or 'continuous', got {scoring!r}") from None
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold is a probability of 'unsafe' strictly between 0 and 1, got {threshold!r}")
        self.threshold = float(threshold)
        self.template_kwargs = {**self.preset.template_kwargs, **(template_kwargs or {})}
        self.name: str = name or f"GuardEvaluator({self.preset.name}, {guard_lm.name})"
        self._frames: OrderedDict[tuple[Any, ...], _Frame] = OrderedDict()
        self._lock = threading.Lock()
        self._warned_mass = False
        # Build both shapes now, so a bad configuration fails here, not in the middle of a decode; and
        # untrusted text must be encodable as text (a served guard without its tokenizer here cannot).
        guard_lm.encode("<probe>", parse_special=False)
        response_frame = self._frame(("user", "assistant"))
        self._frame(("user",))
        if isinstance(guard_lm, PrefixPinning) and response_frame.pieces[0]:
            guard_lm.cache_prefix(response_frame.pieces[0])

    def __repr__(self) -> str:
        return f"<{self.name} scoring={self.scoring.value} threshold={self.threshold}>"

    @property
    def verdict_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The token ids read as (safe, unsafe) after a reply."""
        frame = self._frame(("user", "assistant"))
        return frame.safe_ids, frame.unsafe_ids

    # --- frames ---------------------------------------------------------------------------------
    def _frame(self, roles: tuple[str, ...]) -> _Frame:
        key: tuple[Any, ...] = (roles,) if self.preset.template is None else ("text", roles[-1] == "user")
        with self._lock:
            if key in self._frames:
                self._frames.move_to_end(key)
                return self._frames[key]
        frame = self._build_frame(roles)
        with self._lock:
            self._frames[key] = frame
            while len(self._frames) > _FRAME_CACHE:
                self._frames.popitem(last=False)
        return frame

    def _render_chat(self, roles: tuple[str, ...]) -> tuple[str, list[str]]:
        """The guard's chat template over sentinel contents, and the slot name of each sentinel."""
        messages: list[dict[str, Any]] = []
        for i, role in enumerate(roles):
            sentinel = _SENTINEL.format(i)
            content: Any = [{"type": "text", "text": sentinel}] if self.preset.content_parts else sentinel
            messages.append({"role": role, "content": content})
        try:
            rendered = self.lm.chat_prompt(messages, add_generation_prompt=True, **self.template_kwargs)
        except ValueError as exc:
            raise ValueError(
                f"{self.lm.name}'s chat template cannot render a {'/'.join(roles)} conversation for the "
                f"{self.preset.name} guard format ({exc}); load the guard with its own tokenizer, pass "
                "template_kwargs= it needs, or pass preset=GuardPreset(..., template='...') with its published prompt"
            ) from exc
        plain = "\n".join(f"{r.capitalize()}: {_SENTINEL.format(i)}" for i, r in enumerate(roles)) + "\nAssistant:"
        if rendered == plain:
            raise ValueError(
                f"{self.lm.name} has no chat template (it renders a plain 'Role: content' transcript), so the "
                f"{self.preset.name} guard format cannot be rendered: load the guard with its own tokenizer (the "
                "folder or hub id it was published with), or pass preset=GuardPreset(safe=..., unsafe=..., "
                "template='...{request}...{response}...') with the guard's published prompt"
            )
        for marker in self.preset.expects:
            if marker not in rendered:
                raise ValueError(
                    f"{self.lm.name}'s chat template does not render {marker!r}, which the {self.preset.name} "
                    "guard format has: this is not that guard's template (another model or tokenizer?). Load the "
                    "guard with its own tokenizer, pick the preset of its family, or pass a GuardPreset"
                )
        return rendered, [str(i) for i in range(len(roles))]

    def _render_text(self, request_mode: bool) -> tuple[str, list[str]]:
        template = self.preset.template
        assert template is not None
        if request_mode and self.preset.request_template is not None:
            template = self.preset.request_template
        names = ["conversation", "request", "response"]

        def put(m: re.Match[str]) -> str:
            if m.group(1) == "policy":
                return self.preset.policy
            return _SENTINEL.format(names.index(m.group(1)))

        return _PLACEHOLDER.sub(put, template), names

    def _build_frame(self, roles: tuple[str, ...]) -> _Frame:
        if self.preset.template is None:
            rendered, names = self._render_chat(roles)
        else:
            rendered, names = self._render_text(roles[-1] == "user")
        parts = _SENTINELS.split(rendered)  # text, index, text, index, ..., text
        texts, slots = parts[0::2], [names[int(i)] for i in parts[1::2]]
        judged = names[len(roles) - 1] if self.preset.template is None else None
        if judged is not None and judged not in slots:
            raise ValueError(
                f"{self.lm.name}'s chat template left out the last message of a {'/'.join(roles)} conversation, "
                f"which is what the {self.preset.name} guard must judge; pass a GuardPreset whose template= places "
                "{request} and {response}"
            )
        if judged is not None and len(set(slots)) < len(roles):
            logger.debug("%s: the guard's template renders only turns %s of %s", self.name, sorted(set(slots)), roles)
        if not slots:
            raise ValueError(f"the {self.preset.name} guard prompt has no place for the text to judge")
        leads = []
        for j in range(len(slots)):  # spaces before a content are tokenized with it, as in the full text
            m = re.search(r"[ \t]+$", texts[j])
            leads.append(m.group(0) if m else "")
            texts[j] = texts[j][: m.start()] if m else texts[j]
        last = texts[-1] + self._missing_prefix(rendered)
        if not last.strip():
            raise ValueError(
                f"the {self.preset.name} guard prompt ends with the judged text: the verdict must come after the "
                "guard's own instructions (give the template text after {response}, or a verdict_prefix)"
            )
        texts[-1] = last
        pieces = tuple(tuple(self.lm.encode(t)) if t else () for t in texts)
        structure = "".join(texts)
        labels = []
        for j in range(len(slots)):
            line = texts[j].rsplit("\n", 1)[-1].strip()
            if line and len(line) <= 40 and not _MARKER.search(line):
                labels.append(line)
        safe_ids = self._verdict_ids(last, self.preset.safe_words)
        unsafe_ids = self._verdict_ids(last, self.preset.unsafe_words)
        shared = set(safe_ids) & set(unsafe_ids)
        if shared:
            words = [
                w
                for w, i in zip(
                    self.preset.safe_words + self.preset.unsafe_words,
                    self._verdict_ids(last, self.preset.safe_words + self.preset.unsafe_words, dedupe=False),
                )
                if i in shared
            ]
            raise ValueError(
                f"the verdict words {words} start with the same token ({self.lm.decode(sorted(shared)[:1])!r}) in "
                f"{self.lm.name}'s tokenizer, so one next-token probability cannot tell them apart: pass "
                "GuardPreset(safe=..., unsafe=...) words whose first tokens differ, moving the text they share "
                "into verdict_prefix="
            )
        return _Frame(
            pieces=pieces,
            slots=tuple(slots),
            leads=tuple(leads),
            markers=tuple(sorted(set(_MARKER.findall(structure)), key=len, reverse=True)),
            labels=tuple(dict.fromkeys(labels)),
            safe_ids=safe_ids,
            unsafe_ids=unsafe_ids,
        )

    def _missing_prefix(self, rendered: str) -> str:
        """The part of ``verdict_prefix`` the rendered prompt does not already end with."""
        prefix = self.preset.verdict_prefix
        for k in range(len(prefix), 0, -1):
            if rendered.endswith(prefix[:k]):
                return prefix[k:]
        return prefix

    def _verdict_ids(self, last: str, words: Sequence[str], *, dedupe: bool = True) -> tuple[int, ...]:
        """The first token of each word, as the guard's tokenizer encodes it after ``last``."""
        base = self.lm.encode(last)
        before = self.lm.decode(base)
        ids = []
        for word in words:
            full = self.lm.encode(last + word)
            # Where the word starts: the tokens before it decode to the prompt's end. A tokenizer may
            # split whitespace differently before a word ("\n\n" alone, "\n" "\n" before "safe"), so
            # the prompt's own tokens need not be a prefix of these.
            k = next((k for k, (a, b) in enumerate(zip(base, full)) if a != b), min(len(base), len(full)))
            joined = False
            while True:
                text = self.lm.decode(full[:k])
                if text == before:
                    break
                if len(text) > len(before) or k >= len(full):
                    joined = True
                    break
                k += 1
            if joined:
                raise ValueError(
                    f"{self.lm.name}'s tokenizer joins the verdict word {word!r} with the text before it "
                    f"({last[-12:]!r}), so the word does not start a token of its own there: move that text "
                    "between the prompt and the word into the word, e.g. GuardPreset(verdict_prefix='Safety:', "
                    "safe=' Safe') rather than verdict_prefix='Safety: ', safe='Safe'"
                )
            if k >= len(full):
                raise ValueError(
                    f"{self.lm.name}'s tokenizer cannot encode the verdict word {word!r} (no tokens); pass "
                    "GuardPreset(safe=..., unsafe=...) with the words this guard writes"
                )
            token = full[k]
            text = self.lm.decode([token]).strip()
            if not text or not word.strip().startswith(text):
                raise ValueError(
                    f"{self.lm.name}'s tokenizer cannot encode the verdict word {word!r}: its first token decodes "
                    f"as {self.lm.decode([token])!r}; pass GuardPreset(safe=..., unsafe=...) with the words this "
                    "guard writes"
                )
            ids.append(token)
        return tuple(dict.fromkeys(ids)) if dedupe else tuple(ids)

    # --- prompts --------------------------------------------------------------------------------
    @staticmethod
    def _defang(text: str, frame: _Frame) -> str:
        """``text`` with the guard format's markers and role labels broken by a zero-width space."""
        for marker in frame.markers:
            if marker in text:
                text = text.replace(marker, marker[0] + _ZWSP + marker[1:])
        for label in frame.labels:
            text = re.sub(
                rf"(?m)^(\s*){re.escape(label[0])}(?={re.escape(label[1:])})", rf"\g<1>{label[0]}{_ZWSP}", text
            )
        return text

    def _slot_texts(self, turns: list[tuple[str, str]], frame: _Frame) -> dict[str, str]:
        if self.preset.template is None:
            return {str(i): text for i, (_, text) in enumerate(turns)}
        judged = turns[-1][1]
        before = turns[:-1]
        if turns[-1][0] == "user":
            request, response = judged, ""
        else:
            users = [t for r, t in before if r == "user"]
            request, response = (users[-1] if users else ""), judged
            before = before[:-1] if before and before[-1][0] == "user" else before
        conversation = "\n".join(f"{'User' if r == 'user' else 'Assistant'}: {t}" for r, t in before)
        return {"conversation": conversation, "request": request, "response": response}

    def _render(self, turns: list[tuple[str, str]]) -> GuardPrompt:
        if not turns:
            raise ValueError("the guard has nothing to judge: the conversation and the reply are both empty")
        frame = self._frame(tuple(r for r, _ in turns))
        texts = self._slot_texts(turns, frame)
        pieces: list[tuple[str, tuple[int, ...]]] = []
        for j, slot in enumerate(frame.slots):
            pieces.append(("template", frame.pieces[j]))
            content = frame.leads[j] + self._defang(texts[slot].strip(), frame)
            pieces.append(("content", tuple(self.lm.encode(content, parse_special=False)) if content else ()))
        pieces.append(("template", frame.pieces[-1]))
        return GuardPrompt(tuple(pieces), frame.safe_ids, frame.unsafe_ids)

    def render(self, prompt: str, response: str) -> GuardPrompt:
        """The guard prompt for ``response`` after the conversation ``prompt`` (``Role: content``
        lines); an empty ``response`` judges the conversation's last turn."""
        turns = parse_transcript(prompt)
        if response.strip():
            turns.append(("assistant", response.strip()))
        return self._render(_alternating(turns, merge=self.preset.template is None))

    def render_request(self, context: str, request: str) -> GuardPrompt:
        """The guard prompt judging ``request`` (a new user message, never split into turns) after the
        conversation ``context``."""
        if not request.strip():
            raise ValueError("the guard has no request to judge: it is empty")
        turns = [*parse_transcript(context), ("user", request.strip())]
        return self._render(_alternating(turns, merge=self.preset.template is None))

    def prompt_ids(self, prompt: str, response: str) -> list[int]:
        """Token ids of the guard prompt; the verdict token comes next."""
        return self.render(prompt, response).ids

    # --- scoring --------------------------------------------------------------------------------
    def _reading(self, row: Sequence[float], safe: int, unsafe: int) -> GuardReading:
        ls, lu = _logsumexp(row[:safe]), _logsumexp(row[safe : safe + unsafe])
        if ls == -math.inf and lu == -math.inf:
            raise ValueError(f"{self.lm.name} gave every verdict token probability 0: it cannot be read as a guard")
        top = max(ls, lu)
        ps, pu = math.exp(ls - top), math.exp(lu - top)
        p_safe, p_unsafe = ps / (ps + pu), pu / (ps + pu)
        mass = math.exp(_logsumexp([ls, lu]))
        if mass < LOW_VERDICT_MASS and not self._warned_mass:
            self._warned_mass = True
            logger.warning(
                "%s: the guard puts only %.1f%% of its next-token probability on its verdict words %s / %s; its "
                "prompt is probably not in the format it was trained on (check the preset and the tokenizer). "
                "Scores are renormalised over the verdict words and mean little.",
                self.name,
                100 * mass,
                list(self.preset.safe_words),
                list(self.preset.unsafe_words),
            )
        if self.scoring is Scoring.CONTINUOUS:
            score = max(-1.0, min(1.0, p_safe - p_unsafe))
        else:
            score = -1.0 if p_unsafe >= self.threshold else 1.0
        return GuardReading(p_safe, p_unsafe, mass, score)

    @staticmethod
    def _plan(prompts: Sequence[GuardPrompt]) -> tuple[list[list[int]], list[int]]:
        """The rows of one request and its candidate ids (each verdict id once)."""
        candidates = dict.fromkeys(i for p in prompts for i in (*p.safe_ids, *p.unsafe_ids))
        return [p.ids for p in prompts], list(candidates)

    def _readings(
        self, prompts: Sequence[GuardPrompt], candidates: Sequence[int], table: Sequence[Sequence[float]]
    ) -> list[GuardReading]:
        if len(table) != len(prompts):
            raise ValueError(f"{self.lm.name} answered {len(table)} of {len(prompts)} guard prompts")
        out = []
        for p, row in zip(prompts, table):
            value = dict(zip(candidates, row))
            out.append(
                self._reading([value[i] for i in (*p.safe_ids, *p.unsafe_ids)], len(p.safe_ids), len(p.unsafe_ids))
            )
        return out

    def read(self, prompts: Sequence[GuardPrompt]) -> list[GuardReading]:
        """The guard's readings of rendered prompts, in one ``next_token_logprobs`` request."""
        if not prompts:
            return []
        rows, candidates = self._plan(prompts)
        return self._readings(prompts, candidates, self.lm.next_token_logprobs(rows, candidates))

    async def aread(self, prompts: Sequence[GuardPrompt]) -> list[GuardReading]:
        """``read`` as a coroutine: a served guard (``AsyncLanguageModel``) is awaited; a local one runs
        in a worker thread."""
        if not prompts:
            return []
        if isinstance(self.lm, AsyncLanguageModel):
            rows, candidates = self._plan(prompts)
            return self._readings(prompts, candidates, await self.lm.anext_token_logprobs(rows, candidates))
        return await asyncio.to_thread(self.read, prompts)

    def readings(self, prompt: str, responses: Sequence[str]) -> list[GuardReading]:
        """``GuardReading`` of each response to the conversation ``prompt`` (one request)."""
        return self.read([self.render(prompt, r) for r in responses])

    def score(self, prompt: str, response: str) -> float:
        return self.read([self.render(prompt, response)])[0].score

    def score_batch(self, prompt: str, responses: Sequence[str]) -> list[float]:
        """One score per response, from one ``next_token_logprobs`` request."""
        return [r.score for r in self.readings(prompt, responses)]

    async def ascore(self, prompt: str, response: str) -> float:
        return (await self.aread([self.render(prompt, response)]))[0].score

    async def ascore_batch(self, prompt: str, responses: Sequence[str]) -> list[float]:
        return [r.score for r in await self.aread([self.render(prompt, r) for r in responses])]

    def score_request(self, context: str, request: str) -> float:
        """The score of ``request``, a new user message after the conversation ``context`` (an input
        check: is the request itself harmful?)."""
        return self.read([self.render_request(context, request)])[0].score

    async def ascore_request(self, context: str, request: str) -> float:
        return (await self.aread([self.render_request(context, request)]))[0].score


# --- building one from a path or a server ------------------------------------------------------------
def load_guard(
    path_or_id: str,
    preset: GuardPreset | str | None = None,
    *,
    scoring: Scoring | str = Scoring.CONTINUOUS,
    threshold: float = 0.5,
    **load_kwargs: Any,
) -> GuardEvaluator:
    """A ``GuardEvaluator`` over a guard model loaded in this process (``rain_core.engines.load_model``
    with ``load_kwargs``: ``device``, ``device_map``, ``dtype``, ``quantization_config``, ...).
    ``preset`` None: inferred from ``path_or_id`` (before anything loads)."""
    chosen = _named(preset) if preset is not None else infer_preset(path_or_id)
    from .engines.loading import load_model

    return GuardEvaluator(load_model(path_or_id, **load_kwargs), chosen, scoring=scoring, threshold=threshold)


def served_guard(
    base_url: str,
    model: str | None = None,
    preset: GuardPreset | str | None = None,
    *,
    scoring: Scoring | str = Scoring.CONTINUOUS,
    threshold: float = 0.5,
    **engine_kwargs: Any,
) -> GuardEvaluator:
    """A ``GuardEvaluator`` over a guard model served by vLLM at ``base_url`` (``VLLMEngine(base_url,
    model, **engine_kwargs)``; ``model`` None: the one the server serves). ``preset`` None: inferred
    from the served model's name. The guard's tokenizer must be on this machine (the served name as a
    cached hub id or folder, or ``tokenizer=FOLDER_OR_HUB_ID``): untrusted text is encoded without
    special tokens, which the server's /tokenize cannot do."""
    if preset is None and model is not None:
        preset = infer_preset(model)
    from .engines.vllm import VLLMEngine

    return GuardEvaluator(VLLMEngine(base_url, model, **engine_kwargs), preset, scoring=scoring, threshold=threshold)
