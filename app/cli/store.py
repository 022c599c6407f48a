"""`reco db upgrade`, `reco db maintain`, `reco keys create`."""

from __future__ import annotations

import argparse

from app.auth import user_tokens
from app.auth.keys import (
    PUBLISHABLE_SCOPES,
    check_rate_limits,
    create_key,
    describe,
    list_keys,
    parse_origins,
    parse_scopes,
    revoke_key,
)
from app.db.engine import make_engine, make_sessionmaker, run_transaction
from app.db.migrate import upgrade
from app.db.partitions import maintain, maintenance_engine
from app.settings import load_settings


def register(commands: argparse._SubParsersAction) -> None:
    """Add the store commands."""
    db = commands.add_parser("db", help="database schema", description="Manage the database schema.")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_commands.add_parser("upgrade", help="apply migrations", description="Apply Alembic migrations.")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(handler=cmd_db_upgrade)
    maintain = db_commands.add_parser(
        "maintain",
        help="create event partitions ahead, apply retention",
        description="PostgreSQL: create the monthly partitions of `events` for the current month and "
        "RECO_EVENT_PARTITIONS_AHEAD months ahead (and for months found in the default partition), then drop "
        "the partitions wholly older than RECO_EVENT_RETENTION_DAYS. Idempotent; safe beside running "
        "services (the service runs the same pass hourly). A no-op on SQLite.",
    )
    maintain.add_argument(
        "--months-ahead", type=int, default=None, help="override RECO_EVENT_PARTITIONS_AHEAD"
    )
    maintain.add_argument(
        "--retention-days", type=int, default=None, help="override RECO_EVENT_RETENTION_DAYS"
    )
    maintain.set_defaults(handler=cmd_db_maintain)

    keys = commands.add_parser("keys", help="API keys", description="Manage API keys.")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = key_commands.add_parser(
        "create",
        help="create a key",
        description="Create an API key; it is printed once, alone on the last line, and stored hashed.",
    )
    kind = create.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--scopes",
        default=None,
        help="comma-separated: ingest,read,admin,dashboard (dashboard: view the dashboard only)",
    )
    kind.add_argument(
        "--publishable",
        action="store_true",
        help="a key safe in page source (pk_...): it may only send events and read recommendations, from "
        "--origins",
    )
    create.add_argument("--name", default=None, help="a label to recognise the key by")
    create.add_argument(
        "--origins",
        default=None,
        help="with --publishable: the allowed origins, comma separated (https://shop.example,https://m.shop.example)",
    )
    create.add_argument(
        "--rate-limits",
        default=None,
        help="this key's own limits per route class, e.g. events=100/s,recommend=50/s (over RECO_RATE_LIMITS)",
    )
    create.set_defaults(handler=cmd_keys_create)
    token = key_commands.add_parser(
        "user-token",
        help="issue a signed user token",
        description="Print a user token for publishable keys under RECO_REQUIRE_USER_TOKEN, signed with "
        "RECO_USER_TOKEN_SECRET (what a shop's server does per page view: app.auth.user_tokens.issue).",
    )
    token.add_argument("--user", required=True, help="the user id the token names")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    token.set_defaults(handler=cmd_keys_user_token)
    listing = key_commands.add_parser(
        "list",
        help="list keys",
        description="List keys: id, prefix, name, scopes, created, revoked (no secrets).",
    )
    listing.set_defaults(handler=cmd_keys_list)
    revoke = key_commands.add_parser(
        "revoke",
        help="revoke a key",
        description="Revoke a key by id (see `reco keys list`); API processes refuse it within "
        "RECO_KEY_CACHE_SECONDS (at once through DELETE /v1/admin/keys/{id} in the process that serves it).",
    )
    revoke.add_argument("id", type=int, help="the key's id")
    revoke.set_defaults(handler=cmd_keys_revoke)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply migrations to RECO_DATABASE_URL."""
    settings = load_settings()
    engine = make_engine(settings)
    upgrade(engine, args.revision)
    engine.dispose()
    print(f"database at revision {args.revision}")
    return 0


def cmd_db_maintain(args: argparse.Namespace) -> int:
    """Event partitions ahead and retention, printing what was done."""
    settings = load_settings()
    ahead = settings.event_partitions_ahead if args.months_ahead is None else args.months_ahead
    days = settings.event_retention_days if args.retention_days is None else args.retention_days
    if ahead < 0 or (days is not None and days < 1):
        raise SystemExit("--months-ahead must be >= 0 and --retention-days >= 1")
    engine = maintenance_engine(settings)
    try:
        passes = maintain(engine, ahead, days)
    finally:
        engine.dispose()
    for done in passes:
        for line in done.lines():
            print(line)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create a key and print it last."""
    origins: tuple[str, ...] = ()
    if args.publishable:
        if not args.origins:
            raise SystemExit(
                "--origins: a publishable key needs its allowed origins (--origins https://shop.example)"
            )
        try:
            origins = parse_origins(args.origins)
        except ValueError as exc:
            raise SystemExit(f"--origins: {exc}") from None
        scopes = PUBLISHABLE_SCOPES
    else:
        if args.origins is not None:
            raise SystemExit("--origins: only publishable keys have allowed origins (add --publishable)")
        try:
            scopes = parse_scopes(args.scopes)
        except ValueError as exc:
            raise SystemExit(f"--scopes: {exc}") from None
    try:
        check_rate_limits(args.rate_limits)
    except ValueError as exc:
        raise SystemExit(f"--rate-limits: {exc}") from None
    settings = load_settings()
    engine = make_engine(settings)
    if settings.is_sqlite:
        upgrade(engine)
    kind = "publishable" if args.publishable else "secret"
    key = run_transaction(
        make_sessionmaker(engine),
        lambda s: create_key(s, scopes, args.name, kind=kind, origins=origins, rate_limits=args.rate_limits),
    )
    engine.dispose()
    if args.publishable:
        print(f"created a publishable key for {','.join(origins)} (events and recommendations only):")
    else:
        print(f"created a key with scopes {','.join(sorted(scopes))}; it is shown only now:")
    print(key)
    return 0


