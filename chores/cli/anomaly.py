"""`chore anomaly`: list an org's open anomalies, and mark them reviewed."""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from typing import Any

import click
from rich.markup import escape
from rich.text import Text

from chores.billing.known_orgs import unknown_org_note
from chores.cli import tables
from chores.cli.common import console, json_option, now_option, org_option, user_errors
from chores.cli.params import OneLineGroup, PeriodType
from chores.core.db import Collections, connect
from chores.core.orgs import validate_org
from chores.core.settings import get_settings
from chores.core.wording import counted, for_terminal
from chores.metering.anomalies import AnomalyLog, OpenAnomaly
from chores.metering.rules import ANOMALY_KINDS
from chores.run.review import review_anomalies


@click.group(cls=OneLineGroup)
def anomaly() -> None:
    """Open anomalies: list them, mark them reviewed."""


@anomaly.command("list")
@click.option("--org", metavar="ORG", help="The org (workspace id).")
@click.option(
    "--no-org",
    is_flag=True,
    help="Instead of an org's: those of runners whose document names no org (no_org).",
)
@click.option("--period", type=PeriodType(), help="Of this month's invoice only (YYYY-MM).")
@click.option("--reviewed", is_flag=True, help="Also list those already reviewed.")
@json_option
@user_errors
def anomaly_list(
    org: str | None, no_org: bool, period: str | None, reviewed: bool, as_json: bool
) -> None:
    """List ORG's open anomalies, by the invoice each flags (every month unless --period).

    With --no-org, those of runners whose document names no org: they flag no invoice,
    their usage is held, and each is resolved once its runner bills under an org.
    """
    if no_org == (org is not None):
        raise click.UsageError("give --org ORG, or --no-org (not both)")
    if no_org and period is not None:
        raise click.UsageError("--period is an invoice's month: an anomaly of --no-org has none")
    if no_org and reviewed:
        raise click.UsageError(
            "--reviewed: an anomaly of --no-org flags no invoice, and is never reviewed"
        )
    settings = get_settings()
    collections = Collections.of(connect(settings), settings)
    if org is None:
        _list_orgless(AnomalyLog(collections).open_anomalies(None), as_json)
        return
    org = validate_org(org)
    found = AnomalyLog(collections).open_anomalies(org, period, reviewed=reviewed)
    if as_json:
        click.echo(_json_text([_as_json(a) for a in found]))
        return
    out = console()
    where = f"{org} {period}" if period else org
    if not found:
        out.print(f"no open anomaly{'' if reviewed else ' left to review'}: {escape(where)}")
        unknown = unknown_org_note(collections, org)
        if unknown is not None:
            click.echo(f"note: {for_terminal(unknown)}", err=True)
        return
    view = tables.table(f"Open anomalies of {where}")
    tables.name_column(view, "period", keep=True)
    tables.name_column(view, "kind", keep=True)
    tables.name_column(view, "runner")
    tables.text_column(view, "detail")
    if reviewed:
        tables.text_column(view, "reviewed")
    for a in found:
        row = [a.period, a.kind, escape(for_terminal(a.runner_id)), escape(for_terminal(a.detail))]
        if reviewed:
            row.append(escape(for_terminal(_review_text(a))) if a.reviewed else tables.DASH)
        view.add_row(*row)
    tables.show(out, view)
    waiting = sum(1 for a in found if not a.reviewed)
    periods = {a.period for a in found if not a.reviewed}
    month = periods.pop() if len(periods) == 1 else "YYYY-MM"
    review = f"chore anomaly review --org {shlex.quote(org)} --period {month} --note TEXT"
    if waiting:
        out.print(Text(for_terminal(f"  {counted(waiting, 'anomaly')} left to review ({review})")))
    else:
        out.print("  all reviewed")


