"""Packed tree attention: many token sequences that continue one cached prefix, run together.

The requests of a round of searches (expansions, simulations, option-letter prompts) continue
the same committed context by different paths. ``PackedTree`` keeps them as ONE row of keys and
values: the shared base once (copied from the prefix cache), then every token of every path once
(paths are a trie: rows that drew the same tokens share them). A forward pass feeds new tokens as
query positions of that row; a 4D mask lets each one attend to the base, its own ancestors and
itself, and its position id is its depth in its own sequence, so each token sees exactly what it
would see alone. Nothing is copied per row: memory grows with the tokens of the trie, not with
rows times context. Long feeds run in chunks (``max_chunk`` tokens), which caps the transient
memory of a prefill (same logits).

This needs an attention implementation that takes an arbitrary 4D mask ("sdpa" or "eager");
``supports_packing`` says whether a model qualifies.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

ROOT = -1  # the parent of a trie node that continues the base directly
MAX_CHUNK = 256  # new tokens per forward pass
MAX_TREE_TOKENS = 768  # a packed tree that would grow past this many tokens beyond its base starts afresh
KEPT_TREES = 2  # packed trees an engine keeps (the search's and the evaluator's)
GROWTH = 128  # slots a packed row holds at least beyond what a forward pass needs when it grows


def supports_packing(model: Any) -> bool:
    """Whether ``model`` can run packed trees: its attention takes arbitrary 4D masks, and no layer
    has a sliding window that a packed row could exceed."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    types = getattr(config, "layer_types", None)
    if types is not None:
        return all(t == "full_attention" for t in types)
    return not getattr(config, "sliding_window", None) or not getattr(config, "use_sliding_window", True)


def _layer_class() -> Any:
    from transformers.cache_utils import DynamicLayer

    class PackedLayer(DynamicLayer):  # type: ignore[no-untyped-call]
        """One layer's keys and values of a packed row: a buffer that grows in place (doubling), so a
        forward pass writes only its new tokens."""

        def __init__(self, keys: Any, values: Any, used: int) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.buffers: list[Any] = [keys, values]
            self.used = used
            self.device = keys.device
            self.is_initialized = True

        def _reserve(self, n: int) -> None:
            capacity = self.buffers[0].shape[-2]
            if n <= capacity:
                return
            import torch

            size = max(n + GROWTH, 2 * capacity)  # doubling: a row that grows token by token copies O(n) in all
            for i, old in enumerate(self.buffers):
                new = torch.empty((*old.shape[:-2], size, old.shape[-1]), dtype=old.dtype, device=old.device)
                new[..., : self.used, :] = old[..., : self.used, :]
                self.buffers[i] = new

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            q = key_states.shape[-2]
            self._reserve(self.used + q)
            keys, values = self.buffers
            keys[..., self.used : self.used + q, :] = key_states
            values[..., self.used : self.used + q, :] = value_states
            self.used += q
            self.keys, self.values = keys[..., : self.used, :], values[..., : self.used, :]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return int(self.used)

        def get_mask_sizes(self, query_length: int, *args: Any) -> tuple[int, int]:
            return self.used + query_length, 0

    return PackedLayer


