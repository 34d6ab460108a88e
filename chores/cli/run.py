"""`chore run`: meter new usage into invoices."""

from __future__ import annotations

import time
from datetime import datetime

import click
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from chores.cli import tables
from chores.cli.common import (
    console,
    now_option,
    user_errors,
)
from chores.core.db import (
    Collections,
    connect,
)
from chores.core.settings import get_settings
from chores.core.wording import counted
from chores.run.chore import run_chore


# run ---------------------------------------------------------------------------
@click.command(short_help="Meter new usage into invoices (--org ORG or --all).")
@click.option("--org", metavar="ORG", help="Meter this org only (workspace id).")
@click.option("--all", "all_orgs", is_flag=True, help="Meter every org.")
@click.option("--dry-run", is_flag=True, help="Compute new usage, write nothing.")
@click.option("--full", is_flag=True, help="Ignore the cursor: re-read every AI runner.")
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON (for scripts).")
@click.option(
    "--quiet", is_flag=True, help="No progress and no table on success (cron); --json still prints."
)
@now_option
@user_errors
def run(
    org: str | None,
    all_orgs: bool,
    dry_run: bool,
    full: bool,
    as_json: bool,
    quiet: bool,
    now: datetime | None,
) -> None:
    """Meter new usage into invoices (one org with --org, or --all)."""

    if bool(org is not None) == all_orgs:
        raise click.UsageError("give exactly one of --org ORG or --all")
    settings = get_settings()
    db = connect(settings)
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
            read += n
            rate = read / max(time.monotonic() - started, 1e-3)
            orgs = len(dirty.distinct("org")) if show_progress and not dry_run else 0
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
    if as_json:  # asked for explicitly: --quiet only silences what is for people
        click.echo(report.model_dump_json(indent=2))
        return
    if quiet:
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
    out.print(tables.fit(table, out.width))
    for warning in report.missing_indexes:
        click.echo(f"warning: {warning}", err=True)
    out.print(
        f"{counted(report.docs_read, 'document')} read, "
        f"{counted(report.tokens_billed, 'token')} billed, "
        f"{counted(sum(report.anomalies.values()), 'anomaly')}, "
        f"{counted(len(report.invoices), 'invoice')} updated"
    )
