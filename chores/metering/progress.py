"""Where metering stands between runs: cursors, pending runners and dirty invoices.

None of this is billing state: losing any of it costs a re-read, never a charge.

- *cursor* (`billing_cursors`, `_id` = `"org:<org>"`, or `"*"` for all orgs): the highest
  plausible `last_updated_db` seen by a completed run; only moves forward. A full pass in
  progress keeps its own (`"full:"` + the scope), deleted when the pass completes: a pass
  cut short (a time limit) resumes from it instead of starting over.
- *pending* (`billing_pending`, claims on runners): runners last seen running or
  waiting for a spawn finding; re-read by `_id` every run, or once an hour for an idle
  one (its claim's `recheck_at`, `IDLE_RECHECK`). Also finished runners held by an
  anomaly, re-read once an hour while recent (`pipeline.Batch.lets_go`).
- *dirty marks* (`billing_dirty`): an `(org, period)` whose invoice must be
  rebuilt. Written (open) before the writes they announce, closed once those
  landed, and deleted by a settle only if it read them closed, after its
  rebuild: a crash at any point leaves the mark for the next run, and no
  settle can delete a mark before the entries it announces are readable.
  An open mark of a writer that died expires by the wall clock (`expires_at`),
  never by a caller's `now`: a run whose `now` lags cannot make a live writer's
  marks look expired (chores/core/clock.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NotRequired

from pydantic import TypeAdapter
from typing_extensions import TypedDict

from chores.core import clock as _clock
from chores.core.db import Collections, Doc
from chores.core.documents import Number, Period, Text, check_shape
from chores.core.periods import as_utc
from chores.core.writes import insert_ignoring_duplicates, upsert_as_written

ALL_ORGS = "*"


def cursor_scope(org: str | None) -> str:
    """The cursor of the runs of `org` (`org:acme`), or of every org (`*`)."""
    return f"org:{org}" if org is not None else ALL_ORGS


def full_pass_scope(scope: str) -> str:
    """The cursor of a full pass over `scope` in progress (`full:org:acme`, `full:*`)."""
    return f"full:{scope}"


OPEN_MARK_EXPIRY = timedelta(hours=6)
# How often a run re-reads an idle pending runner (not written for PENDING_IDLE_SECONDS):
# its claim says when (`recheck_at`); a claim without one is read by every run.
IDLE_RECHECK = timedelta(hours=1)


def next_recheck(now: datetime) -> datetime:
    """When an idle runner claimed at `now` is due again: the next full hour (UTC), at most an
    hour away. Every idle claim on a runner made within one hour (a full pass, or the changed
    scan, may read it before its claim is due) falls due at the same run, which reads them
    together and leaves one: claims on a runner do not pile up. The idle runners of a
    platform are all re-read by the first run of each hour, together: what every run cost
    before they were idle."""
    return as_utc(now).replace(minute=0, second=0, microsecond=0) + IDLE_RECHECK


def due_claims(now: datetime) -> Doc:
    """The pending-list claims a run at `now` reads: every one but an idle runner's not yet
    due for its hourly re-read."""
    return {"$or": [{"recheck_at": None}, {"recheck_at": {"$lte": now}}]}


class _Cursor(TypedDict):
    stamp: NotRequired[Number]  # a runner's `last_updated_db`


_CURSOR = TypeAdapter(_Cursor)
_STAMP_AS_WRITTEN: Doc = {  # `$type` also matches a list holding a number: not one
    "$or": [{"stamp": {"$type": "number"}}, {"stamp": {"$exists": False}}],
    "stamp": {"$not": {"$type": "array"}},
}
_REMOVE_CURSOR = "remove it: the next run reads every runner again, from the first"


class _Claim(TypedDict):
    source_id: Any  # the runner document's `_id`, of whatever type it has
    runner_id: NotRequired[Text]  # none on a document written before claims (`runner_of`)


class _Mark(TypedDict):
    org: Text
    period: Period


# Either is what a run reads again (a claim) or rebuilds (a mark): a full run reads every
# runner and rebuilds every draft, whatever the pending list and the marks hold.
_CLAIM, _MARK = TypeAdapter(_Claim), TypeAdapter(_Mark)
_REMOVE = "remove it: a full run (`chore run --full`) reads every runner and rebuilds every draft"


def runner_of(claim: Doc) -> Any:
    """The runner a pending-list claim is on (a document written before claims is its
    runner's own, by `_id`)."""
    return claim.get("runner_id", claim["_id"])


class Progress:
    def __init__(self, collections: Collections):
        self._c = collections
        # The claims on each pending runner this run read or made (`release_pending`),
        # and the latest it made on each.
        self._claims_seen: dict[str, list[Any]] = {}
        self._latest_claim: dict[str, str] = {}

    # cursor -------------------------------------------------------------
    def cursor(self, scope: str) -> float | None:
        doc = self._c.cursors.find_one({"_id": scope})
        if doc is None:
            return None
        check_shape(_CURSOR, doc, collection=self._c.cursors.name, remedy=_REMOVE_CURSOR)
        return float(doc["stamp"]) if "stamp" in doc else None

    def advance_cursor(self, scope: str, stamp: float) -> None:
        """Move the cursor of `scope` forward to `stamp` (never back); a stamp edited to
        anything but a number is refused, never compared (`upsert_as_written`)."""
        upsert_as_written(
            self._c.cursors,
            scope,
            _STAMP_AS_WRITTEN,
            {"$max": {"stamp": stamp}},
            shape=_CURSOR,
            remedy=_REMOVE_CURSOR,
        )

    def clear_cursor(self, scope: str) -> None:
        self._c.cursors.delete_one({"_id": scope})

    # pending runners ----------------------------------------------------
    def pending(self, org: str | None, now: datetime) -> list[Doc]:
        """The claims on pending runners due at `now` (a runner is pending while any run's
        claim on it is there; `runner_of` names it; `due_claims`), remembered for
        `release_pending`."""
        query: Doc = due_claims(now) if org is None else {"org": {"$eq": org}, **due_claims(now)}
        found = list(self._c.pending.find(query))
        for claim in found:
            check_shape(_CLAIM, claim, collection=self._c.pending.name, remedy=_REMOVE)
            self._claims_seen.setdefault(runner_of(claim), []).append(claim["_id"])
        return found

    def claim_pending(self, runners: Sequence[Doc]) -> None:
        """Claim runners for a reading again, one claim document of this run on each (its
        `_id`, `source_id` and `org` in `runners`). A run claims every runner it is about
        to bill before it writes the entries: if it dies, or loses an entry to an
        overlapping run whose view may be older, its claim keeps the runner to be read
        again, whatever another run releases."""
        claims = self._new_claims(runners)
        for claim in claims:
            self._claims_seen.setdefault(claim["runner_id"], []).append(claim["_id"])
            self._latest_claim[claim["runner_id"]] = claim["_id"]

    def hand_over(self, runners: Sequence[Doc]) -> None:
        """Claims on pending runners whose documents now name another org (their `org` in
        `runners`): that org's runs read them from now on, whatever their stamp, as the
        runs of the org that claimed them would have. Not this run's claims:
        `release_pending` leaves them. A claim is what to read, not billing: no invoice,
        ledger entry or decision of that org changes."""
        self._new_claims(runners)

    def _new_claims(self, runners: Sequence[Doc]) -> list[Doc]:
        """One claim document on each runner, written; the claims."""
        # A claim never used before, even by this run: one it made earlier may have been
        # read, and released, by another run since.
        token = uuid.uuid4().hex
        claims = [
            {**doc, "_id": f"{doc['_id']}:{token}", "runner_id": doc["_id"]} for doc in runners
        ]
        insert_ignoring_duplicates(self._c.pending, claims)
        return claims

    def claimed(self, runner_ids: Sequence[str]) -> dict[str, datetime | None]:
        """Which of `runner_ids` are pending (any claim on them, of any org's runs): runs
        read them until they are billed in full (one whose document names another org now
        is handed over). Each with when a run reads it next: None for every run, else the
        earliest `recheck_at` of its claims. One read of the claims (by index)."""
        if not runner_ids:
            return {}
        ids = list(runner_ids)
        either = [{"runner_id": {"$in": ids}}, {"_id": {"$in": ids}}]  # legacy: by `_id`
        due: dict[str, datetime | None] = {}
        for claim in self._c.pending.find({"$or": either}, {"runner_id": 1, "recheck_at": 1}):
            runner, at = runner_of(claim), claim.get("recheck_at")
            if runner in due:
                known = due[runner]
                at = None if known is None or at is None else min(known, at)
            due[runner] = at
        return due

    def release_pending(self, done: Iterable[str], kept: Iterable[str] = ()) -> None:
        """Release the claims this run read or made on the runners `done` (billed, or gone
        from the source), and on the runners `kept` pending (still running, held, or lost
        to another run) all but the latest it made. A claim another run made since stays,
        and so does its runner."""
        own = {self._latest_claim[runner] for runner in kept if runner in self._latest_claim}
        released = [
            claim
            for runner in [*done, *kept]
            for claim in self._claims_seen.get(runner, [])
            if claim not in own
        ]
        if released:
            self._c.pending.delete_many({"_id": {"$in": released}})

    # dirty invoices -----------------------------------------------------
    def mark_dirty(self, pairs: Iterable[tuple[str, str]], *, now: datetime) -> list[str]:
        """Announce writes to come for these `(org, period)` invoices; the mark ids.

        The marks are *open* until `close_marks`: a settle rebuilds an open mark's
        invoice but does not delete the mark, since what it announces may not have
        landed yet. A writer that died leaves its marks open; they expire after
        `OPEN_MARK_EXPIRY` (the writer is long gone by then).
        """
        batch = uuid.uuid4().hex
        marks: list[Doc] = [
            {
                "_id": f"{batch}:{org}:{period}",
                "org": org,
                "period": period,
                "open": True,
                "at": now,
                "expires_at": _clock.wall_clock() + OPEN_MARK_EXPIRY,
            }
            for org, period in sorted(set(pairs))
        ]
        insert_ignoring_duplicates(self._c.dirty, marks)
        return [str(m["_id"]) for m in marks]

    def close_marks(self, mark_ids: Sequence[str]) -> None:
        """What the marks announced has landed: a settle may now delete them."""
        if mark_ids:
            self._c.dirty.update_many({"_id": {"$in": list(mark_ids)}}, {"$set": {"open": False}})

    def dirty(self, org: str | None) -> tuple[dict[str, tuple[str, str]], set[tuple[str, str]]]:
        """`(the marks a settle may delete, each id with its (org, period); every (org,
        period) marked)` in scope."""
        query: Doc = {} if org is None else {"org": {"$eq": org}}
        ids: dict[str, tuple[str, str]] = {}
        pairs: set[tuple[str, str]] = set()
        wall = _clock.wall_clock()
        for mark in self._c.dirty.find(query):
            check_shape(_MARK, mark, collection=self._c.dirty.name, remedy=_REMOVE)
            pairs.add((mark["org"], mark["period"]))
            expires_at = mark.get("expires_at")
            if not isinstance(expires_at, datetime) and isinstance(mark.get("at"), datetime):
                expires_at = mark["at"] + OPEN_MARK_EXPIRY  # a mark written before expires_at
            expired = isinstance(expires_at, datetime) and as_utc(expires_at) < wall
            if not mark.get("open") or expired:
                ids[mark["_id"]] = (mark["org"], mark["period"])
        return ids, pairs

    def clear_dirty(self, mark_ids: Sequence[str]) -> None:
        if mark_ids:
            self._c.dirty.delete_many({"_id": {"$in": list(mark_ids)}})
