"""Drafts built incrementally: a build reads only the entries no draft holds yet, and the
draft it writes is the one a full rebuild of its ledger gives (`Invoices.check_drafts`).

The crash at every write of this path, and every interleaving of two runs or a run and a
finalize, are in tests/faults/test_crash.py and tests/faults/test_interleavings.py; here are the
guarantees one by one.
"""

from __future__ import annotations

import copy
import functools
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import mongomock
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chores import Settings, finalize_invoices, run_chore
from chores.billing import invoices as invoices_module
from chores.billing.invoices import Invoices
from chores.metering.ledger import Ledger
from chores.run.pipeline import Pipeline
from pricing import Registry, load_registry

from support import ai_runner
from support.dbproxy import DatabaseProxy, PauseAt, Recorder, pause_at

CONFIG = Settings(mongo_url="mongomock://incremental", batch_size=20, redis_url=None)
NOW = datetime(2026, 11, 28, tzinfo=UTC)
NOVEMBER = ("acme", "2026-11")


class Died(Exception):
    """A process dying at a database call."""


def add_runners(db: Any, count: int, *, first: int = 0, org: str = "acme") -> int:
    """`count` finished AI runners in November; the tokens they hold."""
    start = datetime(2026, 11, 2, tzinfo=UTC)
    tokens = 0
    for n in range(first, first + count):
        ended = start + timedelta(hours=n)
        prompt, completion = 1_000 + n, 100 + n
        db.tasks.insert_one(
            {
                "name": "ai",
                "status": "SUCCESS",
                "end_time": ended,
                "last_updated_db": ended.timestamp(),
                "context": {
                    "workspace_id": org,
                    "ai_model": "gpt-4o-mini" if n % 3 else "gpt-4o",
                    "ai_tokens": prompt + completion,
                    "ai_prompt_tokens": prompt,
                    "ai_completion_tokens": completion,
                },
            }
        )
        tokens += prompt + completion
    return tokens


def invoice(db: Any, pair: tuple[str, str] = NOVEMBER) -> dict[str, Any]:
    found = db.billing_invoices.find_one({"_id": f"{pair[0]}:{pair[1]}"})
    assert found is not None
    return found


def model_lines(db: Any) -> dict[str, tuple[int, int | None]]:
    """The draft's lines by model: (tokens, amount in micro-USD)."""
    return {line["model"]: (line["tokens"], line["amount_micros"]) for line in invoice(db)["lines"]}


def invoiced_tokens(db: Any) -> int:
    return sum(line["tokens"] for line in invoice(db)["lines"])


@pytest.fixture
def db() -> Any:
    return mongomock.MongoClient(tz_aware=True)["main"]


@pytest.fixture
def registry() -> Any:
    return load_registry()


