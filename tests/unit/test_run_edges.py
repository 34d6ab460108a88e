"""One run at its edges, found untested by mutation testing of `chores/run/pipeline.py`,
`chores/run/chore.py` and `chores/metering/anomalies.py`: what an `--org` run leaves to other
orgs, which held runners stay watched and which go idle, a dry run's claims, the anomaly
records a run reads, moves or leaves where they are, the run's own record, runners that
name no org."""

from __future__ import annotations

import copy
import sys
from datetime import timedelta

from bson import ObjectId

from chores import Settings, run_chore
from chores.core.db import Collections
from chores.core.periods import period_of
from chores.metering.anomalies import AnomalyLog, Recorded, anomaly_id
from chores.metering.progress import next_recheck
from chores.metering.rules import AnomalyRecord
from chores.metering.runner_keys import runner_key
from chores.run.chore import RUN_RECORD_LISTED, run_document
from chores.run.orgless import record_orgless
from chores.run.pipeline import Pipeline
from chores.run.placement import _kept_elsewhere, kept_by_its_final, stays
from chores.run.report import RunReport
from pricing import load_registry

from support import NOW, ai_runner

SETTINGS = Settings(mongo_url="mongomock://edges", batch_size=10, redis_url=None)

# --- an --org run leaves other orgs alone ---
# A document that names another org when a run of `--org acme` assesses it (a stale
# read, re-read after a decrease) is skipped: acme's run never bills or flags globex's usage
# (SPEC §4: one org's run never touches another org's billing).


def runner(oid, tokens, org="acme"):
    return {
        "_id": oid,
        "name": "ai",
        "status": "RUNNING",
        "last_updated_db": (NOW - timedelta(minutes=10)).timestamp() + tokens / 1000,
        "context": {
            "workspace_id": org,
            "ai_model": "gpt-4o-mini",
            "ai_tokens": tokens,
            "ai_prompt_tokens": tokens // 2,
            "ai_completion_tokens": tokens - tokens // 2,
        },
    }


def test_an_org_run_leaves_a_document_moved_to_another_org_alone(db):
    registry = load_registry()
    oid = ObjectId()
    db.tasks.insert_one(runner(oid, 1_000))
    stale = copy.deepcopy(db.tasks.find_one({"_id": oid}))
    db.tasks.replace_one({"_id": oid}, runner(oid, 2_000))
    run_chore(db, now=NOW, settings=SETTINGS, registry=registry)
    db.tasks.replace_one({"_id": oid}, runner(oid, 3_000, org="globex"))
    before = sorted((e["org"], e["tokens"]) for e in db.billing_ledger.find())
    report = RunReport(run_id="late", org="acme", started_at=NOW)
    Pipeline(db, SETTINGS, registry).process(
        [stale], org="acme", now=NOW, run_id="late", report=report, dry_run=False
    )
    assert sorted((e["org"], e["tokens"]) for e in db.billing_ledger.find()) == before
    assert db.billing_anomalies.count_documents({}) == 0
    assert db.billing_pending.count_documents({"org": "globex"}) == 0


# --- confirmed org ---
# Of the records a run reads again, an `--org` run keeps only its own org's: nothing of a
# document moved meanwhile to another org, and its own org's record kept. Set up with an
# anomaly someone resolved and a stale read that would reopen it.


def _setup(db, now_org):
    oid = ObjectId()
    db.tasks.insert_one(ai_runner(oid, ended=NOW - timedelta(minutes=5), tokens=1_000, ai_model=4))
    stale = copy.deepcopy(db.tasks.find_one({"_id": oid}))
    run_chore(db, now=NOW - timedelta(minutes=4), settings=SETTINGS)  # held: bad_model open
    db.billing_anomalies.update_many({}, {"$set": {"resolved": True}})  # someone resolved it
    doc = ai_runner(oid, ended=NOW - timedelta(minutes=5), tokens=1_000, ai_model=4, org=now_org)
    db.tasks.replace_one({"_id": oid}, doc)
    report = RunReport(run_id="late", org="acme", started_at=NOW)
    Pipeline(db, SETTINGS, load_registry()).process(
        [stale], org="acme", now=NOW, run_id="late", report=report, dry_run=False
    )
    return {(a["org"], a["resolved"]) for a in db.billing_anomalies.find()}


