"""Clean an interaction log before training: drop or cap what would teach the model noise.

`clean_log(log, rules)` applies five rules, each one off when its setting is 0 (or `None`), in this order,
each on what the previous ones left; every dropped event is counted once, under the first rule that drops it:

1. types: events whose type has no positive weight in `rules.type_weights` (weight 0, or a type the weights
   do not name) are dropped (`None`: every type is kept).
2. bot_users: a user is a bot when some window of `BOT_WINDOW_S` (60) seconds holds more than
   `bot_events_per_minute` of their events, i.e. when N + 1 of their events (N = the limit) lie less than
   60 s apart, first to last. Every event of a bot is dropped, not only the burst.
3. repeats: an event is a repeat when the same user sent the same type for the same item at most
   `repeat_window_s` seconds after the previous such event (dropped or not: a storm of double-fires collapses
   to its first event). The first event of each run is kept.
4. user_cap: a user with more than `max_events_per_user` events keeps only the latest ones.
5. item_cap: an item with more than `max_events_per_item` events keeps only the latest ones.

"Latest" is by timestamp, ties broken by input order (the later row is the later event). The cleaned log keeps
the input order of the rows left, and its vocabularies hold only the users, items and types still present (in
their original order). Everything is vectorised numpy (a few sorts over the log): no loop per event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.ml.data import InteractionLog

BOT_WINDOW_S = 60.0
RULES = ("types", "bot_users", "repeats", "user_cap", "item_cap")


@dataclass(frozen=True)
class CleaningRules:
    """What `clean_log` drops; 0 (or None for `type_weights`) turns a rule off. Every rule is off by default."""

    type_weights: Mapping[str, float] | None = None  # types with a weight > 0 are kept
    bot_events_per_minute: int = 0  # more than this many events in any 60 s window: a bot
    repeat_window_s: float = 0.0  # same user, item and type again within this many seconds: a repeat
    max_events_per_user: int = 0  # latest events kept per user
    max_events_per_item: int = 0  # latest events kept per item

    def __post_init__(self) -> None:
        for name in ("bot_events_per_minute", "max_events_per_user", "max_events_per_item"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"CleaningRules.{name}: {value!r} must be an integer >= 0 (0: off)")
        if not np.isfinite(self.repeat_window_s) or self.repeat_window_s < 0:
            raise ValueError(f"CleaningRules.repeat_window_s: {self.repeat_window_s!r} must be >= 0 (0: off)")

    def describe(self) -> dict[str, Any]:
        """The settings used, as the report shows them (0: the rule was off)."""
        return {
            "event_types": None
            if self.type_weights is None
            else sorted(name for name, weight in self.type_weights.items() if weight > 0),
            "bot_events_per_minute": int(self.bot_events_per_minute),
            "bot_window_s": BOT_WINDOW_S,
            "repeat_window_s": float(self.repeat_window_s),
            "max_events_per_user": int(self.max_events_per_user),
            "max_events_per_item": int(self.max_events_per_item),
        }


def _group_key(first: np.ndarray, second: np.ndarray, n_second: int) -> np.ndarray:
    """One int64 per (first, second) pair that sorts like the pair; codes are >= 0 and < their vocabulary."""
    if first.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    if (int(first.max()) + 1) * max(n_second, 1) < 2**62:
        return first * max(n_second, 1) + second
    # Too many combinations for one int64: rank the pairs instead (one more sort).
    _, inverse = np.unique(np.stack([first, second], axis=1), axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _sorted_by(order: np.ndarray, key: np.ndarray) -> np.ndarray:
    """`order` (positions, already in time order) re-sorted by `key[position]`; time order kept within a key."""
    return order[np.argsort(key[order], kind="stable")]


def _beyond_cap(sorted_codes: np.ndarray, n_codes: int, cap: int) -> np.ndarray:
    """For rows sorted by code (then time): True for the rows older than their code's latest `cap`."""
    counts = np.bincount(sorted_codes, minlength=n_codes)
    ends = np.cumsum(counts)[sorted_codes]  # exclusive end of each row's group
    from_end = ends - np.arange(sorted_codes.shape[0]) - 1  # 0 for the latest row of its group
    return from_end >= cap


