"""Serving benchmark: throughput and latency of the API under load from a separate process.

Against one uvicorn worker with production settings (PostgreSQL, Redis, access log off, uvloop/httptools),
for each synthetic catalog size it measures, at concurrency 1 and 8:
  - `bare`: an endpoint of the same app (added by this script's app factory only) returning a JSON body of the
    size of a 10-item answer without any work: the ceiling;
  - `cached`: GET /v1/users/{u}/recommendations?k=10 for a few warmed users (every answer a cache hit);
  - `uncached`: the same for a different user every request, none read since the server started (every answer
    a miss: one store query for the latest events, the user tower, FAISS top-k, one cache write that keeps the
    answer and the user's latest events);
  - `active`: a different user every request, each made active first as on a live site (one earlier
    recommendation read, then a click through POST /v1/events: the click bumps the user's generation and is
    put on their latest-events list in the cache), so every answer is a miss that reads no store;
and freshness: from the acknowledgement of POST /v1/events (the user clicks their top item) to an answer that
reflects it (that item is gone: seen items are excluded).

The catalog is a synthetic model version written through the artifacts API (`save_version` of a randomly
initialised two-tower model whose item id embeddings are set to clustered random vectors, d = 64); users and
their events are real rows in a private PostgreSQL database (dropped at the end) and a private redis-server.

    .venv/bin/python scripts/bench_serve.py --items 100000,1000000   # writes var/bench/serve.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
import torch
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from starlette.responses import Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.api.app import create_app_from_env  # noqa: E402
from app.artifacts import save_version  # noqa: E402
from app.db.engine import make_engine, make_sessionmaker, run_transaction  # noqa: E402
from app.db.migrate import upgrade  # noqa: E402
from app.db.tables import ModelVersion  # noqa: E402
from app.events.service import load_events  # noqa: E402
from app.ml.config import ModelConfig, TrainConfig  # noqa: E402
from app.ml.model import RecModel  # noqa: E402
from app.ml.train import FitResult  # noqa: E402
from app.records import EventRecord  # noqa: E402
from app.registry.repository import activate  # noqa: E402
from app.settings import Settings  # noqa: E402

KEY = "bench-read-key-000000000000"
ADMIN = "bench-admin-key-00000000000"
CACHED_USERS = 50
TYPES = ["view", "click", "add_to_cart", "purchase"]


# ---- the app under test ----------------------------------------------------------------------------------


def bench_app() -> FastAPI:
    """The production app plus `/bench/bare` (this script's factory only): a fixed body, no work at all."""
    app = create_app_from_env()
    items = [{"item_id": f"i{100_000 + j}", "score": round(3.1234567 - j / 10, 6)} for j in range(10)]
    body = orjson.dumps(
        {"user_id": "u12345", "model_version": "bench-1000000", "strategy": "personalized", "items": items}
    )

    @app.get("/bench/bare", include_in_schema=False)
    async def bare() -> Response:
        return Response(body, media_type="application/json", headers={"X-Cache": "none"})

    return app


# ---- load generator (runs in its own process) ------------------------------------------------------------


async def _one_connection(
    port: int, paths: Iterator[str], deadline: float, out: list[tuple[float, int, bool]]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {KEY}\r\n"
    try:
        while time.perf_counter() < deadline:
            path = next(paths, None)
            if path is None:  # a finite walk (priming) is done
                break
            start = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            hit = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-cache":
                    hit = value.strip() == b"hit"
            await reader.readexactly(length)
            status = int(head.split(b" ", 2)[1])
            out.append((time.perf_counter() - start, status, hit))
    finally:
        writer.close()


def _paths(mode: str, first_user: int, last_user: int | None = None) -> Iterator[str]:
    if mode == "bare":
        while True:
            yield "/bench/bare"
    if mode == "cached":
        n = 0
        while True:
            yield f"/v1/users/u{n % CACHED_USERS}/recommendations?k=10"
            n += 1
    user = first_user
    while last_user is None or user < last_user:
        yield f"/v1/users/u{user}/recommendations?k=10"
        user += 1


async def _load(
    port: int, mode: str, concurrency: int, duration: float, first_user: int, last_user: int | None = None
) -> dict[str, Any]:
    # one walk shared by every connection: each request takes the next path
    paths = _paths("uncached" if mode in ("active", "prime") else mode, first_user, last_user)
    warm: list[tuple[float, int, bool]] = []
    if mode != "prime":
        await asyncio.gather(
            *[_one_connection(port, paths, time.perf_counter() + 0.5, warm) for _ in range(concurrency)]
        )
    out: list[tuple[float, int, bool]] = []
    started = time.perf_counter()
    await asyncio.gather(*[_one_connection(port, paths, started + duration, out) for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    lat = np.array([o[0] for o in out]) * 1000.0  # [n] ms
    return {
        "mode": mode,
        "concurrency": concurrency,
        "requests": len(out),
        "rps": round(len(out) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "errors": sum(1 for o in out if o[1] != 200),
        "cache_hits": sum(1 for o in out if o[2]),
        "users_used": len(out) + len(warm) if mode in ("uncached", "active") else None,
    }


def loadgen_main(args: argparse.Namespace) -> None:
    """Entry of the load-generator process: prints one JSON line."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        _load(args.port, args.mode, args.concurrency, args.duration, args.first_user, args.last_user)
    )
    print(json.dumps(result))


def run_load(
    port: int, mode: str, concurrency: int, duration: float, first_user: int, last_user: int | None = None
) -> dict[str, Any]:
    """Run the load generator in a separate process and return its figures (`last_user`: stop there)."""
    cmd = [sys.executable, __file__, "loadgen", "--port", str(port), "--mode", mode]
    cmd += ["--concurrency", str(concurrency), "--duration", str(duration), "--first-user", str(first_user)]
    if last_user is not None:
        cmd += ["--last-user", str(last_user)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 120)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---- fixtures: database, redis, synthetic model ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway redis-server (no persistence) on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (or pass --cache memory)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def private_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database on the server of `admin_url`, dropped at the end."""
    name = f"reco_bench_{uuid.uuid4().hex[:8]}"
    base = make_url(admin_url.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def synthetic_version(n_items: int, artifact_dir: Path, version: str, seed: int = 0) -> Path:
    """A model version of `n_items` clustered random item vectors (d = 64) written by `save_version`."""
    cfg = ModelConfig(d=64, max_len=50, layers=2, heads=2, dropout=0.0, attn_dropout=0.0, max_features=2)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    features = torch.zeros((n_items, cfg.max_features), dtype=torch.long)  # [N, F]: no features
    model = RecModel(n_items, len(TYPES), features, cfg)
    n_clusters = max(16, int(np.sqrt(n_items)))
    centers = rng.normal(size=(n_clusters, cfg.d + 1)).astype(np.float32)  # [C, d+1]
    assign = rng.integers(n_clusters, size=n_items)  # [N]
    vectors = centers[assign] + 0.5 * rng.normal(size=(n_items, cfg.d + 1)).astype(np.float32)  # [N, d+1]
    with torch.no_grad():
        for tower in model.towers:  # one member: the served vectors are its (v, b) rows
            tower.items.id_table.weight.copy_(torch.from_numpy(0.2 * vectors))
    result = FitResult(
        model=model.eval(),
        config=TrainConfig(model=cfg, device="cpu"),
        item_ids=[f"i{j}" for j in range(n_items)],
        type_names=list(TYPES),
        metrics={},
        data_stats={"items": n_items, "synthetic": True},
        timings={},
    )
    return save_version(result, artifact_dir, version)


def load_users(settings: Settings, users: int, per_user: int, n_items: int, seed: int = 0) -> None:
    """`users` users with `per_user` events each on the first `n_items` items, the newest an hour ago."""
    rng = random.Random(seed)
    end = datetime.now(UTC) - timedelta(hours=1)
    records = []
    for u in range(users):
        start = rng.randrange(n_items)
        for j in range(per_user):
            item = (start + rng.randrange(50)) % n_items  # a neighbourhood of items per user
            ts = end - timedelta(minutes=per_user - j, seconds=u % 60)
            records.append(EventRecord(f"u{u}", f"i{item}", rng.choice(TYPES), ts, event_id=f"b-{u}-{j}"))
    engine = make_engine(settings)
    upgrade(engine)
    load_events(make_sessionmaker(engine), records, source="bench")
    engine.dispose()


def register(settings: Settings, version: str) -> None:
    """Add the version's row and make it the active one."""
    engine = make_engine(settings)

    def write(session: Any) -> None:
        session.add(ModelVersion(version=version, status="candidate", metrics={}, data_stats={}, timings={}))
        session.flush()
        activate(session, version)

    run_transaction(make_sessionmaker(engine), write)
    engine.dispose()


# ---- server ----------------------------------------------------------------------------------------------


@contextmanager
def server(env: dict[str, str], port: int, workers: int) -> Iterator[subprocess.Popen[bytes]]:
    """uvicorn with this script's app factory, as `reco serve` runs it (access log off, uvloop, httptools)."""
    cmd = [sys.executable, "-m", "uvicorn", "scripts.bench_serve:bench_app", "--factory", "--port", str(port)]
    cmd += ["--workers", str(workers), "--no-access-log", "--log-level", "warning", "--loop", "uvloop"]
    cmd += ["--http", "httptools"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env})
    try:
        _wait_port(port, timeout=600)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _http(
    port: int, method: str, path: str, body: bytes | None = None, key: str = KEY
) -> tuple[int, dict, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n"
        )
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + (body or b""))
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    raw_head, _, payload = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, orjson.loads(payload) if payload else None


def wait_ready(port: int, version: str, timeout: float = 900) -> None:
    """Until /readyz says ready and serves `version`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _, body = _http(port, "GET", "/readyz")
            if status == 200 and body["serving"]["model_version"] == version:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server did not serve {version} in {timeout} s")


def make_active(port: int, first_user: int, last_user: int, n_items: int) -> float:
    """Users [first, last) as on a live site: one recommendation read each (the miss keeps their latest events
    in the cache), then a click each through POST /v1/events (batches of 1000). Returns the seconds taken."""
    started = time.perf_counter()
    run_load(port, "prime", 8, 3600, first_user, last_user)
    tag = uuid.uuid4().hex[:8]
    for start in range(first_user, last_user, 1000):
        events = [
            {
                "user_id": f"u{u}",
                "item_id": f"i{(u * 7919) % n_items}",
                "type": "click",
                "event_id": f"a-{tag}-{u}",
            }
            for u in range(start, min(start + 1000, last_user))
        ]
        status, _, ack = _http(port, "POST", "/v1/events", orjson.dumps({"events": events}), key=ADMIN)
        assert status == 200 and ack["accepted"] == len(events), ack
    return time.perf_counter() - started


def freshness(port: int, first_user: int, trials: int) -> dict[str, Any]:
    """Click the user's top item, then ask again: time from the event's ack to the answer without it."""
    times, reflected = [], 0
    for t in range(trials):
        user = f"u{first_user + t}"
        _, _, before = _http(port, "GET", f"/v1/users/{user}/recommendations?k=10")
        top = before["items"][0]["item_id"]
        event = {"user_id": user, "item_id": top, "type": "click", "event_id": f"fresh-{uuid.uuid4().hex}"}
        status, _, ack = _http(port, "POST", "/v1/events", orjson.dumps({"events": [event]}), key=ADMIN)
        assert status == 200 and ack["accepted"] == 1, ack
        acked = time.perf_counter()
        _, headers, after = _http(port, "GET", f"/v1/users/{user}/recommendations?k=10")
        times.append((time.perf_counter() - acked) * 1000.0)
        reflected += top not in [i["item_id"] for i in after["items"]] and headers.get("x-cache") == "miss"
    lat = np.array(times)
    return {
        "trials": trials,
        "reflected": reflected,
        "ack_to_answer_p50_ms": round(float(np.percentile(lat, 50)), 3),
        "ack_to_answer_max_ms": round(float(lat.max()), 3),
    }


# ---- orchestration ---------------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of the run."""
    sizes = [int(s) for s in args.items.split(",")]
    work = Path(tempfile.mkdtemp(prefix="reco-bench-"))
    results: dict[str, Any] = {
        "command": "python scripts/bench_serve.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with the load generator)",
        "workers": args.workers,
        "duration_s": args.duration,
        "users": args.users,
        "events_per_user": args.events_per_user,
        "runs": [],
    }
    try:
        with private_redis() as redis_url, private_database(args.database_url) as db_url:
            results["store"] = "postgresql (private database on the local server)"
            results["cache"] = "redis (private redis-server)"
            base = Settings(database_url=db_url, redis_url=redis_url, artifact_dir=work / "artifacts")
            t0 = time.perf_counter()
            load_users(base, args.users, args.events_per_user, min(sizes))
            results["load_events_s"] = round(time.perf_counter() - t0, 1)
            next_user = CACHED_USERS
            for n in sizes:
                version = f"bench-{n:07d}"
                t0 = time.perf_counter()
                synthetic_version(n, base.artifact_dir, version)
                register(base, version)
                artifact_s = time.perf_counter() - t0
                port = _free_port()
                env = {
                    "RECO_DATABASE_URL": db_url,
                    "RECO_REDIS_URL": redis_url,
                    "RECO_ARTIFACT_DIR": str(base.artifact_dir),
                    "RECO_API_KEYS": f"{KEY}:read,{ADMIN}:admin",
                    "RECO_LOG_LEVEL": "WARNING",
                    "RECO_EMBEDDED_WORKER": "false",
                }
                t0 = time.perf_counter()
                with server(env, port, args.workers):
                    wait_ready(port, version)
                    run: dict[str, Any] = {
                        "items": n,
                        "version": version,
                        "artifact_write_s": round(artifact_s, 1),
                        "server_ready_s": round(time.perf_counter() - t0, 1),
                        "load_average_before": [round(x, 2) for x in os.getloadavg()],
                        "loads": [],
                    }
                    run["index"] = _http(port, "GET", "/readyz")[2]["serving"]["index"]
                    for u in range(CACHED_USERS):  # warm the cached users
                        _http(port, "GET", f"/v1/users/u{u}/recommendations?k=10")
                    cold_rps = {}
                    for mode in ("bare", "cached", "uncached"):
                        for concurrency in (1, 8):
                            result = run_load(port, mode, concurrency, args.duration, next_user)
                            if mode == "uncached":
                                next_user += result["users_used"] + 8
                                cold_rps[concurrency] = result["rps"]
                            print(json.dumps({"items": n, **result}), flush=True)
                            run["loads"].append(result)
                    for concurrency in (1, 8):  # misses whose latest events the cache holds
                        walk = int(
                            max(cold_rps[concurrency], 100) * args.active_factor * (args.duration + 0.5)
                        )
                        if next_user + walk >= args.users:
                            raise SystemExit(
                                f"--users {args.users} is too few: {next_user + walk} were needed"
                            )
                        primed_s = make_active(port, next_user, next_user + walk, n)
                        result = run_load(
                            port, "active", concurrency, args.duration, next_user, next_user + walk
                        )
                        result.update(primed_users=walk, primed_s=round(primed_s, 1))
                        result["walk_exhausted"] = result["users_used"] >= walk
                        next_user += walk + 8
                        print(json.dumps({"items": n, **result}), flush=True)
                        run["loads"].append(result)
                    run["freshness"] = freshness(port, next_user, args.freshness_trials)
                    next_user += args.freshness_trials
                    print(json.dumps({"items": n, "freshness": run["freshness"]}), flush=True)
                    if next_user >= args.users:
                        raise SystemExit(f"--users {args.users} is too few: {next_user} were needed")
                    run["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
                    results["runs"].append(run)
                shutil.rmtree(base.artifact_dir / version, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


LABELS = {
    "bare": "bare",
    "cached": "cached",
    "uncached": "uncached, cold user (store read)",
    "active": "uncached, active user (events in cache)",
}


def markdown(results: dict[str, Any]) -> str:
    """The results as a table, each figure beside the bare endpoint's."""
    lines = [
        f"`{results['command']}`",
        "",
        f"{results['machine']}; {results['workers']} uvicorn worker; {results['store']}; {results['cache']}; "
        f"{results['users']} users x {results['events_per_user']} events; {results['duration_s']} s per cell.",
        "",
        "| items | endpoint | conc. | req/s | vs bare | p50 ms | p99 ms | errors | cache hits |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        bare = {r["concurrency"]: r["rps"] for r in run["loads"] if r["mode"] == "bare"}
        for r in run["loads"]:
            ratio = r["rps"] / bare[r["concurrency"]] if bare.get(r["concurrency"]) else float("nan")
            lines.append(
                f"| {run['items']:,} | {LABELS[r['mode']]} | {r['concurrency']} | {r['rps']:,.0f} | {ratio:.2f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {r['cache_hits']}/{r['requests']} |"
            )
    lines += [
        "",
        "| items | index | server ready s | freshness: ack -> answer p50 / max ms | reflected | load avg |",
        "|---:|---|---:|---|---:|---|",
    ]
    for run in results["runs"]:
        f = run["freshness"]
        lines.append(
            f"| {run['items']:,} | {run.get('index', '?')} | {run['server_ready_s']} | "
            f"{f['ack_to_answer_p50_ms']:.2f} / {f['ack_to_answer_max_ms']:.2f} | {f['reflected']}/{f['trials']} | "
            f"{run['load_average_before'][0]} -> {run['load_average_after'][0]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments; run the benchmark (or, as a child process, the load generator)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("loadgen", help="(internal) the load generator process")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument("--mode", choices=["bare", "cached", "uncached", "active", "prime"], required=True)
    gen.add_argument("--concurrency", type=int, default=1)
    gen.add_argument("--duration", type=float, default=5.0)
    gen.add_argument("--first-user", type=int, default=CACHED_USERS)
    gen.add_argument("--last-user", type=int, default=None)
    parser.add_argument("--items", default="100000,1000000", help="catalog sizes, comma separated")
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument(
        "--active-factor",
        type=float,
        default=5.0,
        help="users made active per active cell, as a multiple of the cold cell's requests",
    )
    parser.add_argument("--events-per-user", type=int, default=15)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load cell")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--freshness-trials", type=int, default=20)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("RECO_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server where a private database may be created",
    )
    parser.add_argument("--out", default="var/bench/serve", help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    if args.command == "loadgen":
        loadgen_main(args)
        return
    torch.set_num_threads(2)
    results = bench(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
