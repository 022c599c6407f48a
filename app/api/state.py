"""What the lifespan builds and hands to the routes through `request.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.api.cors import OriginBook
from app.api.metrics import Metrics, TrainingJobs
from app.auth.keys import KeyVerifier
from app.auth.ratelimit import RateLimiter
from app.cache import Cache
from app.db.engine import DatabaseProbe
from app.eventlog.publisher import EventLog
from app.fence import Fence
from app.rules.book import PlacementBook
from app.serving.popular import PopularTracker
from app.serving.recommender import Recommender
from app.serving.registry import ModelRegistry
from app.settings import Settings


@dataclass
class AppState:
    """Clients of one API process; built in the lifespan, never at import."""

    settings: Settings
    engine: Engine
    read_engine: Engine  # the recommendation read path's pool (no pre-ping)
    sessions: sessionmaker[Session]
    cache: Cache
    keys: KeyVerifier
    metrics: Metrics
    registry: ModelRegistry
    popular: PopularTracker
    recommender: Recommender
    fence: Fence  # the cache fence (app/fence.py): when cached answers may be trusted
    db_probe: DatabaseProbe  # whether the database answers, known without waiting on it
    training: TrainingJobs  # training-job metrics, refreshed in the background
    book: PlacementBook  # placements and experiments in force (app/rules/book.py)
    limiter: RateLimiter | None = None  # rate limits (app/auth/ratelimit.py)
    origins: OriginBook | None = None  # origins publishable keys allow, for CORS preflights (app/api/cors.py)
    proxies: tuple[Any, ...] = ()  # trusted proxies' networks (RECO_TRUSTED_PROXIES)
    event_log: EventLog | None = None  # RECO_EVENT_LOG_URL set: events go to JetStream (app/eventlog)
    dashboard_secret: bytes | None = None  # signs dashboard cookies: read once (app/dashboard/auth.py)
