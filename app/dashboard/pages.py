"""/dashboard: the operator's pages (server-rendered Jinja2, htmx for the live parts, uPlot for charts).

Every page needs a signed session cookie (sign in with an admin or `dashboard` key); without one it answers a
303 to /dashboard/login. Activate, retrain and logout are POSTs that carry the session's CSRF token. Every
response has the security headers below (no inline script or style: the CSP forbids them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import get_state
from app.api.routes import admin as admin_routes
from app.api.state import AppState
from app.catalog import repository as catalog
from app.dashboard import stats
from app.dashboard.auth import (
    COOKIE,
    COOKIE_PATHS,
    PAGE_PATH,
    VIEW_SCOPES,
    DashSession,
    csrf_ok,
    current_session,
    new_session,
    secret_of,
    sign,
)
from app.db.engine import run_transaction
from app.db.tables import ID_LENGTH, Event, Impression, TrainingJob
from app.errors import AppError
from app.events import repository as events_repo
from app.events.repository import max_event_id
from app.registry import jobs
from app.registry import repository as registry
from app.serving.recommender import RecParams
from app.serving.schemas import MAX_K, MAX_LIST

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
STATIC = HERE / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
STATIC_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".LICENSE": "text/plain",
}
FINISHED = frozenset({"succeeded", "failed"})
MAX_FORM_BYTES = 16_384

templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


class LoginRequired(Exception):
    """No valid session: the page answers a redirect to the sign-in form."""


class DashboardRoute(APIRoute):
    """Adds the security headers to every answer, and turns LoginRequired into a 303 to the sign-in form."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = RedirectResponse("/dashboard/login", status_code=303)
                if request.headers.get("hx-request"):  # htmx: reload the whole page on the form
                    response.headers["HX-Redirect"] = "/dashboard/login"
            for name, value in SECURITY_HEADERS.items():
                response.headers[name] = value
            return response

        return run


router = APIRouter(tags=["dashboard"], route_class=DashboardRoute, include_in_schema=False)


class DashboardHeaders:
    """Pure ASGI: the security headers on every answer under /dashboard, also the ones no dashboard route
    wrote (a 404, an error rendered by the app's handlers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        self.names = {k for k, _ in self.headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PAGE_PATH or path.startswith(PAGE_PATH + "/")):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in self.names]
                message = {**message, "headers": kept + self.headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _fmt_ts(value: Any) -> str:
    if isinstance(value, datetime):
        ts = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return ts.strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def _fmt_age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.1f} {unit}"
    return f"{s} s"


def _fmt_num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


templates.filters["ts"] = _fmt_ts
templates.filters["age"] = _fmt_age
templates.filters["num"] = _fmt_num
templates.filters["json"] = lambda v: orjson.dumps(v, default=str, option=orjson.OPT_INDENT_2).decode()


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A template as an HTML answer."""
    return HTMLResponse(templates.get_template(name).render(**context), status_code=status)


def page(request: Request, session: DashSession, name: str, active: str, **context: Any) -> HTMLResponse:
    """A full page: the nav bar, the logout form and the CSRF meta tag come from base.html."""
    return render(name, session=session, csrf=session.csrf, active=active, can_act=session.can_act, **context)


async def need_session(request: Request) -> DashSession:
    session = await current_session(request)
    if session is None:
        raise LoginRequired
    return session


async def read_form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (small: sign-in and buttons), first value per name."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items() if v}


def _forbidden(message: str) -> HTMLResponse:
    return render("message.html", status=403, title="Forbidden", message=message)


async def _acting_session(request: Request, form: dict[str, str] | None = None) -> DashSession | Response:
    """The session of a state-changing request: valid, with the CSRF token; else the 403 to answer."""
    session = await need_session(request)
    sent = request.headers.get("x-csrf-token") or (form or {}).get("csrf")
    if not csrf_ok(session, sent):
        return _forbidden("missing or wrong CSRF token: reload the page and try again")
    return session


# ---- static files ---------------------------------------------------------------------------------------------


@router.get("/dashboard/static/{name}")
async def static_file(name: str) -> Response:
    """The vendored scripts and styles (only the files shipped in app/dashboard/static)."""
    path = STATIC / name
    if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    suffix = next((s for s in STATIC_TYPES if name.endswith(s)), None)
    return FileResponse(path, media_type=STATIC_TYPES.get(suffix or "", "application/octet-stream"))


