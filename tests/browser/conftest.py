"""Real-browser tests of the operator dashboard: a real `reco serve` (SQLite, the demo shop, the embedded trainer)
and headless Chromium driven by Selenium.

The browser is Debian's `chromium` with its `chromedriver` (both on PATH; nothing is downloaded at run time).
Under CI=true a missing browser fails the tests; elsewhere they skip, saying why. After every test the browser's
console is read: any SEVERE entry (a JavaScript error, a failed request) fails it unless the test announced it.
Screenshots of every page visited land in var/test-artifacts/browser/.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.servers import FAST_TRAINING, ROOT, uvicorn_server

IN_CI = os.environ.get("CI", "").lower() == "true"
ARTIFACTS = ROOT / "var" / "test-artifacts" / "browser"
ADMIN_KEY = "browser-admin-key-0000000000000"
DEMO_USERS = 300
DEMO_ITEMS = 200
TRAINING = FAST_TRAINING
FIRST_BUDGET_S = 8.0


def browser_binaries() -> tuple[str, str]:
    """(chromium, chromedriver) from PATH; a failure under CI, a skip elsewhere."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    missing = ", ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p)
    message = f"{missing} not on PATH (Debian: apt-get install chromium chromium-driver)"
    if IN_CI:
        pytest.fail(f"CI=true needs a browser for tests/browser: {message}", pytrace=False)
    pytest.skip(message)


def _selenium() -> Any:
    try:
        import selenium  # noqa: F401
    except ImportError:
        message = "selenium is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from selenium import webdriver

    return webdriver


@dataclass
class Dashboard:
    """The server under test: its base URL, the admin key, the demo user ids with history."""

    base: str
    key: str
    users: list[str]
    items: list[str]
    db_url: str
    state: dict[str, Any] = field(default_factory=dict)  # what one test learns for the next (versions)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.base + path, headers=headers, timeout=30, **kwargs)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll `condition` until it returns something truthy; that value, or an AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _load_demo(db_url: str) -> tuple[list[str], list[str]]:
    """Migrate the store, load a small demo shop (events over the last two days) and queue its first training."""
    from app.catalog.service import load_items
    from app.datasets.demo import DemoConfig, generate_demo
    from app.db.engine import make_engine, make_sessionmaker, run_transaction
    from app.db.migrate import upgrade
    from app.events.repository import max_event_id
    from app.events.service import load_events
    from app.registry import jobs
    from app.settings import Settings

    engine = make_engine(Settings(database_url=db_url))
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    items, events = generate_demo(
        DemoConfig(n_users=DEMO_USERS, n_items=DEMO_ITEMS, days=2.0, seed=7), now=datetime.now(UTC)
    )
    load_items(sessions, items)
    load_events(sessions, events, source="demo")
    run_transaction(
        sessions,
        lambda s: jobs.enqueue(
            s,
            trigger="demo",
            reason="first model of the browser tests",
            max_event_id=max_event_id(s),
            params={"time_budget_s": FIRST_BUDGET_S},
        ),
    )
    engine.dispose()
    users = sorted({e.user_id for e in events})
    return users, sorted(i.item_id for i in items)


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """`reco serve` on a private port over a demo shop in SQLite, the embedded trainer on, one model active."""
    browser_binaries()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_factory.mktemp("dashboard")
    db_url = f"sqlite:///{tmp / 'reco.db'}"
    users, items = _load_demo(db_url)
    env = {
        "RECO_DATABASE_URL": db_url,
        "RECO_ARTIFACT_DIR": str(tmp / "artifacts"),
        "RECO_API_KEYS": f"{ADMIN_KEY}:admin",
        "RECO_EMBEDDED_WORKER": "true",
        "RECO_WORKER_POLL_SECONDS": "0.5",
        "RECO_MODEL_POLL_SECONDS": "0.5",
        "RECO_GATE_TOLERANCE": "1",  # every trained version is activated: the flow knows which one serves
        "RECO_LOG_LEVEL": "WARNING",
        **TRAINING,
    }
    with uvicorn_server(env) as base:
        dash = Dashboard(base=base, key=ADMIN_KEY, users=users, items=items, db_url=db_url)
        # Fresh events, so the last hour's chart has points whatever the demo's clock drew.
        now = datetime.now(UTC)
        batch = [
            {
                "event_id": f"browser-{n}",
                "user_id": users[n % 20],
                "item_id": items[(n * 7) % len(items)],
                "type": "view" if n % 3 else "click",
                "timestamp": (now - timedelta(minutes=n % 50)).isoformat().replace("+00:00", "Z"),
            }
            for n in range(200)
        ]
        posted = dash.api("POST", "/v1/events", json={"events": batch})
        assert posted.status_code == 200, posted.text

        def first_model() -> str | None:
            active = dash.api("GET", "/v1/admin/models").json().get("active")
            return str(active) if active else None

        dash.state["first_version"] = wait_until(first_model, 120, "the demo's first model", every=0.5)
        yield dash


