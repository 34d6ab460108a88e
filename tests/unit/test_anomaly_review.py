"""A person's review of open anomalies (`review_anomalies`, `chore anomaly review`): the
draft stops needing review for what was reviewed, a run reading the runner again leaves
the review alone, and an anomaly that moves to another invoice or heals and comes back
flags again. A final invoice never changes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from chores import finalize_invoices, get_settings, run_chore
from chores.billing.invoices import Invoices
from chores.cli.app import main
from chores.core.db import Collections
from chores.core.exceptions import ChoreError, ConfigError, InvoiceNotFound
from chores.core.orgs import NOT_UTF8
from chores.metering.anomalies import AnomalyLog
from chores.metering.rules import Anomaly, AnomalyRecord, assess
from chores.metering.runner_keys import runner_key
from chores.run.placement import Placement
from chores.run.review import Review, review_anomalies

from support import NOW, WALL_CLOCK, ai_runner

NOTE = "checked with the platform team: a known secator bug (ops@example.com)"


def below_split(runner_id: str, **kwargs: Any) -> dict[str, Any]:
    """A runner whose total is below its split: billed on the split, flagged for a person
    (`total_below_split`, not self-healing)."""
    doc = ai_runner(runner_id, prompt=700, **kwargs)
    doc["context"]["ai_tokens"] = 600  # < 700 prompt + 300 completion
    return doc


def write_r1(
    db: Any, settings: Any, total: int, prompt: int, at: datetime, ended: datetime | None = None
) -> Any:
    """Runner r1 written at `at` with these counters (300 completion tokens), running unless
    it `ended`, then a run at `at`: its report."""
    status = "SUCCESS" if ended else "RUNNING"
    doc = below_split("r1", ended=ended, status=status, stamp=at.timestamp())
    doc["context"].update(ai_tokens=total, ai_prompt_tokens=prompt, ai_completion_tokens=300)
    db.tasks.replace_one({"_id": "r1"}, doc, upsert=True)
    return run_chore(db, now=at, settings=settings)


def write_malformed_r1(db: Any, settings: Any, at: datetime, ended: datetime | None = None) -> None:
    """Runner r1 of acme with malformed counters (held), running unless `ended`, written at
    `at`, then a run at `at`."""
    status = "SUCCESS" if ended else "RUNNING"
    doc = ai_runner("r1", ended=ended, status=status, tokens="12.5", stamp=at.timestamp())
    db.tasks.replace_one({"_id": "r1"}, doc, upsert=True)
    run_chore(db, now=at, settings=settings)


def reviewed(runner_id: str, kind: str, period: str = "2026-11", org: str = "acme") -> str:
    """The id of a runner's anomaly record of one kind (of one org and usage period: the
    kinds billed all the same have a record per org and month they bill into)."""
    if kind in Anomaly.BILLED_FLAGGED:
        return f"{runner_key(runner_id)}:{kind}:{org}:{period}"
    return f"{runner_key(runner_id)}:{kind}"


def legacy_id(runner_id: str, kind: str) -> str:
    """The id a record of a kind billed all the same had before usage periods."""
    return f"{runner_key(runner_id)}:{kind}"


def ids(done: Review) -> list[str]:
    """The record ids a review marked."""
    return [a.record_id for a in done.reviewed]


def invoice(db: Any, invoice_id: str) -> dict[str, Any]:
    found = db.billing_invoices.find_one({"_id": invoice_id})
    assert found is not None, invoice_id
    return found


def test_a_reviewed_anomaly_no_longer_flags_its_draft_and_a_rerun_keeps_it_so(db, settings):
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    db.tasks.insert_one(ai_runner("r2", ended=NOW - timedelta(hours=2)))
    run_chore(db, now=NOW, settings=settings)
    before = invoice(db, "acme:2026-11")
    assert before["needs_review"] is True

    done = review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)

    assert ids(done) == [reviewed("r1", "total_below_split")]
    assert (done.status, done.needs_review) == ("draft", False)
    after = invoice(db, "acme:2026-11")
    assert after["needs_review"] is False
    assert after["total_micros"] == before["total_micros"] > 0  # money untouched
    (record,) = db.billing_anomalies.find()
    assert record["resolved"] is False  # still open: the runner is what it is
    assert record["reviewed"]["note"] == NOTE

    # A full pass reads the runner again and sees the same anomaly on the same invoice.
    report = run_chore(db, now=NOW + timedelta(minutes=5), settings=settings, full=True)
    assert sum(report.anomalies.values()) == 1 and report.new_anomalies == 0
    assert invoice(db, "acme:2026-11")["needs_review"] is False
    assert db.billing_anomalies.find_one({})["reviewed"]["note"] == NOTE


def test_a_review_covers_only_the_kinds_and_runners_named(db, settings):
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    db.tasks.insert_one(below_split("r2", ended=NOW - timedelta(hours=1)))
    db.tasks.insert_one(ai_runner("r3", ended=NOW - timedelta(hours=1), tokens=12.5))
    run_chore(db, now=NOW, settings=settings)

    first = review_anomalies(
        db, "acme", "2026-11", note=NOTE, runner_ids=(runner_key("r2"),), now=NOW, settings=settings
    )
    assert ids(first) == [reviewed("r2", "total_below_split")] and first.needs_review is True
    second = review_anomalies(
        db,
        "acme",
        "2026-11",
        note=NOTE,
        kinds=("total_below_split",),
        now=NOW,
        settings=settings,
    )
    assert ids(second) == [reviewed("r1", "total_below_split")] and second.needs_review is True
    last = review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    assert ids(last) == [reviewed("r3", "malformed_counters")] and last.needs_review is False
    again = review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    assert ids(again) == [] and again.needs_review is False


def test_an_unpriced_line_still_needs_review_after_its_anomalies_are_reviewed(db, settings):
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1), model="no-such-model"))
    run_chore(db, now=NOW, settings=settings)
    done = review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    assert ids(done) == [reviewed("r1", "total_below_split")]
    assert done.needs_review is True  # the line has no price: that is still open


def test_an_anomaly_whose_runner_ends_in_another_month_flags_that_month(db, settings):
    """Reviewed on November's draft; the running runner ends in December: its usage month
    is December now, whose invoice nobody has looked at for it."""
    stamp = (NOW - timedelta(hours=1)).timestamp()
    db.tasks.insert_one(below_split("r1", ended=None, status="RUNNING", stamp=stamp))
    run_chore(db, now=NOW, settings=settings)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    assert invoice(db, "acme:2026-11")["needs_review"] is False

    later = NOW + timedelta(days=10)
    ended = below_split("r1", ended=later - timedelta(minutes=1), stamp=later.timestamp())
    ended["context"].update(ai_tokens=1_500, ai_prompt_tokens=1_400, ai_completion_tokens=600)
    db.tasks.replace_one({"_id": "r1"}, ended)
    report = run_chore(db, now=later, settings=settings)

    assert report.new_anomalies == 1
    # a record of its own for December's usage; November's stays reviewed where it was
    november, december = db.billing_anomalies.find(sort=[("period", 1)])
    assert (december["period"], december["resolved"], "reviewed" in december) == (
        "2026-12",
        False,
        False,
    )
    assert (november["period"], "reviewed" in november) == ("2026-11", True)
    assert invoice(db, "acme:2026-12")["needs_review"] is True
    assert invoice(db, "acme:2026-11")["needs_review"] is False


def test_a_second_decrease_in_a_later_month_flags_that_month(db, settings):
    """Review: the runner billed new usage in December by a run that saw no anomaly, then
    its counters went down again in December: the review of November's decrease hid it."""

    def write(minutes_after: float, tokens: int) -> Any:
        moment = NOW + timedelta(minutes=minutes_after)
        doc = ai_runner("r1", ended=None, status="RUNNING", tokens=tokens, stamp=moment.timestamp())
        db.tasks.replace_one({"_id": "r1"}, doc, upsert=True)
        return run_chore(db, now=moment + timedelta(minutes=1), settings=settings)

    write(0, 1_000)
    write(10, 500)  # down: counter_decreased, November
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    december = 10 * 24 * 60
    assert write(december, 2_000).tokens_billed == 1_000  # no anomaly on this read
    report = write(december + 60, 800)  # down again, in December

    assert report.new_anomalies == 1
    record = db.billing_anomalies.find_one({"period": "2026-12"})
    assert (record["period"], "reviewed" in record) == ("2026-12", False)
    assert invoice(db, "acme:2026-12")["needs_review"] is True


