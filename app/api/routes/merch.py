"""/v1/admin/placements and /v1/admin/experiments: business rules, A/B tests and their reports, and the
offline replay of a candidate on logged traffic (scope admin)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import KeyFirstRoute, get_state, require
from app.api.state import AppState
from app.db.engine import run_transaction
from app.db.tables import Experiment, ModelVersion, Placement
from app.errors import Conflict, NotFound, ValidationFailed
from app.experiments import attribution
from app.experiments.replay import replay
from app.experiments.schemas import ExperimentIn, ExperimentOut, ReplayIn, StopIn
from app.experiments.stats import report
from app.rules.spec import NAME_PATTERN, PlacementIn, PlacementOut, compile_placement

router = APIRouter(
    tags=["merchandising"], dependencies=[Depends(require("admin"))], route_class=KeyFirstRoute
)
NamePath = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]


def _utc(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def _invalid(loc: list[str | int], msg: str) -> ValidationFailed:
    return ValidationFailed(f"{'.'.join(map(str, loc))}: {msg}", details=[{"loc": loc, "msg": msg}])


async def _republish(state: AppState) -> None:
    """This process serves the change at once (others within RECO_PLACEMENT_POLL_SECONDS)."""
    await run_in_threadpool(state.book.refresh)


# ---- placements ---------------------------------------------------------------------------------------------


def _placement_out(row: Placement) -> PlacementOut:
    return PlacementOut(name=row.name, revision=int(row.revision), **row.config)


@router.put(
    "/v1/admin/placements/{name}",
    response_model=PlacementOut,
    responses={201: {"description": "created"}, 422: {"description": "a rule or expression is invalid"}},
)
async def put_placement(
    name: NamePath, body: PlacementIn, request: Request, response: Response
) -> PlacementOut:
    """Create or replace a placement: default k, filter, boosts, pins, promotions, diversity, rotation and
    strategy. Expressions are compiled here: a bad one is a 422 naming the field and the position."""
    state = get_state(request)
    compile_placement(body, "body")  # 422 before anything is stored
    config = body.model_dump(mode="json")

    def work(session: Session) -> tuple[PlacementOut, bool]:
        row = session.get(Placement, name, with_for_update=True)
        now = datetime.now(UTC)
        created = row is None
        if row is None:
            row = Placement(name=name, config=config, revision=1, created_at=now, updated_at=now)
            session.add(row)
        else:
            row.config = config
            row.revision = int(row.revision) + 1
            row.updated_at = now
        session.flush()
        return _placement_out(row), created

    out, created = await run_in_threadpool(run_transaction, state.sessions, work)
    await _republish(state)
    response.status_code = 201 if created else 200
    return out


@router.get("/v1/admin/placements", response_model=list[PlacementOut])
async def list_placements(request: Request) -> list[PlacementOut]:
    """Every placement, by name."""
    state = get_state(request)

    def work() -> list[PlacementOut]:
        with state.sessions() as session:
            return [_placement_out(r) for r in session.scalars(select(Placement).order_by(Placement.name))]

    return await run_in_threadpool(work)


@router.get(
    "/v1/admin/placements/{name}", response_model=PlacementOut, responses={404: {"description": "unknown"}}
)
async def get_placement(name: NamePath, request: Request) -> PlacementOut:
    """One placement as stored."""
    state = get_state(request)

    def work() -> PlacementOut | None:
        with state.sessions() as session:
            row = session.get(Placement, name)
            return _placement_out(row) if row is not None else None

    out = await run_in_threadpool(work)
    if out is None:
        raise NotFound(f"placement {name!r} not found: PUT /v1/admin/placements/{name} creates it")
    return out


@router.delete("/v1/admin/placements/{name}", responses={404: {"description": "unknown"}})
async def delete_placement(name: NamePath, request: Request) -> dict[str, Any]:
    """Remove a placement (requests naming it are then a 404). One a running experiment uses is a 409."""
    state = get_state(request)

    def work(session: Session) -> bool:
        row = session.get(Placement, name, with_for_update=True)
        if row is None:
            return False
        running = session.scalar(
            select(Experiment.experiment_id).where(
                Experiment.status == "running", Experiment.placement == name
            )
        )
        if running is not None:
            raise Conflict(f"placement {name!r} is in running experiment {running!r}: stop it first")
        session.delete(row)
        return True

    if not await run_in_threadpool(run_transaction, state.sessions, work):
        raise NotFound(f"placement {name!r} not found")
    await _republish(state)
    return {"name": name, "deleted": True}


# ---- experiments --------------------------------------------------------------------------------------------


def _experiment_out(row: Experiment, with_report: dict[str, Any] | None = None) -> ExperimentOut:
    return ExperimentOut(
        experiment_id=row.experiment_id,
        placement=row.placement,
        variants=list(row.variants),
        status=row.status,
        winner=row.winner,
        attribution_window_s=int(row.attribution_window_s),
        started_at=_utc(row.started_at),  # type: ignore[arg-type]
        stopped_at=_utc(row.stopped_at),
        report=with_report,
    )


@router.post(
    "/v1/admin/experiments",
    status_code=201,
    response_model=ExperimentOut,
    responses={409: {"description": "the id is taken, or the placement already runs an experiment"}},
)
async def create_experiment(body: ExperimentIn, request: Request) -> ExperimentOut:
    """Start an A/B test: the placement's traffic is split between the variants by a stable hash of (experiment
    id, user id); every answer says its `experiment` and `variant`."""
    state = get_state(request)

    def work(session: Session) -> ExperimentOut:
        if session.get(Placement, body.placement) is None:
            raise _invalid(["body", "placement"], f"no placement {body.placement!r}: PUT it first")
        for i, v in enumerate(body.variants):
            if v.placement is not None and session.get(Placement, v.placement) is None:
                raise _invalid(
                    ["body", "variants", i, "placement"], f"no placement {v.placement!r}: PUT it first"
                )
            if v.model_version is not None:
                status = session.scalar(
                    select(ModelVersion.status).where(ModelVersion.version == v.model_version)
                )
                if status is None or status == "rejected":
                    raise _invalid(
                        ["body", "variants", i, "model_version"],
                        f"no usable model version {v.model_version!r} (GET /v1/admin/models lists them)",
                    )
        if session.get(Experiment, body.experiment_id) is not None:
            raise Conflict(f"experiment {body.experiment_id!r} exists: choose another experiment_id")
        running = session.scalar(
            select(Experiment.experiment_id).where(
                Experiment.status == "running", Experiment.placement == body.placement
            )
        )
        if running is not None:
            raise Conflict(f"placement {body.placement!r} already runs experiment {running!r}: stop it first")
        now = datetime.now(UTC)
        row = Experiment(
            experiment_id=body.experiment_id,
            placement=body.placement,
            variants=[v.model_dump(exclude_none=True) for v in body.variants],
            status="running",
            attribution_window_s=body.attribution_window_s,
            started_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        return _experiment_out(row)

    out = await run_in_threadpool(run_transaction, state.sessions, work)
    await _republish(state)
    return out


@router.get("/v1/admin/experiments", response_model=list[ExperimentOut])
async def list_experiments(request: Request) -> list[ExperimentOut]:
    """Every experiment, newest first (without reports)."""
    state = get_state(request)

    def work() -> list[ExperimentOut]:
        with state.sessions() as session:
            rows = session.scalars(select(Experiment).order_by(Experiment.started_at.desc()))
            return [_experiment_out(r) for r in rows]

    return await run_in_threadpool(work)


def experiment_report(session: Session, row: Experiment, *, bootstrap: int = 2000) -> dict[str, Any]:
    """Per variant: users, impressions, click-through, conversion, revenue per impression with 95% intervals,
    p-values against the control (the first variant) and a verdict."""
    shown = attribution.read_shown(session, experiment=row.experiment_id)
    users = {s.user_id for s in shown}
    started = _utc(row.started_at)
    assert started is not None
    stopped = _utc(row.stopped_at)
    window = float(row.attribution_window_s)
    until = stopped + timedelta(seconds=window) if stopped is not None else None
    acted = attribution.read_acted(session, users, started, until)
    attributed = attribution.attribute(shown, acted, window)
    by_variant = attribution.outcomes_by_variant(shown, attributed)
    names = [str(v["name"]) for v in row.variants]
    variants = {name: by_variant.get(name, []) for name in names}
    stats = report(variants, names[0], bootstrap=bootstrap)
    return {"control": names[0], **stats.as_dict()}


@router.get(
    "/v1/admin/experiments/{experiment_id}",
    response_model=ExperimentOut,
    responses={404: {"description": "unknown experiment"}},
)
async def get_experiment(experiment_id: NamePath, request: Request) -> ExperimentOut:
    """The experiment and its report (attribution joins clicks and purchases to the answers that led to them
    within the attribution window; each (answer, item) counts once)."""
    state = get_state(request)

    def work() -> ExperimentOut | None:
        with state.sessions() as session:
            row = session.get(Experiment, experiment_id)
            if row is None:
                return None
            return _experiment_out(row, experiment_report(session, row))

    out = await run_in_threadpool(work)
    if out is None:
        raise NotFound(f"experiment {experiment_id!r} not found")
    return out


@router.post(
    "/v1/admin/experiments/{experiment_id}/stop",
    response_model=ExperimentOut,
    responses={404: {"description": "unknown experiment"}, 409: {"description": "already stopped"}},
)
async def stop_experiment(experiment_id: NamePath, body: StopIn, request: Request) -> ExperimentOut:
    """Stop assigning users: every answer of the placement now comes from `winner`."""
    state = get_state(request)

    def work(session: Session) -> ExperimentOut | None:
        row = session.get(Experiment, experiment_id, with_for_update=True)
        if row is None:
            return None
        names = [str(v["name"]) for v in row.variants]
        if body.winner not in names:
            raise _invalid(["body", "winner"], f"must be one of the variants {', '.join(names)}")
        if row.status != "running":
            raise Conflict(f"experiment {experiment_id!r} was stopped already (winner {row.winner!r})")
        now = datetime.now(UTC)
        row.status, row.winner, row.stopped_at, row.updated_at = "stopped", body.winner, now, now
        session.flush()
        return _experiment_out(row)

    out = await run_in_threadpool(run_transaction, state.sessions, work)
    if out is None:
        raise NotFound(f"experiment {experiment_id!r} not found")
    await _republish(state)
    return out


@router.post("/v1/admin/experiments/replay", responses={404: {"description": "unknown placement"}})
async def replay_candidate(body: ReplayIn, request: Request) -> dict[str, Any]:
    """Before launching a variant: replay the placement's logged answers of the last `days` that led to clicks,
    and report how the candidate would have ranked the clicked items (hit rate and NDCG at k) beside the live
    configuration and the lists actually shown."""
    state = get_state(request)
    return await run_in_threadpool(replay, state, body)