# ---- sign-in ----------------------------------------------------------------------------------------------------


@router.get("/dashboard/login")
async def login_form(request: Request) -> Response:
    """The sign-in form (straight to the overview when already signed in)."""
    if await current_session(request) is not None:
        return RedirectResponse("/dashboard", status_code=303)
    return render("login.html", error=None)


def _set_cookie(response: Response, request: Request, value: str, max_age: int) -> None:
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"
    for path in COOKIE_PATHS:
        response.set_cookie(
            COOKIE, value, max_age=max_age, path=path, httponly=True, samesite="strict", secure=secure
        )


@router.post("/dashboard/login")
async def login(request: Request) -> Response:
    """Verify the key (admin or dashboard scope); on success a session cookie and a 303 to the overview."""
    form = await read_form(request)
    key = form.get("key", "").strip()
    state = get_state(request)
    scopes: frozenset[str] | None = None
    if key and len(key) <= 512:
        known, scopes = state.keys.cached(key)
        if not known:
            scopes = await run_in_threadpool(state.keys.lookup, key)
    # a refusal is the form again with its message, answered 200: a browser logs no console error for it
    if scopes is None:
        return render("login.html", error="Unknown or revoked key.")
    if not scopes & VIEW_SCOPES:
        return render("login.html", error="This key has neither the admin nor the dashboard scope.")
    secret = await run_in_threadpool(secret_of, state)
    ident = await run_in_threadpool(state.keys.identify, key, secret)
    if ident is None:
        return render("login.html", error="Unknown or revoked key.")
    lifetime = state.settings.dashboard_session_s
    session = new_session(ident, scopes, lifetime)
    value = sign(secret, session)
    response = RedirectResponse("/dashboard", status_code=303)
    _set_cookie(response, request, value, lifetime)
    return response


@router.post("/dashboard/logout")
async def logout(request: Request) -> Response:
    """End the session (CSRF token required): the cookie is cleared, then the sign-in form."""
    form = await read_form(request)
    acting = await _acting_session(request, form)
    if isinstance(acting, Response):
        return acting
    response = RedirectResponse("/dashboard/login", status_code=303)
    for path in COOKIE_PATHS:
        response.delete_cookie(COOKIE, path=path, httponly=True, samesite="strict")
    return response


# ---- overview ---------------------------------------------------------------------------------------------------


@router.get("/dashboard")
async def overview(request: Request) -> Response:
    """Events per minute (last hour / day), counts, cache hit ratio, latency, the active model."""
    session = await need_session(request)
    data = await run_in_threadpool(stats.overview, get_state(request))
    return page(request, session, "overview.html", "overview", data=data)


# ---- models and jobs ----------------------------------------------------------------------------------------


def _models(state: AppState) -> dict[str, Any]:
    with state.sessions() as session:
        rows = registry.list_versions(session)
        open_job = jobs.open_job(session)
        job = jobs.job_summary(open_job) if open_job is not None else None
        job_ids = [r.job_id for r in rows if r.job_id]
        verdicts = (
            {  # the gate's verdict is kept in the job that made the version
                job_id: (metrics or {}).get("gate")
                for job_id, metrics in session.execute(
                    select(TrainingJob.job_id, TrainingJob.metrics).where(TrainingJob.job_id.in_(job_ids))
                ).all()
            }
            if job_ids
            else {}
        )
    models = []
    for row in rows:
        metrics = dict(row.metrics or {})
        gate = metrics.get("gate") or verdicts.get(row.job_id or "")
        gate = gate if isinstance(gate, dict) else None
        models.append(
            {
                "version": row.version,
                "status": row.status,
                "reason": row.reason,
                "ndcg10": stats.metric(metrics, "NDCG@10"),
                "hr10": stats.metric(metrics, "HR@10"),
                "baselines": stats.baselines(metrics),
                "data": dict(row.data_stats or {}),
                "timings": dict(row.timings or {}),
                "gate": gate,
                "created_at": row.created_at,
                "activated_at": row.activated_at,
                "metrics": metrics,
            }
        )
    return {"models": models, "job": job}


@router.get("/dashboard/models")
async def models_page(request: Request) -> Response:
    """Every model version with its metrics and gate verdict, activation, retraining with live progress."""
    session = await need_session(request)
    data = await run_in_threadpool(_models, get_state(request))
    return page(
        request,
        session,
        "models.html",
        "models",
        activated=request.query_params.get("activated"),
        **data,
    )


