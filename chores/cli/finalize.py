"""`chore finalize`: turn the drafts of ended periods final."""

from __future__ import annotations

from datetime import datetime

import click

from chores.billing.known_orgs import unknown_org_note
from chores.cli.common import (
    now_option,
    user_errors,
)
from chores.cli.params import GraceDaysType
from chores.core.db import Collections, connect
from chores.core.settings import get_settings
from chores.core.wording import counted, for_terminal
from chores.run.chore import finalize_invoices


# finalize ------------------------------------------------------------------------
@click.command()
@click.option("--org", metavar="ORG", help="Only this org (workspace id; default: every org).")
@click.option(
    "--grace-days",
    type=GraceDaysType(),
    help="Days after the period end, 0 to 366 (default: GRACE_DAYS).",
)
@now_option
@user_errors
def finalize(org: str | None, grace_days: float | None, now: datetime | None) -> None:
    """Turn the drafts of periods ended more than the grace ago final."""

    settings = get_settings()
    db = connect(settings)
    done = finalize_invoices(db, now=now, grace=grace_days, org=org, settings=settings)
    grace = settings.grace_days if grace_days is None else grace_days
    why = (
        f" (none due: a month is finalized {grace:g} days after it ends, by --now and by "
        "this machine's clock)"
    )
    click.echo(
        f"finalized {counted(len(done), 'invoice')}"
        + (": " + for_terminal(", ".join(done)) if done else why)
    )
    if org is not None and not done:
        unknown = unknown_org_note(Collections.of(db, settings), org)
        if unknown is not None:
            click.echo(f"note: {unknown}", err=True)
