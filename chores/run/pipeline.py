"""The pieces of one run wired together (`Pipeline`), and one batch of runner documents
through them: read (the pending runners, then the changed ones), assess each against its
ledger head, and record what the batch found in the order that makes a crash anywhere
safe (`Pipeline.process`; docs/design.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.database import Database

from chores.billing.drafts import has_usage
from chores.billing.invoices import Invoices
from chores.core.db import Collections, Doc
from chores.core.periods import as_utc
from chores.core.settings import Settings
from chores.metering.anomalies import AnomalyLog, Recorded, anomaly_id
from chores.metering.ledger import Ledger, entry_document
from chores.metering.progress import Progress, next_recheck, runner_of
from chores.metering.rules import (
    Anomaly,
    AnomalyRecord,
    Assessment,
    LedgerHead,
    Rules,
    org_of,
)
from chores.metering.runner_keys import runner_key
from chores.metering.source import LOWEST_STAMP, Source, chunked, stamp_of
from chores.quota.decisions import Quota
from chores.run.placement import Placement, open_at, was_resolved
from chores.run.report import RunReport
from pricing import Registry


@dataclass
class Batch:
    """What the assessments of one batch ask the database for."""

    # A pending runner whose stamp is older than this (seconds since the epoch) is idle
    # (`is_idle`): its claim says to re-read it at `recheck_at`, not every run.
    idle_before: float
    recheck_at: datetime
    latest: float  # `now` + FUTURE_SKEW_SECONDS: a time after it is garbage
    entries: list[Doc] = field(default_factory=list)  # the new ledger entries
    anomalies: list[AnomalyRecord] = field(default_factory=list)
    dirty: set[tuple[str, str]] = field(default_factory=set)  # invoices the entries change
    clean: list[str] = field(default_factory=list)  # runners billed cleanly: anomalies heal
    running: set[str] = field(default_factory=set)  # runners without an end time
    source_ids: dict[str, Any] = field(default_factory=dict)  # each runner's document `_id`
    # the pending-list document of each runner with an org, and who is (no longer) pending
    watch: dict[str, Doc] = field(default_factory=dict)
    add_pending: list[Doc] = field(default_factory=list)
    drop_pending: list[str] = field(default_factory=list)
    idle: list[str] = field(default_factory=list)  # pending, idle: re-read at `recheck_at`

    def add(
        self, doc: Doc, result: Assessment, entries: Sequence[Doc], head: LedgerHead | None
    ) -> None:
        """One runner document's assessment, the ledger entries of its deltas, and the runner's
        ledger head before them."""
        self.anomalies += result.anomalies
        for entry in entries:
            self.entries.append(entry)
            self.dirty.add((entry["org"], entry["usage_period"]))
        if result.billed_cleanly:
            self.clean.append(result.runner_id)
        if doc.get("end_time") is None:
            self.running.add(result.runner_id)
        self.source_ids[result.runner_id] = doc.get("_id")
        if result.org is not None:
            self.watch[result.runner_id] = {
                "_id": result.runner_id,
                "source_id": doc.get("_id"),
                "org": result.org,
            }
        if result.pending and result.org is not None:
            watch = self.watch[result.runner_id]
            if not entries and self.is_idle(doc, result, head):
                self.idle.append(result.runner_id)
                watch = {**watch, "recheck_at": self.recheck_at}
            self.add_pending.append(watch)
        elif result.held and not self.lets_go(doc, head):
            self.add_pending.append({**self.watch[result.runner_id], "recheck_at": self.recheck_at})
        else:
            self.drop_pending.append(result.runner_id)

    def billing(self) -> set[str]:
        """The runners this batch bills usage to: new tokens, or tokens that change kind (a
        reclassification sums to none, but changes an invoice's amounts)."""
        return {entry["runner_id"] for entry in self.entries if has_usage(entry)}

    def lets_go(self, doc: Doc, head: LedgerHead | None) -> bool:
        """Whether a finished runner held by an anomaly (malformed counters, a bad model,
        ...) leaves the pending list. Its fixed document is stamped as the write it fixes,
        behind the cursor, so its claim has it re-read once an hour (`recheck_at`: its org
        is not metered at every tick for it) for as long as its stamp, its start or end time
        or its last billing is younger than PENDING_IDLE_SECONDS. Then it is let go, and the
        daily full pass reads a later fix: held runners of the past do not grow the list. A
        time further ahead of `now` than FUTURE_SKEW_SECONDS (garbage) counts for nothing."""
        times = (
            stamp_of(doc),
            *(_timestamp(doc.get(field)) for field in ("start_time", "end_time")),
            None if head is None or head.billed_at is None else as_utc(head.billed_at).timestamp(),
        )
        return not any(t is not None and self.idle_before <= t <= self.latest for t in times)

    def is_idle(self, doc: Doc, result: Assessment, head: LedgerHead | None) -> bool:
        """A pending runner re-read once an hour (`progress.IDLE_RECHECK`), not every run:
        neither written (its `last_updated_db`) nor billed (its ledger head) in the last
        PENDING_IDLE_SECONDS before `now` (a platform crash left it running, or its spawn
        finding never came), and billing nothing now. Its next writes carry old stamps
        (stamps lag one write), which the changed scan does not read: the hourly re-read
        bills the first, and a runner billed within PENDING_IDLE_SECONDS is read by every
        run, its stamp however old. Not one held until `now` reaches its end time
        (`future_end_time`), nor one whose stamp is not a finite number (the changed scan
        reads it every run)."""
        stamp = stamp_of(doc)
        billed_at = None if head is None or head.billed_at is None else as_utc(head.billed_at)
        return (
            stamp is not None
            and LOWEST_STAMP <= stamp < self.idle_before
            and (billed_at is None or billed_at.timestamp() < self.idle_before)
            and not any(a.kind == Anomaly.FUTURE_END_TIME for a in result.anomalies)
        )


def _timestamp(value: Any) -> float | None:
    """A datetime field's time in seconds since the epoch; None for anything else."""
    return as_utc(value).timestamp() if isinstance(value, datetime) else None


class Pipeline:
    """The pieces of one run, wired once."""

    def __init__(self, db: Database[Doc], settings: Settings, registry: Registry):
        self.settings = settings
        self.registry = registry
        self.collections = Collections.of(db, settings)
        self.source = Source(
            self.collections, ai_task_names=settings.ai_task_names, batch_size=settings.batch_size
        )
        self.ledger = Ledger(self.collections, batch_size=settings.batch_size)
        self.progress = Progress(self.collections)
        self.anomalies = AnomalyLog(self.collections)
        self.invoices = Invoices(
            self.collections, registry, self.ledger, self.anomalies, self.progress
        )
        self.quota = Quota(self.collections, settings)

    def pending_runners(
        self, org: str | None, seen: dict[str, Any], *, now: datetime, dry_run: bool = False
    ) -> Iterator[list[Doc]]:
        """Batches of the runners last seen running or waiting for a spawn finding, those
        idle only when due at `now` (each added to `seen` with the stamp read); those gone
        from the source are dropped from the pending list, and those that now name another
        org handed over to it (not in a dry run, which writes nothing)."""
        claims = self.progress.pending(org, now)
        pending_ids = list({runner_of(c): c["source_id"] for c in claims}.values())
        for ids in chunked(pending_ids, self.settings.batch_size):
            docs = self.source.runners_by_id(ids, org)
            read = {runner_key(d.get("_id")) for d in docs}
            vanished = [i for i in ids if runner_key(i) not in read]
            if vanished and org is not None:
                docs += self._hand_over_moved(vanished, org, dry_run=dry_run)
            found = {runner_key(d.get("_id")): d.get("last_updated_db") for d in docs}
            seen.update(found)
            gone = [runner_key(i) for i in vanished if runner_key(i) not in found]
            if gone and not dry_run:
                self.progress.release_pending(gone)
            yield docs

    def _hand_over_moved(self, source_ids: Sequence[Any], org: str, *, dry_run: bool) -> list[Doc]:
        """Of the pending runners `source_ids` the read of `org`'s runners did not return,
        hand those whose documents now name another org over to that org's pending list:
        their last write may carry a stamp older than that org's cursor (stamps lag one
        write), which its changed scan would not read until the daily full pass. Returns
        those that name `org` again (moved back since that read): read here. A dry run
        reads the same and hands nothing over."""
        back: list[Doc] = []
        claims = []
        for doc in self.source.runners_by_id(source_ids, None):
            context = doc.get("context")
            now_of = org_of(context) if isinstance(context, Mapping) else None
            if now_of == org:
                back.append(doc)
            elif now_of is not None:
                claims.append(
                    {"_id": runner_key(doc.get("_id")), "source_id": doc["_id"], "org": now_of}
                )
        if not dry_run:
            self.progress.hand_over(claims)
        return back

    def changed_runners(
        self,
        org: str | None,
        since: float | None,
        seen: Mapping[str, Any],
        *,
        dry_run: bool = False,
    ) -> Iterator[list[Doc]]:
        """Batches of the runners changed since `since`, oldest stamp first, less the
        versions in `seen`. A runner written again since it was read there is read anew (a
        write after its SUCCESS, stamped before the cursor the run moves to), as is one the
        scan hands back after a write moved its stamp. Not in a dry run: it writes no ledger
        head, so a second version would be priced from the same head as the first, its
        usage counted twice; a dry run reads each runner once (and remembers each)."""
        read_here: set[str] = set()

        def wanted(doc: Doc) -> bool:
            if not dry_run:
                return not _already_read(doc, seen)
            key = runner_key(doc.get("_id"))
            if key in seen or key in read_here:
                return False
            read_here.add(key)
            return True

        changed = (d for d in self.source.changed_runners(org, since) if wanted(d))
        yield from chunked(changed, self.settings.batch_size)

    def process(
        self,
        docs: Sequence[Doc],
        *,
        org: str | None,
        now: datetime,
        run_id: str,
        report: RunReport,
        dry_run: bool,
    ) -> None:
        """Assess one batch of runner documents and record the outcome (a constant number
        of round trips, whatever the batch size)."""
        runner_ids = [runner_key(d.get("_id")) for d in docs]
        heads = self.ledger.heads(runner_ids)
        rules = Rules(
            now=now,
            max_tokens_per_run=self.settings.max_tokens_per_run,
            future_skew_seconds=self.settings.future_skew_seconds,
        )
        assessed = self._assess(docs, runner_ids, heads, rules)
        assessed = self._read_again_where_decreased(assessed, heads, rules, org)
        batch = Batch(
            idle_before=now.timestamp() - self.settings.pending_idle_seconds,
            recheck_at=next_recheck(now),
            latest=now.timestamp() + self.settings.future_skew_seconds,
        )
        for doc, result in assessed:
            if org is not None and result.org not in (None, org):
                continue  # matched through an array-valued context: not this org's document
            entries = [
                entry_document(delta, billed_at=now, run_id=run_id, registry=self.registry)
                for delta in result.deltas
            ]
            batch.add(doc, result, entries, heads.get(result.runner_id))
            if result.org is not None:
                report.summary_for(result.org)

        report.docs_read += len(docs)
        report.count_idle(batch.idle, read=runner_ids)
        if dry_run:  # counted where a run would write them
            placed, known = self._placed(batch.anomalies, batch, now=now)
            _count_anomalies(report, placed, known)
            self._tally(report, batch.entries)
            return
        self._record(batch, heads, rules, org=org, now=now, run_id=run_id, report=report)

    def _record(
        self,
        batch: Batch,
        heads: Mapping[str, LedgerHead],
        rules: Rules,
        *,
        org: str | None,
        now: datetime,
        run_id: str,
        report: RunReport,
    ) -> None:
        """Write what a batch found, in the order that makes a crash anywhere safe: the marks
        (open) first, then the anomalies, the runners about to be billed on the pending
        list, the entries, the runners done off the list, then the marks closed
        (docs/design.md). `heads` are the ledger heads the batch was assessed from, by
        `rules`."""
        placed, known = self._placed(batch.anomalies, batch, now=now)
        anomalies, known = self._confirmed(placed, known, heads, rules, batch, org=org, now=now)
        _count_anomalies(report, anomalies, known)  # as written: a second read may change them
        healed, healed_pairs = self.anomalies.resolvable(batch.clean)
        report.note_closed(healed)
        dirty = batch.dirty | set(healed_pairs) | self.anomalies.changed_pairs(anomalies, known)
        marks = self.progress.mark_dirty(dirty, now=now)  # open, before what they announce
        self.anomalies.record(anomalies, known, now=now, run_id=run_id)
        self.anomalies.close(healed)
        # Every runner about to be billed is pending until its entries are in: a run that
        # dies, or loses an entry to an overlapping run (whose view may be older), leaves
        # it to be read again.
        billing = {e["runner_id"] for e in batch.entries}
        claimed = {doc["_id"]: doc for doc in batch.add_pending}
        claimed.update((r, batch.watch[r]) for r in sorted(billing) if r not in claimed)
        self.progress.claim_pending(list(claimed.values()))
        written = self.ledger.append_steps(batch.entries)
        self._tally(report, written)
        landed = {e["_id"] for e in written}
        beaten = {e["runner_id"] for e in batch.entries if e["_id"] not in landed}
        done = [r for r in batch.drop_pending if r not in beaten]
        self.progress.release_pending(done, kept=[r for r in claimed if r not in done])
        self.progress.close_marks(marks)  # everything they announced is readable now

    def _confirmed(
        self,
        anomalies: Sequence[AnomalyRecord],
        known: Mapping[str, Recorded],
        heads: Mapping[str, LedgerHead],
        rules: Rules,
        batch: Batch,
        *,
        org: str | None,
        now: datetime,
    ) -> tuple[list[AnomalyRecord], dict[str, Recorded]]:
        """The anomalies to write, as a newer read shows them when this one may be stale,
        and where those stand (`known`, `AnomalyLog.previous`). `batch.source_ids` says
        where each runner's document is.

        An overlapping run may have read a newer version of a runner (a subagent's spawn
        finding that had appeared, a document fixed) and resolved its anomaly; this run's
        older read would open it again and flag an invoice that a finalize could freeze
        flagged for good. So the document is read again (spawn findings too), judged
        against its newer ledger head, and what that read shows is written instead, for
        a runner whose anomaly this run would reopen (someone resolved it), and for one
        whose anomaly it would open or move and that was billed since this batch read its
        head. As `_read_again_where_decreased` does for a decrease: a ledger read when an
        anomaly changes, reads of the source only for those runners."""
        known = dict(known)
        changing = [a for a in anomalies if not open_at(known.get(anomaly_id(a)), a)]
        if not changing:
            return list(anomalies), known
        newer = self.ledger.heads(sorted({a.runner_id for a in changing}))
        suspects = {
            a.runner_id
            for a in changing
            if a.runner_id in batch.source_ids
            and (
                was_resolved(known.get(anomaly_id(a)))
                or _seq(newer.get(a.runner_id)) > _seq(heads.get(a.runner_id))
            )
        }
        if not suspects:
            return list(anomalies), known
        fresh = self.source.runners_by_id(
            [batch.source_ids[runner] for runner in sorted(suspects)], None
        )
        keys = [runner_key(d.get("_id")) for d in fresh]
        seen_again = [
            record
            for _, result in self._assess(fresh, keys, newer, rules)
            for record in result.anomalies
            # an `--org` run records nothing of another org's (a document moved meanwhile)
            if record.runner_id in suspects and (org is None or record.org == org)
        ]
        placed, known_again = self._placed(seen_again, batch, now=now)
        kept = [a for a in anomalies if a.runner_id not in suspects]
        return kept + placed, {**known, **known_again}

    def _placed(
        self, anomalies: Sequence[AnomalyRecord], batch: Batch, *, now: datetime
    ) -> tuple[list[AnomalyRecord], dict[str, Recorded]]:
        """The anomalies of a batch, each where it is recorded (`Placement`), and where
        the records it may write stand (`AnomalyLog.previous`)."""
        placement = Placement(
            anomalies,
            now=now,
            billing=batch.billing(),
            running=batch.running,
            invoices=self.invoices,
        )
        known = self.anomalies.previous(placement.candidates, placement.finals)
        return placement.place(known), known

    def _assess(
        self,
        docs: Sequence[Doc],
        runner_ids: Sequence[str],
        heads: dict[str, LedgerHead],
        rules: Rules,
    ) -> list[tuple[Doc, Assessment]]:
        """Each document judged against its runner's ledger head (spawn findings read for
        the subagents among them, in one query)."""
        spawns = self.source.spawns_of(docs)
        return [
            (
                doc,
                rules.assess(
                    doc, spawn_contexts=spawn, head=heads.get(runner_id), runner_id=runner_id
                ),
            )
            for doc, runner_id, spawn in zip(docs, runner_ids, spawns, strict=True)
        ]

    def _read_again_where_decreased(
        self,
        assessed: list[tuple[Doc, Assessment]],
        heads: dict[str, LedgerHead],
        rules: Rules,
        org: str | None,
    ) -> list[tuple[Doc, Assessment]]:
        """A document whose counters look below its billed high-water mark is read again
        before that is believed: an overlapping run may have billed a later write of it
        after this batch was read, so that the head is newer than the document. A read
        made after the head was read is at least as new as what the head billed, so only a
        decrease it still shows is recorded (`counter_decreased` never heals by itself).

        Read whatever its org is now (a document that moved to another org is skipped by
        the caller's org check, as any other). A document gone by then is left out of this
        batch: nothing it says can be confirmed, and the next run drops it from the pending
        list."""
        suspects = {
            result.runner_id: doc.get("_id")
            for doc, result in assessed
            if any(a.kind == Anomaly.COUNTER_DECREASED for a in result.anomalies)
        }
        if not suspects:
            return assessed
        fresh = self.source.runners_by_id(list(suspects.values()), None)
        again = {
            result.runner_id: (doc, result)
            for doc, result in self._assess(
                fresh, [runner_key(d.get("_id")) for d in fresh], heads, rules
            )
        }
        return [
            again.get(result.runner_id, (doc, result))
            for doc, result in assessed
            if result.runner_id not in suspects or result.runner_id in again
        ]

    @staticmethod
    def _tally(report: RunReport, entries: Sequence[Doc]) -> None:
        for entry in entries:
            summary = report.summary_for(entry["org"])
            summary.tokens += entry["tokens"]
            summary.entries += 1
            report.tokens_billed += entry["tokens"]
            report.entries_written += 1


def _already_read(doc: Doc, seen: Mapping[str, Any]) -> bool:
    """Whether this run already read this version of the runner: the same stamp, as the
    platform stamps every write (a NaN is the same as a NaN)."""
    key = runner_key(doc.get("_id"))
    if key not in seen:
        return False
    read, stamp = seen[key], doc.get("last_updated_db")
    return bool(read == stamp) or (read != read and stamp != stamp)


def _seq(head: LedgerHead | None) -> int:
    """A runner's latest ledger sequence number, 0 before its first entry."""
    return 0 if head is None else head.seq


def _count_anomalies(
    report: RunReport, anomalies: Sequence[AnomalyRecord], known: Mapping[str, Recorded]
) -> None:
    """The anomalies of a batch in the report (as written); new unless `known` has them open
    on the same invoice, or resolved by this run (open when it began)."""
    for record in anomalies:
        record_id = anomaly_id(record)
        previous = known.get(record_id)
        new = (
            previous is None
            or (previous.org, previous.period) != (record.org, record.period)
            or (previous.resolved and not report.closed_here(record_id))
        )
        report.count_anomaly(record_id, record.kind, record.org, new=new)
