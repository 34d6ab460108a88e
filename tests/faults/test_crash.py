"""A crash after any write, followed by a rerun, bills exactly what a clean run bills (SPEC §4, §7).

The database is wrapped so that its k-th write to a billing collection raises
`AutoReconnect` (the connection dropped), before or after the write reached the
server; from then on the connection is dead and every call raises. `run_chore`
and `finalize_invoices` must propagate the error, and a rerun on the real
database must leave the billing state a clean run leaves. k goes over every
write a clean run makes, so no crash point is left out.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
import pytest
from pymongo.errors import AutoReconnect, PyMongoError

from chores import Settings, check_quota, finalize_invoices, run_chore
from chores.demo.corpus import Corpus, generate_corpus
from chores.metering.progress import runner_of
from pricing import load_registry

from support.dbproxy import WRITES

REGISTRY = load_registry()
SETTINGS = Settings(mongo_url="mongomock://test", batch_size=4, redis_url=None)
BILLING_PREFIX = SETTINGS.billing_prefix
FIRST = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
FINALIZE = datetime(2026, 11, 5, 6, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 6, 12, 0, tzinfo=UTC)


class CrashPlan:
    """Counts billing writes; the `crash_at`-th one raises, and the connection dies."""

    def __init__(self, crash_at: int | None = None, *, write_lands: bool = False):
        self.crash_at = crash_at
        self.write_lands = write_lands
        self.writes: list[tuple[str, str]] = []
        self.error: AutoReconnect | None = None

    def call(self, collection: str, method: str, perform: Callable[[], Any]) -> Any:
        if self.error is not None:
            raise AutoReconnect("connection closed")
        if method not in WRITES or not collection.startswith(BILLING_PREFIX):
            return perform()
        self.writes.append((collection, method))
        if len(self.writes) != self.crash_at:
            return perform()
        if self.write_lands:
            # The server applied it (duplicate keys and all); the acknowledgement was lost.
            with contextlib.suppress(PyMongoError):
                perform()
        self.error = AutoReconnect(f"crash at write {self.crash_at}: {collection}.{method}")
        raise self.error


class CrashingCollection:
    """Behaves like the pymongo collection it wraps; every method call goes through the plan."""

    def __init__(self, collection: Any, plan: CrashPlan):
        self._collection = collection
        self._plan = plan

    @property
    def name(self) -> str:
        return str(self._collection.name)

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._collection, attr)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._plan.call(self.name, attr, lambda: target(*args, **kwargs))

        return call

    def __getitem__(self, name: str) -> Any:  # sub-collections, as pymongo allows
        return CrashingCollection(self._collection[name], self._plan)


class CrashingDatabase:
    def __init__(self, db: Any, plan: CrashPlan):
        self._db = db
        self._plan = plan

    def __getitem__(self, name: str) -> CrashingCollection:
        return CrashingCollection(self._db[name], self._plan)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if hasattr(type(self._db), name):  # a Database method or property
            return getattr(self._db, name)
        return self[name]  # `db.tasks`, as pymongo allows


# --- scenarios --------------------------------------------------------------------------------


def corpus_with(seed: int, **options: Any) -> Corpus:
    defaults: dict[str, Any] = {
        "orgs": ("acme", "globex"),
        "runs_per_org": 3,
        "start": datetime(2026, 10, 1, tzinfo=UTC),
        "days": 30,
        "running_share": 0.3,
        "malformed_share": 0.3,
    }
    return generate_corpus(seed=seed, **{**defaults, **options})


def _small_corpus() -> Corpus:
    """The first seed whose corpus has subagents (and grandchildren), a running runner,
    a malformed runner and several usage periods."""
    for seed in range(1000):
        corpus = corpus_with(seed)
        depths = {t["context"].get("ai_subagent_depth", 0) for t in corpus.tasks}
        running = [u for u in corpus.truth if u.end_time is None]
        if {1, 2} <= depths and running and corpus.malformed:
            return corpus
    raise AssertionError("no seed gives the corpus this test needs")


CORPUS = _small_corpus()
LATE = corpus_with(
    4242,
    runs_per_org=2,
    start=datetime(2026, 10, 25, tzinfo=UTC),
    days=5,
    running_share=0,
    malformed_share=0,
)
for _n, _task in enumerate(LATE.tasks):  # reached the database recently, after finalization
    _task["last_updated_db"] = (LATER - timedelta(seconds=60 + _n)).timestamp()


def insert(db: Any, tasks: list[dict[str, Any]], findings: list[dict[str, Any]]) -> None:
    db.tasks.insert_many(copy.deepcopy(tasks))
    if findings:
        db.findings.insert_many(copy.deepcopy(findings))


def meter(db: Any, now: datetime = FIRST) -> Any:
    return run_chore(db, now=now, registry=REGISTRY, settings=SETTINGS)


def finalize(db: Any) -> Any:
    return finalize_invoices(db, now=FINALIZE, settings=SETTINGS)


def setup_nothing(db: Any) -> None:
    insert(db, CORPUS.tasks, CORPUS.findings)


def setup_half_observed(db: Any) -> None:
    """A first run saw every runner half-way; then they grew and (mostly) ended."""
    insert(db, CORPUS.at(0.5), CORPUS.findings)
    meter(db, FIRST - timedelta(hours=1))
    for doc in CORPUS.tasks:
        db.tasks.replace_one({"_id": doc["_id"]}, copy.deepcopy(doc))


def setup_spawn_findings_late(db: Any) -> None:
    """A first run saw the subagents before their spawn findings (`baseline_missing`)."""
    insert(db, CORPUS.tasks, [])
    meter(db, FIRST - timedelta(hours=1))
    db.findings.insert_many(copy.deepcopy(CORPUS.findings))


def setup_metered(db: Any) -> None:
    setup_nothing(db)
    meter(db)


def setup_finalized_with_late_runners(db: Any) -> None:
    setup_metered(db)
    finalize(db)
    insert(db, LATE.tasks, LATE.findings)


def setup_half_observed_drafts_removed(db: Any) -> None:
    """As `setup_half_observed`, then every invoice removed from the database."""
    setup_half_observed(db)
    db[SETTINGS.collection("invoices")].delete_many({})


def setup_metered_drafts_removed(db: Any) -> None:
    setup_metered(db)
    db[SETTINGS.collection("invoices")].delete_many({})


def setup_half_observed_drafts_edited(db: Any) -> None:
    """As `setup_half_observed`, then every draft edited by hand (tokens added to its stored
    sums, its runs and entries counted up) and one folded entry's fold flag cleared: only a
    full pass, which rebuilds each draft from its ledger, makes them exact again."""
    setup_half_observed(db)
    invoices = db[SETTINGS.collection("invoices")]
    for draft in invoices.find({"status": "draft"}):
        groups = draft["usage_groups"]
        groups[0]["input"] += 1_000
        invoices.update_one(
            {"_id": draft["_id"]},
            {"$set": {"usage_groups": groups}, "$inc": {"runs": 1, "entries": 1}},
        )
    db[SETTINGS.collection("ledger")].update_one(
        {"fold": {"$ne": None}, "input_tokens": {"$gt": 0}}, {"$set": {"fold": None}}
    )


def full_pass(db: Any) -> Any:
    return run_chore(db, now=FIRST, registry=REGISTRY, settings=SETTINGS, full=True)


@dataclass(frozen=True)
class Scenario:
    name: str
    setup: Callable[[Any], None]
    step: Callable[[Any], Any]


SCENARIOS = [
    Scenario("first-run", setup_nothing, meter),
    Scenario("incremental-run", setup_half_observed, meter),
    Scenario("healing-run", setup_spawn_findings_late, meter),
    Scenario(
        "one-org-run",
        setup_half_observed,
        lambda db: run_chore(db, org="acme", now=FIRST, registry=REGISTRY, settings=SETTINGS),
    ),
    Scenario("drafts-removed-run", setup_half_observed_drafts_removed, meter),
    Scenario("drafts-removed-full-pass", setup_metered_drafts_removed, full_pass),
    Scenario("drafts-edited-full-pass", setup_half_observed_drafts_edited, full_pass),
    Scenario("finalize", setup_metered, finalize),
    Scenario("late-usage-run", setup_finalized_with_late_runners, lambda db: meter(db, LATER)),
]

# Differ between any two runs; everything else must be equal. Fencing tokens and build
# tickets count attempts, so a crashed attempt and its retry end on higher ones (a quota
# decision's `draft_ticket` is its draft's build ticket). An entry's `fold` names the
# build that folded it: only whether it is folded must agree.
# `changed_from` marks the decision that made a state change until the next decision
# replaces it (its event written first): a rerun's decision, made after the change, has none.
VOLATILE = {"run_id", "fence", "closed_fence", "build_ticket", "draft_ticket", "changed_from"}


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in doc.items() if k not in VOLATILE}
    if "fold" in kept:
        kept["fold"] = kept["fold"] is not None
    return kept


QUOTA = frozenset({SETTINGS.collection("quota"), SETTINGS.collection("quota_events")})
BILLING_STATE = [
    SETTINGS.collection(short)
    for short in (
        "ledger",
        "invoices",
        "anomalies",
        "pending",
        "cursors",
        "dirty",
        "plans",
        "quota",
        "quota_events",
    )
]


def billing_state(db: Any) -> dict[str, Any]:
    """Every billing collection but the run log, without run ids; dirty marks by pair.

    A writer that died leaves its marks *open* (they expire after OPEN_MARK_EXPIRY); they
    only cost a rebuild of their invoice, so they are not part of the compared state.
    """
    state: dict[str, Any] = {}
    for name in BILLING_STATE:
        docs = [_comparable(d) for d in db[name].find()]
        if name == SETTINGS.collection("dirty"):
            docs = [{"org": d["org"], "period": d["period"]} for d in docs if not d.get("open")]
        if name == SETTINGS.collection("pending"):  # claims are per run: which runners
            docs = [dict(t) for t in {(("runner", runner_of(d)), ("org", d["org"])) for d in docs}]
        state[name] = sorted(docs, key=repr)
    return state


def clean_state(scenario: Scenario) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    db = mongomock.MongoClient(tz_aware=True)["main"]
    scenario.setup(db)
    plan = CrashPlan()
    scenario.step(CrashingDatabase(db, plan))
    assert plan.error is None
    return billing_state(db), plan.writes


CLEAN = {scenario.name: clean_state(scenario) for scenario in SCENARIOS}


# Not crashed at every write, to keep the suite short: a full pass over removed drafts writes
# what a run over removed drafts writes (a draft inserted from the ledger, its flags), and
# its rebuilt invoices are checked against the first run's below; a removal changes no
# quota write.
NOT_CRASHED = {"drafts-removed-full-pass"}
QUOTA_NOT_CRASHED = NOT_CRASHED | {"drafts-removed-run"}


def crash_cases(skip: frozenset[str] | set[str] = NOT_CRASHED) -> list[Any]:
    cases = []
    for scenario in (s for s in SCENARIOS if s.name not in skip):
        _, writes = CLEAN[scenario.name]
        for k, (collection, method) in enumerate(writes, start=1):
            for lands in (False, True):
                when = "after" if lands else "before"
                cases.append(
                    pytest.param(
                        scenario,
                        k,
                        lands,
                        id=f"{scenario.name}-{k}-{collection}.{method}-{when}",
                    )
                )
    return cases


def test_removed_drafts_are_rebuilt_as_they_were():
    invoices = SETTINGS.collection("invoices")
    assert CLEAN["drafts-removed-run"][0][invoices] == CLEAN["incremental-run"][0][invoices]
    assert CLEAN["drafts-removed-full-pass"][0][invoices] == CLEAN["first-run"][0][invoices]


def test_edited_drafts_are_rebuilt_from_their_ledger_by_a_full_pass():
    invoices = SETTINGS.collection("invoices")
    assert CLEAN["drafts-edited-full-pass"][0][invoices] == CLEAN["incremental-run"][0][invoices]


def test_every_scenario_writes_invoices_and_ledger_entries():
    for name, (state, writes) in CLEAN.items():
        assert len(writes) >= 6, name
        assert state[SETTINGS.collection("invoices")], name
        assert state[SETTINGS.collection("ledger")], name
    assert any(
        line["late"]
        for invoice in CLEAN["late-usage-run"][0][SETTINGS.collection("invoices")]
        for line in invoice["lines"]
    )
    assert {i["status"] for i in CLEAN["finalize"][0][SETTINGS.collection("invoices")]} == {
        "draft",
        "final",
    }
    healed = CLEAN["healing-run"][0][SETTINGS.collection("anomalies")]
    assert any(a["kind"] == "baseline_missing" and a["resolved"] for a in healed)


def crash_and_rerun(scenario: Scenario, k: int, write_lands: bool) -> dict[str, Any]:
    """The billing state after a crash at the k-th write of `scenario`'s step and a rerun."""
    db = mongomock.MongoClient(tz_aware=True)["main"]
    scenario.setup(db)
    plan = CrashPlan(k, write_lands=write_lands)

    with pytest.raises(AutoReconnect) as raised:
        scenario.step(CrashingDatabase(db, plan))
    assert raised.value is plan.error  # propagated, not swallowed or replaced

    scenario.step(db)
    return billing_state(db)


