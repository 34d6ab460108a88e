"""Quota: plans, decisions at the boundaries, the pre-run check and its failure modes."""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
import pytest
import redis
from bson import ObjectId
from hypothesis import example, given
from hypothesis import strategies as st
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from chores import ConfigError, check_quota, connect, run_chore
from chores.core.db import Collections
from chores.core.settings import Plan, Settings
from chores.quota.cache import PROCESS
from chores.quota.decisions import INVALID_PLAN, Quota, QuotaDecision, evaluate

from support import WALL_CLOCK, flushed_redis_db
from support.dbproxy import CountingDatabase, DatabaseProxy, FailingDatabase, PauseAt, pause_at

NOV = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings() -> Settings:
    """A store of its own for each test, named by MONGO_URL, so that its decisions may be
    mirrored (only the database MONGO_URL names is: `cache.namespace`)."""
    return Settings(
        mongo_url=f"mongomock://quota-{uuid.uuid4().hex}", batch_size=50, redis_url=None
    )


@pytest.fixture
def db(settings):
    return connect(settings)


def ai_run(
    org: str,
    prompt: int,
    completion: int = 0,
    *,
    model: str = "gpt-4o-mini",
    ended: datetime = NOV - timedelta(hours=1),
) -> dict:
    return {
        "_id": ObjectId(),
        "name": "ai",
        "status": "SUCCESS",
        "end_time": ended,
        "last_updated_db": ended.timestamp(),
        "context": {
            "workspace_id": org,
            "ai_model": model,
            "ai_tokens": prompt + completion,
            "ai_prompt_tokens": prompt,
            "ai_completion_tokens": completion,
        },
    }


def meter(db, settings, registry, *docs, now=NOV, org="acme"):
    if docs:
        db.tasks.insert_many(list(docs))
    return run_chore(db, org=org, now=now, registry=registry, settings=settings)


def set_plan(db, org="acme", **plan):
    db.billing_plans.replace_one({"_id": org}, plan, upsert=True)


@pytest.mark.parametrize(
    ("used", "expected"),
    [(7_999, "ok"), (8_000, "warn"), (9_999, "warn"), (10_000, "block"), (10_001, "block")],
)
def test_token_limit_boundaries(db, settings, registry, used, expected):
    set_plan(db, token_limit=10_000, soft_ratio=0.8)
    meter(db, settings, registry, ai_run("acme", used))
    stored = db.billing_quota.find_one({"_id": "acme"})
    assert stored["state"] == expected and stored["used_tokens"] == used
    decision = check_quota(db, "acme", now=NOV, settings=settings)
    assert decision.state == expected
    assert decision.allowed is (expected != "block")
    assert decision.used_tokens == used and decision.token_limit == 10_000


def test_spend_limit_exactly_reached_blocks(db, settings, registry):
    # gpt-4o-mini input rate x tokens = micros; set the limit to exactly that amount.
    rate = registry.resolve("gpt-4o-mini").price_at(NOV).input
    tokens = 1_000_000
    set_plan(db, spend_limit_micros=int(tokens * rate))
    meter(db, settings, registry, ai_run("acme", tokens))
    decision = check_quota(db, "acme", now=NOV, settings=settings)
    assert decision.spent_micros == int(tokens * rate)
    assert (decision.state, decision.allowed) == ("block", False)
    set_plan(db, spend_limit_micros=int(tokens * rate) + 1)
    meter(db, settings, registry)
    assert check_quota(db, "acme", now=NOV, settings=settings).state == "warn"


def test_estimate_pushes_over_the_token_limit(db, settings, registry):
    set_plan(db, token_limit=10_000)
    meter(db, settings, registry, ai_run("acme", 9_000))
    assert check_quota(db, "acme", 999, now=NOV, settings=settings).allowed is True
    refused = check_quota(db, "acme", 1_000, now=NOV, settings=settings)
    assert (refused.state, refused.allowed) == ("block", False)
    assert "estimate" in refused.reason


def test_overdraft_grace_tokens(db, settings, registry):
    set_plan(db, token_limit=10_000, grace_tokens=500)
    meter(db, settings, registry, ai_run("acme", 10_400))
    assert check_quota(db, "acme", now=NOV, settings=settings).state == "warn"
    meter(db, settings, registry, ai_run("acme", 100))
    assert check_quota(db, "acme", now=NOV, settings=settings).state == "block"


def test_a_warning_below_the_limit_never_says_100_percent():
    """1,163 of 1,164 tokens once read "at 100% of its limit": a person reads the limit
    reached, and the run was allowed. Shares are rounded down."""
    state, reasons = evaluate(Plan(token_limit=1_164, soft_ratio=0.8), 1_163, 0)
    assert (state, reasons) == ("warn", ["token usage at 99% of its limit (1,164 tokens)"])
    decision = QuotaDecision(
        org="acme", state=state, allowed=True, reason="", period="2026-11",
        used_tokens=1_163, token_limit=1_164, reasons=reasons,
    )  # fmt: skip
    # not "1.2K of 1.2K": counts that round alike are shown whole
    assert decision.summary().startswith("acme: warn — 1,163 of 1,164 tokens (99%)")


def test_an_estimate_into_the_overdraft_says_so(db, settings, registry):
    """An estimate past the limit but within the overdraft is allowed: the reason once said it
    would "near" the limit; a block said "reach the token limit" of a limit the org may pass."""
    set_plan(db, token_limit=10_000, grace_tokens=5_000)
    meter(db, settings, registry, ai_run("acme", 4_000))
    within = check_quota(db, "acme", 7_000, now=NOV, settings=settings)
    assert (within.state, within.allowed) == ("warn", True)
    assert within.reasons == [
        "the estimate of 7,000 tokens would pass the token limit, within its overdraft: "
        "4,000 used + 7,000 estimated of 10,000 (+5,000 overdraft)"
    ]
    beyond = check_quota(db, "acme", 11_000, now=NOV, settings=settings)
    assert (beyond.state, beyond.allowed) == ("block", False)
    assert beyond.reasons == [
        "the estimate of 11,000 tokens would reach the token limit and its overdraft: "
        "4,000 used + 11,000 estimated of 10,000 (+5,000 overdraft)"
    ]
    near = check_quota(db, "acme", 4_500, now=NOV, settings=settings)
    assert near.reasons == [
        "the estimate of 4,500 tokens would near the token limit: "
        "4,000 used + 4,500 estimated of 10,000 (+5,000 overdraft)"
    ]


def test_free_byok_and_unpriced_usage_count_toward_tokens(db, settings, registry):
    set_plan(db, token_limit=10_000)
    byok = ai_run("acme", 3_000, model="gpt-4o")
    byok["context"]["ai_key_source"] = "byok"
    meter(
        db,
        settings,
        registry,
        ai_run("acme", 3_000, model="ollama/llama3.1"),
        byok,
        ai_run("acme", 4_000, model="mystery-model-9000"),
    )
    decision = check_quota(db, "acme", now=NOV, settings=settings)
    assert (decision.used_tokens, decision.spent_micros, decision.state) == (10_000, 0, "block")
    assert decision.unpriced_tokens == 4_000


