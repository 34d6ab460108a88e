"""A run's `new_anomalies`: of the anomalies it saw, those not open on the invoice they flag
when it began (new, reopened, or moved to another org's or month's invoice). The open ones
of runners read again are counted in `anomalies` only: an operator alerts on the new."""

from __future__ import annotations

from datetime import timedelta

from chores import run_chore

from support import NOW, ai_runner
from support.dbproxy import DatabaseProxy


def counts(report) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return sum(report.anomalies.values()), report.new_anomalies


def test_an_anomaly_read_again_is_not_new_and_a_reopened_one_is(db, settings):
    db.tasks.insert_one(ai_runner("r1", ended=NOW - timedelta(hours=1), tokens="bad"))
    assert counts(run_chore(db, now=NOW, settings=settings)) == (1, 1)
    later = NOW + timedelta(minutes=5)
    assert counts(run_chore(db, now=later, settings=settings, full=True)) == (1, 0)
    db.billing_anomalies.update_many({}, {"$set": {"resolved": True}})
    assert counts(run_chore(db, now=later, settings=settings, full=True)) == (1, 1)


def test_an_anomaly_that_moves_to_another_orgs_invoice_is_new_there(db, settings):
    """Review: the runner's org changed; the anomaly, open on the old org's invoice, now
    flags the new org's, which an alert on `new_anomalies` must hear of."""
    db.tasks.insert_one(ai_runner("r1", ended=NOW - timedelta(hours=1), tokens="bad", org="a"))
    assert counts(run_chore(db, org="a", now=NOW, settings=settings)) == (1, 1)
    moved = {"context.workspace_id": "b", "last_updated_db": NOW.timestamp() + 1}
    db.tasks.update_one({"_id": "r1"}, {"$set": moved})
    report = run_chore(db, org="b", now=NOW + timedelta(minutes=5), settings=settings)
    assert counts(report) == (1, 1)
    assert db.billing_invoices.find_one({"_id": "b:2026-11"})["needs_review"] is True


def test_an_anomaly_that_moves_to_another_month_is_new_there(db, settings):
    """A running runner held in November ends in December: its anomaly flags December's."""
    stamp = (NOW - timedelta(hours=1)).timestamp()
    running = ai_runner("r1", ended=None, status="RUNNING", tokens="bad", stamp=stamp)
    db.tasks.insert_one(running)
    assert counts(run_chore(db, now=NOW, settings=settings)) == (1, 1)
    later = NOW + timedelta(days=10)
    ended = {"end_time": later - timedelta(minutes=1), "status": "FAILURE"}
    db.tasks.update_one({"_id": "r1"}, {"$set": {**ended, "last_updated_db": later.timestamp()}})
    assert counts(run_chore(db, now=later, settings=settings)) == (1, 1)
    (anomaly,) = db.billing_anomalies.find()
    assert (anomaly["period"], anomaly["resolved"]) == ("2026-12", False)


def test_an_anomaly_a_run_closes_then_reads_again_is_not_new(db, settings):
    """Review: the run's pending read finds the runner fixed and resolves its anomaly; a
    write before the changed scan breaks it again. It was open when the run began."""
    stamp = (NOW - timedelta(minutes=10)).timestamp()
    db.tasks.insert_one(ai_runner("r1", ended=None, status="RUNNING", tokens="bad", stamp=stamp))
    assert counts(run_chore(db, now=NOW, settings=settings)) == (1, 1)  # pending, held
    fixed = ai_runner("r1", ended=None, status="RUNNING", tokens=1_000, stamp=stamp)
    db.tasks.replace_one({"_id": "r1"}, fixed)
    later = NOW + timedelta(minutes=5)
    broken: list[bool] = []

    def break_it_after_the_pending_read(collection, method, perform):  # type: ignore[no-untyped-def]
        result = perform()
        if (collection, method) == ("tasks", "find") and not broken:
            result = list(result)
            broken.append(True)
            again = ai_runner(
                "r1", ended=None, status="RUNNING", tokens="bad", stamp=later.timestamp() - 5
            )
            db.tasks.replace_one({"_id": "r1"}, again)
        return result

    proxy = DatabaseProxy(db, around=break_it_after_the_pending_read)
    report = run_chore(proxy, now=later, settings=settings)
    assert broken and counts(report) == (1, 0)
    (anomaly,) = db.billing_anomalies.find()
    assert anomaly["resolved"] is False


def test_a_dry_run_counts_an_anomaly_where_a_run_would_write_it(db, settings):
    """Review: October is final, so the anomaly of an October runner is recorded on the
    open November invoice. A dry run compared it in October's place with the recorded
    November and called it new every time; it is new once, then read again."""
    from chores import finalize_invoices

    october = NOW.replace(month=10, day=20)
    db.tasks.insert_one(ai_runner("r1", ended=october, tokens=1_000))
    run_chore(db, now=october + timedelta(hours=1), settings=settings)
    assert finalize_invoices(db, now=NOW, grace=3, settings=settings) == ["acme:2026-10"]
    db.tasks.update_one(
        {"_id": "r1"},
        {"$set": {"context.ai_tokens": "bad", "last_updated_db": NOW.timestamp()}},
    )
    assert counts(run_chore(db, now=NOW, settings=settings, dry_run=True)) == (1, 1)
    assert counts(run_chore(db, now=NOW, settings=settings)) == (1, 1)
    for _ in range(2):
        dry = run_chore(db, now=NOW, settings=settings, full=True, dry_run=True)
        assert counts(dry) == (1, 0)
        assert counts(run_chore(db, now=NOW, settings=settings, full=True)) == (1, 0)
    (anomaly,) = db.billing_anomalies.find()
    assert anomaly["period"] == "2026-11"
