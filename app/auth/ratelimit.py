"""Rate limits per key and route class (and per client IP for publishable keys): token buckets.

With RECO_REDIS_URL the buckets live in Redis, so every API process draws from the same ones: one Lua script
checks and takes from all of a request's buckets atomically, on Redis's clock. Its keys share one hash tag
(`{<key name>}`), so the script stays in one slot of a Redis Cluster. Without Redis, or while Redis cannot be
reached within RECO_RATE_LIMIT_TIMEOUT_S, the process's own buckets decide: the limiter's store being down
never fails a request (a short circuit breaker keeps a down server from costing its timeout every time).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
from redis.exceptions import RedisClusterException

from app.redis_url import CLUSTER_SCHEMES, parse_cluster_url
from app.settings import Rate

log = logging.getLogger(__name__)

# KEYS: the buckets; ARGV: per bucket its capacity and its refill period (ms). Returns {0, 0} when a token was
# taken from every bucket, else {index of the bucket that refused (1-based), ms until it has a token}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local blocked, wait = 0, 0
for i = 1, #KEYS do
  local cap = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'at')
  local tokens, at = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or at == nil then tokens, at = cap, now end
  tokens = math.min(cap, tokens + math.max(0, now - at) * cap / period)
  levels[i] = tokens
  if tokens < 1 then
    local w = math.ceil((1 - tokens) * period / cap)
    if w > wait then wait, blocked = w, i end
  end
end
if blocked > 0 then return {blocked, wait} end
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'tokens', tostring(levels[i] - 1), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * i]) + 1000)
end
return {0, 0}
"""

Bucket = tuple[
    str, Rate
]  # (name within the key's buckets, e.g. "recommend" or "recommend:ip:10.0.0.7", rate)


class MemoryLimiter:
    """This process's token buckets (thread-safe; at most `max_entries`, idle full ones dropped first)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at (monotonic))
        self._lock = threading.Lock()
        self._max = max_entries

    def take(self, ident: str, buckets: Sequence[Bucket], now: float | None = None) -> tuple[int, float]:
        """(-1, 0) when a token was taken from every bucket; else (index refused, seconds until a token)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            levels = []
            blocked, wait = -1, 0.0
            for i, (name, rate) in enumerate(buckets):
                tokens, at = self._buckets.get(f"{ident}|{name}", (float(rate.count), now))
                tokens = min(float(rate.count), tokens + max(0.0, now - at) * rate.count / rate.period)
                levels.append(tokens)
                if tokens < 1:
                    needed = (1 - tokens) * rate.period / rate.count
                    if needed > wait:
                        blocked, wait = i, needed
            if blocked >= 0:
                return blocked, wait
            if len(self._buckets) >= self._max:
                self._prune(now)
            for (name, _), tokens in zip(buckets, levels, strict=True):
                self._buckets[f"{ident}|{name}"] = (tokens - 1, now)
        return -1, 0.0

    def _prune(self, now: float) -> None:
        stale = [k for k, (_, at) in self._buckets.items() if now - at > 3600]
        for k in stale:
            del self._buckets[k]
        if len(self._buckets) >= self._max:  # still full: forget everything (everyone starts full again)
            self._buckets.clear()


class RateLimiter:
    """Shared buckets in Redis when `url` is set, this process's otherwise or while Redis is away."""

    def __init__(
        self, url: str | None, *, prefix: str = "", timeout: float = 0.1, retry_after: float = 1.0
    ) -> None:
        self.memory = MemoryLimiter()
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self._retry_after = retry_after
        self._down_until = 0.0
        self._client: Any = None  # redis.asyncio Redis or RedisCluster
        self._loop: asyncio.AbstractEventLoop | None = None
        self._script: Any = None
        self.shared = 0  # decisions taken by Redis
        self.fallbacks = 0  # decisions taken in-process although Redis is configured
        self.failures = 0  # Redis calls that failed (timeouts, refused connections, errors)
        self.last_error: str | None = None
        self.on_fallback: Callable[[], None] | None = None  # told of each in-process decision (a metric)

    @property
    def backend(self) -> str:
        return "redis" if self._url else "memory"

    def redis_key(self, ident: str, name: str) -> str:
        """The Redis key of one bucket: the key's name is the hash tag, so a request's buckets share a slot."""
        return f"{self._prefix}rl:{{{ident}}}:{name}"

    def _redis_script(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a new loop (as in tests) gets a new client
            assert self._url is not None
            options: dict[str, Any] = {
                "socket_timeout": self._timeout,
                "socket_connect_timeout": self._timeout,
            }
            if self._url.startswith(CLUSTER_SCHEMES):  # one script per request: its keys share a hash tag
                url, nodes = parse_cluster_url(self._url)
                self._client = acluster.RedisCluster.from_url(
                    url,
                    startup_nodes=[acluster.ClusterNode(h, p) for h, p in nodes[1:]],
                    require_full_coverage=False,
                    **options,
                )
            else:
                self._client = aredis.Redis.from_url(self._url, retry_on_timeout=False, **options)
            self._loop = loop
            self._script = self._client.register_script(_TAKE)
        return self._script

    async def take(self, ident: str, buckets: Sequence[Bucket]) -> tuple[int, float]:
        """(-1, 0) when admitted; else (index of the bucket that refused, seconds until it has a token)."""
        if self._url and time.monotonic() >= self._down_until:
            keys = [self.redis_key(ident, name) for name, _ in buckets]
            args: list[Any] = []
            for _, rate in buckets:
                args += [rate.count, int(rate.period * 1000)]
            try:
                script = self._redis_script()
                # bounded twice: the socket timeout, and this for a server that accepts but never answers
                async with asyncio.timeout(self._timeout * 2):
                    blocked, wait_ms = await script(keys=keys, args=args)
            except (redis.RedisError, RedisClusterException, OSError, TimeoutError) as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._down_until = time.monotonic() + self._retry_after
                self._client = None  # a fresh connection next time
                log.warning(
                    "rate limiter's Redis unavailable (%s): limiting in this process", self.last_error
                )
            else:
                self.shared += 1
                return int(blocked) - 1, int(wait_ms) / 1000.0
        if self._url:
            self.fallbacks += 1
            if self.on_fallback is not None:
                self.on_fallback()
        return self.memory.take(ident, buckets)

    async def aclose(self) -> None:
        if self._client is not None:
            with contextlib.suppress(redis.RedisError, OSError, RuntimeError):
                await self._client.aclose()
            self._client = None


def retry_after_seconds(wait: float) -> int:
    """Retry-After as an integer number of seconds, at least 1."""
    return max(1, math.ceil(wait))


def parse_proxies(entries: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def client_ip(
    peer: str | None,
    forwarded_for: str | None,
    trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the right-most address in
    X-Forwarded-For that is not a trusted proxy itself (what a client put first cannot be trusted)."""
    peer = peer or "unknown"
    if not trusted or not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop if _is_ip(hop) else peer
    return hops[0] if hops and _is_ip(hops[0]) else peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _trusted(address: str, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
