"""Runner documents that name no org, recorded by the fan-out as anomalies `no_org`.

SPEC §1 fact 8: a document without an org is an anomaly, not billed. A worker meters one
org at a time (`tasks.meter_org`), and such a document is no org's: no org's run reads it,
so the worker used to record nothing of it, and only `chore run --all` did. The fan-out
(`tasks.meter_all`) now reads the AI runners changed since its cursor that hold no org id
(every one, on the daily full fan-out) and records them as a run over every org does,
through `Pipeline.process`: nothing of them is billed, their anomaly is written (once per
runner), and it resolves when the runner later bills under an org.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

from pymongo.database import Database

from chores.core.db import Collections, Doc
from chores.core.settings import Settings
from chores.metering.rules import org_of
from chores.metering.source import Source, chunked
from chores.run.pipeline import Pipeline
from chores.run.report import RunReport
from pricing import load_registry


def record_orgless(
    db: Database[Doc],
    settings: Settings,
    *,
    since: float | None,
    now: datetime,
    besides_orgs: Sequence[str] | None = None,
) -> RunReport | None:
    """Record the anomalies of the AI runners changed since `since` (every one when None)
    whose document names no org; None when there was none (nothing else is read).

    `besides_orgs`: the orgs the fan-out listed, when an org id it grouped was not UTF-8;
    every runner whose id is none of them is read as well (`Source.orgless_runners`)."""
    source = Source(
        Collections.of(db, settings),
        ai_task_names=settings.ai_task_names,
        batch_size=settings.batch_size,
    )
    meter: Pipeline | None = None
    report = RunReport(run_id=uuid.uuid4().hex, org=None, started_at=now)
    for docs in chunked(
        source.orgless_runners(since, besides_orgs=besides_orgs), settings.batch_size
    ):
        # Should the server's filter and the rules ever disagree, a document the rules
        # bill to an org is that org's run's, under its lock, never this one's.
        orgless = [doc for doc in docs if _names_no_org(doc)]
        if not orgless:
            continue
        if meter is None:  # the registry is read only when there is something to record
            meter = Pipeline(db, settings, load_registry(settings.registry_path))
        meter.process(
            orgless, org=None, now=now, run_id=report.run_id, report=report, dry_run=False
        )
    return report if report.docs_read else None


def _names_no_org(doc: Doc) -> bool:
    context = doc.get("context")
    return not isinstance(context, Mapping) or org_of(context) is None
