"""What an operator is told of an org the billing does not know, or of a month with no
invoice (`chores/billing/known_orgs.py`; found untested by mutation testing): at most three
alike ids, those of the month asked, one spelling per id that differs by case, and the hint
for this month, an earlier one, a later one and after a run of every org. The wall clock is
pinned to `support.WALL_CLOCK` (January 2030)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from chores import Collections
from chores.billing.known_orgs import known_alike, missing_invoice_hint, unknown_org_note
from chores.core.periods import period_of

from support import WALL_CLOCK

THIS_MONTH = period_of(WALL_CLOCK)  # 2030-01
RUN_FIRST = "run `chore run --org acme` first"
NOTHING_YET = "no usage of it was billed this month yet"


@pytest.fixture
def c(db: Any, settings: Any) -> Collections:
    return Collections.of(db, settings)


def invoiced(c: Collections, org: str, period: str) -> None:
    c.invoices.insert_one({"_id": f"{org}:{period}", "org": org, "period": period})


def completed_run(c: Collections, org: str | None, **changes: Any) -> None:
    c.runs.insert_one(
        {"org": org, "error": None, "dry_run": False, "started_at": WALL_CLOCK, **changes}
    )


def test_at_most_three_alike_ids_are_named(c):
    for n in range(1, 6):
        invoiced(c, f"acme{n}", "2029-12")
    alike = known_alike(c, "acme")
    assert len(alike) == 3 and set(alike) <= {f"acme{n}" for n in range(1, 6)}


def test_the_alike_ids_of_a_month_are_those_invoiced_in_it(c):
    invoiced(c, "acme", "2029-11")
    invoiced(c, "acmf", "2029-12")
    c.plans.insert_one({"_id": "acmg"})
    assert known_alike(c, "acmx", period="2029-12") == ["acmf"]
    assert sorted(known_alike(c, "acmx")) == ["acme", "acmf", "acmg"]


def test_ids_that_differ_by_case_are_named_once_the_first_in_order(c):
    c.plans.insert_many([{"_id": "acme"}, {"_id": "ACME"}])
    assert known_alike(c, "Acme") == ["ACME"]


def test_an_unknown_org_is_told_the_two_ids_like_it(c):
    c.plans.insert_many([{"_id": "acme"}, {"_id": "acmf"}])
    assert unknown_org_note(c, "acme") is None  # a plan alone makes it known
    assert unknown_org_note(c, "acmx") == (
        "org 'acmx' has no invoice of any month and no plan: nothing was billed to it yet;"
        " did you mean 'acmf' or 'acme'?"
    )


def test_a_known_org_is_told_by_month_what_its_missing_invoice_means(c):
    """A known org is no typo: no other org of the month is suggested to it."""
    c.plans.insert_one({"_id": "acme"})
    invoiced(c, "acmf", THIS_MONTH)
    assert missing_invoice_hint(c, "acme", "2029-12") == "no usage of it was billed in that month"
    assert missing_invoice_hint(c, "acme", "2030-02") == (
        "that month has not begun (this machine's is 2030-01)"
    )
    assert missing_invoice_hint(c, "acme", THIS_MONTH) == RUN_FIRST
    completed_run(c, None)  # a run of every org since the month began
    assert missing_invoice_hint(c, "acme", THIS_MONTH) == NOTHING_YET


def test_only_a_completed_run_not_dry_since_the_month_began_is_a_run_of_it(c):
    c.plans.insert_one({"_id": "acme"})
    completed_run(c, "acme", error="boom")
    completed_run(c, "acme", dry_run=True)
    completed_run(c, "acme", started_at=WALL_CLOCK - timedelta(minutes=1))
    completed_run(c, "beta")
    assert missing_invoice_hint(c, "acme", THIS_MONTH) == RUN_FIRST
    completed_run(c, "acme")
    assert missing_invoice_hint(c, "acme", THIS_MONTH) == NOTHING_YET


def test_an_unknown_org_is_told_of_its_own_run_only(c):
    """A run of every org says nothing of an org it never saw: run it first. A run of this
    very org that billed nothing: running again will not help."""
    completed_run(c, None)
    assert missing_invoice_hint(c, "acme", THIS_MONTH) == RUN_FIRST
    completed_run(c, "acme")
    assert missing_invoice_hint(c, "acme", THIS_MONTH).startswith("a run of it billed no usage")
