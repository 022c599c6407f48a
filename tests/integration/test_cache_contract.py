"""One contract for every cache: the in-process one, Redis (when RECO_TEST_REDIS_URL is set) and a real
three-master Redis Cluster started for this module; Redis that goes away degrades to misses, counts errors and
recovers."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator

import pytest

from app.cache import Cache, MemoryCache, RedisCache
from app.cache import keys as cache_keys
from app.cache.base import UserAnswer, UserLookup
from app.cache.redis import _user_keys
from tests.conftest import CACHES, IN_CI, REDIS_URL
from tests.helpers.proxy import TcpProxy
from tests.helpers.redis_cluster import redis_cluster
from tests.helpers.servers import free_port, private_redis


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    """A private three-master Redis Cluster for this module (killed at its end)."""
    if not IN_CI and (shutil.which("redis-server") is None or shutil.which("redis-cli") is None):
        pytest.skip("redis-server / redis-cli are not installed")
    with redis_cluster() as cluster:
        yield cluster.url


@pytest.fixture(params=[*CACHES, "cluster"])
def cache(request: pytest.FixtureRequest, redis_prefix: str) -> Iterator[Cache]:
    """A cache of each kind: in-process, one Redis server, a Redis Cluster."""
    impl: Cache
    if request.param == "memory":
        impl = MemoryCache()
    elif request.param == "redis":
        assert REDIS_URL
        impl = RedisCache(REDIS_URL, prefix=redis_prefix)
    else:
        impl = RedisCache(request.getfixturevalue("cluster_url"), prefix=redis_prefix)
    yield impl
    impl.close()


def test_get_set_delete_and_expiry(cache: Cache) -> None:
    assert cache.get("reco:t:a") is None
    cache.set("reco:t:a", b"\x00binary\xff", 60)
    assert cache.get("reco:t:a") == b"\x00binary\xff"
    cache.set("reco:t:a", b"new", 60)
    assert cache.get("reco:t:a") == b"new"
    cache.set("reco:t:short", b"x", 1)
    cache.delete("reco:t:a", "reco:t:absent")
    assert cache.get("reco:t:a") is None
    time.sleep(1.1)
    assert cache.get("reco:t:short") is None
    assert cache.stats.hits == 2 and cache.stats.misses >= 3
    assert 0 < cache.stats.hit_ratio < 1 and cache.stats.errors == 0


def test_counters(cache: Cache) -> None:
    keys = [cache_keys.user_generation(u) for u in ("u1", "u2")]
    assert cache.get_many(keys) == [None, None]
    assert cache.incr_many(keys) is True
    assert cache.incr_many(keys[:1]) is True
    assert cache.incr_many([]) is True
    assert cache.get_many(keys) == [b"2", b"1"]


def test_counters_are_atomic_under_threads(cache: Cache) -> None:
    key = cache_keys.user_generation("busy")

    def bump() -> None:
        for _ in range(50):
            cache.incr_many([key])

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get_many([key]) == [b"200"]


OTHER = cache_keys.recommendations(
    "u1", "v2", "k=10"
)  # another answer key of u1 (a user's keys share a slot)


def _entry(ts: int, item: str, kind: str = "view") -> bytes:
    return cache_keys.history_entry(ts, kind, item)


def _store(
    cache: Cache, user: str, looked: UserLookup, body: bytes, history: list[bytes] | None = None
) -> bool:
    answer = UserAnswer(cache_keys.recommendations(user, "v1", "k=10"), body, 60, history, 60)
    return cache.store_user(user, looked, answer)


def test_user_lookup_answers_only_under_the_counters_it_was_stored_with(cache: Cache) -> None:
    key = cache_keys.recommendations("u1", "v1", "k=10")
    first = cache.lookup_user("u1", key, 10)
    assert (first.generation, first.answer, first.history) == (0, None, None)
    assert first.epoch == cache.epoch()  # 0 at first on one server; a cluster starts it at its time (ms)
    assert _store(cache, "u1", first, b'{"items":[]}')
    assert cache.get(key) == cache_keys.stamp(0, first.epoch) + b'{"items":[]}'
    assert cache.lookup_user("u1", key, 10).answer == b'{"items":[]}'
    assert cache.lookup_user("u1", key, 10).history is None  # no list was given: none is held
    assert cache.record_events({"u1": [_entry(5, "i1")]}, 10, 60)  # an event: the answer no longer holds
    after = cache.lookup_user("u1", key, 10)
    assert (after.generation, after.answer) == (1, None)
    assert _store(cache, "u1", first, b"stale") is False  # computed before the event: not stored
    assert cache.lookup_user("u1", key, 10).answer is None
    assert cache.lookup_user("u2", cache_keys.recommendations("u2", "v1", "k=10"), 10).generation == 0
    assert _store(cache, "u1", after, b"new")
    cache.incr_many([cache_keys.EPOCH])  # an epoch bump makes it unusable too
    assert cache.lookup_user("u1", key, 10).answer is None


def test_history_is_stored_only_if_nothing_changed_and_events_go_on_top(cache: Cache) -> None:
    key = cache_keys.recommendations("u1", "v1", "k=10")
    looked = cache.lookup_user("u1", key, 10)
    stored = [_entry(20, "i2"), _entry(10, "i1")]  # newest first, as the store returns them
    assert cache.record_events({"u1": [_entry(30, "i3")]}, 10, 60)  # lands between the read and the store
    assert cache.lookup_user("u1", key, 10).history is None  # no list is created by an event alone
    assert _store(cache, "u1", looked, b"a", stored) is False
    looked = cache.lookup_user("u1", key, 10)
    stored = [_entry(30, "i3"), *stored]
    assert _store(cache, "u1", looked, b"a", stored) is True
    assert cache.lookup_user("u1", OTHER, 10).history == [*stored, b""]
    assert cache.lookup_user("u1", OTHER, 2).history == stored[:2]
    # newer events go on top, in order; an entry already held (committed before the read) is not repeated
    assert cache.record_events({"u1": [_entry(30, "i3"), _entry(40, "i4"), _entry(40, "i5", "click")]}, 4, 60)
    assert cache.lookup_user("u1", key, 10).history == [
        _entry(40, "i5", "click"),
        _entry(40, "i4"),
        _entry(30, "i3"),
        _entry(20, "i2"),
    ]  # trimmed to max_len = 4
    # an event older than the newest held one cannot be placed by a push: the list is dropped
    assert cache.record_events({"u1": [_entry(35, "late")]}, 4, 60)
    assert cache.lookup_user("u1", key, 10).history is None
    # an empty history is held as the end marker alone; None drops a list (duplicates in a batch)
    key2 = cache_keys.recommendations("u2", "v1", "k=10")
    looked = cache.lookup_user("u2", key2, 10)
    assert _store(cache, "u2", looked, b"a", [])
    other2 = cache_keys.recommendations("u2", "v2", "k=10")
    assert cache.lookup_user("u2", other2, 10).history == [b""]
    assert cache.record_events({"u2": None}, 4, 60)
    assert cache.lookup_user("u2", other2, 10).history is None


def test_one_events_batch_of_many_users_reaches_each_of_them(cache: Cache) -> None:
    """In a cluster the users of one batch lie in many slots on every master: each gets its own script (one
    pipeline per master)."""
    users = [f"many{n}" for n in range(30)]
    for user in users[:20]:  # a held list for 20 of them
        looked = cache.lookup_user(user, cache_keys.recommendations(user, "v1", "k"), 10)
        assert _store(cache, user, looked, b"a", [_entry(1, "old")])
    assert cache.record_events({u: [_entry(2, f"new-{u}")] for u in users}, 10, 60)
    assert cache.incr_many([cache_keys.user_generation(u) for u in users[:10]])
    gens = cache.get_many([cache_keys.user_generation(u) for u in users])
    assert gens == [b"2"] * 10 + [b"1"] * 20
    for n, user in enumerate(users):
        held = cache.lookup_user(user, cache_keys.recommendations(user, "v2", "k"), 10).history
        assert held == ([_entry(2, f"new-{user}"), _entry(1, "old"), b""] if n < 20 else None), user


def test_an_epoch_bump_orphans_every_history_list(cache: Cache) -> None:
    key = cache_keys.recommendations("u1", "v1", "k=10")
    looked = cache.lookup_user("u1", key, 10)
    assert _store(cache, "u1", looked, b"a", [_entry(1, "i1")])
    cache.incr_many([cache_keys.EPOCH])
    # one server refuses a store under an old epoch; a cluster cannot check the epoch in the user's slot and
    # stores it, stamped with that old epoch: either way it is never served
    stored = _store(cache, "u1", looked, b"a", [_entry(1, "i1")])
    assert stored is False or getattr(cache, "cluster", False)
    after = cache.lookup_user("u1", key, 10)
    assert after.epoch > looked.epoch and after.history is None and after.answer is None
    assert cache_keys.parse_history_entry(_entry(7, "a\tb", "click")) == ("a\tb", "click")
    assert cache_keys.parse_history_entry(b"") is None


def test_delete_prefix_removes_one_users_answers_only(cache: Cache) -> None:
    for user in ("u1", "u10", "u1*", "u["):
        for n in range(3):
            cache.set(cache_keys.recommendations(user, "v1", f"k={n}"), b"x", 60)
    cache.delete_prefix(cache_keys.user_prefix("u1"))
    assert all(cache.get(cache_keys.recommendations("u1", "v1", f"k={n}")) is None for n in range(3))
    for other in ("u10", "u1*", "u["):  # a prefix id and glob characters are never confused with u1
        assert cache.get(cache_keys.recommendations(other, "v1", "k=0")) == b"x", other
    cache.delete_prefix(cache_keys.user_prefix("u1*"))
    assert cache.get(cache_keys.recommendations("u10", "v1", "k=0")) == b"x"
    assert cache.get(cache_keys.recommendations("u1*", "v1", "k=0")) is None


def test_ping(cache: Cache) -> None:
    assert cache.ping() is True


def test_keys_of_one_id_never_prefix_another() -> None:
    assert not cache_keys.user_prefix("a").startswith(cache_keys.user_prefix("a:b"))
    assert not cache_keys.user_prefix("a:b").startswith(cache_keys.user_prefix("a"))
    assert cache_keys.recommendations("u", "v1", "k=10") != cache_keys.recommendations("u", "v1", "k=5")
    assert cache_keys.recommendations("u", "v1", "k=10") != cache_keys.recommendations("u", "v2", "k=10")
    assert cache_keys.stamp(1, 23) != cache_keys.stamp(12, 3)


def test_redis_down_degrades_to_misses_counts_errors_and_recovers() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with private_redis() as (_, port), TcpProxy("127.0.0.1", port) as proxy:
        cache = RedisCache(f"redis://127.0.0.1:{proxy.port}/0", retry_after=0.3)
        cache.set("reco:t:k", b"v", 60)
        assert cache.get("reco:t:k") == b"v"
        proxy.cut()
        started = time.monotonic()
        assert cache.get("reco:t:k") is None
        assert cache.get_many(["reco:t:k"]) == [None]
        assert cache.incr_many(["reco:t:n"]) is False
        assert cache.record_events({"u1": [b"1\tview\ti1"]}, 5, 60) is False
        assert cache.lookup_user("u1", "reco:t:k", 5) == UserLookup()
        assert _store(cache, "u1", UserLookup(), b"a", []) is False
        cache.delete_prefix("reco:t:")
        assert cache.ping() is False
        assert time.monotonic() - started < 2, "a dead Redis must not slow every call down"
        assert cache.stats.errors >= 5
        proxy.restore()
        time.sleep(0.35)
        assert cache.get("reco:t:k") == b"v"
        assert cache.get(cache_keys.EPOCH) == b"1"  # writes were missed: derived answers made unreachable
        assert cache.ping() is True
        cache.close()


@pytest.mark.skipif(
    not REDIS_URL, reason="needs RECO_TEST_REDIS_URL (set under CI=true, where it is required)"
)
def test_two_prefixes_on_one_redis_never_meet(redis_prefix: str) -> None:
    """RECO_REDIS_PREFIX: two services (or test runs) on one Redis database: values, counters, the epoch,
    scripts' lists and prefix deletion of one never touch the other's."""
    assert REDIS_URL
    a, b = (
        RedisCache(REDIS_URL, prefix=redis_prefix + "a:"),
        RedisCache(REDIS_URL, prefix=redis_prefix + "b:"),
    )
    try:
        a.set("reco:t:x", b"from a", 60)
        assert b.get("reco:t:x") is None and a.get("reco:t:x") == b"from a"
        start = b.epoch()
        assert a.incr_many([cache_keys.EPOCH]) and a.epoch() == 1 and b.epoch() == start == 0
        a.record_events({"u1": [cache_keys.history_entry(1, "view", "i1")]}, 10, 60)
        assert b.get_many([cache_keys.user_generation("u1")]) == [None]
        assert a.get_many([cache_keys.user_generation("u1")]) == [b"1"]
        b.set(cache_keys.user_prefix("u1") + "z", b"b's", 60)
        a.delete_prefix(cache_keys.user_prefix("u1"))
        assert b.get(cache_keys.user_prefix("u1") + "z") == b"b's"
    finally:
        a.close()
        b.close()


@pytest.fixture
def cluster_cache(cluster_url: str, redis_prefix: str) -> Iterator[RedisCache]:
    impl = RedisCache(cluster_url, prefix=redis_prefix)
    yield impl
    impl.close()


def test_a_cluster_epoch_never_goes_back_after_its_master_lost_it(cluster_cache: RedisCache) -> None:
    """The epoch's master restarted empty while the user's master kept its answers: the epoch starts again at
    the server's time (ms), past every value it had, so no answer stamped before the loss matches again."""
    cache = cluster_cache
    key = cache_keys.recommendations("u1", "v1", "k=10")
    old = cache.lookup_user("u1", key, 10)
    assert old.epoch > 1_000_000_000_000  # created at the server's time in ms
    assert _store(cache, "u1", old, b"before", [_entry(1, "i1")])
    assert cache.lookup_user("u1", key, 10).answer == b"before"
    time.sleep(0.002)
    cache._client.delete(cache.prefix + cache_keys.EPOCH, cache.prefix + cache_keys.FENCE)  # the loss
    after = cache.lookup_user("u1", key, 10)
    assert after.epoch > old.epoch and after.answer is None and after.history is None
    cache.fence = 5  # a lost fence copy too: the first lookup that knows a fence bumps the epoch once more
    assert cache.lookup_user("u1", key, 10).epoch == after.epoch + 1