def test_an_org_run_records_nothing_of_a_document_moved_to_another_org(db):
    assert ("globex", False) not in _setup(db, "globex")


def test_an_org_run_records_its_own_org_s_record_read_again(db):
    assert ("acme", False) in _setup(db, "acme")


# --- flagged pairs org ---
# An `--org` full pass rebuilds the missing invoices that open anomalies flag, of its own
# org only (SPEC §4).


def test_an_org_full_pass_writes_no_invoice_another_org_s_anomaly_flags(db):
    db.tasks.insert_one(ai_runner("a1", ended=NOW, tokens=1_000, org="acme"))
    period = period_of(NOW)
    db.billing_anomalies.insert_one(
        {
            "_id": "b1:no_org",
            "runner_id": "b1",
            "kind": "bad_model",
            "org": "beta",
            "period": period,
            "detail": "x",
            "resolved": False,
            "first_seen": NOW,
            "run_id": "r",
        }
    )
    run_chore(db, now=NOW, settings=SETTINGS, org="acme", full=True)
    assert sorted(d["_id"] for d in db.billing_invoices.find()) == [f"acme:{period}"]


def test_unit_flagged_pairs_keeps_to_its_org(db):
    from chores.core.db import Collections
    from chores.metering.anomalies import AnomalyLog

    log = AnomalyLog(Collections.of(db, SETTINGS))
    period = period_of(NOW)
    for org in ("acme", "beta"):
        db.billing_anomalies.insert_one(
            {
                "_id": f"{org}-r:bad_model",
                "runner_id": f"{org}-r",
                "kind": "bad_model",
                "org": org,
                "period": period,
                "detail": "x",
                "resolved": False,
            }
        )
    assert log.flagged_pairs("acme", through=period) == {("acme", period)}


# --- moved record e2e ---
# A held running runner's anomaly moves to the next month's invoice: the month it left
# loses `needs_review` (SPEC §3: only a period an anomaly touches is flagged).


def test_the_invoice_a_moved_anomaly_left_is_no_longer_flagged(db):
    db.tasks.insert_one(ai_runner("paid", ended=NOW, tokens=10))  # an invoice for the month
    db.tasks.insert_one(ai_runner("r1", ended=None, status="RUNNING", tokens=1_000, ai_model=4))
    run_chore(db, now=NOW, settings=SETTINGS)
    first = period_of(NOW)
    assert db.billing_invoices.find_one({"_id": f"acme:{first}"})["needs_review"] is True
    later = NOW + timedelta(days=6)
    db.tasks.insert_one(ai_runner("paid2", ended=later, tokens=10))
    run_chore(db, now=later, settings=SETTINGS)
    moved = db.billing_anomalies.find_one({"runner_id": "str:'r1'"})
    assert moved["period"] == period_of(later)
    assert db.billing_invoices.find_one({"_id": f"acme:{first}"})["needs_review"] is False


# --- changed pairs ---
# `AnomalyLog.changed_pairs`, the invoices marked dirty before anomalies are written: a
# moved record marks the invoice it left too; a record without an org marks none.


def test_a_moved_record_marks_both_invoices():
    r = AnomalyRecord("r1", "bad_model", "acme", "2026-11", "d")
    previous = {anomaly_id(r): Recorded("acme", "2026-10", False)}
    assert AnomalyLog.changed_pairs([r], previous) == {("acme", "2026-11"), ("acme", "2026-10")}


def test_a_record_without_an_org_marks_no_invoice():
    r = AnomalyRecord("r1", "no_org", None, "2026-11", "d")
    assert AnomalyLog.changed_pairs([r], {}) == set()


# --- lets go latest ---
# A runner held by an anomaly whose stamp and end time are in the last minutes stays on the
# pending list (contract.md, "Finished runners held by a fixable anomaly"): its fix is
# billed by the next hourly re-read, not left to the daily full pass.


