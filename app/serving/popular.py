"""Popular items: time-decayed event counts over windows (24h, 7d, ...), updated incrementally from new events.

Each window keeps 24 time buckets of sparse per-item weights; an event lands in its bucket once (the tracker
reads only events with an id above its watermark), buckets leaving the window are dropped, and the ranking is
rebuilt from the buckets after new events arrive (never per request). A bucket's weight decays with a
half-life of half the window, so recent interest counts more. An all-time counter fills answers when a window
holds too few items (e.g. a catalog imported with old timestamps).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.events.repository import iter_interactions
from app.serving.catalog import CatalogView

log = logging.getLogger(__name__)

BUCKETS = 24
_UNITS = {"m": 60, "h": 3600, "d": 86_400}
ALL_TIME = "all"


def window_seconds(window: str) -> int:
    """Seconds of a window written like `30m`, `24h` or `7d`; ValueError otherwise."""
    match = re.fullmatch(r"([1-9][0-9]{0,4})([mhd])", window)
    if match is None:
        raise ValueError(f"{window!r} is not a window like 24h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(eq=False)
class Ranking:
    """Items by decreasing score (a rebuild's result; read-only once published)."""

    item_ids: list[str]
    scores: np.ndarray  # float64 [n]
    _by_category: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def positions_in(self, category: str, catalog: CatalogView) -> list[int]:
        """Positions of the ranking's items in `category` (computed once per ranking and category)."""
        key = (category, catalog.revision)
        found = self._by_category.get(key)
        if found is None:
            found = [i for i, item in enumerate(self.item_ids) if category in catalog.categories(item)]
            with self._lock:
                self._by_category = {k: v for k, v in self._by_category.items() if k[1] == key[1]}
                self._by_category[key] = found
        return found


_EMPTY = Ranking([], np.empty(0))


class _Window:
    """Sparse per-bucket weights of one window."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.width = max(1.0, seconds / BUCKETS)
        self.half_life = seconds / 2
        self.buckets: dict[int, dict[str, float]] = {}

    def add(self, item_id: str, ts: float, weight: float, now: float) -> None:
        if ts < now - self.seconds:
            return
        bucket = self.buckets.setdefault(int(ts // self.width), {})
        bucket[item_id] = bucket.get(item_id, 0.0) + weight

    def scores(self, now: float) -> dict[str, float]:
        oldest = int((now - self.seconds) // self.width)
        for b in [b for b in self.buckets if b < oldest]:
            del self.buckets[b]
        out: dict[str, float] = {}
        for b, weights in self.buckets.items():
            age = max(0.0, now - (b + 0.5) * self.width)
            factor = math.pow(0.5, age / self.half_life)
            for item_id, w in weights.items():
                out[item_id] = out.get(item_id, 0.0) + w * factor
        return out


class PopularCounters:
    """Decayed counts per window plus all-time counts; `rank` publishes rankings read by requests."""

    def __init__(
        self, windows: Sequence[str], event_weights: dict[str, float], max_ranked: int = 50_000
    ) -> None:
        self.windows = {w: _Window(window_seconds(w)) for w in windows}
        self.event_weights = dict(event_weights)
        self.max_ranked = max_ranked
        self._all: dict[str, float] = {}
        self._rankings: dict[str, Ranking] = {}
        self.events_seen = 0

    def add(self, rows: Iterable[tuple[str, str, float]], now: float) -> int:
        """Count (item_id, type, epoch seconds) events; returns how many."""
        n = 0
        for item_id, event_type, ts in rows:
            weight = self.event_weights.get(event_type, 1.0)
            self._all[item_id] = self._all.get(item_id, 0.0) + weight
            for window in self.windows.values():
                window.add(item_id, ts, weight, now)
            n += 1
        self.events_seen += n
        return n

    def rank(self, now: float) -> None:
        """Rebuild and publish every ranking (one reference assignment each)."""
        rankings = {
            name: _ranking(window.scores(now), self.max_ranked) for name, window in self.windows.items()
        }
        rankings[ALL_TIME] = _ranking(self._all, self.max_ranked)
        self._rankings = rankings

    def ranking(self, window: str) -> Ranking:
        """The latest ranking of a window (or ALL_TIME)."""
        return self._rankings.get(window, _EMPTY)


def _ranking(scores: dict[str, float], limit: int) -> Ranking:
    if not scores:
        return _EMPTY
    ids = list(scores)
    values = np.fromiter(scores.values(), dtype=np.float64, count=len(ids))  # [n]
    if len(ids) > limit:
        top = np.argpartition(-values, limit - 1)[:limit]  # [limit] unordered
    else:
        top = np.arange(len(ids))
    order = top[np.argsort(-values[top], kind="stable")]  # [m]
    return Ranking([ids[i] for i in order.tolist()], values[order])


@dataclass(frozen=True, slots=True)
class Pick:
    """One popular item and its score."""

    item_id: str
    score: float


class PopularTracker:
    """Feeds PopularCounters from the event table (rows above a watermark) in a background thread."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        catalog: CatalogView,
        windows: Sequence[str],
        event_weights: dict[str, float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.counters = PopularCounters(windows, event_weights)
        self.default_window = "7d" if "7d" in windows else max(windows, key=window_seconds)
        self.watermark = 0
        self.ready = False
        self._clock = clock
        self._lock = threading.Lock()
        self._last_rank = 0.0

    def poll(self) -> int:
        """Count events stored since the last poll and re-rank when any arrived (or a minute passed)."""
        with self._lock:
            now = self._clock()
            n = 0
            with self.sessions() as session:
                for chunk in iter_interactions(session, since_id=self.watermark):
                    n += self.counters.add(((r[2], r[3], r[5]) for r in chunk), now)
                    self.watermark = chunk[-1][0]
            if n or not self.ready or now - self._last_rank > 60:
                self.counters.rank(now)
                self._last_rank = now
            self.ready = True
            return n

    def top(
        self,
        k: int,
        *,
        window: str | None = None,
        category: str | None = None,
        skip: Callable[[str], bool] | None = None,
    ) -> list[Pick]:
        """The k most popular visible items of the window (filled from all-time counts), filtered."""
        out: list[Pick] = []
        taken: set[str] = set()
        for name in (window or self.default_window, ALL_TIME):
            ranking = self.counters.ranking(name)
            positions: Iterable[int] = (
                ranking.positions_in(category, self.catalog) if category else range(len(ranking.item_ids))
            )
            for i in positions:
                item_id = ranking.item_ids[i]
                if item_id in taken or self.catalog.is_blocked(item_id) or (skip and skip(item_id)):
                    continue
                taken.add(item_id)
                out.append(Pick(item_id, float(ranking.scores[i]) if name != ALL_TIME else 0.0))
                if len(out) == k:
                    return out
        return out
