"""Writes that stand in for a transaction (`chores.core.writes`): a duplicate is an
idempotent rerun, unless its document was removed meanwhile (written again) or the error is
another one (raised as itself); `update_where` applies every update of a batch and counts
those that matched nothing. Found untested by mutation testing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import mongomock
import pytest
from pydantic import TypeAdapter
from pymongo.errors import BulkWriteError

from chores import connect
from chores.core.db import Collections
from chores.core.exceptions import ForeignUniqueIndex
from chores.core.settings import Settings
from chores.core.writes import insert_ignoring_duplicates, update_where, upsert_as_written
from chores.quota.decisions import INVALID_PLAN, Quota

from support import flushed_redis_db

NOV = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def redis_url(redis_base_url):
    with flushed_redis_db(redis_base_url, 8) as url:
        yield url


def test_a_batch_of_invalid_plans_only_is_decided_with_the_mirror_on(redis_url):
    """With REDIS_URL set, a batch whose every org has an invalid plan (no decision to write,
    nothing to mirror) answers INVALID_PLAN, not a TypeError that stops the run."""
    settings = Settings(mongo_url=f"mongomock://writes-{uuid.uuid4().hex}", redis_url=redis_url)
    db = connect(settings)
    db.billing_plans.insert_one({"_id": "acme", "token_limit": "10M"})
    states = Quota(Collections.of(db, settings), settings).decide(["acme"], NOV)
    assert states == {"acme": INVALID_PLAN}


class VanishingAfterRefusal:
    """A collection whose stored duplicate is deleted by its writer right after the insert
    was refused (a due mark, a pending claim, a dirty mark: deleted once their work is done)."""

    def __init__(self, real):
        self._real, self.name, self.inserts = real, real.name, 0

    def insert_many(self, docs, ordered=False):
        self.inserts += 1
        try:
            return self._real.insert_many(docs, ordered=ordered)
        except BulkWriteError:
            self._real.delete_many({})  # its writer is done with it, meanwhile
            raise

    def find(self, *args, **kwargs):
        return self._real.find(*args, **kwargs)


def test_a_duplicate_deleted_meanwhile_is_inserted_again_not_a_foreign_index():
    """A mark refused as a duplicate and deleted by its writer before the check reads it is
    inserted again, not reported as a foreign unique index (an index that does not exist)."""
    real = mongomock.MongoClient()["main"]["billing_due"]
    real.insert_one({"_id": "acme"})
    coll = VanishingAfterRefusal(real)
    assert insert_ignoring_duplicates(coll, [{"_id": "acme", "n": 2}]) == set()
    assert real.find_one({"_id": "acme"}) == {"_id": "acme", "n": 2}
    assert coll.inserts == 2


class FailingWrites:
    """A collection whose server refuses an insert for another reason than a duplicate
    (code 121, document validation)."""

    name = "billing_ledger"

    def insert_many(self, docs, ordered=False):
        raise BulkWriteError({"writeErrors": [{"index": 0, "code": 121, "errmsg": "invalid"}]})

    def find(self, *args, **kwargs):
        return []


def test_a_write_error_other_than_a_duplicate_is_raised_as_itself():
    """A write refused by a validator (any error but E11000) is raised as itself, not retried
    and reported as a foreign unique index."""
    with pytest.raises(BulkWriteError):
        insert_ignoring_duplicates(FailingWrites(), [{"_id": "e1"}])


def test_update_where_counts_the_updates_that_matched_nothing():
    """The count of updates that matched nothing: the invoices read their drafts again
    (`_not_written`) only when it is not 0."""
    coll = mongomock.MongoClient()["main"]["billing_invoices"]
    coll.insert_many([{"_id": "a"}, {"_id": "b"}])
    assert update_where(coll, []) == (set(), 0)
    assert update_where(
        coll, [({"_id": "a"}, {"x": 1}, False), ({"_id": "b"}, {"x": 1}, False)]
    ) == (set(), 0)
    assert update_where(
        coll, [({"_id": "a"}, {"x": 2}, False), ({"_id": "z"}, {"x": 1}, False)]
    ) == (set(), 1)
    assert update_where(coll, [({"_id": "c"}, {"x": 1}, True)]) == (set(), 0)


def test_update_where_does_not_count_a_refused_insert_as_unmatched():
    """An upsert refused as a duplicate of a stored `_id` (a later draft stands) is refused,
    not also unmatched."""
    coll = mongomock.MongoClient()["main"]["billing_invoices"]
    coll.insert_one({"_id": "a", "build_ticket": 9})
    assert update_where(coll, [({"_id": "a", "build_ticket": {"$lte": 3}}, {"y": 1}, True)]) == (
        {0},
        0,
    )


def test_update_where_applies_the_updates_after_a_refused_insert():
    """An upsert refused as a duplicate does not stop the batch: the updates after it are
    written, and none is counted as unmatched."""
    coll = mongomock.MongoClient()["main"]["billing_invoices"]
    coll.insert_many([{"_id": "a", "build_ticket": 9}, {"_id": "b"}])
    refused, unmatched = update_where(
        coll,
        [
            ({"_id": "a", "build_ticket": {"$lte": 3}}, {"y": 1}, True),
            ({"_id": "b"}, {"y": 1}, False),
            ({"_id": "c"}, {"y": 1}, True),
            ({"_id": "d"}, {"y": 1}, True),
        ],
    )
    assert (refused, unmatched) == ({0}, 0)
    assert [d.get("y") for d in coll.find({}, sort=[("_id", 1)])] == [None, 1, 1, 1]


class VanishingBulk:
    """As VanishingAfterRefusal, for `bulk_write`: the draft a refused upsert collided
    with is removed (by a person: a draft is rebuilt whole) before the check reads it."""

    def __init__(self, real):
        self._real, self.name, self.writes = real, real.name, 0

    def bulk_write(self, operations, ordered=False):
        self.writes += 1
        try:
            return self._real.bulk_write(operations, ordered=ordered)
        except BulkWriteError:
            self._real.delete_many({})
            raise

    def find(self, *args, **kwargs):
        return self._real.find(*args, **kwargs)


def test_an_upsert_refused_by_a_draft_removed_meanwhile_is_written_again():
    """The draft an upsert collided with, removed before the check reads it, is written."""
    real = mongomock.MongoClient()["main"]["billing_invoices"]
    real.insert_one({"_id": "a", "build_ticket": 9})
    coll = VanishingBulk(real)
    assert update_where(coll, [({"_id": "a", "build_ticket": {"$lte": 3}}, {"y": 1}, True)]) == (
        set(),
        0,
    )
    assert real.find_one({"_id": "a"}) == {"_id": "a", "y": 1}
    assert coll.writes == 2


# --- found untested by mutation testing of chores/core/writes.py (h412) ------------------


class CountingCalls:
    """A mongomock collection that counts the calls of each method the writes make."""

    def __init__(self, real):
        self._real, self.name, self.calls = real, real.name, {}

    def __getattr__(self, method):
        def call(*args, **kwargs):
            self.calls[method] = self.calls.get(method, 0) + 1
            return getattr(self._real, method)(*args, **kwargs)

        return call


def foreign_indexed(name):
    """A collection with a unique index a person added on `k` (not the chore's), holding
    `{_id: "theirs", k: 1}`: any other document with `k: 1` is refused by it."""
    real = mongomock.MongoClient()["main"][name]
    real.create_index("k", unique=True, name="dba")
    real.insert_one({"_id": "theirs", "k": 1})
    return real


def test_a_write_refused_by_a_foreign_index_is_tried_once_more_then_reported():
    """writes.py: a refused write whose `_id` is not stored is written once more (its
    document may have been removed meanwhile); refused again, it is reported as a foreign
    unique index: two round trips each, the run stopped with nothing of it written, never
    a third try (every refused write of a batch would cost one more round trip)."""
    ledger = CountingCalls(foreign_indexed("billing_ledger"))
    with pytest.raises(ForeignUniqueIndex, match="billing_ledger: 1 write"):
        insert_ignoring_duplicates(ledger, [{"_id": "e1", "k": 1}])
    invoices = CountingCalls(foreign_indexed("billing_invoices"))
    with pytest.raises(ForeignUniqueIndex, match="billing_invoices: 1 write"):
        update_where(invoices, [({"_id": "acme:2026-11"}, {"k": 1}, True)])
    counters = CountingCalls(foreign_indexed("billing_counters"))
    with pytest.raises(ForeignUniqueIndex, match="billing_counters: 1 write"):
        upsert_as_written(
            counters, "builds", {}, {"$set": {"k": 1}}, shape=TypeAdapter(dict), remedy="-"
        )
    assert ledger.calls["insert_many"] == 2
    assert invoices.calls["bulk_write"] == 2
    assert counters.calls["find_one_and_update"] == 2
    for collection in (ledger, invoices, counters):
        assert collection.count_documents({}) == 1  # theirs only


class DuplicateAndInvalid:
    """A collection whose server refuses a batch of two inserts: the first as a duplicate
    of a stored `_id`, the second for another reason (code 121, document validation)."""

    name = "billing_ledger"

    def insert_many(self, docs, ordered=False):
        raise BulkWriteError(
            {
                "writeErrors": [
                    {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"},
                    {"index": 1, "code": 121, "errmsg": "Document failed validation"},
                ]
            }
        )

    def find(self, *args, **kwargs):
        return [{"_id": "e1"}]


def test_a_batch_refused_for_a_duplicate_and_another_error_raises_the_other_error():
    """One duplicate in a batch does not make the batch's other errors answers: a ledger
    entry refused by a validator beside a duplicate is raised as that error (what the
    operator must fix), not retried and reported as a foreign unique index."""
    with pytest.raises(BulkWriteError) as raised:
        insert_ignoring_duplicates(DuplicateAndInvalid(), [{"_id": "e1"}, {"_id": "e2"}])
    assert [e["code"] for e in raised.value.details["writeErrors"]] == [11000, 121]


def test_a_foreign_index_names_its_collection_count_and_first_id_cut_at_80_characters():
    """The operator reads which writes a unique index not the chore's refused: the
    collection, how many, and the first `_id` refused, its first 80 characters (an id can
    be as long as a runner's), so the line stays readable and points at a real document."""
    ledger = foreign_indexed("billing_ledger")
    first, second = "a" * 79 + "b" * 21, "c" * 100
    with pytest.raises(ForeignUniqueIndex) as raised:
        insert_ignoring_duplicates(ledger, [{"_id": first, "k": 1}, {"_id": second, "k": 1}])
    said = str(raised.value)
    assert said.startswith("billing_ledger: 2 write(s) refused by a unique index")
    assert f"(first: _id '{'a' * 79}b');" in said  # 79 a's and the first b: 80 characters
