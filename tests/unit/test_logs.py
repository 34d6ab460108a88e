"""The worker's log lines (issue 16 item 4): one line per run naming the org, the org on
every retry and failure line, the fan-out naming its orgs, JSON on demand, no secret; and the
tasks at their edges (a locked org at its last retry, the fan-out's cursor, a local store)."""

from __future__ import annotations

import copy
import io
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
import pytest
from billiard.exceptions import WorkerLostError
from pymongo.errors import AutoReconnect

from chores import Collections, Settings, celery_app, tasks
from chores.celery_app import _log_format
from chores.core.exceptions import ConfigError, DatabaseUnavailable, LockUnavailable
from chores.core.lock import OrgLock
from chores.core.logs import (
    JsonFormatter,
    RedactingFormatter,
    redact_urls,
    short_list,
    use_log_format,
)
from chores.core.periods import as_utc, period_of
from chores.demo.corpus import generate_corpus
from chores.metering.progress import Progress
from chores.service import config as service_config

from support import GrantedLock, ai_runner

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")

SECRET = "s3cr3t-pw"
NOW = datetime.now(UTC).replace(microsecond=0)
CORPUS = generate_corpus(
    seed=7, orgs=("acme", "globex"), runs_per_org=3, start=NOW - timedelta(days=3), days=2
)


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Eager tasks over mongomock, each granted its org's lock; the lock's Redis URL (a
    closed port with a password in it) is only reached by a test that takes the real lock."""
    settings = Settings(
        mongo_url="mongomock://logs",
        redis_url=f"redis://billing:{SECRET}@127.0.0.1:1/0",
        log_format="json",
    )
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    monkeypatch.setattr(celery_app, "get_settings", lambda: settings)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    db.tasks.insert_many(copy.deepcopy(CORPUS.tasks))
    db.findings.insert_many(copy.deepcopy(CORPUS.findings))
    monkeypatch.setattr(tasks, "get_db", lambda: db)
    monkeypatch.setattr(tasks, "OrgLock", GrantedLock)
    return settings


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "chores.tasks"]


def test_a_run_logs_one_line_with_its_org_counts_duration_and_outcome(service, caplog):
    caplog.set_level(logging.INFO, logger="chores.tasks")
    summary = tasks.meter_org.apply(("acme",)).get()

    runs = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "run"]
    assert len(runs) == 1
    fields = runs[0].fields  # type: ignore[attr-defined]
    assert fields["org"] == "acme" and fields["outcome"] == "ok" and fields["full"] is False
    assert fields["docs_read"] == summary["docs_read"] > 0
    assert fields["tokens_billed"] == summary["tokens_billed"] > 0
    assert fields["duration_s"] >= 0
    assert (fields["anomalies"], fields["new_anomalies"]) == (
        summary["anomalies"],
        summary["new_anomalies"],
    )
    message = runs[0].getMessage()
    assert message.startswith("run org=acme outcome=ok ")
    assert f"tokens_billed={summary['tokens_billed']}" in message


def test_an_org_whose_lock_cannot_be_taken_is_retried_and_the_lock_url_redacted(
    service, monkeypatch, caplog
):
    """SPEC §6: never metered without its lock. Its Redis refuses: every try fails without
    metering, and every line names the org and hides the URL's password."""
    caplog.set_level(logging.INFO, logger="chores.tasks")
    monkeypatch.setattr(tasks, "OrgLock", OrgLock)
    with pytest.raises(LockUnavailable, match="not metered without it"):
        tasks.meter_org.apply(("acme",), retries=0).get()
    assert tasks.get_db().billing_ledger.count_documents({}) == 0  # nothing metered

    text = lines(caplog)
    retries = [line for line in text if "meter_org of org acme failed (LockUnavailable" in line]
    assert len(retries) == 5 and "retry 5 of 5" in retries[-1]
    assert any("meter_org of org acme failed for good (LockUnavailable" in line for line in text)
    assert all(SECRET not in line for line in text)
    assert any("redis://billing:***@127.0.0.1:1/0" in line for line in text)


