"""RAIN's search: the outer loop (search, commit, stream) and the inner loop (select, expand,
evaluate, back up). It sees only the ``LanguageModel``, ``Evaluator`` and ``Encoder`` protocols.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from .config import RainConfig
from .tree import (
    ROOT_INDEX,
    Tree,
    backup,
    best_child,
    reroot,
    select_child,
    should_add_nodes,
    similarity_update,
)

logger = logging.getLogger(__name__)


@dataclass
class SearchStats:
    """What one decode cost: searches run, evaluator calls and cache hits, commits, rewinds."""

    searches: int = 0
    evaluations: int = 0
    evaluation_cache_hits: int = 0
    commits: int = 0
    rewinds: int = 0
    node_additions: int = 0
    early_stops: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    commit_log: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["commit_log"] = list(self.commit_log)
        return out


class RainSearch:
    """One RAIN decode over token ids. Iterate ``run()`` to receive committed token sets."""

    def __init__(
        self,
        lm: Any,
        evaluator: Any,
        encoder: Any,
        config: RainConfig,
        prompt_ids: Sequence[int],
        eval_prompt: str,
        *,
        seed: int,
        keep_trees: bool = False,
    ) -> None:
        self.lm = lm
        self.evaluator = evaluator
        self.encoder = encoder
        self.cfg = config
        self.prompt_ids = list(prompt_ids)
        self.eval_prompt = eval_prompt
        self.rng = np.random.default_rng(seed)
        self.keep_trees = keep_trees
        self.committed: list[int] = []
        self.tree = Tree()
        self.stats = SearchStats()
        self.budget = min(
            config.max_new_tokens,
            config.max_length - len(self.prompt_ids),
            lm.context_length - len(self.prompt_ids),
        )
        self.scores: dict[str, float] = {}
        self.needs_embeddings = encoder is not None and (config.similarity_update or config.dynamic_node_addition)
        self._prev_leaf: int | None = None
        self._sim_start: tuple[int, tuple[int, ...]] | None = None  # (leaf, first sampled candidate)
        self.finished_by: str | None = None

    # --- helpers ------------------------------------------------------------------------------
    def _seed(self) -> int:
        return int(self.rng.integers(0, 2**31 - 1))

    def _room(self, node: int) -> int:
        """Tokens that may still be generated below ``node``."""
        return self.budget - len(self.committed) - len(self.tree.path_tokens(node))

    def response_text(self, extra: Sequence[int] = ()) -> str:
        return self.lm.decode(self.committed + list(extra))

    def _is_terminal(self, tokens: Sequence[int], path: Sequence[int]) -> bool:
        if tokens and tokens[-1] in self.lm.eos_token_ids:
            return True
        if self.cfg.stop and any(s in self.response_text(path) for s in self.cfg.stop):
            return True
        return self.budget - len(self.committed) - len(path) <= 0

    # --- the inner loop -------------------------------------------------------------------------
    def select(self) -> int:
        node = ROOT_INDEX
        while self.tree.children[node]:
            if self.cfg.dynamic_node_addition and should_add_nodes(
                self.tree, node, self.cfg.max_children, self.cfg.variance_factor
            ):
                self.add_nodes(node)
            node = select_child(self.tree, node, self.cfg.c_puct)
        return node

    def _candidates(self, node: int, n: int, *, exclude: set[tuple[int, ...]], greedy: bool) -> list[tuple[tuple[int, ...], float, bool]]:
        """Up to ``n`` new distinct token sets below ``node``: (tokens, raw prior, is_greedy)."""
        cfg = self.cfg
        length = min(cfg.token_set_length(self.tree.depth[node]), self._room(node))
        state = self.prompt_ids + self.committed + self.tree.path_tokens(node)
        out: list[tuple[tuple[int, ...], float, bool]] = []
        if length == 1:
            skip = [t[0] for t in exclude if len(t) == 1]
            for c in self.lm.top_tokens(state, n, cfg.temperature, exclude=skip):
                out.append((c.token_ids, math.exp(c.logprob), False))
            return out
        sampled = self.lm.sample(
            state, n, length, top_k=cfg.top_k, temperature=cfg.temperature, seed=self._seed(), greedy_first=greedy
        )
        if greedy and len(sampled) > 1 and sampled[1].token_ids:
            self._sim_start = (node, tuple(sampled[1].token_ids))
        seen = set(exclude)
        for i, c in enumerate(sampled):
            if c.token_ids in seen or not c.token_ids:
                continue
            seen.add(c.token_ids)
            out.append((c.token_ids, math.exp(c.logprob), greedy and i == 0))
        return out

    def _add_children(self, node: int, candidates: list[tuple[tuple[int, ...], float, bool]]) -> None:
        base = self.tree.path_tokens(node)
        for tokens, raw, is_greedy in candidates:
            terminal = self._is_terminal(tokens, base + list(tokens))
            self.tree.add_child(node, tokens, raw, greedy=is_greedy, terminal=terminal)
        self.tree.set_child_priors(node, self.cfg.root_uniform_mix if node == ROOT_INDEX else 0.0)

    def expand(self, node: int) -> None:
        self._sim_start = None
        self._add_children(node, self._candidates(node, self.cfg.num_candidates, exclude=set(), greedy=True))

    def add_nodes(self, node: int) -> None:
        """Dynamic node addition: the children are all bad and all alike, so propose more."""
        existing = {self.tree.tokens[k] for k in self.tree.children[node]}
        room = self.cfg.max_children - len(existing)
        new = self._candidates(node, min(self.cfg.num_added_candidates, room), exclude=existing, greedy=False)
        if new:
            self._add_children(node, new)
            self.stats.node_additions += len(new)

    def evaluate(self, node: int) -> tuple[float, list[int]]:
        """Simulate from ``node`` to a clause boundary and score (prompt, response + simulation)."""
        path = self.tree.path_tokens(node)
        simulation: list[int] = []
        start = self._sim_start[1] if self._sim_start and self._sim_start[0] == node else ()
        self._sim_start = None
        if not self.tree.terminal[node]:
            state = self.prompt_ids + self.committed + path
            room = min(self.cfg.max_simulation_tokens, self.lm.context_length - len(state))
            if room > 0:
                simulation = self._simulate(state, room, start if self.cfg.simulate_from_candidate else ())
        text = self.response_text(path + simulation)
        for s in self.cfg.stop:
            if s in text:
                text = text[: text.index(s)]
        if text in self.scores:
            self.stats.evaluation_cache_hits += 1
            return self.scores[text], simulation
        value = float(self.evaluator.score(self.eval_prompt, text))
        if not math.isfinite(value) or not -1.0 <= value <= 1.0:
            raise ValueError(f"evaluator {getattr(self.evaluator, 'name', self.evaluator)!r} returned {value!r}; "
                             "scores must be finite numbers in [-1, 1]")
        self.scores[text] = value
        self.stats.evaluations += 1
        return value, simulation

    def _simulate(self, state: list[int], room: int, start: Sequence[int]) -> list[int]:
        """Sample from ``state`` until the new text reaches a clause boundary, EOS or ``room`` tokens.
        ``start``, a top-k sample from ``state`` already drawn by the expansion, supplies the first
        tokens: the simulation is its shortest prefix that ends the clause, or all of it and more."""
        seed = self._seed()
        boundaries = self.cfg.clause_boundaries
        head: list[int] = []
        for tok in start[:room]:
            head.append(tok)
            if tok in self.lm.eos_token_ids or len(head) >= room:
                return head
            if any(b in self.lm.decode(head) for b in boundaries):
                return head
        rest = self.lm.continue_until(
            state + head, boundaries, room - len(head), top_k=self.cfg.top_k,
            temperature=self.cfg.temperature, seed=seed,
        )
        return head + rest

    def back_up(self, leaf: int, value: float, simulation: Sequence[int]) -> None:
        path = backup(self.tree, leaf, value)
        nodes = path[1:]  # the root has no token set and no siblings
        if not nodes or not self.needs_embeddings:
            return
        texts = []
        for i in range(len(nodes)):
            tokens: list[int] = []
            for n in nodes[i:]:
                tokens.extend(self.tree.tokens[n])
            texts.append(self.lm.decode(tokens + list(simulation)))
        embeddings = self.encoder.encode(texts)
        for n, emb in zip(nodes, embeddings):
            weight = self.cfg.similarity_weight if self.cfg.similarity_update else 0.0
            threshold = self.cfg.similarity_threshold if self.cfg.similarity_update else 2.0
            similarity_update(self.tree, n, emb, value, threshold, weight)

    def search_once(self) -> None:
        leaf = self.select()
        if self._prev_leaf is not None and not self.tree.is_ancestor(self._prev_leaf, leaf):
            self.stats.rewinds += 1
        self._prev_leaf = leaf
        if not self.tree.terminal[leaf]:
            self.expand(leaf)
        value, simulation = self.evaluate(leaf)
        self.back_up(leaf, value, simulation)
        self.stats.searches += 1

    # --- the outer loop -------------------------------------------------------------------------
    def early_stop(self) -> bool:
        kids = self.tree.children[ROOT_INDEX]
        if not kids:
            return False
        best = max(kids, key=lambda k: self.tree.visits[k])
        return self.tree.visits[best] > self.cfg.min_visits and self.tree.value[best] > self.cfg.value_threshold

    def step(self) -> list[int]:
        """Search from the committed context, then commit the best root child's token set."""
        cfg = self.cfg
        t0 = time.perf_counter()
        i0 = int(self.tree.visits[ROOT_INDEX])
        target = max(cfg.max_searches, i0 + cfg.extra_searches)
        i, searches = i0, 0
        stopped_early = False
        while i < target or not self.tree.children[ROOT_INDEX]:
            self.search_once()
            if not self.tree.children[ROOT_INDEX]:
                raise RuntimeError(f"{getattr(self.lm, 'name', 'the model')} proposed no continuation of the context")
            i += 1
            searches += 1
            if self.early_stop():
                stopped_early = True
                self.stats.early_stops += 1
                break
        best = best_child(self.tree)
        tokens = list(self.tree.tokens[best])
        entry = {
            "tokens": tokens,
            "searches": searches,
            "reused_visits": i0,
            "visits": self.tree.visits[best],
            "value": self.tree.value[best],
            "early_stop": stopped_early,
            "seconds": time.perf_counter() - t0,
        }
        if self.keep_trees:
            entry["tree"] = self.tree.to_dict()
            entry["chosen"] = best
        self.stats.commit_log.append(entry)
        terminal = self.tree.terminal[best]
        self.committed.extend(tokens)
        self.tree = reroot(self.tree, best, cfg.root_uniform_mix)
        self.tree.terminal[ROOT_INDEX] = terminal
        self._prev_leaf = None
        self.stats.commits += 1
        self.stats.new_tokens = len(self.committed)
        return tokens

    def run(self) -> Iterator[list[int]]:
        """Yield committed token sets until EOS, a stop string, or the token budget."""
        t0 = time.perf_counter()
        try:
            if self.budget <= 0:
                self.finished_by = "length"
                return
            while True:
                tokens = self.step()
                self.stats.seconds = time.perf_counter() - t0
                yield tokens
                if tokens and tokens[-1] in self.lm.eos_token_ids:
                    self.finished_by = "eos"
                    return
                if self.cfg.stop and any(s in self.response_text() for s in self.cfg.stop):
                    self.finished_by = "stop"
                    return
                if len(self.committed) >= self.budget:
                    self.finished_by = "length"
                    return
        finally:
            self.stats.seconds = time.perf_counter() - t0
