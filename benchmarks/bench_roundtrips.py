"""Benchmark 2: database round trips and documents read by `run_chore`, full and incremental.

    python benchmarks/bench_roundtrips.py                       # N = 10k and 50k, mongomock
    python benchmarks/bench_roundtrips.py --sizes 10000,100000  # over an hour on mongomock
    MONGO_URL=mongodb://127.0.0.1:27017 python benchmarks/bench_roundtrips.py   # real server

For each N: seed N AI runner documents (with their non-AI children and findings, from the
realistic corpus generator, over a fixed set of orgs), run `run_chore` over every org with
`Settings(batch_size=1000)`, then change k documents (counters grown, `last_updated_db`
stamped just now) and run again 5 minutes later. Prints, per run, the round trips (on a real
server: every command a pymongo `CommandListener` saw; on mongomock: the commands pymongo
would send, modelled in `_counting.py`) and the documents read from the source collections.

On a real server the database `bench_roundtrips` is dropped and recreated.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import mongomock
from _counting import CountingDatabase, Counts, MongoCounter
from _workload import NOW, START, machine, org_names, write_json
from rich.console import Console
from rich.table import Table

from chores import Settings, ensure_indexes, run_chore
from chores._corpus import generate_corpus
from pricing import load_registry

BATCH = 1000
ORGS = 50
AI_DOCS_PER_RUN = 1.79  # the corpus's AI documents per top-level run (subagents included)
PER_ORG = frozenset({"billing_invoices.replace_one", "billing_quota.replace_one"})


def seed(db: Any, n: int, *, seed_value: int = 7) -> dict[str, int]:
    """About `n` AI runner documents spread over ORGS orgs; returns what was inserted."""
    runs_per_org = max(1, round(n / AI_DOCS_PER_RUN / ORGS))
    corpus = generate_corpus(
        seed=seed_value, orgs=org_names(ORGS), runs_per_org=runs_per_org, start=START, days=28
    )
    ai = [t for t in corpus.tasks if t.get("name") == "ai"]
    running = [t for t in ai if t.get("status") == "RUNNING" or "end_time" not in t]
    for start in range(0, len(corpus.tasks), 10_000):
        db["tasks"].insert_many(corpus.tasks[start : start + 10_000])
    for start in range(0, len(corpus.findings), 10_000):
        db["findings"].insert_many(corpus.findings[start : start + 10_000])
    return {
        "ai_docs": len(ai),
        "tasks": len(corpus.tasks),
        "findings": len(corpus.findings),
        "running": len(running),
    }


def change(db: Any, k: int, stamp: float) -> list[Any]:
    """Grow the counters of k finished AI runners, as a late write of the platform would."""
    candidates = db["tasks"].find(
        {"name": "ai", "status": "SUCCESS", "context.subagent": {"$ne": True}},
        {"_id": 1, "context.ai_tokens": 1, "context.ai_prompt_tokens": 1},
    )
    docs = [
        d
        for d in candidates
        if all(type(d["context"].get(f)) is int for f in ("ai_tokens", "ai_prompt_tokens"))
    ][:k]
    for doc in docs:
        db["tasks"].update_one(
            {"_id": doc["_id"]},
            {
                "$inc": {"context.ai_tokens": 1000, "context.ai_prompt_tokens": 1000},
                "$set": {"last_updated_db": stamp},
            },
        )
    return [d["_id"] for d in docs]


def measure(db: Any, counts: Counts, settings: Settings, now: Any, registry: Any) -> dict[str, Any]:
    counts.reset()
    started = time.perf_counter()
    report = run_chore(db, now=now, registry=registry, settings=settings)
    seconds = time.perf_counter() - started
    per_collection = counts.by_collection()
    return {
        "seconds": seconds,
        "docs_read_report": report.docs_read,
        "tasks_docs_read": counts.docs.get("tasks", 0),
        "findings_docs_read": counts.docs.get("findings", 0),
        "billing_docs_read": sum(v for c, v in counts.docs.items() if c.startswith("billing_")),
        "round_trips": counts.total_round_trips(),
        "reads": counts.reads(),
        "writes": counts.writes(),
        "source_round_trips": per_collection.get("tasks", 0) + per_collection.get("findings", 0),
        # one write per org (quota decision) or per rebuilt invoice: grows with orgs, not N
        "per_org_round_trips": sum(
            n for (c, m), n in counts.round_trips.items() if f"{c}.{m}" in PER_ORG
        ),
        "per_collection": per_collection,
        "per_call": {f"{c}.{m}": n for (c, m), n in sorted(counts.round_trips.items())},
        "entries_written": report.entries_written,
        "invoices": len(report.invoices),
        "decisions": len(report.decisions),
    }


def open_database(real_url: str | None) -> tuple[Any, Counts, str]:
    if real_url:
        import pymongo

        listener = MongoCounter()
        client: Any = pymongo.MongoClient(real_url, event_listeners=[listener], tz_aware=True)
        client.drop_database("bench_roundtrips")
        return client["bench_roundtrips"], listener.counts, "MongoDB server (CommandListener)"
    counting = CountingDatabase(mongomock.MongoClient(tz_aware=True)["main"])
    return counting, counting.counts, "mongomock (round trips modelled)"


def run_size(n: int, k: int, real_url: str | None, registry: Any) -> dict[str, Any]:
    db, counts, backend = open_database(real_url)
    settings = Settings(mongo_url="mongomock://bench", batch_size=BATCH, redis_url=None)
    t0 = time.perf_counter()
    seeded = seed(db, n)
    ensure_indexes(db, settings, source=True)
    seeding = time.perf_counter() - t0
    full = measure(db, counts, settings, NOW, registry)
    later = NOW + timedelta(minutes=5)
    changed = change(db, k, stamp=(later - timedelta(seconds=30)).timestamp())
    pending = db[settings.collection("pending")].count_documents({})
    incremental = measure(db, counts, settings, later, registry)
    idle = measure(db, counts, settings, later + timedelta(minutes=5), registry)
    return {
        "n": n,
        "backend": backend,
        "seeded": seeded,
        "seeding_seconds": seeding,
        "k": len(changed),
        "pending_before_rerun": pending,
        "full": full,
        "incremental": incremental,
        "idle": idle,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="10000,50000",
        help="comma-separated N values (100000: over an hour on mongomock; fine with MONGO_URL)",
    )
    parser.add_argument("--changed", type=int, default=100, help="k documents changed")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    out = Console(width=150)
    real_url = os.environ.get("MONGO_URL")
    if real_url and real_url.startswith("mongomock://"):
        real_url = None
    registry = load_registry()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        out.print(f"N={n:,}: seeding and running...", highlight=False)
        result = run_size(n, args.changed, real_url, registry)
        results.append(result)
        out.print(
            f"  seeded {result['seeded']['ai_docs']:,} AI docs ({result['seeded']['tasks']:,} "
            f"tasks, {result['seeded']['findings']:,} findings) in "
            f"{result['seeding_seconds']:.0f}s; full run {result['full']['seconds']:.0f}s, "
            f"rerun {result['incremental']['seconds']:.1f}s",
            highlight=False,
        )

    backend = results[0]["backend"]
    table = Table(title=f"run_chore round trips and documents read ({backend}, batch {BATCH})")
    for column in (
        "run",
        "AI docs (N)",
        "round trips",
        "of which per org",
        "batched",
        "batched per 1,000 docs",
        "source (tasks+findings)",
        "tasks docs read",
        "findings docs read",
        "time (s)",
    ):
        table.add_column(column, justify="left" if column == "run" else "right")
    for r in results:
        n = r["seeded"]["ai_docs"]
        for label, key in (
            ("full", "full"),
            (f"rerun, k={r['k']} changed", "incremental"),
            ("rerun, nothing changed", "idle"),
        ):
            m = r[key]
            batched = m["round_trips"] - m["per_org_round_trips"]
            table.add_row(
                label,
                f"{n:,}",
                f"{m['round_trips']:,}",
                f"{m['per_org_round_trips']:,}",
                f"{batched:,}",
                f"{batched / n * 1000:.2f}" if key == "full" else "",
                f"{m['source_round_trips']:,}",
                f"{m['tasks_docs_read']:,}",
                f"{m['findings_docs_read']:,}",
                f"{m['seconds']:.1f}",
            )
    out.print(table)

    if len(results) >= 2:
        a, b = results[0], results[-1]
        growth = Table(
            title=f"Growth from N={a['seeded']['ai_docs']:,} to {b['seeded']['ai_docs']:,}"
        )
        growth.add_column("figure")
        growth.add_column("ratio", justify="right")

        def ratio(x: float, y: float) -> str:
            return f"{x / y:.2f}" if y else "-"

        def batched(r: dict[str, Any], key: str) -> int:
            return int(r[key]["round_trips"] - r[key]["per_org_round_trips"])

        growth.add_row("N", ratio(b["seeded"]["ai_docs"], a["seeded"]["ai_docs"]))
        growth.add_row(
            "full run: all round trips", ratio(b["full"]["round_trips"], a["full"]["round_trips"])
        )
        growth.add_row(
            "full run: batched round trips", ratio(batched(b, "full"), batched(a, "full"))
        )
        growth.add_row(
            "full run: source round trips",
            ratio(b["full"]["source_round_trips"], a["full"]["source_round_trips"]),
        )
        growth.add_row(
            "full run: tasks docs read",
            ratio(b["full"]["tasks_docs_read"], a["full"]["tasks_docs_read"]),
        )
        growth.add_row(
            "rerun after k changes: tasks docs read",
            ratio(b["incremental"]["tasks_docs_read"], a["incremental"]["tasks_docs_read"]),
        )
        growth.add_row(
            "pending (running) runners",
            ratio(b["pending_before_rerun"], a["pending_before_rerun"]),
        )
        out.print(growth)

    detail = Table(title="Where the round trips go (largest N)")
    detail.add_column("collection.command")
    detail.add_column("full", justify="right")
    detail.add_column("rerun", justify="right")
    detail.add_column("idle rerun", justify="right")
    last = results[-1]
    calls: Counter[str] = Counter()
    for key in ("full", "incremental", "idle"):
        calls.update(last[key]["per_call"].keys())
    for name in sorted(calls):
        detail.add_row(
            name,
            *(str(last[key]["per_call"].get(name, 0)) for key in ("full", "incremental", "idle")),
        )
    out.print(detail)
    for r in results:
        out.print(
            f"N={r['seeded']['ai_docs']:,}: rerun read {r['incremental']['tasks_docs_read']:,} "
            f"task docs = k={r['k']} changed + {r['pending_before_rerun']:,} pending "
            f"(running or waiting for a spawn finding) + "
            f"{r['incremental']['tasks_docs_read'] - r['k'] - r['pending_before_rerun']:,} "
            f"in the lookback window; idle rerun read {r['idle']['tasks_docs_read']:,}",
            highlight=False,
        )
    out.print(f"machine: {machine()}")
    write_json(args.json, {"benchmark": "roundtrips", "machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