def billed(db):
    return sum(e["tokens"] for e in db.billing_ledger.find({"runner_id": "str:'r1'"}))


def test_a_runner_held_a_minute_after_it_ended_is_watched_and_its_fix_billed(db):
    ended = NOW - timedelta(minutes=1)
    db.tasks.insert_one(ai_runner("r1", ended=ended, tokens=1_000, ai_model=4))  # bad model
    assert run_chore(db, now=NOW, settings=SETTINGS).anomalies == {"bad_model": 1}
    assert [c["runner_id"] for c in db.billing_pending.find()] == ["str:'r1'"]
    db.tasks.replace_one({"_id": "r1"}, ai_runner("r1", ended=ended, tokens=1_000))
    run_chore(db, now=next_recheck(NOW), settings=SETTINGS)
    assert billed(db) == 1_000


# --- lets go billed at ---
# A held finished runner billed within PENDING_IDLE_SECONDS stays on the pending list
# (re-read hourly) even when its stamp, start and end time are old (README,
# `PENDING_IDLE_SECONDS`).

DAY = timedelta(days=1)


def claims(db):
    return {c["runner_id"]: c.get("recheck_at") for c in db.billing_pending.find()}


def test_a_held_runner_billed_recently_is_watched_though_its_times_are_old(db):
    settings = Settings(mongo_url="mongomock://edges", batch_size=10, redis_url=None)
    old = (NOW - 3 * DAY).timestamp()
    db.tasks.insert_one(ai_runner("r1", ended=None, status="RUNNING", tokens=1_000, stamp=old))
    run_chore(db, now=NOW, settings=settings)
    assert billed(db) == 1_000
    # its last write: ended long ago, stamped as the write before (old), bad model: held
    held = ai_runner("r1", ended=NOW - 3 * DAY, tokens=1_500, stamp=old, ai_model=4)
    db.tasks.replace_one({"_id": "r1"}, held)
    later = NOW + timedelta(hours=1)
    report = run_chore(db, now=later, settings=settings)
    assert report.anomalies == {"bad_model": 1}
    # billed an hour ago: watched (once an hour), not let go
    assert claims(db) == {"str:'r1'": next_recheck(later)}
    fixed = ai_runner("r1", ended=NOW - 3 * DAY, tokens=1_500, stamp=old)
    db.tasks.replace_one({"_id": "r1"}, fixed)
    run_chore(db, now=next_recheck(later), settings=settings)
    assert billed(db) == 1_500


# --- lets go bounds ---
# A time exactly FUTURE_SKEW_SECONDS ahead of `now` is not "further ahead", and a stamp
# exactly PENDING_IDLE_SECONDS old is not older than it: both keep a held runner watched.

DAY = timedelta(days=1)


def held(stamp: float):
    return ai_runner("r1", ended=NOW - 3 * DAY, tokens="12", stamp=stamp)  # malformed: held


def test_a_stamp_exactly_future_skew_ahead_keeps_a_held_runner_watched(db):
    db.tasks.insert_one(held(NOW.timestamp() + SETTINGS.future_skew_seconds))
    run_chore(db, now=NOW, settings=SETTINGS, full=True)
    assert list(claims(db)) == ["str:'r1'"]


def test_a_stamp_exactly_pending_idle_seconds_old_keeps_a_held_runner_watched(db):
    db.tasks.insert_one(held(NOW.timestamp() - SETTINGS.pending_idle_seconds))
    run_chore(db, now=NOW, settings=SETTINGS, full=True)
    assert list(claims(db)) == ["str:'r1'"]


# --- is idle bounds ---
# A pending runner goes idle once its stamp and last billing are older than
# PENDING_IDLE_SECONDS (contract.md, deploy.md): at exactly that age it is read every run.

P = timedelta(seconds=SETTINGS.pending_idle_seconds)


def running(stamp: float):
    return ai_runner("r1", ended=None, status="RUNNING", tokens=1_000, stamp=stamp)


