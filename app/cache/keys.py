"""Every cache key of the service, in one place.

Ids are written as `len:id` so that one id's keys are never a prefix of another's (`a` vs `a:b`).
"""

from __future__ import annotations

import hashlib

PREFIX = "reco:"
EPOCH = PREFIX + "epoch"  # bumped when a write may have been missed: every derived answer becomes unreachable


def _id(value: str) -> str:
    return f"{len(value)}:{value}"


def _digest(params: str) -> str:
    return hashlib.blake2b(params.encode(), digest_size=8).hexdigest()


def user_generation(user_id: str) -> str:
    """Counter bumped on each event or erasure of the user: part of every cached answer's key."""
    return f"{PREFIX}gen:{_id(user_id)}"


def user_prefix(user_id: str) -> str:
    """Every cached answer of a user starts with this (erasure deletes them all)."""
    return f"{PREFIX}rec:{_id(user_id)}:"


def recommendations(user_id: str, model_version: str, generation: int, epoch: int, params: str) -> str:
    """A cached recommendation answer; a new event, model version or epoch changes the key."""
    return f"{user_prefix(user_id)}{model_version}:{epoch}:{generation}:{_digest(params)}"


def similar_items(item_id: str, model_version: str, epoch: int, params: str) -> str:
    """A cached similar-items answer."""
    return f"{PREFIX}sim:{_id(item_id)}:{model_version}:{epoch}:{_digest(params)}"


def popular(model_version: str, epoch: int, params: str) -> str:
    """A cached popular-items answer."""
    return f"{PREFIX}pop:{model_version}:{epoch}:{_digest(params)}"
