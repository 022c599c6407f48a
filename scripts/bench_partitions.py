"""Benchmark ingestion into the partitioned events table (migration 0009) against the plain one it replaced.

Two private PostgreSQL databases are created (and dropped at the end): one migrated by this tree (monthly
partitions of `events`, event ids deduped by the `event_ids` table), one by the tree of the commit before the
partitioning (`--plain-rev`, default: the parent of the commit that added migration 0009), extracted with
`git archive`: one plain `events` table whose unique index on event_id is the dedupe. For each round and each
layout `reco serve` of the matching tree runs as in production and the load of scripts/bench_ingest.py (its
helpers: pre-serialised batches over keep-alive connections from a separate process) is sent through
`POST /v1/events`; the tables are emptied before each run and the layouts alternate, so a busy moment of the
shared machine does not favour one of them.

    PYTHONPATH=. .venv/bin/python scripts/bench_partitions.py --update-docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import bench_ingest  # scripts/ is on sys.path when a script runs
import psycopg
import sqlalchemy as sa
from bench_ingest import Run, add_load_arguments, bench_http, bodies, free_port, make_events
from benchdocs import update_section
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Partitioned events (issue 14)"
MIGRATION = "migrations/versions/20261203_0009_partitioned_events.py"
MIGRATE = (
    "import sys; from app.db.engine import make_engine; from app.db.migrate import upgrade; "
    "from app.settings import Settings; e = make_engine(Settings(database_url=sys.argv[1])); upgrade(e); e.dispose()"
)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def plain_rev() -> str:
    """The commit before the one that added migration 0009."""
    added = git("log", "--diff-filter=A", "--format=%H", "-1", "--", MIGRATION)
    if not added:
        raise SystemExit(f"{MIGRATION} is not committed yet: pass --plain-rev")
    return git("rev-parse", f"{added}^")


def extract(rev: str, into: Path) -> Path:
    """The tree of `rev` under `into`."""
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def create_database(admin: sa.Engine, base: sa.URL, tree: Path) -> str:
    """A private database migrated by the code of `tree`."""
    name = f"reco_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")
    subprocess.run(
        [sys.executable, "-c", MIGRATE, url],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=True,
    )
    return url


def layout(db_url: str) -> str:
    """What `events` is in this database."""
    with psycopg.connect(db_url) as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'events'::regclass").fetchone()
        parts = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass"
        ).fetchone()
    return f"partitioned ({parts[0] if parts else 0} partitions)" if kind and kind[0] == "p" else "plain"


def empty_side_tables(db_url: str) -> None:
    """bench_http empties events (event_ids too), users and items; the rollup goes as well."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("TRUNCATE event_counts")


