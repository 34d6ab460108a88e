"""Drafts at the edges a mutation round of chores/billing/invoices.py found untested (stop 56):
a draft refused for its size beside drafts that are written, and builds that race."""

from __future__ import annotations

import contextlib
import functools
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
import pytest
from bson.int64 import Int64

from chores import Settings, finalize_invoices, run_chore
from chores.billing import invoices
from chores.billing.sweeper import Sweeper
from chores.core.exceptions import InvoiceTooLarge, MalformedDocument
from chores.core.settings import MAX_INT64
from chores.run.pipeline import Pipeline

from support import NOW, ai_runner
from support.dbproxy import DatabaseProxy, PauseAt, Recorder, pause_at


def test_a_draft_refused_for_its_size_loses_none_of_its_new_usage_once_it_fits(
    db, settings, registry, monkeypatch
):
    """A draft refused for its size (`InvoiceTooLarge`) sorted before another org's draft
    that is written: the written one's commit must not be taken for the refused one's.
    The refused draft's new entries stay to be billed, and once it fits again (its
    runners' usage corrected, here the limit raised back) it holds every one of them."""
    ended = NOW - timedelta(hours=3)
    db.tasks.insert_many(
        [ai_runner("big-0", ended=ended, org="big"), ai_runner("s-0", ended=ended, org="small")]
    )
    run_chore(db, now=NOW, settings=settings, registry=registry)
    assert db.billing_invoices.find_one({"_id": "big:2026-11"})["runs"] == 1

    monkeypatch.setattr(invoices, "MAX_DRAFT_BYTES", 20_000)
    later = NOW + timedelta(hours=1)
    db.tasks.insert_many(
        [
            *(
                ai_runner(f"big-{n}", ended=ended, org="big", model=f"m-{n:04d}")
                for n in range(1, 81)
            ),
            ai_runner("s-1", ended=ended, org="small"),
        ]
    )
    with pytest.raises(InvoiceTooLarge, match="'big' for 2026-11"):
        run_chore(db, now=later, settings=settings, registry=registry)
    assert db.billing_invoices.find_one({"_id": "big:2026-11"})["runs"] == 1  # not written
    assert db.billing_invoices.find_one({"_id": "small:2026-11"})["runs"] == 2

    monkeypatch.setattr(invoices, "MAX_DRAFT_BYTES", 16 * 1024 * 1024 - 64 * 1024)
    run_chore(db, now=later + timedelta(hours=1), settings=settings, registry=registry)
    big = db.billing_invoices.find_one({"_id": "big:2026-11"})
    assert (big["runs"], big["entries"]) == (81, 81)
    assert sum(line["tokens"] for line in big["lines"]) == 81 * 1_000
    pairs = {("big", "2026-11"), ("small", "2026-11")}
    assert Pipeline(db, settings, registry).invoices.check_drafts(pairs) == []


def test_a_run_whose_draft_every_pass_refused_keeps_its_marks_for_the_next_run(
    db, settings, registry, monkeypatch
):
    """design.md: three refusals in a row (another build committed each time) and the
    settle gives the draft up and keeps every mark: the run ends normally, and the next
    run, with nothing new, builds the draft with the usage the refused one did not hold.
    Another org's draft, committed, is billed at once."""
    ended = NOW - timedelta(hours=3)
    db.tasks.insert_many(
        [ai_runner("a-0", ended=ended, org="acme"), ai_runner("g-0", ended=ended, org="globex")]
    )
    run_chore(db, now=NOW, settings=settings, registry=registry)
    db.tasks.insert_many(
        [ai_runner("a-1", ended=ended, org="acme"), ai_runner("g-1", ended=ended, org="globex")]
    )
    commit = invoices.update_where
    refusals: list[int] = []

    def refusing(collection: Any, updates: Any) -> Any:
        refused = {i for i, (where, _, _) in enumerate(updates) if where["_id"] == "acme:2026-11"}
        refusals.append(len(refused))
        commit(collection, [u for i, u in enumerate(updates) if i not in refused])
        return refused, 0

    later = NOW + timedelta(hours=1)
    with monkeypatch.context() as patch:
        patch.setattr(invoices, "update_where", refusing)
        report = run_chore(db, now=later, settings=settings, registry=registry)
    assert len(refusals) > invoices.Invoices.REFUSALS and all(refusals)  # acme: every pass
    assert report is not None
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["runs"] == 1  # given up on
    assert db.billing_invoices.find_one({"_id": "globex:2026-11"})["runs"] == 2
    assert db.billing_dirty.count_documents({"org": "acme"}) >= 1  # kept for the next run

    run_chore(db, now=later + timedelta(minutes=5), settings=settings, registry=registry)
    acme = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert (acme["runs"], sum(line["tokens"] for line in acme["lines"])) == (2, 2_000)
    assert db.billing_dirty.count_documents({}) == 0


def test_two_runs_that_both_found_no_draft_leave_one_holding_every_entry(registry):
    """design.md: two passes that both found no draft of a new month commit insert-if-absent,
    so one is refused and reads again. A run paused at each of its database calls while
    more usage lands and another run (no lock: `--no-lock`, or two workers) builds the
    month's first draft: after both, the draft holds every entry once."""
    config = Settings(mongo_url="mongomock://races", batch_size=20, redis_url=None)
    ended = NOW - timedelta(hours=3)

    def seeded() -> Any:
        db = mongomock.MongoClient(tz_aware=True)["main"]
        db.tasks.insert_many([ai_runner(f"r{n}", ended=ended) for n in range(3)])
        return db

    def run(db: Any) -> Any:
        return run_chore(db, now=NOW, registry=registry, settings=config)

    recorder = Recorder()
    run(DatabaseProxy(seeded(), around=recorder))
    assert "billing_invoices.bulk_write" in recorder.calls
    for k in range(1, len(recorder.calls) + 1):
        db = seeded()
        lock, pause = threading.Lock(), PauseAt(k)

        def meanwhile(db: Any = db, lock: threading.Lock = lock) -> None:
            db.tasks.insert_many([ai_runner(f"late{n}", ended=ended) for n in range(2)])
            run(DatabaseProxy(db, lock=lock))

        paused = DatabaseProxy(db, around=pause, lock=lock)
        where = (k, recorder.calls[k - 1])
        assert pause_at(functools.partial(run, paused), pause, meanwhile) is None, where
        run(db)  # the settle production would do next
        draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
        assert (draft["runs"], draft["entries"]) == (5, 5), where
        assert sum(line["tokens"] for line in draft["lines"]) == 5_000, where
        assert Pipeline(db, config, registry).invoices.check_drafts({("acme", "2026-11")}) == []