_OUTCOMES: dict[tuple[str, int, bool], dict[str, Any]] = {}


def outcome(scenario: Scenario, k: int, write_lands: bool) -> dict[str, Any]:
    """`crash_and_rerun`, once per case: the two tests below check different parts of it."""
    key = (scenario.name, k, write_lands)
    if key not in _OUTCOMES:
        _OUTCOMES[key] = crash_and_rerun(scenario, k, write_lands)
    return _OUTCOMES[key]


def _without_quota(state: dict[str, Any]) -> dict[str, Any]:
    return {name: docs for name, docs in state.items() if name not in QUOTA}


def _quota(state: dict[str, Any]) -> dict[str, Any]:
    return {name: docs for name, docs in state.items() if name in QUOTA}


@pytest.mark.parametrize(("scenario", "k", "write_lands"), crash_cases())
def test_a_crash_at_any_write_is_completed_exactly_by_a_rerun(scenario, k, write_lands):
    """Ledger, invoices, anomalies, pending runners, cursors and dirty marks."""
    want, _ = CLEAN[scenario.name]
    assert _without_quota(outcome(scenario, k, write_lands)) == _without_quota(want)


@pytest.mark.parametrize(("scenario", "k", "write_lands"), crash_cases(QUOTA_NOT_CRASHED))
def test_after_a_crash_and_a_rerun_quota_decisions_and_events_are_those_of_a_clean_run(
    scenario, k, write_lands
):
    """Every org's decision is rewritten by the rerun, and no state change event is lost."""
    want, _ = CLEAN[scenario.name]
    assert _quota(outcome(scenario, k, write_lands)) == _quota(want)


