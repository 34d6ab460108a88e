"""What a real MongoDB server refuses or does that mongomock does not, built in: every
`$group` may spill to disk (servers before 6.0 fail a stage past 100 MB otherwise), an index
of the chore's keys created under another name is not created again (a server refuses the
copy, which stopped every run), and every read goes to the primary (a run reads back what it
has just written). Outside review of the mongomock-only suite."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import mongomock
import pytest
from bson import ObjectId
from pymongo import ASCENDING, MongoClient, ReadPreference

from chores import Collections, ensure_indexes, finalize_invoices, run_chore
from chores.core.exceptions import ForeignUniqueIndex
from chores.core.writes import insert_ignoring_duplicates, update_where
from chores.metering.source import Source

from support import NOW, ai_runner


def test_every_group_is_allowed_to_spill_to_disk(db, settings, registry, monkeypatch):
    """A full pass groups every runner of a month in the database (`ledger_usage`): on
    MongoDB 4.4 and 5.0 a `$group` past 100 MB fails unless allowed to spill to disk."""
    calls: list[dict[str, Any]] = []
    aggregate = mongomock.collection.Collection.aggregate

    def recorded(self: Any, pipeline: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append({"collection": self.name, **kwargs})
        return aggregate(self, pipeline, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "aggregate", recorded)
    october = NOW - timedelta(days=40)
    db.tasks.insert_many(
        [
            ai_runner(ObjectId(), ended=october),
            ai_runner(ObjectId(), ended=NOW - timedelta(hours=1)),
        ]
    )
    run_chore(db, now=NOW, settings=settings, registry=registry)
    assert finalize_invoices(db, now=NOW, settings=settings) == ["acme:2026-10"]
    run_chore(db, now=NOW, settings=settings, registry=registry, full=True)
    Source(Collections.of(db, settings), ai_task_names=["ai"], batch_size=100).orgs_changed(None)
    grouped = {call["collection"] for call in calls}
    assert {"billing_ledger", "tasks"} <= grouped  # the full pass's sums, the fan-out's orgs
    assert len(calls) >= 3
    assert [call for call in calls if call.get("allowDiskUse") is not True] == []


def test_an_index_of_the_chores_keys_under_another_name_is_left_as_it_is(db, settings, registry):
    """A server refuses to create an index whose keys another index has under another name
    (`IndexOptionsConflict`, "Index already exists with a different name"): a DBA's
    `{org: 1}` on the dirty marks stopped every run with `IndexesNotCreated`. mongomock
    creates the copy, so the test asserts none is attempted."""
    dirty = db[settings.collection("dirty")]
    dirty.create_index([("org", ASCENDING)], name="by_dba")
    db.tasks.create_index([("name", ASCENDING), ("last_updated_db", ASCENDING)], name="theirs")
    # a partial index of the same keys serves only some reads: ours is still created
    db.findings.create_index(
        [("extra_data.runner_id", ASCENDING)],
        name="partial",
        partialFilterExpression={"_type": "finding"},
    )
    # one that would refuse or delete what the chore writes is not the chore's (review)
    pending = db[settings.collection("pending")]
    pending.create_index([("recheck_at", ASCENDING)], name="dba_ttl", expireAfterSeconds=0)
    db[settings.collection("runs")].create_index(
        [("org", ASCENDING), ("started_at", -1)], name="dba_unique", unique=True
    )
    created = ensure_indexes(db, settings, source=True)
    assert "chore_name_stamp" not in created and "chore_spawn_runner" in created
    assert {"recheck_at", "org_started"} <= set(created)
    assert sorted(dirty.index_information()) == ["_id_", "by_dba"]
    assert "chore_name_stamp" not in db.tasks.index_information()
    db.tasks.insert_one(ai_runner(ObjectId(), ended=NOW - timedelta(hours=1)))
    report = run_chore(db, now=NOW, settings=settings, registry=registry)
    assert report.missing_indexes == []  # theirs serves the reads ours would
    assert db[settings.collection("invoices")].find_one({"_id": "acme:2026-11"})["total_micros"] > 0


def test_a_unique_index_not_the_chores_that_refuses_an_entry_stops_the_run_and_loses_nothing(
    db, settings, registry
):
    """Review: a unique index a person added on the ledger (`{org, usage_period}`) refused
    the second and third entries of a month as duplicates, which the chore took for
    "written already": 1,000 of 6,000 tokens billed, silently. Now the run stops and says
    which collection; with the index gone, the next run bills the rest once."""
    ledger = db[settings.collection("ledger")]
    ledger.create_index([("org", ASCENDING), ("usage_period", ASCENDING)], name="dba", unique=True)
    for i in range(3):
        db.tasks.insert_one(
            ai_runner(f"r{i}", ended=NOW - timedelta(hours=i + 1), tokens=1_000 * (i + 1))
        )
    with pytest.raises(ForeignUniqueIndex, match=f"{settings.collection('ledger')}: 2 write"):
        run_chore(db, now=NOW, settings=settings, registry=registry)
    assert ledger.count_documents({}) == 1
    first = sum(entry["tokens"] for entry in ledger.find({}))

    ledger.drop_index("dba")
    report = run_chore(db, now=NOW + timedelta(minutes=5), settings=settings, registry=registry)
    invoice = db[settings.collection("invoices")].find_one({"_id": "acme:2026-11"})
    assert first + report.tokens_billed == 6_000 == sum(line["tokens"] for line in invoice["lines"])
    assert ledger.count_documents({}) == 3


@pytest.mark.parametrize(
    ("collection", "keys", "theirs"),
    [
        ("invoices", [("org", ASCENDING), ("status", ASCENDING)], {}),  # one draft an org
        ("quota", [("period", ASCENDING)], {"period": "2026-11"}),  # one decision a month
        ("counters", [("value", ASCENDING)], {"value": 1}),  # the build tickets' counter
    ],
)
def test_no_write_refused_by_a_unique_index_not_the_chores_passes_for_done(
    db, settings, registry, collection, keys, theirs
):
    """Review: an upsert refused that way was taken for "a later draft or decision stands":
    with a unique `{org, status}` on the invoices, November's draft was never written, the
    run ended ok and the quota read 0 tokens used. Every write of the chore now says so."""
    db[settings.collection(collection)].create_index(keys, name="dba", unique=True)
    db[settings.collection(collection)].insert_one({"_id": "dba's", **theirs})
    db.tasks.insert_one(ai_runner("oct", ended=NOW - timedelta(days=40), tokens=1_000))
    db.tasks.insert_one(ai_runner("nov", ended=NOW - timedelta(hours=1), tokens=2_000))
    with pytest.raises(ForeignUniqueIndex, match=settings.collection(collection)):
        run_chore(db, now=NOW, settings=settings, registry=registry)
    db[settings.collection(collection)].drop_index("dba")
    db[settings.collection(collection)].delete_one({"_id": "dba's"})
    run_chore(db, now=NOW + timedelta(minutes=5), settings=settings, registry=registry)
    invoices = db[settings.collection("invoices")]
    assert {i["_id"]: i["total_micros"] > 0 for i in invoices.find({})} == {
        "acme:2026-10": True,
        "acme:2026-11": True,
    }
    decision = db[settings.collection("quota")].find_one({"_id": "acme"})
    assert decision is not None and decision["used_tokens"] == 2_000


def test_a_duplicate_id_is_still_an_answer_written_already(db):
    """Two runs that computed the same entry: the second's insert is refused on `_id`, the
    entry is there, and nothing is raised (the refused indexes are returned)."""
    entries = db.entries
    assert insert_ignoring_duplicates(entries, [{"_id": "r:1"}, {"_id": "r:2"}]) == set()
    assert insert_ignoring_duplicates(entries, [{"_id": "r:2"}, {"_id": "r:3"}]) == {0}
    assert sorted(d["_id"] for d in entries.find({})) == ["r:1", "r:2", "r:3"]


@pytest.mark.parametrize("preference", ["secondaryPreferred", "secondary", "nearest"])
def test_every_read_goes_to_the_primary_whatever_the_url_says(settings, preference):
    """A settle reads the dirty marks, then the ledger entries no draft holds: from a
    secondary lagging behind the primary, the draft was built without them and the mark
    deleted, an invoice and a quota decision short until the next usage or full pass."""
    client: MongoClient[Any] = MongoClient(
        f"mongodb://localhost:1/?readPreference={preference}", connect=False
    )
    try:
        collections = Collections.of(client["main"], settings)
        for collection in (collections.ledger, collections.dirty, collections.invoices):
            assert collection.read_preference == ReadPreference.PRIMARY
        assert collections.tasks.read_preference == ReadPreference.PRIMARY
        assert collections.ledger.codec_options.tz_aware  # as the chore decodes
    finally:
        client.close()


def test_no_list_of_orgs_is_read_with_distinct(db, settings, registry, monkeypatch):
    """`distinct` answers in one document, at most 16 MB on a server: a few hundred
    thousand org ids and the fan-out, the quota pass over known orgs and the suggestions
    of `did you mean` failed. They group instead (mongomock has no such limit, so
    `distinct` is refused here)."""
    from chores.billing.known_orgs import known_alike
    from chores.quota.decisions import Quota
    from chores.tasks import orgs_with_new_usage

    db.tasks.insert_many(
        [
            ai_runner(ObjectId(), ended=NOW - timedelta(hours=1), org=org)
            for org in ("acme", "globex", "initech")
        ]
    )
    run_chore(db, now=NOW, settings=settings, registry=registry)
    db[settings.collection("plans")].insert_one({"_id": "umbrella", "token_limit": 10})
    # an org inside an array counts as `distinct` counted it (review: an edited claim)
    db[settings.collection("pending")].insert_one({"_id": "edited", "org": ["hooli"]})

    def refused(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"distinct on {self.name}: one answer of at most 16 MB")

    monkeypatch.setattr(mongomock.collection.Collection, "distinct", refused)
    collections = Collections.of(db, settings)
    assert Quota(collections, settings).known_orgs() == ["acme", "globex", "initech", "umbrella"]
    assert known_alike(collections, "acmee") == ["acme"]
    assert known_alike(collections, "globx", period="2026-11") == ["globex"]
    later = NOW + timedelta(minutes=5)
    assert orgs_with_new_usage(db, settings, now=later, full=True).orgs == [
        "acme",
        "globex",
        "hooli",
        "initech",
    ]


def test_the_decisions_of_every_known_org_are_made_a_batch_at_a_time(db, settings, monkeypatch):
    """Each fan-out decides every known org again: one `$in` naming them all grew with the
    orgs toward the server's 16 MB a command (48 MB a message), on every tick."""
    from chores.quota.decisions import Quota

    monkeypatch.setattr(Quota, "ORGS_PER_BATCH", 40)  # 1,000 in production
    orgs = [f"org-{n:05d}" for n in range(100)]
    named: list[int] = []
    find = mongomock.collection.Collection.find

    def counted(self: Any, query: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(query, dict) and isinstance(query.get("_id"), dict):
            named.append(len(query["_id"].get("$in", ())))
        return find(self, query, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "find", counted)
    states = Quota(Collections.of(db, settings), settings).decide(orgs, NOW)
    assert sorted(states) == orgs
    assert db[settings.collection("quota")].count_documents({}) == len(orgs)
    assert named and max(named) == 40


def test_an_invoice_past_64_bits_is_refused_in_one_error_and_the_other_orgs_are_billed(
    db, registry
):
    """Outside hunt: sums past what MongoDB stores (a ceiling and a price far beyond real
    usage) stopped the write of every draft with pymongo's OverflowError: no invoice and no
    decision for any org of the run, at every run."""
    from chores.core.exceptions import InvoiceTooLarge
    from chores.core.settings import MAX_TOKENS_CEILING, Settings
    from pricing import Registry

    with pytest.raises(ValueError, match="less than or equal"):
        Settings(mongo_url="mongomock://test", max_tokens_per_run=MAX_TOKENS_CEILING + 1)
    settings = Settings(mongo_url="mongomock://test", max_tokens_per_run=MAX_TOKENS_CEILING)
    data = registry.model_dump(mode="json")
    for model in data["models"]:
        if model["id"] == "gpt-4o":  # $99,999 per million: the largest rate a registry takes
            for price in model["prices"]:
                price.update(input="99999", cached_input=None, output="99999")
    pricey = Registry.model_validate(data)
    ended = NOW - timedelta(hours=1)
    huge = ai_runner("h1", ended=ended, org="huge", model="gpt-4o", tokens=MAX_TOKENS_CEILING)
    db.tasks.insert_many([huge, ai_runner("s1", ended=ended, org="small")])
    for _ in range(2):  # every run says so; nothing else is held up
        with pytest.raises(InvoiceTooLarge, match=r"'huge' for 2026-11 would hold .*amount"):
            run_chore(db, now=NOW, settings=settings, registry=pricey)
        invoices = {i["_id"]: i for i in db.billing_invoices.find()}
        assert list(invoices) == ["small:2026-11"] and invoices["small:2026-11"]["total_micros"]
        assert db.billing_ledger.count_documents({"org": "huge"}) == 1  # kept in the ledger
        assert db.billing_quota.find_one({"_id": "small"})["state"] == "ok"
        assert db.billing_dirty.count_documents({"org": "huge"}) == 1  # built again next run


def test_a_draft_past_a_documents_16_mb_is_refused_in_one_error_and_the_others_are_billed(
    db, settings, registry, monkeypatch
):
    """Outside hunt: a draft keeps a usage group per model name, key source and day, and
    4,500 model names over a month passed MongoDB's 16 MiB a document (a server refuses
    the write, and with it every draft of the run). The limit is lowered here: mongomock
    stores any size."""
    from chores.billing import invoices
    from chores.core.exceptions import InvoiceTooLarge

    monkeypatch.setattr(invoices, "MAX_DRAFT_BYTES", 20_000)
    ended = NOW - timedelta(hours=1)
    names = [ai_runner(f"m{n}", ended=ended, org="wild", model=f"m-{n:04d}") for n in range(80)]
    db.tasks.insert_many([*names, ai_runner("s1", ended=ended, org="small")])
    with pytest.raises(InvoiceTooLarge, match=r"'wild' for 2026-11 would take [\d,]+ bytes"):
        run_chore(db, now=NOW, settings=settings, registry=registry)
    assert [i["_id"] for i in db.billing_invoices.find()] == ["small:2026-11"]
    assert db.billing_ledger.count_documents({"org": "wild"}) == 80


def test_a_draft_refused_for_its_size_holds_up_no_other_org_run_after_run(
    db, settings, registry, monkeypatch
):
    """Review: with more unfolded entries than a build pass reads, the refused draft was
    asked for again and again (another org's draft rewritten each pass: the run never
    ended), and every other org's marks were kept, piling up run after run."""
    from chores.billing import invoices
    from chores.core.exceptions import InvoiceTooLarge

    monkeypatch.setattr(invoices, "MAX_DRAFT_BYTES", 20_000)
    monkeypatch.setattr(invoices.Invoices, "FOLD_LIMIT", 5)
    passes = 0
    build_pass = invoices.Invoices._build_pass

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal passes
        passes += 1
        assert passes < 100, "a build pass after another, without end"
        return build_pass(self, *args, **kwargs)

    monkeypatch.setattr(invoices.Invoices, "_build_pass", counted)
    ended = NOW - timedelta(hours=1)
    wild = [ai_runner(f"m{n}", ended=ended, org="wild", model=f"m-{n:04d}") for n in range(80)]
    db.tasks.insert_many([*wild, ai_runner("s1", ended=ended, org="small")])
    for hour in range(3):
        now = NOW + timedelta(hours=hour)
        db.tasks.insert_one(ai_runner(f"s-{hour}", ended=now - timedelta(minutes=1), org="small"))
        with pytest.raises(InvoiceTooLarge):
            run_chore(db, now=now, settings=settings, registry=registry)
        small = db.billing_invoices.find_one({"_id": "small:2026-11"})
        assert small["runs"] == hour + 2  # every run bills small's new runner
        assert db.billing_dirty.count_documents({"org": "small"}) == 0  # none piles up
    wild_draft = db.billing_invoices.find_one({"_id": "wild:2026-11"})
    assert wild_draft is None or wild_draft["runs"] < 80  # what fitted
    for days in (10, 11, 12):  # each finalize marks it; the runs keep one mark of it
        later = NOW + timedelta(days=days)
        assert finalize_invoices(db, now=later, settings=settings) == ["small:2026-11"] * (
            days == 10
        )
        with pytest.raises(InvoiceTooLarge):
            run_chore(db, now=later, settings=settings, registry=registry)
        assert db.billing_dirty.count_documents({"org": "wild"}) == 1
    assert db.billing_invoices.find_one({"_id": "wild:2026-11"})["status"] == "draft"


def test_a_run_whose_sums_pass_64_bits_keeps_its_record_capped(env_db, registry):
    """Review: each invoice fitting, the run's own total did not, and its record was
    refused with pymongo's OverflowError after the work was done; `chore status` shows
    the capped total with a `+`."""
    from click.testing import CliRunner

    from chores import get_settings
    from chores.cli import main
    from chores.core.settings import MAX_INT64
    from chores.run.chore import run_document
    from chores.run.report import OrgSummary

    db = env_db
    report = run_chore(db, now=NOW, settings=get_settings(), registry=registry)
    report.tokens_billed = 2**63 + 2
    report.orgs = {f"org{n}": OrgSummary(tokens=2**62 + 1) for n in range(2)}
    record = run_document(report)
    assert (record["tokens_billed"], record["capped"]) == (MAX_INT64, ["tokens_billed"])
    assert [o["tokens"] for o in record["orgs"]] == [2**62 + 1, 2**62 + 1]
    db.billing_runs.delete_many({})
    db.billing_runs.insert_one(record)
    shown = CliRunner().invoke(main, ["status"], env={"COLUMNS": "200"})
    assert f"{MAX_INT64:,}+" in shown.output, shown.output


class DeletedInBetween:
    """A collection whose writer deletes a refused document between the insert that was
    refused and the read that checks it (`meter_org` deleting the due mark `meter_all`
    found there)."""

    def __init__(self, collection: Any, doc_id: str) -> None:
        self.collection, self.doc_id, self.name = collection, doc_id, collection.name

    def insert_many(self, *args: Any, **kwargs: Any) -> Any:
        return self.collection.insert_many(*args, **kwargs)

    def bulk_write(self, *args: Any, **kwargs: Any) -> Any:
        return self.collection.bulk_write(*args, **kwargs)

    def find(self, *args: Any, **kwargs: Any) -> Any:
        self.collection.delete_one({"_id": self.doc_id})
        return self.collection.find(*args, **kwargs)


def test_a_document_deleted_after_its_duplicate_was_refused_is_inserted_again(db):
    """Review: the fan-out's due mark for acme was there, refused as a duplicate, and
    deleted by acme's run before the check read it: taken for a foreign unique index, the
    tick metered no org and told the operator to drop an index that did not exist."""
    due = db.due
    due.insert_one({"_id": "acme"})
    racing = DeletedInBetween(due, "acme")
    assert insert_ignoring_duplicates(racing, [{"_id": "acme"}, {"_id": "beta"}]) == set()
    assert sorted(d["_id"] for d in due.find({})) == ["acme", "beta"]


def test_a_draft_removed_after_its_upsert_was_refused_is_written_again(db):
    """Review: a run's insert of a draft another run had just inserted was refused, and a
    person removed that draft before the check read it: taken for a foreign unique index,
    the run stopped and told the operator to drop an index that did not exist. The
    build is written instead (a removed draft is rebuilt whole)."""
    invoices = db.invoices
    invoices.insert_one({"_id": "acme:2026-11", "status": "draft", "build_ticket": 7})
    racing = DeletedInBetween(invoices, "acme:2026-11")
    where = {"_id": "acme:2026-11", "status": "draft", "build_ticket": None}
    assert update_where(racing, [(where, {"build_ticket": 8}, True)]) == (set(), 0)
    assert invoices.find_one({"_id": "acme:2026-11"})["build_ticket"] == 8
