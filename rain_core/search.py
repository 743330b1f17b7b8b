"""RAIN's search: the outer loop (search, commit, stream) and the inner loop (select, expand,
evaluate, back up). It sees only the ``LanguageModel``, ``Evaluator`` and ``Encoder`` protocols.

Each step follows the authors' code (docs/algorithm.md has the point-by-point comparison); the
fields of ``RainConfig`` that deviate from it are named where they act.

The search does no I/O itself: its steps are generators that ``yield`` a ``Request`` (a model call,
an evaluation, an embedding) and receive the answer. A synchronous driver answers with the
protocol's methods (``run``, ``step``, ``search_once``); an asynchronous one awaits the engine's
``AsyncLanguageModel`` twins, or runs a blocking call in a worker thread (``arun``, ``astep``).
So the same algorithm serves one local model and many decodes on a remote server, and reads
top to bottom like the paper.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from .chat import cut_at_stop
from .config import RainConfig
from .protocols import (
    AsyncEvaluator,
    AsyncLanguageModel,
    Continuation,
    DecodeCancelled,
    Encoder,
    Evaluator,
    EvaluatorError,
    LanguageModel,
    check_score,
)
from .tree import (
    ROOT_INDEX,
    Proposal,
    Tree,
    added_prior,
    backup,
    best_child,
    clamp_greedy,
    reroot,
    select_child,
    set_child_priors,
    should_add_nodes,
    similarity_update,
)

logger = logging.getLogger(__name__)


@dataclass
class SearchStats:
    """What one decode cost: searches run, evaluator calls and cache hits, commits, rewinds, node
    additions, simulated tokens, and a log entry per commit."""

    searches: int = 0
    evaluations: int = 0
    evaluation_cache_hits: int = 0
    commits: int = 0
    rewinds: int = 0
    node_additions: int = 0
    completions: int = 0
    early_stops: int = 0
    new_tokens: int = 0
    simulated_tokens: int = 0
    seconds: float = 0.0
    commit_log: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["commit_log"] = list(self.commit_log)
        return out


def stats_difference(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` for every counter of ``after`` (a decode's share of an engine's work)."""
    return {key: value - before.get(key, 0) for key, value in after.items()}


@dataclass(frozen=True)
class Request:
    """One call the search needs answered: ``kind`` is a ``LanguageModel`` request ("top_tokens",
    "sample", "generate"), "score" (the evaluator, args ``(text,)``) or "encode" (the encoder)."""

    kind: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


T = TypeVar("T")
Steps = Generator[Request, Any, T]
"""A step of the search: yields requests, receives their answers, returns ``T``."""

_MODEL_REQUESTS = ("top_tokens", "sample", "generate")


