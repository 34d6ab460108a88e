"""Invoices: built from the ledger, drafts while the period is open, then final for good.

`build_invoice` is pure (lines priced by `_lines.price_lines`). `Invoices` does
the I/O: aggregate ledger entries per period in the database, write drafts
(never over a final one), book late usage, settle the dirty marks, and
finalize due periods.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import DuplicateKeyError

from pricing import Registry

from ._anomalies import AnomalyLog
from ._db import Collections, Doc
from ._ledger import Ledger
from ._lines import InvoiceLine, UsageGroup, price_lines
from ._money import Micros
from ._periods import next_period, period_bounds, period_of
from ._progress import Progress


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
    registry: str = ""

    def document(self) -> Doc:
        return self.model_dump(by_alias=True)


def build_invoice(
    *,
    org: str,
    period: str,
    groups: Sequence[UsageGroup],
    runs: int,
    anomalies_open: bool,
    registry: Registry,
    now: datetime,
    status: Literal["draft", "final"] = "draft",
) -> Invoice:
    lines = price_lines(groups, registry)
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
        runs=runs,
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

    def usage_groups(
        self, pairs: set[tuple[str, str]], *, booked_only: bool = False
    ) -> tuple[dict[tuple[str, str], list[UsageGroup]], dict[tuple[str, str], set[str]]]:
        """Ledger entries of these `(org, period)` invoices, summed in the database."""
        groups: dict[tuple[str, str], list[UsageGroup]] = defaultdict(list)
        runners: dict[tuple[str, str], set[str]] = defaultdict(set)
        if not pairs:
            return groups, runners
        orgs = sorted({org for org, _ in pairs})
        periods = sorted({period for _, period in pairs})
        belongs: list[Doc] = [{"booked": {"$in": periods}}]
        if not booked_only:
            belongs.append({"booked": None, "usage_period": {"$in": periods}})
        pipeline: list[Doc] = [
            {"$match": {"org": {"$in": orgs}, "$or": belongs}},
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
                }
            },
        ]
        for row in self._c.ledger.aggregate(pipeline):
            key = row["_id"]
            pair = (key["org"], key["period"])
            if pair not in pairs:
                continue
            groups[pair].append(
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
            runners[pair].update(row["runners"])
        return groups, runners

    # writing ---------------------------------------------------------------
    def _write(self, invoice: Invoice) -> bool:
        """Write a draft or the final invoice; a final invoice is never replaced."""
        try:
            self._c.invoices.replace_one(
                {"_id": invoice.id, "status": {"$ne": "final"}}, invoice.document(), upsert=True
            )
        except DuplicateKeyError:
            return False  # already final
        return True

    def rebuild(self, pairs: set[tuple[str, str]], now: datetime) -> list[str]:
        """Rebuild the drafts of these `(org, period)` pairs from the ledger."""
        finals = self.final_periods(org for org, _ in pairs)
        drafts = {(org, period) for org, period in pairs if period not in finals[org]}
        groups, runners = self.usage_groups(drafts)
        review = self._anomalies.open_periods(drafts)
        written = []
        for org, period in sorted(drafts):
            invoice = build_invoice(
                org=org,
                period=period,
                groups=groups[(org, period)],
                runs=len(runners[(org, period)]),
                anomalies_open=(org, period) in review,
                registry=self._registry,
                now=now,
            )
            if self._write(invoice):
                written.append(invoice.id)
        return written

    def settle(self, now: datetime, org: str | None = None) -> list[str]:
        """Book late usage and rebuild every dirty or stale draft in scope; ids written.

        Dirty marks are cleared only after the rebuild, so a crash leaves them.
        """
        mark_ids, pairs = self._progress.dirty(org)
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
        """Turn every draft whose period ended more than `grace` ago final; ids finalized."""
        self.settle(now, org)
        query: Doc = {"status": "draft", "period_end": {"$lte": now - grace}}
        if org is not None:
            query["org"] = {"$eq": org}
        due = sorted(
            (d["org"], d["period"]) for d in self._c.invoices.find(query, {"org": 1, "period": 1})
        )
        finalized: list[str] = []
        for org_id, period in due:
            self._ledger.book_period(org_id, period)
            groups, runners = self.usage_groups({(org_id, period)}, booked_only=True)
            pair = (org_id, period)
            invoice = build_invoice(
                org=org_id,
                period=period,
                groups=groups[pair],
                runs=len(runners[pair]),
                anomalies_open=bool(self._anomalies.open_periods({pair})),
                registry=self._registry,
                now=now,
                status="final",
            )
            if self._write(invoice):
                finalized.append(invoice.id)
            # Entries that slipped in between the booking and the final write are late.
            finals = self.final_periods([org_id])[org_id] | {period}
            target = open_period(now, finals)
            if self._ledger.book_late(org_id, [period], target):
                self._progress.mark_dirty([(org_id, target)], run_id=f"finalize:{period}")
        if finalized:
            self.settle(now, org)
        return finalized
