"""Every token is billed exactly once, and decisions only move forward, under races and
crashes found in review (each docstring tells the defect it once showed).

Concurrency is simulated deterministically: a `DatabaseProxy` hook runs the other run
inline on the raw database at a chosen call, before letting the call proceed. Where an
interleaving cannot be expressed by nesting one run inside another (two finalizes), a
second thread is used, but gated by events so that exactly one thread runs at a time
and the order is fixed.
"""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo.errors import AutoReconnect

from chores import check_quota, connect, finalize_invoices, run_chore

from support.dbproxy import CountingDatabase, DatabaseProxy

NOV_5 = datetime(2026, 11, 5, 12, tzinfo=UTC)  # October is due for finalization (grace 3 days)
NOV_25 = datetime(2026, 11, 25, 12, tzinfo=UTC)


def context(org: str, tokens: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "workspace_id": org,
        "ai_tokens": tokens,
        "ai_prompt_tokens": tokens // 2,
        "ai_completion_tokens": tokens - tokens // 2,
        "ai_model": model,
    }


def finished(org: str, tokens: int, end: datetime, stamp: float) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "name": "ai",
        "status": "SUCCESS",
        "start_time": end - timedelta(minutes=5),
        "end_time": end,
        "last_updated_db": stamp,
        "context": context(org, tokens),
    }


def ledger_tokens(db: Any) -> int:
    return sum(e["tokens"] for e in db.billing_ledger.find())


def invoiced_tokens(db: Any) -> int:
    return sum(line["tokens"] for i in db.billing_invoices.find() for line in i["lines"])


def october_draft_then_one_more_october_run(db: Any, settings: Any, registry: Any) -> None:
    """acme has an October draft (1,000 tokens); a second October run (7,000) is then written."""
    db.tasks.insert_one(finished("acme", 1_000, datetime(2026, 10, 20, tzinfo=UTC), 1.0e9))
    run_chore(db, now=NOV_5, registry=registry, settings=settings)
    db.tasks.insert_one(finished("acme", 7_000, datetime(2026, 10, 25, tzinfo=UTC), 1.0e9 + 60))


# 1 -----------------------------------------------------------------------------------------
def test_finalize_keeps_a_dirty_mark_until_its_entries_land(db, settings, registry):
    """Dirty-mark protocol (`progress` / `Invoices.settle`): a run writes its mark, then
    its ledger entries. A `finalize_invoices` that settles between the two reads the mark,
    rebuilds without the entries (not inserted yet), deletes the mark, and finalizes
    October. The run then inserts its October entry; its own settle finds no mark, so
    the entry is never booked late, never on any invoice. Reruns never repair it (the
    runner has no new delta, so nothing marks the pair again): 7,000 tokens lost forever.
    """
    october_draft_then_one_more_october_run(db, settings, registry)
    state = {"done": False}

    def hook(collection: str, method: str) -> None:
        if (collection, method) == ("billing_ledger", "insert_many") and not state["done"]:
            state["done"] = True  # the daily finalize runs right now
            finalize_invoices(db, now=NOV_5, settings=settings)

    run_chore(DatabaseProxy(db, hook), now=NOV_5, registry=registry, settings=settings)
    for day in (1, 2, 30):  # every recovery production would do
        later = NOV_5 + timedelta(days=day)
        run_chore(db, now=later, registry=registry, settings=settings, full=True)
        finalize_invoices(db, now=later, settings=settings)

    assert ledger_tokens(db) == 8_000
    assert invoiced_tokens(db) == 8_000, "an October entry was billed in the ledger but no invoice"


