"""`ItemTable`: an immutable, columnar, copy-on-write view of item fields over catalog rows 0..n-1.

Built for vectorised filter evaluation (`app.rules.expr`) on 100k-1M items. Every table is immutable:
`with_records` returns a new table that shares every column the changes leave alone and copies only
those whose values change, so readers in other threads keep a consistent view of the table they hold.

Field model (shared with the row-wise reference evaluation in `app.rules.expr`):

* numbers are compared as float64; bools are not numbers; NaN, and ints beyond float range, are missing;
* `categories` / `tags` hold strings (non-strings are ignored); an empty tuple is "missing";
* an attribute value is a number, a string, a bool, a list of scalars, or missing (absent, `None`,
  a nested dict or anything else); list elements that are neither scalars nor `None` are ignored;
* a row never set is an "empty item": every field missing, `available` included.

Layout (every array is read-only once a table holds it):

* `item_id`, `title`: int32 codes [n_rows] (-1 missing); `price`, `published_at` (epoch seconds):
  float64 [n_rows] (NaN missing); `available`: int8 [n_rows] (1 / 0, -1 for an empty item);
* `categories`, `tags`: value -> sorted int64 rows, plus a per-row count of distinct values (for `== null`);
* per attribute name (`AttrColumns`): a kind int8 [n_rows] (missing / number / string / false / true /
  list), a float64 column (only once a number was seen), an int32 string-code column (only once a string
  was seen), and element key -> sorted int64 rows for list values;
* the records themselves, in 4096-row chunks, for `values` and for removing a replaced row's old
  values from the indexes.

Copy costs: an update copies a column only when one of its written values differs (a price-only change
copies `price` and nothing else but the touched record chunk); rows past the end copy every column once
(they grow); an index is copied as a dict (values shared) with new arrays for the values touched.

Strings of scalar columns (`item_id`, `title`, string attributes) are dictionary-coded through an
append-only intern pool shared by a table and all the tables derived from it: codes are never reused or
changed, so a reader of an older table never sees a code change meaning under it (the pool grows with
every distinct string ever seen, including those of replaced records).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import numpy as np

from app.records import ItemRecord, as_utc

# Kind codes of an attribute value, one int8 per row.
K_MISSING = 0
K_NUMBER = 1
K_STRING = 2
K_FALSE = 3
K_TRUE = 4
K_LIST = 5

#: A list element as an index key: ("s", str) | ("n", float) | ("b", bool) | ("z", None).
Key = tuple[str, Any]

CORE_FIELDS = ("item_id", "title", "categories", "tags", "price", "available", "published_at")
MULTI_FIELDS = ("categories", "tags")
ATTR_PREFIX = "attributes."

_EMPTY_ROWS = np.zeros(0, dtype=np.int64)  # [0]
_EMPTY_ROWS.flags.writeable = False


def as_number(value: Any) -> float | None:
    """`value` as a float64 when it is a number (not a bool, not NaN, within float range), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return None if math.isnan(f) else f


def as_epoch(value: Any) -> float | None:
    """A datetime as epoch seconds (a naive one is taken to be UTC), else None."""
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo is not None else as_utc(value)).timestamp()


def element_key(value: Any) -> Key | None:
    """A list element (or literal) as an index key; None for values that are not scalars."""
    if value is None:
        return ("z", None)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bool):
        return ("b", value)
    f = as_number(value)
    return None if f is None else ("n", f)


def attr_value(value: Any) -> tuple[int, Any]:
    """An attribute value as (kind, payload): the float, the str, the tuple of element keys, or None."""
    if isinstance(value, str):
        return (K_STRING, value)
    if isinstance(value, bool):
        return (K_TRUE if value else K_FALSE, None)
    if isinstance(value, list | tuple):
        keys: dict[Key, None] = {}
        for element in value:
            key = element_key(element)
            if key is not None:
                keys[key] = None
        return (K_LIST, tuple(keys))
    f = as_number(value)
    if f is not None:
        return (K_NUMBER, f)
    return (K_MISSING, None)


