"""The example storefront (examples/storefront, on the JS client) in headless Chromium against a real
`reco serve`: from an origin its publishable key allows, recommendations show and clicks are stored; from
another origin the browser itself refuses the answers (CORS), and nothing is stored.

The page is served by a static HTTP server on its own port: `http://127.0.0.1:PORT` is the allowed origin and
`http://localhost:PORT` (the same server, another origin to the browser) is not.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Browser, Dashboard, wait_until
from tests.helpers.servers import ROOT


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def static_port() -> Iterator[int]:
    handler = functools.partial(_Quiet, directory=str(ROOT))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def publishable(dashboard: Dashboard, static_port: int) -> str:
    r = httpx.post(
        dashboard.base + "/v1/admin/keys",
        headers={"Authorization": f"Bearer {dashboard.key}"},
        json={"publishable": True, "origins": [f"http://127.0.0.1:{static_port}"], "name": "storefront test"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert key.startswith("pk_")
    return str(key)


def _events_of(dashboard: Dashboard, user: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{dashboard.base}/v1/users/{user}", headers={"Authorization": f"Bearer {dashboard.key}"}, timeout=10
    )
    assert r.status_code == 200, r.text
    return list(r.json()["latest_events"])


def test_storefront_from_an_allowed_origin(
    browser: Browser, dashboard: Dashboard, static_port: int, publishable: str
) -> None:
    user = dashboard.users[3]
    page = (
        f"http://127.0.0.1:{static_port}/examples/storefront/"
        f"#api={dashboard.base}&key={publishable}&user={user}"
    )
    browser.driver.get(page)
    browser.ready()
    wait_until(
        lambda: browser.driver.execute_script("return document.body.dataset.state") in ("ok", "error"),
        20,
        "the answers",
    )
    assert browser.driver.execute_script("return document.body.dataset.state") == "ok", browser.one(
        "#status"
    ).text
    recommended = browser.wait_for("#recommended li button")
    assert int(browser.one("#recommended").get_attribute("data-count")) > 0
    rid = browser.one("#recommended").get_attribute("data-recommendation-id")
    assert rid
    browser.shot("storefront")
    item = recommended.get_attribute("data-item")
    recommended.click()  # a click with the answer's id, then the similar items
    wait_until(lambda: "Clicked" in browser.one("#status").text, 20, "the click to be sent")
    assert int(browser.one("#similar").get_attribute("data-count")) > 0
    browser.shot("storefront-clicked")
    stored = wait_until(
        lambda: [e for e in _events_of(dashboard, user) if e["type"] == "click" and e["item_id"] == item],
        15,
        "the click in the store",
    )
    assert stored


def test_storefront_from_another_origin_is_refused_by_the_browser(
    browser: Browser, dashboard: Dashboard, static_port: int, publishable: str
) -> None:
    # the page works only from the key's origins: the browser blocks the answers and says so in the console
    browser.console.allow(r"(CORS|Access-Control-Allow-Origin|Failed to load resource|net::ERR_FAILED)")
    user = dashboard.users[4]
    before = len(_events_of(dashboard, user))
    page = f"http://localhost:{static_port}/examples/storefront/#api={dashboard.base}&key={publishable}&user={user}"
    browser.driver.get(page)
    browser.ready()
    wait_until(
        lambda: browser.driver.execute_script("return document.body.dataset.state") in ("ok", "error"),
        20,
        "the page's verdict",
    )
    assert browser.driver.execute_script("return document.body.dataset.state") == "error"
    assert "Error" in browser.one("#status").text
    assert browser.all("#recommended li") == []
    browser.shot("storefront-other-origin")
    logs = [str(e.get("message")) for e in browser.console.seen] + [
        str(e.get("message")) for e in browser.driver.get_log("browser")
    ]
    assert any("CORS" in m or "Access-Control-Allow-Origin" in m for m in logs), logs
    # an event sent from the refused origin is not stored either (the server answers 403 to it)
    r = httpx.post(
        dashboard.base + "/v1/events",
        headers={"Authorization": f"Bearer {publishable}", "Origin": f"http://localhost:{static_port}"},
        json={"events": [{"user_id": user, "item_id": dashboard.items[0], "type": "view"}]},
        timeout=10,
    )
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    time.sleep(0.2)
    assert len(_events_of(dashboard, user)) == before


def test_queued_events_leave_by_beacon_when_the_page_closes(
    browser: Browser, dashboard: Dashboard, static_port: int, publishable: str
) -> None:
    # an event queued (flush interval far away) and then the page is left: the client hands the queue to
    # navigator.sendBeacon on pagehide, and the event is stored although no flush ever ran
    user = dashboard.users[5]
    browser.driver.get(f"http://127.0.0.1:{static_port}/examples/storefront/")
    browser.ready()
    event_id = browser.driver.execute_async_script(
        """
        const [base, key, user, item, done] = arguments;
        import("/clients/js/dist/index.js").then(({ Reco }) => {
          const reco = new Reco({ baseUrl: base, key, flushIntervalMs: 600000 });
          window.__reco = reco;
          done(reco.track({ userId: user, itemId: item, type: "view" }));
        });
        """,
        dashboard.base,
        publishable,
        user,
        dashboard.items[1],
    )
    assert browser.driver.execute_script("return window.__reco.queued") == 1
    assert not [e for e in _events_of(dashboard, user) if e["event_id"] == event_id]  # not sent yet
    browser.driver.get("about:blank")  # pagehide: the beacon goes out
    stored = wait_until(
        lambda: [e for e in _events_of(dashboard, user) if e["event_id"] == event_id],
        15,
        "the beaconed event in the store",
    )
    assert stored[0]["type"] == "view"