@pytest.fixture
def folded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of entries each draft build pass read from the ledger."""
    reads: list[int] = []
    unfolded = Ledger.unfolded

    def counting(self: Ledger, pairs: Any, *, limit: int) -> Any:
        found = unfolded(self, pairs, limit=limit)
        reads.append(len(found))
        return found

    monkeypatch.setattr(Ledger, "unfolded", counting)
    return reads


def test_a_rerun_reads_only_the_new_entries_and_equals_a_full_rebuild(db, registry, folded):
    truth = add_runners(db, 60)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert sum(folded) == 60
    folded.clear()
    truth += add_runners(db, 5, first=60)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert sum(folded) == 5  # not the 65 entries of the month
    assert invoiced_tokens(db) == truth
    assert invoice(db)["runs"] == 65 and invoice(db)["entries"] == 65
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []


def test_a_backlog_larger_than_one_pass_is_folded_in_as_many_passes(
    db, registry, folded, monkeypatch
):
    monkeypatch.setattr(Invoices, "FOLD_LIMIT", 7)
    truth = add_runners(db, 30) + add_runners(db, 4, first=30, org="globex")
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert sum(folded) == 34 and max(folded) == 7
    assert invoiced_tokens(db) + invoiced_tokens_of(db, "globex") == truth
    assert invoice(db)["pending_fold"] is None
    assert db.billing_ledger.count_documents({"fold": None}) == 0
    pairs = {NOVEMBER, ("globex", "2026-11")}
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts(pairs) == []


def invoiced_tokens_of(db: Any, org: str) -> int:
    return sum(line["tokens"] for line in invoice(db, (org, "2026-11"))["lines"])


def test_a_build_that_dies_between_its_commit_and_its_flags_is_finished_not_folded_again(
    db, registry
):
    truth = add_runners(db, 12)

    def die_at_the_flags(collection: str, method: str, perform: Any) -> Any:
        if (collection, method) == ("billing_ledger", "update_many"):
            raise Died("killed after the draft's commit, before its entries were flagged")
        return perform()

    with pytest.raises(Died):
        run_chore(
            DatabaseProxy(db, around=die_at_the_flags), now=NOW, registry=registry, settings=CONFIG
        )
    committed = invoice(db)
    assert len(committed["pending_fold"]["ids"]) == 12  # held by the draft, not yet flagged
    assert db.billing_ledger.count_documents({"fold": None}) == 12
    assert invoiced_tokens(db) == truth

    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert invoiced_tokens(db) == truth  # flagged by the rerun, not folded a second time
    assert invoice(db)["pending_fold"] is None
    assert db.billing_ledger.count_documents({"fold": None}) == 0
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []


def test_a_new_registry_reprices_the_stored_sums_without_reading_the_ledger(db, registry, folded):
    add_runners(db, 9)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    before = invoice(db)
    folded.clear()
    data = registry.model_dump()
    for entry in data["models"]:
        for price in entry["prices"]:
            price["input"], price["output"] = price["input"] * 2, price["output"] * 2
    doubled = Registry.model_validate({**data, "version": "doubled"})
    assert doubled.fingerprint != registry.fingerprint
    run_chore(db, now=NOW, registry=doubled, settings=CONFIG)
    after = invoice(db)
    assert sum(folded) == 0  # every entry was held already
    assert after["registry"] == doubled.fingerprint
    assert Decimal(after["total_micros"]) == pytest.approx(
        2 * Decimal(before["total_micros"]), abs=2
    )
    assert Pipeline(db, CONFIG, doubled).invoices.check_drafts({NOVEMBER}) == []


def test_tokens_billed_under_a_misspelt_model_are_priced_once_the_registry_knows_the_name(
    db, registry
):
    """A runner billed under a misspelt model, then corrected in its document: what it was
    billed stays where it was billed, on an unpriced line that needs review (the ledger is
    append-only), and its later tokens go on the model's line. Once the misspelling is an
    alias in the registry, the next run prices that usage: the draft follows the registry
    (docs/contract.md, "A runner whose model or key source changed")."""
    seen = datetime(2026, 11, 20, tzinfo=UTC)
    db.tasks.insert_one(
        ai_runner("r1", ended=None, status="RUNNING", model="gpt-4o-mni", stamp=seen.timestamp())
    )
    run_chore(db, now=seen + timedelta(minutes=5), registry=registry, settings=CONFIG)
    ended = seen + timedelta(hours=1)
    corrected = {"context.ai_model": "gpt-4o-mini", "context.ai_tokens": 1_500}
    corrected |= {"context.ai_prompt_tokens": 1_500, "status": "SUCCESS", "end_time": ended}
    corrected["last_updated_db"] = ended.timestamp()
    db.tasks.update_one({"_id": "r1"}, {"$set": corrected})
    run_chore(db, now=ended + timedelta(minutes=5), registry=registry, settings=CONFIG)
    assert model_lines(db) == {"gpt-4o-mni": (1_000, None), "gpt-4o-mini": (500, 75)}  # $0.15/M
    assert invoice(db)["needs_review"] is True

    data = registry.model_dump()
    for entry in data["models"]:
        if entry["id"] == "gpt-4o-mini":
            entry["aliases"] = [*entry["aliases"], "gpt-4o-mni"]
    knows_it = Registry.model_validate({**data, "version": "with-the-misspelling"})
    run_chore(db, now=ended + timedelta(minutes=10), registry=knows_it, settings=CONFIG)
    assert model_lines(db) == {"gpt-4o-mini": (1_500, 225)}
    assert (invoice(db)["needs_review"], invoice(db)["total_micros"]) == (False, 225)


def test_a_run_counts_a_runner_once_whatever_the_builds_it_spans(db, registry):
    """A runner seen running, then finished: two entries, folded by two builds, one run."""
    ended = datetime(2026, 11, 20, tzinfo=UTC)
    doc = {
        "_id": "r1",
        "name": "ai",
        "status": "RUNNING",
        "last_updated_db": (ended - timedelta(hours=1)).timestamp(),
        "context": {
            "workspace_id": "acme",
            "ai_model": "gpt-4o-mini",
            "ai_tokens": 500,
            "ai_prompt_tokens": 400,
            "ai_completion_tokens": 100,
        },
    }
    db.tasks.insert_one(doc)
    run_chore(db, now=ended - timedelta(minutes=30), registry=registry, settings=CONFIG)
    db.tasks.update_one(
        {"_id": "r1"},
        {
            "$set": {
                "status": "SUCCESS",
                "end_time": ended,
                "last_updated_db": ended.timestamp(),
                "context.ai_tokens": 1_500,
                "context.ai_prompt_tokens": 1_200,
                "context.ai_completion_tokens": 300,
            }
        },
    )
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert db.billing_ledger.count_documents({"runner_id": {"$exists": True}}) == 2
    assert invoice(db)["runs"] == 1 and invoiced_tokens(db) == 1_500
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []


@settings(max_examples=25, deadline=None)
@given(
    splits=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    fold_limit=st.integers(1, 40),
)
def test_any_split_of_the_month_into_runs_and_passes_gives_the_invoice_of_one_run(
    splits, fold_limit
):
    """Whatever the runs the month arrives in and the passes each build takes, the draft
    equals the one a single run over the whole month writes, line for line."""
    registry = load_registry()
    whole = mongomock.MongoClient(tz_aware=True)["main"]
    add_runners(whole, sum(splits))
    run_chore(whole, now=NOW, registry=registry, settings=CONFIG)

    split = mongomock.MongoClient(tz_aware=True)["main"]
    first = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Invoices, "FOLD_LIMIT", fold_limit)
        for count in splits:
            add_runners(split, count, first=first)
            first += count
            run_chore(split, now=NOW, registry=registry, settings=CONFIG)
    same = ("lines", "total_micros", "unpriced_tokens", "runs", "entries", "usage_groups")
    assert {f: invoice(split)[f] for f in same} == {f: invoice(whole)[f] for f in same}
    assert Pipeline(split, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []


def test_an_entry_that_only_moved_a_high_water_mark_is_no_line_and_no_run(db, registry):
    """Cached tokens beyond prompt tokens move the cached high-water mark and bill nothing:
    the entry is kept (a later drop is `counter_decreased`, SPEC §1.5) but is no line and no
    run, in the incremental build and the full rebuild alike, and finalizing is not held."""
    from chores import finalize_invoices

    truth = add_runners(db, 3)
    ended = datetime(2026, 11, 3, tzinfo=UTC)
    db.tasks.insert_one(
        {
            "name": "ai",
            "status": "SUCCESS",
            "end_time": ended,
            "last_updated_db": ended.timestamp(),
            "context": {"workspace_id": "acme", "ai_model": "gpt-4o-mini", "ai_cached_tokens": 40},
        }
    )
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert db.billing_ledger.count_documents({"tokens": 0}) == 1
    assert invoiced_tokens(db) == truth
    assert (invoice(db)["runs"], invoice(db)["entries"]) == (3, 3)
    assert all(line["tokens"] > 0 for line in invoice(db)["lines"])
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []
    december = datetime(2026, 12, 5, tzinfo=UTC)
    assert finalize_invoices(db, now=december, settings=CONFIG) == ["acme:2026-11"]
    assert invoice(db)["status"] == "final" and invoiced_tokens(db) == truth


def test_the_draft_check_agrees_with_a_draft_that_holds_late_lines(db, registry):
    """A November draft with a late October line (October final first) is what its ledger
    gives: the check compares groups, not the order the draft keeps them in."""
    november_5 = datetime(2026, 11, 5, tzinfo=UTC)

    def october_runner(day: int, tokens: int) -> None:
        ended = datetime(2026, 10, day, tzinfo=UTC)
        db.tasks.insert_one(
            {
                "name": "ai",
                "status": "SUCCESS",
                "end_time": ended,
                "last_updated_db": ended.timestamp() if day < 20 else NOW.timestamp(),
                "context": {"workspace_id": "acme", "ai_model": "gpt-4o", "ai_tokens": tokens},
            }
        )

    october_runner(10, 500)
    run_chore(db, now=november_5, registry=registry, settings=CONFIG)
    assert finalize_invoices(db, now=november_5, settings=CONFIG) == ["acme:2026-10"]
    truth = add_runners(db, 3)
    october_runner(20, 700)  # written after October was frozen: billed late in November
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert [line["late"] for line in invoice(db)["lines"]].count(True) == 1
    assert invoiced_tokens(db) == truth + 700
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []


REPRICED = {"id": "m1", "tier": "paid", "prices": [
    {"valid_from": "2020-01-01", "input": "1", "cached_input": "0.5", "output": "2"},
    {"valid_from": "2026-11-15", "input": "10", "cached_input": "1", "output": "20"},
]}  # fmt: skip


@pytest.mark.parametrize(
    ("first", "then", "total", "on_line", "review"),
    [
        # the tokens were used on the free model: reclassified there, at $0
        ({"ai_model": "ollama/llama3.1"}, {"ai_model": "claude-opus-4-1"}, 0, "free", False),
        # on the customer's key: charged 0, reclassified there
        ({"ai_model": "claude-opus-4-1", "ai_key_source": "byok"},
         {"ai_model": "claude-opus-4-1", "ai_key_source": "platform"}, 0, "byok", False),
        # on a model without a price: unpriced, reclassified there (still unpriced)
        ({"ai_model": "mystery-model-9000"}, {"ai_model": "claude-opus-4-1"}, 0, "paid", True),
        # before a price change: at the old prices ($1 input, $0.50 cached), not the new
        ({"ai_model": "m1"}, {"ai_model": "m1"}, 500_000, "paid", False),
        # the same line: as one step ($1.50 of cached opus)
        ({"ai_model": "claude-opus-4-1"}, {"ai_model": "claude-opus-4-1"}, 1_500_000, "paid",
         False),
    ],
)  # fmt: skip
def test_reclassified_tokens_are_priced_on_the_line_that_charged_them(
    db, registry, first, then, total, on_line, review
):
    """Review: a run seen with 1M tokens and no split, then with the split (all cached), on
    another model, key source or price: SPEC §1.6 moves the unsplit tokens to cached, and
    the move was priced on the new line (-1M unsplit at opus's $15, +1M cached at $1.50): a
    -$13.50 invoice. The move is booked on the line of the runner's previous entry, where
    the tokens were charged; the new usage (none here) on the new line."""
    from bson import ObjectId

    registry = Registry.model_validate(
        {"version": "repriced", "models": [*(m.model_dump() for m in registry.models), REPRICED]}
    )
    runner = ObjectId()

    def observe(now: datetime, **context: Any) -> None:
        doc = {"_id": runner, "name": "ai", "status": "RUNNING", "last_updated_db": now.timestamp(),
               "context": {"workspace_id": "acme", "ai_tokens": 1_000_000, **context}}  # fmt: skip
        if "ai_prompt_tokens" in context:
            doc.update(status="SUCCESS", end_time=now)
        db.tasks.replace_one({"_id": runner}, doc, upsert=True)
        run_chore(db, now=now + timedelta(minutes=1), registry=registry, settings=CONFIG)

    observe(datetime(2026, 11, 10, tzinfo=UTC), **first)
    split = {
        "ai_prompt_tokens": 1_000_000,
        "ai_completion_tokens": 0,
        "ai_cached_tokens": 1_000_000,
    }
    observe(datetime(2026, 11, 20, tzinfo=UTC), **then, **split)
    stored = invoice(db)
    assert (stored["total_micros"], stored["needs_review"]) == (total, review)
    (line,) = [line for line in stored["lines"] if line["tokens"]]
    assert (line["tier"], line["cached_tokens"], line["unsplit_tokens"]) == (on_line, 10**6, 0)
    assert [e["seq"] for e in db.billing_ledger.find({"runner_id": str(runner)})] == [1, 2]
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []


def _reclassifying_runner(db: Any, registry: Registry, days: tuple[datetime, datetime]) -> Any:
    """A runner seen with 1M opus tokens and no split on `days[0]` (metered), then ended on
    `days[1]` with the split (all cached) and 200K new output tokens (not yet metered)."""
    from bson import ObjectId

    runner, (seen, ended) = ObjectId(), days
    context = {"workspace_id": "acme", "ai_model": "claude-opus-4-1", "ai_tokens": 1_000_000}
    db.tasks.insert_one({"_id": runner, "name": "ai", "status": "RUNNING",
                         "last_updated_db": seen.timestamp(), "context": context})  # fmt: skip
    run_chore(db, now=seen, registry=registry, settings=CONFIG)
    split = {"ai_tokens": 1_200_000, "ai_prompt_tokens": 1_000_000,
             "ai_completion_tokens": 200_000, "ai_cached_tokens": 1_000_000}  # fmt: skip
    db.tasks.update_one({"_id": runner}, {"$set": {
        "status": "SUCCESS", "end_time": ended, "last_updated_db": ended.timestamp(),
        **{f"context.{k}": v for k, v in split.items()}}})  # fmt: skip
    return runner


def test_a_crash_between_the_move_and_the_new_usage_is_resumed_by_the_rerun(db, registry):
    """A reclassifying step writes the move, then the new usage: a run that dies between
    the two writes is resumed by the rerun, which bills the new usage from the move's
    mark."""
    days = (datetime(2026, 11, 10, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC))
    clean = mongomock.MongoClient(tz_aware=True)["main"]
    _reclassifying_runner(clean, registry, days)
    run_chore(clean, now=days[1], registry=registry, settings=CONFIG)

    runner = _reclassifying_runner(db, registry, days)
    append = Ledger.append

    def first_only_then_die(self: Ledger, entries: Any) -> list[Any]:
        assert [e["seq"] for e in entries] == [2]  # the move, alone in its write
        append(self, entries)
        raise Died("after the first entry")

    Ledger.append = first_only_then_die  # type: ignore[method-assign]
    try:
        with pytest.raises(Died):
            run_chore(db, now=days[1], registry=registry, settings=CONFIG)
    finally:
        Ledger.append = append  # type: ignore[method-assign]
    run_chore(db, now=days[1], registry=registry, settings=CONFIG)

    def billed(database: Any) -> list[tuple[Any, ...]]:
        return [(e["seq"], e["model"], e["usage_day"], e["tokens"], e["unsplit_tokens"])
                for e in database.billing_ledger.find(sort=[("seq", 1)])]  # fmt: skip

    assert (
        billed(db)
        == billed(clean)
        == [
            (1, "claude-opus-4-1", "2026-11-10", 1_000_000, 1_000_000),
            (2, "claude-opus-4-1", "2026-11-10", 0, -1_000_000),
            (3, "claude-opus-4-1", "2026-11-20", 200_000, 0),
        ]
    )
    assert invoice(db)["total_micros"] == invoice(clean)["total_micros"] == 1_500_000 + 15_000_000
    assert db.billing_ledger.count_documents({"runner_id": str(runner)}) == 3


def test_a_move_out_of_a_final_month_is_a_late_credit_that_flags_the_open_invoice(db, registry):
    """October charged 1M opus tokens at the input rate ($15); the split, seen in November
    after October was final, says they were cached ($1.50): the move is October's usage,
    booked late on November's invoice, a -$13.50 credit line there (SPEC §1.6, never a
    change to a final), which flags it; November's own 200K output tokens bill $15."""
    days = (datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 10, tzinfo=UTC))
    _reclassifying_runner(db, registry, days)
    assert finalize_invoices(db, now=datetime(2026, 11, 5, tzinfo=UTC), settings=CONFIG) == [
        "acme:2026-10"
    ]
    run_chore(db, now=days[1], registry=registry, settings=CONFIG)
    october = invoice(db, ("acme", "2026-10"))
    assert (october["status"], october["total_micros"]) == ("final", 15_000_000)
    november = invoice(db)
    late = [line for line in november["lines"] if line["late"]]
    assert [(ln["tokens"], ln["amount_micros"]) for ln in late] == [(0, -13_500_000)]
    assert (november["total_micros"], november["needs_review"]) == (1_500_000, True)


