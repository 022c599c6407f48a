"""`reco consume` (also `python -m app.eventlog`): write the event log (NATS JetStream) to the database."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from app.settings import load_settings

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the consumer command."""
    consume = commands.add_parser(
        "consume",
        help="write the event log (RECO_EVENT_LOG_URL) to the database",
        description="A durable JetStream consumer: stores every batch POST /v1/events published (COPY, "
        "idempotent on event_id), updates the cache's latest-events lists, then acknowledges it. Run one or "
        "more beside the API when RECO_EVENT_LOG_URL is set. Settings: RECO_* variables.",
    )
    consume.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics (lag included) on this port"
    )
    consume.add_argument("--metrics-host", default="127.0.0.1", help="interface of the metrics port")
    consume.add_argument(
        "--log-every", type=float, default=10.0, help="seconds between progress lines (stored, lag)"
    )
    consume.set_defaults(handler=cmd_consume)


def cmd_consume(args: argparse.Namespace) -> int:
    """Consume until SIGTERM or SIGINT."""
    settings = load_settings()
    if not settings.event_log_url:
        raise SystemExit("RECO_EVENT_LOG_URL is not set: there is no event log to consume (nats://host:4222)")
    from prometheus_client import start_http_server

    from app.cache import make_cache
    from app.db.engine import make_engine, make_sessionmaker
    from app.db.migrate import upgrade
    from app.eventlog.consumer import Consumer, ConsumerMetrics
    from app.fence import Fence

    engine = make_engine(settings, statement_timeout_s=30.0)
    if settings.is_sqlite:
        upgrade(engine)
    sessions = make_sessionmaker(engine)
    cache = make_cache(settings)
    # a cache write that fails after a commit raises the cache fence (as in the API) before the ack
    Fence(engine, sessions, cache, settings.cache_fence_lease_s)
    metrics = ConsumerMetrics()
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, args.metrics_host, registry=metrics.registry)
    consumer = Consumer(settings, sessions, cache, metrics, log_every_s=args.log_every)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await consumer.run(stop)

    try:
        asyncio.run(main())
    finally:
        cache.close()
        engine.dispose()
    log.info("consumer stopped")
    return 0
