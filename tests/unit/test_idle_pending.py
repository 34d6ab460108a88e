"""A runner left running, or waiting for a spawn finding that never comes, is not re-read
by every run forever: once its `last_updated_db` is older than PENDING_IDLE_SECONDS (a day
by default) and it bills nothing, it is re-read once an hour (`progress.IDLE_RECHECK`). Its
later writes carry old stamps (stamps lag one write), which the changed scan does not read:
the hourly re-read bills them, and from then on the runner is read by every run again.
Nothing is lost and nothing billed twice: counted in ledger tokens and documents read.

Every run below follows another runner of the platform ending a minute before it (one
token of org `zeta`): the cursor moves on as on a live platform, so the changed scan reads
only what was written since, and the runner before (at the cursor, within LOOKBACK_SECONDS).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from chores import Settings, run_chore
from chores.cli import main
from chores.core.db import Collections
from chores.core.periods import as_utc
from chores.metering.progress import IDLE_RECHECK, Progress, next_recheck
from chores.run.report import RunReport
from chores.tasks import FANOUT_SCOPE, orgs_with_new_usage

from support import NOW, ai_runner
from support.dbproxy import DatabaseProxy

DAY = timedelta(days=1)
BEFORE = NOW - timedelta(minutes=10)  # the last write of the runners below before NOW
# The other runners a run reads: its own and the one before, whose stamp the cursor is at
# (re-read within LOOKBACK_SECONDS); the first run reads one.
OTHERS = 2


@pytest.fixture
def settings() -> Settings:
    return Settings(mongo_url="mongomock://idle", batch_size=10, redis_url=None)


def run(db: Any, settings: Settings, now: datetime, **options: Any) -> RunReport:
    """A run at `now`, after another runner (of the run's org, or of `zeta`) ended a minute
    before."""
    ended = now - timedelta(minutes=1)
    org = options.get("org") or "zeta"
    db.tasks.insert_one(ai_runner(f"other-{ended.isoformat()}", ended=ended, tokens=1, org=org))
    return run_chore(db, now=now, settings=settings, **options)


def billed(db: Any, org: str = "acme") -> int:
    """The tokens billed to `org`, the other runners' left out."""
    entries = db.billing_ledger.find({"org": org, "runner_id": {"$not": {"$regex": "other-"}}})
    return sum(entry["tokens"] for entry in entries)


def claims(db: Any) -> dict[str, Any]:
    """Each pending runner's latest `recheck_at` (None: read by every run)."""
    return {c["runner_id"]: c.get("recheck_at") for c in db.billing_pending.find()}


def running(runner_id: str, tokens: int, stamp: datetime = BEFORE) -> dict[str, Any]:
    return ai_runner(
        runner_id, ended=None, status="RUNNING", tokens=tokens, stamp=stamp.timestamp()
    )


def test_runners_left_running_are_read_every_run_for_a_day_then_hourly(db, settings):
    db.tasks.insert_many([running(f"r{n}", 1_000) for n in range(25)])
    first = run(db, settings, NOW)
    assert (first.docs_read, first.idle_runners, billed(db)) == (25 + 1, 0, 25_000)
    assert set(claims(db).values()) == {None}

    an_hour = run(db, settings, NOW + timedelta(hours=1))
    assert (an_hour.docs_read, an_hour.idle_runners) == (25 + OTHERS, 0)

    idle_at = NOW + DAY + timedelta(hours=1)
    a_day = run(db, settings, idle_at)
    assert (a_day.docs_read, a_day.idle_runners) == (25 + OTHERS, 25)
    assert len(claims(db)) == 25
    assert {as_utc(t) for t in claims(db).values()} == {idle_at + IDLE_RECHECK}

    for minutes in (20, 40):  # not due
        between = run(db, settings, idle_at + timedelta(minutes=minutes))
        assert (between.docs_read, between.idle_runners) == (OTHERS, 0)
    due = run(db, settings, idle_at + IDLE_RECHECK)
    assert (due.docs_read, due.idle_runners) == (25 + OTHERS, 25)
    assert billed(db) == 25_000
    assert db.billing_pending.count_documents({}) == 25  # one claim each


def test_a_resumed_runner_is_billed_within_the_hour_then_every_run(db, settings):
    """Writes an hour apart after a pause: each carries the stamp of the write before, older
    than the cursor's lookback window, so only the pending list reads them."""
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    idle_at = NOW + 30 * timedelta(hours=1)
    run(db, settings, idle_at)
    assert claims(db)["str:'r1'"] is not None

    stamp, tokens = BEFORE, 1_000
    for hour in range(1, 6):
        written = idle_at + timedelta(hours=hour) - timedelta(minutes=20)
        tokens += 1_000
        db.tasks.replace_one({"_id": "r1"}, running("r1", tokens, stamp))
        stamp = written
        run(db, settings, idle_at + timedelta(hours=hour))
        assert billed(db) == tokens  # within the hour of the write, every time
    assert claims(db) == {"str:'r1'": None}  # written within the day: every run again


def test_a_last_write_stamped_old_is_billed_at_the_next_hourly_read(db, settings):
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    idle_at = NOW + 2 * DAY
    run(db, settings, idle_at)
    ended = idle_at + timedelta(minutes=10)
    last = ai_runner("r1", ended=ended, tokens=1_800, stamp=BEFORE.timestamp())
    db.tasks.replace_one({"_id": "r1"}, last)
    run(db, settings, idle_at + timedelta(minutes=30))
    assert billed(db) == 1_000  # not due yet
    run(db, settings, idle_at + IDLE_RECHECK)
    assert billed(db) == 1_800
    assert claims(db) == {}  # finished and billed: off the list
    run(db, settings, idle_at + 2 * IDLE_RECHECK, full=True)
    assert billed(db) == 1_800


def test_a_runner_billed_within_a_day_is_read_every_run_however_old_its_stamp(db, settings):
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    db.tasks.replace_one({"_id": "r1"}, running("r1", 1_400))  # stamped as the write before
    billing = run(db, settings, NOW + 2 * DAY)
    assert (billing.docs_read, billing.idle_runners, billed(db)) == (1 + OTHERS, 0, 1_400)
    assert claims(db) == {"str:'r1'": None}  # claimed for its entry, read by the next run
    # Its stamp is still two days old (the next write will carry the time of this one),
    # but it was billed just now: read by every run, until a day after it was billed.
    for later in (timedelta(minutes=20), timedelta(hours=23)):
        after = run(db, settings, NOW + 2 * DAY + later)
        assert (after.docs_read, after.idle_runners) == (1 + OTHERS, 0)
        assert claims(db) == {"str:'r1'": None}
    a_day = run(db, settings, NOW + 3 * DAY + timedelta(minutes=20))
    assert (a_day.docs_read, a_day.idle_runners) == (1 + OTHERS, 1)
    assert claims(db)["str:'r1'"] is not None


def test_a_write_soon_after_a_resumed_runner_is_billed_is_billed_by_the_next_run(db, settings):
    """Fuzzing: a runner resuming after a day wrote once (billed at the hourly re-read),
    then again 20 minutes later, stamped with the first write's time (already outside the
    changed scan's window): it waited for the next hourly re-read."""
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    idle_at = NOW + 2 * DAY
    assert run(db, settings, idle_at).idle_runners == 1
    resumed = idle_at + timedelta(minutes=50)
    db.tasks.replace_one({"_id": "r1"}, running("r1", 2_000))  # stamped two days ago
    run(db, settings, idle_at + IDLE_RECHECK)
    assert billed(db) == 2_000  # at its hourly re-read
    quiet = run(db, settings, idle_at + IDLE_RECHECK + timedelta(minutes=5))
    assert quiet.idle_runners == 0  # billed a run ago: watched, its stamp however old
    db.tasks.replace_one({"_id": "r1"}, running("r1", 3_000, stamp=resumed))
    run(db, settings, idle_at + IDLE_RECHECK + timedelta(minutes=25))
    assert billed(db) == 3_000  # by the next run, not the next hour


def test_a_runner_held_until_its_end_time_is_read_every_run_however_old_its_stamp(db, settings):
    ends = NOW + 20 * DAY  # further ahead than FUTURE_SKEW_SECONDS: held until `now` is there
    old = (NOW - 9 * DAY).timestamp()
    db.tasks.insert_one(ai_runner("r1", ended=ends, tokens=1_000, stamp=old))
    held = run(db, settings, NOW)
    assert (held.anomalies, held.idle_runners, billed(db)) == ({"future_end_time": 1}, 0, 0)
    assert claims(db) == {"str:'r1'": None}
    assert run(db, settings, NOW + 5 * DAY).docs_read == 1 + OTHERS
    assert claims(db) == {"str:'r1'": None}
    run(db, settings, ends + timedelta(minutes=5))
    assert billed(db) == 1_000
    assert claims(db) == {}


HELD_FINISHED = {
    "malformed_counters": {"ai_prompt_tokens": float("inf")},
    "bad_model": {"ai_model": 4},
    "bad_key_source": {"ai_key_source": "theirs"},
}


@pytest.mark.parametrize("stamped", [True, False], ids=["stamped", "first write"])
@pytest.mark.parametrize("kind", HELD_FINISHED)
def test_a_finished_runner_held_by_an_anomaly_is_billed_within_the_hour_once_fixed(
    db, settings, kind, stamped
):
    """Its fixed document is stamped as the held write (stamps lag one write), hours behind
    the cursor: re-read once an hour, it is billed within the hour, not by the daily full
    pass (an independent oracle's finding); its org is not metered at every tick for it.
    A first write has no stamp."""
    stamp = (NOW - timedelta(hours=2)).timestamp()  # behind the cursor's look-back
    held = ai_runner("r1", ended=BEFORE, tokens=1_000, stamp=stamp)
    held["context"].update(HELD_FINISHED[kind])
    if not stamped:
        del held["last_updated_db"]
    db.tasks.insert_one(held)
    first = run(db, settings, NOW)
    assert (first.anomalies, billed(db)) == ({kind: 1}, 0)
    assert claims(db) == {"str:'r1'": next_recheck(NOW)}
    fixed = ai_runner("r1", ended=BEFORE, tokens=1_000, stamp=stamp)
    db.tasks.replace_one({"_id": "r1"}, fixed)
    before_due = next_recheck(NOW) - timedelta(minutes=1)
    # as a fan-out would have left its cursor: at the newest stamp it saw
    Progress(Collections.of(db, settings)).advance_cursor(FANOUT_SCOPE, NOW.timestamp())
    assert "acme" not in orgs_with_new_usage(db, settings, now=before_due)[0]
    assert "acme" in orgs_with_new_usage(db, settings, now=next_recheck(NOW))[0]
    assert run(db, settings, before_due).docs_read == OTHERS  # not due: not read
    assert billed(db) == 0
    due = run(db, settings, next_recheck(NOW))
    assert (due.docs_read, billed(db), claims(db)) == (1 + OTHERS, 1_000, {})
    (anomaly,) = db.billing_anomalies.find({"runner_id": "str:'r1'"})
    assert anomaly["resolved"] is True
    run(db, settings, NOW + timedelta(hours=4), full=True)
    assert billed(db) == 1_000


def test_a_held_last_write_after_a_long_pause_is_watched_by_its_end_time(db, settings):
    """A runner billed while running, then silent for more than PENDING_IDLE_SECONDS, whose
    last write is held: that write is stamped as the one before, a day old, but it ended
    now: watched for a day from its end (review of the first cut, which let it go at once)."""
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    ended = NOW + 2 * DAY
    last = ai_runner("r1", ended=ended, tokens=1_500, stamp=BEFORE.timestamp(), ai_model=4)
    db.tasks.replace_one({"_id": "r1"}, last)
    held = run(db, settings, ended + timedelta(minutes=5))
    assert (held.anomalies, billed(db)) == ({"bad_model": 1}, 1_000)
    assert list(claims(db)) == ["str:'r1'"]
    fixed = ai_runner("r1", ended=ended, tokens=1_500, stamp=BEFORE.timestamp())
    db.tasks.replace_one({"_id": "r1"}, fixed)
    run(db, settings, ended + 2 * IDLE_RECHECK)
    assert (billed(db), claims(db)) == (1_500, {})


def test_a_held_finished_runner_is_let_go_once_idle_and_the_full_pass_bills_its_fix(db, settings):
    """Held runners of the past do not grow the pending list: one whose stamp, end time and
    last billing are all older than PENDING_IDLE_SECONDS is not watched, and one watched
    goes once it is idle, as do times further ahead than FUTURE_SKEW_SECONDS (garbage). A
    fix after that is the daily full pass's."""
    old = ai_runner("r0", ended=NOW - 3 * DAY, tokens="12", stamp=(NOW - 3 * DAY).timestamp())
    fresh = ai_runner("r1", ended=BEFORE, tokens="12", stamp=BEFORE.timestamp())
    ahead = ai_runner("r2", ended=BEFORE, tokens="12", stamp=(NOW + 400 * DAY).timestamp())
    far_end = ai_runner("r3", ended=NOW + 500 * DAY, tokens=1_000)
    del far_end["last_updated_db"]
    db.tasks.insert_many([old, fresh, ahead, far_end])
    run(db, settings, NOW, full=True)
    assert set(claims(db)) == {"str:'r1'", "str:'r2'"}  # r2: by its end time
    later = run(db, settings, NOW + DAY + timedelta(hours=1))
    assert (later.idle_runners, claims(db)) == (0, {})
    db.tasks.replace_one(
        {"_id": "r1"}, ai_runner("r1", ended=BEFORE, tokens=700, stamp=BEFORE.timestamp())
    )
    run(db, settings, NOW + DAY + timedelta(hours=2))
    assert billed(db) == 0
    run(db, settings, NOW + DAY + timedelta(hours=3), full=True)
    assert billed(db) == 700


def test_a_held_finished_runner_without_a_stamp_is_let_go_once_its_end_time_is_idle(db, settings):
    """A first write has no stamp (the changed scan reads it every run): watched until its
    end time is older than PENDING_IDLE_SECONDS, not forever; without an end time, not at
    all (`bad_end_time`: a fix is the full pass's)."""
    unstamped = ai_runner("r1", ended=BEFORE, tokens="12")
    no_end = ai_runner("r2", ended=BEFORE, tokens=1_000)
    no_end["end_time"] = "soon"
    for doc in (unstamped, no_end):
        del doc["last_updated_db"]
    db.tasks.insert_many([unstamped, no_end])
    first = run(db, settings, NOW)
    assert first.anomalies == {"malformed_counters": 1, "bad_end_time": 1}
    assert list(claims(db)) == ["str:'r1'"]
    run(db, settings, NOW + DAY + timedelta(hours=1))
    assert claims(db) == {}


def test_a_held_first_write_without_an_end_time_is_watched_by_its_start_time(db, settings):
    """No stamp, no end time that is one, never billed: its start time says it is recent,
    so its fix, stamped as the held write, is billed within the hour (a second oracle's
    finding: it was let go at once, the fix left to the daily full pass)."""
    started = NOW - timedelta(hours=1)
    held = {**ai_runner("r1", ended=BEFORE, tokens=1_000), "start_time": started}
    held["end_time"] = "soon"
    del held["last_updated_db"]
    db.tasks.insert_one(held)
    assert run(db, settings, NOW).anomalies == {"bad_end_time": 1}
    written = (NOW - timedelta(minutes=30)).timestamp()  # the held write's time
    fixed = ai_runner("r1", ended=BEFORE, tokens=1_000, stamp=written)
    db.tasks.replace_one({"_id": "r1"}, {**fixed, "start_time": started})
    run(db, settings, NOW + timedelta(hours=2))
    assert (billed(db), claims(db)) == (1_000, {})


def test_a_runner_whose_stamp_is_not_a_number_is_read_every_run(db, settings):
    doc = running("r1", 1_000)
    doc["last_updated_db"] = "yesterday"
    db.tasks.insert_one(doc)
    run(db, settings, NOW)
    later = run(db, settings, NOW + 2 * DAY)
    assert later.idle_runners == 0
    assert claims(db) == {"str:'r1'": None}


def test_a_subagent_whose_spawn_finding_comes_late_is_billed_at_the_next_hourly_read(db, settings):
    db.tasks.insert_one(
        ai_runner("s1", ended=BEFORE, tokens=5_000, stamp=BEFORE.timestamp(), subagent="child")
    )
    held = run(db, settings, NOW)
    assert held.anomalies == {"baseline_missing": 1}
    idle_at = NOW + 2 * DAY
    assert run(db, settings, idle_at).idle_runners == 1
    db.findings.insert_one(
        {
            "_type": "ai",
            "ai_type": "task",
            "extra_data": {"runner_id": "s1"},
            "_context": {"workspace_id": "acme", "ai_tokens": 2_000, "ai_prompt_tokens": 2_000},
        }
    )
    run(db, settings, idle_at + timedelta(minutes=5))
    assert billed(db) == 0  # not due
    run(db, settings, idle_at + IDLE_RECHECK)
    assert billed(db) == 3_000  # 5,000 less the 2,000 it started from
    assert not db.billing_anomalies.count_documents({"resolved": False})
    assert claims(db) == {}


def test_the_fan_out_lists_an_org_with_idle_runners_only_when_they_are_due(db, settings):
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    idle_at = NOW + 2 * DAY
    run(db, settings, idle_at)

    # as a fan-out would have left its cursor: at the newest stamp it saw
    Progress(Collections.of(db, settings)).advance_cursor(FANOUT_SCOPE, idle_at.timestamp())

    def listed(now: datetime) -> bool:
        orgs = orgs_with_new_usage(db, settings, now=now).orgs
        return "acme" in orgs

    assert not listed(idle_at + timedelta(minutes=30))
    assert listed(idle_at + IDLE_RECHECK)


def test_chore_run_says_how_many_runners_went_idle(env_db):
    env_db.tasks.insert_one(running("r1", 1_000))
    now = NOW.isoformat()
    first = CliRunner().invoke(main, ["run", "--all", "--now", now], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "PENDING_IDLE_SECONDS" not in first.output
    later = ["run", "--all", "--now", (NOW + 2 * DAY).isoformat()]
    dry = CliRunner().invoke(main, [*later, "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert "PENDING_IDLE_SECONDS" not in dry.output  # a dry run changes nothing
    result = CliRunner().invoke(main, later, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "1 runner pending but not written for PENDING_IDLE_SECONDS: re-read once an hour" in text
    assert claims(env_db)["str:'r1'"] is not None


def test_claims_on_an_idle_runner_made_within_an_hour_fall_due_together_and_merge(db, settings):
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    idle_at = NOW + 2 * DAY  # on the hour
    run(db, settings, idle_at)
    for minutes in (20, 40):  # full passes read it before its claim is due
        assert run(db, settings, idle_at + timedelta(minutes=minutes), full=True).idle_runners == 1
    recheck = [as_utc(c["recheck_at"]) for c in db.billing_pending.find()]
    assert recheck == [idle_at + IDLE_RECHECK] * 3
    due = run(db, settings, idle_at + IDLE_RECHECK + timedelta(minutes=5))
    assert due.idle_runners == 1
    recheck = [as_utc(c["recheck_at"]) for c in db.billing_pending.find()]
    assert recheck == [idle_at + 2 * IDLE_RECHECK]  # one claim, due at the next hour
    assert billed(db) == 1_000


def test_an_org_run_reads_an_idle_runner_only_when_due(db, settings):
    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW, org="acme")
    idle_at = NOW + 2 * DAY
    assert run(db, settings, idle_at, org="acme").idle_runners == 1
    between = run(db, settings, idle_at + timedelta(minutes=20), org="acme")
    assert (between.docs_read, between.idle_runners) == (OTHERS, 0)
    due = run(db, settings, idle_at + IDLE_RECHECK, org="acme")
    assert (due.docs_read, due.idle_runners) == (1 + OTHERS, 1)


def test_a_runner_stamped_minus_infinity_is_read_every_run_with_one_claim(db, settings):
    doc = running("r1", 1_000)
    doc["last_updated_db"] = float("-inf")  # read by every changed scan (no finite stamp)
    db.tasks.insert_one(doc)
    for minutes in (0, 30, 60, 90):
        later = run(db, settings, NOW + 2 * DAY + timedelta(minutes=minutes))
        assert later.idle_runners == 0
    assert db.billing_pending.count_documents({}) == 1
    assert claims(db) == {"str:'r1'": None}


def test_an_idle_runner_read_twice_in_a_run_is_counted_once(db, settings):
    """Review: an idle runner read from the pending list and again, written meanwhile
    (a heartbeat: nothing billed), by a full pass was reported as two idle runners."""
    from support.dbproxy import DatabaseProxy

    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    idle_at = NOW + 2 * DAY
    run(db, settings, idle_at)
    beat: list[bool] = []

    def heartbeat_after_the_pending_read(collection, method, perform):  # type: ignore[no-untyped-def]
        result = perform()
        if (collection, method) == ("tasks", "find") and not beat:
            beat.append(True)
            db.tasks.replace_one({"_id": "r1"}, running("r1", 1_000, BEFORE + timedelta(0, 1)))
        return result

    proxy = DatabaseProxy(db, around=heartbeat_after_the_pending_read)
    due = run(proxy, settings, idle_at + IDLE_RECHECK, full=True)
    assert beat and due.docs_read == 2 + 3  # r1 twice, and a full pass reads the 3 others
    assert due.idle_runners == 1
    assert billed(db) == 1_000
    assert len(claims(db)) == 1


def test_an_idle_runner_billed_by_its_second_read_in_a_run_is_not_idle(db, settings):
    """Review: an idle runner read from the pending list, then written (new tokens) before
    the changed scan read it again and billed it, was still reported idle, while its claim
    said to read it every run."""
    from support.dbproxy import DatabaseProxy

    db.tasks.insert_one(running("r1", 1_000))
    run(db, settings, NOW)
    idle_at = NOW + 2 * DAY
    run(db, settings, idle_at)
    due_at = idle_at + IDLE_RECHECK
    written: list[bool] = []

    def write_after_the_pending_read(collection, method, perform):  # type: ignore[no-untyped-def]
        result = perform()
        if (collection, method) == ("tasks", "find") and not written:
            written.append(True)  # a recent stamp: the changed scan reads it
            db.tasks.replace_one({"_id": "r1"}, running("r1", 2_000, due_at - timedelta(0, 5)))
        return result

    proxy = DatabaseProxy(db, around=write_after_the_pending_read)
    due = run(proxy, settings, due_at)
    assert written and billed(db) == 2_000
    assert due.idle_runners == 0
    assert claims(db) == {"str:'r1'": None}  # read by every run


def test_a_pending_runner_whose_last_write_names_another_org_is_billed_by_its_runs(db, settings):
    """Review: a running runner of globex, billed and pending, writes nothing for half an
    hour; its last write moves it to initech with 4,000 more tokens, stamped as its write
    before (stamps lag one write), older than initech's cursor. globex's pending read
    dropped it (not globex's any more) and initech's changed scan did not read it: with
    per-org runs only (the fan-out), initech billed it a day later, at the full pass."""
    start = NOW - timedelta(hours=2)
    x = ai_runner("x", ended=None, status="RUNNING", org="globex", stamp=start.timestamp())
    db.tasks.insert_one(x)

    def every_org(at: datetime) -> None:
        for org in ("globex", "initech"):
            db.tasks.insert_one(
                ai_runner(f"{org}-{at:%H%M}", ended=at - timedelta(minutes=1), org=org, tokens=1)
            )
            run_chore(db, org=org, now=at, settings=settings)

    moments = [start + timedelta(minutes=5 * n) for n in range(1, 8)]
    for at in moments[:6]:
        every_org(at)
    moved = ai_runner("x", ended=moments[5], org="initech", tokens=5_000, stamp=start.timestamp())
    db.tasks.replace_one({"_id": "x"}, moved)
    every_org(moments[6])  # globex's run hands x over to initech's pending list
    every_org(moments[6] + timedelta(minutes=5))

    billed = {
        org: sum(e["tokens"] for e in db.billing_ledger.find({"runner_id": "str:'x'", "org": org}))
        for org in ("globex", "initech")
    }
    assert billed == {"globex": 1_000, "initech": 4_000}
    assert db.billing_pending.count_documents({"runner_id": "str:'x'"}) == 0  # billed in full


def test_a_pending_runner_moved_back_while_it_is_handed_over_is_billed_by_its_org(db, settings):
    """Review: the read that hands a moved runner over found its document naming the run's
    own org again (moved back since the run's first read, stamped older than the cursor);
    the claim was released all the same, and nothing read it until the daily full pass."""
    start = NOW - timedelta(hours=2)
    x = ai_runner("x", ended=None, status="RUNNING", org="globex", stamp=start.timestamp())
    db.tasks.insert_one(x)
    run_chore(db, org="globex", now=start + timedelta(minutes=5), settings=settings)
    # Another runner of globex moves its cursor past x's stamp (and the lookback).
    db.tasks.insert_one(ai_runner("y", ended=NOW - timedelta(minutes=30), org="globex"))
    run_chore(db, org="globex", now=NOW - timedelta(minutes=25), settings=settings)
    moved = ai_runner("x", ended=None, status="RUNNING", org="initech", stamp=start.timestamp())
    db.tasks.replace_one({"_id": "x"}, moved)
    back = ai_runner("x", ended=NOW - timedelta(minutes=2), org="globex", tokens=6_000)
    back["last_updated_db"] = start.timestamp()
    reads: list[str] = []

    def move_back_before_the_hand_over(collection, method, perform):  # type: ignore[no-untyped-def]
        if (collection, method) == ("tasks", "find"):
            reads.append(method)
            if len(reads) == 2:  # the pending read missed x: the hand-over reads it again
                db.tasks.replace_one({"_id": "x"}, back)
        return perform()

    proxy = DatabaseProxy(db, around=move_back_before_the_hand_over)
    dry = run_chore(proxy, org="globex", now=NOW, settings=settings, dry_run=True)
    assert dry.tokens_billed == 5_000  # what the run bills, as a dry run reads the same
    db.tasks.replace_one({"_id": "x"}, moved)
    reads.clear()
    report = run_chore(proxy, org="globex", now=NOW, settings=settings)

    assert len(reads) >= 2 and report.tokens_billed == 5_000
    billed = sum(e["tokens"] for e in db.billing_ledger.find({"runner_id": "str:'x'"}))
    assert billed == 6_000 and db.billing_pending.count_documents({}) == 0
