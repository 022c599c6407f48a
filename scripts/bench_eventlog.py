"""Benchmark ingestion through the JetStream event log against the direct path and a raw COPY, in one run.

Private engines, created here and removed at the end: a PostgreSQL database (migrated), a redis-server (the
cache) and a nats-server with JetStream (file storage in a temporary directory). The load is the one of
scripts/bench_ingest.py (pre-serialised batches of `--batch` events with unique ids over `--connections`
keep-alive connections from a separate process). For each `--workers` setting:

- direct: `reco serve` on PostgreSQL (the default path; stored when answered);
- jetstream (ack): `reco serve` with RECO_EVENT_LOG_URL, no consumer running: answered once JetStream stored
  the batch, the backlog left in the stream;
- consumer (drain): `reco consume` started on that backlog, timed until every event is in PostgreSQL;

then a paced run: the API (1 process) and the consumer together, offered the direct path's measured rate (1
process) for `--paced-seconds`, the stream's backlog (batches not yet written) sampled every 0.5 s: the consumer
keeps up when the backlog stays bounded and is gone soon after the load stops. A binary COPY of the same rows
into the emptied `events` table runs before, between and after; the best is the limit ratios are taken against.

    PYTHONPATH=. .venv/bin/python scripts/bench_eventlog.py --workers 1 2 --update-docs
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import orjson
import psycopg
import sqlalchemy as sa
from bench_ingest import (  # scripts/ is on sys.path when a script runs
    KEY,
    Run,
    add_load_arguments,
    bench_copy,
    bodies,
    count_events,
    free_port,
    load,
    make_events,
    percentile,
    truncate,
    wait_port,
)
from benchdocs import update_section
from sqlalchemy.engine import make_url

from app.db.engine import make_engine
from app.db.migrate import upgrade
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Ingestion through the JetStream event log (issue 14)"
RECO = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]
CONSUME = [sys.executable, "-m", "app.eventlog", "--log-every", "5"]
GOAL_ACK_RATIO = 0.5
HISTORY = (
    "Why the paced goal depends on the machine: per event the JetStream path does all the direct path's work "
    "(validation in the API, the same insert in PostgreSQL, by the consumer) plus a publish, the NATS server's "
    "write and the consumer's decode. Where the direct path alone already keeps both cores busy, as on this "
    "2-core box, API and consumer together cannot sustain that rate, whereas the consumer alone drains "
    "faster than the direct path (the drain rows above). Earlier runs: before partitioning, on a loaded machine "
    "(100,000 events: direct 7,984 and 7,948 events/s with 1 and 2 API processes, JetStream acknowledged 0.63 "
    "and 0.69 of COPY), paced at 7,984 events/s the backlog stayed within 6 batches (met); with a faster "
    "direct path (14,226 events/s), the backlog grew by about 1,800 events/s (at most 85 batches, gone 3 s "
    "after the load). Give the consumer its own cores, or run more `reco consume` processes on other hosts, "
    "where the direct path's full rate must be sustained through the log."
)


@dataclass(frozen=True, slots=True)
class Paced:
    """The paced run: offered rate, what was acknowledged, and the backlog over time."""

    offered_events_per_s: float
    seconds: float
    acked_events_per_s: float
    samples: list[tuple[float, int]]  # (seconds since start, batches in the stream not yet written)
    max_backlog: int
    drained_after_s: float  # from the end of the load until every event was in PostgreSQL
    batch: int


def server_env(db_url: str, redis_url: str, nats_url: str | None, stream: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RECO_DATABASE_URL": db_url,
        "RECO_REDIS_URL": redis_url,
        "RECO_API_KEYS": f"{KEY}:ingest",
        "RECO_LOG_LEVEL": "WARNING",
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_MODEL_POLL_SECONDS": "0",
        "RECO_CATALOG_POLL_SECONDS": "0",
        "RECO_POPULAR_POLL_SECONDS": "0",
    }
    if nats_url:
        env |= {
            "RECO_EVENT_LOG_URL": nats_url,
            "RECO_EVENT_LOG_STREAM": stream,
            "RECO_EVENT_LOG_SUBJECT": f"bench.{stream.lower()}",
            "RECO_EVENT_LOG_DURABLE": f"bench-{stream.lower()}",
            "RECO_EVENT_LOG_TIMEOUT_S": "10",
        }
    return env


class Server:
    """`reco serve` (or `reco consume`) in a subprocess, its output kept for errors."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def serve(env: dict[str, str], workers: int) -> tuple[Server, int]:
    port = free_port()
    server = Server([*RECO, "serve", "--port", str(port), "--workers", str(workers)], env)
    wait_port(port, server.proc)
    return server, port


