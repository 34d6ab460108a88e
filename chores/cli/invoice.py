"""`chore invoice`: look at invoices (table, JSON, CSV)."""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Sequence
from datetime import datetime

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from chores.billing.invoice import FLAGGED_WHEN_BUILT, Invoice, line_review_reasons
from chores.billing.period_ledger import stored_invoice
from chores.cli import tables
from chores.cli.common import (
    console,
    csv_option,
    csv_text,
    echo_utf8,
    json_option,
    machine_format,
    model_json,
    now_option,
    org_option,
    period_option,
    period_or_month_of,
    user_errors,
)
from chores.cli.params import OneLineGroup
from chores.core.db import Collections, connect
from chores.core.money import usd, usd_exact
from chores.core.orgs import validate_org
from chores.core.settings import get_settings
from chores.core.wording import counted, for_terminal
from chores.metering.anomalies import AnomalyLog, OpenAnomaly
from chores.metering.lines import InvoiceLine

MAX_SHOWN = 10  # open anomalies listed under an invoice


# invoice -----------------------------------------------------------------------
@click.group(cls=OneLineGroup)
def invoice() -> None:
    """Look at invoices."""


@invoice.command("show")
@org_option
@period_option
@json_option
@csv_option
@now_option
@user_errors
def invoice_show(
    org: str, period: str | None, as_json: bool, as_csv: bool, now: datetime | None
) -> None:
    """Print one invoice (--json: the stored document; --csv: its lines)."""
    machine_format(as_json, as_csv)
    org = validate_org(org)
    settings = get_settings()
    collections = Collections.of(connect(settings), settings)
    inv = stored_invoice(collections, org, period_or_month_of(period, now))
    if as_json:
        click.echo(model_json(inv, by_alias=True))
    elif as_csv:
        echo_utf8(invoice_csv(inv))
    else:
        open_ones = (
            AnomalyLog(collections).open_anomalies(org, inv.period) if inv.needs_review else []
        )
        out = console()
        print_invoice(out, inv, open_ones)
        if inv.status == "draft" and _announced(collections, inv):
            run = f"chore run --org {shlex.quote(inv.org)}"
            out.print(
                Text(
                    for_terminal(
                        "  note: usage of this month was written after this draft was built "
                        f"(a run cut short, or one running now): `{run}` brings it up to date"
                    )
                )
            )


def _announced(collections: Collections, inv: Invoice) -> bool:
    """Whether a run announced writes to this invoice that no settle has taken in yet (its
    dirty mark stands): a run that was cut short, or one still running."""
    mark = {"org": {"$eq": inv.org}, "period": {"$eq": inv.period}}
    return collections.dirty.find_one(mark, {"_id": 1}) is not None


def invoice_csv(inv: Invoice) -> str:
    fields = list(InvoiceLine.model_fields)
    lines = [line.model_dump() for line in inv.lines]
    return csv_text([["invoice", *fields], *([inv.id, *(row[f] for f in fields)] for row in lines)])


TIER_WORDS = {"free": "[green]free[/]", "byok": "[cyan]byok[/]"}


def print_invoice(out: Console, inv: Invoice, anomalies: Sequence[OpenAnomaly] = ()) -> None:
    """An invoice as a table, with why it needs review (`anomalies`: its open ones)."""
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
    tables.show(out, view)
    total = f"{usd(inv.total_micros)} USD"
    if usd(inv.total_micros) != usd_exact(inv.total_micros):  # cents would not add up to it
        total += f" ({usd_exact(inv.total_micros)} exact)"
    out.print(
        f"  total {total} · {counted(inv.runs, 'run')} · "
        f"{counted(inv.unpriced_tokens, 'unpriced token')}"
    )
    tiers = {line.tier for line in inv.lines}
    rounded = any(
        usd(x.amount_micros) != usd_exact(x.amount_micros)
        for x in inv.lines
        if x.amount_micros is not None
    )
    notes = [
        *(["amounts in cents: --csv and --json give each line's micro-dollars"] if rounded else []),
        *(["free: metered, charged $0"] if "free" in tiers else []),
        *(["byok: the org's own key, charged $0"] if "byok" in tiers else []),
        *(["UNPRICED: no price yet"] if not all(x.priced for x in inv.lines) else []),
        *(
            ["late: usage of a month already final, billed here at its own price"]
            if any(x.late for x in inv.lines)
            else []
        ),
    ]
    if notes:
        out.print("  " + " · ".join(notes))
    if inv.needs_review:
        out.print("  [bold]needs review:[/]")
        for reason in review_reasons(inv, anomalies):
            # Wrapped here, so that a reason on several lines keeps its indent.
            wrapped = textwrap.wrap(for_terminal(reason), max(out.width - 6, 20)) or [""]
            out.print(Text("    - " + wrapped[0]))
            for more in wrapped[1:]:
                out.print(Text("      " + more))
        if anomalies and inv.status == "draft":
            review = f"chore anomaly review --org {shlex.quote(inv.org)} --period {inv.period}"
            out.print(Text(for_terminal(f"    (once checked: {review} --note TEXT)")))


def review_reasons(inv: Invoice, anomalies: Sequence[OpenAnomaly]) -> list[str]:
    """Why an invoice needs review: its unpriced lines, its lines below zero, the open
    anomalies that flag it (the first MAX_SHOWN)."""
    reasons = line_review_reasons(inv.lines)
    reasons += [f"{a.kind}, runner {a.runner_id}: {a.detail}" for a in anomalies[:MAX_SHOWN]]
    if len(anomalies) > MAX_SHOWN:
        more = len(anomalies) - MAX_SHOWN
        reasons.append(f"and {more:,} more open (`chore anomaly list` lists them all)")
    return reasons or [FLAGGED_WHEN_BUILT]