def test_every_retry_and_the_final_failure_name_the_org(service, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="chores.tasks")

    def unreachable() -> Any:
        raise DatabaseUnavailable(f"cannot reach mongodb://billing:{SECRET}@db:27017")

    monkeypatch.setattr(tasks, "get_db", unreachable)
    with pytest.raises(DatabaseUnavailable):
        tasks.meter_org.apply(("globex",), retries=0).get()

    text = lines(caplog)
    retries = [line for line in text if "retry" in line and "failed (" in line]
    assert len(retries) == 5 and all("meter_org of org globex failed" in r for r in retries)
    assert "retry 1 of 5" in retries[0] and "retry 5 of 5" in retries[-1]
    assert any("meter_org of org globex failed for good" in line for line in text)
    errors = [line for line in text if line.startswith("run org=globex outcome=error")]
    assert len(errors) == 6  # the first try and 5 retries, each one line
    assert all(SECRET not in line for line in text)
    assert any("mongodb://billing:***@db:27017" in line for line in text)


def test_a_full_pass_given_up_says_it_is_skipped_today(service, monkeypatch, caplog):
    """The next fan-out lists the org for a 5-minute run, not its full pass: the ERROR
    line says so rather than promising the pass again."""
    caplog.set_level(logging.INFO, logger="chores.tasks")

    def unreachable() -> Any:
        raise DatabaseUnavailable("cannot reach MongoDB at mongodb://db:27017")

    monkeypatch.setattr(tasks, "get_db", unreachable)
    with pytest.raises(DatabaseUnavailable):
        tasks.meter_org.apply(("globex",), {"full": True}, retries=0).get()
    (last,) = [line for line in lines(caplog) if "failed for good" in line]
    assert "meter_org of org globex failed for good" in last
    assert "its daily full pass is skipped today" in last

    caplog.clear()
    with pytest.raises(DatabaseUnavailable):  # the fan-out: no org, no due mark
        tasks.meter_all.apply((), {"full": True}, retries=0).get()
    (fan_out,) = [line for line in lines(caplog) if "failed for good" in line]
    assert "meter_all of all orgs failed for good" in fan_out
    assert ": the next beat tick sends it again (task " in fan_out


@pytest.mark.parametrize(("org", "named"), [(None, "org None"), ("", "org ''")])
def test_a_run_sent_without_an_org_is_not_called_all_orgs_nor_promised_again(
    service, caplog, org, named
):
    """`meter_org.delay(None)` once failed as "meter_org of all orgs", and both promised
    that the next fan-out would list the org again (review)."""
    caplog.set_level(logging.INFO, logger="chores.tasks")
    with pytest.raises(ConfigError):
        tasks.meter_org.apply((org,), retries=0).get()
    (last,) = [line for line in lines(caplog) if "failed for good" in line]
    assert last.startswith(f"meter_org of {named} failed for good (ConfigError")
    assert ": not retried: this message names no org that can be metered (task " in last


@pytest.mark.parametrize("full", ["no", "false", 1, {"x": 1}, None])
def test_a_full_flag_that_is_not_true_or_false_is_refused_before_any_work(
    service, monkeypatch, caplog, full
):
    """Outside review: `meter_all(full="no")` queued the daily full pass of every org (the
    string is truthy), on the full queue, with no error anywhere; `meter_org(org,
    full={...})` took the org's lock, then failed on a pydantic traceback naming
    `RunReport.full_scan`. A message's flag is now checked like its org: before the
    database, the lock or any queue is touched, and never retried."""
    caplog.set_level(logging.INFO, logger="chores.tasks")
    touched: list[str] = []
    monkeypatch.setattr(tasks, "get_db", lambda: touched.append("database"))
    monkeypatch.setattr(tasks, "lock_client", lambda url: touched.append("lock"))
    monkeypatch.setattr(tasks.meter_org, "delay", lambda *a, **k: touched.append("queue"))

    for task, args in ((tasks.meter_all, ()), (tasks.meter_org, ("acme",))):
        caplog.clear()
        with pytest.raises(ConfigError, match=r"^full must be true or false, got "):
            task.apply(args, {"full": full}, retries=0).get()
        (last,) = [line for line in lines(caplog) if "failed for good" in line]
        assert f"failed for good (ConfigError: full must be true or false, got {full!r}" in last
        assert ": not retried: its full is not true or false (task " in last
    assert touched == []
    route = service_config.route_full_pass("chores.tasks.meter_all", (), {"full": full}, {})
    assert route is None  # the 5-minute queue, where it is refused at once


