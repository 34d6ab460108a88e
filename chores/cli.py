"""The `chore` command line: a thin layer over the package's functions.

User errors (`ChoreError`, `RegistryError`, an unreachable database) print one
line on stderr and exit 1; `quota check` exits 3 when the run is refused.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from pricing import RegistryError, load_registry, registry_from_litellm, registry_to_yaml

from ._db import (
    APPLY_INDEXES_COMMAND,
    Collections,
    connect,
    ensure_indexes,
)
from ._exceptions import ChoreError, InvoiceNotFound
from ._invoices import Invoice
from ._lines import InvoiceLine
from ._money import usd
from ._periods import period_bounds, period_of
from ._settings import Settings, get_settings, redact_url
from ._wording import counted

F = TypeVar("F", bound=Callable[..., Any])
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C (128 + SIGINT)


def console() -> Console:
    """Rich console; wide enough for invoice tables when writing to a pipe or file."""
    out = Console()
    return out if out.is_terminal else Console(width=160)


def user_errors(func: F) -> F:
    """Turn the errors a user can cause into one line on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted: what was billed so far is kept; run again to go on", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except (ChoreError, RegistryError) as exc:
            raise click.ClickException(str(exc)) from None
        except PyMongoError as exc:
            settings = get_settings()
            message = str(exc).replace(settings.mongo_url, settings.safe_mongo_url)
            raise click.ClickException(f"database error: {redact_url(message)}") from None

    return wrapper  # type: ignore[return-value]


def settings_now() -> Settings:
    return get_settings()


