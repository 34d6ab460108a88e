"""Shared fixtures: a fresh mongomock database, settings, the shipped registry, sample docs."""

from __future__ import annotations

import copy
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mongomock
import pytest
from bson import json_util

from chores import Settings
from chores.core import clock as _clock
from pricing import Registry, load_registry

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
LOCAL_FIXTURES = Path(__file__).resolve().parent / "data"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
# The wall clock the chore sees in tests: pinned, so that runs, finalizes and mark
# expiry do not depend on the day the suite runs (chores/core/clock.py). Later than
# every `now` the tests pass; a test that needs another moment patches it again.
WALL_CLOCK = datetime(2030, 1, 1, tzinfo=UTC)


def load_fixture_docs() -> dict[str, list[dict[str, Any]]]:
    """The platform's sample runner documents, without their `_role` notes."""
    path = SHARED_FIXTURES / "secator_runner_docs.json"
    if not path.exists():
        path = LOCAL_FIXTURES / "secator_runner_docs.json"
    data = json_util.loads(path.read_text())
    for docs in data.values():
        for doc in docs:
            doc.pop("_role", None)
    return data


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

    Never skips: with no Redis and no redis-server the tests that need it fail.
    """
    import shutil
    import socket
    import subprocess
    import time

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
    if _redis_answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("Redis is not reachable on 127.0.0.1:6379 and redis-server is not installed")
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
