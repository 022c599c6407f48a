"""create_app(settings): assemble the API; the lifespan builds every client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from app import __version__
from app.api import errors
from app.api.cors import OriginBook, PublishableCors, publishable_routes
from app.api.metrics import Metrics, MetricsMiddleware, TrainingJobs, cache_gauges
from app.api.routes import admin, events, items, merch, ops, recommendations, users
from app.api.state import AppState
from app.auth.keys import KeyVerifier
from app.auth.ratelimit import RateLimiter, parse_proxies
from app.cache import make_cache
from app.catalog.schemas import ItemBatchIn
from app.dashboard import pages as dashboard_pages
from app.dashboard import stats as dashboard_stats
from app.db.engine import DatabaseProbe, make_api_engines, make_sessionmaker, read
from app.db.migrate import upgrade
from app.db.partitions import maintain as maintain_partitions
from app.db.partitions import maintenance_engine
from app.eventlog.publisher import EventLog
from app.events.repository import shown_often
from app.events.schemas import EventBatchIn
from app.events.service import compact_rollup
from app.fence import AckAfterFence, Fence
from app.index import service_index_config
from app.index.engine import open_engine
from app.rules.book import PlacementBook
from app.rules.spec import RotationIn
from app.serving.polling import Poller, freeze_heap, unfreeze_heap
from app.serving.popular import PopularTracker
from app.serving.recommender import Recommender, ServingLimits
from app.serving.registry import ModelRegistry
from app.settings import Settings, load_settings

log = logging.getLogger(__name__)


def build_state(settings: Settings, metrics: Metrics) -> AppState:
    """Engines, cache and key verifier for one process."""
    engine, read_engine = make_api_engines(settings)
    if settings.is_sqlite:
        upgrade(engine)  # embedded mode: the schema is always current
    sessions = make_sessionmaker(engine)
    cache = make_cache(settings)
    metrics.watch("cache", cache_gauges(cache))
    registry = ModelRegistry(
        sessions,
        settings.artifact_dir,
        service_index_config(settings),
        model_poll_seconds=settings.model_poll_seconds,
        catalog_poll_seconds=settings.catalog_poll_seconds,
        engine=open_engine(settings.vector_engine, timeout_s=settings.vector_engine_timeout_s),
    )
    metrics.watch("model", model_gauges(registry))
    training = TrainingJobs(sessions)
    metrics.watch("training", training.read)
    popular = PopularTracker(sessions, registry.catalog, settings.popular_windows, settings.event_weights)
    limits = ServingLimits(
        history_len=settings.recent_events,
        seen_limit=settings.seen_limit,
        cache_ttl_seconds=settings.cache_ttl_seconds,
        explain_top=settings.explain_top,
        history_read=settings.history_len,
        history_seconds=settings.history_cache_seconds,
        negative_types=frozenset(settings.negative_types),
        rules_pool=settings.rules_pool,
    )
    book = PlacementBook(sessions, settings.placement_poll_seconds)
    book.pinned_versions = registry.set_pinned
    recommender = Recommender(registry, popular, read_engine, cache, limits)
    recommender.rotation = rotation_reader(read_engine)
    fence = Fence(read_engine, sessions, cache, settings.cache_fence_lease_s)
    state = AppState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        cache=cache,
        keys=KeyVerifier(
            settings.static_keys, sessions, settings.key_cache_seconds, settings.key_outage_grace_s
        ),
        metrics=metrics,
        registry=registry,
        popular=popular,
        read_engine=read_engine,
        recommender=recommender,
        book=book,
        fence=fence,
        db_probe=DatabaseProbe(engine),
        training=training,
    )
    state.fence.db_up = lambda: state.db_probe.up
    state.limiter = RateLimiter(
        settings.redis_url, prefix=settings.redis_prefix, timeout=settings.rate_limit_timeout_s
    )
    state.limiter.on_fallback = metrics.limiter_fallbacks.inc
    state.origins = OriginBook(sessions, settings.key_cache_seconds)
    state.proxies = parse_proxies(settings.trusted_proxies)
    return state


ROLLUP_COMPACT_SECONDS = 30.0  # how often the event rollup's settled deltas are folded


def _compact_work(state: AppState) -> Callable[[], None]:
    def work() -> None:
        try:
            compact_rollup(state.sessions)
        except SQLAlchemyError as exc:  # the database is away: the next pass folds what this one left
            log.warning("event rollup not compacted: %s", str(exc).splitlines()[0][:200])

    return work


PARTITION_MAINTAIN_SECONDS = 3600.0  # how often partitions ahead / retention are checked (PostgreSQL)


def _partition_work(state: AppState) -> Callable[[], None]:
    """Create the event partitions ahead and apply retention (app/db/partitions.py): a catalog read when there
    is nothing to do; every API process runs it, under an advisory lock and a lock timeout."""
    settings = state.settings

    def work() -> None:
        engine = maintenance_engine(settings)  # not the API's: its statements may take longer than 2 s
        try:
            maintain_partitions(engine, settings.event_partitions_ahead, settings.event_retention_days)
        except SQLAlchemyError as exc:  # the database is away or the table busy: the next pass retries
            log.warning("event partitions not maintained: %s", str(exc).splitlines()[0][:200])
        finally:
            engine.dispose()

    return work


def rotation_reader(engine: Engine) -> Callable[[str, RotationIn], list[str]]:
    """Items shown to a user often lately (the impressions table), for placements with rotation."""

    def shown(user_id: str, rotation: RotationIn) -> list[str]:
        since = datetime.now(UTC) - timedelta(seconds=rotation.window_s)
        return read(engine, lambda conn: shown_often(conn, user_id, since, rotation.after))

    return shown


def model_gauges(registry: ModelRegistry) -> Callable[[], Iterator[GaugeMetricFamily]]:
    """The served model version (label) and its item count."""

    def read() -> Iterator[GaugeMetricFamily]:
        current = registry.current
        gauge = GaugeMetricFamily("reco_model_items", "Items of the served model version", labels=["version"])
        if current is not None:
            gauge.add_metric([current.version], current.n_rows)
        yield gauge

    return read


def _metrics_work(state: AppState) -> Callable[[], None]:
    def work() -> None:
        state.metrics.sync_cache(state.cache)
        state.training.refresh()

    return work


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application for `settings` (read from the environment when omitted)."""
    settings = settings or load_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        state = build_state(settings, metrics)
        app.state.reco = state  # for tests and benchmarks driving the registry; routes use request.state
        popular_poller = Poller("reco-popular-poll", settings.popular_poll_seconds, state.popular.poll)
        fence_poller = Poller("reco-fence-poll", settings.cache_fence_lease_s / 4, state.fence.refresh)
        db_poller = Poller("reco-db-probe", 1.0, state.db_probe.check)
        metrics_poller = Poller("reco-metrics-poll", settings.metrics_poll_seconds, _metrics_work(state))
        rollup_poller = Poller("reco-rollup-compact", ROLLUP_COMPACT_SECONDS, _compact_work(state))
        partition_work = _partition_work(state)
        partition_poller = Poller(
            "reco-event-partitions", 0 if settings.is_sqlite else PARTITION_MAINTAIN_SECONDS, partition_work
        )
        try:
            if settings.event_log_url:
                state.event_log = EventLog(settings)
                await state.event_log.start(wait_s=settings.event_log_timeout_s)
            await run_in_threadpool(state.db_probe.check)
            db_poller.start()
            with contextlib.suppress(SQLAlchemyError):  # the poller retries
                await run_in_threadpool(state.training.refresh)
            metrics_poller.start()
            rollup_poller.start()
            if not settings.is_sqlite:  # the months ahead exist before the first event of a new month
                await run_in_threadpool(partition_work)
                partition_poller.start()
            await run_in_threadpool(state.fence.refresh)
            fence_poller.start()
            await run_in_threadpool(state.book.start)  # before the registry: it loads pinned versions too
            await run_in_threadpool(state.registry.start)
            try:
                await run_in_threadpool(state.popular.poll)
            except SQLAlchemyError as exc:  # the poller retries; /readyz names the database meanwhile
                log.warning("popular counts not loaded at start: %s", str(exc).splitlines()[0][:200])
            popular_poller.start()
            frozen = freeze_heap()  # the start-up heap is long-lived: no full collection walks it
            log.debug("%d objects frozen out of the garbage collector at start", frozen)
            yield {"app": state}
        finally:
            db_poller.stop()
            metrics_poller.stop()
            rollup_poller.stop()
            partition_poller.stop()
            fence_poller.stop()
            popular_poller.stop()
            state.registry.stop()
            state.book.stop()
            unfreeze_heap()
            if state.event_log is not None:
                await state.event_log.close()
            await state.cache.aclose()
            if state.limiter is not None:
                await state.limiter.aclose()
            state.cache.close()
            state.engine.dispose()
            state.read_engine.dispose()

    app = FastAPI(
        title="Reco",
        version=__version__,
        description="Self-hosted online recommendations: stream events in, ask what a user should see next.",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url="/redoc" if settings.docs_enabled else None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    errors.install(app)
    routers = [
        module.router
        for module in (
            ops,
            events,
            items,
            users,
            recommendations,
            admin,
            merch,
            dashboard_stats,
            dashboard_pages,
        )
    ]
    for router in routers:
        app.include_router(router)
    app.add_middleware(dashboard_pages.DashboardHeaders)
    app.add_middleware(AckAfterFence)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # outermost: preflights end here
    app.add_middleware(PublishableCors, routes=publishable_routes(routers))
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
