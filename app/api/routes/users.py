"""/v1/users."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from app.api.deps import KeyFirstRoute, get_state, require
from app.api.params import UserIdPath
from app.catalog import repository, service
from app.catalog.schemas import EventOut, UserIn, UserOut
from app.db.engine import run_transaction
from app.errors import NotFound
from app.events import repository as events

router = APIRouter(tags=["users"], route_class=KeyFirstRoute)
UserId = UserIdPath


@router.put("/v1/users/{user_id}", response_model=UserOut, dependencies=[Depends(require("ingest"))])
def put_user(user_id: UserId, body: UserIn, request: Request) -> UserOut:
    """Create or update a user's attributes."""
    state = get_state(request)
    user = run_transaction(state.sessions, lambda s: repository.upsert_user(s, user_id, body.attributes))
    return get_user(user.user_id, request)


@router.get("/v1/users/{user_id}", response_model=UserOut, dependencies=[Depends(require("read"))])
def get_user(
    user_id: UserId, request: Request, events_limit: Annotated[int, Query(ge=0, le=1000)] = 20
) -> UserOut:
    """The user, its event count and its latest events (newest first)."""
    with get_state(request).sessions() as session:
        user = repository.get_user(session, user_id)
        if user is None:
            raise NotFound(f"user {user_id!r} not found")
        latest = events.recent_events(session, user_id, events_limit) if events_limit else []
        return UserOut(
            user_id=user.user_id,
            attributes=dict(user.attributes or {}),
            created_at=user.created_at,
            event_count=events.count_for_user(session, user_id),
            latest_events=[
                EventOut(
                    event_id=e.event_id, item_id=e.item_id, type=e.type, value=e.value, timestamp=e.timestamp
                )
                for e in latest
            ],
        )


@router.delete("/v1/users/{user_id}", status_code=204, dependencies=[Depends(require("admin"))])
def delete_user(user_id: UserId, request: Request) -> Response:
    """Erase the user, every event of theirs and every cached answer for them."""
    state = get_state(request)
    existed = run_transaction(state.sessions, lambda s: service.erase_user(s, user_id))
    service.forget_cached(state.cache, user_id)
    if not existed:
        raise NotFound(f"user {user_id!r} not found")
    return Response(status_code=204)
