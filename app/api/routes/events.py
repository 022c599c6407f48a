"""POST /v1/events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from app.api.deps import BodyTooLarge, KeyFirstRoute, batch_list, get_state, read_json, require, token_user
from app.api.state import AppState
from app.db.engine import run_transaction
from app.errors import Forbidden, PayloadTooLarge, ValidationFailed
from app.eventlog import codec
from app.events import service
from app.events.schemas import IngestResult

router = APIRouter(tags=["events"], route_class=KeyFirstRoute)


@router.post(
    "/v1/events",
    response_model=IngestResult,
    dependencies=[Depends(require("ingest", publishable=True, limit="events"))],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventBatchIn"}}},
        }
    },
    responses={413: {"description": "batch or body over the limit"}, 422: {"description": "no valid event"}},
)
async def post_events(request: Request) -> IngestResult:
    """Record a batch of events; each is validated on its own, valid ones are stored durably before the answer."""
    state = get_state(request)
    settings = state.settings
    rejected = state.metrics.events.labels("rejected")
    try:
        body = await read_json(request, settings.max_body_bytes)
        raw = batch_list(body, "events", settings.max_batch)
    except (
        PayloadTooLarge,
        BodyTooLarge,
    ) as exc:  # a batch over the limit counts its events; a body over the cap counts 1
        details = exc.details if isinstance(exc, PayloadTooLarge) else []
        listed = bool(details) and details[0].get("loc") == ["events"]
        rejected.inc(len(body["events"]) if listed else 1)
        raise
    uid = token_user(request)
    if uid is not None:  # a publishable key under RECO_REQUIRE_USER_TOKEN: only the token's user
        for i, event in enumerate(raw):
            if isinstance(event, dict) and event.get("user_id") != uid:
                raise Forbidden(
                    f"events[{i}].user_id: a publishable key with a user token may only send events of the "
                    "token's user",
                    details=[{"loc": ["events", i, "user_id"], "msg": "is not the user token's user"}],
                )

    def validated() -> service.Validated:
        batch = service.validate_events(
            raw,
            event_types=service.accepted_types(settings.event_weights, settings.negative_types),
            max_future=timedelta(seconds=settings.max_future_seconds),
        )
        if raw and not batch.valid and not batch.in_batch_duplicates:
            details = [{"loc": r.loc, "msg": r.error} for r in batch.rejected]
            more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
            rejected.inc(len(batch.rejected))
            raise ValidationFailed(
                f"events[{batch.rejected[0].index}].{batch.rejected[0].error}{more}", details=details
            )
        return batch

    if state.event_log is not None:
        return await _publish(state, raw, validated)

    def work() -> IngestResult:
        batch = validated()
        outcome = run_transaction(state.sessions, lambda s: service.store(s, batch))
        accepted, duplicates = outcome.accepted, outcome.duplicates
        service.after_commit(
            state.cache,
            batch.events,
            stored=outcome.events_stored,
            history_len=settings.history_len,
            history_seconds=settings.history_cache_seconds,
        )
        metrics = state.metrics.events
        metrics.labels("accepted").inc(accepted)
        metrics.labels("duplicate").inc(duplicates)
        metrics.labels("rejected").inc(len(batch.rejected))
        return IngestResult(accepted=accepted, duplicates=duplicates, rejected=batch.rejected)

    return await run_in_threadpool(work)


async def _publish(
    state: AppState, raw: list[Any], validated: Callable[[], service.Validated]
) -> IngestResult:
    """Event-log mode: the valid events (an id given to those without one) go to JetStream as one message; the
    answer waits for JetStream's acknowledgement, never for the database. `accepted` counts what was queued
    (an event_id the database already holds is then skipped by the consumer, not counted here)."""
    assert state.event_log is not None
    log = state.event_log
    batch_id = codec.new_batch_id()

    def prepare() -> tuple[service.Validated, list[bytes]]:
        batch = validated()
        return batch, codec.encode_parts(
            codec.with_ids(batch.events, batch_id), batch.impressions, log.max_payload
        )

    batch, parts = await run_in_threadpool(prepare)
    if batch.valid:
        await log.publish(parts, batch_id)
    metrics = state.metrics.events
    metrics.labels("accepted").inc(batch.valid)
    metrics.labels("duplicate").inc(batch.in_batch_duplicates)
    metrics.labels("rejected").inc(len(batch.rejected))
    return IngestResult(accepted=batch.valid, duplicates=batch.in_batch_duplicates, rejected=batch.rejected)