def test_a_reviewed_anomaly_of_a_final_month_stays_on_the_open_invoice_it_was_reviewed_on(
    db, settings
):
    """Review: a runner of October, final, is recorded on November's draft (where its usage
    lands once fixed) and reviewed there; the daily full pass in December moved it to
    December, unreviewed, though nothing of it changed."""
    october = NOW.replace(month=10, day=20)
    db.tasks.insert_one(ai_runner("old", ended=october, org="acme"))
    run_chore(db, now=october + timedelta(hours=1), settings=settings)
    finalize_invoices(db, now=NOW, settings=settings)
    db.tasks.replace_one({"_id": "old"}, below_split("old", ended=october, stamp=NOW.timestamp()))
    run_chore(db, now=NOW, settings=settings)
    assert db.billing_anomalies.find_one({})["period"] == "2026-11"
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)

    report = run_chore(db, now=NOW + timedelta(days=10), settings=settings, full=True)

    assert report.new_anomalies == 0
    record = db.billing_anomalies.find_one({})
    assert (record["period"], record["reviewed"]["note"]) == ("2026-11", NOTE)


def test_a_reviewed_anomaly_held_in_the_month_of_now_does_not_come_back_every_month(db, settings):
    """Review: an anomaly that bills nothing is recorded in the month of `now` (`bad_id`,
    `bad_end_time`, `future_end_time`); reviewed, its month frozen, the daily full pass
    moved it to the new month, unreviewed, with an empty invoice to carry the flag."""
    db.tasks.insert_one(ai_runner("r1", ended="not a time", stamp=NOW.timestamp()))
    run_chore(db, now=NOW, settings=settings)
    assert db.billing_anomalies.find_one({})["kind"] == "bad_end_time"
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    for days in (10, 40, 70):
        later = NOW + timedelta(days=days)
        finalize_invoices(db, now=later, settings=settings)
        report = run_chore(db, now=later, settings=settings, full=True)
        assert report.new_anomalies == 0
    record = db.billing_anomalies.find_one({})
    assert (record["period"], record["reviewed"]["note"]) == ("2026-11", NOTE)
    assert db.billing_invoices.count_documents({}) == 1  # no empty invoice to carry a flag


def test_a_reviewed_anomaly_that_heals_and_comes_back_flags_again(db, settings):
    stamp = (NOW - timedelta(hours=1)).timestamp()
    db.tasks.insert_one(ai_runner("r1", ended=None, status="RUNNING", tokens="bad", stamp=stamp))
    run_chore(db, now=NOW, settings=settings)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    assert invoice(db, "acme:2026-11")["needs_review"] is False

    def rewrite(minutes: int, tokens: Any) -> Any:
        moment = NOW + timedelta(minutes=minutes)
        doc = ai_runner("r1", ended=None, status="RUNNING", tokens=tokens, stamp=moment.timestamp())
        db.tasks.replace_one({"_id": "r1"}, doc)
        return run_chore(db, now=moment, settings=settings)

    rewrite(5, 1_000)  # fixed: billed, the anomaly healed
    assert db.billing_anomalies.find_one({})["resolved"] is True
    report = rewrite(10, "bad again")
    assert report.new_anomalies == 1
    record = db.billing_anomalies.find_one({})
    assert record["resolved"] is False and "reviewed" not in record
    assert invoice(db, "acme:2026-11")["needs_review"] is True
    # What it says is what the document says now (outside review: it kept "'bad'", a
    # value the document no longer held, for the person reviewing it anew).
    assert "'bad again'" in record["detail"] and "'bad'" not in record["detail"]
    (shown,) = AnomalyLog(Collections.of(db, settings)).open_anomalies("acme", "2026-11")
    assert "'bad again'" in shown.detail


def test_reviewing_a_final_invoices_anomalies_records_the_review_and_changes_nothing(db, settings):
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    december = NOW + timedelta(days=10)
    assert finalize_invoices(db, now=december, settings=settings) == ["acme:2026-11"]
    final = invoice(db, "acme:2026-11")

    done = review_anomalies(db, "acme", "2026-11", note=NOTE, now=december, settings=settings)

    assert ids(done) == [reviewed("r1", "total_below_split")]
    assert (done.status, done.needs_review) == ("final", True)
    assert invoice(db, "acme:2026-11") == final


def test_a_draft_reviewed_before_its_finalize_is_frozen_without_the_flag(db, settings):
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    finalize_invoices(db, now=NOW + timedelta(days=10), settings=settings)
    final = invoice(db, "acme:2026-11")
    assert (final["status"], final["needs_review"]) == ("final", False)


@pytest.mark.parametrize(
    ("org", "period", "note", "message"),
    [
        ("acme", "2026-11", "  ", "a review needs a note"),
        ("acme", "2026-13", NOTE, "period must look like 2026-11"),
        ("", "2026-11", NOTE, "org"),
    ],
)
def test_a_review_without_a_note_or_with_a_bad_period_is_refused(
    db, settings, org, period, note, message
):
    with pytest.raises(ConfigError, match=message):
        review_anomalies(db, org, period, note=note, now=NOW, settings=settings)
    assert db.billing_dirty.count_documents({}) == 0  # nothing written


def test_the_command_reviews_lists_and_says_what_the_draft_needs_now(env_db):
    env_db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(env_db, now=NOW)
    cli = CliRunner()

    flagged = cli.invoke(main, ["invoice", "show", "--org", "acme", "--period", "2026-11"])
    assert "NEEDS REVIEW" in flagged.output and "total_below_split" in flagged.output
    assert "chore anomaly review --org acme --period 2026-11 --note TEXT" in flagged.output

    listed = cli.invoke(main, ["anomaly", "list", "--org", "acme"])
    assert listed.exit_code == 0, listed.output
    assert "total_below_split" in listed.output and "1 anomaly left to review" in listed.output

    now = ["--now", NOW.isoformat()]
    args = ["anomaly", "review", "--org", "acme", "--period", "2026-11", *now]
    refused = cli.invoke(main, [*args, "--kind", "no-such-kind", "--note", NOTE])
    assert refused.exit_code == 2 and "'no-such-kind' is not one of" in refused.output

    done = cli.invoke(main, [*args, "--note", NOTE])
    assert done.exit_code == 0, done.output
    assert "reviewed 1 anomaly of acme 2026-11" in done.output
    assert "the draft no longer needs review" in done.output
    assert "  - total_below_split, runner str:'r1': total 600 < prompt 700 + completion 300" in (
        done.output
    )

    shown = cli.invoke(main, ["invoice", "show", "--org", "acme", "--period", "2026-11"])
    assert "NEEDS REVIEW" not in shown.output
    reviewed = cli.invoke(main, ["anomaly", "list", "--org", "acme", "--reviewed", "--json"])
    (row,) = json.loads(reviewed.output)
    assert (row["kind"], row["runner_id"], row["review_note"]) == (
        "total_below_split",
        runner_key("r1"),
        NOTE,
    )
    assert row["reviewed_at"].startswith("2026-11-25T12:00:00")
    typo = cli.invoke(main, [*args, "--runner", "r1", "--note", NOTE])
    assert typo.exit_code == 1 and "no open anomaly of 'acme' in 2026-11 is of runner r1" in (
        typo.output
    )
    again = cli.invoke(main, [*args, "--note", NOTE])
    assert again.exit_code == 0 and "no open anomaly left to review" in again.output
    assert "the draft no longer needs review" not in again.output  # nothing changed now
    assert "the draft needs no review" in again.output
    none_left = cli.invoke(main, ["anomaly", "list", "--org", "acme"])
    assert none_left.stdout == "no open anomaly left to review: acme\n"


def test_listing_an_org_the_billing_does_not_know_says_so(env_db):
    """Walk-through review: `anomaly list --org nosuch` said only "no open anomaly not
    reviewed: nosuch", where `run` and `finalize` say the org is unknown."""
    env_db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(env_db, now=NOW)
    listed = CliRunner().invoke(main, ["anomaly", "list", "--org", "acmee"])
    assert listed.exit_code == 0
    assert listed.stdout == "no open anomaly left to review: acmee\n"
    assert listed.stderr.startswith(
        "note: org 'acmee' has no invoice of any month and no plan: nothing was billed to it"
        " yet; did you mean 'acme'?\n"
    )


