"""Item features as hashed token bags: categories, tags, price bucket, attributes and title words."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from app.records import ItemRecord

_WORD = re.compile(r"[0-9a-z]+")
PAD = 0


def _bucket(token: str, buckets: int) -> int:
    # crc32 is stable across processes and Python versions, unlike hash(); 0 is the padding slot.
    return 1 + zlib.crc32(token.encode("utf-8")) % (buckets - 1)


def item_tokens(item: ItemRecord) -> list[str]:
    """Feature tokens of one item, most informative fields first."""
    tokens = [f"c:{c.strip().lower()}" for c in item.categories if c.strip()]
    tokens += [f"t:{t.strip().lower()}" for t in item.tags if t.strip()]
    if item.price is not None and math.isfinite(item.price) and item.price >= 0:
        tokens.append(f"p:{round(2 * math.log2(1.0 + item.price))}")
    for key in sorted(item.attributes):
        value = item.attributes[key]
        if isinstance(value, str | int | bool) and str(value).strip():
            tokens.append(f"a:{key}={str(value).strip().lower()}")
    if item.title:
        tokens += [f"w:{w}" for w in _WORD.findall(item.title.lower())]
    return tokens


def feature_row(item: ItemRecord | None, buckets: int, max_features: int) -> np.ndarray:
    """Hashed token ids of one item, padded with 0 to `max_features` ([F] int64)."""
    row = np.zeros(max_features, dtype=np.int64)
    if item is None:
        return row
    seen: list[int] = []
    for token in item_tokens(item):
        code = _bucket(token, buckets)
        if code not in seen:
            seen.append(code)
        if len(seen) == max_features:
            break
    row[: len(seen)] = seen
    return row


def feature_matrix(
    item_ids: Sequence[str], items: Mapping[str, ItemRecord], buckets: int, max_features: int
) -> np.ndarray:
    """Hashed feature tokens of every item ([N, F] int64, 0 = padding); unknown items get an empty bag."""
    if buckets < 2:
        raise ValueError(f"feature_buckets: {buckets} must be >= 2")
    out = np.zeros((len(item_ids), max_features), dtype=np.int64)  # [N, F]
    for row, item_id in enumerate(item_ids):
        out[row] = feature_row(items.get(item_id), buckets, max_features)
    return out
