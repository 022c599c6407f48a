"""Service settings from `RECO_*` environment variables and `.env`; imports no app code."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from app.redis_url import CLUSTER_SCHEMES, parse_cluster_url

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 4.0,
    "purchase": 8.0,
    "rating": 3.0,
}


RATE_CLASSES = ("events", "ingest", "read", "recommend", "admin")
"""Route classes that rate limits name: POST /v1/events; other writes; catalog and user reads; recommendations,
similar and popular items; /v1/admin/* and user erasure."""
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` requests per `period` seconds: a token bucket of `count` tokens refilled over `period`."""

    count: int
    period: float
    text: str

    def __str__(self) -> str:
        return self.text


def parse_rate_limits(text: str | None) -> dict[str, Rate]:
    """`"events=100/s,recommend=50/m"` -> {class: Rate}; an error names the bad entry."""
    out: dict[str, Rate] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, rate = part.partition("=")
        name, rate = name.strip(), rate.strip().replace(" ", "")
        if name not in RATE_CLASSES:
            raise ValueError(f"{part!r}: the class must be one of {', '.join(RATE_CLASSES)}")
        found = re.fullmatch(r"([1-9][0-9]{0,8})/([smh])", rate)
        if not found:
            raise ValueError(f"{part!r}: the limit must look like 100/s, 600/m or 5000/h")
        out[name] = Rate(int(found.group(1)), _UNITS[found.group(2)], rate)
    return out


class Settings(BaseSettings):
    """Everything an operator can set; see README.md "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="RECO_", env_file=".env", extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite:///./var/reco.db",
        description="sqlite:///path or postgresql://user@host/db; the service picks its driver",
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db, or a Redis Cluster as redis+cluster://host:port[,host:port...] "
        "(rediss+cluster:// for TLS; any one reachable node finds the rest); unset = in-process cache",
    )
    redis_prefix: str = Field(
        default="",
        max_length=100,
        description="put before every Redis key: services (or test runs) sharing one Redis database stay apart",
    )
    artifact_dir: Path = Field(default=Path("./var/artifacts"), description="model versions live here")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="static keys 'KEY:scope+scope,...' (comma separated), besides keys created by `reco keys create`",
    )
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="JSON object of event type -> training weight; adding a type makes it acceptable",
    )
    max_batch: int = Field(default=5000, ge=1, le=100_000, description="events or items in one request")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="request body size cap")
    worker_startup_timeout_s: int = Field(
        default=60,
        ge=1,
        description="how long a `--workers N` worker may take to answer the supervisor's health check "
        "(uvicorn's timeout_worker_healthcheck) before it is killed and replaced",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="a connection whose request line and headers are not complete this long after it opened "
        "(or after its previous response) is closed",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="a connection that sends no byte of a started request body for this long is closed",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="an idle keep-alive connection is closed after this many seconds"
    )
    drain_s: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="on SIGTERM, keep serving this long with /readyz answering 503 (so a load balancer's health "
        "check takes the process out of rotation) before closing the listening socket",
    )
    shutdown_timeout_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="after the drain, how long requests in progress may take to finish before the process exits",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="connections and requests in progress per worker process; beyond it uvicorn answers 503",
    )
    max_future_seconds: int = Field(
        default=86_400, ge=0, description="how far in the future a timestamp may be"
    )
    event_retention_days: int | None = Field(
        default=None,
        ge=1,
        description="PostgreSQL: drop the monthly event partitions wholly older than this many days (and their "
        "event ids), by the service's partition pass and `reco db maintain`; unset = keep events forever; "
        "SQLite: not applied",
    )
    event_partitions_ahead: int = Field(
        default=3,
        ge=0,
        le=120,
        description="PostgreSQL: monthly event partitions kept created ahead of the current month",
    )
    recent_events: int = Field(default=50, ge=1, le=1000, description="history length L read per request")
    cache_ttl_seconds: int = Field(default=300, ge=1)
    key_cache_seconds: float = Field(
        default=60.0, ge=0, allow_inf_nan=False, description="how long a verified API key is remembered"
    )
    dashboard_secret: str | None = Field(
        default=None,
        min_length=16,
        description="signs dashboard session cookies (HMAC-SHA256); unset: a random secret made once and kept "
        "in the database, shared by every process",
    )
    dashboard_session_s: int = Field(
        default=8 * 3600, ge=60, le=30 * 86400, description="how long a dashboard sign-in lasts"
    )
    key_outage_grace_s: float = Field(
        default=300.0,
        ge=0,
        allow_inf_nan=False,
        description="during a database outage, a key verified less than this long ago is still accepted",
    )
    cache_fence_lease_s: float = Field(
        default=0.5,
        ge=0.05,
        le=10,
        allow_inf_nan=False,
        description="cached answers are trusted only while this process read the cache fence less than this "
        "long ago (it reads it every quarter of it); a change whose cache write failed is acknowledged this "
        "long after the fence was raised",
    )
    embedded_worker: bool | None = Field(
        default=None, description="run the trainer inside `reco serve`; default: on for SQLite, off otherwise"
    )
    log_level: str = Field(default="INFO")
    metrics_enabled: bool = Field(default=True)
    metrics_key: str | None = Field(
        default=None, description="when set, GET /metrics needs `Authorization: Bearer <this>`"
    )
    metrics_poll_seconds: float = Field(
        default=5.0, gt=0, description="how often the training-job metrics are read from the store"
    )
    docs_enabled: bool = Field(default=True, description="serve /docs, /redoc and /openapi.json")
    db_connect_timeout_s: float = Field(default=2.0, gt=0, description="PostgreSQL connect timeout")
    db_statement_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="API processes' PostgreSQL statement timeout; a call that gets no answer is cut "
        "client-side 0.5 s after it",
    )
    db_pool_timeout_s: float = Field(default=1.0, gt=0, description="wait for a free pooled connection")
    # trainer
    worker_poll_seconds: float = Field(
        default=2.0, gt=0, description="how often an idle worker looks for jobs"
    )
    job_lease_seconds: float = Field(
        default=60.0, gt=0, description="a running job whose heartbeat is older than this is taken back"
    )
    job_max_attempts: int = Field(default=3, ge=1, description="starts of a job before it is marked failed")
    retrain_every_minutes: float | None = Field(
        default=None, gt=0, description="schedule: retrain this often when new events arrived; unset = never"
    )
    retrain_after_events: int | None = Field(
        default=None, ge=1, description="schedule: retrain once this many events arrived since the last job"
    )
    gate_tolerance: float = Field(
        default=0.05, ge=0, le=1, description="activate when valid NDCG@10 >= active's x (1 - tolerance)"
    )
    keep_versions: int = Field(
        default=5, ge=1, description="model versions kept on disk (the active one always)"
    )
    train_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when present"
    )
    train_threads: int = Field(
        default=0, ge=0, description="torch CPU threads while training; 0 = torch default"
    )
    train_epochs: int | None = Field(
        default=None, ge=1, description="most epochs; unset = the model's default"
    )
    train_patience: int | None = Field(
        default=None, ge=1, description="evaluations without gain before stopping"
    )
    train_dim: int | None = Field(
        default=None, ge=2, description="vector size d; unset = the model's default"
    )
    train_max_len: int | None = Field(default=None, ge=1, description="history length the user tower reads")
    train_members: int | None = Field(
        default=None,
        ge=1,
        le=8,
        description="ensemble members (2 reach the ml-100k bar; twice the training time)",
    )
    train_batch_size: int | None = Field(default=None, ge=1)
    train_nproc: int = Field(
        default=1,
        ge=1,
        le=64,
        description="processes that train one model together (DDP: gloo on the CPU, NCCL with one GPU each); "
        "the batch is split between them, so the effective batch and the quality stay those of one process",
    )
    train_ddp_timeout_s: float = Field(
        default=300.0,
        gt=0,
        allow_inf_nan=False,
        description="bound on the DDP rendezvous and on every collective: a hung rank fails the job after it",
    )
    train_time_budget_s: float = Field(
        default=1800.0,
        gt=0,
        description="a training run's time budget (all stages): when spent, the run ends with the best weights "
        "so far and the job says so",
    )
    retrain_full_every: int = Field(
        default=10,
        ge=0,
        description="every Nth retrain is full (from scratch), the others incremental (warm-started from the "
        "active version); 0 = always incremental when possible, 1 = always full",
    )
    train_seed: int | None = Field(default=None)
    # explicit negative feedback in training (app/ml/trainer.py Trainer._negative_loss); the types: negative_types
    train_impression_negatives: bool = Field(
        default=False,
        description="an impression the user did not act on (no event on that item within "
        "RECO_IMPRESSION_NEGATIVE_WINDOW_S after it) is an explicit negative too",
    )
    impression_negative_window_s: float = Field(
        default=86400.0,
        gt=0,
        allow_inf_nan=False,
        description="how long after an impression an event on its item still counts as acting on it",
    )
    negative_weight: float = Field(
        default=0.5,
        ge=0,
        allow_inf_nan=False,
        description="weight of the explicit-negative term of the training loss (0: negatives are not used)",
    )
    # data cleaning before each training run (app/ml/cleaning.py); 0 or an empty value turns a rule off
    clean_bot_events_per_minute: int = Field(
        default=120,
        ge=0,
        description="a user with more than this many events in any 60 s window is a bot: all their events "
        "are left out of training",
    )
    clean_repeat_window_s: float = Field(
        default=5.0,
        ge=0,
        allow_inf_nan=False,
        description="the same user, item and event type again within this many seconds of the previous one "
        "is a repeat: only the first is kept",
    )
    clean_max_events_per_user: int = Field(
        default=10_000, ge=0, description="a user's latest events kept for training"
    )
    clean_max_events_per_item: int = Field(
        default=0, ge=0, description="an item's latest events kept for training (0: no cap)"
    )
    # serving
    model_poll_seconds: float = Field(
        default=2.0, ge=0, description="how often each API process checks for a newly active model (0: never)"
    )
    catalog_poll_seconds: float = Field(
        default=2.0, ge=0, description="how often serving reads items changed in the catalog (0: never)"
    )
    popular_poll_seconds: float = Field(
        default=1.0, ge=0, description="how often popular counters read new events (0: never)"
    )
    popular_windows: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["1h", "24h", "7d", "30d"],
        description="windows `GET /v1/popular?window=` accepts (comma separated); 7d (else the longest) is "
        "the default and the fallbacks'; counts decay with a half-life of half the window",
    )
    seen_limit: int = Field(
        default=200, ge=1, le=5000, description="latest events read per request to exclude seen items"
    )
    index_exact_max_items: int = Field(
        default=50_000,
        ge=0,
        description="exact (flat) FAISS search up to this many items, IVF above (docs/BENCHMARKS.md, Serving)",
    )
    index_nprobe: int = Field(default=16, ge=1, description="IVF lists probed per query")
    vector_engine: str = Field(
        default="faiss",
        description="where item indexes live: faiss (in each API process), milvus://[user:password@]host:port[/db] "
        "(a Milvus server, for catalogs past one host's memory) or milvus-lite:///path/file.db (embedded, one "
        "process; a bare *.db path too)",
    )
    vector_engine_timeout_s: float = Field(
        default=5.0, gt=0, allow_inf_nan=False, description="bound on each Milvus call (connect, search, get)"
    )
    explain_top: int = Field(default=2, ge=1, le=10, description="history items named per explanation")
    history_cache_seconds: int = Field(
        default=3600,
        ge=0,
        description="how long the cache keeps a user's latest events after their last read or event "
        "(0: always read them from the database)",
    )

    negative_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["not_interested"],
        description="event types that say 'not for me' (comma separated): accepted, the item is removed from "
        "that user's answers at once, and training uses them as negatives",
    )
    rules_pool: int = Field(
        default=100,
        ge=10,
        le=5000,
        description="candidates fetched (at least 4 k) before business rules (boosts, promotions, diversity, "
        "rotation) re-rank them",
    )
    placement_poll_seconds: float = Field(
        default=2.0, ge=0, description="how often serving re-reads placements and experiments (0: never)"
    )
    # the durable event log in front of the database (app/eventlog): optional, off by default
    event_log_url: str | None = Field(
        default=None,
        description="nats://host:port[,nats://...]: POST /v1/events publishes each batch to a NATS JetStream "
        "stream and answers once JetStream has stored it; `reco consume` writes the stream to the database. "
        "Unset: events are written to the database directly",
    )
    event_log_stream: str = Field(
        default="RECO_EVENTS", min_length=1, max_length=64, description="the JetStream stream's name"
    )
    event_log_subject: str = Field(
        default="reco.events",
        min_length=1,
        max_length=128,
        description="the subject batches are published on",
    )
    event_log_replicas: int = Field(
        default=1, ge=1, le=5, description="stream replicas (a NATS cluster of at least this many servers)"
    )
    event_log_storage: Literal["file", "memory"] = Field(
        default="file", description="file: a batch is on disk when acknowledged"
    )
    event_log_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="how long POST /v1/events waits for JetStream to acknowledge a batch before it answers "
        "503 (Retry-After)",
    )
    event_log_ack_wait_s: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="a batch the consumer took but did not acknowledge (written and committed) within this is "
        "delivered again",
    )
    event_log_duplicate_window_s: float = Field(
        default=120.0,
        gt=0,
        allow_inf_nan=False,
        description="JetStream drops a publish whose Nats-Msg-Id it saw within this window",
    )
    event_log_max_age_s: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="batches not consumed after this long are dropped by the stream (0: kept until consumed)",
    )
    event_log_durable: str = Field(
        default="reco-consumer", min_length=1, max_length=64, description="the durable consumer's name"
    )
    event_log_fetch: int = Field(
        default=16, ge=1, le=1000, description="batches `reco consume` writes in one transaction at most"
    )
    event_log_writers: int = Field(
        default=4,
        ge=1,
        le=32,
        description="concurrent writers (transactions) of one `reco consume` process; more processes may run",
    )

    # publishable keys, user tokens and rate limits (README "Publishable keys and rate limits")
    rate_limits: str = Field(
        default="",
        description="per-key limits for every key, by route class: 'events=100/s,recommend=50/s,admin=10/s' "
        "(classes: events, ingest, read, recommend, admin; units s, m, h; a token bucket of N); empty: "
        "secret keys are not limited unless their own `rate_limits` says so",
    )
    publishable_rate_limits: str = Field(
        default="events=1000/s,recommend=1000/s",
        description="per-key limits of publishable keys (over RECO_RATE_LIMITS for them)",
    )
    publishable_ip_rate_limits: str = Field(
        default="events=50/s,recommend=50/s",
        description="limits per publishable key and client IP (X-Forwarded-For only from RECO_TRUSTED_PROXIES)",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses or CIDRs (comma separated) of proxies whose X-Forwarded-For names the client",
    )
    rate_limit_timeout_s: float = Field(
        default=0.1,
        gt=0,
        le=5,
        allow_inf_nan=False,
        description="the shared (Redis) limiter's timeout; past it, or while Redis is down, this process "
        "limits on its own",
    )
    require_user_token: bool = Field(
        default=False,
        description="publishable keys' requests must carry X-Reco-User-Token (signed with "
        "RECO_USER_TOKEN_SECRET) and may only name that user",
    )
    user_token_secret: str | None = Field(
        default=None,
        min_length=16,
        description="signs user tokens (HMAC-SHA256); the shop's server issues them with the same secret",
    )

    @field_validator("rate_limits", "publishable_rate_limits", "publishable_ip_rate_limits")
    @classmethod
    def _check_rate_limits(cls, value: str) -> str:
        parse_rate_limits(value)
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR such as 10.0.0.0/8") from None
        return value

    @model_validator(mode="after")
    def _token_needs_secret(self) -> Settings:
        if self.require_user_token and not self.user_token_secret:
            raise ValueError(
                "RECO_REQUIRE_USER_TOKEN=true needs RECO_USER_TOKEN_SECRET (at least 16 characters)"
            )
        return self

    @field_validator("negative_types", mode="before")
    @classmethod
    def _split_negative_types(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "clean_bot_events_per_minute",
        "clean_repeat_window_s",
        "clean_max_events_per_user",
        "clean_max_events_per_item",
        mode="before",
    )
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return 0  # RECO_CLEAN_...= (empty): the rule is off
        return value

    @field_validator("negative_types")
    @classmethod
    def _check_negative_types(cls, value: list[str]) -> list[str]:
        for name in value:
            if len(name) > 32:
                raise ValueError(f"event type {name!r} must have 1 to 32 characters")
        return list(dict.fromkeys(value))

    @field_validator("popular_windows", mode="before")
    @classmethod
    def _split_windows(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("popular_windows")
    @classmethod
    def _check_windows(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one window such as 7d")
        for window in value:
            if not re.fullmatch(r"[1-9][0-9]{0,4}[mhd]", window):
                raise ValueError(f"window {window!r} must be a number and a unit m, h or d (e.g. 24h, 7d)")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        for entry in value:
            key, _, scopes = entry.partition(":")
            if len(key) < 16 or not scopes:
                raise ValueError("each entry must be 'KEY:scope+scope' with a key of at least 16 characters")
            for scope in scopes.split("+"):
                if scope not in ("ingest", "read", "admin"):
                    raise ValueError(f"unknown scope {scope!r}: use ingest, read or admin")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+", "postgres:")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://"
            )
        if value.startswith(CLUSTER_SCHEMES):
            try:
                parse_cluster_url(value)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("vector_engine")
    @classmethod
    def _check_vector_engine(cls, value: str) -> str:
        value = value.strip()
        if value == "faiss":
            return value
        if value.startswith("milvus://"):
            rest = value.removeprefix("milvus://").rpartition("@")[2]
            if not rest.split("/")[0]:
                raise ValueError("milvus:// needs a host, e.g. milvus://127.0.0.1:19530")
            return value
        if value.startswith("milvus-lite://") or value.endswith(".db"):
            if not value.endswith(".db"):
                raise ValueError(
                    "a milvus-lite path must end with .db, e.g. milvus-lite:///var/reco/vectors.db"
                )
            return value
        raise ValueError("must be faiss, milvus://host:port or milvus-lite:///path/file.db")

    @model_validator(mode="after")
    def _check_cluster_prefix(self) -> Settings:
        if (
            self.redis_url
            and self.redis_url.startswith(CLUSTER_SCHEMES)
            and re.search(r"[{}]", self.redis_prefix)
        ):
            raise ValueError("redis_prefix may not hold { or } with a Redis Cluster (braces are hash tags)")
        return self

    @field_validator("event_log_url")
    @classmethod
    def _check_event_log(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        for part in value.split(","):
            if not part.strip().startswith(("nats://", "tls://")):
                raise ValueError("must be nats://host:port (several comma separated)")
        return value

    @field_validator("event_log_stream", "event_log_durable")
    @classmethod
    def _check_nats_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError("letters, digits, '_' and '-' only")
        return value

    @field_validator("event_log_subject")
    @classmethod
    def _check_subject(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", value):
            raise ValueError("tokens of letters, digits, '_' and '-' separated by '.' (no wildcards)")
        return value

    @field_validator("event_weights")
    @classmethod
    def _check_weights(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("needs at least one event type")
        for name, weight in value.items():
            if not name or len(name) > 32:
                raise ValueError(f"event type {name!r} must have 1 to 32 characters")
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"weight of {name!r} must be a finite number >= 0")
        return value

    @property
    def history_len(self) -> int:
        """Latest events a recommendation reads: the user tower's L or the seen-items window, the larger."""
        return max(self.recent_events, self.seen_limit)

    @property
    def vector_engine_is_lite(self) -> bool:
        """Whether the vector engine is the embedded milvus-lite (its data directory takes one process)."""
        return self.vector_engine.startswith("milvus-lite://") or self.vector_engine.endswith(".db")

    @property
    def is_sqlite(self) -> bool:
        """True when the embedded SQLite store is configured."""
        return self.database_url.startswith("sqlite")

    @property
    def run_embedded_worker(self) -> bool:
        """Whether `reco serve` also runs the trainer in the background."""
        return self.is_sqlite if self.embedded_worker is None else self.embedded_worker

    @cached_property
    def sqlalchemy_url(self) -> str:
        """The database URL with the driver the service uses (psycopg 3 for PostgreSQL)."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @cached_property
    def rate_limit_table(self) -> dict[str, dict[str, Rate]]:
        """Parsed limits: `key` (every key), `publishable` (publishable keys), `ip` (per publishable key and IP)."""
        table = {"key": parse_rate_limits(self.rate_limits)}
        table["publishable"] = {**table["key"], **parse_rate_limits(self.publishable_rate_limits)}
        table["ip"] = parse_rate_limits(self.publishable_ip_rate_limits)
        return table

    @cached_property
    def static_keys(self) -> dict[str, frozenset[str]]:
        """Keys given in configuration, mapped to their scopes."""
        out: dict[str, frozenset[str]] = {}
        for entry in self.api_keys:
            key, _, scopes = entry.partition(":")
            out[key] = frozenset(scopes.split("+"))
        return out


SECRET_FIELDS = frozenset(
    {"api_keys", "dashboard_secret", "user_token_secret"}
)  # their values are never echoed in messages


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning a validation error into one readable message naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            secret = field.split(".")[0] in SECRET_FIELDS
            shown = "(value hidden)" if secret else f"(got {err.get('input')!r})"
            if field == "settings":  # a check across fields: its message names them
                lines.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            lines.append(f"RECO_{field.upper()}: {err['msg']} {shown}")
        raise SystemExit("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except SettingsError as exc:  # a complex value (a JSON object or list) that does not parse
        found = re.search(r'field "([a-z_]+)"', str(exc))
        name = f"RECO_{found.group(1).upper()}" if found else "a RECO_* variable"
        raise SystemExit(f"invalid configuration:\n  {name}: not valid JSON ({exc})") from None
