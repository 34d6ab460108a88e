"""Issue 14 items 1, 10, 11 and 12: the public API as an outside program calls it, usage
time bounded by `now`, and runner identity (ledger keys, spawn findings) that no other
runner or org can share.

Each test fails on the code before its fix and names the defect it guards against.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import mongomock
import pymongo
import pytest
from bson import ObjectId

from chores import Settings, check_quota, finalize_invoices, run_chore
from chores.core.db import utc_view
from chores.demo.corpus import generate_corpus

NOV_25 = datetime(2026, 11, 25, 12, tzinfo=UTC)


def context(org: str, tokens: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "workspace_id": org,
        "ai_tokens": tokens,
        "ai_prompt_tokens": tokens // 2,
        "ai_completion_tokens": tokens - tokens // 2,
        "ai_model": model,
    }


def runner(org: str, tokens: int, end: datetime | None, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "name": "ai",
        "status": "SUCCESS" if end is not None else "RUNNING",
        "start_time": (end or NOV_25) - timedelta(minutes=5),
        "last_updated_db": 1.0e9,
        "context": context(org, tokens),
    }
    if end is not None:
        doc["end_time"] = end
    doc.update(fields)
    return doc


def ledger_tokens(db: Any, org: str | None = None) -> int:
    query = {} if org is None else {"org": org}
    return sum(e["tokens"] for e in db.billing_ledger.find(query))


def invoiced_tokens(db: Any, org: str | None = None) -> int:
    query = {} if org is None else {"org": org}
    return sum(line["tokens"] for i in db.billing_invoices.find(query) for line in i["lines"])


# --- 1. a plain client (default codec options) -------------------------------------------


def _billing_month(db: Any, settings: Settings, registry: Any) -> dict[str, Any]:
    """What an outside program does over two months: runs while runners work, a rerun,
    the finalization of the past month, quota checks. Returns everything it saw."""
    start = datetime(2026, 10, 10, tzinfo=UTC)
    corpus = generate_corpus(seed=3, orgs=("acme", "globex"), start=start, days=44)
    db[settings.findings_collection].insert_many([dict(f) for f in corpus.findings])
    db[settings.collection("plans")].insert_many(
        [{"_id": "acme", "token_limit": 100_000}, {"_id": "globex", "token_limit": 10**9}]
    )
    tasks = db[settings.tasks_collection]
    tasks.insert_many(corpus.at(0.5))
    run_chore(db, now=NOV_25, registry=registry, settings=settings)
    tasks.delete_many({})
    tasks.insert_many(corpus.at(1.0))
    later = NOV_25 + timedelta(hours=1)
    run_chore(db, now=later, registry=registry, settings=settings)
    run_chore(db, now=later, registry=registry, settings=settings)  # a rerun bills nothing
    finalized = finalize_invoices(db, now=later, settings=settings)
    rerun = run_chore(db, now=later, registry=registry, settings=settings, full=True)
    decisions = {
        org: check_quota(db, org, estimated_tokens=1_000, now=later, settings=settings)
        for org in ("acme", "globex", "nobody")
    }
    invoices = {
        i["_id"]: (i["status"], i["total_micros"], i["unpriced_tokens"], i["runs"], i["lines"])
        for i in db[settings.collection("invoices")].find()
    }
    return {
        "finalized": sorted(finalized),
        "rerun_tokens": rerun.tokens_billed,
        "invoices": invoices,
        "decisions": {
            org: (d.state, d.allowed, d.used_tokens, d.spent_micros) for org, d in decisions.items()
        },
        "ledger": ledger_tokens(db),
        "invoiced": invoiced_tokens(db),
    }


def test_the_public_api_with_a_plain_client_bills_what_a_tz_aware_client_bills(settings, registry):
    # Before: the first settle raised "can't compare offset-naive and offset-aware datetimes".
    plain = _billing_month(mongomock.MongoClient()["main"], settings, registry)
    aware = _billing_month(mongomock.MongoClient(tz_aware=True)["main"], settings, registry)
    assert plain == aware
    assert plain["finalized"] == ["acme:2026-10", "globex:2026-10"]
    assert plain["rerun_tokens"] == 0
    assert plain["ledger"] == plain["invoiced"] > 0
    assert {status for status, *_ in plain["invoices"].values()} == {"draft", "final"}
    assert plain["decisions"]["acme"][0] == "block"
    assert plain["decisions"]["globex"][0] == "ok"


def test_a_registry_path_for_a_registry_is_a_clear_error_and_writes_nothing(settings):
    """Review: `run_chore(db, registry="prices.yaml")` was a bare AttributeError
    ('str' object has no attribute 'fingerprint')."""
    import pytest

    from chores import ConfigError

    db = mongomock.MongoClient()["main"]
    with pytest.raises(ConfigError, match=r"registry must be a pricing.Registry, not str \("):
        run_chore(db, registry="prices.yaml", settings=settings)  # type: ignore[arg-type]
    assert db.list_collection_names() == []


def test_an_org_id_that_is_not_utf8_text_is_refused_and_nothing_is_written(settings, registry):
    """A lone surrogate is what Python puts for bytes that are not UTF-8, and no write can
    encode it: `run_chore` metered, then raised UnicodeEncodeError writing the org's
    decision. U+FFFD is UTF-8 and stays an org id a caller may ask about (review)."""
    import pytest

    from chores import ConfigError

    db = mongomock.MongoClient()["main"]
    with pytest.raises(ConfigError, match="org must be UTF-8 text, got 'ac\\\\udcffme'"):
        run_chore(db, org="ac\udcffme", now=NOV_25, registry=registry, settings=settings)
    with pytest.raises(ConfigError, match="org must be UTF-8 text"):
        check_quota(db, "ac\udcffme", now=NOV_25, settings=settings)
    assert db.list_collection_names() == []
    assert check_quota(db, "ac\ufffdme", now=NOV_25, settings=settings).state == "unknown"


@pytest.mark.parametrize("now", ["2026-11-25T00:00:00Z", 1_795_000_000, date(2026, 11, 25)])
def test_a_now_that_is_not_a_datetime_is_refused_by_the_quota_check_too(settings, now):
    """Outside hunt: `check_quota(db, org, now=time.time())` (or an ISO string) raised an
    AttributeError from deep inside; `run_chore` and `finalize_invoices` said it."""
    from chores import ConfigError

    db = mongomock.MongoClient()["main"]
    with pytest.raises(ConfigError, match="now must be a datetime, got "):
        check_quota(db, "acme", now=now, settings=settings)


def test_a_flag_that_is_not_true_or_false_is_refused_and_nothing_is_written(settings, registry):
    """Outside review: `run_chore(db, full="no")` ran a full pass (the string is truthy)
    and recorded `full_scan: false` (pydantic reads "no" as False); `full={...}` failed
    on a ValidationError naming `RunReport.full_scan`."""
    import pytest

    from chores import ConfigError

    db = mongomock.MongoClient()["main"]
    db.tasks.insert_many(
        generate_corpus(seed=3, start=datetime(2026, 11, 1, tzinfo=UTC), days=20).tasks
    )
    before = db.list_collection_names()
    for flags in ({"full": "no"}, {"full": {"x": 1}}, {"dry_run": "yes"}, {"dry_run": 0}):
        ((name, value),) = flags.items()
        with pytest.raises(
            ConfigError, match="^" + re.escape(f"{name} must be true or false, got {value!r}")
        ):
            run_chore(db, now=NOV_25, registry=registry, settings=settings, **flags)
    assert db.list_collection_names() == before


def test_the_callers_database_keeps_its_own_codec_options(settings, registry):
    db = mongomock.MongoClient()["main"]
    db.tasks.insert_one(runner("acme", 1_000, NOV_25 - timedelta(days=1)))
    run_chore(db, now=NOV_25, registry=registry, settings=settings)
    assert db.codec_options.tz_aware is False
    assert db.billing_invoices.find_one()["updated_at"].tzinfo is None  # still naive for it


def test_a_pymongo_database_is_read_with_aware_utc_datetimes():
    client: pymongo.MongoClient[Any] = pymongo.MongoClient("mongodb://localhost:1", connect=False)
    try:
        plain = client["main"]
        view = utc_view(plain)
        assert view.codec_options.tz_aware is True
        assert view.codec_options.tzinfo is UTC
        assert view.name == "main" and view.client is client
        assert plain.codec_options.tz_aware is False
        assert utc_view(view) is view  # already what the chore reads: taken as it is
    finally:
        client.close()


# --- 10. usage time bounded by now + FUTURE_SKEW_SECONDS ---------------------------------


def test_an_end_time_40_days_ahead_is_held_until_now_reaches_it(db, settings, registry):
    # Before: 900,000 tokens went into a 2027-01 draft at once, and today's quota saw 0.
    ahead = NOV_25 + timedelta(days=40)
    db.tasks.insert_many(
        [
            runner("acme", 900_000, ahead),
            runner("acme", 1_000, NOV_25 + timedelta(seconds=settings.future_skew_seconds)),
        ]
    )
    report = run_chore(db, now=NOV_25, registry=registry, settings=settings)
    assert report.tokens_billed == 1_000  # within the skew: billed
    assert report.anomalies == {"future_end_time": 1}
    assert [i["_id"] for i in db.billing_invoices.find()] == ["acme:2026-11"]
    assert db.billing_invoices.find_one()["needs_review"] is True
    anomaly = db.billing_anomalies.find_one({"kind": "future_end_time"})
    assert anomaly["period"] == "2026-11" and not anomaly.get("resolved")
    assert anomaly["detail"] == (  # times in ISO 8601 (was a cut `datetime.datetime(...` repr)
        f"end_time {ahead.isoformat()} > now {NOV_25.isoformat()} + 300 s"
    )
    assert check_quota(db, "acme", now=NOV_25, settings=settings).used_tokens == 1_000

    # Later runs, the document untouched (its stamp long behind the cursor): still held
    # while its end time is ahead, billed once `now` reaches it, in its own period.
    run_chore(db, now=ahead - timedelta(days=1), registry=registry, settings=settings)
    assert ledger_tokens(db) == 1_000
    report = run_chore(db, now=ahead, registry=registry, settings=settings)
    assert report.tokens_billed == 900_000 and report.anomalies == {}
    assert db.billing_invoices.find_one({"_id": "acme:2027-01"})["lines"][0]["tokens"] == 900_000
    assert db.billing_anomalies.find_one({"kind": "future_end_time"})["resolved"] is True
    assert ledger_tokens(db) == invoiced_tokens(db) == 901_000


def test_the_future_skew_is_the_settings_one(db, settings, registry):
    db.tasks.insert_one(runner("acme", 1_000, NOV_25 + timedelta(hours=1)))
    strict = settings.model_copy(update={"future_skew_seconds": 60.0})
    assert run_chore(db, now=NOV_25, registry=registry, settings=strict).tokens_billed == 0
    lenient = settings.model_copy(update={"future_skew_seconds": 7_200.0})
    assert run_chore(db, now=NOV_25, registry=registry, settings=lenient).tokens_billed == 1_000


def test_the_pure_rules_and_the_memory_meter_hold_a_future_end_time():
    from chores.metering.memory_meter import MemoryMeter
    from chores.metering.rules import assess

    doc = runner("acme", 5_000, NOV_25 + timedelta(days=40))
    options: dict[str, Any] = {"spawn_contexts": [], "head": None, "max_tokens_per_run": 10**9}
    held = assess(doc, now=NOV_25, future_skew_seconds=300, **options)
    assert held.delta is None and held.pending is True  # re-read until billable
    assert [a.kind for a in held.anomalies] == ["future_end_time"]
    later = assess(doc, now=NOV_25 + timedelta(days=40), future_skew_seconds=300, **options)
    assert later.delta is not None and later.delta.period == "2027-01"
    # A year 9999 end time stays garbage (bad_end_time), as before.
    garbage = assess(
        runner("acme", 5_000, datetime(9999, 12, 31, tzinfo=UTC)),
        now=NOV_25,
        future_skew_seconds=300,
        **options,
    )
    assert [a.kind for a in garbage.anomalies] == ["bad_end_time"]

    meter = MemoryMeter(now=NOV_25, max_tokens_per_run=10**9, future_skew_seconds=300)
    meter.feed([(doc, [])])
    assert meter.usage == {} and meter.anomalies == 1


# --- 11. runner keys never shared ---------------------------------------------------------


def test_long_runner_ids_sharing_a_prefix_keep_their_own_high_water_marks(db, settings, registry):
    # Before: both ids were cut to the same 300-character key, so the second runner's
    # usage was judged against the first one's high-water mark: globex under-billed
    # (nothing), and on a rerun acme got a false counter_decreased.
    prefix = "r" * 400
    db.tasks.insert_many(
        [
            runner("acme", 5_000, NOV_25 - timedelta(hours=2), _id=prefix + "-acme"),
            runner("globex", 3_000, NOV_25 - timedelta(hours=1), _id=prefix + "-globex"),
        ]
    )
    report = run_chore(db, now=NOV_25, registry=registry, settings=settings)
    assert report.anomalies == {}
    assert (ledger_tokens(db, "acme"), ledger_tokens(db, "globex")) == (5_000, 3_000)
    again = run_chore(db, now=NOV_25, registry=registry, settings=settings, full=True)
    assert again.tokens_billed == 0 and again.anomalies == {}
    assert invoiced_tokens(db, "acme") == 5_000 and invoiced_tokens(db, "globex") == 3_000


def test_runner_keys_are_distinct_and_short_ones_unchanged():
    from chores.metering.runner_keys import runner_key

    oid = ObjectId()
    assert runner_key(oid) == str(oid)
    assert runner_key("abc") == "str:'abc'"  # the key existing ledgers hold
    assert runner_key(str(oid)) != runner_key(oid)
    shared = "x" * 300
    long_keys = {runner_key(shared + tail) for tail in ("a", "b", "ab", "")}
    assert len(long_keys) == 4
    assert all(len(k) <= 300 for k in long_keys)
    # the SHA-256 of its `type:repr`, the same in every process (not Python's salted hash())
    digested = runner_key(shared + "a")
    assert digested == "sha256-" + hashlib.sha256(f"str:'{shared}a'".encode()).hexdigest()


def test_an_integer_id_has_the_key_a_server_gives_it():
    """BSON stores an int outside int32 as int64 and every read gives back an `Int64`: a
    runner inserted as `2**40` once had the key `int:...` until the local store reloaded
    it as `Int64(...)`, and was billed twice."""
    from bson.int64 import Int64

    from chores.metering.runner_keys import runner_key

    assert runner_key(2**40) == runner_key(Int64(2**40)) == "Int64:1099511627776"
    assert runner_key(-(2**31) - 1) == runner_key(Int64(-(2**31) - 1))
    assert runner_key(2**31 - 1) == "int:2147483647"  # an int32: what a server gives back
    assert runner_key(True) == "bool:True"


# --- 12. spawn findings of another org are never a baseline -------------------------------


def _parent_and_subagent(db: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """acme's parent (12,000 tokens) and its subagent, which inherited those 12,000 and
    used 5,000 of its own: acme's truth is 17,000 tokens."""
    parent = runner("acme", 12_000, NOV_25 - timedelta(hours=2), _id=ObjectId())
    child = runner("acme", 17_000, NOV_25 - timedelta(hours=1), _id=ObjectId())
    child["context"].update(subagent="sub-1", ai_subagent_depth=1, parent_session_id="s-1")
    db.tasks.insert_many([parent, child])
    return parent, child


