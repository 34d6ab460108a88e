"""Hostile input: whatever a runner document holds, nothing crashes and nothing bad is charged.

Documents are generated with arbitrary values in every field the chore reads.
An independent validator (written here from SPEC §1 and §7, not imported) says
which documents are billable; the others must each leave an anomaly and no
ledger entry, and a well-formed org beside them must be billed exactly as if
they were not there.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
import pymongo
import pytest
from bson import Decimal128, MaxKey, MinKey, ObjectId, Timestamp
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chores import Settings, run_chore
from chores.core.db import Collections
from chores.core.exceptions import SourceIsReadOnly

from support import NOW

FIELDS = ("ai_tokens", "ai_prompt_tokens", "ai_completion_tokens", "ai_cached_tokens")
COUNTERS = ("total", "prompt", "completion", "cached")

safe_keys = st.text(min_size=1, max_size=8).filter(
    lambda k: not k.startswith("$") and "." not in k and "\x00" not in k
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["$ne", "a.b", "", "ws-good", "1200", "NaN"]),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)),
    st.builds(ObjectId),
    # BSON JavaScript code: a str subclass, unhashable, never a valid string field
    st.builds(Code, st.sampled_from(["SUCCESS", "ws-a", "gpt-4o-mini", "byok", "x"])),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(safe_keys, inner, max_size=3)
    ),
    max_leaves=8,
)
counter_values = st.one_of(
    st.integers(min_value=0, max_value=200_000),
    st.integers(min_value=-5, max_value=-1),
    st.sampled_from([None, True, False, "100", 12.5, 100.0, math.nan, math.inf, -0.0, 2**63 - 1]),
    json_values,
)
# Never the good run's org: a hostile document there may be billed legitimately, and the
# good run's invoice is what the test checks is left alone.
org_values = st.one_of(
    st.sampled_from(["ws-a", "ws-b", "$ne", "a.b", "", "ws-a ", "o" * 256, "o" * 257]), json_values
).filter(lambda org: org != "ws-good")


@st.composite
def hostile_runner(draw: Any) -> dict[str, Any]:
    context = draw(
        st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "workspace_id": org_values,
                    "ai_model": st.one_of(
                        st.sampled_from(["gpt-4o-mini", "x" * 300, "ollama/llama3.1"]), json_values
                    ),
                    "ai_key_source": st.one_of(
                        st.sampled_from(["byok", "platform", "BYOK"]), json_values
                    ),
                    "subagent": st.one_of(st.just(True), json_values),
                    "ai_subagent_depth": st.one_of(
                        st.sampled_from([0, 1, 2, "1", -1]), json_values
                    ),
                    "parent_session_id": st.one_of(st.sampled_from(["", "s-1"]), json_values),
                    **{f: counter_values for f in FIELDS},
                },
            ),
            json_values,
        )
    )
    doc = {
        "_id": ObjectId(),
        "name": "ai",
        "status": draw(st.one_of(st.sampled_from(["SUCCESS", "RUNNING", "FAILURE"]), json_values)),
        "context": context,
        "last_updated_db": draw(st.one_of(st.floats(allow_nan=True), json_values)),
    }
    end = draw(st.one_of(st.none(), st.just(NOW - timedelta(days=1)), json_values))
    if end is not None:
        doc["end_time"] = end
    return doc


def counter_ok(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 2**63
    return isinstance(value, float) and math.isfinite(value) and value.is_integer() and value >= 0


def billable(doc: dict[str, Any]) -> bool:
    """Independent reading of SPEC §1/§7: may this document produce a ledger entry?"""
    context = doc["context"]
    if not isinstance(context, dict):
        return False
    org = context.get("workspace_id")
    if type(org) is not str or not 1 <= len(org) <= 256:  # exactly str: Code is no string
        return False
    if "end_time" in doc and not isinstance(doc["end_time"], datetime):
        return False
    if not all(counter_ok(context.get(f)) for f in FIELDS):
        return False
    model = context.get("ai_model")
    if model is not None and (type(model) is not str or len(model) > 256):
        return False
    if context.get("ai_key_source") not in (None, "platform", "byok"):
        return False
    # A subagent has no spawn finding in these corpora: baseline_missing. A depth that is
    # not a number below 1 (NaN, a string) marks one too: held, never billed whole.
    depth = context.get("ai_subagent_depth")
    number = isinstance(depth, int | float) and not isinstance(depth, bool)
    if (
        context.get("subagent")
        or (depth is not None and not (number and depth < 1))
        or context.get("parent_session_id") not in (None, "")
    ):
        return False
    counts = [int(context.get(f) or 0) for f in FIELDS]
    return max(counts[0], counts[1] + counts[2]) > 0


GOOD_RUN = {
    "_id": ObjectId(),
    "name": "ai",
    "status": "SUCCESS",
    "end_time": NOW - timedelta(hours=2),
    "last_updated_db": NOW.timestamp() - 7200,
    "context": {
        "workspace_id": "ws-good",
        "ai_model": "gpt-4o-mini",
        "ai_tokens": 5_000,
        "ai_prompt_tokens": 4_000,
        "ai_completion_tokens": 1_000,
    },
}


def good_invoice(registry: Any) -> list[dict[str, Any]]:
    db = mongomock.MongoClient(tz_aware=True)["main"]
    db.tasks.insert_one(dict(GOOD_RUN))
    run_chore(db, now=NOW, registry=registry, settings=Settings(mongo_url="mongomock://x"))
    return db.billing_invoices.find_one({"_id": "ws-good:2026-11"})["lines"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(hostile_runner(), min_size=1, max_size=6))
def test_hostile_documents_never_crash_never_charge_and_leave_others_alone(registry, docs):
    db = mongomock.MongoClient(tz_aware=True)["main"]
    db.tasks.insert_many([dict(GOOD_RUN), *docs])
    config = Settings(mongo_url="mongomock://x", batch_size=4)
    run_chore(db, now=NOW, registry=registry, settings=config)

    # A charge is an entry with tokens; one that only moved a high-water mark (cached
    # tokens beyond prompt) bills nothing.
    billed = {e["runner_id"] for e in db.billing_ledger.find() if e["tokens"] > 0}
    anomalies = {a["runner_id"] for a in db.billing_anomalies.find()}
    for doc in docs:
        runner = str(doc["_id"])
        if billable(doc):
            assert runner in billed, doc
        else:
            assert runner not in billed, doc
            context = doc["context"]
            # nothing to bill: no counter but cached (a subset of prompt) above 0
            zero_usage = isinstance(context, dict) and all(
                counter_ok(context.get(f)) and not context.get(f) for f in FIELDS[:3]
            )
            assert runner in anomalies or zero_usage, doc
    lines = db.billing_invoices.find_one({"_id": "ws-good:2026-11"})["lines"]
    assert lines == _GOOD_LINES


_GOOD_LINES: list[dict[str, Any]] = []


@pytest.fixture(autouse=True, scope="module")
def _good_lines(registry):
    _GOOD_LINES[:] = good_invoice(registry)


def test_huge_and_non_finite_counters_are_anomalies(db, settings, registry):
    # BSON (and mongomock) refuse ints above 8 bytes at insert; 1e30 is how they arrive.
    bad = [
        {"ai_tokens": 1e30},
        {"ai_tokens": float("inf")},
        {"ai_prompt_tokens": float("nan")},
        {"ai_completion_tokens": 1e300},
        {"ai_tokens": 2.0**63},
        {"ai_tokens": 2**62},
    ]
    for i, counters in enumerate(bad):
        db.tasks.insert_one(
            {
                "_id": ObjectId(),
                "name": "ai",
                "status": "SUCCESS",
                "end_time": NOW - timedelta(minutes=i + 1),
                "context": {"workspace_id": "ws-x", "ai_model": "gpt-4o-mini", **counters},
            }
        )
    report = run_chore(db, now=NOW, registry=registry, settings=settings)
    assert db.billing_ledger.count_documents({}) == 0
    assert report.anomalies == {"malformed_counters": 5, "over_ceiling": 1}


def test_counters_beyond_int64_are_malformed_in_the_pure_rules():
    from chores.metering.rules import assess

    doc = {
        "_id": ObjectId(),
        "name": "ai",
        "status": "SUCCESS",
        "end_time": NOW,
        "context": {"workspace_id": "ws", "ai_tokens": 10**30},
    }
    result = assess(
        doc,
        spawn_contexts=[],
        head=None,
        now=NOW,
        max_tokens_per_run=10**40,
        future_skew_seconds=300,
    )
    assert result.delta is None
    assert [a.kind for a in result.anomalies] == ["malformed_counters"]


def test_a_huge_model_name_is_held_not_stored_on_an_invoice(db, settings, registry):
    db.tasks.insert_one(
        {
            "_id": ObjectId(),
            "name": "ai",
            "status": "SUCCESS",
            "end_time": NOW - timedelta(hours=1),
            "context": {"workspace_id": "ws-x", "ai_model": "m" * 1_000_000, "ai_tokens": 10},
        }
    )
    report = run_chore(db, now=NOW, registry=registry, settings=settings)
    assert report.anomalies == {"bad_model": 1}
    anomaly = db.billing_anomalies.find_one()
    assert len(anomaly["detail"]) < 100


def test_runner_id_as_objectid_or_string_in_spawn_findings(db, settings, registry):
    parent, child_a, child_b = ObjectId(), ObjectId(), ObjectId()
    # A spawn finding's `_context` is a full copy of the parent's, its org included (only
    # a finding of the subagent's own org is a baseline).
    base = {
        "workspace_id": "ws-x",
        "ai_tokens": 100,
        "ai_prompt_tokens": 80,
        "ai_completion_tokens": 20,
    }
    for child in (child_a, child_b):
        db.tasks.insert_one(
            {
                "_id": child,
                "name": "ai",
                "status": "SUCCESS",
                "end_time": NOW - timedelta(hours=1),
                "context": {
                    "workspace_id": "ws-x",
                    "ai_model": "gpt-4o-mini",
                    "subagent": True,
                    "ai_tokens": 150,
                    "ai_prompt_tokens": 120,
                    "ai_completion_tokens": 30,
                },
            }
        )
    db.findings.insert_many(
        [
            {
                "_type": "ai",
                "ai_type": "task",
                "extra_data": {"runner_id": str(child_a)},
                "_context": {**base, "task_id": str(parent)},
            },
            {
                "_type": "ai",
                "ai_type": "task",
                "extra_data": {"runner_id": child_b},
                "_context": base,
            },
        ]
    )
    run_chore(db, now=NOW, registry=registry, settings=settings)
    entries = {e["runner_id"]: e for e in db.billing_ledger.find()}
    assert {r: e["tokens"] for r, e in entries.items()} == {str(child_a): 50, str(child_b): 50}
    assert entries[str(child_a)]["parent_id"] == str(parent)


def test_the_source_collections_refuse_writes(db, settings):
    c = Collections.of(db, settings)
    for call in (
        lambda: c.tasks.insert_one({}),
        lambda: c.findings.delete_many({}),
        lambda: c.tasks.update_many({}, {"$set": {"x": 1}}),
        lambda: c.tasks.drop(),
    ):
        with pytest.raises(SourceIsReadOnly):
            call()
    assert c.tasks.count_documents({}) == 0


def test_operator_shaped_org_ids_are_billed_as_plain_strings(db, settings, registry):
    for org in ("$ne", "a.b", '{"$gt": ""}'):
        db.tasks.insert_one(
            {**GOOD_RUN, "_id": ObjectId(), "context": {**GOOD_RUN["context"], "workspace_id": org}}
        )
    run_chore(db, now=NOW, registry=registry, settings=settings)
    assert sorted(i["org"] for i in db.billing_invoices.find()) == sorted(
        ["$ne", "a.b", '{"$gt": ""}']
    )
    run = db.billing_runs.find_one()
    assert {o["org"] for o in run["orgs"]} == {"$ne", "a.b", '{"$gt": ""}'}


def test_no_datetime_end_time_is_held(db, settings, registry):
    db.tasks.insert_one({**GOOD_RUN, "_id": ObjectId(), "end_time": "yesterday"})
    report = run_chore(db, now=NOW, registry=registry, settings=settings)
    assert report.anomalies == {"bad_end_time": 1} and report.tokens_billed == 0


_ = UTC


def test_ids_too_long_to_be_an_org_or_a_label_are_held_or_left_out(registry):
    """An org id of 257 characters: `run --all` once billed it while every other command
    refused it (`validate_org`); a session id or status of a megabyte was copied into
    every ledger entry of the runner."""
    db = mongomock.MongoClient(tz_aware=True)["main"]
    long_org = {**GOOD_RUN, "_id": ObjectId(), "context": {**GOOD_RUN["context"]}}
    long_org["context"]["workspace_id"] = "o" * 257
    long_labels = {**GOOD_RUN, "_id": ObjectId(), "context": {**GOOD_RUN["context"]}}
    long_labels["context"].update(workspace_id="ws-odd", session_id="s" * 1_000_000)
    db.tasks.insert_many([dict(GOOD_RUN), long_org, long_labels])
    run_chore(db, now=NOW, registry=registry, settings=Settings(mongo_url="mongomock://x"))

    assert db.billing_invoices.find_one({"_id": "ws-good:2026-11"})["lines"] == _GOOD_LINES
    assert db.billing_ledger.count_documents({"runner_id": str(long_org["_id"])}) == 0
    held = db.billing_anomalies.find_one({"runner_id": str(long_org["_id"])})
    assert held["kind"] == "no_org" and len(held["detail"]) < 200
    entry = db.billing_ledger.find_one({"runner_id": str(long_labels["_id"])})
    assert entry["tokens"] == 5_000 and entry["session_id"] is None


@pytest.mark.parametrize("depth", ["1", "0", math.nan, True, [1], {"n": 1}])
def test_a_depth_that_is_no_number_marks_a_subagent_held_until_its_spawn_finding(registry, depth):
    """secator writes `ai_subagent_depth` as an int; anything else that is not a number
    below 1 may be a subagent whose counters carry its parent's: held, never billed whole."""
    db = mongomock.MongoClient(tz_aware=True)["main"]
    child = {**GOOD_RUN, "_id": ObjectId(), "context": {**GOOD_RUN["context"]}}
    child["context"]["ai_subagent_depth"] = depth
    db.tasks.insert_one(child)
    report = run_chore(db, now=NOW, registry=registry, settings=Settings(mongo_url="mongomock://x"))
    assert report.tokens_billed == 0 and report.anomalies == {"baseline_missing": 1}


