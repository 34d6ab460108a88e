"""Finalize against runs and other finalizes, drafts that only move forward, and clocks.

Each test replays one scenario of issue 14 (items 2–9) with a deterministic
interleaving: the first operation is paused (or crashed) at a chosen database call,
the second runs to completion, then the first goes on. The invariant is always the
same: every token in the ledger is on exactly one invoice, a final invoice never
changes, and the quota decision never counts less than the ledger.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import mongomock
import pytest
from click.testing import CliRunner

from chores import ConfigError, Settings, check_quota, finalize_invoices, run_chore
from chores.cli import main
from chores.core import clock as _clock
from pricing import load_registry

from support.dbproxy import CountingDatabase, DatabaseProxy

CONFIG = Settings(mongo_url="mongomock://protocol", batch_size=50, redis_url=None)
SEP_20 = datetime(2026, 9, 20, tzinfo=UTC)
OCT_5 = datetime(2026, 10, 5, tzinfo=UTC)  # September is due (grace 3 days)


class Crash(Exception):
    """A process dying at a database call."""


class Interleaving:
    """Pauses (or crashes) the operation run through `proxy` at the `nth` call that
    matches `collection` and `method`, until `resume()`."""

    def __init__(self, db: Any, collection: str, method: str, nth: int = 1, crash: bool = False):
        self.target = (collection, method)
        self.nth = nth
        self.crash = crash
        self.seen = 0
        self.reached = threading.Event()
        self._resume = threading.Event()
        self.proxy = DatabaseProxy(db, serialize=True, around=self._around)
        self.error: BaseException | None = None

    def _around(self, collection: str, method: str, perform: Callable[[], Any]) -> Any:
        if (collection, method) == self.target and not self.reached.is_set():
            self.seen += 1
            if self.seen == self.nth:
                self.reached.set()
                if self.crash:
                    raise Crash(f"died at {collection}.{method}")
                self._resume.wait(timeout=60)
        return perform()

    def start(self, operation: Callable[[Any], Any]) -> threading.Thread:
        def body() -> None:
            try:
                operation(self.proxy)
            except BaseException as exc:  # a crash is part of the scenario
                self.error = exc

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        assert self.reached.wait(timeout=60), f"never reached {self.target}"
        return thread

    def resume(self, thread: threading.Thread) -> None:
        self._resume.set()
        thread.join(timeout=60)
        assert not thread.is_alive()


def runner(db: Any, org: str, ended: datetime, prompt: int, completion: int) -> None:
    db.tasks.insert_one(
        {
            "name": "ai",
            "status": "SUCCESS",
            "start_time": ended - timedelta(minutes=5),
            "end_time": ended,
            "last_updated_db": ended.timestamp(),
            "context": {
                "workspace_id": org,
                "ai_model": "gpt-4o-mini",
                "ai_tokens": prompt + completion,
                "ai_prompt_tokens": prompt,
                "ai_completion_tokens": completion,
            },
        }
    )


def ledger_tokens(db: Any, org: str) -> int:
    return sum(e["tokens"] for e in db.billing_ledger.find({"org": org}))


def invoiced_tokens(db: Any, org: str) -> int:
    return sum(
        line["tokens"] for inv in db.billing_invoices.find({"org": org}) for line in inv["lines"]
    )


def finals(db: Any) -> dict[str, Any]:
    return {i["_id"]: i for i in db.billing_invoices.find({"status": "final"})}


def assert_balanced(db: Any, org: str, expected: int) -> None:
    assert ledger_tokens(db, org) == expected, "billed twice or lost in the ledger"
    assert invoiced_tokens(db, org) == expected, "ledger and invoices disagree"


@pytest.fixture
def db() -> Any:
    return mongomock.MongoClient(tz_aware=True)["main"]


@pytest.fixture
def registry():
    return load_registry()


def seeded(db: Any, registry: Any) -> None:
    """acme: 1,000 September tokens metered, September due for finalization at OCT_5."""
    runner(db, "acme", SEP_20, 800, 200)
    run_chore(db, now=OCT_5, registry=registry, settings=CONFIG)


def test_finalize_freezes_the_draft_a_run_priced_with_its_own_registry(db, tmp_path):
    """Item 2: a final invoice is its last draft, whatever registry finalize would load."""
    custom = tmp_path / "registry.yaml"
    custom.write_text(
        "version: custom\nmodels:\n- id: house-model\n  aliases: [gpt-4o-mini]\n"
        "  tier: paid\n  prices:\n  - valid_from: '2024-01-01'\n"
        "    input: '7'\n    output: '11'\n"
    )
    runner(db, "acme", SEP_20, 800, 200)
    run_chore(db, now=OCT_5, registry=load_registry(custom), settings=CONFIG)
    draft = db.billing_invoices.find_one({"_id": "acme:2026-09"})
    assert draft["total_micros"] == 800 * 7 + 200 * 11  # µ$ per token = $ per 1M tokens

    assert finalize_invoices(db, now=OCT_5, settings=CONFIG) == ["acme:2026-09"]
    final = db.billing_invoices.find_one({"_id": "acme:2026-09"})
    assert final["status"] == "final"
    assert final["lines"] == draft["lines"]
    assert final["total_micros"] == draft["total_micros"]
    assert final["registry"] == draft["registry"]


def test_a_stale_finalizer_changes_nothing(db, registry):
    """Item 3: F1 takes the fence and stalls; F2 finalizes; a run inserts September usage
    E and, before it settles, F1's stale stamp claims E. E must still be billed once."""
    seeded(db, registry)
    first = Interleaving(db, "billing_ledger", "update_many")  # F1 at its first stamp
    stale = first.start(lambda d: finalize_invoices(d, now=OCT_5, settings=CONFIG))

    assert finalize_invoices(db, now=OCT_5, settings=CONFIG) == ["acme:2026-09"]
    frozen = finals(db)
    runner(db, "acme", datetime(2026, 9, 29, tzinfo=UTC), 5_000, 2_000)
    run = Interleaving(db, "billing_dirty", "update_many")  # E is in the ledger, marks open
    unsettled = run.start(lambda d: run_chore(d, now=OCT_5, registry=registry, settings=CONFIG))
    first.resume(stale)
    run.resume(unsettled)
    assert first.error is None and run.error is None

    assert finals(db) == frozen
    assert_balanced(db, "acme", 8_000)  # no further run needed
    october = db.billing_invoices.find_one({"_id": "acme:2026-10"})
    assert [line["late"] for line in october["lines"]] == [True]


