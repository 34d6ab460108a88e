"""The Celery tasks: fan metering out per org every few minutes, finalize invoices daily.

They stay thin: the work is `run_chore` and `finalize_invoices`; here are only the
choice of orgs, the per-org lock and the retries. Any task may run twice, be
retried half-way or be redelivered after a worker died: the ledger bills each
delta exactly once whatever happens, so none of that needs care here.

Which orgs `meter_all` lists is cheap and durable: orgs with AI runners changed
since the previous fan-out (its own cursor, minus the lookback), orgs with
pending runners or dirty invoices, and orgs *due*: listed by a fan-out and not
metered successfully since (`billing_due`), so an org whose run failed for good
is listed again at the next tick rather than forgotten. The AI runners changed in that
window that name no org are no org's to meter: the fan-out records their anomaly
(`run.orgless`).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from billiard.exceptions import WorkerLostError
from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, PyMongoError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from chores.celery_app import app
from chores.core.arguments import validate_flag
from chores.core.db import Collections, Doc, connect
from chores.core.exceptions import (
    ChoreError,
    ConfigError,
    CredentialsRefused,
    DatabaseUnavailable,
    LockUnavailable,
)
from chores.core.lock import KeepLock, OrgLock, lock_client, release_quietly
from chores.core.logs import redact_urls, short_list
from chores.core.orgs import NOT_UTF8
from chores.core.reads import distinct_values
from chores.core.settings import Settings, get_settings, redact_url
from chores.core.wording import tally
from chores.core.writes import insert_ignoring_duplicates
from chores.metering.progress import Progress, due_claims
from chores.metering.source import Source
from chores.quota.decisions import Quota
from chores.run import chore as _run
from chores.run.orgless import record_orgless
from chores.run.report import RunReport
from chores.service.checks import store_problem
from chores.service.config import RETRY_BACKOFF_MAX, full_given

log = logging.getLogger(__name__)

FANOUT_SCOPE = "*meter_all"  # the fan-out's cursor in billing_cursors, beside "*" (all orgs)

# ConnectionFailure covers AutoReconnect, NetworkTimeout and ServerSelectionTimeoutError;
# `connect` reports an unreachable server as DatabaseUnavailable, `meter_org` an unreachable
# lock as LockUnavailable. A run cut by its soft time limit is retried as well: it resumes
# from what the ledger already holds.
RETRY = {
    "autoretry_for": (
        ConnectionFailure,
        DatabaseUnavailable,
        LockUnavailable,
        RedisConnectionError,
        OperationalError,
        SoftTimeLimitExceeded,
    ),
    # ...but not a server refusing MONGO_URL's user or password: no retry fixes that, and
    # each would fail after as long, saying the same.
    "dont_autoretry_for": (CredentialsRefused,),
    "retry_backoff": True,
    "retry_backoff_max": RETRY_BACKOFF_MAX,
    "retry_jitter": True,
    "max_retries": 5,
    # The wait before a run whose pool process died is sent again (celery_app's
    # `task_retry_on_worker_lost`); the other retries set their own countdown.
    "default_retry_delay": 5,
}

# The time limits, set on the tasks themselves: Celery writes the sender's limits into
# every message (its `timelimit` header), and a worker obeys the message, not its own
# `task_time_limit`. Set here from Settings, beat, `delay()` and the worker agree.
_settings = get_settings()
LIMITS = {
    "soft_time_limit": _settings.task_soft_time_limit,
    "time_limit": _settings.task_time_limit,
}


class OrgTask(Task):
    """A task whose retry and failure lines name its org (the first argument, if any):
    Celery's own lines name only the task id. Called for hard time limits too."""

    # The chore's own errors say what went wrong and what to do, in the failure line:
    # Celery logs them as expected (one line at INFO), not with a traceback at ERROR.
    throws = (ChoreError,)

    def on_retry(
        self, exc: BaseException | None, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if exc is None:  # a retry the task asked for without an error (a locked full pass)
            return  # the task said why when it asked
        log.warning(
            "%s of %s failed (%s), retry %d of %s (task %s)",
            self.name.rsplit(".", 1)[-1],
            self._whose(args, kwargs),
            _describe(exc),
            self.request.retries + 1,
            self.max_retries,
            task_id,
        )

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        log.error(
            "%s of %s failed for good (%s): %s (task %s)",
            self.name.rsplit(".", 1)[-1],
            self._whose(args, kwargs),
            _describe(exc),
            self._what_next(exc, args, kwargs),
            task_id,
        )

    def _whose(self, args: Any, kwargs: Any) -> str:
        """`org acme` for a run of one org (`org None`, `org ''`: a message that named
        none), `all orgs` for the fan-out and the finalize."""
        if self.name != "chores.tasks.meter_org":
            return "all orgs"
        org = (kwargs or {}).get("org", args[0] if args else None)
        return f"org {org[:256]}" if isinstance(org, str) and org else f"org {org!r:.60}"

    def _what_next(self, exc: BaseException, args: Any, kwargs: Any) -> str:
        """What becomes of the work of a task that failed for good."""
        one_org = self.name == "chores.tasks.meter_org"
        org = (kwargs or {}).get("org", args[0] if args else None)
        if one_org and not _is_valid_org(org):  # checked first, as the task checks it
            return "not retried: this message names no org that can be metered"
        full = full_given(self.name, args, kwargs)
        if not isinstance(full, bool):  # no retry fixes the message
            return "not retried: its full is not true or false"
        if not one_org:  # the fan-out, the finalize
            return "the next beat tick sends it again"
        if full:
            return (
                "its daily full pass is skipped today (the org stays due: the next fan-out"
                " lists it for a 5-minute run)"
            )
        return "the org stays due, the next fan-out lists it again"


@signals.task_failure.connect
def _log_a_lost_worker(
    sender: Any = None,
    task_id: str = "",
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    """A run whose pool process died at its last try (`WorkerLostError`, after the retries
    of `task_retry_on_worker_lost`) fails in the worker's main process, where Celery calls
    no `on_failure`: its last line names its org all the same."""
    if isinstance(sender, OrgTask) and isinstance(exception, WorkerLostError):
        sender.on_failure(exception, task_id, args, kwargs, None)


def _is_valid_org(org: Any) -> bool:
    try:
        _run.validate_org(org)
    except ConfigError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    """The exception's type and message, URLs redacted, cut at 300 characters (a driver's
    may quote a whole document); the chore's own, worded to say what to do, at 1,000."""
    text = redact_urls(str(exc))
    limit = 1_000 if isinstance(exc, ChoreError) else 300
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@lru_cache(maxsize=1)
def get_db() -> Database[Doc]:
    """The database of this worker process: connected on first use, then kept (pymongo
    reconnects by itself; a failed connect is not cached). A local store is refused: a
    worker started otherwise than by `celery worker` (`service.checks.store_problem`)."""
    settings = get_settings()
    problem = store_problem(settings)
    if problem is not None:
        raise ConfigError(problem)
    return connect(settings)


def due_marks(db: Database[Doc], settings: Settings) -> Collection[Doc]:
    """`billing_due`: `{_id: org, listed_at}` per org listed by a fan-out and not metered since."""
    return Collections.of(db, settings).due


class OrgsToMeter(NamedTuple):
    """What a fan-out lists: the orgs to meter, the newest plausible stamp seen (the next
    fan-out's cursor), and whether a runner changed in its window named an org id that is
    not UTF-8 (no org: `run.orgless` records it)."""

    orgs: list[str]
    newest: float | None
    not_utf8: bool


def orgs_with_new_usage(
    db: Database[Doc], settings: Settings, *, now: datetime, full: bool = False
) -> OrgsToMeter:
    """The orgs to meter now (`full`: every org with an AI runner), and the newest plausible
    stamp seen (the next fan-out's cursor)."""
    c = Collections.of(db, settings)
    source = Source(c, ai_task_names=settings.ai_task_names, batch_size=settings.batch_size)
    since = _fanout_since(db, settings, full=full)
    changed = source.orgs_changed(since)
    # Bytes that are not UTF-8 read as U+FFFD: no org to the rules, and no query can name
    # the bytes, so no org's run would ever read that runner (it is recorded as no_org).
    not_utf8 = any(type(org) is str and NOT_UTF8 in org for org in changed)
    found = [
        *changed,
        *distinct_values(c.pending, "org", due_claims(now)),
        *distinct_values(c.dirty, "org"),
        *distinct_values(due_marks(db, settings), "_id"),
    ]
    orgs = set()
    # Only strings are org ids: a runner whose workspace_id is an object, a number or
    # JavaScript code (unhashable) is held as no_org when an org's run reads it, and must
    # not stop the fan-out of every other org.
    for org in (value for value in found if type(value) is str and NOT_UTF8 not in value):
        try:
            orgs.add(_run.validate_org(org))
        except ConfigError:
            if org:
                log.warning("org id of %d characters cannot be metered: %.60r", len(org), org)
    stamp = source.newest_stamp(since=since, horizon=now.timestamp() + settings.future_skew_seconds)
    return OrgsToMeter(sorted(orgs), stamp, not_utf8)


def _fanout_since(db: Database[Doc], settings: Settings, *, full: bool) -> float | None:
    """The stamp from which the fan-out looks at changed runners: its cursor less the
    lookback window; None (every runner) for the daily full fan-out or a first one."""
    cursor = None if full else Progress(Collections.of(db, settings)).cursor(FANOUT_SCOPE)
    return None if cursor is None else cursor - settings.lookback_seconds


@app.task(name="chores.tasks.meter_all", base=OrgTask, **RETRY, **LIMITS)
def meter_all(full: bool = False) -> list[str]:
    """List the orgs with new usage and queue one `meter_org` for each; the orgs listed.

    `full` lists every org with an AI runner and has each re-read in full (daily).
    """
    full = validate_flag("full", full)
    settings, db = get_settings(), get_db()
    now = datetime.now(UTC)
    since = _fanout_since(db, settings, full=full)
    orgs, newest, not_utf8 = orgs_with_new_usage(db, settings, now=now, full=full)
    due = due_marks(db, settings)  # an upsert of many marks, in two round trips
    insert_ignoring_duplicates(due, [{"_id": org, "listed_at": now} for org in orgs])
    if orgs:
        due.update_many({"_id": {"$in": orgs}}, {"$set": {"listed_at": now}})
    # Orgs with nothing new get no run, but their decision must not go stale. Decided
    # before the others are queued: a failure here retries the fan-out, which would queue
    # them all again (each run bills nothing twice, but the work is doubled). So does the
    # cursor's write.
    quota = Quota(Collections.of(db, settings), settings)
    # Logs what it refuses: one org's edited invoice must not fail the fan-out.
    quota.decide(sorted(set(quota.known_orgs()) - set(orgs)), now, raise_refused=False)
    # The cursor moves before the orgs are queued: a failure between the two leaves them due
    # (`due_marks`), listed again by the retry, rather than every org queued twice.
    if newest is not None:
        Progress(Collections.of(db, settings)).advance_cursor(FANOUT_SCOPE, float(newest))
    for org in orgs:
        meter_org.delay(org, full=full)
    # Documents that name no org: no org's run reads them (SPEC §1 fact 8). A side job:
    # its failure must not retry the fan-out (every org sent again) nor hold the cursor
    # back; the daily full fan-out reads them all again.
    try:
        also_not = orgs if not_utf8 else None
        orgless = record_orgless(db, settings, since=since, now=now, besides_orgs=also_not)
    except PyMongoError as exc:
        orgless = None
        log.warning(
            "fan-out: the documents that name no org were not recorded (%s); the daily full "
            "fan-out reads them again",
            redact_urls(f"{type(exc).__name__}: {exc}"),
        )
    if orgless is not None and orgless.new_anomalies:  # said once, not at every look
        log.warning(
            "fan-out: %d AI runner document(s) name no org, not billed (%s new: %s); "
            "`chore anomaly list --no-org` lists them",
            orgless.docs_read,
            orgless.new_anomalies,
            tally(orgless.anomalies),
            extra={"fields": {"event": "no-org", "documents": orgless.docs_read}},
        )
    log.info(
        "fan-out%s: %d org(s) to meter%s",
        " (full)" if full else "",
        len(orgs),
        f": {short_list(orgs)}" if orgs else "",
        extra={"fields": {"event": "fan-out", "full": full, "orgs": len(orgs)}},
    )
    return orgs


@app.task(name="chores.tasks.meter_org", bind=True, base=OrgTask, **RETRY, **LIMITS)
def meter_org(self: Task, org: str, full: bool = False) -> dict[str, Any]:
    """Meter one org's new usage (`full`: re-read all its AI runners), unless another
    worker is metering it right now.

    Never without the org's lock (SPEC §6: one org is never metered by two workers at
    once): when its Redis cannot be reached, the task meters nothing and is retried: with
    backoff, as for any connection error, or, for the daily full pass, after
    LOCK_TTL_SECONDS, as when the org is locked. The org's quota decision is left to age:
    once stale it answers `unknown` and QUOTA_FAIL_OPEN decides, as when MongoDB is down
    (decided again from the draft, it would say `ok` for usage it cannot see). Billing would
    stay exact without the lock, the ledger sees to that; the lock keeps the promise.
    """
    org = _run.validate_org(org)
    full = validate_flag("full", full)
    settings = get_settings()
    started = datetime.now(UTC)
    clock = time.monotonic()
    url = settings.lock_redis_url
    lock = OrgLock(
        lock_client(url), org, ttl_seconds=settings.lock_ttl_seconds, task_id=self.request.id
    )
    try:
        acquired = lock.acquire()
    except RedisError as exc:
        unavailable = LockUnavailable(
            f"the lock of org {org} cannot be taken ({type(exc).__name__} at {redact_url(url)}):"
            " not metered without it"
        )
        _log_run(
            org, None, outcome="error", full=full, seconds=time.monotonic() - clock, exc=unavailable
        )
        if full:  # the daily safety net waits as long as a locked one does, not ~30 s
            raise self.retry(exc=unavailable, countdown=settings.lock_ttl_seconds) from None
        raise unavailable from None
    if not acquired:
        if full and self.request.retries >= (self.max_retries or 0):
            log.error(
                "org %s was locked at every try of its daily full pass: the pass is"
                " skipped today (the 5-minute runs go on)",
                org,
            )
        elif full:
            # The daily full pass is the safety net: it must not be lost to a 5-minute
            # run that holds the lock right now. Retried once that lock is surely gone.
            log.warning(
                "org %s is being metered by another worker: its daily full pass is retried"
                " in %d s (retry %d of %d)",
                org,
                settings.lock_ttl_seconds,
                self.request.retries + 1,
                self.max_retries,
            )
            raise self.retry(countdown=settings.lock_ttl_seconds)
        log.info("org %s is being metered by another worker: skipped", org)
        _log_run(org, None, outcome="locked", full=full, seconds=time.monotonic() - clock)
        return _summary(org, None)
    try:
        db = get_db()
        keep = KeepLock(lock)  # after every batch: a run making progress keeps its lock
        report = _run.run_chore(db, org=org, settings=settings, full=full, on_batch=keep)
        due_marks(db, settings).delete_one({"_id": org, "listed_at": {"$lte": started}})
    except BaseException as exc:
        outcome = "cut" if isinstance(exc, SoftTimeLimitExceeded) else "error"
        _log_run(org, None, outcome=outcome, full=full, seconds=time.monotonic() - clock, exc=exc)
        raise
    finally:
        release_quietly(lock)
    _log_run(org, report, outcome="ok", full=full, seconds=time.monotonic() - clock)
    return _summary(org, report)


def _log_run(
    org: str,
    report: RunReport | None,
    *,
    outcome: str,
    full: bool,
    seconds: float,
    exc: BaseException | None = None,
) -> None:
    """The one line of a `meter_org` run: org, outcome, docs read, tokens, duration, and
    what else its report says. The amount billed is on the invoice, not in the report:
    `chore status` / the drafts show it."""
    fields: dict[str, Any] = {
        "event": "run",
        "org": org,
        "outcome": outcome,  # ok, locked (skipped), cut (soft time limit), error
        "full": full,
        "duration_s": round(seconds, 3),
    }
    if report is not None:
        fields.update(
            run_id=report.run_id,
            docs_read=report.docs_read,
            tokens_billed=report.tokens_billed,
            entries_written=report.entries_written,
            anomalies=sum(report.anomalies.values()),
            new_anomalies=report.new_anomalies,
        )
        if report.idle_runners:
            fields["idle_runners"] = report.idle_runners
        if org in report.decisions:
            fields["decision"] = report.decisions[org]
    if exc is not None:
        fields["error"] = _describe(exc)
    level = logging.INFO if exc is None else logging.WARNING
    text = " ".join(f"{k}={v}" for k, v in fields.items() if k != "event")
    log.log(level, "run %s", text, extra={"fields": fields})


@app.task(name="chores.tasks.finalize_invoices", base=OrgTask, **RETRY, **LIMITS)
def finalize_invoices() -> list[str]:
    """Make final every draft whose period ended more than the grace ago; the ids finalized."""
    settings = get_settings()
    finalized = _run.finalize_invoices(get_db(), settings=settings)
    log.info(
        "finalized %d invoice(s)%s",
        len(finalized),
        f": {short_list(finalized)}" if finalized else "",
    )
    return finalized


def _summary(org: str, report: RunReport | None) -> dict[str, Any]:
    """What a `meter_org` did, small enough for the result backend; `locked` when skipped."""
    if report is None:
        return {
            "org": org,
            "locked": True,
            "run_id": None,
            "docs_read": 0,
            "tokens_billed": 0,
            "entries_written": 0,
            "anomalies": 0,
            "new_anomalies": 0,
        }
    return {
        "org": org,
        "locked": False,
        "run_id": report.run_id,
        "docs_read": report.docs_read,
        "tokens_billed": report.tokens_billed,
        "entries_written": report.entries_written,
        "anomalies": sum(report.anomalies.values()),
        "new_anomalies": report.new_anomalies,
    }
