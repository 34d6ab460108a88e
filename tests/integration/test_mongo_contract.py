"""Contract: the exact MongoDB behaviours the chore relies on.

Marked `mongo`. Runs against a real server when `MONGO_URL` is set (for example
the docker-compose `mongo` service), and against mongomock otherwise, so a
difference between the two shows up as a failure on a real server.
"""

from __future__ import annotations

import copy
import os
import uuid
from datetime import UTC, datetime

import mongomock
import pymongo
import pytest
from pymongo.errors import BulkWriteError, DuplicateKeyError

from chores import Settings, finalize_invoices, run_chore
from chores.core.db import ensure_indexes

from support import NOW

pytestmark = pytest.mark.mongo


@pytest.fixture
def mdb():
    url = os.environ.get("MONGO_URL")
    name = f"chore_contract_{uuid.uuid4().hex[:8]}"
    if url and not url.startswith("mongomock://"):
        client = pymongo.MongoClient(url, tz_aware=True, serverSelectionTimeoutMS=3000)
        yield client[name]
        client.drop_database(name)
        client.close()
    else:
        yield mongomock.MongoClient(tz_aware=True)[name]


def test_unordered_insert_reports_duplicates_by_index_and_inserts_the_rest(mdb):
    mdb.c.insert_many([{"_id": "a"}, {"_id": "b"}])
    with pytest.raises(BulkWriteError) as caught:
        mdb.c.insert_many([{"_id": "a"}, {"_id": "x"}, {"_id": "b"}, {"_id": "y"}], ordered=False)
    errors = caught.value.details["writeErrors"]
    assert sorted((e["index"], e["code"]) for e in errors) == [(0, 11000), (2, 11000)]
    assert sorted(d["_id"] for d in mdb.c.find()) == ["a", "b", "x", "y"]


def test_upsert_with_a_non_matching_filter_on_an_existing_id_raises_duplicate_key(mdb):
    mdb.inv.insert_one({"_id": "o:2026-10", "status": "final"})
    with pytest.raises(DuplicateKeyError):
        mdb.inv.replace_one(
            {"_id": "o:2026-10", "status": {"$ne": "final"}}, {"status": "draft"}, upsert=True
        )
    assert mdb.inv.find_one({"_id": "o:2026-10"})["status"] == "final"


def test_null_matches_missing_and_null_but_not_values(mdb):
    mdb.l.insert_many([{"_id": 1, "booked": None}, {"_id": 2}, {"_id": 3, "booked": "2026-11"}])
    assert sorted(d["_id"] for d in mdb.l.find({"booked": None})) == [1, 2]


def test_not_gte_lowest_finds_missing_and_garbage_stamps(mdb):
    """`Source._changed`: a stamp at or after the cursor, or none to order by (missing, null,
    not a number, NaN, -inf). NaN is a number to `$type`, and never `$gte` anything."""
    from chores.metering.source import LOWEST_STAMP

    mdb.t.insert_many(
        [
            {"_id": 1, "s": 5.0},
            {"_id": 2, "s": "x"},
            {"_id": 3},
            {"_id": 4, "s": None},
            {"_id": 5, "s": 7},
            {"_id": 6, "s": float("nan")},
            {"_id": 7, "s": float("-inf")},
            {"_id": 8, "s": float("inf")},
            {"_id": 9, "s": -5.0},
        ]
    )
    query = {"$or": [{"s": {"$gte": 6}}, {"s": {"$not": {"$gte": LOWEST_STAMP}}}]}
    assert sorted(d["_id"] for d in mdb.t.find(query)) == [2, 3, 4, 5, 6, 7, 8]


def test_group_on_ifnull_with_sum_and_add_to_set(mdb):
    mdb.l.insert_many(
        [
            {"org": "a", "booked": None, "p": "2026-11", "n": 1, "r": "x"},
            {"org": "a", "booked": "2026-11", "p": "2026-10", "n": 2, "r": "y"},
            {"org": "a", "booked": None, "p": "2026-11", "n": 4, "r": "x"},
        ]
    )
    rows = list(
        mdb.l.aggregate(
            [
                {"$match": {"org": {"$in": ["a"]}}},
                {
                    "$group": {
                        "_id": {"period": {"$ifNull": ["$booked", "$p"]}},
                        "n": {"$sum": "$n"},
                        "r": {"$addToSet": "$r"},
                    }
                },
            ]
        )
    )
    assert len(rows) == 1 and rows[0]["n"] == 7 and sorted(rows[0]["r"]) == ["x", "y"]


