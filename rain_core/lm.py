"""The language-model layer: the ``LanguageModel`` protocol the search talks to, and its
transformers implementation with a prefix-aware KV cache and batched candidates.

Every protocol method is a request a serving engine can answer on token-id prompts ("sample n
continuations of L tokens with their log-probabilities", "log-probabilities of these next tokens",
"continue until one of these strings"), so a remote engine can stand in for the local one without
touching the search. Randomness enters as an integer ``seed`` per call for the same reason.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Continuation:
    """A sampled token set: its ids and the sum of their log-probabilities."""

    token_ids: tuple[int, ...]
    logprob: float


@dataclass
class EngineStats:
    """Counters of model work, for benchmarks: forward calls and the tokens they processed."""

    forward_calls: int = 0
    forward_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0

    def snapshot(self) -> dict[str, float]:
        return dict(self.__dict__)


@runtime_checkable
class LanguageModel(Protocol):
    """What the search needs from a model. Token ids in, token ids and log-probabilities out."""

    name: str
    context_length: int
    eos_token_ids: frozenset[int]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` (special tokens dropped)."""

    def chat_prompt(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The chat rendered as prompt text with the model's chat template (or a plain transcript)."""

    def top_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        """The ``k`` most probable next tokens after ``prefix`` (none of ``exclude``), best first."""

    def sample(
        self, prefix: Sequence[int], n: int, length: int, *, top_k: int, temperature: float, seed: int,
        greedy_first: bool = True,
    ) -> list[Continuation]:
        """``n`` continuations of up to ``length`` tokens (shorter when one ends with EOS); the first
        is the greedy one when ``greedy_first``; the others are top-k samples."""

    def continue_until(
        self, prefix: Sequence[int], stop: Sequence[str], max_tokens: int, *, top_k: int, temperature: float,
        seed: int, min_tokens: int = 1,
    ) -> list[int]:
        """Sample token by token until the new text contains one of ``stop``, EOS, or ``max_tokens``."""

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> list[list[float]]:
        """For each prompt, the log-probabilities of each candidate token as the next token."""

    def cache_prefix(self, prefix: Sequence[int]) -> None:
        """Hint that ``prefix`` starts many later prompts: keep it cached until released (engines
        with automatic prefix caching may ignore this)."""

    def release_prefix(self, prefix: Sequence[int]) -> None:
        """Undo ``cache_prefix``: the prefix may be evicted again."""


class ContextTooLongError(ValueError):
    """A prompt does not fit the model's context window."""


def _stop_hit(text: str, stop: Sequence[str]) -> bool:
    return any(s in text for s in stop)


@dataclass
class _CacheEntry:
    layers: list[tuple[Any, Any]]  # per layer (keys, values), each (1, H, T, D)
    logits: Any  # (V,) next-token logits after the prefix
    nbytes: int
    pinned: bool = False


@dataclass
class PrefixKVCache:
    """LRU store of KV states keyed by exact token-id prefixes, with a byte budget.

    A lookup returns the longest stored prefix of the query. Stored tensors are never mutated:
    extending a state concatenates into new tensors, so entries can be shared freely.
    """

    max_bytes: int
    entries: OrderedDict[tuple[int, ...], _CacheEntry] = field(default_factory=OrderedDict)
    by_length: dict[int, set[tuple[int, ...]]] = field(default_factory=dict)
    nbytes: int = 0

    def longest_prefix(self, ids: Sequence[int]) -> tuple[tuple[int, ...], _CacheEntry] | None:
        n = len(ids)
        for length in sorted((L for L in self.by_length if L <= n), reverse=True):
            key = tuple(ids[:length])
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
                return key, entry
        return None

    def put(self, key: tuple[int, ...], entry: _CacheEntry) -> None:
        if key in self.entries:
            old = self.entries.pop(key)
            self.nbytes -= old.nbytes
            entry.pinned = entry.pinned or old.pinned
            self.by_length[len(key)].discard(key)
        self.entries[key] = entry
        self.by_length.setdefault(len(key), set()).add(key)
        self.nbytes += entry.nbytes
        self._evict()

    def _evict(self) -> None:
        for key in list(self.entries):
            if self.nbytes <= self.max_bytes:
                break
            entry = self.entries[key]
            if entry.pinned:
                continue
            del self.entries[key]
            self.by_length[len(key)].discard(key)
            if not self.by_length[len(key)]:
                del self.by_length[len(key)]
            self.nbytes -= entry.nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.by_length.clear()
        self.nbytes = 0


MIN_CACHE_BYTES = 64 * 2**20

# Set while a ``TransformersLM`` with ``small_batch_matmul`` runs a forward pass; outside that
# (training, other code sharing the model) the swapped-in linear layers behave as ``nn.Linear``.
_SMALL_BATCH_MATMUL: contextvars.ContextVar[bool] = contextvars.ContextVar("rain_small_batch_matmul", default=False)
_SMALL_BATCH_ROWS = (1, 32)
_LINEAR_CLASS: Any = None


def _small_batch_linear_class() -> Any:
    """``nn.Linear`` whose forward computes ``(W @ x.T).T`` for 1 to 32 rows of float32 on CPU.

    A decode step multiplies a few rows by every weight matrix, so it is bound by reading the
    weights. On CPU, ``F.linear`` with 2-32 rows takes a matrix-product path that streams them
    slowly, and with one row a matrix-vector path that runs on one thread; with the weight as the
    left operand (one row is duplicated into two) the product streams the weights on every thread.
    Measured on two cores with SmolLM2-135M: the products alone (513 MB of weights), one row
    80 -> 52 ms; whole decode steps, one row 91 -> 74 ms and 2-5 rows 158 -> 84 ms. Same
    products, summed in another order: the results agree to float32 rounding."""
    global _LINEAR_CLASS
    if _LINEAR_CLASS is None:
        import torch

        class SmallBatchLinear(torch.nn.Linear):
            def forward(self, x: Any) -> Any:
                if _SMALL_BATCH_MATMUL.get() and x.dim() >= 2 and x.dtype == torch.float32 and not x.is_cuda:
                    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
                    if _SMALL_BATCH_ROWS[0] <= rows <= _SMALL_BATCH_ROWS[1] and self.weight.dtype == torch.float32:
                        flat = x.reshape(rows, x.shape[-1])
                        if rows == 1:
                            flat = torch.cat([flat, flat])
                        y = torch.matmul(self.weight, flat.T).T[:rows].contiguous()
                        if self.bias is not None:
                            y = y + self.bias
                        return y.reshape(*x.shape[:-1], y.shape[-1])
                return torch.nn.functional.linear(x, self.weight, self.bias)

        _LINEAR_CLASS = SmallBatchLinear
    return _LINEAR_CLASS


def _use_small_batch_linear(model: Any) -> int:
    """Give every plain ``nn.Linear`` of ``model`` the small-batch forward; returns how many."""
    import torch

    cls = _small_batch_linear_class()
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = cls
            count += 1
        elif type(module) is cls:
            count += 1
    return count


def _weight_bytes(model: Any) -> int:
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


class TransformersLM:
    """A ``LanguageModel`` over a transformers causal LM and its tokenizer.

    ``reuse_cache`` keeps KV states of tree prefixes (LRU, ``cache_bytes`` budget) so a node's
    context is never recomputed; ``batch`` samples an expansion's candidates and scores both
    option orders as one batch. Both switches change speed only, not the search.
    ``cache_bytes`` defaults to a quarter of the model's weight bytes (at least 64 MiB), so
    RAIN's extra memory scales with the model: an evicted state is rebuilt from its longest
    cached prefix, which costs a few tokens of forward pass, not the whole context.
    ``small_batch_matmul`` (CPU only) computes the linear layers of 1-32-row forward passes as
    ``W @ x.T`` (see ``_small_batch_linear_class``); it swaps the class of the model's ``nn.Linear``
    modules, whose behaviour changes only inside this engine's own forward passes.
    """

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
    ) -> None:
        import torch

        self._torch = torch
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.context_length = int(
            getattr(model.config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
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
        if cache_bytes is None:
            cache_bytes = max(MIN_CACHE_BYTES, _weight_bytes(model) // 4)
        elif isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a whole number of bytes >= 0 (or None for the default), got {cache_bytes!r}")
        self.cache = PrefixKVCache(max_bytes=cache_bytes)
        self.stats = EngineStats()
        self.device = next(model.parameters()).device
        # On CPU, batches of a few rows (the expansion's candidates) get the weight-streaming product.
        self.small_batch_matmul = bool(small_batch_matmul) and self.device.type == "cpu" and _use_small_batch_linear(model) > 0
        # Models that accept ``logits_to_keep`` project only the positions we read onto the vocabulary
        # (the full (T, vocab) logits of a long prompt cost time and, for SmolLM2, ~200 KB a token).
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])

    # --- text -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def chat_prompt(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
            )
        lines = [f"{m['role'].capitalize()}: {m.get('content') or ''}" for m in messages]
        if add_generation_prompt:
            lines.append("Assistant:")
        return "\n".join(lines) + ("" if add_generation_prompt else "\n")

    # --- model calls ----------------------------------------------------------------------------
    def _forward(
        self, input_ids: Any, layers: list[tuple[Any, Any]] | None, attention_mask: Any = None, keep: Any = None,
    ) -> Any:
        """One forward pass. ``input_ids`` (B, T); ``layers`` a cached prefix, batch 1 or B. ``keep``: the
        positions whose logits are read (an int n: the last n; a (B, k) tensor: per row); ``None``: all.
        A model without ``logits_to_keep`` returns all positions, so callers read the last ones."""
        from transformers import DynamicCache

        torch = self._torch
        t0 = time.perf_counter()
        past = DynamicCache(ddp_cache_data=layers) if layers else DynamicCache()
        past_len = layers[0][0].shape[-2] if layers else 0
        bsz = input_ids.shape[0]
        if layers and layers[0][0].shape[0] != bsz:
            past = DynamicCache(ddp_cache_data=[(k.expand(bsz, -1, -1, -1), v.expand(bsz, -1, -1, -1)) for k, v in layers])
        kwargs: dict[str, Any] = {}
        if keep is not None and self._keeps_logits:
            kwargs["logits_to_keep"] = keep
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            positions = past_len + torch.arange(input_ids.shape[1], device=self.device).unsqueeze(0).expand(bsz, -1)
            kwargs["position_ids"] = positions
        token = _SMALL_BATCH_MATMUL.set(self.small_batch_matmul)
        try:
            with torch.inference_mode():
                out = self.model(input_ids=input_ids, past_key_values=past, use_cache=True, **kwargs)
        finally:
            _SMALL_BATCH_MATMUL.reset(token)
        self.stats.forward_calls += 1
        self.stats.forward_tokens += int(input_ids.numel())
        self.stats.seconds += time.perf_counter() - t0
        return out

    @staticmethod
    def _layers_of(cache: Any) -> list[tuple[Any, Any]]:
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _check_length(self, n: int) -> None:
        if n > self.context_length:
            raise ContextTooLongError(
                f"{n} tokens do not fit {self.name}'s context of {self.context_length}; shorten the prompt "
                f"or lower max_new_tokens"
            )

    def _state(self, ids: Sequence[int], store: bool = True) -> tuple[list[tuple[Any, Any]], Any]:
        """KV layers and next-token logits (V,) after ``ids``, reusing the longest cached prefix."""
        torch = self._torch
        ids = list(ids)
        if not ids:
            raise ValueError("a prompt must contain at least one token")
        self._check_length(len(ids))
        key = tuple(ids)
        hit = self.cache.longest_prefix(ids) if self.reuse_cache else None
        if hit is not None and len(hit[0]) == len(ids):
            self.stats.cache_hits += 1
            return hit[1].layers, hit[1].logits
        layers, start = (hit[1].layers, len(hit[0])) if hit is not None else (None, 0)
        if hit is not None:
            self.stats.cache_hits += 1
        else:
            self.stats.cache_misses += 1
        new = torch.tensor([ids[start:]], dtype=torch.long, device=self.device)
        out = self._forward(new, layers, keep=1)
        layers = self._layers_of(out.past_key_values)
        logits = out.logits[0, -1].float()
        if store and self.reuse_cache:
            nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
            self.cache.put(key, _CacheEntry(layers, logits, nbytes))
        return layers, logits

    def _logprobs(self, logits: Any, temperature: float) -> Any:
        return self._torch.log_softmax(logits.float() / temperature, dim=-1)

    def top_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        _, logits = self._state(prefix)
        logp = self._logprobs(logits, temperature).clone()
        if exclude:
            logp[list(exclude)] = float("-inf")
        k = min(k, logp.shape[-1] - len(exclude))
        values, idx = self._torch.topk(logp, k)
        return [Continuation((int(i),), float(v)) for v, i in zip(values.tolist(), idx.tolist()) if v > float("-inf")]

    def _pick(self, logp: Any, top_k: int, generators: Sequence[Any], greedy_rows: Sequence[bool]) -> list[int]:
        """One token per row of ``logp`` (B, V): argmax for greedy rows, top-k sampling otherwise.
        Each row draws from its own generator, so batching never changes what is drawn."""
        torch = self._torch
        values, idx = torch.topk(logp, min(top_k, logp.shape[-1]), dim=-1)  # (B, k)
        probs = torch.softmax(values, dim=-1)
        out = []
        for row, (gen, greedy) in enumerate(zip(generators, greedy_rows)):
            draw = torch.multinomial(probs[row], 1, generator=gen)  # consumed by greedy rows too
            out.append(int(idx[row, 0]) if greedy else int(idx[row, int(draw)]))
        return out

    def sample(
        self, prefix: Sequence[int], n: int, length: int, *, top_k: int, temperature: float, seed: int,
        greedy_first: bool = True,
    ) -> list[Continuation]:
        torch = self._torch
        self._check_length(len(prefix) + length)
        generators = [torch.Generator(device="cpu").manual_seed(int(seed) + 7919 * row) for row in range(n)]
        greedy_rows = [greedy_first and row == 0 for row in range(n)]
        if not self.batch:
            # Engine off: the same draws, one candidate at a time.
            return [
                self._sample_rows(prefix, 1, length, top_k, temperature, [generators[r]], [greedy_rows[r]])[0]
                for r in range(n)
            ]
        return self._sample_rows(prefix, n, length, top_k, temperature, generators, greedy_rows)

    def _sample_rows(
        self, prefix: Sequence[int], n: int, length: int, top_k: int, temperature: float,
        generators: Sequence[Any], greedy_rows: Sequence[bool],
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
            pick = self._pick(rows.cpu(), top_k, generators, greedy_rows)  # n token ids
            chosen = rows[torch.arange(n), torch.tensor(pick, device=logp.device)].tolist()
            for row, (tok, lp) in enumerate(zip(pick, chosen)):
                if done[row]:
                    continue
                tokens[row].append(int(tok))
                totals[row] += float(lp)
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
            parents = torch.tensor([g for g, _ in index], dtype=torch.long, device=self.device)
            feed = torch.tensor([[t] for _, t in index], dtype=torch.long, device=self.device)  # (G', 1)
            if layers[0][0].shape[0] == 1:
                past = layers  # one parent: _forward broadcasts it over the batch
            else:
                past = [(k.index_select(0, parents), v.index_select(0, parents)) for k, v in layers]
            out = self._forward(feed, past)
            layers = self._layers_of(out.past_key_values)
            logp = self._logprobs(out.logits[:, -1], temperature)
        return [Continuation(tuple(t), s) for t, s in zip(tokens, totals)]

    def continue_until(
        self, prefix: Sequence[int], stop: Sequence[str], max_tokens: int, *, top_k: int, temperature: float,
        seed: int, min_tokens: int = 1,
    ) -> list[int]:
        torch = self._torch
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        max_tokens = min(max_tokens, self.context_length - len(prefix))
        if max_tokens <= 0:
            return []
        layers, logits = self._state(prefix)
        out_ids: list[int] = []
        while True:
            logp = self._logprobs(logits, temperature).unsqueeze(0)
            tok = self._pick(logp.cpu(), top_k, [generator], [False])[0]
            out_ids.append(tok)
            if tok in self.eos_token_ids or len(out_ids) >= max_tokens:
                break
            if len(out_ids) >= min_tokens and stop and _stop_hit(self.decode(out_ids), stop):
                break
            if self.reuse_cache:
                out = self._forward(torch.tensor([[tok]], device=self.device), layers)
                layers = self._layers_of(out.past_key_values)
            else:
                out = self._forward(torch.tensor([list(prefix) + out_ids], device=self.device), None, keep=1)
            logits = out.logits[0, -1]
        return out_ids

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> list[list[float]]:
        torch = self._torch
        prompts = [list(p) for p in prompts]
        for p in prompts:
            self._check_length(len(p))
        if not self.batch or len(prompts) == 1:
            rows = []
            for p in prompts:
                _, logits = self._state(p, store=False) if self.reuse_cache else self._full_logits(p)
                rows.append(self._logprobs(logits, 1.0)[list(candidates)].tolist())
            return rows
        # Shared prefix once (cached), then all tails in one right-padded batch.
        common = 0
        shortest = min(len(p) for p in prompts)
        while common < shortest - 1 and all(p[common] == prompts[0][common] for p in prompts):
            common += 1
        layers, _ = self._state(prompts[0][:common], store=False) if common else (None, None)
        tails = [p[common:] for p in prompts]
        width = max(len(t) for t in tails)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.eos_token_ids))
        ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], dtype=torch.long, device=self.device)
        mask = torch.tensor(
            [[1] * (common + len(t)) + [0] * (width - len(t)) for t in tails], dtype=torch.long, device=self.device
        )
        last = torch.tensor([len(t) - 1 for t in tails], device=self.device)
        out = self._forward(ids, layers, attention_mask=mask, keep=last.unsqueeze(1))
        if self._keeps_logits:
            logits = out.logits[:, -1]  # (B, V): only each row's last real position was projected
        else:
            logits = out.logits[torch.arange(len(tails), device=self.device), last]
        logp = self._logprobs(logits, 1.0)[:, list(candidates)]
        return logp.tolist()

    def _full_logits(self, ids: Sequence[int]) -> tuple[None, Any]:
        out = self._forward(self._torch.tensor([list(ids)], device=self.device), None, keep=1)
        return None, out.logits[0, -1]

    def cache_prefix(self, prefix: Sequence[int]) -> None:
        if not self.reuse_cache or not prefix:
            return
        self._state(prefix)
        hit = self.cache.entries.get(tuple(prefix))
        if hit is not None:
            hit.pinned = True

    def release_prefix(self, prefix: Sequence[int]) -> None:
        entry = self.cache.entries.get(tuple(prefix))
        if entry is not None:
            entry.pinned = False
            self.cache._evict()