def test_a_finalize_that_dies_after_freezing_loses_nothing(db, registry):
    """Item 4: a run lands September usage while F is about to freeze; F freezes and
    dies before it sweeps. Reruns and later finalizes pick the usage up."""
    seeded(db, registry)
    fin = Interleaving(db, "billing_invoices", "update_one")  # F's freeze
    thread = fin.start(lambda d: finalize_invoices(d, now=OCT_5, settings=CONFIG))
    runner(db, "acme", datetime(2026, 9, 29, tzinfo=UTC), 5_000, 2_000)
    run_chore(db, now=OCT_5, registry=registry, settings=CONFIG)  # rebuilds the draft
    fin.resume(thread)

    # F could not freeze a draft that no longer matched its stamp; it tried again.
    assert db.billing_invoices.find_one({"_id": "acme:2026-09"})["status"] == "final"
    run_chore(db, now=OCT_5, registry=registry, settings=CONFIG)
    assert_balanced(db, "acme", 8_000)

    # The same, but the run lands after the freeze and F dies before its sweep.
    db2 = mongomock.MongoClient(tz_aware=True)["main"]
    seeded(db2, registry)
    dying = Interleaving(db2, "billing_invoices", "find", nth=2, crash=True)  # the sweep
    thread = dying.start(lambda d: finalize_invoices(d, now=OCT_5, settings=CONFIG))
    dying.resume(thread)
    assert isinstance(dying.error, Crash)
    assert db2.billing_invoices.find_one({"_id": "acme:2026-09"})["status"] == "final"
    runner(db2, "acme", datetime(2026, 9, 29, tzinfo=UTC), 5_000, 2_000)
    run_chore(db2, now=OCT_5, registry=registry, settings=CONFIG)
    finalize_invoices(db2, now=OCT_5, settings=CONFIG)
    run_chore(db2, now=OCT_5, registry=registry, settings=CONFIG)
    assert_balanced(db2, "acme", 8_000)


