"""A batch as one JetStream message: compact JSON rows, every event with its event_id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson

from app.events.repository import NewEvent, NewImpression
from app.records import as_utc

FORMAT = 1


@dataclass(frozen=True, slots=True)
class Decoded:
    """One message's events and impression reports."""

    events: list[NewEvent]
    impressions: list[NewImpression]


def new_batch_id() -> str:
    """The Nats-Msg-Id of one accepted request (JetStream drops a second publish of it)."""
    return uuid.uuid4().hex


def with_ids(events: Sequence[NewEvent], batch_id: str) -> list[NewEvent]:
    """Events without an event_id get `el:<batch id>:<index>`: a redelivered message stores them once."""
    return [
        e if e.event_id is not None else replace(e, event_id=f"el:{batch_id}:{index}")
        for index, e in enumerate(events)
    ]


def encode(events: Sequence[NewEvent], impressions: Sequence[NewImpression]) -> bytes:
    """The message body."""
    return orjson.dumps(
        {
            "f": FORMAT,
            "ev": [
                [e.event_id, e.user_id, e.item_id, e.type, e.value, as_utc(e.ts), e.recommendation_id]
                for e in events
            ],
            "im": [
                [
                    i.recommendation_id,
                    i.user_id,
                    list(i.items),
                    as_utc(i.ts),
                    i.placement,
                    i.experiment,
                    i.variant,
                ]
                for i in impressions
            ],
        }
    )


def encode_parts(
    events: Sequence[NewEvent], impressions: Sequence[NewImpression], max_bytes: int
) -> list[bytes]:
    """One message, or (when over the server's max payload) the batch halved until every part fits."""
    body = encode(events, impressions)
    if len(body) <= max_bytes or len(events) + len(impressions) <= 1:
        return [body]
    half = (len(events) + len(impressions)) // 2  # events first, then impressions, as in the whole batch
    cut = max(0, half - len(events))
    return [
        *encode_parts(events[:half], impressions[:cut], max_bytes),
        *encode_parts(events[half:], impressions[cut:], max_bytes),
    ]


def _ts(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def decode(data: bytes) -> Decoded:
    """The message body back (ValueError when it is not one)."""
    body = orjson.loads(data)
    if not isinstance(body, dict) or body.get("f") != FORMAT:
        raise ValueError(f"not an event-log batch of format {FORMAT}")
    events = [NewEvent(e, u, i, t, v, _ts(ts), r) for e, u, i, t, v, ts, r in body["ev"]]
    impressions = [
        NewImpression(rec, user, tuple(items), _ts(ts), placement, experiment, variant)
        for rec, user, items, ts, placement, experiment, variant in body["im"]
    ]
    return Decoded(events, impressions)
