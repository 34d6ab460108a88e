"""The rows of `chore usage --by tier|day|model|session|run` and of the invoice page's
summary by tier, from hand-made cells (`chores/reports/breakdown.py`; found untested by
mutation testing): a cell of no amount is unpriced, rows by tier in tier order, by day in
day order, the largest amount first, runs counted once a row, and the date filters at their
bounds."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from chores.billing.period_ledger import RunInfo
from chores.metering.lines import LineKey
from chores.reports.breakdown import AllocatedUsage, Cell, Filters, rows, tier_of

NOV_2, NOV_3 = date(2026, 11, 2), date(2026, 11, 3)


def cell(
    runner: str, session: str, day: date, model: str, tier: str, usage: AllocatedUsage
) -> Cell:
    """`usage` of `runner` on `day`, on a line of `model` at `tier`."""
    run = RunInfo(runner, model, session, False, None, "SUCCESS")
    exact = None if usage.amount_micros is None else Decimal(usage.amount_micros)
    return Cell(run, day, LineKey(model, tier, "2024-08-06", False), usage, exact)


# AllocatedUsage(input, cached, output, unsplit, amount_micros, unpriced_tokens)
CELLS = [
    cell("r1", "s1", NOV_3, "gpt-4o", "paid", AllocatedUsage(100, 1, 10, 0, 50, 0)),
    cell("r2", "s1", NOV_2, "gpt-4o", "free", AllocatedUsage(200, 2, 20, 3, 0, 0)),
    cell("r3", "s2", NOV_2, "claude", "byok", AllocatedUsage(300, 3, 30, 0, 7, 0)),
    cell("r4", "s2", NOV_3, "mystery", "paid", AllocatedUsage(5, 0, 5, 0, None, 10)),
    cell("r1", "s1", NOV_2, "gpt-4o", "paid", AllocatedUsage(1, 1, 1, 1, 20, 0)),
]


def view(by: str, filters: Filters | None = None) -> list[tuple[str, int, AllocatedUsage]]:
    return [(row.key, row.runs, row.usage) for row in rows(CELLS, by, filters)]


def test_a_cell_of_no_amount_is_unpriced_whatever_its_line_says():
    assert [tier_of(c) for c in CELLS] == ["paid", "free", "byok", "unpriced", "paid"]


def test_rows_by_tier_come_in_tier_order():
    assert view("tier") == [
        ("paid", 1, AllocatedUsage(101, 2, 11, 1, 70, 0)),
        ("free", 1, AllocatedUsage(200, 2, 20, 3, 0, 0)),
        ("byok", 1, AllocatedUsage(300, 3, 30, 0, 7, 0)),
        ("unpriced", 1, AllocatedUsage(5, 0, 5, 0, None, 10)),
    ]


def test_rows_by_day_come_in_day_order_and_count_each_run_once():
    assert view("day") == [
        ("2026-11-02", 3, AllocatedUsage(501, 6, 51, 4, 27, 0)),
        ("2026-11-03", 2, AllocatedUsage(105, 1, 15, 0, 50, 10)),
    ]


def test_rows_by_model_session_and_run_put_the_largest_amount_first():
    assert [(key, runs) for key, runs, _ in view("model")] == [
        ("gpt-4o", 2),
        ("claude", 1),
        ("mystery", 1),
    ]
    assert [(key, runs) for key, runs, _ in view("session")] == [("s1", 2), ("s2", 2)]
    by_run = [key for key, _, _ in view("run")]
    assert by_run[0] == "r1" and by_run[-1] == "r4"  # unpriced, though it has tokens


def test_the_date_filters_keep_the_days_at_their_bounds():
    assert [key for key, _, _ in view("day", Filters(since=NOV_3))] == ["2026-11-03"]
    assert [key for key, _, _ in view("day", Filters(until=NOV_2))] == ["2026-11-02"]
    assert [key for key, _, _ in view("day", Filters(since=NOV_2, until=NOV_2))] == ["2026-11-02"]
    assert not Filters().active
    assert Filters(since=NOV_2).active and Filters(until=NOV_2).active
    assert Filters(models=frozenset({"x"})).active and Filters(statuses=frozenset({"X"})).active
