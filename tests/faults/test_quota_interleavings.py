"""Quota decisions and their Redis mirror under every interleaving of their writers and a
check: a run of the org (it bills more usage), a fan-out decide that read the usage before
it, a `plan set` (the plan, then a decision) and `check_quota`.

One actor is paused before each of its calls on the quota's state (MongoDB's plans,
invoices and decisions, and each Redis round trip), the others run to completion there
(or, nested, a second one is paused inside at each of its own), then it finishes. After
all of them:

- MongoDB holds the decision of the newest draft and the newest plan;
- the mirror holds that decision, a newer one, or none, and a check answers it;
- a check answered a decision at least as new as the one MongoDB held when it began,
  unless a writer was between its MongoDB write and its mirror write (contract.md: the
  window between a decision's two writes).

Review (2026-12-04) found, with three deciders, a refused decision's `forget` dropping a
newer entry, which an older decision then filled: `ok` answered for the mirror's TTL
while MongoDB held `block`. Uses Redis DB 12 (flushed before and after each test).
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from bson import ObjectId

from chores import check_quota, connect, run_chore
from chores.core.db import Collections
from chores.core.redis_client import redis_client
from chores.core.settings import Plan, Settings
from chores.quota import cache as quota_cache
from chores.quota.cache import QuotaCache
from chores.quota.decisions import Quota, evaluate
from pricing import Registry

from support import flushed_redis_db
from support.dbproxy import DatabaseProxy

NOV = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
OLD_LIMIT, NEW_LIMIT = 1_000, 6_000
QUOTA_STATE = ("billing_quota.", "billing_plans.", "billing_invoices.", "redis.")
REDIS_CALLS = ("get", "put_many", "drop_older")
Key = tuple[Any, ...]
ACTOR = threading.local()  # the actor a thread runs


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    with flushed_redis_db(redis_base_url, 12) as url:
        yield url


def ai_run(tokens: int, ended: datetime) -> dict[str, Any]:
    context = {
        "workspace_id": "acme",
        "ai_model": "gpt-4o-mini",
        "ai_tokens": tokens,
        "ai_prompt_tokens": tokens,
        "ai_completion_tokens": 0,
    }
    return {"_id": ObjectId(), "name": "ai", "status": "SUCCESS", "end_time": ended,
            "last_updated_db": ended.timestamp(), "context": context}  # fmt: skip


def decision_key(doc: dict[str, Any] | None) -> Key | None:
    return None if doc is None else (doc["state"], doc["used_tokens"], doc["token_limit"])


class Actor:
    """One operation, run in its own thread, paused before its `pause_at`-th call on the
    quota's state until released."""

    def __init__(self, name: str, body: Callable[[], None], pause_at: int | None):
        self.name, self.body, self.pause_at = name, body, pause_at
        self.calls: list[str] = []  # on the quota's state, performed or about to be
        self.performed: list[str] = []
        self.reached = threading.Event()
        self.released = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def around(self, call: str, perform: Callable[[], Any]) -> Any:
        if call.startswith(QUOTA_STATE):
            self.calls.append(call)
            if len(self.calls) == self.pause_at:
                self.reached.set()
                assert self.released.wait(30), f"{self.name} never released"
        result = perform()
        self.performed.append(call)
        return result

    def in_window(self) -> bool:
        """Between its write of a decision to MongoDB and that decision's mirror write."""
        wrote = [i for i, c in enumerate(self.performed) if c == "billing_quota.bulk_write"]
        mirrored = [i for i, c in enumerate(self.performed) if c == "redis.put_many"]
        return not self.done.is_set() and bool(wrote) and (not mirrored or mirrored[-1] < wrote[-1])

    def run(self) -> None:
        ACTOR.actor = self
        try:
            self.body()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