def test_a_reclassifying_step_whose_move_another_run_wrote_first_writes_nothing_after_it(
    db, registry
):
    """Review of 52d2f90: two runs on one head (seq 1). Run A read the total grown without
    its split and wrote seq 2; run B, which read the split caught up, saw its move (seq 2)
    refused, yet its seq 3, computed from its own mark, landed: 1,000 tokens billed twice,
    for good. B now writes an entry only after the one before it, and reads the runner
    again: the ledger ends on the highest counters, billed once."""
    from bson import ObjectId

    runner, seen = ObjectId(), datetime(2026, 11, 10, tzinfo=UTC)

    def put(now: datetime, total: int, prompt: int, completion: int) -> None:
        context = {"workspace_id": "acme", "ai_model": "claude-opus-4-1", "ai_tokens": total,
                   "ai_prompt_tokens": prompt, "ai_completion_tokens": completion}  # fmt: skip
        db.tasks.replace_one({"_id": runner}, {"_id": runner, "name": "ai", "status": "RUNNING",
                             "last_updated_db": now.timestamp(), "context": context},
                             upsert=True)  # fmt: skip

    put(seen, 1_000, 0, 0)
    run_chore(db, now=seen, registry=registry, settings=CONFIG)
    later = seen + timedelta(minutes=5)
    put(later, 2_000, 1_500, 500)
    append = Ledger.append

    def run_a_first(self: Ledger, entries: Any) -> list[Any]:
        Ledger.append = append  # type: ignore[method-assign]
        put(later, 2_000, 0, 0)  # what run A read
        run_chore(db, now=later, registry=registry, settings=CONFIG)
        put(later, 2_000, 1_500, 500)
        return append(self, entries)

    Ledger.append = run_a_first  # type: ignore[method-assign]
    try:
        run_chore(db, now=later, registry=registry, settings=CONFIG)  # run B
    finally:
        Ledger.append = append  # type: ignore[method-assign]
    for minutes in (10, 15):
        run_chore(db, now=later + timedelta(minutes=minutes), registry=registry, settings=CONFIG)

    lines = invoice(db)["lines"]
    kinds = [sum(line[k] for line in lines) for k in ("input_tokens", "output_tokens",
                                                      "unsplit_tokens", "tokens")]  # fmt: skip
    assert kinds == [1_500, 500, 0, 2_000]
    assert invoice(db)["total_micros"] == 1_500 * 15 + 500 * 75  # 60,000 µ$


