"""/v1/admin/stats: what the dashboard shows, as JSON (admin keys, or a dashboard session cookie).

Nothing here reads over all events: event charts read the per-minute rollup `event_counts` that ingestion
keeps; counts are `count(*)` on users and items (PostgreSQL's planner estimate once a table is large) and the
rollup's sum for events; latency quantiles come from the request histograms the app keeps.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import BEARER, ErrorOut, get_state, require
from app.api.state import AppState
from app.dashboard.auth import current_session
from app.db.tables import EventCount, Item, ModelVersion, User
from app.errors import Unauthorized, ValidationFailed

WINDOWS = {"1h": 3600, "24h": 86400}
RECOMMENDATION_ROUTES = frozenset(
    {
        "/v1/users/{user_id}/recommendations",
        "/v1/recommendations",
        "/v1/items/{item_id}/similar",
        "/v1/popular",
    }
)
EXACT_COUNT_UNDER = 200_000  # PostgreSQL: below this planner estimate, count(*) exactly
_admin = require("admin")


async def admin_or_session(
    request: Request, _bearer: HTTPAuthorizationCredentials | None = Depends(BEARER)
) -> frozenset[str]:
    """A bearer key with the admin scope (as every admin route), or a valid dashboard session cookie."""
    if request.headers.get("authorization"):
        return await _admin(request)
    session = await current_session(request)
    if session is None:
        raise Unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (or sign in at /dashboard/login)"
        )
    return session.scopes


router = APIRouter(
    tags=["admin"],
    dependencies=[Depends(admin_or_session)],
    responses={
        401: {"model": ErrorOut, "description": "no, unknown or revoked API key (and no dashboard session)"},
        403: {"model": ErrorOut, "description": "the key lacks the admin scope"},
    },
)


def _utc(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def _invalid(name: str, msg: str) -> ValidationFailed:
    return ValidationFailed(f"query.{name}: {msg}", details=[{"loc": ["query", name], "msg": msg}])


_PG_SERIES = text(
    "SELECT CAST(floor(extract(epoch FROM bucket_start) / :bucket) AS bigint), type, sum(count) "
    "FROM event_counts WHERE bucket_start >= :start AND bucket_start < :end GROUP BY 1, 2"
)
_SQLITE_SERIES = text(
    "SELECT CAST(strftime('%s', bucket_start) AS integer) / :bucket, type, sum(count) "
    "FROM event_counts WHERE bucket_start >= :start AND bucket_start < :end GROUP BY 1, 2"
)


def event_series(session: Session, window: str, bucket_s: int, now: datetime | None = None) -> dict[str, Any]:
    """Events per bucket and type over the window, from the rollup (zeros filled in), oldest first.

    Summed by the database per (bucket, type): at most buckets x types rows come back, whatever the number of
    delta rows (compacted or not) behind them."""
    seconds = WINDOWS[window]
    now = now or datetime.now(UTC)
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(seconds=seconds)
    n = math.ceil(seconds / bucket_s)
    postgres = session.get_bind().dialect.name == "postgresql"
    params: dict[str, Any] = {"bucket": bucket_s}
    if postgres:
        params.update(start=start, end=end)
    else:  # SQLite stores naive UTC text: compare as such
        params.update(
            start=start.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds"),
            end=end.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds"),
        )
    rows = session.execute(_PG_SERIES if postgres else _SQLITE_SERIES, params).all()
    first = int(start.timestamp())
    series: dict[str, list[int]] = {}
    for slot_of_epoch, kind, count in rows:
        slot = (int(slot_of_epoch) * bucket_s - first) // bucket_s
        if 0 <= slot < n:
            series.setdefault(kind, [0] * n)[slot] += int(count)
    times = [first + i * bucket_s for i in range(n)]
    return {
        "window": window,
        "bucket_s": bucket_s,
        "start": start,
        "end": end,
        "times": times,
        "series": dict(sorted(series.items())),
        "total": sum(sum(v) for v in series.values()),
    }


# A partitioned table (events, migration 0009) has no estimate of its own: the sum of its partitions'.
_PG_ESTIMATE = text(
    "SELECT CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(greatest(p.reltuples, 0)), 0)::bigint"
    " FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid WHERE i.inhparent = c.oid)"
    " ELSE c.reltuples::bigint END FROM pg_class c WHERE c.oid = to_regclass(:t)"
)


def _estimate(session: Session, table: str) -> int | None:
    """PostgreSQL's planner estimate of a table's rows when it is large (None on SQLite or when small)."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    estimate = session.scalar(_PG_ESTIMATE, {"t": table})
    return int(estimate) if estimate is not None and estimate >= EXACT_COUNT_UNDER else None