def test_new_month_starts_at_zero_before_the_chore_runs(db, settings, registry):
    set_plan(db, token_limit=10_000)
    meter(
        db,
        settings,
        registry,
        ai_run("acme", 10_000),
        now=datetime(2026, 11, 30, 23, 55, tzinfo=UTC),
    )
    december = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
    decision = check_quota(db, "acme", now=december, settings=settings)
    assert (decision.state, decision.used_tokens, decision.period) == ("ok", 0, "2026-12")
    assert decision.allowed


@pytest.mark.parametrize("fail_open", [True, False])
def test_stale_and_missing_decisions_are_unknown(db, settings, registry, fail_open):
    settings = settings.model_copy(update={"quota_fail_open": fail_open})
    missing = check_quota(db, "nobody", now=NOV, settings=settings)
    assert (missing.state, missing.allowed) == ("unknown", fail_open)

    set_plan(db, token_limit=10_000)
    meter(db, settings, registry, ai_run("acme", 1_000))
    fresh = NOV + timedelta(seconds=settings.quota_max_staleness_seconds)
    assert check_quota(db, "acme", now=fresh, settings=settings).state == "ok"
    stale = check_quota(db, "acme", now=fresh + timedelta(seconds=1), settings=settings)
    assert (stale.state, stale.stale, stale.allowed) == ("unknown", True, fail_open)
    assert stale.used_tokens == 1_000


def test_a_stale_answer_says_what_the_last_decision_was_and_how_old_it_is(db, settings, registry):
    """Quota review: a `block` checked 16 minutes later read "unknown — decision is 960s
    old", with no word of the block, and its JSON lost the state and the unpriced tokens."""
    set_plan(db, token_limit=1_000)
    meter(db, settings, registry, ai_run("acme", 5_000), ai_run("acme", 700, model="nope-9"))
    stale = check_quota(db, "acme", now=NOV + timedelta(minutes=16), settings=settings)
    assert (stale.state, stale.last_state, stale.allowed) == ("unknown", "block", True)
    assert (stale.used_tokens, stale.unpriced_tokens) == (5_700, 700)
    assert stale.summary() == (
        "acme: unknown — the last decision (block) is 16 min old: none made since (fail-open)"
        " (allowed)"
    )
    just_stale = NOV + timedelta(seconds=settings.quota_max_staleness_seconds + 1)
    assert "is 16 min old" in check_quota(db, "acme", now=just_stale, settings=settings).reason
    db.billing_quota.update_one({"_id": "acme"}, {"$set": {"state": "BLOCK"}})
    odd = check_quota(db, "acme", now=NOV + timedelta(minutes=16), settings=settings)
    assert odd.last_state is None and "(state unreadable)" in odd.reason  # for scripts: null
    db.billing_quota.update_one({"_id": "acme"}, {"$set": {"state": "block"}})
    next_month = check_quota(db, "acme", now=NOV + timedelta(days=12), settings=settings)
    assert (next_month.last_state, next_month.used_tokens) == (None, 0)
    assert next_month.reason == (
        "the last decision of 2026-11 (block) is 12 days old: none made since (fail-open)"
    )


@pytest.mark.parametrize(
    ("state", "said"),
    [
        ("frobnicate", "state 'frobnicate' is not one of ok, warn, block"),
        ("block", "state 'block' is not what its usage and limits decide ('ok')"),
    ],
)
def test_a_fresh_decision_whose_state_was_edited_is_no_decision(
    db, settings, registry, state, said
):
    """Outside review: `chore status` called such a decision malformed, while `quota check`
    re-evaluated its numbers and answered `ok`, a `block` written by hand ignored alike."""
    meter(db, settings, registry, ai_run("acme", 5_000))
    assert check_quota(db, "acme", now=NOV, settings=settings).state == "ok"
    db.billing_quota.update_one({"_id": "acme"}, {"$set": {"state": state}})
    edited = check_quota(db, "acme", now=NOV, settings=settings)
    assert edited.state == "unknown" and edited.allowed == settings.quota_fail_open
    assert edited.reason.startswith(f"its stored decision is malformed ({said})"), edited.reason


def test_unpriced_tokens_are_said_beside_the_spend_they_are_not_in(db, settings, registry):
    """Quota review: 1M tokens of an unknown model read "$0.00 of $1.00 (0%) — within plan":
    they count in the tokens, and have no price to count in the spend."""
    set_plan(db, spend_limit_micros=1_000_000)
    meter(db, settings, registry, ai_run("acme", 1_000_000, model="mystery-model-9000"))
    decision = check_quota(db, "acme", now=NOV, settings=settings)
    assert (decision.state, decision.unpriced_tokens) == ("ok", 1_000_000)
    assert decision.summary() == (
        "acme: ok — 1M tokens (no limit; 1M unpriced), $0.00 of $1.00 (0%)"
    )


@pytest.mark.parametrize("fail_open", [True, False])
def test_mongo_down_answers_by_policy(db, settings, fail_open):
    settings = settings.model_copy(update={"quota_fail_open": fail_open})
    down = FailingDatabase(db, ServerSelectionTimeoutError("no servers"))
    decision = check_quota(down, "acme", now=NOV, settings=settings)
    assert (decision.state, decision.allowed) == ("unknown", fail_open)
    assert "unavailable" in decision.reason


def test_check_is_one_indexed_read_of_the_billing_database(db, settings, registry):
    set_plan(db, token_limit=10_000)
    meter(db, settings, registry, ai_run("acme", 1_000))
    counting = CountingDatabase(db)
    check_quota(counting, "acme", 500, now=NOV, settings=settings)
    assert counting.calls == {("billing_quota", "find_one"): 1}


def test_state_changes_are_recorded_as_events(db, settings, registry):
    set_plan(db, token_limit=10_000)
    for minute, tokens in enumerate([1_000, 1_000, 7_000, 1_000]):  # ok, ok, warn, block
        meter(db, settings, registry, ai_run("acme", tokens), now=NOV + timedelta(minutes=minute))
    events = [
        (e["from"], e["to"])
        for e in db.billing_quota_events.find({"org": "acme"}, sort=[("at", 1)])
    ]
    assert events == [(None, "ok"), ("ok", "warn"), ("warn", "block")]


def test_org_without_plan_gets_the_default_plan(db, settings, registry):
    meter(db, settings, registry, ai_run("acme", 50_000))
    decision = check_quota(db, "acme", now=NOV, settings=settings)
    assert (decision.state, decision.token_limit, decision.spend_limit_micros) == ("ok", None, None)
    limited = settings.model_copy(update={"default_token_limit": 40_000})
    assert limited.default_plan.token_limit == 40_000
    meter(db, limited, registry, ai_run("acme", 1))
    assert check_quota(db, "acme", now=NOV, settings=limited).state == "block"