def push(port: int, payloads: list[bytes], connections: int) -> dict[str, Any]:
    """bench_ingest's load process: every payload once, as fast as the server answers."""
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    loader = ctx.Process(target=load, args=(port, payloads, connections, result))
    loader.start()
    out = result.get()
    loader.join()
    if out["n_errors"]:
        raise RuntimeError(f"{out['n_errors']} failed requests, e.g. {out['errors']}")
    return out


def backlog(nats_url: str, stream: str) -> int:
    """Batches in the stream (work-queue retention: not yet written and acknowledged by the consumer)."""

    async def read() -> int:
        nc = await nats.connect(nats_url)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        finally:
            await nc.close()

    return asyncio.run(read())


def wait_stored(db_url: str, n: int, timeout: float = 600.0) -> float:
    started = time.perf_counter()
    while count_events(db_url) < n:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"fewer than {n} events stored after {timeout} s")
        time.sleep(0.1)
    return time.perf_counter() - started


def run_direct(
    db_url: str, redis_url: str, payloads: list[bytes], warmup: list[bytes], workers: int, connections: int
) -> Run:
    truncate(db_url)
    server, port = serve(server_env(db_url, redis_url, None, ""), workers)
    try:
        push(port, warmup, connections)
        out = push(port, payloads, connections)
    finally:
        server.stop()
    n = sum(len(orjson.loads(p)["events"]) for p in payloads)
    assert out["accepted"] == n and count_events(db_url) == n + sum(
        len(orjson.loads(p)["events"]) for p in warmup
    )
    return _run("direct (PostgreSQL)", workers, connections, n, out)


def _run(method: str, workers: int | None, connections: int | None, n: int, out: dict[str, Any]) -> Run:
    lat = out["latencies"]
    return Run(
        method=method,
        workers=workers,
        connections=connections,
        events=n,
        seconds=out["seconds"],
        events_per_s=n / out["seconds"],
        p50_ms=1000 * percentile(lat, 0.5) if lat else None,
        p99_ms=1000 * percentile(lat, 0.99) if lat else None,
    )


def run_jetstream(
    db_url: str,
    redis_url: str,
    nats_url: str,
    payloads: list[bytes],
    warmup: list[bytes],
    workers: int,
    connections: int,
) -> tuple[Run, Run]:
    """Acknowledgement rate with no consumer running, then the consumer's drain rate of that backlog."""
    truncate(db_url)
    stream = f"BENCH_{uuid.uuid4().hex[:8]}"
    env = server_env(db_url, redis_url, nats_url, stream)
    server, port = serve(env, workers)
    try:
        push(port, warmup, connections)
        out = push(port, payloads, connections)
    finally:
        server.stop()
    n = sum(len(orjson.loads(p)["events"]) for p in payloads)
    n_warm = sum(len(orjson.loads(p)["events"]) for p in warmup)
    assert out["accepted"] == n
    ack = _run("jetstream (acknowledged)", workers, connections, n, out)
    consumer = Server(CONSUME, {**env, "RECO_LOG_LEVEL": "INFO"})
    total = n + n_warm
    try:
        started = time.perf_counter()
        first: tuple[float, int] | None = None  # (time, rows) of the first commit seen: the start is left out
        while True:
            rows, now = count_events(db_url), time.perf_counter()
            if rows and first is None:
                first = (now, rows)
            if rows >= total:
                break
            if consumer.proc.poll() is not None or now - started > 600:
                raise RuntimeError(f"consumer stopped or stalled at {rows} of {total}: {consumer.tail()}")
            time.sleep(0.05)
    finally:
        consumer.stop()
    assert first is not None
    if first[1] < total:
        events_per_s, seconds = (total - first[1]) / (now - first[0]), now - first[0]
    else:  # one transaction took it all: count the consumer's start too
        events_per_s, seconds = total / (now - started), now - started
    drain = Run(
        method="consumer (drain to PostgreSQL)",
        workers=None,
        connections=None,
        events=total,
        seconds=seconds,
        events_per_s=events_per_s,
        p50_ms=None,
        p99_ms=None,
    )
    return ack, drain