def _compact(log: InteractionLog, rows: np.ndarray) -> InteractionLog:
    """The log of `rows` (ascending positions), with vocabularies cut down to the codes still used."""

    def remap(codes: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
        used = np.zeros(len(names), dtype=bool)
        used[codes] = True
        new_code = np.cumsum(used, dtype=np.int64) - 1
        return new_code[codes], [names[i] for i in np.flatnonzero(used)]

    users, user_names = remap(log.user_codes[rows], log.users)
    items, item_names = remap(log.item_codes[rows], log.items)
    types, type_names = remap(log.type_codes[rows], log.types)
    return InteractionLog(
        user_codes=users,
        item_codes=items,
        type_codes=types,
        timestamps=log.timestamps[rows],
        users=user_names,
        items=item_names,
        types=type_names,
    )


def clean_log(log: InteractionLog, rules: CleaningRules) -> tuple[InteractionLog, dict[str, Any]]:
    """Apply `rules` (module docstring); returns the cleaned log and a JSON-able report of what was dropped.

    The report: `rules` (the settings used), `read` (rows in), `dropped` (per rule: events, and the users or
    items it hit), `kept` (rows out), `seconds`. When nothing is dropped the same log object is returned.
    """
    started = time.perf_counter()
    n = len(log)
    users, items, ts = log.user_codes, log.item_codes, log.timestamps
    dropped: dict[str, dict[str, Any]] = {
        "types": {"events": 0, "by_type": {}},
        "bot_users": {"users": 0, "events": 0},
        "repeats": {"events": 0},
        "user_cap": {"users": 0, "events": 0},
        "item_cap": {"items": 0, "events": 0},
    }

    # 1. types: one test per type code.
    if rules.type_weights is not None and n:
        weights = rules.type_weights
        known = np.array([weights.get(name, 0.0) > 0 for name in log.types], dtype=bool)  # [n_types]
        bad = ~known[log.type_codes]
        per_type = np.bincount(log.type_codes[bad], minlength=len(log.types))
        dropped["types"] = {
            "events": int(per_type.sum()),
            "by_type": {log.types[c]: int(per_type[c]) for c in np.flatnonzero(per_type)},
        }
        alive = np.flatnonzero(~bad)
    else:
        alive = np.arange(n)

    need_user_order = rules.bot_events_per_minute > 0 or rules.max_events_per_user > 0
    if alive.shape[0] and (need_user_order or rules.repeat_window_s > 0 or rules.max_events_per_item > 0):
        out = np.zeros(n, dtype=bool)  # rows dropped by rules 2-5
        by_time = alive[np.argsort(ts[alive], kind="stable")]  # ties: input order
        by_user = _sorted_by(by_time, users) if need_user_order else by_time

        # 2. bot users: N + 1 events of one user less than 60 s apart.
        limit = int(rules.bot_events_per_minute)
        if limit > 0 and by_user.shape[0] > limit:
            u, t = users[by_user], ts[by_user]
            burst = (u[limit:] == u[:-limit]) & (t[limit:] - t[:-limit] < BOT_WINDOW_S)
            bot = np.zeros(len(log.users), dtype=bool)
            bot[u[limit:][burst]] = True
            hit = bot[u]
            out[by_user[hit]] = True
            dropped["bot_users"] = {"users": int(bot.sum()), "events": int(hit.sum())}

        # 3. repeats: same (user, item, type) at most W s after the previous one.
        window = float(rules.repeat_window_s)
        if window > 0:
            rest = by_time[~out[by_time]]
            item_type = _group_key(items[rest], log.type_codes[rest], len(log.types))
            key = _group_key(users[rest], item_type, int(item_type.max()) + 1 if rest.size else 0)
            perm = np.argsort(key, kind="stable")  # (user, item, type), then time
            order, k, t = rest[perm], key[perm], ts[rest[perm]]
            repeat = np.zeros(order.shape[0], dtype=bool)
            repeat[1:] = (k[1:] == k[:-1]) & (t[1:] - t[:-1] <= window)
            out[order[repeat]] = True
            dropped["repeats"] = {"events": int(repeat.sum())}

        # 4. per-user cap: the latest `cap` events of each user.
        cap = int(rules.max_events_per_user)
        if cap > 0:
            rest = by_user[~out[by_user]]
            u = users[rest]
            old = _beyond_cap(u, len(log.users), cap)
            out[rest[old]] = True
            dropped["user_cap"] = {"users": int(np.unique(u[old]).shape[0]), "events": int(old.sum())}

        # 5. per-item cap: the latest `cap` events of each item.
        cap = int(rules.max_events_per_item)
        if cap > 0:
            rest = by_time[~out[by_time]]
            order = _sorted_by(rest, items)
            i = items[order]
            old = _beyond_cap(i, len(log.items), cap)
            out[order[old]] = True
            dropped["item_cap"] = {"items": int(np.unique(i[old]).shape[0]), "events": int(old.sum())}

        kept_rows = alive[~out[alive]]
    else:
        kept_rows = alive

    cleaned = log if kept_rows.shape[0] == n else _compact(log, kept_rows)
    report = {
        "rules": rules.describe(),
        "read": n,
        "dropped": dropped,
        "kept": int(kept_rows.shape[0]),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return cleaned, report


def format_report(report: Mapping[str, Any]) -> str:
    """One line for people: what was read, dropped per rule, kept."""
    d = report["dropped"]
    parts = [
        f"types {d['types']['events']}"
        + (
            " (" + ", ".join(f"{k} {v}" for k, v in sorted(d["types"]["by_type"].items())) + ")"
            if d["types"]["by_type"]
            else ""
        ),
        f"bot users {d['bot_users']['users']} ({d['bot_users']['events']} events)",
        f"repeats {d['repeats']['events']}",
        f"user cap {d['user_cap']['events']} events of {d['user_cap']['users']} users",
        f"item cap {d['item_cap']['events']} events of {d['item_cap']['items']} items",
    ]
    line = f"cleaning: read {report['read']}, kept {report['kept']}; dropped: " + ", ".join(parts)
    read = (report.get("negatives") or {}).get("read") or {}
    if read:  # added by the store read (app/trainer/pipeline.py): explicit negatives, never positives
        line += "; explicit negatives read: " + ", ".join(f"{k} {v}" for k, v in sorted(read.items()))
    return line
