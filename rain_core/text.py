"""Token ids to text as they arrive, at a cost per token that does not grow with the text so far.

``IncrementalText`` decodes only a short window of ids at a time (the method of vLLM's and Hugging
Face's streamers): each new piece is the difference between the decoded window with and without the
new ids, held back while it ends in an unfinished character. For a tokenizer whose decoding of a
sequence is the join of its pieces at character boundaries (byte-level BPE, SentencePiece), the text
equals ``decode(all ids)``.

``AnswerText`` is a decode's answer on top of it: the text cut at the first stop string, and the part
of it that is final (no possible stop-string start and no unfinished character at its end), found by
looking only at the text's tail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["AnswerText", "IncrementalText"]

_UNFINISHED = "\ufffd"


class IncrementalText:
    """The text of a growing list of token ids, decoded a window at a time."""

    def __init__(self, decode: Callable[[Sequence[int]], str], ids: Sequence[int] = ()) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # the window starts here: ids already in ``text`` that give the next ones context
        self._read = 0  # ids up to here are in ``text``
        if ids:
            self.extend(ids)

    def extend(self, ids: Sequence[int]) -> str:
        """Append ``ids``; returns the text they complete (empty while a character is unfinished)."""
        self.ids.extend(ids)
        return self._advance(final=False)

    def text_with(self, extra: Sequence[int]) -> str:
        """``decode(ids + extra)`` without decoding ``ids`` again: only the window past the last
        character boundary is decoded with ``extra``."""
        return self.text + self._delta(extra)

    def tail_with(self, extra: Sequence[int], keep: int) -> str:
        """The last ``keep`` characters of ``text``, then the text ``extra`` adds (for checks that look
        only at the end: a clause boundary, a stop string that ``extra`` completes)."""
        return self.text[len(self.text) - keep :] + self._delta(extra) if keep else self._delta(extra)

    def _delta(self, extra: Sequence[int]) -> str:
        before = self._decode(self.ids[self._prefix : self._read])
        return self._decode(self.ids[self._prefix :] + list(extra))[len(before) :]

    def flush(self) -> str:
        """Everything not yet in ``text``, unfinished characters included (as ``decode`` gives them)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self.ids):
            return ""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if not final and (len(after) <= len(before) or after.endswith(_UNFINISHED)):
            return ""
        piece = after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += piece
        return piece


class AnswerText:
    """A decode's answer as its token ids are committed: ``text`` (cut at the first stop string),
    ``stopped`` (a stop string was reached), and ``release()``: the new part of it that is final."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str]) -> None:
        self._text = IncrementalText(decode)
        self.stops = tuple(stops)
        self._reach = max((len(s) for s in self.stops), default=1)
        self._checked = 0  # the stop strings were looked for in text[:_checked]
        self._cut: int | None = None
        self._released = 0

    @property
    def stopped(self) -> bool:
        return self._cut is not None

    @property
    def text(self) -> str:
        full = self._text.text
        return full if self._cut is None else full[: self._cut]

    def extend(self, ids: Sequence[int]) -> None:
        self._text.extend(ids)
        self._look_for_stops()

    def finish(self) -> None:
        """The answer has ended: its unfinished characters count as they are."""
        self._text.flush()
        self._look_for_stops()

    def _look_for_stops(self) -> None:
        if self._cut is not None or not self.stops:
            return
        full = self._text.text
        start = max(0, self._checked - self._reach + 1)  # a stop string may straddle the last check
        found = [i for i in (full.find(s, start) for s in self.stops) if i >= 0]
        if found:
            self._cut = min(found)
        self._checked = len(full)

    def release(self, final: bool = False) -> str:
        """The text not released yet that is final now (all of it once ``final``): a possible start of a
        stop string at the end waits for the next piece."""
        text = self.text
        end = len(text)
        if not final and self._cut is None:
            end -= _stop_prefix(text[-self._reach :], self.stops)
        if end <= self._released:
            return ""
        piece = text[self._released : end]
        self._released = end
        return piece


def _stop_prefix(tail: str, stops: Sequence[str]) -> int:
    """The length of the longest start of a stop string that ``tail`` ends with."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(tail)), longest, -1):
            if tail.endswith(s[:n]):
                longest = n
                break
    return longest