def test_the_full_pass_is_routed_to_its_queue_whether_full_is_given_by_keyword_or_position():
    """Review: `meter_org.delay("acme", True)` (a full pass, `full` by position) went to
    the 5-minute queue: the router read the keyword only."""
    route = service_config.route_full_pass
    full = {"queue": service_config.FULL_QUEUE}
    assert route("chores.tasks.meter_org", ("acme", True), {}, {}) == full
    assert route("chores.tasks.meter_org", ("acme",), {"full": True}, {}) == full
    assert route("chores.tasks.meter_all", (True,), None, {}) == full
    assert route("chores.tasks.meter_all", (), {"full": True}, {}) == full
    assert route("chores.tasks.meter_org", ("acme",), {}, {}) is None
    assert route("chores.tasks.meter_org", ("acme", False), {}, {}) is None
    assert route("chores.tasks.meter_all", (), {}, {}) is None
    assert route("chores.tasks.finalize_invoices", (True,), {}, {}) is None


def test_a_bad_setting_keeps_the_org_due_in_its_failure_line(service, monkeypatch, caplog):
    """Only a bad org is "not retried": a bad setting met by a good org's run leaves it due,
    and the next fan-out sends it again once the setting is fixed (review)."""
    caplog.set_level(logging.INFO, logger="chores.tasks")

    def misconfigured() -> Any:
        raise ConfigError("MONGO_URL mongodb://db/?tlsCAFile=/nonexistent: a TLS file ...")

    monkeypatch.setattr(tasks, "get_db", misconfigured)
    with pytest.raises(ConfigError):
        tasks.meter_org.apply(("acme",), retries=0).get()
    (last,) = [line for line in lines(caplog) if "failed for good" in line]
    assert last.startswith("meter_org of org acme failed for good (ConfigError")
    assert ": the org stays due, the next fan-out lists it again (task " in last


def test_the_fan_out_names_its_orgs_and_truncates_a_long_list(service, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="chores.tasks")
    queued: list[str] = []
    monkeypatch.setattr(tasks.meter_org, "delay", lambda org, full=False: queued.append(org))
    tasks.meter_all.apply().get()
    assert queued == ["acme", "globex"]
    assert "fan-out: 2 org(s) to meter: acme, globex" in lines(caplog)

    many = [f"org-{n:03d}" for n in range(25)]
    assert short_list(many) == ", ".join(many[:20]) + ", ... (+5 more)"
    assert short_list(many[:3]) == "org-000, org-001, org-002"


@pytest.mark.parametrize(
    ("owner", "method"), [(tasks.Quota, "decide"), (tasks.Progress, "advance_cursor")]
)
def test_a_fan_out_retried_after_a_failure_queues_each_org_once(
    service, monkeypatch, owner, method
):
    """Outside hunt: the idle orgs' quota decisions failing once (a primary stepping down),
    after the orgs with new usage were queued: the retried fan-out queued every one again
    (each run bills nothing twice; the work was doubled). They are decided first, and the
    cursor written (review), before the queueing."""
    from pymongo.errors import AutoReconnect

    queued: list[str] = []
    monkeypatch.setattr(tasks.meter_org, "delay", lambda org, full=False: queued.append(org))
    works = getattr(owner, method)
    failures = iter([AutoReconnect("primary stepped down")])

    def fails_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        for failure in failures:
            raise failure
        return works(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, fails_once)
    assert tasks.meter_all.apply().get() == ["acme", "globex"]
    assert queued == ["acme", "globex"]