def test_a_reviewed_runner_that_goes_on_after_its_month_is_final_flags_the_new_month(db, settings):
    """Review: reviewed on November's draft, November frozen unflagged, and the runner
    went on running into December with the same anomaly: its record stayed on the final
    (where an unreviewed one is frozen flagged), so December's usage flagged nothing."""
    stamp = (NOW - timedelta(hours=1)).timestamp()
    db.tasks.insert_one(below_split("r1", ended=None, status="RUNNING", stamp=stamp))
    run_chore(db, now=NOW, settings=settings)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    december = NOW + timedelta(days=10)
    assert finalize_invoices(db, now=december, settings=settings) == ["acme:2026-11"]
    assert invoice(db, "acme:2026-11")["needs_review"] is False

    grown = below_split("r1", ended=None, status="RUNNING", stamp=december.timestamp())
    grown["context"].update(ai_tokens=1_800, ai_prompt_tokens=1_400, ai_completion_tokens=600)
    db.tasks.replace_one({"_id": "r1"}, grown)
    report = run_chore(db, now=december + timedelta(minutes=1), settings=settings)

    assert report.new_anomalies == 1
    record = db.billing_anomalies.find_one({"period": "2026-12"})
    assert (record["period"], "reviewed" in record) == ("2026-12", False)
    assert invoice(db, "acme:2026-12")["needs_review"] is True
    assert invoice(db, "acme:2026-11")["needs_review"] is False  # a final never changes


def test_a_reviewed_finished_runner_read_again_after_its_final_stays_reviewed(db, settings):
    """Its anomaly and its usage are of the final month: nothing new for another invoice."""
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    december = NOW + timedelta(days=10)
    finalize_invoices(db, now=december, settings=settings)
    report = run_chore(db, now=december, settings=settings, full=True)
    assert sum(report.anomalies.values()) == 1 and report.new_anomalies == 0
    record = db.billing_anomalies.find_one({})
    assert (record["period"], record["reviewed"]["note"]) == ("2026-11", NOTE)
    assert db.billing_invoices.find_one({"_id": "acme:2026-12"}) is None


def test_a_review_marks_only_what_was_read_not_what_a_run_records_meanwhile(db, settings):
    """Review: a run between the person's list and the review recorded another anomaly; the
    review marked it too, with a note written about something else."""
    db.tasks.insert_many([below_split("r1", ended=NOW - timedelta(hours=1))])
    run_chore(db, now=NOW, settings=settings)
    log = AnomalyLog(Collections.of(db, settings))
    (seen,) = log.open_anomalies("acme", "2026-11")
    db.tasks.insert_one(below_split("r9", ended=NOW - timedelta(hours=1), stamp=NOW.timestamp()))
    run_chore(db, now=NOW + timedelta(minutes=5), settings=settings)

    assert log.review("acme", "2026-11", [seen.record_id], note=NOTE, now=NOW) == [seen.record_id]
    (left,) = log.open_anomalies("acme", "2026-11")
    assert left.runner_id == runner_key("r9") and left.reviewed_at is None


def test_a_filter_that_matches_nothing_is_refused_not_nothing_left(db, settings):
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    with pytest.raises(ChoreError, match=r"is of runner r1: `chore anomaly list --org acme"):
        review_anomalies(
            db, "acme", "2026-11", note=NOTE, runner_ids=("r1",), now=NOW, settings=settings
        )
    assert invoice(db, "acme:2026-11")["needs_review"] is True  # nothing written
    assert db.billing_anomalies.find_one({})["resolved"] is False


def test_a_review_of_an_org_without_that_invoice_writes_nothing(db, settings):
    """Review: a mistyped org got a quota decision, which every later --all run refreshed."""
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    with pytest.raises(InvoiceNotFound, match="did you mean 'acme'"):
        review_anomalies(db, "acmee", "2026-11", note=NOTE, now=NOW, settings=settings)
    assert db.billing_quota.find_one({"_id": "acmee"}) is None
    assert db.billing_dirty.count_documents({}) == 0


def test_the_hints_quote_an_org_id_for_the_shell(env_db):
    """Review: an org id from the source went unquoted into a command to paste."""
    org = "my org;$(id)"
    env_db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1), org=org))
    run_chore(env_db, now=NOW)
    cli = CliRunner()
    shown = cli.invoke(main, ["invoice", "show", "--org", org, "--period", "2026-11"])
    assert "chore anomaly review --org 'my org;$(id)' --period 2026-11" in shown.output
    listed = cli.invoke(main, ["anomaly", "list", "--org", org])
    assert "chore anomaly review --org 'my org;$(id)' --period 2026-11" in listed.output


def test_a_reviewed_held_subagent_stays_reviewed_as_months_go_by(db, settings):
    """Review: a running subagent waiting for its spawn finding (`baseline_missing`, held:
    it bills nothing) came back every month, unreviewed, with an empty invoice to carry
    the flag."""
    db.tasks.insert_one(
        ai_runner("s1", ended=None, status="RUNNING", stamp=NOW.timestamp(), subagent="child")
    )
    run_chore(db, now=NOW, settings=settings)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    for days in (10, 40):
        later = NOW + timedelta(days=days)
        finalize_invoices(db, now=later, settings=settings)
        report = run_chore(db, now=later, settings=settings, full=True)
        assert report.new_anomalies == 0 and report.tokens_billed == 0
    record = db.billing_anomalies.find_one({})
    assert (record["kind"], record["period"]) == ("baseline_missing", "2026-11")
    assert record["reviewed"]["note"] == NOTE
    assert db.billing_invoices.count_documents({}) == 1


def test_late_usage_billed_with_a_reviewed_anomaly_flags_the_open_month(db, settings):
    """Review: a finished runner's `total_below_split` was reviewed on November, which was
    then frozen; its counters grew (still below the split) and 1,000 late tokens landed on
    December's draft, unflagged: nobody had looked at December for it."""
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    december = NOW + timedelta(days=10)
    finalize_invoices(db, now=december, settings=settings)
    grown = below_split("r1", ended=NOW - timedelta(hours=1), stamp=december.timestamp())
    grown["context"].update(ai_tokens=1_500, ai_prompt_tokens=1_400, ai_completion_tokens=600)
    db.tasks.replace_one({"_id": "r1"}, grown)

    report = run_chore(db, now=december, settings=settings)

    assert report.tokens_billed == 1_000 and report.new_anomalies == 1
    records = {r["_id"]: (r["period"], "reviewed" in r) for r in db.billing_anomalies.find({})}
    assert records == {  # the review stays with November; December's record is its own
        reviewed("r1", "total_below_split", "2026-11"): ("2026-11", True),
        reviewed("r1", "total_below_split", "2026-12"): ("2026-12", False),
    }
    december_invoice = invoice(db, "acme:2026-12")
    assert december_invoice["needs_review"] is True
    assert [line["late"] for line in december_invoice["lines"]] == [True]


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        (ai_runner("a", ended=NOW, tokens="12"), "malformed_counters"),
        (ai_runner("a", ended=NOW, model=5), "bad_model"),  # type: ignore[arg-type]
        (ai_runner("a", ended=NOW, ai_key_source="mine"), "bad_key_source"),
        (ai_runner("a", ended="yesterday", stamp=NOW.timestamp()), "bad_end_time"),
        (ai_runner("a", ended=NOW + timedelta(days=2)), "future_end_time"),
        (ai_runner("a", ended=NOW, subagent="child"), "baseline_missing"),
        (ai_runner("a", ended=NOW, tokens=2 * 10**9), "over_ceiling"),
        (ai_runner("a", ended=NOW, org=""), "no_org"),
        (ai_runner("a" + NOT_UTF8, ended=NOW), "bad_id"),
    ],
)
def test_the_held_kinds_are_those_that_bill_nothing(doc, kind):
    """`Anomaly.HELD`, which keeps a reviewed anomaly where it was reviewed (nothing of it
    lands anywhere), is what `assess` holds."""
    result = assess(
        doc,
        spawn_contexts=[],
        head=None,
        now=NOW,
        max_tokens_per_run=10**9,
        future_skew_seconds=300,
    )
    assert [a.kind for a in result.anomalies] == [kind]
    assert kind in Anomaly.HELD and result.deltas == ()


def test_the_flag_kinds_bill_with_their_anomaly():
    flagged = assess(
        below_split("a", ended=NOW),
        spawn_contexts=[],
        head=None,
        now=NOW,
        max_tokens_per_run=10**9,
        future_skew_seconds=300,
    )
    assert [a.kind for a in flagged.anomalies] == ["total_below_split"]
    assert "total_below_split" not in Anomaly.HELD and flagged.deltas != ()


