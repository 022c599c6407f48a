"""The cache interface every implementation satisfies; failures never reach the caller."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class CacheStats:
    """Counters exported to /metrics."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, *, hit: bool | None = None, error: bool = False) -> None:
        """Record one lookup outcome or one error."""
        with self._lock:
            if error:
                self.errors += 1
            elif hit:
                self.hits += 1
            elif hit is not None:
                self.misses += 1

    @property
    def hit_ratio(self) -> float:
        """Hits over lookups (0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class Cache(Protocol):
    """Bytes in, bytes out. Every method swallows backend failures (logged and counted) and returns a miss."""

    name: str
    stats: CacheStats

    def get(self, key: str) -> bytes | None: ...
    def get_many(self, keys: list[str]) -> list[bytes | None]: ...
    def set(self, key: str, value: bytes, ttl_seconds: int) -> None: ...
    def delete(self, *keys: str) -> None: ...
    def incr_many(self, keys: list[str]) -> bool: ...
    def push_recent(self, key: str, values: list[bytes], max_len: int, ttl_seconds: int) -> bool: ...
    def recent(self, key: str, count: int) -> list[bytes] | None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...