def test_a_final_is_flagged_for_what_stands_when_it_is_frozen_not_for_a_stale_draft(db, settings):
    """Property check: a subagent held under acme (`baseline_missing`) moved to globex; a
    run of globex moved the anomaly, and acme's draft kept its flag until an acme run. A
    finalize before one froze acme's month flagged for good, with nothing open on it."""

    def subagent(org: str, at: datetime) -> dict[str, Any]:
        doc = ai_runner("r1", ended=None, status="RUNNING", org=org, stamp=at.timestamp())
        doc["context"].update(subagent="s", ai_subagent_depth=1)
        return doc

    db.tasks.insert_one(subagent("acme", datetime(2026, 9, 9, tzinfo=UTC)))
    run_chore(db, now=datetime(2026, 9, 10, tzinfo=UTC), settings=settings)
    assert db.billing_invoices.find_one({"_id": "acme:2026-09"})["needs_review"] is True
    db.tasks.replace_one({"_id": "r1"}, subagent("globex", datetime(2026, 9, 22, tzinfo=UTC)))
    run_chore(db, org="globex", now=datetime(2026, 9, 26, tzinfo=UTC), settings=settings)

    frozen = finalize_invoices(db, now=datetime(2026, 10, 5, tzinfo=UTC), settings=settings)

    assert "acme:2026-09" in frozen
    acme = db.billing_invoices.find_one({"_id": "acme:2026-09"})
    assert (acme["status"], acme["needs_review"]) == ("final", False)
    globex = db.billing_invoices.find_one({"_id": "globex:2026-09"})
    assert (globex["status"], globex["needs_review"]) == ("final", True)  # it is open there


def _pause_finalize_before(
    db: Any, call: tuple[str, str], meanwhile: Any, *, every: bool = False
) -> Any:
    """A database whose first `call` (collection, method), or each when `every`, runs
    `meanwhile` first."""
    from support.dbproxy import DatabaseProxy

    done: list[bool] = []

    def around(collection, method, perform):  # type: ignore[no-untyped-def]
        if (collection, method) == call and (every or not done):
            done.append(True)
            meanwhile()
        return perform()

    return DatabaseProxy(db, around=around)


def test_a_run_that_changes_nothing_does_not_refuse_a_freeze(db, settings):
    """Review: the freeze required the draft's build ticket to be the one its lines were
    read with; a run between, settling the finalize's own dirty mark, rebuilt the draft
    unchanged under a new ticket, and every attempt was refused."""
    from support import ai_runner

    db.tasks.insert_one(ai_runner("r1", ended=datetime(2026, 9, 9, tzinfo=UTC)))
    run_chore(db, now=datetime(2026, 9, 10, tzinfo=UTC), settings=settings)
    october = datetime(2026, 10, 5, tzinfo=UTC)

    def run_between() -> None:
        run_chore(db, now=october, settings=settings, full=True)

    # before every attempt's compare-and-set
    call = ("billing_invoices", "update_one")
    proxy = _pause_finalize_before(db, call, run_between, every=True)
    assert finalize_invoices(proxy, now=october, settings=settings) == ["acme:2026-09"]


def test_an_anomaly_recorded_while_its_month_is_frozen_unflagged_flags_the_open_month(db, settings):
    """Review: a run recorded an anomaly on September after the finalize had read the open
    anomalies; the final was frozen unflagged, and the anomaly, open on a final, stayed
    there for good (as if the final had been frozen flagged for it)."""
    from support import ai_runner

    db.tasks.insert_one(ai_runner("r1", ended=datetime(2026, 9, 9, tzinfo=UTC)))
    run_chore(db, now=datetime(2026, 9, 10, tzinfo=UTC), settings=settings)
    october = datetime(2026, 10, 5, tzinfo=UTC)
    broken = ai_runner("r2", ended=datetime(2026, 9, 20, tzinfo=UTC), tokens="bad")
    broken["last_updated_db"] = october.timestamp()

    def record_an_anomaly() -> None:
        db.tasks.insert_one(broken)
        run_chore(db, now=october, settings=settings)

    proxy = _pause_finalize_before(db, ("billing_invoices", "update_one"), record_an_anomaly)
    finalize_invoices(proxy, now=october, settings=settings)
    september = db.billing_invoices.find_one({"_id": "acme:2026-09"})
    assert (september["status"], september["needs_review"]) == ("final", False)
    assert db.billing_anomalies.find_one({})["period"] == "2026-09"
    run_chore(db, now=october + timedelta(minutes=5), settings=settings, full=True)
    anomaly = db.billing_anomalies.find_one({})
    assert (anomaly["period"], anomaly["resolved"]) == ("2026-10", False)
    assert db.billing_invoices.find_one({"_id": "acme:2026-10"})["needs_review"] is True