def test_an_own_plan_without_a_limit_has_none_whatever_the_default(db, settings, registry):
    limited = settings.model_copy(update={"default_token_limit": 1_000})
    set_plan(db, "acme", token_limit=None, soft_ratio=0.5)  # null: no limit (SPEC §7)
    set_plan(db, "beta", soft_ratio=0.5)  # missing: no limit either
    docs = [ai_run(org, 5_000) for org in ("acme", "beta", "gamma")]
    meter(db, limited, registry, *docs, org=None)
    for org in ("acme", "beta"):
        decision = check_quota(db, org, now=NOV, settings=limited)
        assert (decision.state, decision.token_limit) == ("ok", None)
    no_plan = check_quota(db, "gamma", now=NOV, settings=limited)  # the default plan's limit
    assert (no_plan.state, no_plan.token_limit) == ("block", 1_000)


def test_a_zero_token_limit_with_an_overdraft_warns_then_blocks(db, settings, registry):
    set_plan(db, token_limit=0, grace_tokens=1_000)
    meter(db, settings, registry, ai_run("acme", 999))
    decision = check_quota(db, "acme", now=NOV, settings=settings)
    assert decision.state == "warn" and decision.reason == (
        "token limit reached: 999 tokens used of 0 tokens, within its overdraft (+1,000 tokens)"
    )
    meter(db, settings, registry, ai_run("acme", 1))
    assert check_quota(db, "acme", now=NOV, settings=settings).state == "block"


@pytest.mark.parametrize(
    "bad",
    [
        {"token_limit": "10M"},
        {"token_limit": -1},
        {"soft_ratio": 0},
        {"soft_ratio": 80},
        # outside review: read as a 1-token limit, a $0 one, a limit of 5,000, a ratio of 1
        {"token_limit": True},
        {"spend_limit_micros": False},
        {"token_limit": "5000"},
        {"soft_ratio": True},
        {"grace_tokens": True},
        {"token_limit": b"5"},  # review: read as a 5-token limit
    ],
)
def test_an_invalid_plan_holds_its_own_org_only(db, settings, registry, caplog, bad):
    set_plan(db, token_limit=120)
    meter(db, settings, registry, ai_run("acme", 100), ai_run("beta", 100), org=None)
    set_plan(db, **bad)
    with caplog.at_level(logging.ERROR, logger="chores.quota.decisions"):
        report = meter(db, settings, registry, ai_run("acme", 60), ai_run("beta", 1), org=None)
    assert report.decisions == {"acme": INVALID_PLAN, "beta": "ok"}
    kept = db.billing_quota.find_one({"_id": "acme"})  # its last decision stands
    assert (kept["state"], kept["used_tokens"]) == ("warn", 100)
    assert db.billing_quota.find_one({"_id": "beta"})["used_tokens"] == 101
    assert "plan of 'acme' is invalid, no decision written" in caplog.text


def test_a_limit_written_as_a_whole_float_is_that_whole_number(db, settings, registry):
    """A shell writes numbers as doubles: `token_limit: 120.0` is a 120-token limit."""
    set_plan(db, token_limit=120.0)
    report = meter(db, settings, registry, ai_run("acme", 130))
    assert report.decisions == {"acme": "block"}
    assert db.billing_quota.find_one({"_id": "acme"})["token_limit"] == 120