def test_late_usage_swept_into_a_draft_too_large_keeps_a_mark_until_it_is_billed(
    db, settings, registry, monkeypatch
):
    """Runners of a final September land after it was frozen: the run sweeps them late
    into October, whose draft they make too large for a document. The run says so, keeps
    a mark of October (September's is done), and every later run says so again until the
    draft fits; then October holds every late runner."""
    sept_9, oct_5 = datetime(2026, 9, 9, tzinfo=UTC), datetime(2026, 10, 5, tzinfo=UTC)
    db.tasks.insert_one(ai_runner("s-0", ended=sept_9))
    run_chore(db, now=sept_9 + timedelta(hours=1), settings=settings, registry=registry)
    assert finalize_invoices(db, now=oct_5, settings=settings) == ["acme:2026-09"]
    db.tasks.insert_many(
        [ai_runner(f"late-{n}", ended=sept_9, model=f"m-{n:04d}") for n in range(80)]
    )
    monkeypatch.setattr(invoices, "MAX_DRAFT_BYTES", 20_000)
    for minutes in (0, 5):
        with pytest.raises(InvoiceTooLarge, match="'acme' for 2026-10"):
            run_chore(
                db, now=oct_5 + timedelta(minutes=minutes), settings=settings, registry=registry
            )
        assert db.billing_dirty.count_documents({"org": "acme", "period": "2026-10"}) == 1
        assert db.billing_dirty.count_documents({"org": "acme", "period": "2026-09"}) == 0
    monkeypatch.setattr(invoices, "MAX_DRAFT_BYTES", 16 * 1024 * 1024 - 64 * 1024)
    run_chore(db, now=oct_5 + timedelta(minutes=10), settings=settings, registry=registry)
    october = db.billing_invoices.find_one({"_id": "acme:2026-10"})
    assert (october["runs"], october["entries"]) == (80, 80)
    assert db.billing_dirty.count_documents({}) == 0


class DyingFinalize:
    """A finalize in a thread that stamps its period's entries and pauses before its
    freeze; released, it freezes the draft and dies before its own sweep."""

    class Died(Exception):
        pass

    def __init__(self, db: Any, now: datetime, settings: Settings):
        self.at_freeze, self.released = threading.Event(), threading.Event()
        self._db, self._now, self._settings = db, now, settings
        self._thread = threading.Thread(target=self._finalize, daemon=True)

    def start(self) -> None:
        """Run it up to its freeze."""
        self._thread.start()
        assert self.at_freeze.wait(30)

    def freeze_and_die(self) -> None:
        self.released.set()
        self._thread.join(30)
        assert not self._thread.is_alive()

    def _around(self, collection: str, method: str, perform: Any) -> Any:
        if self.released.is_set():
            raise self.Died(f"after its freeze, at {collection}.{method}")
        if (collection, method) == ("billing_invoices", "update_one"):
            self.at_freeze.set()
            assert self.released.wait(30)
        return perform()

    def _finalize(self) -> None:
        with contextlib.suppress(self.Died):
            finalize_invoices(
                DatabaseProxy(self._db, around=self._around),
                now=self._now,
                grace=timedelta(0),
                settings=self._settings,
            )


def swept_by_this_thread(monkeypatch: pytest.MonkeyPatch) -> list[set[tuple[str, str]]]:
    """The pairs of each `Sweeper.sweep` the calling thread makes from now on (not those of a
    finalize in another thread)."""
    sweeps: list[set[tuple[str, str]]] = []
    sweep, caller = Sweeper.sweep, threading.current_thread()

    def recorded(self: Sweeper, pairs: set[tuple[str, str]], now: datetime) -> Any:
        if threading.current_thread() is caller:
            sweeps.append(set(pairs))
        return sweep(self, pairs, now)

    monkeypatch.setattr(Sweeper, "sweep", recorded)
    return sweeps


