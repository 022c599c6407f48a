"""Cost of business rules on the serving path (issue 12): uncached answers with rules against plain uncached
answers, in the same process and run, at several catalog sizes; and cached answers with rules stay hits.

Per catalog size (synthetic model of clustered vectors, d = 64, flat index up to RECO_INDEX_EXACT_MAX_ITEMS;
every item with a price, 1-3 tags, a category and a brand attribute), 500 active users whose latest events
are in the cache (as in bench_serve's `active` cell: an uncached answer that reads no store), each answer
computed by `Recommender.compute_user` (the whole server-side miss: user tower, FAISS search, rules,
JSON) for these configurations, interleaved user by user so that each sees the same machine state:
  - `plain`: no rules;
  - `filter`: `price < 60 and attributes.brand != "b3"` (about half the catalog);
  - `rules`: that filter, two boosts, a 20% promotion and diversity (at most 3 per category) — the issue's cell;
  - `rules+mmr`: the same with maximal marginal relevance (lambda 0.7) after diversity.
The first request of each expression evaluates its mask over the catalog (reported apart as `first mask`);
later ones reuse it. Then the cached path: GET through the app (TestClient) with `placement=` twice: the
second must be a hit (`X-Cache: hit`), timed against a plain hit.

    .venv/bin/python scripts/bench_rules.py --items 10000,100000,1000000   # writes var/bench/rules.{json,md}
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from app.api.app import create_app  # noqa: E402
from app.api.state import AppState  # noqa: E402
from app.cache import keys as cache_keys  # noqa: E402
from app.cache.base import UserLookup  # noqa: E402
from app.records import ItemRecord  # noqa: E402
from app.rules.spec import PlacementIn, compile_placement  # noqa: E402
from app.serving.recommender import RecParams  # noqa: E402
from app.settings import Settings  # noqa: E402
from scripts.bench_serve import TYPES, register, synthetic_version  # noqa: E402
from scripts.benchdocs import update_section  # noqa: E402

FILTER = 'price < 60 and attributes.brand != "b3"'
RULES = {
    "k": 10,
    "filter": FILTER,
    "boosts": [
        {"filter": '"sale" in tags', "weight": 2.0},
        {"filter": "price < 20", "weight": 0.5, "mode": "add"},
    ],
    "promotions": [{"filter": '"house" in tags', "share": 0.2}],
    "diversity": {"field": "categories", "max_per_list": 3},
}
KEY = "bench-admin-key-0000000000000"


def catalog(n: int, seed: int = 0) -> list[ItemRecord]:
    rng = np.random.default_rng(seed)
    prices = np.round(rng.uniform(1, 120, n), 2)
    cats = rng.integers(0, 40, n)
    brands = rng.integers(0, 8, n)
    tag_pool = ["sale", "house", "new", "eco", "gift", "kids"]
    tags = rng.integers(0, len(tag_pool), (n, 3))
    n_tags = rng.integers(1, 4, n)
    return [
        ItemRecord(
            f"i{j}",
            categories=(f"c{cats[j]}",),
            tags=tuple(dict.fromkeys(tag_pool[t] for t in tags[j, : n_tags[j]])),
            price=float(prices[j]),
            attributes={"brand": f"b{brands[j]}"},
        )
        for j in range(n)
    ]


def looked_for(user: int, n_items: int, rng: np.random.Generator) -> UserLookup:
    start = int(rng.integers(n_items))
    entries = [
        cache_keys.history_entry(
            1_700_000_000_000_000 + j, TYPES[j % len(TYPES)], f"i{(start + j * 7) % n_items}"
        )
        for j in range(30)
    ][::-1]  # newest first
    return UserLookup(generation=1, epoch=0, answer=None, history=[*entries, b""])


def bench_size(n: int, users: int, rounds: int, profile: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{tmp}/reco.db",
            cache_url=None,
            artifact_dir=Path(tmp) / "artifacts",
            api_keys=[f"{KEY}:admin"],  # type: ignore[arg-type]
            model_poll_seconds=0,
            catalog_poll_seconds=0,
            popular_poll_seconds=0,
            placement_poll_seconds=0,
            index_exact_max_items=200_000,
        )
        synthetic_version(n, settings.artifact_dir, "bench")
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {KEY}"}) as client:
            state: AppState = client.app.state.reco  # type: ignore[attr-defined]
            register(settings, "bench")
            state.registry.refresh_now()
            started = time.perf_counter()
            records = catalog(n)
            with state.registry._write_lock:  # what sync_catalog does with rows read from the store
                changes = state.registry.catalog.apply(records)
                assert state.registry.current is not None
                state.registry.current = state.registry.current.with_items(
                    changes, state.registry.catalog.row_of
                )
            catalog_s = time.perf_counter() - started
            model = state.registry.current
            recommender = state.recommender
            rules = compile_placement(PlacementIn.model_validate(RULES))
            mmr = compile_placement(
                PlacementIn.model_validate({**RULES, "diversity": {**RULES["diversity"], "mmr_lambda": 0.7}})
            )
            filtered = compile_placement(PlacementIn.model_validate({"k": 10, "filter": FILTER}))
            configs = {
                "plain": RecParams(k=10),
                "filter": RecParams(k=10, rules=filtered),
                "rules": RecParams(k=10, rules=rules),
                "rules+mmr": RecParams(k=10, rules=mmr),
            }
            rng = np.random.default_rng(1)
            lookups = [looked_for(u, n, rng) for u in range(users)]
            first_mask: dict[str, float] = {}
            for name, params in configs.items():  # the first answer evaluates each expression's mask
                t0 = time.perf_counter()
                recommender.compute_user("warm", params, lookups[0])
                first_mask[name] = (time.perf_counter() - t0) * 1e3
            times: dict[str, list[float]] = {name: [] for name in configs}
            lengths: dict[str, list[int]] = {name: [] for name in configs}
            for _ in range(rounds):
                for u, looked in enumerate(lookups):
                    for name, params in configs.items():
                        t0 = time.perf_counter()
                        answer = recommender.compute_user(f"u{u}", params, looked)
                        times[name].append((time.perf_counter() - t0) * 1e6)
                        lengths[name].append(len(json.loads(answer.body)["items"]))
            profile_text = ""
            if profile:
                prof = cProfile.Profile()
                prof.enable()
                for u, looked in enumerate(lookups[:200]):
                    recommender.compute_user(f"u{u}", configs["rules"], looked)
                prof.disable()
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
                profile_text = out.getvalue()
            # The cached path: a placement's answer is a hit the second time, and costs what a plain hit does.
            assert client.put("/v1/admin/placements/bench", json=RULES).status_code in (200, 201)
            user = "u1"
            state.cache.record_events({user: [e for e in reversed(lookups[1].history or []) if e]}, 200, 3600)
            hits: dict[str, list[float]] = {"plain": [], "placement": []}
            states: dict[str, list[str]] = {"plain": [], "placement": []}
            for params in ({"k": 10}, {"placement": "bench"}):
                client.get(f"/v1/users/{user}/recommendations", params=params)  # the miss that stores it
            for _ in range(300):
                for name, params in (("plain", {"k": 10}), ("placement", {"placement": "bench"})):
                    t0 = time.perf_counter()
                    r = client.get(f"/v1/users/{user}/recommendations", params=params)
                    hits[name].append((time.perf_counter() - t0) * 1e6)
                    states[name].append(r.headers["X-Cache"])
            flat_bytes = model.n_rows * model.index.dim * 4
    median = {name: statistics.median(v) for name, v in times.items()}
    return {
        "items": n,
        "index": model.index.kind,
        "catalog_apply_s": round(catalog_s, 2),
        "median_us": {k: round(v, 1) for k, v in median.items()},
        "p90_us": {k: round(float(np.percentile(v, 90)), 1) for k, v in times.items()},
        "ratio_to_plain": {k: round(v / median["plain"], 3) for k, v in median.items()},
        "first_answer_ms": {k: round(v, 1) for k, v in first_mask.items()},
        "min_items": {k: min(v) for k, v in lengths.items()},
        "hit_us": {k: round(statistics.median(v), 1) for k, v in hits.items()},
        "hit_ratio": round(statistics.median(hits["placement"]) / statistics.median(hits["plain"]), 3),
        "all_hits": {k: all(s == "hit" for s in v) for k, v in states.items()},
        "scan_bytes": flat_bytes,
        "profile": profile_text,
    }


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        "## Business rules on the serving path (issue 12)",
        "",
        f"`{command}` (in-process, one thread; `Recommender.compute_user` per answer: the whole server-side",
        "uncached answer of an active user whose latest events are in the cache; configurations interleaved",
        "user by user in the same run).",
        "",
        "| items | index | plain µs | filter µs | rules µs | rules+mmr µs | filter / plain | rules / plain "
        "| rules+mmr / plain | first answer of an expression (ms) | cached hit: placement / plain |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m, q = r["median_us"], r["ratio_to_plain"]
        lines.append(
            f"| {r['items']:,} | {r['index']} | {m['plain']:.0f} | {m['filter']:.0f} | {m['rules']:.0f} "
            f"| {m['rules+mmr']:.0f} | {q['filter']:.2f} | {q['rules']:.2f} | {q['rules+mmr']:.2f} "
            f"| {r['first_answer_ms']['rules']:.0f} | {r['hit_ratio']:.2f} ({'all hits' if all(r['all_hits'].values()) else 'MISSES'}) |"
        )
    lines += [
        "",
        "`rules` = a filter (`"
        + FILTER
        + "`), two boosts, a 20% promotion and diversity (≤ 3 per category);",
        "every answer held its k = 10 items. The first answer with a new expression evaluates its mask over the",
        "whole catalog (numpy, per catalog revision) and gathers it onto the index rows (per model snapshot);",
        "later answers reuse both. The flat scan reads items x 65 x 4 bytes per query "
        + ", ".join(f"({r['scan_bytes'] / 1e6:.1f} MB at {r['items']:,})" for r in results)
        + ".",
        "",
    ]
    overhead = ", ".join(
        f"{(r['median_us']['rules'] - r['median_us']['plain']) / 1e3:.2f} ms at {r['items']:,}"
        for r in results
    )
    first = ", ".join(f"{r['first_answer_ms']['rules']:.1f} ms at {r['items']:,}" for r in results)
    lines += [
        "Where the time goes and how it grows: the rules add a near-constant amount per answer ("
        + overhead
        + "):",
        "they work on a fixed pool (`RECO_RULES_POOL`, 100 candidates: boosts and promotion masks gathered at the",
        "pool's rows, the greedy diversity walk, the JSON of 10 items), not on the catalog. What grows with the",
        "catalog is the search (flat: items x 260 bytes read per query, bound by one core's memory bandwidth;",
        "IVF above 200k items) and the first answer of each new expression, whose mask is evaluated over every",
        "item ("
        + first
        + ": linear, paid once per expression and catalog revision). With a filter on the flat",
        "index FAISS scores only the allowed rows (the bitmap selector), which is why `filter` can cost less than",
        "`plain`; on IVF the selector is checked per probed row and the over-fetch shortcut of the plain path",
        "is not available, hence the larger ratio at 1M.",
        "",
    ]
    prof = next((r["profile"] for r in results if r["items"] == 100_000 and r["profile"]), "")
    if prof:
        lines += ["Profile of 200 `rules` answers at 100,000 items (cProfile, by own time):", "", "```"]
        lines += [ln for ln in prof.strip().splitlines() if ln.strip()][:22]
        lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", default="10000,100000,1000000")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    results = []
    for n in (int(x) for x in args.items.split(",")):
        result = bench_size(n, args.users, args.rounds, profile=n == 100_000)
        print(json.dumps({k: v for k, v in result.items() if k != "profile"}), flush=True)
        results.append(result)
    out = ROOT / "var" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rules.json").write_text(json.dumps(results, indent=2))
    command = f".venv/bin/python scripts/bench_rules.py --items {args.items} --users {args.users} --rounds {args.rounds}"
    text = markdown(results, command)
    (out / "rules.md").write_text(text)
    if not args.no_docs:
        update_section(
            ROOT / "docs" / "BENCHMARKS.md", "## Business rules on the serving path (issue 12)", text
        )
    print(text)


if __name__ == "__main__":
    main()