def test_the_wrapper_forwards_like_pymongo():
    db = mongomock.MongoClient(tz_aware=True)["main"]
    plan = CrashPlan(2, write_lands=True)
    wrapped = CrashingDatabase(db, plan)
    wrapped.billing_x.insert_one({"_id": 1})
    assert wrapped["billing_x"].find_one({"_id": 1}) == {"_id": 1}
    assert wrapped.billing_x.name == "billing_x"
    wrapped.tasks.insert_one({"_id": 1})  # not a billing write: not counted
    with pytest.raises(AutoReconnect):
        wrapped.billing_x.update_one({"_id": 1}, {"$set": {"a": 1}})
    assert db.billing_x.find_one({"_id": 1}) == {"_id": 1, "a": 1}  # the write landed
    with pytest.raises(AutoReconnect):
        wrapped.tasks.find_one({})  # the connection is dead from then on
    assert plan.writes == [("billing_x", "insert_one"), ("billing_x", "update_one")]


def _runner(org: str, *, prompt: int, completion: int, stamp: datetime, **fields: Any) -> Any:
    return {
        "name": "ai",
        "start_time": stamp,
        "last_updated_db": stamp.timestamp(),
        "context": {
            "workspace_id": org,
            "ai_model": "gpt-4o-mini",
            "ai_tokens": prompt + completion,
            "ai_prompt_tokens": prompt,
            "ai_completion_tokens": completion,
        },
        **fields,
    }


