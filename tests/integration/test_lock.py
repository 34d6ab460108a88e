"""The per-org Redis lock (redis-py's Lock): one owner, a TTL renewed by a run that makes
progress, takeover by a redelivery of a task whose process died, owner-only release; an org
is not metered without it, though billing would stay exact. Uses Redis DB 14 (flushed
before and after each test)."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import mongomock
import pytest
import redis
from celery.exceptions import Retry

from chores import Settings, run_chore, tasks
from chores.core.exceptions import LockUnavailable
from chores.core.lock import (
    KEY_PREFIX,
    UNKNOWN,
    Holder,
    OrgLock,
    lock_client,
    process_gone,
    release_quietly,
    start_time,
    this_place,
)

from support import GrantedLock, closed_port, flushed_redis_db
from support.dbproxy import DatabaseProxy


@pytest.fixture
def lock_url(redis_base_url: str) -> Iterator[str]:
    with flushed_redis_db(redis_base_url, 14) as url:
        yield url


@pytest.fixture
def client(lock_url: str) -> redis.Redis:
    return lock_client(lock_url)


def test_one_owner_at_a_time_and_only_the_owner_releases(client):
    mine = OrgLock(client, "acme", ttl_seconds=30)
    theirs = OrgLock(client, "acme", ttl_seconds=30)

    assert mine.acquire() is True
    assert theirs.acquire() is False
    assert theirs.release() is False  # not theirs to release
    assert client.get(KEY_PREFIX + "acme") == mine.token.encode()
    assert 0 < client.pttl(KEY_PREFIX + "acme") <= 30_000
    assert mine.release() is True
    assert client.exists(KEY_PREFIX + "acme") == 0
    assert theirs.acquire() is True


def test_an_expired_lock_is_free_and_its_late_owner_cannot_release_the_next_one(client):
    slow = OrgLock(client, "acme", ttl_seconds=0.1)
    assert slow.acquire()
    time.sleep(0.2)
    nxt = OrgLock(client, "acme", ttl_seconds=30)
    assert nxt.acquire() is True

    assert slow.release() is False
    assert client.get(KEY_PREFIX + "acme") == nxt.token.encode()


def a_dead_pid() -> int:
    """The id of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def held_by(task_id: str, pid: int, *, place: str | None = None, started: str | None = None) -> str:
    """A lock token as `OrgLock` writes it for a task run by process `pid` of this machine
    (or of `place`), started when that process did (or at `started`)."""
    started = start_time(pid) if started is None else started
    return Holder(task_id, place or this_place(), pid, started, uuid.uuid4().hex).token()


def test_a_redelivery_takes_over_its_dead_runs_lock_and_nothing_else_does(client):
    """A message redelivered after its process died on this host (OOM killer, SIGKILL) takes
    the dead run's lock over at once (TTL reset); any other message of the org skips."""
    key = KEY_PREFIX + "acme"
    client.set(key, held_by("task-1", a_dead_pid()), px=500)  # the dead run's, near its end

    again = OrgLock(client, "acme", ttl_seconds=30, task_id="task-1")
    other = OrgLock(client, "acme", ttl_seconds=30, task_id="task-2")
    assert other.acquire() is False
    assert again.acquire() is True
    assert client.get(key) == again.token.encode()
    assert client.pttl(key) > 29_000  # taken over: the full TTL again
    assert other.acquire() is False and other.release() is False
    assert again.renew() is True and again.release() is True
    assert client.exists(key) == 0


HOLDERS = [
    "alive in this process",
    "alive in another",
    "on another host",
    "in another pid namespace of this host name",
    "of an older version (a bare task id)",
]


