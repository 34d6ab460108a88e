"""Faults production brings: concurrent runs, flaky reads, clock skew, registry reloads."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import mongomock
import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect, NetworkTimeout

from chores import Settings, finalize_invoices, run_chore
from chores.demo.corpus import generate_corpus
from pricing import Registry

from support.dbproxy import DatabaseProxy

START = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
CONFIG = Settings(mongo_url="mongomock://faults", batch_size=7)


def fresh_db(seed: int = 11):
    db = mongomock.MongoClient(tz_aware=True)["main"]
    corpus = generate_corpus(
        seed=seed, orgs=("acme", "globex"), runs_per_org=12, start=START, days=20
    )
    db.tasks.insert_many(corpus.tasks)
    db.findings.insert_many(corpus.findings)
    return db


def invoices(db) -> dict[str, tuple]:
    return {
        i["_id"]: (
            i["status"],
            i["total_micros"],
            i["unpriced_tokens"],
            i["runs"],
            [{k: v for k, v in line.items()} for line in i["lines"]],
        )
        for i in db.billing_invoices.find()
    }


def ledger_tokens(db) -> dict[str, int]:
    totals: dict[str, int] = {}
    for entry in db.billing_ledger.find():
        totals[entry["runner_id"]] = totals.get(entry["runner_id"], 0) + entry["tokens"]
    return totals


@pytest.fixture(scope="module")
def clean(registry):
    db = fresh_db()
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    return invoices(db), ledger_tokens(db)


@pytest.mark.parametrize("threads", [2, 8])
@pytest.mark.parametrize("org", ["acme", None])
def test_concurrent_runs_of_the_same_scope_bill_exactly_once(registry, clean, threads, org):
    """No lock: the ledger's unique entry ids alone keep billing exact."""
    db = fresh_db()
    shared = DatabaseProxy(db, serialize=True)  # per-operation atomicity of a real server
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work() -> None:
        try:
            barrier.wait()
            run_chore(shared, org=org, now=NOW, registry=registry, settings=CONFIG)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    run_chore(db, org=org, now=NOW, registry=registry, settings=CONFIG)  # settle stragglers
    expected_invoices, expected_tokens = clean
    if org is not None:
        expected_invoices = {k: v for k, v in expected_invoices.items() if k.startswith(org + ":")}
        expected_tokens = {
            r: t
            for r, t in expected_tokens.items()
            if db.billing_ledger.find_one({"runner_id": r, "org": org})
        }
    assert ledger_tokens(db) == expected_tokens
    assert invoices(db) == expected_invoices


class FlakyOnce:
    """Raises `error` on the n-th call of `method` on collection `name`, once."""

    def __init__(self, name: str, method: str, n: int, error: Exception):
        self.name, self.method, self.n, self.error = name, method, n, error
        self.seen = 0
        self.fired = False

    def __call__(self, collection: str, method: str) -> None:
        if collection == self.name and method == self.method and not self.fired:
            self.seen += 1
            if self.seen == self.n:
                self.fired = True
                raise self.error


@pytest.mark.parametrize(
    ("collection", "method", "n", "error"),
    [
        ("tasks", "find", 1, AutoReconnect("primary stepped down")),
        ("findings", "find", 1, NetworkTimeout("timed out")),
        ("billing_ledger", "find", 2, AutoReconnect("reset")),
        ("billing_ledger", "insert_many", 2, NetworkTimeout("timed out")),
        ("billing_ledger", "update_many", 1, AutoReconnect("reset")),  # the folded flags
        ("billing_invoices", "bulk_write", 1, AutoReconnect("reset")),
    ],
)
def test_a_failed_read_or_write_aborts_and_the_rerun_is_exact(
    registry, clean, collection, method, n, error
):
    db = fresh_db()
    flaky = FlakyOnce(collection, method, n, error)
    with pytest.raises(type(error)):
        run_chore(DatabaseProxy(db, flaky), now=NOW, registry=registry, settings=CONFIG)
    assert flaky.fired
    run = db.billing_runs.find_one()
    assert run is not None and type(error).__name__ in run["error"]
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert invoices(db) == clean[0]
    assert ledger_tokens(db) == clean[1]


def test_clock_going_backwards_never_books_into_a_final_period(registry):
    db = mongomock.MongoClient(tz_aware=True)["main"]
    october = generate_corpus(
        seed=5, orgs=("acme",), runs_per_org=8, start=datetime(2026, 10, 1, tzinfo=UTC), days=25
    )
    running = {
        "_id": ObjectId(),
        "name": "ai",
        "status": "RUNNING",
        "last_updated_db": datetime(2026, 11, 4, tzinfo=UTC).timestamp(),
        "context": {
            "workspace_id": "acme",
            "ai_model": "gpt-4o-mini",
            "ai_tokens": 500,
            "ai_prompt_tokens": 500,
        },
    }
    db.tasks.insert_many([*october.tasks, running])
    db.findings.insert_many(october.findings)
    nov_5 = datetime(2026, 11, 5, tzinfo=UTC)
    run_chore(db, now=nov_5, registry=registry, settings=CONFIG)
    assert finalize_invoices(db, now=nov_5, settings=CONFIG) == ["acme:2026-10"]
    final = db.billing_invoices.find_one({"_id": "acme:2026-10"})

    # A running runner observed by a worker whose clock says October.
    db.tasks.update_one(
        {"_id": running["_id"]},
        {"$inc": {"context.ai_tokens": 1_000, "context.ai_prompt_tokens": 1_000}},
    )
    skewed = datetime(2026, 10, 20, tzinfo=UTC)
    report = run_chore(db, now=skewed, registry=registry, settings=CONFIG)
    assert report.tokens_billed == 1_000
    assert db.billing_invoices.find_one({"_id": "acme:2026-10"}) == final
    late = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert [line["tokens"] for line in late["lines"] if line["late"]] == [1_000]
    again = run_chore(db, now=nov_5, registry=registry, settings=CONFIG)
    assert again.tokens_billed == 0


def test_a_registry_reload_reprices_drafts_and_never_finals(registry, tmp_path):
    db = mongomock.MongoClient(tz_aware=True)["main"]
    for org, ended in (
        ("acme", datetime(2026, 10, 10, tzinfo=UTC)),
        ("acme", datetime(2026, 11, 10, tzinfo=UTC)),
    ):
        db.tasks.insert_one(
            {
                "name": "ai",
                "status": "SUCCESS",
                "end_time": ended,
                "context": {
                    "workspace_id": org,
                    "ai_model": "mystery-model-9000",
                    "ai_tokens": 3_000,
                    "ai_prompt_tokens": 2_000,
                    "ai_completion_tokens": 1_000,
                },
            }
        )
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    finalize_invoices(db, now=NOW, settings=CONFIG)
    final = db.billing_invoices.find_one({"_id": "acme:2026-10"})
    assert final["status"] == "final" and final["unpriced_tokens"] == 3_000

    priced = Registry.model_validate(
        {
            "version": "with-mystery",
            "models": [
                *(m.model_dump() for m in registry.models),
                {
                    "id": "mystery-model-9000",
                    "tier": "paid",
                    "prices": [{"valid_from": "2026-01-01", "input": "2", "output": "8"}],
                },
            ],
        }
    )
    report = run_chore(db, now=NOW, registry=priced, settings=CONFIG)
    assert report.tokens_billed == 0
    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert draft["unpriced_tokens"] == 0
    assert draft["total_micros"] == 2_000 * 2 + 1_000 * 8
    assert db.billing_invoices.find_one({"_id": "acme:2026-10"}) == final


_ = timedelta
