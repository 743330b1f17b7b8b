"""A guard prompt in the guard's tokens, through the ``LanguageModel`` protocol only.

The guard's tokenizer encodes its whole prompt in one piece. A Hugging Face tokenizer does that by
splitting the text at its special tokens first and encoding each stretch between them on its own;
so rain splits the rendered prompt at the special tokens *its template* writes (the strings the
tokenizer encodes as one special token), and encodes each stretch between them, template text and
untrusted text together, with ``parse_special=False``. The ids are those of the one-piece encoding
(the template's punctuation and newlines join the judged text's, as in the guard's training), and
untrusted text still cannot become a special token. ``Specials.check_one_piece`` proves it for each
prompt shape on the guard's own tokenizer, and refuses a tokenizer where it does not hold. The
verdict tokens are found in position after the prompt (``read_verdicts``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...protocols import LanguageModel
from .presets import GuardPreset

__all__ = ["Segment", "Specials", "Verdict", "read_verdicts"]

_CANDIDATE = re.compile(r"<[^<>\s]{1,80}>|\[[^\[\]\s]{1,40}\]")


@dataclass(frozen=True)
class Segment:
    """A stretch of the prompt the tokenizer encodes on its own: one special token (``special``, its
    string, and ``ids``), or text between special tokens: ``parts`` of template text around
    ``slots`` (``len(parts) == len(slots) + 1``), with ``ids`` fixed when it holds no untrusted text."""

    parts: tuple[str, ...]
    slots: tuple[str, ...]
    ids: tuple[int, ...] | None
    special: str = ""

    @property
    def kind(self) -> str:
        """``"special"``, ``"template"`` (template text only) or ``"text"`` (holds untrusted text)."""
        if self.special:
            return "special"
        return "text" if self.slots else "template"

    def text(self, contents: Mapping[str, str]) -> str:
        if self.special:
            return self.special
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:]):
            out += [contents[slot], part]
        return "".join(out)


@dataclass(frozen=True)
class Verdict:
    """Where the verdict is read: after the prompt and ``prefix`` (token ids the guard may write
    first; empty: right after the prompt), and the ids read there as safe and as unsafe."""

    prefix: tuple[int, ...]
    safe_ids: tuple[int, ...]
    unsafe_ids: tuple[int, ...]


class Specials:
    """The guard tokenizer's special tokens among a template's strings, and prompts split at them."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self._ids: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def id_of(self, text: str) -> int | None:
        """The id of ``text`` when the tokenizer has it as one special token, else None."""
        with self._lock:
            if text in self._ids:
                return self._ids[text]
        parsed = self.lm.encode(text, parse_special=True)
        found = parsed[0] if len(parsed) == 1 and parsed != self.lm.encode(text, parse_special=False) else None
        with self._lock:
            self._ids[text] = found
        return found

    def split(self, text: str) -> list[str | tuple[str, int]]:
        """``text`` as runs of text and ``(string, id)`` of its special tokens, in order."""
        out: list[str | tuple[str, int]] = []
        start = 0
        for m in _CANDIDATE.finditer(text):
            token = self.id_of(m.group(0))
            if token is None:
                continue
            if m.start() > start:
                out.append(text[start : m.start()])
            out.append((m.group(0), token))
            start = m.end()
        if start < len(text):
            out.append(text[start:])
        return out

    def segments(self, texts: Sequence[str], slots: Sequence[str]) -> list[Segment]:
        """The prompt ``texts[0] slots[0] texts[1] ... texts[-1]`` as segments: template texts split
        at their special tokens (untrusted text never is)."""
        segments: list[Segment] = []
        parts: list[str] = [""]
        names: list[str] = []

        def close() -> None:
            if names or parts[0]:
                joined = "".join(parts)
                ids = None if names else tuple(self.lm.encode(joined, parse_special=False))
                segments.append(Segment(tuple(parts), tuple(names), ids))
            parts[:] = [""]
            names.clear()

        for j, text in enumerate(texts):
            for item in self.split(text):
                if isinstance(item, tuple):
                    close()
                    segments.append(Segment((), (), (item[1],), special=item[0]))
                else:
                    parts[-1] += item
            if j < len(slots):
                names.append(slots[j])
                parts.append("")
        close()
        return segments

    def encode(self, segments: Sequence[Segment], contents: Mapping[str, str]) -> list[tuple[str, tuple[int, ...]]]:
        """Each segment's kind and ids, the untrusted ``contents`` encoded as text."""
        out = []
        for seg in segments:
            ids = seg.ids if seg.ids is not None else tuple(self.lm.encode(seg.text(contents), parse_special=False))
            out.append((seg.kind, ids))
        return out

    def check_one_piece(self, segments: Sequence[Segment], contents: Mapping[str, str], where: str) -> None:
        """Raise unless the segments encode as the tokenizer encodes the whole prompt in one piece."""
        whole = self.lm.encode("".join(s.text(contents) for s in segments), parse_special=True)
        split = [i for _, ids in self.encode(segments, contents) for i in ids]
        if whole == split:
            return
        k = next((k for k, (a, b) in enumerate(zip(whole, split)) if a != b), min(len(whole), len(split)))
        raise ValueError(
            f"{self.lm.name}'s tokenizer does not encode the {where} prompt as its stretches between special "
            f"tokens encoded one by one (they differ from token {k}: {self.lm.decode(whole[k : k + 3])!r} in one "
            f"piece, {self.lm.decode(split[k : k + 3])!r} split), so rain cannot give the guard the tokens it was "
            "trained on and keep the judged text as plain text. GuardEvaluator needs a tokenizer that splits its "
            "special tokens out before encoding the text between them, as Hugging Face tokenizers do"
        )


