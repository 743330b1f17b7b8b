"""RAIN's inner loop as small functions over the tree, in the paper's order: select, expand (with
the fast preset's lazy completion), add a node, simulate, evaluate, back up. The decode's state
is ``state.Decode``; the requests a phase yields are in ``requests``.

Each phase is a generator: it yields the requests it needs (a model call, an evaluation, an
embedding) and receives their answers, so it never does I/O itself; ``search.py`` schedules the
phases of one or many searches and hands their requests to a driver (``drivers.py``). Each rule
follows the authors' code; the ``RainConfig`` fields that deviate from it are named where they act.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .chat import cut_at_stop
from .protocols import (
    Continuation,
    DecodeCancelled,
    EngineError,
    EvaluatorError,
    GenerateRequest,
    SampleRequest,
    TopTokensRequest,
    check_score,
)
from .requests import EncodeRequest, Phase, Request, ScoreRequest, Together
from .state import Decode, SearchStats
from .tree import (
    ROOT_INDEX,
    Proposal,
    added_prior,
    backup,
    clamp_greedy,
    select_child,
    set_child_priors,
    should_add_nodes,
    similarity_update,
)

__all__ = [
    "Decode",
    "EncodeRequest",
    "Phase",
    "Request",
    "ScoreRequest",
    "SearchStats",
    "Together",
    "add_node",
    "back_up",
    "backup_texts",
    "complete_lazy_node",
    "deferred_changes",
    "evaluate",
    "expand",
    "in_lockstep",
    "leaf_value",
    "propose",
    "select",
    "simulate",
    "simulates",
]


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _sample(d: Decode, node: int, n: int, rng: np.random.Generator, greedy_first: bool = True) -> SampleRequest:
    cfg = d.cfg
    return SampleRequest(d.context(node), n, d.set_length(node), cfg.top_k, cfg.temperature, _seed(rng), greedy_first)


# --- select -------------------------------------------------------------------------------------
def select(
    d: Decode, rng: np.random.Generator, deferred: dict[int, tuple[str, np.random.Generator]] | None = None
) -> Phase[int]:
    """From the root, while the node has children: complete a lazy expansion whose greedy child is
    not good enough, try dynamic node addition, then step to the PUCT-best child (the searches in
    flight count in its exploration term, ``tree.in_flight``).

    ``deferred`` (a round of searches side by side): instead of drawing a completion or an addition
    here, note it (``{node: (kind, rng)}``, once per node) and select among the children as they
    are; the round draws every noted one in one batch before its searches go on."""
    cfg, node = d.cfg, ROOT_INDEX
    while d.tree.children[node]:
        if d.tree.pending[node] and greedy_not_good_enough(d, node):
            if deferred is None:
                yield from complete_lazy_node(d, node, rng)
            else:
                deferred.setdefault(node, ("complete", rng))
        if (
            cfg.dynamic_node_addition
            and (deferred is None or node not in deferred)
            and should_add_nodes(d.tree, node, cfg.max_children, cfg.variance_factor)
        ):
            if deferred is None:
                yield from add_node(d, node, rng)
            else:
                deferred[node] = ("add", rng)
        node = select_child(d.tree, node, cfg.c_puct, cfg.virtual_loss)
    return node


def deferred_changes(d: Decode, deferred: dict[int, tuple[str, np.random.Generator]]) -> list[Phase[None]]:
    """The completions and node additions a round's selections noted, as phases to run side by side."""
    return [
        complete_lazy_node(d, node, rng) if kind == "complete" else add_node(d, node, rng)
        for node, (kind, rng) in deferred.items()
    ]


