"""The cache interface every implementation satisfies; failures never reach the caller."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class CacheStats:
    """Counters exported to /metrics."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, *, hit: bool | None = None, error: bool = False) -> None:
        """Record one lookup outcome or one error."""
        with self._lock:
            if error:
                self.errors += 1
            elif hit:
                self.hits += 1
            elif hit is not None:
                self.misses += 1

    @property
    def hit_ratio(self) -> float:
        """Hits over lookups (0 before any lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class UserLookup:
    """What one round trip tells about a user: counters, the cached answer if still valid, the latest events."""

    generation: int = 0
    epoch: int = 0
    answer: bytes | None = None  # the answer stored under this generation and epoch, without its stamp
    history: list[bytes] | None = None  # latest events newest first (end marker b"" included), if held


@dataclass(frozen=True, slots=True)
class UserAnswer:
    """What `store_user` keeps: the answer, and the user's latest events when they were read from the store."""

    key: str
    body: bytes
    ttl_seconds: int
    history: list[bytes] | None = None  # newest first, without the end marker (added by the cache)
    history_ttl_seconds: int = 0


HistoryUpdate = list[bytes] | None  # a user's new entries, oldest first; None: forget the user's list


class Cache(Protocol):
    """Bytes in, bytes out. Every method swallows backend failures (logged and counted) and returns a miss.

    The user methods keep, per user (`answer_key` is always one of the user's keys, `keys.recommendations`: a
    Redis Cluster keeps them in one slot), a generation counter and a list of their latest events (newest first,
    ending with the marker b"" when the list holds the whole history), each atomically:
    - `lookup_user`: the generation, the epoch, the answer under `answer_key` if its stamp matches both, and,
      when it does not, the first `history_count` list entries (None when no list is held);
    - `store_user`: store an answer stamped with the generation and epoch it was computed under and, when
      given, the list read from the database; only if both counters still hold (else an event may have been
      missed, or the answer is stale already: nothing is stored; a Redis Cluster checks the generation only,
      and what it stores under an old epoch is never served, its stamp and list epoch no longer matching);
    - `alookup_user` / `astore_user`: the same for the event loop (Redis: an asyncio client, so the loop serves
      other requests while one waits);
    - `record_events`: after events commit, bump each user's generation and put the new entries on a held
      list (none is created: a partial list would hide older events); an entry already there is not added
      again, and an entry older than the list's newest drops the list (the next read refills it in order).
    """

    name: str
    stats: CacheStats
    fence: (
        int  # the database fence this process knows (app/fence.py): lookups bump the epoch past older copies
    )
    on_missed_write: Callable[[], None] | None  # called when a write fails; may raise (the change is unacked)

    def get(self, key: str) -> bytes | None: ...
    def get_many(self, keys: list[str]) -> list[bytes | None]: ...
    def set(self, key: str, value: bytes, ttl_seconds: int) -> None: ...
    def delete(self, *keys: str) -> None: ...
    def incr_many(self, keys: list[str]) -> bool: ...
    def lookup_user(self, user_id: str, answer_key: str, history_count: int) -> UserLookup: ...
    def store_user(self, user_id: str, looked: UserLookup, answer: UserAnswer) -> bool: ...
    async def alookup_user(self, user_id: str, answer_key: str, history_count: int) -> UserLookup: ...
    async def astore_user(self, user_id: str, looked: UserLookup, answer: UserAnswer) -> bool: ...
    def record_events(self, updates: dict[str, HistoryUpdate], max_len: int, ttl_seconds: int) -> bool: ...
    def epoch(self) -> int: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def ping(self) -> bool: ...
    async def aclose(self) -> None: ...
    def close(self) -> None: ...