@dataclass
class World:
    """A store with acme's `ok` decided and mirrored, and 5,000 tokens not billed yet."""

    settings: Settings
    registry: Registry
    raw: redis.Redis
    actors: list[Actor] = field(default_factory=list)
    answers: list[tuple[int, bool, Key]] = field(default_factory=list)  # checks
    versions: list[Key | None] = field(default_factory=list)  # MongoDB's, in order
    redis_failures: list[str] = field(default_factory=list)  # the mirror's, said as such

    def __post_init__(self) -> None:
        self.db = connect(self.settings)
        self.proxy = DatabaseProxy(self.db, around=self.around)
        self.db.billing_plans.insert_one({"_id": "acme", "token_limit": OLD_LIMIT})
        self.db.tasks.insert_one(ai_run(100, NOV - timedelta(hours=2)))
        run_chore(self.db, org="acme", now=NOV, registry=self.registry, settings=self.settings)
        cache = Quota(Collections.of(self.db, self.settings), self.settings)._cache
        assert cache is not None
        self.key = cache.key("acme")
        assert self.mirrored() is not None  # `ok`, mirrored by the run
        self.db.tasks.insert_one(ai_run(5_000, NOV - timedelta(hours=1)))
        self.versions.append(self.stored())

    def around(self, collection: str, method: str, perform: Callable[[], Any]) -> Any:
        """Each call on the store or the mirror, through the actor of this thread (if any);
        MongoDB's decision noted each time it changed."""
        actor = getattr(ACTOR, "actor", None)
        result = perform() if actor is None else actor.around(f"{collection}.{method}", perform)
        if self.stored() != self.versions[-1]:
            self.versions.append(self.stored())
        return result

    def stored(self) -> Key | None:
        return decision_key(self.db.billing_quota.find_one({"_id": "acme"}))

    def mirrored(self) -> dict[str, Any] | None:
        raw = self.raw.get(self.key)
        return None if raw is None else json.loads(raw)

    # the actors ------------------------------------------------------------------------
    def a_run(self) -> None:
        run_chore(self.proxy, org="acme", now=NOV, registry=self.registry, settings=self.settings)

    def a_fan_out(self) -> None:
        Quota(Collections.of(self.proxy, self.settings), self.settings).decide(["acme"], NOV)

    def a_plan_set(self) -> None:
        plans = Collections.of(self.proxy, self.settings)
        plans.plans.update_one({"_id": "acme"}, {"$set": {"token_limit": NEW_LIMIT}})
        Quota(plans, self.settings).decide(["acme"], NOV)

    def a_check(self) -> None:
        began = len(self.versions) - 1
        window = any(actor.in_window() for actor in self.actors if actor.name != "check")
        answer = check_quota(self.proxy, "acme", now=NOV, settings=self.settings)
        self.answers.append((began, window, (answer.state, answer.used_tokens, answer.token_limit)))

    def body(self, name: str) -> Callable[[], None]:
        return {"run": self.a_run, "fan-out": self.a_fan_out, "plan set": self.a_plan_set,
                "check": self.a_check}[name]  # fmt: skip

    # the schedule ----------------------------------------------------------------------
    def play(self, schedule: list[tuple[str, int | None]]) -> None:
        """The first actor paused before its k-th call (None: to completion), the rest of the
        schedule played there, then it finishes."""
        if not schedule:
            return
        (name, pause_at), rest = schedule[0], schedule[1:]
        actor = Actor(name, self.body(name), pause_at)
        self.actors.append(actor)
        thread = threading.Thread(target=actor.run, daemon=True)
        thread.start()
        while pause_at is not None and not actor.reached.wait(0.001) and not actor.done.is_set():
            pass
        if pause_at is None:
            thread.join(60)
        self.play(rest)
        actor.released.set()
        thread.join(60)
        assert not thread.is_alive(), f"{name} hung"

    def violations(self) -> list[str]:
        found = [f"{a.name} raised {a.error!r}" for a in self.actors if a.error is not None]
        found += self.redis_failures  # the window of a failed mirror write, not an ordering
        invoice = self.db.billing_invoices.find_one({"_id": "acme:2026-11"})
        limit = self.db.billing_plans.find_one({"_id": "acme"})["token_limit"]
        used = sum(line["tokens"] for line in invoice["lines"])
        state, _ = evaluate(Plan(token_limit=limit, spend_limit_micros=None), used, 0)
        stored = self.db.billing_quota.find_one({"_id": "acme"})
        if (decision_key(stored), stored["draft_ticket"]) != (
            (state, used, limit),
            invoice["build_ticket"],
        ):
            found.append(f"MongoDB holds {decision_key(stored)}, not the newest decision")
        mirror = self.mirrored()
        newer = mirror is not None and (mirror["period"], int(mirror["draft_ticket"])) > (
            stored["period"],
            stored["draft_ticket"],
        )
        if mirror is not None and decision_key(mirror) != decision_key(stored) and not newer:
            found.append(f"the mirror holds {decision_key(mirror)}, MongoDB {decision_key(stored)}")
        later = check_quota(self.db, "acme", now=NOV + timedelta(seconds=1), settings=self.settings)
        if (later.state, later.used_tokens, later.token_limit) != decision_key(stored):
            found.append(f"a later check answered {later.state}, MongoDB holds {stored['state']}")
        for began, window, answered in self.answers:
            if answered not in self.versions[began:] and not window:
                found.append(f"a check answered {answered}, older than {self.versions[began]}")
        return found