def test_a_run_with_a_lagging_now_during_finalize_books_late(db, registry):
    """Item 5: a run whose `now` is Oct 31 lands October usage while November's finalize
    closes October."""
    runner(db, "acme", datetime(2026, 10, 20, tzinfo=UTC), 2_000, 1_000)
    nov_4 = datetime(2026, 11, 4, tzinfo=UTC)
    run_chore(db, now=nov_4, registry=registry, settings=CONFIG)
    fin = Interleaving(db, "billing_invoices", "update_one")  # about to freeze October
    thread = fin.start(lambda d: finalize_invoices(d, now=nov_4, settings=CONFIG))
    db.tasks.insert_one(
        {
            "name": "ai",
            "status": "RUNNING",
            "context": {
                "workspace_id": "acme",
                "ai_model": "gpt-4o-mini",
                "ai_tokens": 4_000,
                "ai_prompt_tokens": 3_000,
                "ai_completion_tokens": 1_000,
            },
        }
    )
    lagging = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    run_chore(db, now=lagging, registry=registry, settings=CONFIG)
    fin.resume(thread)
    assert fin.error is None
    frozen = finals(db)
    run_chore(db, now=nov_4, registry=registry, settings=CONFIG)
    finalize_invoices(db, now=nov_4, settings=CONFIG)
    run_chore(db, now=nov_4, registry=registry, settings=CONFIG)
    assert {k: v for k, v in finals(db).items() if k in frozen} == frozen
    assert_balanced(db, "acme", 7_000)


def test_marks_expire_by_the_wall_clock_not_by_a_callers_now(db, registry):
    """Item 6: an `--org acme` run whose `now` is 7 hours old must not have its marks
    deleted as expired by a concurrent all-orgs settle before its entries land."""
    old_now = datetime(2026, 11, 25, 5, 0, tzinfo=UTC)
    runner(db, "globex", datetime(2026, 11, 21, tzinfo=UTC), 100, 100)
    run_chore(db, now=old_now + timedelta(hours=7), registry=registry, settings=CONFIG)
    # An older runner: the all-orgs cursor is past it, so only the acme run reads it.
    runner(db, "acme", datetime(2026, 11, 10, tzinfo=UTC), 800, 200)
    slow = Interleaving(db, "billing_ledger", "insert_many")
    thread = slow.start(
        lambda d: run_chore(d, org="acme", now=old_now, registry=registry, settings=CONFIG)
    )
    run_chore(db, now=old_now + timedelta(hours=7), registry=registry, settings=CONFIG)
    slow.resume(thread)
    assert slow.error is None
    # No further run: the slow run's own settle must have found its marks.
    assert_balanced(db, "acme", 1_000)


def test_a_draft_never_goes_back(db, registry):
    """Item 7: an all-orgs run aggregates acme's draft and stalls; an `--org acme` run
    lands 9,000 more tokens; the slower run's older draft must not replace the newer."""
    now = datetime(2026, 11, 25, tzinfo=UTC)
    strict = Settings(
        mongo_url="mongomock://protocol", batch_size=50, redis_url=None, default_token_limit=5_000
    )
    runner(db, "acme", datetime(2026, 11, 20, tzinfo=UTC), 800, 200)
    slow = Interleaving(db, "billing_invoices", "bulk_write")  # the draft write
    thread = slow.start(lambda d: run_chore(d, now=now, registry=registry, settings=strict))
    runner(db, "acme", datetime(2026, 11, 21, tzinfo=UTC), 6_000, 3_000)
    run_chore(db, org="acme", now=now, registry=registry, settings=strict)
    slow.resume(thread)
    assert slow.error is None

    assert_balanced(db, "acme", 10_000)  # no run after the slow one
    decision = db.billing_quota.find_one({"_id": "acme"})
    assert decision["used_tokens"] == 10_000 and decision["state"] == "block"
    assert check_quota(db, "acme", now=now, settings=strict).state == "block"


def test_a_now_ahead_of_the_wall_clock_is_refused_before_any_write(db, registry):
    """Item 8: a run a month ahead would store a decision nothing could replace."""
    runner(db, "acme", datetime(2026, 11, 20, tzinfo=UTC), 8_000, 2_000)
    ahead = _clock.wall_clock() + timedelta(days=31)
    with pytest.raises(ConfigError, match="ahead of this machine's clock"):
        run_chore(db, now=ahead, registry=registry, settings=CONFIG)
    with pytest.raises(ConfigError, match="ahead of this machine's clock"):
        finalize_invoices(db, now=ahead, settings=CONFIG)
    assert [n for n in db.list_collection_names() if n.startswith("billing_")] == []

    within = _clock.wall_clock() + timedelta(seconds=CONFIG.future_skew_seconds)
    run_chore(db, now=within, registry=registry, settings=CONFIG)  # the allowed skew


