"""What a quota check reads back: a malformed stored decision, the Redis mirror while
MongoDB is down, and mirror entries of another store (from an outside review: each was a
traceback, or a wrong allow or refuse)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import mongomock
import pymongo
import pytest
import redis
from click.testing import CliRunner

from chores import check_quota, connect, finalize_invoices, get_settings, run_chore
from chores.cli import main
from chores.core.exceptions import DatabaseUnavailable
from chores.core.local_store import close_all, open_client
from chores.core.settings import Plan, Settings
from chores.quota.cache import QuotaCache, is_named_store, namespace
from chores.quota.check import check_quota_from_mirror
from chores.quota.decisions import QuotaDecision, estimate_reason

from support import closed_port, flushed_redis_db

NOV = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NOW_ARG = ["--now", NOV.isoformat()]


def ai_run(org: str, tokens: int) -> dict:
    return {
        "name": "ai",
        "status": "SUCCESS",
        "end_time": datetime(2026, 11, 20, tzinfo=UTC),
        "last_updated_db": 1.0e9,
        "context": {"workspace_id": org, "ai_model": "gpt-4o-mini", "ai_tokens": tokens},
    }


def blocked(db, settings: Settings, registry) -> None:
    """acme over its 1,000-token limit, decided `block`."""
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 1_000})
    db.tasks.insert_one(ai_run("acme", 5_000))
    assert run_chore(db, now=NOV, registry=registry, settings=settings).decisions == {
        "acme": "block"
    }


@pytest.fixture
def redis_url(redis_base_url):
    with flushed_redis_db(redis_base_url, 13) as url:
        yield url


@pytest.fixture
def store(monkeypatch) -> Settings:
    """An in-process store that MONGO_URL names, for the CLI and the API alike."""
    monkeypatch.setenv("MONGO_URL", f"mongomock://reads-{uuid.uuid4().hex}")
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


CORRUPTIONS = {
    "no computed_at": {"$unset": {"computed_at": ""}},
    "computed_at as text": {"$set": {"computed_at": "2026-11-25T12:00:00"}},
    "a token limit as text": {"$set": {"token_limit": "10M"}},
    # read as an earlier month's decision, it answered `ok` with no usage
    "no period": {"$unset": {"period": ""}},
    "usage as text": {"$set": {"used_tokens": "5000"}},
    "usage as a fraction": {"$set": {"used_tokens": 5000.5}},
    # a credit makes spend negative, never tokens (a move sums to zero): corrupt
    "negative usage": {"$set": {"used_tokens": -9_000_000_000}},
}


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_a_malformed_stored_decision_is_unknown_never_a_crash_or_no_usage(
    store, registry, monkeypatch, corruption
):
    db = connect(store)
    blocked(db, store, registry)
    db.billing_quota.update_one({"_id": "acme"}, CORRUPTIONS[corruption])

    decision = check_quota(db, "acme", now=NOV, settings=store)
    assert (decision.state, decision.allowed) == ("unknown", True)
    assert decision.reason.startswith("its stored decision is malformed (")
    assert decision.reason.endswith("(fail-open)")

    runner = CliRunner()
    checked = runner.invoke(main, ["quota", "check", "--org", "acme", *NOW_ARG])
    assert (checked.exit_code, checked.exception) == (0, None)
    assert checked.stdout.startswith("acme: unknown — its stored decision is malformed")
    monkeypatch.setenv("QUOTA_FAIL_OPEN", "false")
    get_settings.cache_clear()
    refused = runner.invoke(main, ["quota", "check", "--org", "acme", *NOW_ARG])
    assert (refused.exit_code, refused.exception.code) == (3, 3)
    assert "(fail-closed) (refused)" in refused.stdout

    status = runner.invoke(main, ["status", *NOW_ARG])
    assert (status.exit_code, status.exception) == (0, None)
    assert "malformed" in status.stdout

    # the next run replaces it
    run_chore(db, now=NOV, registry=registry, settings=store)
    assert check_quota(db, "acme", now=NOV, settings=store).state == "block"


def test_quota_check_answers_from_the_mirror_while_mongodb_is_down(
    registry, redis_url, monkeypatch
):
    """The workers mirror each decision in Redis; the CLI answered `unknown` (fail-open:
    allowed) for an org the mirror held `block`, where `check_quota` answered `block`."""
    server = f"mongodb://billing:s3cret@127.0.0.1:{closed_port()}/"
    settings = Settings(mongo_url=server, redis_url=redis_url)
    local = mongomock.MongoClient(tz_aware=True)["main"]  # where the decision is made
    blocked(local, settings.model_copy(update={"mongo_url": "mongomock://x"}), registry)
    decision = local.billing_quota.find_one({"_id": "acme"})
    mirror = QuotaCache(redis_url, 360, namespace("main.billing_quota", server))
    mirror.put_many([decision])  # as a worker on the server mirrors it

    for name, value in {"MONGO_URL": server, "REDIS_URL": redis_url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MONGO_TIMEOUT_MS", "200")
    get_settings.cache_clear()
    runner = CliRunner()
    checked = runner.invoke(main, ["quota", "check", "--org", "acme", *NOW_ARG])
    assert checked.exit_code == 3, checked.output
    assert checked.stdout.startswith("acme: block — 5K of 1K tokens")

    # an org the mirror knows nothing of: unknown, and why, by policy
    other = runner.invoke(main, ["quota", "check", "--org", "beta", *NOW_ARG])
    assert other.exit_code == 0
    assert other.stdout.startswith("beta: unknown — cannot reach MongoDB at")
    assert "s3cret" not in other.output
    get_settings.cache_clear()


def test_quota_check_answers_from_the_mirror_without_waiting_for_mongodb(
    registry, redis_url, monkeypatch
):
    """With MongoDB down, every `chore quota check` first waited out the server selection
    timeout (5 s by default), then answered from the mirror (quota review): the mirror is
    asked first, and MongoDB only when it holds no usable decision."""
    server = f"mongodb://billing:s3cret@127.0.0.1:{closed_port()}/"
    settings = Settings(mongo_url=server, redis_url=redis_url)
    local = mongomock.MongoClient(tz_aware=True)["main"]
    blocked(local, settings.model_copy(update={"mongo_url": "mongomock://x"}), registry)
    mirror = QuotaCache(redis_url, 360, namespace("main.billing_quota", server))
    mirror.put_many([local.billing_quota.find_one({"_id": "acme"})])
    connects: list[str] = []

    def unreachable(settings: Settings) -> None:
        connects.append(settings.mongo_url)
        raise DatabaseUnavailable("cannot reach MongoDB")

    monkeypatch.setattr("chores.cli.quota.connect", unreachable)
    for name, value in {"MONGO_URL": server, "REDIS_URL": redis_url}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    runner = CliRunner()
    checked = runner.invoke(main, ["quota", "check", "--org", "acme", *NOW_ARG])
    assert (checked.exit_code, connects) == (3, [])
    assert checked.stdout.startswith("acme: block — 5K of 1K tokens")
    other = runner.invoke(main, ["quota", "check", "--org", "beta", *NOW_ARG])
    assert (other.exit_code, len(connects)) == (0, 1)  # not mirrored: MongoDB is asked
    assert other.stdout.startswith("beta: unknown — cannot reach MongoDB")
    get_settings.cache_clear()


def test_quota_check_asks_the_mirror_once_then_mongodb(redis_url, monkeypatch):
    """On a mirror miss, `chore quota check` asked the mirror twice: once itself, then again
    inside `check_quota` (one more Redis GET, up to its timeout), before MongoDB."""
    server = f"mongodb://127.0.0.1:{closed_port()}/"
    # A server's database (the mirror is asked for one), which answers nothing in 0.2 s.
    database = pymongo.MongoClient(server, serverSelectionTimeoutMS=200)["main"]
    gets: list[str] = []
    real_get = QuotaCache.get

    def counted(cache: QuotaCache, org: str) -> Any:
        gets.append(org)
        return real_get(cache, org)

    monkeypatch.setattr(QuotaCache, "get", counted)
    monkeypatch.setattr("chores.cli.quota.connect", lambda settings: database)
    for name, value in {"MONGO_URL": server, "REDIS_URL": redis_url}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    checked = CliRunner().invoke(main, ["quota", "check", "--org", "acme", *NOW_ARG])
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.startswith("acme: unknown — billing database unavailable")
    assert gets == ["acme"]  # a miss, then MongoDB (here unreachable)
    database.client.close()
    get_settings.cache_clear()


def test_a_mongomock_store_of_another_process_never_answers_here(registry, redis_url):
    """`mongomock://NAME` is a new, empty store in each process: `plan set` in one process
    mirrored `block`, and a check in the next answered it for a store with no plan and no
    decision."""
    url = f"mongomock://scratch-{uuid.uuid4().hex}"
    env = {**os.environ, "MONGO_URL": url, "REDIS_URL": redis_url}
    plan_set = ["plan", "set", "--org", "acme", "--token-limit", "0", *NOW_ARG]
    elsewhere = subprocess.run(
        [sys.executable, "-c", "from chores.cli import main; main()", *plan_set],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "acme: decision now block" in elsewhere.stdout, elsewhere.stderr
    assert redis.Redis.from_url(redis_url).keys("billing:quota:*")  # mirrored there

    here = Settings(mongo_url=url, redis_url=redis_url)
    decision = check_quota(connect(here), "acme", now=NOV, settings=here)
    assert decision.state == "unknown"
    assert decision.reason.startswith("no quota decision yet")


@pytest.mark.parametrize("url", ["mongomock://shared-name", "file:///nonexistent/store.json"])
def test_a_callers_own_mongomock_database_shares_no_mirror(registry, redis_url, url):
    """Two mongomock databases of an API caller under one in-process MONGO_URL (neither
    the store it names) shared one mirror entry per org: the empty one answered the
    other's `block`."""
    settings = Settings(mongo_url=url, redis_url=redis_url)
    full, empty = (mongomock.MongoClient(tz_aware=True)["main"] for _ in range(2))
    blocked(full, settings, registry)
    assert check_quota(full, "acme", now=NOV, settings=settings).state == "block"
    decision = check_quota(empty, "acme", now=NOV, settings=settings)
    assert decision.state == "unknown"
    assert decision.reason.startswith("no quota decision yet")
    assert redis.Redis.from_url(redis_url).keys("billing:quota:*") == []


