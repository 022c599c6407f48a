"""Every operation as data (method, path, query, body, how to read the answer), shared by the sync and the
asyncio client, and the retry policy both follow."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from reco_client import models as m

# What an event may carry (the server's `EventIn`; a repository test compares the two).
EVENT_FIELDS = frozenset(
    {"event_id", "user_id", "item_id", "type", "value", "timestamp", "recommendation_id", "items"}
)
MAX_BATCH = 5000  # the contract's cap on events (or items) in one request
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    body: Any = None
    read: Callable[[Any], Any] | None = None  # JSON -> answer; None: no body (204)


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n)) seconds, and
    at least what the server's `Retry-After` asks (up to `cap`). Retried: 429, 502, 503, 504 and connection
    errors or timeouts. Every operation is safe to repeat: events carry an `event_id` the client assigned
    before the first try (so the server stores a retried event once), PUT/DELETE are idempotent, item
    batches are upserts and a retrain while one is queued returns that job."""

    attempts: int = 5  # retries after the first try
    base_s: float = 0.2
    cap_s: float = 10.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wait = random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))
        if retry_after is not None:
            wait = max(wait, min(self.cap_s, retry_after))
        return wait


def _q(segment: str) -> str:
    if not isinstance(segment, str) or not segment:
        raise ValueError(f"an id must be a non-empty string (got {segment!r})")
    return quote(segment, safe="")


def _params(**values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list | tuple | set | frozenset):
            if value:
                out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = value
    return out


def prepare_events(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Checked copies of `events`, each with an `event_id` (a new UUID where it had none) so that a resend
    is recognised by the server as the same event; datetimes become ISO 8601 text."""
    out = []
    for n, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise TypeError(f"events[{n}]: an event is a dict (got {type(event).__name__})")
        unknown = set(event) - EVENT_FIELDS
        if unknown:
            raise ValueError(
                f"events[{n}]: unknown field(s) {sorted(unknown)}; known: {sorted(EVENT_FIELDS)}"
            )
        for required in ("user_id", "type"):
            if not event.get(required):
                raise ValueError(f"events[{n}].{required}: required")
        copy = dict(event)
        if not copy.get("event_id"):
            copy["event_id"] = uuid.uuid4().hex
        if isinstance(copy.get("timestamp"), datetime):
            copy["timestamp"] = copy["timestamp"].isoformat()
        out.append(copy)
    return out


def events(batch: list[dict[str, Any]]) -> Call:
    return Call("POST", "/v1/events", body={"events": batch}, read=lambda d: m.parse(m.IngestResult, d))


def recommend(
    user_id: str,
    k: int = 10,
    *,
    category: str | None = None,
    exclude: Iterable[str] | None = None,
    include_seen: bool | None = None,
    explain: bool | None = None,
    placement: str | None = None,
    filter: str | None = None,
    rules: str | None = None,
) -> Call:
    params = _params(
        k=k,
        category=category,
        exclude=list(exclude or []),
        include_seen=include_seen,
        explain=explain,
        placement=placement,
        filter=filter,
        rules=rules,
    )
    return Call(
        "GET",
        f"/v1/users/{_q(user_id)}/recommendations",
        params=params,
        read=lambda d: m.parse(m.Recommendations, d),
    )


def recommend_session(recent_items: Iterable[str], k: int = 10, **fields: Any) -> Call:
    body = {
        "recent_items": list(recent_items),
        "k": k,
        **{k_: v for k_, v in fields.items() if v is not None},
    }
    if "exclude" in body:
        body["exclude"] = list(body["exclude"])
    return Call("POST", "/v1/recommendations", body=body, read=lambda d: m.parse(m.Recommendations, d))


def similar(
    item_id: str,
    k: int = 10,
    *,
    category: str | None = None,
    placement: str | None = None,
    filter: str | None = None,
    rules: str | None = None,
) -> Call:
    params = _params(k=k, category=category, placement=placement, filter=filter, rules=rules)
    return Call(
        "GET", f"/v1/items/{_q(item_id)}/similar", params=params, read=lambda d: m.parse(m.Similar, d)
    )


def popular(k: int = 10, *, category: str | None = None, window: str | None = None) -> Call:
    return Call(
        "GET",
        "/v1/popular",
        params=_params(k=k, category=category, window=window),
        read=lambda d: m.parse(m.Popular, d),
    )


def put_item(item_id: str, fields: Mapping[str, Any]) -> Call:
    return Call("PUT", f"/v1/items/{_q(item_id)}", body=dict(fields), read=lambda d: m.parse(m.Item, d))


def upsert_items(items: list[Mapping[str, Any]]) -> Call:
    return Call(
        "POST",
        "/v1/items",
        body={"items": [dict(i) for i in items]},
        read=lambda d: m.parse(m.IngestResult, d),
    )


def get_item(item_id: str) -> Call:
    return Call("GET", f"/v1/items/{_q(item_id)}", read=lambda d: m.parse(m.Item, d))


def list_items(
    *,
    category: str | None = None,
    available: bool | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call:
    params = _params(category=category, available=available, limit=limit, cursor=cursor)
    return Call("GET", "/v1/items", params=params, read=lambda d: m.parse(m.ItemPage, d))


def delete_item(item_id: str) -> Call:
    return Call("DELETE", f"/v1/items/{_q(item_id)}")


def put_user(user_id: str, attributes: Mapping[str, Any] | None = None) -> Call:
    return Call(
        "PUT",
        f"/v1/users/{_q(user_id)}",
        body={"attributes": dict(attributes or {})},
        read=lambda d: m.parse(m.User, d),
    )


def get_user(user_id: str) -> Call:
    return Call("GET", f"/v1/users/{_q(user_id)}", read=lambda d: m.parse(m.User, d))


def delete_user(user_id: str) -> Call:
    return Call("DELETE", f"/v1/users/{_q(user_id)}")


def retrain(reason: str | None = None, mode: str | None = None, time_budget_s: float | None = None) -> Call:
    body = {
        k: v
        for k, v in {"reason": reason, "mode": mode, "time_budget_s": time_budget_s}.items()
        if v is not None
    }
    return Call("POST", "/v1/admin/retrain", body=body, read=lambda d: m.parse(m.Job, d))


def job(job_id: str) -> Call:
    return Call("GET", f"/v1/admin/jobs/{_q(job_id)}", read=lambda d: m.parse(m.Job, d))


def list_models() -> Call:
    return Call("GET", "/v1/admin/models", read=lambda d: m.parse(m.ModelList, d))


def activate(version: str) -> Call:
    return Call("POST", f"/v1/admin/models/{_q(version)}/activate", read=lambda d: m.parse(m.Activated, d))


def retry_after(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        return None  # an HTTP date: fall back to the backoff
