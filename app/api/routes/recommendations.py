"""Recommendations, anonymous sessions, similar items and popular items (scope read).

Routes are `async`: a cached answer is served from the event loop (two cache round trips, no thread hop);
the work of an uncached answer (one database query, the user tower, FAISS) runs in the threadpool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import get_state, require
from app.catalog import repository as catalog
from app.db.tables import ID_LENGTH
from app.errors import NotFound, ValidationFailed
from app.serving.recommender import RecParams
from app.serving.schemas import MAX_K, MAX_LIST, PopularOut, RecommendationsOut, SessionIn, SimilarOut

router = APIRouter(tags=["recommendations"], dependencies=[Depends(require("read"))])

UserId = Annotated[str, Path(min_length=1, max_length=ID_LENGTH, description="the user's external id")]
ItemId = Annotated[str, Path(min_length=1, max_length=ID_LENGTH, description="the item's external id")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many items (1 to 500)")]
Category = Annotated[
    str | None, Query(min_length=1, max_length=ID_LENGTH, description="only items of this category")
]
Exclude = Annotated[
    str | None,
    Query(max_length=MAX_LIST * (ID_LENGTH + 1), description="item ids never to return, comma separated"),
]
JSON = "application/json"


def _answer(body: bytes, cache: str) -> Response:
    return Response(body, media_type=JSON, headers={"X-Cache": cache})


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
    if problem:
        raise ValidationFailed(f"exclude: {problem}", details=[{"loc": ["query", "exclude"], "msg": problem}])
    return ids


@router.get(
    "/v1/users/{user_id}/recommendations",
    response_model=RecommendationsOut,
    response_class=Response,
    responses={200: {"content": {JSON: {}}, "description": "the answer; header X-Cache says hit or miss"}},
)
async def user_recommendations(
    user_id: UserId,
    request: Request,
    k: K = 10,
    category: Category = None,
    exclude: Exclude = None,
    include_seen: Annotated[bool, Query(description="also return items the user interacted with")] = False,
    explain: Annotated[bool, Query(description="name the history items behind each item")] = False,
) -> Response:
    """What the user should see next, from their latest events (an event sent a moment ago counts)."""
    recommender = get_state(request).recommender
    params = RecParams(k, category, _exclude_list(exclude), include_seen, explain)
    fresh, hit = recommender.cached_for_user(user_id, params)
    if hit is not None:
        return _answer(hit, "hit")
    return _answer(await run_in_threadpool(recommender.answer_user, user_id, params, fresh), "miss")


@router.post(
    "/v1/recommendations",
    response_model=RecommendationsOut,
    response_class=Response,
    responses={200: {"content": {JSON: {}}}},
)
async def session_recommendations(body: SessionIn, request: Request) -> Response:
    """Recommendations for an anonymous session from the items it just saw (`user_id` is null)."""
    recommender = get_state(request).recommender
    params = RecParams(body.k, body.category, tuple(body.exclude), body.include_seen, body.explain)
    return _answer(await run_in_threadpool(recommender.answer_session, body.recent_items, params), "miss")


@router.get(
    "/v1/items/{item_id}/similar",
    response_model=SimilarOut,
    response_class=Response,
    responses={200: {"content": {JSON: {}}}, 404: {"description": "unknown item"}},
)
async def similar_items(item_id: ItemId, request: Request, k: K = 10, category: Category = None) -> Response:
    """Items like this one (nearest item vectors), or popular ones in its category."""
    state = get_state(request)
    recommender = state.recommender
    params = RecParams(k, category)
    epoch, hit = recommender.cached_similar(item_id, params)
    if hit is not None:
        return _answer(hit, "hit")

    def work() -> bytes | None:
        current = state.registry.current
        known = current is not None and current.row(item_id) is not None
        if not known:
            with state.sessions() as session:
                known = catalog.get_item(session, item_id) is not None
        return recommender.answer_similar(item_id, params, epoch, known)

    body = await run_in_threadpool(work)
    if body is None:
        raise NotFound(f"item {item_id!r} not found: send it with PUT /v1/items/{{item_id}} or an event")
    return _answer(body, "miss")


@router.get(
    "/v1/popular",
    response_model=PopularOut,
    response_class=Response,
    responses={200: {"content": {JSON: {}}}},
)
async def popular_items(
    request: Request,
    k: K = 10,
    category: Category = None,
    window: Annotated[str | None, Query(description="one of RECO_POPULAR_WINDOWS, e.g. 24h or 7d")] = None,
) -> Response:
    """The most popular visible items of the window (decayed event counts kept up to date incrementally)."""
    state = get_state(request)
    windows = state.settings.popular_windows
    chosen = window or state.popular.default_window
    if chosen not in windows:
        msg = f"must be one of {', '.join(windows)} (got {window!r})"
        raise ValidationFailed(f"window: {msg}", details=[{"loc": ["query", "window"], "msg": msg}])
    return _answer(state.recommender.answer_popular(k, chosen, category), "none")
