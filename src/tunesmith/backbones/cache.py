"""A process-wide cache of frozen-backbone features, shared by every fit in this process.

A pre-trained backbone that is not trained gives the same pooled vector for the same token
ids every time, so ``head_only`` fits and the frozen-embedding baseline need to run it over
a data set only once per process: a search of 60 ``head_only`` trials on the same texts
embeds them once, and cross-validated trials embed each fold once.

Entries are keyed by the backbone's ``fingerprint`` (which names the exact pre-trained
weights), its pooling, ``max_length`` and a SHA-256 of the token ids. The cache holds at
most :data:`DEFAULT_MAX_BYTES` (1 GiB) of tensors and drops the least recently used entry
first. Stored tensors are private copies and callers get copies back, so nothing a caller
does to a returned tensor reaches the cache.

Only callers that know the backbone still holds its pre-trained weights may use the cache:
the fingerprint says which weights a backbone *started* from, not whether they were trained
since. :meth:`tunesmith.estimator.FineTuner.fit` embeds with the backbone it has just
built, before any adapter, freezing or training touches it.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_MAX_BYTES = 1 << 30
"""Default bound of the process-wide cache: 1 GiB of feature tensors."""

FeatureKey = tuple[str, str, int, str]


@dataclass(frozen=True)
class CacheStats:
    """Counters of a :class:`FeatureCache`: ``hits``/``misses`` of :meth:`FeatureCache.get`,
    ``evictions`` (entries dropped to respect the bound), and what it holds now."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int


def _nbytes(tensor: torch.Tensor) -> int:
    return int(tensor.element_size() * tensor.numel())


def token_ids_digest(ids: Sequence[Sequence[int]]) -> str:
    """SHA-256 of the token ids: every id as int32, then every row's length (so rows cannot shift)."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    digest = hashlib.sha256()
    digest.update(flat.astype(np.int32).tobytes())
    digest.update(lengths.astype(np.int32).tobytes())
    return digest.hexdigest()


def feature_key(fingerprint: str, pooling: str, max_length: int, ids: Sequence[Sequence[int]]) -> FeatureKey:
    """The cache key of the pooled features of ``ids`` under a backbone's pre-trained weights."""
    return (fingerprint, pooling, int(max_length), token_ids_digest(ids))


class FeatureCache:
    """A bounded, thread-safe LRU map from :func:`feature_key` keys to feature tensors.

    ``max_bytes`` bounds the sum of the stored tensors' sizes; storing beyond it drops the
    least recently used entries, and a tensor larger than the whole bound is not stored.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[FeatureKey, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: FeatureKey) -> torch.Tensor | None:
        """A copy of the stored tensor (now the most recently used), or ``None``."""
        with self._lock:
            tensor = self._entries.get(key)
            if tensor is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        return tensor.clone()

    def put(self, key: FeatureKey, tensor: torch.Tensor) -> bool:
        """Store a private copy of ``tensor``; False when it alone exceeds the bound (not stored)."""
        size = _nbytes(tensor)
        if size > self.max_bytes:
            return False
        stored = tensor.detach().to("cpu", copy=True).contiguous()
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= _nbytes(old)
            self._entries[key] = stored
            self._bytes += size
            self._shrink()
        return True

    def _shrink(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= _nbytes(dropped)
            self.evictions += 1

    def resize(self, max_bytes: int) -> None:
        """Change the bound, dropping least recently used entries until the cache fits it."""
        with self._lock:
            self.max_bytes = int(max_bytes)
            self._shrink()

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = self.evictions = 0

    def stats(self) -> CacheStats:
        """The counters and current size."""
        with self._lock:
            return CacheStats(self.hits, self.misses, self.evictions, len(self._entries), self._bytes, self.max_bytes)


FEATURE_CACHE = FeatureCache()
"""The process-wide cache used by :class:`~tunesmith.estimator.FineTuner`."""


def feature_cache() -> FeatureCache:
    """The process-wide feature cache."""
    return FEATURE_CACHE


def clear_feature_cache() -> None:
    """Empty the process-wide feature cache and reset its counters (frees its memory)."""
    FEATURE_CACHE.clear()


def feature_cache_stats() -> CacheStats:
    """Hits, misses, evictions, entries and bytes of the process-wide feature cache."""
    return FEATURE_CACHE.stats()


def set_feature_cache_size(max_bytes: int) -> None:
    """Bound the process-wide feature cache to ``max_bytes`` (0 keeps nothing)."""
    FEATURE_CACHE.resize(max_bytes)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "FEATURE_CACHE",
    "CacheStats",
    "FeatureCache",
    "clear_feature_cache",
    "feature_cache",
    "feature_cache_stats",
    "feature_key",
    "set_feature_cache_size",
    "token_ids_digest",
]