def test_sum_skips_what_is_no_number_and_is_number_counts_it(mdb):
    """What `Invoices.ledger_usage` relies on to refuse an entry edited by hand: `$sum`
    skips text, null and a missing field in silence; `$isNumber` (MongoDB 4.4) tells."""
    mdb.l.insert_many([{"g": 1, "n": 1}, {"g": 1, "n": "5"}, {"g": 1, "n": None}, {"g": 1}])
    summable = {"$cond": [{"$and": [{"$isNumber": "$n"}]}, 0, 1]}
    [row] = mdb.l.aggregate(
        [{"$group": {"_id": "$g", "n": {"$sum": "$n"}, "unsummed": {"$sum": summable}}}]
    )
    assert (row["n"], row["unsummed"]) == (1, 3)


@pytest.mark.parametrize("edited", ["text", None, 7.0, [7]])
def test_a_whole_number_only_upsert_on_an_edited_value_raises_duplicate_key(mdb, edited):
    """What the draft-build counter and the cursors rely on: with a value edited to no
    whole number, the write's filter matches nothing and its upsert collides with the
    `_id`, rather than `$inc` or `$max` meeting it."""
    mdb.counters.insert_one({"_id": "draft_builds", "value": edited})
    with pytest.raises(DuplicateKeyError):
        mdb.counters.find_one_and_update(
            {
                "_id": "draft_builds",
                "$or": [{"value": {"$type": t}} for t in ("int", "long")],
                "value": {"$not": {"$type": "array"}},  # `$type` matches a list holding one
            },
            {"$inc": {"value": 1}},
            upsert=True,
        )
    assert mdb.counters.find_one({"_id": "draft_builds"})["value"] == edited


def test_max_upsert_only_moves_forward(mdb):
    mdb.cur.update_one({"_id": "*"}, {"$max": {"stamp": 10.0}}, upsert=True)
    mdb.cur.update_one({"_id": "*"}, {"$max": {"stamp": 5.0}}, upsert=True)
    assert mdb.cur.find_one({"_id": "*"})["stamp"] == 10.0


def test_eq_treats_operator_looking_strings_as_data(mdb):
    mdb.t.insert_many([{"o": '{"$ne": null}'}, {"o": "acme"}])
    assert [d["o"] for d in mdb.t.find({"o": {"$eq": '{"$ne": null}'}})] == ['{"$ne": null}']


def test_full_run_and_finalize_on_this_server(mdb, fixture_docs, registry):
    settings = Settings(mongo_url="mongomock://contract", batch_size=3)
    ensure_indexes(mdb, settings, source=True)
    mdb.tasks.insert_many(fixture_docs["tasks"])
    mdb.findings.insert_many(fixture_docs["findings"])
    run_chore(mdb, now=NOW, registry=registry, settings=settings)
    acme = mdb.billing_invoices.find_one({"_id": "ws-acme:2026-11"})
    assert sum(line["tokens"] for line in acme["lines"]) == 57_700
    assert acme["period_start"] == datetime(2026, 11, 1, tzinfo=UTC)
    done = finalize_invoices(mdb, now=datetime(2026, 12, 5, tzinfo=UTC), settings=settings)
    assert sorted(done) == ["ws-acme:2026-11", "ws-beta:2026-11"]
    again = run_chore(
        mdb, now=datetime(2026, 12, 5, tzinfo=UTC), registry=registry, settings=settings
    )
    assert again.tokens_billed == 0
    assert mdb.billing_invoices.find_one({"_id": "ws-acme:2026-11"})["lines"] == acme["lines"]


