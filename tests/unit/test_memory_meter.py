"""`MemoryMeter` (the in-memory core the benchmarks measure) prices the same invoice lines
as a real run of the chore over the same documents, and hands out the deltas `assess` gives.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
import pytest

import chores.metering.rules
from chores import Settings, run_chore
from chores.billing.invoice import Invoice
from chores.core.db import Collections
from chores.demo.corpus import generate_corpus
from chores.metering.lineage import baseline_findings
from chores.metering.lines import price_lines
from chores.metering.memory_meter import MemoryMeter, Observation
from chores.metering.rules import LedgerHead, head_after
from chores.metering.source import SPAWNED_RUNNER_TYPES
from pricing import Registry

from support import NOW


def _observations(corpus: Any, fraction: float = 1.0) -> list[Observation]:
    """The AI runners of a corpus as they looked at `fraction` of their work, with their
    spawn findings' `_context`s."""
    spawns: dict[str, list[Any]] = defaultdict(list)
    for finding in corpus.findings:
        if finding.get("_type") == "ai" and finding.get("ai_type") in SPAWNED_RUNNER_TYPES:
            spawns[str(finding["extra_data"]["runner_id"])].append(finding["_context"])
    return [(t, baseline_findings(t, spawns)) for t in corpus.at(fraction) if t.get("name") == "ai"]


CORPUS = generate_corpus(
    seed=11,
    orgs=("acme", "globex"),
    runs_per_org=40,
    start=datetime(2026, 10, 1, tzinfo=UTC),
    days=40,
    malformed_share=0.1,
)


def _line_amounts(lines: Any) -> list[tuple[Any, ...]]:
    def seen(line: Any) -> tuple[Any, ...]:
        valid_from = line.price_valid_from or ""
        return (line.model or "", line.tier, line.late, valid_from, line.tokens, line.amount_micros)

    return sorted(seen(line) for line in lines)


