"""/v1/admin: retrain, training jobs, model versions, activation (promotion and rollback)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from app.api.deps import KeyFirstRoute, get_state, require
from app.api.params import JobIdPath, VersionPath
from app.api.state import AppState
from app.artifacts import ArtifactError, load_version
from app.artifacts.store import MANIFEST
from app.auth import keys
from app.db.engine import run_transaction
from app.db.tables import ApiKey, ModelVersion
from app.errors import Conflict, NotFound, ValidationFailed
from app.events.repository import max_event_id
from app.registry import jobs
from app.registry import repository as registry
from app.registry.schemas import ActivateOut, JobOut, ModelList, ModelOut, RetrainIn

router = APIRouter(tags=["admin"], dependencies=[Depends(require("admin"))], route_class=KeyFirstRoute)
JobId = JobIdPath
Version = VersionPath


def _utc(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def _artifact_dir(state: AppState) -> FsPath:
    return FsPath(state.settings.artifact_dir)


def _model_out(row: ModelVersion, artifact_dir: FsPath) -> ModelOut:
    data = dict(row.data_stats or {})
    size = data.get("interactions")
    return ModelOut(
        version=row.version,
        status=row.status,  # type: ignore[arg-type]
        reason=row.reason,
        metrics=dict(row.metrics or {}),
        training_interactions=int(size) if isinstance(size, int) else None,
        data=data,
        timings=dict(row.timings or {}),
        job_id=row.job_id,
        created_at=_utc(row.created_at),
        activated_at=_utc(row.activated_at),
        artifact=(artifact_dir / row.version / MANIFEST).is_file(),
    )


@router.post(
    "/v1/admin/retrain",
    status_code=202,
    response_model=JobOut,
    responses={202: {"description": "the queued job, or the job already queued or running"}},
)
def retrain(request: Request, body: Annotated[RetrainIn | None, Body()] = None) -> JSONResponse:
    """Queue a training job; while one is queued or running, that job is returned instead."""
    state = get_state(request)
    reason = body.reason if body is not None else None
    params = body.model_dump(include={"mode", "time_budget_s"}, exclude_none=True) if body is not None else {}

    def work(session: Any) -> dict[str, Any]:
        job, _ = jobs.enqueue(
            session, trigger="api", reason=reason, max_event_id=max_event_id(session), params=params
        )
        return JobOut(**jobs.job_summary(job)).model_dump(mode="json")

    return JSONResponse(run_transaction(state.sessions, work), status_code=202)


@router.get("/v1/admin/jobs/{job_id}", response_model=JobOut, responses={404: {"description": "unknown job"}})
def get_job(job_id: JobId, request: Request) -> JobOut:
    """A training job: status, progress, the version it produced, its metrics or its error."""
    with get_state(request).sessions() as session:
        job = jobs.get_job(session, job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found: use the job_id that POST /v1/admin/retrain returned")
        row = registry.get_version(session, job.model_version) if job.model_version else None
        return JobOut(**jobs.job_summary(job), model_status=row.status if row is not None else None)


@router.get("/v1/admin/models", response_model=ModelList)
def list_models(request: Request) -> ModelList:
    """Every model version, newest first, with metrics, training data size, times and status."""
    state = get_state(request)
    with state.sessions() as session:
        rows = registry.list_versions(session)
    active = next((r.version for r in rows if r.status == "active"), None)
    return ModelList(active=active, models=[_model_out(r, _artifact_dir(state)) for r in rows])


@router.post(
    "/v1/admin/models/{version}/activate",
    response_model=ActivateOut,
    responses={
        404: {"description": "unknown version"},
        409: {"description": "its files are missing or corrupt"},
    },
)
def activate(version: Version, request: Request) -> ActivateOut:
    """Serve this version from now on (promotion or rollback), without a restart."""
    state = get_state(request)
    with state.sessions() as session:
        if registry.get_version(session, version) is None:
            raise NotFound(f"model version {version!r} not found: GET /v1/admin/models lists them")
    path = _artifact_dir(state) / version
    try:
        load_version(path)  # refuse what serving could not load, before it becomes active
    except ArtifactError as exc:
        raise Conflict(f"model version {version} cannot be activated: {exc}") from None

    def work(session: Any) -> str | None:
        registry.lock_registry(session)  # retention deletes files under the same lock
        if not (path / MANIFEST).is_file():
            raise Conflict(f"model version {version} cannot be activated: {path} was just deleted")
        return registry.activate(session, version, "activated by an admin")

    previous = run_transaction(state.sessions, work)
    serving = state.registry.refresh_now()  # this process at once; the others within their poll interval
    return ActivateOut(version=version, status="active", previous=previous, serving=serving)


@router.get("/v1/admin/keys")
def list_api_keys(state: Annotated[AppState, Depends(get_state)]) -> dict[str, Any]:
    """Every API key by id, prefix, name, scopes and dates; never its secret."""
    with state.sessions() as session:
        return {"keys": [keys.describe(row) for row in keys.list_keys(session)]}


@router.post("/v1/admin/keys", status_code=201)
def create_api_key(
    state: Annotated[AppState, Depends(get_state)],
    body: Annotated[
        dict[str, Any],
        Body(
            examples=[
                {"scopes": ["read"], "name": "storefront"},
                {"publishable": True, "origins": ["https://shop.example"], "name": "web"},
                {"scopes": ["ingest"], "rate_limits": "events=200/s"},
            ]
        ),
    ],
) -> dict[str, Any]:
    """A new key; the secret (`key`) is in this answer only. `publishable: true` (with `origins`) makes a key
    that is safe in page source (events and recommendation reads only); `rate_limits` overrides the
    configured limits for this key (`events=100/s,recommend=50/s`)."""
    scopes_in, name = body.get("scopes"), body.get("name")
    publishable = body.get("publishable", False)
    if not isinstance(publishable, bool):
        raise ValidationFailed(
            "publishable: must be true or false",
            details=[{"loc": ["publishable"], "msg": "must be a boolean"}],
        )
    if publishable:
        if scopes_in is not None:
            raise ValidationFailed(
                "scopes: a publishable key has no scopes to choose (it may send events and read "
                "recommendations): leave scopes out",
                details=[{"loc": ["scopes"], "msg": "not allowed with publishable"}],
            )
    elif not isinstance(scopes_in, list | str) or (
        isinstance(scopes_in, list) and not all(isinstance(s, str) for s in scopes_in)
    ):
        raise ValidationFailed(
            "scopes: must be a list of ingest, read, admin, dashboard",
            details=[{"loc": ["scopes"], "msg": "is required"}],
        )
    if name is not None and (not isinstance(name, str) or len(name) > 128 or "\x00" in name):
        raise ValidationFailed(
            "name: must be a string of at most 128 characters", details=[{"loc": ["name"], "msg": "invalid"}]
        )
    origins_in = body.get("origins")
    origins: tuple[str, ...] = ()
    if publishable:
        if not isinstance(origins_in, list | str) or (
            isinstance(origins_in, list) and not all(isinstance(o, str) for o in origins_in)
        ):
            raise ValidationFailed(
                'origins: a publishable key needs its allowed origins, e.g. ["https://shop.example"]',
                details=[{"loc": ["origins"], "msg": "is required"}],
            )
        try:
            origins = keys.parse_origins(origins_in)
        except ValueError as exc:
            raise ValidationFailed(
                f"origins: {exc}", details=[{"loc": ["origins"], "msg": str(exc)}]
            ) from None
    elif origins_in is not None:
        raise ValidationFailed(
            'origins: only publishable keys have allowed origins (add "publishable": true)',
            details=[{"loc": ["origins"], "msg": "only with publishable"}],
        )
    limits_in = body.get("rate_limits")
    if limits_in is not None and (not isinstance(limits_in, str) or len(limits_in) > 500):
        raise ValidationFailed(
            "rate_limits: must be a string such as events=100/s,recommend=50/s",
            details=[{"loc": ["rate_limits"], "msg": "must be a string"}],
        )
    try:
        keys.check_rate_limits(limits_in)
    except ValueError as exc:
        raise ValidationFailed(
            f"rate_limits: {exc}", details=[{"loc": ["rate_limits"], "msg": str(exc)}]
        ) from None
    try:
        scopes = keys.PUBLISHABLE_SCOPES if publishable else keys.parse_scopes(scopes_in)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValidationFailed(f"scopes: {exc}", details=[{"loc": ["scopes"], "msg": str(exc)}]) from None

    def create(session: Any) -> dict[str, Any]:
        secret = keys.create_key(
            session,
            scopes,
            name,
            kind="publishable" if publishable else "secret",
            origins=origins,
            rate_limits=limits_in,
        )
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == keys.digest(secret)))
        return {**keys.describe(row), "key": secret}

    out = run_transaction(state.sessions, create)
    if publishable and state.origins is not None:
        state.origins.forget()  # preflights from its origins are answered here at once
    return out


@router.delete("/v1/admin/keys/{key_id}")
def revoke_api_key(
    key_id: Annotated[int, Path(ge=1, le=2**62, description="the key's id (GET /v1/admin/keys)")],
    state: Annotated[AppState, Depends(get_state)],
) -> dict[str, Any]:
    """Revoke a key: refused at once by this process, within RECO_KEY_CACHE_SECONDS by the others."""

    def revoke(session: Any) -> dict[str, Any] | None:
        row = keys.revoke_key(session, key_id)
        return None if row is None else {**keys.describe(row), "key_hash": row.key_hash}

    out = run_transaction(state.sessions, revoke)
    if out is None:
        raise NotFound(f"key_id: no API key {key_id}")
    state.keys.forget(out.pop("key_hash"))
    return out
