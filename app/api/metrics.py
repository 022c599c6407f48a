"""Prometheus metrics of the API: each app has its own registry; under `reco serve`
(PROMETHEUS_MULTIPROC_DIR set before the workers start) counters and histograms live in shared files and one
scrape covers every worker: counters and histograms are summed over the workers' files (a dead worker's counts
stay in), and the cache hit ratio is computed from those sums, so one scrape of one replica is the truth for the
whole replica. Values read at scrape time (the served model version, the training jobs) are the answering
worker's, which every worker reads from the same store."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import select
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
        self.recommendations = Counter(
            "reco_recommendations",
            "Answers by endpoint (user, session, similar, popular) and the strategy that answered",
            ["kind", "strategy"],
            registry=self.registry,
        )
        self._answered: dict[tuple[str, bytes], Any] = {}
        self.rate_limited = Counter(
            "reco_rate_limited",
            "Requests answered 429, by route class and what was limited (key, client IP)",
            ["class", "per"],
            registry=self.registry,
        )
        self.limiter_fallbacks = Counter(
            "reco_rate_limiter_fallbacks",
            "Rate-limit decisions taken in-process because the limiter's Redis could not be used",
            registry=self.registry,
        )

        self.cache = {
            name: Counter(f"reco_cache_{name}", f"Cache {name}", ["backend"], registry=self.registry)
            for name in ("hits", "misses", "errors")
        }
        self._readers: dict[str, Collector] = {}
        self._scrape: CollectorRegistry | None = None
        self._synced: dict[tuple[str, str], int] = {}
        self._sync_lock = threading.Lock()

    def answered(self, kind: str, strategy: bytes) -> None:
        """Count one answer (the labelled child is looked up once per pair: this runs on every cache hit)."""
        child = self._answered.get((kind, strategy))
        if child is None:
            label = strategy.decode(errors="replace")[:32]
            child = self._answered[(kind, strategy)] = self.recommendations.labels(kind, label)
        child.inc()

    def watch(self, name: str, read: Callable[[], Iterator[Metric]]) -> None:
        """Export values read at scrape time (cache hit ratio, active model version); they must never block."""

        class _Reader(Collector):
            def collect(self) -> Iterator[Metric]:
                yield from read()

        reader = _Reader()
        self._readers[name] = reader
        self.registry.register(reader)

    def sync_cache(self, cache: Cache) -> None:
        """Bring the cache counters up to the cache's own tallies (called by a poller and at each scrape)."""
        stats = cache.stats
        with self._sync_lock:
            for name, value in (("hits", stats.hits), ("misses", stats.misses), ("errors", stats.errors)):
                key = (cache.name, name)
                delta = value - self._synced.get(key, 0)
                child = self.cache[name].labels(cache.name)  # shown from 0 on
                if delta > 0:
                    child.inc(delta)
                    self._synced[key] = value

    def scrape_registry(self) -> CollectorRegistry:
        """What a scrape reads: every worker's counters when in multiprocess mode, else this app's registry."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.registry
        if self._scrape is None:
            scrape = CollectorRegistry(auto_describe=True)
            scrape.register(_WorkersCollector())
            for name, reader in self._readers.items():
                if name != "cache":  # one process's ratio: _WorkersCollector computes the replica's
                    scrape.register(reader)
            self._scrape = scrape
        return self._scrape


class _WorkersCollector(Collector):
    """Every worker's counters and histograms (prometheus_client's MultiProcessCollector), plus
    `reco_cache_hit_ratio` from the summed cache counters."""

    def __init__(self) -> None:
        self._inner = MultiProcessCollector(None)

    def collect(self) -> Iterator[Metric]:
        lookups: dict[str, dict[str, float]] = {}
        for family in self._inner.collect():
            if family.name in ("reco_cache_hits", "reco_cache_misses"):
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        counts = lookups.setdefault(sample.labels.get("backend", ""), {})
                        counts[family.name] = counts.get(family.name, 0.0) + sample.value
            yield family
        ratio = GaugeMetricFamily("reco_cache_hit_ratio", "Cache hits over lookups", labels=["backend"])
        for backend, counts in sorted(lookups.items()):
            hits, misses = counts.get("reco_cache_hits", 0.0), counts.get("reco_cache_misses", 0.0)
            ratio.add_metric([backend], hits / (hits + misses) if hits + misses else 0.0)
        yield ratio


def cache_gauges(cache: Cache) -> Callable[[], Iterator[GaugeMetricFamily]]:
    """The hit ratio of this process's cache client (hits, misses and errors are the
    `reco_cache_{hits,misses,errors}_total` counters)."""

    def read() -> Iterator[GaugeMetricFamily]:
        ratio = GaugeMetricFamily("reco_cache_hit_ratio", "Cache hits over lookups", labels=["backend"])
        ratio.add_metric([cache.name], cache.stats.hit_ratio)
        yield ratio

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


class TrainingJobs:
    """Training jobs by status and the durations of finished ones, read from the job table by a background
    poller (`refresh`); a scrape only reads the last value, so it answers whatever the database does."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._rows: list[tuple[str, float | None]] | None = None  # None: never read

    def refresh(self) -> None:
        with self.sessions() as session:
            rows = session.execute(
                select(TrainingJob.status, TrainingJob.started_at, TrainingJob.finished_at)
            ).all()
        self._rows = [
            (
                r.status,
                (r.finished_at - r.started_at).total_seconds()
                if r.status in ("succeeded", "failed") and r.started_at and r.finished_at
                else None,
            )
            for r in rows
        ]

    def read(self) -> Iterator[Metric]:
        rows = self._rows
        if rows is None:
            return
        by_status = GaugeMetricFamily("reco_training_jobs", "Training jobs by status", labels=["status"])
        counts: dict[str, int] = {}
        for status, _ in rows:
            counts[status] = counts.get(status, 0) + 1
        for status, count in sorted(counts.items()):
            by_status.add_metric([status], count)
        yield by_status
        durations = [d for _, d in rows if d is not None]
        summary = SummaryMetricFamily(
            "reco_training_job_seconds", "Durations of finished training jobs", labels=[]
        )
        summary.add_metric([], count_value=len(durations), sum_value=sum(durations))
        yield summary