def test_a_decision_from_the_future_is_unknown_and_replaced(db, registry):
    """Item 8: a decision stored with a future `computed_at` (an older version, a bad
    clock) is neither trusted nor kept."""
    strict = Settings(
        mongo_url="mongomock://protocol", batch_size=50, redis_url=None, default_token_limit=5_000
    )
    now = datetime(2026, 11, 25, tzinfo=UTC)
    runner(db, "acme", datetime(2026, 11, 20, tzinfo=UTC), 8_000, 2_000)
    db.billing_quota.insert_one(
        {
            "_id": "acme",
            "org": "acme",
            "period": "2026-12",
            "state": "ok",
            "used_tokens": 0,
            "spent_micros": 0,
            "computed_at": _clock.wall_clock() + timedelta(days=30),
        }
    )
    assert check_quota(db, "acme", now=now, settings=strict).state == "unknown"
    run_chore(db, now=now, registry=registry, settings=strict)
    decision = db.billing_quota.find_one({"_id": "acme"})
    assert (decision["period"], decision["used_tokens"]) == ("2026-11", 10_000)
    assert check_quota(db, "acme", now=now, settings=strict).state == "block"


@pytest.mark.parametrize("grace", [-10, float("nan"), 1e9, timedelta(days=-1), "3"])
def test_grace_is_a_finite_number_of_days_at_least_zero(db, grace):
    """Item 9."""
    with pytest.raises(ConfigError, match="grace must be"):
        finalize_invoices(db, now=OCT_5, grace=grace, settings=CONFIG)


@pytest.mark.parametrize("value", ["-40", "nan", "1e9", "inf"])
def test_the_cli_grace_option_is_checked_in_one_line(value, monkeypatch):
    monkeypatch.setenv("MONGO_URL", "mongomock://grace-check")
    from chores import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            main, ["finalize", "--grace-days", value, "--now", OCT_5.isoformat()]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2  # a usage error, like every bad option
    assert "Invalid value for '--grace-days'" in result.output and "0 to 366" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_period_not_ended_by_the_wall_clock_is_never_final(db, registry, monkeypatch):
    """Item 9: `now` just past the month end (within the skew), wall clock not yet."""
    wall = datetime(2026, 11, 30, 23, 58, tzinfo=UTC)
    monkeypatch.setattr(_clock, "wall_clock", lambda: wall)
    runner(db, "acme", datetime(2026, 11, 20, tzinfo=UTC), 800, 200)
    run_chore(db, now=wall, registry=registry, settings=CONFIG)
    now = datetime(2026, 12, 1, 0, 2, tzinfo=UTC)
    assert finalize_invoices(db, now=now, grace=0, settings=CONFIG) == []
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["status"] == "draft"

    monkeypatch.setattr(_clock, "wall_clock", lambda: now)
    assert finalize_invoices(db, now=now, grace=0, settings=CONFIG) == ["acme:2026-11"]


