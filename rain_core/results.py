"""What a decode hands up: a ``Commit`` per committed token set, and at the end a ``RainResult`` (the
text, why it ended, what it cost) with its JSON trace."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FINISH_REASONS = ("eos", "stop", "length", "time", "refused")
TRACE_VERSION = 2


@dataclass
class RainResult:
    """A finished decode: the text, its token ids, why it ended, and what it cost.

    ``finish_reason``: "eos", "stop", "length", "time" (``max_seconds`` passed), or "refused" (a
    decoder that checks its answers rejected every one and answered with its refusal:
    ``CheckRetryDecoder``)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def trace(self) -> dict[str, Any]:
        """The decode as JSON-ready data (schema ``rain.trace`` version 2, docs/integrations.md, "Trace
        schema"): the answer, why it ended, its cost, and one entry per commit (token ids, text,
        searches, visits, value, seconds; and the search tree when decoded with ``keep_trees=True``).
        Draw a commit's tree with ``rain_core.plotting.plot_tree(trace["commits"][i])``."""
        stats = {k: v for k, v in self.stats.items() if k != "commit_log"}
        return {
            "schema": "rain.trace",
            "version": TRACE_VERSION,
            "text": self.text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "stats": stats,
            "commits": list(self.stats.get("commit_log", [])),
        }


@dataclass(frozen=True)
class Commit:
    """One committed token set, as the search hands it up through the decoder and the streams to the
    adapters, who pass it on without asking the search anything.

    ``token_ids``: the ids committed. ``text``: the text they add that may be handed out now, final
    (a possible start of a stop string and an unfinished character wait for the next commit; the last
    commit releases the rest, cut at the stop string). ``stats``: the commit's statistics (its
    ``commit_log`` entry: searches, visits, value, seconds, ...). ``result``: on the last commit of a
    decode, the decode's ``RainResult`` (``finish_reason`` says why it ended); None before. A decode
    that ends without committing anything (no token budget, a deadline before the first commit) hands
    up one last ``Commit`` with no ids and no ``stats``."""

    token_ids: tuple[int, ...]
    text: str
    stats: Mapping[str, Any] | None
    result: RainResult | None = None

    @property
    def last(self) -> bool:
        """Whether this is the decode's last commit (``result`` is set)."""
        return self.result is not None