def test_a_stamp_exactly_pending_idle_seconds_old_is_not_idle(db):
    stamp = NOW + timedelta(seconds=100)  # within FUTURE_SKEW_SECONDS; after its billing
    db.tasks.insert_one(running(stamp.timestamp()))
    run_chore(db, now=NOW, settings=SETTINGS, full=True)
    assert run_chore(db, now=stamp + P, settings=SETTINGS).idle_runners == 0


def test_a_billing_exactly_pending_idle_seconds_old_is_not_idle(db):
    db.tasks.insert_one(running((NOW - 3 * P).timestamp()))
    run_chore(db, now=NOW, settings=SETTINGS, full=True)  # billed at NOW
    assert run_chore(db, now=NOW + P, settings=SETTINGS).idle_runners == 0


# --- lowest stamp idle ---
# A running runner stamped -float_max (finite: the scan of changed runners does not read
# it every run) goes idle after PENDING_IDLE_SECONDS like any other.


def test_a_runner_stamped_minus_float_max_goes_idle(db):
    stamp = -sys.float_info.max
    db.tasks.insert_one(ai_runner("r1", ended=None, status="RUNNING", tokens=1_000, stamp=stamp))
    run_chore(db, now=NOW, settings=SETTINGS, full=True)
    later = run_chore(db, now=NOW + timedelta(days=1, hours=1), settings=SETTINGS)
    assert later.idle_runners == 1


# --- dry run release ---
# A dry run writes nothing: a pending runner gone from the source keeps its claim until a
# real run releases it.


def test_a_dry_run_keeps_the_claim_of_a_pending_runner_gone_from_the_source(db):
    db.tasks.insert_one(ai_runner("r1", ended=None, status="RUNNING", tokens=1_000))
    run_chore(db, now=NOW, settings=SETTINGS)
    before = list(db.billing_pending.find())
    assert len(before) == 1
    db.tasks.delete_one({"_id": "r1"})
    run_chore(db, now=NOW + timedelta(minutes=5), settings=SETTINGS, dry_run=True)
    assert list(db.billing_pending.find()) == before
    run_chore(db, now=NOW + timedelta(minutes=10), settings=SETTINGS)
    assert list(db.billing_pending.find()) == []


# --- nan read once ---
# A pending runner stamped NaN, read from the pending list, is not read again by the scan
# of changed runners in the same run (which reads NaN stamps every run).


def test_a_pending_runner_stamped_nan_is_read_once_per_run(db):
    db.tasks.insert_one(
        ai_runner("r1", ended=None, status="RUNNING", tokens=1_000, stamp=float("nan"))
    )
    assert run_chore(db, now=NOW, settings=SETTINGS).docs_read == 1
    assert run_chore(db, now=NOW + timedelta(minutes=5), settings=SETTINGS).docs_read == 1


# --- report entries ---
# A run counts the ledger entries it writes, per org (`chore run`'s table) and in all
# (`entries_written`, its log line).


def test_a_run_counts_the_entries_it_writes(db):
    db.tasks.insert_many([ai_runner(f"r{n}", ended=NOW, tokens=1_000) for n in range(3)])
    report = run_chore(db, now=NOW, settings=SETTINGS)
    assert report.entries_written == 3
    assert report.summary_for("acme").entries == 3


# --- open anomalies period ---
# `open_anomalies(org, period)` lists the anomalies that flag that invoice only (`chore
# invoice`, the review command, the HTML invoice), not another month's.


def test_open_anomalies_of_one_period(db):
    for runner, period in (("r1", "2026-10"), ("r2", "2026-11")):
        db.billing_anomalies.insert_one(
            {
                "_id": f"{runner}:bad_model",
                "runner_id": runner,
                "kind": "bad_model",
                "org": "acme",
                "period": period,
                "detail": "d",
                "resolved": False,
            }
        )
    log = AnomalyLog(Collections.of(db, SETTINGS))
    assert [a.runner_id for a in log.open_anomalies("acme", "2026-11")] == ["r2"]


