"""The anomaly log (`billing_anomalies`): documents that could not be billed as they are.

One record per runner and kind (`_id` = `"<runner_id>:<kind>"`; per runner, kind, org and
usage period for the kinds billed all the same, `org_changed` among them,
`Anomaly.BILLED_FLAGGED`), keeping the first detail seen while it stays open where it is
(the detail seen when it re-opens or moves, else). Self-healing kinds (see
`Anomaly.SELF_HEALING`) are marked resolved when the runner later bills cleanly; an
invoice period with an open anomaly needs review. A person who has looked at an open
anomaly marks it reviewed (`review`, `chore anomaly review`): it stays open, as the runs
see it, but no longer flags its invoice, until it moves to another invoice or heals and
comes back (either clears the review: that invoice has not been looked at for it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from chores.core.db import Collections, Doc
from chores.core.periods import is_period
from chores.core.writes import insert_ignoring_duplicates
from chores.metering.rules import Anomaly, AnomalyRecord, billable_org


def anomaly_id(record: AnomalyRecord) -> str:
    """The `_id` of a runner's anomaly of one kind. Of one kind, org and usage period for a
    kind billed all the same (`org_changed` too): each invoice holding usage billed with it
    stays flagged, in each org that billed it, and one org's run never moves the record
    that flags another org's invoice (SPEC §4)."""
    if record.kind in Anomaly.BILLED_FLAGGED and record.usage_period is not None:
        return f"{record.runner_id}:{record.kind}:{record.org}:{record.usage_period}"
    return f"{record.runner_id}:{record.kind}"


def older_ids(record: AnomalyRecord) -> tuple[str | None, str]:
    """The ids older versions gave a record of a kind billed all the same: by runner, kind
    and usage period, without its org (none for `org_changed`, whose id always had it),
    and by runner and kind alone, or by runner, kind and org for `org_changed` (before
    usage periods)."""
    if record.kind == Anomaly.ORG_CHANGED:
        return None, f"{record.runner_id}:{record.kind}:{record.org}"
    return (
        f"{record.runner_id}:{record.kind}:{record.usage_period}",
        f"{record.runner_id}:{record.kind}",
    )


class OpenAnomaly(NamedTuple):
    """An open anomaly as a person reviewing an invoice reads it (`reviewed`, with
    `reviewed_at` and `review_note`, when a person has reviewed it already). A time edited
    by hand to something else than a time reads as None: shown as unknown, never a crash."""

    record_id: str
    kind: str
    runner_id: str
    detail: str
    first_seen: datetime | None
    period: str = ""
    reviewed: bool = False
    reviewed_at: datetime | None = None
    review_note: str = ""


MAX_DETAIL = 300  # characters of an anomaly's detail shown
MAX_NOTE = 500  # characters of a review note kept
# An open anomaly nobody has reviewed: it flags its invoice for review.
UNREVIEWED: Doc = {"resolved": False, "reviewed": {"$exists": False}}


class Recorded(NamedTuple):
    """Where an anomaly is recorded: the invoice it flags, whether it was resolved, and
    whether a person reviewed it there."""

    org: Any
    period: Any
    resolved: bool
    reviewed: bool = False
    # its `_id` when not the anomaly's own (`anomaly_id`): a record of a kind billed all the
    # same written before such records had a usage month (`AnomalyLog.previous`)
    stored_id: str | None = None

    def open_at(self, org: str | None, period: str | None) -> bool:
        """Whether it is open on the invoice of `(org, period)`, reviewed or not."""
        return not self.resolved and self.org == org and self.period == period