# 2 -----------------------------------------------------------------------------------------
def test_an_all_orgs_run_beside_an_org_run_keeps_its_mark_draft_and_quota_right(
    db, settings, registry
):
    """Same root cause, two `run_chore`s and no finalize: run A (org-scoped) reads acme's
    runner after its final write (8,000 tokens); run B (every org) read it a moment
    earlier (1,000, already billed: no delta). B settles between A's mark and A's insert,
    so it deletes A's mark; A's 7,000-token entry lands after and A's settle has nothing
    to rebuild. The draft says 1,000 while the ledger holds 8,000, the quota decision
    says `ok` under a 5,000-token limit, and incremental reruns never fix it.
    """
    rid = ObjectId()
    running = {
        "_id": rid,
        "name": "ai",
        "status": "RUNNING",
        "start_time": NOV_25 - timedelta(hours=1),
        "last_updated_db": NOV_25.timestamp() - 600,
        "context": context("acme", 1_000),
    }
    final = {
        **running,
        "status": "SUCCESS",
        "end_time": NOV_25 - timedelta(minutes=1),
        "last_updated_db": NOV_25.timestamp() - 120,
        "context": context("acme", 8_000),
    }
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 5_000})
    db.tasks.insert_one(running)
    run_chore(db, now=NOV_25 - timedelta(minutes=5), registry=registry, settings=settings)
    db.tasks.replace_one({"_id": rid}, final)
    state = {"done": False}

    def hook(collection: str, method: str) -> None:
        if (collection, method) == ("billing_ledger", "insert_many") and not state["done"]:
            state["done"] = True
            db.tasks.replace_one({"_id": rid}, running)  # what B read, a moment before
            run_chore(db, now=NOV_25, registry=registry, settings=settings)
            db.tasks.replace_one({"_id": rid}, final)

    run_chore(DatabaseProxy(db, hook), org="acme", now=NOV_25, registry=registry, settings=settings)
    for minutes in (5, 10):
        run_chore(
            db,
            org="acme",
            now=NOV_25 + timedelta(minutes=minutes),
            registry=registry,
            settings=settings,
        )

    assert ledger_tokens(db) == 8_000
    assert invoiced_tokens(db) == 8_000, "the draft differs from the ledger"
    decision = check_quota(db, "acme", now=NOV_25 + timedelta(minutes=11), settings=settings)
    assert decision.state == "block"


# 3 -----------------------------------------------------------------------------------------
def test_two_concurrent_finalizes_never_book_an_entry_a_final_invoice_omits(db, settings, registry):
    """`Finalizer.finalize`: each finalize claims unbooked entries (`book_period`), then
    builds the final invoice from the entries booked *at its read*, then writes it
    (first writer wins). F1 claims E1 and reads; a run inserts E2; F2 claims E2; F1
    writes the final invoice (E1 only); F2's write is refused and its `book_late` finds
    nothing unbooked. E2 is booked into October for good but counted by no invoice.
    Two finalizes overlapping is ordinary: a daily Celery job redelivered or retried,
    plus `chore finalize` by hand.
    """
    october_draft_then_one_more_october_run(db, settings, registry)
    f2_claimed, f1_done = threading.Event(), threading.Event()
    s1: dict[str, Any] = {"claimed": False, "run": False, "f2": None}
    s2: dict[str, Any] = {"claimed": False, "signalled": False}
    errors: list[BaseException] = []

    def hook2(collection: str, method: str) -> None:
        if (collection, method) == ("billing_ledger", "update_many"):
            s2["claimed"] = True  # book_period
        elif (
            (collection, method) == ("billing_ledger", "aggregate")
            and s2["claimed"]
            and not (s2["signalled"])
        ):
            s2["signalled"] = True
            f2_claimed.set()
            assert f1_done.wait(20)

    def f2() -> None:
        try:
            finalize_invoices(DatabaseProxy(db, hook2), now=NOV_5, settings=settings)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            f2_claimed.set()

    def hook1(collection: str, method: str) -> None:
        if (collection, method) == ("billing_ledger", "update_many"):
            s1["claimed"] = True  # book_period
        elif (collection, method) == ("billing_ledger", "aggregate") and s1["claimed"]:
            if not s1["run"]:
                s1["run"] = True  # a metering run inserts E2 after F1's claim
                run_chore(db, now=NOV_5, registry=registry, settings=settings)
        elif (
            (collection, method) == ("billing_invoices", "replace_one")
            and s1["claimed"]
            and (s1["f2"] is None)
        ):
            s1["f2"] = threading.Thread(target=f2)
            s1["f2"].start()
            assert f2_claimed.wait(20)  # F2 has claimed E2; F1 writes first

    try:
        finalize_invoices(DatabaseProxy(db, hook1), now=NOV_5, settings=settings)
    finally:
        f1_done.set()
        if s1["f2"] is not None:
            s1["f2"].join(20)
    assert not errors
    later = NOV_5 + timedelta(days=1)
    run_chore(db, now=later, registry=registry, settings=settings, full=True)
    finalize_invoices(db, now=later, settings=settings)

    assert ledger_tokens(db) == 8_000
    assert invoiced_tokens(db) == 8_000, "an entry is booked into October but not on its invoice"


