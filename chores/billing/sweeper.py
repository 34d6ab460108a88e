"""Late usage: what final invoices do not hold is moved into the org's open period
(`open_period`) by the `Sweeper`. Prices nothing: the drafts that receive it are marked
dirty and rebuilt by the settle that sweeps, or by the next run. docs/design.md has the
protocol.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from chores.billing.invoice import PAIR_FIELDS, invoice_pair
from chores.core.db import Collections, Doc
from chores.core.periods import next_period, period_of
from chores.metering.ledger import Ledger
from chores.metering.progress import Progress


def open_period(now: datetime, final_periods: set[str]) -> str:
    """The period late usage goes to: `now`'s, or the first after any final one.

    A clock that went backwards can put `now` in a final period; usage must
    never be booked there.
    """
    period = period_of(now)
    while period in final_periods:
        period = next_period(period)
    return period


class Swept(NamedTuple):
    """What a `Sweeper.sweep` did."""

    marks: list[str]  # the targets' marks, closed after the move
    targets: set[tuple[str, str]]  # the open periods the late usage went to
    finals: set[tuple[str, str]]  # the pairs it found final (and swept)


class Sweeper:
    """Moves what final invoices do not hold into the open period, as late usage.

    Prices nothing: the open drafts that receive late usage are marked dirty, and
    rebuilt by the settle that runs it or by the next run.
    """

    def __init__(self, collections: Collections, ledger: Ledger, progress: Progress):
        self._c = collections
        self._ledger = ledger
        self._progress = progress

    def final_fences(self, orgs: Iterable[str]) -> dict[str, dict[str, int | None]]:
        """org -> {final period -> the token that froze it (None: frozen before tokens)}."""
        wanted = sorted(set(orgs))
        finals: dict[str, dict[str, int | None]] = defaultdict(dict)
        if wanted:
            query = {"org": {"$in": wanted}, "status": "final"}
            for doc in self._c.invoices.find(query, {**PAIR_FIELDS, "closed_fence": 1}):
                org, period = invoice_pair(doc, self._c)
                finals[org][period] = doc.get("closed_fence")
        return finals

    def sweep(self, pairs: set[tuple[str, str]], now: datetime) -> Swept:
        """Sweep the final ones among `pairs` into their org's open period.

        The targets are marked (open) before the move and the marks closed after it,
        so a crash in between leaves them for the next settle.
        """
        finals = self.final_fences(org for org, _ in pairs)
        final_pairs = [
            (org, period, finals[org][period])
            for org, period in sorted(pairs)
            if period in finals[org]
        ]
        found = {(org, period) for org, period, _ in final_pairs}
        late = sorted(self._ledger.with_stragglers(final_pairs))
        if not late:
            return Swept([], set(), found)
        target = {org: open_period(now, set(finals[org])) for org, _ in late}
        marks = self._progress.mark_dirty(target.items(), now=now)
        for org, period in late:
            self._ledger.sweep(org, period, finals[org][period], target[org])
        self._progress.close_marks(marks)
        return Swept(marks, set(target.items()), found)

    def sweep_all(self, now: datetime, org: str | None = None) -> None:
        """Sweep every final period in scope."""
        query: Doc = {"status": "final"}
        if org is not None:
            query["org"] = {"$eq": org}
        found = self._c.invoices.find(query, PAIR_FIELDS)
        self.sweep({invoice_pair(d, self._c) for d in found}, now)
