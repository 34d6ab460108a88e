"""Batched, idempotent writes: one round trip per batch, duplicate keys expected.

Every write the chore makes is safe to repeat, and unique `_id`s are how
concurrent runs agree: a duplicate key is an answer ("somebody wrote it first",
"that invoice is final"), not an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter
from pymongo import ReplaceOne, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from chores.core.db import Doc
from chores.core.documents import check_shape
from chores.core.exceptions import ForeignUniqueIndex

DUPLICATE_KEY = 11000


def _duplicates(exc: BulkWriteError) -> set[int]:
    """Indexes of the operations refused as duplicates; re-raises any other error."""
    errors = exc.details.get("writeErrors", [])
    if any(error.get("code") != DUPLICATE_KEY for error in errors):
        raise exc
    return {int(error["index"]) for error in errors}


def insert_ignoring_duplicates(collection: Any, documents: Sequence[Doc]) -> set[int]:
    """Insert in one round trip; returns the indexes already present.

    A document refused as a duplicate is taken for written only when its `_id` is stored
    (one more read, for those only): a unique index on other keys (one a person added)
    refusing a new document would otherwise lose it silently, a ledger entry and its
    tokens with it. That raises `ForeignUniqueIndex` instead; the documents written are
    kept, and the run that wrote them is repeated safely once the index is gone."""
    if not documents:
        return set()
    try:
        collection.insert_many(list(documents), ordered=False)
    except BulkWriteError as exc:
        refused = _duplicates(exc)
    else:
        return set()
    ids = [documents[i].get("_id") for i in sorted(refused)]
    stored = {doc["_id"] for doc in collection.find({"_id": {"$in": ids}}, {"_id": 1})}
    lost = [doc_id for doc_id in ids if doc_id not in stored]
    if lost:
        raise ForeignUniqueIndex(
            f"{collection.name}: {len(lost)} new document(s) refused by a unique index that "
            f"is not the chore's (first: _id {str(lost[0])[:80]!r}); nothing of them was "
            f"written. Drop that index (`chore db indexes` lists the chore's), then run again."
        )
    return refused


def replace_where(collection: Any, replacements: Sequence[tuple[Doc, Doc]]) -> set[int]:
    """Upsert each `(filter, document)` in one round trip; returns the indexes whose
    filter did not match an existing `_id` (the upsert then hit a duplicate key)."""
    if not replacements:
        return set()
    operations = [ReplaceOne(flt, doc, upsert=True) for flt, doc in replacements]
    try:
        collection.bulk_write(operations, ordered=False)
    except BulkWriteError as exc:
        return _duplicates(exc)
    return set()


def update_where(collection: Any, updates: Sequence[tuple[Doc, Doc, bool]]) -> tuple[set[int], int]:
    """Set the fields of each `(filter, fields, insert)` in one round trip, leaving the
    document's other fields alone; with `insert`, a filter that matches nothing inserts
    (an upsert). Returns the indexes of the inserts refused as duplicate keys (their
    filter did not match an existing `_id`), and how many updates without `insert`
    matched nothing (which ones is not said: the server only counts them)."""
    if not updates:
        return set(), 0
    operations = [
        UpdateOne(flt, {"$set": fields}, upsert=insert) for flt, fields, insert in updates
    ]
    try:
        result = collection.bulk_write(operations, ordered=False)
    except BulkWriteError as exc:
        refused = _duplicates(exc)
        done = int(exc.details.get("nMatched", 0)) + int(exc.details.get("nUpserted", 0))
    else:
        refused = set()
        done = result.matched_count + result.upserted_count
    return refused, len(operations) - done - len(refused)


def upsert_as_written(
    collection: Any,
    doc_id: str,
    as_written: Doc,
    update: Doc,
    *,
    shape: TypeAdapter[Any],
    remedy: str,
) -> Doc:
    """`update` (an upsert) of the document `doc_id` while its values are as the chore
    writes them (`as_written`, a filter); the document after, in one round trip.

    One edited by hand fails the filter, and the upsert then collides with its `_id`:
    the stored document is read and refused (`check_shape`: a `MalformedDocument` saying
    `remedy`), never `$inc` or `$max` on text. So does the first write of two callers at
    once on a new database (a server retries no such upsert): the document there holds
    what the other inserted, and the write is tried again."""

    def write() -> Doc:
        done: Doc = collection.find_one_and_update(
            {"_id": doc_id, **as_written}, update, upsert=True, return_document=ReturnDocument.AFTER
        )
        return done

    try:
        return write()
    except DuplicateKeyError:  # edited by hand, or the other caller's first insert is there
        there = collection.find_one({"_id": doc_id}) or {}
        check_shape(shape, there, collection=collection.name, remedy=remedy)
    return write()
