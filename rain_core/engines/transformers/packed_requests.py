"""``TransformersLM``'s batched requests (``BatchedLanguageModel``): the requests of a round, and the
option-letter prompts of many replies, answered as packed trees over their shared prefix
(``packed``), split in halves when they run out of memory."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Union

from ...protocols import Continuation, GenerateRequest, SampleRequest, TopTokensRequest
from ..common import EngineStats, is_out_of_memory, serialised, tail_tokens
from . import threads
from .cpu_linear import small_batch_matmul
from .kv_cache import PrefixKVCache
from .packed import KEPT_TREES, MAX_TREE_TOKENS, ROOT, PackedTree
from .row_sampling import pick, row_generators

ModelRequest = Union[TopTokensRequest, SampleRequest, GenerateRequest]  # noqa: UP007


class PackedRequests:
    """The batched requests of ``TransformersLM`` (a part of it: it reads the engine's model, caches
    and forward pass, declared here)."""

    model: Any
    device: Any
    batch: bool
    reuse_cache: bool
    small_batch_matmul: bool
    context_length: int
    eos_token_ids: frozenset[int]
    cache: PrefixKVCache
    stats: EngineStats
    _torch: Any
    _trees: list[PackedTree]
    _packing: bool
    _mask_dtype: Any
    _cache_arg: str
    _keeps_logits: bool
    _state: Callable[..., tuple[Any, Any]]
    _logprobs: Callable[[Any, float], Any]
    _top: Callable[..., list[Continuation]]
    _check_length: Callable[[int], None]
    _free_after_oom: Callable[[BaseException, str, int], None]
    decode: Callable[[Sequence[int]], str]
    top_tokens: Callable[..., list[Continuation]]
    sample: Callable[..., list[Continuation]]
    generate: Callable[..., list[int]]

    def _packs(self, requests: int) -> bool:
        return self.batch and self._packing and requests > 1

    def _run_packed(self, ids: Any, cache: Any, mask: Any, positions: Any, keep: Any) -> Any:
        """The forward pass of a packed tree: ``ids`` (1, q) new tokens with their 4D mask and positions;
        ``keep``: the positions whose logits are read (a 1D index tensor)."""
        threads.check()  # the CPU threads follow the cores other work leaves free
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {self._cache_arg: cache, "attention_mask": mask, "position_ids": positions}
        if self._keeps_logits:
            kwargs["logits_to_keep"] = keep
        with small_batch_matmul(self.small_batch_matmul), self._torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=True, **kwargs)
        self.stats.forward_calls += 1
        self.stats.forward_tokens += int(ids.numel())
        self.stats.seconds += time.perf_counter() - t0
        return out

    def _packed_tree(self, prefixes: Sequence[Sequence[int]]) -> tuple[PackedTree, list[int]]:
        """The packed tree that holds ``prefixes``, and each prefix's last node (``ROOT``: the tree's
        base itself). Recent trees are kept (``KEPT_TREES``: the search's requests continue the
        committed context, the evaluator's its principle and conversation), so tokens run by earlier
        requests are not run again; when none is continued by every prefix, or the one that is would
        grow past ``MAX_TREE_TOKENS``, a new one starts from the longest common prefix of
        ``prefixes``, its state taken from the prefix cache."""
        new_tokens = sum(len(p) for p in prefixes)
        for i, tree in enumerate(self._trees):
            if all(tree.continues(p) for p in prefixes):
                if tree.tree_tokens + new_tokens - tree.base_length * len(prefixes) > MAX_TREE_TOKENS:
                    del self._trees[i]
                    break
                self._trees.insert(0, self._trees.pop(i))
                return tree, [tree.add_path(ROOT, p[tree.base_length :]) for p in prefixes]
        self._account_trees()
        common = 0
        if self.reuse_cache:
            shortest = min(len(p) for p in prefixes)
            first = prefixes[0]
            while common < shortest and all(p[common] == first[common] for p in prefixes):
                common += 1
        base_ids = list(prefixes[0][:common])
        layers, logits = self._state(base_ids) if common else (None, None)
        tree = PackedTree(
            layers,
            base_ids,
            logits,
            self._run_packed,
            device=self.device,
            dtype=self._mask_dtype,
            capacity=new_tokens - common * len(prefixes) + 64,
        )
        if self.reuse_cache:
            self._trees = [tree] + self._trees[: KEPT_TREES - 1]
        return tree, [tree.add_path(ROOT, p[common:]) for p in prefixes]

    def _account_trees(self) -> None:
        """The packed trees share the cache's byte budget: prefix-cache entries make room for them."""
        self.cache.share(sum(t.nbytes for t in self._trees))

    def clear_cache(self) -> None:
        """Drop every cached state: the prefix cache (pinned entries too) and the packed tree."""
        self.cache.clear()
        self._trees = []
        self.cache.share(0)

    def _split_after_oom(self, method: Any, requests: Sequence[Any], what: str) -> list[Any]:
        """Answer ``requests`` with ``method`` as one packed batch; out of memory, in two halves."""
        failed: BaseException | None = None
        try:
            result: list[Any] = method(requests)
            self._account_trees()
            return result
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failed = exc
        self._free_after_oom(failed, what, len(requests))
        half = len(requests) // 2
        return self._split_after_oom(method, requests[:half], what) + self._split_after_oom(
            method, requests[half:], what
        )

    @serialised
    def top_tokens_batch(self, requests: Sequence[TopTokensRequest]) -> list[list[Continuation]]:
        if not self._packs(len(requests)):
            return [self.top_tokens(r.prefix, r.k, r.temperature, r.exclude) for r in requests]
        for r in requests:
            self._check_length(len(r.prefix))
        return self._split_after_oom(self._top_tokens_packed, list(requests), "reading next tokens")

    def _top_tokens_packed(self, requests: Sequence[TopTokensRequest]) -> list[list[Continuation]]:
        tree, lasts = self._packed_tree([r.prefix for r in requests])
        logits = tree.feed(lasts)
        return [self._top(logits[n], r.k, r.temperature, r.exclude) for n, r in zip(lasts, requests)]

    @serialised
    def sample_batch(self, requests: Sequence[SampleRequest]) -> list[list[Continuation]]:
        if not self._packs(len(requests)):
            return [
                self.sample(
                    r.prefix,
                    r.n,
                    r.length,
                    top_k=r.top_k,
                    temperature=r.temperature,
                    seed=r.seed,
                    greedy_first=r.greedy_first,
                )
                for r in requests
            ]
        for r in requests:
            self._check_length(len(r.prefix) + r.length)
        return self._split_after_oom(self._sample_packed, list(requests), "sampling candidates")

    @serialised
    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[list[int]]:
        if not self._packs(len(requests)):
            return [
                self.generate(
                    r.prefix,
                    r.max_tokens,
                    top_k=r.top_k,
                    temperature=r.temperature,
                    seed=r.seed,
                    stop=r.stop,
                    stop_token_ids=r.stop_token_ids,
                )
                for r in requests
            ]
        return self._split_after_oom(self._generate_packed, list(requests), "simulating")

    @serialised
    def answer_batch(self, requests: Sequence[ModelRequest]) -> list[Any]:
        """Requests of any kind in one call (``MixedBatchLanguageModel``): their rows step together."""
        if not self._packs(len(requests)):
            return [self._single(r) for r in requests]
        for r in requests:
            self._check_length(len(r.prefix) + (r.length if isinstance(r, SampleRequest) else 0))
        return self._split_after_oom(self._answer_packed, list(requests), "answering a round")

    def _single(self, r: ModelRequest) -> Any:
        if isinstance(r, TopTokensRequest):
            return self.top_tokens(r.prefix, r.k, r.temperature, r.exclude)
        if isinstance(r, SampleRequest):
            return self.sample(
                r.prefix,
                r.n,
                r.length,
                top_k=r.top_k,
                temperature=r.temperature,
                seed=r.seed,
                greedy_first=r.greedy_first,
            )
        return self.generate(
            r.prefix,
            r.max_tokens,
            top_k=r.top_k,
            temperature=r.temperature,
            seed=r.seed,
            stop=r.stop,
            stop_token_ids=r.stop_token_ids,
        )

    def _sample_packed(self, requests: Sequence[SampleRequest]) -> list[list[Continuation]]:
        answers: list[list[Continuation]] = self._answer_packed(requests)
        return answers

    def _generate_packed(self, requests: Sequence[GenerateRequest]) -> list[list[int]]:
        answers: list[list[int]] = self._answer_packed(requests)
        return answers

    def _answer_packed(self, requests: Sequence[ModelRequest]) -> list[Any]:
        """Every row of every request steps together over one packed tree, one forward pass per token
        position: a top-tokens request is read from the first pass; a sample request's rows draw
        ``length`` tokens each (top-k renormalised, row r from its own generator, greedy row first);
        a generate request's one row draws until EOS, a stop id, a stop string or its limit. A row
        that ends leaves; rows that drew the same tokens so far share their trie nodes."""
        tree, lasts = self._packed_tree([r.prefix for r in requests])
        logits = tree.feed(lasts)
        rows: list[_Row] = []
        answers: list[Any] = [None] * len(requests)
        for i, (r, last) in enumerate(zip(requests, lasts)):
            if isinstance(r, TopTokensRequest):
                answers[i] = self._top(logits[last], r.k, r.temperature, r.exclude)
            elif isinstance(r, SampleRequest):
                gens = row_generators(self._torch, r.seed, range(r.n))
                rows += [_Row(i, last, gens[j], r.greedy_first and j == 0, r.length) for j in range(r.n)]
            else:
                limit = min(r.max_tokens, self.context_length - len(r.prefix))
                gen = self._torch.Generator(device="cpu").manual_seed(int(r.seed))
                rows.append(_Row(i, last, gen, False, limit))
        live = [row for row in rows if row.limit > 0]
        while live:
            grown: list[int] = []
            for (top_k, temperature), group in _by_sampling(requests, live).items():
                logp = self._torch.stack([self._logprobs(logits[row.node], temperature) for row in group])
                picks = pick(self._torch, logp.cpu(), top_k, [row.gen for row in group], [row.greedy for row in group])
                for row, (tok, lp) in zip(group, picks):
                    row.tokens.append(tok)
                    row.logprob += lp
                    if self._row_ends(requests[row.request], row, tok):
                        row.done = True
                    else:
                        row.node = tree.add(row.node, tok)
                        grown.append(row.node)
            live = [row for row in live if not row.done]
            if grown:
                logits.update(tree.feed(list(dict.fromkeys(grown))))
        for i, r in enumerate(requests):
            mine = [row for row in rows if row.request == i]
            if isinstance(r, SampleRequest):
                answers[i] = [Continuation(tuple(row.tokens), row.logprob) for row in mine]
            elif isinstance(r, GenerateRequest):
                answers[i] = mine[0].tokens
        return answers

    def _row_ends(self, r: ModelRequest, row: _Row, tok: int) -> bool:
        if tok in self.eos_token_ids or len(row.tokens) >= row.limit:
            return True
        if isinstance(r, GenerateRequest):
            if tok in r.stop_token_ids:
                return True
            if r.stop:  # only the new token can complete a stop string: decode the tail that may hold it
                return any(s in self.decode(row.tokens[-tail_tokens(r.stop) :]) for s in r.stop)
        return False


class _Row:
    """One row of a packed call: the request it answers, its current trie node, its generator."""

    __slots__ = ("request", "node", "gen", "greedy", "limit", "tokens", "logprob", "done")

    def __init__(self, request: int, node: int, gen: Any, greedy: bool, limit: int) -> None:
        self.request, self.node, self.gen, self.greedy, self.limit = request, node, gen, greedy, limit
        self.tokens: list[int] = []
        self.logprob = 0.0
        self.done = False


def _by_sampling(requests: Sequence[ModelRequest], rows: list[_Row]) -> dict[tuple[int | None, float], list[_Row]]:
    """Rows grouped by how they draw (top-k and temperature), in order: each group picks in one call."""
    out: dict[tuple[int | None, float], list[_Row]] = {}
    for row in rows:
        r = requests[row.request]
        assert not isinstance(r, TopTokensRequest)
        out.setdefault((r.top_k, r.temperature), []).append(row)
    return out
