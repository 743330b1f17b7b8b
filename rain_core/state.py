"""What one decode's phases read and write besides the tree: ``Decode`` (the model's text side, the
config, the prompt, the token budget, the committed answer and its text, the score cache) and its
``SearchStats``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import RainConfig
from .protocols import LanguageModel
from .text import IncrementalText
from .tree import Tree

__all__ = ["Decode", "SearchStats"]


@dataclass
class SearchStats:
    """What one decode cost: searches run, rounds (batches of searches side by side), evaluator
    calls and cache hits, commits, rewinds, node additions, simulated tokens, model calls (batched
    requests count once) and a log entry per commit."""

    searches: int = 0
    rounds: int = 0
    evaluations: int = 0
    evaluation_cache_hits: int = 0
    commits: int = 0
    rewinds: int = 0
    node_additions: int = 0
    completions: int = 0
    early_stops: int = 0
    new_tokens: int = 0
    simulated_tokens: int = 0
    model_calls: int = 0
    seconds: float = 0.0
    commit_log: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["commit_log"] = list(self.commit_log)
        return out


@dataclass
class Decode:
    """What the phases read and write besides the tree: the decode's fixed parts (model text side,
    config, prompt, token budget) and its progress (committed tokens, score cache, counters)."""

    lm: LanguageModel
    cfg: RainConfig
    prompt_ids: list[int]
    evaluator_name: str
    uses_embeddings: bool
    committed: list[int] = field(default_factory=list)
    tree: Tree = field(default_factory=Tree)
    scores: dict[str, float] = field(default_factory=dict)
    stats: SearchStats = field(default_factory=SearchStats)

    def __post_init__(self) -> None:
        self.budget = self.cfg.token_budget(len(self.prompt_ids), self.lm.context_length)
        self.boundary_ids = self.lm.token_ids_ending_with(self.cfg.clause_boundaries)
        self.prompt_tail = self.lm.decode(self.prompt_ids[-8:])
        self.text = IncrementalText(self.lm.decode, self.committed)  # the committed answer's text
        # characters of the committed text a check at the end needs: a stop string's start before the new text
        self.reach = max((len(s) for s in self.cfg.stop), default=1)

    def commit(self, tokens: Sequence[int]) -> None:
        """Append a committed token set (the text is extended, not decoded again)."""
        self.committed.extend(tokens)
        self.text.extend(tokens)

    def room(self, node: int) -> int:
        """Tokens that may still be generated below ``node``."""
        return self.budget - len(self.committed) - len(self.tree.path_tokens(node))

    def context(self, node: int) -> tuple[int, ...]:
        """Token ids of ``node``'s state: prompt, committed answer, then the path to ``node``."""
        return tuple(self.prompt_ids + self.committed + self.tree.path_tokens(node))

    def response_text(self, extra: Sequence[int] = ()) -> str:
        """The answer's text: the committed tokens, then ``extra``."""
        return self.text.text_with(extra)

    def _reaches_stop(self, path: Sequence[int]) -> bool:
        """Whether the answer along ``path`` reached a stop string (the committed text holds none, so
        only the tail that ``path`` completes is looked at)."""
        tail = self.text.tail_with(path, self.reach - 1)
        return any(s in tail for s in self.cfg.stop)

    def ends_clause(self, path: Sequence[int]) -> bool:
        """Whether the text so far (prompt, then the response along ``path``) ends a clause, or the
        response reached a stop string: a simulation stops here. Only the text's end is decoded."""
        if self.cfg.stop and self._reaches_stop(path):
            return True
        tail = self.text.tail_with(path, 1)
        return (tail or self.prompt_tail).endswith(self.cfg.clause_boundaries)

    def is_terminal(self, tokens: Sequence[int], path: Sequence[int]) -> bool:
        if tokens and tokens[-1] in self.lm.eos_token_ids:
            return True
        if self.cfg.stop and self._reaches_stop(path):
            return True
        return self.budget - len(self.committed) - len(path) <= 0

    def set_length(self, node: int) -> int:
        """Token-set length of ``node``'s children: by the node's step from the original prompt."""
        return min(self.cfg.token_set_length(self.tree.depth_from_prompt[node]), self.room(node))

    def add_child(self, node: int, tokens: tuple[int, ...], prior: float = 0.0) -> int:
        path = self.tree.path_tokens(node) + list(tokens)
        return self.tree.add_child(node, tokens, prior, terminal=self.is_terminal(tokens, path))
