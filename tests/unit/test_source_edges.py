"""What a run and the fan-out read, at their edges (found untested by mutation testing of
`chores/metering/source.py`, `chores/metering/progress.py` and the fan-out's lookback): the
lookback boundary, the future-skew horizon, the lowest stamp, spawn-finding lookups, dirty
marks that expire by the wall clock (six hours, to the millisecond), claims."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId

from chores import Collections, run_chore
from chores.core import clock
from chores.metering.ledger import Ledger
from chores.metering.progress import Progress
from chores.metering.source import Source
from chores.run.pipeline import Pipeline

from support import NOW, WALL_CLOCK, ai_runner

# --- fanout lookback ---


def test_the_fan_out_lists_an_org_whose_write_is_stamped_below_its_cursor_within_the_lookback(
    db, settings
):
    """docs/deploy.md: the fan-out lists the orgs of the AI runners stamped since its
    own cursor minus LOOKBACK_SECONDS. A write stamped one write late (below the cursor, within
    the lookback) must get its org metered, or the runner goes unread until the daily full pass."""
    from chores.tasks import FANOUT_SCOPE, orgs_with_new_usage

    t = NOW.timestamp()
    db.tasks.insert_one(ai_runner(ObjectId(), tokens=1_000, ended=NOW, stamp=t - 60))
    orgs, newest, _ = orgs_with_new_usage(db, settings, now=NOW)
    assert orgs == ["acme"]
    Progress(Collections.of(db, settings)).advance_cursor(FANOUT_SCOPE, float(newest))
    assert settings.lookback_seconds > 120
    db.tasks.insert_one(
        ai_runner(
            ObjectId(), org="globex", tokens=5_000, ended=NOW - timedelta(minutes=2), stamp=t - 120
        )
    )
    orgs, _, _ = orgs_with_new_usage(db, settings, now=NOW + timedelta(minutes=5))
    assert "globex" in orgs


def test_the_fan_out_lists_no_org_id_that_was_not_utf8_and_says_it_saw_one(db, settings):
    """Bytes that are not UTF-8 read as U+FFFD: that runner names no org (no query can name
    its bytes), so it is not listed, and the fan-out says so (`not_utf8`: `run.orgless`
    records it). Runners of plain org ids say nothing of the kind."""
    from chores.tasks import orgs_with_new_usage

    db.tasks.insert_one(ai_runner(ObjectId(), tokens=1_000, ended=NOW))
    listed = orgs_with_new_usage(db, settings, now=NOW)
    assert (listed.orgs, listed.not_utf8) == (["acme"], False)
    db.tasks.insert_one(ai_runner(ObjectId(), org="ac\ufffdme", tokens=1_000, ended=NOW))
    listed = orgs_with_new_usage(db, settings, now=NOW)
    assert (listed.orgs, listed.not_utf8) == (["acme"], True)


# --- source boundary ---


def test_a_runner_stamped_exactly_at_the_cursor_minus_the_lookback_is_billed(
    db, settings, registry
):
    """docs/contract.md: a run reads the AI runners whose stamp is *at or after* the
    cursor minus LOOKBACK_SECONDS. A runner landing exactly on that boundary, written after
    the run that set the cursor, must be read (and billed) by the next run."""
    t = NOW.timestamp()
    db.tasks.insert_one(
        ai_runner(ObjectId(), tokens=1_000, ended=NOW - timedelta(minutes=1), stamp=t - 60)
    )
    run_chore(db, org="acme", now=NOW, settings=settings, registry=registry)
    cursor = Progress(Collections.of(db, settings)).cursor("org:acme")
    assert cursor == t - 60
    boundary = cursor - settings.lookback_seconds
    db.tasks.insert_one(
        ai_runner(ObjectId(), tokens=5_000, ended=NOW - timedelta(minutes=30), stamp=boundary)
    )
    run_chore(db, org="acme", now=NOW + timedelta(minutes=5), settings=settings, registry=registry)
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == 6_000


# --- source horizon ---


def test_a_stamp_exactly_at_the_future_skew_horizon_moves_the_fan_out_cursor(db, settings):
    """docs/deploy.md (FUTURE_SKEW_SECONDS): only a stamp *further* ahead of now than this
    never moves a cursor; one exactly `now + FUTURE_SKEW_SECONDS` ahead is plausible and is
    the fan-out's newest stamp."""
    from chores.tasks import orgs_with_new_usage

    t = NOW.timestamp()
    edge = t + settings.future_skew_seconds
    db.tasks.insert_one(ai_runner(ObjectId(), tokens=1_000, ended=NOW, stamp=t - 60))
    db.tasks.insert_one(ai_runner(ObjectId(), org="globex", tokens=1_000, ended=NOW, stamp=edge))
    orgs, newest, _ = orgs_with_new_usage(db, settings, now=NOW)
    assert orgs == ["acme", "globex"] and newest == edge


