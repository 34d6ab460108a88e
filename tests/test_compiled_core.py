"""The metering core as installed (compiled by setup.py when it can be) is the Python source.

- `chores._usage` (and `_periods`, `_meter`) are compiled with Cython when the install can
  (setup.py); this checks, document by document, that the installed `assess` gives exactly
  what the plain source file gives when interpreted, on hostile generated documents and on
  a generated month with subagents, heads and malformed documents. Under CI the compiled
  build is required: an install that silently fell back to pure Python fails here.
- `MemoryMeter` (the in-memory core the benchmarks measure) prices the same invoice lines
  as a real run of the chore over the same documents.
"""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import mongomock
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chores
import chores._line_sums
import chores._meter
import chores._periods
import chores._usage
from chores import Settings, run_chore
from chores._corpus import generate_corpus
from chores._db import Collections
from chores._invoices import Invoice
from chores._meter import MemoryMeter, Observation
from chores._usage import LedgerHead
from pricing import Registry

from conftest import NOW
from test_hostile import hostile_runner

PACKAGE = Path(chores.__file__).parent
CORE = (chores._usage, chores._periods, chores._meter, chores._line_sums)
COMPILED = all(not module.__file__.endswith(".py") for module in CORE)  # type: ignore[union-attr]


def test_the_core_is_compiled_under_ci() -> None:
    if os.environ.get("CI") != "true":
        pytest.skip("the compiled core is required under CI only")
    files = [Path(m.__file__).name for m in CORE]  # type: ignore[arg-type]
    assert COMPILED, f"setup.py did not compile the metering core: {files}"


def test_a_compiled_module_is_not_older_than_its_source() -> None:
    """An edited source beside a stale build would be shadowed by the build."""
    if not COMPILED:
        if os.environ.get("CI") == "true":
            pytest.fail("setup.py did not compile the metering core")
        pytest.skip("pure Python install (CHORES_PURE_PYTHON=1 or no compiler)")
    for module in CORE:
        built = Path(module.__file__)  # type: ignore[arg-type]
        source = PACKAGE / (module.__name__.rsplit(".", 1)[1] + ".py")
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built.name} is older than {source.name}: reinstall (pip install -e .)"
        )


def _source_module() -> ModuleType:
    """`chores/_usage.py` interpreted, whatever the installed `chores._usage` is."""
    spec = importlib.util.spec_from_file_location(
        "chores._usage_source", PACKAGE / "_usage.py", submodule_search_locations=None
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "chores"
    spec.loader.exec_module(module)
    return module


SOURCE = _source_module()


def _both(doc: Any, spawn_contexts: list[Any], head: LedgerHead | None) -> tuple[Any, Any]:
    options = {
        "spawn_contexts": spawn_contexts,
        "now": NOW,
        "max_tokens_per_run": 10**9,
        "future_skew_seconds": 300,
    }
    installed = chores._usage.assess(doc, head=head, **options)
    source_head = None if head is None else SOURCE.LedgerHead(head.seq, head.high_water)
    return installed, SOURCE.assess(doc, head=source_head, **options)


def test_the_source_module_is_interpreted() -> None:
    assert SOURCE.__file__.endswith("_usage.py")
    assert type(SOURCE.assess).__name__ == "function"


spawn_lists = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"ai_tokens": st.integers(0, 50_000), "ai_prompt_tokens": st.integers(0, 40_000)},
            optional={"task_id": st.text(max_size=5), "ai_cached_tokens": st.integers(-2, 9)},
        ),
        st.none(),
        st.just("not a mapping"),
    ),
    max_size=3,
)
heads = st.one_of(
    st.none(),
    st.builds(
        lambda seq, values: LedgerHead(seq, chores._usage.Counters(*values)),
        st.integers(1, 9),
        st.lists(st.integers(0, 300_000), min_size=4, max_size=4),
    ),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_runner(), spawn_lists, heads)
def test_installed_assess_equals_the_interpreted_source(
    doc: dict[str, Any], spawn_contexts: list[Any], head: LedgerHead | None
) -> None:
    installed, source = _both(doc, spawn_contexts, head)
    assert tuple(installed) == tuple(source)


def _observations(corpus: Any, fraction: float = 1.0) -> list[Observation]:
    """The AI runners of a corpus as they looked at `fraction` of their work, with their
    spawn findings' `_context`s."""
    spawns: dict[str, list[Any]] = defaultdict(list)
    for finding in corpus.findings:
        if finding.get("_type") == "ai" and finding.get("ai_type") == "task":
            spawns[str(finding["extra_data"]["runner_id"])].append(finding["_context"])
    return [
        (t, spawns.get(str(t["_id"]), [])) for t in corpus.at(fraction) if t.get("name") == "ai"
    ]


CORPUS = generate_corpus(
    seed=11,
    orgs=("acme", "globex"),
    runs_per_org=40,
    start=datetime(2026, 10, 1, tzinfo=UTC),
    days=40,
    malformed_share=0.1,
)


def test_installed_assess_equals_the_source_on_a_month_of_runners() -> None:
    heads: dict[Any, LedgerHead] = {}
    compared = billed = 0
    for _ in range(2):  # the second pass sees every runner with a head
        for doc, spawn_contexts in _observations(CORPUS):
            installed, source = _both(doc, spawn_contexts, heads.get(doc["_id"]))
            assert tuple(installed) == tuple(source)
            compared += 1
            if installed.delta is not None:
                billed += 1
                heads[doc["_id"]] = LedgerHead(installed.delta.seq, installed.delta.high_water)
    assert compared > 200 and billed > 100


def _line_amounts(lines: Any) -> list[tuple[Any, ...]]:
    return sorted(
        (line.model or "", line.tier, line.price_valid_from or "", line.tokens, line.amount_micros)
        for line in lines
    )


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

    assert len(invoiced) >= 4  # two orgs, two months
    assert priced == invoiced
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
        result = chores._usage.assess(
            doc,
            spawn_contexts=spawn_contexts,
            head=heads.get(doc["_id"]),
            now=NOW,
            max_tokens_per_run=10**9,
            future_skew_seconds=300,
        )
        delta = result.delta
        if delta is not None:
            heads[doc["_id"]] = LedgerHead(delta.seq, delta.high_water)
            # a Delta's fields but the runner id and the org, in order
            expected.append((delta.org, delta.period, (delta.seq, *tuple(delta)[3:])))

    assert records == expected
    assert sum(1 for _, _, usage in records if usage[0] == 2) > 20  # billed again, from a head
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
    assert sum(sum(tokens) for tokens in meter.usage.values()) == 150
    assert meter.deltas == 2