def test_a_draft_frozen_under_a_runs_feet_has_the_runs_usage_billed_late_by_that_run(
    db, settings, registry, monkeypatch
):
    """design.md: a draft finalized under our feet, sweep it, then its target. A finalize
    took its token and stamped October's entries, then paused before its freeze; a run
    metered a runner of October (unstamped: after the stamps) and swept October (a draft
    then); the finalize froze it before the run's build and died before its own sweep.
    The run's build finds October final: the same run moves its entry late into November
    and bills it there, and the ledger has no entry left on no invoice."""
    oct_20, nov_1 = datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 1, 5, tzinfo=UTC)
    db.tasks.insert_one(ai_runner("early", ended=oct_20))
    run_chore(db, now=oct_20 + timedelta(hours=1), settings=settings, registry=registry)
    db.tasks.insert_one(ai_runner("last", ended=nov_1 - timedelta(hours=6)))  # October 31

    october = DyingFinalize(db, nov_1, settings)
    october.start()
    rebuild = invoices.Invoices.rebuild

    def frozen_first(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not october.released.is_set():
            october.freeze_and_die()
        return rebuild(self, *args, **kwargs)

    monkeypatch.setattr(invoices.Invoices, "rebuild", frozen_first)
    sweeps = swept_by_this_thread(monkeypatch)
    run_chore(db, now=nov_1, settings=settings, registry=registry)

    # October swept once more once found final, its target built: then nothing is left to do
    # (three rounds would sweep October again and try to build it again, for nothing).
    assert sweeps == [{("acme", "2026-10")}, {("acme", "2026-10")}]
    assert db.billing_invoices.find_one({"_id": "acme:2026-10"})["status"] == "final"
    assert db.billing_invoices.find_one({"_id": "acme:2026-10"})["runs"] == 1
    november = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert november is not None and (november["runs"], november["entries"]) == (1, 1)
    assert [line["late"] for line in november["lines"]] == [True]
    assert db.billing_ledger.count_documents({"booked": "2026-10", "fence": None}) == 0

    # The dead finalize's mark on October, still open, brings it to the next run's settle:
    # read final by its first sweep, it is not swept again.
    sweeps.clear()
    run_chore(db, now=nov_1 + timedelta(minutes=5), settings=settings, registry=registry)
    assert sweeps == [{("acme", "2026-10")}]


def test_two_months_frozen_in_turn_under_a_run_have_its_usage_billed_late_by_that_run(
    db, settings, registry, monkeypatch
):
    """settle's rounds: a draft finalized under our feet, sweep it, then its target, which
    may be finalized under our feet too. A run whose clock reads November 30 (started
    before midnight) meters a runner of October while finalizes lag: October is frozen
    before its first build; November, whose entries a second finalize stamped before the
    run swept October's entry into it, before its second. The same run sweeps that entry
    on into December and bills it there: nothing waits for the next run."""
    oct_20, nov_15 = datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 15, tzinfo=UTC)
    nov_1, dec_1 = datetime(2026, 11, 1, 5, tzinfo=UTC), datetime(2026, 12, 1, 5, tzinfo=UTC)
    nov_30 = datetime(2026, 11, 30, 23, tzinfo=UTC)
    for runner, ended in (("early", oct_20), ("mid", nov_15)):
        db.tasks.insert_one(ai_runner(runner, ended=ended))
        run_chore(db, now=ended + timedelta(hours=1), settings=settings, registry=registry)
    # Ended October 31, its last write stamped just before the run.
    last = ai_runner("last", ended=nov_1 - timedelta(hours=6), stamp=nov_30.timestamp() - 60)
    db.tasks.insert_one(last)

    october, november = DyingFinalize(db, nov_1, settings), DyingFinalize(db, dec_1, settings)
    october.start()
    rebuild = invoices.Invoices.rebuild
    builds: list[object] = []

    def frozen_in_turn(self: Any, *args: Any, **kwargs: Any) -> Any:
        builds.append(args)
        if len(builds) == 1:
            october.freeze_and_die()
            november.start()  # stamps November's entries before the run sweeps into it
        elif len(builds) == 2:
            november.freeze_and_die()
        return rebuild(self, *args, **kwargs)

    monkeypatch.setattr(invoices.Invoices, "rebuild", frozen_in_turn)
    sweeps = swept_by_this_thread(monkeypatch)
    run_chore(db, now=nov_30, settings=settings, registry=registry)

    for period, runs in (("2026-10", 1), ("2026-11", 1)):
        frozen = db.billing_invoices.find_one({"_id": f"acme:{period}"})
        assert (frozen["status"], frozen["runs"]) == ("final", runs)
    december = db.billing_invoices.find_one({"_id": "acme:2026-12"})
    assert december is not None and (december["runs"], december["entries"]) == (1, 1)
    assert [(line["tokens"], line["late"]) for line in december["lines"]] == [(1_000, True)]
    assert db.billing_ledger.count_documents({"fence": None, "booked": {"$ne": "2026-12"}}) == 0
    assert sweeps == [{("acme", "2026-10")}, {("acme", "2026-10")}, {("acme", "2026-11")}]
    # Left: the dead finalizes' own marks (open, on the months they froze), none of the run's.
    marks = [(m["period"], m["open"]) for m in db.billing_dirty.find(sort=[("period", 1)])]
    assert marks == [("2026-10", True), ("2026-11", True)]


@pytest.mark.parametrize("how", ["removed", "set-to-1", "set-below-the-drafts-own-ticket"])
def test_new_usage_is_billed_after_the_build_counter_was_set_back(db, settings, registry, how):
    """`billing_counters`' `draft_builds` set back by hand below the tickets drafts hold
    (removed, set to 1, or to one below the draft's own, so that the next build takes the
    very ticket the draft holds): the next run does not take the draft for one built after
    it (skipped, its marks closed, its new usage left off until a full pass) and bills the
    new usage at once; the counter goes past every ticket stored, the other org's too."""
    ended = NOW - timedelta(hours=3)
    for n in range(3):
        db.tasks.insert_one(ai_runner(f"r{n}", ended=ended))
        run_chore(db, now=NOW + timedelta(minutes=n), settings=settings, registry=registry)
    db.tasks.insert_one(ai_runner("other", ended=ended, org="globex"))
    run_chore(db, now=NOW + timedelta(minutes=5), settings=settings, registry=registry)
    acme = db.billing_invoices.find_one({"_id": "acme:2026-11"})["build_ticket"]
    highest = db.billing_invoices.find_one({"_id": "globex:2026-11"})["build_ticket"]
    assert highest > acme > 2
    if how == "removed":
        db.billing_counters.delete_many({})
    else:
        set_to = 1 if how == "set-to-1" else acme - 1
        db.billing_counters.update_one({"_id": "draft_builds"}, {"$set": {"value": set_to}})
    db.tasks.insert_one(ai_runner("r3", ended=ended))
    run_chore(db, now=NOW + timedelta(hours=1), settings=settings, registry=registry)
    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert (draft["runs"], sum(line["tokens"] for line in draft["lines"])) == (4, 4_000)
    assert draft["build_ticket"] > highest
    assert db.billing_counters.find_one({"_id": "draft_builds"})["value"] == draft["build_ticket"]
    assert db.billing_dirty.count_documents({}) == 0


