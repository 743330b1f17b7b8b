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

from collections.abc import Sequence
from typing import Any

import numpy as np

ROOT = -1  # the parent of a trie node that continues the base directly
MAX_CHUNK = 256  # new tokens per forward pass


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

            size = max(n, 2 * capacity)
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
    """The trie of token sequences that continue ``base`` (KV layers of the shared prefix, each
    (1, H, T, D), or None), packed into one row. ``run`` is the engine's forward pass: it takes
    ``(input_ids, cache, attention_mask, position_ids, keep)`` and returns the model output.

    Nodes are numbered in the order they are added; ``add(parent, token)`` returns a node (an
    existing one when ``parent`` already has that child), ``feed(nodes)`` runs the forward pass for
    nodes not yet run and returns their next-token logits (float32, on the output device).
    """

    def __init__(
        self,
        model: Any,
        base: list[tuple[Any, Any]] | None,
        base_length: int,
        run: Any,
        *,
        device: Any,
        dtype: Any,
        capacity: int = 64,
        max_chunk: int = MAX_CHUNK,
    ) -> None:
        import torch
        from transformers.cache_utils import Cache

        self._torch = torch
        self.run = run
        self.device = device
        self.dtype = dtype
        self.base_length = base_length
        self.max_chunk = max_chunk
        layer = _layer_class()
        layers = []
        if base:
            for k, v in base:
                size = k.shape[-2] + capacity
                keys = torch.empty((*k.shape[:-2], size, k.shape[-1]), dtype=k.dtype, device=k.device)
                values = torch.empty((*v.shape[:-2], size, v.shape[-1]), dtype=v.dtype, device=v.device)
                keys[..., : k.shape[-2], :] = k
                values[..., : v.shape[-2], :] = v
                layers.append(layer(keys, values, k.shape[-2]))
            self.cache: Any = Cache(layers=layers)
        else:
            self.cache = None  # the first feed builds the layers (there is no base to place them by)
        self._layer = layer
        self.parent: list[int] = []
        self.token: list[int] = []
        self.depth: list[int] = []  # position id: tokens before this one in its own sequence
        self.slot: list[int] = []  # index in the packed row, -1 until fed
        self.children: list[dict[int, int]] = []
        self.logits: dict[int, Any] = {}
        self._ancestors: list[np.ndarray] = []
        self._root_children: dict[int, int] = {}
        self.used = base_length if base else 0

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
    def feed(self, nodes: Sequence[int], want: Sequence[int] | None = None) -> dict[int, Any]:
        """Run every node of ``nodes`` (and any unfed ancestor) not run yet, in chunks; return the
        next-token logits (V,) of ``want`` (default ``nodes``)."""
        order: list[int] = []
        seen: set[int] = set()
        for node in nodes:
            chain = []
            n = node
            while n != ROOT and self.slot[n] < 0 and n not in seen:
                chain.append(n)
                seen.add(n)
                n = self.parent[n]
            order.extend(reversed(chain))
        wanted = list(nodes if want is None else want)
        need = set(wanted)
        for start in range(0, len(order), self.max_chunk):
            self._forward(order[start : start + self.max_chunk], need)
        return {n: self.logits[n] for n in wanted}

    def _forward(self, chunk: list[int], need: set[int]) -> None:
        torch = self._torch
        start = self.used
        for i, n in enumerate(chunk):
            self.slot[n] = start + i
            parent = self.parent[n]
            own = np.array([start + i], dtype=np.int64)
            self._ancestors[n] = own if parent == ROOT else np.concatenate([self._ancestors[parent], own])
        total = start + len(chunk)
        allowed = np.zeros((len(chunk), total), dtype=bool)
        if self.cache is not None:
            allowed[:, : self.base_length] = True
        for i, n in enumerate(chunk):
            allowed[i, self._ancestors[n]] = True
        mask = torch.zeros((1, 1, len(chunk), total), dtype=self.dtype, device=self.device)
        mask.masked_fill_(torch.from_numpy(~allowed).to(self.device)[None, None], torch.finfo(self.dtype).min)
        ids = torch.tensor([[self.token[n] for n in chunk]], dtype=torch.long, device=self.device)
        positions = torch.tensor([[self.depth[n] for n in chunk]], dtype=torch.long, device=self.device)
        # the logits of the chunk's last k positions, where k reaches back to the first wanted node
        wanted_at = [i for i, n in enumerate(chunk) if n in need]
        keep = len(chunk) - wanted_at[0] if wanted_at else 1
        if self.cache is None:
            self.cache = _empty_cache(self._layer, self._torch)
        out = self.run(ids, self.cache, mask, positions, keep)
        self.used = total
        logits = out.logits[0]  # (keep, V) or (len(chunk), V)
        offset = len(chunk) - logits.shape[0]
        for i in wanted_at:
            self.logits[chunk[i]] = logits[i - offset].float()


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