def multi_values(values: Any) -> tuple[str, ...]:
    """The distinct strings of a `categories` / `tags` tuple, in order."""
    if type(values) is tuple:
        if not values:
            return values
        if len(values) == 1:
            return values if type(values[0]) is str else ()
        if set(map(type, values)) == {str} and len(set(values)) == len(values):
            return values
    elif not isinstance(values, tuple | list):
        return ()
    return tuple(dict.fromkeys(v for v in values if isinstance(v, str)))


def _group_rows(
    rows: list[int], values: list[tuple[Any, ...]], by_tuple: bool = True
) -> dict[Any, np.ndarray]:
    """value -> int64 rows (ascending when `rows` is) of the rows whose tuple holds the value."""
    if by_tuple and len(values) > 64 and len(set(values[:256])) * 4 <= min(len(values), 256):
        distinct: dict[tuple[Any, ...], int] = {}
        tuple_codes = [distinct.setdefault(v, len(distinct)) for v in values]
        if len(distinct) * 4 <= len(values):  # few distinct tuples (e.g. one category each): group them first
            groups = _group_rows(rows, [(c,) for c in tuple_codes], by_tuple=False)
            parts: defaultdict[Any, list[np.ndarray]] = defaultdict(list)
            for vals, code in distinct.items():
                for v in vals:
                    parts[v].append(groups[code])
            return {
                v: arrays[0] if len(arrays) == 1 else np.sort(np.concatenate(arrays))
                for v, arrays in parts.items()
            }
    flat = [v for vals in values for v in vals]
    if not flat:
        return {}
    codes: dict[Any, int] = {}
    flat_codes = np.asarray([codes.setdefault(v, len(codes)) for v in flat], dtype=np.int64)  # [m]
    counts = np.fromiter(map(len, values), dtype=np.int64, count=len(values))  # [k]
    flat_rows = np.repeat(np.asarray(rows, dtype=np.int64), counts)  # [m]
    order = np.argsort(flat_codes, kind="stable")
    bounds = np.cumsum(np.bincount(flat_codes, minlength=len(codes)))
    sorted_rows = flat_rows[order]
    out: dict[Any, np.ndarray] = {}
    start = 0
    for value, end in zip(codes, bounds.tolist(), strict=True):
        out[value] = sorted_rows[start:end]
        start = end
    return out


def _key_value(key: Key) -> Hashable:
    value: Hashable = key[1]
    return value


def parse_field(field: str) -> tuple[str, str | None]:
    """("attributes", name) for `attributes.<name>`, (field, None) for a core field; ValueError otherwise."""
    if field.startswith(ATTR_PREFIX) and len(field) > len(ATTR_PREFIX):
        return ("attributes", field[len(ATTR_PREFIX) :])
    if field in CORE_FIELDS:
        return (field, None)
    raise ValueError(f"unknown field {field!r}")


class StringPool:
    """Append-only string intern pool: value -> code and code -> value, shared across table revisions."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self._values: list[str] = []
        self._lock = threading.Lock()
        self._array: tuple[int, np.ndarray] = (0, np.zeros(0, dtype=object))

    def __len__(self) -> int:
        return len(self._values)

    def code(self, value: str) -> int | None:
        """The code of `value`, or None when no table ever held it."""
        return self._codes.get(value)

    def intern_many(self, values: Sequence[str | None]) -> np.ndarray:
        """Codes of `values` (-1 for None and non-strings), interning new strings. # [len(values)] int32"""
        codes = self._codes
        if len(values) > 4096:  # a bulk load: intern the distinct new strings, then map in C
            with self._lock:
                n0 = len(codes)
                new = [v for v in dict.fromkeys(values) if isinstance(v, str) and v not in codes]
                codes.update(zip(new, range(n0, n0 + len(new)), strict=True))
                self._values.extend(new)
            lookup = cast(Callable[[Any, int], int], codes.get)  # non-strings are never keys: -1
            return np.fromiter(map(lookup, values, itertools.repeat(-1)), dtype=np.int32, count=len(values))
        out = [codes.get(v, -2) if isinstance(v, str) else -1 for v in values]
        if -2 in out:
            with self._lock:
                for i, code in enumerate(out):
                    if code == -2:
                        v = values[i]
                        assert isinstance(v, str)
                        c = codes.get(v)
                        if c is None:
                            c = len(self._values)
                            self._values.append(v)
                            codes[v] = c
                        out[i] = c
        return np.asarray(out, dtype=np.int32)

    def value(self, code: int) -> str:
        """The string of a code."""
        return self._values[code]

    def as_array(self) -> np.ndarray:
        """Every interned string, by code (cached until the pool grows). # [len(pool)] object"""
        size, array = self._array
        n = len(self._values)
        if size != n:
            array = np.empty(n, dtype=object)
            array[:] = self._values[:n]
            self._array = (n, array)
        return array