def test_a_pass_that_finds_its_draft_built_by_a_later_build_takes_no_new_ticket(registry):
    """Only a counter set back is gone past: a pass paused after taking its ticket while
    another run (no lock) builds the same draft on a later ticket reads the counter once,
    sees that ticket handed out after its own, and skips the draft as built after it, as
    before, with no ticket more than a run alone takes; the draft holds every entry once."""
    config = Settings(mongo_url="mongomock://races", batch_size=20, redis_url=None)
    ended = NOW - timedelta(hours=3)

    def run(db: Any) -> Any:
        return run_chore(db, now=NOW + timedelta(hours=1), registry=registry, settings=config)

    def seeded() -> Any:
        db = mongomock.MongoClient(tz_aware=True)["main"]
        db.tasks.insert_many([ai_runner(f"r{n}", ended=ended) for n in range(3)])
        run_chore(db, now=NOW, registry=registry, settings=config)
        db.tasks.insert_one(ai_runner("r3", ended=ended))
        return db

    alone = Recorder()
    run(DatabaseProxy(seeded(), around=alone))
    ticket = alone.calls.index("billing_counters.find_one_and_update")
    draft_read = alone.calls.index("billing_invoices.find", ticket) + 1  # 1-based, as PauseAt
    db = seeded()
    lock, pause, paused_calls = threading.Lock(), PauseAt(draft_read), Recorder()

    def around(collection: str, method: str, perform: Any) -> Any:
        return pause(collection, method, lambda: paused_calls(collection, method, perform))

    def meanwhile() -> None:
        run(DatabaseProxy(db, lock=lock))

    assert (
        pause_at(lambda: run(DatabaseProxy(db, around=around, lock=lock)), pause, meanwhile) is None
    )
    tickets = [c for c in paused_calls.calls if c == "billing_counters.find_one_and_update"]
    assert len(tickets) == alone.calls.count("billing_counters.find_one_and_update") == 1
    assert paused_calls.calls.count("billing_counters.find_one") == 1  # the counter read once
    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert (draft["runs"], draft["entries"]) == (4, 4)
    assert sum(line["tokens"] for line in draft["lines"]) == 4_000


class Gate:
    """An `around` hook that blocks before the first `collection.method` call until `go` is
    set (`reached` set as it blocks); with `then_die`, every call after that one raises."""

    def __init__(self, call: str, *, then_die: bool = False):
        self.call, self.then_die = call, then_die
        self.reached, self.go = threading.Event(), threading.Event()
        self.passed = False

    def __call__(self, collection: str, method: str, perform: Any) -> Any:
        if self.passed and self.then_die:
            raise ConnectionError(f"died before {collection}.{method}")
        if f"{collection}.{method}" == self.call and not self.passed:
            self.reached.set()
            assert self.go.wait(60), "never released"
            self.passed = True
        return perform()


def in_thread(operation: Any) -> threading.Thread:
    def target() -> None:
        with contextlib.suppress(ConnectionError):  # a run that dies, as planned
            operation()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("set_back", ["lowered", "removed"])
@pytest.mark.parametrize("order", ["in-flight-run-commits-first", "next-run-commits-and-dies"])
def test_a_run_in_flight_while_the_counter_is_set_back_bills_each_entry_once(
    registry, set_back, order
):
    """A run R holds its ticket, not yet written, when the counter is set back by hand; the
    next run P finds the set-back and goes past every stored ticket: far enough past that
    R's ticket is not handed out again (a build tells its own commit by its ticket). With
    R's ticket reused, R would take P's commit for its own or P R's, and an entry was
    flagged folded that the draft does not hold, or folded twice. Either order, P even
    dying right after its commit: the draft holds each runner once."""
    config = Settings(mongo_url="mongomock://set-back", batch_size=20, redis_url=None)
    ended = NOW - timedelta(hours=3)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    lock = threading.Lock()

    def run(at: timedelta, around: Any = None) -> Any:
        proxy = (
            DatabaseProxy(db, lock=lock)
            if around is None
            else DatabaseProxy(db, around=around, lock=lock)
        )
        return run_chore(proxy, now=NOW + at, registry=registry, settings=config)

    for n in range(3):
        db.tasks.insert_one(ai_runner(f"r{n}", ended=ended))
        run(timedelta(minutes=n))
    db.tasks.insert_one(ai_runner("r3", ended=ended))
    r_gate = Gate("billing_invoices.bulk_write")
    r_run = in_thread(lambda: run(timedelta(hours=1), r_gate))
    assert r_gate.reached.wait(60)  # R holds its ticket, its commit not made
    if set_back == "removed":
        db.billing_counters.delete_many({})
    else:
        db.billing_counters.update_one({"_id": "draft_builds"}, {"$set": {"value": 1}})
    db.tasks.insert_one(ai_runner("r4", ended=ended))
    p_gate = Gate("billing_invoices.bulk_write", then_die=order == "next-run-commits-and-dies")
    p_run = in_thread(lambda: run(timedelta(hours=2), p_gate))
    assert p_gate.reached.wait(60)
    first, second = (r_gate, p_gate) if order == "in-flight-run-commits-first" else (p_gate, r_gate)
    first.go.set()
    (r_run if first is r_gate else p_run).join(60)
    second.go.set()
    r_run.join(60)
    p_run.join(60)
    run(timedelta(hours=3))  # what the next run settles (P's marks, when it died)

    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert (draft["runs"], draft["entries"]) == (5, 5)
    assert sum(line["tokens"] for line in draft["lines"]) == 5_000
    assert Pipeline(db, config, registry).invoices.check_drafts({("acme", "2026-11")}) == []