def test_the_fan_out_lists_orgs_past_the_16_mb_a_distinct_answers_in(mdb):
    """`distinct` answers in one document (16 MB on a server): three workspace ids of 6 MB
    made it fail, and every fan-out with it. Grouping streams one org per document, and
    ids longer than an org id may be are not even grouped (or sent)."""
    from chores.core.db import Collections
    from chores.metering.source import Source
    from chores.tasks import orgs_with_new_usage

    stamp = NOW.timestamp() - 5
    runners = [{"workspace_id": "acme"}] + [
        {"workspace_id": "h" * 6_000_000 + str(n)} for n in range(3)
    ]
    for n, context in enumerate(runners):
        mdb.tasks.insert_one(
            {
                "_id": f"r{n}",
                "name": "ai",
                "last_updated_db": stamp,
                "context": {**context, "ai_tokens": 5},
            }
        )
    settings = Settings(redis_url=None)
    orgs, newest, _ = orgs_with_new_usage(mdb, settings, now=NOW, full=True)
    assert orgs == ["acme"] and newest == stamp
    source = Source(Collections.of(mdb, settings), ai_task_names=["ai"], batch_size=10)
    assert source.orgs_changed(None) == ["acme"]


def runner(_id: str, org: str, **fields: object) -> dict[str, object]:
    """A finished AI runner of 1,000 tokens, `fields` set over it."""
    context = {"workspace_id": org, "ai_model": "gpt-4o-mini", "ai_tokens": 1_000}
    return {
        "_id": _id,
        "name": "ai",
        "status": "SUCCESS",
        "last_updated_db": 1.0e9,
        "end_time": datetime(2026, 11, 20, tzinfo=UTC),
        "context": context,
        **fields,
    }


def test_a_runner_python_cannot_decode_is_an_anomaly_not_a_stopped_run(mdb, registry):
    """A year-10,000 end time and a workspace id that is not UTF-8, as a server stores
    them: pymongo raised on the batch that held them, and every run stopped there. A
    server is sent the raw BSON and the chore reads it through a plain `MongoClient()`;
    mongomock, which keeps Python objects, is given what the chore's reads decode it to."""
    from bson import decode, encode
    from bson.codec_options import CodecOptions
    from bson.datetime_ms import DatetimeMS
    from bson.raw_bson import RawBSONDocument

    from chores.core.db import reading

    raw = [
        encode(runner("far", "acme", end_time=DatetimeMS(2**62))),
        encode(runner("bytes", "ac\x01me")).replace(b"ac\x01me", b"ac\xffme"),
    ]
    server = isinstance(mdb, pymongo.database.Database)
    if server:
        odd = [RawBSONDocument(b) for b in raw]
        db = pymongo.MongoClient(os.environ["MONGO_URL"])[mdb.name]  # default options
    else:
        odd = [decode(b, reading(CodecOptions())) for b in raw]
        db = mdb
    mdb.tasks.insert_many([runner("good", "acme"), *odd])
    report = run_chore(db, now=NOW, registry=registry, settings=Settings(redis_url=None))
    assert report.error is None and report.tokens_billed == 1_000
    assert report.anomalies == {"bad_end_time": 1, "no_org": 1}
    if server:
        db.client.close()


def test_a_runner_whose_org_id_is_not_utf8_is_recorded_by_the_fan_out_not_listed(mdb):
    """The fan-out listed an org id that is not UTF-8 (read as U+FFFD) as an org: its run
    queried the id as decoded, which a server never matches to the stored bytes, and
    nothing ever recorded the runner. The fan-out lists it as no org, and reads every
    runner whose id is none of the orgs it listed as a runner of no org."""
    from bson import decode, encode
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    from chores.core.db import reading, utc_view
    from chores.run.orgless import record_orgless
    from chores.tasks import orgs_with_new_usage

    raw = encode(runner("bytes", "ac\x01me")).replace(b"ac\x01me", b"ac\xffme")
    server = isinstance(mdb, pymongo.database.Database)
    odd = RawBSONDocument(raw) if server else decode(raw, reading(CodecOptions()))
    mdb.tasks.insert_many([runner("good", "acme"), odd])
    db = utc_view(mdb)  # as the worker's own client reads (`connect`)
    settings = Settings(redis_url=None)

    listed = orgs_with_new_usage(db, settings, now=NOW, full=True)
    assert listed.orgs == ["acme"] and listed.not_utf8
    recorded = record_orgless(db, settings, since=None, now=NOW, besides_orgs=listed.orgs)
    assert recorded is not None and recorded.anomalies == {"no_org": 1}
    (anomaly,) = db.billing_anomalies.find({"org": None})
    assert anomaly["kind"] == "no_org" and anomaly["runner_id"] == "str:'bytes'"