def _spawn_finding(child: dict[str, Any], org: str, tokens: int) -> dict[str, Any]:
    return {
        "_id": ObjectId(),
        "_type": "ai",
        "ai_type": "task",
        "extra_data": {"runner_id": str(child["_id"]), "runner_type": "task"},
        "_context": {**context(org, tokens), "task_id": "spawner"},
    }


def test_another_orgs_spawn_finding_cannot_raise_a_subagents_baseline(db, settings, registry):
    # Before: globex's finding (17,000) merged with acme's (12,000) as a baseline
    # conflict, the highest won: acme billed 12,000 of its 17,000.
    _, child = _parent_and_subagent(db)
    db.findings.insert_many(
        [_spawn_finding(child, "acme", 12_000), _spawn_finding(child, "globex", 17_000)]
    )
    report = run_chore(db, now=NOV_25, registry=registry, settings=settings)
    assert report.anomalies == {}
    assert ledger_tokens(db, "acme") == invoiced_tokens(db, "acme") == 17_000
    assert ledger_tokens(db, "globex") == 0 and db.billing_invoices.count_documents({}) == 1


def test_another_orgs_spawn_finding_cannot_lower_a_subagents_baseline(db, settings, registry):
    # Before: globex's finding (0 inherited) was the only one, so acme's subagent was
    # billed its inherited 12,000 again: 29,000 of 17,000.
    _, child = _parent_and_subagent(db)
    db.findings.insert_one(_spawn_finding(child, "globex", 0))
    report = run_chore(db, now=NOV_25, registry=registry, settings=settings)
    assert report.anomalies == {"baseline_missing": 1}
    anomaly = db.billing_anomalies.find_one({"kind": "baseline_missing"})
    assert "1 spawn finding(s) of another org ignored" in anomaly["detail"]
    assert ledger_tokens(db, "acme") == 12_000  # the parent; the subagent is held
    # acme's own finding appears: the subagent is billed its own 5,000, and no more.
    db.findings.insert_one(_spawn_finding(child, "acme", 12_000))
    report = run_chore(db, now=NOV_25 + timedelta(minutes=5), registry=registry, settings=settings)
    assert report.tokens_billed == 5_000
    assert ledger_tokens(db, "acme") == invoiced_tokens(db, "acme") == 17_000
    assert db.billing_anomalies.find_one({"kind": "baseline_missing"})["resolved"] is True


