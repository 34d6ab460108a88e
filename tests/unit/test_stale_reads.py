"""A run that read a document before an overlapping run billed a later write of it: its stale
read is no decrease (`counter_decreased` never heals by itself), whatever became of the
document by the time the counters are compared (still there, gone, moved to another org)."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from bson import ObjectId

from chores import run_chore
from chores.run.chore import Pipeline
from chores.run.report import RunReport

from support import NOW


def runner(oid: ObjectId, tokens: int, org: str = "acme") -> dict:
    return {
        "_id": oid,
        "name": "ai",
        "status": "RUNNING",
        "last_updated_db": (NOW - timedelta(minutes=10)).timestamp() + tokens / 1000,
        "context": {
            "workspace_id": org,
            "ai_model": "gpt-4o-mini",
            "ai_tokens": tokens,
            "ai_prompt_tokens": tokens // 2,
            "ai_completion_tokens": tokens - tokens // 2,
        },
    }


def process(db, settings, registry, docs, org):
    report = RunReport(run_id="late", org=org, started_at=NOW)
    Pipeline(db, settings, registry).process(
        docs, org=org, now=NOW, run_id="late", report=report, dry_run=False
    )


@pytest.mark.parametrize(
    ("since", "scope"),
    [("unchanged", None), ("deleted", None), ("unchanged", "acme"), ("moved to globex", "acme")],
)
def test_a_stale_read_is_no_decrease(db, settings, registry, since, scope):
    oid = ObjectId()
    db.tasks.insert_one(runner(oid, 1_000))
    stale = copy.deepcopy(db.tasks.find_one({"_id": oid}))  # this run's read
    db.tasks.replace_one({"_id": oid}, runner(oid, 2_000))  # the runner writes again...
    run_chore(db, now=NOW, settings=settings, registry=registry)  # ...another run bills it
    if since == "deleted":
        db.tasks.delete_one({"_id": oid})
    elif since == "moved to globex":
        db.tasks.update_one({"_id": oid}, {"$set": {"context.workspace_id": "globex"}})
    process(db, settings, registry, [stale], scope)
    assert db.billing_anomalies.count_documents({}) == 0
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == 2_000


def test_a_real_decrease_is_still_recorded(db, settings, registry):
    oid = ObjectId()
    db.tasks.insert_one(runner(oid, 2_000))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    db.tasks.replace_one({"_id": oid}, runner(oid, 500))  # the counters really went down
    process(db, settings, registry, [db.tasks.find_one({"_id": oid})], None)
    assert [a["kind"] for a in db.billing_anomalies.find()] == ["counter_decreased"]