# --- expand -------------------------------------------------------------------------------------
def propose(
    d: Decode, node: int, n: int, rng: np.random.Generator, greedy: Proposal | None = None
) -> Phase[tuple[list[Proposal], tuple[int, ...] | None]]:
    """``n`` candidate token sets below ``node`` with raw priors, greedy first, duplicates dropped;
    and the first sampled row (the fast preset's simulation start). One-token sets are the top-n
    next tokens with their probabilities; longer ones one greedy row and top-k samples, with the
    greedy raw prior clamped (``clamp_greedy``). ``greedy``: the greedy row already drawn (its
    unclamped raw prior), so only the samples are drawn."""
    cfg = d.cfg
    if d.set_length(node) == 1:
        tops: list[Continuation] = yield TopTokensRequest(d.context(node), n, cfg.temperature)
        return [(c.token_ids, math.exp(c.logprob)) for c in tops], None
    rows: list[Continuation] = yield _sample(d, node, n - (greedy is not None), rng, greedy_first=greedy is None)
    if greedy is None:
        greedy = (rows[0].token_ids, math.exp(rows[0].logprob))
        rows = rows[1:]
    seen = {greedy[0]}
    sampled: list[Proposal] = []
    for c in rows:
        if c.token_ids and c.token_ids not in seen:
            seen.add(c.token_ids)
            sampled.append((c.token_ids, math.exp(c.logprob)))
    raw_greedy = clamp_greedy(greedy[1], [r for _, r in sampled])
    first = rows[0].token_ids if rows and rows[0].token_ids else None
    return [(greedy[0], raw_greedy)] + sampled, first


def expand(d: Decode, node: int, rng: np.random.Generator) -> Phase[tuple[int, ...] | None]:
    """Add ``node``'s candidate children; returns the first sampled candidate (with
    ``lazy_expansion``, the greedy one, the only one drawn)."""
    cfg, tree = d.cfg, d.tree
    if cfg.lazy_expansion and cfg.num_candidates > 1:
        if d.set_length(node) == 1:
            rows: list[Continuation] = yield TopTokensRequest(d.context(node), 1, cfg.temperature)
        else:
            rows = yield _sample(d, node, 1, rng)
        row = rows[0]
        if row.token_ids:
            d.add_child(node, row.token_ids, 1.0)
            tree.proposals[node] = [(row.token_ids, math.exp(row.logprob))]
            tree.pending[node] = True
            return row.token_ids
    proposals, first = yield from propose(d, node, cfg.num_candidates, rng)
    for tokens, _ in proposals:
        d.add_child(node, tokens)
    set_child_priors(tree, node, [raw for _, raw in proposals], cfg.root_uniform_mix)
    tree.proposals[node] = proposals
    return first


def greedy_not_good_enough(d: Decode, node: int) -> bool:
    """A lazily expanded node's greedy child has been judged, and not above ``value_threshold``."""
    greedy = d.tree.children[node][0]
    return d.tree.real_visits[greedy] > 0 and d.tree.value[greedy] <= d.cfg.value_threshold


def complete_lazy_node(d: Decode, node: int, rng: np.random.Generator) -> Phase[None]:
    """Finish a lazy expansion: draw the other candidates and give every child its official prior."""
    tree = d.tree
    tree.pending[node] = False
    greedy = tree.proposals[node][0]
    proposals, _ = yield from propose(d, node, d.cfg.num_candidates, rng, greedy=greedy)
    for tokens, _ in proposals[1:]:
        d.add_child(node, tokens)
    set_child_priors(tree, node, [raw for _, raw in proposals], d.cfg.root_uniform_mix)
    tree.proposals[node] = proposals
    d.stats.completions += 1