def load_model(
    name_or_path: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    gguf_file: str | None = None,
    reuse_cache: bool = True,
    batch: bool = True,
    cache_bytes: int | None = None,
    small_batch_matmul: bool = True,
    **model_kwargs: Any,
) -> TransformersLM:
    """Load any causal LM with a tokenizer (a local folder or a hub id already in the local cache).

    ``device``: "cpu", "cuda", "cuda:1", ... (default: cuda when available); ``dtype``: "float32",
    "bfloat16", "float16" or "auto".
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError("load_model needs a model folder or hub id as a non-empty string")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype: Any
    if dtype is None or dtype == "auto":
        torch_dtype = "auto" if dtype == "auto" else (torch.float32 if device == "cpu" else torch.bfloat16)
    else:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **extra)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype, **extra, **model_kwargs)
    model.to(device)
    return TransformersLM(
        model, tokenizer, name=name_or_path, reuse_cache=reuse_cache, batch=batch, cache_bytes=cache_bytes,
        small_batch_matmul=small_batch_matmul,
    )


_SHARED_DEFAULT: TransformersLM | None = None
_SHARED_LOCK = threading.Lock()


def shared_default_model() -> TransformersLM:
    """The embedded model, loaded once per process and shared by every caller (the adapters'
    ``from_default()`` constructors use it, so LangChain and LlamaIndex share one copy)."""
    global _SHARED_DEFAULT
    with _SHARED_LOCK:
        if _SHARED_DEFAULT is None:
            _SHARED_DEFAULT = load_default_model()
        return _SHARED_DEFAULT


def load_default_model(**kwargs: Any) -> TransformersLM:
    """The embedded SmolLM2-135M-Instruct, offline (materialised once into the user cache)."""
    from .models import DEFAULT_MODEL_NAME, materialize_default_model

    folder = materialize_default_model()
    kwargs.setdefault("device", "cpu")
    lm = load_model(str(folder), **kwargs)
    lm.name = DEFAULT_MODEL_NAME
    return lm