# --- open for ---
# `AnomalyLog.open_for` (reconcile: a never-billed runner held by an anomaly still open is
# not metered yet) answers the runners with an open anomaly, not those with a resolved one.


def test_open_for_answers_the_runners_with_an_open_anomaly(db):
    db.billing_anomalies.insert_many(
        [
            {"_id": "r1:bad_model", "runner_id": "r1", "kind": "bad_model", "resolved": False},
            {"_id": "r2:bad_model", "runner_id": "r2", "kind": "bad_model", "resolved": True},
        ]
    )
    log = AnomalyLog(Collections.of(db, SETTINGS))
    assert log.open_for(["r1", "r2", "r3"]) == {"r1"}


# --- previous own id first ---
BELOW_SPLIT = AnomalyRecord(
    "r1", "total_below_split", "acme", "2026-10", "d", usage_period="2026-10"
)
# its stored fields, under whichever id a version of the chore gave it
BELOW_SPLIT_STORED = {
    "runner_id": "r1",
    "kind": "total_below_split",
    "org": "acme",
    "period": "2026-10",
    "resolved": False,
}

# `AnomalyLog.previous`: a record under the anomaly's own id wins over an older version's,
# so a move or reopen updates the current document.


def test_the_record_under_its_own_id_wins(db):
    db.billing_anomalies.insert_many(
        [
            {"_id": anomaly_id(BELOW_SPLIT), **BELOW_SPLIT_STORED},
            {"_id": "r1:total_below_split:2026-10", **BELOW_SPLIT_STORED},
        ]
    )
    found = AnomalyLog(Collections.of(db, SETTINGS)).previous([BELOW_SPLIT])
    assert found[anomaly_id(BELOW_SPLIT)].stored_id is None


# --- previous month first ---
# `AnomalyLog.previous`: an older version's record per runner, kind and usage month stands
# for the anomaly before a still older per-runner record open on the same invoice.


def test_the_month_record_of_an_older_version_is_preferred(db):
    db.billing_anomalies.insert_many(
        [
            {"_id": "r1:total_below_split:2026-10", **BELOW_SPLIT_STORED},
            {"_id": "r1:total_below_split", **BELOW_SPLIT_STORED},
        ]
    )
    found = AnomalyLog(Collections.of(db, SETTINGS)).previous([BELOW_SPLIT])
    assert found[anomaly_id(BELOW_SPLIT)].stored_id == "r1:total_below_split:2026-10"


# --- previous final month ---
# `AnomalyLog.previous`: an older version's record (per runner and kind) open on a later
# month stands for the anomaly of an earlier month once that month is final (such a record
# was placed on the open month); otherwise an upgrade would record it twice or lose its
# review.


def test_an_old_record_on_the_open_month_stands_for_a_final_month_s_anomaly(db):
    db.billing_anomalies.insert_one(
        {
            "_id": "r1:total_below_split",
            "runner_id": "r1",
            "kind": "total_below_split",
            "org": "acme",
            "period": "2026-11",
            "resolved": False,
            "reviewed": {"note": "ok"},
        }
    )
    log = AnomalyLog(Collections.of(db, SETTINGS))
    found = log.previous([BELOW_SPLIT], {"acme": {"2026-10"}})
    assert found[anomaly_id(BELOW_SPLIT)] == Recorded(
        "acme", "2026-11", False, reviewed=True, stored_id="r1:total_below_split"
    )
    # not final: it does not stand for it
    assert anomaly_id(BELOW_SPLIT) not in log.previous([BELOW_SPLIT], {"acme": set()})


# --- run record ---


def test_a_run_record_keeps_a_credit_past_64_bits_at_the_smallest_int64():
    """The record keeps the largest number MongoDB stores, on either side, and says where."""
    report = RunReport(run_id="r", org=None, started_at=NOW)
    report.tokens_billed = -(2**63) - 5
    record = run_document(report)
    assert (record["tokens_billed"], record["capped"]) == (-(2**63), ["tokens_billed"])


