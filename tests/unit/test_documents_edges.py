"""The chore's own documents checked as they are read, at their edges: how many problems a
message shows, and the bounds of an exact amount.

Found untested by mutation testing of chores/core/documents.py (stop 55): each docstring
names the mutant its test kills."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter
from typing_extensions import TypedDict

from chores.core.documents import DecimalText, Integer, check_shape
from chores.core.exceptions import MalformedDocument


class _Five(TypedDict):
    a: Integer
    b: Integer
    c: Integer
    d: Integer
    e: Integer


def test_a_document_with_more_problems_shows_the_first_three_and_counts_the_rest():
    """Mutants 30/31 (documents.py:61 SHOWN_PROBLEMS 3 -> 4 / 3 -> 2): three problems are
    shown, the others counted."""
    with pytest.raises(MalformedDocument) as raised:
        check_shape(TypeAdapter(_Five), {"_id": "x"}, collection="billing_runs")
    said = str(raised.value)
    assert "(a: missing; b: missing; c: missing; and 2 more)" in said
    assert "d: missing" not in said


class _Amount(TypedDict):
    amount_micros_exact: DecimalText


@pytest.mark.parametrize(
    ("text", "fits"),
    [("1E-60", True), ("1E-61", False), ("1E+40", True), ("9.9E+40", True), ("1E+41", False)],
)
def test_an_exact_amount_is_refused_only_past_its_bounds(text, fits):
    """Mutants 77/79/94/95/106/107 (documents.py:52 `exponent < -60`, `adjusted() > 40`):
    60 decimal places and 41 integer digits are amounts; one more of either is not."""
    doc = {"_id": "r1:1", "amount_micros_exact": text}
    if fits:
        check_shape(TypeAdapter(_Amount), doc, collection="billing_ledger")
    else:
        with pytest.raises(MalformedDocument, match="amount_micros_exact: not a decimal amount"):
            check_shape(TypeAdapter(_Amount), doc, collection="billing_ledger")


class _Three(TypedDict):
    a: Integer
    b: Integer
    c: Integer


def test_a_document_with_exactly_three_problems_shows_them_and_no_count():
    """Mutant 99 (documents.py:154 `more > 0` -> `>=`): no "and 0 more"."""
    with pytest.raises(MalformedDocument) as raised:
        check_shape(TypeAdapter(_Three), {"_id": "x"}, collection="billing_runs")
    assert "(a: missing; b: missing; c: missing):" in str(raised.value)


# --- found untested by mutation testing of chores/core/documents.py (stop 58) ---


def test_a_day_a_period_and_an_exact_amount_are_kept_as_the_text_written():
    """Mutants 13/15/19 (documents.py:35/41/54 `return text` removed): a `Day`, a `Period`
    and a `DecimalText` are checked, never converted (the module's rule: "12402.4" stays
    that text, so a reader goes on with what the chore wrote, not None)."""
    from pydantic import BaseModel

    from chores.core.documents import Day, Period, checked

    class _Dated(BaseModel):
        day: Day
        period: Period
        amount: DecimalText

    doc = {"_id": "x", "day": "2026-11-30", "period": "2026-11", "amount": "12402.4"}
    read = checked(_Dated, doc, collection="billing_ledger")
    assert (read.day, read.period, read.amount) == ("2026-11-30", "2026-11", "12402.4")


INT64_MAX = 2**63 - 1  # BSON's int64: -2**63 .. 2**63 - 1


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (INT64_MAX, None),
        (-INT64_MAX - 1, None),
        (INT64_MAX + 1, ("(the value)", INT64_MAX + 1)),
        (-INT64_MAX - 2, ("(the value)", -INT64_MAX - 2)),
    ],
)
def test_an_integer_is_past_int64_only_beyond_what_bson_stores(value, found):
    """Mutants at documents.py:165/172-173 (the INT64 range's bounds, `in` -> `not in`):
    the largest and smallest int64 are written as they are; one past either is named (a
    bare value as "(the value)") before pymongo refuses the whole write."""
    from chores.core.documents import past_int64

    assert past_int64(value) == found


def test_past_int64_names_the_first_integer_too_large_by_its_dotted_path():
    """Mutants at documents.py:174-184 (the walk through mappings, lists and tuples): the
    path names where the number sits, list indexes as numbers, so the run record can cap
    that very value and an `InvoiceTooLarge` can say which field it is. A bool (an int to
    Python) and text are no numbers; the first of two is the one named."""
    from chores.core.documents import past_int64

    big = 2**63
    draft = {
        "org": "acme",
        "flag": True,
        "lines": [{"tokens": 1, "amount_micros": 5}, {"tokens": 2, "amount_micros": big}],
        "later": big + 1,
    }
    assert past_int64(draft) == ("lines.1.amount_micros", big)
    assert past_int64({"pair": (1, -big - 1)}) == ("pair.1", -big - 1)
    assert past_int64({"org": "acme", "ok": [1, {"n": 2}], "flag": True}) is None


@pytest.mark.parametrize(
    ("doc", "org"),
    [
        ({"_id": "acme:2026-11", "org": "acme", "status": "draft"}, "acme"),
        ({"_id": "ws:a:2026-11", "org": 7, "status": "draft"}, "ws:a"),
        ({"_id": "ws-b:2026-11", "status": "draft"}, "ws-b"),
    ],
)
def test_a_malformed_draft_is_rebuilt_by_a_full_run_of_its_org(doc, org):
    """Mutants at documents.py:99-103 (`invoice_remedy`): a draft is derived from its
    ledger, so the remedy is a full run of its org, read from `org` or, when that is no
    text, from its id `<org>:<period>` (an org id may itself hold a colon)."""
    from chores.core.documents import invoice_remedy

    assert invoice_remedy(doc) == (
        f"`chore run --full --org {org}` rebuilds the draft from its ledger (remove it "
        "first if that run names it too)"
    )


@pytest.mark.parametrize(
    "doc",
    [
        {"_id": "acme:2026-11", "org": "acme", "status": "final"},
        {"_id": "acme:2026-11", "org": "acme"},
        {"_id": "no-colon", "status": "draft"},
        {"_id": "x:2026-11", "org": "", "status": "draft"},
    ],
)
def test_a_malformed_final_or_orgless_invoice_is_restored_not_rebuilt(doc):
    """Mutants at documents.py:102 (`status == "draft" and org`): a final invoice holds
    what was frozen, and a draft naming no org gives no command to run: both say to
    restore the document as it was."""
    from chores.core.documents import RESTORE, invoice_remedy

    assert invoice_remedy(doc) == RESTORE


class _Four(TypedDict):
    a: Integer
    b: Integer
    c: Integer
    d: Integer


def test_a_document_with_one_problem_past_those_shown_counts_it():
    """Mutant 135 (documents.py:154 `more > 0` -> `more > 1`): with four problems the
    fourth is not shown, so the message must say "and 1 more", or the reader believes
    the three shown are all there is to fix."""
    with pytest.raises(MalformedDocument) as raised:
        check_shape(TypeAdapter(_Four), {"_id": "x"}, collection="billing_runs")
    assert "(a: missing; b: missing; c: missing; and 1 more):" in str(raised.value)
