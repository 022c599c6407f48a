"""The durable event log (RECO_EVENT_LOG_URL): POST /v1/events through a private NATS JetStream server, written
to PostgreSQL by `reco consume`. Real engines only: a private nats-server (-js, file store), the test
PostgreSQL database, the test Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.cache import RedisCache
from app.cache import keys as cache_keys
from app.cache.base import UserAnswer
from app.eventlog import codec
from app.events.repository import NewEvent
from app.settings import Settings
from tests.conftest import INGEST_KEY, PG_URL, REDIS_URL, STATIC_KEYS, _truncate, auth
from tests.eventlog.support import consumer, count_rows, rollup_total, stored_ids, wait_until
from tests.helpers.nats import NatsServer, private_nats

pytestmark = pytest.mark.skipif(
    not (PG_URL and REDIS_URL), reason="needs RECO_TEST_DATABASE_URL and _REDIS_URL"
)


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with private_nats() as server:
        yield server


@pytest.fixture
def log_env(pg_database: str, nats_server: NatsServer, redis_prefix: str) -> dict[str, str]:
    """RECO_* settings of one test: its own stream, subject and durable consumer, the test database and Redis."""
    _truncate(pg_database)
    tag = uuid.uuid4().hex[:8]
    assert REDIS_URL
    return {
        "RECO_DATABASE_URL": pg_database,
        "RECO_REDIS_URL": REDIS_URL,
        "RECO_REDIS_PREFIX": redis_prefix,
        "RECO_API_KEYS": STATIC_KEYS,
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_EVENT_LOG_URL": nats_server.url,
        "RECO_EVENT_LOG_STREAM": f"TEST_{tag}",
        "RECO_EVENT_LOG_SUBJECT": f"test.{tag}.events",
        "RECO_EVENT_LOG_DURABLE": f"consume-{tag}",
        "RECO_EVENT_LOG_ACK_WAIT_S": "2",
        "RECO_EVENT_LOG_TIMEOUT_S": "1",
        "RECO_MODEL_POLL_SECONDS": "0",
        "RECO_CATALOG_POLL_SECONDS": "0",
        "RECO_POPULAR_POLL_SECONDS": "0",
    }


def settings_of(env: dict[str, str], tmp_path: Path) -> Settings:
    return Settings(**{k[5:].lower(): v for k, v in env.items()}, artifact_dir=tmp_path / "artifacts")  # type: ignore[arg-type]


def stream_messages(url: str, stream: str) -> int:
    async def read() -> int:
        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        finally:
            await nc.close()

    return asyncio.run(read())


def test_round_trip_stores_each_event_once_counts_it_once_and_updates_the_cache(
    log_env: dict[str, str], tmp_path: Path, pg_database: str, redis_prefix: str
) -> None:
    settings = settings_of(log_env, tmp_path)
    cache = RedisCache(REDIS_URL, prefix=redis_prefix)  # type: ignore[arg-type]
    key = cache_keys.recommendations("u1", "v1", "k=10")
    looked = cache.lookup_user("u1", key, 10)  # u1 has a cached answer and a held (empty) latest-events list
    assert cache.store_user("u1", looked, UserAnswer(key, b"{}", 60, history=[], history_ttl_seconds=60))
    batch = {
        "events": [
            {"event_id": "rt-1", "user_id": "u1", "item_id": "i1", "type": "view"},
            {"event_id": "rt-2", "user_id": "u1", "item_id": "i2", "type": "purchase", "value": 2.0},
            {"user_id": "u2", "item_id": "i1", "type": "click"},  # no id: the API gives it one
            {"event_id": "rt-1", "user_id": "u1", "item_id": "i1", "type": "view"},  # repeated in the batch
            {"user_id": "u2", "item_id": "", "type": "view"},  # rejected
            {"type": "impression", "user_id": "u2", "recommendation_id": "rec-1", "items": ["i1", "i2"]},
        ]
    }
    with TestClient(create_app(settings), headers=auth(INGEST_KEY)) as client:
        answer = client.post("/v1/events", json=batch)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["accepted"], body["duplicates"]) == (4, 1)  # 3 events + 1 impression queued
        assert [r["index"] for r in body["rejected"]] == [4]
        assert client.get("/readyz").json()["checks"]["event_log"] == "ok"
        assert stream_messages(settings.event_log_url, settings.event_log_stream) == 1  # type: ignore[arg-type]
        assert count_rows(pg_database, "") == (0, 0)  # acknowledged by JetStream, not written yet

        proc = consumer(log_env)
        proc.start()
        try:
            wait_until(lambda: count_rows(pg_database, "")[0] == 3, 30, "the consumer stores the batch")
            # the same events again (a client retry): acknowledged, stored nothing twice
            again = client.post("/v1/events", json={"events": batch["events"][:2]})
            assert again.status_code == 200 and again.json()["accepted"] == 2
            wait_until(
                lambda: stream_messages(settings.event_log_url, settings.event_log_stream) == 0,  # type: ignore[arg-type]
                30,
                "the consumer acknowledges the retry",
            )
            wait_until(lambda: "2 duplicates" in proc.output(), 10, "the consumer reports the duplicates")
        finally:
            proc.stop()
    ids = stored_ids(pg_database, "")
    assert {"rt-1", "rt-2"} <= ids and len(ids) == 3
    assert next(iter(ids - {"rt-1", "rt-2"})).startswith("el:")
    assert count_rows(pg_database, "") == (3, 3)
    assert rollup_total(pg_database) == (3, 3)  # the retried events were not counted again
    # the cache: u1's answer was invalidated and the first batch's events went on its list, newest first;
    # the retry (ids already stored) dropped the list, so the next read refills it from the database
    after = cache.lookup_user("u1", key, 10)
    assert after.answer is None and after.generation > looked.generation
    assert after.history is None
    cache.close()


def test_redelivered_message_stores_nothing_twice(
    log_env: dict[str, str], tmp_path: Path, pg_database: str
) -> None:
    """The same message published twice under one Nats-Msg-Id is kept once by JetStream; the same message body
    delivered twice (another id: what a consumer crash before its ack amounts to) is stored once, id-less
    events included (their ids were given before publishing)."""
    settings = settings_of(log_env, tmp_path)
    events = codec.with_ids(
        [
            NewEvent(
                None,
                "u9",
                f"i{n}",
                "view",
                None,
                datetime.now(UTC),
            )
            for n in range(5)
        ],
        codec.new_batch_id(),
    )
    body = codec.encode(events, [])

    async def publish() -> list[bool]:
        nc = await nats.connect(settings.event_log_url)
        js = nc.jetstream()
        from app.eventlog.nats_client import ensure_stream

        await ensure_stream(js, settings)
        dups = []
        for msg_id in ("m-1", "m-1", "m-2"):
            ack = await js.publish(settings.event_log_subject, body, headers={"Nats-Msg-Id": msg_id})
            dups.append(bool(ack.duplicate))
        await nc.close()
        return dups

    assert asyncio.run(publish()) == [False, True, False]
    proc = consumer(log_env)
    proc.start()
    try:
        wait_until(
            lambda: stream_messages(settings.event_log_url, settings.event_log_stream) == 0,  # type: ignore[arg-type]
            30,
            "the consumer acknowledges both messages",
        )
    finally:
        proc.stop()
    assert count_rows(pg_database, "el:") == (5, 5)
    assert rollup_total(pg_database) == (5, 5)


def test_nats_down_answers_503_with_retry_after_within_the_timeout(
    log_env: dict[str, str], tmp_path: Path
) -> None:
    with private_nats() as server:
        env = {**log_env, "RECO_EVENT_LOG_URL": server.url}
        with TestClient(create_app(settings_of(env, tmp_path)), headers=auth(INGEST_KEY)) as client:
            one = {"events": [{"event_id": "n-1", "user_id": "u1", "item_id": "i1", "type": "view"}]}
            assert client.post("/v1/events", json=one).status_code == 200
            server.kill()
            started = time.monotonic()
            down = client.post("/v1/events", json=one)
            elapsed = time.monotonic() - started
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == "1"
            assert down.json()["error"]["details"] == [{"dependency": "event_log"}]
            assert elapsed < 3.0  # RECO_EVENT_LOG_TIMEOUT_S=1, and some slack for a loaded machine
            assert client.get("/readyz").status_code == 503
