"""The fault table of docs/testing.md, recomputed: faults injected, runs, billed vs truth.

Each row injects one kind of fault into metering a generated corpus whose true
usage is known by construction (`Corpus.truth`), lets the system recover the
way production would (a rerun, a retry), and compares what the ledger billed
each runner with its truth: tokens billed above it are *double-billed*, below
it *lost*. The table is rendered and compared with docs/testing.md, so a figure in
the docs cannot drift from what the tests measure.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mongomock
import pytest
from bson import ObjectId
from pymongo.errors import AutoReconnect, PyMongoError

from chores import Settings, finalize_invoices, run_chore
from chores.demo.corpus import Corpus, generate_corpus
from pricing import Registry

from support.dbproxy import READS, WRITES, DatabaseProxy, PauseAt, Recorder, pause_at

TABLE_DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
START = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
CONFIG = Settings(mongo_url="mongomock://fault-table", batch_size=5)
HOSTILE_DOCS = 2_000


def corpus() -> Corpus:
    return generate_corpus(seed=2026, orgs=("acme", "globex"), runs_per_org=6, start=START, days=20)


def seeded(c: Corpus) -> Any:
    db = mongomock.MongoClient(tz_aware=True)["main"]
    db.tasks.insert_many([dict(t) for t in c.tasks])
    db.findings.insert_many([dict(f) for f in c.findings])
    return db


class Tally:
    """Runs, and tokens billed vs truth summed over every scenario of a row."""

    def __init__(self, name: str):
        self.name = name
        self.runs = 0
        self.billed = self.truth = self.double = self.lost = 0

    def check(self, db: Any, c: Corpus) -> None:
        billed: dict[str, int] = {}
        for entry in db.billing_ledger.find():
            billed[entry["runner_id"]] = billed.get(entry["runner_id"], 0) + entry["tokens"]
        for usage in c.truth:
            got = billed.pop(usage.runner_id, 0)
            self.billed += got
            self.truth += usage.tokens
            self.double += max(0, got - usage.tokens)
            self.lost += max(0, usage.tokens - got)
        for extra in billed.values():  # billed a runner with no true usage
            self.billed += extra
            self.double += extra

    def check_invoices(self, db: Any, c: Corpus) -> None:
        """Tokens on the org's invoices (what it is charged) against its true usage."""
        truth: dict[str, int] = {}
        for usage in c.truth:
            truth[usage.org] = truth.get(usage.org, 0) + usage.tokens
        for org, true_tokens in truth.items():
            invoiced = sum(
                line["tokens"]
                for inv in db.billing_invoices.find({"org": org})
                for line in inv["lines"]
            )
            self.billed += invoiced
            self.truth += true_tokens
            self.double += max(0, invoiced - true_tokens)
            self.lost += max(0, true_tokens - invoiced)

    def row(self) -> str:
        return (
            f"| {self.name} | {self.runs:,} | {self.billed:,} | {self.truth:,} | "
            f"{self.double:,} | {self.lost:,} |"
        )


def crash_plan(kind: frozenset[str], at: int, *, lands: bool) -> Callable[..., Any]:
    """An `around` hook: the `at`-th call of `kind` on a billing collection (or, for reads,
    any collection) fails with AutoReconnect, after its effect landed when `lands`."""
    seen = [0]

    def around(collection: str, method: str, perform: Callable[[], Any]) -> Any:
        if method not in kind or (kind is WRITES and not collection.startswith("billing_")):
            return perform()
        seen[0] += 1
        if seen[0] != at:
            return perform()
        if lands:
            with contextlib.suppress(PyMongoError):
                perform()
        raise AutoReconnect(f"connection lost at {collection}.{method}")

    return around


def count_calls(c: Corpus, registry: Registry, kind: frozenset[str]) -> int:
    calls = [0]

    def around(collection: str, method: str, perform: Callable[[], Any]) -> Any:
        if method in kind and (kind is not WRITES or collection.startswith("billing_")):
            calls[0] += 1
        return perform()

    run_chore(DatabaseProxy(seeded(c), around=around), now=NOW, registry=registry, settings=CONFIG)
    return calls[0]