# 4 -----------------------------------------------------------------------------------------
def test_a_crash_between_late_booking_and_its_dirty_mark_keeps_the_late_entry(
    db, settings, registry
):
    """`Finalizer.finalize` books entries that slipped in as late into November
    (`book_late`) and only then writes the dirty mark announcing them, the opposite of
    the protocol ("marks are written before the entries they announce"). A crash
    between the two leaves an entry booked into November with no mark and, here, no
    November invoice at all: no rerun ever builds one, and November is never finalized
    (finalize only turns existing drafts final). 7,000 tokens lost forever.
    """
    october_draft_then_one_more_october_run(db, settings, registry)
    state = {"claimed": False, "run": False}

    def hook(collection: str, method: str) -> None:
        if (collection, method) == ("billing_ledger", "update_many"):
            state["claimed"] = True
        elif (collection, method) == ("billing_invoices", "replace_one") and state["claimed"]:
            if not state["run"]:
                state["run"] = True  # an October entry slips in before the final write
                run_chore(db, now=NOV_5, registry=registry, settings=settings)
        elif (collection, method) == ("billing_dirty", "insert_many") and state["run"]:
            raise AutoReconnect("connection lost")

    with contextlib.suppress(AutoReconnect):
        finalize_invoices(DatabaseProxy(db, hook), now=NOV_5, settings=settings)
    for day in range(1, 40, 3):  # reruns well past November's finalization
        later = NOV_5 + timedelta(days=day)
        run_chore(db, now=later, registry=registry, settings=settings, full=True)
        finalize_invoices(db, now=later, settings=settings)

    assert ledger_tokens(db) == 8_000
    assert invoiced_tokens(db) == 8_000, "a late entry is booked into a period with no invoice"


