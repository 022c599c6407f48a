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
from dataclasses import dataclass, replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app.api.deps import KeyFirstRoute, get_state, require
from app.api.params import NO_CONTROL, ItemIdPath, label_query
from app.api.state import AppState
from app.catalog import repository as catalog
from app.db.tables import ID_LENGTH
from app.errors import NotFound, ValidationFailed
from app.rules.spec import RulesIn, with_request
from app.serving.recid import new_recommendation_id
from app.serving.recommender import RecParams, StoredHistory
from app.serving.schemas import MAX_K, MAX_LIST, PopularOut, RecommendationsOut, SessionIn, SimilarOut
from app.validation import describe, summary

log = logging.getLogger(__name__)
router = APIRouter(
    tags=["recommendations"],
    dependencies=[Depends(require("read", publishable=True, limit="recommend"))],
    route_class=KeyFirstRoute,
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


def _answer(
    state: AppState,
    kind: str,
    body: bytes,
    cache: str,
    degraded: str | None = None,
    route: Routing | None = None,
) -> Response:
    """The JSON answer with its headers and a fresh `recommendation_id` (hits too: unique per answer); counts
    which strategy answered (read off the body)."""
    at = body.find(_STRATEGY)
    if at >= 0:
        start = at + len(_STRATEGY)
        state.metrics.answered(kind, body[start : body.find(b'"', start)])
    rid = route.new_id() if route is not None else new_recommendation_id()
    body = b'{"recommendation_id":"' + rid.encode() + b'",' + body[1:]
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
        # 0 when not given and a placement or rules may set it (else 10: the hot path needs no second copy)
        k=_int_param(query, "k", 0 if _ROUTED.intersection(query) else DEFAULT_K, 1, MAX_K),
        category=_id_param(query.get("category"), "category"),
        exclude=_exclude_list(query.get("exclude")),
        include_seen=_bool_param(query, "include_seen"),
        explain=_bool_param(query, "explain"),
    )
    return user_id, params


async def _routing(
    state: AppState, query: Mapping[str, str], user_id: str | None, params: RecParams
) -> tuple[RecParams, Routing | None]:
    """Apply `placement`, `filter` and `rules` to the parameters: the rules, the experiment arm, the k."""
    placement = query.get("placement")
    request_filter = query.get("filter")
    raw_rules = query.get("rules")
    if placement is None and request_filter is None and raw_rules is None:
        return (params if params.k else replace(params, k=DEFAULT_K)), None
    if placement is not None and not _NAME.fullmatch(placement):
        raise _invalid("placement", "must be 1 to 64 letters, digits, '_' or '-' (a placement's name)")
    if request_filter is not None:
        if not request_filter.strip():
            raise _invalid("filter", "must not be empty (leave it out for no filter)")
        if len(request_filter) > MAX_EXPRESSION or _CONTROL.search(request_filter):
            raise _invalid(
                "filter", f"must have at most {MAX_EXPRESSION} characters and no control characters"
            )
    resolved = None
    if placement is not None:
        book = state.book
        if book.known(placement):
            resolved = book.resolve(placement, user_id)
        else:  # not in this process's snapshot yet: the store says (in a thread, bounded by its timeouts)
            resolved = await run_in_threadpool(book.resolve, placement, user_id)
        if resolved is None:
            raise NotFound(
                f"placement {placement!r} not found: PUT /v1/admin/placements/{placement} creates it"
            )
    rules = with_request(resolved.rules if resolved else None, request_filter, _rules_param(raw_rules))
    labels: list[tuple[str, str]] = []
    if resolved is not None:
        labels.append(("placement", resolved.placement))
        if resolved.experiment:
            labels += [("experiment", resolved.experiment), ("variant", resolved.variant or "")]
    k = params.k or (rules.k if rules is not None and rules.k else DEFAULT_K)
    routed = replace(
        params,
        k=k,
        rules=rules,
        route=resolved.cache_part if resolved else "",
        model_version=resolved.model_version if resolved else None,
        labels=tuple(labels),
    )
    route = Routing(
        resolved.placement if resolved else None,
        resolved.experiment if resolved else None,
        resolved.variant if resolved else None,
    )
    return routed, route


def _rules_param(raw: str | None) -> RulesIn | None:
    """The `rules` query parameter (JSON), or a 422 naming the bad field."""
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _invalid("rules", 'must be a JSON object such as {"boosts": [...]} (URL-encoded)') from None
    try:
        return RulesIn.model_validate(data)
    except ValidationError as exc:
        details = describe(exc, ["query", "rules"])
        raise ValidationFailed(summary(details), details=details) from None


