"""`reco import movielens PATH`, `reco import events FILE`, `reco import items FILE`, `reco demo`."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from app.auth.keys import create_key
from app.cache import keys as cache_keys
from app.cache import make_cache
from app.catalog.service import ItemChanges, load_item_fields, load_items
from app.cli.service import add_server_options, run_server
from app.datasets.demo import DemoConfig, generate_demo
from app.datasets.errors import DatasetFormatError
from app.datasets.generic import BadRow, read_events, read_items
from app.datasets.movielens import read_movielens
from app.db.engine import make_engine, make_sessionmaker, run_transaction
from app.db.migrate import upgrade
from app.db.tables import Event
from app.events.repository import max_event_id
from app.events.service import accepted_types as service_types
from app.events.service import load_events
from app.fence import Fence
from app.registry import jobs
from app.registry.repository import active_version
from app.settings import Settings, load_settings

STOREFRONT_PORT = 8080  # where the README serves examples/storefront (the demo's publishable key allows it)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the data commands."""
    imp = commands.add_parser(
        "import", help="import a data set", description="Import a data set into the store."
    )
    kinds = imp.add_subparsers(dest="import_kind", metavar="KIND", required=True)
    ml = kinds.add_parser(
        "movielens",
        help="MovieLens (RecBole atomic files, u.data+u.item, ratings.csv+movies.csv)",
        description="Import MovieLens: genres become categories, ratings become `rating` events.",
    )
    ml.add_argument("path", type=Path, help="folder holding the files")
    ml.add_argument("--skip-malformed", action="store_true", help="skip bad lines instead of stopping")
    ml.set_defaults(handler=cmd_import_movielens)

    events = kinds.add_parser(
        "events",
        help="events from CSV or JSONL (optionally gzipped)",
        description=(
            "Import events from CSV (a header line naming user_id,item_id,type,timestamp and optionally "
            "value,event_id) or JSONL (one object per line with those fields), optionally gzipped; the format is "
            "found from the content. timestamp: Unix seconds (int or float) or ISO 8601. Each row is checked as "
            "POST /v1/events checks it (types from RECO_EVENT_WEIGHTS, at most RECO_MAX_FUTURE_SECONDS ahead); "
            "a bad row is reported as FILE:LINE: field: what to change, and skipped. Rows without event_id get "
            "one derived from their content, so importing a file again stores nothing new. Exits 0 unless the "
            "file cannot be read, its format is unknown, or --max-errors stopped it."
        ),
    )
    events.add_argument("file", type=Path, help="the CSV or JSONL file (.gz allowed)")
    _add_import_options(events)
    events.set_defaults(handler=cmd_import_events)

    items = kinds.add_parser(
        "items",
        help="catalog items from JSONL (optionally gzipped)",
        description=(
            "Import catalog items from JSONL: one object per line with item_id and any of the fields of "
            "PUT /v1/items (title, categories, tags, price, available, published_at, attributes); fields left "
            "out keep their stored value, a row that changes nothing is not rewritten. A bad row is reported as "
            "FILE:LINE: field: what to change, and skipped. Exits 0 unless the file cannot be read, is not JSONL, "
            "or --max-errors stopped it."
        ),
    )
    items.add_argument("file", type=Path, help="the JSONL file (.gz allowed)")
    _add_import_options(items)
    items.set_defaults(handler=cmd_import_items)

    demo = commands.add_parser(
        "demo",
        help="load a synthetic shop and serve it",
        description="Generate the synthetic demo shop, load it (once), print an admin key and serve it.",
    )
    add_server_options(demo)
    demo.add_argument("--users", type=int, default=2000, help="number of users (default 2000)")
    demo.add_argument("--items", type=int, default=1000, help="number of items (default 1000)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-serve", action="store_true", help="load the data and stop")
    demo.set_defaults(handler=cmd_demo)


def _add_import_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-errors",
        type=int,
        metavar="N",
        default=None,
        help="stop, with exit status 1, once more than N bad rows were seen: rows before the bad row past N "
        "are loaded, nothing from it on (default: no limit; every bad row is reported and skipped)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _bump_cache_epoch(settings: Settings) -> None:
    """After an import: a running service's cached answers and latest-events lists predate it."""
    if settings.redis_url:
        cache = make_cache(settings)
        engine = make_engine(settings)
        # when the bump fails, the fence is raised instead (and this command ends once every API process saw it)
        Fence(engine, make_sessionmaker(engine), cache, settings.cache_fence_lease_s)
        try:
            cache.incr_many([cache_keys.EPOCH])
        finally:
            cache.close()
            engine.dispose()


def _report(path: Path, bad: list[BadRow]) -> None:
    for row in bad:
        tqdm.write(row.describe(path), file=sys.stderr)


def _stopped(path: Path, line: int, max_errors: int) -> str:
    return (
        f"{path}:{line}: stopped: more than {max_errors} bad rows (--max-errors); the rows before line "
        f"{line} were loaded, nothing from it on; fix the file and run again (loaded rows are not stored twice)"
    )


