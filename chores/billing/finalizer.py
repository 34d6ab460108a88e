"""Finalizing: due drafts frozen for good under a fencing token (`Finalizer`), as the last
run built them, pricing nothing. docs/design.md has the protocol.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import TypeAdapter, ValidationError
from pymongo import ReturnDocument

from chores.billing.invoice import (
    Invoice,
    latest_written,
    lines_need_review,
    not_before,
    priced_as_its_sums,
)
from chores.billing.sweeper import Sweeper
from chores.core import clock as _clock
from chores.core.db import Collections, Doc
from chores.core.exceptions import MalformedDocument
from chores.core.wording import counted
from chores.metering.anomalies import AnomalyLog
from chores.metering.ledger import Ledger
from chores.metering.lines import InvoiceLine
from chores.metering.progress import Progress

_LINES = TypeAdapter(list[InvoiceLine])


class Finalizer:
    """Freezes due drafts as the last run built them; prices nothing.

    For each due draft: take a fencing token (`fence`, incremented), stamp every
    entry of the period with it, count the stamped entries, and freeze the draft
    only if it still carries that token and holds exactly that many entries
    (compare-and-set). A draft that lags the ledger waits for the next run to
    rebuild it; usage that reaches the period after the freeze is swept into the
    open period as late usage. docs/design.md has the argument. An anomaly of the
    period still open when it is frozen flags it for review, even when the draft was
    built before the anomaly was recorded (a run that died before settling).
    """

    ATTEMPTS = 3

    def __init__(self, collections: Collections, ledger: Ledger, progress: Progress):
        self._c = collections
        self._ledger = ledger
        self._progress = progress
        self._anomalies = AnomalyLog(collections)
        self._sweeper = Sweeper(collections, ledger, progress)

    def finalize(self, now: datetime, grace: timedelta, org: str | None = None) -> list[str]:
        """Freeze every draft whose period ended `grace` before `now` and before the wall
        clock; sweep every final period in scope. Returns the ids frozen."""
        ended_by = min(now - grace, _clock.wall_clock())
        query: Doc = {"status": "draft", "period_end": {"$lte": ended_by}}
        if org is not None:
            query["org"] = {"$eq": org}
        # Read whole and checked: a draft edited by hand is never frozen (`Invoice.read`),
        # nor does it hold up the others.
        due: list[tuple[str, str]] = []
        malformed: list[MalformedDocument] = []
        for doc in self._c.invoices.find(query):
            try:
                invoice = Invoice.read(doc, self._c)
                priced_as_its_sums(doc, invoice, self._c)
            except MalformedDocument as exc:
                malformed.append(exc)
                continue
            due.append((invoice.org, invoice.period))
        frozen = [f"{o}:{p}" for o, p in sorted(due) if self._freeze(o, p, now)]
        self._sweeper.sweep_all(now, org)  # the safety net: every final period in scope
        if malformed:
            done = f"finalized {', '.join(frozen)}" if frozen else "finalized no other draft"
            refused = counted(len(malformed), "draft")
            raise MalformedDocument(f"{done}; refused {refused} edited by hand: {malformed[0]}")
        return frozen

    def _freeze(self, org: str, period: str, now: datetime) -> bool:
        invoice_id = f"{org}:{period}"
        # Tokens go above every stamp of the period, whatever the draft's own count says (a
        # final removed, then rebuilt as a draft: its entries carry the old tokens).
        stamped = self._ledger.highest_stamp(org, period)
        if stamped is not None:
            self._c.invoices.update_one(
                {"_id": invoice_id, "status": "draft"}, {"$max": {"fence": stamped}}
            )
        for _ in range(self.ATTEMPTS):
            fenced = self._c.invoices.find_one_and_update(
                {"_id": invoice_id, "status": "draft"},
                {"$inc": {"fence": 1}},
                projection={"fence": 1, "lines": 1, "needs_review": 1, "updated_at": 1},
                return_document=ReturnDocument.AFTER,
            )
            if fenced is None:
                return False  # final meanwhile
            token = int(fenced["fence"])
            # Announces the stamps: the settle that deletes this mark sweeps whatever a
            # stale stamp of ours put into a period frozen by a newer token.
            marks = self._progress.mark_dirty([(org, period)], now=now)
            self._ledger.stamp(org, period, token)
            if self._ledger.count_stamped_unfolded(org, period, token):
                self._progress.close_marks(marks)
                return False  # the draft lags the ledger: the next run folds the rest
            held = self._ledger.count_stamped(org, period, token)
            # Flagged for what stands when it is frozen: its lines (as frozen), and the
            # anomalies open on it now (the draft's flag may be older: one recorded, resolved,
            # reviewed or moved to another org since the draft was built).
            try:  # read as strictly as `Invoice.read` read it when it was found due
                lines = _LINES.validate_python(fenced.get("lines"), strict=True)
                flagged = lines_need_review(lines)
            except ValidationError:  # edited since it was read as due: as it stands
                flagged = bool(fenced.get("needs_review", True))
            review = flagged or bool(self._anomalies.open_periods([(org, period)]))
            final: Doc = {
                "status": "final",
                "finalized_at": not_before(now, fenced.get("updated_at"), latest_written(self._c)),
                "closed_fence": token,
                "needs_review": review,
            }
            frozen = self._c.invoices.update_one(
                {
                    "_id": invoice_id,
                    "status": "draft",
                    "fence": token,
                    "entries": held,
                    # the lines its flag was read from (a rebuild since that changed
                    # nothing leaves them equal: a run between does not refuse the freeze)
                    "lines": fenced.get("lines"),
                },
                {"$set": final},
            )
            if frozen.modified_count:
                self._sweeper.sweep({(org, period)}, now)  # what landed after the stamp
                # Our own stamps are what the final holds: nothing left to announce.
                self._progress.clear_dirty(marks)
                return True
            self._progress.close_marks(marks)
            draft = self._c.invoices.find_one({"_id": invoice_id}, {"entries": 1, "status": 1})
            if draft is None or draft.get("status") != "draft":
                return False
            if draft.get("entries", -1) < held:
                return False  # the draft lags the ledger: the next run rebuilds it
        return False