def _count(session: Session, table: type[User] | type[Item]) -> tuple[int, str]:
    estimate = _estimate(session, table.__tablename__)
    if estimate is not None:
        return estimate, "estimate"
    return int(session.scalar(select(func.count()).select_from(table)) or 0), "exact"


def counts(session: Session) -> dict[str, Any]:
    """Users and items: count(*), or PostgreSQL's estimate once large. Events: the rollup's sum (every event
    stored, less those erased), or the estimate of the events table once the rollup itself is large
    (a long history of minutes), so the overview stays cheap."""
    users, users_how = _count(session, User)
    items, items_how = _count(session, Item)
    events_how = "rollup"
    estimate = _estimate(session, "event_counts") and _estimate(session, "events")
    if estimate:
        events, events_how = estimate, "estimate"
    else:
        events = int(session.scalar(select(func.coalesce(func.sum(EventCount.count), 0))) or 0)
    return {
        "users": users,
        "items": items,
        "events": events,
        "how": {"users": users_how, "items": items_how, "events": events_how},
    }


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets ending at +Inf."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # the highest finite bucket: what Prometheus answers too
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def latency(state: AppState) -> dict[str, Any]:
    """p50/p99 (seconds) of recommendation requests (GET/POST on the serving routes) since start, from the
    `reco_http_request_seconds` histogram (every worker's under `reco serve`)."""
    merged: dict[float, float] = {}
    requests = 0.0
    for metric in state.metrics.scrape_registry().collect():
        if metric.name != "reco_http_request_seconds":
            continue
        for sample in metric.samples:
            if sample.labels.get("route") not in RECOMMENDATION_ROUTES:
                continue
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                merged[bound] = merged.get(bound, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                requests += sample.value
    buckets = sorted(merged.items())
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    return {
        "requests": int(requests),
        "p50_ms": None if p50 is None else round(p50 * 1000, 3),
        "p99_ms": None if p99 is None else round(p99 * 1000, 3),
    }


def active_model(session: Session, state: AppState, now: datetime | None = None) -> dict[str, Any] | None:
    """The active version, when it was activated and its age in seconds."""
    row = session.execute(
        select(ModelVersion.version, ModelVersion.created_at, ModelVersion.activated_at).where(
            ModelVersion.status == "active"
        )
    ).first()
    if row is None:
        return None
    since = _utc(row.activated_at) or _utc(row.created_at)
    now = now or datetime.now(UTC)
    return {
        "version": row.version,
        "serving": state.registry.version,
        "created_at": _utc(row.created_at),
        "activated_at": _utc(row.activated_at),
        "age_s": None if since is None else max(0, int((now - since).total_seconds())),
    }


def overview(state: AppState) -> dict[str, Any]:
    """Everything the overview page shows besides the charts."""
    with state.sessions() as session:
        out = {"counts": counts(session), "active_model": active_model(session, state)}
    stats = state.cache.stats
    out["cache"] = {
        "backend": state.cache.name,
        "hits": stats.hits,
        "misses": stats.misses,
        "hit_ratio": round(stats.hit_ratio, 4),
    }
    out["latency"] = latency(state)
    return out


def ndcg_series(session: Session) -> list[dict[str, Any]]:
    """Each version's NDCG@10, oldest first (the models page's chart)."""
    rows = session.execute(
        select(
            ModelVersion.version, ModelVersion.status, ModelVersion.metrics, ModelVersion.created_at
        ).order_by(ModelVersion.created_at, ModelVersion.id)
    ).all()
    return [
        {
            "version": r.version,
            "status": r.status,
            "created_at": _utc(r.created_at),
            "ndcg10": metric(dict(r.metrics or {}), "NDCG@10"),
        }
        for r in rows
    ]


def metric(metrics: dict[str, Any], name: str) -> float | None:
    """The model's `name` (e.g. NDCG@10) among a version's metrics: the test value, else the validation one."""
    for key in (name, f"test_{name}", f"valid_{name}", f"best_valid_{name}"):
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    for nested in ("test", "model"):
        inner = metrics.get(nested)
        if isinstance(inner, dict) and isinstance(inner.get(name), int | float):
            return float(inner[name])
    return None


def baselines(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """MostPop/EASE (and other baseline) metrics when a version recorded them: name -> {metric: value}."""
    out: dict[str, dict[str, float]] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            for row in value:
                if isinstance(row, dict) and "method" in row:
                    name = str(row["method"])
                    if _is_baseline(name):
                        out[name] = {k: float(v) for k, v in row.items() if _number(v) and "@" in k}
        elif _number(value) and _is_baseline(prefix):
            head, _, tail = prefix.rpartition(".")
            if not head:
                head, _, tail = prefix.partition("_")
            out.setdefault(head, {})[tail] = float(value)

    walk("", metrics)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_baseline(name: str) -> bool:
    lowered = name.lower()
    return "mostpop" in lowered or "ease" in lowered or "baseline" in lowered


@router.get(
    "/v1/admin/stats/events",
    responses={422: {"model": ErrorOut, "description": "window or bucket is invalid; the message names it"}},
)
async def stats_events(
    request: Request,
    window: Annotated[str, Query(max_length=8, description="1h or 24h")] = "1h",
    bucket: Annotated[
        str, Query(max_length=8, description="seconds per point: a multiple of 60 from 60 to 3600")
    ] = "60",
) -> Response:
    """Events per minute (or per `bucket` seconds) by type over the last hour (`window=1h`) or day (`24h`),
    from the per-minute rollup ingestion keeps (`times`: each bucket's start, epoch seconds)."""
    state = get_state(request)
    if window not in WINDOWS:
        raise _invalid("window", f"must be one of {', '.join(WINDOWS)} (got {window[:40]!r})")
    try:
        seconds = int(bucket)
    except ValueError:
        raise _invalid("bucket", f"must be a whole number of seconds (got {bucket[:40]!r})") from None
    if seconds < 60 or seconds > 3600 or seconds % 60:
        raise _invalid("bucket", f"must be a multiple of 60 from 60 to 3600 (got {seconds})")

    def work() -> bytes:
        with state.sessions() as session:
            return orjson.dumps(event_series(session, window, seconds))  # thousands of ints: orjson, not the
            # generic encoder (a day of minutes by five types took ~40 ms there)

    return Response(await run_in_threadpool(work), media_type="application/json")


@router.get("/v1/admin/stats/overview")
async def stats_overview(request: Request) -> dict[str, Any]:
    """Counts of users, items and events, the cache hit ratio, recommendation latency, the active model."""
    return await run_in_threadpool(overview, get_state(request))


@router.get("/v1/admin/stats/models")
async def stats_models(request: Request) -> dict[str, Any]:
    """NDCG@10 of every model version, oldest first."""
    state = get_state(request)

    def work() -> dict[str, Any]:
        with state.sessions() as session:
            return {"versions": ndcg_series(session)}

    return await run_in_threadpool(work)
