"""Apply Alembic migrations programmatically (`reco db upgrade`, embedded start-up, tests)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

import app


def migrations_dir() -> Path:
    """Where migrations/ lives: RECO_MIGRATIONS_DIR, next to the source tree, or under the working directory."""
    candidates = [
        Path(os.environ["RECO_MIGRATIONS_DIR"]) if os.environ.get("RECO_MIGRATIONS_DIR") else None,
        Path(app.__file__).resolve().parent.parent / "migrations",
        Path.cwd() / "migrations",
    ]
    for path in candidates:
        if path is not None and (path / "env.py").is_file():
            return path
    raise FileNotFoundError("migrations/ not found: set RECO_MIGRATIONS_DIR to the folder holding env.py")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema of `engine`'s database to `revision`."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