@given(percent=st.integers(1, 100), limit=st.integers(1, 10**15))
@example(percent=55, limit=100_000)  # 0.55 x 100,000 is 55,000.000000000004 in floats
def test_usage_exactly_at_the_soft_ratio_warns(percent, limit):
    """The soft ratio is the decimal written, not the float nearest to it."""
    first_warn = -(-percent * limit // 100)  # the least usage with used >= ratio x limit
    for kind, plan, spend in (
        ("tokens", Plan(token_limit=limit, soft_ratio=percent / 100), False),
        ("spend", Plan(spend_limit_micros=limit, soft_ratio=percent / 100), True),
    ):
        for used, expected in ((first_warn - 1, "ok"), (first_warn, "warn")):
            if 0 <= used < limit:
                state, _ = evaluate(plan, 0 if spend else used, used if spend else 0)
                assert state == expected, (kind, used)


@pytest.mark.parametrize("bad", ["", None, {"$ne": None}, 42, "x" * 10_000])
def test_org_must_be_plain_data(db, settings, bad):
    with pytest.raises(ConfigError):
        check_quota(db, bad, now=NOV, settings=settings)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_estimate_must_be_a_non_negative_integer(db, settings, bad):
    with pytest.raises(ConfigError):
        check_quota(db, "acme", bad, now=NOV, settings=settings)


# Redis cache -------------------------------------------------------------------------
@pytest.fixture
def redis_url(redis_base_url):
    with flushed_redis_db(redis_base_url, 15) as url:
        yield url


def test_cached_check_does_not_touch_mongo(db, settings, registry, redis_url):
    settings = settings.model_copy(update={"redis_url": redis_url})
    set_plan(db, token_limit=10_000)
    meter(db, settings, registry, ai_run("acme", 8_500))
    counting = CountingDatabase(db)
    decision = check_quota(counting, "acme", 1_500, now=NOV, settings=settings)
    assert (decision.state, decision.used_tokens) == ("block", 8_500)
    assert counting.calls == {}
    # the org's key, named after the collection its decision is in (and the local store)
    key = f"billing:quota:{settings.mongo_url}@{PROCESS}#main.billing_quota:acme"
    assert redis.Redis.from_url(redis_url).ttl(key) > 0


def test_databases_sharing_one_redis_never_answer_for_each_other(settings, registry, redis_url):
    """The demo's store, another database on the same store, and another store: each
    check answers from its own decisions, never from another's mirrored one."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    client = mongomock.MongoClient(tz_aware=True)
    demo = client["main"]
    set_plan(demo, token_limit=1_000)
    meter(demo, cached, registry, ai_run("acme", 5_000))
    assert check_quota(demo, "acme", now=NOV, settings=cached).state == "block"

    elsewhere = [
        (client["other"], cached),  # another database, same store
        (
            mongomock.MongoClient(tz_aware=True)["main"],
            cached.model_copy(update={"mongo_url": "mongomock://another-store"}),
        ),  # another local store
    ]
    for db, its_settings in elsewhere:
        decision = check_quota(db, "acme", now=NOV, settings=its_settings)
        assert decision.state == "unknown"
        assert decision.reason.startswith("no quota decision yet")


def test_in_process_databases_under_a_server_url_share_no_mirror(settings, registry, redis_url):
    """Review: two mongomock databases called through the API with REDIS_URL set and the
    default (server) MONGO_URL shared one mirror entry per org, keyed by that URL: the
    other database's `ok` answered for this one's `block`. The URL names neither: no
    mirror, each check reads its own decision, and the run says why."""
    server_url = settings.model_copy(
        update={"redis_url": redis_url, "mongo_url": "mongodb://localhost:27017"}
    )
    prod, other = (mongomock.MongoClient(tz_aware=True)["main"] for _ in range(2))
    set_plan(prod, token_limit=1_000)
    set_plan(other, token_limit=1_000_000)
    assert meter(prod, server_url, registry, ai_run("acme", 5_000)).decisions == {"acme": "block"}
    ran = meter(other, server_url, registry, ai_run("acme", 10))
    assert ran.decisions == {"acme": "ok"}
    assert ran.mirror_missed == "the database is in-process, not the one MONGO_URL names"
    assert check_quota(prod, "acme", now=NOV, settings=server_url).state == "block"
    assert check_quota(other, "acme", now=NOV, settings=server_url).state == "ok"
    assert redis.Redis.from_url(redis_url).keys("billing:quota:*") == []


def test_a_miss_reads_mongo_until_a_run_mirrors_its_decision_then_hits(
    db, settings, registry, redis_url
):
    set_plan(db, token_limit=10_000)
    meter(db, settings, registry, ai_run("acme", 100))  # written without the cache
    cached = settings.model_copy(update={"redis_url": redis_url})
    counting = CountingDatabase(db)
    assert check_quota(counting, "acme", now=NOV, settings=cached).state == "ok"
    assert check_quota(counting, "acme", now=NOV, settings=cached).state == "ok"
    assert counting.calls == {("billing_quota", "find_one"): 2}  # a check mirrors nothing
    meter(db, cached, registry, ai_run("acme", 9_000))  # a run's decision is mirrored
    counting = CountingDatabase(db)
    decision = check_quota(counting, "acme", now=NOV, settings=cached)
    assert (decision.state, decision.used_tokens, counting.calls) == ("warn", 9_100, {})


def test_a_decision_that_lost_to_a_newer_one_is_not_mirrored(db, settings, registry, redis_url):
    cached = settings.model_copy(update={"redis_url": redis_url})
    set_plan(db, token_limit=10_000)
    meter(db, cached, registry, ai_run("acme", 100))
    # A concurrent run that read a later draft stored its decision first...
    newer = {"used_tokens": 12_000, "state": "block", "draft_ticket": 10**6}
    db.billing_quota.update_one({"_id": "acme"}, {"$set": newer})
    # ...so this one, computed from an older draft, is refused by MongoDB and must not be
    # answered.
    Quota(Collections.of(db, cached), cached).decide(["acme"], NOV)
    decision = check_quota(db, "acme", now=NOV, settings=cached)
    assert (decision.state, decision.used_tokens) == ("block", 12_000)


def test_a_slower_decision_from_less_usage_never_replaces_a_newer_mirrored_one(
    db, settings, registry, redis_url
):
    """A fan-out decides an idle org from the usage it read; before it mirrors that, the
    org's own run bills more and mirrors `block`. MongoDB keeps the run's; so must Redis."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    set_plan(db, token_limit=1_000)
    meter(db, cached, registry, ai_run("acme", 100))
    fan_out = Quota(Collections.of(db, cached), cached)
    mirror = fan_out._cache.put_many

    def the_run_mirrors_first(decisions):
        assert meter(db, cached, registry, ai_run("acme", 5_000)).decisions == {"acme": "block"}
        mirror(decisions)

    fan_out._cache.put_many = the_run_mirrors_first
    assert fan_out.decide(["acme"], NOV) == {"acme": "ok"}
    counting = CountingDatabase(db)
    decision = check_quota(counting, "acme", now=NOV + timedelta(minutes=1), settings=cached)
    assert (decision.state, decision.used_tokens) == ("block", 5_100)
    assert counting.calls == {}  # answered by the mirror


def test_a_check_mirroring_what_it_read_never_replaces_a_newer_decision(
    db, settings, registry, redis_url
):
    """A check misses the mirror and reads MongoDB; a run decides `block` and mirrors it
    before the check mirrors the decision it read: the check answers what it read, the
    mirror keeps the run's."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    set_plan(db, token_limit=1_000)
    meter(db, settings, registry, ai_run("acme", 100))  # decided without the mirror

    def a_run():
        return meter(db, cached, registry, ai_run("acme", 5_000)).decisions["acme"]

    assert check_with_meanwhile(db, cached, a_run) == ("ok", "block")
    decision, calls = answer_and_calls(db, cached)
    assert (decision.state, decision.used_tokens, calls) == ("block", 5_100, {})


def test_a_decision_of_a_later_period_replaces_the_mirrored_one_of_more_usage(
    db, settings, registry, redis_url
):
    cached = settings.model_copy(update={"redis_url": redis_url})
    set_plan(db, token_limit=1_000)
    meter(db, cached, registry, ai_run("acme", 5_000))
    december = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
    Quota(Collections.of(db, cached), cached).decide(["acme"], december)
    counting = CountingDatabase(db)
    decision = check_quota(counting, "acme", now=december, settings=cached)
    assert (decision.state, decision.used_tokens, decision.period) == ("ok", 0, "2026-12")
    assert counting.calls == {}


def test_a_check_mirroring_what_it_read_never_replaces_a_new_plans_decision(
    db, settings, registry, redis_url
):
    """Same usage, a new plan: a check reads `ok` under the old limit, `plan set` lowers it
    and mirrors `block` before the check mirrors what it read (review of fabf24a)."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    set_plan(db, token_limit=1_000_000)
    meter(db, settings, registry, ai_run("acme", 5_000))  # decided without the mirror

    def a_plan_set():  # as `chore plan set` does: the plan, then the decision
        set_plan(db, token_limit=1_000)
        return Quota(Collections.of(db, cached), cached).decide(["acme"], NOV)["acme"]

    assert check_with_meanwhile(db, cached, a_plan_set) == ("ok", "block")
    decision, calls = answer_and_calls(db, cached)
    assert (decision.state, decision.token_limit, calls) == ("block", 1_000, {})


def test_a_check_never_puts_back_a_decision_a_refused_one_dropped(
    db, settings, registry, redis_url
):
    """A check misses the mirror and reads `ok`; meanwhile a run bills more and mirrors
    `block`, and a fan-out that read the usage before that run is refused and drops the
    org's entry. The check must not put its `ok` back there: only a decision's writer,
    under MongoDB's rule, fills the mirror (quota review: a blocked org was let run for
    the mirror's TTL)."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    set_plan(db, token_limit=1_000)
    meter(db, settings, registry, ai_run("acme", 100))  # `ok`, decided without the mirror

    def a_run_then_a_refused_fan_out():
        return refused_fan_out(db, cached, registry)["acme"]

    assert check_with_meanwhile(db, cached, a_run_then_a_refused_fan_out) == ("ok", "block")
    decision = check_quota(db, "acme", now=NOV + timedelta(minutes=1), settings=cached)
    assert (decision.state, decision.allowed, decision.used_tokens) == ("block", False, 5_100)


def test_a_refused_decision_never_drops_a_newer_mirrored_one(db, settings, registry, redis_url):
    """Three deciders (interleaving review): one stands in MongoDB and pauses before it
    mirrors; a run bills more and mirrors `block`; a fan-out that read the usage before that
    run is refused and dropped the org's entry, the run's `block` with it, so the first
    one's older `ok` found it empty and answered for the mirror's TTL."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    set_plan(db, token_limit=1_000)
    meter(db, cached, registry, ai_run("acme", 100))  # `ok`, mirrored
    first = Quota(Collections.of(db, cached), cached)
    mirror = first._cache.put_many

    def a_run_and_a_refused_fan_out_first(decisions):
        assert refused_fan_out(db, cached, registry) == {"acme": "block"}
        mirror(decisions)

    first._cache.put_many = a_run_and_a_refused_fan_out_first
    first.decide(["acme"], NOV)
    decision, calls = answer_and_calls(db, cached)
    assert (decision.state, decision.used_tokens, calls) == ("block", 5_100, {})


def refused_fan_out(db, settings, registry) -> dict[str, str]:
    """A fan-out decide of acme that read its usage just before a run billed 5,000 more
    tokens and decided `block`: MongoDB refuses the fan-out's decision (an older draft)."""
    fan_out = Quota(Collections.of(db, settings), settings)
    read_usage = fan_out.usage

    def a_run_bills_after_the_read(orgs, period):
        read = read_usage(orgs, period)
        assert meter(db, settings, registry, ai_run("acme", 5_000)).decisions == {"acme": "block"}
        return read

    fan_out.usage = a_run_bills_after_the_read  # type: ignore[method-assign]
    return fan_out.decide(["acme"], NOV)


def check_with_meanwhile(db, settings, meanwhile) -> tuple[str, str]:
    """`check_quota` of acme, `meanwhile()` run right after its MongoDB read and before it
    mirrors what it read: (the check's state, what `meanwhile` returned)."""
    ran: list[str] = []

    def after_the_read(collection, method, perform):
        result = perform()
        if (collection, method) == ("billing_quota", "find_one") and not ran:
            ran.append(meanwhile())
        return result

    reading = DatabaseProxy(db, around=after_the_read)
    state = check_quota(reading, "acme", now=NOV, settings=settings).state
    (returned,) = ran
    return state, returned


def answer_and_calls(db, settings) -> tuple[QuotaDecision, dict]:
    """acme's quota answer, and the database calls it took (none: from the mirror)."""
    counting = CountingDatabase(db)
    return check_quota(counting, "acme", now=NOV, settings=settings), dict(counting.calls)


def test_the_mirror_compares_draft_tickets_beyond_a_doubles_precision(db, settings, redis_url):
    """Ticket 2**53 + 1 stored: a decision from ticket 2**53 (equal as doubles) must not
    replace it; one of a longer ticket does."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    cache = Quota(Collections.of(db, cached), cached)._cache
    assert cache is not None
    decided = {"_id": "acme", "org": "acme", "period": "2026-11", "computed_at": NOV}
    cache.put_many([{**decided, "state": "block", "draft_ticket": 2**53 + 1}])
    cache.put_many([{**decided, "state": "ok", "draft_ticket": 2**53}])
    assert cache.get("acme")["draft_ticket"] == 2**53 + 1
    cache.put_many([{**decided, "state": "ok", "draft_ticket": 10 * 2**53}])
    assert (cache.get("acme")["draft_ticket"], cache.get("acme")["state"]) == (10 * 2**53, "ok")


def test_a_mirrored_decision_computed_in_the_future_is_dropped_for_mongos(
    db, settings, registry, redis_url
):
    """A worker whose clock ran ahead mirrored December's `ok`; MongoDB replaced it (its
    rule drops a decision computed ahead of the wall clock) with November's `block`: the
    check drops the mirrored one and answers MongoDB's, as does the next."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    set_plan(db, token_limit=1_000)
    meter(db, settings, registry, ai_run("acme", 5_000))  # block, not mirrored
    cache = Quota(Collections.of(db, cached), cached)._cache
    assert cache is not None
    ahead = WALL_CLOCK + timedelta(days=30)  # the wall clock is pinned (conftest)
    cache.put_many([{"_id": "acme", "period": "2030-01", "state": "ok", "used_tokens": 0,
                     "draft_ticket": 0, "computed_at": ahead}])  # fmt: skip
    assert cache.get("acme") is not None
    decision = check_quota(db, "acme", now=NOV, settings=cached)
    assert (decision.state, decision.used_tokens) == ("block", 5_000)
    assert cache.get("acme") is None
    counting = CountingDatabase(db)
    again = check_quota(counting, "acme", now=NOV, settings=cached)
    assert (again.state, counting.calls) == ("block", {("billing_quota", "find_one"): 1})