@pytest.mark.parametrize(
    ("where", "value"),
    [
        pytest.param("status", Code("SUCCESS"), id="status"),
        pytest.param("workspace_id", Code("ws-good"), id="org"),
        pytest.param("ai_model", Code("gpt-4o-mini"), id="model"),
        pytest.param("session_id", Code("s-1"), id="session"),
    ],
)
def test_javascript_code_in_a_string_field_is_an_anomaly_not_a_crash(registry, where, value):
    """BSON code decodes to `bson.code.Code`, a str subclass that cannot be hashed: where a
    string is expected it is no string (held, or not a terminal status), and the run goes on."""
    db = mongomock.MongoClient(tz_aware=True)["main"]
    bad = {
        **GOOD_RUN,
        "_id": ObjectId(),
        "context": {**GOOD_RUN["context"], "workspace_id": "ws-odd"},
    }
    if where == "status":
        bad["status"] = value
    else:
        bad["context"][where] = value
    db.tasks.insert_many([dict(GOOD_RUN), bad])
    run_chore(db, now=NOW, registry=registry, settings=Settings(mongo_url="mongomock://x"))

    assert db.billing_invoices.find_one({"_id": "ws-good:2026-11"})["lines"] == _GOOD_LINES
    entries = list(db.billing_ledger.find({"runner_id": str(bad["_id"])}))
    held = {a["kind"] for a in db.billing_anomalies.find({"runner_id": str(bad["_id"])})}
    if where == "workspace_id":
        assert (entries, held) == ([], {"no_org"})
    elif where == "ai_model":
        assert (entries, held) == ([], {"bad_model"})
    else:  # billed, with the odd value left out of the entry
        assert len(entries) == 1 and held == set()
        assert entries[0]["status" if where == "status" else "session_id"] is None


