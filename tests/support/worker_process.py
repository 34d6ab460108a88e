"""A real Celery worker process (prefork, the production pool) whose MongoDB is a mongomock
seeded from a file, for tests that signal a worker the way an operator's tools do.

    python tests/support/worker_process.py SEED.json DUMP.json SECONDS_PER_BATCH WALL_CLOCK_ISO

Broker, result backend and locks come from the environment (CELERY_BROKER_URL, ...), as
for `celery -A chores.celery_app worker`. Each batch of a run takes SECONDS_PER_BATCH
(a run long enough to be signalled in the middle). After every task the pool process
writes the whole database to DUMP.json (extended JSON), so the test reads what the
worker wrote, as it would read a real MongoDB.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from typing import Any

import mongomock
from bson import json_util
from celery.signals import task_postrun

from chores import tasks
from chores.celery_app import app
from chores.core import clock as _clock
from chores.core import mongomock_compat

from dbproxy import DatabaseProxy


def main() -> None:
    mongomock_compat.install()  # the chore sees a proxy, not a mongomock database (conftest)
    seed, dump, per_batch, clock = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    wall_clock = datetime.fromisoformat(clock)
    _clock.wall_clock = lambda: wall_clock  # the tests' pinned clock (conftest)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    with open(seed) as file:
        for name, docs in json_util.loads(file.read()).items():
            if docs:
                db[name].insert_many(docs)

    def slow_batches(collection: str, method: str) -> None:
        if collection == "billing_ledger" and method == "find":  # a batch begins
            time.sleep(per_batch)

    proxy = DatabaseProxy(db, slow_batches, serialize=True)
    tasks.get_db = lambda: proxy  # type: ignore[assignment]

    @task_postrun.connect(weak=False)
    def write_dump(**_: Any) -> None:
        out = {name: list(db[name].find()) for name in db.list_collection_names()}
        with open(dump + ".tmp", "w") as file:
            file.write(json_util.dumps(out))
        os.replace(dump + ".tmp", dump)

    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
        ]
    )


if __name__ == "__main__":
    main()