def test_a_pass_that_went_past_a_set_back_counter_reads_the_anomalies_again(db, settings, registry):
    """design.md: a pass takes its ticket before it reads the open anomalies and the
    drafts. One that finds a set-back counter takes a new ticket after those reads, so it
    reads them again: a pass S of another run, whose ticket lies between its two and whose
    run recorded an anomaly on the month meanwhile, skips the draft as built after it, and
    the draft must say that the month needs review."""
    ended = NOW - timedelta(hours=3)
    for n in range(5):
        db.tasks.insert_one(ai_runner(f"r{n}", ended=ended))
        run_chore(db, now=NOW + timedelta(minutes=n), settings=settings, registry=registry)
    # Set back below the draft's ticket by more than two: P takes 2, S 3.
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["build_ticket"] > 3
    db.billing_counters.update_one({"_id": "draft_builds"}, {"$set": {"value": 1}})
    pair, lock = ("acme", "2026-11"), threading.Lock()

    def rebuild(gate: Gate) -> threading.Thread:
        proxy = DatabaseProxy(db, around=gate, lock=lock)
        invoices = Pipeline(proxy, settings, registry).invoices
        return in_thread(lambda: invoices.rebuild({pair}, NOW + timedelta(hours=1)))

    p_gate = Gate("billing_counters.find_one")  # P read the anomalies and the draft
    p_pass = rebuild(p_gate)
    assert p_gate.reached.wait(60)
    db.billing_anomalies.insert_one(  # S's run records an anomaly on the month...
        {
            "_id": "a-1",
            "runner_id": "r1",
            "kind": "counter_reset",
            "org": "acme",
            "period": "2026-11",
            "detail": "its counters went down",
            "resolved": False,
            "first_seen": NOW,
            "run_id": "S",
        }
    )
    s_gate = Gate("billing_invoices.find")  # ...and its pass takes its ticket
    s_pass = rebuild(s_gate)
    assert s_gate.reached.wait(60)
    p_gate.go.set()
    p_pass.join(60)
    s_gate.go.set()
    s_pass.join(60)
    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert Pipeline(db, settings, registry).invoices._anomalies.open_periods({pair}) == {pair}
    assert draft["needs_review"] is True


def test_a_set_back_counter_goes_past_a_ticket_a_server_returns_as_a_long(db, settings, registry):
    """A real server returns a 64-bit integer (a shell's `NumberLong`, or any ticket past
    2**31) as `bson.Int64`: it counts as a ticket stored, and a set-back counter goes past
    it, not only past the tickets the pass read."""
    ended = NOW - timedelta(hours=3)
    for org in ("acme", "globex", "acme"):
        db.tasks.insert_one(
            ai_runner(f"{org}-{db.tasks.count_documents({})}", ended=ended, org=org)
        )
        run_chore(db, now=NOW, settings=settings, registry=registry)
    long_ticket = Int64(2**40)
    db.billing_invoices.update_one(
        {"_id": "globex:2026-11"}, {"$set": {"build_ticket": long_ticket}}
    )
    db.billing_counters.update_one({"_id": "draft_builds"}, {"$set": {"value": 1}})
    db.tasks.insert_one(ai_runner("acme-late", ended=ended))
    run_chore(db, now=NOW + timedelta(hours=1), settings=settings, registry=registry)
    acme = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert acme["runs"] == 3
    assert db.billing_counters.find_one({"_id": "draft_builds"})["value"] > long_ticket


def test_a_ticket_edited_past_what_the_counter_can_pass_is_refused_naming_its_draft(
    db, settings, registry
):
    """A draft's `build_ticket` edited to MongoDB's largest integer looks like a set-back
    counter; going past it would overflow the counter (a server refuses that `$inc`, and
    every later build with it). The run is refused instead, naming the draft and what to
    do, and the counter is left as it was."""
    ended = NOW - timedelta(hours=3)
    db.tasks.insert_one(ai_runner("r0", ended=ended))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    db.billing_invoices.update_one({"_id": "acme:2026-11"}, {"$set": {"build_ticket": 2**63 - 1}})
    counter = db.billing_counters.find_one({"_id": "draft_builds"})["value"]
    db.tasks.insert_one(ai_runner("r1", ended=ended))
    with pytest.raises(MalformedDocument) as refused:
        run_chore(db, now=NOW + timedelta(hours=1), settings=settings, registry=registry)
    said = str(refused.value)
    assert "'acme:2026-11'" in said and "leaves the draft-build counter no room" in said
    assert "chore run --full --org acme" in said
    assert db.billing_counters.find_one({"_id": "draft_builds"})["value"] == counter + 1  # its own


# Found untested by mutation testing (stop 58).


def test_a_new_databases_first_build_takes_ticket_1_not_one_past_no_stored_ticket(
    db, settings, registry
):
    """design.md: a new counter's first ticket is 1 (the first build of this database); it
    goes past the stored tickets only when a draft holds one, so with no draft stored the
    first draft is built on ticket 1, never one past TICKETS_IN_FLIGHT."""
    db.tasks.insert_one(ai_runner("r0", ended=NOW - timedelta(hours=3)))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["build_ticket"] == 1
    assert db.billing_counters.find_one({"_id": "draft_builds"})["value"] == 1


def test_a_counter_edited_while_a_pass_reads_its_drafts_is_refused_naming_it(
    db, settings, registry
):
    """The counter edited by hand to text between a pass's ticket and its draft read, a
    draft holding a later ticket (another build's): the pass reads the counter to tell a
    set-back one and refuses it as `upsert_as_written` would, one line naming the counter
    and its remedy, not a comparison of a number with text."""
    ended = NOW - timedelta(hours=3)
    db.tasks.insert_one(ai_runner("r0", ended=ended))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    db.tasks.insert_one(ai_runner("r1", ended=ended))

    def edited_meanwhile(collection: str, method: str, perform: Any) -> Any:
        if f"{collection}.{method}" == "billing_invoices.find":
            ticket = db.billing_counters.find_one({"_id": "draft_builds"})["value"]
            db.billing_invoices.update_one(
                {"_id": "acme:2026-11"}, {"$set": {"build_ticket": ticket + 5}}
            )
            db.billing_counters.update_one({"_id": "draft_builds"}, {"$set": {"value": "x"}})
        return perform()

    proxy = DatabaseProxy(db, around=edited_meanwhile)
    pass_ = Pipeline(proxy, settings, registry).invoices
    with pytest.raises(MalformedDocument) as refused:
        pass_.rebuild({("acme", "2026-11")}, NOW + timedelta(hours=1))
    said = str(refused.value)
    assert "'draft_builds'" in said and "(got 'x')" in said
    assert said.endswith(invoices._SET_COUNTER)