def cmd_import_events(args: argparse.Namespace) -> int:
    """Stream an events file into the store, chunk by chunk."""
    settings = load_settings()
    engine, sessions = _open_store(settings)
    started = time.perf_counter()
    read = stored = present = bad = 0
    failure: str | None = None
    try:
        for chunk in read_events(
            args.file,
            event_types=service_types(settings.event_weights, settings.negative_types),
            max_future=timedelta(seconds=settings.max_future_seconds),
            chunk_size=settings.max_batch,
            max_errors=args.max_errors,
            progress=not args.no_progress,
        ):
            _report(args.file, chunk.bad)
            new, duplicates = load_events(sessions, chunk.records, source="import")
            read += chunk.rows
            stored += new
            present += duplicates + chunk.repeated
            bad += len(chunk.bad)
            if chunk.stopped_at is not None:
                failure = _stopped(args.file, chunk.stopped_at, args.max_errors)
    except DatasetFormatError as exc:
        failure = f"import failed: {exc}"
    finally:
        engine.dispose()
    if stored:
        _bump_cache_epoch(settings)
    print(
        f"{args.file}: {read} rows read: {stored} events stored, {present} already present, "
        f"{bad} bad (skipped) in {time.perf_counter() - started:.1f} s"
    )
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 0


def _open_store(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    """The store's engine and sessions (SQLite is migrated on the spot, as the embedded default)."""
    engine = make_engine(settings)
    if settings.is_sqlite:
        upgrade(engine)
    return engine, make_sessionmaker(engine)


def cmd_import_items(args: argparse.Namespace) -> int:
    """Stream an items file into the catalog, chunk by chunk."""
    settings = load_settings()
    engine, sessions = _open_store(settings)
    started = time.perf_counter()
    read = bad = new = updated = unchanged = 0
    failure: str | None = None
    try:
        for chunk in read_items(args.file, max_errors=args.max_errors, progress=not args.no_progress):
            _report(args.file, chunk.bad)
            done = load_item_fields(sessions, chunk.items) if chunk.items else ItemChanges()
            read += chunk.rows
            bad += len(chunk.bad)
            new += done.new
            updated += done.updated
            unchanged += done.unchanged
            if chunk.stopped_at is not None:
                failure = _stopped(args.file, chunk.stopped_at, args.max_errors)
    except DatasetFormatError as exc:
        failure = f"import failed: {exc}"
    finally:
        engine.dispose()
    if new or updated:
        _bump_cache_epoch(settings)
    print(
        f"{args.file}: {read} rows read: {new + updated} items stored ({new} new, {updated} updated), "
        f"{unchanged} already present unchanged, {bad} bad (skipped) in {time.perf_counter() - started:.1f} s"
    )
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 0


def cmd_import_movielens(args: argparse.Namespace) -> int:
    """Stream a MovieLens folder into the store."""
    settings = load_settings()
    engine, sessions = _open_store(settings)
    started = time.perf_counter()
    try:
        items, events = read_movielens(args.path, progress=True, skip_malformed=args.skip_malformed)
        n_items = load_items(sessions, items)
        stored, duplicates = load_events(sessions, events, source=f"movielens:{args.path.resolve().name}")
    except DatasetFormatError as exc:
        raise SystemExit(f"import failed: {exc}") from None
    engine.dispose()
    _bump_cache_epoch(settings)
    print(
        f"imported {n_items} items and {stored} events ({duplicates} already present) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


# The demo's first model trains under a short budget so personalised answers come within about a minute;
# later retrains use RECO_TRAIN_TIME_BUDGET_S.
DEMO_FIRST_BUDGET_S = 45.0


def queue_first_training(session: Session) -> str | None:
    """Queue a training job when no model is active yet; returns its id (None when a model exists)."""
    if active_version(session) is not None:
        return None
    job, _ = jobs.enqueue(
        session,
        trigger="demo",
        reason="first model of the demo",
        max_event_id=max_event_id(session),
        params={"time_budget_s": DEMO_FIRST_BUDGET_S},
    )
    return job.job_id


def cmd_demo(args: argparse.Namespace) -> int:
    """Load the demo shop unless the store already has events, then serve."""
    settings = load_settings()
    engine = make_engine(settings)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        has_events = bool(session.scalar(select(func.count()).select_from(Event)))
    if not has_events:
        items, events = generate_demo(
            DemoConfig(n_users=args.users, n_items=args.items, seed=args.seed), now=datetime.now(UTC)
        )
        load_items(sessions, items)
        stored, _ = load_events(sessions, events, source="demo")
        print(f"demo shop loaded: {len(items)} items, {stored} events")
    else:
        print("the store already holds events: demo data not loaded again")
    key = run_transaction(sessions, lambda s: create_key(s, frozenset({"admin"}), "demo"))
    storefront = [f"http://{host}:{STOREFRONT_PORT}" for host in ("127.0.0.1", "localhost")]
    public = run_transaction(
        sessions,
        lambda s: create_key(s, frozenset(), "demo storefront", kind="publishable", origins=storefront),
    )
    first = run_transaction(sessions, queue_first_training)
    if first is not None:
        print(
            f"training job {first} queued: popular items answer until the first model is active, in about "
            f"{DEMO_FIRST_BUDGET_S + 15:.0f} s (a {DEMO_FIRST_BUDGET_S:.0f} s training budget, then the quality "
            "gate and activation; GET /v1/admin/jobs/<id> shows its stage, epoch and ETA)"
        )
    engine.dispose()
    print(f"admin key for this demo (also valid later):\n{key}")
    if not args.no_serve:
        print(
            f"try: curl -H 'Authorization: Bearer {key}' "
            f"http://{args.host}:{args.port}/v1/users/u00001/recommendations?k=5"
        )
        print(f"dashboard: open http://{args.host}:{args.port}/dashboard and sign in with the key above")
        print(
            f"example storefront (JS client, publishable key {public} for {storefront[0]}): run "
            f"`python3 -m http.server {STOREFRONT_PORT}` in the repository root and open "
            f"{storefront[0]}/examples/storefront/#api=http://{args.host}:{args.port}&key={public}&user=u00001"
        )
        run_server(args.host, args.port, args.workers)
    return 0
