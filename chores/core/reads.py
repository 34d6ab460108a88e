"""Reads whose answer grows with the number of orgs: `distinct_values` streams them.

`Collection.distinct` answers in one document, which MongoDB caps at 16 MB: a few hundred
thousand org ids, and every fan-out, quota pass or suggestion that lists them would fail.
A `$group` answers in batches instead (allowed to spill to disk, as every `$group` of the
chore: servers before 6.0 fail a stage past 100 MB otherwise).
"""

from __future__ import annotations

from typing import Any

from pymongo.collection import Collection

from chores.core.db import Doc


def distinct_values(collection: Collection[Doc], field: str, query: Doc | None = None) -> list[Any]:
    """The distinct values of `field` among the documents `query` matches (every one when
    None), as `distinct` gives them: an array's elements, each a value (callers keep the
    strings, which is what an org id is)."""
    pipeline: list[Doc] = [
        {"$match": query or {}},
        {"$unwind": f"${field}"},  # an array's elements; a document without it: none
        {"$group": {"_id": f"${field}"}},
    ]
    return [row["_id"] for row in collection.aggregate(pipeline, allowDiskUse=True)]
