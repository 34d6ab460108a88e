"""A person's review of open anomalies (`chore anomaly review`).

The kinds that do not heal themselves (`total_below_split`, `counter_decreased`,
`org_changed`, ...) flag their invoice for review until someone has looked at them. A
review marks them reviewed (`AnomalyLog.review`) and brings the period's draft up to date
at once, as a run's settle does: its `needs_review` then only stands for what is still
open (an unpriced line, a line below zero, an anomaly not reviewed). A final invoice never
changes: reviewing its anomalies records the review, nothing else.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime

from pymongo.database import Database

from chores.billing.period_ledger import stored_invoice
from chores.core.clock import checked_now
from chores.core.db import Doc
from chores.core.exceptions import ChoreError, ConfigError
from chores.core.orgs import validate_org
from chores.core.periods import is_period
from chores.core.settings import Settings, get_settings
from chores.metering.anomalies import OpenAnomaly
from chores.metering.rules import Anomaly
from chores.run.pipeline import Pipeline
from pricing import Registry, load_registry


@dataclass(frozen=True)
class Review:
    """What a review did: the anomalies it marked reviewed (as they read now, with their
    review), and the invoice as it now stands."""

    org: str
    period: str
    reviewed: list[OpenAnomaly]
    status: str  # of the invoice: "draft" | "final"
    needs_review: bool


def review_anomalies(
    db: Database[Doc],
    org: str,
    period: str,
    *,
    note: str,
    kinds: tuple[str, ...] = (),
    runner_ids: tuple[str, ...] = (),
    now: datetime | None = None,
    registry: Registry | None = None,
    settings: Settings | None = None,
) -> Review:
    """Mark the open anomalies of `org`'s invoice of `period` reviewed (those of `kinds`
    and `runner_ids` only, when given) with `note`, then rebuild that draft.

    Refused before anything is written (`ChoreError`) without a note, without an invoice
    of that month, or when `kinds` and `runner_ids` match none of its open anomalies (a
    mistyped runner id is not "nothing left to review"). Then in the order of a run
    (docs/design.md): the invoice marked dirty (open), the reviews written, the mark
    closed, the org's drafts settled and its quota decided, so that a crash anywhere
    leaves the draft to the next run.
    """
    settings = settings or get_settings()
    org = validate_org(org)
    if not is_period(period):
        raise ConfigError(f"period must look like 2026-11, got {period!r:.40}")
    note = note.strip()
    if not note:
        raise ConfigError("a review needs a note: what was checked, and by whom")
    now = checked_now(now, settings.future_skew_seconds)
    meter = Pipeline(db, settings, registry or load_registry(settings.registry_path))
    stored_invoice(meter.collections, org, period)  # InvoiceNotFound, with what to do
    matching = [
        anomaly
        for anomaly in meter.anomalies.open_anomalies(org, period, reviewed=True)
        if (not kinds or anomaly.kind in kinds)
        and (not runner_ids or anomaly.runner_id in runner_ids)
    ]
    if (kinds or runner_ids) and not matching:
        orgless = (
            "; a no_org anomaly flags no invoice and is not reviewed (`chore anomaly list "
            "--no-org` lists those)"
            if Anomaly.NO_ORG in kinds
            else ""
        )
        raise ChoreError(
            f"no open anomaly of {org!r} in {period} is of {_named(kinds, runner_ids)}: "
            f"`chore anomaly list --org {shlex.quote(org)} --period {period} --reviewed` "
            f"lists them with their runner ids{orgless}"
        )
    marks = meter.progress.mark_dirty([(org, period)], now=now)
    waiting = [a.record_id for a in matching if not a.reviewed]
    reviewed = set(meter.anomalies.review(org, period, waiting, note=note, now=now))
    meter.progress.close_marks(marks)
    settled = meter.invoices.settle(now, org)
    meter.quota.decide([org], now)
    meter.progress.clear_dirty(settled.marks)
    invoice = stored_invoice(meter.collections, org, period)
    after = meter.anomalies.open_anomalies(org, period, reviewed=True)
    return Review(
        org=org,
        period=period,
        reviewed=[a for a in after if a.record_id in reviewed],
        status=invoice.status,
        needs_review=invoice.needs_review,
    )


def _named(kinds: tuple[str, ...], runner_ids: tuple[str, ...]) -> str:
    """The filters of a review, as a person typed them."""
    said = []
    if kinds:
        said.append("kind " + " or ".join(kinds))
    if runner_ids:
        said.append("runner " + " or ".join(runner_ids))
    return " and ".join(said)
