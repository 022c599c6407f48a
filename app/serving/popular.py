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
from app.serving.polling import Pacer

log = logging.getLogger(__name__)

BUCKETS = 24
_UNITS = {"m": 60, "h": 3600, "d": 86_400}
_POLL_CHUNK = 2_000  # events per fetch of a serving poll: the pacer ticks between chunks
_BACKFILL_CHUNK = 50_000  # events per fetch of the start-up backfill (unpaced: fewer, larger fetches)
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
    """Per-bucket (item code, weight) chunks of one window, compacted when ranked."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.width = max(1.0, seconds / BUCKETS)
        self.half_life = seconds / 2
        self.buckets: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, codes: np.ndarray, times: np.ndarray, weights: np.ndarray, now: float) -> None:
        """File events (codes int64 [n], epoch seconds [n], weights [n]) in their buckets."""
        keep = times >= now - self.seconds  # [n]
        if not keep.any():
            return
        codes, weights = codes[keep], weights[keep]
        bucket_of = (times[keep] // self.width).astype(np.int64)  # [m]
        for bucket in np.unique(bucket_of).tolist():
            inside = bucket_of == bucket  # [m]
            self.buckets.setdefault(bucket, []).append((codes[inside], weights[inside]))

    def scores(self, now: float, n_codes: int) -> np.ndarray:
        """Decayed weight of every item code ([n_codes] float64); drops buckets that left the window."""
        oldest = int((now - self.seconds) // self.width)
        for bucket in [b for b in self.buckets if b < oldest]:
            del self.buckets[bucket]
        total = np.zeros(n_codes, dtype=np.float64)  # [n_codes]
        for bucket, chunks in self.buckets.items():
            if len(chunks) > 1:  # compact: one (unique codes, summed weights) chunk per bucket
                sums = np.bincount(
                    np.concatenate([c for c, _ in chunks]), np.concatenate([w for _, w in chunks])
                )
                present = np.flatnonzero(sums)
                chunks[:] = [(present, sums[present])]
            codes, weights = chunks[0]
            age = max(0.0, now - (bucket + 0.5) * self.width)
            total += np.bincount(codes, weights * math.pow(0.5, age / self.half_life), minlength=n_codes)
        return total


class PopularCounters:
    """Decayed counts per window plus all-time counts; `rank` publishes rankings read by requests.

    Items are coded as integers once; counting and ranking are numpy work proportional to the events in the
    windows (a rebuild holds the GIL for milliseconds, not for a Python loop over every item).
    """

    def __init__(
        self, windows: Sequence[str], event_weights: dict[str, float], max_ranked: int = 50_000
    ) -> None:
        self.windows = {w: _Window(window_seconds(w)) for w in windows}
        self.event_weights = dict(event_weights)
        self.max_ranked = max_ranked
        self._code_of: dict[str, int] = {}
        self._item_ids: list[str] = []
        self._ids = np.empty(0, dtype=object)  # [n_codes]: _item_ids as an array, rebuilt when ids are added
        self._all = np.zeros(0, dtype=np.float64)  # [n_codes]
        self._rankings: dict[str, Ranking] = {}
        self.events_seen = 0

    def add(self, rows: Iterable[tuple[str, str, float]], now: float) -> int:
        """Count (item_id, type, epoch seconds) events; returns how many."""
        codes: list[int] = []
        weights: list[float] = []
        times: list[float] = []
        for item_id, event_type, ts in rows:
            code = self._code_of.get(item_id)
            if code is None:
                code = self._code_of[item_id] = len(self._item_ids)
                self._item_ids.append(item_id)
            codes.append(code)
            weights.append(self.event_weights.get(event_type, 1.0))
            times.append(ts)
        if not codes:
            return 0
        code_arr = np.asarray(codes, dtype=np.int64)  # [n]
        weight_arr = np.asarray(weights, dtype=np.float64)  # [n]
        time_arr = np.asarray(times, dtype=np.float64)  # [n]
        added = np.bincount(code_arr, weight_arr, minlength=len(self._item_ids)).astype(
            np.float64
        )  # [n_codes]
        self._all = added + np.pad(self._all, (0, len(self._item_ids) - len(self._all)))
        for window in self.windows.values():
            window.add(code_arr, time_arr, weight_arr, now)
        self.events_seen += len(codes)
        return len(codes)

    def rank(self, now: float, pacer: Pacer | None = None) -> None:
        """Rebuild and publish every ranking (one reference assignment each); `pacer` ticks between them."""
        pacer = pacer or Pacer()
        n = len(self._item_ids)
        if self._ids.size != n:  # ids picked in C below, not in a Python loop holding the GIL
            self._ids = np.array(self._item_ids, dtype=object)  # [n]
            pacer.tick()
        ids = self._ids
        rankings = {}
        for name, window in self.windows.items():
            rankings[name] = _ranking(window.scores(now, n), ids, self.max_ranked)
            pacer.tick()
        rankings[ALL_TIME] = _ranking(self._all, ids, self.max_ranked)
        self._rankings = rankings

    def ranking(self, window: str) -> Ranking:
        """The latest ranking of a window (or ALL_TIME)."""
        return self._rankings.get(window, _EMPTY)


def _ranking(scores: np.ndarray, item_ids: np.ndarray, limit: int) -> Ranking:
    present = np.flatnonzero(scores > 0)  # [m]
    if present.size == 0:
        return _EMPTY
    if present.size > limit:
        present = present[np.argpartition(-scores[present], limit - 1)[:limit]]  # [limit] unordered
    order = present[np.argsort(-scores[present], kind="stable")]  # [m]
    return Ranking(item_ids[order].tolist(), scores[order])


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
            # A burst of events is counted without starving the event loop of the GIL (the start-up backfill,
            # before anything is served, runs unpaced).
            pacer = Pacer() if self.ready else Pacer(math.inf)
            chunk_size = _POLL_CHUNK if self.ready else _BACKFILL_CHUNK
            with self.sessions() as session:
                for chunk in iter_interactions(session, since_id=self.watermark, chunk_size=chunk_size):
                    n += self.counters.add(((r[2], r[3], r[5]) for r in chunk), now)
                    self.watermark = chunk[-1][0]
                    pacer.tick()
            if n or not self.ready or now - self._last_rank > 60:
                self.counters.rank(now, pacer)
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