@dataclass(frozen=True, slots=True)
class Routing:
    """Where an answer came from: makes its recommendation ids."""

    placement: str | None
    experiment: str | None
    variant: str | None

    def new_id(self) -> str:
        """A fresh id carrying this origin."""
        return new_recommendation_id(self.placement, self.experiment, self.variant)


DEFAULT_K = 10
MAX_EXPRESSION = 2000
_ROUTED = frozenset({"placement", "filter", "rules"})
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
    _documented(
        "placement", "query", {"type": "string", "maxLength": 64}, "a stored placement's rules and experiment"
    ),
    _documented(
        "filter",
        "query",
        {"type": "string", "maxLength": MAX_EXPRESSION},
        'only items matching the expression, e.g. price < 50 and "outdoor" in tags',
    ),
    _documented(
        "rules", "query", {"type": "string"}, "JSON: boosts, pins, promotions, diversity, rotation, strategy"
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
    params, route = await _routing(state, request.query_params, user_id, params)
    recommender = state.recommender
    # The cache fence (app/fence.py): read in the last lease, else now; the lookup passes it to the cache.
    degraded = None if await state.fence.ready() else "database"
    looked = await recommender.alookup_user(user_id, params)
    if looked.answer is not None:
        return _answer(state, "user", looked.answer, "hit", degraded, route)
    # leave-one-out runs the torch tower once per history item, and rotation reads the store: off the loop
    if params.explain or (params.rules is not None and params.rules.rotation is not None):
        return _answer(
            state,
            "user",
            await run_in_threadpool(recommender.answer_user, user_id, params, looked),
            "miss",
            route=route,
        )
    stored = None
    if looked.history is None:  # the store read waits on I/O: in a thread, so the loop serves others
        try:
            stored = await run_in_threadpool(recommender.read_history, user_id)
        except SQLAlchemyError as exc:  # outage: answer from what needs no store (popular), never cached
            log.warning("history of a user not read (%s): answering without it", type(exc).__name__)
            fallback = recommender.compute_user(user_id, params, looked, StoredHistory([], None))
            return _answer(state, "user", fallback.body, "miss", "database", route)
    # The rest is ~0.5 ms of CPU (numpy tower, FAISS): inline, as threads would only contend for the GIL.
    if state.registry.engine.remote:  # a vector engine over the network: its searches wait off the loop
        answer = await run_in_threadpool(recommender.compute_user, user_id, params, looked, stored)
    else:
        answer = recommender.compute_user(user_id, params, looked, stored)
    # Stored after the response is sent: the caller does not wait for that round trip (the store is
    # conditional on the counters, so a late write can never make a stale answer servable).
    response = _answer(state, "user", answer.body, "miss", degraded, route)
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
    params = RecParams(body.k or 0, body.category, tuple(body.exclude), body.include_seen, body.explain)
    routing: dict[str, str] = {}
    if body.placement is not None:
        routing["placement"] = body.placement
    if body.filter is not None:
        routing["filter"] = body.filter
    if body.rules is not None:
        routing["rules"] = body.rules.model_dump_json(exclude_none=True)
    params, route = await _routing(state, routing, None, params)
    return _answer(
        state,
        "session",
        await run_in_threadpool(recommender.answer_session, body.recent_items, params),
        "miss",
        route=route,
    )


@router.get(
    "/v1/items/{item_id}/similar",
    responses={
        200: {"model": SimilarOut, "description": "similar items"},
        404: {"description": "unknown item"},
    },
)
async def similar_items(
    item_id: ItemId,
    request: Request,
    k: Annotated[int | None, Query(ge=1, le=MAX_K, description="how many items (1 to 500)")] = None,
    category: Category = None,
    placement: Annotated[str | None, Query(max_length=64, description="a stored placement's rules")] = None,
    filter: Annotated[
        str | None, Query(max_length=MAX_EXPRESSION, description="only items matching the expression")
    ] = None,
    rules: Annotated[str | None, Query(description="JSON: boosts, pins, promotions, diversity")] = None,
) -> Response:
    """Items like this one (nearest item vectors), or popular ones in its category; `placement`, `filter` and
    `rules` apply business rules (the placement's strategy is ignored here: the answer is always similar)."""
    state = get_state(request)
    recommender = state.recommender
    params, route = await _routing(state, request.query_params, None, RecParams(k or 0, category))
    degraded = None if await state.fence.ready() else "database"
    epoch, hit = recommender.cached_similar(item_id, params)
    if hit is not None:
        return _answer(state, "similar", hit, "hit", degraded, route)

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
    return _answer(state, "similar", body, "miss", route=route)


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