def crash_row(
    name: str, c: Corpus, registry: Registry, kind: frozenset[str], *, lands: bool
) -> Tally:
    tally = Tally(name)
    for at in range(1, count_calls(c, registry, kind) + 1):
        db = seeded(c)
        with pytest.raises(AutoReconnect):
            run_chore(
                DatabaseProxy(db, around=crash_plan(kind, at, lands=lands)),
                now=NOW,
                registry=registry,
                settings=CONFIG,
            )
        run_chore(db, now=NOW, registry=registry, settings=CONFIG)
        tally.runs += 2
        tally.check(db, c)
    return tally


def concurrent_row(c: Corpus, registry: Registry, threads: int) -> Tally:
    tally = Tally(f"{threads} concurrent runs of one org, no lock")
    db = seeded(c)
    shared = DatabaseProxy(db, serialize=True)
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for org in ("acme", "globex"):
                run_chore(shared, org=org, now=NOW, registry=registry, settings=CONFIG)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    tally.runs = threads * 2
    tally.check(db, c)
    return tally


def growth_row(c: Corpus, registry: Registry) -> Tally:
    """Counters observed growing over 5 runs, with finalize and a clock going backwards."""
    tally = Tally("growing counters, 5 runs, clock skew and finalize between")
    db = seeded(c)
    nows = [NOW, NOW - timedelta(days=3), NOW + timedelta(days=8), NOW + timedelta(days=2), NOW]
    for fraction, now in zip((0.2, 0.5, 0.7, 0.9, 1.0), nows, strict=True):
        for task in c.at(fraction):
            db.tasks.replace_one({"_id": task["_id"]}, task)
        run_chore(db, now=now, registry=registry, settings=CONFIG)
        finalize_invoices(db, now=now, settings=CONFIG, grace=0)
        tally.runs += 1
    tally.check(db, c)
    return tally


DECEMBER_3 = datetime(2026, 12, 3, tzinfo=UTC)  # November is due (grace 0)


def half_metered(c: Corpus, registry: Registry, client: Any = None) -> Any:
    """November half observed by a run, then every runner grown to its end."""
    db = (client or mongomock.MongoClient(tz_aware=True))["main"]
    db.tasks.insert_many([dict(t) for t in c.at(0.5)])
    db.findings.insert_many([dict(f) for f in c.findings])
    run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    for task in c.tasks:
        db.tasks.replace_one({"_id": task["_id"]}, dict(task))
    return db


def finishing(db: Any, registry: Registry) -> int:
    """What production does next: a run, the daily finalize, a run. Returns the runs."""
    run_chore(db, now=DECEMBER_3, registry=registry, settings=CONFIG)
    finalize_invoices(db, now=DECEMBER_3, settings=CONFIG, grace=0)
    run_chore(db, now=DECEMBER_3, registry=registry, settings=CONFIG)
    return 3


Operation = Callable[[Any], Any]


def interleaved_row(
    name: str,
    c: Corpus,
    registry: Registry,
    first: Operation,
    meanwhile: list[Operation],
) -> Tally:
    """`first` paused at each of its database calls in turn while `meanwhile` runs to the
    end; then `first` goes on, and production finishes. Tokens invoiced vs truth."""
    tally = Tally(name)
    recorder = Recorder()
    first(DatabaseProxy(half_metered(c, registry), around=recorder))
    finals_seen: dict[str, Any] = {}
    for at in range(1, len(recorder.calls) + 1):
        db = half_metered(c, registry)
        pause = PauseAt(at)
        error = pause_at(
            lambda db=db, pause=pause: first(DatabaseProxy(db, around=pause, serialize=True)),
            pause,
            lambda db=db: [operation(db) for operation in meanwhile] and None,
        )
        assert error is None, f"{name} at call {at}: {error!r}"
        finals_seen = {i["_id"]: i for i in db.billing_invoices.find({"status": "final"})}
        tally.runs += 1 + len(meanwhile) + finishing(db, registry)
        for invoice_id, frozen in finals_seen.items():
            assert db.billing_invoices.find_one({"_id": invoice_id}) == frozen, invoice_id
        tally.check_invoices(db, c)
    return tally


def finalize_op(db: Any) -> Any:
    return finalize_invoices(db, now=DECEMBER_3, settings=CONFIG, grace=0)


def run_op(now: datetime, registry: Registry) -> Operation:
    return lambda db: run_chore(db, now=now, registry=registry, settings=CONFIG)


