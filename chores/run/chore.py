"""One metering run: source documents -> deltas -> ledger -> invoices -> quota decisions.

`run_chore` is the whole job for one org or for all of them. It reads the
pending runners and the changed runners in batches, each batch assessed and recorded by
the `pipeline.Pipeline` (deltas appended to the ledger, anomalies recorded), moves the
cursor, then settles the invoices it touched and writes the quota decisions.
`finalize_invoices` freezes the drafts of ended months. Every write is idempotent, so a
run that dies anywhere is completed exactly by the next one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from chores.billing.finalizer import Finalizer
from chores.core.arguments import validate_flag
from chores.core.clock import PREVIEW_AHEAD_SECONDS, checked_now, grace_period
from chores.core.db import (
    Collections,
    Doc,
    ensure_billing_indexes,
    missing_source_indexes,
)
from chores.core.documents import past_int64
from chores.core.exceptions import ConfigError
from chores.core.logs import redact_urls
from chores.core.orgs import validate_org
from chores.core.settings import MAX_INT64, Settings, get_settings
from chores.metering.ledger import Ledger
from chores.metering.progress import (
    Progress,
    cursor_scope,
    full_pass_scope,
)
from chores.metering.source import stamp_of
from chores.run.pipeline import Pipeline
from chores.run.report import RunReport
from pricing import Registry, load_registry

log = logging.getLogger(__name__)


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
    full = validate_flag("full", full)
    dry_run = validate_flag("dry_run", dry_run)
    settings = settings or get_settings()
    if registry is not None and not isinstance(registry, Registry):
        raise ConfigError(
            f"registry must be a pricing.Registry, not {type(registry).__name__} "
            "(pricing.load_registry(path) reads one from a file)"
        )
    registry = registry or load_registry(settings.registry_path)
    # A dry run writes nothing: it may preview a time far ahead (README: a command that
    # writes refuses a `now` further ahead of this machine's clock than the allowed skew).
    now = checked_now(now, PREVIEW_AHEAD_SECONDS if dry_run else settings.future_skew_seconds)
    if org is not None:
        org = validate_org(org)
    meter = Pipeline(db, settings, registry)
    scope = cursor_scope(org)
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
        if pass_scope is not None and not dry_run:
            # Every runner read: the pass is complete, whatever happens to the settle (its
            # marks outlive it), so the next full pass starts over.
            meter.progress.clear_cursor(pass_scope)
        if not dry_run:
            settled = meter.invoices.settle(now, org, full=full)
            report.invoices = settled.written
            report.repaired_drafts = settled.repaired
            for draft in settled.repaired:
                log.warning(
                    "draft %s held other sums or lines than its ledger (an edit?): rebuilt from it",
                    draft,
                )
            orgs = settled.orgs | set(report.orgs)
            if org is not None:
                orgs.add(org)
            else:  # a run over every org refreshes every org's decision, idle ones too
                orgs.update(meter.quota.known_orgs())
            report.decisions = meter.quota.decide(sorted(orgs), now, raise_refused=False)
            if settings.redis_url and meter.quota.mirror_missed is not None:
                report.mirror_missed = meter.quota.mirror_missed
                log.warning("decisions not mirrored: %s", report.mirror_missed)
            meter.progress.clear_dirty(settled.marks)  # what they announced is decided
            if newest is not None:
                meter.progress.advance_cursor(scope, newest)
            for too_large in meter.invoices.too_large.values():
                raise too_large  # all else done: the first draft that could not be stored
            for refused in meter.quota.refused.values():
                raise refused  # all else done: the first invoice the decisions could not read
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


# Entries a run record keeps of each of its lists (orgs, decisions, invoices, drafts
# repaired), the first in order; `<list>_omitted` counts the rest. A run of every org
# stays far below MongoDB's 16 MB a document (about 240 bytes an org: 70,000 orgs filled it).
RUN_RECORD_LISTED = 1_000


def run_document(report: RunReport) -> Doc:
    """The `billing_runs` record; org ids are values, never field names. Each list keeps
    its first RUN_RECORD_LISTED entries (the report of the run itself has them all)."""
    doc = report.model_dump(mode="python", exclude={"orgs", "decisions"})
    doc["_id"] = report.run_id
    doc["orgs"] = [{"org": org, **s.model_dump()} for org, s in sorted(report.orgs.items())]
    doc["decisions"] = [{"org": org, "state": s} for org, s in sorted(report.decisions.items())]
    for field in ("orgs", "decisions", "invoices", "repaired_drafts"):
        listed = doc[field]
        if len(listed) > RUN_RECORD_LISTED:
            doc[field] = listed[:RUN_RECORD_LISTED]
            doc[f"{field}_omitted"] = len(listed) - RUN_RECORD_LISTED
    # A run's sums can pass what MongoDB stores though each invoice fits (a ceiling and
    # counters far beyond real usage): the record keeps the largest number it can, and
    # says where (the ledger and the invoices hold the real figures).
    capped = []
    while (found := past_int64(doc)) is not None:
        path, value = found
        _set_path(doc, path, MAX_INT64 if value > 0 else -MAX_INT64 - 1)
        capped.append(path)
    if capped:
        doc["capped"] = capped
    return doc


def _set_path(doc: Any, path: str, value: int) -> None:
    """Set the value at a dotted path of `past_int64` (list indexes as numbers)."""
    *parents, last = path.split(".")
    for key in parents:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    if isinstance(doc, list):
        doc[int(last)] = value
    else:
        doc[last] = value


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