def add_node(d: Decode, node: int, rng: np.random.Generator) -> Phase[None]:
    """Dynamic node addition: the children are all alike and all bad, so propose one more (the
    next most probable token for one-token sets; else a greedy-plus-one-sample draw, of which
    only a new sample is added). Only the new child gets a prior."""
    tree, cfg = d.tree, d.cfg
    kids = tree.children[node]
    n = len(kids)
    if len(tree.tokens[kids[0]]) == 1:
        tops: list[Continuation] = yield TopTokensRequest(d.context(node), n + 1, cfg.temperature)
        head: list[Proposal] = [(c.token_ids, math.exp(c.logprob)) for c in tops]
    else:
        rows: list[Continuation] = yield _sample(d, node, 2, rng)
        greedy, sample = rows[0], rows[1]
        g = math.exp(greedy.logprob)
        entries: list[Proposal] = [(greedy.token_ids, g)]
        if sample.token_ids and sample.token_ids != greedy.token_ids:
            s = math.exp(sample.logprob)
            entries = [(greedy.token_ids, clamp_greedy(g, [s])), (sample.token_ids, s)]
        tree.proposals[node] = entries + tree.proposals[node]
        head = tree.proposals[node][: n + 1]
    window = [raw for _, raw in head]
    added: set[tuple[int, ...]] = set()
    for tokens, raw in head:
        if not tokens or tokens in added or tree.child_with_tokens(node, tokens) is not None:
            continue
        added.add(tokens)
        d.add_child(node, tokens, added_prior(raw, window, node == ROOT_INDEX, cfg.root_uniform_mix))
        d.stats.node_additions += 1


# --- simulate and evaluate ----------------------------------------------------------------------
def _simulation_room(d: Decode, state_length: int) -> int:
    room = min(d.cfg.max_length, d.lm.context_length) - state_length
    return room if d.cfg.max_simulation_tokens is None else min(room, d.cfg.max_simulation_tokens)


def simulates(d: Decode, node: int) -> bool:
    """Whether a simulation from ``node`` (with no start tokens) draws any token: the node is not
    terminal, has room, and its text does not already end a clause."""
    if d.tree.terminal[node]:
        return False
    path = d.tree.path_tokens(node)
    room = _simulation_room(d, len(d.prompt_ids) + len(d.committed) + len(path))
    return room > 0 and not d.ends_clause(path)


def simulate(d: Decode, node: int, rng: np.random.Generator, start: Sequence[int] = ()) -> Phase[list[int]]:
    """Sample on from ``node`` until the text ends a clause (checked before each token), EOS, a
    stop string, ``max_simulation_tokens`` or ``max_length``. ``start``: tokens already sampled
    from ``node`` (the fast preset's first candidate), used first."""
    if d.tree.terminal[node]:
        return []
    cfg = d.cfg
    path = d.tree.path_tokens(node)
    state = d.context(node)
    room = _simulation_room(d, len(state))
    head: list[int] = []
    for tok in start:
        if len(head) >= room or d.ends_clause(path + head):
            return head
        head.append(tok)
        if tok in d.lm.eos_token_ids:
            return head
    if len(head) >= room or d.ends_clause(path + head):
        return head
    rest: list[int] = yield GenerateRequest(
        state + tuple(head),
        room - len(head),
        cfg.simulation_top_k,
        cfg.temperature,
        _seed(rng),
        cfg.stop,
        d.boundary_ids,
    )
    return head + list(rest)


def evaluate(d: Decode, node: int, simulation: Sequence[int]) -> Phase[float]:
    """The evaluator's value of (prompt, response up to ``node`` + ``simulation``), cached by text."""
    text, _ = cut_at_stop(d.response_text(d.tree.path_tokens(node) + list(simulation)), d.cfg.stop)
    if text in d.scores:
        d.stats.evaluation_cache_hits += 1
        return d.scores[text]
    try:
        raw = yield ScoreRequest(text)
        value = check_score(raw, f"evaluator {d.evaluator_name!r}")
    except (DecodeCancelled, KeyboardInterrupt, asyncio.CancelledError, GeneratorExit, EngineError):
        raise  # an engine that cannot answer (a judge's server gone) is an EngineError, not the judge's fault
    except Exception as exc:
        raise EvaluatorError(
            f"evaluator {d.evaluator_name!r} failed on a reply of {len(text)} characters: {type(exc).__name__}: {exc}"
        ) from exc
    if text in d.scores:  # a search beside this one asked about the same text in the same batch
        d.stats.evaluation_cache_hits += 1
    else:
        d.scores[text] = value
        d.stats.evaluations += 1
    return value


