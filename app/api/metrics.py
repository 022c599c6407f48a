"""Prometheus metrics of one API process (each app has its own registry)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.cache import Cache
from app.db.tables import TrainingJob

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """Counters and histograms the routes and services update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "reco_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "reco_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "reco_events_ingested", "Events by outcome", ["outcome"], registry=self.registry
        )

    def watch(self, name: str, read: Callable[[], Iterator[Metric]]) -> None:
        """Export values read at scrape time (cache hit ratio, active model version)."""

        class _Reader(Collector):
            def collect(self) -> Iterator[Metric]:
                yield from read()

        self.registry.register(_Reader())


def cache_gauges(cache: Cache) -> Callable[[], Iterator[GaugeMetricFamily]]:
    """Hit ratio, hits, misses and errors of the cache."""

    def read() -> Iterator[GaugeMetricFamily]:
        stats = cache.stats
        ratio = GaugeMetricFamily("reco_cache_hit_ratio", "Cache hits over lookups", labels=["backend"])
        ratio.add_metric([cache.name], stats.hit_ratio)
        yield ratio
        for name, value in (("hits", stats.hits), ("misses", stats.misses), ("errors", stats.errors)):
            g = GaugeMetricFamily(f"reco_cache_{name}", f"Cache {name} since start", labels=["backend"])
            g.add_metric([cache.name], value)
            yield g

    return read


class MetricsMiddleware:
    """Counts requests and their latency per route template (pure ASGI: no per-request task overhead)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        sent = 0.0  # when the last body part went out: work after it (background tasks) is not latency

        async def send_wrapper(message: dict) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                sent = time.perf_counter()

        try:
            await self.app(scope, receive, send_wrapper)  # type: ignore[arg-type]
        finally:
            route = _route_template(scope)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe((sent or time.perf_counter()) - start)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", []):
        path = getattr(candidate, "path", None)
        if path is None:
            continue
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(path)
    return "unmatched"


def training_gauges(sessions: sessionmaker[Session]) -> Callable[[], Iterator[Metric]]:
    """Training jobs by status and the durations of finished ones, read from the job table at scrape time."""

    def read() -> Iterator[Metric]:
        try:
            with sessions() as session:
                rows = session.execute(
                    select(TrainingJob.status, TrainingJob.started_at, TrainingJob.finished_at)
                ).all()
        except SQLAlchemyError:
            return  # the database being down shows in /readyz; a scrape still answers
        by_status = GaugeMetricFamily("reco_training_jobs", "Training jobs by status", labels=["status"])
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        for status, count in sorted(counts.items()):
            by_status.add_metric([status], count)
        yield by_status
        durations = [
            (r.finished_at - r.started_at).total_seconds()
            for r in rows
            if r.status in ("succeeded", "failed") and r.started_at and r.finished_at
        ]
        summary = SummaryMetricFamily(
            "reco_training_job_seconds", "Durations of finished training jobs", labels=[]
        )
        summary.add_metric([], count_value=len(durations), sum_value=sum(durations))
        yield summary

    return read
