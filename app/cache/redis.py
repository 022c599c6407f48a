"""Redis cache, on one server or on a Redis Cluster. A failure is logged, counted and answered as a miss; a short
circuit breaker (per cluster node) keeps a down server from adding its timeout to every request; a missed write
bumps the epoch once Redis is back.

Keys (app/cache/keys.py): every key of one user carries the hash tag `{u:len:id}`, the epoch and the fence copy
the tag `{g}`; so every script below touches keys of one hash slot, as Redis Cluster requires.

One server: each user script also reads (and syncs) the epoch itself, atomically with the user's keys.

A cluster cannot do that: the epoch lives in another slot, usually on another node. So there, in this order,
1. the epoch script runs in the epoch's slot: it syncs the fence copy (app/fence.py; an older copy bumps the
   epoch) and returns the epoch, which it first creates, when missing, at the server's time in ms (below);
2. the user script runs in the user's slot with that epoch as an argument: an answer is served only when its
   stamp is `generation:epoch` for the generation read there and the epoch just read; the latest-events list
   only when its companion key says it was filled under that same epoch.
Why that keeps the guarantees: a change acknowledged before a request began has bumped the generation or the
epoch (or, when that write failed, raised the fence, which step 1 of every later lookup turns into a bump), so
both reads of that request see it; counters only grow, so an answer stamped with an epoch read a moment ago
was valid a moment ago, which is all a single server's read gives too. `store_user` checks the generation in the
user's slot and cannot check the epoch there; it need not: it stamps the epoch it computed under, and a stale one
never matches a later lookup (the answer is merely wasted). `record_events` reads the epoch first and passes it;
a list filled under any other epoch is dropped rather than appended to (so a bump between the two steps cannot
leave a list of the new epoch without the new event).
The epoch must never go back: after a node that held it lost its data (a restart without persistence), answers
stamped with small epochs would become valid again on the other nodes. So in a cluster a missing epoch is created
at the server's time in ms, which is past every value it had (+1 per bump), and while the epoch's node is marked
down no other key is read or written either (answers keyed by the epoch would be read under epoch 0).
Writes to several users (`record_events`, `incr_many`) run one script per slot: each user is atomic, the batch
is not (it never was for readers: each user's keys are read alone).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.cluster as rcluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException
from redis.retry import Retry

from app.cache import keys
from app.cache.base import CacheStats, HistoryUpdate, UserAnswer, UserLookup
from app.redis_url import is_cluster_url, parse_cluster_url

log = logging.getLogger(__name__)
T = TypeVar("T")
_ERRORS = (redis.RedisError, RedisClusterException, OSError)
_ANY = "*"  # the breaker's key for "the whole cache" (one server, or a cluster whose map is unknown)


class _Script:
    """A Lua script called by EVALSHA, loaded by EVAL on the node that lacks it (never SCRIPT LOAD on every
    node: one dead master would make that fail for the live ones)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: Any, script_keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(script_keys), *script_keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(script_keys), *script_keys, *args)

    async def run_async(self, client: Any, script_keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(script_keys), *script_keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(script_keys), *script_keys, *args)


_INCR_ALL = "for _, key in ipairs(KEYS) do redis.call('INCR', key) end return #KEYS"

# Make the cache's copy of the fence current (E: the epoch key, F: the fence key, A: the caller's fence): an
# older copy means a write was missed somewhere, so the epoch is bumped before anything is read.
_FENCE = """
local fence = tonumber({A})
if fence > 0 and tonumber(redis.call('GET', {F}) or '0') < fence then
  redis.call('INCR', {E})
  redis.call('SET', {F}, fence)
end
"""
# Cluster only: a missing epoch starts at the server's time in ms (see the module docstring).
_EPOCH_INIT = """
if redis.call('EXISTS', {E}) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', {E}, t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)))
end
"""


def _fence(epoch: str, fence: str, arg: str, cluster: bool) -> str:
    init = _EPOCH_INIT.format(E=epoch) if cluster else ""
    return init + _FENCE.format(E=epoch, F=fence, A=arg)


