"""`chore run`: meter new usage into invoices."""

from __future__ import annotations

import time
from datetime import datetime

import click
from pymongo.database import Database
from redis.exceptions import RedisError
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from chores.billing.known_orgs import unknown_org_note
from chores.cli import tables
from chores.cli.common import console, model_json, now_option, save_stores, user_errors
from chores.cli.exit_codes import EXIT_LOCKED
from chores.core.db import (
    IN_PROCESS_SCHEMES,
    Collections,
    Doc,
    connect,
)
from chores.core.exceptions import LockUnavailable
from chores.core.lock import KeepLock, OrgLock, lock_client, release_quietly
from chores.core.logs import redact_url
from chores.core.orgs import validate_org
from chores.core.reads import distinct_values
from chores.core.settings import Settings, get_settings
from chores.core.wording import counted
from chores.metering.rules import Anomaly
from chores.run.chore import run_chore
from chores.run.report import RunReport


# run ---------------------------------------------------------------------------
@click.command(short_help="Meter new usage into invoices (--org ORG or --all).")
@click.option("--org", metavar="ORG", help="Meter this org only (workspace id).")
@click.option("--all", "all_orgs", is_flag=True, help="Meter every org.")
@click.option("--dry-run", is_flag=True, help="Compute new usage, write nothing.")
@click.option("--full", is_flag=True, help="Ignore the cursor: re-read every AI runner.")
@click.option(
    "--no-lock",
    is_flag=True,
    help="Meter without the org's Redis lock (Redis down, or --all with the workers stopped):"
    " billing stays exact, but a worker may meter the org at the same time.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON (for scripts).")
@click.option(
    "--quiet",
    is_flag=True,
    help="No progress and no table on success (cron): what went wrong in the run still goes "
    "to stderr; --json still prints.",
)
@now_option
@user_errors
def run(
    org: str | None,
    all_orgs: bool,
    dry_run: bool,
    full: bool,
    no_lock: bool,
    as_json: bool,
    quiet: bool,
    now: datetime | None,
) -> None:
    """Meter new usage into invoices (one org with --org, or --all).

    On a database the workers meter too, an org is metered under the lock a worker takes
    (SPEC §6: one org is never metered by two at once): exit 5 when a worker holds it, 1
    when its Redis cannot be reached. `--all` takes no lock: there it needs --no-lock (a dry
    run takes none and needs none).
    """

    if bool(org is not None) == all_orgs:
        raise click.UsageError("give exactly one of --org ORG or --all")
    org = None if org is None else validate_org(org)
    settings = get_settings()
    db = connect(settings)  # a bad or unreachable MONGO_URL is said first
    lock = None if dry_run or no_lock else _take_lock(settings, org)
    keep = None if lock is None else KeepLock(lock)
    try:
        _run(
            db, settings, keep, org=org, dry_run=dry_run, full=full, as_json=as_json,
            quiet=quiet, now=now,
        )  # fmt: skip
    finally:
        if lock is not None:
            problems = [keep.lost if keep else None, release_quietly(lock)]
            for problem in filter(None, problems):  # the worker logs them; a person reads them
                click.echo(f"warning: {problem}", err=True)


def _take_lock(settings: Settings, org: str | None) -> OrgLock | None:
    """The org's metering lock, taken as a worker takes it; None on an in-process store
    (`file://`, `mongomock://`), which no worker reads."""
    if settings.mongo_url.startswith(IN_PROCESS_SCHEMES):
        return None
    if org is None:
        raise click.UsageError(
            "--all meters every org without its lock, beside the workers: stop them and add "
            "--no-lock, or meter one org with --org ORG"
        )
    url = settings.lock_redis_url
    lock = OrgLock(lock_client(url), org, ttl_seconds=settings.lock_ttl_seconds)
    try:
        acquired = lock.acquire()
    except RedisError as exc:
        raise LockUnavailable(
            f"the lock of org {org} cannot be taken ({type(exc).__name__} at {redact_url(url)}):"
            " not metered without it (--no-lock meters anyway; billing stays exact)"
        ) from None
    if not acquired:
        click.echo(
            f"org {org} is being metered by a worker right now: not metered; run again in a "
            f"moment (a dead worker's lock expires within LOCK_TTL_SECONDS, "
            f"{settings.lock_ttl_seconds} s)",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_LOCKED)
    return lock


