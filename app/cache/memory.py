"""In-process LRU cache with TTLs: the embedded default (one process, no server)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from app.cache import keys as cache_keys
from app.cache.base import CacheStats, HistoryUpdate, UserAnswer, UserLookup


class MemoryCache:
    """Thread-safe LRU of bytes with per-entry expiry; counters are ints and lists Python lists."""

    name = "memory"

    def __init__(self, max_entries: int = 100_000) -> None:
        self.stats = CacheStats()
        self.fence = 0  # see RedisCache.fence; one process's cache never misses a write
        self.on_missed_write: Callable[[], None] | None = None
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

    def _counter(self, key: str) -> int:
        value = self._get_raw(key)
        return value if isinstance(value, int) else 0

    def _sync_fence(self) -> None:
        """Under the lock: an older copy of the fence bumps the epoch (as the Redis scripts do)."""
        if self.fence > self._counter(cache_keys.FENCE):
            self._put(cache_keys.EPOCH, self._counter(cache_keys.EPOCH) + 1, None)
            self._put(cache_keys.FENCE, self.fence, None)

    def epoch(self) -> int:
        """The epoch, after making the fence copy current."""
        with self._lock:
            self._sync_fence()
            return self._counter(cache_keys.EPOCH)

    def lookup_user(self, user_id: str, answer_key: str, history_count: int) -> UserLookup:
        """Generation, epoch, the answer if its stamp matches, else the latest-events list if held."""
        with self._lock:
            self._sync_fence()
            generation = self._counter(cache_keys.user_generation(user_id))
            epoch = self._counter(cache_keys.EPOCH)
            answer = self._get_raw(answer_key)
            stamp = cache_keys.stamp(generation, epoch)
            if isinstance(answer, bytes) and answer.startswith(stamp):
                self.stats.count(hit=True)
                return UserLookup(generation, epoch, answer[len(stamp) :])
            held = self._get_raw(cache_keys.user_history_prefix(user_id) + str(epoch))
            history = list(held[:history_count]) if isinstance(held, list) and history_count > 0 else None
        self.stats.count(hit=False)
        return UserLookup(generation, epoch, None, history)

    def store_user(self, user_id: str, looked: UserLookup, answer: UserAnswer) -> bool:
        """Store the stamped answer (and the list, plus its end marker) if the counters still hold."""
        with self._lock:
            if self._counter(cache_keys.user_generation(user_id)) != looked.generation:
                return False
            if self._counter(cache_keys.EPOCH) != looked.epoch:
                return False
            stamped = cache_keys.stamp(looked.generation, looked.epoch) + answer.body
            self._put(answer.key, stamped, answer.ttl_seconds)
            if answer.history is not None and answer.history_ttl_seconds > 0:
                list_key = cache_keys.user_history_prefix(user_id) + str(looked.epoch)
                self._put(list_key, [*answer.history, b""], answer.history_ttl_seconds)
        return True

    async def alookup_user(self, user_id: str, answer_key: str, history_count: int) -> UserLookup:
        """`lookup_user` (never blocks: a dict under a lock)."""
        return self.lookup_user(user_id, answer_key, history_count)

    async def astore_user(self, user_id: str, looked: UserLookup, answer: UserAnswer) -> bool:
        """`store_user` (never blocks)."""
        return self.store_user(user_id, looked, answer)

    def record_events(self, updates: dict[str, HistoryUpdate], max_len: int, ttl_seconds: int) -> bool:
        """Bump each user's generation; put new entries on held lists (see `Cache`)."""
        with self._lock:
            epoch = self._counter(cache_keys.EPOCH)
            for user_id, entries in updates.items():
                generation_key = cache_keys.user_generation(user_id)
                self._put(generation_key, self._counter(generation_key) + 1, None)
                list_key = cache_keys.user_history_prefix(user_id) + str(epoch)
                held = self._get_raw(list_key)
                if not isinstance(held, list):
                    continue
                merged = _merge_history(held, entries)
                if merged is None:
                    self._data.pop(list_key, None)
                else:
                    self._put(list_key, merged[:max_len], ttl_seconds)
        return True

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with `prefix`."""
        with self._lock:
            for key in [k for k in self._data if k.startswith(prefix)]:
                del self._data[key]

    def ping(self) -> bool:
        """Always usable."""
        return True

    async def aclose(self) -> None:
        """Nothing to close on the event loop."""

    def close(self) -> None:
        """Drop everything."""
        with self._lock:
            self._data.clear()


def _entry_ts(entry: bytes) -> int | None:
    return int(entry.split(b"\t", 1)[0]) if entry else None


def _merge_history(held: list[bytes], entries: HistoryUpdate) -> list[bytes] | None:
    """`held` (newest first) with `entries` (oldest first) on top; None when the list must be dropped."""
    if entries is None:
        return None
    merged = list(held)
    newest = _entry_ts(merged[0]) if merged else None
    for entry in entries:
        ts = _entry_ts(entry)
        if newest is not None and ts is not None and ts < newest:
            return None
        if entry not in merged:
            merged.insert(0, entry)
            newest = ts
    return merged
