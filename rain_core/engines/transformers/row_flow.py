"""Requests stepping together over one packed tree (``RowFlow``): a request can join at any step, and
leaves as soon as its rows end.

A top-tokens request is answered from the pass that first reaches its prefix; a sample request's rows
draw ``length`` tokens each (top-k renormalised, row r from its own generator, the greedy row first);
a generate request's one row draws until EOS, a stop id, a stop string or its limit. Every row of every
request picks from the logits of its own node in the same forward pass, so rows that drew the same
tokens so far share their trie nodes, and what a row draws never depends on which others step beside
it. ``TransformersLM`` answers a batch of requests (of one kind, or a round's mixed batch) with one
flow: everything added, stepped to the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...protocols import Continuation, GenerateRequest, SampleRequest, TopTokensRequest
from ..common import tail_tokens
from .packed import ROOT, PackedTree
from .row_sampling import pick, row_generators


class _Row:
    """One row of a flow: the request it answers, its current trie node, its generator."""

    __slots__ = ("request", "node", "gen", "greedy", "limit", "tokens", "logprob", "done")

    def __init__(self, request: int, node: int, gen: Any, greedy: bool, limit: int) -> None:
        self.request, self.node, self.gen, self.greedy, self.limit = request, node, gen, greedy, limit
        self.tokens: list[int] = []
        self.logprob = 0.0
        self.done = limit <= 0


class RowFlow:
    """The rows of the requests in a packed tree; ``engine`` gives ``_torch``, ``_logprobs``, ``_top``,
    ``decode``, ``eos_token_ids`` and ``context_length``."""

    def __init__(self, engine: Any, tree: PackedTree) -> None:
        self.engine, self.tree = engine, tree
        self.requests: dict[int, Any] = {}
        self.rows: dict[int, list[_Row]] = {}
        self.starts: dict[int, int] = {}  # top-tokens requests waiting for their prefix's logits
        self._next = 0

    def add(self, request: Any, node: int | None = None) -> int:
        """Put ``request`` in (``node``: its prefix's last node, when already in the tree); its id."""
        rid, self._next = self._next, self._next + 1
        if node is None:
            if not self.tree.continues(request.prefix):
                raise ValueError("a request of a flow must continue the flow's base")
            node = self.tree.add_path(ROOT, request.prefix[self.tree.base_length :])
        self.requests[rid] = request
        torch = self.engine._torch
        if isinstance(request, TopTokensRequest):
            self.starts[rid] = node
            self.rows[rid] = []
        elif isinstance(request, SampleRequest):
            gens = row_generators(torch, request.seed, range(request.n))
            self.rows[rid] = [
                _Row(rid, node, gens[j], request.greedy_first and j == 0, request.length) for j in range(request.n)
            ]
        else:
            limit = min(request.max_tokens, self.engine.context_length - len(request.prefix))
            gen = torch.Generator(device="cpu").manual_seed(int(request.seed))
            self.rows[rid] = [_Row(rid, node, gen, False, limit)]
        return rid

    def step(self) -> list[tuple[int, Any]]:
        """One forward pass (in chunks when long) for every request in the flow; the ended ones."""
        live = [row for rows in self.rows.values() for row in rows if not row.done]
        nodes = list(dict.fromkeys([*self.starts.values(), *(row.node for row in live)]))
        logits = self.tree.feed(nodes) if nodes else {}
        ended: list[tuple[int, Any]] = []
        for rid, node in list(self.starts.items()):
            r = self.requests[rid]
            ended.append((rid, self.engine._top(logits[node], r.k, r.temperature, r.exclude)))
            del self.starts[rid], self.requests[rid], self.rows[rid]
        for group in _by_sampling(self.requests, live).values():
            r0 = self.requests[group[0].request]
            torch = self.engine._torch
            logp = torch.stack([self.engine._logprobs(logits[row.node], r0.temperature) for row in group])
            picks = pick(torch, logp.cpu(), r0.top_k, [row.gen for row in group], [row.greedy for row in group])
            for row, (tok, lp) in zip(group, picks):
                row.tokens.append(tok)
                row.logprob += lp
                if self._ends(self.requests[row.request], row, tok):
                    row.done = True
                else:
                    row.node = self.tree.add(row.node, tok)
        for rid in [rid for rid, rows in self.rows.items() if rid not in self.starts and all(r.done for r in rows)]:
            ended.append((rid, self._answer(self.requests[rid], self.rows[rid])))
            del self.requests[rid], self.rows[rid]
        return ended

    def run(self) -> dict[int, Any]:
        """Step until every request has ended; the answers by id."""
        out: dict[int, Any] = {}
        while self.requests:
            out.update(self.step())
        return out

    # --- parts --------------------------------------------------------------------------------------
    def _ends(self, r: Any, row: _Row, tok: int) -> bool:
        if tok in self.engine.eos_token_ids or len(row.tokens) >= row.limit:
            return True
        if isinstance(r, GenerateRequest):
            if tok in r.stop_token_ids:
                return True
            if r.stop:  # only the new token can complete a stop string: decode the tail that may hold it
                return any(s in self.engine.decode(row.tokens[-tail_tokens(r.stop) :]) for s in r.stop)
        return False

    @staticmethod
    def _answer(r: Any, rows: list[_Row]) -> Any:
        if isinstance(r, SampleRequest):
            return [Continuation(tuple(row.tokens), row.logprob) for row in rows]
        return rows[0].tokens


def _by_sampling(requests: dict[int, Any], rows: list[_Row]) -> dict[tuple[int | None, float], list[_Row]]:
    """Rows grouped by how they draw (top-k and temperature), in order: each group picks in one call."""
    out: dict[tuple[int | None, float], list[_Row]] = {}
    for row in rows:
        r = requests[row.request]
        out.setdefault((r.top_k, r.temperature), []).append(row)
    return out


def answers_in_order(flow: RowFlow, ids: Sequence[int]) -> list[Any]:
    """Step ``flow`` to the end; the answers of ``ids``, in that order."""
    got = flow.run()
    return [got[i] for i in ids]