def cmd_keys_user_token(args: argparse.Namespace) -> int:
    """Print a signed user token last."""
    settings = load_settings()
    if not settings.user_token_secret:
        raise SystemExit("RECO_USER_TOKEN_SECRET: not set; user tokens are signed with it")
    try:
        token = user_tokens.issue(args.user, settings.user_token_secret, args.ttl)
    except ValueError as exc:
        option = "--ttl" if str(exc).startswith("ttl") else "--user"
        raise SystemExit(f"{option}: {str(exc).split(': ', 1)[-1]}") from None
    print(f"a user token for {args.user!r}, valid for {args.ttl} s:")
    print(token)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """Print one line per key."""
    settings = load_settings()
    engine = make_engine(settings)
    if settings.is_sqlite:
        upgrade(engine)
    rows = run_transaction(make_sessionmaker(engine), lambda s: [describe(r) for r in list_keys(s)])
    engine.dispose()
    print("id\tprefix\tname\tscopes\tcreated_at\trevoked_at\tkind\torigins\trate_limits")
    for r in rows:
        scopes = ",".join(r["scopes"])  # type: ignore[arg-type]
        fields = [r["id"], r["prefix"], r["name"] or "-", scopes, r["created_at"], r["revoked_at"] or "-"]
        fields += [r["kind"], ",".join(r["allowed_origins"]) or "-", r["rate_limits"] or "-"]  # type: ignore[arg-type]
        print("\t".join(str(f) for f in fields))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke one key by id."""
    settings = load_settings()
    engine = make_engine(settings)
    if settings.is_sqlite:
        upgrade(engine)
    out = run_transaction(
        make_sessionmaker(engine),
        lambda s: (lambda r: None if r is None else describe(r))(revoke_key(s, args.id)),
    )
    engine.dispose()
    if out is None:
        raise SystemExit(f"id: no API key {args.id} (see `reco keys list`)")
    print(f"revoked key {out['id']} ({out['prefix']}…) at {out['revoked_at']}")
    return 0
