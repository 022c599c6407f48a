"""Small synthetic worlds whose right answer is known, for tests and benchmarks."""

from __future__ import annotations

import numpy as np

from app.ml.data import InteractionLog
from app.records import ItemRecord


def chain_world(
    n_items: int = 40, n_users: int = 120, length: int = 12, seed: int = 0
) -> tuple[InteractionLog, dict[str, ItemRecord]]:
    """Users walk item chains i -> i+1 (mod n_items) from a random start; the next item is always known."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for step in range(length):
            users.append(f"u{u}")
            items.append(f"i{(start + step) % n_items}")
            times.append(1_000_000.0 + u * 1000 + step)
    catalog = {f"i{i}": ItemRecord(f"i{i}") for i in range(n_items)}
    types = ["view"] * len(users)
    return InteractionLog.from_arrays(users, items, types, np.array(times)), catalog


def category_world(
    n_categories: int = 4,
    items_per_category: int = 25,
    n_users: int = 160,
    length: int = 14,
    cold_per_category: int = 5,
    seed: int = 0,
) -> tuple[InteractionLog, dict[str, ItemRecord], dict[str, str]]:
    """Users with one favourite category; the last `cold_per_category` items of each category get no events.

    Returns the log, the whole catalog (cold items included, with features) and each user's category.
    """
    rng = np.random.default_rng(seed)
    catalog: dict[str, ItemRecord] = {}
    warm: dict[str, list[str]] = {}
    for c in range(n_categories):
        name = f"cat{c}"
        ids = [f"{name}-item{j}" for j in range(items_per_category)]
        for j, item_id in enumerate(ids):
            catalog[item_id] = ItemRecord(
                item_id,
                title=f"{name} product {j}",
                categories=(name,),
                tags=(f"tag-{name}",),
                price=10.0 * (c + 1),
            )
        warm[name] = ids[: items_per_category - cold_per_category]
    users, items, types, times = [], [], [], []
    favourite: dict[str, str] = {}
    for u in range(n_users):
        user = f"u{u}"
        fav = f"cat{u % n_categories}"
        favourite[user] = fav
        chosen = rng.choice(warm[fav], size=min(length, len(warm[fav])), replace=False)
        for step, item in enumerate(chosen):
            users.append(user)
            items.append(str(item))
            types.append(str(rng.choice(["view", "click", "purchase"], p=[0.6, 0.3, 0.1])))
            times.append(2_000_000.0 + u * 1000 + step)
    return InteractionLog.from_arrays(users, items, types, np.array(times)), catalog, favourite
