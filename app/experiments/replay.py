"""Offline check of a candidate on logged traffic: replay the placement's answers of the last N days that led
to clicks, rank again for each with the user's history as it was then, and report where the clicked items land.

For each logged answer (a recommendation id with impressions on the placement) with at least one attributed
click, three lists are scored against the items clicked: `logged` (the list as shown: positions from the
impressions), `live` (the placement as configured now, with the active model) and `candidate` (the same with
the candidate's change: another model version, strategy or placement's rules). Metrics: HR@k (share of answers
with a clicked item in the top k) and NDCG@k (clicked items as the relevant set). Clicks were collected on the
lists actually shown, so the replay favours them (position bias): a candidate that matches `live` here is
likely at least as good live; a large gain is a reason to run the experiment, not a promise of its result.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from app.db.engine import read
from app.errors import NotFound, ValidationFailed
from app.events.repository import history_before
from app.experiments import attribution
from app.experiments.schemas import ReplayIn

if TYPE_CHECKING:
    from app.api.state import AppState


def _before(conn: Connection, *, user: str, ts: datetime, limit: int) -> list[tuple[str, str]]:
    return history_before(conn, user, ts, limit)


def _dcg(ranks: list[int]) -> float:
    return sum(1.0 / math.log2(r + 1) for r in ranks)


def list_metrics(ranked: list[str], clicked: set[str], k: int) -> tuple[float, float]:
    """(hit, NDCG@k) of one list against the clicked items."""
    ranks = [i + 1 for i, item in enumerate(ranked[:k]) if item in clicked]
    ideal = _dcg(list(range(1, min(len(clicked), k) + 1)))
    return (1.0 if ranks else 0.0), (_dcg(ranks) / ideal if ideal else 0.0)


def replay(state: AppState, body: ReplayIn) -> dict[str, Any]:
    """The replay report (see the module docstring)."""
    detached: list[Any] = []
    try:
        return _replay(state, body, detached)
    finally:
        for model in detached:  # a version loaded for this replay only: its index is released (Milvus)
            state.registry.release(model)


def _replay(state: AppState, body: ReplayIn, detached: list[Any]) -> dict[str, Any]:
    from app.serving.recommender import RecParams  # serving imports stay out of this module's import

    book, registry, recommender = state.book, state.registry, state.recommender
    stored = book.placement(body.placement)
    if stored is None:
        raise NotFound(f"placement {body.placement!r} not found")
    live_rules = stored.rules
    k = body.k or live_rules.k or 10
    cand = body.candidate
    cand_rules = live_rules
    if cand.placement is not None:
        other = book.placement(cand.placement)
        if other is None:
            msg = f"no placement {cand.placement!r}"
            raise ValidationFailed(
                f"body.candidate.placement: {msg}",
                details=[{"loc": ["body", "candidate", "placement"], "msg": msg}],
            )
        cand_rules = other.rules
    if cand.strategy is not None:
        cand_rules = replace(cand_rules, strategy=cand.strategy)
    live_model = registry.current
    cand_model = live_model
    if cand.model_version is not None:
        try:
            cand_model = registry.load_detached(cand.model_version)
            detached.append(cand_model)
        except Exception as exc:  # an unknown or unreadable version: the operator's input
            msg = f"model version {cand.model_version!r} cannot be loaded ({exc})"
            raise ValidationFailed(
                f"body.candidate.model_version: {msg}",
                details=[{"loc": ["body", "candidate", "model_version"], "msg": msg}],
            ) from None
    since = datetime.now(UTC) - timedelta(days=body.days)
    with state.sessions() as session:
        shown = attribution.read_shown(session, placement=body.placement, since=since)
        acted = attribution.read_acted(session, {s.user_id for s in shown}, since, None)
    attributed = attribution.attribute(shown, acted, body.attribution_window_s)
    answers: dict[str, dict[str, Any]] = {}
    for s in shown:
        entry = answers.setdefault(s.recommendation_id, {"user": s.user_id, "ts": s.ts, "items": {}})
        entry["items"][s.item_id] = s.position
        entry["ts"] = min(entry["ts"], s.ts)
    clicked_by: dict[str, set[str]] = defaultdict(set)
    for rid, item in attributed.clicked:
        clicked_by[rid].add(item)
    chosen = sorted((rid for rid in answers if clicked_by.get(rid)), key=lambda r: answers[r]["ts"])
    chosen = chosen[-body.max_answers :]
    limit = state.settings.history_len
    negative = frozenset(state.settings.negative_types)
    totals = {name: [0.0, 0.0] for name in ("logged", "live", "candidate")}
    for rid in chosen:
        entry = answers[rid]
        clicked = clicked_by[rid]
        shown_list = [item for item, _ in sorted(entry["items"].items(), key=lambda p: p[1])]
        user, at = str(entry["user"]), entry["ts"]
        latest = read(state.read_engine, partial(_before, user=user, ts=at, limit=limit))
        refused = {i for i, t in latest if t in negative}
        history = [e for e in latest[: recommender.limits.history_len] if e[1] not in negative][::-1]
        seen = {i for i, _ in latest}
        for name, model, rules, listed in (
            ("logged", None, None, shown_list),
            ("live", live_model, live_rules, None),
            ("candidate", cand_model, cand_rules, None),
        ):
            if listed is None:
                params = RecParams(k=k, rules=rules)
                body_out = recommender._recommend(model, history, seen, params, refused)
                listed = [item["item_id"] for item in body_out["items"]]
            hit, ndcg = list_metrics(listed, clicked, k)
            totals[name][0] += hit
            totals[name][1] += ndcg
    n = len(chosen)
    metrics = {
        name: {f"HR@{k}": round(h / n, 6) if n else 0.0, f"NDCG@{k}": round(g / n, 6) if n else 0.0}
        for name, (h, g) in totals.items()
    }
    return {
        "placement": body.placement,
        "change": cand.model_dump(exclude_none=True),  # what the candidate changes
        "k": k,
        "days": body.days,
        "answers": n,
        "clicks": sum(len(clicked_by[r]) for r in chosen),
        "live_model_version": live_model.version if live_model else None,
        "candidate_model_version": cand_model.version if cand_model else None,
        **metrics,
        "lift": {m: round(metrics["candidate"][m] - metrics["live"][m], 6) for m in (f"HR@{k}", f"NDCG@{k}")},
        "note": "clicks were collected on the lists shown (position bias favours `logged` and `live`); "
        + (
            "too few answers with clicks to tell (fewer than 100)"
            if n < 100
            else "a gain here is worth an A/B test"
        ),
    }