def parse_now(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO date-time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


now_option = click.option(
    "--now",
    "now_text",
    metavar="ISO-TIME",
    help="Pretend the current UTC time is this (reproducible runs).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ai-billing-chore")
def main() -> None:
    """Meter AI-token usage of scan runners into invoices and quota decisions.

    Settings come from environment variables or .env: MONGO_URL, MONGO_DB and the
    others in the README. MONGO_URL=mongomock://NAME is an in-process store that keeps
    nothing after each command (each one says so on stderr); `chore demo` needs no
    server and explains itself.
    """


# run ---------------------------------------------------------------------------
@main.command()
@click.option("--org", help="Meter this org only.")
@click.option("--all", "all_orgs", is_flag=True, help="Meter every org.")
@click.option("--dry-run", is_flag=True, help="Compute new usage, write nothing.")
@click.option("--full", is_flag=True, help="Ignore the cursor: re-read every AI runner.")
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON.")
@click.option("--quiet", is_flag=True, help="Print nothing on success (cron).")
@now_option
@user_errors
def run(
    org: str | None,
    all_orgs: bool,
    dry_run: bool,
    full: bool,
    as_json: bool,
    quiet: bool,
    now_text: str | None,
) -> None:
    """Meter new usage into invoices (one org with --org, or --all)."""
    from ._run import run_chore

    if bool(org is not None) == all_orgs:
        raise click.UsageError("give exactly one of --org ORG or --all")
    settings = get_settings()
    db = connect(settings)
    out = console()
    show_progress = not (quiet or as_json) and out.is_terminal
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
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
            progress.update(
                task, description=f"metering: {read:,} runner documents read ({rate:,.0f}/s)"
            )

        report = run_chore(
            db,
            org=org,
            now=parse_now(now_text),
            settings=settings,
            dry_run=dry_run,
            full=full,
            on_batch=advance,
        )
    if quiet:
        return
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    table = Table(title=f"Metering run {report.run_id[:8]}" + (" (dry run)" if dry_run else ""))
    for column in ("org", "new tokens", "entries", "anomalies", "decision"):
        table.add_column(column, justify="left" if column == "org" else "right")
    for name, summary in sorted(report.orgs.items()):
        table.add_row(
            name,
            f"{summary.tokens:,}",
            str(summary.entries),
            str(summary.anomalies),
            report.decisions.get(name, "-"),
        )
    out.print(table)
    for missing in report.missing_indexes:
        click.echo(
            f"warning: source index missing: {missing}; batches scan the collection "
            f"(create it: {APPLY_INDEXES_COMMAND})",
            err=True,
        )
    out.print(
        f"{counted(report.docs_read, 'document')} read, "
        f"{counted(report.tokens_billed, 'token')} billed, "
        f"{counted(sum(report.anomalies.values()), 'anomaly')}, "
        f"{counted(len(report.invoices), 'invoice')} updated"
    )


# invoice -----------------------------------------------------------------------
@main.group()
def invoice() -> None:
    """Look at invoices."""


@invoice.command("show")
@click.option("--org", required=True)
@click.option("--period", help="YYYY-MM (default: the current month).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True)
@user_errors
def invoice_show(org: str, period: str | None, as_json: bool, as_csv: bool) -> None:
    """Print one invoice."""
    from ._run import validate_org

    org = validate_org(org)
    period = period or period_of(datetime.now(UTC))
    try:
        period_bounds(period)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = get_settings()
    doc = Collections.of(connect(settings), settings).invoices.find_one({"_id": f"{org}:{period}"})
    if doc is None:
        raise InvoiceNotFound(f"no invoice for org {org!r} in {period}")
    inv = Invoice.model_validate(doc)
    if as_json:
        click.echo(inv.model_dump_json(by_alias=True, indent=2))
    elif as_csv:
        click.echo(invoice_csv(inv), nl=False)
    else:
        print_invoice(console(), inv)


def invoice_csv(inv: Invoice) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fields = list(InvoiceLine.model_fields)
    writer.writerow(["invoice", *fields])
    for line in inv.lines:
        row = line.model_dump()
        writer.writerow([inv.id, *("" if row[f] is None else row[f] for f in fields)])
    return buffer.getvalue()


def print_invoice(out: Console, inv: Invoice) -> None:
    flags = [inv.status.upper()]
    if inv.needs_review:
        flags.append("NEEDS REVIEW")
    table = Table(title=f"Invoice {inv.id}  [{', '.join(flags)}]", title_justify="left")
    for column in (
        "model",
        "tier",
        "price from",
        "input",
        "cached",
        "output",
        "unsplit",
        "tokens",
        "amount",
    ):
        table.add_column(column, justify="left" if column in ("model", "tier") else "right")
    for line in inv.lines:
        tier = line.tier + (" (late)" if line.late else "")
        amount = usd(line.amount_micros) if line.priced else "[bold red]UNPRICED[/]"
        if line.tier == "free":
            amount = f"{amount} [green](free)[/]"
        elif line.tier == "byok":
            amount = f"{amount} [cyan](customer key)[/]"
        table.add_row(
            str(line.model),
            tier,
            line.price_valid_from or "-",
            f"{line.input_tokens:,}",
            f"{line.cached_tokens:,}",
            f"{line.output_tokens:,}",
            f"{line.unsplit_tokens:,}",
            f"{line.tokens:,}",
            amount,
        )
    out.print(table)
    out.print(
        f"  total {usd(inv.total_micros)} USD · {counted(inv.runs, 'run')} · "
        f"{inv.unpriced_tokens:,} unpriced tokens"
    )


# finalize ------------------------------------------------------------------------
@main.command()
@click.option("--org", help="Only this org.")
@click.option("--grace-days", type=float, help="Days after the period end (default: GRACE_DAYS).")
@now_option
@user_errors
def finalize(org: str | None, grace_days: float | None, now_text: str | None) -> None:
    """Turn the drafts of periods ended more than the grace ago final."""
    from ._run import finalize_invoices

    settings = get_settings()
    done = finalize_invoices(
        connect(settings), now=parse_now(now_text), grace=grace_days, org=org, settings=settings
    )
    click.echo(
        f"finalized {counted(len(done), 'invoice')}" + (": " + ", ".join(done) if done else "")
    )


# registry ------------------------------------------------------------------------
@main.group()
def registry() -> None:
    """The model price registry."""


@registry.command("list")
@click.option(
    "--path",
    type=click.Path(dir_okay=False),
    help="Registry file (default: REGISTRY_PATH or shipped).",
)
@user_errors
def registry_list(path: str | None) -> None:
    """List models and their current prices (USD per million tokens)."""
    reg = load_registry(path or get_settings().registry_path)
    table = Table(
        title=f"Model registry {reg.version} ({len(reg.models)} models)", title_justify="left"
    )
    for column in ("model", "tier", "valid from", "input", "cached", "output", "aliases"):
        table.add_column(column)
    today = date.today()
    for model in sorted(reg.models, key=lambda m: (m.tier, m.id)):
        price = model.price_at(today) or model.prices[-1]
        table.add_row(
            model.id,
            model.tier,
            price.valid_from.isoformat(),
            str(price.input),
            str(price.cached_rate),
            str(price.output),
            ", ".join(model.aliases),
        )
    console().print(table)


@registry.command("validate")
@click.argument("path", type=click.Path(dir_okay=False))
@user_errors
def registry_validate(path: str) -> None:
    """Check a registry file; says which model and field is wrong."""
    reg = load_registry(path)
    click.echo(f"{path}: valid, version {reg.version}, {len(reg.models)} models")


@registry.command("import-litellm")
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@click.option("--valid-from", default=None, help="Effective date of the prices (default: today).")
@click.option("--version", "version", default=None, help="Registry version (default: the date).")
@user_errors
def registry_import(
    path: str, out: str | None, valid_from: str | None, version: str | None
) -> None:
    """Convert LiteLLM's model_prices_and_context_window.json into a registry file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{path}: expected a JSON object of models")
    day = date.fromisoformat(valid_from) if valid_from else date.today()
    reg = registry_from_litellm(data, valid_from=day, version=version or day.isoformat())
    text = registry_to_yaml(reg)
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {len(reg.models)} models to {out}", err=True)
    else:
        sys.stdout.write(text)


# database --------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Database helpers."""


@db.command("indexes")
@click.option("--apply", is_flag=True, help="Create them (default: print them).")
@user_errors
def db_indexes(apply: bool) -> None:
    """The indexes the chore needs on the source and billing collections."""
    from ._db import billing_indexes, source_indexes

    settings = get_settings()
    if apply:
        created = ensure_indexes(connect(settings), settings, source=True)
        click.echo(f"ensured {len(created)} indexes")
        return
    for group, prefix in ((source_indexes(), ""), (billing_indexes(), settings.billing_prefix)):
        for collection, models in group.items():
            for model in models:
                doc = model.document
                click.echo(f"{prefix}{collection}: {doc['name']} {dict(doc['key'])}")


# demo --------------------------------------------------------------------------------
@main.command()
@click.option("--seed", default=7, show_default=True, help="Random seed of the generated month.")
def demo(seed: int) -> None:
    """Seed an in-process mongomock with a realistic month and run the whole job."""
    from ._demo import run_demo

    run_demo(console(), seed=seed)
    click.echo(
        "note: the demo ran on its own in-process mongomock, whatever MONGO_URL says: "
        "nothing is kept after this command",
        err=True,
    )


from . import _cli_quota, _cli_reconcile, _cli_usage  # noqa: E402,F401  (register more commands)

# ephemeral store ---------------------------------------------------------------------
EPHEMERAL_NOTE = "note: {url} is an in-process store: nothing is kept after this command"
MACHINE_OUTPUT = ("as_json", "as_csv", "quiet")  # flags after which a script reads the output
NO_STORE = frozenset({"demo", "registry"})  # its own store / never opens MONGO_URL


def ephemeral_note() -> str | None:
    """The line a command on a `mongomock://` store ends with, else None."""
    try:
        settings = get_settings()
    except Exception:  # a bad setting is the command's own error to report
        return None
    if not settings.mongo_url.startswith("mongomock://"):
        return None
    return EPHEMERAL_NOTE.format(url=settings.safe_mongo_url)


def _note_ephemeral_store(command: click.Command) -> None:
    # After success only: an error stays the one line on stderr. Machine output (--json,
    # --csv, --quiet) gets no note at all, so a script sees exactly what it asked for.
    inner = command.callback
    assert inner is not None

    @functools.wraps(inner)
    def callback(*args: Any, **kwargs: Any) -> Any:
        result = inner(*args, **kwargs)
        if not any(kwargs.get(flag) for flag in MACHINE_OUTPUT):
            note = ephemeral_note()
            if note is not None:
                click.echo(note, err=True)
        return result

    command.callback = callback


def _note_every_store_command(group: click.Group) -> None:
    for name, command in group.commands.items():
        if name in NO_STORE:
            continue
        if isinstance(command, click.Group):
            _note_every_store_command(command)
        else:
            _note_ephemeral_store(command)


_note_every_store_command(main)
