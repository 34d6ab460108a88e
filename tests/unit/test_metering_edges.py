"""Counters, lineage and ledger heads at their edges, found untested by mutation testing
of `chores/metering/counters.py`, `lineage.py` and `ledger.py`: the largest counter, zero
and one-token runners, own counters floored at 0, which spawn finding is a subagent's
baseline, non-string spawner names, an edited high-water mark."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bson import ObjectId

from chores import Settings, run_chore
from chores.metering.counters import Breakdown, Counters, breakdown, own_counters, parse_counters
from chores.metering.lineage import is_subagent_context, spawner_ids

from support import ai_runner

CONFIG = Settings(mongo_url="mongomock://edges", batch_size=20, redis_url=None)
NOW = datetime(2026, 11, 28, tzinfo=UTC)
ENDED = datetime(2026, 11, 3, tzinfo=UTC)

# --- chores/metering/counters.py ---


def test_a_counter_beyond_what_bson_stores_is_malformed_and_the_largest_is_not():
    # SPEC §1.5 / counters.py: MAX_COUNTER = 2**63 - 1, "anything above is garbage"
    ok = {"ai_tokens": 2**63 - 1, "ai_prompt_tokens": 0, "ai_completion_tokens": 0}
    assert parse_counters(ok) == Counters(2**63 - 1, 0, 0, 0)
    for bad in (2**63, float(2**63), 2**63 + 1):
        assert isinstance(parse_counters({"ai_tokens": bad}), str), bad


def add_runner(db: Any, runner_id: str, **context: Any) -> None:
    """A finished runner of acme with no tokens but `context`'s."""
    db.tasks.insert_one(ai_runner(runner_id, ended=ENDED, tokens=0, **context))


def test_a_runner_with_no_tokens_writes_no_ledger_entry(db, registry):
    add_runner(db, "zero")
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert db.billing_ledger.count_documents({}) == 0


def test_a_runner_with_one_token_of_each_kind_alone_is_billed_it(db, registry):
    # SPEC §1.6: billable = max(total, prompt + completion)
    add_runner(db, "t", ai_tokens=1)
    add_runner(db, "p", ai_prompt_tokens=1)
    add_runner(db, "c", ai_completion_tokens=1)
    add_runner(db, "k", ai_cached_tokens=1)  # cached beyond prompt: a mark, no tokens
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    tokens = {e["runner_id"]: e["tokens"] for e in db.billing_ledger.find()}
    assert tokens == {f"str:'{r}'": n for r, n in {"t": 1, "p": 1, "c": 1, "k": 0}.items()}


def test_own_counters_are_floored_at_zero_not_at_one_or_below():
    # SPEC §7: own counters = counters minus the baseline, counter by counter, floored at 0
    assert own_counters(Counters(5, 3, 2, 1), Counters(5, 3, 2, 1)) == Counters(0, 0, 0, 0)
    assert own_counters(Counters(4, 2, 1, 0), Counters(5, 3, 2, 1)) == Counters(0, 0, 0, 0)


def test_a_breakdown_sums_its_kinds():
    assert Breakdown(1, 2, 3, 4).tokens == 10
    assert Breakdown() == (0, 0, 0, 0) and breakdown(Counters()) == Breakdown(0, 0, 0, 0)


# --- chores/metering/lineage.py ---


def test_the_subagent_string_alone_marks_a_subagent():
    # SPEC §1 fact 4 / §7: a subagent when context.subagent is truthy, depth >= 1
    # or parent_session_id is set
    assert is_subagent_context({"workspace_id": "acme", "subagent": "sess-1"}) is True


def test_a_subagent_marked_only_by_its_session_name_bills_its_own_usage_only(db, registry):
    child = ObjectId()
    inherited = {"ai_tokens": 1000, "ai_prompt_tokens": 800, "ai_completion_tokens": 200}
    db.tasks.insert_one(
        ai_runner(child, ended=ENDED, tokens=1_500, prompt=1_200, subagent="sess-1")
    )
    db.findings.insert_one(
        {
            "_type": "ai",
            "ai_type": "task",
            "extra_data": {"runner_id": str(child)},
            "_context": {"workspace_id": "acme", "ai_model": "gpt-4o-mini", **inherited},
        }
    )
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == 500


