"""`reco consume`: defined in app/eventlog/cli.py (also run as `python -m app.eventlog`)."""

from __future__ import annotations

from app.eventlog.cli import cmd_consume, register

__all__ = ["cmd_consume", "register"]
