"""Durability under kill -9: acknowledged events survive SIGKILL of the whole `reco serve` process group.

`reco serve --workers N` runs on PostgreSQL (a private database, created and dropped here) in its own process
group. `--clients` threads post batches of `--batch` events with unique `event_id`s over keep-alive
connections, as fast as the service answers. `--kills` times, after `--seconds` of load, the whole process group
gets SIGKILL (master and workers, mid-request), and the service is started again on the same port. A client
whose request failed or hung (the kill cut it) re-sends the same batch, with the same ids, until it is
acknowledged: that is what a real client does, and it is what could double an event if ingestion were not
idempotent. At the end every acknowledged id is looked up in the table.

It proves two things, and counts them: no acknowledged event is lost (`lost` = acked ids missing from the
table) and none is stored twice (`duplicates` = rows beyond one per id), while requests really were cut
(`cut` = requests that failed because of a kill: 0 would mean the kills hit an idle service and prove nothing).

    PYTHONPATH=. .venv/bin/python scripts/bench_kill9.py --kills 3 --seconds 8 --update-docs
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
RECO = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]
KEY = "kill9-ingest-key-0000000000"


@dataclass
class Result:
    kills: int
    workers: int
    clients: int
    batch: int
    acked: int  # events whose batch was answered 200
    stored: int  # rows in the table
    distinct: int  # distinct event ids among them
    lost: int  # acked ids missing from the table
    duplicates: int  # rows beyond one per id
    cut: int  # requests that failed because of a kill, or were refused while it restarted (then re-sent)
    redelivered: (
        int  # events of re-sent batches answered as duplicates: committed before the kill cut the answer
    )
    seconds: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """`reco serve` in its own process group, so that one SIGKILL takes the master and every worker."""

    def __init__(self, env: dict[str, str], workers: int) -> None:
        self.port = _free_port()
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [*RECO, "serve", "--port", str(self.port), "--workers", str(self.workers)],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"reco serve exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("reco serve did not become ready")
            time.sleep(0.1)

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        # the workers are in the same group; wait until none is left holding the port
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


class Client(threading.Thread):
    """Posts batches; a batch that was not answered 200 is re-sent with the same ids until it is."""

    def __init__(self, n: int, service: Service, batch: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.n, self.service, self.batch, self.stop_flag = n, service, batch, stop
        self.acked: list[str] = []
        self.cut = 0
        self.redelivered = 0
        self.errors: list[str] = []

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        seq = 0
        pending: tuple[list[str], bytes] | None = None
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        while not self.stop_flag.is_set() or pending is not None:
            if pending is None:
                ids = [f"c{self.n}-{seq}-{k}" for k in range(self.batch)]
                seq += 1
                events = [
                    {
                        "event_id": i,
                        "user_id": f"u{self.n}-{seq % 50}",
                        "item_id": f"i{k % 97}",
                        "type": "view",
                    }
                    for k, i in enumerate(ids)
                ]
                pending = (ids, json.dumps({"events": events}).encode())
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.service.port, timeout=10)
                conn.request("POST", "/v1/events", body=pending[1], headers=headers)
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    self.redelivered += int(json.loads(body).get("duplicates", 0))
                    self.acked.extend(pending[0])
                    pending = None
                elif response.status == 503:
                    time.sleep(0.05)  # the service is starting or its database is away: send it again
                else:
                    self.errors.append(f"{response.status}: {body[:200]!r}")
                    return
            except (OSError, http.client.HTTPException):
                self.cut += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)


def _count(database_url: str, acked: list[str]) -> tuple[int, int, int]:
    """(rows, distinct ids, acked ids missing) in the events table."""
    from app.db.engine import make_engine
    from app.settings import Settings

    engine = make_engine(Settings(database_url=database_url))
    try:
        with engine.connect() as conn:
            rows = conn.scalar(sa.text("SELECT count(*) FROM events"))
            distinct = conn.scalar(sa.text("SELECT count(DISTINCT event_id) FROM events"))
            conn.execute(sa.text("CREATE TEMP TABLE acked (event_id text PRIMARY KEY)"))
            for start in range(0, len(acked), 10_000):
                conn.execute(
                    sa.text("INSERT INTO acked SELECT unnest(CAST(:ids AS text[]))"),
                    {"ids": acked[start : start + 10_000]},
                )
            missing = conn.scalar(
                sa.text(
                    "SELECT count(*) FROM acked a WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = a.event_id)"
                )
            )
    finally:
        engine.dispose()
    return int(rows or 0), int(distinct or 0), int(missing or 0)


def run(
    database_url: str,
    *,
    kills: int = 3,
    seconds: float = 5.0,
    workers: int = 2,
    clients: int = 4,
    batch: int = 100,
    extra_env: dict[str, str] | None = None,
) -> Result:
    """Load, `kills` SIGKILLs of the process group with restarts, then the count (see the module doc)."""
    env = {
        "RECO_DATABASE_URL": database_url,
        "RECO_API_KEYS": f"{KEY}:ingest",
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_ARTIFACT_DIR": tempfile.mkdtemp(prefix="reco-kill9-"),
        "RECO_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    service = Service(env, workers)
    stop = threading.Event()
    started = time.monotonic()
    service.start()
    threads = [Client(n, service, batch, stop) for n in range(clients)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(kills):
            time.sleep(seconds)
            service.kill9()
            service.start()
        time.sleep(min(seconds, 2.0))
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a client never got its last batch acknowledged"
            assert not thread.errors, thread.errors
    finally:
        stop.set()
        service.stop()
    acked = [i for thread in threads for i in thread.acked]
    rows, distinct, missing = _count(database_url, acked)
    return Result(
        kills=kills,
        workers=workers,
        clients=clients,
        batch=batch,
        acked=len(acked),
        stored=rows,
        distinct=distinct,
        lost=missing,
        duplicates=rows - distinct,
        cut=sum(t.cut for t in threads),
        redelivered=sum(t.redelivered for t in threads),
        seconds=round(time.monotonic() - started, 1),
    )


def _driver(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _private_database(admin_url: str) -> str:
    from app.db.engine import make_engine
    from app.db.migrate import upgrade
    from app.settings import Settings

    name = f"reco_kill9_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(_driver(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(Settings(database_url=url))
    upgrade(engine)
    engine.dispose()
    return url


def _drop(admin_url: str, url: str) -> None:
    admin = sa.create_engine(_driver(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="load between kills")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    url = _private_database(args.database_url)
    try:
        result = run(
            url,
            kills=args.kills,
            seconds=args.seconds,
            workers=args.workers,
            clients=args.clients,
            batch=args.batch,
        )
    finally:
        _drop(args.database_url, url)
    print(json.dumps(asdict(result), indent=2))
    if args.update_docs:
        sys.path.insert(0, str(Path(__file__).parent))
        from benchdocs import update_section

        section = (
            "## Durability under kill -9\n\n"
            "`PYTHONPATH=. .venv/bin/python scripts/bench_kill9.py "
            f"--kills {args.kills} --seconds {args.seconds:g} --workers {args.workers} "
            f"--clients {args.clients} --batch {args.batch} --update-docs` (PostgreSQL, 2 cores)\n\n"
            f"SIGKILL of the whole `reco serve --workers {result.workers}` process group {result.kills} times under "
            f"ingestion load from {result.clients} clients (batches of {result.batch}; a cut batch is re-sent "
            "with the same ids until acknowledged), restarted each time:\n\n"
            "| acknowledged | rows stored | distinct ids | lost | duplicates | requests failed (cut, or refused while restarting) "
            "| re-sent events already stored | run |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            f"| {result.acked:,} | {result.stored:,} | {result.distinct:,} | **{result.lost}** | "
            f"**{result.duplicates}** | {result.cut} | {result.redelivered} | {result.seconds} s |\n\n"
            "A batch whose answer a kill cut may have been committed already: its re-send is answered as "
            "duplicates (the column before last), so rows = acknowledged = distinct ids is the idempotence working. "
            "`tests/faults/test_kill9.py` runs the same harness, smaller, on every CI run.\n"
        )
        update_section(ROOT / "docs" / "BENCHMARKS.md", "## Durability under kill -9", section)


if __name__ == "__main__":
    main()
