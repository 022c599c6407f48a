"""Recommendations, anonymous sessions, similar items and popular items (scope read).

Routes are `async`. A user's answer starts with one cache round trip (asyncio: the loop serves other requests
meanwhile): a hit ends there. A miss computes on the loop too (numpy user tower and FAISS: short and CPU-bound,
where threads would only contend for the GIL); its cache write runs after the response is sent. Only a store read
(when the cache holds no list of the user's latest events) and explanations (torch, per history item) go to
threads.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app.api.deps import KeyFirstRoute, get_state, require
from app.api.params import NO_CONTROL, ItemIdPath, label_query
from app.api.state import AppState
from app.catalog import repository as catalog
from app.db.tables import ID_LENGTH
from app.errors import NotFound, ValidationFailed
from app.serving.recommender import RecParams, StoredHistory
from app.serving.schemas import MAX_K, MAX_LIST, PopularOut, RecommendationsOut, SessionIn, SimilarOut

log = logging.getLogger(__name__)
router = APIRouter(
    tags=["recommendations"], dependencies=[Depends(require("read"))], route_class=KeyFirstRoute
)

ItemId = ItemIdPath
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many items (1 to 500)")]
Category = Annotated[str | None, label_query(ID_LENGTH, "only items of this category")]
Exclude = Annotated[
    str | None,
    Query(
        max_length=MAX_LIST * (ID_LENGTH + 1),
        pattern=NO_CONTROL,
        description="item ids never to return, comma separated",
    ),
]
JSON = "application/json"


DEGRADED = "X-Reco-Degraded"  # names the dependency that could not be reached: the answer may be less fresh


_STRATEGY = b'"strategy":"'


def _answer(state: AppState, kind: str, body: bytes, cache: str, degraded: str | None = None) -> Response:
    """The JSON answer with its headers; counts which strategy answered (read off the body: hits too)."""
    at = body.find(_STRATEGY)
    if at >= 0:
        start = at + len(_STRATEGY)
        state.metrics.answered(kind, body[start : body.find(b'"', start)])
    headers = {"X-Cache": cache}
    if degraded:
        headers[DEGRADED] = degraded
    return Response(body, media_type=JSON, headers=headers)


def _exclude_list(raw: str | None) -> tuple[str, ...]:
    """The exclude query parameter as ids, or a 422 naming it."""
    if not raw:
        return ()
    ids = tuple(part.strip() for part in raw.split(",") if part.strip())
    problem = None
    if len(ids) > MAX_LIST:
        problem = f"at most {MAX_LIST} ids (got {len(ids)})"
    elif any(len(i) > ID_LENGTH for i in ids):
        problem = f"each id must have at most {ID_LENGTH} characters"
    elif any(_CONTROL.search(i) for i in ids):
        problem = "ids must not contain NUL (\\u0000) or other control characters"
    if problem:
        raise _invalid("exclude", problem)
    return ids


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _invalid(name: str, msg: str, where: str = "query") -> ValidationFailed:
    return ValidationFailed(f"{where}.{name}: {msg}", details=[{"loc": [where, name], "msg": msg}])


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid(name, f"must be an integer from {low} to {high} (got {raw[:40]!r})") from None
    if not low <= value <= high:
        raise _invalid(name, f"must be from {low} to {high} (got {value})")
    return value


def _bool_param(query: Mapping[str, str], name: str) -> bool:
    raw = query.get(name)
    if raw is None:
        return False
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise _invalid(name, f"must be true or false (got {raw[:40]!r})")


def _id_param(value: str | None, name: str, where: str = "query") -> str | None:
    if value is None:
        return None
    if not value:
        raise _invalid(name, "must not be empty", where)
    if len(value) > ID_LENGTH:
        raise _invalid(name, f"must have at most {ID_LENGTH} characters (got {len(value)})", where)
    if _CONTROL.search(value):
        raise _invalid(name, "must not contain NUL (\\u0000) or other control characters", where)
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # what NO_CONTROL (app/api/params.py) refuses


def _user_request(request: Request) -> tuple[str, RecParams]:
    """The user id and parameters of a recommendation request, or a 422 naming the bad one.

    Parsed here rather than by FastAPI's parameter machinery: on a cache hit that machinery would be most of
    the request's cost (the parameters are documented through `openapi_extra`).
    """
    query = request.query_params
    user_id = _id_param(request.path_params["user_id"], "user_id", "path")
    assert user_id is not None  # the route's path always holds one
    params = RecParams(
        k=_int_param(query, "k", 10, 1, MAX_K),
        category=_id_param(query.get("category"), "category"),
        exclude=_exclude_list(query.get("exclude")),
        include_seen=_bool_param(query, "include_seen"),
        explain=_bool_param(query, "explain"),
    )
    return user_id, params


def _documented(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


_USER_PARAMETERS = [
    _documented("user_id", "path", {"type": "string", "maxLength": ID_LENGTH}, "the user's external id"),
    _documented(
        "k", "query", {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10}, "how many items"
    ),
    _documented(
        "category", "query", {"type": "string", "maxLength": ID_LENGTH}, "only items of this category"
    ),
    _documented("exclude", "query", {"type": "string"}, "item ids never to return, comma separated"),
    _documented("include_seen", "query", {"type": "boolean", "default": False}, "also items the user had"),
    _documented(
        "explain", "query", {"type": "boolean", "default": False}, "name the history items behind each"
    ),
]


@router.get(
    "/v1/users/{user_id}/recommendations",
    responses={
        200: {"model": RecommendationsOut, "description": "the answer; header X-Cache says hit or miss"},
        422: {"description": "a parameter is out of range; the message names it"},
    },
    openapi_extra={"parameters": _USER_PARAMETERS},
)
async def user_recommendations(request: Request) -> Response:
    """What the user should see next, from their latest events (an event sent a moment ago counts)."""
    user_id, params = _user_request(request)
    state = get_state(request)
    recommender = state.recommender
    # The cache fence (app/fence.py): read in the last lease, else now; the lookup passes it to the cache.
    degraded = None if await state.fence.ready() else "database"
    looked = await recommender.alookup_user(user_id, params)
    if looked.answer is not None:
        return _answer(state, "user", looked.answer, "hit", degraded)
    if params.explain:  # leave-one-out runs the torch tower once per history item: off the event loop
        return _answer(
            state, "user", await run_in_threadpool(recommender.answer_user, user_id, params, looked), "miss"
        )
    stored = None
    if looked.history is None:  # the store read waits on I/O: in a thread, so the loop serves others
        try:
            stored = await run_in_threadpool(recommender.read_history, user_id)
        except SQLAlchemyError as exc:  # outage: answer from what needs no store (popular), never cached
            log.warning("history of a user not read (%s): answering without it", type(exc).__name__)
            fallback = recommender.compute_user(user_id, params, looked, StoredHistory([], None))
            return _answer(state, "user", fallback.body, "miss", "database")
    # The rest is ~0.5 ms of CPU (numpy tower, FAISS): inline, as threads would only contend for the GIL.
    answer = recommender.compute_user(user_id, params, looked, stored)
    # Stored after the response is sent: the caller does not wait for that round trip (the store is
    # conditional on the counters, so a late write can never make a stale answer servable).
    response = _answer(state, "user", answer.body, "miss", degraded)
    response.background = BackgroundTask(state.cache.astore_user, user_id, looked, answer)
    return response


@router.post(
    "/v1/recommendations",
    responses={200: {"model": RecommendationsOut, "description": "the answer (`user_id` null)"}},
)
async def session_recommendations(body: SessionIn, request: Request) -> Response:
    """Recommendations for an anonymous session from the items it just saw (`user_id` is null)."""
    state = get_state(request)
    recommender = state.recommender
    params = RecParams(body.k, body.category, tuple(body.exclude), body.include_seen, body.explain)
    return _answer(
        state,
        "session",
        await run_in_threadpool(recommender.answer_session, body.recent_items, params),
        "miss",
    )


@router.get(
    "/v1/items/{item_id}/similar",
    responses={
        200: {"model": SimilarOut, "description": "similar items"},
        404: {"description": "unknown item"},
    },
)
async def similar_items(item_id: ItemId, request: Request, k: K = 10, category: Category = None) -> Response:
    """Items like this one (nearest item vectors), or popular ones in its category."""
    state = get_state(request)
    recommender = state.recommender
    params = RecParams(k, category)
    degraded = None if await state.fence.ready() else "database"
    epoch, hit = recommender.cached_similar(item_id, params)
    if hit is not None:
        return _answer(state, "similar", hit, "hit", degraded)

    def work() -> bytes | None:
        try:
            with state.sessions() as session:
                deleted = catalog.item_deleted(session, item_id)
        except SQLAlchemyError:
            deleted = None  # the store is away: answer from what the model knows
        if deleted:
            raise NotFound(f"item {item_id!r} was deleted: PUT /v1/items/{{item_id}} creates it again")
        current = state.registry.current
        known = deleted is False or (current is not None and current.row(item_id) is not None)
        return recommender.answer_similar(item_id, params, epoch, known)

    body = await run_in_threadpool(work)
    if body is None:
        raise NotFound(f"item {item_id!r} not found: send it with PUT /v1/items/{{item_id}} or an event")
    return _answer(state, "similar", body, "miss")


@router.get(
    "/v1/popular",
    responses={200: {"model": PopularOut, "description": "popular items"}},
)
async def popular_items(
    request: Request,
    k: K = 10,
    category: Category = None,
    window: Annotated[str | None, label_query(32, "one of RECO_POPULAR_WINDOWS, e.g. 24h or 7d")] = None,
) -> Response:
    """The most popular visible items of the window (decayed event counts kept up to date incrementally)."""
    state = get_state(request)
    windows = state.settings.popular_windows
    chosen = window or state.popular.default_window
    if chosen not in windows:
        msg = f"must be one of {', '.join(windows)} (got {window!r})"
        raise ValidationFailed(f"window: {msg}", details=[{"loc": ["query", "window"], "msg": msg}])
    return _answer(state, "popular", state.recommender.answer_popular(k, chosen, category), "none")