def paced_load(
    port: int, payloads: list[bytes], connections: int, rate: float, batch: int, result: Any
) -> None:
    """Send batch i at start + i * batch / rate (or as soon as a connection is free after it)."""
    lock = threading.Lock()
    nxt = [0]
    acked = [0]
    errors: list[str] = []
    started = time.perf_counter()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        while True:
            with lock:
                i = nxt[0]
                if i >= len(payloads):
                    break
                nxt[0] += 1
            wait = started + i * batch / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            conn.request("POST", "/v1/events", body=payloads[i], headers=headers)
            response = conn.getresponse()
            data = response.read()
            with lock:
                if response.status == 200:
                    acked[0] += orjson.loads(data)["accepted"]
                else:
                    errors.append(f"{response.status}: {data[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.put(
        {
            "started": started,
            "seconds": time.perf_counter() - started,
            "acked": acked[0],
            "errors": errors[:5],
        }
    )


def run_paced(
    db_url: str,
    redis_url: str,
    nats_url: str,
    events: list[tuple[str, str, str, str, float, datetime]],
    rate: float,
    seconds: float,
    batch: int,
    connections: int,
) -> Paced:
    truncate(db_url)
    stream = f"BENCH_{uuid.uuid4().hex[:8]}"
    env = server_env(db_url, redis_url, nats_url, stream)
    n = min(len(events), int(rate * seconds) // batch * batch)
    payloads = bodies(events[:n], batch)
    server, port = serve(env, 1)
    consumer = Server(CONSUME, {**env, "RECO_LOG_LEVEL": "INFO"})
    samples: list[tuple[float, int]] = []
    try:
        time.sleep(2.0)  # the consumer is connected
        ctx = mp.get_context("spawn")
        result = ctx.Queue()
        loader = ctx.Process(target=paced_load, args=(port, payloads, connections, rate, batch, result))
        loader.start()
        while loader.is_alive():  # perf_counter is the system's monotonic clock: the loader's compares
            samples.append((time.perf_counter(), backlog(nats_url, stream)))
            time.sleep(0.5)
        out = result.get()
        loader.join()
        if out["errors"]:
            raise RuntimeError(f"failed requests, e.g. {out['errors']}")
        wait_stored(db_url, n)
        drained = max(0.0, time.perf_counter() - (out["started"] + out["seconds"]))  # from the last answer
        samples.append((time.perf_counter(), backlog(nats_url, stream)))
        samples = [(t - out["started"], b) for t, b in samples if t >= out["started"]]
    finally:
        consumer.stop()
        server.stop()
    return Paced(
        offered_events_per_s=rate,
        seconds=out["seconds"],
        acked_events_per_s=out["acked"] / out["seconds"],
        samples=samples,
        max_backlog=max(b for _, b in samples),
        drained_after_s=drained,
        batch=batch,
    )


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (t, y) points (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / var if var else 0.0


def markdown(runs: list[Run], paced: Paced | None, args: argparse.Namespace, machine: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `PYTHONPATH=. .venv/bin/python scripts/bench_eventlog.py --events {args.events} "
        f"--batch {args.batch} --connections {args.connections} --workers {' '.join(map(str, args.workers))} "
        f"--paced-seconds {args.paced_seconds:g} --update-docs` (JSON in `{args.json}`).",
        f"Machine: {machine['machine']}, {machine['cpus']} CPUs shared by the API, the consumer, PostgreSQL "
        f"{machine['postgres']}, nats-server {machine['nats']} (JetStream, file storage), a private "
        f"redis-server and the load process; {machine['python']}. The machine was shared with other work "
        f"(load average {machine['load']} at the start): compare rows of this run only.",
        f"Load: {args.events:,} events in batches of {args.batch} (unique event ids), {args.connections} "
        "keep-alive connections from a separate process, a warm-up per run not counted. `direct`: the default "
        "path (stored in PostgreSQL when answered). `jetstream (acknowledged)`: RECO_EVENT_LOG_URL set, no "
        "consumer running: answered once JetStream has the batch on disk. `consumer (drain)`: `reco consume` "
        "started on that backlog (RECO_EVENT_LOG_WRITERS=4), timed from its first commit until every event is in "
        "PostgreSQL (events/s over the rows written after that first commit). COPY: the same rows "
        "by binary COPY into the emptied table, before, between and after; the best is `of COPY`'s limit.",
        "",
        "| method | API processes | events | seconds | events/s | of COPY | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ratio = f"{r.ratio_to_copy:.2f}" if r.ratio_to_copy is not None else "-"
        p50 = f"{r.p50_ms:.1f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.1f}" if r.p99_ms is not None else "-"
        lines.append(
            f"| {r.method} | {r.workers or '-'} | {r.events:,} | {r.seconds:.2f} | {r.events_per_s:,.0f} | "
            f"{ratio} | {p50} | {p99} |"
        )
    acks = [r for r in runs if r.method.startswith("jetstream")]
    if acks:
        best = max(acks, key=lambda r: r.events_per_s)
        ok = "met" if (best.ratio_to_copy or 0) >= GOAL_ACK_RATIO else "NOT met"
        lines += [
            "",
            f"Goal: the JetStream path acknowledges at >= 1/2 of COPY's rate: {ok} ({best.ratio_to_copy:.2f} of "
            f"the best COPY, {best.workers} API process(es)).",
        ]
    if paced is not None:
        every = max(1, len(paced.samples) // 12)
        shown = paced.samples[::every]
        if shown[-1] != paced.samples[-1]:
            shown.append(paced.samples[-1])
        during = [(t, b) for t, b in paced.samples[:-1] if t <= paced.seconds]  # while the load ran
        slope = _slope(during) * paced.batch  # events/s by which the backlog grew during the load
        bounded = slope <= 0.05 * paced.offered_events_per_s and paced.drained_after_s < 10
        lines += [
            "",
            f"Paced: API (1 process) and consumer together, offered {paced.offered_events_per_s:,.0f} events/s "
            f"(the direct path's rate with 1 process above) for {paced.seconds:.1f} s; acknowledged "
            f"{paced.acked_events_per_s:,.0f} events/s. Backlog = batches of {paced.batch} in the stream not yet "
            "written to PostgreSQL, sampled from the stream (samples after the load's "
            f"{paced.seconds:.1f} s show the drain; the last is after it):",
            "",
            "| seconds | " + " | ".join(f"{t:.1f}" for t, _ in shown) + " |",
            "|---|" + "---:|" * len(shown),
            "| backlog (batches) | " + " | ".join(str(b) for _, b in shown) + " |",
            "",
            f"Goal: the consumer keeps up at the direct path's rate (backlog bounded): "
            f"{'met' if bounded else 'NOT met'} (the backlog grew by {slope:,.0f} events/s over the load, a "
            f"least-squares slope, against {paced.offered_events_per_s:,.0f} offered: met below 5 %; at most "
            f"{paced.max_backlog} batches behind; everything stored {paced.drained_after_s:.1f} s after the load "
            "ended).",
        ]
    lines += ["", HISTORY]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_load_arguments(parser, events=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--paced-seconds", type=float, default=10.0, help="0: no paced run")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--json", type=Path, default=Path("var/bench/eventlog.json"))
    parser.add_argument(
        "--update-docs", action="store_true", help="rewrite the section in docs/BENCHMARKS.md"
    )
    args = parser.parse_args()

    events = make_events(args.events, 1, args.users, args.items)
    payloads = bodies(events, args.batch)
    warmup = bodies(make_events(args.batch * 4, 2, args.users, args.items), args.batch)

    name = f"reco_bench_{uuid.uuid4().hex[:8]}"
    base = make_url(args.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db_url = base.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")
    redis_bin, nats_bin = shutil.which("redis-server"), shutil.which("nats-server") or "/usr/sbin/nats-server"
    if redis_bin is None or not Path(nats_bin).exists():
        raise SystemExit("redis-server and nats-server are needed")
    redis_port, nats_port = free_port(), free_port()
    redis_proc = subprocess.Popen(
        [redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    store = tempfile.mkdtemp(prefix="reco-bench-nats-")
    nats_proc = subprocess.Popen(
        [nats_bin, "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    redis_url, nats_url = f"redis://127.0.0.1:{redis_port}/0", f"nats://127.0.0.1:{nats_port}"
    runs: list[Run] = []
    paced: Paced | None = None
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        engine = make_engine(Settings(database_url=db_url))
        upgrade(engine)
        engine.dispose()
        with psycopg.connect(db_url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        nats_version = subprocess.run([nats_bin, "--version"], capture_output=True, text=True).stdout.strip()
        copies = [bench_copy(db_url, events)]
        print(f"copy: {copies[-1].events_per_s:,.0f} rows/s", flush=True)
        direct_rate: dict[int, float] = {}
        for workers in args.workers:
            direct = run_direct(db_url, redis_url, payloads, warmup, workers, args.connections)
            direct_rate[workers] = direct.events_per_s
            print(f"direct workers={workers}: {direct.events_per_s:,.0f} events/s", flush=True)
            ack, drain = run_jetstream(
                db_url, redis_url, nats_url, payloads, warmup, workers, args.connections
            )
            print(
                f"jetstream workers={workers}: {ack.events_per_s:,.0f} events/s acknowledged; consumer drains "
                f"{drain.events_per_s:,.0f} events/s",
                flush=True,
            )
            runs += [direct, ack, drain]
            copies.append(bench_copy(db_url, events))
            print(f"copy: {copies[-1].events_per_s:,.0f} rows/s", flush=True)
        if args.paced_seconds > 0:
            rate = direct_rate.get(1) or next(iter(direct_rate.values()))
            paced = run_paced(
                db_url, redis_url, nats_url, events, rate, args.paced_seconds, args.batch, args.connections
            )
            print(
                f"paced at {rate:,.0f}/s: max backlog {paced.max_backlog}, drained {paced.drained_after_s:.1f} s"
            )
        limit = max(c.events_per_s for c in copies)
        runs = [Run(**{**asdict(r), "ratio_to_copy": r.events_per_s / limit}) for r in [*runs, *copies]]
    finally:
        nats_proc.kill()
        nats_proc.wait()
        shutil.rmtree(store, ignore_errors=True)
        redis_proc.kill()
        redis_proc.wait()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    machine = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": f"Python {platform.python_version()}",
        "postgres": version[0] if version else "?",
        "nats": nats_version.split()[-1] if nats_version else "?",
        "load": load_avg,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": machine,
                "args": {k: str(v) for k, v in vars(args).items()},
                "runs": [asdict(r) for r in runs],
                "paced": asdict(paced) if paced else None,
            },
            indent=2,
        )
    )
    section = markdown(runs, paced, args, machine)
    print(section)
    if args.update_docs:
        update_section(ROOT / "docs" / "BENCHMARKS.md", SECTION, section)


if __name__ == "__main__":
    main()