@router.post("/dashboard/models/{version}/activate")
async def activate(version: str, request: Request) -> Response:
    """Activate a version (admin sessions, CSRF token); htmx then reloads the models page."""
    form = await read_form(request)
    acting = await _acting_session(request, form)
    if isinstance(acting, Response):
        return acting
    if not acting.can_act:
        return _forbidden("this session's key has the dashboard scope only: it can look, not act")
    if not version or len(version) > 64 or "/" in version:
        return render("message.html", status=422, title="Invalid", message="version: not a model version")
    try:
        await run_in_threadpool(admin_routes.activate, version, request)
    except AppError as exc:
        return render("message.html", status=exc.status_code, title="Not activated", message=exc.message)
    target = f"/dashboard/models?activated={quote(version)}"
    response: Response = RedirectResponse(target, status_code=303)
    if request.headers.get("hx-request"):
        response = Response(status_code=204, headers={"HX-Redirect": target})
    return response


@router.post("/dashboard/retrain")
async def retrain(request: Request) -> Response:
    """Queue a training job (full or incremental); answers the live progress fragment, which polls itself."""
    form = await read_form(request)
    acting = await _acting_session(request, form)
    if isinstance(acting, Response):
        return acting
    if not acting.can_act:
        return _forbidden("this session's key has the dashboard scope only: it can look, not act")
    mode = form.get("mode", "full")
    if mode not in ("full", "incremental"):
        return render(
            "message.html", status=422, title="Invalid", message="mode: must be full or incremental"
        )
    state = get_state(request)

    def work(session: Any) -> dict[str, Any]:
        job, _ = jobs.enqueue(
            session,
            trigger="api",
            reason="retrain from the dashboard",
            max_event_id=max_event_id(session),
            params={"mode": mode},
        )
        return jobs.job_summary(job)

    job = await run_in_threadpool(run_transaction, state.sessions, work)
    if not request.headers.get("hx-request"):
        return RedirectResponse("/dashboard/models", status_code=303)
    return render("job_progress.html", job=job, finished=job["status"] in FINISHED)


@router.get("/dashboard/jobs/{job_id}/progress")
async def job_progress(job_id: str, request: Request) -> Response:
    """The live progress fragment of one job (htmx polls it every second until the job is finished; the
    answer that says it finished also brings the versions table, swapped out of band)."""
    session = await need_session(request)
    state = get_state(request)

    def work() -> dict[str, Any] | None:
        with state.sessions() as session:
            job = jobs.get_job(session, job_id[:64])
            return jobs.job_summary(job) if job is not None else None

    job = await run_in_threadpool(work)
    if job is None:
        return render("message.html", status=404, title="Not found", message=f"job {job_id!r} not found")
    finished = job["status"] in FINISHED
    models = None
    if finished and request.headers.get("hx-request"):  # the last poll: the versions table too (out of band)
        models = (await run_in_threadpool(_models, state))["models"]
    return render("job_progress.html", job=job, finished=finished, oob_models=models, can_act=session.can_act)


def _jobs(state: AppState) -> dict[str, Any]:
    with state.sessions() as session:
        rows = list(
            session.scalars(
                select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc()).limit(200)
            )
        )
        summaries = [jobs.job_summary(r) | {"worker_id": r.worker_id} for r in rows]
    queue = [j for j in summaries if j["status"] in ("queued", "running")]
    history = [j for j in summaries if j["status"] not in ("queued", "running")]
    return {"queue": queue, "history": history}


@router.get("/dashboard/jobs")
async def jobs_page(request: Request) -> Response:
    """The job queue and the history (the latest 200), errors in full."""
    session = await need_session(request)
    data = await run_in_threadpool(_jobs, get_state(request))
    return page(request, session, "jobs.html", "jobs", **data)


# ---- user and item inspectors -----------------------------------------------------------------------------


def _clean_id(raw: str | None) -> tuple[str | None, str | None]:
    """(value, problem) of an id from the query string."""
    if raw is None or raw == "":
        return None, None
    if len(raw) > ID_LENGTH:
        return None, f"at most {ID_LENGTH} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        return None, "no control characters"
    return raw, None