@dataclass(frozen=True, slots=True)
class AttrColumns:
    """The per-type columns of one attribute name (all [n_rows]; `num`/`text` absent when never used)."""

    kind: np.ndarray  # [n_rows] int8, K_* codes
    num: np.ndarray | None  # [n_rows] float64, NaN unless a number
    text: np.ndarray | None  # [n_rows] int32 pool codes, -1 unless a string
    lists: Mapping[Key, np.ndarray]  # element key -> sorted int64 rows whose list holds it


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _write(
    col: np.ndarray | None, rows: np.ndarray, values: np.ndarray, n_old: int, n_new: int, fill: Any
) -> np.ndarray:
    """`col` with `values` at `rows`: the same array when nothing changes, else a fresh [n_new] copy."""
    if col is None:
        col = _frozen(np.full(n_old, fill, dtype=values.dtype))
    if n_new == n_old:
        current = col[rows]
        same = (
            np.array_equal(current, values, equal_nan=True)
            if values.dtype.kind == "f"
            else np.array_equal(current, values)
        )
        if same:
            return col
    out = np.empty(n_new, dtype=col.dtype)
    out[:n_old] = col
    out[n_old:] = fill
    out[rows] = values
    return _frozen(out)


def _extend(col: np.ndarray, n_new: int, fill: Any) -> np.ndarray:
    if len(col) == n_new:
        return col
    out = np.empty(n_new, dtype=col.dtype)
    out[: len(col)] = col
    out[len(col) :] = fill
    return _frozen(out)


def _update_index(
    index: Mapping[Any, np.ndarray],
    adds: Mapping[Any, list[int] | np.ndarray],
    removes: Mapping[Any, list[int]],
) -> Mapping[Any, np.ndarray]:
    """A copy of `index` with rows removed from and added to the lists of the keys given.

    Invariant used: a removed row is in its key's list, an added row is not.
    """
    if not adds and not removes:
        return index
    out = dict(index)
    for key in set(adds) | set(removes):
        cur = out.get(key, _EMPTY_ROWS)
        gone = removes.get(key)
        if gone:
            cur = np.delete(cur, np.searchsorted(cur, np.asarray(gone, dtype=np.int64)))
        new = adds.get(key)
        if new is not None and len(new):
            add = np.asarray(new, dtype=np.int64)
            if len(add) > 1 and not bool(np.all(add[1:] > add[:-1])):
                add = np.sort(add)
            cur = add if len(cur) == 0 else np.insert(cur, np.searchsorted(cur, add), add)
        if len(cur):
            out[key] = _frozen(cur)
        else:
            out.pop(key, None)
    return out


_CHUNK_BITS = 12
_CHUNK = 1 << _CHUNK_BITS  # rows per chunk of the records (copy-on-write per chunk)
_CHUNK_MASK = _CHUNK - 1


