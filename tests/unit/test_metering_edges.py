"""Counters, lineage, ledger heads and runner keys at their edges, found untested by mutation
testing of `chores/metering/counters.py`, `lineage.py`, `ledger.py` and `runner_keys.py`: the
largest counter, zero and one-token runners, own counters floored at 0, counters of every
number type BSON gives, the tokens checked against the ceiling, reclassified marks, which
spawn finding is a subagent's baseline, non-string spawner names, an edited high-water mark,
the keys of long and 64-bit ids."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import bson
import pytest
from bson import ObjectId
from bson.int64 import Int64

from chores import Collections, Settings, run_chore
from chores.core.exceptions import MalformedDocument
from chores.metering.counters import (
    COUNTER_FIELDS,
    Breakdown,
    Counters,
    billable_tokens,
    breakdown,
    new_usage,
    own_counters,
    parse_counters,
    reclassified_mark,
)
from chores.metering.ledger import Ledger
from chores.metering.lineage import is_subagent_context, spawner_ids
from chores.metering.runner_keys import runner_key, source_id_of

from support import ai_runner

COUNTER_NAMES = tuple(COUNTER_FIELDS.values())  # ai_tokens, ai_prompt_tokens, ...
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


@pytest.mark.parametrize("zero", [0, Int64(0), 0.0, -0.0])
def test_a_counter_of_zero_is_zero_whatever_number_type_bson_gives(zero):
    """BSON int64 decodes as `Int64`, double as float: each is read by its own branch."""
    counters = dict(zip(COUNTER_NAMES, [zero] * 4, strict=True))
    assert parse_counters(counters) == Counters(0, 0, 0, 0)


def test_an_int64_counter_is_read_up_to_what_bson_stores_and_never_below_zero():
    largest = {"ai_tokens": Int64(2**63 - 1), "ai_prompt_tokens": Int64(7)}
    assert parse_counters(largest) == Counters(2**63 - 1, 7, 0, 0)
    assert type(parse_counters(largest).total) is int  # type: ignore[union-attr]
    assert parse_counters({"ai_tokens": Int64(-1)}) == "malformed counters: ai_tokens=-1"


def test_the_tokens_checked_against_the_ceiling_are_the_larger_of_total_and_split():
    """SPEC §1.6: billable = max(total, prompt + completion); MAX_TOKENS_PER_RUN holds a
    runner above it."""
    assert billable_tokens(Counters(100, 80, 40, 0)) == 120
    assert billable_tokens(Counters(200, 80, 40, 0)) == 200


@pytest.mark.parametrize(
    ("previous", "high_water", "mark"),
    [
        # the split lags the total (billed as prompt + completion), then cached catches up
        ((100, 80, 40, 0), (100, 80, 40, 50), (100, 80, 40, 50)),
        # unsplit tokens become prompt: the prompt takes them before the completion
        ((150, 50, 50, 0), (150, 120, 50, 0), (150, 100, 50, 0)),
    ],
)
def test_a_reclassified_mark_moves_tokens_between_kinds_and_adds_none(previous, high_water, mark):
    """`counters.reclassified_mark`: up to the mark the tokens only change kind (they sum to
    zero); past it nothing is taken back; the mark lies between the two snapshots."""
    previous, high_water = Counters(*previous), Counters(*high_water)
    found = reclassified_mark(previous, high_water)
    assert found == Counters(*mark)
    assert sum(new_usage(found, previous)) == 0
    assert min(new_usage(high_water, found)) >= 0
    assert all(p <= m <= h for p, m, h in zip(previous, found, high_water, strict=True))


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


def test_a_runner_grows_from_its_latest_entry_whatever_order_the_server_returns_them(db, registry):
    """MongoDB promises no order to a `find`; mongomock returns insertion order. A runner's
    head is its highest `seq`: from an older one its next step would bill tokens again."""

    def grown_to(tokens: int, at: datetime) -> None:
        runner = ai_runner("r1", ended=None, status="RUNNING", tokens=tokens, stamp=at.timestamp())
        db.tasks.replace_one({"_id": "r1"}, runner, upsert=True)
        run_chore(db, now=at, registry=registry, settings=CONFIG)

    grown_to(1_000, ENDED)
    grown_to(3_000, ENDED + timedelta(hours=1))
    entries = list(db.billing_ledger.find())
    db.billing_ledger.delete_many({})
    db.billing_ledger.insert_many(sorted(entries, key=lambda entry: -entry["seq"]))
    grown_to(6_000, ENDED + timedelta(hours=2))
    assert sorted(e["tokens"] for e in db.billing_ledger.find()) == [1_000, 2_000, 3_000]
    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert sum(line["tokens"] for line in draft["lines"]) == 6_000


def test_a_draft_build_of_no_invoice_reads_no_entries(db):
    """Every pair final or refused for its size: no query at all (the server refuses an
    empty `$or`)."""
    assert Ledger(Collections.of(db, CONFIG), batch_size=50).unfolded(set(), limit=10) == []


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


# --- chores/metering/runner_keys.py ---
# A ledger names each runner by its key: a key that changes (a new version, a round trip
# through BSON) would find no high-water mark, and bill the runner again from zero.


def a_string_id_whose_key_has(characters: int) -> str:
    return "x" * (characters - len("str:''"))


def test_a_key_of_300_characters_is_kept_as_it_is_and_a_longer_one_digested():
    at_most = a_string_id_whose_key_has(300)
    assert runner_key(at_most) == f"str:'{at_most}'"
    assert source_id_of(runner_key(at_most)) == at_most
    longer = a_string_id_whose_key_has(301)
    digest = hashlib.sha256(f"str:'{longer}'".encode()).hexdigest()
    assert runner_key(longer) == f"sha256-{digest}"
    assert source_id_of(runner_key(longer)) is None


@pytest.mark.parametrize(
    ("source_id", "key"),
    [
        (2**31 - 1, "int:2147483647"),
        (-(2**31), "int:-2147483648"),
        (2**31, "Int64:2147483648"),
        (-(2**31) - 1, "Int64:-2147483649"),
    ],
)
def test_an_int_id_has_the_key_it_has_after_a_round_trip_through_bson(source_id, key):
    """BSON stores an int outside int32 as int64, which pymongo reads back as `Int64`."""
    (read_back,) = bson.decode(bson.encode({"_id": source_id})).values()
    assert runner_key(source_id) == runner_key(read_back) == key
    assert source_id_of(key) == read_back and type(source_id_of(key)) is type(read_back)


# -- folded entries edited by hand: found untested by mutation testing (ledger.py) -------


def folded_entry(runner: str, seq: int, *, fold: int | None = None, booked: Any = None) -> dict:
    return {
        "_id": f"{runner}:{seq}",
        "runner_id": runner,
        "seq": seq,
        "org": "acme",
        "usage_period": "2026-11",
        "booked": booked,
        "fold": fold,
        "model": "m",
        "byok": False,
        "late": False,
        "usage_day": "2026-11-03",
        "input_tokens": 10,
        "cached_tokens": 0,
        "output_tokens": 0,
        "unsplit_tokens": 0,
    }


def test_a_runner_is_held_by_its_folded_entry_with_usage(db):
    db.billing_ledger.insert_one(folded_entry("a", 1, fold=1))
    ledger = Ledger(Collections.of(db, CONFIG), batch_size=50)
    assert ledger.runners_held([folded_entry("a", 2)]) == {("acme", "2026-11", "a")}


def test_a_folded_entry_edited_out_of_shape_is_refused_not_counted(db):
    """`booked` is no field a runner's head reads: only this read of folded entries sees it."""
    db.billing_ledger.insert_one(folded_entry("a", 1, fold=1, booked="November"))
    with pytest.raises(MalformedDocument):
        Ledger(Collections.of(db, CONFIG), batch_size=50).runners_held([folded_entry("a", 2)])


def test_a_run_refuses_a_folded_entry_edited_out_of_its_period_not_counting_its_runner_again(
    db, registry
):
    """Unchecked, the edited entry puts its runner on an invoice that is no period, and the
    next run counts it again (runs 2, entries 2 for one runner)."""
    ended = datetime(2026, 11, 3, tzinfo=UTC)

    def grown_to(tokens: int, at: datetime) -> None:
        runner = ai_runner("r1", ended=None, status="RUNNING", tokens=tokens, stamp=at.timestamp())
        db.tasks.replace_one({"_id": "r1"}, runner, upsert=True)
        run_chore(db, now=at, registry=registry, settings=CONFIG)

    grown_to(1_000, ended)
    db.billing_ledger.update_many({}, {"$set": {"booked": "November"}})
    with pytest.raises(MalformedDocument):
        grown_to(3_000, ended + timedelta(hours=1))
    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert (draft["runs"], draft["entries"]) == (1, 1)
