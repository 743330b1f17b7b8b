"""The RAIN search tree as a flat node table with integer ids (no parent/child object cycles).

Plain data plus the pure arithmetic of the algorithm (selection, backup, prior normalisation,
similarity update, dynamic-addition trigger, commit choice). Nothing here touches a model, so every
rule can be tested on hand-made numbers. Node 0 is always the root.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

ROOT_INDEX = 0
NO_PARENT = -1


@dataclass
class MinMax:
    """Running range of node values used to normalise ``Q`` in selection; starts at [-1, 1]."""

    low: float = -1.0
    high: float = 1.0

    def update(self, value: float) -> None:
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def normalize(self, value: float) -> float:
        if self.high > self.low:
            return (value - self.low) / (self.high - self.low)
        return 0.0


@dataclass
class Tree:
    """Flat node table. Lists are indexed by node id; ``children[i]`` lists the ids of i's children."""

    parent: list[int] = field(default_factory=lambda: [NO_PARENT])
    tokens: list[tuple[int, ...]] = field(default_factory=lambda: [()])
    depth: list[int] = field(default_factory=lambda: [0])
    children: list[list[int]] = field(default_factory=lambda: [[]])
    visits: list[float] = field(default_factory=lambda: [0.0])
    value: list[float] = field(default_factory=lambda: [0.0])
    prior: list[float] = field(default_factory=lambda: [1.0])
    raw_prior: list[float] = field(default_factory=lambda: [1.0])
    greedy: list[bool] = field(default_factory=lambda: [False])
    terminal: list[bool] = field(default_factory=lambda: [False])
    emb_sum: list[np.ndarray | None] = field(default_factory=lambda: [None])
    emb_count: list[int] = field(default_factory=lambda: [0])
    minmax: MinMax = field(default_factory=MinMax)

    # --- structure ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.parent)

    def add_child(
        self, parent: int, tokens: Sequence[int], raw_prior: float, *, greedy: bool = False, terminal: bool = False
    ) -> int:
        node = len(self.parent)
        self.parent.append(parent)
        self.tokens.append(tuple(int(t) for t in tokens))
        self.depth.append(self.depth[parent] + 1)
        self.children.append([])
        self.visits.append(0.0)
        self.value.append(0.0)
        self.prior.append(0.0)
        self.raw_prior.append(float(raw_prior))
        self.greedy.append(greedy)
        self.terminal.append(terminal)
        self.emb_sum.append(None)
        self.emb_count.append(0)
        self.children[parent].append(node)
        return node

    def path(self, node: int) -> list[int]:
        """Node ids from the root down to ``node`` (both included)."""
        out = []
        while node != NO_PARENT:
            out.append(node)
            node = self.parent[node]
        return out[::-1]

    def path_tokens(self, node: int) -> list[int]:
        """Tokens from the root's state to ``node``'s state."""
        out: list[int] = []
        for n in self.path(node)[1:]:
            out.extend(self.tokens[n])
        return out

    def is_ancestor(self, ancestor: int, node: int) -> bool:
        while node != NO_PARENT:
            if node == ancestor:
                return True
            node = self.parent[node]
        return False

    def embedding(self, node: int) -> np.ndarray | None:
        """Mean of the embeddings folded into ``node``, or None before its first backup."""
        if self.emb_count[node] == 0:
            return None
        return self.emb_sum[node] / self.emb_count[node]

    # --- priors ---------------------------------------------------------------------------
    def set_child_priors(self, node: int, uniform_mix: float) -> None:
        """Normalise the raw priors of ``node``'s children (see ``normalize_priors``) and mix with
        uniform by ``uniform_mix`` (pass 0 below the root)."""
        kids = self.children[node]
        if not kids:
            return
        greedy_index = next((i for i, k in enumerate(kids) if self.greedy[k]), None)
        priors = normalize_priors([self.raw_prior[k] for k in kids], greedy_index)
        priors = mix_uniform(priors, uniform_mix)
        for k, p in zip(kids, priors):
            self.prior[k] = p

    # --- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of the table (embeddings left out)."""
        return {
            "parent": list(self.parent),
            "tokens": [list(t) for t in self.tokens],
            "depth": list(self.depth),
            "children": [list(c) for c in self.children],
            "visits": list(self.visits),
            "value": list(self.value),
            "prior": list(self.prior),
            "terminal": list(self.terminal),
            "value_range": [self.minmax.low, self.minmax.high],
        }


# --- pure rules of the algorithm ---------------------------------------------------------------
def normalize_priors(raw: Sequence[float], greedy_index: int | None = None) -> list[float]:
    """Priors of one expansion: raw priors (products of token probabilities) normalised to sum 1.

    The greedy candidate's raw prior is first clamped between ``max + min`` and ``sum`` of the
    sampled candidates' raw priors (when those bounds cross, the upper one wins), so that the greedy
    continuation neither vanishes nor swamps the sampled ones.
    """
    values = [max(float(r), 0.0) for r in raw]
    if greedy_index is not None and len(values) > 1:
        sampled = [v for i, v in enumerate(values) if i != greedy_index]
        low, high = max(sampled) + min(sampled), sum(sampled)
        values[greedy_index] = min(max(values[greedy_index], low), high)
    total = sum(values)
    if total <= 0.0 or not math.isfinite(total):
        return [1.0 / len(values)] * len(values)
    return [v / total for v in values]


def mix_uniform(priors: Sequence[float], mix: float) -> list[float]:
    """``(1 - mix) * P + mix / k``: the root's priors keep some mass on every candidate."""
    k = len(priors)
    return [(1.0 - mix) * p + mix / k for p in priors]


