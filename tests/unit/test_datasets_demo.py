"""The synthetic shop: deterministic, and with the structure a model is meant to learn, far above chance."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from app.datasets import DEMO_NOW, DemoConfig, DemoShop, build_demo_shop, generate_demo
from app.records import EventRecord


@pytest.fixture(scope="module")
def shop() -> DemoShop:
    return build_demo_shop(DemoConfig())


def _by_user(events: list[EventRecord]) -> dict[str, list[EventRecord]]:
    users: dict[str, list[EventRecord]] = defaultdict(list)
    for event in events:
        users[event.user_id].append(event)
    return users


def test_deterministic_for_a_seed() -> None:
    config = DemoConfig(n_users=200, n_items=150, seed=7)
    assert generate_demo(config) == generate_demo(config)
    other_items, other_events = generate_demo(DemoConfig(n_users=200, n_items=150, seed=8))
    items, events = generate_demo(config)
    assert [e.item_id for e in events] != [e.item_id for e in other_events]
    assert [i.title for i in items] != [i.title for i in other_items]


def test_sizes_catalog_and_ids(shop: DemoShop) -> None:
    assert len(shop.items) == 1000
    assert len({i.item_id for i in shop.items}) == 1000
    assert len(shop.categories) == 12
    users = _by_user(shop.events)
    assert len(users) == 2000
    assert 27 <= len(shop.events) / len(users) <= 33  # mean events per user ~30
    assert min(len(v) for v in users.values()) >= 3
    assert len({e.event_id for e in shop.events}) == len(shop.events)
    item_ids = {i.item_id for i in shop.items}
    assert {e.item_id for e in shop.events} <= item_ids
    for item in shop.items:
        assert item.title and item.categories[0].replace("-", " ").title() in item.title
        assert 1 <= len(item.tags) <= 3
        assert item.price is not None and item.price > 0
        assert item.published_at is not None and item.published_at < DEMO_NOW


def test_prices_follow_the_category(shop: DemoShop) -> None:
    prices: dict[str, list[float]] = defaultdict(list)
    for item in shop.items:
        assert item.price is not None
        prices[item.categories[0]].append(item.price)
    median = {c: sorted(p)[len(p) // 2] for c, p in prices.items()}
    for main, accessory in shop.accessory_of.items():
        assert median[main] > 2 * median[accessory]


def test_timestamps_increase_per_user_within_the_window() -> None:
    now = datetime(2030, 5, 17, 12, 30, tzinfo=UTC)
    config = DemoConfig(n_users=300, n_items=200, days=60)
    _, events = generate_demo(config, now=now)
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    assert all(now - timedelta(days=60) <= e.timestamp <= now for e in events)
    assert all(e.timestamp.tzinfo is not None for e in events)
    for user_events in _by_user(events).values():
        stamps = [e.timestamp for e in user_events]
        assert all(a < b for a, b in pairwise(stamps))


def test_naive_now_and_bad_config_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"now: .* must be timezone-aware"):
        generate_demo(DemoConfig(n_users=5, n_items=20), now=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match=r"DemoConfig\.p_click: 1\.5 is not a probability"):
        DemoConfig(p_click=1.5)
    with pytest.raises(ValueError, match=r"DemoConfig\.n_items: 5 is out of range"):
        DemoConfig(n_items=5, n_categories=12)


def test_funnel_order(shop: DemoShop) -> None:
    counts = Counter(e.type for e in shop.events)
    assert counts["view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > 0
    for user_events in _by_user(shop.events).values():
        carted: set[str] = set()
        for event in user_events:
            if event.type == "add_to_cart":
                carted.add(event.item_id)
            if event.type == "purchase":
                assert event.item_id in carted  # every purchase went through the cart


def test_users_concentrate_on_their_favourite_categories(shop: DemoShop) -> None:
    category = {i.item_id: i.categories[0] for i in shop.items}
    users = _by_user(shop.events)
    # the share of a user's events in their own favourites, against the favourites of a random other user
    shuffled = list(shop.favourites.values())
    random.Random(0).shuffle(shuffled)
    own, chance = [], []
    for (user_id, user_events), other in zip(users.items(), shuffled, strict=False):
        cats = [category[e.item_id] for e in user_events]
        own.append(sum(c in shop.favourites[user_id] for c in cats) / len(cats))
        chance.append(sum(c in other for c in cats) / len(cats))
    own_mean, chance_mean = sum(own) / len(own), sum(chance) / len(chance)
    assert own_mean > 0.7
    assert own_mean > 3 * chance_mean

    # and visible without the latent truth: the top 3 categories of a user hold most of their events
    top3 = [
        sum(n for _, n in Counter(category[e.item_id] for e in evs).most_common(3)) / len(evs)
        for evs in users.values()
    ]
    assert sum(top3) / len(top3) > 0.75  # a uniform taste over 12 categories gives about 0.45


def test_accessory_after_purchase(shop: DemoShop) -> None:
    category = {i.item_id: i.categories[0] for i in shop.items}
    accessory_for = {i.categories[0]: i.attributes.get("accessory_for") for i in shop.items}
    # the catalog states the links the generator used
    assert {main: acc for acc, main in accessory_for.items() if main} == shop.accessory_of
    views = Counter(category[e.item_id] for e in shop.events if e.type == "view")
    total_views = sum(views.values())
    hits = trials = 0
    base = 0.0
    for user_events in _by_user(shop.events).values():
        for event, nxt in pairwise(user_events):
            accessory = shop.accessory_of.get(category[event.item_id])
            if event.type != "purchase" or accessory is None:
                continue
            trials += 1
            hits += category[nxt.item_id] == accessory
            base += views[accessory] / total_views
    assert trials > 500
    observed, expected = hits / trials, base / trials
    assert observed > 0.5
    assert observed > 5 * expected


def test_popularity_is_skewed(shop: DemoShop) -> None:
    views = Counter(e.item_id for e in shop.events if e.type == "view")
    counts = sorted((views.get(i.item_id, 0) for i in shop.items), reverse=True)
    top_decile = sum(counts[: len(counts) // 10]) / sum(counts)
    assert top_decile > 0.35  # a uniform catalog gives about 0.1
    assert counts[0] > 10 * counts[len(counts) // 2]


def test_category_counts_beyond_the_named_pairs() -> None:
    shop = build_demo_shop(DemoConfig(n_users=50, n_items=200, n_categories=37))
    assert len(shop.categories) == len(set(shop.categories)) == 37
    assert len(shop.accessory_of) == 18  # the odd last category has no accessory
    assert {i.categories[0] for i in shop.items} == set(shop.categories)