def _set_records(
    chunks: tuple[np.ndarray, ...], n_old: int, n_new: int, rows: np.ndarray, recs: list[ItemRecord]
) -> tuple[np.ndarray, ...]:
    """The record chunks with `recs` at `rows` (sorted): only the chunks touched or grown are copied."""
    out = list(chunks)
    n_chunks = (n_new + _CHUNK - 1) >> _CHUNK_BITS
    objs = np.empty(len(recs), dtype=object)  # [k]
    objs[:] = recs
    which = rows >> _CHUNK_BITS  # [k]
    starts = np.searchsorted(which, np.arange(n_chunks + 1))  # [n_chunks + 1]
    last_old = len(chunks) - 1
    for c in range(n_chunks):
        lo, hi = int(starts[c]), int(starts[c + 1])
        size = min(_CHUNK, n_new - (c << _CHUNK_BITS))
        old = chunks[c] if c < len(chunks) else None
        if lo == hi and old is not None and len(old) == size:
            continue
        if c < last_old and lo == hi:
            continue
        chunk = np.empty(size, dtype=object)  # [size]
        if old is None:
            chunk[:] = None
        else:
            chunk[: len(old)] = old
            chunk[len(old) :] = None
        if hi > lo:
            chunk[rows[lo:hi] & _CHUNK_MASK] = objs[lo:hi]
        chunk.flags.writeable = False
        if c < len(out):
            out[c] = chunk
        else:
            out.append(chunk)
    return tuple(out)