def test_redis_down_falls_back_to_mongo(db, settings, registry):
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    set_plan(db, token_limit=10_000)
    meter(db, down, registry, ai_run("acme", 9_000))  # the run itself survives Redis down
    counting = CountingDatabase(db)
    decision = check_quota(counting, "acme", now=NOV, settings=down)
    assert (decision.state, decision.used_tokens) == ("warn", 9_000)
    assert counting.calls == {("billing_quota", "find_one"): 1}


def test_quota_answers_say_which_limit_by_how_much_and_that_the_estimate_did_it(env_db):
    from click.testing import CliRunner

    from chores.cli import main

    now = ["--now", "2026-11-25T12:00:00+00:00"]
    env_db.tasks.insert_one(
        {
            "name": "ai",
            "status": "SUCCESS",
            "end_time": datetime(2026, 11, 20, tzinfo=UTC),
            "context": {
                "workspace_id": "acme",
                "ai_model": "gpt-4o-mini",
                "ai_tokens": 171_300,
                "ai_prompt_tokens": 150_000,
                "ai_completion_tokens": 21_300,
            },
        }
    )
    runner = CliRunner()
    assert runner.invoke(main, ["run", "--org", "acme", *now]).exit_code == 0
    # The plan applies at once: no run needed for the decision to follow it.
    result = runner.invoke(main, ["plan", "set", "--org", "acme", "--token-limit", "1M", *now])
    assert "acme: decision now ok" in result.output
    result = runner.invoke(main, ["plan", "set", "--org", "acme", "--token-limit", "100K", *now])
    assert "acme: decision now block" in result.output

    runner.invoke(main, ["plan", "set", "--org", "acme", "--token-limit", "1M", *now])
    refused = runner.invoke(
        main, ["quota", "check", "--org", "acme", "--estimate", "2M", "--json", *now]
    )
    assert refused.exit_code == 3
    reasons = json.loads(refused.output)["reasons"]
    assert reasons == [
        "the estimate of 2,000,000 tokens would reach the token limit: "
        "171,300 used + 2,000,000 estimated of 1,000,000"
    ]
    line = runner.invoke(main, ["quota", "check", "--org", "acme", "--estimate", "2M", *now])
    assert line.output.startswith("acme: block — 171.3K of 1M tokens (17%)")
    assert "the estimate of 2,000,000 tokens would reach the token limit" in line.output

    runner.invoke(main, ["plan", "set", "--org", "acme", "--token-limit", "100K", *now])
    blocked = runner.invoke(main, ["quota", "check", "--org", "acme", "--json", *now])
    assert json.loads(blocked.output)["reasons"] == [
        "token limit reached: 171,300 tokens used of 100,000 tokens"
    ]


