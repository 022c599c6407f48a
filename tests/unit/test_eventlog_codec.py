"""The event-log message format: a batch round-trips, id-less events get ids once, an oversized batch splits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.eventlog import codec
from app.events.repository import NewEvent, NewImpression
from app.settings import load_settings

T0 = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)


def events(n: int) -> list[NewEvent]:
    return [
        NewEvent(
            f"e{i}" if i % 2 else None,
            f"u{i % 3}",
            f"i{i}",
            "view",
            1.5 if i % 3 else None,
            T0 + timedelta(seconds=i),
        )
        for i in range(n)
    ]


def test_a_batch_round_trips_and_id_less_events_get_stable_ids() -> None:
    batch_id = codec.new_batch_id()
    with_ids = codec.with_ids(events(6), batch_id)
    assert [e.event_id for e in with_ids] == [
        f"el:{batch_id}:0",
        "e1",
        f"el:{batch_id}:2",
        "e3",
        f"el:{batch_id}:4",
        "e5",
    ]
    shown = [NewImpression("rec-1", "u1", ("i1", "i2"), T0, "home", "exp", "b")]
    decoded = codec.decode(codec.encode(with_ids, shown))
    assert decoded.events == with_ids  # timestamps to the microsecond, in UTC
    assert decoded.impressions == shown


def test_an_oversized_batch_is_split_in_order_into_parts_that_fit() -> None:
    batch = codec.with_ids(events(200), "b")
    shown = [NewImpression(f"rec-{i}", "u1", ("i1",), T0) for i in range(7)]
    whole = codec.encode(batch, shown)
    parts = codec.encode_parts(batch, shown, len(whole) // 5)
    assert len(parts) > 4 and all(len(p) <= len(whole) // 5 for p in parts)
    decoded = [codec.decode(p) for p in parts]
    assert [e for d in decoded for e in d.events] == batch
    assert [i for d in decoded for i in d.impressions] == shown
    assert codec.encode_parts(batch, shown, len(whole)) == [whole]


def test_a_message_that_is_not_a_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="not an event-log batch"):
        codec.decode(b'{"hello": 1}')


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("event_log_url", "redis://x", "RECO_EVENT_LOG_URL"),
        ("event_log_stream", "a.b", "RECO_EVENT_LOG_STREAM"),
        ("event_log_subject", "a.*", "RECO_EVENT_LOG_SUBJECT"),
        ("event_log_storage", "disk", "RECO_EVENT_LOG_STORAGE"),
        ("event_log_timeout_s", 0, "RECO_EVENT_LOG_TIMEOUT_S"),
    ],
)
def test_bad_event_log_settings_name_the_variable(name: str, value: object, expected: str) -> None:
    with pytest.raises(SystemExit, match=expected):
        load_settings(**{name: value})


def test_the_event_log_is_off_by_default() -> None:
    assert load_settings().event_log_url is None
