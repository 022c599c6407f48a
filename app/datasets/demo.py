"""A synthetic shop whose structure a model can learn, deterministic for a seed.

The world: categories come in pairs, a main category and its accessory ("camera" -> "camera-bag").
Each user has latent tastes, a Dirichlet mix over 1-3 favourite categories, and browses them most of the
time; item popularity within a category is Zipf-like. A visit is a funnel view -> click -> add_to_cart ->
purchase, and a purchase in a main category makes the next visit likely to be its accessory. Timestamps
increase per user within the `days` before `now`. `build_demo_shop` also returns the latent truth (each
user's favourites, the accessory links) for known-answer tests.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate

import numpy as np

from app.records import EventRecord, ItemRecord

# A fixed reference time, so that the default world is the same on every machine and every day.
DEMO_NOW = datetime(2026, 11, 1, tzinfo=UTC)

# (main category, its accessory, typical price of the main item, of the accessory), in order of use.
_CATEGORY_PAIRS: tuple[tuple[str, str, float, float], ...] = (
    ("camera", "camera-bag", 450.0, 35.0),
    ("laptop", "laptop-sleeve", 900.0, 25.0),
    ("phone", "phone-case", 600.0, 15.0),
    ("headphones", "headphone-stand", 120.0, 20.0),
    ("running-shoes", "sports-socks", 90.0, 12.0),
    ("coffee-machine", "coffee-beans", 250.0, 14.0),
    ("bicycle", "bike-helmet", 700.0, 60.0),
    ("tent", "sleeping-bag", 220.0, 80.0),
    ("game-console", "controller", 450.0, 55.0),
    ("guitar", "guitar-strings", 350.0, 10.0),
    ("printer", "ink-cartridge", 150.0, 30.0),
    ("television", "wall-mount", 800.0, 45.0),
    ("watch", "watch-strap", 250.0, 25.0),
    ("drone", "drone-battery", 500.0, 70.0),
    ("blender", "blender-jar", 80.0, 25.0),
    ("backpack", "rain-cover", 70.0, 15.0),
)
_BRANDS = (
    "Acme",
    "Northwind",
    "Contoso",
    "Globex",
    "Initech",
    "Umbra",
    "Vertex",
    "Helio",
    "Nimbus",
    "Kestrel",
)
_ADJECTIVES = ("Compact", "Pro", "Lite", "Classic", "Ultra", "Travel", "Studio", "Smart", "Eco", "Sport")
_TAGS = (
    "bestseller",
    "new",
    "eco",
    "premium",
    "budget",
    "gift",
    "waterproof",
    "wireless",
    "limited",
    "refurbished",
)


@dataclass(frozen=True)
class DemoConfig:
    """Size and behaviour of the synthetic shop; every probability is per step of a user's visit."""

    n_users: int = 2000
    n_items: int = 1000
    n_categories: int = 12
    events_per_user: float = 30.0  # mean; the count per user is 3 + a negative binomial draw
    seed: int = 0
    days: float = 60.0  # events fall within this many days before `now`
    max_favourites: int = 3  # each user loves 1..max_favourites categories
    dirichlet_alpha: float = 1.0  # concentration of the mix over a user's favourites
    taste_strength: float = 0.85  # chance that a visit follows the user's tastes rather than chance
    zipf_exponent: float = 1.1  # item popularity within a category ~ 1 / rank**s
    p_click: float = 0.4  # after a view
    p_add_to_cart: float = 0.35  # after a click
    p_purchase: float = 0.6  # after add_to_cart
    p_accessory: float = 0.7  # after a purchase in a main category: next visit is its accessory
    unavailable_fraction: float = 0.02  # items marked unavailable in the catalog

    def __post_init__(self) -> None:
        checks = {
            "n_users": self.n_users >= 1,
            "n_categories": self.n_categories >= 2,
            "n_items": self.n_items >= self.n_categories,
            "events_per_user": self.events_per_user >= 3,
            "days": self.days > 0,
            "max_favourites": 1 <= self.max_favourites <= self.n_categories,
            "dirichlet_alpha": self.dirichlet_alpha > 0,
            "zipf_exponent": self.zipf_exponent >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"DemoConfig.{name}: {getattr(self, name)!r} is out of range")
        for name in (
            "taste_strength",
            "p_click",
            "p_add_to_cart",
            "p_purchase",
            "p_accessory",
            "unavailable_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"DemoConfig.{name}: {value!r} is not a probability in [0, 1]")


@dataclass(frozen=True)
class DemoShop:
    """The generated shop and its latent truth."""

    items: list[ItemRecord]
    events: list[EventRecord]  # sorted by timestamp; per user, strictly increasing
    categories: tuple[str, ...]
    accessory_of: dict[str, str]  # main category -> its accessory category
    favourites: dict[str, tuple[str, ...]] = field(default_factory=dict)  # user_id -> favourite categories


def generate_demo(
    config: DemoConfig = DemoConfig(), *, now: datetime = DEMO_NOW
) -> tuple[list[ItemRecord], list[EventRecord]]:
    """The synthetic shop's catalog and its events (sorted by time), deterministic for `config.seed`."""
    shop = build_demo_shop(config, now=now)
    return shop.items, shop.events


def build_demo_shop(config: DemoConfig = DemoConfig(), *, now: datetime = DEMO_NOW) -> DemoShop:
    """The synthetic shop with its latent truth (favourite categories per user, accessory links)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now: {now.isoformat()} must be timezone-aware")
    now = now.astimezone(UTC).replace(microsecond=0)
    np_rng = np.random.default_rng(config.seed)
    rng = random.Random(config.seed)  # scalar draws in the event loop: ~10x cheaper than numpy's

    categories, accessory_of, base_price = _categories(config.n_categories)
    items, item_category = _catalog(config, categories, accessory_of, base_price, np_rng, now)
    pickers = _popularity(config, categories, item_category, np_rng)

    events: list[EventRecord] = []
    favourites: dict[str, tuple[str, ...]] = {}
    n_cat = len(categories)
    counts = 3 + np_rng.negative_binomial(2, 2 / (2 + config.events_per_user - 3), size=config.n_users)  # [U]
    for u in range(config.n_users):
        user_id = f"u{u:05d}"
        k = int(np_rng.integers(1, config.max_favourites + 1))
        chosen = np_rng.choice(n_cat, size=k, replace=False)  # [k]
        weights = np_rng.dirichlet(np.full(k, config.dirichlet_alpha))  # [k]
        favourites[user_id] = tuple(categories[c] for c in chosen)
        taste = list(accumulate(float(w) for w in weights))
        steps = _visits(
            config,
            int(counts[u]),
            [int(c) for c in chosen],
            taste,
            n_cat,
            categories,
            accessory_of,
            pickers,
            rng,
        )
        events.extend(_timed(user_id, steps, config, now, rng))

    events.sort(key=lambda e: (e.timestamp, e.user_id))
    events = [
        EventRecord(e.user_id, e.item_id, e.type, e.timestamp, e.value, f"demo-{config.seed}-{n}")
        for n, e in enumerate(events)
    ]
    return DemoShop(items, events, categories, accessory_of, favourites)


def _categories(n: int) -> tuple[tuple[str, ...], dict[str, str], dict[str, float]]:
    """`n` category names in main/accessory pairs, the accessory links and a base price per category."""
    names: list[str] = []
    accessory_of: dict[str, str] = {}
    base_price: dict[str, float] = {}
    pair = 0
    while len(names) < n:
        main, accessory, main_price, accessory_price = _CATEGORY_PAIRS[pair % len(_CATEGORY_PAIRS)]
        suffix = "" if pair < len(_CATEGORY_PAIRS) else f"-{pair // len(_CATEGORY_PAIRS) + 1}"
        main, accessory = main + suffix, accessory + suffix
        names.append(main)
        base_price[main] = main_price
        if len(names) < n:  # an odd count leaves the last main category without an accessory
            names.append(accessory)
            base_price[accessory] = accessory_price
            accessory_of[main] = accessory
        pair += 1
    return tuple(names), accessory_of, base_price


def _catalog(
    config: DemoConfig,
    categories: tuple[str, ...],
    accessory_of: dict[str, str],
    base_price: dict[str, float],
    np_rng: np.random.Generator,
    now: datetime,
) -> tuple[list[ItemRecord], list[int]]:
    """Items spread evenly over the categories, with titles, tags, prices and publish dates."""
    main_of = {accessory: main for main, accessory in accessory_of.items()}
    item_category = [int(c) for c in np_rng.permutation(np.arange(config.n_items) % len(categories))]  # [I]
    price_noise = np_rng.lognormal(0.0, 0.35, size=config.n_items)  # [I]
    published_days = np_rng.uniform(0, 365, size=config.n_items)  # [I]
    unavailable = np_rng.random(config.n_items) < config.unavailable_fraction  # [I]
    items: list[ItemRecord] = []
    for i, c in enumerate(item_category):
        category = categories[c]
        brand = _BRANDS[int(np_rng.integers(len(_BRANDS)))]
        adjective = _ADJECTIVES[int(np_rng.integers(len(_ADJECTIVES)))]
        noun = category.replace("-", " ").title()
        model = f"{chr(65 + int(np_rng.integers(26)))}{int(np_rng.integers(10, 100))}"
        tags = tuple(sorted(np_rng.choice(_TAGS, size=int(np_rng.integers(1, 4)), replace=False).tolist()))
        attributes: dict[str, object] = {"brand": brand}
        if category in main_of:
            attributes["accessory_for"] = main_of[category]
        items.append(
            ItemRecord(
                item_id=f"sku-{i:05d}",
                title=f"{brand} {adjective} {noun} {model}",
                categories=(category,),
                tags=tags,
                price=round(max(base_price[category] * float(price_noise[i]), 1.0)) - 0.01,
                available=not bool(unavailable[i]),
                published_at=(now - timedelta(days=float(published_days[i]) + config.days)).replace(
                    microsecond=0
                ),
                attributes=attributes,
            )
        )
    return items, item_category


@dataclass(frozen=True)
class _Picker:
    """Draws an item of one category with Zipf-like popularity: a cumulative-weight table and bisect."""

    item_ids: tuple[str, ...]
    cumulative: tuple[float, ...]

    def draw(self, rng: random.Random) -> str:
        return self.item_ids[bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]


def _popularity(
    config: DemoConfig, categories: tuple[str, ...], item_category: list[int], np_rng: np.random.Generator
) -> list[_Picker]:
    """One picker per category; each item's popularity rank within its category is random."""
    pickers: list[_Picker] = []
    for c in range(len(categories)):
        members = [i for i, ic in enumerate(item_category) if ic == c]
        ranks = np_rng.permutation(len(members))  # [n_c]
        weights = [1.0 / float(r + 1) ** config.zipf_exponent for r in ranks]
        pickers.append(_Picker(tuple(f"sku-{i:05d}" for i in members), tuple(accumulate(weights))))
    return pickers


def _visits(
    config: DemoConfig,
    target: int,
    favourite: list[int],
    taste: list[float],
    n_cat: int,
    categories: tuple[str, ...],
    accessory_of: dict[str, str],
    pickers: list[_Picker],
    rng: random.Random,
) -> list[tuple[str, str, bool]]:
    """A user's steps as (item_id, event type, starts a visit), `target` of them, in order."""
    index = {name: c for c, name in enumerate(categories)}
    steps: list[tuple[str, str, bool]] = []
    next_category: int | None = None
    while len(steps) < target:
        if next_category is not None:
            c, next_category = next_category, None
        elif rng.random() < config.taste_strength:
            c = favourite[bisect.bisect_right(taste, rng.random() * taste[-1])]
        else:
            c = rng.randrange(n_cat)
        item = pickers[c].draw(rng)
        steps.append((item, "view", True))
        if rng.random() >= config.p_click:
            continue
        steps.append((item, "click", False))
        if rng.random() >= config.p_add_to_cart:
            continue
        steps.append((item, "add_to_cart", False))
        if rng.random() >= config.p_purchase:
            continue
        steps.append((item, "purchase", False))
        accessory = accessory_of.get(categories[c])
        if accessory is not None and rng.random() < config.p_accessory:
            next_category = index[accessory]
    return steps[:target]


def _timed(
    user_id: str, steps: list[tuple[str, str, bool]], config: DemoConfig, now: datetime, rng: random.Random
) -> list[EventRecord]:
    """Give a user's steps whole-second timestamps, strictly increasing, within `days` before `now`."""
    span = config.days * 86400.0
    window_start = now - timedelta(seconds=span)
    first_visit = span * rng.random() ** 2  # seconds after the window opens; most users started early
    last_visit = span - 3600.0  # funnels that follow the last visit still end before `now`
    visits = sum(1 for _, _, starts in steps if starts)
    visit_offsets = sorted(rng.uniform(min(first_visit, last_visit), last_visit) for _ in range(visits))
    events: list[EventRecord] = []
    previous = -1.0
    v = 0
    for item, kind, starts in steps:
        if starts:
            offset = visit_offsets[v]
            v += 1
        else:
            offset = previous + rng.uniform(5.0, 240.0)  # funnel steps follow within minutes
        offset = max(float(int(offset)), previous + 1.0)
        previous = offset
        events.append(EventRecord(user_id, item, kind, window_start + timedelta(seconds=offset)))
    return events
