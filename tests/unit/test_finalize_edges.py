"""A finalize at its edges (found untested by mutation testing of `chores/billing/finalizer.py`
and `chores/billing/sweeper.py`): `--org` freezes that org's drafts only, a draft frozen,
removed, edited or repriced by someone else meanwhile, the three tries of a freeze, the
daily sweep of stragglers, late usage when the clock went back, and the finalize's stamps on
the ledger (`chores/metering/ledger.py`): taken over from a finalize that died, above those of
a final removed and rebuilt, and those of a final frozen before tokens."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chores import Collections, finalize_invoices, run_chore
from chores.billing.sweeper import Sweeper, open_period
from chores.core.exceptions import MalformedDocument
from chores.metering.ledger import Ledger
from chores.metering.progress import Progress
from pricing import Registry

from support import ai_runner
from support.dbproxy import DatabaseProxy

SEPT_9 = datetime(2026, 9, 9, tzinfo=UTC)
SEPT_10 = datetime(2026, 9, 10, tzinfo=UTC)
OCT_5 = datetime(2026, 10, 5, tzinfo=UTC)  # September's grace has passed


def september_drafts(db: Any, settings: Any, *orgs: str) -> None:
    for n, org in enumerate(orgs):
        db.tasks.insert_one(ai_runner(f"r{n}", org=org, ended=SEPT_9))
    run_chore(db, now=SEPT_10, settings=settings)


def status(db: Any, invoice_id: str) -> str:
    return str(db.billing_invoices.find_one({"_id": invoice_id})["status"])


def before_first(db: Any, call: tuple[str, str], meanwhile: Callable[[], None]) -> Any:
    """`db`, on which `meanwhile` runs just before the first `call` (collection, method)."""
    done: list[bool] = []

    def around(collection: str, method: str, perform: Callable[[], Any]) -> Any:
        if (collection, method) == call and not done:
            done.append(True)
            meanwhile()
        return perform()

    return DatabaseProxy(db, around=around)


TOKEN = ("billing_invoices", "find_one_and_update")  # a finalize takes its fencing token
FREEZE = ("billing_invoices", "update_one")  # then freezes the draft, if unchanged


def test_a_finalize_of_one_org_freezes_no_draft_of_another(db, settings):
    september_drafts(db, settings, "acme", "beta")
    assert finalize_invoices(db, now=OCT_5, org="beta", settings=settings) == ["beta:2026-09"]
    assert (status(db, "acme:2026-09"), status(db, "beta:2026-09")) == ("draft", "final")


def test_a_draft_another_finalize_froze_before_the_token_is_not_claimed(db, settings):
    september_drafts(db, settings, "acme", "beta")

    def another_finalize() -> None:
        assert finalize_invoices(db, now=OCT_5, org="acme", settings=settings) == ["acme:2026-09"]

    both = before_first(db, TOKEN, another_finalize)
    assert finalize_invoices(both, now=OCT_5, settings=settings) == ["beta:2026-09"]
    assert status(db, "acme:2026-09") == "final"


def test_a_draft_another_finalize_froze_after_the_token_is_not_claimed(db, settings):
    september_drafts(db, settings, "acme")

    def another_finalize() -> None:
        assert finalize_invoices(db, now=OCT_5, settings=settings) == ["acme:2026-09"]

    both = before_first(db, FREEZE, another_finalize)
    assert finalize_invoices(both, now=OCT_5, settings=settings) == []
    assert status(db, "acme:2026-09") == "final"


def test_a_draft_removed_after_the_token_is_skipped(db, settings):
    september_drafts(db, settings, "acme", "beta")

    def remove() -> None:
        db.billing_invoices.delete_one({"_id": "acme:2026-09"})

    removing = before_first(db, FREEZE, remove)
    assert finalize_invoices(removing, now=OCT_5, settings=settings) == ["beta:2026-09"]
    assert db.billing_invoices.find_one({"_id": "acme:2026-09"}) is None


def test_a_draft_lagging_the_entries_its_token_stamped_is_left_for_the_next_run(db, settings):
    september_drafts(db, settings, "acme")

    def lag() -> None:
        db.billing_invoices.update_one({"_id": "acme:2026-09"}, {"$inc": {"entries": -1}})

    lagging = before_first(db, FREEZE, lag)
    assert finalize_invoices(lagging, now=OCT_5, settings=settings) == []
    assert status(db, "acme:2026-09") == "draft"


@pytest.mark.parametrize("edited", ["many", "1000"])  # text, even a number
def test_a_draft_whose_lines_were_edited_after_it_was_read_due_is_frozen_flagged(
    db, settings, edited
):
    """Its lines no longer validate: the final is flagged for review, even though the draft
    said nothing (its flag removed by the same hand)."""
    september_drafts(db, settings, "acme")
    assert db.billing_invoices.find_one({"_id": "acme:2026-09"})["needs_review"] is False

    def edit_by_hand() -> None:
        db.billing_invoices.update_one(
            {"_id": "acme:2026-09"},
            {"$set": {"lines.0.tokens": edited}, "$unset": {"needs_review": ""}},
        )

    editing = before_first(db, TOKEN, edit_by_hand)
    assert finalize_invoices(editing, now=OCT_5, settings=settings) == ["acme:2026-09"]
    final = db.billing_invoices.find_one({"_id": "acme:2026-09"})
    assert (final["status"], final["needs_review"]) == ("final", True)


def test_the_refusal_names_the_first_draft_edited_by_hand_and_counts_them_all(db, settings):
    september_drafts(db, settings, "acme", "beta")
    db.billing_invoices.update_many({}, {"$unset": {"lines": ""}})
    first = db.billing_invoices.find_one({"status": "draft"}, sort=[("_id", 1)])["_id"]
    said = "^finalized no other draft; refused 2 drafts edited by hand: the billing_invoices "
    with pytest.raises(MalformedDocument, match=f"{said}document '{first}'"):
        finalize_invoices(db, now=OCT_5, settings=settings)


def repriced_before_each_freeze(db: Any, settings: Any, registry: Registry, times: int) -> Any:
    """`db`, on which a run under a new price list (the same entries, other amounts) lands
    before each of the first `times` freezes: each is refused, the draft having changed."""
    runs: list[str] = []

    def reprice() -> None:
        data = registry.model_dump()
        factor = len(runs) + 2
        for model in data["models"]:
            for price in model["prices"]:
                price["input"], price["output"] = price["input"] * factor, price["output"] * factor
        repriced = Registry.model_validate({**data, "version": f"x{factor}"})
        run_chore(db, now=OCT_5, registry=repriced, settings=settings)
        runs.append(repriced.version)

    def around(collection: str, method: str, perform: Callable[[], Any]) -> Any:
        if (collection, method) == FREEZE and len(runs) < times:
            reprice()
        return perform()

    return DatabaseProxy(db, around=around)


@pytest.mark.parametrize(("repriced", "frozen"), [(2, ["acme:2026-09"]), (3, [])])
def test_a_freeze_is_tried_three_times_then_left_for_the_next_finalize(
    db, settings, registry, repriced, frozen
):
    """docs/design.md: three refusals in a row, and the draft is left for the next finalize."""
    db.tasks.insert_one(ai_runner("r1", ended=SEPT_9))
    run_chore(db, now=SEPT_10, registry=registry, settings=settings)
    busy = repriced_before_each_freeze(db, settings, registry, repriced)
    assert finalize_invoices(busy, now=OCT_5, settings=settings) == frozen
    assert status(db, "acme:2026-09") == ("final" if frozen else "draft")


def unstamp_an_entry_of_the_final(db: Any, settings: Any) -> dict[str, Any]:
    """September final, then one of its entries no longer held by it: a straggler, as a run
    that died before settling leaves one booked there unstamped."""
    september_drafts(db, settings, "acme")
    assert finalize_invoices(db, now=OCT_5, settings=settings) == ["acme:2026-09"]
    ledger = Collections.of(db, settings).ledger
    held = ledger.find_one({"org": "acme", "booked": "2026-09"})
    ledger.update_one({"_id": held["_id"]}, {"$set": {"fence": None}})
    return dict(held)


def test_every_finalize_sweeps_stragglers_of_final_months_into_the_open_one(db, settings):
    """The safety net: whatever it freezes (here nothing), a finalize moves an entry its
    final does not hold, late, into the open month."""
    straggler = unstamp_an_entry_of_the_final(db, settings)
    assert finalize_invoices(db, now=OCT_5, settings=settings) == []
    moved = Collections.of(db, settings).ledger.find_one({"_id": straggler["_id"]})
    assert (moved["booked"], moved["late"]) == ("2026-10", True)


def test_a_sweep_closes_the_dirty_marks_it_opened(db, settings):
    """Left open, the target invoice would be rebuilt by every settle until they expire."""
    unstamp_an_entry_of_the_final(db, settings)
    c = Collections.of(db, settings)
    sweeper = Sweeper(c, Ledger(c, batch_size=50), Progress(c))
    marks, targets, finals = sweeper.sweep({("acme", "2026-09")}, OCT_5)
    assert targets == {("acme", "2026-10")} and len(marks) == 1
    assert finals == {("acme", "2026-09")}
    assert [mark["open"] for mark in c.dirty.find({"_id": {"$in": marks}})] == [False]
    assert sweeper.sweep({("acme", "2026-09")}, OCT_5) == ([], set(), {("acme", "2026-09")})


@pytest.mark.parametrize(
    ("finals", "open_month"),
    [
        (set(), "2026-09"),
        ({"2026-08"}, "2026-09"),
        ({"2026-09", "2026-10"}, "2026-11"),
        ({"2026-09", "2026-11"}, "2026-10"),
    ],
)
def test_late_usage_goes_to_the_first_month_not_final_even_with_a_clock_gone_back(
    finals, open_month
):
    """A clock that went back into a final month never books late usage there."""
    assert open_period(datetime(2026, 9, 15, tzinfo=UTC), finals) == open_month


# The finalize's stamps on the ledger (chores/metering/ledger.py), at their edges.

OCT_20 = datetime(2026, 10, 20, tzinfo=UTC)
NOV_5 = datetime(2026, 11, 5, tzinfo=UTC)
NOV_25 = datetime(2026, 11, 25, 12, tzinfo=UTC)


def october_draft(db: Any, settings: Any) -> None:
    """acme's October: two runners, 1,000 and 2,000 tokens."""
    for n in (1, 2):
        db.tasks.insert_one(ai_runner(f"r{n}", tokens=1_000 * n, ended=OCT_20 - timedelta(hours=n)))
    run_chore(db, now=OCT_20, settings=settings)


