"""`chore usage` and `chore report`: what an invoice is made of, per run, session, model, day
or tier, as a table, JSON, CSV or one self-contained HTML page.

Both read the stored invoice and split it with `allocation`, so their totals are the
invoice's, to the micro-dollar.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
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

from chores.billing.period_ledger import read_period
from chores.cli import tables
from chores.cli.common import (
    console,
    csv_option,
    csv_text,
    echo_utf8,
    json_option,
    machine_format,
    now_option,
    org_option,
    period_option,
    period_or_month_of,
    user_errors,
)
from chores.cli.output_files import write_output
from chores.cli.params import DayType
from chores.core.db import Collections, connect
from chores.core.money import usd
from chores.core.orgs import validate_org
from chores.core.settings import get_settings
from chores.core.wording import counted, for_terminal
from chores.reports.allocation import Allocation, allocate
from chores.reports.breakdown import (
    BY_CHOICES,
    AllocatedUsage,
    By,
    Filters,
    Row,
    model_filter,
    registry_models,
    rows,
    total,
)
from chores.reports.run_trees import tree_order
from pricing import load_registry

# `model`: the run's models as its invoice lines name them (`registry_models`), as the table
# shows them; `ai_model` (last, after the usage columns): the raw name its latest ledger
# entry recorded.
RUN_FIELDS = ("model", "session_id", "parent_id", "subagent", "status")
USAGE_FIELDS = ("input_tokens", "cached_tokens", "output_tokens", "unsplit_tokens", "tokens")


# usage --------------------------------------------------------------------------------------
@click.command()
@org_option
@period_option
@click.option(
    "--by",
    type=click.Choice(BY_CHOICES),
    default="run",
    show_default=True,
    help="Group by source runner (subagents under their parents), session, model, UTC day "
    "or tier (paid/free/byok/unpriced).",
)
@click.option("--model", "models", multiple=True, help="Only this model: raw name or registry id.")
@click.option("--since", type=DayType(), help="Only usage on or after this UTC day.")
@click.option("--until", type=DayType(), help="Only usage on or before this UTC day.")
@click.option(
    "--status", "statuses", multiple=True, help="Only runs whose last status is this (FAILURE)."
)
@json_option
@csv_option
@now_option
@user_errors
def usage(
    org: str,
    period: str | None,
    by: str,
    models: Sequence[str],
    since: date | None,
    until: date | None,
    statuses: Sequence[str],
    as_json: bool,
    as_csv: bool,
    now: datetime | None,
) -> None:
    """Break ORG's invoice down; unfiltered rows always add up to the invoice."""

    machine_format(as_json, as_csv)
    if since is not None and until is not None and since > until:
        raise click.UsageError(f"--since {since} is after --until {until}: no day can match both")
    org = validate_org(org)
    period = period_or_month_of(period, now)
    settings = get_settings()
    registry = load_registry(settings.registry_path)
    collections = Collections.of(connect(settings), settings)
    invoice, usages = read_period(collections, org, period, batch_size=settings.batch_size)
    allocation = allocate(invoice, usages, registry)
    filters = Filters(
        models=model_filter(models, registry),
        since=since,
        until=until,
        statuses=frozenset(s.upper() for s in statuses),
    )
    view = cast(By, by)
    table = rows(allocation.cells, view, filters)
    depths: dict[str | None, int] = {}
    if view == "run":
        ordered = tree_order(table)
        table = [row for row, _ in ordered]
        depths = {row.key: depth for row, depth in ordered}
    if as_json:
        click.echo(json.dumps(usage_json(allocation, view, table, filters, models), indent=2))
    elif as_csv:
        echo_utf8(usage_csv(allocation, view, table))
    elif not table:
        click.echo(for_terminal(_nothing_matches(allocation.invoice.id, filters, models, statuses)))
    else:
        print_usage(console(), allocation, view, table, filters, depths)


def _nothing_matches(
    invoice: str, filters: Filters, models: Sequence[str], statuses: Sequence[str]
) -> str:
    """The one line that replaces an empty table."""
    if not filters.active:
        return f"{invoice} has no usage"
    given = [f"--model {m}" for m in models] + [f"--status {s}" for s in statuses]
    given += [f"--since {filters.since}"] if filters.since else []
    given += [f"--until {filters.until}"] if filters.until else []
    return f"no usage of {invoice} matches {' '.join(given)}"


def _row_dict(by: By, row: Row, models: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {by: row.key}
    if row.run is not None:
        run = row.run
        out.update(
            model=models.get(run.runner_id),
            ai_model=run.model,
            session_id=run.session_id,
            parent_id=run.parent_id,
            subagent=run.subagent,
            status=run.status,
        )
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
    models_of_runs = registry_models(allocation.cells) if by == "run" else {}
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
        "rows": [_row_dict(by, row, models_of_runs) for row in table],
        # as a row: amount_micros None when none of it is priced
        "total": {"runs": _runs(allocation, filters), **summed.as_dict()},
        "invoice_total_micros": invoice.total_micros,
        "invoice_tokens": sum(line.tokens for line in invoice.lines),
    }


def usage_csv(allocation: Allocation, by: By, table: Sequence[Row]) -> str:
    fields = [by, *(RUN_FIELDS if by == "run" else ()), "runs", *USAGE_FIELDS]
    fields += ["amount_micros", "unpriced_tokens", *(("ai_model",) if by == "run" else ())]
    models = registry_models(allocation.cells) if by == "run" else {}
    values = [_row_dict(by, row, models) for row in table]
    return csv_text([fields, *([row[f] for f in fields] for row in values)])