# --- verdict tokens --------------------------------------------------------------------------------
def _locate(lm: LanguageModel, text: str, word: str) -> tuple[tuple[int, ...], int] | str:
    """Where ``word`` starts when the tokenizer encodes ``text + word`` in one piece: the tokens
    before it and its first token, or ``"joined"``/``"empty"`` when it cannot be read there."""
    base = lm.encode(text, parse_special=False)
    before = lm.decode(base)
    full = lm.encode(text + word, parse_special=False)
    # The tokens before the word decode to the text. A tokenizer may split whitespace differently
    # before a word ("\n\n" alone, "\n" "\n" before "safe"), so ``base`` need not be a prefix of ``full``.
    k = next((k for k, (a, b) in enumerate(zip(base, full)) if a != b), min(len(base), len(full)))
    while True:
        decoded = lm.decode(full[:k])
        if decoded == before:
            break
        if len(decoded) > len(before) or k >= len(full):
            return "joined"
        k += 1
    if k >= len(full):
        return "empty"
    return tuple(full[:k]), full[k]


def _variants(words: Sequence[str]) -> list[str]:
    """Case and leading-space variants of the words ("yes" -> "Yes", " yes", "YES", ...)."""
    out = []
    for word in words:
        core = word.strip()
        for form in dict.fromkeys((core, core.lower(), core.capitalize(), core.upper())):
            out += [form, " " + form]
    return [v for v in dict.fromkeys(out) if v not in words]


Ids = tuple[int, ...]


def _read_at(lm: LanguageModel, text: str, preset: GuardPreset) -> tuple[Ids, Ids, Ids]:
    """After ``text``: the tokens before the verdict words (the same for every word), and the first
    token of each safe and each unsafe word."""
    pre: tuple[int, ...] | None = None
    sides: list[list[int]] = [[], []]
    named: list[tuple[str, int]] = []
    for side, words in enumerate((preset.safe_words, preset.unsafe_words)):
        for word in words:
            found = _locate(lm, text, word)
            if found == "joined":
                raise ValueError(
                    f"{lm.name}'s tokenizer joins the verdict word {word!r} with the text before it ({text[-12:]!r}), "
                    "so the word does not start a token of its own there: move that text between the prompt and the "
                    "word into the word, e.g. GuardPreset(verdict_prefix='Safety:', safe=' Safe') rather than "
                    "verdict_prefix='Safety: ', safe='Safe'"
                )
            piece = lm.decode([found[1]]).strip() if isinstance(found, tuple) else ""
            if not isinstance(found, tuple) or not piece or not word.strip().startswith(piece):
                raise ValueError(
                    f"{lm.name}'s tokenizer cannot encode the verdict word {word!r} as a token of its own after the "
                    "prompt; pass GuardPreset(safe=..., unsafe=...) with the words this guard writes"
                )
            if pre is not None and found[0] != pre:
                raise ValueError(
                    f"{lm.name}'s tokenizer encodes the text before the verdict words differently for {word!r} "
                    f"({text[-12:]!r}), so they cannot be read at one position: end verdict_prefix= where every word "
                    "starts a token of its own"
                )
            pre = found[0]
            sides[side].append(found[1])
            named.append((word, found[1]))
        if preset.variants:
            for variant in _variants(words):
                found = _locate(lm, text, variant)
                if isinstance(found, tuple) and found[0] == pre and lm.decode([found[1]]).strip() == variant.strip():
                    sides[side].append(found[1])
    safe, unsafe = tuple(dict.fromkeys(sides[0])), tuple(dict.fromkeys(sides[1]))
    shared = set(safe) & set(unsafe)
    if shared:
        clashing = [w for w, i in named if i in shared]
        raise ValueError(
            f"the verdict words {clashing} start with the same token ({lm.decode(sorted(shared)[:1])!r}) in "
            f"{lm.name}'s tokenizer, so one next-token probability cannot tell them apart: pass "
            "GuardPreset(safe=..., unsafe=...) words whose first tokens differ, moving the text they share "
            "into verdict_prefix="
        )
    assert pre is not None
    return pre, safe, unsafe


def read_verdicts(
    lm: LanguageModel, tail: str, prefix: str, preset: GuardPreset, optional: str = ""
) -> tuple[tuple[int, ...], tuple[Verdict, ...]]:
    """The tokens of the prompt's last stretch ``tail`` (the template's text after its last special
    token) followed by ``prefix`` (what the guard always writes first), as the tokenizer encodes them
    before a verdict word; and where the verdict is read: right after them, and after ``optional``
    (what the guard may write first) when it is given."""
    pre, safe, unsafe = _read_at(lm, tail + prefix, preset)
    own = tuple(lm.encode(tail, parse_special=False))
    if pre[: len(own)] != own:
        raise ValueError(
            f"{lm.name}'s tokenizer joins what the guard writes first ({prefix!r}) with the end of its prompt "
            f"({tail[-12:]!r}), but the guard's answer starts after the prompt's last token: move that text "
            "out of verdict_prefix= (or into the template)"
        )
    verdicts = [Verdict((), safe, unsafe)]
    if optional:
        pre2, safe2, unsafe2 = _read_at(lm, tail + prefix + optional, preset)
        if pre2[: len(pre)] != pre or len(pre2) == len(pre):
            raise ValueError(
                f"{lm.name}'s tokenizer joins optional_prefix={optional!r} with the prompt's end, so "
                "the verdict cannot be read both before and after it; pass a GuardPreset without it"
            )
        verdicts.append(Verdict(pre2[len(pre) :], safe2, unsafe2))
    return pre, tuple(verdicts)
