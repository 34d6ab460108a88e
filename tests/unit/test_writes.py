"""Writes that stand in for a transaction (`chores.core.writes`): a duplicate is an
idempotent rerun, unless its document was removed meanwhile (written again) or the error is
another one (raised as itself); `update_where` applies every update of a batch and counts
those that matched nothing. Found untested by mutation testing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import mongomock
import pytest
from pymongo.errors import BulkWriteError

from chores import connect
from chores.core.db import Collections
from chores.core.settings import Settings
from chores.core.writes import insert_ignoring_duplicates, update_where
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
