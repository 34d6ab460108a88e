"""A person's review of open anomalies (`chore anomaly review`).

The kinds that do not heal themselves (`total_below_split`, `counter_decreased`,
`org_changed`, ...) flag their invoice for review until someone has looked at them. A
review marks them reviewed (`AnomalyLog.review`) and brings the period's draft up to date
at once, as a run's settle does: its `needs_review` then only stands for what is still
open (an unpriced line, a line below zero, an anomaly not reviewed). A final invoice never
changes: reviewing its anomalies records the review, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.database import Database

from chores.core.clock import checked_now
from chores.core.db import Doc
from chores.core.exceptions import ConfigError
from chores.core.orgs import validate_org
from chores.core.periods import is_period
from chores.core.settings import Settings, get_settings
from chores.run.chore import Pipeline
from pricing import Registry, load_registry


@dataclass(frozen=True)
class Review:
    """What a review did: the anomalies it marked reviewed, and the invoice as it now
    stands (None when the period has no invoice yet)."""

    org: str
    period: str
    reviewed: list[str]
    status: str | None  # "draft" | "final" | None
    needs_review: bool | None


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

    In the order of a run (docs/design.md): the invoice marked dirty (open), the reviews
    written, the mark closed, then the org's drafts settled and its quota decided, so a
    crash anywhere leaves the draft to the next run.
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
    marks = meter.progress.mark_dirty([(org, period)], now=now)
    reviewed = meter.anomalies.review(
        org, period, note=note, now=now, kinds=kinds, runner_ids=runner_ids
    )
    meter.progress.close_marks(marks)
    settled = meter.invoices.settle(now, org)
    meter.quota.decide([org], now)
    meter.progress.clear_dirty(settled.marks)
    invoice: dict[str, Any] | None = meter.collections.invoices.find_one(
        {"_id": f"{org}:{period}"}, {"status": 1, "needs_review": 1}
    )
    return Review(
        org=org,
        period=period,
        reviewed=reviewed,
        status=None if invoice is None else invoice.get("status"),
        needs_review=None if invoice is None else bool(invoice.get("needs_review")),
    )