@pytest.mark.parametrize("past_the_room", [0, 1])
def test_a_ticket_edited_near_the_largest_integer_is_gone_past_while_the_counter_has_room(
    db, settings, registry, past_the_room
):
    """design.md: a set-back counter goes past the highest stored ticket by
    TICKETS_IN_FLIGHT, and must still hand out TICKETS_IN_FLIGHT more below MongoDB's
    largest integer. A draft's ticket edited to exactly that limit is gone past (the new
    usage billed, the counter `TICKETS_IN_FLIGHT` above it); one more, and the run is
    refused, naming the draft, the counter left at its own ticket."""
    ended = NOW - timedelta(hours=3)
    db.tasks.insert_one(ai_runner("r0", ended=ended))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    edited = MAX_INT64 - 2 * invoices.TICKETS_IN_FLIGHT + past_the_room
    db.billing_invoices.update_one({"_id": "acme:2026-11"}, {"$set": {"build_ticket": edited}})
    db.billing_counters.update_one({"_id": "draft_builds"}, {"$set": {"value": 1}})
    db.tasks.insert_one(ai_runner("r1", ended=ended))
    later = NOW + timedelta(hours=1)
    if past_the_room:
        with pytest.raises(MalformedDocument, match="leaves the draft-build counter no room"):
            run_chore(db, now=later, settings=settings, registry=registry)
        assert db.billing_counters.find_one({"_id": "draft_builds"})["value"] == 2
        return
    run_chore(db, now=later, settings=settings, registry=registry)
    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert (draft["runs"], draft["build_ticket"]) == (2, edited + invoices.TICKETS_IN_FLIGHT + 1)


def test_a_pass_alone_reads_its_drafts_once_and_not_back_after_its_commit(db, settings, registry):
    """design.md: a pass reads its drafts again after its ticket only when it found a
    set-back counter, and reads them back after its commit only when the server counted
    updates that matched nothing. A run alone, its draft committed: one read of the drafts
    between its ticket and its commit, none from the commit to the flags of its entries,
    and the draft holds both runners."""
    ended = NOW - timedelta(hours=3)
    db.tasks.insert_one(ai_runner("r0", ended=ended))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    db.tasks.insert_one(ai_runner("r1", ended=ended))
    recorder = Recorder()
    run_chore(
        DatabaseProxy(db, around=recorder),
        now=NOW + timedelta(hours=1),
        settings=settings,
        registry=registry,
    )
    ticket = recorder.calls.index("billing_counters.find_one_and_update")
    commit = recorder.calls.index("billing_invoices.bulk_write")
    flags = recorder.calls.index("billing_ledger.update_many", commit)
    # its drafts read once after its ticket (no set-back counter to go past)...
    assert recorder.calls[ticket:commit].count("billing_invoices.find") == 1
    assert "billing_invoices.find_one" not in recorder.calls[ticket:commit]
    # ...and not read back after its commit
    assert "billing_invoices.find" not in recorder.calls[commit:flags]
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["runs"] == 2


def test_a_pass_whose_commit_missed_one_replaced_draft_keeps_the_others_it_committed(
    db, settings, registry, monkeypatch
):
    """design.md: a commit that matched nothing for one draft (another build replaced it
    between the read and the commit, every pass here) makes the pass read its drafts back
    to see which were refused: only that one. Another org's draft, committed in the same
    bulk write, is written at once, not taken for refused and built pass after pass until
    the rebuild gives it up too."""
    ended = NOW - timedelta(hours=3)
    for org in ("acme", "globex"):
        db.tasks.insert_one(ai_runner(f"{org}-0", ended=ended, org=org))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    for org in ("acme", "globex"):
        db.tasks.insert_one(ai_runner(f"{org}-1", ended=ended, org=org))
    commit = invoices.update_where

    def acme_replaced_first(collection: Any, updates: Any) -> Any:
        if any(where["_id"] == "acme:2026-11" for where, _, _ in updates):
            ticket = db.billing_counters.find_one_and_update(
                {"_id": "draft_builds"}, {"$inc": {"value": 1}}, return_document=True
            )["value"]
            db.billing_invoices.update_one(
                {"_id": "acme:2026-11"}, {"$set": {"build_ticket": ticket}}
            )
        return commit(collection, updates)

    with monkeypatch.context() as patch:
        patch.setattr(invoices, "update_where", acme_replaced_first)
        report = run_chore(db, now=NOW + timedelta(hours=1), settings=settings, registry=registry)
    assert report.invoices == ["globex:2026-11"]
    globex = db.billing_invoices.find_one({"_id": "globex:2026-11"})
    assert (globex["runs"], globex["pending_fold"]) == (2, None)
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["runs"] == 1  # given up on


def test_a_removed_counter_is_gone_past_before_a_pass_that_reads_no_draft(db, settings, registry):
    """design.md: a new counter (its document removed by hand) goes past every stored
    ticket before the pass reads anything, not only when the pass reads a draft holding
    one: a new org's first draft, built after the removal, holds a ticket past the other
    org's, never the 1 runs before the removal may still hold."""
    ended = NOW - timedelta(hours=3)
    db.tasks.insert_one(ai_runner("a-0", ended=ended))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    acme = db.billing_invoices.find_one({"_id": "acme:2026-11"})["build_ticket"]
    db.billing_counters.delete_many({})
    db.tasks.insert_one(ai_runner("g-0", ended=ended, org="globex"))
    run_chore(db, "globex", now=NOW + timedelta(hours=1), settings=settings, registry=registry)
    globex = db.billing_invoices.find_one({"_id": "globex:2026-11"})
    assert globex["runs"] == 1
    assert globex["build_ticket"] > acme + invoices.TICKETS_IN_FLIGHT


