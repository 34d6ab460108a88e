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


def _refused(
    collection: Any, exc: BulkWriteError, ids: Sequence[Any]
) -> tuple[set[int], list[int]]:
    """The operations refused as duplicate keys, by index: those whose `_id` is stored
    (`ids[i]`: the `_id` operation i inserts, None when it inserts nothing), and the
    others, in order. Any other error is raised.

    A duplicate key is an answer ("written already", "a later one stands") only when the
    `_id` is stored (one more read, for the refused only). A unique index on other keys
    (one a person added) refusing a write would otherwise lose it silently: a ledger entry
    and its tokens, an invoice, a quota decision."""
    errors = exc.details.get("writeErrors", [])
    if any(error.get("code") != DUPLICATE_KEY for error in errors):
        raise exc
    refused = sorted({int(error["index"]) for error in errors})
    wanted = [ids[i] for i in refused if ids[i] is not None]
    found = collection.find({"_id": {"$in": wanted}}, {"_id": 1}) if wanted else []
    stored = {doc["_id"] for doc in found}
    present = {i for i in refused if ids[i] is not None and ids[i] in stored}
    return present, [i for i in refused if i not in present]


def _foreign_index(collection: Any, lost: Sequence[Any]) -> ForeignUniqueIndex:
    """The error for writes of `lost` `_id`s refused by a unique index not the chore's:
    what was written is kept, and the run is repeated safely once the index is gone."""
    return ForeignUniqueIndex(
        f"{collection.name}: {len(lost)} write(s) refused by a unique index that is not the "
        f"chore's (first: _id {str(lost[0])[:80]!r}); nothing of them was written. Drop that "
        f"index (`chore db indexes` lists the chore's), then run again."
    )


def insert_ignoring_duplicates(collection: Any, documents: Sequence[Doc]) -> set[int]:
    """Insert in one round trip; returns the indexes already present.

    One refused as a duplicate whose `_id` is not stored (`_refused`) is inserted once more:
    its writer may have deleted it since (a due mark, a pending claim or a dirty mark is
    deleted once its work is done). Refused again and still not stored, a unique index that
    is not the chore's refused it: `ForeignUniqueIndex`."""
    present: set[int] = set()
    todo = list(range(len(documents)))
    for _ in range(2):
        if not todo:
            break
        batch = [documents[i] for i in todo]
        try:
            collection.insert_many(batch, ordered=False)
        except BulkWriteError as exc:
            stored, missing = _refused(collection, exc, [doc.get("_id") for doc in batch])
            present |= {todo[i] for i in stored}
            todo = [todo[i] for i in missing]
        else:
            todo = []
    if todo:
        raise _foreign_index(collection, [documents[i].get("_id") for i in todo])
    return present


def replace_where(collection: Any, replacements: Sequence[tuple[Doc, Doc]]) -> set[int]:
    """Upsert each `(filter, document)` in one round trip (each filter names its `_id`);
    returns the indexes whose filter did not match the stored `_id` (the upsert then hit
    a duplicate key, `_refused`)."""
    if not replacements:
        return set()
    operations = [ReplaceOne(flt, doc, upsert=True) for flt, doc in replacements]
    ids = [flt.get("_id") for flt, _ in replacements]
    refused, _ = _bulk_write(collection, operations, ids, ids)
    return refused


def update_where(collection: Any, updates: Sequence[tuple[Doc, Doc, bool]]) -> tuple[set[int], int]:
    """Set the fields of each `(filter, fields, insert)` in one round trip, leaving the
    document's other fields alone; with `insert`, a filter that matches nothing inserts
    (an upsert; its filter names its `_id`). Returns the indexes of the inserts refused as
    duplicate keys (their filter did not match the stored `_id`, `_refused`), and how
    many updates without `insert` matched nothing (which ones is not said: the server
    only counts them)."""
    if not updates:
        return set(), 0
    operations = [
        UpdateOne(flt, {"$set": fields}, upsert=insert) for flt, fields, insert in updates
    ]
    # An update inserts nothing: refused, it broke another unique index (`_refused`).
    inserted = [flt.get("_id") if insert else None for flt, _, insert in updates]
    named = [flt.get("_id") for flt, _, _ in updates]
    refused, done = _bulk_write(collection, operations, inserted, named)
    return refused, len(operations) - done - len(refused)


def _bulk_write(
    collection: Any, operations: Sequence[Any], ids: Sequence[Any], named: Sequence[Any]
) -> tuple[set[int], int]:
    """`operations` in one round trip (unordered); returns the indexes refused as
    duplicates of a stored `_id` (`_refused`; `ids[i]`: the `_id` operation i inserts,
    `named[i]`: the `_id` its filter names) and how many matched or inserted.

    One refused whose `_id` is not stored is written once more: the document may have been
    removed since (by a person: a draft is rebuilt whole). Refused again, a unique index
    that is not the chore's refused it: `ForeignUniqueIndex`."""
    todo = list(range(len(operations)))
    refused: set[int] = set()
    done = 0
    for _ in range(2):
        try:
            result = collection.bulk_write([operations[i] for i in todo], ordered=False)
        except BulkWriteError as exc:
            present, lost = _refused(collection, exc, [ids[i] for i in todo])
            refused |= {todo[i] for i in present}
            done += int(exc.details.get("nMatched", 0)) + int(exc.details.get("nUpserted", 0))
            todo = [todo[i] for i in lost]
        else:
            done += result.matched_count + result.upserted_count
            todo = []
        if not todo:
            return refused, done
    raise _foreign_index(collection, [named[i] for i in todo])


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
    what the other inserted, and the write is tried again; so is one whose document was
    removed since. Refused twice, a unique index that is not the chore's refused it:
    `ForeignUniqueIndex`."""

    def write() -> Doc:
        done: Doc = collection.find_one_and_update(
            {"_id": doc_id, **as_written}, update, upsert=True, return_document=ReturnDocument.AFTER
        )
        return done

    for _ in range(2):
        try:
            return write()
        except DuplicateKeyError:  # edited by hand, or the other caller's first insert is there
            there = collection.find_one({"_id": doc_id})
            if there is not None:  # else removed since (a pass's cursor), tried again
                check_shape(shape, there, collection=collection.name, remedy=remedy)
    raise _foreign_index(collection, [doc_id])