def _amount(usage: AllocatedUsage) -> str:
    if usage.amount_micros is None:
        return "[bold red]UNPRICED[/]"
    text = usd(usage.amount_micros)
    return f"{text} [red]+ unpriced[/]" if usage.unpriced_tokens else text


WIDE = 110  # below this many columns, `--by run` leaves the session to --json/--csv


def print_usage(
    out: Console,
    allocation: Allocation,
    by: By,
    table: Sequence[Row],
    filters: Filters,
    depths: dict[str | None, int] | None = None,
) -> None:
    """The breakdown as a table. `--by run`: one row per run (no `runs` column), subagents
    indented under their parents; the session column only where there is room."""
    invoice = allocation.invoice
    view = tables.table(f"Usage of {invoice.id} by {by}  [{invoice.status.upper()}]")
    tables.name_column(view, by, keep=by in ("day", "tier"), whole="total")
    per_run = by == "run"
    models = registry_models(allocation.cells) if per_run else {}
    with_session = per_run and out.width >= WIDE
    if per_run:
        tables.name_column(view, "model")
        tables.name_column(view, "status", keep=True)
    if with_session:
        tables.name_column(view, "session")
    counts = ("input", "cached", "output", "unsplit", "tokens", "amount")
    for column in counts if per_run else ("runs", *counts):
        tables.number_column(view, column)
    spawned_elsewhere = False  # a subagent whose spawning run is not in the table
    for row in table:
        cells = [escape(row.key) if row.key is not None else "(none)"]
        if row.run is not None:
            run = row.run
            depth = (depths or {}).get(row.key, 1 if run.subagent else 0)
            cells[0] = ("  " * (depth - 1) + "↳ " if depth else "") + cells[0]
            if run.subagent and not depth:
                cells[0] += " *"
                spawned_elsewhere = True
            model = models.get(run.runner_id) or run.model or "(no model)"
            cells += [escape(model), escape(run.status or "")]
            cells += [escape(run.session_id or "")] if with_session else []
        u = row.usage
        cells += [] if per_run else [f"{row.runs:,}"]
        cells += [
            f"{n:,}" for n in (u.input_tokens, u.cached_tokens, u.output_tokens, u.unsplit_tokens)
        ]
        cells += [f"{u.tokens:,}", _amount(u)]
        view.add_row(*cells)
    summed = total(table)
    runs = _runs(allocation, filters)
    view.add_section()
    view.add_row(
        "total",
        *([""] * (len(view.columns) - len(counts) - (1 if per_run else 2))),
        *([] if per_run else [f"{runs:,}"]),
        *(f"{n:,}" for n in (summed.input_tokens, summed.cached_tokens, summed.output_tokens)),
        f"{summed.unsplit_tokens:,}",
        f"{summed.tokens:,}",
        # nothing priced: UNPRICED, as a row says; else the priced sum (the line below
        # names the unpriced tokens beside it)
        "[bold red]UNPRICED[/]" if summed.amount_micros is None else usd(summed.priced_micros),
    )
    tables.show(out, view)
    if spawned_elsewhere:
        out.print("  * a subagent whose spawning run is not in this period (or not shown)")
    invoice_tokens = sum(line.tokens for line in invoice.lines)
    scope = "filtered rows" if filters.active else "rows"
    out.print(
        f"  {scope}: {counted(runs, 'run')}, {usd(summed.priced_micros)}"
        + (f" + {summed.unpriced_tokens:,} unpriced tokens" if summed.unpriced_tokens else "")
        + ", "
        f"{summed.tokens:,} tokens · invoice total {usd(invoice.total_micros)}, "
        f"{invoice_tokens:,} tokens · priced as {allocation.pricing}"
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
    err = Console(stderr=True, emoji=False)
    # In a log (no terminal) a bar is noise: it shows only where someone watches.
    with Progress(
        *columns, console=err, transient=True, disable=quiet or not err.is_terminal
    ) as progress:
        task = progress.add_task("report", total=None)

        def update(what: str, done: int, total: int) -> None:
            progress.update(task, description=what, completed=done, total=total)

        yield update


@click.command()
@org_option
@period_option
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="The HTML file to write (`-`: standard output).",
)
@click.option(
    "--top",
    default=10,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="How many top-level runs to show.",
)
@click.option("--quiet", is_flag=True, help="No progress bar and no summary (cron).")
@now_option
@user_errors
def report(
    org: str, period: str | None, out: str, top: int, quiet: bool, now: datetime | None
) -> None:
    """Write ORG's usage report: invoice, daily chart by model, top runs, anomalies."""
    from chores.reports.invoice_html import collect_report, render_report

    org = validate_org(org)
    now = now or datetime.now(UTC)
    period = period_or_month_of(period, now)
    settings = get_settings()
    registry = load_registry(settings.registry_path)
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
        to_stdout = out == "-"  # as written: `./-` is a file
        if to_stdout:
            echo_utf8(page)
        else:
            write_output(out, page)
        update("done", 1, 1)
    if not quiet:
        invoice = data.allocation.invoice
        written = "the page" if to_stdout else out
        click.echo(  # beside the page on standard output, on standard error
            f"wrote {written}: invoice {for_terminal(invoice.id)} ({invoice.status}), total "
            f"{usd(invoice.total_micros)}, {counted(invoice.runs, 'run')}, "
            f"{counted(len(data.waiting()), 'anomaly')} to review"
            + (f", {len(data.reviewed())} reviewed" if data.reviewed() else ""),
            err=to_stdout,
        )