def test_an_outside_caller_gets_finals_equal_to_the_last_drafts(tmp_path):
    """The public API as another program calls it: `mongomock.MongoClient()` with its
    default options, a registry passed to `run_chore`, none to `finalize_invoices`."""
    custom = tmp_path / "registry.yaml"
    custom.write_text(
        "version: outside\nmodels:\n- id: house-model\n  aliases: [gpt-4o-mini]\n"
        "  tier: paid\n  prices:\n  - valid_from: '2024-01-01'\n"
        "    input: '0.37'\n    output: '1.9'\n"
    )
    db = mongomock.MongoClient()["main"]  # naive datetimes, as pymongo's default
    for org, prompt in (("acme", 1_234), ("globex", 56_789)):
        runner(db, org, SEP_20, prompt, prompt // 3)
    run_chore(db, now=OCT_5 - timedelta(days=1), registry=load_registry(custom))
    drafts = {i["_id"]: i for i in db.billing_invoices.find()}
    assert finalize_invoices(db, now=OCT_5) == sorted(drafts)
    for invoice_id, draft in drafts.items():
        final = db.billing_invoices.find_one({"_id": invoice_id})
        assert final["status"] == "final"
        assert (final["lines"], final["total_micros"]) == (draft["lines"], draft["total_micros"])
    exact = 1_234 * Decimal("0.37") + 411 * Decimal("1.9")  # µ$ per token = $ per 1M
    assert drafts["acme:2026-09"]["total_micros"] == int(exact.quantize(1, ROUND_HALF_UP))


def test_a_draft_written_before_tickets_is_rebuilt_then_finalized(db, registry):
    """A deployment upgraded mid-month: its drafts have no `entries`, `build_ticket` or
    sums, and its entries were never folded. The next run folds the whole period into
    them, so the daily finalize can freeze them."""
    seeded(db, registry)
    legacy = {"entries": "", "build_ticket": "", "usage_groups": "", "pending_fold": ""}
    db.billing_invoices.update_many({}, {"$unset": legacy})
    db.billing_ledger.update_many({}, {"$unset": {"fold": ""}})  # no draft held them so
    assert finalize_invoices(db, now=OCT_5, settings=CONFIG) == []  # cannot tell: it waits
    run_chore(db, now=OCT_5, registry=registry, settings=CONFIG)
    assert finalize_invoices(db, now=OCT_5, settings=CONFIG) == ["acme:2026-09"]
    assert_balanced(db, "acme", 1_000)


def test_a_run_that_dies_before_settling_still_gets_the_final_flagged(db, registry):
    """A run records an anomaly of September and dies before it rebuilds the draft; the
    finalize that freezes September flags it for review all the same (SPEC §3)."""
    seeded(db, registry)
    db.tasks.insert_one(
        {
            "name": "ai",
            "status": "SUCCESS",
            "end_time": datetime(2026, 9, 28, tzinfo=UTC),
            "last_updated_db": datetime(2026, 9, 28, tzinfo=UTC).timestamp(),
            "context": {"workspace_id": "acme", "ai_model": "gpt-4o-mini", "ai_tokens": "lots"},
        }
    )
    dying = Interleaving(db, "billing_counters", "find_one_and_update", crash=True)  # a ticket
    thread = dying.start(lambda d: run_chore(d, now=OCT_5, registry=registry, settings=CONFIG))
    dying.resume(thread)
    assert isinstance(dying.error, Crash)
    assert db.billing_anomalies.count_documents({"kind": "malformed_counters"}) == 1
    draft = db.billing_invoices.find_one({"_id": "acme:2026-09"})
    assert (draft["status"], draft["needs_review"]) == ("draft", False)  # built before it

    assert finalize_invoices(db, now=OCT_5, settings=CONFIG) == ["acme:2026-09"]
    final = db.billing_invoices.find_one({"_id": "acme:2026-09"})
    assert (final["status"], final["needs_review"], final["total_micros"]) == (
        "final",
        True,
        draft["total_micros"],
    )


def finalized_orgs(orgs: int) -> Any:
    """A database where `orgs` orgs each have a final September."""
    db = mongomock.MongoClient(tz_aware=True)["main"]
    for n in range(orgs):
        runner(db, f"org-{n:03d}", SEP_20, 800, 200)
    run_chore(db, now=OCT_5, registry=load_registry(), settings=CONFIG)
    assert len(finalize_invoices(db, now=OCT_5, settings=CONFIG)) == orgs
    return db


def test_the_daily_safety_sweep_reads_the_ledger_in_batches_not_per_final_invoice():
    """Each finalize checks every final period for usage it does not hold: a few grouped
    reads per batch of periods (BATCH_SIZE), not one read per final invoice ever stored."""
    calls, ledger_reads = {}, {}
    for orgs in (10, 120):  # CONFIG's batch size is 50: 1 batch, then 3
        db = CountingDatabase(finalized_orgs(orgs))
        finalize_invoices(db, now=OCT_5, settings=CONFIG)
        calls[orgs], ledger_reads[orgs] = db.calls, db.reads("billing_ledger")
    assert calls[10][("billing_ledger", "aggregate")] == 1
    assert calls[120][("billing_ledger", "aggregate")] == 3
    assert ledger_reads[120] - ledger_reads[10] == 2  # two more batches, not 110 more reads

    # An entry a dead run left unbooked in one of the 120 final periods is found and moved.
    db = finalized_orgs(120)
    straggler = db.billing_ledger.find_one({"org": "org-077"})
    straggler.update(_id="left-by-a-dead-run", booked=None, fence=None, fold=None)
    db.billing_ledger.insert_one(straggler)
    finalize_invoices(db, now=OCT_5, settings=CONFIG)
    moved = db.billing_ledger.find_one({"_id": "left-by-a-dead-run"})
    assert (moved["booked"], moved["late"]) == ("2026-10", True)
