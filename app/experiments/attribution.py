"""Attribution: which clicks and purchases an answer led to, joined from the impressions and events tables.

An event is attributed to an impression of the same user and item when it carries that impression's
`recommendation_id`, or else when it follows the user's latest impression of the item within the window.
Each (answer, item) pair counts once per kind however many events report it (a click sent twice, a view and a
click), so a client's retries never inflate click-through; revenue sums the values of the distinct purchase
events (stored once per event_id) attributed to the pair.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.tables import Event, Impression
from app.experiments.stats import UserOutcome
from app.records import as_utc

CLICK_TYPES = frozenset({"click", "view", "add_to_cart"})  # the user opened or acted on a shown item
CONVERSION_TYPES = frozenset({"purchase"})


@dataclass(frozen=True, slots=True)
class Shown:
    """One impression row."""

    recommendation_id: str
    user_id: str
    item_id: str
    position: int
    variant: str | None
    ts: datetime


@dataclass(frozen=True, slots=True)
class Acted:
    """One event row of a user who saw an answer."""

    user_id: str
    item_id: str
    type: str
    value: float | None
    ts: datetime
    recommendation_id: str | None


@dataclass
class Attributed:
    """Per (answer, item): whether it was clicked, converted, and the revenue."""

    clicked: set[tuple[str, str]] = field(default_factory=set)
    converted: set[tuple[str, str]] = field(default_factory=set)
    revenue: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))


def attribute(shown: Sequence[Shown], acted: Iterable[Acted], window_s: float) -> Attributed:
    """Join events to the impressions they follow (see the module docstring)."""
    by_pair: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)  # (user, item) -> [(ts, rid)]
    known: set[tuple[str, str]] = set()  # (rid, item)
    for s in shown:
        by_pair[(s.user_id, s.item_id)].append((as_utc(s.ts).timestamp(), s.recommendation_id))
        known.add((s.recommendation_id, s.item_id))
    for times in by_pair.values():
        times.sort()
    out = Attributed()
    for e in acted:
        is_click = e.type in CLICK_TYPES
        is_conversion = e.type in CONVERSION_TYPES
        if not (is_click or is_conversion):
            continue
        key: tuple[str, str] | None = None
        if e.recommendation_id is not None and (e.recommendation_id, e.item_id) in known:
            key = (e.recommendation_id, e.item_id)
        else:
            pair_times = by_pair.get((e.user_id, e.item_id))
            if pair_times:
                times = pair_times
                at = as_utc(e.ts).timestamp()
                i = bisect.bisect_right(times, (at, "\uffff")) - 1
                if i >= 0 and at - times[i][0] <= window_s:
                    key = (times[i][1], e.item_id)
        if key is None:
            continue
        if is_click or is_conversion:  # a purchase of a shown item implies the user opened it
            out.clicked.add(key)
        if is_conversion:
            out.converted.add(key)
            out.revenue[key] += float(e.value or 0.0)
    return out


def read_shown(
    session: Session,
    *,
    experiment: str | None = None,
    placement: str | None = None,
    since: datetime | None = None,
) -> list[Shown]:
    """Impressions of an experiment (or of a placement since a time), oldest first."""
    stmt = select(
        Impression.recommendation_id,
        Impression.user_id,
        Impression.item_id,
        Impression.position,
        Impression.variant,
        Impression.ts,
    )
    if experiment is not None:
        stmt = stmt.where(Impression.experiment == experiment)
    if placement is not None:
        stmt = stmt.where(Impression.placement == placement)
    if since is not None:
        stmt = stmt.where(Impression.ts >= since)
    return [
        Shown(r[0], r[1], r[2], int(r[3]), r[4], as_utc(r[5]))
        for r in session.execute(stmt.order_by(Impression.ts))
    ]


def read_acted(session: Session, users: set[str], since: datetime, until: datetime | None) -> list[Acted]:
    """Click and purchase events of `users` from `since` (until `until`), oldest first."""
    out: list[Acted] = []
    ordered = sorted(users)
    types = sorted(CLICK_TYPES | CONVERSION_TYPES)
    for start in range(0, len(ordered), 500):  # bounded IN lists
        stmt = select(
            Event.user_id, Event.item_id, Event.type, Event.value, Event.ts, Event.recommendation_id
        ).where(Event.user_id.in_(ordered[start : start + 500]), Event.ts >= since, Event.type.in_(types))
        if until is not None:
            stmt = stmt.where(Event.ts <= until)
        out.extend(Acted(r[0], r[1], r[2], r[3], as_utc(r[4]), r[5]) for r in session.execute(stmt))
    out.sort(key=lambda a: a.ts)
    return out


def outcomes_by_variant(shown: Sequence[Shown], attributed: Attributed) -> dict[str, list[UserOutcome]]:
    """Per variant, one UserOutcome per user who saw it."""
    per: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])  # (variant, user) -> counts
    for s in shown:
        counts = per[(s.variant or "", s.user_id)]
        key = (s.recommendation_id, s.item_id)
        counts[0] += 1
        if key in attributed.clicked:
            counts[1] += 1
        if key in attributed.converted:
            counts[2] += 1
            counts[3] += attributed.revenue.get(key, 0.0)
    out: dict[str, list[UserOutcome]] = defaultdict(list)
    for (variant, _), (imps, clicks, conv, revenue) in sorted(per.items()):
        out[variant].append(UserOutcome(int(imps), int(clicks), int(conv), float(revenue)))
    return dict(out)