class ItemTable:
    """Immutable columnar item fields over catalog rows 0..n_rows-1; see the module docstring."""

    __slots__ = ("_attrs", "_cols", "_indexes", "_n", "_pool", "_records", "_revision")

    def __init__(
        self,
        n: int,
        revision: int,
        pool: StringPool,
        records: tuple[np.ndarray, ...],
        cols: Mapping[str, np.ndarray],
        indexes: Mapping[str, Mapping[str, np.ndarray]],
        attrs: Mapping[str, AttrColumns],
    ) -> None:
        self._n = n
        self._revision = revision
        self._pool = pool
        self._records = (
            records  # chunks of [<= _CHUNK] object: ItemRecord or None; chunk c from row c * _CHUNK
        )
        self._cols = cols
        self._indexes = indexes
        self._attrs = attrs

    @classmethod
    def empty(cls) -> ItemTable:
        """A table of no rows (revision 0) with a fresh string pool."""
        cols: dict[str, np.ndarray] = {
            "item_id": np.zeros(0, np.int32),  # [n_rows] pool codes, -1 missing
            "title": np.zeros(0, np.int32),  # [n_rows] pool codes, -1 missing
            "price": np.zeros(0, np.float64),  # [n_rows] NaN missing
            "available": np.zeros(0, np.int8),  # [n_rows] 1 / 0, -1 missing
            "published_at": np.zeros(0, np.float64),  # [n_rows] epoch seconds, NaN missing
            "categories#count": np.zeros(0, np.int32),  # [n_rows]
            "tags#count": np.zeros(0, np.int32),  # [n_rows]
        }
        return cls(
            0,
            0,
            StringPool(),
            (),
            {k: _frozen(v) for k, v in cols.items()},
            {"categories": {}, "tags": {}},
            {},
        )

    @property
    def n_rows(self) -> int:
        """How many catalog rows the table covers."""
        return self._n

    @property
    def revision(self) -> int:
        """0 for an empty table, +1 per `with_records`."""
        return self._revision

    @property
    def pool(self) -> StringPool:
        """The string pool of the dictionary-coded columns."""
        return self._pool

    def column(self, name: str) -> np.ndarray:
        """A core scalar column: item_id/title (int32 codes), price/published_at (float64), available (int8)."""
        return self._cols[name]

    def count(self, field: str) -> np.ndarray:
        """How many distinct values `categories` / `tags` hold per row. # [n_rows] int32"""
        return self._cols[field + "#count"]

    def index(self, field: str) -> Mapping[str, np.ndarray]:
        """`categories` / `tags`: value -> sorted int64 rows holding it."""
        return self._indexes[field]

    def attribute(self, name: str) -> AttrColumns | None:
        """The columns of attribute `name`, or None when no row ever had it."""
        return self._attrs.get(name)

    def attribute_names(self) -> list[str]:
        """Every attribute name some row has had."""
        return sorted(self._attrs)

    def record(self, row: int) -> ItemRecord | None:
        """The record at `row`, or None for an empty item."""
        if not 0 <= row < self._n:
            return None
        rec: ItemRecord | None = self._records[row >> _CHUNK_BITS][row & _CHUNK_MASK]
        return rec

    def values(self, field: str, rows: np.ndarray) -> list[tuple[Hashable, ...]]:
        """For each row, the values of `field` as a tuple: all values of a multi-valued field, a 1-tuple for
        a scalar, () when missing (also for rows out of range).

        `published_at` values are aware UTC datetimes; numbers are floats."""
        base, attr = parse_field(field)
        out: list[tuple[Hashable, ...]] = []
        records = self._records
        n = self._n
        for r in np.asarray(rows, dtype=np.int64).tolist():
            rec = records[r >> _CHUNK_BITS][r & _CHUNK_MASK] if 0 <= r < n else None
            out.append(() if rec is None else _record_values(rec, base, attr))
        return out

    def with_records(self, changes: Sequence[tuple[int, ItemRecord]]) -> ItemTable:
        """A new table where each (row, record) replaces row `row` entirely (the last one wins per row);
        rows past the end grow the table, rows never set in between are empty items. `self` is unchanged."""
        latest: dict[int, ItemRecord] = dict(changes)
        if not (set(map(type, latest)) <= {int} and (not latest or min(latest) >= 0)):
            latest = {}
            for row, rec in changes:
                if isinstance(row, bool) or not isinstance(row, int | np.integer) or row < 0:
                    raise ValueError(f"bad row {row!r}")
                latest[int(row)] = rec
        if not latest:
            return ItemTable(
                self._n, self._revision + 1, self._pool, self._records, self._cols, self._indexes, self._attrs
            )
        order = sorted(latest)
        rows = np.asarray(order, dtype=np.int64)  # [k] sorted, unique
        recs = [latest[r] for r in order]
        n_old = self._n
        n_new = max(n_old, order[-1] + 1)
        old_recs: list[ItemRecord | None]
        if n_old == 0:
            old_recs = [None] * len(order)
        else:
            chunks = self._records
            old_recs = [chunks[r >> _CHUNK_BITS][r & _CHUNK_MASK] if r < n_old else None for r in order]
        records = _set_records(self._records, n_old, n_new, rows, recs)

        pool = self._pool
        cols = dict(self._cols)

        def put(name: str, values: np.ndarray, fill: Any) -> None:
            cols[name] = _write(self._cols[name], rows, values, n_old, n_new, fill)

        put("item_id", pool.intern_many([r.item_id for r in recs]), -1)
        put("title", pool.intern_many([r.title for r in recs]), -1)
        nan = math.nan
        prices = [p if type(p := r.price) is float and p == p else as_number(p) for r in recs]
        put("price", np.asarray([nan if p is None else p for p in prices], dtype=np.float64), nan)
        put("available", np.asarray([1 if r.available else 0 for r in recs], dtype=np.int8), -1)
        stamps = [as_epoch(r.published_at) for r in recs]
        put("published_at", np.asarray([nan if t is None else t for t in stamps], dtype=np.float64), nan)

        indexes = dict(self._indexes)
        for field in MULTI_FIELDS:
            new_vals = [multi_values(getattr(r, field)) for r in recs]
            put(field + "#count", np.asarray([len(v) for v in new_vals], dtype=np.int32), 0)
            adds: defaultdict[Any, list[int]] = defaultdict(list)
            removes: defaultdict[Any, list[int]] = defaultdict(list)
            fresh_rows: list[int] = []
            fresh_vals: list[tuple[str, ...]] = []
            for row, old, new in zip(order, old_recs, new_vals, strict=True):
                old_vals = () if old is None else multi_values(getattr(old, field))
                if old_vals == new:
                    continue
                if not old_vals:
                    fresh_rows.append(row)
                    fresh_vals.append(new)
                    continue
                o = set(old_vals)
                for v in o.difference(new):
                    removes[v].append(row)
                for v in new:
                    if v not in o:
                        adds[v].append(row)
            all_adds: dict[Any, list[int] | np.ndarray] = dict(adds)
            for v, fresh in _group_rows(fresh_rows, fresh_vals).items():
                more = all_adds.get(v)
                all_adds[v] = fresh if more is None else np.concatenate([np.asarray(more, np.int64), fresh])
            indexes[field] = _update_index(self._indexes[field], all_adds, removes)

        attrs = self._update_attrs(order, rows, old_recs, recs, n_old, n_new)
        return ItemTable(n_new, self._revision + 1, pool, records, cols, indexes, attrs)

    def _update_attrs(
        self,
        order: list[int],
        rows: np.ndarray,
        old_recs: list[ItemRecord | None],
        recs: list[ItemRecord],
        n_old: int,
        n_new: int,
    ) -> Mapping[str, AttrColumns]:
        # name -> (rows, new raw values, old list keys) of the rows whose value of `name` may change
        changed: defaultdict[str, tuple[list[int], list[Any], list[tuple[Key, ...]]]] = defaultdict(
            lambda: ([], [], [])
        )
        # rows with no old attributes, grouped by their tuple of attribute names
        fresh_groups: defaultdict[tuple[Any, ...], tuple[list[int], list[tuple[Any, ...]]]] = defaultdict(
            lambda: ([], [])
        )
        for row, old, new in zip(order, old_recs, recs, strict=True):
            new_attrs = new.attributes if isinstance(new.attributes, dict) else {}
            old_attrs = old.attributes if old is not None and isinstance(old.attributes, dict) else {}
            if not old_attrs:
                if new_attrs:
                    group = fresh_groups[tuple(new_attrs)]
                    group[0].append(row)
                    group[1].append(tuple(new_attrs.values()))
                continue
            for name in {**old_attrs, **new_attrs}:
                ov = attr_value(old_attrs.get(name))
                value = new_attrs.get(name)
                if ov == attr_value(value):
                    continue
                entry = changed[name]
                entry[0].append(row)
                entry[1].append(value)
                entry[2].append(ov[1] if ov[0] == K_LIST else ())

        for names, (group_rows, group_values) in fresh_groups.items():
            for name, column in zip(names, zip(*group_values, strict=True), strict=True):
                entry = changed[name]
                entry[0].extend(group_rows)
                entry[1].extend(column)
                entry[2].extend(itertools.repeat((), len(group_rows)))

        attrs = dict(self._attrs)
        if n_new != n_old:
            for name, ac in self._attrs.items():
                if name not in changed:
                    attrs[name] = AttrColumns(
                        _extend(ac.kind, n_new, K_MISSING),
                        None if ac.num is None else _extend(ac.num, n_new, math.nan),
                        None if ac.text is None else _extend(ac.text, n_new, -1),
                        ac.lists,
                    )
        for name, (arows, values, old_lists) in changed.items():
            if not isinstance(name, str):
                continue
            ac_old = self._attrs.get(name)
            kinds, nums, strs, list_keys = _classify(values)
            if ac_old is None and not bool(np.any(kinds != K_MISSING)):
                continue  # a name seen only with missing values needs no columns
            at = np.asarray(arows, dtype=np.int64)  # [m]
            kind_col = _write(None if ac_old is None else ac_old.kind, at, kinds, n_old, n_new, K_MISSING)
            num_col = None if ac_old is None else ac_old.num
            if num_col is not None or nums is not None:
                if nums is None:
                    nums = np.full(len(values), math.nan)
                num_col = _write(num_col, at, nums, n_old, n_new, math.nan)
            text_col = None if ac_old is None else ac_old.text
            if text_col is not None or strs is not None:
                codes = (
                    self._pool.intern_many(strs) if strs is not None else np.full(len(values), -1, np.int32)
                )
                text_col = _write(text_col, at, codes, n_old, n_new, -1)
            adds: defaultdict[Key, list[int]] = defaultdict(list)
            removes: defaultdict[Key, list[int]] = defaultdict(list)
            fresh_rows: list[int] = []
            fresh_keys: list[tuple[Key, ...]] = []
            if list_keys is not None and not any(old_lists):
                fresh_rows, fresh_keys = arows, list_keys
            elif list_keys is not None or any(old_lists):
                for i, (row, old_keys) in enumerate(zip(arows, old_lists, strict=True)):
                    new_keys = () if list_keys is None else list_keys[i]
                    if old_keys == new_keys:
                        continue
                    if not old_keys:
                        fresh_rows.append(row)
                        fresh_keys.append(new_keys)
                        continue
                    o = set(old_keys)
                    for key in o.difference(new_keys):
                        removes[key].append(row)
                    for key in new_keys:
                        if key not in o:
                            adds[key].append(row)
            all_adds: dict[Key, list[int] | np.ndarray] = dict(adds)
            for key, fresh in _group_rows(fresh_rows, fresh_keys).items():
                more = all_adds.get(key)
                all_adds[key] = fresh if more is None else np.concatenate([np.asarray(more, np.int64), fresh])
            lists = _update_index({} if ac_old is None else ac_old.lists, all_adds, removes)
            attrs[name] = AttrColumns(kind_col, num_col, text_col, lists)
        return attrs