def test_a_run_record_listing_exactly_its_limit_omits_nothing():
    report = RunReport(run_id="r", org=None, started_at=NOW)
    report.invoices = [f"org-{n:04d}:2026-11" for n in range(RUN_RECORD_LISTED)]
    record = run_document(report)
    assert record["invoices"] == report.invoices and "invoices_omitted" not in record


# --- documents that name no org (chores/run/orgless.py) ---


def orgless_runner(runner_id: str, context: object = None) -> dict:
    runner = ai_runner(runner_id, ended=NOW - timedelta(hours=1))
    runner["context"] = {"workspace_id": None} if context is None else context
    return runner


def test_the_fan_out_records_runners_naming_no_org_once_and_bills_nothing(db):
    """SPEC §1 fact 8: no org's run reads them; the fan-out records each as `no_org`."""
    settings = SETTINGS.model_copy(update={"batch_size": 2})  # over several batches
    db.tasks.insert_many([orgless_runner(f"o{n}") for n in range(3)])
    db.tasks.insert_one(orgless_runner("odd", context=["acme"]))  # a context not a mapping
    db.tasks.insert_one(ai_runner("billed", ended=NOW - timedelta(hours=1)))
    report = record_orgless(db, settings, since=None, now=NOW)
    assert report is not None and (report.docs_read, report.new_anomalies) == (4, 4)
    recorded = {(a["runner_id"], a["kind"]) for a in db.billing_anomalies.find()}
    assert recorded == {(runner_key(r), "no_org") for r in ("o0", "o1", "o2", "odd")}
    assert db.billing_invoices.count_documents({}) == 0
    again = record_orgless(db, settings, since=None, now=NOW)
    assert again is not None and again.new_anomalies == 0


def test_the_fan_out_records_nothing_where_every_runner_names_its_org(db):
    db.tasks.insert_one(ai_runner("billed", ended=NOW - timedelta(hours=1)))
    assert record_orgless(db, SETTINGS, since=None, now=NOW) is None


# --- where an anomaly record stays (chores/run/placement.py) ---

DECREASED = AnomalyRecord("r1", "counter_decreased", "acme", "2026-11", "detail")


def recorded(
    org: str = "acme", period: str = "2026-11", *, resolved: bool = False, reviewed: bool = False
) -> Recorded:
    return Recorded(org, period, resolved=resolved, reviewed=reviewed)


def test_a_resolved_record_or_one_of_another_org_stays_nowhere():
    assert stays(recorded(resolved=True, reviewed=True), DECREASED, {}, set(), set()) is False
    assert stays(recorded("globex", reviewed=True), DECREASED, {}, set(), set()) is False
    on_flagged_final = recorded(period="2026-10", resolved=True, reviewed=True)
    assert kept_by_its_final(on_flagged_final, DECREASED, {"2026-10": True}) is False


def test_a_record_nobody_reviewed_on_a_draft_stays_while_its_own_month_is_final():
    """Placed in the month open then, it flags that draft until it is frozen flagged for
    it, instead of following the open month every month."""
    on_draft = recorded(period="2026-12")
    assert stays(on_draft, DECREASED, {"2026-11": False}, set(), set()) is True
    assert stays(on_draft, DECREASED, {}, set(), set()) is False


def test_late_usage_opens_a_record_of_the_open_month_beside_one_no_final_keeps():
    """Kept elsewhere: on a draft of an earlier month, or by a final frozen flagged for it.
    Not by a final frozen unflagged that nobody reviewed it on, nor when there is none."""
    assert _kept_elsewhere(None, DECREASED, {"2026-10": True}, "2026-12") is False
    unreviewed_on_final = recorded(period="2026-10")
    assert _kept_elsewhere(unreviewed_on_final, DECREASED, {"2026-10": False}, "2026-12") is False
    assert _kept_elsewhere(unreviewed_on_final, DECREASED, {"2026-10": True}, "2026-12") is True
    assert _kept_elsewhere(recorded(period="2026-10"), DECREASED, {}, "2026-12") is True