def test_memory_meter_prices_what_the_chore_invoices(registry: Registry) -> None:
    db = mongomock.MongoClient(tz_aware=True)["main"]
    settings = Settings(mongo_url="mongomock://unused", batch_size=50, redis_url=None)
    db.findings.insert_many([dict(f) for f in CORPUS.findings])
    db.tasks.insert_many([dict(t) for t in CORPUS.tasks])
    run_chore(db, now=NOW, registry=registry, settings=settings)
    invoiced = {
        (invoice.org, invoice.period): _line_amounts(invoice.lines)
        for invoice in (
            Invoice.model_validate(doc) for doc in Collections.of(db, settings).invoices.find({})
        )
        if invoice.lines
    }

    meter = MemoryMeter(
        now=NOW,
        max_tokens_per_run=settings.max_tokens_per_run,
        future_skew_seconds=settings.future_skew_seconds,
    )
    observations = _observations(CORPUS)
    meter.feed(observations[: len(observations) // 2])
    meter.feed(observations[len(observations) // 2 :])
    priced = {key: _line_amounts(lines) for key, lines in meter.lines(registry).items()}
    # what benchmarks/bench_engine.py prices LiteLLM's side from
    from_groups = {
        key: _line_amounts(price_lines(groups, registry))
        for key, groups in meter.usage_groups().items()
    }

    assert len(invoiced) >= 4  # two orgs, two months
    assert priced == invoiced == from_groups
    assert meter.snapshots == len(observations)
    assert meter.anomalies > 0


def test_memory_meter_hands_out_the_deltas_assess_gives() -> None:
    """Halfway through their work (every runner still running, so the meter keeps a head),
    then finished: the meter's records are `assess`'s deltas, field for field."""
    observations = _observations(CORPUS, 0.5) + _observations(CORPUS)
    meter = MemoryMeter(now=NOW, max_tokens_per_run=10**9, future_skew_seconds=300)
    records: list[Any] = []
    meter.feed(observations, records)

    heads: dict[Any, LedgerHead] = {}
    expected = []
    for doc, spawn_contexts in observations:
        result = chores.metering.rules.assess(
            doc,
            spawn_contexts=spawn_contexts,
            head=heads.get(doc["_id"]),
            now=NOW,
            max_tokens_per_run=10**9,
            future_skew_seconds=300,
        )
        for delta in result.deltas:
            heads[doc["_id"]] = head_after(heads.get(doc["_id"]), delta)
            expected.append(delta)

    assert records == expected
    assert sum(1 for delta in records if delta.seq == 2) > 20  # billed again, from a head
    assert meter.deltas == len(records)


def _runner(tokens: int, status: str = "RUNNING", end_time: Any = None, org: Any = "acme") -> Any:
    context = {"ai_tokens": tokens, "ai_prompt_tokens": tokens, "ai_model": "gpt-4o-mini"}
    if org is not None:
        context["workspace_id"] = org
    doc = {"_id": "r1", "status": status, "context": context}
    if end_time is not None:
        doc["end_time"] = end_time
    return doc


@pytest.mark.parametrize(
    "observations",
    [
        pytest.param(
            [_runner(100), _runner(120, org=None), _runner(150)], id="org-missing-mid-run"
        ),
        pytest.param(
            [
                _runner(100),
                _runner(150, "SUCCESS", end_time="garbage"),
                _runner(150, "SUCCESS", end_time=NOW - timedelta(hours=1)),
            ],
            id="finished-with-a-bad-end-time-then-fixed",
        ),
    ],
)
def test_memory_meter_keeps_the_head_of_a_runner_held_by_an_anomaly(
    observations: list[Any],
) -> None:
    """The held document comes back fixed: the meter bills what is new, as the ledger does."""
    meter = MemoryMeter(now=NOW, max_tokens_per_run=10**9, future_skew_seconds=300)
    meter.feed([(doc, []) for doc in observations])
    assert sum(t.input + t.cached + t.output + t.unsplit for t in meter.usage.values()) == 150
    assert meter.deltas == 2


def test_an_entry_that_only_moves_a_mark_is_no_line_in_memory_either(registry: Registry) -> None:
    """Review: a runner whose cached count grew past its prompt writes an entry of no tokens
    (it keeps the mark), here on the line of the model it now names; the chore leaves it
    off the invoice, the meter priced a zero line."""
    settings = Settings(mongo_url="mongomock://unused", batch_size=50, redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    meter = MemoryMeter(
        now=NOW,
        max_tokens_per_run=settings.max_tokens_per_run,
        future_skew_seconds=settings.future_skew_seconds,
    )
    for n, (model, cached) in enumerate((("gpt-4o-mini", 50), ("gpt-4o", 200))):
        seen = NOW - timedelta(hours=2 - n)
        doc = {"_id": "r1", "name": "ai", "status": "RUNNING", "last_updated_db": seen.timestamp(),
               "context": {"workspace_id": "acme", "ai_model": model, "ai_tokens": 100,
                           "ai_prompt_tokens": 100, "ai_cached_tokens": cached}}  # fmt: skip
        db.tasks.replace_one({"_id": "r1"}, doc, upsert=True)
        run_chore(db, now=seen, registry=registry, settings=settings)
        meter.now = seen
        meter.feed([(doc, [])])
    (invoice,) = (Invoice.model_validate(d) for d in Collections.of(db, settings).invoices.find())
    last = db.billing_ledger.find_one(sort=[("seq", -1)])
    assert (last["tokens"], last["high_water"]["cached"]) == (0, 200)  # it only moves the mark
    assert {k: _line_amounts(v) for k, v in meter.lines(registry).items()} == {
        (invoice.org, invoice.period): _line_amounts(invoice.lines)
    }
    assert len(invoice.lines) == 1


def test_a_runner_finished_and_billed_leaves_no_head_behind() -> None:
    """Memory grows with the runners still running or held, not with the documents read
    (what benchmarks/bench_memory.py reports as `heads_left`)."""
    meter = MemoryMeter(now=NOW, max_tokens_per_run=10**9, future_skew_seconds=300)
    meter.feed([(_runner(100), [])])
    assert len(meter.heads) == 1  # running: its head is kept
    meter.feed([(_runner(150, "SUCCESS", end_time=NOW - timedelta(minutes=5)), [])])
    assert meter.heads == {}
    assert sum(t.input + t.cached + t.output + t.unsplit for t in meter.usage.values()) == 150
