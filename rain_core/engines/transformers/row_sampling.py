"""Drawing candidate rows in process: one generator per row, top-k renormalised picks, and the
expansion of one prefix in rows that share their common prefixes (``RowSampling``, a part of
``TransformersLM``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...protocols import Continuation
from .kv_cache import CacheEntry, PrefixKVCache


def pick(
    torch: Any, logp: Any, top_k: int | None, generators: Sequence[Any], greedy_rows: Sequence[bool]
) -> list[tuple[int, float]]:
    """One (token, log-probability) per row of ``logp`` (B, V): argmax for greedy rows, a draw from
    the ``top_k`` most probable tokens (renormalised; ``None``: all) otherwise. The log-probability
    is the token's in that renormalised distribution. Each row draws from its own generator (greedy
    rows too, and discard it), so batching never changes what is drawn."""
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


def row_generators(torch: Any, seed: int, rows: range) -> list[Any]:
    """Row r's generator: seeded with ``seed + 7919 * r``, whatever batch the row runs in."""
    return [torch.Generator(device="cpu").manual_seed(int(seed) + 7919 * r) for r in rows]


class RowSampling:
    """``TransformersLM``'s sampler of one prefix's rows (its ``sample``): rows that drew the same
    tokens so far share one KV state, each row draws from its own generator. It reads the engine's
    parts declared here."""

    device: Any
    reuse_cache: bool
    keep_sampled_rows: int
    eos_token_ids: frozenset[int]
    cache: PrefixKVCache
    _torch: Any
    _state: Callable[..., tuple[Any, Any]]
    _logprobs: Callable[[Any, float], Any]
    _forward: Callable[..., Any]
    _layers_of: Callable[[Any], list[tuple[Any, Any]]]

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
            for row, (tok, lp) in enumerate(pick(self._torch, rows.cpu(), top_k, generators, greedy_rows)):
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
