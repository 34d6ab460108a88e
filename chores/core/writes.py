"""Batched, idempotent writes: one round trip per batch, duplicate keys expected.

Every write the chore makes is safe to repeat, and unique `_id`s are how
concurrent runs agree: a duplicate key is an answer ("somebody wrote it first",
"that invoice is final"), not an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError

from chores.core.db import Doc

DUPLICATE_KEY = 11000


def _duplicates(exc: BulkWriteError) -> set[int]:
    """Indexes of the operations refused as duplicates; re-raises any other error."""
    errors = exc.details.get("writeErrors", [])
    if any(error.get("code") != DUPLICATE_KEY for error in errors):
        raise exc
    return {int(error["index"]) for error in errors}


def insert_ignoring_duplicates(collection: Any, documents: Sequence[Doc]) -> set[int]:
    """Insert in one round trip; returns the indexes already present."""
    if not documents:
        return set()
    try:
        collection.insert_many(list(documents), ordered=False)
    except BulkWriteError as exc:
        return _duplicates(exc)
    return set()


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


def update_where(collection: Any, updates: Sequence[tuple[Doc, Doc]]) -> set[int]:
    """Upsert the fields of each `(filter, fields)` in one round trip, leaving the
    document's other fields alone; returns the indexes whose filter did not match an
    existing `_id` (the upsert then hit a duplicate key)."""
    if not updates:
        return set()
    operations = [UpdateOne(flt, {"$set": fields}, upsert=True) for flt, fields in updates]
    try:
        collection.bulk_write(operations, ordered=False)
    except BulkWriteError as exc:
        return _duplicates(exc)
    return set()