def test_the_fan_out_cursor_moves_to_the_newest_of_several_stamps(db, settings):
    """source.newest_stamp: the newest plausible stamp of the changed runners (docs/deploy.md:
    the fan-out's cursor); not the oldest, which would leave the cursor behind and the next
    fan-outs listing the same orgs again."""
    from chores.tasks import orgs_with_new_usage

    t = NOW.timestamp()
    db.tasks.insert_one(ai_runner(ObjectId(), tokens=1_000, ended=NOW, stamp=t - 600))
    db.tasks.insert_one(ai_runner(ObjectId(), org="globex", tokens=1_000, ended=NOW, stamp=t - 60))
    orgs, newest, _ = orgs_with_new_usage(db, settings, now=NOW)
    assert orgs == ["acme", "globex"] and newest == t - 60


# --- source lowest stamp ---


def test_the_lowest_finite_stamp_is_a_stamp_not_a_missing_one(db, settings):
    """docs/contract.md: a runner is read by the changed scan when its stamp is at or
    after the cursor minus the lookback, or is no number; -1.797e308 is a finite number far
    below any cursor: in neither set (the daily full pass reads it), unlike a missing one."""
    lowest = ai_runner(ObjectId(), ended=NOW, stamp=-sys.float_info.max)
    missing = ai_runner(ObjectId(), ended=NOW)
    del missing["last_updated_db"]
    db.tasks.insert_many([lowest, missing])
    source = Source(Collections.of(db, settings), ai_task_names=["ai"], batch_size=10)
    read = [d["_id"] for d in source.changed_runners("acme", NOW.timestamp() - 900)]
    assert read == [missing["_id"]]


# --- source odd findings ---


def test_a_spawn_finding_whose_extra_data_is_an_array_is_skipped_not_a_crash(db, settings):
    """The server matches `extra_data.runner_id` inside an array of documents: such a hostile
    finding is returned by the query and must be skipped (no baseline from it), not crash
    the run."""
    rid = str(ObjectId())
    db.findings.insert_one(
        {
            "_id": ObjectId(),
            "_type": "ai",
            "ai_type": "task",
            "extra_data": [{"runner_id": rid}],
            "_context": {"workspace_id": "acme"},
        }
    )
    source = Source(Collections.of(db, settings), ai_task_names=["ai"], batch_size=10)
    assert source.spawn_contexts([rid]) == {}


# --- source sessions ---


def test_subagent_spawns_returns_the_findings_of_the_sessions_asked_for(db, settings):
    """Source.subagent_spawns: the `_context` of every subagent spawn finding of *these*
    sessions, by session (lineage.unpaired_session: where a chunk's baseline is found)."""
    for session, ctx in (
        ("s1", {"workspace_id": "acme", "n": 1}),
        ("s2", {"workspace_id": "acme", "n": 2}),
    ):
        db.findings.insert_one(
            {
                "_id": ObjectId(),
                "_type": "ai",
                "ai_type": "task",
                "extra_data": {"subagent_session_id": session},
                "_context": ctx,
            }
        )
    source = Source(Collections.of(db, settings), ai_task_names=["ai"], batch_size=10)
    assert source.subagent_spawns(["s1"]) == {"s1": [{"workspace_id": "acme", "n": 1}]}


# --- source task groups ---


def test_task_groups_lists_the_runners_of_each_org_and_task(db, settings):
    """Source.task_groups: the ids of the AI runners of each (org, context.task_id) asked for
    (lineage.unpaired_task: where the chunk of an `ai` runner started with run_task finds
    the runner it is a chunk of); another org's runner under the same task id is no member."""
    mine, theirs = ObjectId(), ObjectId()
    db.tasks.insert_one(ai_runner(mine, ended=NOW, task_id="t1"))
    db.tasks.insert_one(ai_runner(theirs, org="globex", ended=NOW, task_id="t1"))
    source = Source(Collections.of(db, settings), ai_task_names=["ai"], batch_size=10)
    assert source.task_groups([("acme", "t1")]) == {("acme", "t1"): [str(mine)]}


# --- progress marks ---


def test_a_fresh_open_mark_is_not_deletable(db, settings):
    """progress.py docstring: an open mark is deleted by a settle only once closed, or once it
    expired OPEN_MARK_EXPIRY after its writer wrote it (wall clock)."""
    progress = Progress(Collections.of(db, settings))
    (mark,) = progress.mark_dirty([("acme", "2030-01")], now=WALL_CLOCK)
    deletable, pairs = progress.dirty("acme")
    assert pairs == {("acme", "2030-01")} and deletable == {}
    progress.close_marks([mark])
    deletable, _ = progress.dirty("acme")
    assert deletable == {mark: ("acme", "2030-01")}


def test_an_open_mark_written_by_a_lagging_now_expires_by_the_wall_clock(db, settings):
    """progress.py docstring: an open mark expires by the wall clock (`expires_at`), never by a
    caller's `now`: a run whose `now` lags cannot make a live writer's marks look expired."""
    progress = Progress(Collections.of(db, settings))
    progress.mark_dirty([("acme", "2029-12")], now=WALL_CLOCK - timedelta(hours=7))
    deletable, pairs = progress.dirty("acme")
    assert pairs == {("acme", "2029-12")} and deletable == {}