@pytest.mark.parametrize("holder", HOLDERS)
def test_a_redelivery_while_its_first_delivery_runs_waits(client, holder):
    """A broker connection lost and restored hands a running message out again at once,
    to another thread, pool process or worker: the same task id must not take the running
    one's lock (it did: two runs of one org at once, celery review). Nor one whose holder
    ran elsewhere: nothing here can tell it is dead (a container on the host's network
    shares its host name, not its pids: review); its lock expires after the TTL."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host, boot, namespace = this_place().split("/")
    try:
        token = {
            "alive in this process": held_by("task-1", os.getpid()),
            "alive in another": held_by("task-1", sleeper.pid),
            "on another host": held_by("task-1", a_dead_pid(), place=f"x/{boot}/{namespace}"),
            "in another pid namespace of this host name": held_by(
                "task-1", a_dead_pid(), place=f"{host}/{boot}/1"
            ),
            "of an older version (a bare task id)": "task-1",
        }[holder]
        client.set(KEY_PREFIX + "acme", token, px=30_000)
        again = OrgLock(client, "acme", ttl_seconds=30, task_id="task-1")
        assert again.acquire() is False
        assert client.get(KEY_PREFIX + "acme") == token.encode()  # left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_holder_whose_pid_another_process_took_since_is_dead(client):
    """A pid is reused once its process is gone: the start time tells them apart."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        client.set(KEY_PREFIX + "acme", held_by("task-1", sleeper.pid, started="1"), px=30_000)
        assert OrgLock(client, "acme", ttl_seconds=30, task_id="task-1").acquire() is True
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_live_holder_that_cannot_be_looked_at_is_alive(client, monkeypatch):
    """Its start time unreadable (another user's process under `hidepid`, a failed read)
    once read as "another process took its pid": the live run's lock was taken (review)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        client.set(KEY_PREFIX + "acme", held_by("task-1", sleeper.pid), px=30_000)
        monkeypatch.setattr("chores.core.lock.start_time", lambda pid: UNKNOWN)
        assert OrgLock(client, "acme", ttl_seconds=30, task_id="task-1").acquire() is False
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("name", ["a:b@c/d", "bad\udcffutf8", "hôte-" + "x" * 60])
def test_any_host_name_makes_a_token_that_reads_back(client, monkeypatch, name):
    """A host name that is not UTF-8 raised from the token's encoding (every run crashed),
    and one with `:` or `@` could not be read back (review)."""
    monkeypatch.setattr("socket.gethostname", lambda: name)
    client.set(KEY_PREFIX + "acme", held_by("task-1", a_dead_pid()), px=30_000)
    again = OrgLock(client, "acme", ttl_seconds=30, task_id="task-1")
    assert again.acquire() is True
    assert Holder.parse(again.token) == Holder.parse(client.get(KEY_PREFIX + "acme").decode())
    assert again.release() is True


def test_a_zombie_holder_is_dead(client):
    """A pool process killed and not yet reaped by its parent is a zombie: gone."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not process_gone(zombie.pid) and time.monotonic() < deadline:
        time.sleep(0.01)  # it exits; nobody reaps it until `wait`
    try:
        assert os.path.exists(f"/proc/{zombie.pid}")  # still there, a zombie
        client.set(KEY_PREFIX + "acme", held_by("task-1", zombie.pid), px=30_000)
        assert OrgLock(client, "acme", ttl_seconds=30, task_id="task-1").acquire() is True
    finally:
        zombie.wait()


def test_a_lock_that_expires_between_the_two_steps_is_taken(client):
    """Another run's lock expires after our `SET NX` failed and before we read whose it is:
    it is free, not "locked"."""
    OrgLock(client, "acme", ttl_seconds=30, task_id="other").acquire()

    class ExpiresOnRead:
        def get(self, key: str) -> Any:
            client.delete(key)  # its TTL ran out just now
            return client.get(key)

        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

    late = OrgLock(client, "acme", ttl_seconds=30, task_id="mine")
    late._client = ExpiresOnRead()  # type: ignore[assignment]
    assert late.acquire() is True
    assert client.get(KEY_PREFIX + "acme") == late.token.encode()


def test_a_redelivered_message_takes_its_lock_over_under_decode_responses(lock_url):
    """A `REDIS_URL` with `decode_responses=True` gives strings back, not bytes."""
    decoded = redis.Redis.from_url(lock_url, decode_responses=True)
    decoded.set(KEY_PREFIX + "acme", held_by("task-1", a_dead_pid()), px=30_000)
    assert OrgLock(decoded, "acme", ttl_seconds=30, task_id="task-2").acquire() is False
    assert OrgLock(decoded, "acme", ttl_seconds=30, task_id="task-1").acquire() is True
    assert OrgLock(decoded, "acme", ttl_seconds=30, task_id="task-1").acquire() is False