def puct_scores(tree: Tree, node: int, c_puct: float) -> list[float]:
    """``Q_norm + c * P * sqrt(N_parent) / (1 + N_child)`` for each child of ``node``; an unvisited
    child contributes 0 for ``Q_norm``."""
    sqrt_n = math.sqrt(tree.visits[node])
    out = []
    for k in tree.children[node]:
        q = tree.minmax.normalize(tree.value[k]) if tree.visits[k] > 0 else 0.0
        out.append(q + c_puct * tree.prior[k] * sqrt_n / (1.0 + tree.visits[k]))
    return out


def select_child(tree: Tree, node: int, c_puct: float) -> int:
    """The child maximising the PUCT score (ties: the earliest child)."""
    scores = puct_scores(tree, node, c_puct)
    return tree.children[node][int(np.argmax(scores))]


def backup(tree: Tree, leaf: int, value: float) -> list[int]:
    """Walk from ``leaf`` to the root: ``N += 1``, ``Q += (v - Q) / N``; update the value range.
    Returns the path (root first)."""
    path = tree.path(leaf)
    for n in path:
        tree.visits[n] += 1.0
        tree.value[n] += (value - tree.value[n]) / tree.visits[n]
        tree.minmax.update(tree.value[n])
    return path


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def similarity_update(
    tree: Tree, node: int, embedding: np.ndarray, value: float, threshold: float, weight: float
) -> list[tuple[int, float]]:
    """Fold ``embedding`` into ``node``'s mean embedding, then give every sibling at least
    ``threshold``-similar to it a fractional visit ``s = weight * similarity`` carrying ``value``:
    ``Q = (Q * N + s * v) / (N + s)``, ``N += s``. Returns the (sibling, s) pairs updated."""
    emb = np.asarray(embedding, dtype=np.float64)
    tree.emb_sum[node] = emb.copy() if tree.emb_sum[node] is None else tree.emb_sum[node] + emb
    tree.emb_count[node] += 1
    parent = tree.parent[node]
    if parent == NO_PARENT:
        return []
    updated = []
    for sib in tree.children[parent]:
        if sib == node:
            continue
        sib_emb = tree.embedding(sib)
        if sib_emb is None:
            continue
        sim = cosine(emb, sib_emb)
        if sim >= threshold:
            s = weight * sim
            n = tree.visits[sib]
            tree.value[sib] = (tree.value[sib] * n + s * value) / (n + s)
            tree.visits[sib] = n + s
            tree.minmax.update(tree.value[sib])
            updated.append((sib, s))
    return updated


def embedding_variance_norm(embeddings: Sequence[np.ndarray]) -> float:
    """Norm of the per-dimension variance of a set of embeddings (0 when they are all alike)."""
    if len(embeddings) < 2:
        return 0.0
    return float(np.linalg.norm(np.var(np.stack(embeddings), axis=0)))


def should_add_nodes(tree: Tree, node: int, max_children: int, variance_factor: float) -> bool:
    """Dynamic node addition trigger: fewer than ``max_children`` children, every child valued
    below 0, and the children's mean embeddings alike (variance norm below
    ``variance_factor * token-set length``). Children never embedded do not count as alike."""
    kids = tree.children[node]
    if not kids or len(kids) >= max_children:
        return False
    if any(tree.visits[k] <= 0 or tree.value[k] >= 0.0 for k in kids):
        return False
    embs = [tree.embedding(k) for k in kids]
    if any(e is None for e in embs):
        return False
    length = max(len(tree.tokens[k]) for k in kids)
    return embedding_variance_norm(embs) < variance_factor * length  # type: ignore[arg-type]


def best_child(tree: Tree, node: int = ROOT_INDEX) -> int:
    """The child to commit: most visits, ties broken by the higher value, then the earlier child."""
    kids = tree.children[node]
    if not kids:
        raise ValueError("cannot commit: the node has no children")
    return max(kids, key=lambda k: (tree.visits[k], tree.value[k], -k))


def reroot(tree: Tree, node: int, uniform_mix: float) -> Tree:
    """A new table holding ``node``'s subtree with ``node`` as root (the rest is freed). The new
    root's children priors are re-mixed with uniform."""
    new = Tree()
    remap = {node: ROOT_INDEX}
    new.visits[0] = tree.visits[node]
    new.value[0] = tree.value[node]
    new.terminal[0] = tree.terminal[node]
    new.emb_sum[0] = tree.emb_sum[node]
    new.emb_count[0] = tree.emb_count[node]
    new.minmax = MinMax(tree.minmax.low, tree.minmax.high)
    stack = [node]
    while stack:
        old = stack.pop()
        for kid in tree.children[old]:
            nid = new.add_child(
                remap[old], tree.tokens[kid], tree.raw_prior[kid], greedy=tree.greedy[kid], terminal=tree.terminal[kid]
            )
            remap[kid] = nid
            new.visits[nid] = tree.visits[kid]
            new.value[nid] = tree.value[kid]
            new.prior[nid] = tree.prior[kid]
            new.emb_sum[nid] = tree.emb_sum[kid]
            new.emb_count[nid] = tree.emb_count[kid]
            stack.append(kid)
    kids = new.children[ROOT_INDEX]
    if kids:
        mixed = mix_uniform([new.prior[k] for k in kids], uniform_mix)
        for k, p in zip(kids, mixed):
            new.prior[k] = p
    return new