def test_a_set_back_counter_is_found_by_the_highest_ticket_read_not_the_lowest(
    db, settings, registry
):
    """design.md: a pass that reads a draft holding a ticket above the counter's value has
    found a set-back counter. The counter set back below globex's ticket; a run P takes
    its ticket, and before P reads its drafts a build S beside it commits acme's draft on
    a later ticket the counter did hand out. P reads both: acme's ticket, later than its
    own, is S's (rightly skipped alone), but globex's lies above the counter, so P goes
    past every stored ticket and bills globex's new usage, not skip both drafts."""
    ended = NOW - timedelta(hours=3)
    db.tasks.insert_one(ai_runner("a-0", ended=ended))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    for n in range(4):
        db.tasks.insert_one(ai_runner(f"g-{n}", ended=ended, org="globex"))
        run_chore(db, now=NOW + timedelta(minutes=n), settings=settings, registry=registry)
    acme = db.billing_invoices.find_one({"_id": "acme:2026-11"})["build_ticket"]
    assert db.billing_invoices.find_one({"_id": "globex:2026-11"})["build_ticket"] > acme + 2
    db.billing_counters.update_one({"_id": "draft_builds"}, {"$set": {"value": acme}})
    db.tasks.insert_many(
        [ai_runner("a-1", ended=ended), ai_runner("g-4", ended=ended, org="globex")]
    )
    taken = threading.Event()

    def s_beside(collection: str, method: str, perform: Any) -> Any:
        if taken.is_set():  # P's first call after its ticket: S builds acme's draft
            taken.clear()
            Pipeline(db, settings, registry).invoices.rebuild(
                {("acme", "2026-11")}, NOW + timedelta(hours=1)
            )
        if f"{collection}.{method}" == "billing_counters.find_one_and_update":
            taken.set()
        return perform()

    proxy = DatabaseProxy(db, around=s_beside)
    run_chore(proxy, now=NOW + timedelta(hours=1), settings=settings, registry=registry)
    globex = db.billing_invoices.find_one({"_id": "globex:2026-11"})
    assert (globex["runs"], globex["entries"]) == (5, 5)
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["runs"] == 2
    assert db.billing_dirty.count_documents({}) == 0


def test_a_counter_removed_after_the_first_build_is_gone_past_that_builds_ticket(
    db, settings, registry
):
    """The counter removed when the only draft holds ticket 1 (the first build's): the next
    build's new counter hands out 1 again, which a draft holds, so it goes past it (never
    builds on a ticket a draft holds) and bills the new usage."""
    ended = NOW - timedelta(hours=3)
    db.tasks.insert_one(ai_runner("r0", ended=ended))
    run_chore(db, now=NOW, settings=settings, registry=registry)
    assert db.billing_invoices.find_one({"_id": "acme:2026-11"})["build_ticket"] == 1
    db.billing_counters.delete_many({})
    db.tasks.insert_one(ai_runner("r1", ended=ended))
    run_chore(db, now=NOW + timedelta(hours=1), settings=settings, registry=registry)
    draft = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert (draft["runs"], draft["entries"]) == (2, 2)
    assert draft["build_ticket"] == 1 + invoices.TICKETS_IN_FLIGHT + 1


def test_a_target_frozen_and_swept_under_a_runs_move_is_swept_on_by_that_run_not_left(
    db, settings, registry, monkeypatch
):
    """design.md, the sweep's edge: a target frozen under the run by a finalizer that swept
    it and cleared its marks before the run's move landed there. The run swept October's
    late entry towards November; before its move landed, a finalize froze November, swept
    it (nothing there yet), deleted its mark and died before its sweep of every final. The
    move lands in the final November: its build is refused, and November was not read final
    by a sweep of this settle, so the same run sweeps it on into December in its next round
    and bills it there, priced at its own usage time. Nothing waits for the next finalize,
    and the final November is the one the finalize froze."""
    oct_20, nov_15 = datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 15, tzinfo=UTC)
    nov_1, dec_1 = datetime(2026, 11, 1, 5, tzinfo=UTC), datetime(2026, 12, 1, 5, tzinfo=UTC)
    nov_30 = datetime(2026, 11, 30, 23, tzinfo=UTC)
    db.tasks.insert_one(ai_runner("early", ended=oct_20))
    run_chore(db, now=oct_20 + timedelta(hours=1), settings=settings, registry=registry)
    assert finalize_invoices(db, now=nov_1, grace=timedelta(0), settings=settings) == [
        "acme:2026-10"
    ]
    db.tasks.insert_one(ai_runner("mid", ended=nov_15, tokens=2_000))
    run_chore(db, now=nov_15 + timedelta(hours=1), settings=settings, registry=registry)
    # Ended October 31 (final), its last write stamped just before the run.
    db.tasks.insert_one(
        ai_runner("last", ended=nov_1 - timedelta(hours=6), stamp=nov_30.timestamp() - 60)
    )

    class Died(Exception):
        pass

    def dies(self: Sweeper, now: datetime, org: str | None = None) -> None:
        raise Died("before its sweep of every final")

    ledger_sweep, moves = invoices.Ledger.sweep, []

    def finalized_first(self: Any, org: str, period: str, fence: Any, into: str) -> None:
        if into == "2026-11" and not moves:
            ours = len(sweeps)
            with monkeypatch.context() as patch:
                patch.setattr(Sweeper, "sweep_all", dies)
                with pytest.raises(Died):
                    finalize_invoices(db, now=dec_1, grace=timedelta(0), settings=settings)
            assert sweeps[ours:] == [{("acme", "2026-11")}]  # its sweep after its freeze
            del sweeps[ours:]
            frozen = db.billing_invoices.find_one({"_id": "acme:2026-11"})
            assert frozen["status"] == "final"
            assert db.billing_dirty.count_documents({"period": "2026-11", "open": True}) == 1
            moves.append(frozen)
        ledger_sweep(self, org, period, fence, into)

    monkeypatch.setattr(invoices.Ledger, "sweep", finalized_first)
    sweeps = swept_by_this_thread(monkeypatch)
    run_chore(db, now=nov_30, settings=settings, registry=registry)

    assert len(moves) == 1  # the finalize ran between the run's mark and its move
    assert sweeps == [{("acme", "2026-10")}, {("acme", "2026-11")}]
    november = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert november == moves[0]  # the final as frozen: runs 1, 2,000 tokens, 300 µ$
    assert (november["runs"], november["total_micros"]) == (1, 300)
    december = db.billing_invoices.find_one({"_id": "acme:2026-12"})
    assert december is not None and december["status"] == "draft"
    assert [(ln["tokens"], ln["late"], ln["amount_micros"]) for ln in december["lines"]] == [
        (1_000, True, 150)
    ]
    assert (december["runs"], december["entries"], december["total_micros"]) == (1, 1, 150)
    # Every entry is on exactly one invoice: none left in a final it is not on.
    assert db.billing_ledger.count_documents({"booked": "2026-11", "fence": None}) == 0
    assert db.billing_ledger.count_documents({"booked": "2026-12", "late": True}) == 1
    assert db.billing_dirty.count_documents({}) == 0