def _classify(
    values: list[Any],
) -> tuple[np.ndarray, np.ndarray | None, list[Any] | None, list[tuple[Key, ...]] | None]:
    """Raw attribute values as (kinds [m] int8, numbers [m] float64 or None, strings or None, list keys or None);
    None where no value is of that type."""
    m = len(values)
    types = set(map(type, values))
    if types == {str}:
        return np.full(m, K_STRING, dtype=np.int8), None, values, None
    if types == {bool}:
        flags = np.asarray(values, dtype=bool)
        return np.where(flags, K_TRUE, K_FALSE).astype(np.int8), None, None, None
    if types and types <= {int, float}:
        try:
            nums = np.asarray(values, dtype=np.float64)  # [m]
        except OverflowError:
            pass
        else:
            missing = np.isnan(nums)
            return np.where(missing, K_MISSING, K_NUMBER).astype(np.int8), nums, None, None
    memo: dict[Any, tuple[int, Any]] = {}  # lists often repeat: classify each distinct one once
    if types == {list}:
        keys_out: list[tuple[Key, ...]] = []
        for v in values:
            try:
                key = (tuple(map(type, v)), tuple(v))  # types too: [1] and [True] differ
                hit = memo.get(key)
            except TypeError:  # an unhashable element
                hit = None
                key = None
            if hit is None:
                hit = attr_value(v)
                if key is not None:
                    memo[key] = hit
            keys_out.append(hit[1])
        return np.full(m, K_LIST, dtype=np.int8), None, None, keys_out

    def classify(v: Any) -> tuple[int, Any]:
        if type(v) is list:
            try:
                key = (tuple(map(type, v)), tuple(v))  # types too: [1], [1.0] and [True] differ
                hit = memo.get(key)
            except TypeError:  # an unhashable element
                return attr_value(v)
            if hit is None:
                hit = memo[key] = attr_value(v)
            return hit
        return attr_value(v)

    pairs = [classify(v) for v in values]
    kinds = np.asarray([k for k, _ in pairs], dtype=np.int8)  # [m]
    has = set(kinds.tolist())
    nums_out = (
        np.asarray([p if k == K_NUMBER else math.nan for k, p in pairs], dtype=np.float64)
        if K_NUMBER in has
        else None
    )
    strs = [p if k == K_STRING else None for k, p in pairs] if K_STRING in has else None
    keys = [p if k == K_LIST else () for k, p in pairs] if K_LIST in has else None
    return kinds, nums_out, strs, keys


def _record_values(rec: ItemRecord, base: str, attr: str | None) -> tuple[Hashable, ...]:
    if base == "attributes":
        assert attr is not None
        attributes = rec.attributes if isinstance(rec.attributes, dict) else {}
        kind, payload = attr_value(attributes.get(attr))
        if kind == K_MISSING:
            return ()
        if kind == K_LIST:
            return tuple(_key_value(k) for k in payload)
        if kind in (K_NUMBER, K_STRING):
            return (payload,)
        return (kind == K_TRUE,)
    if base in MULTI_FIELDS:
        return multi_values(getattr(rec, base))
    if base == "price":
        p = as_number(rec.price)
        return () if p is None else (p,)
    if base == "published_at":
        t = rec.published_at
        return (as_utc(t),) if isinstance(t, datetime) else ()
    if base == "available":
        return (bool(rec.available),)
    value = getattr(rec, base)
    return (value,) if isinstance(value, str) else ()
