"""`chore usage` and `chore report`: what an invoice is made of, per run, session, model, day
or tier, as a table, JSON, CSV or one self-contained HTML page.

Both read the stored invoice and split it with `_allocation`, so their totals are the
invoice's, to the micro-dollar.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, cast

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pricing import load_registry

from ._allocation import Allocation, allocate
from ._breakdown import BY_CHOICES, By, Filters, Row, Usage, model_filter, rows, total
from ._db import Collections, connect
from ._money import usd
from ._period_ledger import read_period
from ._periods import period_bounds, period_of
from ._settings import get_settings
from ._wording import counted
from .cli import console, main, now_option, parse_now, user_errors

RUN_FIELDS = ("model", "session_id", "parent_id", "subagent", "status")
USAGE_FIELDS = ("input_tokens", "cached_tokens", "output_tokens", "unsplit_tokens", "tokens")


def _period(period: str | None) -> str:
    period = period or period_of(datetime.now(UTC))
    try:
        period_bounds(period)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--period'") from None
    return period


def _day(value: datetime | None) -> date | None:
    return None if value is None else value.date()


period_option = click.option("--period", help="YYYY-MM (default: the current month).")


# usage --------------------------------------------------------------------------------------
@main.command()
@click.option("--org", required=True)
@period_option
@click.option(
    "--by",
    type=click.Choice(BY_CHOICES),
    default="run",
    show_default=True,
    help="Group by source runner, session, model, UTC day or tier (paid/free/byok/unpriced).",
)
@click.option("--model", "models", multiple=True, help="Only this model: raw name or registry id.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="Only usage on or after this day.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Only usage on or before it.")
@click.option(
    "--status", "statuses", multiple=True, help="Only runs whose last status is this (FAILURE)."
)
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True)
@user_errors
def usage(
    org: str,
    period: str | None,
    by: str,
    models: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    statuses: Sequence[str],
    as_json: bool,
    as_csv: bool,
) -> None:
    """Break ORG's invoice down; unfiltered rows always add up to the invoice."""
    from ._run import validate_org

    org = validate_org(org)
    period = _period(period)
    if as_json and as_csv:
        raise click.UsageError("give at most one of --json and --csv")
    settings = get_settings()
    registry = load_registry(settings.registry_path)
    collections = Collections.of(connect(settings), settings)
    invoice, usages = read_period(collections, org, period, batch_size=settings.batch_size)
    allocation = allocate(invoice, usages, registry)
    filters = Filters(
        models=model_filter(models, registry),
        since=_day(since),
        until=_day(until),
        statuses=frozenset(s.upper() for s in statuses),
    )
    view = cast(By, by)
    table = rows(allocation.cells, view, filters)
    if as_json:
        click.echo(json.dumps(usage_json(allocation, view, table, filters, models), indent=2))
    elif as_csv:
        click.echo(usage_csv(view, table), nl=False)
    else:
        print_usage(console(), allocation, view, table, filters)


