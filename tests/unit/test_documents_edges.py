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