def test_log_format_json_makes_every_line_a_json_object_with_the_fields(
    service, caplog, monkeypatch
):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # `_log_format` installs its own
    stream = io.StringIO()
    logger = logging.getLogger("test.json")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)  # whatever level an earlier test left on the root
    logger.propagate = False
    _log_format(logger=logger)  # what Celery's after_setup_*logger signals call
    assert isinstance(handler.formatter, JsonFormatter)
    assert sys.excepthook is celery_app._log_uncaught  # what stops the process is logged

    logger.warning("lost mongodb://u:%s@h/db", SECRET, extra={"fields": {"org": "acme"}})
    try:
        raise RuntimeError(f"redis://:{SECRET}@cache:6379/0 down")
    except RuntimeError:
        logger.exception("boom")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "WARNING" and first["org"] == "acme"
    assert first["message"] == "lost mongodb://u:***@h/db"
    assert "redis://:***@cache:6379/0" in second["exc_info"]
    assert SECRET not in stream.getvalue()


def test_log_format_text_keeps_the_format_and_redacts_urls():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.text")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)  # whatever level an earlier test left on the root
    logger.propagate = False
    use_log_format(logger, "text")
    use_log_format(logger, "text")  # idempotent
    assert isinstance(handler.formatter, RedactingFormatter)
    assert not isinstance(handler.formatter.inner, RedactingFormatter)
    logger.error("cannot reach mongodb://u:%s@h:27017/db?authSource=admin", SECRET)
    assert stream.getvalue() == "ERROR cannot reach mongodb://u:***@h:27017/db?authSource=admin\n"
    assert redact_urls("no url here") == "no url here"
    assert Settings().log_format == "text"
    with pytest.raises(ValueError):
        Settings(log_format="xml")


def test_a_retry_without_an_error_is_not_logged_as_a_failure(caplog):
    """A locked org's daily full pass asks for its own retry (`self.retry()` with no error):
    the task logged why; Celery's retry hook must not add "failed (NoneType: None)"."""
    caplog.set_level(logging.WARNING, logger="chores.tasks")
    tasks.meter_org.on_retry(None, "task-1", ("acme",), {"full": True}, None)
    assert caplog.records == []
    tasks.meter_org.on_retry(TimeoutError("slow"), "task-2", ("acme",), {}, None)
    assert caplog.messages == [
        "meter_org of org acme failed (TimeoutError: slow), retry 1 of 5 (task task-2)"
    ]


# The worker at its edges, untested until mutation testing of chores/tasks.py (stop 54).


def run_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "run"]


def test_a_failed_runs_line_is_a_warning_that_says_what_failed(service, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="chores.tasks")
    tasks.meter_org.apply(("acme",)).get()
    (ok,) = run_lines(caplog)
    fields = ok.fields  # type: ignore[attr-defined]
    assert ok.levelno == logging.INFO and fields["outcome"] == "ok" and "error" not in fields
    decision = tasks.get_db().billing_quota.find_one({"_id": "acme"})
    assert fields["decision"] == decision["state"] == "ok"
    assert 0 <= fields["duration_s"] < 60
    caplog.clear()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("the draft is broken")

    monkeypatch.setattr(tasks._run, "run_chore", broken)
    with pytest.raises(ValueError):
        tasks.meter_org.apply(("acme",), retries=0).get()
    (failed,) = run_lines(caplog)
    assert failed.levelno == logging.WARNING
    assert failed.fields["outcome"] == "error"  # type: ignore[attr-defined]
    assert failed.fields["error"] == "ValueError: the draft is broken"  # type: ignore[attr-defined]


class RefusedLock(GrantedLock):
    """Another worker holds the org's lock."""

    def acquire(self) -> bool:
        return False


def test_a_locked_org_is_skipped_with_a_summary_of_nothing_done(service, monkeypatch):
    monkeypatch.setattr(tasks, "OrgLock", RefusedLock)
    counts = ("docs_read", "tokens_billed", "entries_written", "anomalies", "new_anomalies")
    assert tasks.meter_org.apply(("acme",)).get() == {
        "org": "acme",
        "locked": True,
        "run_id": None,
    } | dict.fromkeys(counts, 0)


@pytest.mark.parametrize("full", [True, False])
def test_a_locked_org_at_its_last_retry_is_skipped_and_only_a_full_pass_says_so(
    service, monkeypatch, caplog, full
):
    """At its last retry a locked daily full pass is skipped with an error line, not retried
    past its limit; a locked 5-minute run is skipped as always, whatever its retries."""
    caplog.set_level(logging.INFO, logger="chores.tasks")
    monkeypatch.setattr(tasks, "OrgLock", RefusedLock)
    summary = tasks.meter_org.apply(("acme",), {"full": full}, retries=5).get()
    assert summary["locked"] is True
    said = "org acme was locked at every try of its daily full pass" in " ".join(lines(caplog))
    assert said is full
    assert any("daily full pass" in line for line in lines(caplog)) is full