def test_tokens_that_change_kind_late_with_a_reviewed_anomaly_flag_the_open_month(db, settings):
    """Review: after the review and the freeze of November, 30 unsplit tokens of the runner
    turned out to be output: a late line of 0 tokens and +14 micro-dollars on December,
    which was not flagged (only entries with new tokens counted)."""

    def write(at: datetime, total: int, prompt: int, completion: int) -> Any:
        doc = ai_runner("r1", ended=NOW - timedelta(hours=1), stamp=at.timestamp())
        doc["context"].update(
            ai_tokens=total, ai_prompt_tokens=prompt, ai_completion_tokens=completion
        )
        db.tasks.replace_one({"_id": "r1"}, doc, upsert=True)
        return run_chore(db, now=at, settings=settings)

    write(NOW, 1_000, 500, 300)  # 200 unsplit
    write(NOW + timedelta(hours=1), 900, 500, 450)  # below the split, and down: flagged
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    december = NOW + timedelta(days=10)
    finalize_invoices(db, now=december, settings=settings)

    report = write(december, 900, 500, 480)  # 30 more output: unsplit reclassified

    assert report.tokens_billed == 0 and report.new_anomalies >= 1
    late = invoice(db, "acme:2026-12")
    assert late["total_micros"] != 0 and late["needs_review"] is True
    assert {a["period"] for a in db.billing_anomalies.find({"reviewed": {"$exists": False}})} == {
        "2026-12"
    }


def test_the_review_in_json_shows_each_anomaly_with_the_review_it_just_got(env_db):
    """Review: `anomaly review --json` listed what it reviewed as it read before, with
    `reviewed_at` and `review_note` null: a script reading it saw nothing reviewed."""
    env_db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(env_db, now=NOW)
    args = ["anomaly", "review", "--org", "acme", "--period", "2026-11", "--note", NOTE]
    done = CliRunner().invoke(main, [*args, "--now", NOW.isoformat(), "--json"])
    assert done.exit_code == 0, done.output
    answer = json.loads(done.output)
    (row,) = answer["reviewed"]
    assert (row["kind"], row["runner_id"], row["review_note"]) == (
        "total_below_split",
        runner_key("r1"),
        NOTE,
    )
    assert row["reviewed_at"].startswith("2026-11-25T12:00:00")
    listed = CliRunner().invoke(main, ["anomaly", "list", "--org", "acme", "--reviewed", "--json"])
    assert json.loads(listed.output) == [row]  # what the list says from now on


def test_a_runner_without_an_org_is_listed_and_resolved_once_it_bills_under_one(env_db):
    """Anomaly review: a runner with no `workspace_id` (`no_org`) flags no invoice, so
    `anomaly list --org` never showed it and `anomaly review` could not reach it; only a
    count said it was there, and it stayed open after its document named an org and
    billed."""
    runner = ai_runner("r1", ended=NOW - timedelta(hours=1), org="")
    del runner["context"]["workspace_id"]
    env_db.tasks.insert_one(runner)
    cli = CliRunner()
    now = ["--now", NOW.isoformat()]

    dry = cli.invoke(main, ["run", "--all", "--dry-run", *now])
    assert dry.exit_code == 0 and "no_org" not in dry.output  # records nothing to list
    ran = cli.invoke(main, ["run", "--all", *now])
    assert ran.exit_code == 0, ran.output
    assert "1 runner document without an org (no_org) billed nothing: " in ran.output
    assert "`chore anomaly list --no-org` lists them" in ran.output
    assert env_db.billing_ledger.count_documents({}) == 0

    listed = cli.invoke(main, ["anomaly", "list", "--no-org"])
    assert listed.exit_code == 0, listed.output
    assert "Open anomalies of runners without an org" in listed.output
    (row,) = [line for line in listed.output.splitlines() if "no_org" in line]
    assert runner_key("r1") in row and "2026-11-25 12:00" in row
    assert "1 runner: nothing of it is billed while its document names no org" in (
        " ".join(listed.output.split())
    )
    (record,) = json.loads(cli.invoke(main, ["anomaly", "list", "--no-org", "--json"]).output)
    assert (record["kind"], record["runner_id"], record["period"]) == (
        "no_org",
        runner_key("r1"),
        None,
    )
    reviewed = cli.invoke(main, ["anomaly", "list", "--no-org", "--reviewed"])
    assert reviewed.exit_code == 2 and "flags no invoice, and is never reviewed" in (
        reviewed.output
    )
    both = cli.invoke(main, ["anomaly", "list", "--no-org", "--org", "acme"])
    neither = cli.invoke(main, ["anomaly", "list"])
    for refused in (both, neither):
        assert refused.exit_code == 2 and "give --org ORG, or --no-org (not both)" in (
            refused.output
        )

    # The producer writes the org: the next run bills the runner once and resolves it.
    env_db.tasks.update_one({"_id": runner["_id"]}, {"$set": {"context.workspace_id": "acme"}})
    later = ["--now", (NOW + timedelta(minutes=5)).isoformat()]
    assert cli.invoke(main, ["run", "--all", *later]).exit_code == 0
    assert env_db.billing_anomalies.find_one({})["resolved"] is True
    fixed = cli.invoke(main, ["anomaly", "list", "--no-org"])
    assert fixed.stdout == "no open anomaly of a runner without an org\n"
    billed = env_db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert billed["needs_review"] is False
    assert (
        sum(line["tokens"] for line in billed["lines"])
        == sum(entry["tokens"] for entry in env_db.billing_ledger.find())
        > 0
    )
    review = ["anomaly", "review", "--org", "acme", "--period", "2026-11", "--note", NOTE]
    refused = cli.invoke(main, [*review, "--kind", "no_org", *later])
    assert refused.exit_code == 1 and "`chore anomaly list --no-org` lists those" in (
        " ".join(refused.output.split())
    )


def test_a_stale_read_of_a_runner_without_an_org_does_not_reopen_what_its_org_resolved(
    db, settings, registry
):
    """Review: a run over every org read a runner before its document named an org; the
    org's run then billed it and resolved its `no_org`; the first run's batch, written
    last, reopened it (and said it was new). The run about to reopen an anomaly someone
    resolved reads the document again first, for a runner of no org too."""
    import uuid

    from chores.run.pipeline import Pipeline
    from chores.run.report import RunReport

    runner = ai_runner("r1", ended=NOW - timedelta(hours=1), org="")
    db.tasks.insert_one(runner)
    run_chore(db, now=NOW, settings=settings)
    assert db.billing_anomalies.find_one({})["resolved"] is False

    meter = Pipeline(db, settings, registry)
    stale = [d for batch in meter.changed_runners(None, None, {}) for d in batch]
    db.tasks.update_one(
        {"_id": runner["_id"]},
        {"$set": {"context.workspace_id": "acme", "last_updated_db": NOW.timestamp()}},
    )
    later = NOW + timedelta(minutes=5)
    run_chore(db, org="acme", now=later, settings=settings)
    assert db.billing_anomalies.find_one({})["resolved"] is True
    report = RunReport(run_id=uuid.uuid4().hex, org=None, started_at=later)

    meter.process(stale, org=None, now=later, run_id=report.run_id, report=report, dry_run=False)

    assert db.billing_anomalies.find_one({})["resolved"] is True
    assert report.new_anomalies == 0
    assert db.billing_ledger.count_documents({"runner_id": runner_key("r1")}) == 1


@pytest.mark.parametrize("frozen_between", [True, False])
def test_a_runner_below_its_split_in_two_months_flags_both(db, settings, frozen_between):
    """Outside reference (SPEC §3: `needs_review` when an anomaly touched the period): a
    runner billed below its split in November, then again in December. One record per
    runner followed it: December was left unflagged when November was final (the record
    stayed there), November when it was not (the record moved away)."""
    stamp = (NOW - timedelta(hours=1)).timestamp()
    db.tasks.insert_one(below_split("r1", ended=None, status="RUNNING", stamp=stamp))
    run_chore(db, now=NOW, settings=settings)
    december = NOW + timedelta(days=10)
    if frozen_between:
        assert finalize_invoices(db, now=december, settings=settings) == ["acme:2026-11"]
    grown = below_split("r1", ended=None, status="RUNNING", stamp=december.timestamp())
    grown["context"].update(ai_tokens=1_800, ai_prompt_tokens=1_400, ai_completion_tokens=600)
    db.tasks.replace_one({"_id": "r1"}, grown)
    report = run_chore(db, now=december + timedelta(minutes=1), settings=settings)

    assert report.tokens_billed == 1_000
    assert invoice(db, "acme:2026-11")["needs_review"] is True
    assert invoice(db, "acme:2026-12")["needs_review"] is True
    january = december + timedelta(days=30)
    finalized = finalize_invoices(db, now=january, settings=settings)
    assert finalized == ["acme:2026-12"] if frozen_between else ["acme:2026-11", "acme:2026-12"]
    assert [i["needs_review"] for i in db.billing_invoices.find()] == [True, True]
    assert sorted(a["_id"] for a in db.billing_anomalies.find({"resolved": False})) == [
        reviewed("r1", "total_below_split", "2026-11"),
        reviewed("r1", "total_below_split", "2026-12"),
    ]


