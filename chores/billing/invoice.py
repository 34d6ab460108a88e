"""The invoice document: its model (`Invoice`), built from priced usage (`build_invoice`),
its totals and why its lines need a person (`lines_need_review`), the `(org, period)` a
stored one names (`invoice_pair`), and the time it is dated (`not_before`).

Pure but for `Invoice.read` and `priced_as_its_sums`, which read a stored document.
Drafts are built by `invoices.Invoices`, frozen by `finalizer.Finalizer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from typing_extensions import TypedDict

from chores.billing.drafts import DraftSums
from chores.core import clock as _clock
from chores.core.db import Collections, Doc
from chores.core.documents import (
    Period,
    Text,
    check_shape,
    checked,
    invoice_remedy,
    invoice_sum_problems,
    not_as_written,
)
from chores.core.money import Micros
from chores.core.periods import as_utc, period_bounds
from chores.core.wording import counted
from chores.metering.lines import InvoiceLine, UsageGroup, price_lines
from pricing import Registry


class Invoice(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(alias="_id")
    org: str
    period: str
    period_start: datetime
    period_end: datetime
    status: Literal["draft", "final"]
    currency: Literal["USD"] = "USD"
    lines: list[InvoiceLine]
    total_micros: int
    unpriced_tokens: int
    needs_review: bool
    runs: int
    entries: int | None = None  # ledger entries with usage it holds (None: built before counts)
    updated_at: datetime
    finalized_at: datetime | None = None
    registry: str = ""  # fingerprint of the registry that priced it
    # The models of that registry its lines name (`Registry.excerpt`), frozen with a final:
    # its lines can be split exactly whatever the registry becomes (reports.allocation).
    priced_with: dict[str, Any] | None = None

    @field_validator("priced_with")
    @classmethod
    def _an_excerpt(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """What a report re-prices the invoice with: a registry (`Registry.excerpt`)."""
        if value is not None:
            try:
                Registry.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(f"not a registry ({where}: {first['msg']})") from None
        return value

    def document(self) -> Doc:
        return self.model_dump(by_alias=True)

    @classmethod
    def read(cls, doc: Doc, collections: Collections, *, own_sums: bool = True) -> Invoice:
        """The invoice a stored document holds (`MalformedDocument` if it holds none, or,
        with `own_sums`, if its total is not what its lines sum to: `invoice_sum_problems`;
        a draft is derived from its ledger, and rebuilt from it once removed)."""
        remedy = invoice_remedy(doc)
        collection = collections.invoices.name
        invoice = checked(cls, doc, collection=collection, remedy=remedy)
        said = invoice_sum_problems(doc) if own_sums else []
        if said:
            raise not_as_written(collection, invoice.id, "; ".join(said), remedy)
        return invoice


def build_invoice(
    *,
    org: str,
    period: str,
    groups: Iterable[UsageGroup],
    runs: int,
    entries: int,
    anomalies_open: bool,
    registry: Registry,
    now: datetime,
) -> Invoice:
    """The draft invoice of `groups` (the usage of `runs` runners over `entries` ledger
    entries). A final is a draft frozen as it stands (`Finalizer`)."""
    lines = price_lines(groups, registry)
    start, end = period_bounds(period)
    total, unpriced = totals(lines)
    return Invoice(
        _id=f"{org}:{period}",
        org=org,
        period=period,
        period_start=start,
        period_end=end,
        status="draft",
        lines=lines,
        total_micros=Micros(total),
        unpriced_tokens=unpriced,
        needs_review=anomalies_open or lines_need_review(lines),
        runs=runs,
        entries=entries,
        updated_at=now,
        finalized_at=None,
        registry=registry.fingerprint,
        priced_with=registry.excerpt(line.model for line in lines if line.model is not None),
    )


def totals(lines: Iterable[InvoiceLine]) -> tuple[int, int]:
    """An invoice's total (micro-dollars of its priced lines) and unpriced tokens."""
    total = unpriced = 0
    for line in lines:
        if line.amount_micros is not None:
            total += line.amount_micros
        if not line.priced:
            unpriced += line.tokens
    return total, unpriced


def priced_as_its_sums(doc: Doc, invoice: Invoice, collections: Collections) -> None:
    """Refuse a draft whose lines are not what its kept sums price to with the prices it
    names (`priced_with`, the registry excerpt that priced it): lines and a total edited
    alike, which no other check of a draft sees (outside review: a finalize froze one, a
    final charging an edit for good). A draft without kept sums, or priced with no model
    of a registry, is not checked here."""
    sums = DraftSums.of(doc)
    if not sums.kept_sums or invoice.priced_with is None:
        return
    priced = price_lines(sums.usage_groups(), Registry.model_validate(invoice.priced_with))
    if priced != invoice.lines:
        said = "its lines are not what its usage_groups price to at the prices it names"
        raise not_as_written(collections.invoices.name, invoice.id, said, invoice_remedy(doc))


def lines_need_review(lines: Iterable[InvoiceLine]) -> bool:
    """Whether an invoice's lines alone need a person: an unpriced line, or a line below
    zero (a credit: tokens charged in a period now final and reclassified since, unsplit
    to input or input to cached, `counters.reclassified_mark`, credited as late usage)."""
    return any(not line.priced or (line.amount_micros or 0) < 0 for line in lines)


# Why an invoice is flagged when neither its lines nor an anomaly still waiting for review
# say so: a final keeps the flag it was frozen with, after its anomalies healed or were
# reviewed (a reviewed anomaly stays open, docs/contract.md).
FLAGGED_WHEN_BUILT = "flagged when it was built; no anomaly of it is waiting for review any more"


def line_review_reasons(lines: Sequence[InvoiceLine]) -> list[str]:
    """Why an invoice's lines need a person (`lines_need_review`), a sentence each."""
    reasons = []
    unpriced = sorted({str(line.model) for line in lines if not line.priced})
    if unpriced:
        reasons.append(f"unpriced: {', '.join(unpriced)} (no registry price at its usage time)")
    below_zero = sum(1 for line in lines if (line.amount_micros or 0) < 0)
    if below_zero:
        reasons.append(
            f"{counted(below_zero, 'line')} below zero (a credit of tokens that changed kind "
            "after their month was final)"
        )
    return reasons


class _InvoicePair(TypedDict):
    org: Text
    period: Period


_INVOICE_PAIR = TypeAdapter(_InvoicePair)
PAIR_FIELDS: Doc = {"org": 1, "period": 1, "status": 1}  # status: what to do if malformed


def invoice_pair(doc: Doc, collections: Collections) -> tuple[str, str]:
    """The `(org, period)` an invoice document names (`MalformedDocument` if it names none)."""
    remedy = invoice_remedy(doc)
    check_shape(_INVOICE_PAIR, doc, collection=collections.invoices.name, remedy=remedy)
    return doc["org"], doc["period"]


def latest_written(collections: Collections) -> datetime:
    """The latest time a run may have written: this machine's clock plus the skew a run's
    `now` may lead it by (`clock.checked_now`), FUTURE_SKEW_SECONDS."""
    skew = timedelta(seconds=collections.settings.future_skew_seconds)
    return _clock.wall_clock() + skew


def not_before(now: datetime, written: Any, latest: datetime) -> datetime:
    """`now`, or the time a document says it was written when that is later: a run whose
    `now` lags the last writer's (a lagging host, a replay) never dates it back. A time
    after `latest` is no time a run wrote (an edit by hand): not kept, or a final would be
    dated 2099 by a draft edited so (review)."""
    if isinstance(written, datetime) and now < as_utc(written) <= latest:
        return as_utc(written)
    return now
