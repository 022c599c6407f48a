"""Serving through a load balancer: recommendation GETs through HAProxy with 2 replicas vs 1 replica directly.

Two `reco serve` replicas (`--workers` each, production settings) share a private PostgreSQL database, a
private redis-server and one artifact directory holding a synthetic model version of `--items` items (the
catalog and the users' events are those of scripts/bench_serve.py, whose load generator this script runs: a
separate process, `--concurrency` keep-alive connections, one request at a time each). Three targets, measured
in the same run, in interleaved rounds (`--rounds`; the median of the rounds is reported):

  - `direct`: replica A's own port (the baseline);
  - `haproxy -> 1 replica`: HAProxy with deploy/haproxy.cfg whose two server lines both name replica A (what
    the extra hop costs);
  - `haproxy -> 2 replicas`: the same config naming A and B;
  - `1 replica with 2x the workers, direct`: a third replica C with twice `--workers`: the same number of
    serving processes as two replicas, without the balancer (what one box would run instead).

Two request kinds: `cached` (50 warmed users: every answer a cache hit, so the hop's cost shows) and
`uncached` (a different user every request, none asked before: a store read, the user tower and FAISS per
request, the work that more replicas spread).

    PYTHONPATH=. .venv/bin/python scripts/bench_balancer.py --items 100000 --update-docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.settings import Settings  # noqa: E402
from scripts.bench_serve import (  # noqa: E402
    ADMIN,
    CACHED_USERS,
    KEY,
    _http,
    load_users,
    private_database,
    private_redis,
    register,
    run_load,
    synthetic_version,
    wait_ready,
)
from tests.helpers.balancer import Balancer, Replica, haproxy_binary  # noqa: E402

HEADING = "## Serving through a load balancer (issue 14)"
TARGETS = ("direct", "lb1", "lb2", "direct2w")
LABELS = {
    "direct": "1 replica, direct",
    "lb1": "HAProxy -> 1 replica",
    "lb2": "HAProxy -> 2 replicas",
    "direct2w": "1 replica with 2x the workers, direct",
}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of the run."""
    haproxy_binary()  # fail early when it is missing
    work = Path(tempfile.mkdtemp(prefix="reco-bench-lb-"))
    results: dict[str, Any] = {
        "command": "PYTHONPATH=. .venv/bin/python scripts/bench_balancer.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared by the replicas, HAProxy, PostgreSQL, "
        "Redis and the load generator",
        "items": args.items,
        "workers_per_replica": args.workers,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "cells": [],
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    replicas: list[Replica] = []
    balancers: list[Balancer] = []
    try:
        with private_redis() as redis_url, private_database(args.database_url) as db_url:
            base = Settings(database_url=db_url, redis_url=redis_url, artifact_dir=work / "artifacts")
            t0 = time.perf_counter()
            load_users(base, args.users, args.events_per_user, args.items)
            version = f"bench-{args.items:07d}"
            synthetic_version(args.items, base.artifact_dir, version)
            register(base, version)
            results["setup_s"] = round(time.perf_counter() - t0, 1)
            env = {
                "RECO_DATABASE_URL": db_url,
                "RECO_REDIS_URL": redis_url,
                "RECO_ARTIFACT_DIR": str(base.artifact_dir),
                "RECO_API_KEYS": f"{KEY}:read,{ADMIN}:admin",
                "RECO_LOG_LEVEL": "WARNING",
                "RECO_EMBEDDED_WORKER": "false",
            }
            replicas = [
                Replica(env, args.workers),
                Replica(env, args.workers),
                Replica(env, 2 * args.workers),
            ]
            for replica in replicas:
                wait_ready(replica.port, version, timeout=600)
            a, b = (f"127.0.0.1:{r.port}" for r in replicas[:2])
            balancers = [Balancer(a, a), Balancer(a, b)]
            for balancer in balancers:
                balancer.wait("api1", "UP", timeout=30)
                balancer.wait("api2", "UP", timeout=30)
            ports = {
                "direct": replicas[0].port,
                "lb1": balancers[0].port,
                "lb2": balancers[1].port,
                "direct2w": replicas[2].port,
            }
            for u in range(CACHED_USERS):  # warm the cached users (one shared Redis: every target hits)
                _http(ports["direct"], "GET", f"/v1/users/u{u}/recommendations?k=10")
            next_user = CACHED_USERS
            for port in (r.port for r in replicas):  # warm each (pools, first misses), unmeasured
                warm = run_load(port, "uncached", args.concurrency, min(args.duration, 3.0), next_user)
                next_user += warm["users_used"] + args.concurrency
            for round_no in range(args.rounds):
                order = TARGETS if round_no % 2 == 0 else tuple(reversed(TARGETS))
                for mode in ("cached", "uncached"):
                    for target in order:
                        result = run_load(ports[target], mode, args.concurrency, args.duration, next_user)
                        if mode == "uncached":
                            next_user += result["users_used"] + args.concurrency
                            if next_user > args.users:
                                raise SystemExit(f"--users {args.users} is too few: {next_user} were needed")
                        result.update(target=target, round=round_no)
                        print(json.dumps(result), flush=True)
                        results["cells"].append(result)
            stats = balancers[1].stats()
            results["lb2_sessions"] = {s: int(stats[f"reco_api/{s}"]["stot"]) for s in ("api1", "api2")}
            results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for balancer in balancers:
            balancer.stop()
        for replica in replicas:
            replica.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def summary(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Median over the rounds of req/s, p50, p99 and errors, by mode and target; and the ratio to `direct`
    paired within each round (its targets ran back to back, so the machine's drift cancels more): median and
    range over the rounds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mode in ("cached", "uncached"):
        direct = {
            c["round"]: c["rps"] for c in results["cells"] if c["mode"] == mode and c["target"] == "direct"
        }
        for target in TARGETS:
            cells = [c for c in results["cells"] if c["mode"] == mode and c["target"] == target]
            ratios = [c["rps"] / direct[c["round"]] for c in cells]
            out.setdefault(mode, {})[target] = {
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "rps": statistics.median(c["rps"] for c in cells),
                "rps_min": min(c["rps"] for c in cells),
                "rps_max": max(c["rps"] for c in cells),
                "p50_ms": statistics.median(c["p50_ms"] for c in cells),
                "p99_ms": statistics.median(c["p99_ms"] for c in cells),
                "errors": sum(c["errors"] for c in cells),
                "requests": sum(c["requests"] for c in cells),
            }
    return out


def markdown(results: dict[str, Any]) -> str:
    """The section of docs/BENCHMARKS.md."""
    med = summary(results)
    cores = os.cpu_count()
    lines = [
        HEADING,
        "",
        f"`{results['command']}`",
        "",
        f"{results['machine']}. {results['items']:,}-item synthetic version (bench_serve's catalog and users), "
        f"{results['workers_per_replica']} uvicorn worker per replica, PostgreSQL and redis-server private to "
        f"the run, {results['concurrency']} keep-alive connections, {results['duration_s']:g} s per cell, "
        f"median of {results['rounds']} interleaved rounds. HAProxy {_haproxy_version()} with "
        "`deploy/haproxy.cfg` (the compose profile `scale` file).",
        "",
        "| request | target | req/s | rounds' range | vs direct, paired per round: median (range) | p50 ms | p99 ms "
        "| errors / requests |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, label in (("cached", "cached (cache hit)"), ("uncached", "uncached (store + model + FAISS)")):
        for target in TARGETS:
            m = med[mode][target]
            lines.append(
                f"| {label} | {LABELS[target]} | {m['rps']:,.0f} | {m['rps_min']:,.0f}-{m['rps_max']:,.0f} | "
                f"{m['ratio']:.2f} ({m['ratio_min']:.2f}-{m['ratio_max']:.2f}) | "
                f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['errors']} / {m['requests']:,} |"
            )
    lines += ["", "This run: " + "; ".join(_reading(med, mode) for mode in ("cached", "uncached")) + "."]
    sessions = results.get("lb2_sessions", {})
    lines += [
        "",
        f"HAProxy spread the 2-replica cells over both (sessions api1 / api2: {sessions.get('api1')} / "
        f"{sessions.get('api2')}).",
        "",
        f"What the ratio means: this machine has {cores} cores, shared by the three replicas, HAProxy, "
        "PostgreSQL, Redis, the load generator and other jobs (load average before / after the run: "
        f"{results['load_average_before'][0]} / {results['load_average_after'][0]}). A replica with one uvicorn "
        "worker runs its Python on one core at a time, so a second replica mostly puts the second core to "
        "work: a 2-replica/direct ratio above 1 here is that core, not a second machine's capacity, and "
        "`1 replica with 2x the workers` (as many serving processes, no balancer) is the one-box alternative to "
        "compare it with. `HAProxy -> 1 replica` against `direct` is the balancer's own cost (one more hop on "
        "loopback, sharing the same 2 cores). The rounds' range is the run's noise: differences inside it are "
        "not results. On separate hosts each replica brings its own cores, and throughput should grow with the "
        "replicas until the shared PostgreSQL or Redis saturates; that is not measured here.",
    ]
    return "\n".join(lines) + "\n"


def _reading(med: dict[str, dict[str, dict[str, float]]], mode: str) -> str:
    """One clause per request kind: each paired ratio to direct, and whether every round agrees on its side."""
    direct = med[mode]["direct"]
    parts = []
    for target in ("lb1", "lb2", "direct2w"):
        m = med[mode][target]
        if m["ratio_min"] > 1:
            verdict = "faster than direct in every round"
        elif m["ratio_max"] < 1:
            verdict = "slower than direct in every round"
        else:
            verdict = "rounds disagree: not distinguishable here"
        parts.append(f"{LABELS[target]} {m['ratio']:.2f}x, p99 {m['p99_ms']:.0f} ms ({verdict})")
    return f"{mode}: direct {direct['rps']:,.0f} req/s, p99 {direct['p99_ms']:.0f} ms; " + ", ".join(parts)


def _haproxy_version() -> str:
    import subprocess

    out = subprocess.run([haproxy_binary(), "-v"], capture_output=True, text=True, check=False).stdout
    return out.split()[2] if out.startswith("HAProxy version") else "?"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--events-per-user", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per replica")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="var/bench/balancer", help="writes OUT.json and OUT.md")
    parser.add_argument("--update-docs", action="store_true", help=f"write '{HEADING}' in docs/BENCHMARKS.md")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the markdown from an earlier OUT.json")
    args = parser.parse_args()
    if args.render:
        results = json.loads(Path(args.render).read_text())
    else:
        results = bench(args)
    results["summary"] = summary(results)
    text = markdown(results)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(text)
    print(text)
    if args.update_docs:
        from scripts.benchdocs import update_section

        update_section(ROOT / "docs" / "BENCHMARKS.md", HEADING, text)


if __name__ == "__main__":
    main()
