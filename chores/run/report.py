"""What a metering run did, as returned by `run_chore` and stored in `billing_runs`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import NotRequired

from pydantic import BaseModel, Field, PrivateAttr, TypeAdapter
from typing_extensions import TypedDict

from chores.core.documents import Integer, Moment, Text


class OrgSummary(BaseModel):
    tokens: int = 0
    entries: int = 0
    anomalies: int = 0


class RunReport(BaseModel):
    run_id: str
    org: str | None
    started_at: datetime
    finished_at: datetime | None = None
    duration_seconds: float | None = None  # wall-clock, for operators (times above are `now`)
    dry_run: bool = False
    full_scan: bool = False
    # a full pass that went on from where a cut one stopped: the stamp it resumed from
    resumed_from: float | None = None
    docs_read: int = 0
    entries_written: int = 0
    tokens_billed: int = 0
    anomalies: dict[str, int] = Field(default_factory=dict)
    # of those, the ones not open on the invoice they flag when the run began: new, reopened,
    # or moved to another org's or month's invoice (the rest are open anomalies of runners
    # read again, a held subagent at every run until its finding lands)
    new_anomalies: int = 0
    # runners still running or held, not written for PENDING_IDLE_SECONDS and billing
    # nothing: re-read once an hour from now on, not every run
    idle_runners: int = 0
    orgs: dict[str, OrgSummary] = Field(default_factory=dict)
    invoices: list[str] = Field(default_factory=list)
    # drafts a full pass rebuilt from their ledger because their stored sums differed from
    # it (an edit of the draft or of its entries' fold flags): exact again
    repaired_drafts: list[str] = Field(default_factory=list)
    decisions: dict[str, str] = Field(default_factory=dict)
    # what was said of each source index the server lacked at the start (MissingIndex.warning)
    missing_indexes: list[str] = Field(default_factory=list)
    # why the decisions could not be mirrored to the Redis at REDIS_URL (None: they were,
    # or no REDIS_URL is set): checks reading that mirror answer older decisions until
    # its entries expire
    mirror_missed: str | None = None
    error: str | None = None
    # what was counted, so that a runner read twice in one run (written again between
    # the pending read and the changed scan, or handed back by a paged scan) counts once
    _idle: set[str] = PrivateAttr(default_factory=set)
    _anomalies: set[str] = PrivateAttr(default_factory=set)
    _closed: set[str] = PrivateAttr(default_factory=set)  # anomalies this run resolved

    def summary_for(self, org: str) -> OrgSummary:
        return self.orgs.setdefault(org, OrgSummary())

    def count_idle(self, idle: Iterable[str], *, read: Iterable[str]) -> None:
        """The runners of a batch found idle, among those it `read`: a runner's latest read
        in the run says (one billed by a second read is not idle)."""
        self._idle.difference_update(read)
        self._idle.update(idle)
        self.idle_runners = len(self._idle)

    def note_closed(self, anomaly_ids: Iterable[str]) -> None:
        """Anomalies this run resolved: open when it began, should a later read reopen them."""
        self._closed.update(anomaly_ids)

    def closed_here(self, anomaly_id: str) -> bool:
        return anomaly_id in self._closed

    def count_anomaly(self, anomaly_id: str, kind: str, org: str | None, *, new: bool) -> None:
        """One anomaly (`anomalies.anomaly_id`: a runner's of one kind), once per run; `new`
        when it was not open on the invoice it flags when the run began."""
        if anomaly_id in self._anomalies:
            return
        self._anomalies.add(anomaly_id)
        self.anomalies[kind] = self.anomalies.get(kind, 0) + 1
        self.new_anomalies += new
        if org is not None:
            self.summary_for(org).anomalies += 1


class _StoredRun(TypedDict):
    """What `chore status` shows of a `billing_runs` record (`run_document`)."""

    started_at: Moment
    org: Text | None
    docs_read: Integer
    tokens_billed: Integer
    capped: NotRequired[list[Text]]  # numbers kept at the largest MongoDB stores
    anomalies: NotRequired[dict[Text, Integer]]
    error: NotRequired[Text | None]


STORED_RUN = TypeAdapter(_StoredRun)
