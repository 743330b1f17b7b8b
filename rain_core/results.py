"""What a decode returns: ``RainResult`` (the text, why it ended, what it cost) and its JSON trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINISH_REASONS = ("eos", "stop", "length", "time")
TRACE_VERSION = 2


@dataclass
class RainResult:
    """A finished decode: the text, its token ids, why it ended, and what it cost.

    ``finish_reason``: "eos", "stop", "length", or "time" (``max_seconds`` passed)."""

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
