"""The late-usage sweep at an edge a mutation round of chores/billing/sweeper.py found
untested (stop 56): a finalize of one org sweeps that org's final months only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chores import Collections, finalize_invoices, run_chore

from support import ai_runner

SEPT_9 = datetime(2026, 9, 9, tzinfo=UTC)
SEPT_10 = datetime(2026, 9, 10, tzinfo=UTC)
OCT_5 = datetime(2026, 10, 5, tzinfo=UTC)  # September's grace has passed


def test_a_finalize_of_one_org_moves_no_late_usage_of_another(db: Any, settings: Any) -> None:
    """`chore finalize --org beta` holds beta's lock only: acme's straggler (an entry of
    its final September that the final does not hold, as a run that died before settling
    leaves one) is acme's finalize's or run's to move, not beta's. Once acme's finalize
    runs, it is moved late into October."""
    for n, org in enumerate(("acme", "beta")):
        db.tasks.insert_one(ai_runner(f"r{n}", org=org, ended=SEPT_9))
    run_chore(db, now=SEPT_10, settings=settings)
    assert finalize_invoices(db, now=OCT_5, settings=settings) == [
        "acme:2026-09",
        "beta:2026-09",
    ]
    ledger = Collections.of(db, settings).ledger
    held = ledger.find_one({"org": "acme", "booked": "2026-09"})
    ledger.update_one({"_id": held["_id"]}, {"$set": {"fence": None}})  # a straggler
    before = {doc["_id"]: doc for doc in ledger.find({"org": "acme"})}

    assert finalize_invoices(db, now=OCT_5, org="beta", settings=settings) == []
    assert {doc["_id"]: doc for doc in ledger.find({"org": "acme"})} == before
    assert db.billing_invoices.find_one({"_id": "acme:2026-10"}) is None
    assert db.billing_dirty.count_documents({"org": "acme"}) == 0

    assert finalize_invoices(db, now=OCT_5, org="acme", settings=settings) == []
    moved = ledger.find_one({"_id": held["_id"]})
    assert (moved["booked"], moved["late"]) == ("2026-10", True)
