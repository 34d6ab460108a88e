"""A run that read a document before an overlapping run billed a later write of it: its stale
read is no decrease (`counter_decreased` never heals by itself), whatever became of the
document by the time the counters are compared (still there, gone, moved to another org)."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from bson import ObjectId

from chores import run_chore
from chores.run.pipeline import Pipeline
from chores.run.report import RunReport

from support import NOW


def runner(oid: ObjectId, tokens: int, org: str = "acme") -> dict:
    return {
        "_id": oid,
        "name": "ai",
        "status": "RUNNING",
        "last_updated_db": (NOW - timedelta(minutes=10)).timestamp() + tokens / 1000,
        "context": {
            "workspace_id": org,
            "ai_model": "gpt-4o-mini",
            "ai_tokens": tokens,
            "ai_prompt_tokens": tokens // 2,
            "ai_completion_tokens": tokens - tokens // 2,
        },
    }


def process(db, settings, registry, docs, org):
    report = RunReport(run_id="late", org=org, started_at=NOW)
    Pipeline(db, settings, registry).process(
        docs, org=org, now=NOW, run_id="late", report=report, dry_run=False
    )


@pytest.mark.parametrize(
    ("since", "scope"),
    [("unchanged", None), ("deleted", None), ("unchanged", "acme"), ("moved to globex", "acme")],
)
def test_a_stale_read_is_no_decrease(db, settings, registry, since, scope):
    oid = ObjectId()
    db.tasks.insert_one(runner(oid, 1_000))
    stale = copy.deepcopy(db.tasks.find_one({"_id": oid}))  # this run's read
    db.tasks.replace_one({"_id": oid}, runner(oid, 2_000))  # the runner writes again...
    run_chore(db, now=NOW, settings=settings, registry=registry)  # ...another run bills it
    if since == "deleted":
        db.tasks.delete_one({"_id": oid})
    elif since == "moved to globex":
        db.tasks.update_one({"_id": oid}, {"$set": {"context.workspace_id": "globex"}})
    process(db, settings, registry, [stale], scope)
    assert db.billing_anomalies.count_documents({}) == 0
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == 2_000


def test_a_real_decrease_is_still_recorded(db, settings, registry):
    oid = ObjectId()
    db.tasks.insert_one(runner(oid, 2_000))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    db.tasks.replace_one({"_id": oid}, runner(oid, 500))  # the counters really went down
    process(db, settings, registry, [db.tasks.find_one({"_id": oid})], None)
    assert [a["kind"] for a in db.billing_anomalies.find()] == ["counter_decreased"]


class _Gates:
    """Pause a run before its next call matching each (collection, method), in order."""

    def __init__(self, *points: tuple[str, str]) -> None:
        import threading

        self.points = list(points)
        self.reached = [threading.Event() for _ in points]
        self.go = [threading.Event() for _ in points]
        self.next = 0

    def __call__(self, collection: str, method: str, perform):  # type: ignore[no-untyped-def]
        if self.next < len(self.points) and self.points[self.next] == (collection, method):
            index, self.next = self.next, self.next + 1
            self.reached[index].set()
            assert self.go[index].wait(30)
        return perform()

    def at(self, index: int) -> None:
        assert self.reached[index].wait(30), index


def _put(db, oid, at, total, prompt=0, completion=0, status="RUNNING"):  # type: ignore[no-untyped-def]
    doc = runner(oid, 0)
    doc.update(status=status, last_updated_db=at.timestamp())
    doc["context"].update(ai_tokens=total, ai_prompt_tokens=prompt,
                          ai_completion_tokens=completion)  # fmt: skip
    if status == "SUCCESS":
        doc["end_time"] = at
    db.tasks.replace_one({"_id": oid}, doc, upsert=True)


class _Overlap:
    """Runs of one org started in threads, each paused at its database calls by gates, on
    one database whose calls they serialize (`DatabaseProxy`); a watched runner that ended
    at 2,000 tokens, on the pending list since it was metered at 1,000 while running, and
    another runner stamped 30 minutes later, so that every run moves its cursor past the
    watched one's stamp."""

    def __init__(self, db, settings, registry):  # type: ignore[no-untyped-def]
        import threading

        self.db, self.settings, self.registry = db, settings, registry
        self.lock, self.errors = threading.Lock(), []
        self.watched, start = ObjectId(), NOW - timedelta(hours=2)
        _put(db, self.watched, start, 1_000)
        run_chore(db, now=start, registry=registry, settings=settings)  # running: pending
        self.ended = start + timedelta(minutes=5)
        _put(db, self.watched, self.ended, 2_000, status="SUCCESS")
        _put(db, ObjectId(), self.ended + timedelta(minutes=30), 500, 400, 100, status="SUCCESS")

    def start(self, around):  # type: ignore[no-untyped-def]
        import threading

        from support.dbproxy import DatabaseProxy

        proxy = DatabaseProxy(self.db, lock=self.lock, around=around)

        def body() -> None:
            try:
                run_chore(proxy, now=NOW, registry=self.registry, settings=self.settings)
            except _Died as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=body)
        thread.start()
        return thread

    def grow(self) -> None:
        """The watched runner's last write: 3,000 tokens."""
        _put(self.db, self.watched, self.ended + timedelta(minutes=1), 3_000, 2_200, 800,
             status="SUCCESS")  # fmt: skip

    def billed_after_later_runs(self) -> int:
        for minutes in (0, 40, 60):
            when = NOW + timedelta(minutes=minutes)
            run_chore(self.db, now=when, registry=self.registry, settings=self.settings)
        entries = self.db.billing_ledger.find({"runner_id": str(self.watched)})
        return sum(e["tokens"] for e in entries)


