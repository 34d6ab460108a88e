"""Quota decisions at their edges, found untested by mutation testing of
`chores/quota/decisions.py`: a check at the wall clock and at the edge of the allowed skew,
decisions that do not read, a new month, plans that change while a run decides, draft
tickets, the fields an answer reports, and the public call without settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from chores import check_quota, connect, run_chore
from chores.core.db import Collections
from chores.core.settings import Plan
from chores.quota.decisions import Quota, evaluate

from support import WALL_CLOCK, flushed_redis_db

NOV = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
NOVEMBER_END = datetime(2026, 11, 30, 23, 55, tzinfo=UTC)
DECEMBER_START = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)


def ai_run(org: str, tokens: int, ended: datetime = NOV - timedelta(hours=1)) -> dict[str, Any]:
    context = {"workspace_id": org, "ai_model": "gpt-4o-mini", "ai_tokens": tokens}
    context |= {"ai_prompt_tokens": tokens, "ai_completion_tokens": 0}
    stamp = ended.timestamp()
    return {"_id": ObjectId(), "name": "ai", "status": "SUCCESS", "end_time": ended,
            "last_updated_db": stamp, "context": context}  # fmt: skip


def quota(db: Any, settings: Any) -> Quota:
    return Quota(Collections.of(db, settings), settings)


# --- at the wall clock and at the edge of the skew --------------------------------------


def test_a_check_right_after_a_run_at_the_wall_clock_answers_its_decision(db, settings, registry):
    """The ordinary case (run, then check at once, both now) answers the decision: a
    decision made now is not one "computed in the future" (SPEC §5: unknown only when
    missing or stale). The other tests run in 2026 under a wall clock of 2030."""
    now = WALL_CLOCK - timedelta(minutes=1)
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 1_000})
    db.tasks.insert_one(ai_run("acme", 5_000, ended=now - timedelta(hours=1)))
    assert run_chore(db, now=now, registry=registry, settings=settings).decisions == {
        "acme": "block"
    }
    decision = check_quota(db, "acme", now=now, settings=settings)
    assert (decision.state, decision.allowed) == ("block", False), decision.reason
    events = db.billing_quota_events.find({"org": "acme"})
    assert [(e["from"], e["to"]) for e in events] == [(None, "block")]


def test_a_decision_computed_ahead_of_the_clock_is_unknown(db, settings, registry):
    """Stamped past the wall clock and the allowed skew, a decision is no decision: unknown,
    refused when failing closed (not answered from its numbers, `ok`)."""
    closed = settings.model_copy(update={"quota_fail_open": False})
    db.tasks.insert_one(ai_run("acme", 10))
    run_chore(db, now=NOV, registry=registry, settings=closed)
    ahead = WALL_CLOCK + timedelta(days=1)
    db.billing_quota.update_one({"_id": "acme"}, {"$set": {"computed_at": ahead}})
    decision = check_quota(db, "acme", now=NOV, settings=closed)
    assert (decision.state, decision.allowed) == ("unknown", False), decision


def test_a_decision_exactly_the_skew_ahead_stands_gets_its_event_and_is_answered(db, settings):
    """The edge is the one MongoDB's write rule uses (`computed_at > wall clock + skew` is
    ahead): a decision at exactly the skew ahead stands, its change gets its event, a check
    answers it, and a decision at an earlier `now` counts as made when it was."""
    edge = WALL_CLOCK + timedelta(seconds=settings.future_skew_seconds)
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 0})
    assert quota(db, settings).decide(["acme"], edge) == {"acme": "block"}
    assert db.billing_quota_events.count_documents({"org": "acme"}) == 1
    decision = check_quota(db, "acme", now=WALL_CLOCK, settings=settings)
    assert (decision.state, decision.allowed) == ("block", False), decision.reason

    quota(db, settings).decide(["acme"], WALL_CLOCK)

    stored = db.billing_quota.find_one({"_id": "acme"})
    assert stored["computed_at"].replace(tzinfo=UTC) == edge


@pytest.fixture
def redis_url(redis_base_url):
    with flushed_redis_db(redis_base_url, 11) as url:
        yield url


def test_a_mirrored_decision_exactly_the_skew_ahead_is_answered(settings, redis_url):
    """The Redis mirror uses the same edge: a mirrored `block` at exactly the skew ahead is
    answered, not dropped for an unknown (allowed when failing open)."""
    store = f"mongomock://edges-{uuid.uuid4().hex}"  # a named store: mirrored
    mirrored = settings.model_copy(update={"redis_url": redis_url, "mongo_url": store})
    db = connect(mirrored)
    cache = quota(db, mirrored)._cache
    assert cache is not None
    edge = WALL_CLOCK + timedelta(seconds=mirrored.future_skew_seconds)
    limits = {"token_limit": 1_000, "spend_limit_micros": None, "soft_ratio": 0.8}
    usage = {"used_tokens": 5_000, "spent_micros": 0, "unpriced_tokens": 0, "draft_ticket": 1}
    decided = {"_id": "acme", "org": "acme", "period": "2030-01", "state": "block"}
    cache.put_many([{**decided, "grace_tokens": 0, "computed_at": edge, **limits, **usage}])
    decision = check_quota(db, "acme", now=WALL_CLOCK, settings=mirrored)
    assert (decision.state, decision.allowed) == ("block", False), decision.reason


# --- decisions that do not read, a new month ---------------------------------------------


def test_a_stored_decision_whose_period_is_not_a_month_is_unknown_not_zero_usage(
    db, settings, registry
):
    closed = settings.model_copy(update={"quota_fail_open": False})
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 1_000})
    db.tasks.insert_one(ai_run("acme", 5_000))
    assert run_chore(db, now=NOV, registry=registry, settings=closed).decisions == {"acme": "block"}
    db.billing_quota.update_one({"_id": "acme"}, {"$set": {"period": "2026-1"}})
    decision = check_quota(db, "acme", now=NOV, settings=closed)
    assert (decision.state, decision.allowed) == ("unknown", False), decision


def test_a_new_month_starts_at_zero_spend_and_tokens_before_the_chore_runs(db, settings, registry):
    """An org at a spend limit of 1 µ$ that spent nothing is allowed in the new month, and
    a stale answer of an earlier month reports no usage either."""
    db.billing_plans.insert_one({"_id": "acme", "spend_limit_micros": 1})
    db.tasks.insert_one(ai_run("beta", 1_000, ended=NOVEMBER_END - timedelta(hours=1)))
    run_chore(db, now=NOVEMBER_END, registry=registry, settings=settings)

    decision = check_quota(db, "acme", now=DECEMBER_START, settings=settings)
    assert (decision.state, decision.allowed, decision.spent_micros) == ("ok", True, 0)
    fresh = check_quota(db, "beta", now=DECEMBER_START, settings=settings)
    stale = check_quota(db, "beta", now=DECEMBER_START + timedelta(days=12), settings=settings)
    for answer in (fresh, stale):
        assert (answer.used_tokens, answer.spent_micros, answer.unpriced_tokens) == (0, 0, 0)
    assert (fresh.stale, stale.stale) == (False, True)


def test_an_org_without_usage_is_decided_at_zero(db, settings, registry):
    db.billing_plans.insert_one({"_id": "acme", "spend_limit_micros": 1})
    assert run_chore(db, now=NOV, registry=registry, settings=settings).decisions == {"acme": "ok"}
    stored = db.billing_quota.find_one({"_id": "acme"})
    assert (stored["spent_micros"], stored["unpriced_tokens"]) == (0, 0)
    decision = check_quota(db, "acme", now=NOV, settings=settings)
    assert (decision.state, decision.spent_micros, decision.unpriced_tokens) == ("ok", 0, 0)
    assert decision.stale is False


def test_an_org_never_decided_is_unknown_with_no_usage_and_not_called_stale(db, settings):
    """SPEC §5 tells a missing decision from a stale one."""
    decision = check_quota(db, "nobody", now=NOV, settings=settings)
    assert decision.state == "unknown"
    assert (decision.used_tokens, decision.spent_micros, decision.unpriced_tokens) == (0, 0, 0)
    assert (decision.stale, decision.last_state) == (False, None)


def test_a_decision_written_without_unpriced_tokens_reports_none(db, settings, registry):
    db.tasks.insert_one(ai_run("acme", 1_000))
    run_chore(db, now=NOV, registry=registry, settings=settings)
    db.billing_quota.update_one({"_id": "acme"}, {"$unset": {"unpriced_tokens": ""}})
    decision = check_quota(db, "acme", now=NOV, settings=settings)
    assert (decision.state, decision.unpriced_tokens, decision.stale) == ("ok", 0, False)


def test_a_decision_that_says_it_changed_at_rank_zero_gives_no_event(db, settings, registry):
    """A decision edited to hold `changed_from` with `state_changes` 0 does not read as a
    change: the next run writes no event for it."""
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 10_000})
    db.tasks.insert_one(ai_run("acme", 1_000))
    run_chore(db, now=NOV, registry=registry, settings=settings)
    edit = {"$set": {"state_changes": 0, "changed_from": "warn"}}
    db.billing_quota.update_one({"_id": "acme"}, edit)
    db.billing_quota_events.delete_many({})
    run_chore(db, now=NOV + timedelta(minutes=5), registry=registry, settings=settings)
    assert list(db.billing_quota_events.find()) == []


# --- draft tickets: an older draft's decision never replaces a newer one's ----------------


def test_a_decision_made_from_no_draft_never_replaces_one_from_a_draft(db, settings):
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 1_000})
    limits = {"token_limit": 1_000, "spend_limit_micros": None, "soft_ratio": 0.8}
    usage = {"used_tokens": 5_000, "spent_micros": 0, "unpriced_tokens": 0, "draft_ticket": 1}
    db.billing_quota.insert_one(
        {"_id": "acme", "org": "acme", "period": "2026-11", "state": "block", "reasons": [],
         "grace_tokens": 0, "computed_at": NOV, "state_changes": 1, **limits, **usage}
    )  # fmt: skip
    assert quota(db, settings).decide(["acme"], NOV) == {"acme": "block"}
    assert db.billing_quota.find_one({"_id": "acme"})["state"] == "block"


def test_a_decision_from_a_draft_written_before_tickets_never_replaces_a_ticketed_one(
    db, settings, registry
):
    db.tasks.insert_one(ai_run("acme", 1_000))
    run_chore(db, now=NOV, registry=registry, settings=settings)
    db.billing_invoices.update_one({"_id": "acme:2026-11"}, {"$unset": {"build_ticket": ""}})
    db.billing_quota.update_one({"_id": "acme"}, {"$set": {"draft_ticket": 1}})
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 500})  # it would block
    assert quota(db, settings).decide(["acme"], NOV + timedelta(seconds=1)) == {"acme": "ok"}
    assert db.billing_quota.find_one({"_id": "acme"})["state"] == "ok"


# --- plans read twice: decided again only when the plan changed meanwhile -----------------


def counting_decisions(quota: Quota) -> list[Any]:
    """The plan each `_decide` of acme was given (its token limit, None without a plan)."""
    decide, decided = quota._decide, []

    def counting(orgs: Any, plans: Any, now: datetime) -> Any:
        decided.append(plans["acme"].token_limit if plans.get("acme") else None)
        return decide(orgs, plans, now)

    quota._decide = counting  # type: ignore[method-assign]
    return decided


def plans_changed_on_read(quota: Quota, db: Any, *, every: bool) -> None:
    """Each read of the plans (or only the first) is followed by a new plan for acme."""
    read, limit = quota.plan_documents, [1_000]

    def changing(orgs: Any) -> Any:
        found = read(orgs)
        if every or limit[0] == 1_000:
            limit[0] += 1
            db.billing_plans.replace_one({"_id": "acme"}, {"token_limit": limit[0]}, upsert=True)
        return found

    quota.plan_documents = changing  # type: ignore[method-assign]


def test_an_org_whose_plan_did_not_change_is_decided_once(db, settings):
    deciding = quota(db, settings)
    decided = counting_decisions(deciding)
    assert deciding.decide(["acme"], NOV) == {"acme": "ok"}
    assert decided == [None]


def test_a_plan_created_while_a_run_decides_is_decided_under_it(db, settings, registry):
    db.tasks.insert_one(ai_run("acme", 5_000))
    run_chore(db, now=NOV, registry=registry, settings=settings)
    deciding = quota(db, settings)
    decided = counting_decisions(deciding)
    plans_changed_on_read(deciding, db, every=False)
    assert deciding.decide(["acme"], NOV + timedelta(seconds=1)) == {"acme": "block"}
    assert decided == [None, 1_001]


def test_a_plan_changing_at_every_read_is_decided_three_times_at_most(db, settings, registry):
    """contract.md, Plans: "it decides again, up to three times" (three decisions in all)."""
    db.tasks.insert_one(ai_run("acme", 5_000))
    run_chore(db, now=NOV, registry=registry, settings=settings)
    deciding = quota(db, settings)
    decided = counting_decisions(deciding)
    plans_changed_on_read(deciding, db, every=True)
    deciding.decide(["acme"], NOV + timedelta(seconds=1))
    assert len(decided) == 3, decided


# --- the reasons at the limit -------------------------------------------------------------


def test_usage_exactly_at_a_limit_with_an_overdraft_says_within_its_overdraft():
    assert evaluate(Plan(token_limit=1, grace_tokens=5), 1, 0) == (
        "warn",
        ["token limit reached: 1 token used of 1 token, within its overdraft (+5 tokens)"],
    )
    assert evaluate(Plan(token_limit=0, grace_tokens=5), 0, 0) == (
        "warn",
        ["token usage at all of its limit (0 tokens)"],
    )


# --- the public call without settings ---------------------------------------------------


def test_a_check_without_settings_answers_from_the_environments(monkeypatch, registry):
    """README: `check_quota(db, org)`, as another program calls it, reads MONGO_URL and the
    rest from the environment, as every command does."""
    from chores import get_settings

    monkeypatch.setenv("MONGO_URL", f"mongomock://{uuid.uuid4().hex}")
    monkeypatch.setenv("DEFAULT_TOKEN_LIMIT", "10000")
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        db = connect(get_settings())
        db.tasks.insert_one(ai_run("acme", 10_000))
        run_chore(db, org="acme", now=NOV, registry=registry, settings=get_settings())
        decision = check_quota(db, "acme", now=NOV)
        assert (decision.state, decision.allowed, decision.used_tokens) == ("block", False, 10_000)
    finally:
        get_settings.cache_clear()