# 5 -----------------------------------------------------------------------------------------
def test_a_run_that_loses_the_ledger_insert_race_keeps_the_runner_pending(db, settings, registry):
    """`Pipeline.process`: a runner is removed from *pending* when this run's assessment says
    it is finished, even if this run's ledger entry was skipped as a duplicate. Run B
    read the runner while running (500 tokens) and wins the insert of entry 1; run A read
    its final write (1,000 tokens), loses the insert, and deletes the pending record B
    kept. The final write's stamp lags one write (the runner's previous write, 20 min
    earlier, before a long LLM call), i.e. below cursor - lookback, so no incremental run
    reads the runner again: 500 tokens unbilled until a full scan happens to run.
    """
    t = NOV_25.timestamp()
    rid = ObjectId()
    running = {
        "_id": rid,
        "name": "ai",
        "status": "RUNNING",
        "start_time": NOV_25 - timedelta(minutes=5),
        "last_updated_db": t - 100,
        "context": context("acme", 500),
    }
    final = {  # written at t+1200 after a 20-minute call; stamps the previous write (t-50)
        **running,
        "status": "SUCCESS",
        "end_time": NOV_25 + timedelta(seconds=1200),
        "last_updated_db": t - 50,
        "context": context("acme", 1_000),
    }
    busy = {  # another runner keeps stamps (and so the cursor) current
        "_id": ObjectId(),
        "name": "ai",
        "status": "RUNNING",
        "start_time": NOV_25,
        "last_updated_db": t + 1190,
        "context": context("acme", 10),
    }
    db.tasks.insert_many([final, busy])
    now = NOV_25 + timedelta(seconds=1205)
    state = {"done": False}

    def hook(collection: str, method: str) -> None:
        if (collection, method) == ("billing_ledger", "insert_many") and not state["done"]:
            state["done"] = True
            db.tasks.replace_one({"_id": rid}, running)  # what B read, seconds earlier
            run_chore(db, now=now - timedelta(seconds=10), registry=registry, settings=settings)
            db.tasks.replace_one({"_id": rid}, final)

    run_chore(DatabaseProxy(db, hook), now=now, registry=registry, settings=settings)
    for k in range(1, 7):  # the 5-minute schedule
        run_chore(db, now=now + timedelta(minutes=5 * k), registry=registry, settings=settings)

    billed = sum(e["tokens"] for e in db.billing_ledger.find({"runner_id": str(rid)}))
    assert billed == 1_000


# 6 -----------------------------------------------------------------------------------------
def test_an_end_time_in_december_9999_crashes_no_run(db, settings, registry):
    """Hostile data (SPEC §1.5 spirit, §4): a runner with `end_time` 9999-12-31 (a valid
    BSON date) is billed into period `9999-12`; `period_bounds('9999-12')` then builds
    `datetime(10000, 1, 1)` and raises ValueError in `build_invoice`. The dirty mark stays,
    so every later run crashes the same way: an all-orgs run never writes the other
    orgs' quota decisions or advances the cursor. Expected: an anomaly, not a crash.
    """
    db.tasks.insert_many(
        [
            finished("evil", 100, datetime(9999, 12, 31, tzinfo=UTC), NOV_25.timestamp() - 10),
            finished("acme", 100, NOV_25 - timedelta(hours=1), NOV_25.timestamp() - 10),
        ]
    )
    run_chore(db, now=NOV_25, registry=registry, settings=settings)
    assert db.billing_quota.find_one({"_id": "acme"}) is not None


# 7 -----------------------------------------------------------------------------------------
def test_a_run_over_many_orgs_writes_one_invoice_and_one_decision_per_org(db, settings, registry):
    """SPEC §7: "a run over N documents costs O(N / batch) database operations in all,
    reads and writes alike". `Invoices.rebuild` does one `replace_one` per invoice and
    `Quota.decide` one `replace_one` per org, so 400 runners of 400 orgs with batch 100
    cost ~800 writes instead of a few dozen (and `finalize` ~6 operations per invoice).
    """
    batch = 100
    settings = settings.model_copy(update={"batch_size": batch})
    db.tasks.insert_many(
        [finished(f"org{i:04d}", 100, NOV_25 - timedelta(hours=1), 1.0e9) for i in range(400)]
    )
    counting = CountingDatabase(db)
    run_chore(counting, now=NOV_25, registry=registry, settings=settings)
    batches = 400 // batch
    assert counting.reads() + counting.writes() <= 25 * batches, dict(counting.calls)


