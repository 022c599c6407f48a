"""The command line: `reco --help` and every subcommand's `--help`; bad settings or arguments stop it with a
message naming them."""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import build_parser, main
from tests.helpers.servers import RECO, ROOT


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path of the parser tree: ("serve",), ("db", "upgrade"), ..."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


COMMANDS = sorted(_commands(build_parser()))


def test_the_documented_commands_exist() -> None:
    for expected in [
        ("serve",),
        ("demo",),
        ("db", "upgrade"),
        ("db", "maintain"),
        ("keys", "create"),
        ("import", "movielens"),
        ("import", "events"),
        ("import", "items"),
    ]:
        assert expected in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_subcommand_has_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: reco {' '.join(command)}")
    assert len(out.splitlines()) >= 3


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in ("serve", "demo", "db", "keys", "import"):
        assert name in out
    assert "RECO_" in out


def test_missing_or_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["fly"], ["keys", "create"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2
    assert "--scopes" in capsys.readouterr().err


def test_unknown_scope_is_refused_before_touching_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECO_DATABASE_URL", f"sqlite:///{tmp_path / 'never.db'}")
    with pytest.raises(SystemExit) as done:
        main(["keys", "create", "--scopes", "ingest,root"])
    assert "--scopes" in str(done.value.code) and "root" in str(done.value.code)
    assert not (tmp_path / "never.db").exists()


def test_console_script_help_and_bad_setting_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*RECO, "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: reco" in done.stdout

    bad = {**env, "RECO_MAX_BATCH": "lots", "RECO_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}
    done = subprocess.run(
        [*RECO, "serve", "--port", "1"], env=bad, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "RECO_MAX_BATCH" in done.stderr and "lots" in done.stderr
    assert "Traceback" not in done.stderr
