"""`reco import movielens PATH`, `reco demo`."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.keys import create_key
from app.cache import keys as cache_keys
from app.cache import make_cache
from app.catalog.service import load_items
from app.cli.service import add_server_options, run_server
from app.datasets.demo import DemoConfig, generate_demo
from app.datasets.errors import DatasetFormatError
from app.datasets.movielens import read_movielens
from app.db.engine import make_engine, make_sessionmaker, run_transaction
from app.db.migrate import upgrade
from app.db.tables import Event
from app.events.repository import max_event_id
from app.events.service import load_events
from app.registry import jobs
from app.registry.repository import active_version
from app.settings import load_settings


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


def cmd_import_movielens(args: argparse.Namespace) -> int:
    """Stream a MovieLens folder into the store."""
    settings = load_settings()
    engine = make_engine(settings)
    if settings.is_sqlite:
        upgrade(engine)
    sessions = make_sessionmaker(engine)
    started = time.perf_counter()
    try:
        items, events = read_movielens(args.path, progress=True, skip_malformed=args.skip_malformed)
        n_items = load_items(sessions, items)
        stored, duplicates = load_events(sessions, events, source=f"movielens:{args.path.resolve().name}")
    except DatasetFormatError as exc:
        raise SystemExit(f"import failed: {exc}") from None
    engine.dispose()
    if settings.redis_url:  # a running service's cached answers and event lists predate the import
        cache = make_cache(settings)
        cache.incr_many([cache_keys.EPOCH])
        cache.close()
    print(
        f"imported {n_items} items and {stored} events ({duplicates} already present) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


def queue_first_training(session: Session) -> str | None:
    """Queue a training job when no model is active yet; returns its id (None when a model exists)."""
    if active_version(session) is not None:
        return None
    job, _ = jobs.enqueue(
        session, trigger="demo", reason="first model of the demo", max_event_id=max_event_id(session)
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
    first = run_transaction(sessions, queue_first_training)
    if first is not None:
        print(f"training job {first} queued: popular items answer until the first model is active")
    engine.dispose()
    print(f"admin key for this demo (also valid later):\n{key}")
    if not args.no_serve:
        print(
            f"try: curl -H 'Authorization: Bearer {key}' "
            f"http://{args.host}:{args.port}/v1/users/u00001/recommendations?k=5"
        )
        run_server(args.host, args.port, args.workers)
    return 0
