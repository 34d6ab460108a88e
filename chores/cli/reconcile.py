"""`chore reconcile`: compare an invoice with the period re-derived from the source."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
from rich.markup import escape

from chores.cli import tables
from chores.cli.common import console, model_json, now_option, user_errors
from chores.cli.exit_codes import EXIT_MISMATCH
from chores.cli.params import PeriodType
from chores.core.db import connect
from chores.core.money import usd, usd_exact, usd_of_dollars
from chores.core.orgs import validate_org
from chores.core.settings import get_settings
from chores.core.wording import for_terminal
from chores.reports.reconcile import reconcile
from chores.run.pipeline import Pipeline
from pricing import load_registry


@click.command("reconcile")
@click.option("--org", required=True, metavar="ORG", help="The org (workspace id).")
@click.option("--period", required=True, type=PeriodType(), help="The month, YYYY-MM.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON (for scripts).")
@now_option
@user_errors
def reconcile_command(org: str, period: str, as_json: bool, now: datetime | None) -> None:
    """Re-derive PERIOD from the runner documents and compare with the invoice.

    Each runner's usage is compared with what the ledger billed it (under every org); where
    they agree, it is expected where the ledger placed it (late lines too), else by its end
    time. A runner the next run reads (still running, or ended since the last run) whose
    document only grew since is expected as billed so far (listed, no mismatch: the next
    run bills the rest), and one billed here
    whose document names another org now is settled here (listed, no mismatch). One that
    does not reconcile while runs write the invoice is compared again. Exit 0 when
    every line, every runner and the invoice's own totals agree, 4 on any mismatch, 1 when
    it cannot tell (no such invoice, a bad setting, the database unreachable).
    """
    org = validate_org(org)
    settings = get_settings()
    meter = Pipeline(connect(settings), settings, load_registry(settings.registry_path))
    result = reconcile(meter, org, period, now=now or datetime.now(UTC))
    if as_json:
        click.echo(model_json(result))
    else:
        out = console()
        table = tables.table(f"Reconciliation {org}:{period} ({result.status})")
        tables.name_column(table, "model")
        tables.name_column(table, "tier", keep=True)
        tables.name_column(table, "price\nfrom", keep=True)
        for column in (
            "tokens\nsource",
            "tokens\ninvoiced",
            "amount\nsource",
            "amount\ninvoiced",
            "runners'\nestimate",
        ):
            tables.number_column(table, column)
        tables.name_column(table, "check", keep=True)
        for line in result.lines:
            table.add_row(
                escape(str(line.model)),
                f"{line.tier} late" if line.late else line.tier,
                line.price_valid_from or tables.DASH,
                f"{line.expected_tokens:,}",
                f"{line.invoiced_tokens:,}",
                _amount(line.expected_micros, exact=not line.matches),
                _amount(line.invoiced_micros, exact=not line.matches),
                usd_of_dollars(line.runner_estimate_usd if line.estimated_runners else None),
                "[green]ok[/]" if line.matches else "[bold red]MISMATCH[/]",
            )
        tables.show(out, table)
        if result.registry_changed:
            out.print(
                f"this {result.status} invoice was priced with another registry version than "
                "today's"
                + (" (the next run reprices it)" if result.status == "draft" else "")
                + ": "
                + (
                    "its amounts are checked against the prices it was billed at (stored with it)"
                    if result.checked_as_invoiced
                    else "an amount that differs may differ for that reason alone"
                )
            )
        for problem in result.problems:
            out.print(f"[red]invoice[/]: {escape(for_terminal(problem))}")
        for runner in result.runners:
            out.print(
                f"[red]runner {escape(for_terminal(runner.runner_id))}[/]: source "
                f"{runner.source_tokens:,} tokens, ledger {runner.ledger_tokens:,} — "
                f"{escape(for_terminal(runner.note))}"
            )
        for runner in (*result.running, *result.moved):
            out.print(
                f"runner {escape(for_terminal(runner.runner_id))}: source "
                f"{runner.source_tokens:,} tokens, ledger {runner.ledger_tokens:,} — "
                f"{escape(for_terminal(runner.note))}"
            )
        out.print("[green]reconciled[/]" if result.ok else "[bold red]does not reconcile[/]")
    if not result.ok:
        sys.exit(EXIT_MISMATCH)


def _amount(micros: int | None, *, exact: bool) -> str:
    """An amount of a reconciled line: in cents, or to the micro-dollar on both sides of a line
    that does not match (in cents, `$0.01` beside `$0.004545` hides what differs by how much)."""
    return usd_exact(micros) if exact and micros is not None else usd(micros)