class AnomalyLog:
    def __init__(self, collections: Collections):
        self._anomalies = collections.anomalies

    def previous(
        self,
        records: Sequence[AnomalyRecord],
        finals: Mapping[str, Collection[str]] | None = None,
    ) -> dict[str, Recorded]:
        """Where the already-recorded anomalies among `records` stand, by `anomaly_id`.

        Records of a kind billed all the same written by older versions (`older_ids`, one
        read: every id is asked for) stand for the anomaly, so that an upgrade neither
        records it twice nor undoes its review:

        - one per runner, kind and usage month (no org), open in the anomaly's org;
        - one per runner and kind (no usage month; per runner, kind and org for
          `org_changed`), open on its org's invoice of that
          month, or of a later one when that month is final (`finals`: the final periods
          of each org; such a record was placed on the open month). One on a later month
          that is not final for that month's usage (its runner ran on into it, then its
          end time went back) stays there, flagging the usage billed on it: the earlier
          month gets a record of its own."""
        by_month = {
            anomaly_id(r): r
            for r in records
            if r.kind in Anomaly.BILLED_FLAGGED and r.usage_period is not None
        }
        older = {record_id: older_ids(r) for record_id, r in by_month.items()}
        ids = sorted(
            {anomaly_id(r) for r in records}
            | {i for o in older.values() for i in o if i is not None}
        )
        if not ids:
            return {}
        cursor = self._anomalies.find(
            {"_id": {"$in": ids}}, {"org": 1, "period": 1, "resolved": 1, "reviewed": 1}
        )
        found = {
            d["_id"]: Recorded(
                _org_of(d),
                _period_of(d),
                bool(d.get("resolved")),
                reviewed=d.get("reviewed") is not None,
            )
            for d in cursor
        }
        for record_id, r in by_month.items():
            if record_id in found:
                continue
            of_the_month, of_the_runner = older[record_id]
            old = None if of_the_month is None else found.get(of_the_month)
            if old is not None and not old.resolved and old.org == r.org:
                found[record_id] = old._replace(stored_id=of_the_month)
                continue
            old = found.get(of_the_runner)
            if old is None or old.resolved or old.org != r.org:
                continue
            usage_period = str(r.usage_period)
            stood_for = usage_period == old.period or (
                old.period is not None
                and usage_period < old.period
                and usage_period in (finals or {}).get(r.org or "", ())
            )
            if stood_for:
                found[record_id] = old._replace(stored_id=of_the_runner)
        return found

    def open_for(self, runner_ids: Sequence[str]) -> set[str]:
        """Which of `runner_ids` have an anomaly not resolved (one read, when any)."""
        if not runner_ids:
            return set()
        cursor = self._anomalies.find(
            {"runner_id": {"$in": list(runner_ids)}, "resolved": False}, {"runner_id": 1}
        )
        return {doc["runner_id"] for doc in cursor}

    def record(
        self,
        records: Sequence[AnomalyRecord],
        previous: Mapping[str, Recorded],
        *,
        now: datetime,
        run_id: str,
    ) -> None:
        """Insert new anomalies; re-open or move known ones to the period seen now.

        The usage time of a document can change (a running runner gets its
        `end_time`), so an anomaly follows the document's current period. One re-opened or
        moved takes the detail seen now: it flags an invoice nobody has reviewed it on, and
        its reader is shown what the document says, not what it said before it healed.
        """
        fresh: dict[str, Doc] = {}
        moves: dict[tuple[Any, Any, str], list[str]] = defaultdict(list)
        for r in records:
            record_id = anomaly_id(r)
            known = previous.get(record_id)
            if known is None:
                fresh[record_id] = {
                    "_id": record_id,
                    "runner_id": r.runner_id,
                    "kind": r.kind,
                    "org": r.org,
                    "period": r.period,
                    "detail": r.detail,
                    "resolved": False,
                    "first_seen": now,
                    "run_id": run_id,
                }
            elif not known.open_at(r.org, r.period):
                moves[(r.org, r.period, r.detail)].append(known.stored_id or record_id)
        insert_ignoring_duplicates(self._anomalies, list(fresh.values()))
        for (org, period, detail), ids in sorted(moves.items(), key=lambda item: str(item[0])):
            self._anomalies.update_many(
                {"_id": {"$in": ids}},
                {
                    "$set": {"org": org, "period": period, "resolved": False, "detail": detail},
                    "$unset": {"reviewed": ""},  # not reviewed on the invoice it flags now
                },
            )

    def flagged_pairs(self, org: str | None, *, through: str) -> set[tuple[str, str]]:
        """The `(org, period)` pairs (of `org`, or of every org) with an open anomaly nobody
        reviewed: the invoices they flag, whether or not they hold usage. Only an org the
        rules bill and a period up to `through` (the clock's): a record edited to an org id
        no runner bills (`""`), or to a month ahead, flags no invoice."""
        query: Doc = dict(UNREVIEWED)
        if org is not None:
            query["org"] = {"$eq": org}
        found = self._anomalies.find(query, {"org": 1, "period": 1})
        pairs = ((billable_org(doc.get("org")), _period_of(doc)) for doc in found)
        return {(o, p) for o, p in pairs if o is not None and p is not None and p <= through}

    @staticmethod
    def changed_pairs(
        records: Sequence[AnomalyRecord], previous: Mapping[str, Recorded]
    ) -> set[tuple[str, str]]:
        """The `(org, period)` pairs whose review state `record` may change (the caller
        marks those dirty first): where each new, re-opened or moved record goes, and where
        a moved one was. A record already open where it is placed changes no invoice (its
        runner, held and read again every run, had its draft rebuilt every run)."""
        pairs: set[tuple[str, str]] = set()
        for r in records:
            known = previous.get(anomaly_id(r))
            if known is not None and known.open_at(r.org, r.period):
                continue
            if r.org is not None and r.period is not None:
                pairs.add((r.org, r.period))
            if known is not None and isinstance(known.org, str) and is_period(known.period):
                pairs.add((known.org, known.period))
        return pairs

    def resolvable(self, runner_ids: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
        """Open self-healing anomalies of runners that now bill cleanly.

        Returns their ids and the `(org, period)` pairs whose review state will
        change when they are closed (the caller marks those dirty first).
        """
        ids = [f"{r}:{kind}" for r in runner_ids for kind in sorted(Anomaly.SELF_HEALING)]
        if not ids:
            return [], []
        found = list(
            self._anomalies.find({"_id": {"$in": ids}, "resolved": False}, {"org": 1, "period": 1})
        )
        pairs = [
            (org, period)
            for org, period in ((_org_of(d), _period_of(d)) for d in found)
            if org is not None and period is not None
        ]
        return [d["_id"] for d in found], pairs

    def close(self, anomaly_ids: Sequence[str]) -> None:
        """Resolve these anomalies (their runners bill cleanly again); a review goes with
        them, should they come back."""
        if anomaly_ids:
            self._anomalies.update_many(
                {"_id": {"$in": list(anomaly_ids)}},
                {"$set": {"resolved": True}, "$unset": {"reviewed": ""}},
            )

    def open_anomalies(
        self, org: str | None, period: str | None = None, *, reviewed: bool = False
    ) -> list[OpenAnomaly]:
        """The open anomalies flagging the invoice of `(org, period)` (of every period of
        `org` when `period` is None), by period, kind and runner; those already reviewed
        too when `reviewed`. With `org` None, those of runners without an org (`no_org`):
        they flag no invoice, and stay open until their runner bills under an org."""
        query: Doc = {**UNREVIEWED, "org": {"$eq": org}}
        if reviewed:
            del query["reviewed"]
        if period is not None:
            query["period"] = {"$eq": period}
        cursor = self._anomalies.find(
            query,
            {"kind": 1, "runner_id": 1, "detail": 1, "first_seen": 1, "period": 1, "reviewed": 1},
            sort=[("period", 1), ("kind", 1), ("runner_id", 1)],
        )
        return [_open_anomaly(doc) for doc in cursor]

    def review(
        self, org: str, period: str, record_ids: Sequence[str], *, note: str, now: datetime
    ) -> list[str]:
        """Mark these anomalies reviewed with `note`, each only while it is still open and
        unreviewed on the invoice of `(org, period)` (as a person read it); the ids marked.
        Each stays open: a run that sees it again leaves the review alone while it flags
        this invoice."""
        if not record_ids:
            return []
        review = {"at": now, "note": note[:MAX_NOTE]}
        where: Doc = {**UNREVIEWED, "org": {"$eq": org}, "period": {"$eq": period}}
        self._anomalies.update_many(
            {**where, "_id": {"$in": sorted(set(record_ids))}}, {"$set": {"reviewed": review}}
        )
        marked = self._anomalies.find(
            {"_id": {"$in": sorted(set(record_ids))}, "reviewed": review}, {"_id": 1}
        )
        return sorted(d["_id"] for d in marked)

    def open_periods(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these `(org, period)` pairs have an open anomaly nobody reviewed."""
        wanted = set(pairs)
        if not wanted:
            return set()
        orgs = sorted({org for org, _ in wanted})
        periods = sorted({period for _, period in wanted})
        cursor = self._anomalies.find(
            {**UNREVIEWED, "org": {"$in": orgs}, "period": {"$in": periods}},
            {"org": 1, "period": 1},
        )
        return {(d["org"], d["period"]) for d in cursor} & wanted


# A record's org or period edited out of shape flags no invoice: a run that sees its
# anomaly again records it where it belongs (`AnomalyLog.record` moves it).
def _org_of(doc: Doc) -> str | None:
    org = doc.get("org")
    return org if isinstance(org, str) else None


def _period_of(doc: Doc) -> str | None:
    period = doc.get("period")
    return period if is_period(period) else None


def _open_anomaly(doc: Doc) -> OpenAnomaly:
    """An anomaly record as a person reads it."""
    review = doc.get("reviewed")
    if not isinstance(review, Mapping):
        review = {}
    return OpenAnomaly(
        record_id=str(doc["_id"]),
        kind=str(doc.get("kind", "")),
        runner_id=str(doc.get("runner_id", "")),
        detail=str(doc.get("detail", ""))[:MAX_DETAIL],
        first_seen=_time(doc.get("first_seen")),
        period=str(doc.get("period") or ""),  # none for a runner without an org
        reviewed="reviewed" in doc,  # as UNREVIEWED reads it
        reviewed_at=_time(review.get("at")),
        review_note=str(review.get("note", "")),
    )


def _time(value: Any) -> datetime | None:
    """A stored time, or None for one edited to something else (text, a number)."""
    return value if isinstance(value, datetime) else None
