"""Redis cache. A failure is logged, counted and answered as a miss; a short circuit breaker keeps a
down server from adding its timeout to every request; a missed write bumps the epoch once Redis is back."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.cache import keys
from app.cache.base import CacheStats, HistoryUpdate, UserAnswer, UserLookup

log = logging.getLogger(__name__)
T = TypeVar("T")
_INCR_ALL = "for _, key in ipairs(KEYS) do redis.call('INCR', key) end return #KEYS"

# The user scripts build the list key from the epoch they read (prefix .. epoch): standalone Redis only.
# Make the cache's copy of the fence current (KEYS[2]: epoch, KEYS[fence_key]: fence; ARGV[fence_arg]: the
# caller's): an older copy means a write was missed somewhere, so the epoch is bumped before anything is read.
_FENCE = """
local fence = tonumber(ARGV[%d])
if fence > 0 and tonumber(redis.call('GET', KEYS[%d]) or '0') < fence then
  redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[%d], fence)
end
"""
# KEYS: generation, epoch, answer, fence; ARGV: list prefix, history count, fence.
_LOOKUP_USER = (
    _FENCE % (3, 4, 4)
    + """
local gen = redis.call('GET', KEYS[1]) or '0'
local epoch = redis.call('GET', KEYS[2]) or '0'
local answer = redis.call('GET', KEYS[3])
if answer then
  local stamp = gen .. ':' .. epoch .. '|'
  if string.sub(answer, 1, #stamp) == stamp then return {gen, epoch, string.sub(answer, #stamp + 1)} end
end
local count = tonumber(ARGV[2])
local list = ARGV[1] .. epoch
if count > 0 and redis.call('EXISTS', list) == 1 then
  return {gen, epoch, false, redis.call('LRANGE', list, 0, count - 1)}
end
return {gen, epoch}
"""
)
# KEYS: (unused), epoch, fence; ARGV: fence. Returns the epoch.
_EPOCH = _FENCE % (1, 3, 3) + "return tonumber(redis.call('GET', KEYS[2]) or '0')"
# KEYS: generation, epoch, answer; ARGV: list prefix, generation read, epoch read, answer, answer ttl, list ttl,
# then (when the list was read from the store) its entries newest first and the end marker b"".
_STORE_USER = """
local gen = redis.call('GET', KEYS[1]) or '0'
local epoch = redis.call('GET', KEYS[2]) or '0'
if gen ~= ARGV[2] or epoch ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[3], gen .. ':' .. epoch .. '|' .. ARGV[4], 'EX', tonumber(ARGV[5]))
if #ARGV > 6 then
  local list = ARGV[1] .. epoch
  redis.call('DEL', list)
  redis.call('RPUSH', list, unpack(ARGV, 7))
  redis.call('EXPIRE', list, tonumber(ARGV[6]))
