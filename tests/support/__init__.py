"""What the tests share: the pinned moments, the sample documents, seeded months.

Test modules import from here (and from `support.dbproxy`, `support.truth`), never
from each other or from conftest.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from bson import json_util

from chores import Settings, finalize_invoices, run_chore
from chores.demo.corpus import Corpus, generate_corpus
from pricing import Registry

SHARED_FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
LOCAL_FIXTURES = Path(__file__).resolve().parents[1] / "data"
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


OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)


def ai_runner(
    runner_id: Any,
    *,
    ended: datetime | None,
    tokens: Any = 1_000,
    org: str = "acme",
    model: str = "gpt-4o-mini",
    status: str = "SUCCESS",
    stamp: float | None = None,
    prompt: int | None = None,
    **context: Any,
) -> dict[str, Any]:
    """One AI runner document as the platform writes it: `tokens` in all (a malformed value
    too), `prompt` of them prompt tokens (all when integral and not given), the rest
    completion; stamped at its end unless `stamp` says otherwise; more `context` fields
    (session, subagent markers) as keywords."""
    if prompt is None:
        prompt = tokens if isinstance(tokens, int) else 0
    completion = tokens - prompt if isinstance(tokens, int) else 0
    doc: dict[str, Any] = {
        "_id": runner_id,
        "name": "ai",
        "status": status,
        "last_updated_db": stamp if stamp is not None else (ended or NOW).timestamp(),
        "context": {
            "workspace_id": org,
            "ai_model": model,
            "ai_tokens": tokens,
            "ai_prompt_tokens": prompt,
            "ai_completion_tokens": completion,
            **context,
        },
    }
    if ended is not None:
        doc["end_time"] = ended
    return doc


def link_spawns(corpus: Corpus) -> None:
    """Give each spawn finding its spawning runner (`_context.task_id`), as the platform does.

    `generate_corpus` appends a runner, then its subagents depth first, so a subagent's
    spawner is the last AI runner seen one level up.
    """
    last_at_depth: dict[int, str] = {}
    spawner: dict[str, str] = {}
    for task in corpus.tasks:
        context = task["context"]
        if task.get("name") != "ai" or "task_id" not in context:
            continue
        depth = context.get("ai_subagent_depth", 0)
        if depth:
            spawner[str(task["_id"])] = last_at_depth[depth - 1]
        last_at_depth[depth] = str(task["_id"])
    for finding in corpus.findings:
        if finding.get("_type") == "ai":
            finding["_context"]["task_id"] = spawner[finding["extra_data"]["runner_id"]]


def metered_months(
    db: Any, settings: Settings, registry: Registry, *, seed: int, orgs: tuple[str, ...]
) -> None:
    """Two months of usage: October metered and final on Nov 4, then November's runners and
    some October runners seen only now (late lines), every kind of line in between."""
    corpus = generate_corpus(
        seed=seed, orgs=orgs, runs_per_org=40, start=OCTOBER, days=55, malformed_share=0.1
    )
    link_spawns(corpus)
    first = datetime(2026, 11, 4, 12, tzinfo=UTC)
    later = [
        t
        for n, t in enumerate(corpus.tasks)
        if t["start_time"] > first - timedelta(hours=2)
        or (
            t.get("name") == "ai"
            and not t["context"].get("subagent")
            and t.get("end_time") is not None
            and t["end_time"] < datetime(2026, 11, 1, tzinfo=UTC)
            and n % 4 == 0
        )
    ]
    later_ids = {t["_id"] for t in later}
    db.findings.insert_many(corpus.findings)
    db.tasks.insert_many([t for t in corpus.tasks if t["_id"] not in later_ids])
    run_chore(db, now=first, registry=registry, settings=settings)
    assert finalize_invoices(db, now=first, settings=settings)
    db.tasks.insert_many(later)
    run_chore(db, now=NOW, registry=registry, settings=settings, full=True)


class GrantedLock:
    """An org's metering lock that every caller is granted, as if each worker believed it
    held it: for tests of what the runs do, not of the lock (tests/integration/test_lock.py
    tests the lock over a real Redis)."""

    def __init__(self, client: Any, org: str, *args: Any, **kwargs: Any) -> None:
        self.org = org  # as `OrgLock(client, org, ...)` keeps it
        self.renewals = 0

    def acquire(self) -> bool:
        return True

    def renew(self) -> bool:
        self.renewals += 1
        return True

    def release(self) -> bool:
        return True


@contextmanager
def flushed_redis_db(base_url: str, number: int) -> Iterator[str]:
    """The URL of Redis database `number` of the test Redis at `base_url`, flushed before and
    after (each test module that writes to Redis owns a database of its own)."""
    url = f"{base_url}/{number}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    try:
        yield url
    finally:
        with redis.Redis.from_url(url) as client:
            client.flushdb()


def invoke_with_env(monkeypatch: Any, args: list[str], **env: str) -> Any:
    """The `chore` command `args`, in this process (click's CliRunner), with the environment
    variables `env` set and the settings read afresh (and dropped after)."""
    from click.testing import CliRunner

    from chores import get_settings
    from chores.cli import main

    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(main, args)
    finally:
        get_settings.cache_clear()


# A run whose pool process died is sent again after this many seconds in a prefork worker
# started from `support.quick_retries` (the service's own wait is 5 s).
QUICK_RETRY_DELAY = 1


def dies_with_the_tests() -> None:
    """`preexec_fn` of a service process a test starts (a worker, beat): the kernel kills it
    when the test process dies (Linux's PR_SET_PDEATHSIG), so a test run killed mid-way
    (`pkill`, SIGTERM: no `finally` runs) leaves no worker consuming the test broker's queue,
    to take the next run's messages (stops 43 and 55 saw that)."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