def test_a_plan_set_while_a_run_decides_is_not_undone_by_the_run(env_db, registry):
    """A run has read acme's plan (20,000 tokens) and stops before writing its decision;
    `chore plan set` raises the limit to 100,000 and decides `ok`. When the run goes on it
    does not put back the block of the plan it read: it sees the plan changed and decides
    again."""
    from click.testing import CliRunner

    from chores import get_settings
    from chores.cli import main

    settings = get_settings()
    set_plan(env_db, token_limit=20_000)
    env_db.tasks.insert_one(ai_run("acme", 25_000))
    meter(env_db, settings, registry)
    assert env_db.billing_quota.find_one({"_id": "acme"})["state"] == "block"
    env_db.tasks.insert_one(ai_run("acme", 1_000))

    def around(collection: str, method: str, perform: Any) -> Any:
        if (collection, method) == ("billing_quota", "bulk_write") and not pause.reached.is_set():
            return pause(collection, method, perform)
        return perform()

    pause = PauseAt(1)
    cli = []
    raised = pause_at(
        lambda: meter(DatabaseProxy(env_db, around=around), settings, registry),
        pause,
        lambda: cli.append(
            CliRunner().invoke(
                main,
                [
                    "plan",
                    "set",
                    "--org",
                    "acme",
                    "--token-limit",
                    "100000",
                    "--now",
                    NOV.isoformat(),
                ],
            )
        ),
    )
    assert raised is None
    assert cli[0].exit_code == 0, cli[0].output
    assert "decision now ok" in cli[0].output
    stored = env_db.billing_quota.find_one({"_id": "acme"})
    assert (stored["state"], stored["token_limit"], stored["used_tokens"]) == (
        "ok",
        100_000,
        26_000,
    )
    assert check_quota(env_db, "acme", now=NOV, settings=settings).allowed


def test_a_file_store_is_one_mirror_namespace_whatever_directory_names_it(tmp_path, monkeypatch):
    """`file://.chore-demo/store.json` in two directories is two stores; `file://x` and
    `file:///abs/x` are one."""
    from chores.quota.cache import namespace

    relative = "file://.chore-demo/store.json"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    in_a = namespace("main.billing_quota", relative)
    absolute = f"file://{tmp_path / 'a' / '.chore-demo' / 'store.json'}"
    assert namespace("main.billing_quota", absolute) == in_a
    monkeypatch.chdir(tmp_path / "b")
    assert namespace("main.billing_quota", relative) != in_a
    # a server is named by its collection: the host CLI and the workers share the mirror
    assert namespace("main.billing_quota", "mongodb://u:p@localhost:27017/?authSource=admin") == (
        namespace("main.billing_quota", "mongodb://u:p@mongo:27017/?authSource=admin")
    )


def test_a_plan_read_twice_unchanged_is_decided_once_even_holding_a_nan(db, settings, caplog):
    """Plans are read again after the decisions are written; a plan document that did not
    change is not decided again, even when it holds a NaN (two reads of it are two floats
    Python calls different) and is invalid (logged once)."""
    import bson

    set_plan(db, "bad", soft_ratio=float("nan"))
    set_plan(db, "odd", token_limit=10, note=float("nan"))  # valid, with a NaN beside it

    def as_from_the_wire(collection: str, method: str, perform: Any) -> Any:
        result = perform()
        if (collection, method) == ("billing_plans", "find"):
            return [bson.decode(bson.encode(d)) for d in result]  # fresh floats each read
        return result

    counting = CountingDatabase(DatabaseProxy(db, around=as_from_the_wire))
    with caplog.at_level(logging.ERROR, logger="chores.quota.decisions"):
        states = Quota(Collections.of(counting, settings), settings).decide(["bad", "odd"], NOV)
    assert states == {"bad": INVALID_PLAN, "odd": "ok"}
    assert counting.calls[("billing_plans", "find")] == 2  # read, then read again: unchanged
    assert sum("plan of 'bad' is invalid" in r.getMessage() for r in caplog.records) == 1


def test_a_mirrored_decision_is_trusted_below_its_ttl_and_not_at_it(db, settings):
    """A mirror entry a failed write left behind says `ok`; MongoDB says `block`. Up to the
    TTL the mirror answers, from the TTL on MongoDB does (mutation review: `<=` passed)."""
    decided = {
        "_id": "acme", "org": "acme", "period": "2026-11", "computed_at": NOV,
        "token_limit": 1_000, "spend_limit_micros": None, "spent_micros": 0,
    }  # fmt: skip
    db.billing_quota.insert_one({**decided, "state": "block", "used_tokens": 5_000})

    class LeftBehind:
        def get(self, org: str) -> dict[str, Any]:
            return {**decided, "state": "ok", "used_tokens": 0}

    quota = Quota(Collections.of(db, settings), settings)
    quota._cache = LeftBehind()  # type: ignore[assignment]
    ttl = timedelta(seconds=settings.quota_cache_ttl_seconds)
    mirrored = quota.check("acme", 0, NOV + ttl - timedelta(seconds=1))
    assert (mirrored.state, mirrored.used_tokens) == ("ok", 0)
    stored = quota.check("acme", 0, NOV + ttl)
    assert (stored.state, stored.allowed, stored.used_tokens) == ("block", False, 5_000)


# Killed mutants the suite let live (mutation review) -----------------------------------
def test_a_spend_warning_never_lifts_a_token_block():
    """D3: the token limit is checked first; a spend limit only at its soft ratio must
    leave the org blocked (`state = "warn"` unconditionally let it run)."""
    plan = Plan(token_limit=1_000, spend_limit_micros=1_000_000, soft_ratio=0.8)
    state, reasons = evaluate(plan, 1_000, 900_000)
    assert state == "block"
    assert [r.split(":")[0].split(" usage")[0] for r in reasons] == ["token limit reached", "spend"]


def test_an_estimate_reaching_the_limit_exactly_says_it_passes_it_within_the_overdraft(
    db, settings, registry
):
    """D15: used + estimate == the token limit, an overdraft above it: warn, and the
    reason says the limit is passed (within the overdraft), not merely neared."""
    set_plan(db, token_limit=10_000, grace_tokens=500)
    db.tasks.insert_one(ai_run("acme", 100))
    run_chore(db, org="acme", now=NOV, registry=registry, settings=settings)
    decision = check_quota(db, "acme", 9_900, now=NOV, settings=settings)
    assert (decision.state, decision.allowed) == ("warn", True)
    assert "would pass the token limit, within its overdraft" in decision.reason


