"""Client overhead: events/s through the Python client's batcher (`reco_client.Reco.send_events` + `flush`)
against raw HTTP batches of the same size posted with httpx, in the same run, against one `reco serve`.

`reco serve` (one uvicorn worker, a private PostgreSQL database, access log off) runs in a subprocess. For
each batch size, rounds alternate raw / client / raw / client ... so drift on the shared machine hits both.
Raw: the events (with UUID event_ids, as the client assigns them: random ids cost the server's unique index
more than sequential ones, so both sides must use the same kind) are built as dicts, then posted batch by batch on one keep-alive connection
(`httpx.Client.post(json=...)`, the same JSON encoder the client uses). Client: the same dicts without
event_ids go to `send_events` (which checks them, assigns UUID event_ids and queues them; its background
thread posts full batches) and the clock stops when `flush()` returns, i.e. when the server acknowledged all.

    .venv/bin/python scripts/bench_client.py --events 20000 --batch 50,500,5000   # docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serve import _free_port, _wait_port, private_database  # noqa: E402
from benchdocs import update_section  # noqa: E402
from reco_client import Reco  # noqa: E402

from app.db.engine import make_engine  # noqa: E402
from app.db.migrate import upgrade  # noqa: E402
from app.settings import Settings  # noqa: E402

KEY = "bench-client-admin-key-000000000"


def events(n: int, tag: str, with_ids: bool) -> list[dict[str, Any]]:
    out = []
    for j in range(n):
        e: dict[str, Any] = {"user_id": f"u{j % 5000}", "item_id": f"i{j % 2000}", "type": "view"}
        if with_ids:  # what a raw caller does for idempotent retries, as the client does
            e["event_id"] = uuid.uuid4().hex
        out.append(e)
    return out


def raw_run(base: str, n: int, batch: int) -> float:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
        started = time.perf_counter()
        todo = events(n, uuid.uuid4().hex[:8], with_ids=True)
        for start in range(0, n, batch):
            r = http.post("/v1/events", json={"events": todo[start : start + batch]})
            assert r.status_code == 200 and r.json()["accepted"] == len(todo[start : start + batch]), r.text[
                :300
            ]
        return n / (time.perf_counter() - started)


def client_run(base: str, n: int, batch: int) -> float:
    with Reco(base, KEY, batch_size=batch, flush_interval=5.0, timeout=60) as reco:
        started = time.perf_counter()
        todo = events(n, "", with_ids=False)
        reco.send_events(todo)
        reco.flush()
        rate = n / (time.perf_counter() - started)
        assert reco.stats.accepted == n, reco.stats.accepted
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", default="50,500,5000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch.split(",")]
    results = []
    with private_database(args.admin_url) as url, tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(Settings(database_url=url))
        upgrade(engine)
        engine.dispose()
        port = _free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "RECO_DATABASE_URL": url,
            "RECO_ARTIFACT_DIR": str(Path(tmp) / "artifacts"),
            "RECO_API_KEYS": f"{KEY}:admin",
            "RECO_EMBEDDED_WORKER": "false",
            "RECO_LOG_LEVEL": "WARNING",
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from app.cli import main; sys.exit(main())",
                "serve",
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            _wait_port(port, timeout=60)
            base = f"http://127.0.0.1:{port}"
            raw_run(base, 1000, 500)  # warm-up
            client_run(base, 1000, 500)
            for batch in sizes:
                raw, client = [], []
                for _ in range(args.rounds):
                    raw.append(raw_run(base, args.events, batch))
                    client.append(client_run(base, args.events, batch))
                r, c = statistics.median(raw), statistics.median(client)
                results.append({"batch": batch, "raw": r, "client": c, "ratio": c / r})
                print(
                    f"batch {batch}: raw {r:,.0f} ev/s, client {c:,.0f} ev/s, ratio {c / r:.2f}", flush=True
                )
        finally:
            proc.terminate()
            proc.wait(30)
    command = f".venv/bin/python scripts/bench_client.py --events {args.events} --batch {args.batch}"
    lines = [
        "## Python client overhead (issue 15)",
        "",
        f"`{command}`: one `reco serve` worker on a private PostgreSQL database, {args.events:,} events per run,",
        f"median of {args.rounds} alternating rounds (raw httpx batches vs the client's batcher), 2-core shared machine.",
        "",
        "| batch | raw HTTP events/s | client events/s | client / raw |",
        "|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['batch']:,} | {r['raw']:,.0f} | {r['client']:,.0f} | {r['ratio']:.2f} |")
    worst = min(results, key=lambda r: r["ratio"])
    lines += [
        "",
        f"Goal >= 0.9x: worst {worst['ratio']:.2f} (batch {worst['batch']:,}). What the client adds per event is",
        "checking its fields, copying the dict and a UUID event_id (a few microseconds); per batch, one hand-off to",
        "the flusher thread. The server's insert dominates both columns, so the ratio stays near 1 at every size;",
        "small batches are slower in both for the same reason (one request, one transaction per batch).",
        "",
    ]
    if not args.no_docs:
        update_section(
            ROOT / "docs" / "BENCHMARKS.md", "## Python client overhead (issue 15)", "\n".join(lines)
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