ODD_ORDERED_VALUES = {
    "MinKey": MinKey(),
    "MaxKey": MaxKey(),
    "Timestamp": Timestamp(1, 1),
    "DatetimeMS-after-9999": DatetimeMS(253_402_387_200_000),
    "Decimal128-NaN": Decimal128("NaN"),
    "Decimal128-huge": Decimal128("1E+6000"),
}


@pytest.mark.parametrize(
    ("where", "value"),
    [
        pytest.param(where, value, id=f"{where}-{name}")
        for where in ("last_updated_db", "_id")
        for name, value in ODD_ORDERED_VALUES.items()
        if not (where == "_id" and isinstance(value, Decimal128))  # mongomock refuses it
    ],
)
def test_a_stamp_or_id_mongomock_could_not_order_stops_no_run(registry, where, value):
    """Review: mongomock 4.3 could not sort or range-compare these BSON types (a server
    orders them all): one such runner stopped every run of every org on a demo store
    (`mongomock_compat`). Now the others are billed, and so is it."""
    db = mongomock.MongoClient(tz_aware=True)["main"]
    odd = {
        **GOOD_RUN,
        "_id": ObjectId(),
        "last_updated_db": NOW.timestamp() - 7000,
        "context": {**GOOD_RUN["context"], "workspace_id": "ws-odd"},
        where: value,
    }
    db.tasks.insert_many([dict(GOOD_RUN), odd])
    report = run_chore(db, now=NOW, registry=registry, settings=Settings(mongo_url="mongomock://x"))

    assert db.billing_invoices.find_one({"_id": "ws-good:2026-11"})["lines"] == _GOOD_LINES
    assert report.tokens_billed == 2 * 5_000 and report.anomalies == {}