@dataclass
class Console:
    """Console entries a test expects (a regex over the message); anything else SEVERE fails the test."""

    allowed: list[re.Pattern[str]] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))


def read_console(driver: Any, console: Console) -> list[dict[str, Any]]:
    """The SEVERE entries since the last read that the test did not announce."""
    entries = driver.get_log("browser")
    console.seen.extend(entries)
    return [
        e
        for e in entries
        if e.get("level") == "SEVERE"
        and not any(p.search(str(e.get("message", ""))) for p in console.allowed)
    ]


@pytest.fixture(scope="session")
def driver(dashboard: Dashboard) -> Iterator[Any]:
    """One headless Chromium for the session (the flow signs in once, like a person)."""
    chromium, chromedriver = browser_binaries()
    webdriver = _selenium()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--disable-extensions",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--password-store=basic",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(ARTIFACTS / "chromedriver.log"))
    drv = webdriver.Chrome(service=service, options=options)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture
def console(driver: Any, request: pytest.FixtureRequest) -> Iterator[Console]:
    """Fails the test on a console error; a screenshot of where the test ended (and of every page it visited:
    see `Browser.shot`)."""
    driver.get_log("browser")  # what an earlier test left
    watch = Console()
    yield watch
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    with contextlib.suppress(Exception):  # a screenshot never hides the test's own outcome
        driver.save_screenshot(str(ARTIFACTS / f"{name}.end.png"))
    errors = read_console(driver, watch)
    if errors:
        lines = "\n".join(f"  {e.get('source', '')}: {e.get('message')}" for e in errors)
        pytest.fail(f"console errors in the browser:\n{lines}", pytrace=False)


class Browser:
    """The driver with the dashboard's vocabulary: open a page, find by CSS, wait, screenshot."""

    def __init__(self, driver: Any, dashboard: Dashboard, console: Console, test_name: str) -> None:
        self.driver = driver
        self.dash = dashboard
        self.console = console
        self.test = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        self.shots = 0

    def url(self, path: str = "") -> str:
        return self.dash.base + path

    def path(self) -> str:
        current = str(self.driver.current_url)
        return current[len(self.dash.base) :] if current.startswith(self.dash.base) else current

    def open(self, path: str, shot: str | None = None) -> None:
        self.driver.get(self.url(path))
        self.ready()
        self.shot(shot or path.strip("/").replace("/", "_").split("?")[0] or "root")

    def ready(self) -> None:
        wait_until(
            lambda: self.driver.execute_script("return document.readyState") == "complete",
            20,
            "the page to load",
        )

    def shot(self, label: str) -> Path:
        self.shots += 1
        path = ARTIFACTS / f"{self.test}.{self.shots:02d}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.png"
        self.driver.save_screenshot(str(path))
        return path

    def one(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def wait_for(self, css: str, timeout: float = 15) -> Any:
        return wait_until(lambda: (self.all(css) or [None])[0], timeout, f"`{css}` on {self.path()}")

    def sign_in(self) -> None:
        """Sign in with the admin key unless a session is open already."""
        self.driver.get(self.url("/dashboard"))
        self.ready()
        if "/dashboard/login" not in self.path():
            return
        self.type("#key", self.dash.key)
        self.one("#login-submit").click()
        wait_until(lambda: self.all("#nav"), 15, "the overview after signing in")

    def type(self, css: str, text: str) -> None:
        element = self.one(css)
        element.clear()
        element.send_keys(text)


@pytest.fixture
def browser(driver: Any, dashboard: Dashboard, console: Console, request: pytest.FixtureRequest) -> Browser:
    driver.set_window_size(1280, 900)
    return Browser(driver, dashboard, console, request.node.name)