def test_update_where_reports_refused_upserts_and_updates_that_matched_nothing(mdb):
    """`writes.update_where`, the compare-and-set of drafts and quota decisions: a bulk
    error's duplicate keys and its `nMatched`/`nUpserted` counts, as the server reports them."""
    from chores.core.writes import update_where

    mdb.inv.insert_many([{"_id": "final", "status": "final"}, {"_id": "draft", "v": 1}])
    refused, unmatched = update_where(
        mdb.inv,
        [
            ({"_id": "final", "status": {"$ne": "final"}}, {"v": 2}, True),  # final: refused
            ({"_id": "draft", "v": 1}, {"v": 2}, False),  # matched
            ({"_id": "gone", "v": 1}, {"v": 3}, False),  # matched nothing
            ({"_id": "new", "status": {"$ne": "final"}}, {"v": 1}, True),  # inserted
        ],
    )
    assert (refused, unmatched) == ({0}, 1)
    stored = {doc["_id"]: doc for doc in mdb.inv.find()}
    assert stored["final"] == {"_id": "final", "status": "final"}
    assert stored["draft"]["v"] == 2 and stored["new"]["v"] == 1 and "gone" not in stored
    # Without a refusal the counts come from the result instead.
    assert update_where(mdb.inv, [({"_id": "gone"}, {"v": 1}, False)]) == (set(), 1)


def test_replace_where_reports_the_upserts_a_final_document_refused(mdb):
    from chores.core.writes import replace_where

    mdb.inv.insert_one({"_id": "final", "status": "final", "total": 5})
    refused = replace_where(
        mdb.inv,
        [
            ({"_id": "final", "status": {"$ne": "final"}}, {"status": "draft", "total": 9}),
            ({"_id": "new", "status": {"$ne": "final"}}, {"status": "draft", "total": 1}),
        ],
    )
    assert refused == {0}
    assert mdb.inv.find_one({"_id": "final"})["total"] == 5
    assert mdb.inv.find_one({"_id": "new"})["total"] == 1


