"""Counting database calls: exact on a real server, modelled on mongomock.

- `MongoCounter` (real MongoDB, `MONGO_URL` set): a pymongo `CommandListener` counts every
  command sent (one command = one round trip: `find`, `getMore`, `insert`, `update`,
  `delete`, `aggregate`...) and the documents each `find`/`getMore`/`aggregate` reply carried.
- `CountingDatabase` (mongomock): wraps the database like `tests/support/dbproxy.py` does, but keeps
  cursors lazy (streaming reads stay streaming) and counts the documents they yield. Round trips
  are modelled on what pymongo would send for the same call: a cursor's first batch is
  `batch_size` documents (101 when none is given), every further batch (`getMore`) is
  `batch_size` documents (when none is given, 16 MiB: the rest of these small documents in
  one); a write is one command (`insert_many` splits at 100,000 documents).

Documents examined (what a server reads to answer, `totalDocsExamined` in an explain plan) are
*modelled* on mongomock, from the query's shape and the indexes the collection has
(`index_information()`), never from mongomock's own work (it scans everything, always):

- A top-level field constrained by equality (a value, `None`, `$eq`), `$in` (of plain values)
  or a range (`$gt`/`$gte`/`$lt`/`$lte`), and `$not` of `$type` or of one range (the server
  complements the bounds), can bound an index scan. `$ne`, `$nin`, `$exists`, `$nor` and
  `$type` alone cannot (the server can, partly; counted as unbounded here, which can only
  overstate).
- An index serves the longest prefix of its key whose fields are all bounded. The query
  examines the documents that match the bounds on that prefix (counted on the collection):
  when the prefix bounds the whole filter, exactly the documents it returns. The planner's
  choice is modelled as the index that examines fewest.
- A top-level `$or` is also planned branch by branch (each branch with the conjuncts beside
  it), the documents examined summed; a branch no index serves makes it a collection scan.
  The cheaper of that and the conjuncts' own plan is taken. An `$and` is flattened into the
  conjuncts (its first `$or` planned as the top-level one, when there is none); an `$or`
  nested inside a branch bounds nothing (a filter only).
- No index serves the filter: the whole collection is examined.
- `limit` caps what an index scan that bounds the whole filter examines; writes examine what
  their filter examines (a `bulk_write` the sum of its operations'); an `aggregate` what its
  leading `$match` examines (the whole collection without one); inserts examine nothing.

On a real server (`MONGO_URL`) nothing is modelled: the listener counts round trips and
documents returned, and documents examined are not collected yet (the way to get them is the
server's explain, executionStats `totalDocsExamined`/`totalKeysExamined`, of each command the
listener saw; not written, for want of a server on the machine these figures come from).

`BuildReads` counts the ledger entries the draft builds read (`Ledger.unfolded` and
`Ledger.runners_held`): what issue 17 calls the entries aggregated per run.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pymongo import monitoring

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from dbproxy import READS, WRITES

FIRST_BATCH = 101  # the server's default first batch
MAX_WRITE_BATCH = 100_000


def cursor_round_trips(docs: int, batch_size: int | None) -> int:
    if batch_size:
        return max(1, math.ceil(docs / batch_size))
    return 1 if docs <= FIRST_BATCH else 2


class Counts:
    """What a piece of work cost: calls, round trips and documents read, per collection."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.round_trips: Counter[tuple[str, str]] = Counter()
        self.docs: Counter[str] = Counter()
        self.examined: Counter[str] = Counter()

    def reset(self) -> None:
        self.calls.clear()
        self.round_trips.clear()
        self.docs.clear()
        self.examined.clear()

    def docs_returned(self, prefix: str = "") -> int:
        return sum(n for c, n in self.docs.items() if c.startswith(prefix))

    def docs_examined(self, prefix: str = "") -> int:
        return sum(n for c, n in self.examined.items() if c.startswith(prefix))

    def total_round_trips(self, prefix: str = "") -> int:
        return sum(n for (c, _), n in self.round_trips.items() if c.startswith(prefix))

    def reads(self, prefix: str = "") -> int:
        return sum(
            n
            for (c, m), n in self.round_trips.items()
            if c.startswith(prefix) and m in READS | {"getMore"}
        )

    def writes(self, prefix: str = "") -> int:
        return sum(
            n for (c, m), n in self.round_trips.items() if c.startswith(prefix) and m in WRITES
        )

    def by_collection(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (collection, _), n in self.round_trips.items():
            out[collection] += n
        return dict(out)


# --- mongomock ----------------------------------------------------------------------------------


# --- documents examined, modelled (see module doc) -------------------------------------------

_RANGE = ("$gt", "$gte", "$lt", "$lte")


def _bounded(condition: Any) -> bool:
    """Whether an index scan can take bounds from this condition on a field."""
    if not isinstance(condition, Mapping):
        return True  # equality with a value, None included
    if not condition or not all(str(op).startswith("$") for op in condition):
        return True  # equality with an embedded document
    for op, value in condition.items():
        if op == "$eq" or op in _RANGE:
            return True
        if op == "$in" and all(not isinstance(v, Mapping) for v in value):
            return True
        if op == "$not" and isinstance(value, Mapping) and _complementable(value):
            return True
    return False


def _complementable(condition: Mapping[str, Any]) -> bool:
    """A `$not` the server turns into the complement of its bounds: of a `$type`, or of one
    range (`{$not: {$gte: x}}`: below x, NaN, and every other type)."""
    return set(condition) == {"$type"} or (len(condition) == 1 and next(iter(condition)) in _RANGE)


def _key_fields(index: Mapping[str, Any]) -> list[str]:
    return [field for field, _ in index["key"]]


def _plan(collection: Any, conjuncts: Mapping[str, Any], indexes: list[list[str]]) -> int | None:
    """Documents examined by the best index for these ANDed fields; None when none serves.

    The candidates are the indexes with the longest bounded prefix (what the planner
    prefers); among them, the one that examines fewest."""
    prefixes: list[dict[str, Any]] = []
    for fields in indexes:
        prefix: dict[str, Any] = {}
        for field in fields:
            if field not in conjuncts or not _bounded(conjuncts[field]):
                break
            prefix[field] = conjuncts[field]
        if prefix:
            prefixes.append(prefix)
    if not prefixes:
        return None
    longest = max(len(p) for p in prefixes)
    return min(collection.count_documents(p) for p in prefixes if len(p) == longest)


def _flattened(query: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any] | None]:
    """A filter's ANDed field conditions, its `$and`s flattened in (as the server does), and
    the one `$or` it may plan branch by branch (its own, else the first in an `$and`)."""
    conjuncts = {k: v for k, v in query.items() if not k.startswith("$")}
    alternatives = query["$or"] if isinstance(query.get("$or"), list) else None
    for part in query.get("$and", []) if isinstance(query.get("$and"), list) else []:
        if not isinstance(part, Mapping):
            continue
        inner, inner_or = _flattened(part)
        for key, value in inner.items():
            conjuncts.setdefault(key, value)  # a field twice: one bound is enough to model
        if alternatives is None:
            alternatives = inner_or
    return conjuncts, alternatives


