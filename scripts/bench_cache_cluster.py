"""Cache benchmark: the same RedisCache calls on one redis-server and on a three-master Redis Cluster (issue 14).

Both are private servers started here on loopback (no persistence), measured in alternating rounds in the same
run: a lookup that hits (one script on one server; the epoch script, then the user's, in a cluster), a lookup
that misses and its store, an events batch of 1 user and of 100 users (one script on one server; one per slot,
pipelined per master, in a cluster). Reported: calls/s on each and the cluster's ratio to one server (the baseline), and the
commands the servers executed per call (from INFO stats: a count, not a timing, so the machine's load does not
move it).

    .venv/bin/python scripts/bench_cache_cluster.py --update-docs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdocs import update_section  # noqa: E402

from app.cache import RedisCache  # noqa: E402
from app.cache import keys as cache_keys  # noqa: E402
from app.cache.base import UserAnswer  # noqa: E402
from tests.helpers.redis_cluster import redis_cluster  # noqa: E402
from tests.helpers.servers import private_redis  # noqa: E402

SECTION = "## Redis Cluster cache (issue 14)"
BODY = b'{"items":[' + b'{"item_id":"item00000","score":0.5},' * 20 + b"]}"


def _entry(n: int) -> bytes:
    return cache_keys.history_entry(1_000_000 + n, "view", f"i{n}")


def workloads(cache: RedisCache, users: list[str]) -> dict[str, Callable[[int], int]]:
    """name -> fn(round) doing some calls, returning how many."""
    answer = {u: cache_keys.recommendations(u, "v1", "k=10") for u in users}

    def lookup_hit(_: int) -> int:
        for u in users:
            assert cache.lookup_user(u, answer[u], 50).answer is not None
        return len(users)

    def miss_and_store(r: int) -> int:
        for u in users:
            key = cache_keys.recommendations(u, f"m{r}", "k=10")
            looked = cache.lookup_user(u, key, 50)
            cache.store_user(u, looked, UserAnswer(key, BODY, 60, [_entry(1), _entry(0)], 60))
        return len(users)

    def events_1(r: int) -> int:
        for n, u in enumerate(users):
            cache.record_events({u: [_entry(10 + r * len(users) + n)]}, 50, 60)
        return len(users)

    def events_100(r: int) -> int:
        for b in range(0, len(users), 100):
            cache.record_events({u: [_entry(10_000 + r)] for u in users[b : b + 100]}, 50, 60)
        return len(users)

    return {
        "lookup (hit)": lookup_hit,
        "lookup (miss) + store": miss_and_store,
        "events, 1 user per batch": events_1,
        "events, 100 users per batch (per user)": events_100,
    }


def prime(cache: RedisCache, users: list[str]) -> None:
    for u in users:
        key = cache_keys.recommendations(u, "v1", "k=10")
        looked = cache.lookup_user(u, key, 50)
        assert cache.store_user(u, looked, UserAnswer(key, BODY, 600, None, 0))


def commands(ports: list[int]) -> int:
    """Commands executed so far by the servers on `ports` (this INFO itself not counted)."""
    total = 0
    for port in ports:
        client = redis.Redis(port=port)
        total += int(client.info("stats")["total_commands_processed"])
        client.close()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    users = [f"user{n}" for n in range(args.users)]
    with private_redis() as (_, port), redis_cluster() as cluster:
        caches = {
            "one server": RedisCache(f"redis://127.0.0.1:{port}/0", timeout=2.0),
            "cluster (3 masters)": RedisCache(cluster.url, timeout=2.0),
        }
        ports = {"one server": [port], "cluster (3 masters)": cluster.ports}
        rates: dict[str, dict[str, list[float]]] = {name: {} for name in caches}
        per_call: dict[str, dict[str, float]] = {name: {} for name in caches}
        for r in range(args.rounds):
            for name, cache in caches.items():  # alternating: both see the same machine load
                prime(cache, users)  # the events of the last round moved every generation
                for label, fn in workloads(cache, users).items():
                    before = commands(ports[name])
                    started = time.perf_counter()
                    calls = fn(r)
                    rates[name].setdefault(label, []).append(calls / (time.perf_counter() - started))
                    executed = commands(ports[name]) - before - len(ports[name])  # less the first INFOs
                    per_call[name][label] = executed / calls
        for cache in caches.values():
            assert cache.stats.errors == 0, "a cache call failed during the benchmark"
            cache.close()
    base, clus = caches
    lines = [
        SECTION,
        "",
        f"`.venv/bin/python scripts/bench_cache_cluster.py --users {args.users} --rounds {args.rounds}"
        + (" --update-docs" if args.update_docs else "")
        + "`: the same `RedisCache` calls, one client thread, on a private redis-server and on a private"
        " three-master Redis Cluster (loopback, no persistence), in alternating rounds; medians of the rounds."
        " The cluster's lookup is two round trips (the epoch's slot, then the user's), its events batch one"
        ' script per slot, pipelined per master (one round trip each); "commands per call" counts what the'
        " servers executed, the scripts' own calls included. One client thread on a shared 2-core machine measures the per-call cost, not the"
        " cluster's capacity (which grows with its masters); this machine was shared and loaded (load average"
        f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end), so calls/s move a lot between runs;"
        " the commands per call do not.",
        "",
        f"| call | {base}, calls/s | {clus}, calls/s | cluster / one server | commands per call, one server"
        " / cluster |",
        "|---|---|---|---|---|",
    ]
    for label in rates[base]:
        a, b = statistics.median(rates[base][label]), statistics.median(rates[clus][label])
        cmds = f"{per_call[base][label]:.2f} / {per_call[clus][label]:.2f}"
        lines.append(f"| {label} | {a:,.0f} | {b:,.0f} | {b / a:.2f} | {cmds} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.update_docs:
        update_section(ROOT / "docs" / "BENCHMARKS.md", SECTION, text)


if __name__ == "__main__":
    main()
