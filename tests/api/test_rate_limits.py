"""Rate limits: 429 with Retry-After naming the limit, and recovery; per key, per route class, per key's own
limits, per client IP for publishable keys (X-Forwarded-For only from trusted proxies); shared by two app
instances through Redis; limited in-process, and never failing, while Redis is down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.auth.ratelimit import MemoryLimiter, RateLimiter, client_ip, parse_proxies
from app.settings import Settings, parse_rate_limits
from tests.conftest import ADMIN_KEY, IN_CI, INGEST_KEY, READ_KEY, REDIS_URL, STATIC_KEYS, auth
from tests.helpers.servers import private_redis

SHOP = "https://shop.example"


def _settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'reco.db'}",
        artifact_dir=tmp_path / "artifacts",
        api_keys=STATIC_KEYS,  # type: ignore[arg-type]
        embedded_worker=False,
        **extra,  # type: ignore[arg-type]
    )


def _needs_redis() -> str:
    if not REDIS_URL:
        assert not IN_CI, "CI=true needs RECO_TEST_REDIS_URL"
        pytest.skip("RECO_TEST_REDIS_URL is not set")
    return REDIS_URL


def test_429_with_retry_after_then_recovers(tmp_path: Path) -> None:
    settings = _settings(tmp_path, rate_limits="recommend=3/s,admin=2/m")
    with TestClient(create_app(settings)) as c:
        for _ in range(3):
            assert c.get("/v1/popular", headers=auth(READ_KEY)).status_code == 200
        over = c.get("/v1/popular", headers=auth(READ_KEY))
        assert over.status_code == 429
        assert over.headers["retry-after"] == "1"
        error = over.json()["error"]
        assert error["code"] == "rate_limited" and "recommend=3/s" in error["message"]
        assert "RECO_RATE_LIMITS" in error["message"]
        assert error["details"][0]["limit"] == "recommend=3/s"
        # per key: another key has its own bucket; per class: events are not limited
        assert c.get("/v1/popular", headers=auth(ADMIN_KEY)).status_code == 200
        sent = c.post(
            "/v1/events",
            json={"events": [{"user_id": "u", "item_id": "i", "type": "view"}]},
            headers=auth(INGEST_KEY),
        )
        assert sent.status_code == 200
        # the admin class, per minute: Retry-After in whole seconds up to the refill
        assert c.get("/v1/admin/models", headers=auth(ADMIN_KEY)).status_code == 200
        assert c.get("/v1/admin/models", headers=auth(ADMIN_KEY)).status_code == 200
        slow = c.get("/v1/admin/models", headers=auth(ADMIN_KEY))
        assert slow.status_code == 429 and 1 <= int(slow.headers["retry-after"]) <= 30
        time.sleep(int(over.headers["retry-after"]))
        assert c.get("/v1/popular", headers=auth(READ_KEY)).status_code == 200  # recovered


def test_body_routes_count_once(tmp_path: Path) -> None:
    """A route with a body checks the key twice (before and after reading it): one token a request."""
    with TestClient(create_app(_settings(tmp_path, rate_limits="recommend=2/m"))) as c:
        body = {"recent_items": ["i1"], "k": 3}
        assert [
            c.post("/v1/recommendations", json=body, headers=auth(READ_KEY)).status_code for _ in range(3)
        ] == [
            200,
            200,
            429,
        ]


def test_own_limits_and_publishable_per_ip(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        publishable_rate_limits="recommend=5/m",
        publishable_ip_rate_limits="recommend=2/m",
        trusted_proxies="10.0.0.0/8",  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings), client=("10.1.2.3", 5000)) as c:
        own = c.post(
            "/v1/admin/keys",
            json={"scopes": ["read"], "rate_limits": "recommend=1/m"},
            headers=auth(ADMIN_KEY),
        ).json()["key"]
        assert c.get("/v1/popular", headers=auth(own)).status_code == 200
        limited = c.get("/v1/popular", headers=auth(own))
        assert limited.status_code == 429 and "this key's rate_limits" in limited.json()["error"]["message"]
        pk = c.post(
            "/v1/admin/keys", json={"publishable": True, "origins": [SHOP]}, headers=auth(ADMIN_KEY)
        ).json()["key"]

        def get(ip: str) -> int:
            h = {**auth(pk), "X-Forwarded-For": f"203.0.113.77, {ip}", "Origin": SHOP}
            return c.get("/v1/popular", headers=h).status_code

        assert [get("198.51.100.1"), get("198.51.100.1"), get("198.51.100.1")] == [200, 200, 429]
        per_ip = c.get("/v1/popular", headers={**auth(pk), "X-Forwarded-For": "198.51.100.1", "Origin": SHOP})
        assert "per client IP" in per_ip.json()["error"]["message"]
        assert per_ip.headers["access-control-allow-origin"] == SHOP  # the page can read the 429
        assert [get("198.51.100.2"), get("198.51.100.2")] == [200, 200]  # another client
        key_wide = get("198.51.100.3")  # the key's 5/m across clients is spent (2 + 2 + this)
        assert key_wide == 200 and get("198.51.100.4") == 429


def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    trusted = parse_proxies(["10.0.0.0/8", "::1"])
    assert client_ip("203.0.113.5", "1.2.3.4", trusted) == "203.0.113.5"  # not a proxy: its own address
    assert client_ip("10.0.0.2", "1.2.3.4", ()) == "10.0.0.2"  # no trusted proxies configured
    assert client_ip("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.9", trusted) == "1.2.3.4"  # right-most untrusted
    assert client_ip("::1", "garbage", trusted) == "::1"
    with pytest.raises(SystemExit, match="RECO_TRUSTED_PROXIES"):
        from app.settings import load_settings

        load_settings(trusted_proxies="not-an-ip")


def test_memory_limiter_refills_by_the_clock() -> None:
    limiter = MemoryLimiter()
    rate = parse_rate_limits("events=2/s")["events"]
    assert [limiter.take("k", [("events", rate)], now=100.0)[0] for _ in range(3)] == [-1, -1, 0]
    blocked, wait = limiter.take("k", [("events", rate)], now=100.0)
    assert blocked == 0 and wait == pytest.approx(0.5)
    assert limiter.take("k", [("events", rate)], now=100.6)[0] == -1


def test_redis_limiter_is_shared_by_two_apps(tmp_path: Path, redis_prefix: str) -> None:
    url = _needs_redis()
    settings = _settings(tmp_path, redis_url=url, redis_prefix=redis_prefix, rate_limits="recommend=5/m")
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        codes = [a.get("/v1/popular", headers=auth(READ_KEY)).status_code for _ in range(3)]
        codes += [b.get("/v1/popular", headers=auth(READ_KEY)).status_code for _ in range(3)]
        assert codes == [200] * 5 + [429]  # 3 + 2 from one bucket: each alone would have allowed 5
        assert a.get("/v1/popular", headers=auth(READ_KEY)).status_code == 429
        limiters = [app.app.state.reco.limiter for app in (a, b)]  # type: ignore[attr-defined]
        assert all(lim.failures == 0 and lim.fallbacks == 0 for lim in limiters)
        assert sum(lim.shared for lim in limiters) == 7


def test_redis_down_falls_back_to_the_process(tmp_path: Path) -> None:
    with private_redis() as (proc, port):
        url = f"redis://127.0.0.1:{port}/0"
        settings = _settings(tmp_path, redis_url=url, rate_limits="recommend=4/m", rate_limit_timeout_s=0.2)
        with TestClient(create_app(settings)) as c:
            limiter: RateLimiter = c.app.state.reco.limiter  # type: ignore[attr-defined]
            assert c.get("/v1/popular", headers=auth(READ_KEY)).status_code == 200
            assert limiter.shared == 1
            proc.kill()
            proc.wait(timeout=10)
            started = time.monotonic()
            codes = [c.get("/v1/popular", headers=auth(READ_KEY)).status_code for _ in range(5)]
            elapsed = time.monotonic() - started
            # the fault was seen ...
            assert limiter.failures >= 1 and limiter.last_error is not None
            # ... and requests were answered, limited by this process's own buckets, within the timeout
            assert codes == [200, 200, 200, 200, 429], codes
            assert limiter.fallbacks == 5 and elapsed < 5
            scraped = c.get("/metrics").text
            assert "reco_rate_limiter_fallbacks_total 5.0" in scraped
            assert 'reco_rate_limited_total{class="recommend",per="key"} 1.0' in scraped


def test_redis_cluster_limiter_is_shared_by_two_apps(tmp_path: Path) -> None:
    """RECO_REDIS_URL naming a Redis Cluster: the bucket script runs in one slot (the key's hash tag)."""
    from tests.helpers.redis_cluster import redis_cluster

    with redis_cluster() as cluster:
        settings = _settings(tmp_path, redis_url=cluster.url, rate_limits="recommend=4/m")
        with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
            codes = [a.get("/v1/popular", headers=auth(READ_KEY)).status_code for _ in range(2)]
            codes += [b.get("/v1/popular", headers=auth(READ_KEY)).status_code for _ in range(3)]
            assert codes == [200] * 4 + [429]
            limiters = [app.app.state.reco.limiter for app in (a, b)]  # type: ignore[attr-defined]
            assert all(lim.failures == 0 and lim.fallbacks == 0 for lim in limiters), [
                lim.last_error for lim in limiters
            ]