def test_late_usage_left_in_a_final_by_a_runs_last_round_waits_for_the_next_finalize(
    db, settings, registry, monkeypatch
):
    """design.md: "a delay, not a loss: every finalize sweeps every final". A run lagging
    by months (its clock on November 30) sweeps October's late entry, and each of its three
    rounds' targets is frozen, swept and cleared of its finalizer's marks just before the
    move lands there (November, December, then January). After its third round the entry
    is in the final January, on no invoice, with no mark left to bring it to a settle: later
    runs do not bill it. The next finalize sweeps it into the open month, the run after
    bills it there once (late, priced at its own usage time), and no final ever changes."""
    utc = UTC
    db.tasks.insert_one(ai_runner("oct", ended=datetime(2026, 10, 20, tzinfo=utc)))
    run_chore(db, now=datetime(2026, 10, 21, tzinfo=utc), settings=settings, registry=registry)
    nov_1 = datetime(2026, 11, 1, 5, tzinfo=utc)
    assert finalize_invoices(db, now=nov_1, grace=timedelta(0), settings=settings)
    for n, month in enumerate((11, 12), start=2):  # November and December usage, metered
        ended = datetime(2026, month, 15, tzinfo=utc)
        db.tasks.insert_one(ai_runner(f"m{month}", ended=ended, tokens=1_000 * n))
        run_chore(db, now=ended + timedelta(hours=1), settings=settings, registry=registry)
    jan_15 = datetime(2027, 1, 15, tzinfo=utc)
    db.tasks.insert_one(ai_runner("m1", ended=jan_15, tokens=4_000))
    run_chore(db, now=jan_15 + timedelta(hours=1), settings=settings, registry=registry)
    nov_30 = datetime(2026, 11, 30, 23, tzinfo=utc)
    written = (jan_15 + timedelta(hours=2)).timestamp()  # after the cursor
    db.tasks.insert_one(ai_runner("last", ended=nov_1 - timedelta(hours=6), stamp=written))

    class Died(Exception):
        pass

    def dies(self: Sweeper, now: datetime, org: str | None = None) -> None:
        raise Died("before its sweep of every final")

    closes = {"2026-11": "2026-12-01", "2026-12": "2027-01-01", "2027-01": "2027-02-01"}
    ledger_sweep, frozen = invoices.Ledger.sweep, {}

    def frozen_first(self: Any, org: str, period: str, fence: Any, into: str) -> None:
        if into in closes and into not in frozen:
            day = datetime.fromisoformat(closes[into]).replace(hour=5, tzinfo=utc)
            with monkeypatch.context() as patch:
                patch.setattr(Sweeper, "sweep_all", dies)
                with pytest.raises(Died):
                    finalize_invoices(db, now=day, grace=timedelta(0), settings=settings)
            frozen[into] = db.billing_invoices.find_one({"_id": f"acme:{into}"})
            assert frozen[into]["status"] == "final"
        ledger_sweep(self, org, period, fence, into)

    with monkeypatch.context() as patch:
        patch.setattr(invoices.Ledger, "sweep", frozen_first)
        run_chore(db, now=nov_30, settings=settings, registry=registry)
    assert list(frozen) == ["2026-11", "2026-12", "2027-01"]  # one per round, to the cap
    finals = {d["_id"]: d for d in db.billing_invoices.find({"status": "final"})}
    assert sorted(finals) == ["acme:2026-10", "acme:2026-11", "acme:2026-12", "acme:2027-01"]
    left = {"booked": "2027-01", "fence": None, "late": True}
    assert db.billing_ledger.count_documents(left) == 1  # on no invoice
    assert db.billing_dirty.count_documents({}) == 0

    def invoiced() -> int:
        return sum(line["tokens"] for d in db.billing_invoices.find() for line in d["lines"])

    assert invoiced() == 10_000  # 1,000 + 2,000 + 3,000 + 4,000; the late 1,000 not yet
    run_chore(db, now=nov_30 + timedelta(minutes=5), settings=settings, registry=registry)
    assert db.billing_ledger.count_documents(left) == 1  # a run alone does not bill it

    feb_1 = datetime(2027, 2, 1, 6, tzinfo=utc)
    assert finalize_invoices(db, now=feb_1, grace=timedelta(0), settings=settings) == []
    assert db.billing_ledger.count_documents(left) == 0
    run_chore(db, now=feb_1, settings=settings, registry=registry)
    february = db.billing_invoices.find_one({"_id": "acme:2027-02"})
    assert february is not None and february["status"] == "draft"
    assert [(ln["tokens"], ln["late"], ln["amount_micros"]) for ln in february["lines"]] == [
        (1_000, True, 150)
    ]
    assert invoiced() == 11_000 == sum(e["tokens"] for e in db.billing_ledger.find())
    assert {d["_id"]: d for d in db.billing_invoices.find({"status": "final"})} == finals