class PackedTree:
    """The trie of token sequences that continue ``base_ids`` (whose KV layers, each (1, H, T, D),
    are ``base``, or None for an empty base), packed into one row. ``run`` is the engine's forward
    pass: it takes ``(input_ids, cache, attention_mask, position_ids, keep)`` and returns the model
    output. The tree outlives a call: later requests that continue the same base find the tokens
    already run (the engine keeps one tree and starts a new one when it grows too big).

    Nodes are numbered in the order they are added; ``add(parent, token)`` returns a node (an
    existing one when ``parent`` already has that child); ``feed(nodes)`` runs the forward pass for
    the nodes not run yet and returns every node's next-token logits (float32). Logits are kept for
    the most recently fed nodes only (``logit_bytes``); a node whose logits were dropped is run once
    more as a twin that only the call asking for it sees.
    """

    def __init__(
        self,
        base: list[tuple[Any, Any]] | None,
        base_ids: Sequence[int],
        base_logits: Any,
        run: Any,
        *,
        device: Any,
        dtype: Any,
        capacity: int = 64,
        max_chunk: int = MAX_CHUNK,
        logit_bytes: int = 16 * 2**20,
    ) -> None:
        import torch
        from transformers.cache_utils import Cache

        self._torch = torch
        self.run = run
        self.device = device
        self.dtype = dtype
        self.base_ids = tuple(base_ids)
        self.base_logits = base_logits
        self.base_length = len(self.base_ids)
        self.max_chunk = max_chunk
        self.logit_bytes = logit_bytes
        layer = _layer_class()
        if base:
            layers = []
            for k, v in base:
                size = k.shape[-2] + capacity
                keys = torch.empty((*k.shape[:-2], size, k.shape[-1]), dtype=k.dtype, device=k.device)
                values = torch.empty((*v.shape[:-2], size, v.shape[-1]), dtype=v.dtype, device=v.device)
                keys[..., : k.shape[-2], :] = k
                values[..., : v.shape[-2], :] = v
                layers.append(layer(keys, values, k.shape[-2]))
            self.cache: Any = Cache(layers=layers)
        else:
            self.cache = _empty_cache(layer, torch)  # the layers are made by the first feed
        self.parent: list[int] = []
        self.token: list[int] = []
        self.depth: list[int] = []  # position id: tokens before this one in its own sequence
        self.slot: list[int] = []  # index in the packed row, -1 until fed
        self.children: list[dict[int, int]] = []
        self.logits: OrderedDict[int, Any] = OrderedDict()
        self._logit_total = 0
        self._ancestors: list[np.ndarray] = []
        self._root_children: dict[int, int] = {}
        self.used = self.base_length

    @property
    def nbytes(self) -> int:
        """Bytes held: the packed keys and values (base included) and the kept logits."""
        layers = self.cache.layers if self.cache is not None else []
        kv = sum(b.numel() * b.element_size() for layer in layers for b in getattr(layer, "buffers", []))
        return int(kv + self._logit_total)

    @property
    def tree_tokens(self) -> int:
        """Slots used beyond the base."""
        return self.used - self.base_length

    def continues(self, prefix: Sequence[int]) -> bool:
        return len(prefix) >= self.base_length and tuple(prefix[: self.base_length]) == self.base_ids

    # --- the trie ---------------------------------------------------------------------------------
    def add(self, parent: int, token: int) -> int:
        siblings = self._root_children if parent == ROOT else self.children[parent]
        node = siblings.get(token)
        if node is not None:
            return node
        node = len(self.token)
        siblings[token] = node
        self.parent.append(parent)
        self.token.append(int(token))
        self.depth.append(self.base_length if parent == ROOT else self.depth[parent] + 1)
        self.slot.append(-1)
        self.children.append({})
        self._ancestors.append(np.empty(0, dtype=np.int64))
        return node

    def add_path(self, parent: int, tokens: Sequence[int]) -> int:
        """The node after ``tokens`` continuing ``parent`` (added as needed)."""
        node = parent
        for t in tokens:
            node = self.add(node, t)
        return node

    # --- forward passes ---------------------------------------------------------------------------
    def feed(self, nodes: Sequence[int]) -> dict[int, Any]:
        """Run every node of ``nodes`` (and any ancestor) not run yet, in chunks of ``max_chunk``;
        return the next-token logits (V,) of each node (``ROOT``: the base's)."""
        order: list[tuple[int, bool]] = []  # (node, twin): a twin re-runs a node for its dropped logits
        seen: set[int] = set()
        got: dict[int, Any] = {ROOT: self.base_logits}
        for node in nodes:
            if node == ROOT or node in seen:
                continue
            if self.slot[node] >= 0:
                if node in self.logits:
                    got[node] = self.logits[node]
                    self.logits.move_to_end(node)
                else:
                    order.append((node, True))
                seen.add(node)
                continue
            chain = []
            n = node
            while n != ROOT and self.slot[n] < 0 and n not in seen:
                chain.append(n)
                seen.add(n)
                n = self.parent[n]
            order.extend((c, False) for c in reversed(chain))
        need = set(nodes)
        for start in range(0, len(order), self.max_chunk):
            got.update(self._forward(order[start : start + self.max_chunk], need))
        return {n: got[n] for n in nodes}

    def _forward(self, chunk: list[tuple[int, bool]], need: set[int]) -> dict[int, Any]:
        torch = self._torch
        start = self.used
        rows = []
        for i, (n, twin) in enumerate(chunk):
            parent = self.parent[n]
            own = np.array([start + i], dtype=np.int64)
            ancestors = own if parent == ROOT else np.concatenate([self._ancestors[parent], own])
            if not twin:
                self.slot[n] = start + i
                self._ancestors[n] = ancestors
            rows.append(ancestors)
        total = start + len(chunk)
        allowed = np.zeros((len(chunk), total), dtype=bool)
        allowed[:, : self.base_length] = True
        for i, ancestors in enumerate(rows):
            allowed[i, ancestors] = True
        mask = torch.zeros((1, 1, len(chunk), total), dtype=self.dtype, device=self.device)
        mask.masked_fill_(torch.from_numpy(~allowed).to(self.device)[None, None], torch.finfo(self.dtype).min)
        ids = torch.tensor([[self.token[n] for n, _ in chunk]], dtype=torch.long, device=self.device)
        positions = torch.tensor([[self.depth[n] for n, _ in chunk]], dtype=torch.long, device=self.device)
        # only the wanted positions are projected onto the vocabulary (``logits_to_keep`` indices)
        wanted_at = [i for i, (n, _) in enumerate(chunk) if n in need] or [len(chunk) - 1]
        keep = torch.tensor(wanted_at, dtype=torch.long, device=self.device)
        out = self.run(ids, self.cache, mask, positions, keep)
        self.used = total
        logits = out.logits[0]  # (len(wanted_at), V), or (len(chunk), V) for a model without logits_to_keep
        picked = wanted_at if logits.shape[0] == len(chunk) else list(range(len(wanted_at)))
        got = {}
        for i, r in zip(wanted_at, picked):
            n = chunk[i][0]
            if n in need:
                row = logits[r].float()
                got[n] = row
                self._remember(n, row)
        return got

    def _remember(self, node: int, logits: Any) -> None:
        if node in self.logits:
            self.logits.move_to_end(node)
            return
        self.logits[node] = logits
        self._logit_total += logits.numel() * logits.element_size()
        while self._logit_total > self.logit_bytes and len(self.logits) > 1:
            _, old = self.logits.popitem(last=False)
            self._logit_total -= old.numel() * old.element_size()


def _empty_cache(layer: Any, torch: Any) -> Any:
    """A cache whose layers are made by their first update (no base to size them by)."""
    from transformers.cache_utils import Cache

    class LazyPackedLayer(layer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(torch.empty(0), torch.empty(0), 0)
            self.is_initialized = False

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.buffers = [
                    torch.empty((*x.shape[:-2], 64, x.shape[-1]), dtype=x.dtype, device=x.device)
                    for x in (key_states, value_states)
                ]
                self.device = key_states.device
                self.is_initialized = True
            result: tuple[Any, Any] = super().update(key_states, value_states, *args, **kwargs)
            return result

    return Cache(layer_class_to_replicate=LazyPackedLayer)
