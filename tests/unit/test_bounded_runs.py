"""Runs cut short keep what they did: an org of any size is caught up after enough runs.

A worker's soft time limit (or a lost worker) can stop `run_chore` anywhere. The
cursor moves after every batch of changed runners (read oldest stamp first), so the
next run goes on from there instead of starting over, and nothing is billed twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
import pytest

from chores import Settings, run_chore

from support.dbproxy import CrashAt, DatabaseProxy, Recorder

NOW = datetime(2026, 11, 25, tzinfo=UTC)
BATCH = 10
RUNNERS = 95
CONFIG = Settings(mongo_url="mongomock://bounded", batch_size=BATCH, redis_url=None)


class TimeLimit(Exception):
    """What Celery's soft time limit raises inside the task."""


def backlog(db: Any) -> int:
    """An org's whole history, never metered: 95 runners with distinct stamps."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for n in range(RUNNERS):
        ended = start + timedelta(minutes=30 * n)
        db.tasks.insert_one(
            {
                "name": "ai",
                "status": "SUCCESS",
                "end_time": ended,
                "last_updated_db": ended.timestamp(),
                "context": {
                    "workspace_id": "acme",
                    "ai_model": "gpt-4o-mini",
                    "ai_tokens": 100 + n,
                    "ai_prompt_tokens": 80 + n,
                    "ai_completion_tokens": 20,
                },
            }
        )
    return sum(100 + n for n in range(RUNNERS))


def cut_after(batches: int) -> Any:
    """An `around` hook: the run is stopped when it starts its (batches + 1)-th batch (each
    batch reads its runners' ledger heads once), as a time limit would stop it, whether
    the batches before billed anything or only re-read what was billed. The settle after
    the last batch (its first call takes a draft-build ticket) is not cut."""
    seen = [0]
    settling = [False]

    def around(collection: str, method: str, perform: Any) -> Any:
        settling[0] = settling[0] or collection == "billing_counters"
        if collection == "billing_ledger" and method == "find" and not settling[0]:
            seen[0] += 1
            if seen[0] > batches:
                raise TimeLimit("soft time limit exceeded")
        return perform()

    return around


def runs_until_one_finishes(db: Any, batches_per_run: int, registry: Any, **options: Any) -> int:
    """Runs of acme, each cut after `batches_per_run` batches, until one finishes: how many."""
    for runs in range(1, RUNNERS + 1):
        try:
            run_chore(
                DatabaseProxy(db, around=cut_after(batches_per_run)),
                org="acme",
                now=NOW,
                registry=registry,
                settings=CONFIG,
                **options,
            )
            return runs  # a run that finished: the backlog is done
        except TimeLimit:
            continue
    raise AssertionError("no progress: every run starts over")


@pytest.mark.parametrize("batches_per_run", [1, 3])
def test_a_backlog_larger_than_one_run_is_caught_up_after_enough_cut_runs(
    batches_per_run, registry
):
    db = mongomock.MongoClient(tz_aware=True)["main"]
    truth = backlog(db)
    runs = runs_until_one_finishes(db, batches_per_run, registry)
    expected_runs = -(-RUNNERS // (BATCH * batches_per_run))  # ceil
    assert runs <= expected_runs + 1
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == truth
    invoice = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert sum(line["tokens"] for line in invoice["lines"]) == truth
    assert invoice["runs"] == RUNNERS


def test_the_progress_callback_sees_every_batch(db, settings, registry):
    truth = backlog(db)
    seen: list[int] = []
    report = run_chore(db, now=NOW, registry=registry, settings=CONFIG, on_batch=seen.append)
    assert sum(seen) == report.docs_read == RUNNERS
    assert len(seen) == -(-RUNNERS // BATCH)
    assert report.tokens_billed == truth


@pytest.mark.parametrize("batches_per_run", [1, 3])
def test_a_full_pass_cut_short_resumes_where_it_stopped(batches_per_run, registry):
    """The daily full pass re-reads every runner (one rewritten long after it ended, its stamp
    unchanged, is billed only by it). Cut by a time limit, the next full pass goes on from
    where it stopped: over a history longer than one pass, every retry starting over would
    never reach its end."""
    db = mongomock.MongoClient(tz_aware=True)["main"]
    truth = backlog(db)
    run_chore(db, org="acme", now=NOW, registry=registry, settings=CONFIG)
    newest = db.tasks.find_one(sort=[("last_updated_db", -1)])
    rewrite = {"context.ai_tokens": 10_000, "context.ai_prompt_tokens": 9_980}
    db.tasks.update_one({"_id": newest["_id"]}, {"$set": rewrite})  # the stamp is unchanged
    truth += 10_000 - newest["context"]["ai_tokens"]
    passes = runs_until_one_finishes(db, batches_per_run, registry, full=True)
    assert passes <= -(-RUNNERS // (BATCH * batches_per_run)) + 1
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == truth
    assert db.billing_cursors.find_one({"_id": "full:org:acme"}) is None  # the pass completed
    last = db.billing_runs.find_one({"error": None, "full_scan": True})
    assert (last["resumed_from"] is not None) is (passes > 1)


def test_a_full_pass_that_read_everything_and_died_settling_is_complete(registry):
    """State-machine finding: a full pass that read every runner and died in its settle
    kept its cursor, so the next day's full pass resumed at the end and read nothing; a
    runner rewritten meanwhile with an old stamp waited a second day for the safety net."""
    recorder = Recorder()
    rehearsal = mongomock.MongoClient(tz_aware=True)["main"]
    backlog(rehearsal)
    run_chore(
        DatabaseProxy(rehearsal, around=recorder),
        now=NOW,
        registry=registry,
        settings=CONFIG,
        full=True,
    )
    # The settle's first build ticket: every runner was read before it.
    settling = recorder.calls.index("billing_counters.find_one_and_update") + 1
    db = mongomock.MongoClient(tz_aware=True)["main"]
    truth = backlog(db)
    with pytest.raises(TimeLimit):
        run_chore(
            DatabaseProxy(db, around=CrashAt(settling, TimeLimit)),
            now=NOW,
            registry=registry,
            settings=CONFIG,
            full=True,
        )
    assert db.billing_cursors.find_one({"_id": "full:*"}) is None
    oldest = db.tasks.find_one(sort=[("last_updated_db", 1)])
    rewrite = {"context.ai_tokens": 10_000, "context.ai_prompt_tokens": 9_980}
    db.tasks.update_one({"_id": oldest["_id"]}, {"$set": rewrite})  # the stamp is unchanged
    truth += 10_000 - oldest["context"]["ai_tokens"]
    report = run_chore(db, now=NOW, registry=registry, settings=CONFIG, full=True)
    assert report.resumed_from is None
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == truth
