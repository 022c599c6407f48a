"""Migrations on SQLite and PostgreSQL: upgrade to head matches the tables, downgrade to base and up again."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from app.db.engine import make_engine
from app.db.migrate import migrations_dir, upgrade
from app.db.tables import Base, include_object_for
from app.settings import Settings
from tests.conftest import PG_URL, STORES


@pytest.fixture(params=STORES)
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a database with no tables at all (a private PostgreSQL database, dropped afterwards)."""
    if request.param == "sqlite":
        engine = make_engine(Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}"))
        yield engine
        engine.dispose()
        return
    assert PG_URL
    name = f"reco_mig_{uuid.uuid4().hex[:10]}"
    base = make_url(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")
    engine = make_engine(Settings(database_url=url))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def downgrade(engine: Engine, revision: str) -> None:
    """Alembic downgrade on this engine."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _sql_only_index(diff: object) -> bool:
    """A partial or expression index the migrations create in SQL and the table classes cannot declare."""
    if not (isinstance(diff, tuple) and diff[0] == "remove_index"):
        return False
    index = diff[1]
    partial = bool(
        index.dialect_options["postgresql"].get("where") or index.dialect_options["sqlite"].get("where")
    )
    return partial or any(not isinstance(e, sa.Column) for e in index.expressions)


def schema_diff(engine: Engine) -> list[object]:
    """What autogenerate would still change: nothing when the migrations build the tables of app.db.tables."""
    with engine.connect() as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # SQLite cannot reflect expression indexes
        include = include_object_for(conn.dialect.name)  # PostgreSQL: partitions and `event_ids` (0009)
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": include})
        return [d for d in compare_metadata(context, Base.metadata) if not _sql_only_index(d)]


def tables(engine: Engine) -> set[str]:
    """Table names in the database."""
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_builds_the_declared_schema_and_downgrade_removes_it(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    assert {"items", "users", "events", "api_keys"} <= tables(empty_engine)
    assert schema_diff(empty_engine) == []
    indexes = {ix["name"]: ix for ix in sa.inspect(empty_engine).get_indexes("events")}
    assert indexes["ix_events_user_ts"]["column_names"] == ["user_id", "ts"]
    postgres = empty_engine.dialect.name == "postgresql"
    if postgres:  # partitioned by ts (0009): event ids are unique by the event_ids table instead
        assert "uq_events_event_id" not in indexes
        assert "event_ids" in tables(empty_engine)
    else:
        assert indexes["uq_events_event_id"]["unique"]
        assert "event_ids" not in tables(empty_engine)

    upgrade(empty_engine)  # again: a no-op
    downgrade(empty_engine, "base")
    assert tables(empty_engine) <= {"alembic_version"}

    upgrade(empty_engine)
    assert schema_diff(empty_engine) == []
    with empty_engine.begin() as conn:  # the rebuilt store works: a unique index makes event_id idempotent
        insert = sa.text(
            "INSERT INTO events (event_id, user_id, item_id, type, ts) VALUES ('e1', 'u', 'i', 'view', :ts)"
        )
        if postgres:
            insert = sa.text("INSERT INTO event_ids (event_id) VALUES ('e1')")
        conn.execute(insert, {"ts": "2026-01-01 00:00:00"})
    with pytest.raises(sa.exc.IntegrityError), empty_engine.begin() as conn:
        conn.execute(insert, {"ts": "2026-01-01 00:00:00"})


def test_every_revision_steps_down_and_up(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    revisions = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()]  # head first
    for revision in revisions[1:]:
        downgrade(empty_engine, revision)
    downgrade(empty_engine, "base")
    for revision in reversed(revisions):
        upgrade(empty_engine, revision)
    assert schema_diff(empty_engine) == []