# KEYS: the epoch, the fence; ARGV: the fence. Returns the epoch.
def _epoch_script(cluster: bool) -> str:
    return _fence("KEYS[1]", "KEYS[2]", "ARGV[1]", cluster) + "return redis.call('GET', KEYS[1]) or '0'"


# KEYS: the epoch. Bumps it (created first in a cluster).
def _bump_script(cluster: bool) -> str:
    return (_EPOCH_INIT.format(E="KEYS[1]") if cluster else "") + "return redis.call('INCR', KEYS[1])"


# KEYS: generation, answer, list, list's epoch[, epoch, fence]; ARGV: history count, fence (one server) or the
# epoch read by the epoch script (cluster). Returns {gen, epoch[, answer | false, list entries]}.
def _lookup_script(cluster: bool) -> str:
    if cluster:
        head = "local epoch = ARGV[2]\n"
    else:
        head = (
            _fence("KEYS[5]", "KEYS[6]", "ARGV[2]", False)
            + "local epoch = redis.call('GET', KEYS[5]) or '0'\n"
        )
    return (
        head
        + """
local gen = redis.call('GET', KEYS[1]) or '0'
local answer = redis.call('GET', KEYS[2])
if answer then
  local stamp = gen .. ':' .. epoch .. '|'
  if string.sub(answer, 1, #stamp) == stamp then return {gen, epoch, string.sub(answer, #stamp + 1)} end
end
local count = tonumber(ARGV[1])
if count > 0 and redis.call('GET', KEYS[4]) == epoch and redis.call('EXISTS', KEYS[3]) == 1 then
  return {gen, epoch, false, redis.call('LRANGE', KEYS[3], 0, count - 1)}
end
return {gen, epoch}
"""
    )


# KEYS: generation, answer, list, list's epoch[, epoch]; ARGV: generation read, epoch read, answer, answer ttl,
# list ttl, then (when the list was read from the store) its entries newest first and the end marker b"".
# A cluster checks the generation only (see the module docstring).
def _store_script(cluster: bool) -> str:
    head = "" if cluster else "if (redis.call('GET', KEYS[5]) or '0') ~= ARGV[2] then return 0 end\n"
    return (
        head
        + """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. ARGV[2] .. '|' .. ARGV[3], 'EX', tonumber(ARGV[4]))
if #ARGV > 5 then
  redis.call('DEL', KEYS[3])
  redis.call('RPUSH', KEYS[3], unpack(ARGV, 6))
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
  redis.call('SET', KEYS[4], ARGV[2], 'EX', tonumber(ARGV[5]))
end
return 1
"""
    )


# KEYS: per user its generation, list and list's epoch[, then the epoch]; ARGV: max_len, ttl, the epoch read
# first (cluster; unused on one server), then per user: n (-1: drop the list), n entries.
def _record_script(cluster: bool) -> str:
    if cluster:
        head = "local epoch = ARGV[3]\nlocal users = #KEYS / 3\n"
    else:
        head = "local epoch = redis.call('GET', KEYS[#KEYS]) or '0'\nlocal users = (#KEYS - 1) / 3\n"
    return (
        head
        + """
local max_len = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local a = 4
for u = 0, users - 1 do
  local list, list_epoch = KEYS[3 * u + 2], KEYS[3 * u + 3]
  redis.call('INCR', KEYS[3 * u + 1])
  local n = tonumber(ARGV[a])
  a = a + 1
  if n < 0 then
    redis.call('DEL', list, list_epoch)
  elseif redis.call('GET', list_epoch) == epoch and redis.call('EXISTS', list) == 1 then
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
      redis.call('EXPIRE', list_epoch, ttl)
    else
      redis.call('DEL', list, list_epoch)
    end
  else
    redis.call('DEL', list, list_epoch)  -- filled under another epoch (or none): never appended to
  end
  if n > 0 then a = a + n end
end
return 1
"""
    )


