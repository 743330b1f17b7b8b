"""Guard prompts: RAIN's conversation and reply rendered in a guard model's own format, with the
untrusted text kept as text, and the verdict tokens read after them (``GuardFormat``).

The template is rendered once per shape of conversation with sentinel strings in place of the
contents and split on them. The template's pieces are encoded with special tokens parsed; every
content is encoded with ``parse_special=False``, so text that looks like a special token stays text
and cannot close the guard's turn, and the verdict position (after the template's last piece) is the
same whatever the reply says. Plain-text markers of the guard's format (``<...>`` tags its template
writes, such as ``<END CONVERSATION>``, and the role labels it puts before a content, such as
``Agent:``) get a zero-width space after their first character when a content repeats them.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...protocols import LanguageModel
from .presets import PLACEHOLDER, GuardPreset, alternating_turns, parse_transcript

logger = logging.getLogger(__name__)

__all__ = ["Frame", "GuardFormat", "GuardPrompt"]

_SENTINEL = "\u2063RAIN-GUARD-{}\u2063"
_SENTINELS = re.compile("\u2063RAIN-GUARD-(\\d+)\u2063")
_MARKER = re.compile(r"<[^<>\s][^<>\n]{0,62}>")
_ZWSP = "\u200b"
_FRAME_CACHE = 64


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
class Frame:
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


class GuardFormat:
    """A guard's format on one guard model: renders conversations (``render``, ``render_request``)
    and knows the verdict token ids (``verdict_ids``). Building one checks the template and the
    verdict words, and raises a ``ValueError`` that names the problem and what to pass instead."""

    def __init__(self, lm: LanguageModel, preset: GuardPreset, template_kwargs: Mapping[str, Any], name: str) -> None:
        self.lm = lm
        self.preset = preset
        self.template_kwargs = dict(template_kwargs)
        self.name = name
        self._frames: OrderedDict[tuple[Any, ...], Frame] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def verdict_ids(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The token ids read as (safe, unsafe) after a reply."""
        frame = self.frame(("user", "assistant"))
        return frame.safe_ids, frame.unsafe_ids

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

        return PLACEHOLDER.sub(put, template), names

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
        return Frame(
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

    def _slot_texts(self, turns: list[tuple[str, str]], frame: Frame) -> dict[str, str]:
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
