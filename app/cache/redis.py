"""Redis cache. A failure is logged, counted and answered as a miss; a short circuit breaker keeps a
down server from adding its timeout to every request; a missed write bumps the epoch once Redis is back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from app.cache import keys
from app.cache.base import CacheStats

log = logging.getLogger(__name__)
T = TypeVar("T")
_INCR_ALL = "for _, key in ipairs(KEYS) do redis.call('INCR', key) end return #KEYS"


class RedisCache:
    """A `Cache` over a Redis server."""

    name = "redis"

    def __init__(self, url: str, *, timeout: float = 0.25, retry_after: float = 1.0) -> None:
        self.stats = CacheStats()
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self._retry_after = retry_after
        self._down_until = 0.0
        self._missed_write = False
        self._lock = threading.Lock()
        # a pipeline of N INCRs costs ~4 us of client CPU per key; the script sends one command
        self._incr_script = self._client.register_script(_INCR_ALL)

    def _call(self, what: str, fn: Callable[[redis.Redis], T], default: T, *, write: bool = False) -> T:
        if time.monotonic() < self._down_until:
            self._missed_write |= write
            self.stats.count(error=True)
            return default
        try:
            if self._missed_write:
                self._recover()
            return fn(self._client)
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                self._down_until = time.monotonic() + self._retry_after
                self._missed_write |= write
            self.stats.count(error=True)
            log.warning("cache unavailable (%s): %s; answering without it", what, exc)
            return default

    def _recover(self) -> None:
        """After a write was lost, make every derived answer unreachable by bumping the epoch."""
        self._client.incr(keys.EPOCH)
        self._missed_write = False
        log.info("cache reachable again: epoch bumped after missed writes")

    def get(self, key: str) -> bytes | None:
        """The value, or None when absent or when Redis is unusable."""
        value = self._call("get", lambda c: c.get(key), None)
        if value is not None or time.monotonic() >= self._down_until:
            self.stats.count(hit=value is not None)
        return value  # type: ignore[return-value]

    def get_many(self, key_list: list[str]) -> list[bytes | None]:
        """MGET; all None when Redis is unusable."""
        return self._call("mget", lambda c: c.mget(key_list), [None] * len(key_list))  # type: ignore[arg-type,return-value]

    def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """SET with expiry."""
        self._call("set", lambda c: c.set(key, value, ex=ttl_seconds), None)

    def delete(self, *key_list: str) -> None:
        """DEL; a failure counts as a missed write."""
        if key_list:
            self._call("delete", lambda c: c.delete(*key_list), None, write=True)

    def incr_many(self, key_list: list[str]) -> bool:
        """INCR each key in one server-side script (one command, however many keys); False (and a missed
        write) when Redis is unusable."""
        if not key_list:
            return True

        def run(c: redis.Redis) -> bool:
            self._incr_script(keys=key_list, client=c)
            return True

        return self._call("incr", run, False, write=True)

    def push_recent(self, key: str, values: list[bytes], max_len: int, ttl_seconds: int) -> bool:
        """LPUSH (newest first), LTRIM to `max_len`, EXPIRE: one round trip."""

        def run(c: redis.Redis) -> bool:
            pipe = c.pipeline(transaction=True)
            pipe.lpush(key, *values)
            pipe.ltrim(key, 0, max_len - 1)
            pipe.expire(key, ttl_seconds)
            pipe.execute()
            return True

        return self._call("push_recent", run, False, write=True)

    def recent(self, key: str, count: int) -> list[bytes] | None:
        """LRANGE of the newest `count`, or None when the list is unknown or Redis unusable."""

        def run(c: redis.Redis) -> list[bytes] | None:
            pipe = c.pipeline(transaction=False)
            pipe.exists(key)
            pipe.lrange(key, 0, count - 1)
            exists, values = pipe.execute()
            return list(values) if exists else None

        return self._call("recent", run, None)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with `prefix` (SCAN, never KEYS)."""

        def run(c: redis.Redis) -> None:
            batch: list[bytes] = []
            pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix) + "*"
            for key in c.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    c.delete(*batch)
                    batch.clear()
            if batch:
                c.delete(*batch)

        self._call("delete_prefix", run, None, write=True)

    def ping(self) -> bool:
        """True when Redis answers now."""
        try:
            return bool(self._client.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