def test_a_cluster_list_filled_under_another_epoch_is_dropped_not_appended_to(
    cluster_cache: RedisCache,
) -> None:
    """`record_events` reads the epoch, then runs in the user's slot: when the epoch moved in between and a
    list was filled under the new one, appending the event to the old epoch's list would leave the new list
    without it. The script drops a list of any other epoch instead (the next read refills it from the store)."""
    cache = cluster_cache
    key = cache_keys.recommendations("u1", "v1", "k=10")
    stale = cache.epoch()
    cache.incr_many([cache_keys.EPOCH])
    looked = cache.lookup_user("u1", key, 10)
    assert looked.epoch == stale + 1
    assert _store(cache, "u1", looked, b"a", [_entry(1, "i1")])
    assert cache.lookup_user("u1", cache_keys.recommendations("u1", "v2", "k"), 10).history == [
        _entry(1, "i1"),
        b"",
    ]
    script_keys = [cache.prefix + k for k in _user_keys("u1")]  # generation, list, list's epoch
    cache._record_script(
        cache._client, script_keys, [10, 60, stale, 1, _entry(2, "i2")]
    )  # the epoch read before
    later = cache.lookup_user("u1", cache_keys.recommendations("u1", "v2", "k"), 10)
    assert later.generation == looked.generation + 1 and later.history is None


def test_an_unreachable_cluster_degrades_to_misses_quickly() -> None:
    """No node of the URL answers (nothing listens): no client can even be made. Every call answers its
    default at once after the first failure (the breaker), nothing raises, writes count as missed."""
    cache = RedisCache(f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}", retry_after=5)
    missed: list[int] = []
    cache.on_missed_write = lambda: missed.append(1)
    started = time.monotonic()
    assert cache.get("reco:t:k") is None
    assert cache.lookup_user("u1", cache_keys.recommendations("u1", "v1", "k"), 5) == UserLookup()
    assert cache.record_events({"u1": [_entry(1, "i1")]}, 5, 60) is False
    assert cache.incr_many([cache_keys.EPOCH]) is False
    assert cache.epoch() == 0 and cache.ping() is False
    assert time.monotonic() - started < 3
    assert cache.stats.errors >= 4 and len(missed) == 2
    cache.close()