def _run(
    db: Database[Doc],
    settings: Settings,
    keep: KeepLock | None,
    *,
    org: str | None,
    dry_run: bool,
    full: bool,
    as_json: bool,
    quiet: bool,
    now: datetime | None,
) -> None:
    """The run itself, its progress and its report; `keep` renews the org's lock."""
    out = console()
    show_progress = not (quiet or as_json) and out.is_terminal
    # Live on a terminal (not with --quiet or --json, not in a log): documents read, the
    # rate, and the orgs with new usage so far (those whose invoices this run will settle:
    # one small read of the dirty marks per batch, only while someone watches).
    dirty = Collections.of(db, settings).dirty
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=out,
        disable=not show_progress,
        transient=True,
    ) as progress:
        task = progress.add_task("metering: 0 runner documents read", total=None)
        read = 0
        started = time.monotonic()

        def advance(n: int) -> None:
            nonlocal read
            if keep is not None:
                keep(n)  # after every batch: a run making progress keeps its lock
            read += n
            rate = read / max(time.monotonic() - started, 1e-3)
            orgs = len(distinct_values(dirty, "org")) if show_progress and not dry_run else 0
            progress.update(
                task,
                description=f"metering: {counted(read, 'runner document')} read · "
                f"{counted(orgs, 'org')} with new usage · {rate:,.0f} documents/s ·",
            )

        report = run_chore(
            db,
            org=org,
            now=now,
            settings=settings,
            dry_run=dry_run,
            full=full,
            on_batch=advance,
        )
    # A file:// store is written back now, not when the command ends: a process killed
    # after the summary below said what it billed kept none of it (outside review).
    save_stores()
    if as_json:  # asked for explicitly: --quiet only silences what is for people
        click.echo(model_json(report))
        if not quiet:
            _note_unknown_org(db, settings, report)
        return
    if quiet:  # no table: what went wrong in the run still goes to stderr, where cron mails it
        _warn(report, standing=False)
        return
    table = tables.table(f"Metering run {report.run_id[:8]}" + (" (dry run)" if dry_run else ""))
    tables.name_column(table, "org")
    for column in ("new tokens", "entries", "anomalies"):
        tables.number_column(table, column)
    tables.name_column(table, "decision", keep=True)
    for name, summary in sorted(report.orgs.items()):
        table.add_row(
            escape(name),
            f"{summary.tokens:,}",
            f"{summary.entries:,}",
            f"{summary.anomalies:,}",
            report.decisions.get(name, tables.DASH),
        )
    tables.show(out, table)
    _warn(report)
    out.print(
        f"{counted(report.docs_read, 'document')} read, "
        f"{counted(report.tokens_billed, 'token')} billed, "
        f"{_anomalies(report)}, "
        f"{counted(len(report.invoices), 'invoice')} updated"
    )
    orgless = report.anomalies.get(Anomaly.NO_ORG, 0)
    if orgless and not report.dry_run:  # a dry run records nothing to list
        out.print(
            f"{counted(orgless, 'runner document')} without an org (no_org) billed nothing: "
            "`chore anomaly list --no-org` lists them"
        )
    if report.idle_runners and not report.dry_run:
        out.print(
            f"{counted(report.idle_runners, 'runner')} pending but not written for "
            "PENDING_IDLE_SECONDS: re-read once an hour, not every run"
        )
    _note_unknown_org(db, settings, report)


def _anomalies(report: RunReport) -> str:
    """`3 anomalies (1 new)`: the open ones of runners read again are counted too."""
    total = sum(report.anomalies.values())
    if not total:
        return counted(0, "anomaly")
    new = f"{report.new_anomalies:,} new" if report.new_anomalies else "none new"
    return f"{counted(total, 'anomaly')} ({new})"


def _note_unknown_org(db: Database[Doc], settings: Settings, report: RunReport) -> None:
    """After an `--org` run that read none of the org's runners, a note on stderr when the
    billing knows nothing of the org: most likely a mistyped id (an org with no usage yet
    is no error)."""
    if report.org is None or report.org in report.orgs:  # it read some of the org's runners
        return
    unknown = unknown_org_note(Collections.of(db, settings), report.org)
    if unknown is not None:
        click.echo(f"note: {unknown}", err=True)


def _warn(report: RunReport, *, standing: bool = True) -> None:
    """What a run found wrong, on stderr: drafts rebuilt from their ledger, a quota mirror
    not written; with `standing`, the source indexes missing too (not under `--quiet`: a
    cron would mail it every run; `chore status` and the log say it)."""
    if standing:
        for warning in report.missing_indexes:
            click.echo(f"warning: {warning}", err=True)
    for draft in report.repaired_drafts:
        click.echo(
            f"warning: draft {draft} held other sums or lines than its ledger (an edit?): "
            "rebuilt from the ledger",
            err=True,
        )
    if report.mirror_missed is not None:
        click.echo(
            f"warning: {report.mirror_missed}: the decisions are in the database, "
            "but `chore quota check` through that Redis answers the previous ones for up "
            "to QUOTA_CACHE_TTL_SECONDS (360 by default)",
            err=True,
        )