@pytest.mark.parametrize("state", ["open", "reviewed", "final"])
def test_a_record_written_before_usage_months_stands_for_its_month(db, settings, state):
    """Review: a store written before records of the kinds billed all the same had a usage
    month (`<runner>:<kind>`) got a second record of the same month at the next full pass:
    a review undone, or an empty draft of the open month flagged."""
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(days=5)))
    run_chore(db, now=NOW, settings=settings)
    (record,) = db.billing_anomalies.find()
    legacy = {**record, "_id": legacy_id("r1", "total_below_split")}
    db.billing_anomalies.delete_one({"_id": record["_id"]})
    db.billing_anomalies.insert_one(legacy)  # as the version before wrote it
    if state == "reviewed":
        review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    later = NOW + timedelta(days=15)
    if state == "final":
        assert finalize_invoices(db, now=later, settings=settings) == ["acme:2026-11"]

    report = run_chore(db, now=later, settings=settings, full=True)

    assert report.new_anomalies == 0
    assert [a["_id"] for a in db.billing_anomalies.find()] == [legacy["_id"]]
    flags = {i["_id"]: i["needs_review"] for i in db.billing_invoices.find()}
    assert flags == {"acme:2026-11": state != "reviewed"}  # no December draft, no flag moved


def test_late_usage_billed_with_an_anomaly_a_final_was_frozen_flagged_for_flags_the_open_month(
    db, settings
):
    """A runner's `total_below_split` flagged November, which was frozen flagged for it; its
    counters grew (still below the split) and 1,000 late tokens landed on December's draft.
    The record stays with November (frozen for it), and one of December opens there: the
    draft holding tokens billed with it is flagged (before, it was not)."""
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    december = NOW + timedelta(days=10)
    assert finalize_invoices(db, now=december, settings=settings) == ["acme:2026-11"]
    assert invoice(db, "acme:2026-11")["needs_review"] is True
    grown = below_split("r1", ended=NOW - timedelta(hours=1), stamp=december.timestamp())
    grown["context"].update(ai_tokens=1_500, ai_prompt_tokens=1_400, ai_completion_tokens=600)
    db.tasks.replace_one({"_id": "r1"}, grown)

    report = run_chore(db, now=december, settings=settings)

    assert report.tokens_billed == 1_000 and report.new_anomalies == 1
    records = {r["_id"]: r["period"] for r in db.billing_anomalies.find({"resolved": False})}
    november, december_id = (reviewed("r1", "total_below_split", p) for p in ("2026-11", "2026-12"))
    assert records == {november: "2026-11", december_id: "2026-12"}
    december_invoice = invoice(db, "acme:2026-12")
    assert [line["late"] for line in december_invoice["lines"]] == [True]
    assert december_invoice["needs_review"] is True

    # Read again with nothing new: neither record moves nor counts again.
    rerun = run_chore(db, now=december + timedelta(minutes=5), settings=settings, full=True)
    assert rerun.new_anomalies == 0
    assert {r["_id"]: r["period"] for r in db.billing_anomalies.find({})} == records
    # Reviewed on December, the draft is clear; November stays frozen as it was.
    done = review_anomalies(db, "acme", "2026-12", note=NOTE, now=december, settings=settings)
    assert ids(done) == [december_id]
    assert invoice(db, "acme:2026-12")["needs_review"] is False
    assert invoice(db, "acme:2026-11")["needs_review"] is True


def test_a_record_written_before_usage_months_keeps_flagging_its_month_when_usage_goes_back(
    db, settings
):
    """Review: a runner below its split was billed on December while running (its usage
    time then `now`); its last write ended it in November. A record written before usage
    months, on December, was taken for November's and moved there: December, which holds
    tokens billed with it, lost its flag (and its review, had it one). It stays on
    December now, and November gets a record of its own, as a store of this version
    does."""
    december = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
    running = below_split("r1", ended=None, status="RUNNING", stamp=december.timestamp())
    db.tasks.insert_one(running)
    run_chore(db, now=december, settings=settings)
    (record,) = db.billing_anomalies.find()
    legacy = {**record, "_id": legacy_id("r1", "total_below_split")}
    db.billing_anomalies.delete_one({"_id": record["_id"]})
    db.billing_anomalies.insert_one(legacy)  # as the version before wrote it
    ended = below_split("r1", ended=december - timedelta(minutes=6), stamp=december.timestamp())
    ended["context"].update(ai_tokens=1_800, ai_prompt_tokens=1_400, ai_completion_tokens=600)
    db.tasks.replace_one({"_id": "r1"}, ended)

    report = run_chore(db, now=december + timedelta(minutes=10), settings=settings)

    assert report.new_anomalies == 1
    periods = {a["_id"]: a["period"] for a in db.billing_anomalies.find({"resolved": False})}
    assert periods == {
        legacy["_id"]: "2026-12",
        reviewed("r1", "total_below_split", "2026-11"): "2026-11",
    }
    flags = {i["_id"]: i["needs_review"] for i in db.billing_invoices.find()}
    assert flags == {"acme:2026-11": True, "acme:2026-12": True}


def test_a_review_on_a_final_stays_when_late_usage_comes_again(db, settings):
    """Review: November froze flagged for a runner's `total_below_split`; late usage opened
    a record on December. A person reviewed both; more late usage then moved November's
    record off the final, its review erased, a second record on December, and the
    reviewed December draft flagged again. Each stays where it was reviewed now."""
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    december = NOW + timedelta(days=10)
    finalize_invoices(db, now=december, settings=settings)

    def grow(total: int, prompt: int, at: datetime) -> Any:
        doc = below_split("r1", ended=NOW - timedelta(hours=1), stamp=at.timestamp())
        doc["context"].update(ai_tokens=total, ai_prompt_tokens=prompt, ai_completion_tokens=600)
        db.tasks.replace_one({"_id": "r1"}, doc)
        return run_chore(db, now=at, settings=settings)

    grow(1_500, 1_400, december)
    for period in ("2026-11", "2026-12"):
        review_anomalies(db, "acme", period, note=NOTE, now=december, settings=settings)
    assert invoice(db, "acme:2026-12")["needs_review"] is False

    report = grow(2_500, 2_400, december + timedelta(hours=1))

    assert report.tokens_billed == 1_000 and report.new_anomalies == 0
    records = {r["_id"]: (r["period"], "reviewed" in r) for r in db.billing_anomalies.find({})}
    assert records == {
        reviewed("r1", "total_below_split", "2026-11"): ("2026-11", True),
        reviewed("r1", "total_below_split", "2026-12"): ("2026-12", True),
    }
    assert invoice(db, "acme:2026-12")["needs_review"] is False


def test_late_usage_lands_on_a_month_whose_record_of_it_was_reviewed_and_stays_so(db, settings):
    """Review: a runner ran into December below its split (billed there while running, the
    record reviewed on December); its last write ended it in November, final meanwhile,
    so the new tokens landed on December as late usage. They opened a second record there,
    unreviewed: December, reviewed for this runner's anomaly, was flagged again. The
    December record stands for it now, as when November had a record of its own."""

    november = datetime(2026, 11, 29, tzinfo=UTC)
    write_r1(db, settings, 1_000, 700, november)  # clean
    december = datetime(2026, 12, 5, tzinfo=UTC)
    assert finalize_invoices(db, now=december, settings=settings) == ["acme:2026-11"]
    write_r1(
        db, settings, 1_800, 1_700, december
    )  # below its split, billed on December while running
    done = review_anomalies(db, "acme", "2026-12", note=NOTE, now=december, settings=settings)
    assert ids(done) == [reviewed("r1", "total_below_split", "2026-12")]

    report = write_r1(
        db, settings, 2_800, 2_700, december + timedelta(hours=1), ended=november.replace(hour=23)
    )

    assert report.tokens_billed == 1_000 and report.new_anomalies == 0
    assert [(a["_id"], a["period"], "reviewed" in a) for a in db.billing_anomalies.find()] == [
        (reviewed("r1", "total_below_split", "2026-12"), "2026-12", True)
    ]
    late = invoice(db, "acme:2026-12")
    assert [line["late"] for line in late["lines"]] == [False, True]
    assert late["needs_review"] is False