def in_lockstep(first: Phase[Any], second: Phase[Any]) -> Phase[tuple[Any, Any]]:
    """Run two phases of one search in step: each advances in turn (so they draw from the search's
    random stream in the order they are written), and requests they wait on at the same time go out
    ``Together``. Returns both results."""
    phases = [first, second]
    results: list[Any] = [None, None]
    pending: list[Any] = [None, None]  # the request each phase waits on (None: finished)
    answers: list[Any] = [None, None]
    live = [True, True]
    try:
        for i in (0, 1):
            pending[i] = _advance(phases[i], None, results, i, live)
        while any(live):
            waiting = [i for i in (0, 1) if live[i]]
            if len(waiting) == 2:
                got = yield Together((pending[0], pending[1]))
                answers = [got[0], got[1]]
            else:
                answers[waiting[0]] = yield pending[waiting[0]]
            for i in waiting:
                pending[i] = _advance(phases[i], answers[i], results, i, live)
    finally:
        for phase in phases:
            phase.close()
    return results[0], results[1]


def _advance(phase: Phase[Any], answer: Any, results: list[Any], i: int, live: list[bool]) -> Any:
    try:
        return phase.send(answer)
    except StopIteration as stop:
        results[i] = stop.value
        live[i] = False
        return None


def leaf_value(d: Decode, leaf: int, rng: np.random.Generator, expands: bool = True) -> Phase[tuple[float, list[int]]]:
    """The part of one search between its selection and its back-up: the leaf's value and the
    simulation it was judged with. Official order: simulate, evaluate and expand the leaf, where the
    simulation and the expansion, which both continue the leaf's state and draw from the search's
    stream in that order, go out together (the value does not depend on the leaf's children); with
    ``simulate_from_candidate`` the expansion comes first and the simulation starts with its first
    sampled candidate. ``expands=False``: another search of the round, started earlier, expands this
    leaf; this one only simulates and evaluates it (one more sample of its value)."""
    tree = d.tree
    expands = expands and not tree.children[leaf] and not tree.terminal[leaf]
    if tree.terminal[leaf]:
        simulation: list[int] = []
    elif d.cfg.simulate_from_candidate and expands:
        first = yield from expand(d, leaf, rng)
        simulation = yield from simulate(d, leaf, rng, first or ())
    elif expands:
        simulation, _ = yield from in_lockstep(simulate(d, leaf, rng), expand(d, leaf, rng))
    else:
        simulation = yield from simulate(d, leaf, rng)
    value = yield from evaluate(d, leaf, simulation)
    return value, simulation


# --- back up ------------------------------------------------------------------------------------
def backup_texts(d: Decode, leaf: int, simulation: Sequence[int]) -> list[str]:
    """For each node from the root's child down to ``leaf``: the text from that node's token set to
    the end of the simulation (what the similarity update embeds). Empty without embeddings."""
    if not d.uses_embeddings:
        return []
    nodes = d.tree.path(leaf)[1:]
    texts = []
    for i in range(len(nodes)):
        tokens: list[int] = []
        for n in nodes[i:]:
            tokens.extend(d.tree.tokens[n])
        texts.append(d.lm.decode(tokens + list(simulation)))
    return texts


def back_up(d: Decode, leaf: int, value: float, embeddings: Sequence[np.ndarray]) -> None:
    """Visits and values from the leaf to the root; then each node's embedding (``backup_texts``)
    is folded into its mean embedding, and similar siblings share the value."""
    path = backup(d.tree, leaf, value)
    cfg = d.cfg
    weight = cfg.similarity_weight if cfg.similarity_update else 0.0
    for n, emb in zip(path[1:], embeddings):  # the root has no token set and no siblings
        similarity_update(d.tree, n, emb, value, cfg.similarity_threshold, weight)