def test_a_failure_is_described_in_300_characters_and_the_chores_own_in_1000():
    assert tasks._describe(ValueError("x" * 300)) == "ValueError: " + "x" * 300
    assert tasks._describe(ValueError("x" * 301)) == "ValueError: " + "x" * 300 + "..."
    assert tasks._describe(ConfigError("y" * 1000)) == "ConfigError: " + "y" * 1000
    assert tasks._describe(ConfigError("y" * 1001)) == "ConfigError: " + "y" * 1000 + "..."


@pytest.mark.parametrize(
    ("args", "kwargs", "whose"),
    [
        (("acme",), {}, "org acme"),
        ((), {"org": "beta"}, "org beta"),
        (("",), {}, "org ''"),
        ((42,), {}, "org 42"),
        ((), None, "org None"),
    ],
)
def test_a_failure_line_names_the_org_of_any_message(args, kwargs, whose):
    assert tasks.meter_org._whose(args, kwargs) == whose


def test_the_fan_out_moves_its_cursor_to_the_newest_stamp_it_read(service, monkeypatch):
    """Without it every fan-out would read every runner again."""
    monkeypatch.setattr(tasks.meter_org, "delay", lambda org, full=False: None)
    tasks.meter_all.apply().get()
    cursor = Progress(Collections.of(tasks.get_db(), service)).cursor(tasks.FANOUT_SCOPE)
    assert cursor == max(doc["last_updated_db"] for doc in CORPUS.tasks)


def test_a_worker_refuses_a_local_store_and_keeps_its_connection(monkeypatch, tmp_path):
    """A worker on a local (file) store would keep billing where nothing else reads it."""
    from chores.service.checks import LOCAL_STORE_SCHEME

    local = Settings(mongo_url=f"{LOCAL_STORE_SCHEME}{tmp_path}/store.json", redis_url=None)
    monkeypatch.setattr(tasks, "get_settings", lambda: local)
    tasks.get_db.cache_clear()
    try:
        with pytest.raises(ConfigError, match="is a local store"):
            tasks.get_db()
        memory = Settings(mongo_url="mongomock://worker", redis_url=None)
        monkeypatch.setattr(tasks, "get_settings", lambda: memory)
        db = tasks.get_db()
        assert db.name == "main" and tasks.get_db() is db
    finally:
        tasks.get_db.cache_clear()


def run_line_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [record.fields for record in run_lines(caplog)]  # type: ignore[attr-defined]


class Retried(Exception):
    """What the spied `retry` raises instead of scheduling one."""


