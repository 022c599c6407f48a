"""create_app(settings): assemble the API; the lifespan builds every client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.api import errors
from app.api.metrics import Metrics, MetricsMiddleware, cache_gauges
from app.api.routes import events, items, ops, users
from app.api.state import AppState
from app.auth.keys import KeyVerifier
from app.cache import make_cache
from app.catalog.schemas import ItemBatchIn
from app.db.engine import make_engine, make_sessionmaker
from app.db.migrate import upgrade
from app.events.schemas import EventBatchIn
from app.settings import Settings, load_settings

log = logging.getLogger(__name__)


def build_state(settings: Settings, metrics: Metrics) -> AppState:
    """Engines, cache and key verifier for one process."""
    engine = make_engine(settings)
    if settings.is_sqlite:
        upgrade(engine)  # embedded mode: the schema is always current
    sessions = make_sessionmaker(engine)
    cache = make_cache(settings)
    metrics.watch("cache", cache_gauges(cache))
    return AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        cache=cache,
        keys=KeyVerifier(settings.static_keys, sessions, settings.key_cache_seconds),
        metrics=metrics,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application for `settings` (read from the environment when omitted)."""
    settings = settings or load_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        state = build_state(settings, metrics)
        try:
            yield {"app": state}
        finally:
            state.cache.close()
            state.engine.dispose()

    app = FastAPI(
        title="Reco",
        version=__version__,
        description="Self-hosted online recommendations: stream events in, ask what a user should see next.",
        lifespan=lifespan,
    )
    errors.install(app)
    for module in (ops, events, items, users):
        app.include_router(module.router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _document_manual_bodies(app)
    return app


def _document_manual_bodies(app: FastAPI) -> None:
    """Batch routes parse their bodies themselves (per-entry rejections); publish their schemas anyway."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (EventBatchIn, ItemBatchIn):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (each worker reads the environment)."""
    logging.basicConfig(
        level=load_settings().log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return create_app()