def test_an_inc_upsert_returns_each_caller_the_next_ticket(mdb):
    """`Invoices._ticket`: the first call creates the counter at 1, each next one adds 1."""
    from pymongo import ReturnDocument

    tickets = [
        mdb.counters.find_one_and_update(
            {"_id": "draft_builds"},
            {"$inc": {"value": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )["value"]
        for _ in range(3)
    ]
    assert tickets == [1, 2, 3]


def test_a_plain_client_and_a_now_with_microseconds_bill_as_whole_seconds_do(
    mdb, fixture_docs, registry
):
    """A worker's `now` has microseconds, which a server keeps only to the millisecond, and
    another program may pass a database of a plain `MongoClient()` (naive datetimes): runs,
    a rerun and a finalize give the same invoices as whole seconds on a UTC client."""
    from datetime import timedelta

    server = isinstance(mdb, pymongo.database.Database)
    if server:
        plain_client = pymongo.MongoClient(os.environ["MONGO_URL"])  # default options
    else:
        plain_client = mongomock.MongoClient()
    plain = plain_client[f"{mdb.name}_plain"]
    settings = Settings(redis_url=None, batch_size=3)
    odd = timedelta(microseconds=123_456)

    def bill(db, offset):
        db.tasks.insert_many(copy.deepcopy(fixture_docs["tasks"]))
        db.findings.insert_many(copy.deepcopy(fixture_docs["findings"]))
        run_chore(db, now=NOW + offset, registry=registry, settings=settings)
        run_chore(db, now=NOW + offset + timedelta(seconds=1), registry=registry, settings=settings)
        month_end = datetime(2026, 12, 5, tzinfo=UTC) + offset
        finalized = finalize_invoices(db, now=month_end, settings=settings)
        again = run_chore(db, now=month_end, registry=registry, settings=settings)
        invoices = {
            doc["_id"]: (doc["status"], doc["total_micros"], doc["lines"])
            for doc in db.billing_invoices.find()
        }
        return sorted(finalized), again.tokens_billed, invoices

    try:
        whole = bill(mdb, timedelta(0))
        assert bill(plain, odd) == whole
        assert whole[0] == ["ws-acme:2026-11", "ws-beta:2026-11"] and whole[1] == 0
    finally:
        if server:
            plain_client.drop_database(plain.name)
            plain_client.close()


def test_an_index_the_reads_cannot_use_counts_as_missing(mdb):
    """A hidden index (MongoDB 4.4+: the planner ignores it), a partial one and one with a
    collation other than `simple` are reported in `index_information` as this check reads
    them, and counted missing. (mongomock keeps the partial filter only.)"""
    from chores.core.db import Collections, missing_source_indexes

    settings = Settings(mongo_url="mongomock://contract")
    server = isinstance(mdb, pymongo.database.Database)
    mdb.tasks.create_index(
        [("name", 1), ("last_updated_db", 1)],
        name="running_only",
        partialFilterExpression={"status": "RUNNING"},
    )
    expected = {"chore_name_stamp": "partial, with a filter its reads do not imply"}
    if server:
        mdb.tasks.create_index([("context.task_id", 1)], name="hidden_one", hidden=True)
        mdb.findings.create_index(
            [("extra_data.runner_id", 1)],
            name="caseless",
            collation={"locale": "en", "strength": 2},
        )
        expected |= {"chore_task_group": "hidden", "chore_spawn_runner": "with the collation 'en'"}
    # a partial filter every read implies counts (MongoDB 4.4 takes a plain equality)
    mdb.findings.create_index(
        [("extra_data.subagent_session_id", 1)],
        name="ai_only",
        partialFilterExpression={"_type": "ai"},
    )
    found = {
        index.name: index.unusable
        for index in missing_source_indexes(Collections.of(mdb, settings), settings)
    }
    assert {name: found.get(name) for name in expected} == expected
    assert "chore_spawn_session" not in found


def test_the_chores_keys_indexed_under_another_name_stop_no_run(mdb, fixture_docs, registry):
    """A server refuses an index whose keys another has under another name (code 85,
    `IndexOptionsConflict`): `ensure_indexes` leaves such an index as it is."""
    settings = Settings(mongo_url="mongomock://unused")
    mdb[settings.collection("dirty")].create_index([("org", 1)], name="by_dba")
    mdb.tasks.create_index([("name", 1), ("last_updated_db", 1)], name="theirs")
    ensure_indexes(mdb, settings, source=True)
    assert sorted(mdb[settings.collection("dirty")].index_information()) == ["_id_", "by_dba"]
    mdb.tasks.insert_many(copy.deepcopy(fixture_docs["tasks"]))
    mdb.findings.insert_many(copy.deepcopy(fixture_docs["findings"]))
    report = run_chore(mdb, now=NOW, settings=settings, registry=registry)
    assert report.tokens_billed > 0


def test_a_group_allowed_to_spill_to_disk_is_accepted(mdb):
    """Every `$group` of the chore passes `allowDiskUse` (servers before 6.0 fail a stage
    past 100 MB without it)."""
    mdb.l.insert_many([{"org": "a", "n": 1}, {"org": "a", "n": 2}, {"org": "b", "n": 3}])
    pipeline = [{"$group": {"_id": "$org", "n": {"$sum": "$n"}}}]
    rows = mdb.l.aggregate(pipeline, allowDiskUse=True)
    assert sorted((row["_id"], row["n"]) for row in rows) == [("a", 3), ("b", 3)]


def test_projecting_a_field_of_an_array_skips_what_is_no_document(mdb):
    """Quota reads an invoice's `lines.tokens`: an element that is no document (a line
    edited by hand to 1) is dropped by an inclusion and kept by an exclusion; mongomock
    raised AttributeError (chores/core/mongomock_compat.py)."""
    mdb.invoices.insert_one({"_id": "a", "status": "draft", "lines": [1, {"tokens": 5, "x": 0}]})
    included = mdb.invoices.find_one({"_id": "a"}, {"lines.tokens": 1})
    assert included == {"_id": "a", "lines": [{"tokens": 5}]}
    excluded = mdb.invoices.find_one({"_id": "a"}, {"lines.tokens": 0, "status": 0})
    assert excluded == {"_id": "a", "lines": [1, {"x": 0}]}