def call_counts(world_of: Callable[[], World]) -> dict[str, int]:
    """How many calls on the quota's state each actor makes, run alone."""
    counts = {}
    for name in ("run", "fan-out", "plan set", "check"):
        world = world_of()
        world.play([(name, None)])
        counts[name] = len(world.actors[0].calls)
    return counts


@pytest.fixture
def world_of(
    redis_url: str, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], World]:
    """A new world each call; each Redis round trip of the mirror is a call an actor may
    be paused at, as each MongoDB call is."""
    current: dict[str, World | None] = {"world": None}
    # The mirror's client gives up after 250 ms (a check must stay fast). On a loaded machine
    # a write timed out so (stop 55: `plan set@1,check,run` left the run's `block` mirrored):
    # that is the documented window of a failed mirror write (contract.md), not an
    # interleaving; here Redis answers, however slowly.
    monkeypatch.setattr(
        quota_cache, "redis_client", lambda url, timeout: redis_client(url, timeout=30.0)
    )
    for name in REDIS_CALLS:
        plain = getattr(QuotaCache, name)

        def through_world(
            self: QuotaCache, *args: Any, _plain: Any = plain, _name: str = name
        ) -> Any:
            world = current["world"]
            if world is None:  # setting the world up
                return _plain(self, *args)
            self.failure = None
            result = world.around("redis", _name, lambda: _plain(self, *args))
            if self.failure is not None:  # caught inside: a check or a write went without
                world.redis_failures.append(f"redis.{_name} failed ({self.failure})")
            return result

        monkeypatch.setattr(QuotaCache, name, through_world)
    raw = redis.Redis.from_url(redis_url)

    def new_world() -> World:
        raw.flushdb()
        settings = Settings(mongo_url=f"mongomock://qint-{uuid.uuid4().hex}", redis_url=redis_url)
        current["world"] = None
        current["world"] = world = World(settings, registry, raw)
        return world

    return new_world


def pairs_and_triples(counts: dict[str, int]) -> Iterator[list[tuple[str, int | None]]]:
    """One actor paused before each of its calls, one or two others run to completion."""
    for size in (2, 3):
        for first, *rest in itertools.permutations(counts, size):
            for k in range(1, counts[first] + 1):
                yield [(first, k), *((name, None) for name in rest)]


def nested(counts: dict[str, int]) -> Iterator[list[tuple[str, int | None]]]:
    """One actor paused before each of its calls, a second paused inside before each of
    its own, a third run to completion, then the second finishes, then the first."""
    for first, second, third in itertools.permutations(counts, 3):
        for k in range(1, counts[first] + 1):
            for j in range(1, counts[second] + 1):
                yield [(first, k), (second, j), (third, None)]


def explore(
    world_of: Callable[[], World],
    schedules: Iterator[list[tuple[str, int | None]]],
    *,
    empty_mirror: bool = False,
) -> tuple[int, dict[str, list[str]]]:
    """Each schedule played on a new world: how many, and the violations (by kind, with
    the schedules that showed them)."""
    played, found = 0, {}
    for schedule in schedules:
        world = world_of()
        if empty_mirror:  # a Redis restarted
            world.raw.delete(world.key)
        world.play(schedule)
        played += 1
        for violation in world.violations():
            where = ",".join(f"{name}@{k}" if k else name for name, k in schedule)
            found.setdefault(violation, []).append(where)
    return played, found


@pytest.mark.parametrize("mirror", ["mirrored", "empty"])
def test_every_pause_of_one_writer_or_check_beside_the_others(world_of, mirror):
    counts = call_counts(world_of)
    assert counts == {"run": 12, "fan-out": 7, "plan set": 8, "check": 1}, counts
    played, found = explore(world_of, pairs_and_triples(counts), empty_mirror=mirror == "empty")
    assert played == (3 + 6) * sum(counts.values())  # 3 others alone, 6 orders of two
    assert found == {}


def test_every_nested_pause_of_two_with_a_third(world_of):
    counts = call_counts(world_of)
    played, found = explore(world_of, nested(counts))
    assert played > 1_000 and found == {}
