"""The operator dashboard in a real browser, in the order a new operator meets it: sign in, read the overview,
inspect a user, retrain, roll back to the older version, sign out; then the overview on a phone.

The tests share one browser and one server (tests/browser/conftest.py) and run in file order: each leaves the
state the next one starts from (signed in; then two model versions). Each signs in itself when it has to, so
one alone (`pytest -k users`) still runs.
"""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import Browser, Dashboard, wait_until

WRONG_KEY = "not-a-key-of-this-server-000000"


def rec_ids(browser: Browser) -> list[str]:
    return [li.get_attribute("data-item-id") for li in browser.all("#recs li.rec")]


def inspect_user(browser: Browser, user: str, k: int) -> None:
    """Fill in the users page's form and submit it (as a person would)."""
    if not browser.all("#user-form"):
        browser.open("/dashboard/users")
    browser.type("#user-id", user)
    browser.type("#k", str(k))
    browser.one("#user-submit").click()
    wait_until(
        lambda: "user_id=" in browser.path() and browser.all("#strategy"), 15, f"the answer for {user}"
    )
    browser.ready()


def models_rows(browser: Browser) -> dict[str, str]:
    """version -> status, from the models table."""
    return {
        row.get_attribute("data-version"): row.get_attribute("data-status")
        for row in browser.all("#models tr.model[data-version]")
    }


def test_sign_in_redirects_rejects_a_wrong_key_and_lands_on_the_overview(browser: Browser) -> None:
    browser.driver.delete_all_cookies()
    browser.open("/dashboard", shot="no-session")
    assert browser.path() == "/dashboard/login", "a page without a session goes to the sign-in form"
    assert browser.all("#login-form") and browser.all("#key") and browser.all("#login-submit")
    assert not browser.all("#login-error"), "no error before a try"

    # The wrong key's answer is a 401 page: Chromium logs that status as a console error, the one we expect.
    browser.console.allow(r"/dashboard/login - Failed to load resource: .* 401")
    browser.type("#key", WRONG_KEY)
    browser.one("#login-submit").click()
    error = browser.wait_for("#login-error")
    browser.shot("wrong-key")
    assert error.is_displayed() and error.text.strip()
    assert WRONG_KEY not in browser.driver.page_source, "the page never echoes a key"
    assert not browser.all("#nav")

    browser.type("#key", browser.dash.key)
    browser.one("#login-submit").click()
    wait_until(lambda: browser.all("#nav"), 15, "the overview")
    browser.ready()
    browser.shot("signed-in")
    assert browser.path().rstrip("/") == "/dashboard"
    for link in ("overview", "models", "jobs", "users", "items", "popular"):
        assert browser.one(f"#nav-{link}").is_displayed(), link
    assert browser.all("#logout-form") and browser.one("#logout").is_displayed()
    cookies = {c["name"]: c for c in browser.driver.get_cookies()}
    assert cookies and all(c.get("httpOnly") for c in cookies.values()), "the session cookie is HttpOnly"
    assert browser.dash.key not in str(cookies), "the cookie holds no key"


def test_overview_chart_and_counts(browser: Browser) -> None:
    browser.sign_in()
    browser.open("/dashboard", shot="overview")
    chart = browser.one("#events-chart")
    points = wait_until(
        lambda: int(chart.get_attribute("data-points") or 0) or (chart.get_attribute("data-error") and -1),
        15,
        "the events chart to draw",
    )
    assert points > 0, f"the chart failed: {chart.get_attribute('data-error')}"
    assert browser.all("#events-chart canvas"), "uPlot drew a canvas"
    browser.shot("overview-chart")

    def number(css: str) -> int:
        return int(browser.one(css).text.replace(",", "").replace("\u202f", "").strip())

    users, items, events = number("#count-users"), number("#count-items"), number("#count-events")
    assert users >= 300 and items >= 200, (users, items)
    assert events > 1000, events
    assert browser.dash.state["first_version"] in browser.one("#active-model").text

    # The last day's view: a button toggles the window and the chart redraws from the rollup.
    day = browser.all("#events-window [data-window='24h']")
    if day:
        day[0].click()
        wait_until(lambda: chart.get_attribute("data-window") == "24h", 15, "the 24 h chart")
        assert int(chart.get_attribute("data-points") or 0) > 0
        browser.shot("overview-24h")


def test_users_page_recommends_with_explanations_and_k(browser: Browser) -> None:
    browser.sign_in()
    user = browser.dash.users[0]
    browser.open("/dashboard/users")
    inspect_user(browser, user, 5)
    browser.shot("user-k5")
    assert browser.one("#strategy").text.strip() == "personalized"
    recs = browser.all("#recs li.rec")
    assert len(recs) == 5
    for rec in recs:
        assert rec.get_attribute("data-item-id")
        assert rec.find_element("css selector", ".explanation").text.strip()
    assert browser.all("#events li.event"), "the user's latest events are listed"

    inspect_user(browser, user, 3)
    browser.shot("user-k3")
    assert len(browser.all("#recs li.rec")) == 3
    assert rec_ids(browser) == [r for r in rec_ids(browser)][:3]
    browser.dash.state["user"] = user