def test_renew_keeps_the_lock_past_its_ttl_and_fails_once_it_is_lost(client):
    # A TTL with room for a sleep that oversleeps on a busy machine: CI at 0.3 s, renewed
    # every 0.15 s, once saw the lock expire between two renewals.
    mine = OrgLock(client, "acme", ttl_seconds=1.0)
    assert mine.renew() is False  # not acquired: nothing to renew
    assert mine.acquire()
    for _ in range(8):  # 2 s in all, twice the TTL
        time.sleep(0.25)
        assert mine.renew() is True
    assert client.get(KEY_PREFIX + "acme") == mine.token.encode()

    client.set(KEY_PREFIX + "acme", "the-next-run", px=30_000)  # expired and taken meanwhile
    assert mine.renew() is False
    assert mine.release() is False
    assert client.get(KEY_PREFIX + "acme") == b"the-next-run"  # left alone


def test_org_ids_are_only_data_in_the_key(client):
    odd = ["a", "a:b", "ws/é 🙂", "x" * 256, "*"]
    locks = [OrgLock(client, org, ttl_seconds=30) for org in odd]
    assert all(lock.acquire() for lock in locks)  # no two share a key
    assert all(lock.release() for lock in locks)


# meter_org and its lock --------------------------------------------------------------
def seeded(docs: dict[str, list[dict[str, Any]]]) -> Any:
    db = mongomock.MongoClient(tz_aware=True)["main"]
    db.tasks.insert_many(docs["tasks"])
    db.findings.insert_many(docs["findings"])
    return db


def ledger(db: Any) -> dict[str, int]:
    return {e["_id"]: e["tokens"] for e in db.billing_ledger.find({"org": "ws-acme"})}


def invoice_totals(db: Any) -> dict[str, int]:
    return {i["_id"]: i["total_micros"] for i in db.billing_invoices.find({"org": "ws-acme"})}


def use(monkeypatch: pytest.MonkeyPatch, settings: Settings, db: Any) -> None:
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    monkeypatch.setattr(tasks, "get_db", lambda: db)


def test_a_locked_org_is_skipped_at_once_without_touching_the_database(
    client, lock_url, monkeypatch
):
    use(monkeypatch, Settings(redis_url=lock_url), None)
    monkeypatch.setattr(tasks, "get_db", lambda: pytest.fail("a skipped run reads nothing"))
    holder = OrgLock(client, "ws-acme", ttl_seconds=30)
    assert holder.acquire()

    started = time.monotonic()
    result = tasks.meter_org.apply(("ws-acme",)).get()

    assert time.monotonic() - started < 1
    assert result["locked"] is True and result["tokens_billed"] == 0
    assert client.get(KEY_PREFIX + "ws-acme") == holder.token.encode()  # left alone