def test_quota_wording_a_single_token_and_counts_that_round_alike():
    """ "the estimate of 1 tokens"; "72.9K of 72.9K tokens (99%)" for an org short of it."""
    plan = Plan(token_limit=1_000)
    assert estimate_reason(plan, 999, 1, "block").startswith("the estimate of 1 token would")
    short = QuotaDecision(
        org="acme", state="warn", allowed=True, reason="", period="2026-11",
        used_tokens=72_900, token_limit=72_940,
    )  # fmt: skip
    assert "72,900 of 72,940 tokens (99%)" in short.summary()
    at = short.model_copy(update={"used_tokens": 72_940, "state": "block"})
    assert "72.9K of 72.9K tokens (100%)" in at.summary()


def mirror_missed_of(registry: Any, redis_url: str) -> str | None:
    """What a run says of the Redis mirror of its decisions at `redis_url`."""
    settings = Settings(mongo_url=f"mongomock://{uuid.uuid4().hex}", redis_url=redis_url)
    db = connect(settings)
    db.tasks.insert_one(ai_run("acme", 10))
    return run_chore(db, now=NOV, registry=registry, settings=settings).mirror_missed


def test_a_redis_that_refuses_the_credentials_is_said_so(registry, redis_base_url):
    """It said "could not be reached (AuthenticationError)" of a Redis that answered."""
    host = redis_base_url.removeprefix("redis://")
    assert mirror_missed_of(registry, f"redis://bob:wrong@{host}/0") == (
        "the Redis at REDIS_URL refused its credentials (AuthenticationError)"
    )