def run_one(
    tree: Path, db_url: str, redis_url: str, payloads: list[bytes], warmup: list[bytes], args: Any
) -> Run:
    """bench_ingest.bench_http with the server of `tree`."""
    empty_side_tables(db_url)
    saved = bench_ingest.ROOT
    bench_ingest.ROOT = tree  # the server's cwd and PYTHONPATH
    try:
        return bench_http(db_url, redis_url, payloads, warmup, args.workers, args.connections)
    finally:
        bench_ingest.ROOT = saved


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    """The section for docs/BENCHMARKS.md."""
    rounds = results["rounds"]
    lines = [
        SECTION,
        "",
        f"Command: `PYTHONPATH=. .venv/bin/python scripts/bench_partitions.py --events {args.events} "
        f"--batch {args.batch} --connections {args.connections} --workers {args.workers} --rounds {args.rounds} "
        f"--update-docs` (JSON in `{args.json}`).",
        f"Machine: {results['machine']}, {results['cpus']} CPUs shared by the server, PostgreSQL "
        f"{results['postgres']}, the load process and a private redis-server; {results['python']}.",
        f"Load: {args.events:,} events per run in batches of {args.batch} (unique event ids, timestamps of the "
        f"last day, {args.users:,} users and {args.items:,} items created on the fly) through `POST /v1/events`, "
        f"{args.connections} keep-alive connections, {args.workers} API worker(s), as scripts/bench_ingest.py. "
        f"Partitioned: this tree, `events` {results['layouts']['partitioned']}, ids claimed in `event_ids`. "
        f"Plain: the tree of {results['plain_rev'][:10]} (before migration 0009), one `events` table with a "
        "unique index on event_id. Layouts alternate round by round; tables emptied before each run.",
        "",
        "| round | layout | events/s | p50 ms | p99 ms | partitioned / plain |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for n, r in enumerate(rounds, start=1):
        plain, part = r["plain"], r["partitioned"]
        ratio = part["events_per_s"] / plain["events_per_s"]
        for name, run in (("plain", plain), ("partitioned", part)):
            lines.append(
                f"| {n} | {name} | {run['events_per_s']:,.0f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} | "
                + (f"{ratio:.2f} |" if name == "partitioned" else "|")
            )
    ratios = [r["partitioned"]["events_per_s"] / r["plain"]["events_per_s"] for r in rounds]
    # within a round, the layout run second over the one run first: the machine's own drift
    order = [
        (r["plain"] if n % 2 else r["partitioned"])["events_per_s"]
        / (r["partitioned"] if n % 2 else r["plain"])["events_per_s"]
        for n, r in enumerate(rounds)
    ]
    if max(ratios) < 1 or min(ratios) > 1:
        verdict = (
            f"Every round agrees: the partitioned layout ingests at {statistics.median(ratios):.2f}x of the plain "
            "one on this machine."
        )
    else:
        verdict = (
            "The rounds disagree: when the order effect of the shared machine is as large as the difference "
            "between layouts, this run does not tell them apart (more `--rounds` narrow it)."
        )
    lines += [
        "",
        f"Partitioned / plain throughput: median {statistics.median(ratios):.2f} over {len(ratios)} round(s) "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}); the run second in a round over the run first, whatever "
        f"the layout: median {statistics.median(order):.2f} (range {min(order):.2f}-{max(order):.2f}). "
        + verdict
        + " Per event both layouts make the same number of B-tree inserts (partitioned: the `event_ids` "
        "primary key instead of the plain table's unique index on event_id; the primary key (id, ts) instead of "
        "(id)); the partitioned one adds a heap row in `event_ids` (and its WAL) and tuple routing to the "
        "month's partition. What it buys: retention by dropping a month "
        "(`RECO_EVENT_RETENTION_DAYS`, `reco db maintain`) instead of deleting rows, and indexes that stay the "
        "size of a month.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Create both databases and a private Redis, alternate the layouts, drop everything, write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_load_arguments(parser, events=100_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--plain-rev", default=None, help="the pre-0009 commit (default: found by git)")
    parser.add_argument("--json", type=Path, default=Path("var/bench/partitions.json"))
    parser.add_argument(
        "--update-docs", action="store_true", help="rewrite the section in docs/BENCHMARKS.md"
    )
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the markdown from the saved --json run"
    )
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.json.read_text(encoding="utf-8"))
        for name in ("events", "batch", "connections", "workers", "rounds", "users", "items"):
            setattr(args, name, saved["args"][name])
        write(saved, args)
        return
    rev = args.plain_rev or plain_rev()

    payloads = bodies(make_events(args.events, 1, args.users, args.items), args.batch)
    warmup = bodies(make_events(args.batch * 4, 2, args.users, args.items), args.batch)
    base = make_url(args.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("redis-server is needed (the production cache)")
    redis_port = free_port()
    redis_proc = subprocess.Popen(
        [redis_bin, "--port", str(redis_port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    urls: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="reco-plain-") as tmp:
        trees = {"plain": extract(rev, Path(tmp)), "partitioned": ROOT}
        try:
            urls = {name: create_database(admin, base, tree) for name, tree in trees.items()}
            layouts = {name: layout(url) for name, url in urls.items()}
            assert layouts["plain"] == "plain" and layouts["partitioned"].startswith("partitioned"), layouts
            with psycopg.connect(urls["plain"]) as conn:
                version = conn.execute("SHOW server_version").fetchone()
            rounds = []
            for n in range(args.rounds):
                order = ("plain", "partitioned") if n % 2 == 0 else ("partitioned", "plain")
                this: dict[str, Any] = {}
                for name in order:
                    run = run_one(trees[name], urls[name], redis_url, payloads, warmup, args)
                    this[name] = asdict(run)
                    print(
                        f"round {n + 1} {name}: {run.events_per_s:,.0f} events/s p50 {run.p50_ms:.1f} ms "
                        f"p99 {run.p99_ms:.1f} ms",
                        flush=True,
                    )
                rounds.append(this)
        finally:
            redis_proc.terminate()
            redis_proc.wait()
            with admin.connect() as conn:
                for url in urls.values():
                    name = make_url(url).database
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    results = {
        "machine": f"{platform.system()} {platform.machine()}",
        "cpus": len(os.sched_getaffinity(0)),
        "postgres": version[0] if version else "?",
        "python": f"Python {platform.python_version()}",
        "plain_rev": rev,
        "layouts": layouts,
        "rounds": rounds,
        "args": {
            k: getattr(args, k)
            for k in ("events", "batch", "connections", "workers", "rounds", "users", "items")
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write(results, args)


def write(results: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the section; with --update-docs, put it into docs/BENCHMARKS.md."""
    section = markdown(results, args)
    print(section)
    if args.update_docs:
        update_section(ROOT / "docs" / "BENCHMARKS.md", SECTION, section)


if __name__ == "__main__":
    main()
