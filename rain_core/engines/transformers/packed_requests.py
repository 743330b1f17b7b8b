"""``TransformersLM``'s batched requests (``BatchedLanguageModel``): the requests of a round, and the
option-letter prompts of many replies, answered as packed trees over their shared prefix
(``packed``), split in halves when they run out of memory."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Union

from ...protocols import Continuation, GenerateRequest, SampleRequest, TopTokensRequest
from ..common import EngineStats, is_out_of_memory, serialised
from . import threads
from .cpu_linear import small_batch_matmul
from .kv_cache import PrefixKVCache
from .packed import KEPT_TREES, MAX_TREE_TOKENS, ROOT, PackedTree
from .row_flow import RowFlow, answers_in_order

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

    def _alone(self, request: SampleRequest | GenerateRequest) -> Any:
        """One request's rows over a packed tree, as a batch's are (its KV state grows in place, with no
        copy of the context per token), where the model packs; None where it does not, or where that
        ran out of memory (the rows then go one batch at a time, halved as memory allows)."""
        if not (self.batch and self._packing and self.reuse_cache):
            return None
        failed: BaseException | None = None
        try:
            answer = self._answer_packed([request])[0]
            self._account_trees()
            return answer
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failed = exc
        self._free_after_oom(failed, "sampling" if isinstance(request, SampleRequest) else "simulating", 2)
        return None

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
        position (``RowFlow``): a row that ends leaves."""
        tree, lasts = self._packed_tree([r.prefix for r in requests])
        flow = RowFlow(self, tree)
        return answers_in_order(flow, [flow.add(r, node) for r, node in zip(requests, lasts)])
