"""Benchmark 3: `check_quota` per second, from the Redis mirror vs from the database.

    python benchmarks/bench_quota.py                     # Redis at redis://127.0.0.1:6379/13
    python benchmarks/bench_quota.py --redis-url redis://127.0.0.1:6379/13 --checks 20000
    MONGO_URL=mongodb://127.0.0.1:27017 python benchmarks/bench_quota.py   # real MongoDB too

Seeds one quota decision per org (1,000 orgs, some with limits) with `Quota.decide`, which
also mirrors them into Redis, then times `chores.check_quota(db, org, estimated_tokens, now,
settings=...)` round-robin over the orgs, one call after another from one client:

- uncached: `Settings(redis_url=None)`, one `find_one` on `billing_quota` per check. On
  mongomock this is an in-process dictionary lookup, not a network round trip: the number is
  an upper bound of what a real server gives (set MONGO_URL to measure one);
- cached: `Settings(redis_url=...)`, one Redis GET per check (every key is a hit);
- mirror empty: the same, right after the Redis database was flushed (a Redis restarted):
  each check misses, then reads the database (a check never fills the mirror, the next
  run's decisions do: `Quota.check`);
- and, for scale, a bare `redis.get` of the same keys.

Each path's round trips per check are counted, not timed: MongoDB's with the counting
wrapper (`_counting.CountingDatabase`, on mongomock), Redis's from the server's own
`INFO commandstats`.

Only the Redis database given (default 13) is flushed, before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from _counting import CountingDatabase
from _workload import NOW, at_least, machine, org_names, write_json
from rich.console import Console
from rich.table import Table

from chores import Settings, check_quota, connect, ensure_indexes
from chores.core.db import Collections
from chores.quota.decisions import Quota

ORGS = 1000


def seed(db: Any, settings: Settings) -> None:
    orgs = org_names(ORGS)
    plans = [
        {"_id": org, "token_limit": 1_000_000 * (n % 7 + 1), "spend_limit_micros": 50_000_000}
        for n, org in enumerate(orgs)
        if n % 3 == 0
    ]
    db[settings.collection("plans")].insert_many(plans)
    seed_decisions(db, settings)


def seed_decisions(db: Any, settings: Settings) -> None:
    """Every org's decision, as a run writes and mirrors them."""
    Quota(Collections.of(db, settings), settings).decide(org_names(ORGS), NOW)


def redis_commands(raw: redis.Redis) -> int:
    """Commands the Redis server has run (its `INFO commandstats`), the INFO calls aside."""
    stats = raw.info("commandstats")
    return sum(s["calls"] for name, s in stats.items() if name != "cmdstat_info")


def round_trips(check: Callable[[Any, str], Any], db: Any, raw: redis.Redis) -> dict[str, float]:
    """MongoDB and Redis round trips of one `check(db, org)`, averaged over every org."""
    counting = CountingDatabase(db)
    before = redis_commands(raw)
    for org in org_names(ORGS):
        check(counting, org)
    redis_calls = redis_commands(raw) - before
    return {
        "mongo_round_trips": counting.counts.total_round_trips() / ORGS,
        "redis_round_trips": redis_calls / ORGS,
    }


def timed(label: str, fn: Callable[[str], Any], checks: int) -> dict[str, Any]:
    orgs = org_names(ORGS)
    latencies = []
    clock = time.perf_counter
    started = clock()
    for n in range(checks):
        t0 = clock()
        fn(orgs[n % ORGS])
        latencies.append(clock() - t0)
    seconds = clock() - started
    latencies.sort()
    return {
        "label": label,
        "checks": checks,
        "seconds": seconds,
        "per_second": checks / seconds,
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--checks", type=at_least(1), default=20_000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    out = Console(width=150)

    raw = redis.Redis.from_url(args.redis_url)
    raw.ping()
    raw.flushdb()  # only the benchmark's database

    # Decisions are mirrored only for the database MONGO_URL names (`cache.is_named_store`).
    in_process = Settings(mongo_url="mongomock://bench", redis_url=None)
    backends: list[tuple[str, Any, Settings]] = [("mongomock", connect(in_process), in_process)]
    real_url = os.environ.get("MONGO_URL")
    if real_url and not real_url.startswith("mongomock://"):
        import pymongo

        client: Any = pymongo.MongoClient(real_url, tz_aware=True)
        client.drop_database("bench_quota")
        server = Settings(mongo_url=real_url, mongo_db="bench_quota", redis_url=None)
        backends.append(("MongoDB", client["bench_quota"], server))

    now = NOW + timedelta(minutes=1)
    rows: list[dict[str, Any]] = []
    try:
        for backend, db, uncached in backends:
            cached = uncached.model_copy(update={"redis_url": args.redis_url})
            ensure_indexes(db, cached)
            seed(db, cached)  # writes the decisions and mirrors them into Redis
            a = check_quota(db, "org-0000", 5_000, now, settings=uncached)
            b = check_quota(db, "org-0000", 5_000, now, settings=cached)
            assert a == b, (a, b)

            def check_in(db: Any, org: str, settings: Settings) -> Any:
                return check_quota(db, org, 5_000, now, settings=settings)

            def from_db(org: str, db: Any = db, settings: Settings = uncached) -> Any:
                return check_in(db, org, settings)

            def from_cache(org: str, db: Any = db, settings: Settings = cached) -> Any:
                return check_in(db, org, settings)

            def counted(
                settings: Settings, db: Any = db, backend: str = backend
            ) -> dict[str, float]:
                if backend != "mongomock":  # counted on mongomock only
                    return {}
                return round_trips(lambda d, org: check_in(d, org, settings), db, raw)

            rows.append(timed(f"uncached ({backend} find_one)", from_db, args.checks))
            rows[-1].update(counted(uncached))
            rows.append(timed(f"cached (Redis GET, {backend} behind)", from_cache, args.checks))
            rows[-1].update(counted(cached))
            raw.flushdb()  # a Redis restarted: until the next run decides, checks miss
            rows.append(timed(f"mirror empty (GET misses, {backend} find_one)", from_cache, ORGS))
            rows[-1].update(counted(cached))
            assert next(raw.scan_iter("billing:quota:*"), None) is None  # a check fills nothing
            seed_decisions(db, cached)  # the next run's decisions fill it
        key = next(raw.scan_iter("billing:quota:*"))
        assert raw.get(key) is not None
        rows.append(timed("bare redis-py GET (for scale)", lambda org: raw.get(key), args.checks))
        rows[-1].update({"mongo_round_trips": 0, "redis_round_trips": 1})
    finally:
        raw.flushdb()

    base = rows[0]["per_second"]
    table = Table(title=f"check_quota, one client, {ORGS:,} orgs, sequential calls")
    columns = ("path", "checks", "checks/s", "p50 (µs)", "p99 (µs)", "vs uncached")
    for column in (*columns, "MongoDB / Redis round trips per check"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for row in rows:
        trips = (
            f"{row['mongo_round_trips']:g} / {row['redis_round_trips']:g}"
            if "mongo_round_trips" in row
            else "–"
        )
        table.add_row(
            row["label"],
            f"{row['checks']:,}",
            f"{row['per_second']:,.0f}",
            f"{row['p50_us']:.0f}",
            f"{row['p99_us']:.0f}",
            f"{row['per_second'] / base:.2f}x",
            trips,
        )
    out.print(table)
    out.print(
        "mongomock answers find_one in-process (no socket, no BSON): the uncached figure is not "
        "a database round trip. A real server adds one network round trip per check.",
        highlight=False,
    )
    out.print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    write_json(args.json, {"benchmark": "quota", "machine": machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
