"""Where an anomaly is recorded: the invoice it flags for review (`Placement`).

Its usage period's invoice, unless that invoice is final (a final never changes): then the
org's open period. One recorded open already may stay where it is (`stays`): on a final
frozen flagged for it, or where a person reviewed it, while nothing of it lands on an
invoice nobody has looked at for it. Usage billed late with one staying on a final opens a
record of the open month (docs/contract.md, Anomalies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from chores.billing.invoices import Invoices
from chores.billing.sweeper import open_period
from chores.core.periods import next_period
from chores.metering.anomalies import Recorded, anomaly_id
from chores.metering.rules import Anomaly, AnomalyRecord


class Placement:
    """Where a batch's anomalies are recorded: the invoice each flags for review.

    Its usage period's invoice, unless that invoice is final (a final never changes): then
    the org's open period, where its usage lands as late usage once the document is fixed.
    Where it is recorded open already, it may stay (`stays`): on a final, that invoice was
    frozen flagged for it, and a reviewer finds it beside it; reviewed by a person, while
    nothing of it lands on an invoice nobody has looked at for it (`billing`: the runners
    this batch bills usage to, `Batch.billing`; `running`: those without an end time).

    A kind billed all the same (`Anomaly.BILLED_FLAGGED`) seen with usage of a final month
    may have records of the months after it (`later_records`, asked for with the others:
    `candidates`), each opened on a month its late usage landed on. With no record of its own
    month, the latest of those stands for it (reviewed or not: a review covers the
    runner's anomaly of that kind on that invoice). The open month's opens when this batch
    bills the runner usage of a final month while the anomaly's record is elsewhere
    (`_kept_elsewhere`: on a final that keeps it, frozen flagged for it or reviewed there,
    or on an earlier draft), which stays as it is, its review too.

    The finals of the batch's orgs are read once, when it is built."""

    def __init__(
        self,
        anomalies: Sequence[AnomalyRecord],
        *,
        now: datetime,
        billing: set[str],
        running: set[str],
        invoices: Invoices,
    ):
        self.anomalies = list(anomalies)
        self.now = now
        self.billing = billing
        self.running = running
        orgs = {a.org for a in anomalies if a.org is not None and a.period is not None}
        self.finals = invoices.final_flags(orgs) if orgs else {}
        self.later_records = {
            anomaly_id(anomaly): self._of_later_months(anomaly)
            for anomaly in self.anomalies
            if anomaly.kind in Anomaly.BILLED_FLAGGED and anomaly.period in self._finals_of(anomaly)
        }

    @property
    def candidates(self) -> list[AnomalyRecord]:
        """Every record the batch may write or stand by: where they stand is read for these
        (`AnomalyLog.previous`, older versions' ids included), in one read."""
        return [*self.anomalies, *(r for later in self.later_records.values() for r in later)]

    def place(self, known: Mapping[str, Recorded]) -> list[AnomalyRecord]:
        """The anomalies, each in the period whose invoice it flags for review, given where
        the `candidates` are recorded open already (`known`)."""
        placed = []
        for anomaly in self.anomalies:
            flags = self._finals_of(anomaly)
            later = self.later_records.get(anomaly_id(anomaly), [])
            recorded = known.get(anomaly_id(anomaly))
            standing = [r for r in later if _open_in(known.get(anomaly_id(r)), r.org)]
            if recorded is None and standing:  # its late usage's month's record stands
                anomaly = standing[-1]
                recorded = known[anomaly_id(anomaly)]
            billed = anomaly.runner_id in self.billing
            open_month = self._open_period(anomaly)
            if later and billed and _kept_elsewhere(recorded, anomaly, flags, open_month):
                anomaly = later[-1]  # the open month's opens, the other keeps its own
            elif recorded is not None and stays(
                recorded, anomaly, flags, self.billing, self.running
            ):
                anomaly = anomaly._replace(period=recorded.period)
            elif anomaly.period in flags:
                anomaly = anomaly._replace(period=open_month)
            placed.append(anomaly)
        return placed

    def _finals_of(self, anomaly: AnomalyRecord) -> Mapping[str, bool]:
        """The final periods of the anomaly's org, each with whether it was frozen flagged."""
        return self.finals.get(anomaly.org or "", {})

    def _of_later_months(self, anomaly: AnomalyRecord) -> list[AnomalyRecord]:
        """The records of the anomaly for usage of each month after its own that late
        usage may have landed on: the org's final months after it, then every month after
        its latest final up to its open month (the last). A record of the open month opens
        only there, so their number grows with the months the org has been billed, not
        with how old the usage month is."""
        finals = self._finals_of(anomaly)
        months = sorted(month for month in finals if month > str(anomaly.period))
        month, last = max([str(anomaly.period), *finals]), self._open_period(anomaly)
        while month < last:
            month = next_period(month)
            months.append(month)
        return [anomaly._replace(period=month, usage_period=month) for month in months]

    def _open_period(self, anomaly: AnomalyRecord) -> str:
        """The open period of the anomaly's org, where late usage goes."""
        return open_period(self.now, set(self._finals_of(anomaly)))


def _open_in(recorded: Recorded | None, org: str | None) -> bool:
    """Whether a record is open in `org`, on whichever invoice."""
    return recorded is not None and not recorded.resolved and recorded.org == org


def _kept_elsewhere(
    recorded: Recorded | None, anomaly: AnomalyRecord, finals: Mapping[str, bool], open_month: str
) -> bool:
    """Whether late usage billed with an anomaly opens a record of the open month beside the
    one recorded: that one is kept by a final (`kept_by_its_final`), or is on the draft of
    an earlier month, which holds usage billed with it."""
    if recorded is None or recorded.period is None or recorded.period == open_month:
        return False
    on_a_draft = recorded.period not in finals and _open_in(recorded, anomaly.org)
    return on_a_draft or kept_by_its_final(recorded, anomaly, finals)


def kept_by_its_final(
    recorded: Recorded | None, anomaly: AnomalyRecord, finals: Mapping[str, bool]
) -> bool:
    """Whether an anomaly is recorded open on a final of its org that keeps it: one frozen
    flagged for it, or one a person reviewed it on. (One nobody reviewed on a final frozen
    unflagged, recorded between a finalize's read and its freeze, moves to the open month:
    `stays`.)"""
    return (
        recorded is not None
        and not recorded.resolved
        and recorded.org == anomaly.org
        and recorded.period in finals
        and (finals[recorded.period] or recorded.reviewed)
    )


def stays(
    recorded: Recorded,
    anomaly: AnomalyRecord,
    finals: Mapping[str, bool],
    billing: set[str],
    running: set[str],
) -> bool:
    """Whether an anomaly recorded open on an invoice of its org stays there (`Placement`).
    `finals`: the org's final periods, each with whether it was frozen needing review.

    One nobody reviewed, when that invoice is final and was frozen flagged (a finalize
    that read the anomalies just before this one was recorded froze it unflagged: the
    anomaly then moves to the open month, which it flags), unless a held kind's usage is
    now of another open month (`_usage_now_of_another_open_month`: it lands there once
    fixed; a kind billed all the same keeps the final that holds usage billed with it), or
    when it is a draft and the
    anomaly's own month is final (placed in the month that was open then, it flags that
    draft until it is frozen flagged for it, instead of following the open month every
    month, never on a final).

    One a person reviewed, while nothing of it lands on an invoice nobody has looked at
    for it: not when this batch bills its runner usage with it (`billing`: new tokens, or
    tokens that change kind), nor when the runner's usage is now of another open month
    than the one it was reviewed on (`_usage_now_of_another_open_month`: it ran on into it, or
    ended in it). A finalize, a month going by or the daily full pass undo no review."""
    if recorded.resolved or recorded.org != anomaly.org:
        return False
    if recorded.period is None and anomaly.period is not None:
        return False  # on no invoice (its period edited out of shape): placed as seen now
    if not recorded.reviewed:
        if recorded.period in finals:
            held_elsewhere = anomaly.kind in Anomaly.HELD and _usage_now_of_another_open_month(
                recorded, anomaly, finals, running
            )
            return finals[recorded.period] and not held_elsewhere
        return anomaly.period in finals
    return anomaly.runner_id not in billing and not _usage_now_of_another_open_month(
        recorded, anomaly, finals, running
    )


def _usage_now_of_another_open_month(
    recorded: Recorded, anomaly: AnomalyRecord, finals: Mapping[str, bool], running: set[str]
) -> bool:
    """Whether an anomaly's usage is now of an open month other than the one it is recorded
    on, where it lands once fixed. Not for a held kind (`Anomaly.HELD`: it bills nothing)
    while its runner runs on (`running`) or its month is the clock's
    (`Anomaly.OF_THE_CLOCK`): a month going by moves nothing."""
    follows_the_clock = anomaly.runner_id in running or anomaly.kind in Anomaly.OF_THE_CLOCK
    return not (
        (anomaly.kind in Anomaly.HELD and follows_the_clock)
        or anomaly.period in finals
        or anomaly.period == recorded.period
    )


def open_at(recorded: Recorded | None, anomaly: AnomalyRecord) -> bool:
    """Whether an anomaly is on record open where it is placed now (reviewed or not)."""
    return recorded is not None and recorded.open_at(anomaly.org, anomaly.period)


def was_resolved(recorded: Recorded | None) -> bool:
    """Whether an anomaly is on record as resolved (by a run that read its runner clean)."""
    return recorded is not None and recorded.resolved
