"""Invoices: built from the ledger, drafts while the period is open, then final for good.

`build_invoice` is pure (lines priced by `_lines.price_lines`). `Invoices` does
the I/O: aggregate ledger entries per period in the database, write drafts
(never over a final one), book late usage, settle the dirty marks, and
finalize due periods.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pricing import Registry

from ._anomalies import AnomalyLog
from ._db import Collections, Doc
from ._ledger import Ledger
from ._lines import InvoiceLine, UsageGroup, price_lines
from ._money import Micros
from ._periods import as_utc, next_period, period_bounds, period_of
from ._progress import Progress
from ._writes import replace_where


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
    updated_at: datetime
    finalized_at: datetime | None = None
    registry: str = ""  # fingerprint of the registry that priced it

    def document(self) -> Doc:
        return self.model_dump(by_alias=True)


@dataclass
class PeriodUsage:
    """What the ledger holds for one invoice: usage groups, runners, entry count."""

    groups: list[UsageGroup] = field(default_factory=list)
    runners: set[str] = field(default_factory=set)
    entries: int = 0


EMPTY_ENTRY: Doc = {"input_tokens": 0, "cached_tokens": 0, "output_tokens": 0, "unsplit_tokens": 0}


def build_invoice(
    *,
    org: str,
    period: str,
    usage: PeriodUsage,
    anomalies_open: bool,
    registry: Registry,
    now: datetime,
    status: Literal["draft", "final"] = "draft",
) -> Invoice:
    lines = price_lines(usage.groups, registry)
    start, end = period_bounds(period)
    total = sum(line.amount_micros for line in lines if line.amount_micros is not None)
    unpriced = sum(line.tokens for line in lines if not line.priced)
    return Invoice(
        _id=f"{org}:{period}",
        org=org,
        period=period,
        period_start=start,
        period_end=end,
        status=status,
        lines=lines,
        total_micros=Micros(total),
        unpriced_tokens=unpriced,
        needs_review=anomalies_open or any(not line.priced for line in lines),
        runs=len(usage.runners),
        updated_at=now,
        finalized_at=now if status == "final" else None,
        registry=registry.fingerprint,
    )


def open_period(now: datetime, final_periods: set[str]) -> str:
    """The period late usage goes to: `now`'s, or the first after any final one.

    A clock that went backwards can put `now` in a final period; usage must
    never be booked there.
    """
    period = period_of(now)
    while period in final_periods:
        period = next_period(period)
    return period


class Invoices:
    def __init__(
        self,
        collections: Collections,
        registry: Registry,
        ledger: Ledger,
        anomalies: AnomalyLog,
        progress: Progress,
    ):
        self._c = collections
        self._registry = registry
        self._ledger = ledger
        self._anomalies = anomalies
        self._progress = progress

    # reading ---------------------------------------------------------------
    def final_periods(self, orgs: Iterable[str]) -> dict[str, set[str]]:
        wanted = sorted(set(orgs))
        finals: dict[str, set[str]] = defaultdict(set)
        if wanted:
            query = {"org": {"$in": wanted}, "status": "final"}
            for doc in self._c.invoices.find(query, {"org": 1, "period": 1}):
                finals[doc["org"]].add(doc["period"])
        return finals

    def get(self, org: str, period: str) -> Invoice | None:
        doc = self._c.invoices.find_one({"_id": f"{org}:{period}"})
        return Invoice.model_validate(doc) if doc else None

    def usage(
        self, pairs: set[tuple[str, str]], *, booked_only: bool = False
    ) -> dict[tuple[str, str], PeriodUsage]:
        """Ledger entries of these `(org, period)` invoices, summed in the database."""
        usage: dict[tuple[str, str], PeriodUsage] = defaultdict(PeriodUsage)
        if not pairs:
            return usage
        orgs = sorted({org for org, _ in pairs})
        periods = sorted({period for _, period in pairs})
        belongs: list[Doc] = [{"booked": {"$in": periods}}]
        if not booked_only:
            belongs.append({"booked": None, "usage_period": {"$in": periods}})
        pipeline: list[Doc] = [
            # An entry that only moved a high-water mark is no usage: no line, no run.
            {"$match": {"org": {"$in": orgs}, "$or": belongs, "$nor": [EMPTY_ENTRY]}},
            {
                "$group": {
                    "_id": {
                        "org": "$org",
                        "period": {"$ifNull": ["$booked", "$usage_period"]},
                        "model": "$model",
                        "byok": "$byok",
                        "late": "$late",
                        "day": "$usage_day",
                    },
                    "input": {"$sum": "$input_tokens"},
                    "cached": {"$sum": "$cached_tokens"},
                    "output": {"$sum": "$output_tokens"},
                    "unsplit": {"$sum": "$unsplit_tokens"},
                    "runners": {"$addToSet": "$runner_id"},
                    "entries": {"$sum": 1},
                }
            },
        ]
        for row in self._c.ledger.aggregate(pipeline):
            key = row["_id"]
            pair = (key["org"], key["period"])
            if pair not in pairs:
                continue
            period_usage = usage[pair]
            period_usage.groups.append(
                UsageGroup(
                    model=key["model"],
                    byok=bool(key["byok"]),
                    late=bool(key["late"]),
                    day=date.fromisoformat(key["day"]),
                    input=row["input"],
                    cached=row["cached"],
                    output=row["output"],
                    unsplit=row["unsplit"],
                )
            )
            period_usage.runners.update(row["runners"])
            period_usage.entries += row["entries"]
        return usage

    # writing ---------------------------------------------------------------
    def rebuild(self, pairs: set[tuple[str, str]], now: datetime) -> list[str]:
        """Rebuild the drafts of these `(org, period)` pairs from the ledger, in one write.

        A final invoice, or a draft being finalized (`closing`), is never replaced;
        an empty invoice is only written over an existing one or to flag a review.
        """
        finals = self.final_periods(org for org, _ in pairs)
        drafts = {(org, period) for org, period in pairs if period not in finals[org]}
        usage = self.usage(drafts)
        review = self._anomalies.open_periods(drafts)
        ids = [f"{org}:{period}" for org, period in drafts]
        existing = {d["_id"] for d in self._c.invoices.find({"_id": {"$in": ids}}, {"_id": 1})}
        invoices = [
            build_invoice(
                org=org,
                period=period,
                usage=usage[(org, period)],
                anomalies_open=(org, period) in review,
                registry=self._registry,
                now=now,
            )
            for org, period in sorted(drafts)
            if usage[(org, period)].entries
            or (org, period) in review
            or f"{org}:{period}" in existing
        ]
        refused = replace_where(
            self._c.invoices,
            [
                ({"_id": inv.id, "status": {"$ne": "final"}, "closing": None}, inv.document())
                for inv in invoices
            ],
        )
        return [inv.id for i, inv in enumerate(invoices) if i not in refused]

    def settle(self, now: datetime, org: str | None = None) -> list[str]:
        """Book late usage and rebuild every dirty or stale draft in scope; ids written.

        Only marks read *closed* are deleted, after the rebuild: a crash leaves
        them, and a mark whose writes have not landed yet survives this settle.
        """
        mark_ids, pairs = self._progress.dirty(org, as_utc(now))
        pairs |= self._stale_drafts(org)
        finals = self.final_periods(o for o, _ in pairs)
        for org_id in sorted({o for o, _ in pairs}):
            late = {p for o, p in pairs if o == org_id and p in finals[org_id]}
            if late:
                target = open_period(now, finals[org_id])
                self._ledger.book_late(org_id, late, target)
                pairs.add((org_id, target))
        written = self.rebuild(pairs, now)
        self._progress.clear_dirty(mark_ids)
        return written

    def _stale_drafts(self, org: str | None) -> set[tuple[str, str]]:
        """Drafts priced with another registry than the current one."""
        query: Doc = {"status": "draft", "registry": {"$ne": self._registry.fingerprint}}
        if org is not None:
            query["org"] = {"$eq": org}
        return {
            (d["org"], d["period"]) for d in self._c.invoices.find(query, {"org": 1, "period": 1})
        }

    def finalize(self, now: datetime, grace: timedelta, org: str | None = None) -> list[str]:
        """Turn every draft whose period ended more than `grace` ago final; ids finalized.

        Each period is fenced first (`closing` = a token of this attempt): only the
        latest attempt can write the final invoice, and it does so from every entry
        booked to the period after it took the fence, so two overlapping finalizes
        (or one that crashed, then a retry) cannot leave a booked entry uncounted.
        A constant number of operations per invoice; it runs once a day.
        """
        self.settle(now, org)
        query: Doc = {"status": "draft", "period_end": {"$lte": now - grace}}
        if org is not None:
            query["org"] = {"$eq": org}
        due = sorted(
            (d["org"], d["period"]) for d in self._c.invoices.find(query, {"org": 1, "period": 1})
        )
        finalized: list[str] = []
        for org_id, period in due:
            if self._finalize_one(org_id, period, now):
                finalized.append(f"{org_id}:{period}")
        self.settle(now, org)  # the open drafts that received late usage
        return finalized

    def _finalize_one(self, org: str, period: str, now: datetime) -> bool:
        invoice_id, token = f"{org}:{period}", uuid.uuid4().hex
        fenced = self._c.invoices.find_one_and_update(
            {"_id": invoice_id, "status": "draft"}, {"$set": {"closing": token}}
        )
        if fenced is None:
            return False  # final meanwhile
        # Late usage of this period goes to `target`: announce it before it can happen.
        target = open_period(now, self.final_periods([org])[org] | {period})
        marks = self._progress.mark_dirty([(org, target)], now=now)
        self._ledger.book_period(org, period)
        pair = (org, period)
        invoice = build_invoice(
            org=org,
            period=period,
            usage=self.usage({pair}, booked_only=True)[pair],
            anomalies_open=bool(self._anomalies.open_periods({pair})),
            registry=self._registry,
            now=now,
            status="final",
        )
        written = self._c.invoices.replace_one(
            {"_id": invoice_id, "status": "draft", "closing": token}, invoice.document()
        )
        if written.matched_count:
            # Entries that arrived between the booking and the final write are late.
            self._ledger.book_late(org, [period], target)
        self._progress.close_marks(marks)
        return bool(written.matched_count)