def test_only_own_org_spawn_findings_are_read_by_the_rules():
    from chores.metering.rules import read_spawn

    acme = {**context("acme", 100), "task_id": "p"}
    globex = {**context("globex", 50), "task_id": "q"}
    assert read_spawn([acme], "acme") == ((100, 50, 50, 0), "p", None, "")
    assert read_spawn([globex, acme], "acme") == ((100, 50, 50, 0), "p", None, "")
    baseline, parent, kind, detail = read_spawn([globex], "acme")
    assert (baseline, parent, kind) == (None, None, "baseline_missing")
    assert "1 spawn finding(s) of another org ignored" in detail
    # Not a mapping, or no org at all: not this org's finding either.
    assert read_spawn(["junk", {"ai_tokens": 1}], "acme")[2] == "baseline_missing"
    # Own findings that disagree: the existing conflict rule (highest baseline, flagged).
    other = {**context("acme", 200), "task_id": "p"}
    baseline, _, kind, detail = read_spawn([acme, other, globex], "acme")
    assert baseline == (200, 100, 100, 0) and kind == "baseline_conflict"
    assert "ignored" in detail
    # Case-sensitive, exact: "ACME" is another org.
    assert read_spawn([{**acme, "workspace_id": "ACME"}], "acme")[2] == "baseline_missing"