def _list_orgless(found: list[OpenAnomaly], as_json: bool) -> None:
    """The open anomalies of runners without an org (`anomaly list --no-org`)."""
    if as_json:
        click.echo(_json_text([_as_json(a) for a in found]))
        return
    out = console()
    if not found:
        out.print("no open anomaly of a runner without an org")
        return
    view = tables.table("Open anomalies of runners without an org")
    tables.name_column(view, "kind", keep=True)
    tables.name_column(view, "runner")
    tables.text_column(view, "detail")
    tables.name_column(view, "first seen", keep=True)
    for a in found:
        seen = a.first_seen.strftime("%Y-%m-%d %H:%M") if a.first_seen else tables.DASH
        view.add_row(
            a.kind, escape(for_terminal(a.runner_id)), escape(for_terminal(a.detail)), seen
        )
    tables.show(out, view)
    out.print(
        f"  {counted(len({a.runner_id for a in found}), 'runner')}: nothing of it is billed "
        "while its document names no org (context.workspace_id); each resolves once its "
        "runner bills under an org"
    )


@anomaly.command("review")
@org_option
@click.option("--period", type=PeriodType(), required=True, help="The invoice's month, YYYY-MM.")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(ANOMALY_KINDS),
    help="Only anomalies of this kind (repeat for several).",
)
@click.option(
    "--runner", "runners", multiple=True, metavar="ID", help="Only this runner's (repeatable)."
)
@click.option("--note", required=True, help="What was checked, and by whom (kept with each).")
@json_option
@now_option
@user_errors
def anomaly_review(
    org: str,
    period: str,
    kinds: tuple[str, ...],
    runners: tuple[str, ...],
    note: str,
    as_json: bool,
    now: datetime | None,
) -> None:
    """Mark ORG's open anomalies of PERIOD reviewed, and update that draft.

    Only those of --kind and --runner (the ids `chore anomaly list` shows), when given. The
    draft then needs review only for what is still open (an unpriced line, a line below
    zero, an anomaly not reviewed). A final invoice never changes; its review is recorded
    all the same.

    A reviewed anomaly stays open (the runner is not billed differently): it flags its
    invoice again only when it moves to another invoice, or heals and comes back.
    """
    done = review_anomalies(
        connect(get_settings()),
        org,
        period,
        note=note,
        kinds=kinds,
        runner_ids=runners,
        now=now,
    )
    if as_json:
        click.echo(
            _json_text(
                {
                    "org": done.org,
                    "period": done.period,
                    "reviewed": [_as_json(a) for a in done.reviewed],
                    "invoice_status": done.status,
                    "needs_review": done.needs_review,
                }
            )
        )
        return
    out = console()
    where = f"{done.org} {done.period}"
    if not done.reviewed:
        out.print(Text(f"no open anomaly left to review: {for_terminal(where)}"))
    else:
        out.print(
            Text(f"reviewed {counted(len(done.reviewed), 'anomaly')} of {for_terminal(where)}:")
        )
        for a in done.reviewed:
            out.print(
                Text(f"  - {a.kind}, runner {for_terminal(a.runner_id)}: {for_terminal(a.detail)}")
            )
    if done.status == "final":
        out.print("  its invoice is final: unchanged (a final invoice never changes)")
    elif done.needs_review:
        show = f"chore invoice show --org {shlex.quote(done.org)} --period {done.period}"
        out.print(
            Text(f"  the draft still needs review for what is still open: {for_terminal(show)}")
        )
    else:
        out.print(f"  the draft {'no longer needs' if done.reviewed else 'needs no'} review")


def _json_text(value: Any) -> str:
    """JSON for scripts; times in ISO 8601 (UTC)."""
    return json.dumps(
        value, indent=2, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v)
    )


def _review_text(a: OpenAnomaly) -> str:
    at = a.reviewed_at.strftime("%Y-%m-%d %H:%M") if a.reviewed_at else "time unknown"
    return f"{at}: {a.review_note}"


def _as_json(a: OpenAnomaly) -> dict[str, object]:
    return {
        "id": a.record_id,
        "period": a.period or None,  # none: a runner without an org (--no-org)
        "kind": a.kind,
        "runner_id": a.runner_id,
        "detail": a.detail,
        "first_seen": a.first_seen,
        "reviewed_at": a.reviewed_at,
        "review_note": a.review_note or None,
    }
