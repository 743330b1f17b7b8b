"""A prefix-aware KV cache: key/value states keyed by exact token-id prefixes, LRU, byte budget."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_CACHE_BYTES = 64 * 2**20


@dataclass
class CacheEntry:
    layers: list[tuple[Any, Any]]  # per layer (keys, values), each (1, H, T, D)
    logits: Any  # (V,) next-token logits after the prefix
    nbytes: int
    pinned: bool = False


@dataclass
class PrefixKVCache:
    """LRU store of KV states keyed by exact token-id prefixes, with a byte budget.

    A lookup returns the longest stored prefix of the query. Stored tensors are never mutated:
    extending a state concatenates into new tensors, so entries can be shared freely. Pinned entries
    (``pin``) are never evicted until unpinned.
    """

    max_bytes: int
    entries: OrderedDict[tuple[int, ...], CacheEntry] = field(default_factory=OrderedDict)
    by_length: dict[int, set[tuple[int, ...]]] = field(default_factory=dict)
    nbytes: int = 0
    shared_bytes: int = 0  # bytes of other cached state the budget also covers (the engine's packed trees)

    def longest_prefix(self, ids: Sequence[int]) -> tuple[tuple[int, ...], CacheEntry] | None:
        n = len(ids)
        for length in sorted((L for L in self.by_length if L <= n), reverse=True):
            key = tuple(ids[:length])
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
                return key, entry
        return None

    def put(self, key: tuple[int, ...], entry: CacheEntry) -> None:
        if key in self.entries:
            old = self.entries.pop(key)
            self.nbytes -= old.nbytes
            entry.pinned = entry.pinned or old.pinned
            self.by_length[len(key)].discard(key)
        self.entries[key] = entry
        self.by_length.setdefault(len(key), set()).add(key)
        self.nbytes += entry.nbytes
        self.evict()

    def pin(self, key: Sequence[int], pinned: bool = True) -> bool:
        """Pin (or unpin) the entry of exactly ``key``; False when there is none."""
        entry = self.entries.get(tuple(key))
        if entry is None:
            return False
        entry.pinned = pinned
        if not pinned:
            self.evict()
        return True

    def share(self, nbytes: int) -> None:
        """Count ``nbytes`` of other cached state against the budget (replacing the last count), and
        evict until the budget holds."""
        self.shared_bytes = int(nbytes)
        self.evict()

    def evict(self) -> None:
        """Drop least recently used unpinned entries until the budget holds."""
        for key in list(self.entries):
            if self.nbytes + self.shared_bytes <= self.max_bytes:
                break
            entry = self.entries[key]
            if entry.pinned:
                continue
            del self.entries[key]
            self.by_length[len(key)].discard(key)
            if not self.by_length[len(key)]:
                del self.by_length[len(key)]
            self.nbytes -= entry.nbytes

    def drop_unpinned(self) -> None:
        """Drop every entry that is not pinned (after running out of memory)."""
        for key in [k for k, e in self.entries.items() if not e.pinned]:
            entry = self.entries.pop(key)
            self.by_length[len(key)].discard(key)
            if not self.by_length[len(key)]:
                del self.by_length[len(key)]
            self.nbytes -= entry.nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.by_length.clear()
        self.nbytes = 0
