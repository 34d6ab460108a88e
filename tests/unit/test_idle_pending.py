"""A runner left running, or waiting for a spawn finding that never comes, is not re-read
by every run forever: once its `last_updated_db` is older than PENDING_IDLE_SECONDS (a day
by default) it leaves the pending list, and is read again when it changes (a new stamp) or by
the daily full pass (a last write stamped with the old stamp, since stamps lag one write).
Nothing is lost and nothing billed twice: counted in ledger tokens and documents read.

Every run below follows another runner of the platform ending a minute before it (one
token of org `zeta`): the cursor moves on as on a live platform, so the changed scan reads
only what was written since (on an idle platform it re-reads the last LOOKBACK_SECONDS of
writes every run). Runs are hours apart, more than LOOKBACK_SECONDS.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from chores import Settings, run_chore
from chores.cli import main
from chores.run.report import RunReport

from support import NOW, ai_runner

DAY = timedelta(days=1)
BEFORE = NOW - timedelta(minutes=10)  # the last write of the runners below before NOW
# The other runners a run reads: its own and the one before, whose stamp the cursor is at
# (re-read within LOOKBACK_SECONDS); the first run reads one.
OTHERS = 2


@pytest.fixture
def settings() -> Settings:
    return Settings(mongo_url="mongomock://idle", batch_size=10, redis_url=None)


def run(db: Any, settings: Settings, now: datetime, **options: Any) -> RunReport:
    """A run at `now`, after another runner ended a minute before."""
    ended = now - timedelta(minutes=1)
    db.tasks.insert_one(ai_runner(f"other-{ended.isoformat()}", ended=ended, tokens=1, org="zeta"))
    return run_chore(db, now=now, settings=settings, **options)


def billed(db: Any, org: str = "acme") -> int:
    return sum(entry["tokens"] for entry in db.billing_ledger.find({"org": org}))


def pending(db: Any) -> set[str]:
    return {claim["runner_id"] for claim in db.billing_pending.find()}


def running(runner_id: str, tokens: int, stamp: datetime = BEFORE) -> dict[str, Any]:
    return ai_runner(
        runner_id, ended=None, status="RUNNING", tokens=tokens, stamp=stamp.timestamp()
    )


def test_runners_left_running_are_read_for_a_day_then_no_more(db, settings):
    db.tasks.insert_many([running(f"r{n}", 1_000) for n in range(25)])
    first = run(db, settings, NOW)
    assert (first.docs_read, first.idle_runners, billed(db)) == (25 + 1, 0, 25_000)
    assert len(pending(db)) == 25

    an_hour = run(db, settings, NOW + timedelta(hours=1))
    assert (an_hour.docs_read, an_hour.idle_runners, len(pending(db))) == (25 + OTHERS, 0, 25)

    a_day = run(db, settings, NOW + DAY + timedelta(hours=1))
    assert (a_day.docs_read, a_day.idle_runners, a_day.tokens_billed) == (25 + OTHERS, 25, 1)
    assert pending(db) == set()

    after = run(db, settings, NOW + DAY + timedelta(hours=2))
    assert (after.docs_read, after.idle_runners) == (OTHERS, 0)
    assert billed(db) == 25_000


def test_an_idle_runner_that_writes_again_is_read_and_watched_again(db, settings):
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    run(db, settings, NOW + 2 * DAY)
    assert pending(db) == set()

    later = NOW + 3 * DAY
    db.tasks.replace_one({"_id": "r1"}, running("r1", 1_500, later - timedelta(minutes=2)))
    again = run(db, settings, later)
    assert (again.docs_read, again.idle_runners, billed(db)) == (1 + OTHERS, 0, 1_500)
    assert pending(db) == {"str:'r1'"}


def test_a_last_write_stamped_old_waits_for_the_full_pass_and_is_billed_once(db, settings):
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    run(db, settings, NOW + 2 * DAY)  # idle: off the pending list
    # Its last write carries the stamp of the write before (stamps lag one write).
    ended = NOW + 2 * DAY + timedelta(hours=1)
    last = ai_runner("r1", ended=ended, tokens=1_800, stamp=BEFORE.timestamp())
    db.tasks.replace_one({"_id": "r1"}, last)
    incremental = run(db, settings, ended + timedelta(hours=1))
    assert (incremental.docs_read, billed(db)) == (OTHERS, 1_000)

    run(db, settings, ended + timedelta(hours=2), full=True)
    assert billed(db) == 1_800
    run(db, settings, ended + timedelta(hours=3), full=True)
    assert billed(db) == 1_800


def test_an_idle_runner_with_new_usage_is_billed_before_it_leaves(db, settings):
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    db.tasks.replace_one({"_id": "r1"}, running("r1", 1_400))  # stamped as the write before
    idle = run(db, settings, NOW + 2 * DAY)
    assert (idle.docs_read, idle.idle_runners, billed(db)) == (1 + OTHERS, 1, 1_400)
    assert pending(db) == set()


def test_a_runner_held_until_its_end_time_stays_pending_however_old_its_stamp(db, settings):
    ends = NOW + 20 * DAY  # further ahead than FUTURE_SKEW_SECONDS: held until `now` is there
    old = (NOW - 9 * DAY).timestamp()
    db.tasks.insert_one(ai_runner("r1", ended=ends, tokens=1_000, stamp=old))
    held = run(db, settings, NOW)
    assert (held.anomalies, held.idle_runners, billed(db)) == ({"future_end_time": 1}, 0, 0)
    assert pending(db) == {"str:'r1'"}
    assert run(db, settings, NOW + 5 * DAY).docs_read == 1 + OTHERS  # still watched
    run(db, settings, ends + timedelta(minutes=5))
    assert billed(db) == 1_000
    assert pending(db) == set()


def test_a_runner_whose_stamp_is_not_a_number_stays_pending(db, settings):
    doc = running("r1", 1_000)
    doc["last_updated_db"] = "yesterday"
    db.tasks.insert_one(doc)
    run(db, settings, NOW)
    later = run(db, settings, NOW + 2 * DAY)
    assert later.idle_runners == 0
    assert pending(db) == {"str:'r1'"}


def test_a_subagent_whose_spawn_finding_never_comes_is_idle_after_a_day(db, settings):
    db.tasks.insert_one(
        ai_runner("s1", ended=BEFORE, tokens=5_000, stamp=BEFORE.timestamp(), subagent="child")
    )
    held = run(db, settings, NOW)
    assert held.anomalies == {"baseline_missing": 1}
    assert pending(db) == {"str:'s1'"}
    idle = run(db, settings, NOW + 2 * DAY)
    assert (idle.idle_runners, billed(db)) == (1, 0)
    assert pending(db) == set()
    assert db.billing_anomalies.count_documents({"kind": "baseline_missing", "resolved": False})

    # Its finding stored at last, the document unchanged: the daily full pass bills it.
    db.findings.insert_one(
        {
            "_type": "ai",
            "ai_type": "task",
            "extra_data": {"runner_id": "s1"},
            "_context": {"workspace_id": "acme", "ai_tokens": 2_000, "ai_prompt_tokens": 2_000},
        }
    )
    run(db, settings, NOW + 3 * DAY)
    assert billed(db) == 0
    run(db, settings, NOW + 3 * DAY + timedelta(hours=1), full=True)
    assert billed(db) == 3_000  # 5,000 less the 2,000 it started from
    assert not db.billing_anomalies.count_documents({"resolved": False})


def test_chore_run_says_how_many_runners_went_idle(env_db):
    env_db.tasks.insert_one(running("r1", 1_000))
    first = CliRunner().invoke(
        main, ["run", "--all", "--now", NOW.isoformat()], catch_exceptions=False
    )
    assert first.exit_code == 0, first.output
    assert "PENDING_IDLE_SECONDS" not in first.output
    later = (NOW + 2 * DAY).isoformat()
    result = CliRunner().invoke(main, ["run", "--all", "--now", later], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 runner pending but not written for PENDING_IDLE_SECONDS" in text
    assert pending(env_db) == set()
