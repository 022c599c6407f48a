"""Settings: RECO_* variables parsed, invalid ones refused at start with a message naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.settings import DEFAULT_EVENT_WEIGHTS, Settings, load_settings
from app.trainer.pipeline import train_config

SECRET = "a-secret-key-that-must-not-leak"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RECO_* variable or .env file of the machine leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("RECO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


INVALID = [
    ("RECO_MAX_BATCH", "abc", "valid integer"),
    ("RECO_MAX_BATCH", "0", "greater than or equal to 1"),
    ("RECO_MAX_BODY_BYTES", "10", "greater than or equal to 1024"),
    ("RECO_DATABASE_URL", "mysql://db/reco", "must start with sqlite:/// or postgresql://"),
    ("RECO_REDIS_URL", "http://cache:6379", "must start with redis://"),
    ("RECO_EVENT_WEIGHTS", "view=1", "not valid JSON"),
    ("RECO_EVENT_WEIGHTS", '{"view": -1}', "weight of 'view' must be a finite number >= 0"),
    ("RECO_EVENT_WEIGHTS", "{}", "needs at least one event type"),
    ("RECO_API_KEYS", "short:ingest", "at least 16 characters"),
    ("RECO_API_KEYS", f"{SECRET}:root", "unknown scope 'root'"),
    ("RECO_POPULAR_WINDOWS", "7x", "window '7x' must be a number and a unit"),
    ("RECO_TRAIN_DEVICE", "tpu", "RECO_TRAIN_DEVICE"),
    ("RECO_CACHE_TTL_SECONDS", "-5", "greater than or equal to 1"),
    ("RECO_METRICS_ENABLED", "perhaps", "valid boolean"),
]


@pytest.mark.parametrize(("name", "value", "message"), INVALID, ids=[f"{n}={v}" for n, v, _ in INVALID])
def test_invalid_variable_fails_with_a_message_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as failure:
        load_settings()
    text = str(failure.value.code)
    assert text.startswith("invalid configuration:")
    assert f"{name}:" in text
    assert message in text


def test_api_keys_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_API_KEYS", f"{SECRET}:ingest,{SECRET}x:root")
    with pytest.raises(SystemExit) as failure:
        load_settings()
    assert SECRET not in str(failure.value.code)
    assert "RECO_API_KEYS" in str(failure.value.code)


def test_defaults_are_the_embedded_mode() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///./var/reco.db" and settings.is_sqlite
    assert settings.redis_url is None
    assert settings.run_embedded_worker is True
    assert settings.max_batch == 5000
    assert settings.event_weights == DEFAULT_EVENT_WEIGHTS
    assert settings.static_keys == {}


def test_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_DATABASE_URL", "postgres://reco:pw@db:5432/reco")
    monkeypatch.setenv("RECO_REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("RECO_API_KEYS", f"{SECRET}:ingest+read, {SECRET}2:admin")
    monkeypatch.setenv("RECO_EVENT_WEIGHTS", '{"view": 1, "wishlist": 3.5}')
    monkeypatch.setenv("RECO_MAX_BATCH", "100")
    monkeypatch.setenv("RECO_POPULAR_WINDOWS", "1h, 7d")
    settings = load_settings()
    assert settings.sqlalchemy_url == "postgresql+psycopg://reco:pw@db:5432/reco"
    assert not settings.is_sqlite and settings.run_embedded_worker is False
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.static_keys == {SECRET: frozenset({"ingest", "read"}), f"{SECRET}2": frozenset({"admin"})}
    assert settings.event_weights == {"view": 1.0, "wishlist": 3.5}
    assert settings.max_batch == 100
    assert settings.popular_windows == ["1h", "7d"]


def test_empty_redis_url_means_in_process_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_REDIS_URL", "")
    assert load_settings().redis_url is None


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RECO_MAX_BATCH=77\nRECO_LOG_LEVEL=DEBUG\n")
    settings = load_settings()
    assert settings.max_batch == 77 and settings.log_level == "DEBUG"


def test_overrides_win_and_settings_are_frozen() -> None:
    settings = load_settings(max_batch=9)
    assert settings.max_batch == 9
    with pytest.raises(Exception, match="frozen"):
        settings.max_batch = 10
    assert isinstance(Settings(), Settings)


def test_training_overrides_reach_the_model_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_TRAIN_MEMBERS", "2")
    monkeypatch.setenv("RECO_TRAIN_MAX_LEN", "30")
    config = train_config(load_settings())
    assert (config.model.members, config.model.max_len) == (2, 30)
    monkeypatch.setenv("RECO_TRAIN_MEMBERS", "0")
    with pytest.raises(SystemExit, match="RECO_TRAIN_MEMBERS"):
        load_settings()
