"""The recommender: real-time user vector -> FAISS top-k with filters -> fallbacks -> cached JSON answer.

Chain: personalised (the user tower over the user's latest events) -> popular in the category (the requested
one, else the one the user's recent items share most) -> popular overall. `strategy` says which answered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from sqlalchemy.orm import Session, sessionmaker

from app.cache import Cache
from app.cache import keys as cache_keys
from app.events.repository import recent_events
from app.serving.model import ServingModel
from app.serving.popular import Pick, PopularTracker
from app.serving.registry import ModelRegistry

PERSONALIZED = "personalized"
POPULAR = "popular"
POPULAR_CATEGORY = "popular_category"
SIMILAR = "similar"
NO_VERSION = "none"
MAX_HINTS = 200_000

History = list[tuple[str, str]]  # (item_id, event type), oldest first


@dataclass(frozen=True, slots=True)
class RecParams:
    """What a caller asked for (validated by the route)."""

    k: int = 10
    category: str | None = None
    exclude: tuple[str, ...] = ()
    include_seen: bool = False
    explain: bool = False

    def cache_part(self) -> str:
        """A canonical text of the parameters for the cache key."""
        excluded = ",".join(sorted(set(self.exclude)))
        return f"k={self.k}|c={self.category or ''}|x={excluded}|s={int(self.include_seen)}|e={int(self.explain)}"


@dataclass(frozen=True, slots=True)
class Freshness:
    """The user's generation and the catalog epoch, read from the cache with one round trip."""

    generation: int
    epoch: int


@dataclass(frozen=True, slots=True)
class ServingLimits:
    """Per-request work bounds, from settings."""

    history_len: int = 50
    seen_limit: int = 200
    cache_ttl_seconds: int = 300
    explain_top: int = 2


def _as_int(raw: bytes | None) -> int:
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


