"""Where metering stands between runs: cursors, pending runners and dirty invoices.

None of this is billing state: losing any of it costs a re-read, never a charge.

- *cursor* (`billing_cursors`, `_id` = `"org:<org>"`, or `"*"` for all orgs): the highest
  plausible `last_updated_db` seen by a completed run; only moves forward.
- *pending* (`billing_pending`, `_id` = runner id): runners last seen running or
  waiting for a spawn finding; re-read by `_id` every run.
- *dirty marks* (`billing_dirty`): an `(org, period)` whose invoice must be
  rebuilt. Written before the ledger entries they announce and deleted only
  after the rebuild, by id, so a crash at any point leaves the mark for the
  next run, and a mark written by a concurrent run is never deleted unseen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pymongo.errors import BulkWriteError

from ._db import Collections, Doc
from ._ledger import DUPLICATE_KEY

ALL_ORGS = "*"


def insert_ignoring_duplicates(collection: Any, documents: Sequence[Doc]) -> None:
    if not documents:
        return
    try:
        collection.insert_many(list(documents), ordered=False)
    except BulkWriteError as exc:
        if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise


class Progress:
    def __init__(self, collections: Collections):
        self._c = collections

    # cursor -------------------------------------------------------------
    def cursor(self, scope: str) -> float | None:
        doc = self._c.cursors.find_one({"_id": scope})
        return float(doc["stamp"]) if doc and doc.get("stamp") is not None else None

    def advance_cursor(self, scope: str, stamp: float) -> None:
        self._c.cursors.update_one({"_id": scope}, {"$max": {"stamp": stamp}}, upsert=True)

    # pending runners ----------------------------------------------------
    def pending(self, org: str | None) -> list[Doc]:
        query: Doc = {} if org is None else {"org": {"$eq": org}}
        return list(self._c.pending.find(query))

    def set_pending(self, add: Sequence[Doc], remove: Iterable[str]) -> None:
        removed = list(remove)
        if removed:
            self._c.pending.delete_many({"_id": {"$in": removed}})
        insert_ignoring_duplicates(self._c.pending, add)

    # dirty invoices -----------------------------------------------------
    def mark_dirty(self, pairs: Iterable[tuple[str, str]], run_id: str) -> None:
        marks = [
            {"_id": f"{run_id}:{org}:{period}", "org": org, "period": period}
            for org, period in sorted(set(pairs))
        ]
        insert_ignoring_duplicates(self._c.dirty, marks)

    def dirty(self, org: str | None) -> tuple[list[str], set[tuple[str, str]]]:
        """`(mark ids, (org, period) pairs)` of the marks in scope."""
        query: Doc = {} if org is None else {"org": {"$eq": org}}
        ids: list[str] = []
        pairs: set[tuple[str, str]] = set()
        for mark in self._c.dirty.find(query):
            ids.append(mark["_id"])
            pairs.add((mark["org"], mark["period"]))
        return ids, pairs

    def clear_dirty(self, mark_ids: Sequence[str]) -> None:
        if mark_ids:
            self._c.dirty.delete_many({"_id": {"$in": list(mark_ids)}})