def test_a_depth_read_as_int64_is_a_number():
    """A real server gives back an int64 as `Int64`: depth 0 is still a top-level runner."""
    from bson.int64 import Int64

    from chores.metering.lineage import is_subagent_context

    assert is_subagent_context({"ai_subagent_depth": Int64(0)}) is False
    assert is_subagent_context({"ai_subagent_depth": 0.0}) is False
    assert is_subagent_context({"ai_subagent_depth": Int64(1)}) is True


def test_counters_read_as_int64_are_billed_and_kept_as_plain_ints():
    """A real server gives back a counter above int32 as `Int64`: a ledger entry's tokens
    and high-water mark are plain ints all the same, the first entry of a runner too."""
    from bson.int64 import Int64

    from chores.metering.rules import assess

    context = {"workspace_id": "acme", "ai_model": "gpt-4o"}
    context |= {"ai_tokens": Int64(5_000_000_000), "ai_prompt_tokens": Int64(4_000_000_000)}
    context |= {"ai_completion_tokens": Int64(1_000_000_000), "ai_cached_tokens": Int64(7)}
    doc = {"_id": ObjectId(), "status": "SUCCESS", "end_time": NOW, "context": context}
    result = assess(
        doc,
        spawn_contexts=[],
        head=None,
        now=NOW,
        max_tokens_per_run=10**12,
        future_skew_seconds=300,
    )
    assert result.delta is not None
    assert result.delta.tokens == (4_000_000_000 - 7, 7, 1_000_000_000, 0)
    counts = [*result.delta.tokens, *result.delta.high_water]
    assert [type(count) for count in counts] == [int] * 8


