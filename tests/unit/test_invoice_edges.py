"""The invoice document and the split of its amounts over the views, at their edges (found
untested by mutation testing of `chores/billing/invoice.py` and `chores/reports/allocation.py`):
credit lines flag a review, a cell of no amount gets no share, a final splits on its billed
prices first, and usage the invoice does not hold says to run again."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import mongomock
import pytest

from chores import Settings
from chores.billing.invoice import (
    Invoice,
    build_invoice,
    line_review_reasons,
    lines_need_review,
    not_before,
    totals,
)
from chores.billing.period_ledger import EntryUsage, RunInfo, read_period
from chores.core.db import Collections
from chores.core.exceptions import InvoiceOutOfDate
from chores.metering.lines import InvoiceLine, LineKey
from chores.reports.allocation import allocate
from pricing import Registry, load_registry

from support import metered_months

# --- chores/billing/invoice.py ---


def line(amount, priced=True, model="m", tokens=10):
    return InvoiceLine(
        model=model,
        tier="paid",
        price_valid_from="2026-01-01" if priced else None,
        priced=priced,
        late=False,
        input_tokens=tokens,
        cached_tokens=0,
        output_tokens=0,
        unsplit_tokens=0,
        tokens=tokens,
        amount_micros=amount,
    )


def test_totals_sum_priced_lines_and_count_unpriced_tokens():
    assert totals([line(5), line(7), line(None, priced=False, tokens=3)]) == (12, 3)


def test_a_credit_line_alone_needs_review():
    # docs/contract.md `needs_review`: "a line of negative amount"
    assert lines_need_review([line(-1)]) is True
    assert lines_need_review([line(0), line(5)]) is False
    assert lines_need_review([line(None, priced=False)]) is True


def test_review_reasons_count_the_lines_below_zero():
    reasons = line_review_reasons(
        [line(-3), line(-1), line(0), line(None, priced=False, model="x")]
    )
    assert reasons[0].startswith("unpriced: x")
    assert len(reasons) == 2 and reasons[1].startswith("2 lines below zero")
    assert line_review_reasons([line(0), line(1)]) == []
    # an unpriced line is no credit
    assert line_review_reasons([line(None, priced=False, model="x")]) == [reasons[0]]


def test_not_before_bounds():
    now = datetime(2026, 3, 1, tzinfo=UTC)
    later = now + timedelta(seconds=5)
    latest = now + timedelta(seconds=10)
    assert not_before(now, later, latest) == later
    assert not_before(now, latest, latest) == latest  # at the bound: kept
    assert not_before(now, latest + timedelta(seconds=1), latest) == now  # past it: not kept
    assert not_before(now, now, latest) == now
    assert not_before(now, now - timedelta(seconds=1), latest) == now
    assert not_before(now, "2026-03-01", latest) == now


def test_the_stored_document_names_its_id_as_underscore_id():
    # SPEC: invoice document, `_id` = "<org>:<YYYY-MM>"; no other id field
    now = datetime(2026, 3, 1, tzinfo=UTC)
    inv = Invoice(
        _id="acme:2026-03",
        org="acme",
        period="2026-03",
        period_start=now,
        period_end=now,
        status="draft",
        lines=[],
        total_micros=0,
        unpriced_tokens=0,
        needs_review=False,
        runs=0,
        updated_at=now,
    )
    doc = inv.document()
    assert doc["_id"] == "acme:2026-03" and "id" not in doc


# --- chores/reports/allocation.py ---


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def period(registry):
    settings = Settings(mongo_url="mongomock://unused", redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    metered_months(db, settings, registry, seed=9, orgs=("acme",))
    collections = Collections.of(db, settings)
    invoice, usages = read_period(collections, "acme", "2026-11")
    assert any(line.amount_micros for line in invoice.lines)
    return invoice, usages


def test_ledger_usage_on_a_line_the_invoice_lacks_says_to_rerun(period, registry):
    invoice, usages = period
    fewer = invoice.model_copy(update={"lines": invoice.lines[1:]})
    with pytest.raises(InvoiceOutOfDate, match="are not invoiced"):
        allocate(fewer, usages, registry)


def test_a_line_unpriced_on_the_invoice_but_priced_in_the_ledger_is_out_of_date(period, registry):
    invoice, usages = period
    k = next(i for i, line in enumerate(invoice.lines) if line.amount_micros)
    lines = list(invoice.lines)
    lines[k] = lines[k].model_copy(update={"amount_micros": None})
    edited = invoice.model_copy(update={"lines": lines})
    with pytest.raises(InvoiceOutOfDate, match="priced differently"):
        allocate(edited, usages, registry)


def test_a_final_whose_entries_have_no_billed_price_is_split_on_its_own_prices(registry):
    """Entries written before `priced_as` have no billed price; a final priced by a registry
    that changed since is split on the prices it names (`priced_with`), not a crash."""
    settings = Settings(mongo_url="mongomock://unused", batch_size=40, redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    metered_months(db, settings, registry, seed=5, orgs=("acme", "globex"))
    collections = Collections.of(db, settings)
    found = [Invoice.model_validate(d) for d in collections.invoices.find({"status": "final"})]
    final = next(i for i in found if i.priced_with and any(ln.amount_micros for ln in i.lines))
    _, usages = read_period(collections, final.org, final.period)
    legacy = [dataclasses.replace(u, billed_line=None, billed_exact=None) for u in usages]
    data = registry.model_dump(mode="json")
    for model in data["models"]:
        for price in model["prices"]:
            for rate in ("input", "cached_input", "output"):
                if price.get(rate) is not None:
                    price[rate] = str(Decimal(price[rate]) * 3)
    changed = type(registry).model_validate(data)
    assert changed.fingerprint != final.registry
    allocation = allocate(final, legacy, changed)
    assert (allocation.pricing, allocation.exact) == ("invoiced", True)


def one_model(rate: str) -> Registry:
    """A registry of one paid model `m` at `rate` USD per million input and output tokens."""
    prices = [{"valid_from": "2026-01-01", "input": rate, "output": rate}]
    models = [{"id": "m", "tier": "paid", "prices": prices}]
    return Registry.model_validate({"version": "t", "models": models})


def input_usage(
    runner: str, tokens: int, billed_line: LineKey | None = None, billed_exact: Any = None
) -> EntryUsage:
    """`tokens` input tokens of model `m` on 2026-11-03 by `runner`, billed as given."""
    run = RunInfo(runner, "m", "s", subagent=False, parent_id=None, status="SUCCESS")
    day = date(2026, 11, 3)
    return EntryUsage(run, "m", False, False, day, tokens, 0, 0, 0, billed_line, billed_exact)


def november_invoice(usages: list[EntryUsage], registry: Registry) -> Invoice:
    return build_invoice(
        org="o",
        period="2026-11",
        groups=[u.group() for u in usages],
        runs=len(usages),
        entries=len(usages),
        anomalies_open=False,
        registry=registry,
        now=datetime(2026, 11, 5, tzinfo=UTC),
    )


def test_a_cell_of_no_amount_on_a_paid_line_gets_no_share():
    """A run with no tokens on a paid line (an entry that only moved its runner's
    high-water mark) keeps 0 micro-dollars; the line's amount stays with the runner that
    used it (its own exact amount, rounded)."""
    registry = one_model("1")
    usages = [input_usage("r1", 3), input_usage("r2", 0)]
    invoice = november_invoice(usages, registry)
    allocation = allocate(invoice, usages, registry)
    assert allocation.exact
    shares = {c.run.runner_id: c.usage.amount_micros for c in allocation.cells}
    assert shares == {"r1": invoice.lines[0].amount_micros, "r2": 0}


def test_a_final_priced_by_an_older_registry_is_split_on_its_billed_prices_first():
    """A final whose `registry` is not today's: the billed prices go first (module doc), even
    when today's registry happens to round to the same line amounts."""
    then, today = one_model("0.5"), one_model("0.45")
    key = LineKey("m", "paid", "2026-01-01", False)
    usages = [
        input_usage(runner, tokens, key, Decimal("0.5") * tokens)
        for runner, tokens in (("r1", 3), ("r2", 1))
    ]
    final = november_invoice(usages, then).model_copy(update={"status": "final"})
    assert final.registry != today.fingerprint and final.lines[0].amount_micros == 2
    allocation = allocate(final, usages, today)
    assert (allocation.pricing, allocation.exact) == ("billed", True)
    assert {c.run.runner_id: c.usage.amount_micros for c in allocation.cells} == {"r1": 2, "r2": 0}