def tokens_of(invoice: dict[str, Any]) -> int:
    return sum(line["tokens"] for line in invoice["lines"])


def test_a_second_finalize_takes_over_the_stamps_of_one_that_died_after_stamping(
    db, settings, monkeypatch
):
    october_draft(db, settings)
    count_unfolded = Ledger.count_stamped_unfolded

    def dies(ledger: Ledger, *args: Any) -> int:
        raise KeyboardInterrupt("the finalize dies after stamping")

    monkeypatch.setattr(Ledger, "count_stamped_unfolded", dies)
    with pytest.raises(KeyboardInterrupt):
        finalize_invoices(db, now=NOV_5, settings=settings)
    monkeypatch.setattr(Ledger, "count_stamped_unfolded", count_unfolded)
    dead_stamps = {entry["fence"] for entry in db.billing_ledger.find()}

    assert finalize_invoices(db, now=NOV_5, settings=settings) == ["acme:2026-10"]
    final = db.billing_invoices.find_one({"_id": "acme:2026-10"})
    assert {entry["fence"] for entry in db.billing_ledger.find()} == {final["closed_fence"]}
    assert final["closed_fence"] not in dead_stamps and tokens_of(final) == 3_000


def test_a_final_removed_and_rebuilt_is_frozen_again_above_every_stamp_of_its_entries(db, settings):
    """Its entries carry the old tokens, and the rebuilt draft counts its own from 0."""
    october_draft(db, settings)
    assert finalize_invoices(db, now=NOV_5, settings=settings) == ["acme:2026-10"]
    for runner, stamp in (("r1", 3), ("r2", 5)):  # stamped by finalizes that retried
        db.billing_ledger.update_one({"runner_id": {"$regex": runner}}, {"$set": {"fence": stamp}})
    db.billing_invoices.delete_one({"_id": "acme:2026-10"})
    run_chore(db, now=NOV_5, settings=settings, full=True)
    assert status(db, "acme:2026-10") == "draft"

    assert finalize_invoices(db, now=NOV_5, settings=settings) == ["acme:2026-10"]
    final = db.billing_invoices.find_one({"_id": "acme:2026-10"})
    assert final["closed_fence"] > 5 and tokens_of(final) == 3_000


