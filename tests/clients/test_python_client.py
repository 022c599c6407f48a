"""The Python client (`clients/python`, package `reco_client`) against a real `reco serve`.

Every operation, typed errors, the batcher (size, interval, close), retries through a TCP proxy that loses
the server's answers or refuses connections (each resent event is stored once), the asyncio client, and the
client's models checked field by field against the `/openapi.json` the server serves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import random
import re
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from reco_client import (
    AsyncReco,
    BadRequest,
    NotFound,
    Reco,
    RecoConnectionError,
    Retry,
    Unauthorized,
    models,
)
from reco_client import _calls as calls

from tests.clients.conftest import ADMIN_KEY, READ_KEY, Server
from tests.helpers.proxy import TcpProxy

FAST_RETRY = Retry(attempts=6, base_s=0.05, cap_s=0.5)


def wait_until(check, timeout: float = 10.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def shop_events(prefix: str, users: int = 60, items: int = 30, per_user: int = 10) -> list[dict[str, object]]:
    rng = random.Random(7)
    return [
        {
            "event_id": f"{prefix}-{u}-{n}",
            "user_id": f"{prefix}-u{u}",
            "item_id": f"sku-{(u % 5) * 6 + rng.randrange(6)}"
            if rng.random() < 0.8
            else f"sku-{rng.randrange(items)}",
            "type": rng.choice(["view", "view", "click", "purchase"]),
        }
        for u in range(users)
        for n in range(per_user)
    ]


# ---- the models cannot drift from the server ------------------------------------------------------------
def test_models_match_the_served_openapi() -> None:
    from app.api.app import create_app
    from app.settings import Settings

    spec = create_app(Settings(database_url="sqlite:///:memory:", embedded_worker=False)).openapi()
    schemas = spec["components"]["schemas"]
    for model in models.ANSWERS:
        schema = schemas[model.SCHEMA]
        fields = {f.name: f for f in dataclasses.fields(model)}
        props = set(schema["properties"])
        assert set(fields) == props, (model.__name__, sorted(set(fields) ^ props))
        for name in schema.get("required", []):  # what the server always sends has no client default
            f = fields[name]
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, (
                model,
                name,
            )
    assert set(schemas["EventIn"]["properties"]) == calls.EVENT_FIELDS
    # every query parameter of the read routes is a keyword of the client's call, and nothing else
    for path, func in [
        ("/v1/users/{user_id}/recommendations", calls.recommend),
        ("/v1/items/{item_id}/similar", calls.similar),
        ("/v1/popular", calls.popular),
        ("/v1/items", calls.list_items),
    ]:
        served = {p["name"] for p in spec["paths"][path]["get"]["parameters"] if p["in"] == "query"}
        ours = {n for n, p in inspect.signature(func).parameters.items() if p.kind is not p.VAR_POSITIONAL}
        ours -= {"user_id", "item_id"}
        assert served == ours, (path, sorted(served ^ ours))
    session = set(schemas["SessionIn"]["properties"])
    assert "recent_items" in session and "k" in session
    assert set(schemas["RetrainIn"]["properties"]) == set(inspect.signature(calls.retrain).parameters)
    # every route the client calls exists with that method
    for call in [
        calls.events([]),
        calls.recommend("u", 1),
        calls.recommend_session([], 1),
        calls.similar("i", 1),
        calls.popular(1),
        calls.put_item("i", {}),
        calls.upsert_items([]),
        calls.get_item("i"),
        calls.list_items(),
        calls.delete_item("i"),
        calls.put_user("u"),
        calls.get_user("u"),
        calls.delete_user("u"),
        calls.retrain(),
        calls.job("j"),
        calls.list_models(),
        calls.activate("v"),
    ]:
        matching = [
            path
            for path in spec["paths"]
            if re.fullmatch(re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(path)), call.path)
        ]
        assert any(call.method.lower() in spec["paths"][p] for p in matching), (call.method, call.path)


# ---- every operation ------------------------------------------------------------------------------------
def test_every_operation_against_a_real_server(server: Server) -> None:
    with Reco(server.base, ADMIN_KEY, retry=FAST_RETRY, batch_size=200, flush_interval=0.2) as reco:
        for n in range(30):
            reco.put_item(
                f"sku-{n}", title=f"Thing {n}", categories=["toys" if n % 2 else "games"], price=5.0 + n
            )
        upserted = reco.upsert_items([{"item_id": "sku-30", "title": "Extra"}, {"item_id": "sku-31"}])
        assert upserted.accepted == 2
        item = reco.get_item("sku-3")
        assert isinstance(item, models.Item) and item.title == "Thing 3" and item.categories == ["toys"]
        listed = [i.item_id for i in reco.items(page_size=7)]  # follows the cursor over 5 pages
        assert len(listed) == len(set(listed)) == 32

        events = shop_events("ops")
        ids = reco.send_events(events)
        assert ids == [e["event_id"] for e in events]
        reco.flush()
        # (a batch retried after a timeout on a loaded machine counts as duplicates: still stored once)
        assert reco.queued == 0 and reco.stats.accepted + reco.stats.duplicates == len(events)
        assert server.stored("ops-") == (len(events), len(events))

        user = reco.put_user("ops-u1", {"tier": "gold"})
        assert user.attributes == {"tier": "gold"}
        user = reco.get_user("ops-u1")
        assert (
            user.event_count == 10 and user.latest_events and isinstance(user.latest_events[0], models.Event)
        )

        job = reco.retrain("client test")
        assert job.status in ("queued", "running")
        done = reco.wait_for_job(job.job_id, timeout=240)
        assert done.status == "succeeded", done.error
        listing = reco.models()
        assert listing.active and listing.models and isinstance(listing.models[0], models.Model)
        activated = reco.activate(listing.active)
        assert activated.version == listing.active
        answer = reco.recommend("ops-u1", k=5, exclude=["sku-0"], explain=True)
        assert isinstance(answer, models.Recommendations) and answer.recommendation_id
        assert 0 < len(answer.items) <= 5 and all(isinstance(i.score, float) for i in answer.items)
        assert "sku-0" not in [i.item_id for i in answer.items]
        by_category = reco.recommend("ops-u1", k=5, category="toys", include_seen=True)
        assert all(int(i.item_id.split("-")[1]) % 2 for i in by_category.items)
        session = reco.recommend_session(["sku-1", "sku-2"], k=4)
        assert session.user_id is None and len(session.items) <= 4
        assert reco.popular(k=3).items and reco.similar("sku-1", k=3).recommendation_id

        click_id = reco.click("ops-u1", answer.items[0].item_id, answer.recommendation_id)
        reco.impression("ops-u1", answer)
        reco.impression("ops-u1", answer)  # reported twice, stored once per (answer, item)
        reco.flush()
        assert server.stored(click_id) == (1, 1)
        assert server.impressions(answer.recommendation_id) == len(answer.items)

        personal = reco.recommend("ops-u2", k=5)
        assert personal.model_version == listing.active

        reco.delete_item("sku-31")
        with pytest.raises(NotFound) as missing:
            reco.get_item("sku-31")
        assert missing.value.status == 404 and missing.value.code and missing.value.message
        reco.delete_user("ops-u3")
        assert server.stored_for_user("ops-u3") == 0

        with pytest.raises(BadRequest) as bad:
            reco.recommend("ops-u1", k=0)
        assert bad.value.status == 422 and "k" in bad.value.message


def test_errors_are_typed(server: Server) -> None:
    with Reco(server.base, "not-a-key-0000000000000000", retry=FAST_RETRY) as reco:
        with pytest.raises(Unauthorized) as err:
            reco.popular()
        assert err.value.status == 401 and err.value.code
    with Reco(server.base, READ_KEY, retry=FAST_RETRY) as reco:
        from reco_client import Forbidden

        with pytest.raises(Forbidden):
            reco.delete_user("nobody")
    with pytest.raises(ValueError, match=r"events\[0\]: unknown field"):
        calls.prepare_events([{"user_id": "u", "type": "view", "colour": "red"}])
    dead = f"http://127.0.0.1:{urlparse(server.base).port and 1}"  # port 1: nothing listens
    with Reco(dead, ADMIN_KEY, retry=Retry(attempts=2, base_s=0.01, cap_s=0.02), timeout=1) as reco:
        with pytest.raises(RecoConnectionError):
            reco.popular()
        reco._queue.clear()  # nothing to flush at close


# ---- the batcher ----------------------------------------------------------------------------------------
def test_batches_flush_on_size_interval_and_close(server: Server) -> None:
    tag = uuid.uuid4().hex[:6]
    # on size: 25 events with batch_size 10 -> two batches go at once, 5 wait for the (long) interval
    reco = Reco(server.base, ADMIN_KEY, retry=FAST_RETRY, batch_size=10, flush_interval=60)
    reco.send_events(
        [{"event_id": f"s{tag}-{n}", "user_id": "b1", "item_id": "sku-1", "type": "view"} for n in range(25)]
    )
    wait_until(lambda: reco.stats.batches == 2, what="two full batches")
    time.sleep(0.3)
    assert reco.queued == 5 and server.stored(f"s{tag}-") == (20, 20)
    # on close: the rest goes when the client closes
    reco.close()
    assert reco.queued == 0 and server.stored(f"s{tag}-") == (25, 25)

    # on interval: 3 events, batch_size 1000, 0.3 s interval
    with Reco(server.base, ADMIN_KEY, retry=FAST_RETRY, batch_size=1000, flush_interval=0.3) as reco:
        started = time.monotonic()
        reco.send_events(
            [
                {"event_id": f"i{tag}-{n}", "user_id": "b2", "item_id": "sku-2", "type": "view"}
                for n in range(3)
            ]
        )
        wait_until(lambda: server.stored(f"i{tag}-") == (3, 3), what="the interval flush")
        assert time.monotonic() - started >= 0.25 and reco.stats.batches == 1


# ---- retries never duplicate ----------------------------------------------------------------------------
def test_retries_through_a_failing_proxy_store_each_event_once(server: Server) -> None:
    tag = uuid.uuid4().hex[:6]
    port = urlparse(server.base).port
    assert port
    with TcpProxy("127.0.0.1", port) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        with Reco(base, ADMIN_KEY, retry=FAST_RETRY, batch_size=50, flush_interval=0.1, timeout=3) as reco:
            # the server stores a batch, its answer is lost: the client resends the same event_ids
            proxy.lose_answers(3)
            reco.send_events(
                [
                    {"event_id": f"r{tag}-{n}", "user_id": f"r{n % 7}", "item_id": "sku-4", "type": "view"}
                    for n in range(200)
                ]
            )
            reco.flush()
            assert proxy.answers_lost == 3  # the fault was met
            assert reco.stats.duplicates > 0  # and a resend of stored events was recognised as such
            # refused connections for a while: the batches stay queued and go once the server is back
            proxy.cut()
            reco.send_events(
                [
                    {"user_id": f"r{n % 7}", "item_id": "sku-5", "type": "click", "event_id": f"c{tag}-{n}"}
                    for n in range(120)
                ]
            )
            time.sleep(0.5)
            assert proxy.seen > 0 and reco.queued > 0  # refused, and nothing was dropped
            proxy.restore()
            reco.flush()
    assert server.stored(f"r{tag}-") == (200, 200)
    assert server.stored(f"c{tag}-") == (120, 120)


# ---- asyncio --------------------------------------------------------------------------------------------
def test_async_client(server: Server) -> None:
    tag = uuid.uuid4().hex[:6]

    async def main() -> None:
        async with AsyncReco(
            server.base, ADMIN_KEY, retry=FAST_RETRY, batch_size=10, flush_interval=0.2
        ) as reco:
            await reco.put_item("sku-40", title="Async")
            ids = await reco.send_events(
                [
                    {"event_id": f"a{tag}-{n}", "user_id": "async-u", "item_id": "sku-40", "type": "view"}
                    for n in range(15)
                ]
            )
            assert len(ids) == 15
            await asyncio.sleep(0)
            for _ in range(100):  # a full batch at once, the rest on the interval
                if reco.stats.batches >= 2:
                    break
                await asyncio.sleep(0.05)
            assert reco.stats.accepted == 15
            answer = await reco.recommend("async-u", k=3)
            assert answer.recommendation_id and len(answer.items) <= 3
            assert (await reco.get_item("sku-40")).title == "Async"
            assert (await reco.popular(k=2)).items
            listed = [i.item_id async for i in reco.items(page_size=10)]
            assert "sku-40" in listed
            with pytest.raises(NotFound):
                await reco.get_item("no-such-item")
            await reco.send_event("async-u", "click", "sku-40", event_id=f"a{tag}-last")

    asyncio.run(main())
    assert server.stored(f"a{tag}-") == (16, 16)


def test_the_js_client_knows_the_same_event_fields() -> None:
    # clients/js/dist/index.js is hand-written: its EVENT_FIELDS (camelCase -> wire name) must be the server's
    from app.api.app import create_app
    from app.settings import Settings

    source = (Path(__file__).resolve().parents[2] / "clients/js/dist/index.js").read_text()
    block = re.search(r"const EVENT_FIELDS = \{(.*?)\};", source, re.S)
    assert block, "EVENT_FIELDS not found in clients/js/dist/index.js"
    wire = set(re.findall(r':\s*"([a-z_]+)"', block.group(1)))
    spec = create_app(Settings(database_url="sqlite:///:memory:", embedded_worker=False)).openapi()
    assert wire == set(spec["components"]["schemas"]["EventIn"]["properties"])