def test_a_workflow_id_that_is_not_a_string_names_no_spawner(db, registry):
    assert spawner_ids({"_id": "r1", "context": {"workspace_id": "acme", "workflow_id": 7}}) == []
    for rid, workflow in (("r1", 7), ("r2", "wf-1")):
        db.tasks.insert_one(
            ai_runner(rid, ended=ENDED, tokens=100, prompt=60, workflow_id=workflow)
        )
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == 200


def test_a_chunk_of_a_subagent_is_paired_with_its_sessions_card_for_its_action():
    # lineage.baseline_findings docstring; SPEC §1 fact 4 (the baseline is the spawn finding)
    from chores.metering.lineage import baseline_findings

    chunk = {
        "_id": "chunk-1",
        "context": {
            "workspace_id": "acme",
            "subagent": "s",
            "ai_subagent_depth": 1,
            "session_id": "sess-1",
            "tool_call_id": "call-1",
            "task_id": "t-1",
        },
    }
    card = {"workspace_id": "acme", "tool_call_id": "call-1", "ai_tokens": 10}
    other = {"workspace_id": "acme", "tool_call_id": "call-2", "ai_tokens": 99}
    assert baseline_findings(chunk, {}, {"sess-1": [card, other]}, {}) == [card]


def test_a_subagents_own_finding_wins_over_its_workflows():
    from chores.metering.lineage import baseline_findings

    doc = {
        "_id": "sub-1",
        "context": {
            "workspace_id": "acme",
            "subagent": "s",
            "ai_subagent_depth": 1,
            "workflow_id": "wf-1",
        },
    }
    own = {"workspace_id": "acme", "ai_subagent_depth": 1, "ai_tokens": 10}
    workflow = {"workspace_id": "acme", "ai_subagent_depth": 1, "ai_tokens": 99}
    assert baseline_findings(doc, {"sub-1": [own], "wf-1": [workflow]}) == [own]


# --- chores/metering/ledger.py ---


def test_usage_billed_in_its_own_open_period_is_not_late(db, registry):
    # SPEC §7: only usage no draft held when its period was frozen is billed late
    db.tasks.insert_one(
        ai_runner("r1", ended=ENDED, tokens=1_500, prompt=1_000, model="gpt-4o-mini")
    )
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    (entry,) = db.billing_ledger.find()
    assert entry["late"] is False
    invoice = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert invoice["lines"] and all(line["late"] is False for line in invoice["lines"])


def test_an_entry_keeps_the_exact_amount_it_was_billed_and_none_when_unpriced(db, registry):
    db.tasks.insert_one(
        ai_runner("r1", ended=ENDED, tokens=1_500, prompt=1_000, model="gpt-4o-mini")
    )
    db.tasks.insert_one(
        ai_runner("r2", ended=ENDED, tokens=1_500, prompt=1_000, model="mystery-model-9000")
    )
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    amounts = {e["runner_id"]: e["amount_micros_exact"] for e in db.billing_ledger.find()}
    assert Decimal(amounts["str:'r1'"]) > 0
    assert amounts["str:'r2'"] is None


def test_a_runner_whose_latest_entry_was_edited_is_refused_not_billed_from_it(db, registry):
    # ledger.py _Entry: "an entry edited by hand is a MalformedDocument, never a sum that
    # skips it or a traceback"; heads() reads the high-water mark the next step bills from
    import pytest

    from chores.core.exceptions import MalformedDocument

    db.tasks.insert_one(
        ai_runner("r1", ended=ENDED, tokens=1_500, prompt=1_000, model="gpt-4o-mini")
    )
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    db.billing_ledger.update_one({}, {"$set": {"high_water.total": "9999999"}})
    db.tasks.update_one(
        {"_id": "r1"},
        {
            "$set": {
                "context.ai_tokens": 3000,
                "context.ai_prompt_tokens": 2000,
                "context.ai_completion_tokens": 1000,
                "last_updated_db": NOW.timestamp() - 60,
            }
        },
    )
    with pytest.raises(MalformedDocument, match="high_water"):
        run_chore(db, now=NOW, registry=registry, settings=CONFIG)