def test_a_cached_high_water_mark_is_kept_though_it_bills_nothing(registry):
    """`cached=40, prompt=0` bills nothing, but its mark stays: when the runner ends with
    `prompt=50, cached=10`, the cached counter went down (`counter_decreased`) and usage is
    billed from the highest counters (40 cached, 10 input), SPEC §1.5-1.6."""
    db = mongomock.MongoClient(tz_aware=True)["main"]
    running = {**GOOD_RUN, "_id": ObjectId(), "status": "RUNNING", "context": {}}
    del running["end_time"]
    running["context"] = {"workspace_id": "ws-odd", "ai_model": "gpt-4o-mini"}
    running["context"]["ai_cached_tokens"] = 40
    db.tasks.insert_one(running)
    config = Settings(mongo_url="mongomock://x")
    run_chore(db, now=NOW - timedelta(hours=1), registry=registry, settings=config)
    finished = {**running, "status": "SUCCESS", "end_time": NOW - timedelta(minutes=30)}
    finished["context"] = {**running["context"], "ai_tokens": 50, "ai_prompt_tokens": 50}
    finished["context"]["ai_cached_tokens"] = 10
    db.tasks.replace_one({"_id": running["_id"]}, finished)
    report = run_chore(db, now=NOW, registry=registry, settings=config)

    assert report.anomalies == {"counter_decreased": 1}
    entries = list(db.billing_ledger.find({"org": "ws-odd"}, sort=[("seq", 1)]))
    assert [e["tokens"] for e in entries] == [0, 50]
    assert (entries[1]["input_tokens"], entries[1]["cached_tokens"]) == (10, 40)


