"""Issue 17 item 2: the source indexes are checked at start (never created unasked), the
run report and `chore status` say which is missing and what it costs; the billing
collections get their indexes on their own."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from click.testing import CliRunner
from pymongo import ASCENDING

from chores import Collections, ensure_indexes, get_settings, run_chore
from chores.cli import main
from chores.core.db import missing_source_indexes
from chores.run.chore import run_document

from support import NOW, ai_runner

STAMP = "chore_name_stamp"
SOURCE_INDEXES = {
    "chore_name_stamp",
    "chore_org_name_stamp",
    "chore_spawn_runner",
    "chore_spawn_session",
    "chore_task_group",
}


def missing_names(db, settings):
    return {m.name for m in missing_source_indexes(Collections.of(db, settings), settings)}


def test_without_source_indexes_the_run_says_so_and_creates_none(
    db, settings, fixture_docs, caplog
):
    db.tasks.insert_many(fixture_docs["tasks"])
    db.findings.insert_many(fixture_docs["findings"])
    with caplog.at_level(logging.WARNING, logger="chores"):
        report = run_chore(db, now=NOW, settings=settings)
    assert len(report.missing_indexes) == len(SOURCE_INDEXES)
    assert any("extra_data.runner_id" in m for m in report.missing_indexes)
    assert any("name: 1, last_updated_db: 1" in m for m in report.missing_indexes)
    (stored,) = list(db.billing_runs.find())
    assert stored["missing_indexes"] == report.missing_indexes
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(SOURCE_INDEXES)
    assert all("collection scan" in w or "scans" in w for w in warnings)
    assert all("chore db indexes --apply" in w for w in warnings)
    # read-only on the platform's collections: nothing was created there
    assert list(db.tasks.index_information()) == ["_id_"]
    assert list(db.findings.index_information()) == ["_id_"]
    # the chore's own collections got theirs
    assert "runner_seq" in db.billing_ledger.index_information()
    assert "org_period" in db.billing_invoices.index_information()


def test_creating_them_clears_it(db, settings, fixture_docs):
    db.tasks.insert_many(fixture_docs["tasks"])
    assert missing_names(db, settings) == SOURCE_INDEXES
    ensure_indexes(db, settings, source=True)
    assert missing_names(db, settings) == set()
    report = run_chore(db, now=NOW, settings=settings)
    assert report.missing_indexes == []
    assert run_document(report)["missing_indexes"] == []


def test_compared_by_key_pattern_not_by_name(db, settings):
    db.tasks.create_index([("name", ASCENDING), ("last_updated_db", ASCENDING)], name="theirs")
    # a longer compound index serves the same queries: its key begins with ours
    db.findings.create_index(
        [("extra_data.runner_id", ASCENDING), ("_id", ASCENDING)], name="dba_made_this"
    )
    # same fields, other order: does not count
    db.tasks.create_index(
        [("last_updated_db", ASCENDING), ("name", ASCENDING), ("context.workspace_id", 1)],
        name="wrong_order",
    )
    assert missing_names(db, settings) == {
        "chore_org_name_stamp",
        "chore_spawn_session",
        "chore_task_group",
    }
    # descending keys serve the same equality and range reads; a hashed key serves none
    db.tasks.create_index([("context.task_id", -1)], name="descending")
    db.findings.create_index([("extra_data.subagent_session_id", "hashed")], name="hashed")
    assert missing_names(db, settings) == {"chore_org_name_stamp", "chore_spawn_session"}


class _Indexed:
    """A collection as `missing_source_indexes` reads it: the server's `index_information`
    (mongomock keeps no `hidden` flag nor collation; the `mongo` contract suite creates
    them on a real server)."""

    def __init__(self, **indexes: dict[str, Any]) -> None:
        self.indexes = {"_id_": {"key": [("_id", 1)], "v": 2}, **indexes}

    def index_information(self) -> dict[str, dict[str, Any]]:
        return self.indexes


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"hidden": True}, "hidden"),
        (
            {"partialFilterExpression": {"status": "RUNNING"}},
            "partial, with a filter its reads do not imply",
        ),
        ({"collation": {"locale": "en", "strength": 2}}, "with the collation 'en'"),
    ],
)
def test_an_index_the_reads_cannot_use_is_reported_missing_and_why(settings, options, said):
    """Outside review: an index with the wanted keys counted as present whatever it was, so
    `chore status` said "all present" while every batch scanned: a hidden index (the planner
    ignores it), a partial one (the chore's queries imply no filter) or one with another
    collation (it serves no comparison made without it)."""
    stamp = {"key": [("name", 1), ("last_updated_db", 1)], "v": 2, **options}
    usable_too = {"key": [("name", 1), ("last_updated_db", 1), ("_id", 1)], "v": 2}
    tasks, findings = _Indexed(theirs=stamp), _Indexed()
    collections = type("Sources", (), {"tasks": tasks, "findings": findings})()
    (missing,) = [m for m in missing_source_indexes(collections, settings) if m.name == STAMP]
    assert missing.describe() == (
        f"tasks {{name: 1, last_updated_db: 1}} (chore_name_stamp, present but {said})"
    )
    assert "the chore's reads cannot use such an index: make it usable, or create it: chore " in (
        missing.warning()
    )
    tasks.indexes["also"] = usable_too  # a usable one beside it: nothing missing
    assert STAMP not in {m.name for m in missing_source_indexes(collections, settings)}
    sparse = {**usable_too, "sparse": True}  # sparse serves the chore's reads (no null match)
    tasks.indexes = {"theirs": stamp, "sparse": sparse}
    assert STAMP not in {m.name for m in missing_source_indexes(collections, settings)}


@pytest.mark.parametrize(
    "info",
    [
        {"key": [("name", 2), ("last_updated_db", -1.0)]},  # any positive number: ascending
        {"key": [("name", 1), ("last_updated_db", 1)], "partialFilterExpression": {}},
        {"key": [("name", 1), ("last_updated_db", 1)], "collation": {"locale": "simple"}},
        {"key": [("name", 1), ("last_updated_db", 1)], "hidden": False},
    ],
)
def test_index_shapes_that_serve_the_reads_count(settings, info):
    """Review: a legacy direction (2) and an empty partial filter were reported missing."""
    tasks, findings = _Indexed(theirs={**info, "v": 2}), _Indexed()
    collections = type("Sources", (), {"tasks": tasks, "findings": findings})()
    assert STAMP not in {m.name for m in missing_source_indexes(collections, settings)}


@pytest.mark.parametrize(
    ("index", "key", "partial", "counts"),
    [
        # what docs/scaling.md advises for the spawn findings: the reads imply it
        (
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"_type": "ai", "ai_type": {"$in": ["task", "workflow", "scan"]}},
            True,
        ),
        (
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"extra_data.runner_id": {"$exists": True}},
            True,
        ),
        (
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"$and": [{"_type": "ai"}, {"_type": {"$eq": "ai"}}]},
            True,
        ),
        (
            "chore_spawn_session",
            "extra_data.subagent_session_id",
            {"ai_type": "task", "_type": "ai"},
            True,
        ),
        # review: a list or document among `$in`'s values raised TypeError (unhashable),
        # and `$exists: 1` (a shell's true) or two operators on a field were not read
        (
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"ai_type": {"$in": ["task", "workflow", "scan", ["x"], {"y": 1}]}},
            True,
        ),
        (
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"extra_data.runner_id": {"$exists": 1}},
            True,
        ),
        (
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"_type": {"$eq": "ai", "$exists": True}},
            True,
        ),
        ("chore_spawn_runner", "extra_data.runner_id", {"_type": {"$in": [["ai"]]}}, False),
        (
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"extra_data.runner_id": {"$exists": False}},
            False,
        ),
        (
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"extra_data.runner_id": {"$exists": 0.0}},
            False,
        ),
        (  # the server reads any number but 0 as true (review)
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"extra_data.runner_id": {"$exists": -1}},
            True,
        ),
        # a filter the reads do not imply: the read would miss what the index leaves out
        ("chore_spawn_runner", "extra_data.runner_id", {"ai_type": "task"}, False),
        (
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"ai_type": {"$in": ["task", "scan"]}},
            False,
        ),
        (
            "chore_spawn_runner",
            "extra_data.runner_id",
            {"extra_data.runner_id": {"$type": "string"}},
            False,
        ),
        (
            "chore_spawn_session",
            "extra_data.subagent_session_id",
            {"_type": "ai", "done": True},
            False,
        ),
        # the reads of tasks hold a name *or* its `name/` variants: no filter on name follows
        ("chore_name_stamp", "name", {"name": "ai"}, False),
    ],
)
def test_a_partial_index_counts_when_its_reads_imply_its_filter(
    settings, index, key, partial, counts
):
    """Whole-change review: every partial index was reported missing, the one
    docs/scaling.md advises for the spawn findings included. It counts when every read of
    it implies its filter; the `{name: "ai"}` once advised for the task indexes does not
    (the reads also match `ai/<variant>`), and scaling.md no longer advises it."""
    keys = [(key, 1), ("last_updated_db", 1)] if key == "name" else [(key, 1)]
    info = {"key": keys, "v": 2, "partialFilterExpression": partial}
    found = {"tasks": _Indexed(), "findings": _Indexed()}
    found["tasks" if key == "name" else "findings"].indexes["theirs"] = info
    collections = type("Sources", (), found)()
    missing = {m.name: m.unusable for m in missing_source_indexes(collections, settings)}
    if counts:
        assert index not in missing
    else:
        assert missing[index] == "partial, with a filter its reads do not imply"


def test_an_index_of_the_chores_name_the_server_will_not_replace_is_named_and_the_rest_made(
    env_db,
):
    """Review: `chore db indexes --apply` stopped at the first index the server refused (its
    name taken by a partial one made by hand), leaving the others of that collection and
    of every collection after it uncreated, with a bare database error."""
    env_db.tasks.create_index(
        [("name", ASCENDING), ("last_updated_db", ASCENDING)],
        name=STAMP,
        partialFilterExpression={"status": "RUNNING"},
    )
    result = CliRunner().invoke(main, ["db", "indexes", "--apply"])
    assert result.exit_code == 1
    refused = f"the server refused 1 of the chore's indexes (the others are there): tasks {STAMP}"
    assert result.output.startswith(f"Error: {refused} (")
    assert "drop it (or unhide it), then run `chore db indexes --apply`" in result.output
    assert {"chore_org_name_stamp", "chore_task_group"} <= set(env_db.tasks.index_information())
    assert "chore_spawn_runner" in env_db.findings.index_information()
    assert "runner_seq" in env_db.billing_ledger.index_information()


def test_a_partial_index_on_mongomock_is_not_counted(db, settings):
    db.tasks.create_index(
        [("name", ASCENDING), ("last_updated_db", ASCENDING)],
        name="running_only",
        partialFilterExpression={"status": "RUNNING"},
    )
    report = run_chore(db, now=NOW, settings=settings, dry_run=True)
    said = "chore_name_stamp, present but partial, with a filter its reads do not imply"
    assert any(said in m for m in report.missing_indexes)


def test_dry_run_checks_but_creates_nothing(db, settings):
    report = run_chore(db, now=NOW, settings=settings, dry_run=True)
    assert len(report.missing_indexes) == len(SOURCE_INDEXES)
    assert [n for n in db.list_collection_names() if n.startswith("billing_")] == []


def billing_state(db):
    return {
        name: sorted(db[name].find(), key=str)
        for name in db.list_collection_names()
        if name.startswith("billing_")
    }


def test_a_dry_run_on_a_metered_database_writes_nothing(db, settings, fixture_docs):
    db.tasks.insert_many(fixture_docs["tasks"])
    db.findings.insert_many(fixture_docs["findings"])
    run_chore(db, now=NOW, settings=settings)
    pending = db.billing_pending.find_one()
    assert pending is not None, "the fixture has a runner still running"
    db.tasks.delete_one({"_id": pending["source_id"]})  # gone from the source since
    before = billing_state(db)
    report = run_chore(db, now=NOW, settings=settings, dry_run=True)
    assert report.docs_read > 0
    assert billing_state(db) == before


def test_status_says_which_is_missing_its_cost_and_the_command(env_db, fixture_docs):
    env_db.tasks.insert_many(fixture_docs["tasks"])
    result = CliRunner().invoke(main, ["status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "Source indexes MISSING" in text
    for name in SOURCE_INDEXES:
        assert name in text
    assert "collection scan of tasks" in text and "collection scan of findings" in text
    assert "chore db indexes --apply" in text
    assert list(env_db.tasks.index_information()) == ["_id_"]  # status created nothing

    applied = CliRunner().invoke(main, ["db", "indexes", "--apply"], catch_exceptions=False)
    assert applied.exit_code == 0
    after = CliRunner().invoke(main, ["status"], catch_exceptions=False)
    assert "Source indexes: all present" in after.stdout
    assert "MISSING" not in after.stdout


def test_run_table_warns_on_stderr_json_carries_the_list(env_db, fixture_docs):
    env_db.tasks.insert_many(fixture_docs["tasks"])
    result = CliRunner().invoke(main, ["run", "--all", "--now", NOW.isoformat()])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: source index missing") == len(SOURCE_INDEXES)
    ensure_indexes(env_db, get_settings(), source=True)
    again = CliRunner().invoke(main, ["run", "--all", "--now", NOW.isoformat()])
    assert "source index missing" not in again.stderr


@pytest.mark.parametrize("stamp", [float("nan"), float("-inf"), None, "soon"])
def test_a_runner_without_a_usable_stamp_is_read_by_the_next_incremental_run(
    db, settings, registry, stamp
):
    from datetime import timedelta

    def runner(stamp: object) -> dict:
        return {
            "_id": ObjectId(), "name": "ai", "status": "SUCCESS",
            "end_time": NOW - timedelta(hours=1), "last_updated_db": stamp,
            "context": {"workspace_id": "acme", "ai_model": "gpt-4o-mini", "ai_tokens": 1_000,
                        "ai_prompt_tokens": 1_000, "ai_completion_tokens": 0},
        }  # fmt: skip

    db.tasks.insert_one(runner((NOW - timedelta(hours=2)).timestamp()))
    run_chore(db, now=NOW, settings=settings, registry=registry)  # the cursor is set
    db.tasks.insert_one(runner(stamp))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == 2_000


def test_a_run_whose_now_lags_never_moves_the_cursor_back(db, settings, registry):
    """A lagging run's plausible-stamp horizon falls between two stamps: the cursor it
    reaches is older than the one stored, which stays (`$max`, mutation review)."""
    from chores.metering.progress import Progress

    t = NOW.timestamp()
    db.tasks.insert_one(
        ai_runner(ObjectId(), tokens=1_000, ended=NOW - timedelta(hours=1), stamp=t - 600)
    )
    db.tasks.insert_one(
        ai_runner(ObjectId(), tokens=1_000, ended=NOW - timedelta(minutes=1), stamp=t - 60)
    )
    run_chore(db, org="acme", now=NOW, settings=settings, registry=registry)
    progress = Progress(Collections.of(db, settings))
    assert progress.cursor("org:acme") == t - 60
    lagging = NOW - timedelta(minutes=8)  # its horizon, now + 300 s, is below t - 60
    run_chore(db, org="acme", now=lagging, settings=settings, registry=registry)
    assert progress.cursor("org:acme") == t - 60


def test_a_write_stamped_below_the_cursor_within_the_lookback_is_billed(db, settings, registry):
    """The stamp is written one write late: a runner stamped before the cursor can become
    visible after the run that set it. The lookback re-reads it (mutation review)."""
    t = NOW.timestamp()
    db.tasks.insert_one(
        ai_runner(ObjectId(), tokens=1_000, ended=NOW - timedelta(minutes=1), stamp=t - 60)
    )
    run_chore(db, org="acme", now=NOW, settings=settings, registry=registry)
    assert settings.lookback_seconds > 120
    db.tasks.insert_one(
        ai_runner(ObjectId(), tokens=5_000, ended=NOW - timedelta(minutes=2), stamp=t - 120)
    )
    run_chore(db, org="acme", now=NOW + timedelta(minutes=5), settings=settings, registry=registry)
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == 6_000


def test_a_stamp_years_ahead_never_becomes_the_fan_out_cursor(db, settings):
    """A garbage stamp past `now + FUTURE_SKEW_SECONDS` would make every later fan-out list
    no org until the daily full pass (mutation review)."""
    from chores.tasks import orgs_with_new_usage

    t = NOW.timestamp()
    db.tasks.insert_one(ai_runner(ObjectId(), tokens=1_000, ended=NOW, stamp=t - 60))
    db.tasks.insert_one(
        ai_runner(ObjectId(), org="globex", tokens=1_000, ended=NOW, stamp=t + 10 * 365 * 86_400)
    )
    orgs, newest, _ = orgs_with_new_usage(db, settings, now=NOW)
    assert orgs == ["acme", "globex"] and newest == t - 60


def test_the_scan_of_changed_runners_lets_the_server_sort_on_disk(db, settings):
    """The scan's order is a blocking sort on a server, over every AI runner on a full
    pass: servers before 6.0 refuse one past 100 MB unless asked to spill to disk."""
    from chores.metering.source import Source

    asked = []

    class Tasks:
        def find(self, *args, **kwargs):
            asked.append(kwargs)
            return iter([])

    collections = Collections.of(db, settings)
    source = Source(collections, ai_task_names=["ai"], batch_size=10)
    source._tasks = Tasks()
    assert list(source.changed_runners(None, None)) == []
    assert asked[0]["allow_disk_use"] is True and asked[0]["sort"][0] == ("last_updated_db", 1)


@pytest.mark.parametrize(
    "context",
    [
        {"workspace_id": "acme"},
        {"workspace_id": "a" * 256},
        {"workspace_id": " "},
        {},
        {"workspace_id": None},
        {"workspace_id": ""},
        {"workspace_id": "a" * 257},
        {"workspace_id": "a" * 256 + "\n"},  # a regex's `$` matches before the newline
        {"workspace_id": "a" * 255 + "\n"},
        {"workspace_id": "ac\ufffdme"},  # bytes that are not UTF-8, as the chore reads them
        {"workspace_id": 7},
        {"workspace_id": 7.5},
        {"workspace_id": True},
        {"workspace_id": {"id": "acme"}},
        {"workspace_id": ["acme"]},
        {"workspace_id": []},
        {"workspace_id": [None, "acme"]},
        [{"workspace_id": "acme"}],
        "acme",
        None,
    ],
    ids=repr,
)
def test_the_fan_out_reads_as_orgless_exactly_what_the_rules_bill_to_no_org(db, settings, context):
    """What `tasks.meter_all` lists as orgs (`orgs_with_new_usage`) and reads as runners of
    no org (`Source.orgless_runners`, to record as no_org), and the rules (`rules.org_of`,
    what an org's run bills) agree: a document is one org's or no org's, never both and
    never neither, whatever its `context` holds. (An id that is not UTF-8 was listed as an
    org, whose run could never read the runner: no query names those bytes.)"""
    from chores.metering.rules import org_of
    from chores.metering.source import Source
    from chores.tasks import orgs_with_new_usage

    doc = ai_runner("r1", ended=NOW - timedelta(hours=1))
    doc["context"] = context
    db.tasks.insert_one(doc)
    source = Source(Collections.of(db, settings), ai_task_names=("ai",), batch_size=10)

    listed = orgs_with_new_usage(db, settings, now=NOW, full=True)
    besides = listed.orgs if listed.not_utf8 else None  # as `meter_all` passes them
    read_as_orgless = [d["_id"] for d in source.orgless_runners(None, besides_orgs=besides)]
    an_org = org_of(context) if isinstance(context, dict) else None
    assert read_as_orgless == ([] if an_org is not None else [doc["_id"]])
    assert listed.orgs == ([] if an_org is None else [an_org])


def test_a_run_record_of_every_org_stays_within_a_document(db, settings, registry):
    """Outside audit: a record listing each org of a `run --all` grew about 240 bytes an
    org, past MongoDB's 16 MB at about 70,000 orgs, and the run failed once its work was
    done (mongomock stores any size)."""
    import bson

    from chores.run.chore import RUN_RECORD_LISTED
    from chores.run.report import STORED_RUN, OrgSummary

    report = run_chore(db, now=NOW, settings=settings, registry=registry)
    orgs = [f"org-{n:06d}" for n in range(100_000)]
    report.orgs = {org: OrgSummary(tokens=10**12, entries=10**6, anomalies=3) for org in orgs}
    report.decisions = dict.fromkeys(orgs, "ok")
    report.invoices = [f"{org}:2026-11" for org in orgs]
    record = run_document(report)
    assert len(bson.encode(record)) < 1_000_000
    assert [entry["org"] for entry in record["orgs"]] == orgs[:RUN_RECORD_LISTED]
    assert record["orgs_omitted"] == record["decisions_omitted"] == 100_000 - RUN_RECORD_LISTED
    assert record["invoices"][-1] == orgs[RUN_RECORD_LISTED - 1] + ":2026-11"
    assert "repaired_drafts_omitted" not in record
    STORED_RUN.validate_python(record)  # as `chore status` reads it back


@pytest.mark.parametrize("name", ["chore_task_group", "a_dbas_own"])
def test_apply_creates_no_source_index_status_counts_as_there(env_db, name):
    """Outside hunt: an index whose keys begin with a source index's counts for `chore
    status` (docs/scaling.md), yet `chore db indexes --apply` asked for the source index
    too; under the chore's own name the server refused it (exit 1, "drop it")."""
    env_db.tasks.create_index([("context.task_id", ASCENDING), ("x", ASCENDING)], name=name)
    status = CliRunner().invoke(main, ["status"])
    assert "chore_task_group" not in status.output, status.output

    result = CliRunner().invoke(main, ["db", "indexes", "--apply"])

    assert result.exit_code == 0, result.output
    keys = [list(info["key"]) for info in env_db.tasks.index_information().values()]
    assert [("context.task_id", 1)] not in keys
    assert [("context.task_id", 1), ("x", 1)] in keys
    assert {"chore_name_stamp", "chore_org_name_stamp"} <= set(env_db.tasks.index_information())


def test_an_index_of_the_chores_name_on_other_keys_is_named_with_what_to_do(env_db):
    """Review: an index of the chore's name on other keys (that serve none of its reads)
    was refused with a hint naming only other options (partial, hidden)."""
    env_db.findings.create_index([("extra_data.other", ASCENDING)], name="chore_spawn_runner")
    result = CliRunner().invoke(main, ["db", "indexes", "--apply"])
    assert result.exit_code == 1
    assert "findings chore_spawn_runner (" in result.output
    assert "An index of the chore's name with other keys or options" in result.output