class _Died(Exception):
    """A run dying at a database call."""


def test_the_winner_of_a_runner_never_drops_what_the_loser_asked_to_read_again(
    db, settings, registry
):
    """Review: run A read a runner finished (2,000 tokens) and billed it; run B, which read
    a later write (3,000), lost its entry to A's and put the runner back on the pending
    list to read it again; A, going on, removed it from the list, and the cursor had
    passed its stamp: 1,000 tokens never billed. A removes only at the version it read or
    wrote; B put the runner there under a new one."""
    runs = _Overlap(db, settings, registry)
    a = _Gates(("billing_ledger", "insert_many"), ("billing_pending", "delete_many"))
    run_a = runs.start(a)
    a.at(0)  # A read 2,000 tokens and is about to bill them
    runs.grow()
    b = _Gates(("billing_ledger", "insert_many"))
    run_b = runs.start(b)
    b.at(0)  # B read 3,000 tokens
    a.go[0].set()
    a.at(1)  # A billed its entry, and is about to update the pending list
    b.go[0].set()
    run_b.join()  # B lost its entry to A's
    a.go[1].set()
    run_a.join()
    assert runs.billed_after_later_runs() == 3_000
    assert db.billing_pending.count_documents({"_id": str(runs.watched)}) == 0  # then done


def test_three_overlapping_runs_never_drop_what_the_last_loser_left(db, settings, registry):
    """Review of 5396c51: C billed 2,000 and took the runner off the list; B, which read
    3,000, lost to C and put it back at version 1 again; A, which had read version 1 before
    either, took it off: 1,000 tokens never billed. A version is never used twice."""
    runs = _Overlap(db, settings, registry)
    a = _Gates(("billing_ledger", "find"))
    run_a = runs.start(a)
    a.at(0)  # A read the list and the runner (2,000), not yet its ledger head
    c = _Gates(("billing_ledger", "insert_many"))
    run_c = runs.start(c)
    c.at(0)
    runs.grow()
    b = _Gates(("billing_ledger", "insert_many"))
    run_b = runs.start(b)
    b.at(0)
    for gates, thread in ((c, run_c), (b, run_b), (a, run_a)):
        gates.go[0].set()
        thread.join()
    assert runs.billed_after_later_runs() == 3_000


def test_a_loser_that_dies_after_losing_leaves_the_runner_to_be_read_again(db, settings, registry):
    """Review of 5396c51: B lost its entry and died before putting the runner back on the
    list: 1,000 tokens never billed. A run puts every runner it is about to bill on the
    list before it writes the entries."""
    runs = _Overlap(db, settings, registry)
    a = _Gates(("billing_ledger", "insert_many"), ("billing_pending", "delete_many"))
    run_a = runs.start(a)
    a.at(0)
    runs.grow()
    b = _Gates(("billing_ledger", "insert_many"))

    def b_dies_after_its_entries(collection, method, perform):  # type: ignore[no-untyped-def]
        if (collection, method) == ("billing_pending", "delete_many"):
            raise _Died("after its entries")
        return b(collection, method, perform)

    run_b = runs.start(b_dies_after_its_entries)
    b.at(0)
    a.go[0].set()
    a.at(1)
    b.go[0].set()
    run_b.join()
    a.go[1].set()
    run_a.join()
    assert [str(e) for e in runs.errors] == ["after its entries"]
    assert runs.billed_after_later_runs() == 3_000


