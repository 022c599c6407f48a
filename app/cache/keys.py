"""Every cache key of the service, in one place.

Ids are written as `len:id` so that one id's keys are never a prefix of another's (`a` vs `a:b`).

Key format 2 (issue 14, Redis Cluster): every key of one user carries the hash tag `{u:len:id}`, so the user
scripts (generation, answers, latest-events list) touch one hash slot; the epoch and the fence copy share the
tag `{g}`. Keys of the first format (`reco:gen:...`, `reco:epoch`, `reco:sim:...`) are simply never read again:
cold cache, expiring by their TTLs (the counters, kept without one, are a few bytes per user).
"""

from __future__ import annotations

import hashlib

PREFIX = "reco:"
EPOCH = (
    PREFIX + "{g}:epoch"
)  # bumped when a write may have been missed: every derived answer becomes unreachable
FENCE = (
    PREFIX + "{g}:fence"
)  # the cache's copy of the database fence (app/fence.py): older means bump the epoch


def _id(value: str) -> str:
    return f"{len(value)}:{value}"


def _digest(params: str) -> str:
    return hashlib.blake2b(params.encode(), digest_size=8).hexdigest()


def user_tag(user_id: str) -> str:
    """`reco:{u:len:id}`: what every key of the user starts with; the braces make Redis Cluster hash only
    `u:len:id`, so all of the user's keys share one slot. (An id holding `}` ends the tag early: two such
    users may then share a slot, which is harmless; one user's keys still always do.)"""
    return f"{PREFIX}{{u:{_id(user_id)}}}"


def user_generation(user_id: str) -> str:
    """Counter bumped on each event or erasure of the user: part of every cached answer's stamp."""
    return f"{user_tag(user_id)}:gen"


def user_prefix(user_id: str) -> str:
    """Every cached answer of a user starts with this (erasure deletes them all; not the generation)."""
    return f"{user_tag(user_id)}:rec:"


def recommendations(user_id: str, model_version: str, params: str) -> str:
    """A cached recommendation answer of one model version and parameters.

    The value starts with `stamp(generation, epoch)`: it answers only while both still hold, so a new event of
    the user (generation) or a missed cache write (epoch) makes it unusable without changing the key.
    """
    return f"{user_prefix(user_id)}a:{model_version}:{_digest(params)}"


def user_history_prefix(user_id: str) -> str:
    """The user's latest-events list is this plus the epoch (a missed write orphans every list at once)."""
    return f"{user_prefix(user_id)}h:"


def stamp(generation: int, epoch: int) -> bytes:
    """What a cached user answer starts with: the generation and epoch it was computed under."""
    return f"{generation}:{epoch}|".encode()


def history_entry(ts_us: int, event_type: str, item_id: str) -> bytes:
    """One event of a latest-events list: `ts_us TAB type TAB item_id` (µs since 1970; the item id last)."""
    return f"{max(ts_us, 0)}\t{event_type}\t{item_id}".encode()


def parse_history_entry(entry: bytes) -> tuple[str, str] | None:
    """(item_id, type) of a list entry; None for the list's end marker (b"")."""
    if not entry:
        return None
    _, event_type, item_id = entry.decode().split("\t", 2)
    return item_id, event_type


def similar_items(item_id: str, model_version: str, epoch: int, params: str) -> str:
    """A cached similar-items answer."""
    return f"{PREFIX}similar:{_id(item_id)}:{model_version}:{epoch}:{_digest(params)}"


def popular(model_version: str, epoch: int, params: str) -> str:
    """A cached popular-items answer."""
    return f"{PREFIX}popular:{model_version}:{epoch}:{_digest(params)}"