def test_the_lock_is_released_after_a_run_and_after_a_failure(
    client, lock_url, monkeypatch, fixture_docs
):
    settings = Settings(mongo_url="mongomock://lock", redis_url=lock_url)
    use(monkeypatch, settings, seeded(fixture_docs))
    assert tasks.meter_org.apply(("ws-acme",)).get()["tokens_billed"] > 0
    assert client.keys(KEY_PREFIX + "*") == []

    def broken(collection: str, method: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(tasks, "get_db", lambda: DatabaseProxy(seeded(fixture_docs), broken))
    with pytest.raises(RuntimeError):
        tasks.meter_org.apply(("ws-acme",)).get()
    assert client.keys(KEY_PREFIX + "*") == []


def test_a_run_longer_than_the_lock_ttl_keeps_its_lock_by_renewing_it_after_every_batch(
    client, lock_url, monkeypatch, fixture_docs
):
    """TTL 2 s, a run of 1.1 s per batch lasting over twice the TTL: the lock is held under
    the task id at every database call of the run, and released at its end. (TTL 1 s and
    0.6 s batches left 0.4 s between renewals, which a loaded CI machine once overran.)"""
    reference = seeded(fixture_docs)
    run_chore(reference, org="ws-acme", settings=Settings(mongo_url="mongomock://r"))
    settings = Settings(
        mongo_url="mongomock://lock", redis_url=lock_url, batch_size=1, lock_ttl_seconds=2
    )
    db = seeded(fixture_docs)
    batches = [0]
    holders: list[tuple[float, bytes | None]] = []  # (when, who holds the lock) at each call
    started = time.monotonic()

    settling = [False]  # the settle after the last batch starts with a draft-build ticket

    def slow_batch(collection: str, method: str) -> None:
        holders.append((time.monotonic() - started, client.get(KEY_PREFIX + "ws-acme")))
        settling[0] = settling[0] or collection == "billing_counters"
        if collection == "billing_ledger" and method == "find" and not settling[0]:
            batches[0] += 1  # a batch begins by reading its runners' ledger heads
            time.sleep(1.1)

    use(monkeypatch, settings, DatabaseProxy(db, slow_batch))
    result = tasks.meter_org.apply(("ws-acme",), task_id="run-1").get()

    assert batches[0] >= 4 and holders[-1][0] > 2 * settings.lock_ttl_seconds
    (held,) = {holder for _, holder in holders}  # never expired under the run
    assert held.startswith(b"run-1@")
    assert result["locked"] is False
    assert client.exists(KEY_PREFIX + "ws-acme") == 0  # released at its end
    assert ledger(db) == ledger(reference) and invoice_totals(db) == invoice_totals(reference)


def test_a_failed_renewal_is_logged_once_and_the_run_goes_on(
    client, lock_url, monkeypatch, fixture_docs, caplog
):
    reference = seeded(fixture_docs)
    run_chore(reference, org="ws-acme", settings=Settings(mongo_url="mongomock://r"))
    settings = Settings(mongo_url="mongomock://lock", redis_url=lock_url, batch_size=1)
    db = seeded(fixture_docs)

    # Taken over mid-run (it expired meanwhile): the run finishes, leaves the new lock alone.
    def steal(collection: str, method: str) -> None:
        if collection == "billing_ledger" and method == "find":
            client.set(KEY_PREFIX + "ws-acme", "another-run", px=30_000)

    use(monkeypatch, settings, DatabaseProxy(db, steal))
    with caplog.at_level(logging.WARNING, logger="chores"):
        result = tasks.meter_org.apply(("ws-acme",)).get()
    assert result["locked"] is False and ledger(db) == ledger(reference)
    assert caplog.text.count("lock of org ws-acme lost mid-run") == 1
    assert client.get(KEY_PREFIX + "ws-acme") == b"another-run"

    # Redis failing at renewal: logged once, not retried at every batch, the run bills.
    client.delete(KEY_PREFIX + "ws-acme")
    caplog.clear()
    db = seeded(fixture_docs)
    use(monkeypatch, settings, db)
    renewals: list[int] = []

    def broken_renew(self: OrgLock) -> bool:
        renewals.append(1)
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(OrgLock, "renew", broken_renew)
    with caplog.at_level(logging.WARNING, logger="chores"):
        result = tasks.meter_org.apply(("ws-acme",)).get()
    assert result["locked"] is False and ledger(db) == ledger(reference)
    assert invoice_totals(db) == invoice_totals(reference)
    assert renewals == [1]
    assert "could not renew the lock of org ws-acme (ConnectionError)" in caplog.text


def test_without_redis_for_its_lock_an_org_is_not_metered(monkeypatch, fixture_docs, caplog):
    """SPEC §6: one org is never metered by two workers at once, so never without its lock:
    the task meters nothing and fails with a retried error (LockUnavailable is in its
    autoretry list, as the connection errors are). Its quota decision is left as it was:
    once stale it answers `unknown`, and QUOTA_FAIL_OPEN decides."""
    unreachable = f"redis://127.0.0.1:{closed_port()}/0"
    db = seeded(fixture_docs)
    stale = {"_id": "ws-acme", "state": "ok", "computed_at": 0}
    db.billing_quota.insert_one(dict(stale))
    use(monkeypatch, Settings(mongo_url="mongomock://lock", redis_url=unreachable), db)

    with caplog.at_level(logging.WARNING, logger="chores"):
        result = tasks.meter_org.apply(("ws-acme",))

    assert isinstance(result.result, LockUnavailable) and result.state == "FAILURE"
    assert "the lock of org ws-acme cannot be taken (ConnectionError" in str(result.result)
    assert LockUnavailable in tasks.meter_org.autoretry_for
    assert "run org=ws-acme outcome=error" in caplog.text
    assert db.billing_ledger.count_documents({}) == 0 and db.billing_runs.count_documents({}) == 0
    assert db.billing_quota.find_one({"_id": "ws-acme"}) == stale  # not decided unseen


def test_without_redis_for_its_lock_the_daily_full_pass_waits_as_for_a_locked_org(
    monkeypatch, fixture_docs
):
    """Not the ~30 s of connection-error backoff: the full pass, the safety net, is retried
    after LOCK_TTL_SECONDS, as when another run holds the lock."""
    unreachable = f"redis://127.0.0.1:{closed_port()}/0"
    settings = Settings(mongo_url="mongomock://lock", redis_url=unreachable)
    use(monkeypatch, settings, seeded(fixture_docs))
    retried: list[dict[str, Any]] = []

    def retry(**options: Any) -> Retry:
        retried.append(options)
        return Retry("retried", when=options.get("countdown"))

    monkeypatch.setattr(tasks.meter_org, "retry", retry)
    full = tasks.meter_org.apply(("ws-acme",), {"full": True})
    assert full.state == "RETRY" and len(retried) == 1
    assert retried[0]["countdown"] == settings.lock_ttl_seconds
    assert isinstance(retried[0]["exc"], LockUnavailable)


def test_correctness_does_not_need_the_lock_two_runs_both_granted_it_bill_once(
    monkeypatch, fixture_docs
):
    """Two workers that both believe they hold the org's lock (a lock lost to a failover,
    say) still bill each token once: the ledger's unique entry ids, not the lock, do that."""
    reference = seeded(fixture_docs)
    run_chore(reference, org="ws-acme", settings=Settings(mongo_url="mongomock://r"))
    settings = Settings(mongo_url="mongomock://lock", batch_size=2)
    db = seeded(fixture_docs)
    monkeypatch.setattr(tasks, "OrgLock", GrantedLock)

    callers: list[int] = []

    def interleave(collection: str, method: str) -> None:
        callers.append(threading.get_ident())
        time.sleep(0.001)  # let the other run in between any two operations

    use(monkeypatch, settings, DatabaseProxy(db, interleave, serialize=True))
    start = threading.Barrier(2)
    results: list[dict[str, Any]] = []

    def run() -> None:
        start.wait()
        results.append(tasks.meter_org.apply(("ws-acme",)).get())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert [r["locked"] for r in results] == [False, False]  # both really ran...
    assert sum(a != b for a, b in itertools.pairwise(callers)) > 5  # ...at the same time
    assert ledger(db) == ledger(reference) != {}
    assert sum(r["tokens_billed"] for r in results) == sum(ledger(reference).values())
    assert invoice_totals(db) == invoice_totals(reference)


@pytest.fixture
def shared_db(monkeypatch: pytest.MonkeyPatch, lock_url: str, fixture_docs: Any) -> Any:
    """`chore run` as an operator runs it beside the workers: MONGO_URL names a server (the
    lock is taken only there; an in-process store has no workers), which is mongomock here:
    `connect` of the command hands it over. REDIS_URL is the real Redis of the locks."""
    from chores.cli import run as run_command
    from chores.core.settings import get_settings

    db = seeded(fixture_docs)
    monkeypatch.setenv("MONGO_URL", "mongodb://billing:pw@mongo.invalid:27017/main")
    monkeypatch.setenv("REDIS_URL", lock_url)
    monkeypatch.setattr(run_command, "connect", lambda settings: DatabaseProxy(db, watch))
    held_at_writes: list[Any] = []

    def watch(collection: str, method: str) -> None:
        if collection == "billing_ledger" and method.startswith("insert"):
            held_at_writes.append(lock_client(lock_url).get(KEY_PREFIX + "ws-acme"))

    db.held_at_writes = held_at_writes
    get_settings.cache_clear()
    yield db
    get_settings.cache_clear()


def test_chore_run_meters_an_org_under_the_workers_lock_and_waits_for_none(client, shared_db):
    """`chore run --org` once metered an org a worker was metering (review): SPEC §6 says
    one org is never metered by two at once. Held: exit 5, nothing read or billed."""
    from click.testing import CliRunner

    from chores.cli import main

    worker = OrgLock(client, "ws-acme", ttl_seconds=30, task_id="some-worker-task-id")
    assert worker.acquire()
    locked = CliRunner().invoke(main, ["run", "--org", "ws-acme"])
    assert locked.exit_code == 5, locked.output
    assert "org ws-acme is being metered by a worker right now: not metered" in locked.stderr
    assert locked.stdout == ""  # what `--json` readers take is left empty
    assert ledger(shared_db) == {} and shared_db.held_at_writes == []
    assert client.get(KEY_PREFIX + "ws-acme") == worker.token.encode()  # left alone

    assert worker.release()
    done = CliRunner().invoke(main, ["run", "--org", "ws-acme"])
    assert done.exit_code == 0, done.output
    assert ledger(shared_db) and shared_db.held_at_writes  # billed, under a lock...
    assert all(holder is not None for holder in shared_db.held_at_writes)  # ...its own
    assert worker.token.encode() not in shared_db.held_at_writes
    assert client.get(KEY_PREFIX + "ws-acme") is None  # released at the end

    everything = CliRunner().invoke(main, ["run", "--all"])
    assert everything.exit_code == 2 and "add --no-lock" in everything.output


def test_chore_run_without_its_lock_redis_meters_nothing_unless_told_to(monkeypatch, shared_db):
    from click.testing import CliRunner

    from chores.cli import main
    from chores.core.settings import get_settings

    monkeypatch.setenv("REDIS_URL", f"redis://billing:s3cr3t@127.0.0.1:{closed_port()}/0")
    get_settings.cache_clear()
    refused = CliRunner().invoke(main, ["run", "--org", "ws-acme"])
    assert refused.exit_code == 1
    assert "the lock of org ws-acme cannot be taken (ConnectionError at redis://billing:***@" in (
        refused.output
    )
    assert "s3cr3t" not in refused.output and ledger(shared_db) == {}

    told = CliRunner().invoke(main, ["run", "--org", "ws-acme", "--no-lock"])
    assert told.exit_code == 0, told.output
    assert ledger(shared_db)


def test_chore_run_says_so_when_it_loses_its_lock_mid_run(client, monkeypatch, shared_db):
    """A worker logs a lost lock; `chore run` once kept it to a logger nobody reads (review)."""
    from click.testing import CliRunner

    from chores.cli import main
    from chores.cli import run as run_command
    from chores.core.settings import get_settings

    def steal(collection: str, method: str) -> None:
        if collection == "billing_ledger" and method == "find":
            client.set(KEY_PREFIX + "ws-acme", "worker-task", px=30_000)

    monkeypatch.setenv("BATCH_SIZE", "1")  # renewed after every document
    monkeypatch.setattr(run_command, "connect", lambda settings: DatabaseProxy(shared_db, steal))
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["run", "--org", "ws-acme", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: lock of org ws-acme lost mid-run") == 1
    assert "lost mid-run" not in result.stdout  # the report there stays the report
    assert "gone before its run ended" in result.output  # its release found another's
    assert client.get(KEY_PREFIX + "ws-acme") == b"worker-task" and ledger(shared_db)


# What the lock does at its edges, untested until mutation testing (stop 54): each test
# fails on one or more mutants of chores/core/lock.py.


def test_asking_whether_a_holder_is_gone_sends_it_no_signal():
    """`process_gone` probes with signal 0: any other (SIGHUP, ...) kills the live worker
    whose lock it looks at."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)  # past the interpreter's start
        assert process_gone(sleeper.pid) is False
        time.sleep(0.3)
        assert sleeper.poll() is None  # still running
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_holder_whose_memory_grew_since_its_token_is_alive():
    """The token's start time is the process's (`/proc/PID/stat` field 22), which never
    moves; a field that does (its size) would make a growing live holder look replaced."""
    holder = Holder.this_process("task-1")
    ballast = bytearray(64 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touched: resident
    assert holder.is_gone() is False
    del ballast


def unreadable(monkeypatch: pytest.MonkeyPatch, path: str, error: OSError) -> None:
    """`open(path)` raises `error` from now on; every other file opens as before."""
    real_open = open

    def refusing(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == path:
            raise error
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing)


def test_a_holder_whose_stat_cannot_be_read_runs(monkeypatch):
    """Its pid taken (signal 0 answers) but `/proc/PID/stat` unreadable (`hidepid`, a failed
    read): its start time is unknown and it runs, so its lock is not taken over."""
    pid = os.getpid()
    unreadable(monkeypatch, f"/proc/{pid}/stat", PermissionError(13, "hidepid"))
    assert start_time(pid) == UNKNOWN
    assert process_gone(pid) is False
    assert Holder("task-1", "here", pid, "12345", "nonce").is_gone() is False


def test_another_users_process_runs(monkeypatch):
    """Signal 0 refused (`PermissionError`): the process exists, another user's."""

    def refused(pid: int, signal: int) -> None:
        raise PermissionError(1, "not permitted")

    monkeypatch.setattr(os, "kill", refused)
    assert process_gone(4242) is False


def test_a_machine_whose_proc_cannot_say_where_it_is_still_makes_locks(client, monkeypatch):
    """No boot id (a sandbox): the place is unknown, which matches no token, and a lock can
    still be made and taken."""
    unreadable(monkeypatch, "/proc/sys/kernel/random/boot_id", PermissionError(13, "denied"))
    assert this_place() == UNKNOWN
    assert OrgLock(client, "acme", ttl_seconds=30).acquire() is True


def test_a_take_over_that_keeps_losing_its_race_is_no_lock(client, monkeypatch):
    """A dead delivery of this task holds the lock, but each take-over finds it changed
    hands meanwhile: after three tries the run has no lock, and meters nothing."""
    client.set(KEY_PREFIX + "acme", held_by("task-1", a_dead_pid()), px=30_000)
    mine = OrgLock(client, "acme", ttl_seconds=30, task_id="task-1")
    monkeypatch.setattr(mine, "_take_over", lambda keys, args: 0)
    assert mine.acquire() is False


def test_a_lock_taken_over_gets_the_full_ttl_and_no_more(client):
    client.set(KEY_PREFIX + "acme", held_by("task-1", a_dead_pid()), px=5_000)
    assert OrgLock(client, "acme", ttl_seconds=30, task_id="task-1").acquire() is True
    assert 29_000 < client.pttl(KEY_PREFIX + "acme") <= 30_000


def test_a_lock_renewed_from_another_thread_is_still_its_owners(client):
    """The token belongs to the `OrgLock`, not to the thread that took it."""
    mine = OrgLock(client, "acme", ttl_seconds=30)
    assert mine.acquire() is True
    renewed: list[bool] = []
    other = threading.Thread(target=lambda: renewed.append(mine.renew()))
    other.start()
    other.join()
    assert renewed == [True]
    assert mine.release() is True


def test_releasing_a_lock_still_held_warns_of_nothing(client, caplog):
    """A warning that the lock was "gone before its run ended" tells the operator that runs
    may have overlapped: not after a run that kept its lock."""
    mine = OrgLock(client, "acme", ttl_seconds=30)
    assert mine.acquire() is True
    with caplog.at_level(logging.WARNING, logger="chores.core.lock"):
        assert release_quietly(mine) is None
    assert client.get(KEY_PREFIX + "acme") is None
    assert caplog.records == []


def test_releasing_against_a_dead_redis_warns_and_never_raises(client, monkeypatch):
    """`meter_org` releases in a `finally`: an exception there would hide the run's result."""
    mine = OrgLock(client, "acme", ttl_seconds=30)
    assert mine.acquire() is True

    def redis_gone() -> bool:
        raise redis.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(mine, "release", redis_gone)
    assert release_quietly(mine) == "could not release the lock of org acme: ConnectionError"