def test_retrain_from_the_models_page(browser: Browser) -> None:
    browser.sign_in()
    browser.open("/dashboard/models")
    before = models_rows(browser)
    first = browser.dash.state["first_version"]
    assert before.get(first) == "active", before
    ndcg = browser.one("#ndcg-chart")
    wait_until(lambda: int(ndcg.get_attribute("data-points") or 0) >= 1, 15, "the NDCG chart")

    from selenium.webdriver.support.ui import Select

    Select(browser.one("#retrain-mode")).select_by_value("incremental")
    browser.one("#retrain").click()
    status = wait_until(
        lambda: _status(browser) in ("succeeded", "failed") and _status(browser),
        120,
        "the job to finish",
        0.5,
    )
    browser.shot("job-finished")
    assert status == "succeeded", browser.one("#job-progress").text

    # The new version appears on the page (the list is read when the page loads).
    browser.open("/dashboard/models", shot="models-after-retrain")
    after = models_rows(browser)
    new = [v for v in after if v not in before]
    assert len(new) == 1, (before, after)
    assert after[new[0]] == "active", after  # RECO_GATE_TOLERANCE=1: the gate lets it through
    wait_until(lambda: int(ndcg_points(browser)) >= 2, 15, "two points on the NDCG chart")
    browser.dash.state["second_version"] = new[0]


def _status(browser: Browser) -> str:
    found = browser.all("#job-status")
    try:
        return found[0].text.strip() if found else ""
    except Exception:
        return ""


def ndcg_points(browser: Browser) -> int:
    return int(browser.one("#ndcg-chart").get_attribute("data-points") or 0)


def _served(dash: Dashboard, user: str) -> dict[str, Any]:
    response = dash.api("GET", f"/v1/users/{user}/recommendations?k=5")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_activate_the_older_version_changes_the_answers(browser: Browser) -> None:
    browser.sign_in()
    dash = browser.dash
    first, second = dash.state["first_version"], dash.state["second_version"]
    user = dash.state.get("user", dash.users[0])
    assert _served(dash, user)["model_version"] == second
    inspect_user(browser, user, 5)
    newer_list = rec_ids(browser)

    browser.open("/dashboard/models")
    button = browser.one(f"button.activate[data-version='{first}']")
    button.click()
    alert = wait_until(lambda: _alert(browser), 10, "the confirm dialog")
    assert first in alert.text
    alert.accept()
    wait_until(lambda: models_rows(browser).get(first) == "active", 20, f"{first} active on the page")
    browser.ready()
    browser.shot("older-active")
    rows = models_rows(browser)
    assert rows[first] == "active" and rows[second] != "active", rows

    wait_until(
        lambda: _served(dash, user)["model_version"] == first, 15, "the API to serve the older version"
    )
    inspect_user(browser, user, 5)
    browser.shot("user-older-model")
    page = browser.one("#strategy").find_element("xpath", "..").text
    assert first in page and second not in page, page
    older_list = rec_ids(browser)
    assert older_list and len(older_list) == len(newer_list)


def _alert(browser: Browser) -> Any:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = browser.driver.switch_to.alert
        _ = alert.text
        return alert
    except NoAlertPresentException:
        return None


def test_sign_out_ends_the_session(browser: Browser) -> None:
    browser.sign_in()
    browser.one("#logout").click()
    wait_until(lambda: "/dashboard/login" in browser.path(), 15, "the sign-in form after signing out")
    browser.ready()
    browser.shot("signed-out")
    browser.open("/dashboard", shot="after-sign-out")
    assert browser.path() == "/dashboard/login"
    browser.open("/dashboard/models")
    assert browser.path() == "/dashboard/login"
    assert not browser.all("#nav")


def test_phone_width_overview_and_nav(browser: Browser) -> None:
    driver = browser.driver
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        browser.sign_in()
        for path in ("/dashboard", "/dashboard/users", "/dashboard/models"):
            browser.open(path, shot="phone" + path.replace("/", "_"))
            width, scroll = driver.execute_script(
                "return [window.innerWidth, document.documentElement.scrollWidth]"
            )
            assert width <= 400, width
            assert scroll <= width + 1, f"{path}: horizontal scroll ({scroll} > {width})"
            for link in browser.all("#nav a"):
                assert link.is_displayed(), link.text
                box = driver.execute_script(
                    "var r = arguments[0].getBoundingClientRect(); return [r.left, r.right, r.width, r.height]",
                    link,
                )
                assert box[0] >= -1 and box[1] <= width + 1 and box[2] > 0 and box[3] > 0, (link.text, box)
        chart = browser.one("#events-chart") if browser.path().rstrip("/") == "/dashboard" else None
        if chart is None:
            browser.open("/dashboard", shot="phone-overview")
            chart = browser.one("#events-chart")
        wait_until(lambda: int(chart.get_attribute("data-points") or 0) > 0, 15, "the chart on a phone")
        # The nav works with a tap: open the users page from it.
        browser.one("#nav-users").click()
        wait_until(lambda: "/dashboard/users" in browser.path(), 15, "the users page from the nav")
        browser.ready()
        browser.shot("phone-nav-users")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