def test_a_final_frozen_before_tokens_holds_its_unstamped_entries_and_not_a_stamped_one(
    db, settings
):
    """An earlier version's final (no `closed_fence`) holds the entries booked there
    unstamped; one a stale finalizer stamped meanwhile is not on it: swept out, late."""
    october_draft(db, settings)
    assert finalize_invoices(db, now=NOV_5, settings=settings) == ["acme:2026-10"]
    db.billing_invoices.update_one({"_id": "acme:2026-10"}, {"$unset": {"closed_fence": ""}})
    db.billing_ledger.update_many({"usage_period": "2026-10"}, {"$set": {"fence": None}})
    stale = db.billing_ledger.find_one({"runner_id": {"$regex": "r2"}})
    db.billing_ledger.update_one({"_id": stale["_id"]}, {"$set": {"fence": 7}})

    finalize_invoices(db, now=NOV_25, settings=settings)  # sweeps every final month
    booked = {entry["_id"]: (entry["booked"], entry["late"]) for entry in db.billing_ledger.find()}
    assert booked.pop(stale["_id"]) == ("2026-11", True)
    assert list(booked.values()) == [("2026-10", False)]


def test_an_entry_swept_out_of_a_final_is_billed_on_the_open_draft(db, settings):
    """An entry of a final under an older token than its freeze (a stale finalizer's stamp)
    is not on it: swept into the open month, late, and unfolded, so that month's draft adds
    it, whatever draft had folded it before."""
    october_draft(db, settings)
    assert finalize_invoices(db, now=NOV_5, settings=settings) == ["acme:2026-10"]
    final = db.billing_invoices.find_one({"_id": "acme:2026-10"})
    stale = db.billing_ledger.find_one({"runner_id": {"$regex": "r2"}})
    assert stale["fold"] is not None  # folded into October's draft
    older = {"fence": final["closed_fence"] - 1}
    db.billing_ledger.update_one({"_id": stale["_id"]}, {"$set": older})
    db.tasks.insert_one(ai_runner("r3", tokens=500, ended=NOV_5))
    run_chore(db, now=NOV_5, settings=settings)  # November's draft, built incrementally after

    finalize_invoices(db, now=NOV_25, settings=settings)  # sweeps every final month
    run_chore(db, now=NOV_25, settings=settings)
    moved = db.billing_ledger.find_one({"_id": stale["_id"]})
    assert (moved["booked"], moved["late"], moved["fence"]) == ("2026-11", True, None)
    november = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    lines = sorted((line["late"], line["tokens"]) for line in november["lines"])
    assert lines == [(False, 500), (True, 2_000)]
