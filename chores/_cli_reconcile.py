"""`chore reconcile`: compare an invoice with the period re-derived from the source."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
from rich.table import Table

from pricing import load_registry

from ._db import connect
from ._money import usd
from ._periods import period_bounds
from ._reconcile import reconcile
from ._run import Meter, validate_org
from ._settings import get_settings
from .cli import console, main, parse_now, user_errors


@main.command("reconcile")
@click.option("--org", required=True)
@click.option("--period", required=True, help="YYYY-MM")
@click.option("--json", "as_json", is_flag=True)
@click.option("--now", "now_text", metavar="ISO-TIME", help="Pretend the current UTC time.")
@user_errors
def reconcile_command(org: str, period: str, as_json: bool, now_text: str | None) -> None:
    """Re-derive PERIOD from the runner documents alone and compare with the invoice.

    Exit 0 when every line and every runner agrees, 1 on any mismatch.
    """
    org = validate_org(org)
    try:
        period_bounds(period)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = get_settings()
    meter = Meter(connect(settings), settings, load_registry(settings.registry_path))
    result = reconcile(meter, org, period, now=parse_now(now_text) or datetime.now(UTC))
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    else:
        out = console()
        table = Table(
            title=f"Reconciliation {org}:{period} ({result.status})", title_justify="left"
        )
        for column in (
            "model",
            "tier",
            "price from",
            "source tokens",
            "invoiced tokens",
            "source amount",
            "invoiced amount",
            "runners' estimate",
            "",
        ):
            table.add_column(column)
        for line in result.lines:
            table.add_row(
                str(line.model),
                line.tier,
                line.price_valid_from or "-",
                f"{line.expected_tokens:,}",
                f"{line.invoiced_tokens:,}",
                usd(line.expected_micros),
                usd(line.invoiced_micros),
                f"${line.runner_estimate_usd:,.6f}",
                "[green]ok[/]" if line.matches else "[bold red]MISMATCH[/]",
            )
        out.print(table)
        if result.late_tokens:
            out.print(f"{result.late_tokens:,} late tokens from finalized periods (not re-derived)")
        for runner in result.runners:
            out.print(
                f"[red]runner {runner.runner_id}[/]: source {runner.source_tokens:,} tokens, "
                f"ledger {runner.ledger_tokens:,} — {runner.note}"
            )
        out.print("[green]reconciled[/]" if result.ok else "[bold red]does not reconcile[/]")
    if not result.ok:
        sys.exit(1)
