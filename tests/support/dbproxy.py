"""Database stand-ins for tests: count calls, fail on demand, serialize threads.

They wrap a (mongomock) `Database` and hand out collection proxies that
forward every method to the real collection, so the production code runs
unchanged through the same pymongo API. `Recorder`, `PauseAt` and `CrashAt` are
`around` hooks that script one operation's calls: record them, stop before the
k-th until released (`pause_at`), or fail from the k-th on.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

READS = frozenset({"find", "find_one", "aggregate", "count_documents", "distinct"})
WRITES = frozenset(
    {
        "insert_one",
        "insert_many",
        "update_one",
        "update_many",
        "replace_one",
        "delete_one",
        "delete_many",
        "find_one_and_update",
        "find_one_and_replace",
        "find_one_and_delete",
        "bulk_write",
    }
)


Around = Callable[[str, str, Callable[[], Any]], Any]


def _plain(collection: str, method: str, perform: Callable[[], Any]) -> Any:
    return perform()


class CollectionProxy:
    def __init__(
        self,
        collection: Any,
        hook: Callable[[str, str], None],
        lock: threading.Lock | None = None,
        around: Around = _plain,
    ):
        self._collection = collection
        self._hook = hook
        self._lock = lock
        self._around = around

    @property
    def name(self) -> str:
        return str(self._collection.name)

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._collection, attr)
        if not callable(target) or attr not in READS | WRITES | {"create_indexes"}:
            return target

        def perform(*args: Any, **kwargs: Any) -> Any:
            self._hook(self._collection.name, attr)
            if self._lock is None:
                return _materialize(attr, target(*args, **kwargs))
            with self._lock:
                return _materialize(attr, target(*args, **kwargs))

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._around(self._collection.name, attr, lambda: perform(*args, **kwargs))

        return call


def _materialize(attr: str, result: Any) -> Any:
    # A mongomock cursor evaluates lazily; under a lock it must be read inside it.
    return list(result) if attr in ("find", "aggregate") else result


class DatabaseProxy:
    """Wraps a Database; `hook(collection, method)` runs before every call, and
    `around(collection, method, perform)` decides whether and when `perform()` runs."""

    def __init__(
        self,
        db: Any,
        hook: Callable[[str, str], None] | None = None,
        serialize: bool = False,
        around: Around = _plain,
        lock: threading.Lock | None = None,
    ):
        """`lock` serializes this proxy's calls with every other proxy given the same lock
        (`serialize=True` alone gives this proxy a lock of its own)."""
        self._db = db
        self._hook = hook or (lambda collection, method: None)
        self._lock = lock if lock is not None else threading.Lock() if serialize else None
        self._around = around

    def __getitem__(self, name: str) -> CollectionProxy:
        return CollectionProxy(self._db[name], self._hook, self._lock, self._around)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]


class CountingDatabase(DatabaseProxy):
    """Counts calls per (collection, method)."""

    def __init__(self, db: Any):
        self.calls: Counter[tuple[str, str]] = Counter()
        super().__init__(db, lambda collection, method: self.calls.update([(collection, method)]))

    def reads(self, prefix: str = "") -> int:
        return sum(n for (c, m), n in self.calls.items() if m in READS and c.startswith(prefix))

    def writes(self, prefix: str = "") -> int:
        return sum(n for (c, m), n in self.calls.items() if m in WRITES and c.startswith(prefix))


class FailingDatabase(DatabaseProxy):
    """Raises `error` on every call to the collections named in `collections`."""

    def __init__(self, db: Any, error: Exception, collections: frozenset[str] | None = None):
        def hook(collection: str, method: str) -> None:
            if collections is None or collection in collections:
                raise error

        super().__init__(db, hook)


class Recorder:
    """An `around` hook that records `collection.method` of every call, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, collection: str, method: str, perform: Callable[[], Any]) -> Any:
        self.calls.append(f"{collection}.{method}")
        return perform()


class PauseAt:
    """An `around` hook that blocks before performing the `at`-th call (1-based) until
    `release()`; `reached` is set when it blocks. A wait longer than `timeout` raises.
    With `then_crash`, every call after the `at`-th raises `then_crash(message)`: the
    operation performed its `at`-th call once released, and died right after it."""

    def __init__(
        self,
        at: int,
        timeout: float = 60.0,
        then_crash: Callable[[str], BaseException] | None = None,
    ):
        self.at = at
        self.seen = 0
        self.timeout = timeout
        self.then_crash = then_crash
        self.reached = threading.Event()
        self._released = threading.Event()

    def __call__(self, collection: str, method: str, perform: Callable[[], Any]) -> Any:
        self.seen += 1
        if self.seen == self.at:
            self.reached.set()
            if not self._released.wait(self.timeout):
                raise TimeoutError(f"never released at call {self.at} ({collection}.{method})")
        elif self.seen > self.at and self.then_crash is not None:
            raise self.then_crash(f"crashed after call {self.at}, at {collection}.{method}")
        return perform()

    def release(self) -> None:
        self._released.set()


class CrashAt:
    """An `around` hook under which the `at`-th call (1-based) and every later one raise
    `error()` instead of being performed: the process died, or lost its connection for good,
    just before that call."""

    def __init__(self, at: int, error: Callable[[str], BaseException]):
        self.at = at
        self.seen = 0
        self.error = error

    def __call__(self, collection: str, method: str, perform: Callable[[], Any]) -> Any:
        self.seen += 1
        if self.seen >= self.at:
            raise self.error(f"crashed at call {self.at} ({collection}.{method})")
        return perform()


def pause_at(
    operation: Callable[[], Any],
    pause: PauseAt,
    meanwhile: Callable[[], None],
    timeout: float = 60.0,
) -> BaseException | None:
    """Run `operation` in a thread (its database calls going through `pause`), call
    `meanwhile()` once it blocks at its pause (or ends without reaching it), then let it
    finish. Returns what `operation` raised, if anything; `meanwhile` may raise."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            operation()
        except BaseException as exc:  # reported to the caller
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while not pause.reached.wait(0.001):
        if not thread.is_alive():
            break
    try:
        meanwhile()
    finally:
        pause.release()
        thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError("the paused operation did not finish")
    return raised[0] if raised else None