def test_deciding_no_org_reads_nothing(db, settings):
    """D17 (cost only): `decide([])` answers {} without a round trip."""
    counting = CountingDatabase(db)
    assert Quota(Collections.of(counting, settings), settings).decide([], NOV) == {}
    assert counting.calls == {}


def test_a_new_plans_decision_at_the_same_usage_replaces_the_mirrored_one(
    db, settings, registry, redis_url
):
    """C2: `plan set` lowers the limit with usage unchanged: MongoDB takes the new
    decision (same draft ticket), and so must the mirror, or checks answer the old `ok`."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    set_plan(db, token_limit=1_000_000)
    db.tasks.insert_one(ai_run("acme", 5_000))
    run_chore(db, org="acme", now=NOV, registry=registry, settings=cached)  # mirrors `ok`
    set_plan(db, token_limit=1_000)
    later = NOV + timedelta(minutes=1)
    assert Quota(Collections.of(db, cached), cached).decide(["acme"], later) == {"acme": "block"}
    counting = CountingDatabase(db)
    decision = check_quota(counting, "acme", now=later, settings=cached)
    assert (decision.state, decision.token_limit) == ("block", 1_000)
    assert counting.calls == {}  # answered by the mirror


def test_a_decision_without_an_integer_draft_ticket_is_skipped_not_the_whole_batch(
    db, settings, redis_url
):
    """C4: `draft_ticket: true` (a bool, an int to Python) is skipped like any other
    unusable one; sent to Redis it fails the pipeline and no decision of the batch is
    mirrored."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    cache = Quota(Collections.of(db, cached), cached)._cache
    assert cache is not None
    decided = {"period": "2026-11", "state": "ok", "computed_at": NOV}
    cache.put_many([{**decided, "_id": "odd", "draft_ticket": True},
                    {**decided, "_id": "acme", "draft_ticket": 7}])  # fmt: skip
    assert cache.get("odd") is None
    mirrored = cache.get("acme")
    assert mirrored is not None and mirrored["draft_ticket"] == 7


def test_a_mirrored_entry_without_a_string_period_is_replaced(db, settings, redis_url):
    """C5: an entry the script cannot compare (a period that is not a string, written by
    anything but this version) is overwritten, not left to fail every put until it expires."""
    cached = settings.model_copy(update={"redis_url": redis_url})
    cache = Quota(Collections.of(db, cached), cached)._cache
    assert cache is not None
    raw = json.dumps(
        {"_id": "acme", "period": 202611, "used_tokens": 1, "computed_at": NOV.isoformat()}
    )
    redis.Redis.from_url(redis_url).set(cache.key("acme"), raw)
    cache.put_many([{"_id": "acme", "period": "2026-11", "state": "block", "used_tokens": 9,
                     "draft_ticket": 3, "computed_at": NOV}])  # fmt: skip
    assert cache.get("acme")["period"] == "2026-11"


def test_a_decision_from_the_draft_before_a_repricing_never_replaces_the_repriced_one(
    db, settings, registry, redis_url
):
    """A new registry prices a model that had no price: the first run on it rebuilds the
    draft, same tokens, $4.40 against a $1 limit, and decides `block`. A fan-out that read
    the draft before that rebuild writes its `ok` after it: MongoDB and the mirror keep the
    `block` (review: equal tokens let the stale `ok` in, and the org ran)."""
    from pricing import Registry

    cached = settings.model_copy(update={"redis_url": redis_url})
    mystery = {"id": "mystery-model-9000", "tier": "paid",
               "prices": [{"valid_from": "2020-01-01", "input": "2", "output": "8"}]}  # fmt: skip
    repriced = Registry.model_validate(
        {"version": "repriced", "models": [*(m.model_dump() for m in registry.models), mystery]}
    )
    set_plan(db, spend_limit_micros=1_000_000)
    run = ai_run("acme", 600_000, 400_000, model="mystery-model-9000")
    assert meter(db, cached, registry, run).decisions == {"acme": "ok"}  # unpriced: $0

    fan_out = Quota(Collections.of(db, cached), cached)
    read_usage = fan_out.usage

    def the_repricing_run_decides_meanwhile(orgs, period):
        read = read_usage(orgs, period)
        rerun = meter(db, cached, repriced, now=NOV + timedelta(seconds=1))
        assert rerun.decisions == {"acme": "block"}
        return read

    fan_out.usage = the_repricing_run_decides_meanwhile  # type: ignore[method-assign]
    # its `ok` is refused, and it answers the decision that stands (it answered `ok` before
    # ed87f08: the run log and `plan set` printed a decision never stored)
    assert fan_out.decide(["acme"], NOV + timedelta(seconds=2)) == {"acme": "block"}

    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["total_micros"] == 4_400_000
    stored = db.billing_quota.find_one({"_id": "acme"})
    assert (stored["state"], stored["spent_micros"]) == ("block", 4_400_000)
    for _ in range(2):  # the refused decision's entry was dropped: MongoDB's, then mirrored
        decision = check_quota(db, "acme", now=NOV + timedelta(seconds=3), settings=cached)
        assert (decision.state, decision.allowed, decision.spent_micros) == (
            "block", False, 4_400_000,
        )  # fmt: skip


@pytest.mark.parametrize("who", ["a run", "plan set"])
def test_a_decision_made_at_an_earlier_now_never_makes_a_fresh_one_stale(
    db, settings, registry, who
):
    """Review: `chore run --now <an hour ago>` (or `plan set --now ...`) replaced a fresh
    `block` with one stamped an hour back: the check found it stale and answered `unknown`,
    allowed (fail-open), for a blocked org. Made from the same draft, it counts as made
    when the one it replaces was; the plan it was decided under stands."""
    set_plan(db, token_limit=1_000)
    meter(db, settings, registry, ai_run("acme", 5_000))
    earlier = NOV - timedelta(hours=1)
    if who == "a run":
        meter(db, settings, registry, now=earlier)
    else:
        set_plan(db, token_limit=2_000)
        assert Quota(Collections.of(db, settings), settings).decide(["acme"], earlier) == {
            "acme": "block"
        }
    stored = db.billing_quota.find_one({"_id": "acme"})
    assert stored["computed_at"].replace(tzinfo=UTC) == NOV
    decision = check_quota(db, "acme", now=NOV + timedelta(minutes=10), settings=settings)
    assert (decision.state, decision.allowed) == ("block", False)
    assert decision.token_limit == (1_000 if who == "a run" else 2_000)


def test_a_check_of_an_earlier_month_than_the_decision_is_unknown_not_zero(db, settings, registry):
    """Review: asked about November with December's decision stored, the check answered
    `ok`, 0 tokens, though November's invoice holds 5,000: that decision says nothing of
    November."""
    set_plan(db, token_limit=1_000)
    meter(db, settings, registry, ai_run("acme", 5_000))
    december = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
    Quota(Collections.of(db, settings), settings).decide(["acme"], december)
    decision = check_quota(db, "acme", now=NOV, settings=settings)
    assert (decision.state, decision.used_tokens) == ("unknown", 0)
    assert "the decision is for 2026-12, not 2026-11" in decision.reason
    assert check_quota(db, "acme", now=december, settings=settings).state == "ok"


