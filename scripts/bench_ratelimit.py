"""What rate limiting costs a request (issue 15): the same requests with limits off (the baseline, in the same
run) and on, never hit (limits of 10^8/s), in-process and shared through Redis.

The app runs in-process (TestClient; its own overhead is in every figure) on a SQLite store; each
configuration answers `GET /v1/popular` (the cheapest keyed route: an in-memory list) `--requests` times,
sequentially, after a warm-up, in interleaved rounds so drift hits every configuration alike. Configurations:
a secret key with no limits (baseline), a secret key with RECO_RATE_LIMITS (one bucket), and a publishable key
with its per-key and per-IP limits (two buckets in one script call) and an allowed Origin (CORS headers). The
limiter's own `take` is timed too (no HTTP), in-process and against Redis.

    .venv/bin/python scripts/bench_ratelimit.py --redis redis://127.0.0.1:6379/9   # docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import redis  # noqa: E402
import redis.asyncio as aredis  # noqa: E402
from benchdocs import update_section  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from app.api.app import create_app  # noqa: E402
from app.auth.ratelimit import RateLimiter  # noqa: E402
from app.settings import Settings, parse_rate_limits  # noqa: E402

KEY = "bench-ratelimit-admin-key-0000000"
SHOP = "https://shop.example"
HUGE = "events=100000000/s,recommend=100000000/s,read=100000000/s"


def _settings(tmp: Path, redis_url: str | None, prefix: str, limited: bool) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp / 'reco.db'}",
        artifact_dir=tmp / "artifacts",
        api_keys=f"{KEY}:admin",  # type: ignore[arg-type]
        embedded_worker=False,
        redis_url=redis_url,
        redis_prefix=prefix,
        rate_limits=HUGE if limited else "",
        publishable_rate_limits=HUGE,
        publishable_ip_rate_limits=HUGE,
        metrics_enabled=False,
    )


def _time(client: TestClient, headers: dict[str, str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        answer = client.get("/v1/popular?k=10", headers=headers)
        out.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
    return out


def bench_http(redis_url: str | None, requests: int, rounds: int) -> dict[str, list[float]]:
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        off = TestClient(create_app(_settings(tmp / "off", redis_url, prefix, False)))
        on = TestClient(create_app(_settings(tmp / "on", redis_url, prefix, True)))
        with off, on:
            pk = on.post(
                "/v1/admin/keys",
                json={"publishable": True, "origins": [SHOP]},
                headers={"Authorization": f"Bearer {KEY}"},
            ).json()["key"]
            configs = {
                "secret key, no limits (baseline)": (off, {"Authorization": f"Bearer {KEY}"}),
                "secret key, RECO_RATE_LIMITS (1 bucket)": (on, {"Authorization": f"Bearer {KEY}"}),
                "publishable key + Origin (2 buckets, CORS)": (
                    on,
                    {"Authorization": f"Bearer {pk}", "Origin": SHOP},
                ),
            }
            for client, headers in configs.values():
                _time(client, headers, 200)  # warm-up
            for _ in range(rounds):
                for name, (client, headers) in configs.items():
                    samples.setdefault(name, []).extend(_time(client, headers, requests // rounds))
            limiter = on.app.state.reco.limiter  # type: ignore[attr-defined]
            assert limiter.failures == 0, limiter.last_error
    if redis_url:
        _cleanup(redis_url, prefix)
    return samples


def bench_take(redis_url: str | None, n: int) -> dict[str, float]:
    rate = parse_rate_limits("recommend=100000000/s")["recommend"]
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    out: dict[str, float] = {}

    async def run(limiter: RateLimiter, buckets: list[tuple[str, Any]]) -> float:
        for _ in range(100):
            await limiter.take("db:1", buckets)
        started = time.perf_counter()
        for _ in range(n):
            await limiter.take("db:1", buckets)
        return (time.perf_counter() - started) / n

    one = [("recommend", rate)]
    two = [("recommend", rate), ("recommend:ip:203.0.113.7", rate)]
    out["in-process, 1 bucket"] = asyncio.run(run(RateLimiter(None), one))
    out["in-process, 2 buckets"] = asyncio.run(run(RateLimiter(None), two))
    if redis_url:

        async def ping() -> float:  # the floor: one round trip on the same kind of client
            client = aredis.Redis.from_url(redis_url, socket_timeout=1)
            for _ in range(100):
                await client.ping()
            started = time.perf_counter()
            for _ in range(n):
                await client.ping()
            await client.aclose()
            return (time.perf_counter() - started) / n

        out["Redis PING (the round-trip floor)"] = asyncio.run(ping())
        out["Redis, 1 bucket"] = asyncio.run(run(RateLimiter(redis_url, prefix=prefix), one))
        out["Redis, 2 buckets"] = asyncio.run(run(RateLimiter(redis_url, prefix=prefix), two))
        _cleanup(redis_url, prefix)
    return out


def _cleanup(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per configuration")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--redis", default=None, help="a Redis URL for the shared limiter (keys under a prefix)"
    )
    parser.add_argument("--write", action="store_true", help="write the section of docs/BENCHMARKS.md")
    args = parser.parse_args()
    command = "python scripts/bench_ratelimit.py " + " ".join(sys.argv[1:])
    lines = [
        "## Rate limiting on the request path (issue 15)",
        "",
        f"`{command}` — {__doc__.split(chr(10) + chr(10))[0]}",
        "",
        "Sequential `GET /v1/popular?k=10` through TestClient on SQLite (its overhead is in every figure); limits",
        "so high they are never hit; the ratio is each configuration's median over the baseline's, same run (the",
        "median: the machine is shared, and its means and p99s carry other processes' noise).",
        "",
    ]
    load = os.getloadavg()[0]
    lines += [f"Load average at the start: {load:.1f} on {os.cpu_count()} cores.", ""]
    for store, url in [("in-process", None)] + ([("Redis", args.redis)] if args.redis else []):
        samples = bench_http(url, args.requests, args.rounds)
        base = statistics.median(next(iter(samples.values())))
        lines += [
            f"Limiter store: **{store}** ({args.requests} requests per configuration)",
            "",
            "| configuration | p50 ms | mean ms | p99 ms | p50 vs baseline |",
            "|---|---|---|---|---|",
        ]
        for name, values in samples.items():
            p50 = statistics.median(values)
            lines.append(
                f"| {name} | {p50 * 1e3:.3f} | {statistics.fmean(values) * 1e3:.3f} | "
                f"{_pct(values, 0.99) * 1e3:.3f} | {p50 / base:.2f}x |"
            )
        lines.append("")
    takes = bench_take(args.redis, 5000)
    lines += ["The limiter alone (`RateLimiter.take`, 5,000 calls, one event loop):", ""]
    lines += ["| store | µs per call |", "|---|---|"]
    lines += [f"| {name} | {value * 1e6:.1f} |" for name, value in takes.items()]
    lines += [
        "",
        "Secret keys are not limited by default (RECO_RATE_LIMITS empty), so their path pays nothing; publishable",
        "keys always pay their two buckets (one script call to Redis when it is configured).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        update_section(ROOT / "docs" / "BENCHMARKS.md", lines[0], text)


if __name__ == "__main__":
    main()