def test_a_redis_that_refuses_the_command_is_said_so(registry, redis_base_url):
    """Outside review: a database number the Redis does not have was "could not be
    reached (ResponseError)" of a Redis that answered; then (review) an ACL's refusal,
    a NoPermissionError, still was."""
    assert mirror_missed_of(registry, f"{redis_base_url}/9999") == (
        "the Redis at REDIS_URL refused the command (ResponseError: DB index is out of range)"
    )
    admin = redis.Redis.from_url(redis_base_url)
    user = "chore-read-only-test"
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], commands=["+@read"], keys=["*"])
    try:
        host = redis_base_url.removeprefix("redis://")
        said = mirror_missed_of(registry, f"redis://{user}:pw@{host}/0")
    finally:
        admin.acl_deluser(user)
    assert said is not None
    assert said.startswith("the Redis at REDIS_URL refused the command (NoPermissionError: ")


def test_a_month_that_starts_with_a_credit_is_decided_and_answered(registry):
    """Review of the check above: a decision of negative spend, which a run writes for a
    month whose only usage so far is a late credit, was read as malformed: `unknown`, and
    refused under fail-closed. 1M unsplit opus tokens charged in a final October, then in
    November the split says they were all cached."""
    settings = Settings(mongo_url="mongomock://credit", redis_url=None, quota_fail_open=False)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    db.billing_plans.insert_one({"_id": "acme", "token_limit": 50_000_000})
    seen, ended = datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 10, tzinfo=UTC)
    context = {"workspace_id": "acme", "ai_model": "claude-opus-4-1", "ai_tokens": 1_000_000}
    db.tasks.insert_one(
        {"_id": "r1", "name": "ai", "status": "RUNNING", "last_updated_db": seen.timestamp(),
         "context": context}
    )  # fmt: skip
    run_chore(db, now=seen, registry=registry, settings=settings)
    assert finalize_invoices(db, now=datetime(2026, 11, 5, tzinfo=UTC), settings=settings)
    cached = {
        "ai_prompt_tokens": 1_000_000,
        "ai_completion_tokens": 0,
        "ai_cached_tokens": 1_000_000,
    }
    db.tasks.update_one(
        {"_id": "r1"},
        {"$set": {"status": "SUCCESS", "end_time": ended, "last_updated_db": ended.timestamp(),
                  **{f"context.{k}": v for k, v in cached.items()}}},
    )  # fmt: skip
    assert run_chore(db, now=ended, registry=registry, settings=settings).decisions == {
        "acme": "ok"
    }
    stored = db.billing_quota.find_one({"_id": "acme"})
    assert (
        stored["spent_micros"]
        == db.billing_invoices.find_one({"_id": "acme:2026-11"})["total_micros"]
    )
    assert stored["spent_micros"] < 0
    decision = check_quota(db, "acme", now=ended, settings=settings)
    assert (decision.state, decision.allowed, decision.spent_micros) == (
        "ok",
        True,
        stored["spent_micros"],
    )