@pytest.mark.parametrize("when", ["at earlier nows", "at one now"])
def test_each_state_change_is_its_own_event(db, settings, registry, when):
    """Reviews: events were named after the replaced decision's `computed_at`, so
    ok -> block -> ok -> block decided at one `now`, or at earlier ones (whose decisions
    carry the replaced one's `computed_at`), wrote two events of four. They are named after
    their rank among the period's changes."""
    set_plan(db, token_limit=100_000)
    meter(db, settings, registry, ai_run("acme", 5_000))
    quota = Quota(Collections.of(db, settings), settings)
    for minute, limit in enumerate([1_000, 100_000, 1_000, 100_000]):
        set_plan(db, token_limit=limit)
        at = NOV - timedelta(hours=1) + timedelta(minutes=minute) if when != "at one now" else NOV
        quota.decide(["acme"], at)
    changes = [(e["from"], e["to"]) for e in db.billing_quota_events.find()]  # as inserted
    assert changes == [
        (None, "ok"), ("ok", "block"), ("block", "ok"), ("ok", "block"), ("block", "ok"),
    ]  # fmt: skip


def test_a_decision_refused_for_a_newer_one_leaves_no_state_change_event(db, settings, registry):
    """Run A read the decision (ok) and decided warn; before it wrote, run B metered more,
    built a newer draft and decided block. A's decision was refused (B's read a later draft)
    but its event ok -> warn, written before the decision, stayed: the log showed a change
    that never stood. An event is written after the decision that made it stood."""
    set_plan(db, token_limit=10_000, soft_ratio=0.5)
    meter(db, settings, registry, ai_run("acme", 1_000))  # ok
    db.tasks.insert_one(ai_run("acme", 5_000))  # A: 6,000, warn

    def around(collection: str, method: str, perform: Any) -> Any:
        if (collection, method) == ("billing_quota", "bulk_write") and not pause.reached.is_set():
            return pause(collection, method, perform)
        return perform()

    def run_b() -> None:
        db.tasks.insert_one(ai_run("acme", 5_000))  # B: 11,000, block
        meter(DatabaseProxy(db, lock=lock), settings, registry)

    import threading

    lock = threading.Lock()
    pause = PauseAt(1)
    raised = pause_at(
        lambda: meter(DatabaseProxy(db, around=around, lock=lock), settings, registry),
        pause,
        run_b,
    )
    assert raised is None and pause.reached.is_set()
    assert db.billing_quota.find_one({"_id": "acme"})["state"] == "block"  # A's refused
    changes = [(e["from"], e["to"]) for e in db.billing_quota_events.find(sort=[("_id", 1)])]
    assert sorted(changes, key=str) == sorted([(None, "ok"), ("ok", "block")], key=str)


def test_a_state_change_whose_writer_died_before_its_event_gets_its_event(db, settings, registry):
    """The event goes after its decision: a run that dies between the two leaves the
    decision (it says which change it made), and the next decision of the org writes
    the event before replacing it."""
    set_plan(db, token_limit=10_000, soft_ratio=0.5)
    meter(db, settings, registry, ai_run("acme", 1_000))  # ok

    decided: list[bool] = []

    def die_at_the_event(collection: str, method: str, perform: Any) -> Any:
        if (collection, method) == ("billing_quota", "bulk_write"):
            decided.append(True)
        elif (collection, method) == ("billing_quota_events", "insert_many") and decided:
            raise AutoReconnect("the worker died")  # after the decision, at its event
        return perform()

    db.tasks.insert_one(ai_run("acme", 5_000))
    later = NOV + timedelta(minutes=5)
    with pytest.raises(AutoReconnect):
        meter(DatabaseProxy(db, around=die_at_the_event), settings, registry, now=later)
    assert db.billing_quota.find_one({"_id": "acme"})["state"] == "warn"
    assert db.billing_quota_events.count_documents({"to": "warn"}) == 0
    meter(db, settings, registry, now=later + timedelta(minutes=5))  # nothing new: still warn
    (event,) = db.billing_quota_events.find({"to": "warn"})
    assert (event["from"], event["at"], event["_id"]) == ("ok", later, "acme:2026-11:ok->warn:#2")
    meter(db, settings, registry, now=later + timedelta(minutes=10))
    assert db.billing_quota_events.count_documents({}) == 2  # None -> ok, ok -> warn


@pytest.mark.parametrize(
    "odd",
    [
        {"changed_from": {"$gt": 1}},
        {"changed_from": "x" * 1_000},
        {"period": "garbage\n"},
        {"state_changes": -4},
        {"state_changes": True},
        {"computed_at": datetime(2099, 1, 1, tzinfo=UTC)},
        {"state": 42},
    ],
)
def test_a_malformed_decision_that_says_it_changed_writes_no_event(db, settings, registry, odd):
    """Review of 1ef5fec: the event a decision's replacer writes for it was derived from any
    decision holding `changed_from`: a malformed one (which the decision write replaces as
    no decision) gave events such as `acme:garbage\n:ok->warn:#2`, or at 2099."""
    set_plan(db, token_limit=10_000, soft_ratio=0.5)
    meter(db, settings, registry, ai_run("acme", 1_000))
    stored = db.billing_quota.find_one({"_id": "acme"})
    db.billing_quota.replace_one({"_id": "acme"}, {**stored, **odd})
    db.billing_quota_events.delete_many({})
    meter(db, settings, registry, now=NOV + timedelta(minutes=5))
    assert db.billing_quota.find_one({"_id": "acme"})["state"] == "ok"
    events = list(db.billing_quota_events.find())  # what this decide wrote
    well_formed = r"acme:2026-11:(None|ok|warn|block)->(ok|warn|block):#[1-9][0-9]*"
    assert all(re.fullmatch(well_formed, e["_id"]) for e in events), events
    assert all(e["at"] <= NOV + timedelta(minutes=5) for e in events), events


def test_a_decision_holds_no_datetime_but_computed_at(db, settings, registry):
    """Review: a decision holding another datetime (`decided_at`) crashed the checks of
    workers of the previous version during a rolling deploy: theirs mirrors a decision
    read from MongoDB converting `computed_at` alone to JSON text."""
    set_plan(db, token_limit=1_000)
    meter(db, settings, registry, ai_run("acme", 5_000))
    stored = db.billing_quota.find_one({"_id": "acme"})
    datetimes = [k for k, v in stored.items() if isinstance(v, datetime)]
    assert datetimes == ["computed_at"]
    previous_versions_json = json.dumps({**stored, "computed_at": "as text"})
    assert json.loads(previous_versions_json)["state"] == "block"