def spy_on_retries(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    asked: list[dict[str, Any]] = []

    def retry(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs)
        raise Retried

    monkeypatch.setattr(tasks.meter_org, "retry", retry)
    return asked


def test_the_daily_finalize_task_freezes_the_months_whose_grace_passed(service):
    ended = datetime.now(UTC) - timedelta(days=70)
    tasks.get_db().tasks.insert_one(ai_runner("old-run", ended=ended))
    tasks.meter_org.apply(("acme",)).get()
    invoice_id = f"acme:{period_of(ended)}"
    assert invoice_id in tasks.finalize_invoices.apply().get()
    assert tasks.get_db().billing_invoices.find_one({"_id": invoice_id})["status"] == "final"


def test_the_fan_out_marks_its_orgs_due_and_decides_the_others(service, monkeypatch):
    """A due mark keeps an org listed until a run of it succeeds; an org with nothing new
    gets no run, but its quota decision must not go stale."""
    monkeypatch.setattr(tasks.meter_org, "delay", lambda org, full=False: None)
    db = tasks.get_db()
    db.billing_due.insert_one({"_id": "acme", "listed_at": datetime(2020, 1, 1, tzinfo=UTC)})
    decided: list[list[str]] = []
    monkeypatch.setattr(tasks.Quota, "known_orgs", lambda quota: ["acme", "globex", "idle-co"])
    monkeypatch.setattr(
        tasks.Quota, "decide", lambda quota, orgs, now, **options: decided.append(list(orgs))
    )
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert tasks.meter_all.apply().get() == ["acme", "globex"]
    marks = {mark["_id"]: as_utc(mark["listed_at"]) for mark in db.billing_due.find()}
    assert set(marks) == {"acme", "globex"} and min(marks.values()) >= before
    assert decided == [["idle-co"]]


def test_a_fan_out_whose_orgless_record_fails_queues_each_org_once(service, monkeypatch):
    """A side job: its failure is logged, and neither retries the fan-out nor fails it."""
    queued: list[str] = []
    monkeypatch.setattr(tasks.meter_org, "delay", lambda org, full=False: queued.append(org))

    def primary_stepped_down(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("primary stepped down")

    monkeypatch.setattr(tasks, "record_orgless", primary_stepped_down)
    assert tasks.meter_all.apply().get() == queued == ["acme", "globex"]


def test_a_run_clears_its_orgs_due_mark_and_releases_its_lock(service, monkeypatch):
    released: list[str] = []

    class ReleaseRecorded(GrantedLock):
        def release(self) -> bool:
            released.append(self.org)
            return True

    monkeypatch.setattr(tasks, "OrgLock", ReleaseRecorded)
    due = tasks.get_db().billing_due
    due.insert_one({"_id": "acme", "listed_at": datetime.now(UTC) - timedelta(minutes=5)})
    tasks.meter_org.apply(("acme",)).get()
    assert due.count_documents({"_id": "acme"}) == 0 and released == ["acme"]


def test_a_locked_full_pass_is_retried_once_the_lock_ttl_has_passed(service, monkeypatch):
    """The daily safety net must not be lost to a 5-minute run holding the lock now."""
    monkeypatch.setattr(tasks, "OrgLock", RefusedLock)
    asked = spy_on_retries(monkeypatch)
    with pytest.raises(Retried):
        tasks.meter_org.apply(("acme",), {"full": True}, retries=1).get()
    assert asked == [{"countdown": service.lock_ttl_seconds}]


def test_a_full_pass_without_its_locks_redis_waits_the_lock_ttl_and_says_so(
    service, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="chores.tasks")
    monkeypatch.setattr(tasks, "OrgLock", OrgLock)  # its Redis: a closed port
    asked = spy_on_retries(monkeypatch)
    with pytest.raises(Retried):
        tasks.meter_org.apply(("acme",), {"full": True}).get()
    assert asked[0]["countdown"] == service.lock_ttl_seconds
    ((outcome, seconds),) = [(f["outcome"], f["duration_s"]) for f in run_line_fields(caplog)]
    assert outcome == "error" and 0 <= seconds < 60


@pytest.mark.parametrize("outcome", ["locked", "error"])
def test_a_run_that_did_not_bill_logs_its_line_and_its_own_duration(
    service, monkeypatch, caplog, outcome
):
    caplog.set_level(logging.INFO, logger="chores.tasks")
    if outcome == "locked":
        monkeypatch.setattr(tasks, "OrgLock", RefusedLock)
        tasks.meter_org.apply(("acme",)).get()
    else:

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise ValueError("the draft is broken")

        monkeypatch.setattr(tasks._run, "run_chore", broken)
        with pytest.raises(ValueError):
            tasks.meter_org.apply(("acme",), retries=5).get()
    ((logged, seconds),) = [(f["outcome"], f["duration_s"]) for f in run_line_fields(caplog)]
    assert logged == outcome and 0 <= seconds < 60


def test_a_worker_lost_at_the_last_try_names_the_org(caplog):
    """A pool process killed (OOM, SIGKILL): Celery's own line names no org."""
    caplog.set_level(logging.INFO, logger="chores.tasks")
    tasks._log_a_lost_worker(
        sender=tasks.meter_org,
        task_id="t-1",
        exception=WorkerLostError("died"),
        args=("acme",),
        kwargs={},
    )
    said = "meter_org of org acme failed for good (WorkerLostError"
    assert any(line.startswith(said) for line in lines(caplog))