def test_the_cli_and_the_api_give_one_answer_on_a_file_store_with_a_stale_mirror(
    tmp_path, registry, redis_url, monkeypatch
):
    """Outside review: on a `file://` store, `chore quota check` asked MongoDB (the store)
    only, while `check_quota` answered the store's Redis mirror first: after a `plan set`
    that could not reach Redis, the CLI said `ok` and the API `block` at the same moment."""
    store = f"file://{tmp_path / 'store.json'}"
    for name, value in {"MONGO_URL": store, "REDIS_URL": redis_url}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    open_client(store, fresh=True)["main"].tasks.insert_one(ai_run("acme", 5_000))
    close_all()
    runner = CliRunner()
    assert runner.invoke(main, ["run", "--all", *NOW_ARG]).exit_code == 0
    limit = ["plan", "set", "--org", "acme", *NOW_ARG, "--token-limit"]
    assert "decision now block" in runner.invoke(main, [*limit, "1K"]).output  # mirrored
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    get_settings.cache_clear()
    stale = runner.invoke(main, [*limit, "10M"])
    assert "decision now ok" in stale.output and "could not be reached" in stale.output
    monkeypatch.setenv("REDIS_URL", redis_url)
    get_settings.cache_clear()

    cli = runner.invoke(main, ["quota", "check", "--org", "acme", "--json", *NOW_ARG])
    try:
        api = check_quota(connect(get_settings()), "acme", now=NOV)
    finally:
        close_all(save=False)
    assert (json.loads(cli.output)["state"], cli.exit_code) == (api.state, 3)
    get_settings.cache_clear()


def test_two_server_deployments_sharing_one_redis_do_not_answer_for_each_other(registry, redis_url):
    """A server deployment's mirror keys name its database: `main`'s `block` for acme
    never answers a check of the deployment on database `other` (found by mutation
    testing of chores/quota/cache.py)."""
    server = f"mongodb://127.0.0.1:{closed_port()}/"
    settings = Settings(mongo_url=server, redis_url=redis_url)
    local = mongomock.MongoClient(tz_aware=True)["main"]
    blocked(local, settings.model_copy(update={"mongo_url": "mongomock://x"}), registry)
    mirror = QuotaCache(redis_url, 360, namespace("main.billing_quota", server))
    mirror.put_many([local.billing_quota.find_one({"_id": "acme"})])

    ours = check_quota_from_mirror("acme", 0, NOV, settings=settings)
    assert ours is not None and ours.state == "block"
    other = settings.model_copy(update={"mongo_db": "other"})
    assert check_quota_from_mirror("acme", 0, NOV, settings=other) is None


def test_a_server_database_is_the_named_store():
    """A database on a MongoDB server is mirrored (deploy.md: workers mirror decisions in
    that Redis); an in-process one is not."""
    server = f"mongodb://127.0.0.1:{closed_port()}/"
    client = pymongo.MongoClient(server, connect=False, serverSelectionTimeoutMS=100)
    try:
        assert is_named_store(client["main"], server) is True
        assert not is_named_store(mongomock.MongoClient()["main"], server)
    finally:
        client.close()


def test_a_decision_with_a_negative_ticket_is_not_mirrored(redis_url):
    """Only decisions as the chore writes them are mirrored: a ticket is a count."""
    mirror = QuotaCache(redis_url, 360, namespace("main.billing_quota", "mongodb://h/"))
    decision = {
        "_id": "acme",
        "period": "2026-11",
        "draft_ticket": -1,
        "computed_at": NOV,
        "state": "block",
    }
    mirror.put_many([decision])
    assert mirror.get("acme") is None
    mirror.put_many([{**decision, "draft_ticket": 0}])
    assert mirror.get("acme")["state"] == "block"
