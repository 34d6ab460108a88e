"""The `chore` command line: a thin layer over the package's functions.

User errors (`ChoreError`, `RegistryError`, an unreachable database) print one
line on stderr and exit 1; `quota check` exits 3 when the run is refused.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pricing import RegistryError, load_registry, registry_from_litellm, registry_to_yaml

from chores.cli import tables
from chores.cli.params import GraceDaysType, MomentType, OneLineGroup, PeriodType
from chores.core.db import (
    APPLY_INDEXES_COMMAND,
    Collections,
    connect,
    ensure_indexes,
)
from chores.core.exceptions import ChoreError, InvoiceNotFound
from chores.billing.invoices import Invoice
from chores.metering.lines import InvoiceLine
from chores.core.local_store import DEMO_PATH
from chores.core.money import usd
from chores.core.periods import period_of
from chores.core.settings import Settings, get_settings, redact_url
from chores.core.wording import counted

F = TypeVar("F", bound=Callable[..., Any])
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C (128 + SIGINT)


def console() -> Console:
    """Rich console: the terminal's width; 160 columns when writing to a pipe or file
    (wide enough for every table), unless COLUMNS says otherwise."""
    out = Console()
    return out if out.is_terminal or "COLUMNS" in os.environ else Console(width=160)


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


def parse_now(value: datetime | str | None) -> datetime | None:
    """The `--now` value (checked by `MomentType` when click parsed it), or None."""
    if value is None or isinstance(value, datetime):
        return value
    return MomentType().convert(value, None, None)


now_option = click.option(
    "--now",
    "now_text",
    type=MomentType(),
    help="Pretend the current UTC time is this ISO time (reproducible runs); default: now.",
)


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ai-billing-chore")
def main() -> None:
    """Meter AI-token usage of scan runners into invoices and quota decisions.

    Settings come from environment variables or .env (all of them in the README):
    MONGO_URL, the MongoDB server (default mongodb://localhost:27017), MONGO_DB,
    REDIS_URL, ...

    \b
    Without a server:
      chore demo        seeds a realistic month, meters it, prints the invoices,
                        and leaves its data in .chore-demo/store.json
      export MONGO_URL=file://.chore-demo/store.json
      chore status      (and every other command) then works on the demo's data

    A file://PATH store is loaded into an in-process mongomock when a command starts
    and saved back when it ends: for trying the chore out, not for production and not
    for concurrent use. MONGO_URL=mongomock://NAME is an in-process store that keeps
    nothing after each command (each one says so on stderr).
    """
    from chores.core.local_store import close_all

    # Every command writes the file:// store it opened back to its file when it ends,
    # after an error or Ctrl-C too (what a server would have kept).
    click.get_current_context().call_on_close(close_all)


# run ---------------------------------------------------------------------------
@main.command(short_help="Meter new usage into invoices (--org ORG or --all).")
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
    now_text: datetime | None,
) -> None:
    """Meter new usage into invoices (one org with --org, or --all)."""
    from chores.run.chore import run_chore

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
            now=parse_now(now_text),
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
@click.option("--org", required=True, metavar="ORG", help="The org (workspace id).")
@click.option(
    "--period", type=PeriodType(), help="The month, YYYY-MM (default: the month of --now)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the invoice as JSON (for scripts).")
@click.option("--csv", "as_csv", is_flag=True, help="Print the invoice lines as CSV.")
@now_option
@user_errors
def invoice_show(
    org: str, period: str | None, as_json: bool, as_csv: bool, now_text: datetime | None
) -> None:
    """Print one invoice."""
    from chores.run.chore import validate_org

    if as_json and as_csv:
        raise click.UsageError("give at most one of --json and --csv")
    org = validate_org(org)
    period = period or period_of(parse_now(now_text) or datetime.now(UTC))
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


TIER_WORDS = {"free": "[green]free[/]", "byok": "[cyan]byok[/]"}


def print_invoice(out: Console, inv: Invoice) -> None:
    flags = [inv.status.upper()]
    if inv.needs_review:
        flags.append("NEEDS REVIEW")
    view = tables.table(f"Invoice {inv.id}  [{', '.join(flags)}]")
    tables.name_column(view, "model")
    tables.name_column(view, "tier", keep=True)
    tables.name_column(view, "price from", keep=True)
    for column in ("input", "cached", "output", "unsplit", "tokens", "amount"):
        tables.number_column(view, column)
    for line in inv.lines:
        tier = TIER_WORDS.get(line.tier, line.tier) + (" (late)" if line.late else "")
        amount = usd(line.amount_micros) if line.priced else "[bold red]UNPRICED[/]"
        view.add_row(
            escape(str(line.model)),
            tier,
            line.price_valid_from or tables.DASH,
            f"{line.input_tokens:,}",
            f"{line.cached_tokens:,}",
            f"{line.output_tokens:,}",
            f"{line.unsplit_tokens:,}",
            f"{line.tokens:,}",
            amount,
        )
    out.print(tables.fit(view, out.width))
    out.print(
        f"  total {usd(inv.total_micros)} USD · {counted(inv.runs, 'run')} · "
        f"{counted(inv.unpriced_tokens, 'unpriced token')}"
    )
    tiers = {line.tier for line in inv.lines}
    notes = [
        *(["free: metered, charged $0"] if "free" in tiers else []),
        *(["byok: the org's own key, charged $0"] if "byok" in tiers else []),
        *(["UNPRICED: no price yet, needs review"] if not all(x.priced for x in inv.lines) else []),
    ]
    if notes:
        out.print("  " + " · ".join(notes))


# finalize ------------------------------------------------------------------------
@main.command()
@click.option("--org", metavar="ORG", help="Only this org (workspace id; default: every org).")
@click.option(
    "--grace-days",
    type=GraceDaysType(),
    help="Days after the period end, 0 to 366 (default: GRACE_DAYS).",
)
@now_option
@user_errors
def finalize(org: str | None, grace_days: float | None, now_text: datetime | None) -> None:
    """Turn the drafts of periods ended more than the grace ago final."""
    from chores.run.chore import finalize_invoices

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


def _registry_path(path: str | None, option: str | None) -> str | Path | None:
    """`PATH` or `--path PATH` (both forms work for both commands), else REGISTRY_PATH
    (None: the shipped registry)."""
    if path and option and path != option:
        raise click.UsageError(f"give the registry path once: {path} or --path {option}")
    return path or option or get_settings().registry_path


registry_path_argument = click.argument("path", required=False, type=click.Path(dir_okay=False))
registry_path_option = click.option(
    "--path",
    "path_option",
    type=click.Path(dir_okay=False),
    help="The registry file, as PATH (default: REGISTRY_PATH, else the shipped one).",
)


@registry.command("list")
@registry_path_argument
@registry_path_option
@now_option
@user_errors
def registry_list(path: str | None, path_option: str | None, now_text: datetime | None) -> None:
    """List models and their prices today (USD per million tokens).

    PATH is the registry file (default: REGISTRY_PATH, else the shipped one).
    """
    reg = load_registry(_registry_path(path, path_option))
    table = tables.table(f"Model registry {reg.version} ({counted(len(reg.models), 'model')})")
    tables.name_column(table, "model")
    tables.name_column(table, "tier", keep=True)
    tables.name_column(table, "valid from", keep=True)
    for column in ("input", "cached", "output"):
        tables.number_column(table, column)
    tables.text_column(table, "aliases")
    today = (parse_now(now_text) or datetime.now(UTC)).date()
    for model in sorted(reg.models, key=lambda m: (m.tier, m.id)):
        price = model.price_at(today) or model.prices[-1]
        table.add_row(
            escape(model.id),
            model.tier,
            price.valid_from.isoformat(),
            str(price.input),
            str(price.cached_rate),
            str(price.output),
            escape(", ".join(model.aliases)),
        )
    out = console()
    out.print(tables.fit(table, out.width))
    out.print("input, cached, output: USD per million tokens")


@registry.command("validate")
@registry_path_argument
@registry_path_option
@user_errors
def registry_validate(path: str | None, path_option: str | None) -> None:
    """Check a registry file; says which model and field is wrong.

    PATH is the registry file (default: REGISTRY_PATH, else the shipped one).
    """
    chosen = _registry_path(path, path_option)
    reg = load_registry(chosen)
    models = counted(len(reg.models), "model")
    click.echo(f"{chosen or 'shipped registry'}: valid, version {reg.version}, {models}")


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
    from chores.core.db import billing_indexes, source_indexes

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
@main.command(short_help="A realistic month metered end to end, no server needed.")
@click.option("--seed", default=7, show_default=True, help="Random seed of the generated month.")
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEMO_PATH,
    show_default=True,
    help="The local store the demo leaves its data in (replaced if it exists).",
)
@click.option("--no-store", is_flag=True, help="Keep nothing: an in-process store only.")
@now_option
@user_errors
def demo(seed: int, store: Path, no_store: bool, now_text: datetime | None) -> None:
    """Seed a realistic month (three orgs, subagents, free, paid, customer-key and unknown
    models, malformed documents), meter it, finalize last month and print the invoices and
    quota decisions, on its own store whatever MONGO_URL says.

    The data stays in a local file store (--store) that every other command opens with
    MONGO_URL=file://PATH: for trying the chore out, not for production and not for
    concurrent use.
    """
    from chores.cli.demo import run_demo

    out = console()
    run_demo(out, seed=seed, now=parse_now(now_text), store=None if no_store else store)
    if no_store:
        click.echo("note: --no-store: the demo's data is not kept after this command", err=True)


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