@pytest.mark.parametrize("frozen_first", [False, True])
def test_another_orgs_run_never_moves_the_record_that_flags_this_orgs_invoice(
    db, settings, frozen_first
):
    """Review: a runner billed below its split to acme in November, whose document then
    named beta and billed more: beta's run took acme's record over (one id per runner,
    kind and month, whatever the org). acme's November, holding tokens billed with it, was
    frozen unflagged, or its final lost the record it was frozen flagged for (SPEC §4:
    one org's data never changes another org's billing). Each org has its own now."""
    ended = NOW - timedelta(days=5)
    db.tasks.insert_one(below_split("r1", ended=ended))
    run_chore(db, now=NOW, settings=settings)
    later = NOW + timedelta(days=1)
    if frozen_first:
        later = NOW + timedelta(days=10)
        assert finalize_invoices(db, now=later, settings=settings) == ["acme:2026-11"]
    moved = below_split("r1", ended=ended, org="beta", stamp=later.timestamp())
    moved["context"].update(ai_tokens=1_500, ai_prompt_tokens=1_400, ai_completion_tokens=600)
    db.tasks.replace_one({"_id": "r1"}, moved)

    run_chore(db, org="beta", now=later, settings=settings)
    run_chore(db, now=later + timedelta(hours=1), settings=settings, full=True)
    if not frozen_first:
        finalize_invoices(db, now=NOW + timedelta(days=10), settings=settings)

    records = {a["_id"]: (a["org"], a["period"]) for a in db.billing_anomalies.find()}
    assert records[reviewed("r1", "total_below_split")] == ("acme", "2026-11")
    assert {org for org, _ in records.values()} == {"acme", "beta"}
    assert invoice(db, "acme:2026-11")["needs_review"] is True


def test_a_record_written_before_records_had_an_org_stands_for_its_org(db, settings):
    """An upgrade: a record of a kind billed all the same written by the version before
    (`runner:kind:month`, no org), reviewed, is the one a run sees again: nothing new, the
    review kept."""
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    (record,) = db.billing_anomalies.find()
    older = {**record, "_id": f"{legacy_id('r1', 'total_below_split')}:2026-11"}
    db.billing_anomalies.delete_one({"_id": record["_id"]})
    db.billing_anomalies.insert_one(older)  # as the version before wrote it
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)

    report = run_chore(db, now=NOW + timedelta(hours=1), settings=settings, full=True)

    assert report.new_anomalies == 0
    assert [(a["_id"], "reviewed" in a) for a in db.billing_anomalies.find()] == [
        (older["_id"], True)
    ]
    assert invoice(db, "acme:2026-11")["needs_review"] is False


@pytest.mark.parametrize("ends", [False, True])
def test_a_reviewed_held_anomaly_moves_when_its_runner_ends_in_another_month(db, settings, ends):
    """Review: a running runner's malformed counters, reviewed on November, stayed there
    reviewed once it ended in December, still malformed: December, the month of its usage
    and where it lands once fixed, was never flagged. While it runs on into December, the
    review stays (a held kind bills nothing, a month going by undoes no review)."""

    write_malformed_r1(db, settings, NOW)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    december = datetime(2026, 12, 5, tzinfo=UTC)
    write_malformed_r1(
        db, settings, december, ended=december - timedelta(hours=1) if ends else None
    )

    (record,) = db.billing_anomalies.find()
    assert (record["period"], "reviewed" in record) == (
        ("2026-12", False) if ends else ("2026-11", True)
    )
    flagged = {i["_id"]: i["needs_review"] for i in db.billing_invoices.find()}
    assert flagged.get("acme:2026-12", False) is ends


def write_moved_runner(
    db: Any, settings: Any, org: str, counts: tuple[int, int, int], at: datetime
) -> None:
    """r1, running, written with (total, prompt, cached) under `org` at `at`, then a run."""
    total, prompt, cached = counts
    doc = ai_runner("r1", ended=None, status="RUNNING", tokens=total, prompt=prompt, org=org)
    doc["context"].update(ai_completion_tokens=0, ai_cached_tokens=cached)
    doc["last_updated_db"] = at.timestamp()
    db.tasks.replace_one({"_id": "r1"}, doc, upsert=True)
    run_chore(db, now=at + timedelta(minutes=1), settings=settings)


def test_an_org_changed_record_stays_on_its_final_and_the_next_month_gets_its_own(db, settings):
    """`org_changed`, nobody reviewed, froze beta's November flagged; its runner, running on
    under beta, changed kind again in December. November's record stays with the final that
    holds its usage, its detail too (review 250: moving it left nothing on the final to
    explain its flag). December, where the new change of kind is billed, was not flagged
    for it (one record per runner, kind and org); now each usage month has its own."""
    write_moved_runner(db, settings, "alpha", (1_000_000, 0, 0), datetime(2026, 11, 10, tzinfo=UTC))
    november = datetime(2026, 11, 11, tzinfo=UTC)
    write_moved_runner(db, settings, "beta", (1_200_000, 1_200_000, 1_000_000), november)
    (record,) = db.billing_anomalies.find()
    assert (record["kind"], record["period"]) == (Anomaly.ORG_CHANGED, "2026-11")
    december = datetime(2026, 12, 5, tzinfo=UTC)
    assert "beta:2026-11" in finalize_invoices(db, now=december, settings=settings)
    later = december + timedelta(days=1)
    write_moved_runner(db, settings, "beta", (1_300_000, 1_300_000, 1_300_000), later)

    records = {r["period"]: r for r in db.billing_anomalies.find({"kind": Anomaly.ORG_CHANGED})}
    assert set(records) == {"2026-11", "2026-12"}
    assert records["2026-11"]["detail"] == record["detail"]
    assert all(r["org"] == "beta" and not r["resolved"] for r in records.values())
    assert invoice(db, "beta:2026-11")["needs_review"] is True
    assert invoice(db, "beta:2026-12")["needs_review"] is True


@pytest.mark.parametrize("reviewed", [False, True])
def test_an_org_changed_record_written_before_usage_months_stands_for_its_month(
    db, settings, reviewed
):
    """An upgrade: an `org_changed` record of the version before (`runner:kind:org`) stands
    for the month it flags: a run that sees it again records nothing new and keeps its
    review. A later month gets its own record beside it."""
    write_moved_runner(db, settings, "alpha", (1_000_000, 0, 0), datetime(2026, 11, 10, tzinfo=UTC))
    november = datetime(2026, 11, 11, tzinfo=UTC)
    write_moved_runner(db, settings, "beta", (1_200_000, 1_200_000, 0), november)
    (record,) = db.billing_anomalies.find()
    older = {**record, "_id": f"{legacy_id('r1', Anomaly.ORG_CHANGED)}:beta"}
    db.billing_anomalies.delete_one({"_id": record["_id"]})
    db.billing_anomalies.insert_one(older)  # as the version before wrote it
    if reviewed:
        review_anomalies(db, "beta", "2026-11", note=NOTE, now=november, settings=settings)

    again = november + timedelta(hours=1)
    write_moved_runner(db, settings, "beta", (1_200_000, 1_200_000, 1_000_000), again)
    assert [(a["_id"], "reviewed" in a) for a in db.billing_anomalies.find()] == [
        (older["_id"], reviewed)
    ]
    assert invoice(db, "beta:2026-11")["needs_review"] is not reviewed

    december = datetime(2026, 12, 5, tzinfo=UTC)
    finalize_invoices(db, now=december, settings=settings)
    write_moved_runner(db, settings, "beta", (1_300_000, 1_300_000, 1_300_000), december)
    periods = sorted(a["period"] for a in db.billing_anomalies.find())
    assert periods == ["2026-11", "2026-12"]
    assert invoice(db, "beta:2026-12")["needs_review"] is True


