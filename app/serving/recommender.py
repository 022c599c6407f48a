"""The recommender: real-time user vector -> FAISS top-k with filters -> fallbacks -> cached JSON answer.

Chain: personalised (the user tower over the user's latest events) -> popular in the category (the requested
one, else the one the user's recent items share most) -> popular overall. `strategy` says which answered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Engine

from app.cache import Cache
from app.cache import keys as cache_keys
from app.cache.base import UserAnswer, UserLookup
from app.db.engine import read
from app.events.repository import latest_history
from app.events.service import history_entry_of
from app.rules.masks import MaskMemo
from app.rules.spec import RotationIn, Rules
from app.serving.model import ServingModel
from app.serving.popular import Pick, PopularTracker
from app.serving.registry import ModelRegistry
from app.serving.ruled import CatalogSpace, ModelSpace, apply_rules, finite, promotion_pools_needed

PERSONALIZED = "personalized"
SESSION = "session"
SESSION_EVENTS = 5  # the "session" strategy reads only the user's latest events (short-term intent)
POPULAR = "popular"
POPULAR_CATEGORY = "popular_category"
SIMILAR = "similar"
NO_VERSION = "none"

History = list[tuple[str, str]]  # (item_id, event type), oldest first


@dataclass(frozen=True, slots=True)
class RecParams:
    """What a caller asked for (validated by the route)."""

    k: int = 10
    category: str | None = None
    exclude: tuple[str, ...] = ()
    include_seen: bool = False
    explain: bool = False
    rules: Rules | None = None  # business rules (placement and request), compiled
    route: str = ""  # the placement/experiment resolution's cache-key part (Resolved.cache_part)
    model_version: str | None = None  # a variant's pinned version (None: the active one)
    labels: tuple[tuple[str, str], ...] = ()  # placement, experiment, variant: copied into the answer

    def cache_part(self) -> str:
        """A canonical text of the parameters for the cache key."""
        excluded = ",".join(sorted(set(self.exclude)))
        text = f"k={self.k}|c={self.category or ''}|x={excluded}|s={int(self.include_seen)}|e={int(self.explain)}"
        if self.rules is not None or self.route:
            text += f"|r={self.rules.digest if self.rules else ''}|{self.route}"
        return text


@dataclass(frozen=True, slots=True)
class ServingLimits:
    """Per-request work bounds, from settings."""

    history_len: int = 50
    seen_limit: int = 200
    cache_ttl_seconds: int = 300
    explain_top: int = 2
    history_read: int = 200  # latest events read per answer: max(history_len, seen_limit)
    history_seconds: int = 3600  # how long the cache keeps a user's latest-events list (0: never)
    negative_types: frozenset[str] = frozenset(
        {"not_interested"}
    )  # never history; the item never shown again
    rules_pool: int = 100  # candidates re-ranked by business rules


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class StoredHistory:
    """A user's latest events read from the store: (item_id, type) newest first, and their cache entries."""

    events: list[tuple[str, str]]
    entries: list[bytes] | None  # None when the cache keeps no lists (history_seconds = 0)