def _user_params(query: Any) -> tuple[dict[str, Any], list[str]]:
    errors: list[str] = []
    form: dict[str, Any] = {
        "user_id": query.get("user_id", ""),
        "k": query.get("k", "10"),
        "category": query.get("category", ""),
        "exclude": query.get("exclude", ""),
        "include_seen": query.get("include_seen", "").lower() in ("true", "1", "on", "yes"),
    }
    user_id, problem = _clean_id(form["user_id"])
    if problem:
        errors.append(f"user_id: {problem}")
    form["user"] = user_id
    try:
        form["k_value"] = int(form["k"] or 10)
        if not 1 <= form["k_value"] <= MAX_K:
            raise ValueError
    except ValueError:
        errors.append(f"k: must be a whole number from 1 to {MAX_K}")
        form["k_value"] = 10
    category, problem = _clean_id(form["category"])
    if problem:
        errors.append(f"category: {problem}")
    form["category_value"] = category
    excluded = tuple(p.strip() for p in str(form["exclude"]).split(",") if p.strip())
    if len(excluded) > MAX_LIST or any(_clean_id(e)[1] for e in excluded):
        errors.append(f"exclude: at most {MAX_LIST} ids, comma separated")
        excluded = ()
    form["exclude_value"] = excluded
    return form, errors


def _inspect_user(state: AppState, form: dict[str, Any]) -> dict[str, Any]:
    user_id = form["user"]
    with state.sessions() as session:
        events = events_repo.recent_events(session, user_id, 50)
        total = events_repo.count_for_user(session, user_id)
    params = RecParams(
        k=form["k_value"],
        category=form["category_value"],
        exclude=form["exclude_value"],
        include_seen=form["include_seen"],
        explain=True,
    )
    answer = orjson.loads(state.recommender.answer_user(user_id, params))
    return {"events": events, "event_total": total, "answer": answer}


@router.get("/dashboard/users")
async def users_page(request: Request) -> Response:
    """A user's latest events and what they would be recommended now (with explanations)."""
    session = await need_session(request)
    form, errors = _user_params(request.query_params)
    result = None
    if form["user"] and not errors:
        result = await run_in_threadpool(_inspect_user, get_state(request), form)
    return page(request, session, "users.html", "users", form=form, errors=errors, result=result)


def _inspect_item(state: AppState, item_id: str) -> dict[str, Any]:
    with state.sessions() as session:
        item = catalog.get_item(session, item_id)
        fields = None
        if item is not None:
            fields = {
                "item_id": item.item_id,
                "title": item.title,
                "categories": item.categories,
                "tags": item.tags,
                "price": item.price,
                "available": item.available,
                "deleted": item.deleted,
                "published_at": item.published_at,
                "attributes": item.attributes,
                "created_at": item.created_at,
                "updated_at": item.updated_at,
            }
        by_type = {
            kind: int(n)
            for kind, n in session.execute(
                select(Event.type, func.count()).where(Event.item_id == item_id).group_by(Event.type)
            ).all()
        }
        impressions = int(
            session.scalar(select(func.count()).select_from(Impression).where(Impression.item_id == item_id))
            or 0
        )
    similar = None
    if fields is not None and not fields["deleted"]:
        params = RecParams(k=10)
        epoch, hit = state.recommender.cached_similar(item_id, params)
        body = hit or state.recommender.answer_similar(item_id, params, epoch, True)
        similar = orjson.loads(body) if body is not None else None
    model = state.registry.current
    return {
        "fields": fields,
        "by_type": dict(sorted(by_type.items())),
        "impressions": impressions,
        "similar": similar,
        "in_model": model is not None and model.row(item_id) is not None,
    }


@router.get("/dashboard/items")
async def items_page(request: Request) -> Response:
    """An item's fields, similar items, how often it was shown and interacted with."""
    session = await need_session(request)
    raw = request.query_params.get("item_id", "")
    item_id, problem = _clean_id(raw)
    result = None
    if item_id and not problem:
        result = await run_in_threadpool(_inspect_item, get_state(request), item_id)
    errors = [f"item_id: {problem}"] if problem else []
    return page(request, session, "items.html", "items", item_id=raw, errors=errors, result=result)


# ---- popular ------------------------------------------------------------------------------------------------


@router.get("/dashboard/popular")
async def popular_page(request: Request) -> Response:
    """The popular lists of every window (RECO_POPULAR_WINDOWS), from the in-memory counters."""
    session = await need_session(request)
    state = get_state(request)
    lists = [
        orjson.loads(state.recommender.answer_popular(20, window, None))
        for window in state.settings.popular_windows
    ]
    return page(request, session, "popular.html", "popular", lists=lists)
