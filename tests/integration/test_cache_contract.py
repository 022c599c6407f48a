"""One contract for every cache: the in-process one and Redis (when RECO_TEST_REDIS_URL is set); Redis that
goes away degrades to misses, counts errors and recovers."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from app.cache import Cache, RedisCache
from app.cache import keys as cache_keys
from tests.helpers.proxy import TcpProxy
from tests.helpers.servers import private_redis


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


def test_recent_lists_newest_first_and_trimmed(cache: Cache) -> None:
    assert cache.recent("reco:t:list", 5) is None
    assert cache.push_recent("reco:t:list", [b"a", b"b"], max_len=3, ttl_seconds=60)
    assert cache.push_recent("reco:t:list", [b"c", b"d"], max_len=3, ttl_seconds=60)
    assert cache.recent("reco:t:list", 10) == [b"d", b"c", b"b"]
    assert cache.recent("reco:t:list", 2) == [b"d", b"c"]


def test_delete_prefix_removes_one_users_answers_only(cache: Cache) -> None:
    for user in ("u1", "u10", "u1*", "u["):
        for n in range(3):
            cache.set(cache_keys.recommendations(user, "v1", 0, n, "k=10"), b"x", 60)
    cache.delete_prefix(cache_keys.user_prefix("u1"))
    assert all(cache.get(cache_keys.recommendations("u1", "v1", 0, n, "k=10")) is None for n in range(3))
    for other in ("u10", "u1*", "u["):  # a prefix id and glob characters are never confused with u1
        assert cache.get(cache_keys.recommendations(other, "v1", 0, 0, "k=10")) == b"x", other
    cache.delete_prefix(cache_keys.user_prefix("u1*"))
    assert cache.get(cache_keys.recommendations("u10", "v1", 0, 0, "k=10")) == b"x"
    assert cache.get(cache_keys.recommendations("u1*", "v1", 0, 0, "k=10")) is None


def test_ping(cache: Cache) -> None:
    assert cache.ping() is True


def test_keys_of_one_id_never_prefix_another() -> None:
    assert not cache_keys.user_prefix("a").startswith(cache_keys.user_prefix("a:b"))
    assert not cache_keys.user_prefix("a:b").startswith(cache_keys.user_prefix("a"))
    assert cache_keys.recommendations("u", "v1", 1, 2, "k=10") != cache_keys.recommendations(
        "u", "v1", 1, 3, "k=10"
    )
    assert cache_keys.recommendations("u", "v1", 1, 2, "k=10") != cache_keys.recommendations(
        "u", "v2", 1, 2, "k=10"
    )


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
        assert cache.push_recent("reco:t:l", [b"x"], 5, 60) is False
        assert cache.recent("reco:t:l", 5) is None
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