def _slot(key: str) -> int:
    """The Redis Cluster hash slot of a key (its hash tag's, when it has one)."""
    return int(key_slot(key.encode()))


def _user_keys(user_id: str) -> list[str]:
    """A user's generation, then their list and its epoch (answers come between, in the scripts' KEYS)."""
    history = keys.user_history_prefix(user_id)
    return [keys.user_generation(user_id), history + "l", history + "e"]


class RedisCache:
    """A `Cache` over a Redis server or a Redis Cluster (`redis+cluster://host:port[,host:port...]`)."""

    name = "redis"

    def __init__(
        self, url: str, *, timeout: float = 0.25, retry_after: float = 1.0, prefix: str = ""
    ) -> None:
        self.stats = CacheStats()
        self.cluster = is_cluster_url(url)
        if self.cluster and ("{" in prefix or "}" in prefix):
            raise ValueError(
                "RECO_REDIS_PREFIX may not hold { or } with a Redis Cluster (they are hash tags)"
            )
        # Put before every key this process sends (RECO_REDIS_PREFIX): services, or test runs, sharing one
        # Redis database never see each other's keys.
        self.prefix = prefix
        self.fence = (
            0  # the database fence this process knows (app/fence.py); lookups make the cache's current
        )
        self.on_missed_write: Callable[[], None] | None = None  # told when a write fails (may raise)
        # One immediate retry on a connection error, none on a timeout: a pooled connection that a blip broke is
        # replaced at once (else each broken one would open the breaker again), and a hung server costs one
        # timeout per call (redis-py's default is 10 retries with backoff). A cluster client counts its retries
        # alone (timeouts too): one, after it re-read the slot map.
        self._options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        self._url = url
        self._cluster_url, self._nodes = parse_cluster_url(url) if self.cluster else (url, [])
        self._made: Any = None
        if not self.cluster:  # a cluster client reads the slot map when made: on first use, in `_client`
            self._made = redis.Redis.from_url(
                url, retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)), **self._options
            )
        # The hot path's client for the event loop (made on first use there): while one request waits for
        # Redis, the loop serves others.
        self._aclient: Any = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._retry_after = retry_after
        self._down_until: dict[str, float] = {}  # breaker: node name (or _ANY) -> monotonic time
        self._missed_write = False
        self._lock = threading.Lock()
        cluster = self.cluster
        # a pipeline of N INCRs costs ~4 us of client CPU per key; the script sends one command
        self._incr_script = _Script(_INCR_ALL)
        self._bump_script = _Script(_bump_script(cluster))
        self._epoch_script = _Script(_epoch_script(cluster))
        self._lookup_script = _Script(_lookup_script(cluster))
        self._store_script = _Script(_store_script(cluster))
        self._record_script = _Script(_record_script(cluster))

    # ---- clients and the breaker ----------------------------------------------------------------------------

    @property
    def _client(self) -> Any:
        """The blocking client (a cluster's is made, reading the slot map, on first use)."""
        if self._made is None:
            with self._lock:
                if self._made is None:
                    self._made = rcluster.RedisCluster(
                        url=self._cluster_url,
                        startup_nodes=[rcluster.ClusterNode(h, p) for h, p in self._nodes[1:]],
                        retry=Retry(NoBackoff(), 1),
                        require_full_coverage=False,
                        **self._options,
                    )
        return self._made

    def _async_client(self) -> Any:
        """The event loop's client (a new loop, as in tests, gets a new client)."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            if self.cluster:
                self._aclient = acluster.RedisCluster.from_url(
                    self._cluster_url,
                    startup_nodes=[acluster.ClusterNode(h, p) for h, p in self._nodes[1:]],
                    retry=AsyncRetry(NoBackoff(), 1),
                    require_full_coverage=False,
                    **self._options,
                )
            else:
                retry = AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
                self._aclient = aredis.Redis.from_url(self._url, retry=retry, **self._options)
            self._aloop = loop
        return self._aclient

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _node(self, key: str) -> str:
        """The breaker's key for the node serving `key` (already prefixed)."""
        if not self.cluster:
            return _ANY
        try:
            return str(self._client.get_node_from_key(key).name)
        except _ERRORS:
            return _ANY

    def _route(self, key: str | None) -> list[str]:
        """The breaker keys a call on `key` depends on: in a cluster, the epoch's node too (module docstring)."""
        if not self.cluster:
            return [_ANY]
        epoch_node = self._node(self._k(keys.EPOCH))
        return [epoch_node] if key is None else list(dict.fromkeys([epoch_node, self._node(key)]))

    def _usable(self, write: bool, nodes: list[str]) -> bool:
        """False (counted; a write remembered as missed) while the circuit breaker is open for a node."""
        now = time.monotonic()
        if any(now < self._down_until.get(n, 0.0) for n in (*nodes, _ANY)):
            self._missed_write |= write
            self.stats.count(error=True)
            if write and self.on_missed_write is not None:
                self.on_missed_write()
            return False
        return True

    def _failed(self, what: str, exc: Exception, write: bool, nodes: list[str]) -> None:
        with self._lock:
            for node in nodes:
                self._down_until[node] = time.monotonic() + self._retry_after
            self._missed_write |= write
        self.stats.count(error=True)
        log.warning("cache unavailable (%s): %s; answering without it", what, exc)
        if write and self.on_missed_write is not None:
            self.on_missed_write()

    def _down(self, nodes: list[str]) -> bool:
        now = time.monotonic()
        return any(now < self._down_until.get(n, 0.0) for n in (*nodes, _ANY))

    def _call(
        self, what: str, fn: Callable[[Any], T], default: T, *, write: bool = False, key: str | None = None
    ) -> T:
        """`fn(client)` on the node of `key` (prefixed; None: the epoch's), or `default` when that fails."""
        if not self._usable(write, []):  # the whole cache is out (checked first: no client is made then)
            return default
        try:
            nodes = self._route(key)
        except _ERRORS as exc:  # a cluster's client could not be made: no node answers
            self._failed(what, exc, write, [_ANY])
            return default
        if not self._usable(write, nodes):
            return default
        if self._missed_write and not self._recovered(what, write, nodes):
            return default
        try:
            return fn(self._client)
        except _ERRORS as exc:
            self._failed(what, exc, write, nodes[-1:])  # the key's node (the epoch's was just read or bumped)
            return default

    async def _acall(self, what: str, fn: Callable[[Any], Awaitable[T]], default: T, *, key: str) -> T:
        if not self._usable(False, []):
            return default
        try:
            nodes = self._route(key)
        except _ERRORS as exc:
            self._failed(what, exc, False, [_ANY])
            return default
        if not self._usable(False, nodes):
            return default
        if self._missed_write and not self._recovered(what, False, nodes):
            return default
        try:
            return await fn(self._async_client())
        except _ERRORS as exc:
            self._failed(what, exc, False, nodes[-1:])
            return default

    def _recovered(self, what: str, write: bool, nodes: list[str]) -> bool:
        """After a write was lost, make every derived answer unreachable by bumping the epoch."""
        try:
            self._bump_script(self._client, [self._k(keys.EPOCH)], [])
        except _ERRORS as exc:
            self._failed(what, exc, write, nodes[:1])
            return False
        self._missed_write = False
        log.info("cache reachable again: epoch bumped after missed writes")
        return True

    def _by_node(self, key_list: Iterable[str]) -> dict[str, list[str]]:
        """Prefixed keys grouped by the node serving them (one group on one server)."""
        groups: dict[str, list[str]] = {}
        for key in key_list:
            groups.setdefault(self._node(key), []).append(key)
        return groups

    def _by_slot(self, key_list: Iterable[str]) -> dict[int, list[str]]:
        """Prefixed keys grouped by hash slot (one group on one server)."""
        groups: dict[int, list[str]] = {}
        for key in key_list:
            groups.setdefault(_slot(key) if self.cluster else 0, []).append(key)
        return groups

    # ---- plain keys -----------------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The value, or None when absent or when Redis is unusable."""
        full = self._k(key)
        value = self._call("get", lambda c: c.get(full), None, key=full)
        if value is not None or not self._down(self._route_quiet(full)):
            self.stats.count(hit=value is not None)
        return value

    def _route_quiet(self, key: str) -> list[str]:
        try:
            return self._route(key)
        except _ERRORS:
            return [_ANY]

    def get_many(self, key_list: list[str]) -> list[bytes | None]:
        """MGET (per node in a cluster); None for each key whose node is unusable."""
        found: dict[str, bytes | None] = {}
        groups = self._by_node(map(self._k, key_list)) if self.cluster else {_ANY: [*map(self._k, key_list)]}
        for group in groups.values():

            def mget(c: Any, g: list[str] = group) -> list[bytes | None]:
                return list(c.mget_nonatomic(g) if self.cluster else c.mget(g))

            missing: list[bytes | None] = [None] * len(group)
            got = self._call("mget", mget, missing, key=group[0] if self.cluster else None)
            found.update(zip(group, got, strict=True))
        return [found[self._k(k)] for k in key_list]

    def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """SET with expiry."""
        full = self._k(key)
        self._call("set", lambda c: c.set(full, value, ex=ttl_seconds), None, key=full)

    def delete(self, *key_list: str) -> None:
        """DEL (per node in a cluster); a failure counts as a missed write."""
        for group in self._by_node(map(self._k, key_list)).values() if key_list else ():

            def delete(c: Any, g: list[str] = group) -> None:
                c.delete(*g)

            self._call("delete", delete, None, write=True, key=group[0])

    def incr_many(self, key_list: list[str]) -> bool:
        """INCR each key in one server-side script per slot (one command, however many keys); False (and a
        missed write) when Redis is unusable. In a cluster the epoch is bumped by its own script (created at
        the server's time first, see the module docstring)."""
        epoch = self._k(keys.EPOCH)
        calls: list[tuple[list[str], list[Any]]] = []
        bump = False
        for slot_keys in self._by_slot(map(self._k, key_list)).values() if key_list else ():
            counters = [k for k in slot_keys if not (self.cluster and k == epoch)]
            bump |= len(counters) < len(slot_keys)
            if counters:
                calls.append((counters, []))
        done = self._run_scripts("bump", self._bump_script, [([epoch], [])]) if bump else True
        return self._run_scripts("incr", self._incr_script, calls) and done

    # ---- the epoch and the user scripts ---------------------------------------------------------------------

    def epoch(self) -> int:
        """The epoch, after making the cache's fence current (0 when Redis is unusable)."""
        script_keys = [self._k(keys.EPOCH), self._k(keys.FENCE)]
        args = [self.fence]
        return int(
            self._call("epoch", lambda c: self._epoch_script(c, script_keys, args), 0, key=script_keys[0])
        )

    async def _aepoch(self) -> int | None:
        script_keys = [self._k(keys.EPOCH), self._k(keys.FENCE)]
        args = [self.fence]
        reply = await self._acall(
            "epoch", lambda c: self._epoch_script.run_async(c, script_keys, args), None, key=script_keys[0]
        )
        return None if reply is None else int(reply)

    def _lookup_args(
        self, user_id: str, answer_key: str, history_count: int, epoch: int
    ) -> tuple[list[str], list[Any]]:
        gen, history, history_epoch = _user_keys(user_id)
        script_keys = [gen, answer_key, history, history_epoch]
        if self.cluster:
            return [self._k(k) for k in script_keys], [history_count, epoch]
        return [self._k(k) for k in (*script_keys, keys.EPOCH, keys.FENCE)], [history_count, self.fence]

    def _lookup_result(self, reply: list[Any] | None) -> UserLookup:
        if reply is None:
            return UserLookup()
        answer = reply[2] if len(reply) > 2 else None
        self.stats.count(hit=answer is not None)
        return UserLookup(int(reply[0]), int(reply[1]), answer, list(reply[3]) if len(reply) > 3 else None)

    def lookup_user(self, user_id: str, answer_key: str, history_count: int) -> UserLookup:
        """Generation, epoch, the answer if its stamp matches, else the held list: one script call (two in a
        cluster: the epoch's, then the user's)."""
        epoch = 0
        if self.cluster:
            known = self._epoch_or_none()
            if known is None:
                return UserLookup()
            epoch = known
        script_keys, args = self._lookup_args(user_id, answer_key, history_count, epoch)
        reply = self._call(
            "lookup_user", lambda c: self._lookup_script(c, script_keys, args), None, key=script_keys[0]
        )
        return self._lookup_result(reply)

    def _epoch_or_none(self) -> int | None:
        script_keys = [self._k(keys.EPOCH), self._k(keys.FENCE)]
        reply = self._call(
            "epoch", lambda c: self._epoch_script(c, script_keys, [self.fence]), None, key=script_keys[0]
        )
        return None if reply is None else int(reply)

    async def alookup_user(self, user_id: str, answer_key: str, history_count: int) -> UserLookup:
        """`lookup_user` on the event loop, without blocking it."""
        epoch = 0
        if self.cluster:
            known = await self._aepoch()
            if known is None:
                return UserLookup()
            epoch = known
        script_keys, args = self._lookup_args(user_id, answer_key, history_count, epoch)
        reply = await self._acall(
            "lookup_user",
            lambda c: self._lookup_script.run_async(c, script_keys, args),
            None,
            key=script_keys[0],
        )
        return self._lookup_result(reply)

    def _store_args(
        self, user_id: str, looked: UserLookup, answer: UserAnswer
    ) -> tuple[list[str], list[Any]]:
        gen, history, history_epoch = _user_keys(user_id)
        script_keys = [gen, answer.key, history, history_epoch] + ([] if self.cluster else [keys.EPOCH])
        args: list[bytes | str | int] = [looked.generation, looked.epoch, answer.body]
        args += [answer.ttl_seconds, answer.history_ttl_seconds]
        if answer.history is not None and answer.history_ttl_seconds > 0:
            args += [*answer.history, b""]
        return [self._k(k) for k in script_keys], args

    def store_user(self, user_id: str, looked: UserLookup, answer: UserAnswer) -> bool:
        """One script call: the stamped answer (and the list) if the counters still hold."""
        script_keys, args = self._store_args(user_id, looked, answer)
        return bool(
            self._call(
                "store_user", lambda c: self._store_script(c, script_keys, args), 0, key=script_keys[0]
            )
        )

    async def astore_user(self, user_id: str, looked: UserLookup, answer: UserAnswer) -> bool:
        """`store_user` on the event loop, without blocking it."""
        script_keys, args = self._store_args(user_id, looked, answer)
        reply = await self._acall(
            "store_user", lambda c: self._store_script.run_async(c, script_keys, args), 0, key=script_keys[0]
        )
        return bool(reply)

    def record_events(self, updates: dict[str, HistoryUpdate], max_len: int, ttl_seconds: int) -> bool:
        """Bump each user's generation, put new entries on held lists (see `Cache`): one script call (in a
        cluster: the epoch read, then one script per slot)."""
        if not updates:
            return True
        epoch = 0
        if self.cluster:
            known = self._call(
                "record_events",
                lambda c: c.get(self._k(keys.EPOCH)),
                None,
                write=True,
                key=self._k(keys.EPOCH),
            )
            if known is None and self._down(self._route_quiet(self._k(keys.EPOCH))):
                return False  # counted as a missed write: the fence makes up for it
            # a missing epoch: no list can be held under it (a lookup creates it first), so -1 drops every list
            epoch = int(known) if known is not None else -1
        groups: dict[int, list[str]] = {}
        for user_id in updates:
            slot = _slot(self._k(keys.user_generation(user_id))) if self.cluster else 0
            groups.setdefault(slot, []).append(user_id)
        calls: list[tuple[list[str], list[Any]]] = []
        for users in groups.values():
            script_keys: list[str] = []
            args: list[bytes | str | int] = [max_len, ttl_seconds, epoch]
            for user_id in users:
                entries = updates[user_id]
                script_keys += [self._k(k) for k in _user_keys(user_id)]
                args += [-1 if entries is None else len(entries), *(entries or [])]
            if not self.cluster:
                script_keys.append(self._k(keys.EPOCH))
            calls.append((script_keys, args))
        return self._run_scripts("record_events", self._record_script, calls)

    def _run_scripts(self, what: str, script: _Script, calls: list[tuple[list[str], list[Any]]]) -> bool:
        """Write scripts, each on one slot: one round trip per node (a pipeline when a node has several); False
        (and a missed write) when a node is unusable; the other nodes' scripts still run."""
        by_node: dict[str, list[tuple[list[str], list[Any]]]] = {}
        for call in calls:
            by_node.setdefault(self._node(call[0][0]), []).append(call)
        done = True
        for node_calls in by_node.values():

            def run(c: Any, todo: list[tuple[list[str], list[Any]]] = node_calls) -> bool:
                if len(todo) == 1:
                    script(c, *todo[0])
                    return True
                pipe = c.pipeline(transaction=False)
                for script_keys, args in todo:
                    # (ClusterPipeline refuses its evalsha method, not the command: routed by the keys)
                    pipe.execute_command("EVALSHA", script.sha, len(script_keys), *script_keys, *args)
                for (script_keys, args), result in zip(todo, pipe.execute(raise_on_error=False), strict=True):
                    if isinstance(result, NoScriptError):
                        script(c, script_keys, args)  # EVAL: loads it on that node
                    elif isinstance(result, Exception):
                        raise result
                return True

            done &= self._call(what, run, False, write=True, key=node_calls[0][0][0])
        return done

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with `prefix` (SCAN, never KEYS): in a cluster on the node of the prefix's
        hash tag when it has one (a user's keys), else on every master."""
        full = self._k(prefix)
        pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in full) + "*"

        def run(c: Any, node: Any = None) -> None:
            batch: list[bytes] = []
            scan = c.scan_iter(match=pattern, count=1000, **({"target_nodes": node} if node else {}))
            for found in scan:
                batch.append(found)
                if len(batch) >= 500:
                    c.delete(*batch)
                    batch.clear()
            if batch:
                c.delete(*batch)

        if not self.cluster:
            self._call("delete_prefix", run, None, write=True)
            return
        opened, closed = full.find("{"), full.find("}", full.find("{") + 1)
        if 0 <= opened < closed - 1:
            tagged = full[: closed + 1]
            self._call(
                "delete_prefix",
                lambda c: run(c, c.get_node_from_key(tagged)),
                None,
                write=True,
                key=tagged,
            )
            return
        try:
            primaries = list(self._client.get_primaries())
        except _ERRORS as exc:
            self._failed("delete_prefix", exc, True, [_ANY])
            return
        for node in primaries:
            self._call_on_node("delete_prefix", functools.partial(run, node=node), node.name)

    def _call_on_node(self, what: str, fn: Callable[[Any], None], node: str) -> None:
        if not self._usable(True, [node]):
            return
        try:
            fn(self._client)
        except _ERRORS as exc:
            self._failed(what, exc, True, [node])

    def ping(self) -> bool:
        """True when Redis answers now (in a cluster: every master)."""
        try:
            if not self.cluster:
                return bool(self._client.ping())
            return all(self._client.ping(target_nodes=node) for node in self._client.get_primaries())
        except _ERRORS:
            return False

    async def aclose(self) -> None:
        """Close the event loop's client (call from that loop)."""
        if self._aclient is not None and self._aloop is asyncio.get_running_loop():
            await self._aclient.aclose()
        self._aclient = None

    def close(self) -> None:
        """Close the connection pool(s)."""
        if self._made is not None:
            self._made.close()
