"""In-process LRU cache with TTLs: the embedded default (one process, no server)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from app.cache.base import CacheStats


class MemoryCache:
    """Thread-safe LRU of bytes with per-entry expiry; lists are stored as Python lists."""

    name = "memory"

    def __init__(self, max_entries: int = 100_000) -> None:
        self.stats = CacheStats()
        self._max = max_entries
        self._data: OrderedDict[str, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def _get_raw(self, key: str) -> object | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires and expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def _put(self, key: str, value: object, ttl_seconds: int | None) -> None:
        expires = time.monotonic() + ttl_seconds if ttl_seconds else 0.0
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""
        with self._lock:
            value = self._get_raw(key)
        self.stats.count(hit=value is not None)
        return value if isinstance(value, bytes) else None

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Values for several keys (counters come back as their decimal bytes)."""
        with self._lock:
            values = [self._get_raw(k) for k in keys]
        return [
            v if isinstance(v, bytes) else (str(v).encode() if isinstance(v, int) else None) for v in values
        ]

    def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Store a value for `ttl_seconds`."""
        with self._lock:
            self._put(key, value, ttl_seconds)

    def delete(self, *keys: str) -> None:
        """Remove keys (absent ones are ignored)."""
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    def incr_many(self, keys: list[str]) -> bool:
        """Increment counters (created at 1)."""
        with self._lock:
            for key in keys:
                current = self._get_raw(key)
                self._put(key, (current if isinstance(current, int) else 0) + 1, None)
        return True

    def push_recent(self, key: str, values: list[bytes], max_len: int, ttl_seconds: int) -> bool:
        """Prepend values (newest first) and keep at most `max_len`."""
        with self._lock:
            current = self._get_raw(key)
            items = list(reversed(values)) + (current if isinstance(current, list) else [])
            self._put(key, items[:max_len], ttl_seconds)
        return True

    def recent(self, key: str, count: int) -> list[bytes] | None:
        """The first `count` entries of a list, or None when the list is unknown."""
        with self._lock:
            current = self._get_raw(key)
        return list(current[:count]) if isinstance(current, list) else None

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with `prefix`."""
        with self._lock:
            for key in [k for k in self._data if k.startswith(prefix)]:
                del self._data[key]

    def ping(self) -> bool:
        """Always usable."""
        return True

    def close(self) -> None:
        """Drop everything."""
        with self._lock:
            self._data.clear()