@pytest.mark.parametrize("loser", ["loses", "dies before its entry"])
def test_a_winner_that_claims_after_the_loser_leaves_the_losers_claim(
    db, settings, registry, loser
):
    """Review of ece5dea: the winner's add replaced the loser's version, then the winner
    removed the runner at its own: 1,000 tokens never billed (also when the loser died
    after its add). Each run's claim is its own document; a run releases only its own and
    those it read."""
    runs = _Overlap(db, settings, registry)
    a = _Gates(("billing_pending", "write"))

    def a_at_its_first_pending_write(collection, method, perform):  # type: ignore[no-untyped-def]
        writes = collection == "billing_pending" and method != "find"
        return a(collection, "write" if writes else method, perform)

    run_a = runs.start(a_at_its_first_pending_write)
    a.at(0)  # A read 2,000 and is about to claim the runner
    runs.grow()
    b = _Gates(("billing_ledger", "insert_many"))

    def b_at_its_entry(collection, method, perform):  # type: ignore[no-untyped-def]
        if loser != "loses" and (collection, method) == ("billing_ledger", "insert_many"):
            b.reached[0].set()
            assert b.go[0].wait(30)
            raise _Died("before its entry")
        return b(collection, method, perform)

    run_b = runs.start(b_at_its_entry)
    b.at(0)  # B read 3,000 and claimed the runner
    a.go[0].set()
    run_a.join()  # A claimed it too, billed 2,000 and released its claim
    b.go[0].set()
    run_b.join()
    assert runs.billed_after_later_runs() == 3_000
    assert db.billing_pending.count_documents({}) == 0  # read again, billed, released


def test_a_run_reading_a_runner_twice_claims_it_anew(db, registry, monkeypatch):
    """Review of 7eba3f1: on a server, a cursor over the stamp index returns a document
    again when a write moves its stamp forward during the scan (mongomock reads the whole
    result at once; the scan is paged here as a server pages it). Run L billed a running
    runner and kept its claim; run X read that claim and the runner finished (2,000); L
    read the runner again (3,000) and claimed it under the same id, a duplicate, ignored;
    X won, released the claim it had read, and L, losing, kept a claim already gone: 1,000
    tokens never billed. Every claim is one never used before, even by its own run."""
    import threading

    from chores import Settings
    from chores.metering import source

    from support.dbproxy import DatabaseProxy

    def paged(self, org, since):  # type: ignore[no-untyped-def]
        last = None
        while True:
            query = self._changed(org, since)
            if last is not None:
                query = {"$and": [query, {"$or": [
                    {"last_updated_db": {"$gt": last[0]}},
                    {"last_updated_db": last[0], "_id": {"$gt": last[1]}}]}]}  # fmt: skip
            docs = list(self._tasks.find(query, source.RUNNER_PROJECTION, limit=self._batch_size,
                                         sort=[("last_updated_db", 1), ("_id", 1)]))  # fmt: skip
            if not docs:
                return
            yield from docs
            last = (docs[-1]["last_updated_db"], docs[-1]["_id"])

    monkeypatch.setattr(source.Source, "changed_runners", paged)
    settings = Settings(mongo_url="mongomock://test", batch_size=1, redis_url=None)

    class NthCall:
        """Pause before the n-th call of each (collection, method, n), in order."""

        def __init__(self, *points: tuple[str, str, int]) -> None:
            self.points, self.calls = list(points), {}  # type: ignore[var-annotated]
            self.reached = [threading.Event() for _ in points]
            self.go = [threading.Event() for _ in points]

        def __call__(self, collection, method, perform):  # type: ignore[no-untyped-def]
            key = (collection, method)
            self.calls[key] = self.calls.get(key, 0) + 1
            for index, point in enumerate(self.points):
                if point == (*key, self.calls[key]):
                    self.reached[index].set()
                    assert self.go[index].wait(30)
            return perform()

    lock = threading.Lock()

    def start(gates):  # type: ignore[no-untyped-def]
        proxy = DatabaseProxy(db, lock=lock, around=gates)
        thread = threading.Thread(
            target=lambda: run_chore(proxy, now=NOW, registry=registry, settings=settings)
        )
        thread.start()
        return thread

    base = NOW - timedelta(hours=3)
    watched = ObjectId()
    _put(db, watched, base, 1_000)
    _put(db, ObjectId(), base + timedelta(minutes=1), 500, 400, 100, status="SUCCESS")
    _put(db, ObjectId(), base + timedelta(minutes=90), 500, 400, 100, status="SUCCESS")
    run_l = NthCall(("tasks", "find", 2), ("billing_ledger", "insert_many", 3))
    thread_l = start(run_l)
    run_l.reached[0].wait(30)  # L billed the running runner (1,000) and kept its claim
    _put(db, watched, base + timedelta(minutes=5), 2_000, status="SUCCESS")
    run_x = NthCall(("billing_ledger", "insert_many", 1))
    thread_x = start(run_x)
    run_x.reached[0].wait(30)  # X read L's claim, and the runner at 2,000
    _put(db, watched, base + timedelta(minutes=6), 3_000, 2_200, 800, status="SUCCESS")
    run_l.go[0].set()
    run_l.reached[1].wait(30)  # L read the runner again, at 3,000, and claimed it
    run_x.go[0].set()
    thread_x.join()  # X billed 2,000 in all and released the claims it had read
    run_l.go[1].set()
    thread_l.join()  # L lost its entry to X's
    for minutes in (0, 40, 60, 120):
        run_chore(db, now=NOW + timedelta(minutes=minutes), registry=registry, settings=settings)
    assert sum(e["tokens"] for e in db.billing_ledger.find({"runner_id": str(watched)})) == 3_000