def plain_client_row(c: Corpus, registry: Registry) -> Tally:
    """The public API on `mongomock.MongoClient()` with its default options (naive
    datetimes), as an outside program calls it, across a month's finalization."""
    tally = Tally("plain MongoClient() (default options): runs, finalize, late usage")
    db = half_metered(c, registry, client=mongomock.MongoClient())
    tally.runs = 1 + finishing(db, registry)
    tally.check_invoices(db, c)
    return tally


def hostile_row(registry: Registry) -> tuple[int, int, int]:
    """(documents, crashes, documents charged although malformed)."""
    rng = random.Random(7)
    values: list[Any] = [
        None,
        True,
        -1,
        1.5,
        float("nan"),
        float("inf"),
        "12",
        2**62,
        [],
        {},
        {"$ne": None},
        "a.b",
        "$gt",
        "",
        10**18,
        3.0,
        ObjectId(),
    ]
    db = mongomock.MongoClient(tz_aware=True)["main"]
    docs = []
    for _ in range(HOSTILE_DOCS):
        context: Any = {
            key: rng.choice([*values, rng.randrange(0, 10_000)])
            for key in (
                "workspace_id",
                "ai_tokens",
                "ai_prompt_tokens",
                "ai_completion_tokens",
                "ai_cached_tokens",
                "ai_model",
                "ai_key_source",
                "subagent",
            )
        }
        if rng.random() < 0.1:
            context = rng.choice(values)
        docs.append(
            {
                "_id": ObjectId(),
                "name": "ai",
                "status": rng.choice([*values, "SUCCESS"]),
                "end_time": rng.choice([NOW, None, "x", 5]),
                "context": context,
                "last_updated_db": rng.choice(values),
            }
        )
    db.tasks.insert_many(docs)
    crashes = 0
    try:
        run_chore(db, now=NOW, registry=registry, settings=CONFIG)
    except Exception:
        crashes += 1
    anomalous = {
        a["runner_id"] for a in db.billing_anomalies.find() if a["kind"] != "total_below_split"
    }
    charged_bad = db.billing_ledger.count_documents({"runner_id": {"$in": sorted(anomalous)}})
    return HOSTILE_DOCS, crashes, charged_bad


def render(rows: list[str], hostile: tuple[int, int, int]) -> str:
    docs, crashes, charged = hostile
    return "\n".join(
        [
            "| fault injected | runs | tokens billed | truth | double-billed | lost |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Hostile runner documents: {docs:,} tried, {crashes} crashed the run, "
            f"{charged} malformed ones charged.",
        ]
    )


def test_the_fault_table_in_docs_is_what_the_faults_give(registry):
    c = corpus()
    tallies = [
        crash_row(
            "crash before the k-th billing write, every k, then rerun",
            c,
            registry,
            WRITES,
            lands=False,
        ),
        crash_row(
            "crash after the k-th billing write landed, every k, then rerun",
            c,
            registry,
            WRITES,
            lands=True,
        ),
        crash_row(
            "connection lost on the k-th read, every k, then rerun", c, registry, READS, lands=False
        ),
        concurrent_row(c, registry, 2),
        concurrent_row(c, registry, 8),
        growth_row(c, registry),
        interleaved_row(
            "finalize paused at its k-th call while a run lands late usage, every k",
            c,
            registry,
            finalize_op,
            [run_op(DECEMBER_3, registry)],
        ),
        interleaved_row(
            "run paused at its k-th call while finalize closes its month, every k",
            c,
            registry,
            run_op(DECEMBER_3, registry),
            [finalize_op],
        ),
        interleaved_row(
            "two finalizes: the first paused at its k-th call, a run between, every k",
            c,
            registry,
            finalize_op,
            [finalize_op, run_op(DECEMBER_3, registry)],
        ),
        interleaved_row(
            "run with now 9 days behind paused at its k-th call, finalize between, every k",
            c,
            registry,
            run_op(NOW, registry),
            [finalize_op],
        ),
        plain_client_row(c, registry),
    ]
    for tally in tallies:
        assert (tally.double, tally.lost) == (0, 0), tally.row()
        assert tally.billed == tally.truth
    hostile = hostile_row(registry)
    assert hostile[1:] == (0, 0)
    table = render([t.row() for t in tallies], hostile)
    text = TABLE_DOC.read_text()
    found = re.search(r"<!-- fault-table -->\n(.*?)\n<!-- /fault-table -->", text, re.S)
    assert found, "docs/testing.md has no <!-- fault-table --> section"
    assert found.group(1) == table, (
        "docs/testing.md: the fault table is out of date; it should read:\n" + table
    )