class Recommender:
    """Answers recommendation, similar-item and popular requests as JSON bytes."""

    def __init__(
        self,
        registry: ModelRegistry,
        popular: PopularTracker,
        engine: Engine,
        cache: Cache,
        limits: ServingLimits = ServingLimits(),
    ) -> None:
        self.registry = registry
        self.popular = popular
        self.engine = engine
        self.cache = cache
        self.limits = limits
        self.masks = MaskMemo()  # filter masks, memoised per catalog revision and model snapshot
        # user id, rotation settings -> items shown often lately without a click (read from the store)
        self.rotation: Callable[[str, RotationIn], list[str]] | None = None

    # ---- users ----------------------------------------------------------------------------------------------

    def epoch(self) -> int:
        """The cache epoch (bumped when an item is hidden or a cache write was missed)."""
        return self.cache.epoch()

    def user_key(self, user_id: str, params: RecParams, model: ServingModel | None) -> str:
        """Cache key of a user's answer under a model version (the value carries its generation and epoch)."""
        version = model.version if model else NO_VERSION
        return cache_keys.recommendations(user_id, version, params.cache_part())

    def _lookup_args(self, user_id: str, params: RecParams) -> tuple[str, str, int]:
        key = self.user_key(user_id, params, self.registry.current)
        return user_id, key, self.limits.history_read if self.limits.history_seconds > 0 else 0

    def lookup_user(self, user_id: str, params: RecParams) -> UserLookup:
        """One cache round trip: the answer if it is still valid, else what computing it needs (the counters
        it will be stamped with and, when the cache holds it, the user's latest events)."""
        return self.cache.lookup_user(*self._lookup_args(user_id, params))

    async def alookup_user(self, user_id: str, params: RecParams) -> UserLookup:
        """`lookup_user` from the event loop, without blocking it."""
        return await self.cache.alookup_user(*self._lookup_args(user_id, params))

    def read_history(self, user_id: str) -> StoredHistory:
        """The user's latest events from the store (one indexed query; blocking I/O, no model work)."""
        rows = read(self.engine, lambda conn: latest_history(conn, user_id, self.limits.history_read))
        entries = None
        if self.limits.history_seconds > 0:
            entries = [history_entry_of(item_id, event_type, ts) for item_id, event_type, ts in rows]
        return StoredHistory([(item_id, event_type) for item_id, event_type, _ in rows], entries)

    def compute_user(
        self, user_id: str, params: RecParams, looked: UserLookup, stored: StoredHistory | None = None
    ) -> UserAnswer:
        """A user's answer from their latest events: the cache's list when `looked` holds it, else `stored`
        (read here when not given); with what `store_user` keeps (the events too when they came from the
        store)."""
        self.registry.ensure_epoch(looked.epoch)
        model = self._model(params)  # one snapshot for the whole answer
        if looked.history is not None:
            latest = [p for p in map(cache_keys.parse_history_entry, looked.history) if p is not None]
            entries = None
        else:
            stored = stored or self.read_history(user_id)
            latest, entries = stored.events, stored.entries
        negative = self.limits.negative_types
        refused = {item_id for item_id, kind in latest if kind in negative}
        history = [e for e in latest[: self.limits.history_len] if e[1] not in negative][::-1]  # oldest first
        seen = {item_id for item_id, _ in latest}
        demoted: list[str] = []
        if params.rules is not None and params.rules.rotation is not None and self.rotation is not None:
            demoted = [i for i in self.rotation(user_id, params.rules.rotation) if i not in seen]
        body = self._recommend(model, history, seen, params, refused, demoted)
        return UserAnswer(
            self.user_key(user_id, params, model),
            _dumps({"user_id": user_id, **body, **dict(params.labels)}),
            self.limits.cache_ttl_seconds,
            entries,
            self.limits.history_seconds,
        )

    def answer_user(self, user_id: str, params: RecParams, looked: UserLookup | None = None) -> bytes:
        """Compute a user's answer and cache it under the counters of `looked` unless they moved meanwhile."""
        looked = looked or self.lookup_user(user_id, params)
        answer = self.compute_user(user_id, params, looked)
        self.cache.store_user(user_id, looked, answer)
        return answer.body

    def answer_session(self, recent_items: Sequence[str], params: RecParams) -> bytes:
        """An anonymous session's answer from the items it just saw (oldest first); not cached."""
        self.registry.ensure_epoch(self.epoch())
        model = self._model(params)
        history = [(item_id, "view") for item_id in recent_items[-self.limits.history_len :]]
        body = self._recommend(model, history, set(recent_items), params)
        return _dumps({"user_id": None, **body, **dict(params.labels)})

    def _model(self, params: RecParams) -> ServingModel | None:
        """The snapshot answering: a variant's pinned version when it is loaded, else the active one."""
        if params.model_version is not None:
            pinned = self.registry.model_for(params.model_version)
            if pinned is not None:
                return pinned
        return self.registry.current

    def _recommend(
        self,
        model: ServingModel | None,
        history: History,
        seen: set[str],
        params: RecParams,
        refused: set[str] | None = None,
        demoted: Sequence[str] = (),
    ) -> dict[str, Any]:
        excluded = set(params.exclude) if params.include_seen else seen | set(params.exclude)
        if refused:
            excluded |= refused  # "not interested": never again for this user, include_seen or not
        if params.rules is not None:
            return self._ruled(model, history, excluded, params, params.rules, demoted)
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
            **_category_note(params.category, picks),
        }

    # ---- business rules -------------------------------------------------------------------------------------

    def _ruled(
        self,
        model: ServingModel | None,
        history: History,
        excluded: set[str],
        params: RecParams,
        rules: Rules,
        demoted: Sequence[str],
    ) -> dict[str, Any]:
        """An answer under business rules: the strategy's candidates, filtered in the search, re-ranked."""
        version = model.version if model else None
        strategy = rules.strategy
        if model is not None and strategy != "popular":
            query = None
            if strategy == "similar":
                seed = next((i for i, _ in reversed(history) if model.row(i) is not None), None)
                if seed is not None:
                    query = self._similar_query(model, model.row(seed))  # type: ignore[arg-type]
                    excluded = excluded | {seed}
            else:
                recent = history[-SESSION_EVENTS:] if strategy == "session" else history
                query = model.loaded.query_vector(recent) if recent else None
            if query is not None:
                items = self._ruled_search(model, query, history, excluded, params, rules, demoted)
                if items:
                    answered = {"similar": SIMILAR, "session": SESSION}.get(strategy, PERSONALIZED)
                    return {"model_version": version, "strategy": answered, "items": items}
        category = params.category or (None if strategy == "popular" else self._favourite_category(history))
        items, picked = self._ruled_popular(params, rules, excluded, category, demoted)
        return {
            "model_version": version,
            "strategy": POPULAR_CATEGORY if params.category or (category and picked) else POPULAR,
            "items": items,
            **_category_note(params.category, items),  # type: ignore[arg-type]
        }

    def _ruled_search(
        self,
        model: ServingModel,
        query: np.ndarray,
        history: History,
        excluded: set[str],
        params: RecParams,
        rules: Rules,
        demoted: Sequence[str],
    ) -> list[dict[str, Any]]:
        space = ModelSpace(model, self.registry.catalog.table, self.masks)
        allowed = space.mask(rules.filter) if rules.filter is not None else None
        excluded_rows = model.rows(excluded)
        pool = rules.pool(params.k, self.limits.rules_pool)
        scores, rows = model.search(
            query[None], pool, exclude=excluded_rows, category=params.category, allowed=allowed
        )  # [1, C], [1, C]
        found = rows[0] >= 0
        cand_rows, cand_scores = rows[0][found], scores[0][found].astype(np.float64)  # [C], [C]
        if cand_rows.size == 0:
            return []
        pools = []
        for missing, promo_filter in promotion_pools_needed(space, rules, cand_rows, params.k):
            if missing == 0:
                pools.append((np.empty(0, np.int64), np.empty(0)))
                continue
            p_scores, p_rows = model.search(
                query[None],
                missing,
                exclude=excluded_rows,
                category=params.category,
                allowed=space.mask(promo_filter),
            )
            keep = p_rows[0] >= 0
            pools.append((p_rows[0][keep], p_scores[0][keep].astype(np.float64)))
        ranked = apply_rules(
            space,
            cand_rows,
            cand_scores,
            params.k,
            rules,
            logits=True,
            excluded=excluded,
            blocked=self.registry.catalog.is_blocked,
            demoted=demoted,
            promoted_pools=pools,
        )
        out_rows: list[int] = ranked.rows.tolist()
        out_scores = ranked.scores.tolist()
        if any(
            not np.isfinite(v) for v in out_scores
        ):  # pinned items that were no candidate: their own score
            vecs = model.index.vectors(np.asarray(out_rows, dtype=np.int64))  # [k, d+1]
            own = (vecs @ query).tolist()
            out_scores = [v if np.isfinite(v) else own[i] for i, v in enumerate(out_scores)]
        items: list[dict[str, Any]] = [
            {"item_id": model.item_ids[r], "score": finite(v)}
            for r, v in zip(out_rows, out_scores, strict=True)
        ]
        if params.explain and items:
            because = self._explain(model, history, out_rows)
            for item, named, reasons in zip(items, because, ranked.reasons, strict=True):
                item["explanation"] = {"because": named, "rules": reasons}
        return items

    def _ruled_popular(
        self,
        params: RecParams,
        rules: Rules,
        excluded: set[str],
        category: str | None,
        demoted: Sequence[str],
    ) -> tuple[list[dict[str, Any]], bool]:
        """Popular items under the rules (no model needed); whether the category held any."""
        catalog = self.registry.catalog
        space = CatalogSpace(catalog, catalog.table, self.masks)
        allowed = space.mask(rules.filter) if rules.filter is not None else None
        unknown = space.unknown_row()

        def skip(item_id: str, mask: np.ndarray | None = allowed) -> bool:
            if item_id in excluded:
                return True
            if mask is None:
                return False
            row = space.row(item_id)
            return not mask[unknown if row is None else row]

        pool = rules.pool(params.k, self.limits.rules_pool)
        picks = self.popular.top(pool, category=category, skip=skip) if category else []
        in_category = bool(picks)
        if params.category is None and len(picks) < pool:
            taken = {p.item_id for p in picks}
            picks += self.popular.top(pool - len(picks), skip=lambda i: i in taken or skip(i))
        if not picks and not rules.pins:
            return [], in_category

        def rows_of(chosen: Sequence[Pick]) -> tuple[np.ndarray, np.ndarray]:
            ids = [space.row(p.item_id) for p in chosen]
            return (
                np.asarray([unknown if r is None else r for r in ids], dtype=np.int64),
                np.asarray([p.score for p in chosen], dtype=np.float64),
            )

        cand_rows, cand_scores = rows_of(picks)
        by_row = {int(r): p.item_id for r, p in zip(cand_rows.tolist(), picks, strict=True)}
        pools = []
        for missing, promo_filter in promotion_pools_needed(space, rules, cand_rows, params.k):
            extra: list[Pick] = []
            if missing:
                mask = space.mask(promo_filter)
                extra = self.popular.top(missing, category=params.category, skip=_bound(skip, mask))
            p_rows, p_scores = rows_of(extra)
            by_row.update({int(r): p.item_id for r, p in zip(p_rows.tolist(), extra, strict=True)})
            pools.append((p_rows, p_scores))
        ranked = apply_rules(
            space,
            cand_rows,
            cand_scores,
            params.k,
            rules,
            logits=False,
            excluded=excluded,
            blocked=catalog.is_blocked,
            demoted=demoted,
            promoted_pools=pools,
        )
        items = []
        names = {
            row: item_id for row, item_id in ((space.row(i), i) for i, _ in rules.pins) if row is not None
        }
        for row, score, reasons in zip(
            ranked.rows.tolist(), ranked.scores.tolist(), ranked.reasons, strict=True
        ):
            item_id = by_row.get(row) or names.get(row)
            if item_id is None:
                continue
            item: dict[str, Any] = {"item_id": item_id, "score": finite(score)}
            if params.explain:
                item["explanation"] = {"because": [], "rules": reasons}
            items.append(item)
        return items, in_category

    def _similar_query(self, model: ServingModel, row: int) -> np.ndarray:
        """(v/|v|, 0) of an item's vector: ranks by v'.v, not by popularity bias."""
        vector = model.index.vectors(np.asarray([row]))[0]  # [d+1]: (v, b)
        query = np.zeros_like(vector)  # [d+1]
        norm = float(np.linalg.norm(vector[:-1]))
        query[:-1] = vector[:-1] / norm if norm > 0 else vector[:-1]
        return query

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
        epoch = self.epoch()
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
        body.update(params.labels)
        if params.rules is not None:
            if model is not None and row is not None:
                query = self._similar_query(model, row)
                items = self._ruled_search(model, query, [], excluded, params, params.rules, ())
                if items:
                    body.update(strategy=SIMILAR, items=items)
            if "items" not in body:
                category = params.category or next(iter(self.registry.catalog.categories(item_id)), None)
                items, picked = self._ruled_popular(params, params.rules, excluded, category, ())
                body.update(strategy=POPULAR_CATEGORY if category and picked else POPULAR, items=items)
        elif model is not None and row is not None:
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
                strategy=POPULAR_CATEGORY if category else POPULAR,
                items=_popular_items(picks, False),
                **_category_note(params.category, picks),
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
                **_category_note(category, picks),
            }
        )


def _bound(skip: Callable[[str, np.ndarray | None], bool], mask: np.ndarray) -> Callable[[str], bool]:
    """`skip` with its mask fixed."""
    return lambda item_id: skip(item_id, mask)


def _popular_items(picks: list[Pick], explain: bool) -> list[dict[str, Any]]:
    if explain:
        return [
            {"item_id": p.item_id, "score": round(p.score, 6), "explanation": {"because": []}} for p in picks
        ]
    return [{"item_id": p.item_id, "score": round(p.score, 6)} for p in picks]


def _category_note(category: str | None, picks: list[Pick]) -> dict[str, str]:
    """A hint when a requested category filters everything out (an unknown or misspelt one, usually)."""
    if category is None or picks:
        return {}
    return {
        "note": f"no recommendable item has category {category!r}: categories match exactly (case included), "
        "and only items that are available and have events count"
    }