def _written_between_the_reads(db, registry, first, then, *, dry_run=False):  # type: ignore[no-untyped-def]
    """Runner "r" billed 1,000 tokens running at NOW - 1 h (pending since), then written
    as `first(stamp)`; a run at NOW reads it from the pending list, and `then(stamp)` is
    written before its changed scan. Another runner ending a minute before NOW moves the
    cursor past "r" (the platform goes on). Returns the run's report."""
    from chores import Settings

    from support import ai_runner
    from support.dbproxy import DatabaseProxy

    settings = Settings(mongo_url="mongomock://test", batch_size=10, redis_url=None)
    start = NOW - timedelta(hours=1)
    db.tasks.insert_one(
        ai_runner("r", ended=None, status="RUNNING", tokens=1_000, stamp=start.timestamp() - 600)
    )
    run_chore(db, now=start, settings=settings, registry=registry)  # billed 1,000, pending
    stamp = (start + timedelta(minutes=20)).timestamp()
    db.tasks.replace_one({"_id": "r"}, first(stamp))
    written: list[bool] = []

    def write_after_the_pending_read(collection, method, perform):  # type: ignore[no-untyped-def]
        result = perform()
        if (collection, method) == ("tasks", "find") and not written:
            written.append(True)
            db.tasks.replace_one({"_id": "r"}, then(stamp + 1))
        return result

    ended = NOW - timedelta(minutes=1)
    db.tasks.insert_one(ai_runner("other-0", ended=ended, tokens=1, org="zeta"))
    proxy = DatabaseProxy(db, around=write_after_the_pending_read)
    report = run_chore(proxy, now=NOW, settings=settings, registry=registry, dry_run=dry_run)
    assert written
    return report


def _billed_to_r(db) -> int:  # type: ignore[no-untyped-def]
    from chores.metering.runner_keys import runner_key

    return sum(e["tokens"] for e in db.billing_ledger.find({"runner_id": runner_key("r")}))