def _planned(collection: Any, query: Mapping[str, Any], indexes: list[list[str]]) -> int | None:
    """Documents examined by the cheapest plan of `query`; None when no index serves it.

    Its ANDed fields on one index (`_plan`), or its `$or` branch by branch, each branch
    with the conditions beside it (and those of an `$and` in it). An `$or` nested inside a
    branch bounds nothing here (a filter only): counting it would credit the server with
    pushing the branch's conditions into it, which the chore's queries do not rely on."""
    conjuncts, alternatives = _flattened(query)
    plans: list[int] = []
    own = _plan(collection, conjuncts, indexes)
    if own is not None:
        plans.append(own)
    if alternatives is not None:
        total = 0
        for branch in alternatives:
            served = _plan(collection, _flattened({**conjuncts, **branch})[0], indexes)
            if served is None:
                break
            total += served
        else:
            plans.append(total)
    return min(plans) if plans else None


def examined(collection: Any, query: Mapping[str, Any] | None, limit: int = 0) -> int:
    """Documents a server examines to answer `query` on a mongomock `collection`."""
    query = query or {}
    indexes = [_key_fields(i) for i in collection.index_information().values()]
    best = _planned(collection, query, indexes)
    if best is None:
        return int(collection.estimated_document_count())
    conjuncts = {k: v for k, v in query.items() if not k.startswith("$")}
    own = _plan(collection, conjuncts, indexes)
    whole_filter_bounded = len(conjuncts) == len(query) and all(
        _bounded(v) for v in conjuncts.values()
    )
    if limit and own is not None and best == own and whole_filter_bounded:
        best = min(best, limit)
    return best