def _call_with_timeout(fn: Callable[[], float], seconds: float, name: str) -> float:
    """Run ``fn`` in a daemon thread and wait at most ``seconds`` (a stuck call is abandoned there)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=f"rain-evaluator-{name}", daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError(f"no score within evaluator_timeout={seconds:g}s")
    if "error" in box:
        raise box["error"]
    return float(box["value"])


class RainSearch:
    """One RAIN decode over token ids. Iterate ``run()`` to receive committed token sets.

    ``should_stop``: called between searches; True stops the decode with ``DecodeCancelled``.
    ``deadline``: a ``time.monotonic()`` instant; past it the best branch found so far is committed
    and the decode ends (``finished_by == "time"``).
    """

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Evaluator,
        encoder: Encoder | None,
        config: RainConfig,
        prompt_ids: Sequence[int],
        eval_prompt: str,
        *,
        seed: int,
        keep_trees: bool = False,
        should_stop: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.lm = lm
        self.evaluator = evaluator
        self.encoder = encoder
        self.cfg = config
        self.prompt_ids = list(prompt_ids)
        self.eval_prompt = eval_prompt
        self.rng = np.random.default_rng(seed)
        self.keep_trees = keep_trees
        self.should_stop = should_stop
        self.deadline = deadline
        self.committed: list[int] = []
        self.tree = Tree()
        self.stats = SearchStats()
        self.budget = config.token_budget(len(self.prompt_ids), lm.context_length)
        self.scores: dict[str, float] = {}
        self.embeds = encoder is not None and (config.similarity_update or config.dynamic_node_addition)
        self.boundary_ids = lm.token_ids_ending_with(config.clause_boundaries)
        self._prompt_tail = lm.decode(self.prompt_ids[-8:])
        self._prev_leaf: int | None = None
        self.finished_by: str | None = None

    # --- helpers ------------------------------------------------------------------------------
    def _seed(self) -> int:
        return int(self.rng.integers(0, 2**31 - 1))

    def _room(self, node: int) -> int:
        """Tokens that may still be generated below ``node``."""
        return self.budget - len(self.committed) - len(self.tree.path_tokens(node))

    def _state(self, node: int) -> list[int]:
        return self.prompt_ids + self.committed + self.tree.path_tokens(node)

    def response_text(self, extra: Sequence[int] = ()) -> str:
        return self.lm.decode(self.committed + list(extra))

    def _ends_clause(self, path: Sequence[int]) -> bool:
        """Whether the text so far (prompt, then the response along ``path``) ends a clause, or the
        response reached a stop string: a simulation stops here."""
        text = self.response_text(path)
        if self.cfg.stop and any(s in text for s in self.cfg.stop):
            return True
        return (text or self._prompt_tail).endswith(self.cfg.clause_boundaries)

    def _is_terminal(self, tokens: Sequence[int], path: Sequence[int]) -> bool:
        if tokens and tokens[-1] in self.lm.eos_token_ids:
            return True
        if self.cfg.stop and any(s in self.response_text(path) for s in self.cfg.stop):
            return True
        return self.budget - len(self.committed) - len(path) <= 0

    def _length(self, node: int) -> int:
        """Token-set length of ``node``'s children: by the node's step from the original prompt."""
        return min(self.cfg.token_set_length(self.tree.step[node]), self._room(node))

    # --- the inner loop -------------------------------------------------------------------------
    def _select(self) -> Steps[int]:
        node = ROOT_INDEX
        while self.tree.children[node]:
            if self.tree.pending[node] and self._greedy_not_good_enough(node):
                yield from self._complete(node)
            if self.cfg.dynamic_node_addition and should_add_nodes(
                self.tree, node, self.cfg.max_children, self.cfg.variance_factor
            ):
                yield from self._add_node(node)
            node = select_child(self.tree, node, self.cfg.c_puct)
        return node

    def _propose(
        self, node: int, n: int, greedy: Proposal | None = None
    ) -> Steps[tuple[list[Proposal], tuple[int, ...] | None]]:
        """``n`` candidate token sets below ``node`` with raw priors, greedy first, duplicates dropped;
        and the first sampled row (the fast preset's simulation start). One-token sets are the top-n
        next tokens with their probabilities; longer ones one greedy row and top-k samples, with the
        greedy raw prior clamped (``clamp_greedy``). ``greedy``: the greedy row already drawn (its
        unclamped raw prior), so only the samples are drawn."""
        cfg = self.cfg
        state = self._state(node)
        length = self._length(node)
        if length == 1:
            tops = yield Request("top_tokens", (state, n, cfg.temperature))
            return [(c.token_ids, math.exp(c.logprob)) for c in tops], None
        rows = yield Request(
            "sample",
            (state, n - (greedy is not None), length),
            dict(top_k=cfg.top_k, temperature=cfg.temperature, seed=self._seed(), greedy_first=greedy is None),
        )
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

    def _add(self, node: int, tokens: tuple[int, ...], prior: float = 0.0) -> int:
        path = self.tree.path_tokens(node) + list(tokens)
        return self.tree.add_child(node, tokens, prior, terminal=self._is_terminal(tokens, path))

    def _expand(self, node: int) -> Steps[tuple[int, ...] | None]:
        """Add ``node``'s candidate children; returns the first sampled candidate (with
        ``lazy_expansion``, the greedy one, the only one drawn)."""
        cfg = self.cfg
        if cfg.lazy_expansion and cfg.num_candidates > 1:
            if self._length(node) == 1:
                rows = yield Request("top_tokens", (self._state(node), 1, cfg.temperature))
            else:
                rows = yield Request(
                    "sample",
                    (self._state(node), 1, self._length(node)),
                    dict(top_k=cfg.top_k, temperature=cfg.temperature, seed=self._seed(), greedy_first=True),
                )
            row: Continuation = rows[0]
            if row.token_ids:
                self._add(node, row.token_ids, 1.0)
                self.tree.proposals[node] = [(row.token_ids, math.exp(row.logprob))]
                self.tree.pending[node] = True
                return row.token_ids
        proposals, first = yield from self._propose(node, cfg.num_candidates)
        for tokens, _ in proposals:
            self._add(node, tokens)
        set_child_priors(self.tree, node, [raw for _, raw in proposals], cfg.root_uniform_mix)
        self.tree.proposals[node] = proposals
        return first

    def _greedy_not_good_enough(self, node: int) -> bool:
        """A lazily expanded node's greedy child has been judged, and not above ``value_threshold``."""
        greedy = self.tree.children[node][0]
        return self.tree.real_visits[greedy] > 0 and self.tree.value[greedy] <= self.cfg.value_threshold

    def _complete(self, node: int) -> Steps[None]:
        """Finish a lazy expansion: draw the other candidates and give every child its official prior."""
        tree = self.tree
        tree.pending[node] = False
        greedy = tree.proposals[node][0]
        proposals, _ = yield from self._propose(node, self.cfg.num_candidates, greedy=greedy)
        for tokens, _ in proposals[1:]:
            self._add(node, tokens)
        set_child_priors(tree, node, [raw for _, raw in proposals], self.cfg.root_uniform_mix)
        tree.proposals[node] = proposals
        self.stats.completions += 1

    def _add_node(self, node: int) -> Steps[None]:
        """Dynamic node addition: the children are all alike and all bad, so propose one more (the
        next most probable token for one-token sets; else a greedy-plus-one-sample draw, of which
        only a new sample is added). Only the new child gets a prior."""
        tree, cfg = self.tree, self.cfg
        kids = tree.children[node]
        n = len(kids)
        if len(tree.tokens[kids[0]]) == 1:
            tops = yield Request("top_tokens", (self._state(node), n + 1, cfg.temperature))
            head: list[Proposal] = [(c.token_ids, math.exp(c.logprob)) for c in tops]
        else:
            rows = yield Request(
                "sample",
                (self._state(node), 2, self._length(node)),
                dict(top_k=cfg.top_k, temperature=cfg.temperature, seed=self._seed(), greedy_first=True),
            )
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
            self._add(node, tokens, added_prior(raw, window, node == ROOT_INDEX, cfg.root_uniform_mix))
            self.stats.node_additions += 1

    def _simulate(self, node: int, start: Sequence[int] = ()) -> Steps[list[int]]:
        """Sample on from ``node`` until the text ends a clause (checked before each token), EOS, a
        stop string, ``max_simulation_tokens`` or ``max_length``. ``start``: tokens already sampled
        from ``node`` (the fast preset's first candidate), used first."""
        if self.tree.terminal[node]:
            return []
        cfg = self.cfg
        path = self.tree.path_tokens(node)
        state = self.prompt_ids + self.committed + path
        room = min(cfg.max_length, self.lm.context_length) - len(state)
        if cfg.max_simulation_tokens is not None:
            room = min(room, cfg.max_simulation_tokens)
        head: list[int] = []
        for tok in start:
            if len(head) >= room or self._ends_clause(path + head):
                return head
            head.append(tok)
            if tok in self.lm.eos_token_ids:
                return head
        if len(head) >= room or self._ends_clause(path + head):
            return head
        rest = yield Request(
            "generate",
            (state + head, room - len(head)),
            dict(
                top_k=cfg.simulation_top_k,
                temperature=cfg.temperature,
                seed=self._seed(),
                stop=cfg.stop,
                stop_token_ids=self.boundary_ids,
            ),
        )
        return head + list(rest)

    def _evaluate(self, node: int, simulation: Sequence[int]) -> Steps[float]:
        """The evaluator's value of (prompt, response up to ``node`` + ``simulation``), cached by text."""
        text, _ = cut_at_stop(self.response_text(self.tree.path_tokens(node) + list(simulation)), self.cfg.stop)
        if text in self.scores:
            self.stats.evaluation_cache_hits += 1
            return self.scores[text]
        name = self._evaluator_name
        try:
            raw = yield Request("score", (text,))
            value = check_score(raw, f"evaluator {name!r}")
        except (DecodeCancelled, KeyboardInterrupt, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise EvaluatorError(
                f"evaluator {name!r} failed on a reply of {len(text)} characters: {type(exc).__name__}: {exc}"
            ) from exc
        self.scores[text] = value
        self.stats.evaluations += 1
        return value

    def _back_up(self, leaf: int, value: float, simulation: Sequence[int]) -> Steps[None]:
        """Visits and values from the leaf to the root; then each node's text from its token set to
        the end of the simulation is embedded, folded into its mean embedding, and similar siblings
        share the value."""
        path = backup(self.tree, leaf, value)
        nodes = path[1:]  # the root has no token set and no siblings
        if not nodes or not self.embeds:
            return
        texts = []
        for i in range(len(nodes)):
            tokens: list[int] = []
            for n in nodes[i:]:
                tokens.extend(self.tree.tokens[n])
            texts.append(self.lm.decode(tokens + list(simulation)))
        embeddings = yield Request("encode", (texts,))
        weight = self.cfg.similarity_weight if self.cfg.similarity_update else 0.0
        for n, emb in zip(nodes, embeddings):
            similarity_update(self.tree, n, emb, value, self.cfg.similarity_threshold, weight)

    def _search_once(self) -> Steps[None]:
        leaf = yield from self._select()
        if self._prev_leaf is not None and not self.tree.is_ancestor(self._prev_leaf, leaf):
            self.stats.rewinds += 1
        self._prev_leaf = leaf
        if self.tree.terminal[leaf]:
            simulation: list[int] = []
        elif self.cfg.simulate_from_candidate:
            first = yield from self._expand(leaf)
            simulation = yield from self._simulate(leaf, first or ())
        else:  # official order: simulate and score the leaf, then expand it
            simulation = yield from self._simulate(leaf)
        value = yield from self._evaluate(leaf, simulation)
        if not self.tree.terminal[leaf] and not self.tree.children[leaf]:
            yield from self._expand(leaf)
        yield from self._back_up(leaf, value, simulation)
        self.stats.searches += 1
        self.stats.simulated_tokens += len(simulation)

    # --- the outer loop -------------------------------------------------------------------------
    def early_stop(self) -> bool:
        """The most-visited root child (ties: higher value) has more than T_min real visits and a
        value above V."""
        if not self.tree.children[ROOT_INDEX]:
            return False
        best = best_child(self.tree)
        return self.tree.real_visits[best] > self.cfg.min_visits and self.tree.value[best] > self.cfg.value_threshold

    def _interrupted(self) -> bool:
        """Raise if the caller went away; True once the deadline has passed."""
        if self.should_stop is not None and self.should_stop():
            raise DecodeCancelled("the caller stopped waiting for this decode")
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _step(self) -> Steps[list[int] | None]:
        """Search from the committed context, then commit the best root child's token set. Returns
        None when the deadline passed before the root had any child to commit."""
        cfg = self.cfg
        t0 = time.perf_counter()
        i0 = self.tree.real_visits[ROOT_INDEX]
        target = max(cfg.max_searches, i0 + cfg.extra_searches)
        i, searches = i0, 0
        stopped_early = False
        while i < target or not self.tree.children[ROOT_INDEX]:
            if self._interrupted():
                self.finished_by = "time"
                if not self.tree.children[ROOT_INDEX]:
                    return None
                break
            yield from self._search_once()
            if not self.tree.children[ROOT_INDEX]:
                raise RuntimeError(f"{self.lm.name} proposed no continuation of the context")
            i += 1
            searches += 1
            if self.early_stop():
                stopped_early = True
                self.stats.early_stops += 1
                break
        best = best_child(self.tree)
        tokens = list(self.tree.tokens[best])
        entry: dict[str, Any] = {
            "tokens": tokens,
            "text": self.lm.decode(tokens),
            "searches": searches,
            "reused_visits": i0,
            "visits": self.tree.visits[best],
            "real_visits": self.tree.real_visits[best],
            "value": self.tree.value[best],
            "early_stop": stopped_early,
            "seconds": time.perf_counter() - t0,
        }
        if self.keep_trees:
            entry["tree"] = self.tree.to_dict()
            entry["tree"]["texts"] = [self.lm.decode(t) for t in self.tree.tokens]
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

    def _finished(self, tokens: list[int]) -> bool:
        """After a commit: has the answer ended (EOS, a stop string, the budget, the deadline)?"""
        if tokens and tokens[-1] in self.lm.eos_token_ids:
            self.finished_by = "eos"
        elif self.cfg.stop and any(s in self.response_text() for s in self.cfg.stop):
            self.finished_by = "stop"
        elif len(self.committed) >= self.budget:
            self.finished_by = "length"
        return self.finished_by is not None

    # --- drivers: who answers the requests ------------------------------------------------------
    @property
    def _evaluator_name(self) -> str:
        return str(getattr(self.evaluator, "name", type(self.evaluator).__name__))

    def answer(self, request: Request) -> Any:
        """Answer ``request`` by calling the protocols (blocking)."""
        if request.kind in _MODEL_REQUESTS:
            return getattr(self.lm, request.kind)(*request.args, **request.kwargs)
        if request.kind == "score":
            text = request.args[0]
            if self.cfg.evaluator_timeout is not None:
                return _call_with_timeout(
                    lambda: self.evaluator.score(self.eval_prompt, text),
                    self.cfg.evaluator_timeout,
                    self._evaluator_name,
                )
            return self.evaluator.score(self.eval_prompt, text)
        if request.kind == "encode":
            return self.encoder.encode(*request.args)  # type: ignore[union-attr]
        raise ValueError(f"unknown search request {request.kind!r}")

    async def aanswer(self, request: Request) -> Any:
        """Answer ``request`` without blocking the event loop: the engine's and evaluator's async
        methods when they have them, otherwise the blocking call in a worker thread."""
        if request.kind in _MODEL_REQUESTS and isinstance(self.lm, AsyncLanguageModel):
            return await getattr(self.lm, "a" + request.kind)(*request.args, **request.kwargs)
        if request.kind == "score" and isinstance(self.evaluator, AsyncEvaluator):
            coro = self.evaluator.ascore(self.eval_prompt, request.args[0])
            if self.cfg.evaluator_timeout is None:
                return await coro
            try:
                return await asyncio.wait_for(coro, self.cfg.evaluator_timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no score within evaluator_timeout={self.cfg.evaluator_timeout:g}s") from None
        return await asyncio.to_thread(self.answer, request)

    def drive(self, steps: Steps[T]) -> T:
        """Run ``steps`` to the end, answering each request with ``answer``."""
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = steps.throw(error) if error is not None else steps.send(result)
            except StopIteration as stop:
                value: T = stop.value
                return value
            error = None
            try:
                result = self.answer(request)
            except Exception as exc:  # handed to the step, which may turn it into a clearer error
                error = exc

    async def adrive(self, steps: Steps[T]) -> T:
        """``drive`` on an event loop: requests are awaited (``aanswer``)."""
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = steps.throw(error) if error is not None else steps.send(result)
            except StopIteration as stop:
                value: T = stop.value
                return value
            error = None
            try:
                result = await self.aanswer(request)
            except Exception as exc:
                error = exc

    # --- the public, driven forms ---------------------------------------------------------------
    def select(self) -> int:
        return self.drive(self._select())

    def expand(self, node: int) -> tuple[int, ...] | None:
        return self.drive(self._expand(node))

    def simulate(self, node: int, start: Sequence[int] = ()) -> list[int]:
        return self.drive(self._simulate(node, start))

    def evaluate(self, node: int, simulation: Sequence[int]) -> float:
        return self.drive(self._evaluate(node, simulation))

    def back_up(self, leaf: int, value: float, simulation: Sequence[int]) -> None:
        self.drive(self._back_up(leaf, value, simulation))

    def search_once(self) -> None:
        self.drive(self._search_once())

    def step(self) -> list[int] | None:
        return self.drive(self._step())

    async def astep(self) -> list[int] | None:
        return await self.adrive(self._step())

    def run(self) -> Iterator[list[int]]:
        """Yield committed token sets until EOS, a stop string, the token budget or the deadline."""
        t0 = time.perf_counter()
        try:
            if self.budget <= 0:
                self.finished_by = "length"
                return
            while True:
                tokens = self.step()
                self.stats.seconds = time.perf_counter() - t0
                if tokens is None:
                    return
                yield tokens
                if self._finished(tokens):
                    return
        finally:
            self.stats.seconds = time.perf_counter() - t0

    async def arun(self) -> AsyncIterator[list[int]]:
        """``run`` on an event loop (see ``aanswer``); cancelling the task stops the search at once."""
        t0 = time.perf_counter()
        try:
            if self.budget <= 0:
                self.finished_by = "length"
                return
            while True:
                tokens = await self.astep()
                self.stats.seconds = time.perf_counter() - t0
                if tokens is None:
                    return
                yield tokens
                if self._finished(tokens):
                    return
        finally:
            self.stats.seconds = time.perf_counter() - t0