def test_a_newer_write_of_a_pending_runner_seen_by_the_changed_scan_is_billed(db, registry):
    """A run reads its pending runners by `_id` first, then the changed scan. A runner read
    finished from the pending list (its claim released) and written again before the scan
    (a write after SUCCESS, stamped with the write before) was skipped by the scan as
    already read: the run billed the first version, the cursor moved past the second's
    stamp (stamps lag one write), and only the daily full pass billed the rest. The scan's
    newer version is billed too, in the same run."""
    from chores import Settings

    from support import ai_runner

    report = _written_between_the_reads(
        db,
        registry,
        lambda stamp: ai_runner("r", ended=NOW, tokens=2_000, stamp=stamp),
        lambda stamp: ai_runner("r", ended=NOW, tokens=2_500, stamp=stamp),
    )
    assert (report.tokens_billed, _billed_to_r(db)) == (1 + 1_500, 2_500)
    settings = Settings(mongo_url="mongomock://test", batch_size=10, redis_url=None)
    for hours in (1, 2):  # nothing left for later runs, nothing billed twice
        later = NOW + timedelta(hours=hours)
        db.tasks.insert_one(ai_runner(f"other-{hours}", ended=later, tokens=1, org="zeta"))
        run_chore(db, now=later, settings=settings, registry=registry)
    assert _billed_to_r(db) == 2_500
    assert db.billing_pending.count_documents({}) == 0


def test_a_dry_run_counts_a_runner_written_between_its_reads_once(db, registry):
    """Review of the test above's fix: a dry run writes no ledger head, so the newer
    version was priced from the same head as the first and its growth counted twice (2,500
    reported where a run bills 1,500). A dry run keeps the version it read first."""
    from support import ai_runner

    report = _written_between_the_reads(
        db,
        registry,
        lambda stamp: ai_runner("r", ended=NOW, tokens=2_000, stamp=stamp),
        lambda stamp: ai_runner("r", ended=NOW, tokens=2_500, stamp=stamp),
        dry_run=True,
    )
    assert report.summary_for("acme").tokens == 1_000
    assert _billed_to_r(db) == 1_000  # as before the dry run


def test_a_runner_read_twice_in_a_run_is_one_anomaly_in_its_report(db, registry):
    """Review: a held runner (a model that is no name) written between the reads was
    counted as two anomalies in the run's report, beside one anomaly document."""
    from support import ai_runner

    report = _written_between_the_reads(
        db,
        registry,
        lambda stamp: ai_runner("r", ended=None, status="RUNNING", model=123, stamp=stamp),
        lambda stamp: ai_runner("r", ended=None, status="RUNNING", model=124, stamp=stamp),
    )
    assert db.billing_anomalies.count_documents({"kind": "bad_model"}) == 1
    assert report.anomalies == {"bad_model": 1}
    assert report.summary_for("acme").anomalies == 1


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_runner_the_scan_hands_back_is_counted_once_by_a_dry_run(
    db, registry, monkeypatch, dry_run
):
    """Review: a server's scan over the stamp index hands a runner back when a write moves
    its stamp during the scan. A run bills the second version from the head the first
    wrote; a dry run, which writes no head, priced both from none (4,500 reported where a
    run bills 2,000 then 500). It reads each runner once."""
    from chores import Settings
    from chores.metering import source

    from support import ai_runner

    settings = Settings(mongo_url="mongomock://test", batch_size=1, redis_url=None)
    stamp = (NOW - timedelta(minutes=10)).timestamp()
    db.tasks.insert_one(ai_runner("r", ended=NOW, tokens=2_000, stamp=stamp))

    def scan_handing_back(self, org, since):  # type: ignore[no-untyped-def]
        yield self._tasks.find_one({"_id": "r"})
        later = ai_runner("r", ended=NOW, tokens=2_500, stamp=stamp + 60)
        db.tasks.replace_one({"_id": "r"}, later)  # moved forward during the scan
        yield self._tasks.find_one({"_id": "r"})

    monkeypatch.setattr(source.Source, "changed_runners", scan_handing_back)
    report = run_chore(db, now=NOW, settings=settings, registry=registry, dry_run=dry_run)
    assert report.docs_read == (1 if dry_run else 2)
    assert report.tokens_billed == (2_000 if dry_run else 2_500)
    assert _billed_to_r(db) == (0 if dry_run else 2_500)


