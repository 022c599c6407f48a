"""The operator's dashboard on SQLite and PostgreSQL: sign-in with signed session cookies (forged, tampered,
expired and revoked ones refused), CSRF on every state-changing POST, security headers, the pages and their
DOM contract, and the /v1/admin/stats JSON (admin keys or a session), fed by the event_counts rollup."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.api.app import create_app
from app.auth.keys import allows, parse_scopes
from app.dashboard.auth import COOKIE, DashSession, sign, stored_secret, unsign
from app.dashboard.pages import CSP
from app.dashboard.stats import histogram_quantile
from app.db.engine import make_engine, make_sessionmaker
from app.db.tables import EventCount
from app.events.service import load_events
from app.records import EventRecord
from app.settings import Settings
from app.trainer.worker import Worker
from tests.conftest import ADMIN_KEY, INGEST_KEY, READ_KEY, auth
from tests.e2e.support import load_chain_world, tiny

PAGES = (
    "/dashboard",
    "/dashboard/models",
    "/dashboard/jobs",
    "/dashboard/users",
    "/dashboard/items",
    "/dashboard/popular",
)
STATS = ("/v1/admin/stats/events?window=1h", "/v1/admin/stats/overview", "/v1/admin/stats/models")
NAV = ("nav-overview", "nav-models", "nav-jobs", "nav-users", "nav-items", "nav-popular")


@pytest.fixture
def dash_settings(settings: Settings) -> Settings:
    return tiny(settings, model_poll_seconds=0.2)


@pytest.fixture
def web(dash_settings: Settings) -> Iterator[TestClient]:
    """A browser-like client: no default Authorization header, cookies kept."""
    with TestClient(create_app(dash_settings)) as c:
        yield c


@pytest.fixture
def sessions(dash_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(dash_settings)
    yield make_sessionmaker(engine)
    engine.dispose()


def sign_in(web: TestClient, key: str = ADMIN_KEY) -> str:
    """Sign in; returns the page's CSRF token."""
    response = web.post("/dashboard/login", data={"key": key}, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dashboard"
    return csrf_of(web.get("/dashboard").text)


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert found, html[:500]
    return found.group(1)


def ingest(web: TestClient, events: list[dict[str, Any]]) -> None:
    response = web.post("/v1/events", json={"events": events}, headers=auth(INGEST_KEY))
    assert response.status_code == 200, response.text


# ---- sign-in, sessions, redirects ----------------------------------------------------------------------------


def test_every_page_without_a_session_redirects_to_the_login_form(web: TestClient) -> None:
    for path in (*PAGES, "/dashboard/users?user_id=u1", "/dashboard/jobs/x/progress"):
        response = web.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/dashboard/login"
        assert response.headers["content-security-policy"] == CSP
    form = web.get("/dashboard/login")
    assert form.status_code == 200
    html = form.text
    assert '<form id="login-form" method="post" action="/dashboard/login"' in html
    assert (
        '<input id="key" name="key" type="password"' in html
        and 'id="login-error"' not in html
        and 'id="login-submit"' in html
    )
    assert 'id="nav"' not in html  # no navigation before signing in


def test_login_logout_and_the_cookie(web: TestClient) -> None:
    wrong = web.post("/dashboard/login", data={"key": "not-a-key"}, follow_redirects=False)
    # refused: the form again with the message (200: a browser logs no console error for it), no cookie
    assert wrong.status_code == 200 and 'id="login-error"' in wrong.text and COOKIE not in wrong.cookies
    assert "Unknown or revoked key" in wrong.text and "not-a-key" not in wrong.text
    empty = web.post("/dashboard/login", data={}, follow_redirects=False)
    assert empty.status_code == 200 and 'id="login-error"' in empty.text
    for key in (READ_KEY, INGEST_KEY):  # a key, but not one for the dashboard
        refused = web.post("/dashboard/login", data={"key": key}, follow_redirects=False)
        assert refused.status_code == 200 and 'id="login-error"' in refused.text and "scope" in refused.text
        assert not refused.headers.get_list("set-cookie")

    response = web.post("/dashboard/login", data={"key": ADMIN_KEY}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    cookies = response.headers.get_list("set-cookie")
    assert {c.split(";")[0].split("=")[0] for c in cookies} == {COOKIE}
    assert {re.search(r"Path=([^;]+)", c).group(1) for c in cookies} == {"/dashboard", "/v1/admin/stats"}  # type: ignore[union-attr]
    for cookie in cookies:
        lowered = cookie.lower()
        assert "httponly" in lowered and "samesite=strict" in lowered and "max-age=28800" in lowered
        assert "secure" not in lowered  # plain http here (see the https test)
        assert ADMIN_KEY not in cookie
    assert web.get("/dashboard/login", follow_redirects=False).headers["location"] == "/dashboard"

    html = web.get("/dashboard").text
    for nav in NAV:
        assert f'id="{nav}"' in html
    assert '<form id="logout-form" method="post" action="/dashboard/logout">' in html
    csrf = csrf_of(html)
    assert f'<input type="hidden" name="csrf" value="{csrf}">' in html and 'id="logout"' in html

    assert web.post("/dashboard/logout", follow_redirects=False).status_code == 403  # no CSRF token
    assert web.post("/dashboard/logout", data={"csrf": "x" + csrf}, follow_redirects=False).status_code == 403
    out = web.post("/dashboard/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    assert all("max-age=0" in c.lower() for c in out.headers.get_list("set-cookie"))
    assert web.get("/dashboard", follow_redirects=False).status_code == 303


def test_cookie_is_secure_over_https(dash_settings: Settings) -> None:
    with TestClient(create_app(dash_settings), base_url="https://testserver") as web:
        response = web.post("/dashboard/login", data={"key": ADMIN_KEY}, follow_redirects=False)
        assert response.status_code == 303
        assert all("secure" in c.lower() for c in response.headers.get_list("set-cookie"))


def test_forged_tampered_and_expired_cookies_are_refused(
    web: TestClient, sessions: sessionmaker[Session]
) -> None:
    sign_in(web)
    good = web.cookies.get(COOKIE, path="/dashboard")
    assert good and web.get("/dashboard", follow_redirects=False).status_code == 200
    secret = stored_secret(sessions)  # RECO_DASHBOARD_SECRET unset: the database's, shared by every process
    session = unsign(secret, good)
    assert session is not None and session.scopes == {"admin"} and session.ident.startswith("static:")
    assert hashlib.sha256(ADMIN_KEY.encode()).hexdigest()[:8] not in session.ident  # keyed: not its digest
    payload, _, mac = good.partition(".")
    admin_forever = DashSession(session.ident, frozenset({"admin"}), int(time.time()) + 10**8, session.csrf)
    forged = sign(b"another-secret-0123456789", admin_forever)
    expired = sign(secret, DashSession(session.ident, session.scopes, int(time.time()) - 1, session.csrf))
    tampered_payload = sign(secret, admin_forever).partition(".")[0] + "." + mac
    unknown_key = sign(secret, DashSession("db:999999", frozenset({"admin"}), session.expires, session.csrf))
    for bad in (
        forged,
        expired,
        tampered_payload,
        unknown_key,
        payload,
        payload + ".",
        "garbage",
        good + "x",
    ):
        web.cookies.clear()
        for path in ("/dashboard", "/v1/admin/stats"):
            web.cookies.set(COOKIE, bad, domain="testserver.local", path=path)
        page = web.get("/dashboard", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/dashboard/login", bad
        assert web.get("/v1/admin/stats/overview").status_code == 401
        retrain = web.post("/dashboard/retrain", data={"csrf": session.csrf}, follow_redirects=False)
        assert retrain.status_code == 303
        assert web.get("/dashboard", follow_redirects=False).status_code == 303
    assert unsign(secret, good) is not None


def test_a_revoked_key_ends_its_sessions(web: TestClient) -> None:
    made = web.post(
        "/v1/admin/keys", json={"scopes": ["admin"], "name": "ops"}, headers=auth(ADMIN_KEY)
    ).json()
    sign_in(web, made["key"])
    cookie = web.cookies.get(COOKIE, path="/dashboard")
    assert cookie and made["key"] not in cookie and made["prefix"] not in cookie
    assert web.get("/dashboard", follow_redirects=False).status_code == 200
    assert web.delete(f"/v1/admin/keys/{made['id']}", headers=auth(ADMIN_KEY)).status_code == 200
    assert web.get("/dashboard", follow_redirects=False).status_code == 303
    assert web.get("/v1/admin/stats/overview").status_code == 401


def test_two_processes_share_the_stored_secret(dash_settings: Settings) -> None:
    with TestClient(create_app(dash_settings)) as one, TestClient(create_app(dash_settings)) as two:
        sign_in(one)
        two.cookies.set(
            COOKIE, one.cookies.get(COOKIE, path="/dashboard"), domain="testserver.local", path="/dashboard"
        )  # type: ignore[arg-type]
        assert two.get("/dashboard", follow_redirects=False).status_code == 200


def test_an_explicit_secret_signs_instead(dash_settings: Settings) -> None:
    settings = dash_settings.model_copy(update={"dashboard_secret": "s" * 32, "dashboard_session_s": 120})
    with TestClient(create_app(settings)) as web:
        response = web.post("/dashboard/login", data={"key": ADMIN_KEY}, follow_redirects=False)
        assert "max-age=120" in response.headers["set-cookie"].lower()
        value = web.cookies.get(COOKIE, path="/dashboard")
        assert value and unsign(b"s" * 32, value) is not None


def test_dashboard_scope_views_but_cannot_act(web: TestClient) -> None:
    made = web.post("/v1/admin/keys", json={"scopes": ["dashboard"]}, headers=auth(ADMIN_KEY))
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert web.get("/v1/popular", headers=auth(key)).status_code == 403  # not an API key for serving
    assert web.get("/v1/admin/stats/overview", headers=auth(key)).status_code == 403  # bearer: admin only
    csrf = sign_in(web, key)
    for path in PAGES:
        assert web.get(path, follow_redirects=False).status_code == 200, path
    assert web.get("/v1/admin/stats/overview").status_code == 200  # with the session cookie
    models = web.get("/dashboard/models").text
    assert 'id="retrain-form"' not in models and "view only" in models.lower()
    assert web.post("/dashboard/retrain", data={"csrf": csrf, "mode": "full"}).status_code == 403
    assert web.post("/dashboard/models/v1/activate", headers={"X-CSRF-Token": csrf}).status_code == 403
    assert web.get("/v1/admin/models", headers=auth(ADMIN_KEY)).json()["models"] == []


def test_security_headers_on_every_dashboard_answer(web: TestClient) -> None:
    answers = [web.get("/dashboard/login"), web.get("/dashboard", follow_redirects=False)]
    sign_in(web)
    answers += [web.get(p) for p in PAGES]
    answers += [web.get("/dashboard/static/htmx.min.js"), web.get("/dashboard/static/dashboard.css")]
    answers += [web.get("/dashboard/nothing-here"), web.get("/dashboard/jobs/nope/progress")]  # 404s
    answers += [web.post("/dashboard/retrain", data={"mode": "full"})]  # 403: no CSRF token
    for response in answers:
        assert response.headers["content-security-policy"] == CSP, response.url
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"
    assert answers[-1].status_code == 403


def test_pages_have_no_inline_script_or_style_and_never_show_the_key(web: TestClient) -> None:
    ingest(web, [{"user_id": "u1", "item_id": "i1", "type": "view"}])
    sign_in(web)
    for path in (*PAGES, "/dashboard/users?user_id=u1", "/dashboard/items?item_id=i1"):
        response = web.get(path)
        assert response.status_code == 200, path
        html = response.text
        assert ADMIN_KEY not in html and ADMIN_KEY not in str(response.url)
        assert ADMIN_KEY not in str(response.headers)
        assert re.search(r"<script(?![^>]*\bsrc=)", html) is None, path  # every script is a file
        assert "<style" not in html and " style=" not in html and " onclick" not in html.lower()
        assert "cdn" not in html.lower() and "https://" not in html
        for src in re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', html):
            assert web.get(src).status_code == 200, src


def test_static_files(web: TestClient) -> None:
    js = web.get("/dashboard/static/htmx.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert web.get("/dashboard/static/uplot.min.js").status_code == 200
    assert web.get("/dashboard/static/uplot.LICENSE").status_code == 200
    assert web.get("/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")
    for bad in ("nope.js", "..%2Fpages.py", ".hidden", "%2e%2e%2f__init__.py"):
        assert web.get(f"/dashboard/static/{bad}").status_code == 404, bad
    js_text = web.get("/dashboard/static/dashboard.js").text
    assert "data-points" in js_text


# ---- stats JSON -----------------------------------------------------------------------------------------------


def test_stats_routes_need_admin_or_a_session(web: TestClient) -> None:
    for path in STATS:
        assert web.get(path).status_code == 401, path
        assert web.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        for key in (READ_KEY, INGEST_KEY):
            denied = web.get(path, headers=auth(key))
            assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
        assert web.get(path, headers=auth(ADMIN_KEY)).status_code == 200, path
    sign_in(web)
    for path in STATS:
        assert web.get(path).status_code == 200, path
        # a bearer header is judged on its own, whatever the cookie
        assert web.get(path, headers=auth(READ_KEY)).status_code == 403


def test_stats_bad_input_is_a_422_naming_the_field(web: TestClient) -> None:
    for query, name in (
        ("window=5x", "window"),
        ("window=", "window"),
        ("bucket=61", "bucket"),
        ("bucket=abc", "bucket"),
        ("bucket=0", "bucket"),
        ("window=24h&bucket=7200", "bucket"),
    ):
        bad = web.get(f"/v1/admin/stats/events?{query}", headers=auth(ADMIN_KEY))
        assert bad.status_code == 422, query
        body = bad.json()["error"]
        assert body["code"] == "validation_error" and name in body["message"]
        assert body["details"][0]["loc"] == ["query", name]


def test_stats_of_an_empty_service(web: TestClient) -> None:
    for window, n in (("1h", 60), ("24h", 1440)):
        events = web.get(f"/v1/admin/stats/events?window={window}", headers=auth(ADMIN_KEY)).json()
        assert events["total"] == 0 and events["series"] == {} and len(events["times"]) == n
    hourly = web.get("/v1/admin/stats/events?window=24h&bucket=3600", headers=auth(ADMIN_KEY)).json()
    assert len(hourly["times"]) == 24 and hourly["bucket_s"] == 3600
    overview = web.get("/v1/admin/stats/overview", headers=auth(ADMIN_KEY)).json()
    assert overview["counts"]["users"] == overview["counts"]["items"] == overview["counts"]["events"] == 0
    assert overview["active_model"] is None
    assert overview["latency"]["p50_ms"] is None and overview["latency"]["requests"] == 0
    assert 0.0 <= overview["cache"]["hit_ratio"] <= 1.0
    assert web.get("/v1/admin/stats/models", headers=auth(ADMIN_KEY)).json() == {"versions": []}
    sign_in(web)
    for path in PAGES:
        assert web.get(path).status_code == 200, path
    html = web.get("/dashboard").text
    assert 'id="events-chart"' in html and 'data-points="0"' in html
    assert '<span id="count-events" class="value">0</span>' in html
    assert 'id="active-model"' in html


def test_ingestion_keeps_the_per_minute_rollup(web: TestClient, sessions: sessionmaker[Session]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    minute_ago = (now - timedelta(minutes=1)).isoformat()
    batch = [
        {"event_id": "a", "user_id": "u1", "item_id": "i1", "type": "view", "timestamp": now.isoformat()},
        {"event_id": "b", "user_id": "u1", "item_id": "i2", "type": "view", "timestamp": now.isoformat()},
        {"event_id": "c", "user_id": "u2", "item_id": "i1", "type": "click", "timestamp": minute_ago},
        {
            "user_id": "u2",
            "item_id": "i2",
            "type": "purchase",
            "timestamp": (now - timedelta(hours=3)).isoformat(),
        },
    ]
    ingest(web, batch)
    ingest(web, batch[:3])  # duplicates by event_id: stored once, counted once
    ingest(
        web,
        [{"event_id": "a", "user_id": "u1", "item_id": "i1", "type": "view"}, {**batch[0], "event_id": "d"}],
    )
    load_events(  # bulk loads (importers, demo) feed it too
        sessions,
        [EventRecord(user_id="u3", item_id="i3", type="click", timestamp=now - timedelta(minutes=1))] * 2,
        source="test",
    )  # the same deterministic id twice: one row
    hour = web.get("/v1/admin/stats/events?window=1h", headers=auth(ADMIN_KEY)).json()
    assert hour["total"] == 5
    assert sum(hour["series"]["view"]) == 3 and sum(hour["series"]["click"]) == 2
    assert "purchase" not in hour["series"]
    at = hour["times"].index(int(now.replace(second=0).timestamp()))  # the right minutes
    assert hour["series"]["view"][at] == 3 and hour["series"]["click"][at - 1] == 2
    day = web.get("/v1/admin/stats/events?window=24h", headers=auth(ADMIN_KEY)).json()
    assert day["total"] == 6 and sum(day["series"]["purchase"]) == 1
    with sessions() as session:
        rows = session.execute(select(EventCount.type, EventCount.count)).all()
    totals: dict[str, int] = {}
    for kind, count in rows:  # delta rows (one per batch, minute and type), summed on read
        totals[kind] = totals.get(kind, 0) + int(count)
    assert totals == {"click": 2, "purchase": 1, "view": 3}
    overview = web.get("/v1/admin/stats/overview", headers=auth(ADMIN_KEY)).json()
    assert overview["counts"] == {
        "users": 3,
        "items": 3,
        "events": 6,
        "how": {"users": "exact", "items": "exact", "events": "rollup"},
    }
    assert web.delete("/v1/users/u2", headers=auth(ADMIN_KEY)).status_code == 204  # erasure: uncounted too
    day = web.get("/v1/admin/stats/events?window=24h", headers=auth(ADMIN_KEY)).json()
    assert (
        day["total"] == 4
        and sum(day["series"]["click"]) == 1
        and sum(day["series"].get("purchase", [0])) == 0
    )
    assert web.get("/v1/admin/stats/overview", headers=auth(ADMIN_KEY)).json()["counts"]["events"] == 4
    sign_in(web)
    html = web.get("/dashboard").text
    assert '<span id="count-users" class="value">2</span>' in html  # the erased user is gone
    assert '<span id="count-items" class="value">3</span>' in html
    assert '<span id="count-events" class="value">4</span>' in html


def test_latency_quantiles_from_the_request_histogram(web: TestClient) -> None:
    ingest(web, [{"user_id": "u1", "item_id": "i1", "type": "view"}])
    for _ in range(5):
        assert web.get("/v1/users/u1/recommendations?k=3", headers=auth(READ_KEY)).status_code == 200
        assert web.get("/v1/popular", headers=auth(READ_KEY)).status_code == 200
    latency = web.get("/v1/admin/stats/overview", headers=auth(ADMIN_KEY)).json()["latency"]
    assert latency["requests"] == 10
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= 10_000


def test_histogram_quantile() -> None:
    inf = float("inf")
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(0.1, 0), (inf, 0)]) is None
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert histogram_quantile(0.99, [(0.1, 1.0), (inf, 10.0)]) == pytest.approx(0.1)  # beyond the last bound


# ---- pages --------------------------------------------------------------------------------------------------


def test_user_inspector_escapes_and_explains(web: TestClient) -> None:
    hostile = '<img src=x onerror="alert(1)">'
    ingest(
        web,
        [
            {"user_id": hostile, "item_id": "i1", "type": "view"},
            {"user_id": hostile, "item_id": '"><b>i2', "type": "click"},
            {"user_id": "u2", "item_id": "i3", "type": "purchase"},
            {"user_id": "u2", "item_id": "i4", "type": "view"},
        ],
    )
    web.app.state.reco.popular.poll()  # type: ignore[attr-defined]  # the popular lists know the events now
    sign_in(web)
    blank = web.get("/dashboard/users").text
    for dom_id in ("user-form", "user-id", "k", "category", "exclude", "include-seen", "user-submit"):
        assert f'id="{dom_id}"' in blank
    page = web.get("/dashboard/users", params={"user_id": hostile, "k": "5"}).text
    assert hostile not in page and "<b>i2" not in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page
    assert page.count('class="event"') == 2 and 'id="events"' in page
    assert '<strong id="strategy">popular</strong>' in page
    recs = re.findall(r'<li class="rec" data-item-id="([^"]+)"', page)
    assert recs and "i1" not in recs  # seen items are left out by default
    assert page.count('class="explanation"') == len(recs)
    seen = web.get("/dashboard/users", params={"user_id": hostile, "include_seen": "true"}).text
    assert 'data-item-id="i1"' in seen.split('id="recs"')[1].split("</ol>")[0]
    assert 'id="include-seen" name="include_seen" type="checkbox" value="true" checked' in seen
    excluded = web.get("/dashboard/users", params={"user_id": "u9", "exclude": "i3,i4", "k": "3"}).text
    assert 'data-item-id="i3"' not in excluded and 'data-item-id="i4"' not in excluded
    bad = web.get("/dashboard/users", params={"user_id": "u1", "k": "0"})
    assert bad.status_code == 200 and "k: must be" in bad.text and 'id="recs"' not in bad.text


def test_item_inspector_counts(web: TestClient) -> None:
    assert (
        web.put(
            "/v1/items/i1", json={"title": "Tent <3", "categories": ["outdoor"]}, headers=auth(ADMIN_KEY)
        ).status_code
        == 200
    )
    ingest(
        web,
        [
            {"user_id": "u1", "item_id": "i1", "type": "view"},
            {"user_id": "u2", "item_id": "i1", "type": "view"},
            {"user_id": "u2", "item_id": "i1", "type": "click"},
            {"user_id": "u2", "item_id": "i2", "type": "view"},
            {"user_id": "u2", "type": "impression", "recommendation_id": "r1", "items": ["i1", "i2"]},
            {"user_id": "u3", "type": "impression", "recommendation_id": "r2", "items": ["i1"]},
        ],
    )
    sign_in(web)
    blank = web.get("/dashboard/items").text
    assert 'id="item-form"' in blank and 'id="item-id"' in blank and 'id="item-submit"' in blank
    page = web.get("/dashboard/items", params={"item_id": "i1"}).text
    assert 'id="item-fields"' in page and "Tent &lt;3" in page and 'id="item-counts"' in page
    assert '<td data-count="impressions">2</td>' in page
    assert '<td data-count="view">2</td>' in page and '<td data-count="click">1</td>' in page
    assert 'id="similar"' in page
    unknown = web.get("/dashboard/items", params={"item_id": "nope"}).text
    assert "No item nope" in unknown


def test_popular_page_lists_every_window(web: TestClient, dash_settings: Settings) -> None:
    ingest(web, [{"user_id": f"u{i}", "item_id": "i1", "type": "purchase"} for i in range(3)])
    sign_in(web)
    app_state = web.app.state.reco  # type: ignore[attr-defined]
    app_state.popular.poll()
    page = web.get("/dashboard/popular").text
    assert 'id="popular"' in page
    windows = re.findall(r'<section class="window" data-window="([^"]+)">', page)
    assert windows == list(dash_settings.popular_windows)
    assert page.count('class="pop" data-item-id="i1"') == len(windows)


def test_models_page_activate_and_retrain(
    web: TestClient, dash_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    csrf = sign_in(web)
    page = web.get("/dashboard/models").text
    assert 'id="models"' in page and 'id="retrain-form"' in page and 'id="retrain-mode"' in page
    assert '<option value="incremental">' in page and 'id="retrain"' in page and 'id="ndcg-chart"' in page

    assert web.post("/dashboard/retrain", data={"mode": "full"}).status_code == 403  # no CSRF token
    started = web.post(
        "/dashboard/retrain", data={"mode": "bogus", "csrf": csrf}, headers={"HX-Request": "true"}
    )
    assert started.status_code == 422
    started = web.post(
        "/dashboard/retrain", data={"mode": "full", "csrf": csrf}, headers={"HX-Request": "true"}
    )
    assert started.status_code == 200
    job_id = re.search(r'data-job-id="([^"]+)"', started.text).group(1)  # type: ignore[union-attr]
    assert '<strong id="job-status">queued</strong>' in started.text and 'id="job-stage"' in started.text
    assert 'hx-trigger="every 1s"' in started.text  # polls while unfinished
    quick = {"train_epochs": 2, "gate_tolerance": 1.0}
    assert Worker(dash_settings.model_copy(update=quick), sessions).run(once=True) == 1
    done = web.get(f"/dashboard/jobs/{job_id}/progress")
    assert '<strong id="job-status">succeeded</strong>' in done.text and "hx-trigger" not in done.text
    polled = web.get(f"/dashboard/jobs/{job_id}/progress", headers={"HX-Request": "true"}).text
    assert '<table id="models" hx-swap-oob="true">' in polled and 'class="model"' in polled
    web.post("/v1/admin/retrain", headers=auth(ADMIN_KEY))
    assert Worker(dash_settings.model_copy(update=quick), sessions).run(once=True) == 1

    page = web.get("/dashboard/models").text
    rows = re.findall(r'<tr class="model" data-version="([^"]+)" data-status="([^"]+)">', page)
    assert len(rows) == 2 and rows[0][1] == "active"
    newer, older = rows[0][0], rows[1][0]
    assert f'<button type="button" class="activate" data-version="{older}"' in page
    assert f'class="activate" data-version="{newer}"' not in page  # the active one has none
    assert "hx-confirm=" in page and "<strong>accepted</strong>" in page  # the gate's verdict, from the job
    chart = web.get("/v1/admin/stats/models").json()["versions"]
    assert [v["version"] for v in chart] == [older, newer] and all(v["ndcg10"] is not None for v in chart)

    assert web.post(f"/dashboard/models/{older}/activate").status_code == 403  # no CSRF token
    activated = web.post(
        f"/dashboard/models/{older}/activate", headers={"X-CSRF-Token": csrf, "HX-Request": "true"}
    )
    assert activated.status_code == 204 and activated.headers["HX-Redirect"].startswith("/dashboard/models")
    assert web.get("/v1/admin/models", headers=auth(ADMIN_KEY)).json()["active"] == older
    unknown = web.post("/dashboard/models/nope/activate", data={"csrf": csrf})
    assert unknown.status_code == 404 and "nope" in unknown.text

    overview = web.get("/dashboard").text
    assert f'<span id="active-model" class="value">{older}</span>' in overview
    jobs = web.get("/dashboard/jobs").text
    assert jobs.count('class="job"') == 2 and 'data-status="succeeded"' in jobs


def test_the_dashboard_scope_is_a_scope_of_its_own() -> None:
    assert parse_scopes("dashboard") == {"dashboard"}  # `reco keys create --scopes dashboard`
    assert not allows(frozenset({"dashboard"}), "read") and not allows(frozenset({"dashboard"}), "admin")
    assert allows(frozenset({"admin"}), "dashboard")
