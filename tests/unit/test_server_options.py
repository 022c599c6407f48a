"""`reco serve`'s uvicorn options come from settings, and serving imports no training stack."""

from __future__ import annotations

import subprocess
import sys

from app.api.server import HeaderTimeoutProtocol, RecoConfig, server_config
from app.settings import load_settings
from tests.helpers.servers import ROOT


def test_server_config_takes_every_option_from_settings() -> None:
    settings = load_settings(
        worker_startup_timeout_s=77,
        header_timeout_s=3.5,
        body_timeout_s=4.5,
        keep_alive_timeout_s=9,
        max_connections=123,
        drain_s=2.5,
        shutdown_timeout_s=11,
    )
    config = server_config(settings, "127.0.0.1", 8123, 2)
    assert isinstance(config, RecoConfig)
    assert config.timeout_worker_healthcheck == 77
    assert config.header_timeout_s == 3.5 and config.body_timeout_s == 4.5
    assert config.timeout_keep_alive == 9
    assert config.limit_concurrency == 123
    assert config.http is HeaderTimeoutProtocol
    assert config.workers == 2 and config.port == 8123
    assert config.drain_s == 2.5 and config.timeout_graceful_shutdown == 11


def test_defaults_are_safe() -> None:
    config = server_config(load_settings(), "127.0.0.1", 8000, 1)
    # uvicorn's own default (5 s) kills workers still importing on a busy machine
    assert config.timeout_worker_healthcheck >= 60
    assert 0 < config.header_timeout_s <= 30
    assert config.drain_s == 0  # a plain SIGTERM stops at once unless asked to drain
    assert config.timeout_graceful_shutdown is not None  # requests in progress get a bounded time


def test_importing_the_api_loads_no_torch_nor_training_code() -> None:
    code = (
        "import sys, app.api.app, app.api.server; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'app.ml.train', 'app.trainer'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