@pytest.mark.parametrize("inherited", [12_000, 17_000], ids=["own usage", "no own usage"])
def test_a_stale_read_of_a_subagent_never_reopens_what_a_newer_run_resolved(
    db, settings, registry, inherited
):
    """From a review exploring interleavings: run A read a held subagent's spawn findings
    (none yet); they appeared, and run B billed the subagent and resolved its
    `baseline_missing`; A, going on from its older read, opened it again, flagging an
    invoice that a finalize then froze flagged for good. A reads the document again before
    it reopens a resolved anomaly, or writes one of a runner billed since it read the
    ledger head. With no own usage B resolves it without a ledger entry (review of the
    first fix, which looked at the ledger alone)."""
    from support.dbproxy import DatabaseProxy

    ended = NOW - timedelta(hours=3)
    child = runner(ObjectId(), 17_000)
    child.update(status="SUCCESS", end_time=ended, last_updated_db=ended.timestamp())
    child["context"].update(subagent="sub-1", ai_subagent_depth=1, parent_session_id="s-1")
    db.tasks.insert_one(child)
    run_chore(db, now=NOW - timedelta(hours=2), registry=registry, settings=settings)
    anomaly = {"_id": f"{child['_id']}:baseline_missing"}
    assert db.billing_anomalies.find_one(anomaly)["resolved"] is False  # held, no finding

    finding = {
        "_id": ObjectId(),
        "_type": "ai",
        "ai_type": "task",
        "extra_data": {"runner_id": str(child["_id"]), "runner_type": "task"},
        "_context": {**child["context"], "ai_tokens": inherited,
                     "ai_prompt_tokens": inherited // 2,
                     "ai_completion_tokens": inherited - inherited // 2, "task_id": "spawner"},
    }  # fmt: skip
    del finding["_context"]["subagent"]
    meanwhile: list[bool] = []

    def after_the_findings_read(collection, method, perform):  # type: ignore[no-untyped-def]
        result = perform()
        if (collection, method) == ("findings", "find") and not meanwhile:
            meanwhile.append(True)  # A read no spawn finding; B runs on the newer state
            db.findings.insert_one(finding)
            run_chore(db, now=NOW, registry=registry, settings=settings)
            assert db.billing_anomalies.find_one(anomaly)["resolved"] is True
        return result

    run_chore(DatabaseProxy(db, around=after_the_findings_read), now=NOW, registry=registry,
              settings=settings)  # fmt: skip
    assert meanwhile == [True]
    assert db.billing_anomalies.find_one(anomaly)["resolved"] is True
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == 17_000 - inherited
    assert [i["needs_review"] for i in db.billing_invoices.find()] == [False]


@pytest.mark.parametrize("then", ["malformed_counters", "bad_model"])
def test_an_anomaly_of_a_newer_version_than_the_one_another_run_billed_is_recorded(
    db, settings, registry, then
):
    """Review of the test above's first fix, which left out every anomaly of a runner
    billed meanwhile: run B billed version 1 of a finished runner, run A had read version 2
    (malformed counters): A's anomaly is the truth, and a finished, held runner is not
    pending, so nobody would have read it again before the daily full pass. A reads the
    document again and records what it shows then: a third version's other anomaly too
    (review: only the kinds A had seen were kept)."""
    import threading

    from support.dbproxy import DatabaseProxy

    oid, ended = ObjectId(), NOW - timedelta(hours=1)
    _put(db, oid, ended, 1_000, 600, 400, status="SUCCESS")
    lock, errors, reports = threading.Lock(), [], []

    def start(around):  # type: ignore[no-untyped-def]
        def body() -> None:
            try:
                reports.append(run_chore(DatabaseProxy(db, lock=lock, around=around), now=NOW,
                                         registry=registry, settings=settings))  # fmt: skip
            except Exception as exc:
                errors.append(exc)

        thread = threading.Thread(target=body)
        thread.start()
        return thread

    b = _Gates(("billing_ledger", "insert_many"))
    run_b = start(b)
    b.at(0)  # B read version 1 and is about to bill it
    with lock:
        db.tasks.update_one(
            {"_id": oid},
            {"$set": {"context.ai_tokens": "garbage", "last_updated_db": ended.timestamp() + 1}},
        )
    a = _Gates(("billing_anomalies", "find"))
    run_a = start(a)
    a.at(0)  # A read version 2 and its ledger head (none yet)
    b.go[0].set()
    run_b.join()  # B billed version 1
    if then == "bad_model":  # version 3, its stamp lagging one write
        db.tasks.update_one({"_id": oid}, {"$set": {"context.ai_tokens": 1_000,
                                                   "context.ai_model": 123}})  # fmt: skip
    a.go[0].set()
    run_a.join()
    assert errors == []
    assert sum(e["tokens"] for e in db.billing_ledger.find()) == 1_000
    (anomaly,) = db.billing_anomalies.find()
    assert (anomaly["kind"], anomaly["resolved"]) == (then, False)
    assert reports[-1].anomalies == {then: 1}  # A's report: what it wrote, not its first read