def test_an_anomaly_of_a_final_month_lands_on_a_flagged_final_not_on_every_open_month(db, settings):
    """Review: an anomaly whose own month was final was placed in the open month, then in
    the next open month at the first full pass of it, before the one before was frozen:
    every month was frozen unflagged, none for it."""
    from support import ai_runner

    db.tasks.insert_one(ai_runner("r1", ended=datetime(2026, 9, 9, tzinfo=UTC)))
    run_chore(db, now=datetime(2026, 9, 10, tzinfo=UTC), settings=settings)
    finalize_invoices(db, now=datetime(2026, 10, 5, tzinfo=UTC), settings=settings)
    broken = ai_runner("r2", ended=datetime(2026, 9, 20, tzinfo=UTC), tokens="bad")
    broken["last_updated_db"] = datetime(2026, 10, 6, tzinfo=UTC).timestamp()
    db.tasks.insert_one(broken)

    for day in ("2026-10-06", "2026-11-02", "2026-11-05", "2026-12-02", "2026-12-05"):
        at = datetime.fromisoformat(day).replace(tzinfo=UTC)
        run_chore(db, now=at, settings=settings, full=True)
        finalize_invoices(db, now=at, settings=settings)

    anomaly = db.billing_anomalies.find_one({})
    assert (anomaly["period"], anomaly["resolved"]) == ("2026-10", False)
    october = db.billing_invoices.find_one({"_id": "acme:2026-10"})
    assert (october["status"], october["needs_review"]) == ("final", True)
    assert not db.billing_invoices.find_one({"_id": "acme:2026-11", "needs_review": True})


def test_a_draft_without_lines_is_never_frozen_nor_holds_up_the_others(db, settings):
    """Review: a draft with no `lines` field (not one this package writes) was frozen with
    needs_review False though it held unpriced tokens; then, frozen as it stood. Now it is
    refused (`MalformedDocument`), and every other due draft is frozen all the same."""
    from chores.core.exceptions import MalformedDocument

    from support import ai_runner

    ended = datetime(2026, 9, 9, tzinfo=UTC)
    db.tasks.insert_one(ai_runner("r1", ended=ended, model="nope"))
    db.tasks.insert_one(ai_runner("r2", org="beta", ended=ended))
    run_chore(db, now=datetime(2026, 9, 10, tzinfo=UTC), settings=settings)
    db.billing_invoices.update_one({"_id": "acme:2026-09"}, {"$unset": {"lines": ""}})
    said = "^finalized beta:2026-09; refused 1 draft edited by hand: the billing_invoices "
    said += "document 'acme:2026-09'"
    with pytest.raises(MalformedDocument, match=said):
        finalize_invoices(db, now=datetime(2026, 10, 5, tzinfo=UTC), settings=settings)
    assert db.billing_invoices.find_one({"_id": "acme:2026-09"})["status"] == "draft"
    assert db.billing_invoices.find_one({"_id": "beta:2026-09"})["status"] == "final"


@pytest.mark.parametrize(("fold_limit", "held", "new"), [(5_000, 12, 3), (4, 10, 9)])
def test_a_removed_draft_is_rebuilt_whole_by_the_next_run_with_usage(
    db, registry, monkeypatch, fold_limit, held, new
):
    """A removed draft's entries stayed folded: the next run wrote a draft of the new usage
    alone. Also with a backlog folded in several passes (`FOLD_LIMIT` 4)."""
    monkeypatch.setattr(Invoices, "FOLD_LIMIT", fold_limit)
    truth = add_runners(db, held)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    db.billing_invoices.delete_one({"_id": "acme:2026-11"})
    truth += add_runners(db, new, first=held)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert invoiced_tokens(db) == truth
    assert invoice(db)["runs"] == held + new and invoice(db)["entries"] == held + new
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []


def test_a_removed_draft_is_rebuilt_by_a_full_pass_with_nothing_new(db, registry):
    add_runners(db, 12)
    add_runners(db, 2, org="globex")
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    before = invoice(db)
    db.billing_invoices.delete_one({"_id": before["_id"]})
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)  # nothing new: not rebuilt
    assert db.billing_invoices.find_one({"_id": before["_id"]}) is None
    report = run_chore(db, now=NOW, registry=registry, settings=CONFIG, full=True)
    assert report.invoices == [before["_id"]]  # globex's draft was there: left alone
    after = invoice(db)
    assert after["lines"] == before["lines"]
    assert (after["total_micros"], after["runs"], after["entries"]) == (
        before["total_micros"],
        before["runs"],
        before["entries"],
    )
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []


def test_a_full_pass_rebuilds_an_edited_draft_from_its_ledger_and_says_so(db, registry):
    """Review: tokens added by hand to a draft's stored sums (`usage_groups`) were billed
    by every later run, and no run repaired them. A full pass starts every draft from what
    its ledger holds; an exact draft with nothing new is left alone."""
    add_runners(db, 12)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    before = invoice(db)
    groups = copy.deepcopy(before["usage_groups"])
    groups[0]["input"] += 1_000_000
    db.billing_invoices.update_one(
        {"_id": before["_id"]}, {"$set": {"usage_groups": groups}, "$inc": {"runs": 2}}
    )
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) != []

    report = run_chore(db, now=NOW, registry=registry, settings=CONFIG, full=True)

    assert report.repaired_drafts == [before["_id"]]
    after = invoice(db)
    for field in ("lines", "total_micros", "runs", "entries", "usage_groups"):
        assert after[field] == before[field], field
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []
    again = run_chore(db, now=NOW, registry=registry, settings=CONFIG, full=True)
    assert (again.repaired_drafts, again.invoices) == ([], [])
    assert invoice(db)["updated_at"] == after["updated_at"]


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("amount_micros", lambda amount: amount + 1_000_000),  # the total left as it was
        ("input_tokens", float),  # the same count, not the whole number the chore writes
    ],
)
def test_a_full_pass_writes_back_a_line_edited_in_a_draft_and_names_it(db, registry, field, edit):
    """A draft's lines are compared as written, type included, with what its sums price to:
    a line's amount edited alone, or a count edited to a float of the same value, is
    repaired by a full pass and named in `repaired_drafts` (found by mutation testing)."""
    add_runners(db, 6)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    before = invoice(db)
    edited = edit(before["lines"][0][field])
    db.billing_invoices.update_one({"_id": before["_id"]}, {"$set": {f"lines.0.{field}": edited}})

    report = run_chore(db, now=NOW, registry=registry, settings=CONFIG, full=True)

    assert report.repaired_drafts == [before["_id"]]
    after = invoice(db)
    assert after["lines"] == before["lines"]
    assert type(after["lines"][0][field]) is int