def _filter_of(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if args:
        return args[0]
    return kwargs.get("filter", {})


def _examined_by(
    collection: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> int:
    if method in ("insert_one", "insert_many"):
        return 0
    if method == "bulk_write":
        operations = args[0] if args else kwargs["requests"]
        return sum(
            examined(collection, getattr(op, "_filter", None) or {})
            for op in operations
            if getattr(op, "_filter", None) is not None
        )
    if method == "aggregate":
        pipeline = args[0] if args else kwargs["pipeline"]
        first = pipeline[0] if pipeline else {}
        return examined(collection, first.get("$match", {}))
    if method == "distinct":
        query = args[1] if len(args) > 1 else kwargs.get("filter", {})
        return examined(collection, query)
    return examined(collection, _filter_of(method, args, kwargs), kwargs.get("limit", 0))


class _CountingCursor:
    def __init__(self, cursor: Any, counts: Counts, collection: str, batch_size: int | None):
        self._cursor = iter(cursor)
        self._counts = counts
        self._collection = collection
        self._batch_size = batch_size
        self._seen = 0
        self._done = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            doc = next(self._cursor)
        except StopIteration:
            self._finish()
            raise
        self._seen += 1
        self._counts.docs[self._collection] += 1
        return doc

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            trips = cursor_round_trips(self._seen, self._batch_size)
            self._counts.round_trips[(self._collection, "find")] += 1
            if trips > 1:
                self._counts.round_trips[(self._collection, "getMore")] += trips - 1

    def close(self) -> None:
        self._finish()

    def __del__(self) -> None:  # a cursor dropped before its end still cost its batches
        self._finish()


class _CountingCollection:
    def __init__(self, collection: Any, counts: Counts, model_examined: bool):
        self._collection = collection
        self._counts = counts
        self.model_examined = model_examined

    @property
    def name(self) -> str:
        return str(self._collection.name)

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._collection, attr)
        if not callable(target) or attr not in READS | WRITES:
            return target
        counts, name = self._counts, self._collection.name

        def call(*args: Any, **kwargs: Any) -> Any:
            counts.calls[(name, attr)] += 1
            if self.model_examined:
                # before the call: what the server reads to find what it answers or changes
                counts.examined[name] += _examined_by(self._collection, attr, args, kwargs)
            result = target(*args, **kwargs)
            if attr in ("find", "aggregate"):
                return _CountingCursor(result, counts, name, kwargs.get("batch_size"))
            if attr == "find_one":
                counts.docs[name] += result is not None
                counts.round_trips[(name, attr)] += 1
            elif attr == "insert_many":
                documents = args[0] if args else kwargs.get("documents", [])
                trips = max(1, math.ceil(len(list(documents)) / MAX_WRITE_BATCH))
                counts.round_trips[(name, attr)] += trips
            else:
                counts.round_trips[(name, attr)] += 1
            return result

        return call


class CountingDatabase:
    """A mongomock `Database` whose collections count their calls (see module doc)."""

    def __init__(self, db: Any, *, model_examined: bool = True):
        self._db = db
        self.counts = Counts()
        self.model_examined = model_examined

    def __getitem__(self, name: str) -> _CountingCollection:
        return _CountingCollection(self._db[name], self.counts, self.model_examined)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]


# --- a real server --------------------------------------------------------------------------------


class MongoCounter(monitoring.CommandListener):
    """Counts the commands a client sends and the documents its cursors bring back."""

    def __init__(self) -> None:
        self.counts = Counts()
        self._collections: dict[int, str] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name in ("hello", "isMaster", "ismaster", "ping", "endSessions", "buildInfo"):
            return
        target = event.command.get(name)
        if name == "getMore":
            collection = str(event.command.get("collection"))
        else:
            collection = target if isinstance(target, str) else "-"
        self._collections[event.request_id] = collection
        self.counts.calls[(collection, name)] += 1
        self.counts.round_trips[(collection, name)] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        collection = self._collections.pop(event.request_id, None)
        if collection is None:
            return
        cursor = event.reply.get("cursor") if isinstance(event.reply, dict) else None
        if isinstance(cursor, dict):
            batch = cursor.get("firstBatch", cursor.get("nextBatch", []))
            self.counts.docs[collection] += len(batch)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._collections.pop(event.request_id, None)


# --- ledger entries read by the draft builds ------------------------------------------------


class BuildReads:
    """Counts the ledger entries draft builds read (`Ledger.unfolded`: what they fold;
    `Ledger.runners_held`: the folded entries that say a runner is already counted).

    A context manager that wraps the two methods on the class for its duration."""

    def __init__(self) -> None:
        self.unfolded = 0
        self.held = 0
        self._saved: dict[str, Any] = {}

    @property
    def entries(self) -> int:
        return self.unfolded + self.held

    def reset(self) -> None:
        self.unfolded = self.held = 0

    def __enter__(self) -> BuildReads:
        from chores.metering.ledger import Ledger

        unfolded, held = Ledger.unfolded, Ledger.runners_held
        self._saved = {"unfolded": unfolded, "runners_held": held}
        reads = self

        def counted_unfolded(ledger: Any, *args: Any, **kwargs: Any) -> Any:
            found = unfolded(ledger, *args, **kwargs)
            reads.unfolded += len(found)
            return found

        def counted_held(ledger: Any, entries: Any) -> Any:
            # what the query returns: every folded entry with usage of these runners
            before = ledger._entries.find
            returned = 0

            def counting_find(*a: Any, **k: Any) -> Any:
                nonlocal returned
                for doc in before(*a, **k):
                    returned += 1
                    yield doc

            ledger._entries.find = counting_find
            try:
                return held(ledger, entries)
            finally:
                del ledger._entries.find
                reads.held += returned

        Ledger.unfolded = counted_unfolded  # type: ignore[method-assign]
        Ledger.runners_held = counted_held  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from chores.metering.ledger import Ledger

        Ledger.unfolded = self._saved["unfolded"]  # type: ignore[method-assign]
        Ledger.runners_held = self._saved["runners_held"]  # type: ignore[method-assign]