SIX_HOURS = timedelta(hours=6)  # docs/design.md: a dead writer's open mark expires after it
MS = timedelta(milliseconds=1)  # BSON keeps datetimes to the millisecond
AROUND_EXPIRY = [  # when a mark was written, and whether a settle may delete it now
    (WALL_CLOCK - SIX_HOURS + MS, False),
    (WALL_CLOCK - SIX_HOURS, False),
    (WALL_CLOCK - SIX_HOURS - MS, True),
]


@pytest.mark.parametrize(("written", "deletable"), AROUND_EXPIRY)
def test_an_open_mark_expires_once_six_hours_of_wall_clock_have_passed(
    db, settings, monkeypatch, written, deletable
):
    progress = Progress(Collections.of(db, settings))
    monkeypatch.setattr(clock, "wall_clock", lambda: written)
    (mark,) = progress.mark_dirty([("acme", "2026-11")], now=NOW)
    monkeypatch.setattr(clock, "wall_clock", lambda: WALL_CLOCK)
    found, pairs = progress.dirty("acme")
    assert pairs == {("acme", "2026-11")}
    assert found == ({mark: ("acme", "2026-11")} if deletable else {})


@pytest.mark.parametrize(("written", "deletable"), AROUND_EXPIRY)
def test_a_mark_of_an_earlier_version_expires_six_hours_after_it_was_written(
    db, settings, written, deletable
):
    """A mark written before `expires_at` existed has only `at`."""
    mark = {"_id": "m1", "org": "acme", "period": "2026-11", "open": True, "at": written}
    db.billing_dirty.insert_one(mark)
    found, _ = Progress(Collections.of(db, settings)).dirty("acme")
    assert found == ({"m1": ("acme", "2026-11")} if deletable else {})


def test_a_writer_stalled_until_its_marks_expiry_still_gets_its_entries_billed(
    db, settings, registry, monkeypatch
):
    """A run marks the draft, then stalls six hours before writing its entries. A settle
    at exactly the mark's expiry must leave the mark: the run then writes its entries and
    dies before rebuilding the draft, and the next run's settle rebuilds it with them."""
    db.tasks.insert_one(ai_runner(ObjectId(), tokens=1_000, ended=NOW - timedelta(hours=2)))
    run_chore(db, org="acme", now=NOW - timedelta(hours=1), settings=settings, registry=registry)
    db.tasks.insert_one(ai_runner(ObjectId(), tokens=5_000, ended=NOW - timedelta(minutes=30)))
    write_entries = Ledger.append_steps

    def settle_meanwhile_then_die(ledger: Ledger, entries: Any) -> Any:
        monkeypatch.setattr(clock, "wall_clock", lambda: WALL_CLOCK)  # six hours later
        other = Pipeline(db, settings, registry)
        other.progress.clear_dirty(other.invoices.settle(NOW, "acme").marks)
        write_entries(ledger, entries)
        raise KeyboardInterrupt("the run dies before rebuilding the draft")

    monkeypatch.setattr(clock, "wall_clock", lambda: WALL_CLOCK - SIX_HOURS)
    monkeypatch.setattr(Ledger, "append_steps", settle_meanwhile_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_chore(db, org="acme", now=NOW, settings=settings, registry=registry)
    monkeypatch.setattr(Ledger, "append_steps", write_entries)
    run_chore(db, org="acme", now=NOW + timedelta(minutes=1), settings=settings, registry=registry)
    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert sum(line["tokens"] for line in draft["lines"]) == 6_000


# --- progress claimed ---


def test_claimed_finds_a_legacy_claim_by_id_and_no_other_runner(db, settings):
    """Progress.claimed: which of `runner_ids` are pending; a claim written before claims had
    `runner_id` is its runner's own document, by `_id` (runner_of)."""
    db.billing_pending.insert_many(
        [
            {"_id": "r1", "source_id": "r1", "org": "acme"},
            {"_id": "r2", "source_id": "r2", "org": "acme"},
        ]
    )
    progress = Progress(Collections.of(db, settings))
    assert progress.claimed(["r1"]) == {"r1": None}


def test_a_runner_with_a_claim_for_every_run_is_read_by_every_run(db, settings):
    """Progress.claimed: each runner with when a run reads it next: None (every run) when any
    of its claims has no `recheck_at`, else the earliest."""
    from datetime import UTC, datetime

    db.billing_pending.insert_many(
        [
            {
                "_id": "r1:a",
                "runner_id": "r1",
                "source_id": "r1",
                "org": "acme",
                "recheck_at": None,
            },
            {
                "_id": "r1:b",
                "runner_id": "r1",
                "source_id": "r1",
                "org": "acme",
                "recheck_at": datetime(2030, 1, 1, 1, tzinfo=UTC),
            },
        ]
    )
    progress = Progress(Collections.of(db, settings))
    assert progress.claimed(["r1"]) == {"r1": None}