def test_a_draft_written_before_drafts_kept_a_build_ticket_takes_new_usage(db, registry):
    """A draft with no `build_ticket` and no stored sums (written before drafts kept them)
    is built over, not refused at every try: the new runner's tokens reach it."""
    truth = add_runners(db, 3)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    db.billing_invoices.update_one(
        {"_id": "acme:2026-11"}, {"$unset": {"build_ticket": "", "usage_groups": ""}}
    )
    truth += add_runners(db, 1, first=3)

    run_chore(db, now=NOW + timedelta(hours=1), registry=registry, settings=CONFIG)

    assert "build_ticket" in invoice(db)
    assert invoiced_tokens(db) == truth
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []


def test_usage_swept_late_into_the_open_month_leaves_no_dirty_mark(db, registry):
    """Once the open month's draft holds the late lines, its dirty mark is gone: a mark
    left would have every later run build that draft again."""
    add_runners(db, 3)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    december = datetime(2026, 12, 6, tzinfo=UTC)
    assert finalize_invoices(db, now=december, settings=CONFIG) == ["acme:2026-11"]
    add_runners(db, 1, first=20)  # November usage, first read after its month was frozen

    run_chore(db, now=december, registry=registry, settings=CONFIG)

    assert any(line["late"] for line in invoice(db, ("acme", "2026-12"))["lines"])
    assert list(db.billing_dirty.find()) == []


@pytest.mark.parametrize(
    ("edit", "full"),
    [
        pytest.param(lambda db: None, False, id="new registry: beta's draft not repriced"),
        pytest.param(
            lambda db: db.billing_invoices.update_one(
                {"_id": "beta:2026-11"}, {"$inc": {"total_micros": 1}}
            ),
            True,
            id="beta's edited draft not repaired",
        ),
        pytest.param(
            lambda db: db.billing_invoices.delete_one({"_id": "beta:2026-11"}),
            True,
            id="beta's removed draft not rebuilt",
        ),
    ],
)
def test_a_run_of_one_org_writes_no_invoice_of_another(db, registry, edit, full):
    """SPEC §4: one org's run never touches another org's billing. A run of acme, with a
    new registry or as a full pass, leaves beta's draft as it finds it: stale, edited or
    removed, beta's own run repairs it."""
    add_runners(db, 3)
    add_runners(db, 3, org="beta")
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    edit(db)
    before = db.billing_invoices.find_one({"_id": "beta:2026-11"})
    repriced = Registry.model_validate(
        {**registry.model_dump(mode="json"), "version": f"{registry.version}-next"}
    )
    assert repriced.fingerprint != registry.fingerprint

    run_chore(db, org="acme", now=NOW, registry=repriced, settings=CONFIG, full=full)

    assert db.billing_invoices.find_one({"_id": "beta:2026-11"}) == before
    assert invoice(db)["registry"] == repriced.fingerprint


def test_a_commit_over_a_draft_another_build_replaced_is_built_again_not_lost(
    db, registry, monkeypatch
):
    """Another build commits the draft (a newer `build_ticket`, without the 3 new entries:
    it read before they landed) between this build's read and its commit. The commit
    matches nothing: the pass reads again rather than flag the entries folded into a draft
    that does not hold them (design.md: an entry is flagged only after a commit that holds
    it). No test of tests/faults reaches this path (mutation testing)."""
    truth = add_runners(db, 12)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    truth += add_runners(db, 3, first=12)
    commit = invoices_module.update_where
    replaced: list[int] = []

    def replaced_first(collection: Any, updates: Any) -> Any:
        if not replaced and any(w["_id"] == "acme:2026-11" and not new for w, _, new in updates):
            ticket = db.billing_counters.find_one_and_update(
                {"_id": "draft_builds"}, {"$inc": {"value": 1}}, return_document=True
            )["value"]
            db.billing_invoices.update_one(
                {"_id": "acme:2026-11"}, {"$set": {"build_ticket": ticket}}
            )
            replaced.append(ticket)
        return commit(collection, updates)

    monkeypatch.setattr(invoices_module, "update_where", replaced_first)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)

    assert replaced
    assert (invoice(db)["entries"], invoiced_tokens(db)) == (15, truth)
    assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == []


@pytest.mark.parametrize(
    ("refused", "passes", "written"),
    [
        pytest.param({"acme:2026-11", "globex:2026-11"}, 3, [], id="every pass refused"),
        # acme committed on the first pass, then three refused for globex
        pytest.param({"globex:2026-11"}, 4, ["acme:2026-11"], id="a commit restarts the count"),
    ],
)
def test_a_rebuild_gives_up_after_three_passes_refused_in_a_row(
    db, registry, monkeypatch, refused, passes, written
):
    """design.md: three refusals in a row and the settle keeps its marks (the next run
    builds the draft); a pass that commits something starts the count again."""
    add_runners(db, 1)
    add_runners(db, 1, first=1, org="globex")
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    commit = invoices_module.update_where
    calls: list[int] = []

    def refusing(collection: Any, updates: Any) -> Any:
        calls.append(len(updates))
        assert len(calls) <= 10, "the rebuild never gives up"
        kept = [u for u in updates if u[0]["_id"] not in refused]
        commit(collection, kept)
        return {i for i, u in enumerate(updates) if u[0]["_id"] in refused}, 0

    monkeypatch.setattr(invoices_module, "update_where", refusing)
    pairs = {NOVEMBER, ("globex", "2026-11")}
    rebuilt = Pipeline(db, CONFIG, registry).invoices.rebuild(pairs, NOW)

    assert len(calls) == passes
    assert rebuilt.written == written
    assert rebuilt.unsettled == {tuple(i.split(":")) for i in refused}


def test_a_rebuild_of_a_month_with_nothing_writes_no_invoice(db, registry):
    """A pair with no entries, no draft and no open anomaly (a mark whose entries never
    landed) gets no invoice: an empty one is written only over one, or to flag a review."""
    add_runners(db, 2, org="globex")
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    rebuilt = Pipeline(db, CONFIG, registry).invoices.rebuild({NOVEMBER}, NOW)
    assert rebuilt.written == []
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"}) is None


def test_the_draft_check_leaves_finals_out_and_names_a_removed_draft(db, registry):
    add_runners(db, 3)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    check = Pipeline(db, CONFIG, registry).invoices
    db.billing_invoices.delete_one({"_id": "acme:2026-11"})
    [removed] = check.check_drafts({NOVEMBER})
    assert removed.startswith("acme:2026-11: draft holds 0 entries of 0 runs, the ledger 3 of 3")

    run_chore(db, now=NOW, registry=registry, settings=CONFIG, full=True)
    december = datetime(2026, 12, 5, tzinfo=UTC)
    assert finalize_invoices(db, now=december, settings=CONFIG) == ["acme:2026-11"]
    # frozen before drafts kept sums: a final holds what it held, no draft to check
    db.billing_invoices.update_one({"_id": "acme:2026-11"}, {"$unset": {"usage_groups": ""}})
    assert check.check_drafts({NOVEMBER}) == []


