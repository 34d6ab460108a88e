"""What a metering run did, as returned by `run_chore` and stored in `billing_runs`."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from pydantic import BaseModel, Field


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
    # runners still running or held, not written for PENDING_IDLE_SECONDS and billing
    # nothing: re-read once an hour from now on, not every run
    idle_runners: int = 0
    orgs: dict[str, OrgSummary] = Field(default_factory=dict)
    invoices: list[str] = Field(default_factory=list)
    decisions: dict[str, str] = Field(default_factory=dict)
    # what was said of each source index the server lacked at the start (MissingIndex.warning)
    missing_indexes: list[str] = Field(default_factory=list)
    # why the decisions could not be mirrored to the Redis at REDIS_URL (None: they were,
    # or no REDIS_URL is set): checks reading that mirror answer older decisions until
    # its entries expire
    mirror_missed: str | None = None
    error: str | None = None

    def summary_for(self, org: str) -> OrgSummary:
        return self.orgs.setdefault(org, OrgSummary())

    def count_anomalies(self, kinds: Counter[str]) -> None:
        for kind, count in kinds.items():
            self.anomalies[kind] = self.anomalies.get(kind, 0) + count