end
return 1
"""
# KEYS: each user's generation..., epoch; ARGV: max_len, ttl, then per user: list prefix, n (-1: drop), n entries.
_RECORD_EVENTS = """
local epoch = redis.call('GET', KEYS[#KEYS]) or '0'
local max_len = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local a = 3
for u = 1, #KEYS - 1 do
  redis.call('INCR', KEYS[u])
  local list = ARGV[a] .. epoch
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  if n < 0 then
    redis.call('DEL', list)
  else
    if redis.call('EXISTS', list) == 1 then
      local head = redis.call('LINDEX', list, 0)
      local newest = head and tonumber(string.match(head, '^(%d+)'))
      local keep = true
      for j = a, a + n - 1 do
        local ts = tonumber(string.match(ARGV[j], '^(%d+)'))
        if newest and ts < newest then keep = false break end
        if not redis.call('LPOS', list, ARGV[j]) then
          redis.call('LPUSH', list, ARGV[j])
          newest = ts
        end
      end
      if keep then
        redis.call('LTRIM', list, 0, max_len - 1)
        redis.call('EXPIRE', list, ttl)
      else
        redis.call('DEL', list)
      end
    end
    a = a + n
  end
end
return 1
"""


class RedisCache:
    """A `Cache` over a Redis server."""

    name = "redis"

    def __init__(
        self, url: str, *, timeout: float = 0.25, retry_after: float = 1.0, prefix: str = ""
    ) -> None:
        self.stats = CacheStats()
        # Put before every key this process sends (RECO_REDIS_PREFIX): services, or test runs, sharing one
        # Redis database never see each other's keys.
        self.prefix = prefix
        self.fence = (
            0  # the database fence this process knows (app/fence.py); lookups make the cache's current
        )
        self.on_missed_write: Callable[[], None] | None = None  # told when a write fails (may raise)
        # One immediate retry on a connection error, none on a timeout: a pooled connection that a blip broke is
        # replaced at once (else each broken one would open the breaker again), and a hung server costs one
        # timeout per call (redis-py's default is 10 retries with backoff).
        self._options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        self._url = url
        self._client = redis.Redis.from_url(
            url, retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)), **self._options
        )
        # The hot path's client for the event loop (made on first use there): while one request waits for
        # Redis, the loop serves others.
        self._aclient: aredis.Redis | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._ascripts: dict[str, Any] = {}
        self._retry_after = retry_after
        self._down_until = 0.0
        self._missed_write = False
        self._lock = threading.Lock()
        # a pipeline of N INCRs costs ~4 us of client CPU per key; the script sends one command
        self._incr_script = self._client.register_script(_INCR_ALL)
        self._lookup_script = self._client.register_script(_LOOKUP_USER)
        self._store_script = self._client.register_script(_STORE_USER)
        self._record_script = self._client.register_script(_RECORD_EVENTS)
        self._epoch_script = self._client.register_script(_EPOCH)

    def _usable(self, write: bool) -> bool:
        """False (counted; a write remembered as missed) while the circuit breaker is open."""
        if time.monotonic() < self._down_until:
            self._missed_write |= write
            self.stats.count(error=True)
            if write and self.on_missed_write is not None:
                self.on_missed_write()
            return False
        return True

    def _failed(self, what: str, exc: Exception, write: bool) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self._retry_after
            self._missed_write |= write
        self.stats.count(error=True)
        log.warning("cache unavailable (%s): %s; answering without it", what, exc)
        if write and self.on_missed_write is not None:
            self.on_missed_write()

    def _call(self, what: str, fn: Callable[[redis.Redis], T], default: T, *, write: bool = False) -> T:
        if not self._usable(write):
            return default
        try:
            if self._missed_write:
                self._recover()
            return fn(self._client)
        except (redis.RedisError, OSError) as exc:
            self._failed(what, exc, write)
            return default

    def _async_scripts(self) -> dict[str, Any]:
        """Scripts registered on the event loop's client (a new loop, as in tests, gets a new client)."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            retry = AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
            self._aclient = aredis.Redis.from_url(self._url, retry=retry, **self._options)
            self._aloop = loop
            self._ascripts = {
                "lookup": self._aclient.register_script(_LOOKUP_USER),
                "store": self._aclient.register_script(_STORE_USER),
            }
        return self._ascripts

    async def _acall(self, what: str, fn: Callable[[dict[str, Any]], Awaitable[T]], default: T) -> T:
        if not self._usable(False):
            return default
        try:
            if self._missed_write:
                self._recover()
            return await fn(self._async_scripts())
        except (redis.RedisError, OSError) as exc:
            self._failed(what, exc, False)
            return default

    def _recover(self) -> None:
        """After a write was lost, make every derived answer unreachable by bumping the epoch."""
        self._client.incr(self._k(keys.EPOCH))
        self._missed_write = False
        log.info("cache reachable again: epoch bumped after missed writes")

    def get(self, key: str) -> bytes | None:
        """The value, or None when absent or when Redis is unusable."""
        value = self._call("get", lambda c: c.get(self._k(key)), None)
        if value is not None or time.monotonic() >= self._down_until:
            self.stats.count(hit=value is not None)
        return value  # type: ignore[return-value]

    def get_many(self, key_list: list[str]) -> list[bytes | None]:
        """MGET; all None when Redis is unusable."""
        return self._call("mget", lambda c: c.mget([self._k(k) for k in key_list]), [None] * len(key_list))  # type: ignore[arg-type,return-value]

    def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """SET with expiry."""
        self._call("set", lambda c: c.set(self._k(key), value, ex=ttl_seconds), None)

    def delete(self, *key_list: str) -> None:
        """DEL; a failure counts as a missed write."""
        if key_list:
            self._call("delete", lambda c: c.delete(*map(self._k, key_list)), None, write=True)

    def incr_many(self, key_list: list[str]) -> bool:
        """INCR each key in one server-side script (one command, however many keys); False (and a missed
        write) when Redis is unusable."""
        if not key_list:
            return True

        def run(c: redis.Redis) -> bool:
            self._incr_script(keys=[self._k(k) for k in key_list], client=c)
            return True

        return self._call("incr", run, False, write=True)

    def _lookup_args(self, user_id: str, answer_key: str, history_count: int) -> dict[str, Any]:
        argv: list[bytes | str | int] = [
            self._k(keys.user_history_prefix(user_id)),
            history_count,
            self.fence,
        ]
        script_keys = [keys.user_generation(user_id), keys.EPOCH, answer_key, keys.FENCE]
        return {"keys": [self._k(k) for k in script_keys], "args": argv}

    def _lookup_result(self, reply: list[Any] | None) -> UserLookup:
        if reply is None:
            return UserLookup()
        answer = reply[2] if len(reply) > 2 else None
        self.stats.count(hit=answer is not None)
        return UserLookup(int(reply[0]), int(reply[1]), answer, list(reply[3]) if len(reply) > 3 else None)

    def lookup_user(self, user_id: str, answer_key: str, history_count: int) -> UserLookup:
        """One script call: generation, epoch, the answer if its stamp matches, else the held list."""
        call = self._lookup_args(user_id, answer_key, history_count)
        reply = self._call("lookup_user", lambda c: self._lookup_script(client=c, **call), None)
        return self._lookup_result(reply)

    async def alookup_user(self, user_id: str, answer_key: str, history_count: int) -> UserLookup:
        """`lookup_user` on the event loop, without blocking it."""
        call = self._lookup_args(user_id, answer_key, history_count)
        reply = await self._acall("lookup_user", lambda s: s["lookup"](**call), None)
        return self._lookup_result(reply)

    def _store_args(self, user_id: str, looked: UserLookup, answer: UserAnswer) -> dict[str, Any]:
        argv: list[bytes | str | int] = [
            self._k(keys.user_history_prefix(user_id)),
            looked.generation,
            looked.epoch,
        ]
        argv += [answer.body, answer.ttl_seconds, answer.history_ttl_seconds]
        if answer.history is not None and answer.history_ttl_seconds > 0:
            argv += [*answer.history, b""]
        script_keys = [keys.user_generation(user_id), keys.EPOCH, answer.key]
        return {"keys": [self._k(k) for k in script_keys], "args": argv}

    def store_user(self, user_id: str, looked: UserLookup, answer: UserAnswer) -> bool:
        """One script call: the stamped answer (and the list) if the counters still hold."""
        call = self._store_args(user_id, looked, answer)
        return bool(self._call("store_user", lambda c: self._store_script(client=c, **call), 0))

    async def astore_user(self, user_id: str, looked: UserLookup, answer: UserAnswer) -> bool:
        """`store_user` on the event loop, without blocking it."""
        call = self._store_args(user_id, looked, answer)
        return bool(await self._acall("store_user", lambda s: s["store"](**call), 0))

    def record_events(self, updates: dict[str, HistoryUpdate], max_len: int, ttl_seconds: int) -> bool:
        """One script call: bump each user's generation, put new entries on held lists (see `Cache`)."""
        if not updates:
            return True
        script_keys = [self._k(keys.user_generation(user_id)) for user_id in updates] + [self._k(keys.EPOCH)]
        argv: list[bytes | str | int] = [max_len, ttl_seconds]
        for user_id, entries in updates.items():
            argv += [self._k(keys.user_history_prefix(user_id)), -1 if entries is None else len(entries)]
            argv += entries or []

        def run(c: redis.Redis) -> bool:
            self._record_script(keys=script_keys, args=argv, client=c)
            return True

        return self._call("record_events", run, False, write=True)

    def epoch(self) -> int:
        """The epoch, after making the cache's fence current (0 when Redis is unusable)."""
        script_keys = [self._k(keys.EPOCH), self._k(keys.EPOCH), self._k(keys.FENCE)]
        args = [self.fence]
        return int(
            self._call("epoch", lambda c: self._epoch_script(keys=script_keys, args=args, client=c), 0)
        )

    def _k(self, key: str) -> str:
        return self.prefix + key

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with `prefix` (SCAN, never KEYS)."""

        def run(c: redis.Redis) -> None:
            batch: list[bytes] = []
            pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self._k(prefix)) + "*"
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

    async def aclose(self) -> None:
        """Close the event loop's client (call from that loop)."""
        if self._aclient is not None and self._aloop is asyncio.get_running_loop():
            await self._aclient.aclose()
        self._aclient = None

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