@pytest.mark.parametrize("full", [False, True])
def test_a_held_runner_read_again_leaves_its_draft_as_it_is(db, settings, full):
    """Outside hunt: a runner held by its anomaly (malformed counters, still running), read
    again by every run, had its draft written again each time, unchanged ("1 invoice
    updated", 0 tokens billed), and the daily full pass so for every held runner. An
    anomaly already open where it is placed changes no invoice."""
    db.tasks.insert_one(ai_runner("r1", ended=None, status="RUNNING", tokens="12.5"))
    db.tasks.insert_one(ai_runner("r2", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    before = invoice(db, "acme:2026-11")
    assert before["needs_review"] is True and before["total_micros"] > 0

    again = run_chore(db, now=NOW + timedelta(minutes=5), settings=settings, full=full)

    assert again.docs_read == (2 if full else 1)  # the held runner, read again
    assert again.invoices == []
    assert invoice(db, "acme:2026-11") == before


def test_a_removed_draft_that_only_an_anomaly_flags_comes_back_with_the_full_pass(db, settings):
    """An invoice removed from the database comes back with the full pass: one that holds no
    usage, only the flag of an anomaly nobody reviewed, too (it came back as a side effect
    of its held runner's re-read writing its draft again, which no longer happens)."""
    db.tasks.insert_one(ai_runner("r1", ended=NOW - timedelta(hours=1), tokens="12.5"))
    run_chore(db, now=NOW, settings=settings)
    before = invoice(db, "acme:2026-11")
    assert before["needs_review"] is True and before["lines"] == []
    db.billing_invoices.delete_one({"_id": "acme:2026-11"})

    assert run_chore(db, now=NOW + timedelta(minutes=5), settings=settings).invoices == []
    full = run_chore(db, now=NOW + timedelta(minutes=10), settings=settings, full=True)

    assert full.invoices == ["acme:2026-11"]
    assert invoice(db, "acme:2026-11")["needs_review"] is True


@pytest.mark.parametrize(
    ("org", "period"), [("", "2026-11"), ("x" * 500, "2026-11"), ("acme", "2099-01")]
)
def test_a_record_edited_out_of_shape_brings_back_no_invoice(db, settings, org, period):
    """Review: the full pass built, and a finalize froze, an invoice for a hand-edited
    record of a runner gone from the source: org `""` or 500 characters (ids no runner
    bills and no command takes), or a month ahead of the clock's."""
    db.tasks.insert_one(ai_runner("r2", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    ghost = {"_id": "gone:malformed_counters", "runner_id": "gone", "kind": "malformed_counters"}
    ghost.update(org=org, period=period, detail="edited", resolved=False)
    db.billing_anomalies.insert_one(ghost)

    full = run_chore(db, now=NOW + timedelta(minutes=5), settings=settings, full=True)

    assert full.invoices == []
    assert [i["_id"] for i in db.billing_invoices.find()] == ["acme:2026-11"]


@pytest.mark.parametrize("ends", [False, True])
def test_a_held_anomaly_on_a_final_flagged_for_it_moves_when_its_runner_ends_later(
    db, settings, ends
):
    """Review: a running runner's malformed counters, nobody reviewed, froze November
    flagged; the runner then ended in December, still malformed. The record stayed on
    November's final and December, the month of its usage and where it lands once fixed,
    was not flagged (a reviewed one moved). While it runs on, it stays where it was frozen."""

    write_malformed_r1(db, settings, NOW)
    december = datetime(2026, 12, 5, tzinfo=UTC)
    assert finalize_invoices(db, now=december, settings=settings) == ["acme:2026-11"]
    assert invoice(db, "acme:2026-11")["needs_review"] is True
    ended = december - timedelta(hours=1) if ends else None
    write_malformed_r1(db, settings, december, ended=ended)
    write_malformed_r1(db, settings, december + timedelta(hours=1), ended=ended)

    (record,) = db.billing_anomalies.find()
    assert record["period"] == ("2026-12" if ends else "2026-11")
    assert invoice(db, "acme:2026-11")["needs_review"] is True  # a final never changes
    flagged = {i["_id"]: i["needs_review"] for i in db.billing_invoices.find()}
    assert flagged.get("acme:2026-12", False) is ends


@pytest.mark.parametrize("december_final", [False, True])
def test_the_record_its_late_usage_opened_stands_for_it_as_months_go_by(
    db, settings, december_final
):
    """Review: a runner clean in November (final), billed below its split on December
    while running, whose last write ended it in November: December's record stood for
    its anomaly. In January, with nothing new, the daily full pass took it for a new one,
    recorded it on January and flagged an empty draft (a month going by undoes no
    review, and a re-read counts nothing new)."""

    november = datetime(2026, 11, 29, tzinfo=UTC)
    write_r1(db, settings, 1_000, 700, november)
    december = datetime(2026, 12, 5, tzinfo=UTC)
    finalize_invoices(db, now=december, settings=settings)
    write_r1(db, settings, 1_800, 1_700, december)
    write_r1(
        db, settings, 2_800, 2_700, december + timedelta(hours=1), ended=november.replace(hour=23)
    )
    january = datetime(2027, 1, 5, tzinfo=UTC)
    if december_final:
        assert finalize_invoices(db, now=january, settings=settings) == ["acme:2026-12"]

    report = run_chore(db, now=january, settings=settings, full=True)

    assert report.tokens_billed == 0 and report.new_anomalies == 0
    assert [(a["_id"], a["period"]) for a in db.billing_anomalies.find()] == [
        (reviewed("r1", "total_below_split", "2026-12"), "2026-12")
    ]
    assert "acme:2027-01" not in {i["_id"] for i in db.billing_invoices.find()}
    assert invoice(db, "acme:2026-12")["needs_review"] is True


def test_late_usage_landing_past_the_draft_its_record_stands_on_flags_where_it_lands(db, settings):
    """Review: December's record stood for a runner's anomaly of November (final); on
    January 2nd, December still a draft, 1,000 more tokens billed below the split landed on
    January as late usage, and nothing flagged January. A record of January opens beside
    December's, which keeps flagging the usage it holds."""
    november = datetime(2026, 11, 29, tzinfo=UTC)
    write_r1(db, settings, 1_000, 700, november)
    december = datetime(2026, 12, 5, tzinfo=UTC)
    finalize_invoices(db, now=december, settings=settings)
    write_r1(db, settings, 1_800, 1_700, december)
    ended = november.replace(hour=23)
    write_r1(db, settings, 2_800, 2_700, december + timedelta(hours=1), ended=ended)

    january = datetime(2027, 1, 2, tzinfo=UTC)
    report = write_r1(db, settings, 3_800, 3_700, january, ended=ended)

    assert report.tokens_billed == 1_000 and report.new_anomalies == 1
    assert {a["_id"]: a["period"] for a in db.billing_anomalies.find()} == {
        reviewed("r1", "total_below_split", "2026-12"): "2026-12",
        reviewed("r1", "total_below_split", "2027-01"): "2027-01",
    }
    flags = {i["_id"]: i["needs_review"] for i in db.billing_invoices.find()}
    assert flags == {"acme:2026-11": False, "acme:2026-12": True, "acme:2027-01": True}


class Finals:
    """`Invoices.final_flags` of one org, for `Placement` alone."""

    def __init__(self, periods: list[str]) -> None:
        self.periods = periods

    def final_flags(self, orgs: Any) -> dict[str, dict[str, bool]]:
        return {"acme": dict.fromkeys(self.periods, True)}


def test_the_later_months_asked_for_grow_with_the_orgs_finals_not_the_usage_months_age():
    """Review: a usage month of 2000 (an end time SPEC allows) asked for one record a month
    since, twice (with an older id form): 1,000 such runners in a batch made one read
    of 46 MB, past a server's 16 MB. Only the org's finals after it and the months after
    its latest final are asked for."""
    anomaly = AnomalyRecord("r", Anomaly.TOTAL_BELOW_SPLIT, "acme", "2000-01", "", "2000-01")
    placement = Placement(
        [anomaly],
        now=NOW,
        billing=set(),
        running=set(),
        invoices=Finals(["2000-01", "2026-09", "2026-10"]),  # type: ignore[arg-type]
    )
    assert [r.period for r in placement.candidates[1:]] == ["2026-09", "2026-10", "2026-11"]


def test_a_later_months_record_written_without_an_org_stands_for_the_anomaly(db, settings):
    """Review: December's record of a runner billed there while running, written by the
    version before (`runner:kind:month`, no org) and reviewed, was not asked for under that
    id once the runner's end time went back to November (final): its late tokens opened a
    second record on December, counted new, and flagged the reviewed draft again."""
    november = datetime(2026, 11, 29, tzinfo=UTC)
    write_r1(db, settings, 1_000, 700, november)
    december = datetime(2026, 12, 5, tzinfo=UTC)
    finalize_invoices(db, now=december, settings=settings)
    write_r1(db, settings, 1_800, 1_700, december)
    (record,) = db.billing_anomalies.find()
    older = {**record, "_id": f"{legacy_id('r1', 'total_below_split')}:2026-12"}
    db.billing_anomalies.delete_one({"_id": record["_id"]})
    db.billing_anomalies.insert_one(older)  # as the version before wrote it
    review_anomalies(db, "acme", "2026-12", note=NOTE, now=december, settings=settings)

    ended = november.replace(hour=23)
    report = write_r1(db, settings, 2_800, 2_700, december + timedelta(hours=1), ended=ended)

    assert report.tokens_billed == 1_000 and report.new_anomalies == 0
    assert [(a["_id"], "reviewed" in a) for a in db.billing_anomalies.find()] == [
        (older["_id"], True)
    ]
    assert invoice(db, "acme:2026-12")["needs_review"] is False


# -- found untested by mutation testing (review.py, cli/anomaly.py) ----------------------


def test_a_review_with_a_now_ahead_of_the_clock_is_refused_and_writes_nothing(db, settings):
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    ahead = WALL_CLOCK + timedelta(days=30)
    with pytest.raises(ConfigError, match="ahead of this machine's clock"):
        review_anomalies(db, "acme", "2026-11", note=NOTE, now=ahead, settings=settings)
    assert "reviewed" not in db.billing_anomalies.find_one({})
    assert db.billing_dirty.count_documents({}) == 0


def test_a_review_leaves_no_dirty_mark(db, settings):
    """A mark left behind makes `invoice show` say that a run was cut short."""
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=NOW, settings=settings)
    assert list(db.billing_dirty.find()) == []


def test_a_review_after_a_cut_run_settles_its_usage_and_decides_the_quota_on_it(
    db, settings, monkeypatch
):
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    before = db.billing_quota.find_one({"_id": "acme"})["used_tokens"]
    db.tasks.insert_one(ai_runner("late", ended=NOW - timedelta(minutes=5), stamp=NOW.timestamp()))
    with monkeypatch.context() as patch:

        def cut(self: Invoices, *args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        patch.setattr(Invoices, "settle", cut)
        with pytest.raises(KeyboardInterrupt):
            run_chore(db, now=NOW + timedelta(minutes=1), settings=settings)

    later = NOW + timedelta(minutes=2)
    review_anomalies(db, "acme", "2026-11", note=NOTE, now=later, settings=settings)
    tokens = sum(line["tokens"] for line in invoice(db, "acme:2026-11")["lines"])
    assert tokens == sum(entry["tokens"] for entry in db.billing_ledger.find()) > before
    assert db.billing_quota.find_one({"_id": "acme"})["used_tokens"] == tokens
    assert db.billing_dirty.count_documents({}) == 0


def test_a_kind_filter_that_matches_nothing_is_named_in_the_refusal(db, settings):
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    kinds = ("counter_decreased", "org_changed")
    with pytest.raises(ChoreError, match=r"is of kind counter_decreased or org_changed: "):
        review_anomalies(db, "acme", "2026-11", note=NOTE, kinds=kinds, now=NOW, settings=settings)


def test_a_filter_naming_an_anomaly_already_reviewed_is_nothing_left_not_refused(db, settings):
    """Only a filter that matches no open anomaly is refused: a reviewed one is still open."""
    db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(db, now=NOW, settings=settings)
    kinds = ("total_below_split",)
    first = review_anomalies(
        db, "acme", "2026-11", note=NOTE, kinds=kinds, now=NOW, settings=settings
    )
    assert len(first.reviewed) == 1
    again = review_anomalies(
        db, "acme", "2026-11", note=NOTE, kinds=kinds, now=NOW, settings=settings
    )
    assert (again.reviewed, again.needs_review) == ([], False)


REVIEW = ["anomaly", "review", "--org", "acme", "--period", "2026-11", "--now", NOW.isoformat()]


def rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()]


def test_the_list_shows_its_columns_and_a_reviewed_anomalys_review(env_db):
    env_db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(env_db, now=NOW)
    cli = CliRunner()
    listed = cli.invoke(main, ["anomaly", "list", "--org", "acme"])
    assert listed.exit_code == 0, listed.output
    assert ["period", "kind", "runner", "detail"] in rows(listed.output)

    assert cli.invoke(main, [*REVIEW, "--note", "checked by ops"]).exit_code == 0
    shown = cli.invoke(main, ["anomaly", "list", "--org", "acme", "--reviewed"])
    assert shown.exit_code == 0, shown.output
    assert ["period", "kind", "runner", "detail", "reviewed"] in rows(shown.output)
    assert "2026-11-25 12:00: checked by ops" in shown.output
    assert shown.stdout.rstrip().endswith("  all reviewed")


def orgless_runner(runner_id: str) -> dict[str, Any]:
    runner = ai_runner(runner_id, ended=NOW - timedelta(hours=1), org="")
    del runner["context"]["workspace_id"]
    return runner


def test_the_list_of_runners_without_an_org_shows_its_columns(env_db):
    env_db.tasks.insert_one(orgless_runner("r1"))
    run_chore(env_db, now=NOW)
    listed = CliRunner().invoke(main, ["anomaly", "list", "--no-org"])
    assert listed.exit_code == 0, listed.output
    assert ["kind", "runner", "detail", "first", "seen"] in rows(listed.output)


def test_the_list_refuses_no_org_with_a_period_and_an_empty_org(env_db):
    cli = CliRunner()
    period = cli.invoke(main, ["anomaly", "list", "--no-org", "--period", "2026-11"])
    assert period.exit_code == 2 and "an anomaly of --no-org has none" in period.output
    empty = cli.invoke(main, ["anomaly", "list", "--org", ""])
    assert empty.exit_code != 0 and "org must be a non-empty string" in empty.output


def test_a_review_says_what_is_still_open_and_when_the_invoice_is_final(env_db):
    env_db.tasks.insert_many([below_split(r, ended=NOW - timedelta(hours=1)) for r in ("r1", "r2")])
    run_chore(env_db, now=NOW)
    cli = CliRunner()
    one = cli.invoke(main, [*REVIEW, "--runner", "str:'r1'", "--note", "checked by ops"])
    assert one.exit_code == 0, one.output
    assert (
        "the draft still needs review for what is still open: "
        "chore invoice show --org acme --period 2026-11"
    ) in one.output

    december = NOW + timedelta(days=10)
    assert finalize_invoices(env_db, now=december, settings=get_settings()) == ["acme:2026-11"]
    final = cli.invoke(main, [*REVIEW[:-1], december.isoformat(), "--note", "checked by ops"])
    assert final.exit_code == 0, final.output
    assert "reviewed 1 anomaly of acme 2026-11" in final.output
    assert "its invoice is final: unchanged (a final invoice never changes)" in final.output


def test_on_a_narrow_terminal_the_kind_the_period_and_the_first_seen_are_never_cut(env_db):
    env_db.tasks.insert_many(
        [below_split("r1", ended=NOW - timedelta(hours=1)), orgless_runner("r2")]
    )
    run_chore(env_db, now=NOW)
    narrow = {"COLUMNS": "30"}
    listed = CliRunner().invoke(main, ["anomaly", "list", "--org", "acme"], env=narrow)
    assert listed.exit_code == 0, listed.output
    assert ["2026-11", "total_below_split"] in [row[:2] for row in rows(listed.stdout)]
    held = CliRunner().invoke(main, ["anomaly", "list", "--no-org"], env=narrow)
    (row,) = [line for line in held.stdout.splitlines() if line.startswith("no_org ")]
    assert row.rstrip().endswith("2026-11-25 12:00"), held.stdout


def test_a_review_needs_its_period_and_its_note(env_db):
    env_db.tasks.insert_one(below_split("r1", ended=NOW - timedelta(hours=1)))
    run_chore(env_db, now=NOW)
    cli = CliRunner()
    base = ["anomaly", "review", "--org", "acme", "--now", NOW.isoformat()]
    no_period = cli.invoke(main, [*base, "--note", "checked by ops"])
    assert no_period.exit_code == 2 and "Missing option '--period'" in no_period.output
    no_note = cli.invoke(main, [*base, "--period", "2026-11"])
    assert no_note.exit_code == 2 and "Missing option '--note'" in no_note.output


# --- anomaly times edited by hand ---------------------------------------------------------


@pytest.mark.parametrize("edited", ["x", 7, "2026-11-01"], ids=["text", "number", "iso-text"])
def test_anomaly_times_edited_by_hand_show_as_unknown_in_every_view(
    metered_env_db, tmp_path, edited
):
    """An anomaly's `first_seen` or review time edited to something else than a time (a
    shell writes text for a date) is shown as unknown, in `anomaly list` (with and without
    an org) and in the HTML report: the views a person reviews from never crash on it. The
    review itself still counts: the anomaly is listed as reviewed, not as waiting."""
    anomalies = metered_env_db.billing_anomalies
    anomalies.update_many({}, {"$set": {"first_seen": edited}})
    reviewed = anomalies.find_one({"org": "ws-beta"})
    anomalies.update_one(
        {"_id": reviewed["_id"]}, {"$set": {"reviewed": {"at": edited, "note": "checked"}}}
    )
    now = ["--now", NOW.isoformat()]
    listed = CliRunner().invoke(main, ["anomaly", "list", "--org", "ws-beta", "--reviewed"])
    assert listed.exit_code == 0, listed.output
    assert "time unknown: checked" in listed.output
    assert "left to review" not in listed.output  # its only anomaly is reviewed
    orgless = CliRunner().invoke(main, ["anomaly", "list", "--no-org"])
    assert orgless.exit_code == 0, orgless.output
    assert "–" in orgless.output  # first seen: unknown
    page = tmp_path / "beta.html"
    args = ["report", "--org", "ws-beta", "--period", "2026-11", "--out", str(page), *now]
    report = CliRunner().invoke(main, args)
    assert report.exit_code == 0, report.output
    assert "0 anomalies to review, 1 reviewed" in report.output
    assert ": checked</td>" in page.read_text()