def test_a_draft_written_before_drafts_kept_sums_is_no_stored_sums_problem(db, registry):
    """Its next build folds the period; only sums removed from a draft that kept them are
    an edit (`reconcile` says so)."""
    add_runners(db, 3)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    edit = {"$unset": {"build_ticket": "", "usage_groups": ""}}
    db.billing_invoices.update_one({"_id": "acme:2026-11"}, edit)
    assert Pipeline(db, CONFIG, registry).invoices.stored_sums_problem(*NOVEMBER) is None


def test_a_full_pass_that_records_or_heals_an_anomaly_names_no_draft_repaired(db, registry):
    """Review: once the full pass wrote a draft whose flag was stale, a full pass that
    recorded an anomaly on a draft, or healed one, named that draft as repaired ("an
    edit?") although only its flag changed, as every run's does."""
    add_runners(db, 3)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert invoice(db)["needs_review"] is False
    stamp = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
    context = {"workspace_id": "acme", "ai_model": "gpt-4o", "ai_tokens": "many"}
    ended = datetime(2026, 11, 20, tzinfo=UTC)
    bad = {"name": "ai", "status": "SUCCESS", "end_time": ended, "last_updated_db": stamp}
    bad["context"] = context
    runner_id = db.tasks.insert_one(bad).inserted_id
    recorded = run_chore(db, now=NOW, registry=registry, settings=CONFIG, full=True)
    assert (recorded.repaired_drafts, invoice(db)["needs_review"]) == ([], True)
    fixed = {"context.ai_tokens": 500, "last_updated_db": stamp + 1}
    db.tasks.update_one({"_id": runner_id}, {"$set": fixed})
    healed = run_chore(db, now=NOW, registry=registry, settings=CONFIG, full=True)
    assert (healed.repaired_drafts, invoice(db)["needs_review"]) == ([], False)


@pytest.mark.parametrize(
    "edit", [{"$unset": {"usage_groups": ""}}, {"$set": {"usage_groups": None}}]
)
def test_a_draft_whose_stored_sums_were_removed_starts_from_its_ledger(db, registry, edit):
    """Review: a draft whose `usage_groups` was removed by hand was read as one written
    before drafts kept sums: the next run billed $0 (its entries flagged folded), reconcile
    said nothing, and with `null` reconcile crashed (TypeError)."""
    add_runners(db, 12)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    before = invoice(db)
    db.billing_invoices.update_one({"_id": before["_id"]}, edit)
    meter = Pipeline(db, CONFIG, registry)
    problem = meter.invoices.stored_sums_problem(*NOVEMBER)
    assert problem is not None and problem.startswith("its stored sums (usage_groups) are")
    assert problem.endswith("an edit (the next run starts the draft from its ledger)")
    # absent, it may also be a draft of a version that kept tickets and no sums yet
    assert ("written before drafts kept them" in problem) == ("$unset" in edit), problem

    report = run_chore(db, now=NOW, registry=registry, settings=CONFIG)  # not a full pass

    assert report.repaired_drafts == [before["_id"]]
    after = invoice(db)
    for field in ("lines", "total_micros", "runs", "entries", "usage_groups"):
        assert after[field] == before[field], field
    assert meter.invoices.stored_sums_problem(*NOVEMBER) is None


def test_a_removed_final_is_rebuilt_by_a_full_pass_and_frozen_again_as_it_was(db, registry):
    add_runners(db, 8)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    december = datetime(2026, 12, 10, tzinfo=UTC)
    assert finalize_invoices(db, now=december, settings=CONFIG) == ["acme:2026-11"]
    before = invoice(db)
    db.billing_invoices.delete_one({"_id": before["_id"]})
    run_chore(db, now=december, registry=registry, settings=CONFIG, full=True)
    assert invoice(db)["status"] == "draft"
    assert finalize_invoices(db, now=december, settings=CONFIG) == ["acme:2026-11"]
    after = invoice(db)
    assert after["status"] == "final"
    assert (after["lines"], after["total_micros"], after["entries"]) == (
        before["lines"],
        before["total_micros"],
        before["entries"],
    )


def test_a_draft_removed_while_a_run_builds_it_is_never_written_back_short(registry):
    """Review: a run that read the draft, paused before its commit while another run billed
    more and the draft was removed, upserted what it had read (15 of 17 entries, short
    for good: the draft then existed, so nothing rebuilt it). Explored at every database
    call of the paused run; then a rerun."""

    def seeded() -> tuple[Any, int]:
        db = mongomock.MongoClient(tz_aware=True)["main"]
        truth = add_runners(db, 12)
        run_chore(db, now=NOW, registry=registry, settings=CONFIG)
        return db, truth + add_runners(db, 3, first=12)

    recorder = Recorder()
    run_chore(
        DatabaseProxy(seeded()[0], around=recorder), now=NOW, registry=registry, settings=CONFIG
    )
    assert "billing_invoices.bulk_write" in recorder.calls
    for k in range(1, len(recorder.calls) + 1):
        db, truth = seeded()
        lock, pause = threading.Lock(), PauseAt(k)
        truth += add_runners(db, 2, first=20)

        def meanwhile(db: Any = db, lock: threading.Lock = lock) -> None:
            run_chore(DatabaseProxy(db, lock=lock), now=NOW, registry=registry, settings=CONFIG)
            db.billing_invoices.delete_one({"_id": "acme:2026-11"})

        paused = DatabaseProxy(db, around=pause, lock=lock)
        raised = pause_at(
            functools.partial(run_chore, paused, now=NOW, registry=registry, settings=CONFIG),
            pause,
            meanwhile,
        )
        where = (k, recorder.calls[k - 1])
        assert raised is None, where
        run_chore(db, now=NOW, registry=registry, settings=CONFIG)
        # Removed after the last build, with nothing new since: no draft until a full pass.
        if db.billing_invoices.find_one({"_id": "acme:2026-11"}) is not None:
            assert (invoiced_tokens(db), invoice(db)["entries"]) == (truth, 17), where
        run_chore(db, now=NOW, registry=registry, settings=CONFIG, full=True)
        assert (invoiced_tokens(db), invoice(db)["entries"]) == (truth, 17), where
        assert Pipeline(db, CONFIG, registry).invoices.check_drafts({NOVEMBER}) == [], where


def test_a_removed_final_is_frozen_again_by_one_finalize_whatever_its_old_token(db, registry):
    """Review: the rebuilt draft counted its finalize tokens from 1 again, and the period's
    entries kept the old final's token (5 here): each finalize tried 3 tokens, so it took
    two finalizes to freeze it again."""
    add_runners(db, 8)
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    december = datetime(2026, 12, 10, tzinfo=UTC)
    for _ in range(4):  # a draft's token counted up by refused freezes
        db.billing_invoices.update_one({"_id": "acme:2026-11"}, {"$inc": {"fence": 1}})
    assert finalize_invoices(db, now=december, settings=CONFIG) == ["acme:2026-11"]
    before = invoice(db)
    assert before["closed_fence"] == 5
    db.billing_invoices.delete_one({"_id": before["_id"]})
    run_chore(db, now=december, registry=registry, settings=CONFIG, full=True)
    assert finalize_invoices(db, now=december, settings=CONFIG) == ["acme:2026-11"]
    after = invoice(db)
    assert after["closed_fence"] == 6
    assert (after["lines"], after["total_micros"]) == (before["lines"], before["total_micros"])


