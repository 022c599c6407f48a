"""The dashboard overview's data requests on a store of N events (issue 13): each must answer in < 50 ms p99.

Per size (events spread over the last 24 h across 5 types, 1 user per 20 events, 1 item per 50), loaded
through the same bulk path as imports (`load_events`, which also feeds the per-minute `event_counts`
rollup), in a private PostgreSQL database, the app is started in-process (TestClient: its own overhead is
in every figure, measured as `/healthz` in the same run) and each request of the overview page is timed
500 times: the page itself (`GET /dashboard`, server-rendered counts, cache and latency cards), its chart data
(`GET /v1/admin/stats/events?window=1h&bucket=60`, and `window=24h` for the "last day" toggle) and the JSON
overview (`GET /v1/admin/stats/overview`).

    .venv/bin/python scripts/bench_dashboard.py --events 10000,100000,1000000   # docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serve import private_database  # noqa: E402
from benchdocs import update_section  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from app.api.app import create_app  # noqa: E402
from app.db.engine import make_engine, make_sessionmaker  # noqa: E402
from app.db.migrate import upgrade  # noqa: E402
from app.events.service import compact_rollup, load_events  # noqa: E402
from app.records import EventRecord  # noqa: E402
from app.settings import Settings  # noqa: E402

KEY = "bench-dashboard-admin-key-0000000"
TYPES = ["view", "click", "add_to_cart", "purchase", "rating"]
REQUESTS = {
    "floor: GET /healthz": "/healthz",
    "GET /dashboard (the page)": "/dashboard",
    "GET /v1/admin/stats/events?window=1h": "/v1/admin/stats/events?window=1h&bucket=60",
    "GET /v1/admin/stats/events?window=24h (the page's 10-min points)": "/v1/admin/stats/events?window=24h&bucket=600",
    "GET /v1/admin/stats/events?window=24h&bucket=60 (finest)": "/v1/admin/stats/events?window=24h&bucket=60",
    "GET /v1/admin/stats/overview": "/v1/admin/stats/overview",
}


def load(url: str, n: int, seed: int = 0) -> float:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    users, items = max(1, n // 20), max(1, n // 50)
    records = (
        EventRecord(
            f"u{rng.randrange(users)}",
            f"i{rng.randrange(items)}",
            TYPES[rng.randrange(len(TYPES))],
            now - timedelta(seconds=rng.uniform(0, 86_400)),
            event_id=f"d-{j}",
        )
        for j in range(n)
    )
    engine = make_engine(Settings(database_url=url))
    upgrade(engine)
    started = time.perf_counter()
    sessions = make_sessionmaker(engine)
    load_events(sessions, records, source="bench")
    compact_rollup(sessions)  # what the API's background pass does within 30 s
    # the store at rest: without this, autovacuum's first pass over the freshly loaded events (a 1M-row
    # scan) may run during the timed requests and put its CPU into their p99 on a 2-core machine
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE) events")
        conn.exec_driver_sql("VACUUM (ANALYZE) event_counts")
    engine.dispose()
    return time.perf_counter() - started


def bench(url: str, n: int, repeats: int) -> dict[str, Any]:
    loaded_s = load(url, n)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=url,
            artifact_dir=Path(tmp) / "artifacts",
            api_keys=[f"{KEY}:admin"],  # type: ignore[arg-type]
            embedded_worker=False,
        )
        with TestClient(create_app(settings)) as client:
            login = client.post("/dashboard/login", data={"key": KEY}, follow_redirects=False)
            assert login.status_code == 303, login.text
            times: dict[str, list[float]] = {name: [] for name in REQUESTS}
            for path in REQUESTS.values():  # one warm-up each
                assert client.get(path).status_code == 200, (path, client.get(path).text[:200])
            for _ in range(repeats):
                for name, path in REQUESTS.items():
                    t0 = time.perf_counter()
                    response = client.get(path)
                    times[name].append((time.perf_counter() - t0) * 1e3)
                    assert response.status_code == 200
            total = client.get("/v1/admin/stats/events?window=24h&bucket=60").json()["total"]
    return {
        "events": n,
        "load_s": round(loaded_s, 1),
        "events_in_24h_chart": total,
        "p50_ms": {k: round(statistics.median(v), 2) for k, v in times.items()},
        "p99_ms": {k: round(float(np.percentile(v, 99)), 2) for k, v in times.items()},
    }


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        "## Dashboard data requests (issue 13)",
        "",
        f"`{command}` (PostgreSQL, a private database; in-process app, 2-core machine; p50 / p99 ms of 500",
        "requests each, interleaved, after the load was vacuumed and analysed (the store at rest, not during autovacuum's",
        "first pass over a fresh import); the `/healthz` floor is the test client's own cost).",
        "",
        "| request | " + " | ".join(f"{r['events']:,} events" for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for name in REQUESTS:
        cells = [f"{r['p50_ms'][name]:.1f} / {r['p99_ms'][name]:.1f}" for r in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    worst = max(
        (r["p99_ms"][name], name, r["events"])
        for r in results
        for name in REQUESTS
        if not name.startswith("floor") and "finest" not in name
    )
    lines += [
        "",
        f"Goal p99 < 50 ms for the page's requests: worst p99 {worst[0]:.1f} ms ({worst[1]}, {worst[2]:,} events);",
        "the finest day (1,440 one-minute points, which the page does not ask for) is shown for scale: its cost is",
        "the ~7,000 (minute, type) rows it returns and turns into JSON (its p99 was ~300 ms, full garbage collections",
        "walking the process's long-lived heap, until the service froze that heap out of the collector:",
        "`freeze_heap` in app/serving/polling.py). No request reads the",
        "events table: the charts sum the per-minute rollup `event_counts` (append-only delta rows, one per",
        "ingested batch, minute and type, folded into one row per (minute, type) once settled by the compaction",
        "poller; the 24 h chart sums 1,440 minutes of them by the index on `bucket_start`, grouped in SQL), the counts use `count(*)` on users and items (PostgreSQL's",
        "estimate above 200k rows) and the rollup's sum for events; so the cost follows the number of rollup rows in",
        "the window, not the events stored. Loading (`load_events`, rollup included): "
        + ", ".join(f"{r['events']:,} in {r['load_s']} s" for r in results)
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", default="10000,100000,1000000")
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    results = []
    for n in (int(x) for x in args.events.split(",")):
        with private_database(args.admin_url) as url:
            result = bench(url, n, args.repeats)
        print(json.dumps(result), flush=True)
        results.append(result)
    command = f".venv/bin/python scripts/bench_dashboard.py --events {args.events} --repeats {args.repeats}"
    text = markdown(results, command)
    out = ROOT / "var" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dashboard.json").write_text(json.dumps(results, indent=2))
    if not args.no_docs:
        update_section(ROOT / "docs" / "BENCHMARKS.md", "## Dashboard data requests (issue 13)", text)
    print(text)


if __name__ == "__main__":
    main()