def test_a_rerun_after_a_crash_corrects_the_quota_of_an_org_it_reads_nothing_of():
    """A crash between an org's invoice rebuild and its decision leaves a stale decision.

    globex's runner was billed running (1,500 tokens), then ended at 4,000 tokens with
    a final stamp that lags far behind (SPEC §7): only the pending list finds it. The
    run that bills it crashes just before writing globex's decision; the rerun reads
    nothing of globex, and globex keeps a decision of 1,500 tokens under a 3,000 limit.
    """
    start = datetime(2026, 11, 10, 10, 0, tzinfo=UTC)
    first, second = start + timedelta(minutes=5), start + timedelta(hours=2)
    quiet = start - timedelta(hours=1)  # globex's stamps: far behind acme's

    def setup(db: Any) -> None:
        db.billing_plans.insert_one({"_id": "globex", "token_limit": 3_000})
        db.tasks.insert_many(
            [
                {
                    "_id": 1,
                    **_runner(
                        "acme",
                        prompt=100,
                        completion=50,
                        stamp=first,
                        status="SUCCESS",
                        end_time=first,
                    ),
                },
                {
                    "_id": 2,
                    **_runner(
                        "globex", prompt=1_000, completion=500, stamp=quiet, status="RUNNING"
                    ),
                },
            ]
        )
        meter(db, first)
        ended = _runner(
            "globex",
            prompt=3_000,
            completion=1_000,
            stamp=quiet,
            status="SUCCESS",
            end_time=start + timedelta(minutes=30),
        )
        db.tasks.replace_one({"_id": 2}, ended)
        db.tasks.replace_one(
            {"_id": 1},
            _runner(
                "acme",
                prompt=100,
                completion=50,
                stamp=second - timedelta(seconds=5),
                status="SUCCESS",
                end_time=first,
            ),
        )

    clean = mongomock.MongoClient(tz_aware=True)["main"]
    setup(clean)
    plan = CrashPlan()
    meter(CrashingDatabase(clean, plan), second)
    assert clean.billing_quota.find_one({"_id": "globex"})["state"] == "block"
    k = max(n for n, w in enumerate(plan.writes, 1) if w == ("billing_quota", "bulk_write"))

    db = mongomock.MongoClient(tz_aware=True)["main"]
    setup(db)
    with pytest.raises(AutoReconnect):
        meter(CrashingDatabase(db, CrashPlan(k)), second)
    meter(db, second)

    invoice = db.billing_invoices.find_one({"_id": "globex:2026-11"})
    assert sum(line["tokens"] for line in invoice["lines"]) == 4_000
    answer = check_quota(db, "globex", now=second, settings=SETTINGS)
    assert (answer.state, answer.allowed, answer.used_tokens) == ("block", False, 4_000)
    decision = db.billing_quota.find_one({"_id": "globex"})
    assert (decision["used_tokens"], decision["state"]) == (4_000, "block")
