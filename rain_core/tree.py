"""The RAIN search tree as a flat node table with integer ids (no parent/child object cycles).

Plain data plus the pure arithmetic of the algorithm (selection, backup, priors, similarity update,
dynamic-addition trigger, commit choice). Nothing here touches a model, so every rule can be tested
on hand-made numbers. Node 0 is always the root. Each rule follows the authors' code; where the
paper's prose and the code differ, docs/algorithm.md says which and why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROOT_INDEX = 0
NO_PARENT = -1
Q_RANGE_EPSILON = 1e-5  # the official normalisation divides by (max - min + 1e-5)


@dataclass
class MinMax:
    """Running range of node values used to normalise ``Q`` in selection; starts at [-1, 1] and takes
    in the values of non-root nodes as backups update them (official)."""

    low: float = -1.0
    high: float = 1.0

    def update(self, value: float) -> None:
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def normalize(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low + Q_RANGE_EPSILON)


Proposal = tuple[tuple[int, ...], float]  # (token set, raw prior)


@dataclass
class Tree:
    """Flat node table. Lists are indexed by node id; ``children[i]`` lists the ids of i's children.

    ``visits`` (N) counts backups through a node plus the fractional visits of the similarity update;
    ``real_visits`` counts backups only (the early stop and a reused subtree's count read these).
    ``depth_from_prompt`` is a node's depth counted from the original prompt: it survives commits.
    ``proposals[i]`` is node i's list of proposed (token set, raw prior), newest first: dynamic node
    addition normalises a new child's prior over its head (official).
    ``pending[i]``: node i was expanded lazily (greedy child only; fast preset) and may be completed.
    ``in_flight[i]``: searches of the current round whose path runs through node i and that have not
    backed up yet (``parallel_searches``); always 0 between rounds.
    """

    parent: list[int] = field(default_factory=lambda: [NO_PARENT])
    tokens: list[tuple[int, ...]] = field(default_factory=lambda: [()])
    depth_from_prompt: list[int] = field(default_factory=lambda: [0])
    children: list[list[int]] = field(default_factory=lambda: [[]])
    visits: list[float] = field(default_factory=lambda: [0.0])
    real_visits: list[int] = field(default_factory=lambda: [0])
    value: list[float] = field(default_factory=lambda: [0.0])
    prior: list[float] = field(default_factory=lambda: [1.0])
    terminal: list[bool] = field(default_factory=lambda: [False])
    emb_sum: list[np.ndarray | None] = field(default_factory=lambda: [None])
    emb_count: list[int] = field(default_factory=lambda: [0])
    proposals: list[list[Proposal]] = field(default_factory=lambda: [[]])
    pending: list[bool] = field(default_factory=lambda: [False])
    in_flight: list[int] = field(default_factory=lambda: [0])
    minmax: MinMax = field(default_factory=MinMax)

    # --- structure ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.parent)

    def add_child(self, parent: int, tokens: Sequence[int], prior: float = 0.0, *, terminal: bool = False) -> int:
        node = len(self.parent)
        self.parent.append(parent)
        self.tokens.append(tuple(int(t) for t in tokens))
        self.depth_from_prompt.append(self.depth_from_prompt[parent] + 1)
        self.children.append([])
        self.visits.append(0.0)
        self.real_visits.append(0)
        self.value.append(0.0)
        self.prior.append(float(prior))
        self.terminal.append(terminal)
        self.emb_sum.append(None)
        self.emb_count.append(0)
        self.proposals.append([])
        self.pending.append(False)
        self.in_flight.append(0)
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

    def child_with_tokens(self, node: int, tokens: Sequence[int]) -> int | None:
        key = tuple(tokens)
        return next((k for k in self.children[node] if self.tokens[k] == key), None)

    def embedding(self, node: int) -> np.ndarray | None:
        """Mean of the embeddings folded into ``node``, or None before its first backup."""
        total = self.emb_sum[node]
        if self.emb_count[node] == 0 or total is None:
            return None
        mean: np.ndarray = total / self.emb_count[node]
        return mean

    # --- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of the table (embeddings and proposals left out). ``depth`` counts from
        this tree's root; ``depth_from_prompt`` from the original prompt."""
        return {
            "parent": list(self.parent),
            "tokens": [list(t) for t in self.tokens],
            "depth": [s - self.depth_from_prompt[ROOT_INDEX] for s in self.depth_from_prompt],
            "depth_from_prompt": list(self.depth_from_prompt),
            "children": [list(c) for c in self.children],
            "visits": list(self.visits),
            "real_visits": list(self.real_visits),
            "value": list(self.value),
            "prior": list(self.prior),
            "terminal": list(self.terminal),
            "value_range": [self.minmax.low, self.minmax.high],
        }


# --- priors ------------------------------------------------------------------------------------
def clamp_greedy(greedy: float, sampled: Sequence[float]) -> float:
    """The greedy candidate's raw prior, clamped as the official code does: first
    ``min(g, sum(sampled))``, then ``max(that, max(sampled) + min(sampled))``, so where the bounds
    cross (one distinct sample) the lower bound wins. Without samples it is left as it is."""
    if not sampled:
        return float(greedy)
    return max(min(float(greedy), float(sum(sampled))), float(max(sampled) + min(sampled)))


def normalize(raw: Sequence[float]) -> list[float]:
    """Raw priors scaled to sum 1 (uniform when they sum to nothing)."""
    values = [max(float(r), 0.0) for r in raw]
    total = sum(values)
    if total <= 0.0 or not math.isfinite(total):
        return [1.0 / len(values)] * len(values)
    return [v / total for v in values]


def mix_uniform(priors: Sequence[float], mix: float) -> list[float]:
    """``(1 - mix) * P + mix / k``, normalised: the root's priors keep some mass on every candidate."""
    k = len(priors)
    mixed = [(1.0 - mix) * p + mix / k for p in priors]
    total = sum(mixed)
    return [m / total for m in mixed] if total > 0 else [1.0 / k] * k


def set_child_priors(tree: Tree, node: int, raw: Sequence[float], uniform_mix: float) -> None:
    """Priors of a fresh expansion of ``node`` (children in ``raw``'s order): normalised, and mixed
    with uniform at the root."""
    priors = normalize(raw)
    if node == ROOT_INDEX:
        priors = mix_uniform(priors, uniform_mix)
    for k, p in zip(tree.children[node], priors):
        tree.prior[k] = p


def added_prior(raw: float, window: Sequence[float], is_root: bool, uniform_mix: float) -> float:
    """Prior of a child added by dynamic node addition: its raw prior normalised over ``window`` (the
    raw priors of the node's newest ``children + 1`` proposals), mixed with uniform at the root. The
    other children keep their priors (official)."""
    total = sum(window)
    p = raw / total if total > 0 else 1.0 / len(window)
    return (1.0 - uniform_mix) * p + uniform_mix / len(window) if is_root else p


# --- selection ---------------------------------------------------------------------------------
def puct_scores(tree: Tree, node: int, c_puct: float, virtual_loss: float = 0.0) -> list[float]:
    """``Q_norm + c * P * sqrt(N_parent) / (1 + N_child)`` for each child of ``node``; a child with
    no visits contributes 0 for ``Q_norm``.

    Searches in flight (``tree.in_flight``, only while a round of parallel searches selects) count
    as visits in the exploration term, as WU-UCT's unobserved samples do, so the next selection of
    the round bets elsewhere; with ``virtual_loss`` > 0 each also counts as a visit of value
    ``-virtual_loss`` in ``Q``. With nothing in flight this is the official rule."""
    sqrt_n = math.sqrt(tree.visits[node] + tree.in_flight[node])
    out = []
    for k in tree.children[node]:
        n, q, flying = tree.visits[k], tree.value[k], tree.in_flight[k]
        visited = n > 0
        if flying:
            if virtual_loss:
                q = (q * n - virtual_loss * flying) / (n + flying)
                visited = True
            n = n + flying
        qn = tree.minmax.normalize(q) if visited else 0.0
        out.append(qn + c_puct * tree.prior[k] * sqrt_n / (1.0 + n))
    return out


def select_child(tree: Tree, node: int, c_puct: float, virtual_loss: float = 0.0) -> int:
    """The child maximising the PUCT score (ties: the earliest child)."""
    scores = puct_scores(tree, node, c_puct, virtual_loss)
    return tree.children[node][int(np.argmax(scores))]


# --- backup ------------------------------------------------------------------------------------
def backup(tree: Tree, leaf: int, value: float) -> list[int]:
    """Walk from ``leaf`` to the root: ``N += 1``, real visits ``+= 1``, ``Q += (v - Q) / N``; the value
    range takes in every non-root node's new ``Q``. Returns the path (root first)."""
    path = tree.path(leaf)
    for n in path:
        tree.visits[n] += 1.0
        tree.real_visits[n] += 1
        tree.value[n] += (value - tree.value[n]) / tree.visits[n]
        if n != ROOT_INDEX:
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
    """Fold ``embedding`` into ``node``'s mean embedding ``E``, then compare ``E`` with each sibling's
    mean embedding: every sibling at least ``threshold``-similar gets a fractional visit
    ``s = weight * similarity`` carrying ``value``: ``Q = (Q * N + s * v) / (N + s)``, ``N += s``
    (its real visits and the value range are untouched, as in the official code). Returns the
    (sibling, s) pairs updated."""
    emb = np.asarray(embedding, dtype=np.float64)
    current = tree.emb_sum[node]
    tree.emb_sum[node] = emb.copy() if current is None else current + emb
    tree.emb_count[node] += 1
    parent = tree.parent[node]
    if parent == NO_PARENT or weight <= 0.0:
        return []
    mean = tree.embedding(node)
    assert mean is not None
    updated = []
    for sib in tree.children[parent]:
        if sib == node:
            continue
        sib_emb = tree.embedding(sib)
        if sib_emb is None:
            continue
        sim = cosine(mean, sib_emb)
        if sim >= threshold:
            s = weight * sim
            n = tree.visits[sib]
            tree.value[sib] = (tree.value[sib] * n + s * value) / (n + s)
            tree.visits[sib] = n + s
            updated.append((sib, s))
    return updated


# --- dynamic node addition ---------------------------------------------------------------------
def embedding_variance_norm(embeddings: Sequence[np.ndarray]) -> float | None:
    """Norm of the per-dimension unbiased variance (as ``torch.var``) of a set of embeddings; None for
    fewer than two (no variance: the official code's NaN, which never triggers an addition)."""
    if len(embeddings) < 2:
        return None
    return float(np.linalg.norm(np.var(np.stack(embeddings), axis=0, ddof=1)))


def should_add_nodes(tree: Tree, node: int, max_children: int, variance_factor: float) -> bool:
    """Dynamic node addition trigger: fewer than ``max_children`` children, every child embedded, the
    norm of their mean embeddings' variance below ``variance_factor`` times the first child's
    token-set length, and every child valued below 0: the children are all alike and all bad."""
    kids = tree.children[node]
    if not kids or len(kids) >= max_children:
        return False
    embs = [tree.embedding(k) for k in kids]
    if any(e is None for e in embs):
        return False
    norm = embedding_variance_norm(embs)  # type: ignore[arg-type]
    if norm is None or not norm < variance_factor * len(tree.tokens[kids[0]]):
        return False
    return max(tree.value[k] for k in kids) < 0.0


def mark_in_flight(tree: Tree, leaf: int, count: int) -> None:
    """Add ``count`` (+1 when a search of a round has selected ``leaf``, -1 when it is done) to the
    in-flight count of every node from the root to ``leaf``."""
    for n in tree.path(leaf):
        tree.in_flight[n] += count


# --- the outer loop's choices ------------------------------------------------------------------
def searches_before_early_stop(tree: Tree, min_visits: int, value_threshold: float) -> int:
    """The fewest further searches after which ``early_stop`` could hold: a lower bound, so a round
    of searches side by side no wider than this is checked exactly where one search at a time would
    first be stopped. Each search adds one real visit to one root child and pulls one child's value
    towards at most 1 with weight at most 1 (a backup, or a similarity update of weight < 1)."""
    kids = tree.children[ROOT_INDEX]
    if not kids:
        return 1
    if value_threshold >= 1.0:
        return 2**31 - 1  # no value exceeds 1
    fewest = 2**31 - 1
    for k in kids:
        visits_needed = max(0, min_visits + 1 - tree.real_visits[k])
        n, q = tree.visits[k], tree.value[k]
        value_needed = 0 if q > value_threshold else math.floor(n * (value_threshold - q) / (1.0 - value_threshold)) + 1
        fewest = min(fewest, max(1, visits_needed, value_needed))
    return fewest


def early_stop(tree: Tree, min_visits: int, value_threshold: float) -> bool:
    """The most-visited root child (ties: higher value) has more than ``min_visits`` (T_min) real
    visits and a value above ``value_threshold`` (V)."""
    if not tree.children[ROOT_INDEX]:
        return False
    best = best_child(tree)
    return tree.real_visits[best] > min_visits and tree.value[best] > value_threshold


def best_child(tree: Tree, node: int = ROOT_INDEX) -> int:
    """The child to commit: most visits, ties broken by the higher value, then the earlier child."""
    kids = tree.children[node]
    if not kids:
        raise ValueError("cannot commit: the node has no children")
    return max(kids, key=lambda k: (tree.visits[k], tree.value[k], -k))


def reroot(tree: Tree, node: int, uniform_mix: float) -> Tree:
    """A new table holding ``node``'s subtree with ``node`` as root (the rest is freed). Steps, visits,
    values, embeddings and proposals are kept; the value range carries over; the new root's children
    priors are re-mixed with uniform (official)."""
    new = Tree()
    remap = {node: ROOT_INDEX}
    for attr in (
        "depth_from_prompt",
        "visits",
        "real_visits",
        "value",
        "terminal",
        "emb_sum",
        "emb_count",
        "proposals",
        "pending",
    ):
        getattr(new, attr)[0] = getattr(tree, attr)[node]
    new.minmax = MinMax(tree.minmax.low, tree.minmax.high)
    stack = [node]
    while stack:
        old = stack.pop()
        for kid in tree.children[old]:
            nid = new.add_child(remap[old], tree.tokens[kid], tree.prior[kid], terminal=tree.terminal[kid])
            remap[kid] = nid
            for attr in (
                "depth_from_prompt",
                "visits",
                "real_visits",
                "value",
                "emb_sum",
                "emb_count",
                "proposals",
                "pending",
            ):
                getattr(new, attr)[nid] = getattr(tree, attr)[kid]
            stack.append(kid)
    kids = new.children[ROOT_INDEX]
    if kids:
        for k, p in zip(kids, mix_uniform([new.prior[k] for k in kids], uniform_mix)):
            new.prior[k] = p
    return new