def _row_dict(by: By, row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {by: row.key}
    if row.run is not None:
        out.update({name: getattr(row.run, name) for name in RUN_FIELDS})
    out["runs"] = row.runs
    out.update(row.usage.as_dict())
    return out


def _runs(allocation: Allocation, filters: Filters) -> int:
    return len(rows(allocation.cells, "run", filters))


def usage_json(
    allocation: Allocation, by: By, table: Sequence[Row], filters: Filters, models: Sequence[str]
) -> dict[str, Any]:
    invoice = allocation.invoice
    summed = total(table)
    return {
        "invoice": invoice.id,
        "org": invoice.org,
        "period": invoice.period,
        "status": invoice.status,
        "by": by,
        "pricing": allocation.pricing,
        "exact_weights": allocation.exact,
        "filters": {
            "models": list(models),
            "since": filters.since.isoformat() if filters.since else None,
            "until": filters.until.isoformat() if filters.until else None,
            "statuses": sorted(filters.statuses),
        },
        "rows": [_row_dict(by, row) for row in table],
        "total": {"runs": _runs(allocation, filters), **summed.as_dict()}
        | {"amount_micros": summed.priced_micros},
        "invoice_total_micros": invoice.total_micros,
        "invoice_tokens": sum(line.tokens for line in invoice.lines),
    }


def usage_csv(by: By, table: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fields = [by, *(RUN_FIELDS if by == "run" else ()), "runs", *USAGE_FIELDS]
    fields += ["amount_micros", "unpriced_tokens"]
    writer.writerow(fields)
    for row in table:
        values = _row_dict(by, row)
        writer.writerow(["" if values[f] is None else values[f] for f in fields])
    return buffer.getvalue()


def _amount(usage: Usage) -> str:
    if usage.amount_micros is None:
        return "[bold red]UNPRICED[/]"
    text = usd(usage.amount_micros)
    return f"{text} [red]+ unpriced[/]" if usage.unpriced_tokens else text


def print_usage(
    out: Console, allocation: Allocation, by: By, table: Sequence[Row], filters: Filters
) -> None:
    invoice = allocation.invoice
    view = Table(
        title=f"Usage of {invoice.id} by {by}  [{invoice.status.upper()}]", title_justify="left"
    )
    view.add_column(by, no_wrap=True)
    extra = ("model", "status", "session") if by == "run" else ()
    for column in extra:
        view.add_column(column)
    for column in ("runs", "input", "cached", "output", "unsplit", "tokens", "amount"):
        view.add_column(column, justify="right")
    for row in table:
        cells = [escape(row.key) if row.key is not None else "(none)"]
        if row.run is not None:
            run = row.run
            cells[0] = ("↳ " if run.subagent else "") + cells[0]
            cells += [escape(text or "") for text in (run.model, run.status, run.session_id)]
        u = row.usage
        cells += [f"{row.runs:,}"] + [
            f"{n:,}" for n in (u.input_tokens, u.cached_tokens, u.output_tokens, u.unsplit_tokens)
        ]
        cells += [f"{u.tokens:,}", _amount(u)]
        view.add_row(*cells)
    summed = total(table)
    view.add_section()
    view.add_row(
        "total",
        *([""] * len(extra)),
        f"{_runs(allocation, filters):,}",
        *(f"{n:,}" for n in (summed.input_tokens, summed.cached_tokens, summed.output_tokens)),
        f"{summed.unsplit_tokens:,}",
        f"{summed.tokens:,}",
        usd(summed.priced_micros),
    )
    out.print(view)
    invoice_tokens = sum(line.tokens for line in invoice.lines)
    scope = "filtered rows" if filters.active else "rows"
    out.print(
        f"  {scope}: {usd(summed.priced_micros)}, {summed.tokens:,} tokens · invoice total "
        f"{usd(invoice.total_micros)}, {invoice_tokens:,} tokens · priced as {allocation.pricing}"
        + ("" if allocation.exact else " (weights proportional: prices changed)")
    )


# report -------------------------------------------------------------------------------------
@contextmanager
def _progress_bar(quiet: bool) -> Iterator[Any]:
    """A rich progress bar on stderr (none with --quiet or without a terminal); yields
    `update(what, done, total)`."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    err = Console(stderr=True)
    # In a log (no terminal) a bar is noise: it shows only where someone watches.
    with Progress(
        *columns, console=err, transient=True, disable=quiet or not err.is_terminal
    ) as progress:
        task = progress.add_task("report", total=None)

        def update(what: str, done: int, total: int) -> None:
            progress.update(task, description=what, completed=done, total=total)

        yield update


@main.command()
@click.option("--org", required=True)
@period_option
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write.",
)
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--quiet", is_flag=True, help="No progress bar and no summary (cron).")
@now_option
@user_errors
def report(
    org: str, period: str | None, out: Path, top: int, quiet: bool, now_text: str | None
) -> None:
    """Write ORG's usage report: invoice, daily chart by model, top runs, anomalies."""
    from ._report_html import collect_report, render_report
    from ._run import validate_org

    org = validate_org(org)
    period = _period(period)
    settings = get_settings()
    registry = load_registry(settings.registry_path)
    now = parse_now(now_text) or datetime.now(UTC)
    db = connect(settings)
    with _progress_bar(quiet) as update:
        data = collect_report(
            db,
            org,
            period,
            settings=settings,
            registry=registry,
            now=now,
            top=top,
            on_progress=update,
        )
        update("rendering the page", 0, 1)
        page = render_report(data)
        _write_atomically(out, page)
        update("done", 1, 1)
    if not quiet:
        invoice = data.allocation.invoice
        click.echo(
            f"wrote {out}: invoice {invoice.id} ({invoice.status}), total "
            f"{usd(invoice.total_micros)}, {counted(invoice.runs, 'run')}, "
            f"{counted(len(data.anomalies), 'open anomaly')}"
        )


def _write_atomically(path: Path, text: str) -> None:
    """Readers (a web server, a mail job) never see half a report."""
    folder = path.resolve().parent
    try:
        handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
