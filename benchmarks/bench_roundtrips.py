"""Benchmark 2: what a rerun costs the database after k changed documents, at N = 10k to 1M.

    python benchmarks/bench_roundtrips.py                              # N = 10k, 100k; mongomock
    python benchmarks/bench_roundtrips.py --sizes 10000,100000,1000000 # 1M: ~1 h on mongomock
    MONGO_URL=mongodb://127.0.0.1:27017 python benchmarks/bench_roundtrips.py   # real server

For each N, a database holding N AI runner documents already metered is built in a way that
scales (a full run of 1M documents on mongomock would take days):

1. *A realistic base*: `BASE` AI runner documents (with their non-AI children and spawn
   findings, from the corpus generator, over `ORGS` orgs) metered by a full `run_chore`. Its
   runners still running (the pending set the rerun re-reads) are the same at every N: a
   deployment has the runners running at that moment, not a share of its history.
2. *Clones, up to N*: finished top-level runners of the base, stamped a day before the
   run's cursor (outside any lookback window), are copied under new ids together with
   their ledger entries (same tokens, same days, folded like their template's), and each
   draft's stored sums (`usage_groups`, runs, entries, lines) are brought up to what a full
   rebuild of its ledger gives (`Invoices.check_drafts` says so up to `--check-up-to`).
   Bulk inserts, no run. Clones are AI runners only (no non-AI children, no findings).

Then k finished runners change (counters grown, `last_updated_db` stamped just now) and
`run_chore` runs 5 minutes later (*the rerun*), then once more with nothing changed (*idle*),
then a day later, twice, nothing changed (*day later*, the second: the runners still running are
idle by then, re-read once an hour). Last, up to `--late-up-to` (10,000; any N on a real
server), October is finalized (untimed) and the same k runners grow again: their usage is
late, swept out of the final October into November (*late*: the sweep finds a final
period's stragglers by index, not by reading its month; tests/unit/test_growth.py checks
that it stays flat from N to 4N).
Each is counted: round trips (a real server: every command a pymongo `CommandListener` saw;
mongomock: the commands pymongo would send), documents returned, documents examined (mongomock:
modelled from the query shapes and the indexes present, `_counting.py` says how), and the
ledger entries the draft builds read (`Ledger.unfolded` + `Ledger.runners_held`).

On a real server the database `bench_roundtrips` is dropped and recreated.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
from _counting import BuildReads, CountingDatabase, Counts, MongoCounter
from _workload import NOW, START, at_least, machine, org_names, sizes, write_json
from bson import ObjectId
from rich.console import Console
from rich.table import Table

from chores import Settings, ensure_indexes, finalize_invoices, run_chore
from chores.billing.drafts import DraftSums, has_usage
from chores.billing.invoice import build_invoice
from chores.core import mongomock_compat
from chores.demo.corpus import generate_corpus
from pricing import load_registry

BATCH = 1000
ORGS = 50
BASE = 5_000  # AI runner documents of the realistic base, metered by a full run
AI_DOCS_PER_RUN = 1.79  # the corpus's AI documents per top-level run (subagents included)
INSERT_BATCH = 10_000


def seed(db: Any, n: int, *, seed_value: int = 7) -> dict[str, int]:
    """About `n` AI runner documents spread over ORGS orgs; returns what was inserted."""
    runs_per_org = max(1, round(n / AI_DOCS_PER_RUN / ORGS))
    corpus = generate_corpus(
        seed=seed_value, orgs=org_names(ORGS), runs_per_org=runs_per_org, start=START, days=28
    )
    ai = [t for t in corpus.tasks if t.get("name") == "ai"]
    running = [t for t in ai if t.get("status") == "RUNNING" or "end_time" not in t]
    for start in range(0, len(corpus.tasks), INSERT_BATCH):
        db["tasks"].insert_many(corpus.tasks[start : start + INSERT_BATCH])
    for start in range(0, len(corpus.findings), INSERT_BATCH):
        db["findings"].insert_many(corpus.findings[start : start + INSERT_BATCH])
    return {
        "ai_docs": len(ai),
        "tasks": len(corpus.tasks),
        "findings": len(corpus.findings),
        "running": len(running),
    }


def grow(db: Any, settings: Settings, registry: Any, clones: int) -> dict[str, int]:
    """Add `clones` metered runners: copies of finished top-level base runners stamped over a
    day before the run, with copies of their (folded) ledger entries, and the drafts' stored
    sums grown by what the copies add. Returns what was inserted."""
    if clones <= 0:
        return {"clones": 0, "entries": 0}
    ledger = db[settings.collection("ledger")]
    invoices = db[settings.collection("invoices")]
    # Stamped a day before the run's cursor: never in the rerun's lookback window.
    cursor = db[settings.collection("cursors")].find_one({"_id": "*"})
    old = min((NOW - timedelta(days=1)).timestamp(), cursor["stamp"] - 86_400)
    entries_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in ledger.find({}):
        entries_of[entry["runner_id"]].append(entry)
    templates = []
    for task in db["tasks"].find(
        {
            "name": "ai",
            "status": "SUCCESS",
            "end_time": {"$exists": True},
            "last_updated_db": {"$lt": old},
            "context.subagent": {"$ne": True},
        }
    ):
        entries = entries_of.get(str(task["_id"]), [])
        clean = all(e["fold"] is not None and e["booked"] is None for e in entries)
        if entries and clean and any(has_usage(e) for e in entries):
            templates.append((task, entries))
    assert templates, "no finished, folded runner to clone"
    sums: dict[tuple[str, str], DraftSums] = {}
    for doc in invoices.find({"status": "draft"}):
        sums[(doc["org"], doc["period"])] = DraftSums.of(doc)
    written = 0
    tasks_batch: list[dict[str, Any]] = []
    entries_batch: list[dict[str, Any]] = []
    added: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    runs_added: Counter[tuple[str, str]] = Counter()

    def flush() -> None:
        if tasks_batch:
            db["tasks"].insert_many(tasks_batch)
            ledger.insert_many(entries_batch)
            tasks_batch.clear()
            entries_batch.clear()

    for i in range(clones):
        task, entries = templates[i % len(templates)]
        new_id = ObjectId()
        clone = copy.deepcopy(task)
        clone["_id"] = new_id
        tasks_batch.append(clone)
        pairs = set()
        for entry in entries:
            copied = dict(entry)
            copied["runner_id"] = str(new_id)
            copied["_id"] = f"{new_id}:{entry['seq']}"
            entries_batch.append(copied)
            written += 1
            if has_usage(entry):
                pair = (entry["org"], entry["usage_period"])
                added[pair].append(entry)
                pairs.add(pair)
        for pair in pairs:
            runs_added[pair] += 1
        if len(tasks_batch) >= INSERT_BATCH:
            flush()
    flush()
    for (org, period), entries in added.items():
        held = sums[(org, period)].plus(entries, runs_added[(org, period)])
        doc = invoices.find_one({"_id": f"{org}:{period}"})
        invoice = build_invoice(
            org=org,
            period=period,
            groups=held.usage_groups(),
            runs=held.runs,
            entries=held.entries,
            anomalies_open=bool(doc["needs_review"]),
            registry=registry,
            now=doc["updated_at"],
        )
        fields = invoice.document()
        for kept in ("_id", "updated_at", "needs_review"):
            fields.pop(kept)
        fields["usage_groups"] = held.stored_groups()
        invoices.update_one({"_id": invoice.id}, {"$set": fields})
    return {"clones": clones, "entries": written, "templates": len(templates)}


def change(db: Any, k: int, stamp: float) -> list[Any]:
    """Grow the counters of k finished AI runners, as a late write of the platform would."""
    candidates = db["tasks"].find(
        {"name": "ai", "status": "SUCCESS", "context.subagent": {"$ne": True}},
        {"_id": 1, "context.ai_tokens": 1, "context.ai_prompt_tokens": 1},
    )
    docs = []
    for d in candidates:  # the first k, in natural order: the base's, at every N
        if all(type(d["context"].get(f)) is int for f in ("ai_tokens", "ai_prompt_tokens")):
            docs.append(d)
            if len(docs) == k:
                break
    # One update for the k (mongomock scans the collection for each update it is sent).
    db["tasks"].update_many(
        {"_id": {"$in": [d["_id"] for d in docs]}},
        {
            "$inc": {"context.ai_tokens": 1000, "context.ai_prompt_tokens": 1000},
            "$set": {"last_updated_db": stamp},
        },
    )
    return [d["_id"] for d in docs]


def measure(db: Any, counts: Counts, settings: Settings, now: Any, registry: Any) -> dict[str, Any]:
    counts.reset()
    with BuildReads() as builds:
        started = time.perf_counter()
        report = run_chore(db, now=now, registry=registry, settings=settings)
        seconds = time.perf_counter() - started
    source = ("tasks", "findings")
    return {
        "seconds": seconds,
        "round_trips": counts.total_round_trips(),
        "reads": counts.reads(),
        "writes": counts.writes(),
        "source_round_trips": sum(counts.total_round_trips(c) for c in source),
        "billing_round_trips": counts.total_round_trips("billing_"),
        "source_docs_returned": sum(counts.docs.get(c, 0) for c in source),
        "billing_docs_returned": counts.docs_returned("billing_"),
        "source_docs_examined": sum(counts.examined.get(c, 0) for c in source),
        "billing_docs_examined": counts.docs_examined("billing_"),
        "ledger_docs_examined": counts.examined.get(settings.collection("ledger"), 0),
        "entries_aggregated": builds.entries,
        "entries_folded": builds.unfolded,
        "entries_read_for_runners_held": builds.held,
        "entries_written": report.entries_written,
        "invoices": len(report.invoices),
        "per_call": {f"{c}.{m}": n for (c, m), n in sorted(counts.round_trips.items())},
        "examined_per_collection": dict(counts.examined),
        "returned_per_collection": dict(counts.docs),
    }


def open_database(real_url: str | None) -> tuple[Any, Any, Counts, str]:
    """(the database the runs see, the same without counting, counts, backend)."""
    if real_url:
        import pymongo

        listener = MongoCounter()
        client: Any = pymongo.MongoClient(real_url, event_listeners=[listener], tz_aware=True)
        client.drop_database("bench_roundtrips")
        db = client["bench_roundtrips"]
        return db, db, listener.counts, "MongoDB server (CommandListener)"
    # The chore installs its mongomock shim when it is handed a mongomock database; it is
    # handed the counting wrapper here, so the benchmark installs it, as the tests do.
    mongomock_compat.install()
    raw = mongomock.MongoClient(tz_aware=True)["main"]
    counting = CountingDatabase(raw)
    return counting, raw, counting.counts, "mongomock (round trips and docs examined modelled)"


def run_size(
    n: int,
    k: int,
    real_url: str | None,
    registry: Any,
    check: bool,
    idle_too: bool = True,
    late_too: bool = True,
) -> dict[str, Any]:
    db, raw, counts, backend = open_database(real_url)
    settings = Settings(mongo_url="mongomock://bench", batch_size=BATCH, redis_url=None)
    t0 = time.perf_counter()
    seeded = seed(raw, min(n, BASE))
    ensure_indexes(raw, settings, source=True)
    base_run = measure(db, counts, settings, NOW, registry)
    grown = grow(raw, settings, registry, n - seeded["ai_docs"])
    seeding = time.perf_counter() - t0
    ai_docs = seeded["ai_docs"] + grown["clones"]
    later = NOW + timedelta(minutes=5)
    changed = change(raw, k, stamp=(later - timedelta(seconds=30)).timestamp())
    pending = raw[settings.collection("pending")].count_documents({})
    incremental = measure(db, counts, settings, later, registry)
    idle = (
        measure(db, counts, settings, later + timedelta(minutes=5), registry) if idle_too else None
    )
    # A day later, nothing written since: the runners left running are idle (neither written
    # nor billed for PENDING_IDLE_SECONDS). The first run then reads them and puts them on the
    # hourly re-read; measured is the run after it.
    day_later = None
    if idle_too:
        next_day = later + timedelta(days=1, minutes=10)
        measure(db, counts, settings, next_day, registry)
        day_later = measure(db, counts, settings, next_day + timedelta(minutes=5), registry)
    # October frozen (untimed), then k of its runners grow: their usage is late, swept into
    # November. The sweep finds a final period's stragglers by index, not by its month.
    late = None
    if late_too:  # freezing stamps every entry of the month: O(N^2) on mongomock
        frozen = datetime(2026, 11, 4, 1, tzinfo=UTC)
        finalize_invoices(db, now=frozen, settings=settings)
        after_final = frozen + timedelta(days=1)
        change(raw, k, stamp=(after_final - timedelta(seconds=30)).timestamp())
        late = measure(db, counts, settings, after_final, registry)
    problems: list[str] | None = None
    if check:
        from chores.billing.invoices import Invoices
        from chores.core.db import Collections
        from chores.metering.anomalies import AnomalyLog
        from chores.metering.ledger import Ledger
        from chores.metering.progress import Progress

        collections = Collections.of(raw, settings)
        ledger = Ledger(collections, batch_size=BATCH)
        invoices = Invoices(
            collections, registry, ledger, AnomalyLog(collections), Progress(collections)
        )
        pairs = {(d["org"], d["period"]) for d in raw[settings.collection("invoices")].find({})}
        problems = invoices.check_drafts(pairs)
    return {
        "n": ai_docs,
        "backend": backend,
        "seeded": {**seeded, **grown},
        "seeding_seconds": seeding,
        "tasks_in_collection": raw["tasks"].estimated_document_count(),
        "ledger_entries": raw[settings.collection("ledger")].estimated_document_count(),
        "k": len(changed),
        "pending_before_rerun": pending,
        "base_full_run": base_run,
        "incremental": incremental,
        "idle": idle,
        "day_later": day_later,
        "late": late,
        "check_drafts": problems,
    }


COLUMNS = (
    ("docs examined: source", "source_docs_examined"),
    ("docs examined: billing", "billing_docs_examined"),
    ("round trips", "round_trips"),
    ("of which reads", "reads"),
    ("docs returned: source", "source_docs_returned"),
    ("docs returned: billing", "billing_docs_returned"),
    ("entries aggregated", "entries_aggregated"),
    ("entries written", "entries_written"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=sizes,
        default=[10_000, 100_000],
        help="comma-separated N values (AI runner documents)",
    )
    parser.add_argument("--changed", type=at_least(0), default=100, help="k documents changed")
    parser.add_argument(
        "--check-up-to",
        type=int,
        default=100_000,
        help="compare every draft with a full rebuild (check_drafts) up to this N",
    )
    parser.add_argument(
        "--no-idle", action="store_true", help="skip the rerun with nothing changed"
    )
    parser.add_argument(
        "--late-up-to",
        type=int,
        default=10_000,
        help="measure the rerun after late usage (a month finalized first) up to this N "
        "(finalizing costs O(N^2) on mongomock)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    out = Console(width=160)
    real_url = os.environ.get("MONGO_URL")
    if real_url and real_url.startswith("mongomock://"):
        real_url = None
    registry = load_registry()
    results = []
    for n in args.sizes:
        out.print(f"N={n:,}: seeding...", highlight=False)
        result = run_size(
            n,
            args.changed,
            real_url,
            registry,
            n <= args.check_up_to,
            not args.no_idle,
            late_too=real_url is not None or n <= args.late_up_to,
        )
        results.append(result)
        check = result["check_drafts"]
        out.print(
            f"  {result['n']:,} AI docs ({result['seeded']['ai_docs']:,} metered by a full run"
            f" + {result['seeded']['clones']:,} clones), {result['ledger_entries']:,} ledger "
            f"entries, seeded in {result['seeding_seconds']:.0f}s; rerun "
            f"{result['incremental']['seconds']:.1f}s; drafts vs a full rebuild: "
            + ("not checked" if check is None else "equal" if not check else f"{check[:3]}"),
            highlight=False,
        )
        write_json(args.json, {"benchmark": "roundtrips", "machine": machine(), "results": results})

    backend = results[0]["backend"]
    for key, title in (
        ("incremental", f"rerun after k={args.changed} changed documents"),
        ("idle", "rerun, nothing changed"),
        ("day_later", "a day later, nothing changed (the runners left running re-read hourly)"),
        ("late", f"once October is final, rerun after k={args.changed} of its runners grew"),
    ):
        table = Table(title=f"{title} ({backend}, batch {BATCH})")
        table.add_column("N (AI runner docs)", justify="right")
        table.add_column("pending", justify="right")
        for label, _ in COLUMNS:
            table.add_column(label, justify="right")
        for r in results:
            m = r[key]
            if m is None:
                continue
            table.add_row(
                f"{r['n']:,}",
                f"{r['pending_before_rerun']:,}",
                *(f"{m[field]:,}" for _, field in COLUMNS),
            )
        out.print(table)

    detail = Table(title=f"Rerun after k changes, per command (N = {results[-1]['n']:,})")
    detail.add_column("collection.command")
    detail.add_column("round trips", justify="right")
    last = results[-1]["incremental"]
    for name, trips in last["per_call"].items():
        detail.add_row(name, str(trips))
    out.print(detail)
    examined = Table(title="Docs examined / returned per collection, rerun after k changes")
    examined.add_column("collection")
    for r in results:
        examined.add_column(f"N={r['n']:,}", justify="right")
    collections = sorted(
        {c for r in results for c in r["incremental"]["examined_per_collection"]}
        | {c for r in results for c in r["incremental"]["returned_per_collection"]}
    )
    for c in collections:
        examined.add_row(
            c,
            *(
                f"{r['incremental']['examined_per_collection'].get(c, 0):,} / "
                f"{r['incremental']['returned_per_collection'].get(c, 0):,}"
                for r in results
            ),
        )
    out.print(examined)
    out.print(f"machine: {machine()}")
    write_json(args.json, {"benchmark": "roundtrips", "machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
