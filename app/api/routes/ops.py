"""/healthz, /readyz, /metrics: no key needed."""

from __future__ import annotations

import asyncio
import contextlib
import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from app.api.deps import get_state
from app.api.responses import FastJSONResponse
from app.api.server import DRAINING
from app.api.state import AppState
from app.errors import NotFound, Unauthorized

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def readiness(state: AppState) -> dict[str, str]:
    """Each dependency's state, `ok` or `unavailable` (never a host, port or driver message). The database's
    comes from the background probe, so a hung database is reported at once."""
    checks: dict[str, str] = {}
    checks["database"] = "ok" if state.db_probe.up else "unavailable"
    checks["cache"] = "ok" if state.cache.ping() else "unavailable"  # answers are then served uncached
    ready = state.registry.current is not None or state.popular.ready
    checks["model"] = "ok" if ready else "unavailable"  # a model, or at least the popular fallback
    if state.event_log is not None:
        checks["event_log"] = "ok" if state.event_log.connected else "unavailable"
    return checks


@router.get("/readyz")
async def readyz(request: Request) -> FastJSONResponse:
    """Database, cache and a model (or the popular fallback) are usable; 503 naming what is not, or 503
    `draining` once the process was asked to stop (SIGTERM with RECO_DRAIN_S): it still answers requests."""
    if DRAINING.is_set():
        draining = {"code": "draining", "message": "shutting down: take this process out of rotation"}
        return FastJSONResponse({"error": draining}, status_code=503)
    probe = get_state(request).db_probe
    if not probe.up and not probe.checking:  # down: see whether it is back, waiting 0.3 s at most
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.to_thread(probe.check)), 0.3)
    checks = await run_in_threadpool(readiness, get_state(request))
    # cache: answers are then served uncached. In event-log mode events are taken without the database, so
    # it being down does not take this process out of a balancer (reads that need it answer 503 meanwhile).
    optional = {"cache", "database"} if get_state(request).event_log is not None else {"cache"}
    failing = [name for name, value in checks.items() if value != "ok" and name not in optional]
    if failing:
        body = {
            "error": {
                "code": "unavailable",
                "message": f"not ready: {', '.join(failing)} unavailable",
                "details": [{"dependency": k, "status": v} for k, v in checks.items()],
            }
        }
        return FastJSONResponse(body, status_code=503)
    registry = get_state(request).registry
    current = registry.current
    serving = {
        "model_version": current.version if current else None,
        "items": current.n_rows if current else 0,
        "index": current.index.kind if current else None,
        "vector_engine": registry.engine.name,
        "model_error": registry.last_error,
    }
    return FastJSONResponse({"status": "ready", "checks": checks, "serving": serving})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    state = get_state(request)
    if not state.settings.metrics_enabled:
        raise NotFound("metrics are disabled (RECO_METRICS_ENABLED=false)")
    key = state.settings.metrics_key
    if key:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise Unauthorized("GET /metrics needs `Authorization: Bearer <RECO_METRICS_KEY>`")
    state.metrics.sync_cache(state.cache)
    return Response(generate_latest(state.metrics.scrape_registry()), media_type=CONTENT_TYPE_LATEST)
