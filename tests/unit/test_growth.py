"""Issue 17 item 3, in the tests: a rerun costs what changed, not the month (counts, not times).

Two databases hold N = 300 and 4N = 1,200 AI runner documents already metered, built as
benchmarks/bench_roundtrips.py builds them (a realistic base metered by a full run, the same
at both sizes so the runners still running are the same; then finished runners cloned with
their folded ledger entries, the drafts' sums grown to match). The same k documents change
and the chore runs again. From N to 4N, each count of that rerun may grow by at most SLACK:
the ledger entries the draft builds read, the reads, round trips, documents returned from the
billing collections and documents the server examines (modelled from the indexes,
benchmarks/_counting.py). And every draft equals a full rebuild of its ledger.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mongomock
import pytest

from chores import Settings, ensure_indexes, finalize_invoices, run_chore
from chores.billing.invoices import Invoices
from chores.core.db import Collections
from chores.metering.anomalies import AnomalyLog
from chores.metering.ledger import Ledger
from chores.metering.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _counting import BuildReads, CountingDatabase
from _workload import NOW
from bench_roundtrips import change, grow, seed

N = 300
K = 20
# What going from N to 4N may add to any count of the rerun (measured: nothing; a full
# rebuild of the touched drafts, as before issue 17, adds hundreds of entries examined).
SLACK = 2


def rerun_counts(n: int, registry: Any) -> dict[str, Any]:
    raw = mongomock.MongoClient(tz_aware=True)["main"]
    db = CountingDatabase(raw)
    settings = Settings(mongo_url="mongomock://growth", batch_size=100, redis_url=None)
    seeded = seed(raw, N)
    ensure_indexes(raw, settings, source=True)
    run_chore(db, now=NOW, registry=registry, settings=settings)
    grow(raw, settings, registry, n - seeded["ai_docs"])
    later = NOW + timedelta(minutes=5)
    changed = change(raw, K, stamp=(later - timedelta(seconds=30)).timestamp())
    assert len(changed) == K
    counts = db.counts
    counts.reset()
    with BuildReads() as builds:
        report = run_chore(db, now=later, registry=registry, settings=settings)
    rerun = counted(counts, builds)
    after_final = after_october_is_final(raw, db, registry, settings)
    collections = Collections.of(raw, settings)
    invoices = Invoices(
        collections,
        registry,
        Ledger(collections, batch_size=100),
        AnomalyLog(collections),
        Progress(collections),
    )
    pairs = {(d["org"], d["period"]) for d in collections.invoices.find({})}
    return {
        "ai_docs": raw.tasks.count_documents({"name": "ai"}),
        "ledger_entries": collections.ledger.count_documents({}),
        "entries_written": report.entries_written,
        "counts": rerun,
        "after_final": after_final,
        "check": invoices.check_drafts(pairs),
    }


def counted(counts: Any, builds: BuildReads) -> dict[str, int]:
    return {
        "entries aggregated": builds.entries,
        "reads": counts.reads(),
        "round trips": counts.total_round_trips(),
        "billing docs returned": counts.docs_returned("billing_"),
        "billing docs examined": counts.docs_examined("billing_"),
        "source docs examined": counts.docs_examined("tasks") + counts.docs_examined("findings"),
    }


def after_october_is_final(raw: Any, db: Any, registry: Any, settings: Settings) -> dict[str, Any]:
    """October frozen, then what recurs (outside review: each grew with N, the sweep of a
    final period's stragglers reading the whole month it holds): the next day's finalize,
    with nothing due (its sweep of every final period), and a run after k runners of the
    frozen month grew (their usage late, swept into November)."""
    frozen = datetime(2026, 11, 4, 1, tzinfo=UTC)  # October, past its grace days
    finalize_invoices(db, now=frozen, settings=settings)
    counts = db.counts
    counts.reset()
    with BuildReads() as builds:
        finalize_invoices(db, now=frozen + timedelta(days=1), settings=settings)
    again = counted(counts, builds)
    later = frozen + timedelta(days=1, minutes=5)
    change(raw, K, stamp=(later - timedelta(seconds=30)).timestamp())
    counts.reset()
    with BuildReads() as builds:
        report = run_chore(db, now=later, registry=registry, settings=settings)
    late = {"late entries": sum(1 for d in report_entries(raw, report.run_id) if d["late"])}
    return {"finalize again": again, "late rerun": counted(counts, builds), **late}


def report_entries(raw: Any, run_id: str) -> list[dict[str, Any]]:
    return list(raw.billing_ledger.find({"run_id": run_id}, {"late": 1}))


@pytest.fixture(scope="module")
def both(registry: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return rerun_counts(N, registry), rerun_counts(4 * N, registry)


def test_the_two_databases_are_n_and_4n_and_the_rerun_bills_the_k_changes(both):
    small, large = both
    assert small["ai_docs"] == pytest.approx(N, rel=0.1)  # the corpus rounds runs per org
    assert large["ai_docs"] == pytest.approx(4 * N, abs=5)
    assert large["ledger_entries"] >= 3 * small["ledger_entries"]
    assert small["entries_written"] == large["entries_written"] == K


def test_a_rerun_costs_the_same_at_4n_within_a_constant(both):
    small, large = both
    grown = {name: (small["counts"][name], large["counts"][name]) for name in small["counts"]}
    too_much = {name: pair for name, pair in grown.items() if pair[1] - pair[0] > SLACK}
    assert not too_much, f"grew by more than {SLACK} from N to 4N: {too_much}"
    # and the reads are what changed: k entries folded, plus the folded entries of
    # those k runners that say they are already counted
    assert small["counts"]["entries aggregated"] <= 3 * K


@pytest.mark.parametrize("step", ["finalize again", "late rerun"])
def test_once_a_month_is_final_what_recurs_costs_the_same_at_4n(both, step):
    small, large = both
    assert small["after_final"]["late entries"] == large["after_final"]["late entries"] == K
    grown = {
        name: (small["after_final"][step][name], large["after_final"][step][name])
        for name in small["after_final"][step]
    }
    too_much = {name: pair for name, pair in grown.items() if pair[1] - pair[0] > SLACK}
    assert not too_much, f"grew by more than {SLACK} from N to 4N: {too_much}"


def test_every_draft_equals_a_full_rebuild_at_both_sizes(both):
    small, large = both
    assert small["check"] == []
    assert large["check"] == []
