"""Where an anomaly is recorded: the invoice it flags for review (`place`).

Its usage period's invoice, unless that invoice is final (a final never changes): then the
org's open period. One recorded open already may stay where it is (`stays`): on a final
frozen flagged for it, or where a person reviewed it while nothing of it lands on an
invoice nobody has looked at for it (docs/contract.md, Anomalies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from chores.billing.invoices import Invoices
from chores.billing.sweeper import open_period
from chores.metering.anomalies import Recorded, anomaly_id
from chores.metering.rules import Anomaly, AnomalyRecord


def place(
    anomalies: Sequence[AnomalyRecord],
    known: Mapping[str, Recorded],
    *,
    now: datetime,
    billing: set[str],
    invoices: Invoices,
) -> list[AnomalyRecord]:
    """The anomalies, each in the period whose invoice it flags for review: its usage
    period, unless that invoice is final (a final never changes): then the org's open
    period, where its usage lands as late usage once the document is fixed. Where it is
    recorded open already (`known`), it may stay (`stays`): on a final, that invoice
    was frozen flagged for it, and a reviewer finds it beside it; reviewed by a person,
    while nothing of it lands on an invoice nobody has looked at for it (`billing`: the
    runners this batch bills usage to, `Batch.billing`)."""
    orgs = {a.org for a in anomalies if a.org is not None and a.period is not None}
    finals = invoices.final_flags(orgs) if orgs else {}
    placed = []
    for anomaly in anomalies:
        flags = finals.get(anomaly.org or "", {})
        final = set(flags)
        recorded = known.get(anomaly_id(anomaly))
        if recorded is not None and stays(recorded, anomaly, flags, billing):
            anomaly = anomaly._replace(period=recorded.period)
        elif anomaly.period in final:
            anomaly = anomaly._replace(period=open_period(now, final))
        placed.append(anomaly)
    return placed


def stays(
    recorded: Recorded, anomaly: AnomalyRecord, finals: Mapping[str, bool], billing: set[str]
) -> bool:
    """Whether an anomaly recorded open on an invoice of its org stays there (`place`).
    `finals`: the org's final periods, each with whether it was frozen needing review.

    One nobody reviewed, when that invoice is final and was frozen flagged (a finalize
    that read the anomalies just before this one was recorded froze it unflagged: the
    anomaly then moves to the open month, which it flags), or when it is a draft and the
    anomaly's own month is final (placed in the month that was open then, it flags that
    draft until it is frozen flagged for it, instead of following the open month every
    month, never on a final).

    One a person reviewed, while nothing of it lands on an invoice nobody has looked at
    for it: not when this batch bills its runner usage with it (`billing`: new tokens, or
    tokens that change kind), nor when the runner's usage is now of another open month
    than the one it was reviewed on (it ran on into it, or ended in it). A held kind bills
    nothing (`Anomaly.HELD`), and a runner whose usage month is final bills nothing there:
    a finalize, a month going by or the daily full pass undo no review."""
    if recorded.resolved or recorded.org != anomaly.org:
        return False
    if recorded.period is None and anomaly.period is not None:
        return False  # on no invoice (its period edited out of shape): placed as seen now
    if not recorded.reviewed:
        if recorded.period in finals:
            return finals[recorded.period]
        return anomaly.period in finals
    return anomaly.runner_id not in billing and (
        anomaly.kind in Anomaly.HELD
        or anomaly.period in finals
        or anomaly.period == recorded.period
    )


def open_at(recorded: Recorded | None, anomaly: AnomalyRecord) -> bool:
    """Whether an anomaly is on record open where it is placed now (reviewed or not)."""
    return recorded is not None and recorded.open_at(anomaly.org, anomaly.period)


def was_resolved(recorded: Recorded | None) -> bool:
    """Whether an anomaly is on record as resolved (by a run that read its runner clean)."""
    return recorded is not None and recorded.resolved
