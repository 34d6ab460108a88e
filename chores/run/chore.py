"""One metering run: source documents -> deltas -> ledger -> invoices -> quota decisions.

`run_chore` is the whole job for one org or for all of them. It reads the
pending runners and the changed runners in batches, assesses each document
(`rules.Rules.assess`), appends the deltas to the ledger, then settles the invoices
it touched and writes the quota decisions. Every write is idempotent, so a run
that dies anywhere is completed exactly by the next one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from chores.billing.drafts import has_usage
from chores.billing.invoices import Finalizer, Invoices, open_period
from chores.core.clock import checked_now, grace_period
from chores.core.db import (
    Collections,
    Doc,
    ensure_billing_indexes,
    missing_source_indexes,
)
from chores.core.exceptions import ConfigError
from chores.core.logs import redact_urls
from chores.core.orgs import validate_org
from chores.core.periods import as_utc
from chores.core.settings import Settings, get_settings
from chores.metering.anomalies import AnomalyLog, Recorded, anomaly_id
from chores.metering.ledger import Ledger, entry_document
from chores.metering.progress import (
    ALL_ORGS,
    Progress,
    full_pass_scope,
    next_recheck,
    runner_of,
)
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
from chores.run.report import RunReport
from pricing import Registry, load_registry

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """What the assessments of one batch ask the database for."""

    # A pending runner whose stamp is older than this (seconds since the epoch) is idle
    # (`is_idle`): its claim says to re-read it at `recheck_at`, not every run.
    idle_before: float
    recheck_at: datetime
    entries: list[Doc] = field(default_factory=list)  # the new ledger entries
    anomalies: list[AnomalyRecord] = field(default_factory=list)
    dirty: set[tuple[str, str]] = field(default_factory=set)  # invoices the entries change
    clean: list[str] = field(default_factory=list)  # runners billed cleanly: anomalies heal
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
        else:
            self.drop_pending.append(result.runner_id)

    def billing(self) -> set[str]:
        """The runners this batch bills usage to: new tokens, or tokens that change kind (a
        reclassification sums to none, but changes an invoice's amounts)."""
        return {entry["runner_id"] for entry in self.entries if has_usage(entry)}

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
            known = self.anomalies.previous(batch.anomalies)
            placed = self._placed(batch.anomalies, known, now, batch.billing())
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
        known = self.anomalies.previous(batch.anomalies)
        placed = self._placed(batch.anomalies, known, now, batch.billing())
        anomalies, known = self._confirmed(placed, known, heads, rules, batch, org=org, now=now)
        _count_anomalies(report, anomalies, known)  # as written: a second read may change them
        healed, healed_pairs = self.anomalies.resolvable(batch.clean)
        report.note_closed(healed)
        dirty = batch.dirty | set(healed_pairs)
        dirty.update((a.org, a.period) for a in anomalies if a.org and a.period)
        dirty.update(
            (r.org, r.period) for r in known.values() if r.org is not None and r.period is not None
        )
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
        and where those stand (`known`, `AnomalyLog.previous`). `batch.watch` says where
        each runner's document is.

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
        changing = [a for a in anomalies if not _open_at(known.get(anomaly_id(a)), a)]
        if not changing:
            return list(anomalies), known
        newer = self.ledger.heads(sorted({a.runner_id for a in changing}))
        suspects = {  # of an org: an org-less document's anomaly (`no_org`) stands
            a.runner_id
            for a in changing
            if a.runner_id in batch.watch
            and (
                _was_resolved(known.get(anomaly_id(a)))
                or _seq(newer.get(a.runner_id)) > _seq(heads.get(a.runner_id))
            )
        }
        if not suspects:
            return list(anomalies), known
        fresh = self.source.runners_by_id(
            [batch.watch[runner]["source_id"] for runner in sorted(suspects)], None
        )
        keys = [runner_key(d.get("_id")) for d in fresh]
        seen_again = [
            record
            for _, result in self._assess(fresh, keys, newer, rules)
            for record in result.anomalies
            # an `--org` run records nothing of another org's (a document moved meanwhile)
            if record.runner_id in suspects and (org is None or record.org == org)
        ]
        known.update(self.anomalies.previous(seen_again))
        kept = [a for a in anomalies if a.runner_id not in suspects]
        return kept + self._placed(seen_again, known, now, batch.billing()), known

    def _placed(
        self,
        anomalies: Sequence[AnomalyRecord],
        known: Mapping[str, Recorded],
        now: datetime,
        billing: set[str],
    ) -> list[AnomalyRecord]:
        """The anomalies, each in the period whose invoice it flags for review: its usage
        period, unless that invoice is final (a final never changes): then the org's open
        period, where its usage lands as late usage once the document is fixed. Where it is
        recorded open already (`known`), it may stay (`_stays`): on a final, that invoice
        was frozen flagged for it, and a reviewer finds it beside it; reviewed by a person,
        while nothing of it lands on an invoice nobody has looked at for it (`billing`: the
        runners this batch bills usage to, `Batch.billing`)."""
        orgs = {a.org for a in anomalies if a.org is not None and a.period is not None}
        finals = self.invoices.final_flags(orgs) if orgs else {}
        placed = []
        for anomaly in anomalies:
            flags = finals.get(anomaly.org or "", {})
            final = set(flags)
            recorded = known.get(anomaly_id(anomaly))
            if recorded is not None and _stays(recorded, anomaly, flags, billing):
                anomaly = anomaly._replace(period=recorded.period)
            elif anomaly.period in final:
                anomaly = anomaly._replace(period=open_period(now, final))
            placed.append(anomaly)
        return placed

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


def _newest(docs: Sequence[Doc], horizon: float, newest: float | None) -> float | None:
    """The newest plausible stamp among `docs` and `newest`: a stamp past `horizon` is
    garbage and must not push a cursor past real writes."""
    for doc in docs:
        stamp = stamp_of(doc)
        if stamp is not None and stamp <= horizon and (newest is None or stamp > newest):
            newest = stamp
    return newest


def run_chore(
    db: Database[Doc],
    org: str | None = None,
    now: datetime | None = None,
    registry: Registry | None = None,
    *,
    settings: Settings | None = None,
    dry_run: bool = False,
    full: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> RunReport:
    """Meter new usage of one org (or every org when `org` is None) into invoices.

    `full=True` ignores the cursor and reads every AI runner in scope (the
    daily safety net); a full pass cut short resumes where it stopped at the next full
    pass, instead of starting over (`report.resumed_from`): the attempts of one pass cover
    each document once between them, and the pass after a complete one starts over.
    `on_batch(n)` is called after each batch of `n` documents
    (progress display). A database error propagates; rerunning completes the work.
    """
    settings = settings or get_settings()
    if registry is not None and not isinstance(registry, Registry):
        raise ConfigError(
            f"registry must be a pricing.Registry, not {type(registry).__name__} "
            "(pricing.load_registry(path) reads one from a file)"
        )
    registry = registry or load_registry(settings.registry_path)
    now = checked_now(now, settings.future_skew_seconds)
    if org is not None:
        org = validate_org(org)
    meter = Pipeline(db, settings, registry)
    scope = f"org:{org}" if org is not None else ALL_ORGS
    clock = time.monotonic()
    report = RunReport(
        run_id=uuid.uuid4().hex, org=org, started_at=now, dry_run=dry_run, full_scan=full
    )
    try:
        if not dry_run:
            ensure_billing_indexes(db, settings)  # the chore's own collections: its own job
        report.missing_indexes = _check_source_indexes(meter, settings)
        pass_scope = full_pass_scope(scope) if full else None
        if pass_scope is not None:  # from the start, or from where a cut full pass stopped
            since = report.resumed_from = meter.progress.cursor(pass_scope)
        else:
            cursor = meter.progress.cursor(scope)
            since = None if cursor is None else cursor - settings.lookback_seconds
        horizon = now.timestamp() + settings.future_skew_seconds
        seen: dict[str, Any] = {}  # runner key -> the stamp of the version read
        newest = None
        for docs in meter.pending_runners(org, seen, now=now, dry_run=dry_run):
            meter.process(
                docs, org=org, now=now, run_id=report.run_id, report=report, dry_run=dry_run
            )
            newest = _newest(docs, horizon, newest)
            if on_batch is not None:
                on_batch(len(docs))
        # Oldest stamp first, and the cursor moved after every batch: a run cut short (a
        # time limit, a lost worker) keeps what it did, and the next one goes on from there.
        for docs in meter.changed_runners(org, since, seen, dry_run=dry_run):
            meter.process(
                docs, org=org, now=now, run_id=report.run_id, report=report, dry_run=dry_run
            )
            newest = _newest(docs, horizon, newest)
            batch_newest = _newest(docs, horizon, None)
            if batch_newest is not None and not dry_run:
                meter.progress.advance_cursor(scope, batch_newest)
                if pass_scope is not None:
                    meter.progress.advance_cursor(pass_scope, batch_newest)
            if on_batch is not None:
                on_batch(len(docs))
        if not dry_run:
            settled = meter.invoices.settle(now, org)
            report.invoices = settled.written
            orgs = settled.orgs | set(report.orgs)
            if org is not None:
                orgs.add(org)
            else:  # a run over every org refreshes every org's decision, idle ones too
                orgs.update(meter.quota.known_orgs())
            report.decisions = meter.quota.decide(sorted(orgs), now)
            if settings.redis_url and meter.quota.mirror_missed is not None:
                report.mirror_missed = meter.quota.mirror_missed
                log.warning("decisions not mirrored: %s", report.mirror_missed)
            meter.progress.clear_dirty(settled.marks)  # what they announced is decided
            if newest is not None:
                meter.progress.advance_cursor(scope, newest)
            if pass_scope is not None:
                meter.progress.clear_cursor(pass_scope)  # the pass is complete
    except BaseException as exc:  # Ctrl-C and time limits too: the run log says it stopped
        report.error = redact_urls(f"{type(exc).__name__}: {exc}")  # stored: no credentials
        report.duration_seconds = round(time.monotonic() - clock, 3)
        _record_run(meter, report, now, dry_run)
        raise
    report.duration_seconds = round(time.monotonic() - clock, 3)
    _record_run(meter, report, now, dry_run)
    return report


def _check_source_indexes(meter: Pipeline, settings: Settings) -> list[str]:
    """What to say of each source index the server lacks (never created here: the chore only
    reads the platform's collections), each logged once with what it costs."""
    try:
        missing = missing_source_indexes(meter.collections, settings)
    except Exception as exc:  # a role that may not list indexes: say so, meter anyway
        log.warning("could not list the source indexes (%s): %s", type(exc).__name__, exc)
        return []
    warnings = [index.warning() for index in missing]
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _record_run(meter: Pipeline, report: RunReport, now: datetime, dry_run: bool) -> None:
    # The real end: `now` plus the measured duration (times stay `now`-based, reproducible).
    report.finished_at = now + timedelta(seconds=report.duration_seconds or 0)
    if dry_run:
        return
    try:
        meter.collections.runs.insert_one(run_document(report))
    except Exception:
        if report.error is None:
            raise


def run_document(report: RunReport) -> Doc:
    """The `billing_runs` record; org ids are values, never field names."""
    doc = report.model_dump(mode="python", exclude={"orgs", "decisions"})
    doc["_id"] = report.run_id
    doc["orgs"] = [{"org": org, **s.model_dump()} for org, s in sorted(report.orgs.items())]
    doc["decisions"] = [{"org": org, "state": s} for org, s in sorted(report.decisions.items())]
    return doc


def finalize_invoices(
    db: Database[Doc],
    now: datetime | None = None,
    grace: Any = None,
    *,
    org: str | None = None,
    settings: Settings | None = None,
) -> list[str]:
    """Freeze every draft whose period ended more than `grace` ago; the ids finalized.

    It prices nothing: a final invoice is its last draft, lines and amounts as the
    last run priced them. `grace` is a `timedelta` or a number of days (default:
    settings, 3 days), finite and >= 0; a period that has not ended by the wall clock
    is never final (chores/core/clock.py). A draft that lags the ledger (a run is under
    way, or one died before settling) is left for the next run and a later finalize.
    """
    settings = settings or get_settings()
    now = checked_now(now, settings.future_skew_seconds)
    grace = grace_period(grace, settings.grace_days)
    if org is not None:
        org = validate_org(org)
    collections = Collections.of(db, settings)
    ledger = Ledger(collections, batch_size=settings.batch_size)
    finalizer = Finalizer(collections, ledger, Progress(collections))
    return finalizer.finalize(now, grace, org)


def _seq(head: LedgerHead | None) -> int:
    """A runner's latest ledger sequence number, 0 before its first entry."""
    return 0 if head is None else head.seq


def _stays(
    recorded: Recorded, anomaly: AnomalyRecord, finals: Mapping[str, bool], billing: set[str]
) -> bool:
    """Whether an anomaly recorded open on an invoice of its org stays there (`_placed`).
    `finals`: the org's final periods, each with whether it was frozen needing review.

    One nobody reviewed, when that invoice is final and was frozen flagged (a finalize
    that read the anomalies just before this one was recorded froze it unflagged: the
    anomaly then moves to the open month, which it flags), or when it is a draft and the
    anomaly's own month is final (placed in the month that was open then, it flags that
    draft until it is frozen flagged for it, instead of following the open month every
    month, never on a final).

    One a person reviewed, while nothing of it lands on an invoice nobody has looked at
    for it: not when this batch bills its runner usage with it (`billing`: new tokens, or
    tokens that change kind), nor when the runner's usage is now of another open month
    than the one it was reviewed on (it ran on into it, or ended in it). A held kind bills
    nothing (`Anomaly.HELD`), and a runner whose usage month is final bills nothing there:
    a finalize, a month going by or the daily full pass undo no review."""
    if recorded.resolved or recorded.org != anomaly.org:
        return False
    if not recorded.reviewed:
        if recorded.period in finals:
            return finals[recorded.period]
        return anomaly.period in finals
    return anomaly.runner_id not in billing and (
        anomaly.kind in Anomaly.HELD
        or anomaly.period in finals
        or anomaly.period == recorded.period
    )


def _open_at(recorded: Recorded | None, anomaly: AnomalyRecord) -> bool:
    """Whether an anomaly is on record open where it is placed now (reviewed or not)."""
    return recorded is not None and recorded.open_at(anomaly.org, anomaly.period)


def _was_resolved(recorded: Recorded | None) -> bool:
    """Whether an anomaly is on record as resolved (by a run that read its runner clean)."""
    return recorded is not None and recorded.resolved


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
