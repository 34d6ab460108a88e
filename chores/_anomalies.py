"""The anomaly log (`billing_anomalies`): documents that could not be billed as they are.

One record per runner and kind (`_id` = `"<runner_id>:<kind>"`), keeping the
first detail seen. Self-healing kinds (see `Anomaly.SELF_HEALING`) are marked
resolved when the runner later bills cleanly; an invoice period with an open
anomaly needs review.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from ._db import Collections
from ._progress import insert_ignoring_duplicates
from ._usage import Anomaly, AnomalyRecord


class AnomalyLog:
    def __init__(self, collections: Collections):
        self._anomalies = collections.anomalies

    def record(self, records: Sequence[AnomalyRecord], *, now: datetime, run_id: str) -> None:
        if not records:
            return
        documents = [
            {
                "_id": f"{r.runner_id}:{r.kind}",
                "runner_id": r.runner_id,
                "kind": r.kind,
                "org": r.org,
                "period": r.period,
                "detail": r.detail,
                "resolved": False,
                "first_seen": now,
                "run_id": run_id,
            }
            for r in records
        ]
        insert_ignoring_duplicates(self._anomalies, documents)
        # A kind that healed and came back is open again.
        self._anomalies.update_many(
            {"_id": {"$in": [d["_id"] for d in documents]}, "resolved": True},
            {"$set": {"resolved": False}},
        )

    def resolvable(self, runner_ids: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
        """Open self-healing anomalies of runners that now bill cleanly.

        Returns their ids and the `(org, period)` pairs whose review state will
        change when they are closed (the caller marks those dirty first).
        """
        ids = [f"{r}:{kind}" for r in runner_ids for kind in sorted(Anomaly.SELF_HEALING)]
        if not ids:
            return [], []
        found = list(
            self._anomalies.find({"_id": {"$in": ids}, "resolved": False}, {"org": 1, "period": 1})
        )
        pairs = [
            (d["org"], d["period"])
            for d in found
            if d.get("org") is not None and d.get("period") is not None
        ]
        return [d["_id"] for d in found], pairs

    def close(self, anomaly_ids: Sequence[str]) -> None:
        if anomaly_ids:
            self._anomalies.update_many(
                {"_id": {"$in": list(anomaly_ids)}}, {"$set": {"resolved": True}}
            )

    def open_periods(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these `(org, period)` pairs have an unresolved anomaly."""
        wanted = set(pairs)
        if not wanted:
            return set()
        orgs = sorted({org for org, _ in wanted})
        periods = sorted({period for _, period in wanted})
        cursor = self._anomalies.find(
            {"org": {"$in": orgs}, "period": {"$in": periods}, "resolved": False},
            {"org": 1, "period": 1},
        )
        return {(d["org"], d["period"]) for d in cursor} & wanted