def _undecodable_runner() -> bytes:
    """A runner as a server would send it, with bytes Python cannot decode: an end time in
    year 10,000, and a workspace id, model or string `_id` that is not UTF-8."""
    from bson import encode
    from bson.datetime_ms import DatetimeMS

    year_10000 = DatetimeMS(253_402_300_800_000 + 86_400_000)
    docs = []
    for where in ("end_time", "workspace_id", "ai_model", "_id"):
        context = {**GOOD_RUN["context"], "workspace_id": "ws-odd"}
        doc = {**GOOD_RUN, "_id": where, "context": context}
        if where == "end_time":
            doc["end_time"] = year_10000
        elif where == "_id":
            doc["_id"] = "\x01\x02bad"
        else:
            context[where] = "\x01\x02bad"
        docs.append(encode(doc).replace(b"\x01\x02bad", b"\xff\xfebad"))
    return b"".join(docs)


def test_bytes_python_cannot_decode_are_anomalies_not_a_stopped_run(monkeypatch):
    """pymongo raised on a year-10,000 date or invalid UTF-8 in a batch, and every run of
    the org stopped on it. Both the public API's view of a caller's database and the
    chore's own client decode them (DatetimeMS, U+FFFD), and the rules hold them."""
    from bson import decode_all
    from pymongo.database import Database

    from chores.core.db import connect, utc_view
    from chores.metering.rules import Rules

    caller = pymongo.MongoClient(connect=False)["main"]  # default options, as a user has
    monkeypatch.setattr(Database, "command", lambda self, *a, **k: {"ok": 1.0})
    own = connect(Settings(mongo_url="mongodb://127.0.0.1:9"))
    rules = Rules(now=NOW, max_tokens_per_run=10**9, future_skew_seconds=300)
    for db in (utc_view(caller), own):
        docs = decode_all(_undecodable_runner(), db.codec_options)
        held = {
            doc["_id"]: [a.kind for a in rules.assess(doc, spawn_contexts=[], head=None).anomalies]
            for doc in docs
        }
        assert held == {
            "end_time": ["bad_end_time"],
            "workspace_id": ["no_org"],
            "ai_model": ["bad_model"],
            # two such ids would decode alike and share one high-water mark
            "\ufffd\ufffdbad": ["bad_id"],
        }
        own.client.close()