class Recommender:
    """Answers recommendation, similar-item and popular requests as JSON bytes."""

    def __init__(
        self,
        registry: ModelRegistry,
        popular: PopularTracker,
        sessions: sessionmaker[Session],
        cache: Cache,
        limits: ServingLimits = ServingLimits(),
    ) -> None:
        self.registry = registry
        self.popular = popular
        self.sessions = sessions
        self.cache = cache
        self.limits = limits
        # (user, params) -> (version, freshness, key) of the last answer this process cached or found
        self._hints: dict[tuple[str, str], tuple[str, Freshness, str]] = {}

    # ---- users ----------------------------------------------------------------------------------------------

    def freshness(self, user_id: str | None) -> Freshness:
        """Generation of the user (0 without one) and the epoch: one cache round trip."""
        if user_id is None:
            return Freshness(0, _as_int(self.cache.get(cache_keys.EPOCH)))
        generation, epoch = self.cache.get_many([cache_keys.user_generation(user_id), cache_keys.EPOCH])
        return Freshness(_as_int(generation), _as_int(epoch))

    def user_key(self, user_id: str, params: RecParams, fresh: Freshness, model: ServingModel | None) -> str:
        """Cache key of a user's answer under a model version."""
        version = model.version if model else NO_VERSION
        return cache_keys.recommendations(
            user_id, version, fresh.generation, fresh.epoch, params.cache_part()
        )

    def cached_for_user(self, user_id: str, params: RecParams) -> tuple[Freshness, bytes | None]:
        """The cached answer for the current version, generation and epoch.

        One cache round trip when this process answered the same question before: the generation, the epoch
        and the answer stored under the key they gave last time are read together (MGET is atomic); the answer
        is used only if both still hold. Otherwise two: read them, then the answer under the key they give.
        """
        model = self.registry.current
        part = params.cache_part()
        generation_key = cache_keys.user_generation(user_id)
        hint = self._hints.get((user_id, part))
        if hint is not None and model is not None and hint[0] == model.version:
            generation, epoch, body = self.cache.get_many([generation_key, cache_keys.EPOCH, hint[2]])
            fresh = Freshness(_as_int(generation), _as_int(epoch))
            if fresh == hint[1] and body is not None:
                self.cache.stats.count(hit=True)
                return fresh, body
        else:
            generation, epoch = self.cache.get_many([generation_key, cache_keys.EPOCH])
            fresh = Freshness(_as_int(generation), _as_int(epoch))
        key = self.user_key(user_id, params, fresh, model)
        body = self.cache.get(key)
        if body is not None and model is not None:
            self._remember(user_id, part, model.version, fresh, key)
        return fresh, body

    def _remember(self, user_id: str, part: str, version: str, fresh: Freshness, key: str) -> None:
        if len(self._hints) >= MAX_HINTS:
            self._hints.clear()  # a bounded memory: the next hit of each user re-learns its key
        self._hints[(user_id, part)] = (version, fresh, key)

    def answer_user(self, user_id: str, params: RecParams, fresh: Freshness | None = None) -> bytes:
        """Compute a user's answer from their latest events (one DB query) and cache it."""
        fresh = fresh or self.freshness(user_id)
        self.registry.ensure_epoch(fresh.epoch)
        model = self.registry.current  # one snapshot for the whole answer
        with self.sessions() as session:
            events = recent_events(session, user_id, max(self.limits.seen_limit, self.limits.history_len))
        history = [(e.item_id, e.type) for e in reversed(events[: self.limits.history_len])]
        seen = {e.item_id for e in events}
        body = self._recommend(model, history, seen, params)
        payload = _dumps({"user_id": user_id, **body})
        key = self.user_key(user_id, params, fresh, model)
        self.cache.set(key, payload, self.limits.cache_ttl_seconds)
        if model is not None:
            self._remember(user_id, params.cache_part(), model.version, fresh, key)
        return payload

    def answer_session(self, recent_items: Sequence[str], params: RecParams) -> bytes:
        """An anonymous session's answer from the items it just saw (oldest first); not cached."""
        self.registry.ensure_epoch(self.freshness(None).epoch)
        model = self.registry.current
        history = [(item_id, "view") for item_id in recent_items[-self.limits.history_len :]]
        body = self._recommend(model, history, set(recent_items), params)
        return _dumps({"user_id": None, **body})

    def _recommend(
        self, model: ServingModel | None, history: History, seen: set[str], params: RecParams
    ) -> dict[str, Any]:
        excluded = set(params.exclude) if params.include_seen else seen | set(params.exclude)
        version = model.version if model else None
        if model is not None and history:
            items = self._personalized(model, history, excluded, params)
            if items:
                return {"model_version": version, "strategy": PERSONALIZED, "items": items}
        category = params.category or self._favourite_category(history)
        picks: list[Pick] = []
        if category is not None:
            picks = self.popular.top(params.k, category=category, skip=excluded.__contains__)
        strategy = POPULAR_CATEGORY if params.category or picks else POPULAR
        if params.category is None and len(picks) < params.k:  # a requested category is a filter, never left
            taken = excluded | {p.item_id for p in picks}
            picks += self.popular.top(params.k - len(picks), skip=taken.__contains__)
        return {
            "model_version": version,
            "strategy": strategy,
            "items": _popular_items(picks, params.explain),
        }

    def _personalized(
        self, model: ServingModel, history: History, excluded: set[str], params: RecParams
    ) -> list[dict[str, Any]]:
        query = model.loaded.query_vector(history)  # [d+1] or None when no history item is known
        if query is None:
            return []
        scores, rows = model.search(
            query[None], params.k, exclude=model.rows(excluded), category=params.category
        )  # [1, k], [1, k]
        found = rows[0] >= 0
        rows_found: list[int] = rows[0][found].tolist()
        scores_found: list[float] = scores[0][found].tolist()
        items = [
            {"item_id": model.item_ids[r], "score": round(s, 6)}
            for r, s in zip(rows_found, scores_found, strict=True)
        ]
        if params.explain and items:
            for item, because in zip(items, self._explain(model, history, rows_found), strict=True):
                item["explanation"] = {"because": because}
        return items

    def _explain(self, model: ServingModel, history: History, rows: list[int]) -> list[list[str]]:
        """History items behind each row: the model's leave-one-out for trained rows, similarity for added ones."""
        top = self.limits.explain_top
        out: list[list[str]] = [[] for _ in rows]
        trained = [i for i, r in enumerate(rows) if r < model.trained_rows]
        if trained:
            named = model.loaded.explain(history, [rows[i] for i in trained], top)
            for i, because in zip(trained, named, strict=True):
                out[i] = because
        added = [i for i, r in enumerate(rows) if r >= model.trained_rows]
        history_rows = [r for r in (model.row(item) for item, _ in history) if r is not None]
        if added and history_rows:
            names = list(dict.fromkeys(model.item_ids[r] for r in history_rows))
            unique_rows = [model.row_of[name] for name in names]
            hist = model.index.vectors(np.asarray(unique_rows))[:, :-1]  # [H, d]
            cand = model.index.vectors(np.asarray([rows[i] for i in added]))[:, :-1]  # [A, d]
            sims = cand @ hist.T  # [A, H]
            order = np.argsort(-sims, axis=1)[:, :top]  # [A, top]
            for j, i in enumerate(added):
                out[i] = [names[h] for h in order[j].tolist()]
        return out

    def _favourite_category(self, history: History) -> str | None:
        """The category most of the user's latest items share (None without categorised items)."""
        counts: Counter[str] = Counter()
        for item_id, _ in history[-20:]:
            counts.update(self.registry.catalog.categories(item_id))
        return counts.most_common(1)[0][0] if counts else None

    # ---- similar items --------------------------------------------------------------------------------------

    def similar_key(self, item_id: str, params: RecParams, epoch: int, model: ServingModel | None) -> str:
        """Cache key of a similar-items answer."""
        version = model.version if model else NO_VERSION
        return cache_keys.similar_items(item_id, version, epoch, params.cache_part())

    def cached_similar(self, item_id: str, params: RecParams) -> tuple[int, bytes | None]:
        """The epoch and the cached similar-items answer, if any."""
        epoch = self.freshness(None).epoch
        return epoch, self.cache.get(self.similar_key(item_id, params, epoch, self.registry.current))

    def answer_similar(self, item_id: str, params: RecParams, epoch: int, known: bool) -> bytes | None:
        """Items like `item_id` (None when neither the model nor the catalog knows it); cached."""
        self.registry.ensure_epoch(epoch)
        model = self.registry.current
        row = model.row(item_id) if model else None
        if row is None and not known:
            return None
        body: dict[str, Any] = {"item_id": item_id, "model_version": model.version if model else None}
        excluded = {item_id, *params.exclude}
        if model is not None and row is not None:
            vector = model.index.vectors(np.asarray([row]))[0]  # [d+1]: (v, b)
            query = np.zeros_like(vector)  # [d+1]: (v/|v|, 0): rank by v'.v, not by popularity bias
            norm = float(np.linalg.norm(vector[:-1]))
            query[:-1] = vector[:-1] / norm if norm > 0 else vector[:-1]
            scores, rows = model.search(
                query[None], params.k, exclude=model.rows(excluded), category=params.category
            )  # [1, k], [1, k]
            found = rows[0] >= 0
            items = [
                {"item_id": model.item_ids[r], "score": round(s, 6)}
                for r, s in zip(rows[0][found].tolist(), scores[0][found].tolist(), strict=True)
            ]
            if items:
                body.update(strategy=SIMILAR, items=items)
        if "items" not in body:
            category = params.category or next(iter(self.registry.catalog.categories(item_id)), None)
            picks = self.popular.top(params.k, category=category, skip=excluded.__contains__)
            body.update(
                strategy=POPULAR_CATEGORY if category else POPULAR, items=_popular_items(picks, False)
            )
        payload = _dumps(body)
        self.cache.set(
            self.similar_key(item_id, params, epoch, model), payload, self.limits.cache_ttl_seconds
        )
        return payload

    # ---- popular --------------------------------------------------------------------------------------------

    def answer_popular(self, k: int, window: str, category: str | None) -> bytes:
        """The most popular visible items of a window (in-memory counters; no database, no cache)."""
        picks = self.popular.top(k, window=window, category=category)
        return _dumps(
            {
                "window": window,
                "category": category,
                "model_version": self.registry.version,
                "strategy": POPULAR_CATEGORY if category else POPULAR,
                "items": _popular_items(picks, False),
            }
        )


def _popular_items(picks: list[Pick], explain: bool) -> list[dict[str, Any]]:
    if explain:
        return [
            {"item_id": p.item_id, "score": round(p.score, 6), "explanation": {"because": []}} for p in picks
        ]
    return [{"item_id": p.item_id, "score": round(p.score, 6)} for p in picks]
