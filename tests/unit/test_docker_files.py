"""Dockerfile and .dockerignore, read statically (no engine here): the build's inputs exist and the image's
shape is the one docker-compose.yml and the README rely on."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def _instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
    return result


def _stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    """Instructions per build stage, by stage name."""
    stages: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for ins in instructions:
        if ins.keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)$", ins.args, re.IGNORECASE)
            assert match, f"every stage is named: {ins.args}"
            current = stages.setdefault(match.group(1), [])
        elif current is not None:
            current.append(ins)
    return stages


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes `path` (relative, '/'-separated): the last matching rule wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # the path and its parent folders
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def stages() -> dict[str, list[Instruction]]:
    return _stages(_instructions((ROOT / "Dockerfile").read_text()))


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _args(stage: list[Instruction], keyword: str) -> list[str]:
    return [ins.args for ins in stage if ins.keyword == keyword]


def test_multi_stage_runtime_copies_the_builders_venv(stages: dict[str, list[Instruction]]) -> None:
    assert list(stages) == ["builder", "runtime"]
    assert "--from=builder /opt/venv /opt/venv" in _args(stages["runtime"], "COPY")
    assert not any("pip install" in run for run in _args(stages["runtime"], "RUN"))  # no compilers there


def test_builder_installs_with_constraints_and_a_torch_index_arg(
    stages: dict[str, list[Instruction]],
) -> None:
    builder = stages["builder"]
    args = dict(arg.partition("=")[::2] for arg in _args(builder, "ARG"))
    assert "TORCH_INDEX_URL" in args
    assert (ROOT / args["CONSTRAINTS"]).is_file()
    installs = [run for run in _args(builder, "RUN") if "pip install" in run]
    assert any(
        '--extra-index-url "${TORCH_INDEX_URL}"' in run and '-c "${CONSTRAINTS}" .' in run for run in installs
    )


def test_runtime_runs_reco_as_a_non_root_user(stages: dict[str, list[Instruction]]) -> None:
    runtime = stages["runtime"]
    users = _args(runtime, "USER")
    assert users and users[-1] not in ("root", "0")
    assert _args(runtime, "EXPOSE") == ["8000"]
    (health,) = _args(runtime, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/healthz" in health
    assert _args(runtime, "ENTRYPOINT") == ['["reco"]']
    (cmd,) = _args(runtime, "CMD")
    assert cmd.startswith('["serve", "--host", "0.0.0.0"')
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "reco" in scripts  # the ENTRYPOINT exists once the package is installed


def test_every_copied_path_exists_and_is_in_the_build_context(
    stages: dict[str, list[Instruction]], ignore_patterns: list[str]
) -> None:
    for stage in stages.values():
        for copy in _args(stage, "COPY"):
            words = shlex.split(copy)
            if any(word.startswith("--from=") for word in words):
                continue
            sources = [word for word in words[:-1] if not word.startswith("--")]
            for source in sources:
                matches = sorted(ROOT.glob(source))
                assert matches, f"COPY {source}: no such file in the repository"
                for match in matches:
                    files = [match] if match.is_file() else list(match.rglob("*.py"))
                    for file in files or [match]:
                        relative = file.relative_to(ROOT).as_posix()
                        assert not _ignored(relative, ignore_patterns), (
                            f"{relative} is excluded by .dockerignore"
                        )


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "var/reco.db",
        ".git/config",
        "tests/unit/x.py",
        ".env",
        "app/__pycache__/x.pyc",
        "docs/BENCHMARKS.md",
    ],
)
def test_dockerignore_keeps_local_state_out(path: str, ignore_patterns: list[str]) -> None:
    assert _ignored(path, ignore_patterns)
