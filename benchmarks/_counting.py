"""Counting database calls: exact on a real server, modelled on mongomock.

- `MongoCounter` (real MongoDB, `MONGO_URL` set): a pymongo `CommandListener` counts every
  command sent (one command = one round trip: `find`, `getMore`, `insert`, `update`,
  `delete`, `aggregate`...) and the documents each `find`/`getMore`/`aggregate` reply carried.
- `CountingDatabase` (mongomock): wraps the database like `tests/dbproxy.py` does, but keeps
  cursors lazy (streaming reads stay streaming) and counts the documents they yield. Round trips
  are modelled on what pymongo would send for the same call: a cursor's first batch is
  `batch_size` documents (101 when none is given), every further batch (`getMore`) is
  `batch_size` documents (when none is given, 16 MiB: the rest of these small documents in
  one); a write is one command (`insert_many` splits at 100,000 documents).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pymongo import monitoring

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
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

    def reset(self) -> None:
        self.calls.clear()
        self.round_trips.clear()
        self.docs.clear()

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
    def __init__(self, collection: Any, counts: Counts):
        self._collection = collection
        self._counts = counts

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

    def __init__(self, db: Any):
        self._db = db
        self.counts = Counts()

    def __getitem__(self, name: str) -> _CountingCollection:
        return _CountingCollection(self._db[name], self.counts)

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
