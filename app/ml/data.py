"""Interactions held column-wise in numpy, and the chronological leave-one-out split of EVALUATION.md."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.records import EventRecord

MIN_USER_INTERACTIONS = 5
_CHUNK = 65_536


class InteractionLogBuilder:
    """Streams rows in chunks (`extend`) into integer-coded numpy columns; `build` freezes them."""

    def __init__(self) -> None:
        self._user_code: dict[str, int] = {}
        self._item_code: dict[str, int] = {}
        self._type_code: dict[str, int] = {}
        self._users: list[np.ndarray] = []
        self._items: list[np.ndarray] = []
        self._types: list[np.ndarray] = []
        self._times: list[np.ndarray] = []

    @staticmethod
    def _codes(values: Sequence[str], table: dict[str, int], column: str, start: int) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            code = table.get(value)
            if code is None:
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{column}[{start + i}]: {value!r} must be a non-empty string")
                code = table[value] = len(table)
            out[i] = code
        return out

    def extend(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        types: Sequence[str],
        timestamps: np.ndarray | Sequence[float],
    ) -> None:
        """Append one chunk of rows (equal lengths; timestamps in epoch seconds)."""
        n = len(user_ids)
        if not len(item_ids) == len(types) == len(timestamps) == n:
            raise ValueError(
                f"extend: columns differ in length (user_ids={n}, item_ids={len(item_ids)}, "
                f"types={len(types)}, timestamps={len(timestamps)})"
            )
        start = sum(len(c) for c in self._users)
        times = np.asarray(timestamps, dtype=np.float64)
        if not np.all(np.isfinite(times)):
            bad = int(np.flatnonzero(~np.isfinite(times))[0])
            raise ValueError(f"timestamps[{start + bad}]: {times[bad]} is not a finite number")
        self._users.append(self._codes(user_ids, self._user_code, "user_ids", start))
        self._items.append(self._codes(item_ids, self._item_code, "item_ids", start))
        self._types.append(self._codes(types, self._type_code, "types", start))
        self._times.append(times.copy())

    def build(self) -> InteractionLog:
        """The log of every row appended so far."""

        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype)

        return InteractionLog(
            user_codes=cat(self._users, np.int64),
            item_codes=cat(self._items, np.int64),
            type_codes=cat(self._types, np.int64),
            timestamps=cat(self._times, np.float64),
            users=list(self._user_code),
            items=list(self._item_code),
            types=list(self._type_code),
        )


@dataclass(frozen=True, eq=False)
class InteractionLog:
    """Interactions as integer codes into the `users`, `items` and `types` vocabularies; input order kept."""

    user_codes: np.ndarray  # [n] int64
    item_codes: np.ndarray  # [n] int64
    type_codes: np.ndarray  # [n] int64
    timestamps: np.ndarray  # [n] float64 epoch seconds
    users: list[str]
    items: list[str]
    types: list[str]

    def __len__(self) -> int:
        return int(self.user_codes.shape[0])

    @classmethod
    def builder(cls) -> InteractionLogBuilder:
        """A streaming builder: call `extend` per chunk, then `build`."""
        return InteractionLogBuilder()

    @classmethod
    def from_records(cls, events: Iterable[EventRecord]) -> InteractionLog:
        """Build from event records, consumed in chunks so a generator of millions of rows stays cheap."""
        builder = InteractionLogBuilder()
        users: list[str] = []
        items: list[str] = []
        types: list[str] = []
        times: list[float] = []
        for event in events:
            users.append(event.user_id)
            items.append(event.item_id)
            types.append(event.type)
            times.append(event.timestamp.timestamp())
            if len(users) >= _CHUNK:
                builder.extend(users, items, types, np.asarray(times))
                users, items, types, times = [], [], [], []
        if users:
            builder.extend(users, items, types, np.asarray(times))
        return builder.build()

    @classmethod
    def from_arrays(
        cls,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        types: Sequence[str],
        timestamps: np.ndarray | Sequence[float],
    ) -> InteractionLog:
        """Build from parallel columns (timestamps: float64 epoch seconds)."""
        builder = InteractionLogBuilder()
        builder.extend(user_ids, item_ids, types, timestamps)
        return builder.build()

    def stats(self) -> dict[str, int]:
        """Row, user, item and type counts."""
        return {
            "interactions": len(self),
            "users": len(self.users),
            "items": len(self.items),
            "event_types": len(self.types),
        }


@dataclass(frozen=True, eq=False)
class Split:
    """Per-user time-ordered, de-duplicated sequences; the last item is test, the one before validation."""

    item_ids: list[str]  # the catalog ranked in evaluation; item codes index it
    user_ids: list[str]  # users with >= MIN_USER_INTERACTIONS distinct items
    type_names: list[str]
    offsets: np.ndarray  # [U + 1] int64 CSR offsets into items/types
    items: np.ndarray  # [nnz] int64 item codes
    types: np.ndarray  # [nnz] int64 type codes
    times: np.ndarray | None = None  # [nnz] float64 epoch seconds of each kept interaction (warm starts)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def sequence(self, user: int, drop_last: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Item and type codes of one user, oldest first, without its last `drop_last` interactions."""
        start, end = int(self.offsets[user]), int(self.offsets[user + 1]) - drop_last
        return self.items[start:end], self.types[start:end]

    def sequences(self, drop_last: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every user's sequence without its last `drop_last` interactions (2 = training, 1 = train+valid)."""
        return [self.sequence(u, drop_last) for u in range(self.n_users)]

    def user_rows(self, buckets: int) -> np.ndarray | None:
        """Each user's row of a hashed user-ID table of `buckets` rows ([U] int64; None when there is none)."""
        if buckets <= 0:
            return None
        return np.array([zlib.crc32(u.encode("utf-8")) % buckets for u in self.user_ids], dtype=np.int64)

    @property
    def valid_items(self) -> np.ndarray:
        return self.items[self.offsets[1:] - 2]  # [U]

    @property
    def test_items(self) -> np.ndarray:
        return self.items[self.offsets[1:] - 1]  # [U]

    def stats(self) -> dict[str, int]:
        """Users, items and interactions kept by the split."""
        return {"users": self.n_users, "items": self.n_items, "interactions": int(self.items.shape[0])}


def leave_one_out_split(
    log: InteractionLog,
    extra_items: Iterable[str] = (),
    type_strength: Mapping[str, float] | None = None,
    min_interactions: int = MIN_USER_INTERACTIONS,
) -> Split:
    """Chronological leave-one-out split exactly as EVALUATION.md defines it.

    The first interaction of each (user, item) pair is kept (ties in time keep input order). With
    `type_strength`, the kept row carries the strongest event type seen for its pair (e.g. a view that later
    became a purchase counts as a purchase); its position in time stays the first one.
    """
    item_ids = list(log.items)
    known = set(item_ids)
    for item in extra_items:
        if item not in known:
            known.add(item)
            item_ids.append(item)
    n = len(log)
    empty = np.empty(0, dtype=np.int64)
    if n == 0:
        return Split(item_ids, [], list(log.types), np.zeros(1, dtype=np.int64), empty, empty)
    # Stable order by (user, time, input position): lexsort's last key is the primary one.
    order = np.lexsort((np.arange(n), log.timestamps, log.user_codes))  # [n]
    users = log.user_codes[order]
    items = log.item_codes[order]
    types = log.type_codes[order]
    times = log.timestamps[order]
    pair = users * max(len(item_ids), 1) + items  # [n]
    _, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
    if type_strength is not None:
        strength = np.array([type_strength.get(t, 0.0) for t in log.types], dtype=np.float64)
        best = np.full(first.shape[0], -np.inf)
        np.maximum.at(best, inverse, strength[types])
        # Pick, for each pair, the first type code reaching the best strength.
        hit = strength[types] == best[inverse]
        chosen = np.full(first.shape[0], -1, dtype=np.int64)
        idx = np.flatnonzero(hit)[::-1]
        chosen[inverse[idx]] = types[idx]
        types = types.copy()
        types[first] = chosen
    keep = np.zeros(n, dtype=bool)
    keep[first] = True
    users, items, types, times = users[keep], items[keep], types[keep], times[keep]
    counts = np.bincount(users, minlength=len(log.users))  # [n_users]
    kept_users = np.flatnonzero(counts >= min_interactions)
    row_keep = counts[users] >= min_interactions
    users, items, types, times = users[row_keep], items[row_keep], types[row_keep], times[row_keep]
    offsets = np.zeros(kept_users.shape[0] + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts[kept_users])
    return Split(
        item_ids=item_ids,
        user_ids=[log.users[u] for u in kept_users],
        type_names=list(log.types),
        offsets=offsets,
        items=items,
        types=types,
        times=times,
    )


IMPRESSION_KIND = "impression_without_click"
MAX_NEGATIVES_PER_USER = 200


@dataclass(frozen=True, eq=False)
class Negatives:
    """Explicit negative feedback: (user, item) pairs a user turned down, each with its kind and time.

    Kinds are the negative event types (e.g. `not_interested`) and IMPRESSION_KIND (shown, never acted on).
    """

    user_ids: list[str]
    item_ids: list[str]
    kinds: list[str]
    timestamps: np.ndarray  # [n] float64 epoch seconds

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def empty(cls) -> Negatives:
        return cls([], [], [], np.empty(0, dtype=np.float64))

    @classmethod
    def concat(cls, parts: Sequence[Negatives]) -> Negatives:
        """All the pairs of `parts`, in order."""
        return cls(
            [u for p in parts for u in p.user_ids],
            [i for p in parts for i in p.item_ids],
            [k for p in parts for k in p.kinds],
            np.concatenate([p.timestamps for p in parts]) if parts else np.empty(0, dtype=np.float64),
        )

    def counts(self) -> dict[str, int]:
        """Rows of each kind."""
        out: dict[str, int] = {}
        for kind in self.kinds:
            out[kind] = out.get(kind, 0) + 1
        return out


@dataclass(frozen=True, eq=False)
class UserNegatives:
    """Negatives per user of a split, CSR: user u's negative item codes are items[offsets[u]:offsets[u+1]]."""

    offsets: np.ndarray  # [U + 1] int64
    items: np.ndarray  # [nnz] int64 item codes of the split (all of them items of the training log)
    report: dict[str, Any]

    def __len__(self) -> int:
        return int(self.items.shape[0])


def user_negatives(
    split: Split,
    negatives: Negatives,
    log_items: Sequence[str],
    max_per_user: int = MAX_NEGATIVES_PER_USER,
) -> UserNegatives:
    """Map negatives onto a split: users it trains and items of the training log (`log_items`, whose codes are
    the split's first ones); other pairs are ignored, and so is a negative the user's own later positive on the
    same item supersedes (the split's time of the pair is after the negative's). A pair given twice (or by two kinds) counts once, under its
    first kind in `negatives`' order; a user keeps their latest `max_per_user` negatives.

    The report: `used` pairs per kind, and the pairs `ignored` because the item or the user is not trained on.
    """
    n = len(negatives)
    user_code = {u: i for i, u in enumerate(split.user_ids)}
    item_code = {item: i for i, item in enumerate(log_items)}
    users = np.fromiter((user_code.get(u, -1) for u in negatives.user_ids), dtype=np.int64, count=n)
    items = np.fromiter((item_code.get(i, -1) for i in negatives.item_ids), dtype=np.int64, count=n)
    kind_names = sorted(set(negatives.kinds))
    kind_code = {k: i for i, k in enumerate(kind_names)}
    kinds = np.fromiter((kind_code[k] for k in negatives.kinds), dtype=np.int64, count=n)
    unknown_item = items < 0
    unknown_user = (users < 0) & ~unknown_item
    known = (users >= 0) & (items >= 0)
    # A positive of the same user on the same item after the negative supersedes it (they came back to it).
    superseded = np.zeros(n, dtype=bool)
    if split.times is not None and known.any():
        n_keys = max(split.n_items, 1)
        owner = np.repeat(np.arange(split.n_users, dtype=np.int64), np.diff(split.offsets))  # [nnz]
        keys = owner * n_keys + split.items  # [nnz] unique per (user, item): the split keeps pairs once
        order = np.argsort(keys)
        sorted_keys, sorted_times = keys[order], split.times[order]
        rows = np.flatnonzero(known)
        wanted = users[rows] * n_keys + items[rows]
        at = np.minimum(np.searchsorted(sorted_keys, wanted), max(sorted_keys.shape[0] - 1, 0))
        if sorted_keys.shape[0]:
            hit = (sorted_keys[at] == wanted) & (sorted_times[at] > negatives.timestamps[rows])
            superseded[rows[hit]] = True
    ok = np.flatnonzero(known & ~superseded)
    pair = users[ok] * max(split.n_items, 1) + items[ok]
    _, first = np.unique(pair, return_index=True)  # the first row of each pair
    rows = ok[np.sort(first)]
    # Latest first within each user, then cut to max_per_user.
    order = rows[np.lexsort((-negatives.timestamps[rows], users[rows]))]
    u = users[order]
    rank = np.arange(order.shape[0]) - np.searchsorted(u, u, side="left")
    order = order[rank < max_per_user]
    order = order[np.lexsort((items[order], users[order]))]  # by user, then item
    counts = np.bincount(users[order], minlength=split.n_users)
    offsets = np.zeros(split.n_users + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    used = np.bincount(kinds[order], minlength=len(kind_names))
    report = {
        "used": {k: int(used[c]) for c, k in enumerate(kind_names)},
        "users": int((counts > 0).sum()),
        "ignored": {
            "unknown_item": int(unknown_item.sum()),
            "unknown_user": int(unknown_user.sum()),
            "superseded": int(superseded.sum()),
        },
    }
    return UserNegatives(offsets, items[order], report)