def test_a_sweep_that_read_a_final_since_removed_moves_nothing_its_rebuilt_month_holds(registry):
    """Review: a finalize paused in its sweep (the finals read), while the final was removed
    and a run rebuilt the month with more usage, then moved the rebuilt draft's entries
    into December as late usage: billed twice (24,612 tokens invoiced of 18,972). With
    the month frozen again meanwhile, its new final's entries moved too. Explored at every
    database call of the finalize."""
    december = datetime(2026, 12, 2, tzinfo=UTC)

    def finalize(db: Any) -> list[str]:
        return finalize_invoices(db, now=december, grace=timedelta(0), settings=CONFIG)

    def seeded() -> tuple[Any, int]:
        db = mongomock.MongoClient(tz_aware=True)["main"]
        truth = add_runners(db, 12)
        run_chore(db, now=NOW, registry=registry, settings=CONFIG)
        assert finalize(db) == ["acme:2026-11"]
        return db, truth + add_runners(db, 3, first=12)

    recorder = Recorder()
    finalize(DatabaseProxy(seeded()[0], around=recorder))
    for refreeze in (False, True):
        for k in range(1, len(recorder.calls) + 1):
            db, truth = seeded()
            lock, pause = threading.Lock(), PauseAt(k)

            def meanwhile(
                db: Any = db, lock: threading.Lock = lock, again: bool = refreeze
            ) -> None:
                proxy = DatabaseProxy(db, lock=lock)
                proxy.billing_invoices.delete_one({"_id": "acme:2026-11"})
                run_chore(proxy, now=december, registry=registry, settings=CONFIG)
                if again:
                    finalize(proxy)

            paused = functools.partial(finalize, DatabaseProxy(db, around=pause, lock=lock))
            where = (refreeze, k, recorder.calls[k - 1])
            assert pause_at(paused, pause, meanwhile) is None, where
            run_chore(db, now=december, registry=registry, settings=CONFIG, full=True)
            finalize(db)
            run_chore(db, now=december, registry=registry, settings=CONFIG, full=True)
            invoiced = sum(
                line["tokens"] for doc in db.billing_invoices.find() for line in doc["lines"]
            )
            assert invoiced == truth, where
            drafts = {
                (d["org"], d["period"]) for d in db.billing_invoices.find({"status": "draft"})
            }
            assert Pipeline(db, CONFIG, registry).invoices.check_drafts(drafts) == [], where


def test_a_lagging_run_adds_its_usage_without_moving_the_drafts_time_back(db, settings, registry):
    """Outside review: a run whose `now` lagged the draft's last writer's (a replay, a
    lagging host) stamped the draft with its own, older `now`. The draft holds what both
    runs found, and says when it was last written by the later of the two clocks."""
    from bson import ObjectId

    def ended(day: int, tokens: int, *, written: datetime) -> dict[str, Any]:
        end = datetime(2026, 11, day, tzinfo=UTC)
        return {
            "_id": ObjectId(),
            "name": "ai",
            "status": "SUCCESS",
            "end_time": end,
            "last_updated_db": written.timestamp(),
            "context": {
                "workspace_id": "acme",
                "ai_model": "gpt-4o-mini",
                "ai_tokens": tokens,
                "ai_prompt_tokens": tokens,
                "ai_completion_tokens": 0,
            },
        }

    later, lagging = datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 15, tzinfo=UTC)
    db.tasks.insert_one(ended(10, 1_000_000, written=datetime(2026, 11, 10, tzinfo=UTC)))
    run_chore(db, org="acme", now=later, registry=registry, settings=settings)
    first = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    db.tasks.insert_one(ended(5, 2_000_000, written=datetime(2026, 11, 14, tzinfo=UTC)))
    report = run_chore(db, org="acme", now=lagging, registry=registry, settings=settings)

    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert report.tokens_billed == 2_000_000
    assert draft["total_micros"] == 3 * first["total_micros"]  # gpt-4o-mini input, 3M tokens
    assert draft["updated_at"] == first["updated_at"] == later

    # Nor does a finalize date the final before its last draft (review).
    written = datetime(2026, 12, 10, tzinfo=UTC)
    db.tasks.insert_one(ended(25, 1_000_000, written=datetime(2026, 12, 9, tzinfo=UTC)))
    run_chore(db, org="acme", now=written, registry=registry, settings=settings)
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["updated_at"] == written
    lagging_finalize = datetime(2026, 12, 5, tzinfo=UTC)  # past November's grace too
    assert finalize_invoices(db, now=lagging_finalize, settings=settings) == ["acme:2026-11"]
    final = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert final["status"] == "final" and final["finalized_at"] == written


def test_a_time_ahead_of_the_clock_on_a_draft_is_not_kept(db, settings, registry):
    """Review: a draft's `updated_at` edited to 2099 stuck through every later run, and a
    finalize would have dated the final 2099: a time ahead of the wall clock is no time a
    run wrote here."""
    from chores.core.clock import wall_clock

    db.tasks.insert_one(ai_runner("r1", tokens=1_000, ended=datetime(2026, 11, 10, tzinfo=UTC)))
    run_chore(db, now=datetime(2026, 11, 20, tzinfo=UTC), registry=registry, settings=settings)
    ahead = wall_clock() + timedelta(days=1)
    db.billing_invoices.update_one({"_id": "acme:2026-11"}, {"$set": {"updated_at": ahead}})
    db.tasks.insert_one(ai_runner("r2", tokens=1_000, ended=datetime(2026, 11, 21, tzinfo=UTC)))
    later = datetime(2026, 11, 22, tzinfo=UTC)
    run_chore(db, now=later, registry=registry, settings=settings)
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["updated_at"] == later


def test_a_draft_written_by_a_host_ahead_within_the_skew_keeps_its_time(
    db, settings, registry, monkeypatch
):
    """Review: bounding a kept time by this machine's clock dropped every time a host
    ahead of it wrote (its `now` within FUTURE_SKEW_SECONDS of the wall clock), and the
    draft went back in time when a host behind wrote next."""
    from chores.core import clock

    wall = datetime(2026, 11, 20, 12, tzinfo=UTC)
    monkeypatch.setattr(clock, "wall_clock", lambda: wall)
    ahead = wall + timedelta(seconds=settings.future_skew_seconds - 60)
    db.tasks.insert_one(ai_runner("r1", tokens=1_000, ended=datetime(2026, 11, 10, tzinfo=UTC)))
    run_chore(db, now=ahead, registry=registry, settings=settings)
    db.tasks.insert_one(ai_runner("r2", tokens=1_000, ended=datetime(2026, 11, 11, tzinfo=UTC)))
    assert run_chore(db, now=wall, registry=registry, settings=settings).tokens_billed == 1_000
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["updated_at"] == ahead