# 8 -----------------------------------------------------------------------------------------
def test_a_runner_without_billable_tokens_is_not_a_run_with_usage(db, settings, registry):
    """SPEC §7: "`runs` = number of distinct runner documents with usage on the invoice".
    A runner whose only counter is `ai_cached_tokens` (cached is capped at prompt = 0,
    so 0 billable tokens) still moves the per-counter high-water mark, so a zero-token
    ledger entry is written: the invoice gets an empty 0-token line and `runs: 1`.
    """
    doc = finished("acme", 0, NOV_25 - timedelta(hours=1), 1.0e9)
    doc["context"]["ai_cached_tokens"] = 40
    db.tasks.insert_one(doc)
    run_chore(db, now=NOV_25, registry=registry, settings=settings)
    invoice = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    # No usage, no invoice (an empty one is only written to flag a review or over an old one).
    assert invoice is None or invoice["runs"] == 0
    assert invoice is None or [ln for ln in invoice["lines"] if ln["tokens"] == 0] == []
    assert db.billing_ledger.count_documents({}) == 1  # the high-water mark still moved


# 9 -----------------------------------------------------------------------------------------
def test_an_older_run_never_overwrites_a_newer_quota_decision(db, settings, registry):
    """`Quota.decide` reads the invoice, then `replace_one`s the decision unconditionally.
    Run A reads acme's invoice (1,000 tokens); run B meters 9,000 more and stores `block`
    (limit 5,000); A then stores its stale `ok` over it. Until the next run, check_quota
    allows an org that is over its limit. Fix: write the decision conditionally on the
    invoice version it was computed from (or on `computed_at`/a sequence).
    """
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 5_000})
    db.tasks.insert_one(finished("acme", 1_000, NOV_25 - timedelta(hours=2), 1.0e9))
    run_chore(db, now=NOV_25 - timedelta(minutes=5), registry=registry, settings=settings)
    state = {"done": False}

    def hook(collection: str, method: str) -> None:
        if (collection, method) == ("billing_quota", "bulk_write") and not state["done"]:
            state["done"] = True
            db.tasks.insert_one(finished("acme", 9_000, NOV_25 - timedelta(hours=1), 1.0e9 + 1))
            run_chore(db, org="acme", now=NOV_25, registry=registry, settings=settings)

    run_chore(DatabaseProxy(db, hook), org="acme", now=NOV_25, registry=registry, settings=settings)
    decision = check_quota(db, "acme", now=NOV_25 + timedelta(minutes=1), settings=settings)
    assert decision.used_tokens == 10_000
    assert decision.state == "block"


# 10 ----------------------------------------------------------------------------------------
def test_check_quota_never_answers_an_older_decision_after_a_failed_cache_write(
    settings, registry, redis_base_url
):
    """`cache`: `Quota.decide` writes the decision to MongoDB, then mirrors it to
    Redis, swallowing Redis errors; `check` trusts a cache hit. After one blip of Redis
    during a run, the mirror keeps the previous decision for its TTL (600 s, below the
    900 s staleness), so check_quota says `ok`/allowed for an org whose stored decision
    (SPEC §5: "answers from the stored decision") is `block`.
    """
    import redis

    url = f"{redis_base_url}/14"
    redis.Redis.from_url(url).flushdb()
    # mirrored only for the store MONGO_URL names (`cache.is_named_store`)
    named = settings.model_copy(update={"mongo_url": f"mongomock://cache-{ObjectId()}"})
    db = connect(named)
    cached = named.model_copy(update={"redis_url": url})
    blip = named.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})  # unreachable
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 5_000})
    db.tasks.insert_one(finished("acme", 1_000, NOV_25 - timedelta(hours=2), 1.0e9))
    run_chore(db, now=NOV_25, registry=registry, settings=cached)
    db.tasks.insert_one(finished("acme", 9_000, NOV_25 - timedelta(hours=1), 1.0e9 + 1))
    run_chore(db, now=NOV_25 + timedelta(minutes=5), registry=registry, settings=blip)
    try:
        assert db.billing_quota.find_one({"_id": "acme"})["state"] == "block"
        decision = check_quota(db, "acme", now=NOV_25 + timedelta(minutes=6), settings=cached)
        assert (decision.state, decision.allowed) == ("block", False)
    finally:
        redis.Redis.from_url(url).flushdb()
