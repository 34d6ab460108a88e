"""Shared fixtures: a fresh mongomock database, settings, the shipped registry, sample docs,
a real Redis; and the markers of each directory (shared helpers are in `support`).

- tests/integration: `integration` (Redis, Celery workers, Chromium, tmux, subprocesses);
- tests/faults: `faults` and `integration` (crashes, interleavings, the fault table: minutes);
- any test using a real Redis (`redis_base_url`) is `integration` wherever it is.

`pytest -m "not integration"` runs the pure tests, in about a minute, with no service.
"""

from __future__ import annotations

import copy
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import mongomock
import pytest

from chores import Settings
from chores.core import clock as _clock
from chores.core import mongomock_compat
from pricing import Registry, load_registry

from support import WALL_CLOCK, load_fixture_docs

# The tests write to their own mongomock databases before the chore sees them: the shim the
# chore installs on first use (pymongo >= 4.11 passes `sort=` to mongomock's bulk builder).
mongomock_compat.install()

# The CLI's tables are as wide as the tests ask (`COLUMNS` in a test's env), else 160: a
# width from the shell running pytest, or the 80 that pytest-xdist sets in its processes,
# would wrap them.
for _variable in ("COLUMNS", "LINES"):
    os.environ.pop(_variable, None)


@pytest.fixture(autouse=True)
def pinned_wall_clock(monkeypatch: pytest.MonkeyPatch) -> datetime:
    monkeypatch.setattr(_clock, "wall_clock", lambda: WALL_CLOCK)
    return WALL_CLOCK


@pytest.fixture
def db() -> Any:
    return mongomock.MongoClient(tz_aware=True)["main"]


@pytest.fixture
def settings() -> Settings:
    return Settings(mongo_url="mongomock://test", batch_size=50, redis_url=None)


@pytest.fixture
def env_db(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A named in-process mongomock that `MONGO_URL` points at, so the CLI and
    `get_settings()` see the same database as the test (no Redis)."""
    import uuid

    from chores import connect, get_settings

    monkeypatch.setenv("MONGO_URL", f"mongomock://test-{uuid.uuid4().hex}")
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield connect(get_settings())
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()


@pytest.fixture
def fixture_docs() -> dict[str, list[dict[str, Any]]]:
    return copy.deepcopy(_FIXTURE_DOCS)


_FIXTURE_DOCS = load_fixture_docs()


@pytest.fixture
def metered_env_db(env_db: Any, fixture_docs: dict[str, list[dict[str, Any]]]) -> Any:
    """The fixture documents in the database `MONGO_URL` names, metered by `chore run --all`
    at `support.NOW`, as a user's commands find them."""
    from click.testing import CliRunner

    from chores.cli import main

    from support import NOW

    env_db.tasks.insert_many(fixture_docs["tasks"])
    env_db.findings.insert_many(fixture_docs["findings"])
    ran = CliRunner().invoke(main, ["run", "--all", "--now", NOW.isoformat()])
    assert ran.exit_code == 0, ran.output
    return env_db


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_base_url() -> Any:
    """A real Redis: `TEST_REDIS_URL` if set (two suites run side by side each use their
    own), else the machine's on 127.0.0.1:6379, else a `redis-server` started here.

    The suite runs on two processes (pytest-xdist): the first uses that Redis, every other
    one a `redis-server` of its own, as the test modules own fixed database numbers and the
    credentials tests add a user to the server.

    Never skips: with no Redis and no redis-server the tests that need it fail.
    """
    import shutil
    import socket
    import subprocess
    import time

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
    first_process = os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0"
    if first_process and _redis_answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None and first_process:
        pytest.fail(f"Redis is not reachable at {url} and redis-server is not installed")
    if binary is None:
        pytest.fail(
            "this test process (pytest-xdist) starts a redis-server of its own, and "
            "redis-server is not installed: install it, or run the tests on one process (-n 0)"
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    for _ in range(100):
        if _redis_answers(url):
            break
        time.sleep(0.05)
    else:
        process.kill()
        pytest.fail(f"started redis-server on port {port} but it does not answer")
    yield url
    process.kill()
    process.wait()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(here).parts
        if parts[0] == "integration" or "redis_base_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
        if parts[0] == "faults":
            # Minutes of exploration: out of the one-minute `-m "not integration"` run too.
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)
