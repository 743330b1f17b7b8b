"""Guard prompts: RAIN's conversation and reply rendered in a guard model's own format, in the tokens
the guard's tokenizer gives the whole prompt, with the untrusted text kept as text; and the family
check (``GuardFormat``).

The template is rendered once per shape of conversation with sentinel strings in place of the
contents and split on them. The rendered prompt is cut at the special tokens the template writes,
and each stretch between them, template text and contents together, is encoded as text
(``parse_special=False``): the same ids as the tokenizer's one-piece encoding of the whole prompt
(checked on the guard's tokenizer for every shape), while text that looks like a special token
stays text and cannot close the guard's turn. The verdict is read after the template's last stretch,
whatever the reply says. Plain-text markers of the guard's format (``<...>`` tags its template
writes, such as ``<END CONVERSATION>``, and the role labels it puts before a content, such as
``Agent:``) get a zero-width space after their first character when a content repeats them.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...protocols import LanguageModel
from .presets import PLACEHOLDER, GuardPreset
from .tokens import Segment, Specials, Verdict, read_verdicts
from .turns import alternating_turns, parse_transcript

logger = logging.getLogger(__name__)

__all__ = ["Frame", "GuardFormat", "GuardPrompt"]

_SENTINEL = "\u2063RAIN-GUARD-{}\u2063"
_SENTINELS = re.compile("\u2063RAIN-GUARD-(\\d+)\u2063")
_MARKER = re.compile(r"<[^<>\s][^<>\n]{0,62}>")
_ZWSP = "\u200b"
_FRAME_CACHE = 64
# Stand-in contents for checking a prompt shape: they end with punctuation, which Llama 3's and
# Qwen2's pre-tokenizers join with the newlines a template writes after a content.
_PROBES = ("Is it safe? Mix flour, water and salt, then bake it.", "1) No.")


# --- rendering -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardPrompt:
    """A rendered guard prompt: ``pieces`` in order, each ``(kind, ids)``: ``"special"`` (a special
    token of the template), ``"template"`` (template text only) or ``"text"`` (a stretch holding
    untrusted text, encoded as text); ``ids`` is their concatenation. ``verdicts``: where the
    verdict is read (right after ``ids``, and after the guard's optional prefix)."""

    pieces: tuple[tuple[str, tuple[int, ...]], ...]
    verdicts: tuple[Verdict, ...]

    @property
    def ids(self) -> list[int]:
        return [i for _, piece in self.pieces for i in piece]

    @property
    def safe_ids(self) -> tuple[int, ...]:
        """The token ids read as safe right after ``ids`` (and ``unsafe_ids`` as unsafe)."""
        return self.verdicts[0].safe_ids

    @property
    def unsafe_ids(self) -> tuple[int, ...]:
        return self.verdicts[0].unsafe_ids

    @property
    def structure(self) -> list[tuple[int, ...]]:
        """The ids of the pieces without untrusted text: the same for every content."""
        return [piece for kind, piece in self.pieces if kind != "text"]

    @property
    def contents(self) -> list[tuple[int, ...]]:
        """The ids of the pieces holding untrusted text."""
        return [piece for kind, piece in self.pieces if kind == "text"]


@dataclass(frozen=True)
class Frame:
    """One shape of guard prompt: its segments (``tokens.Segment``), the markers and role labels of
    the format, where the verdict is read, and ``head``, the ids every prompt of the shape starts with."""

    segments: tuple[Segment, ...]
    markers: tuple[str, ...]
    labels: tuple[str, ...]
    verdicts: tuple[Verdict, ...]
    head: tuple[int, ...]


class GuardFormat:
    """A guard's format on one guard model: renders conversations (``render``, ``render_request``)
    and knows the verdict token ids (``verdict_ids``). Building one checks that the tokenizer is the
    family's (``special_tokens``); each prompt shape checks the template (``expects``, ``rejects``),
    the tokenization and the verdict words, and raises a ``ValueError`` that names the problem."""

    def __init__(self, lm: LanguageModel, preset: GuardPreset, template_kwargs: Mapping[str, Any], name: str) -> None:
        self.lm = lm
        self.preset = preset
        self.template_kwargs = dict(template_kwargs)
        self.name = name
        self.specials = Specials(lm)
        self._frames: OrderedDict[tuple[Any, ...], Frame] = OrderedDict()
        self._lock = threading.Lock()
        missing = [t for t in preset.special_tokens if self.specials.id_of(t) is None]
        if missing:
            raise ValueError(
                f"{lm.name}'s tokenizer has no special token {', '.join(map(repr, missing))}, which "
                f"{preset.name} guards' tokenizers have: this is another model's tokenizer. Load the guard with "
                "its own tokenizer, pick the preset of its family, or pass a GuardPreset (special_tokens=() "
                "skips this check)"
            )

    @property
    def verdict_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The token ids read as (safe, unsafe) right after the prompt of a reply."""
        verdict = self.frame(("user", "assistant")).verdicts[0]
        return verdict.safe_ids, verdict.unsafe_ids

    def kwargs_for(self, request: bool) -> dict[str, Any]:
        """The chat-template arguments of a request check (``request``) or of a reply's."""
        return {**self.preset.kwargs_for(request), **self.template_kwargs}

    # --- frames ---------------------------------------------------------------------------------
    def frame(self, roles: tuple[str, ...]) -> Frame:
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
        request = roles[-1] == "user"
        turns = [(role, _SENTINEL.format(i)) for i, role in enumerate(roles)]
        instruction = self.preset.instruction_for(request)
        if instruction is not None:
            turns.append(("user", instruction))
        messages: list[dict[str, Any]] = []
        for role, text in turns:
            content: Any = [{"type": "text", "text": text}] if self.preset.content_parts else text
            messages.append({"role": role, "content": content})
        try:
            rendered = self.lm.chat_prompt(messages, add_generation_prompt=True, **self.kwargs_for(request))
        except ValueError as exc:
            raise ValueError(
                f"{self.lm.name}'s chat template cannot render a {'/'.join(roles)} conversation for the "
                f"{self.preset.name} guard format ({exc}); load the guard with its own tokenizer, pass "
                "template_kwargs= it needs, or pass preset=GuardPreset(..., template='...') with its published prompt"
            ) from exc
        plain = "\n".join(f"{r.capitalize()}: {t}" for r, t in turns) + "\nAssistant:"
        if rendered == plain:
            raise ValueError(
                f"{self.lm.name} has no chat template (it renders a plain 'Role: content' transcript), so the "
                f"{self.preset.name} guard format cannot be rendered: load the guard with its own tokenizer (the "
                "folder or hub id it was published with), or pass preset=GuardPreset(safe=..., unsafe=..., "
                "template='...{request}...{response}...') with the guard's published prompt"
            )
        self._check_family(rendered, "a request" if request else "a reply")
        return rendered, [str(i) for i in range(len(roles))]

    def _check_family(self, rendered: str, judged: str) -> None:
        missing = [m for m in self.preset.expects if m not in rendered]
        foreign = [m for m in self.preset.rejects if m in rendered]
        if missing or foreign:
            what = f"does not render {', '.join(map(repr, missing))}" if missing else f"renders {foreign[0]!r}"
            raise ValueError(
                f"{self.lm.name}'s chat template {what} when it renders {judged} to judge, and the "
                f"{self.preset.name} guard format {'has' if missing else 'has not'} it: this is not that guard's "
                "template (another model, or a chat model that is no guard?). Load the guard with its own "
                "tokenizer, pick the preset of its family, or pass a GuardPreset"
            )

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

        rendered = PLACEHOLDER.sub(put, template)
        self._check_family(rendered, "a request" if request_mode else "a reply")
        return rendered, names

    def _build_frame(self, roles: tuple[str, ...]) -> Frame:
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
        where = f"{self.preset.name} ({'/'.join(roles)})"
        segments = self.specials.segments(texts, slots)
        probe = {slot: _PROBES[0] for slot in slots}
        self.specials.check_one_piece(segments, probe, where)
        segments, verdicts = self._with_verdict_prefix(segments, rendered, probe)
        first, second = (self.specials.encode(segments, {s: p for s in slots}) for p in _PROBES)
        a, b = [i for _, ids in first for i in ids], [i for _, ids in second for i in ids]
        head = a[: next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))]
        labels = []
        for j in range(len(slots)):
            line = texts[j].rsplit("\n", 1)[-1].strip()
            if line and len(line) <= 40 and not _MARKER.search(line):
                labels.append(line)
        return Frame(
            segments=tuple(segments),
            markers=tuple(
                sorted(set(_MARKER.findall("".join(texts) + self.preset.verdict_prefix)), key=len, reverse=True)
            ),
            labels=tuple(dict.fromkeys(labels)),
            verdicts=verdicts,
            head=tuple(head),
        )

    def _with_verdict_prefix(
        self, segments: list[Segment], rendered: str, probe: Mapping[str, str]
    ) -> tuple[list[Segment], tuple[Verdict, ...]]:
        """The segments with what the guard writes before its verdict appended (the last stretch in
        the tokens the guard's tokenizer gives it before a verdict word), and where the verdict is read."""
        prefix = self._missing_prefix(rendered)
        optional = self.preset.optional_prefix
        if optional and (rendered + prefix).endswith(optional):
            optional = ""  # the template already writes it
        last = segments[-1]
        if last.kind == "special":
            tail_ids, verdicts = read_verdicts(self.lm, "", prefix, self.preset, optional)
            return segments + ([Segment((prefix,), (), tail_ids)] if prefix or tail_ids else []), verdicts
        if last.kind == "template":
            tail_ids, verdicts = read_verdicts(self.lm, last.parts[0], prefix, self.preset, optional)
            return segments[:-1] + [Segment((last.parts[0] + prefix,), (), tail_ids)], verdicts
        if not (last.parts[-1] + prefix).strip():
            raise ValueError(
                f"the {self.preset.name} guard prompt ends with the judged text: the verdict must come after the "
                "guard's own instructions (give the template text after {response}, or a verdict_prefix)"
            )
        text = last.text(probe)
        tail_ids, verdicts = read_verdicts(self.lm, text, prefix, self.preset, optional)
        if list(tail_ids) != self.lm.encode(text + prefix, parse_special=False):
            raise ValueError(
                f"{self.lm.name}'s tokenizer encodes the end of the {self.preset.name} prompt differently before "
                "a verdict word, and the judged text is in that stretch: end the template with a special token "
                "or with text after which the verdict word starts a token of its own"
            )
        return segments[:-1] + [Segment(last.parts[:-1] + (last.parts[-1] + prefix,), last.slots, None)], verdicts

    def _missing_prefix(self, rendered: str) -> str:
        """The part of ``verdict_prefix`` the rendered prompt does not already end with."""
        prefix = self.preset.verdict_prefix
        for k in range(len(prefix), 0, -1):
            if rendered.endswith(prefix[:k]):
                return prefix[k:]
        return prefix

    # --- prompts --------------------------------------------------------------------------------
    @staticmethod
    def _defang(text: str, frame: Frame) -> str:
        """``text`` with the guard format's markers and role labels broken by a zero-width space."""
        for marker in frame.markers:
            if marker in text:
                text = text.replace(marker, marker[0] + _ZWSP + marker[1:])
        for label in frame.labels:
            text = re.sub(
                rf"(?m)^(\s*){re.escape(label[0])}(?={re.escape(label[1:])})", rf"\g<1>{label[0]}{_ZWSP}", text
            )
        return text

    def _slot_texts(self, turns: list[tuple[str, str]]) -> dict[str, str]:
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

    def render_turns(self, turns: list[tuple[str, str]]) -> GuardPrompt:
        if not turns:
            raise ValueError("the guard has nothing to judge: the conversation and the reply are both empty")
        frame = self.frame(tuple(r for r, _ in turns))
        contents = {slot: self._defang(text.strip(), frame) for slot, text in self._slot_texts(turns).items()}
        return GuardPrompt(tuple(self.specials.encode(frame.segments, contents)), frame.verdicts)

    def render(self, prompt: str, response: str) -> GuardPrompt:
        """The guard prompt for ``response`` after the conversation ``prompt`` (``Role: content``
        lines); an empty ``response`` judges the conversation's last turn."""
        turns = parse_transcript(prompt)
        if response.strip():
            turns.append(("assistant", response.strip()))
        return self.render_turns(alternating_turns(turns, merge=self.preset.template is None))

    def render_request(self, context: str, request: str) -> GuardPrompt:
        """The guard prompt judging ``request`` (a new user message, never split into turns) after the
        conversation ``context``."""
        if not request.strip():
            raise ValueError("the guard has no request to judge: it is empty")
        turns = [*parse_transcript(context), ("user", request.strip())]
        return self.render_turns(alternating_turns(turns, merge=self.preset.template is None))

    def prompt_ids(self, prompt: str, response: str) -> list[int]:
        """Token ids of the guard prompt; the verdict token comes next."""
        return self.render(prompt, response).ids
