"""Where an anomaly is recorded, at edges a mutation round of chores/run/placement.py found
untested (stop 56)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from chores import finalize_invoices, run_chore
from chores.run.review import review_anomalies

from support import NOW, ai_runner

NOTE = "checked with the platform team (ops@example.com)"


def below_split(runner_id: str, **kwargs: Any) -> dict[str, Any]:
    """A runner whose total is below its split: flagged for a person (`total_below_split`)."""
    doc = ai_runner(runner_id, prompt=700, **kwargs)
    doc["context"]["ai_tokens"] = 600  # < 700 prompt + 300 completion
    return doc


@pytest.mark.parametrize("edit", [{"$set": {"period": "bogus"}}, {"$set": {"period": 5}}])
def test_a_reviewed_anomaly_whose_period_was_edited_out_of_shape_is_recorded_on_its_invoice(
    db, settings, edit
):
    """A reviewed record flags no invoice once its period is edited out of shape: the full
    pass that reads its runner again records it on its month's invoice, as a new one,
    and that draft needs review again (a review on no invoice covers none)."""
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["needs_review"] is False
    (record,) = db.billing_anomalies.find()
    db.billing_anomalies.update_one({"_id": record["_id"]}, edit)

    run_chore(db, now=NOW + timedelta(minutes=5), settings=settings, full=True)
    (again,) = db.billing_anomalies.find()
    assert (again["org"], again["period"], again["resolved"]) == ("acme", "2026-11", False)
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["needs_review"] is True


@pytest.mark.parametrize("edit", [{"$set": {"period": "bogus"}}, {"$unset": {"period": ""}}])
def test_an_anomaly_of_a_final_month_whose_period_was_edited_out_of_shape_flags_the_open_month(
    db, settings, edit
):
    """October frozen flagged for its anomaly; the record's period then edited out of
    shape (it flags no invoice). The full pass that reads its runner again records it
    where a new one would go, October being final: November, whose draft then needs
    review. October stays as frozen."""
    october = NOW - timedelta(days=45)
    db.tasks.insert_one(below_split("r1", ended=october))
    run_chore(db, now=october + timedelta(hours=1), settings=settings)
    assert finalize_invoices(db, now=NOW - timedelta(days=20), settings=settings) == [
        "acme:2026-10"
    ]
    frozen = db.billing_invoices.find_one({"_id": "acme:2026-10"})
    assert frozen["needs_review"] is True
    (record,) = db.billing_anomalies.find()
    db.billing_anomalies.update_one({"_id": record["_id"]}, edit)

    run_chore(db, now=NOW, settings=settings, full=True)
    records = list(db.billing_anomalies.find({"resolved": False}))
    assert [(r["org"], r["period"]) for r in records] == [("acme", "2026-11")]
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["needs_review"] is True
    assert db.billing_invoices.find_one({"_id": "acme:2026-10"}) == frozen
