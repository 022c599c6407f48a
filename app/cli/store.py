"""`reco db upgrade`, `reco keys create`."""

from __future__ import annotations

import argparse

from app.auth.keys import create_key, parse_scopes
from app.db.engine import make_engine, make_sessionmaker, run_transaction
from app.db.migrate import upgrade
from app.settings import load_settings


def register(commands: argparse._SubParsersAction) -> None:
    """Add the store commands."""
    db = commands.add_parser("db", help="database schema", description="Manage the database schema.")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_commands.add_parser("upgrade", help="apply migrations", description="Apply Alembic migrations.")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(handler=cmd_db_upgrade)

    keys = commands.add_parser("keys", help="API keys", description="Manage API keys.")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = key_commands.add_parser(
        "create",
        help="create a key",
        description="Create an API key; it is printed once, alone on the last line, and stored hashed.",
    )
    create.add_argument("--scopes", required=True, help="comma-separated: ingest,read,admin")
    create.add_argument("--name", default=None, help="a label to recognise the key by")
    create.set_defaults(handler=cmd_keys_create)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply migrations to RECO_DATABASE_URL."""
    settings = load_settings()
    engine = make_engine(settings)
    upgrade(engine, args.revision)
    engine.dispose()
    print(f"database at revision {args.revision}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create a key and print it last."""
    try:
        scopes = parse_scopes(args.scopes)
    except ValueError as exc:
        raise SystemExit(f"--scopes: {exc}") from None
    settings = load_settings()
    engine = make_engine(settings)
    if settings.is_sqlite:
        upgrade(engine)
    key = run_transaction(make_sessionmaker(engine), lambda s: create_key(s, scopes, args.name))
    engine.dispose()
    print(f"created a key with scopes {','.join(sorted(scopes))}; it is shown only now:")
    print(key)
    return 0
