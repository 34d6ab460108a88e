"""The billing chore as a state machine: any sequence of usage, runs, finalizes, removed
invoices and crashed operations bills every token once (docs/contract.md, docs/design.md).

Hypothesis drives one mongomock database through the public API: finished runners
inserted over three or four months (some written with an old stamp, so that only a full
pass reads them), runners seen running then grown and finished (cumulative counters; a write's stamp
may lag, as the platform's last one does),
runs of one org or all (`full` sometimes) at a `now` that only moves forward, finalizes,
invoices removed (draft or final), and a run or a finalize that dies at its k-th database
call (`CrashAt`). The model keeps its own truth of the tokens per org and per usage
month. After a settle (two full passes, then a plain run) every token is on exactly one
invoice of its org, the ledger holds each once, every draft equals a full rebuild of its
ledger, and at any time a final invoice is the one it was when frozen.

The wall clock follows the machine's `now` (an operation's `now` is the wall clock's):
a dead writer's marks expire as production's do, and a period is due once `now` says so.
Drafts fold at most `FOLD_LIMIT` entries a pass, so a backlog takes several.
`STATEFUL_EXAMPLES=300` explores longer (the default keeps the file under a minute).
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from chores import Settings, finalize_invoices, run_chore
from chores.billing.invoices import Invoices
from chores.core import clock as _clock
from chores.run.pipeline import Pipeline
from pricing import load_registry

from support import ai_runner
from support.dbproxy import CrashAt, DatabaseProxy
from support.truth import month

REGISTRY = load_registry()
CONFIG = Settings(mongo_url="mongomock://stateful", batch_size=3, redis_url=None)
ORGS = ("acme", "globex", "initech")
MODELS = ("gpt-4o-mini", "gpt-4o", "claude-opus-4-1")
START = datetime(2026, 9, 2, tzinfo=UTC)
FIRST_DAY = datetime(2026, 9, 1, tzinfo=UTC)
END = datetime(2027, 1, 10, tzinfo=UTC)  # `now` stops moving here
FINAL_FIELDS = ("lines", "total_micros", "unpriced_tokens", "runs", "entries", "needs_review",
                "closed_fence", "period")  # fmt: skip

FOLD_LIMIT = 4  # a draft's backlog folded in several passes (Invoices.FOLD_LIMIT)
EXAMPLES = int(os.environ.get("STATEFUL_EXAMPLES", "30"))
STEPS = int(os.environ.get("STATEFUL_STEPS", "40"))


class Died(Exception):
    """A process dying at a database call."""


def months_between(first: datetime, last: datetime) -> list[str]:
    """The UTC months from `first`'s to `last`'s, both included."""
    found, moment = [], first.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while moment <= last:
        found.append(month(moment))
        moment = (moment + timedelta(days=32)).replace(day=1)
    return found


class BillingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.db: Any = mongomock.MongoClient(tz_aware=True)["main"]
        self.now = START
        self._wall = _clock.wall_clock
        _clock.wall_clock = lambda: self.now  # restored by teardown
        self._fold_limit = Invoices.FOLD_LIMIT
        Invoices.FOLD_LIMIT = FOLD_LIMIT
        self.serial = 0
        self.by_org: dict[str, int] = defaultdict(int)  # tokens the platform recorded
        self.by_month: dict[tuple[str, str], int] = defaultdict(int)  # of finished runners
        # runners seen running: id -> [org, prompt, completion, started, last stamp]
        self.live: dict[str, list[Any]] = {}
        # (org, month) whose usage may be dated otherwise than the model knows: a running
        # runner's usage is dated by the run that sees it, and a final month's usage that
        # arrives later goes late to another invoice.
        self.blurred: set[tuple[str, str]] = set()
        self.finals: dict[str, dict[str, Any]] = {}  # invoice id -> as first seen frozen

    def teardown(self) -> None:
        try:
            if self.serial:
                self.settle_and_check()
        finally:
            _clock.wall_clock = self._wall
            Invoices.FOLD_LIMIT = self._fold_limit

    # the platform ----------------------------------------------------------------------
    def _next_id(self) -> str:
        self.serial += 1
        return f"r{self.serial}"

    @rule(
        org=st.sampled_from(ORGS),
        runners=st.lists(
            st.tuples(
                st.integers(0, 45 * 24),  # hours before now it ended
                st.integers(0, 5_000),
                st.integers(0, 2_000),
                st.sampled_from(MODELS),
                st.booleans(),  # stamped at its end: only a full pass reads it
            ),
            min_size=1,
            max_size=3,
        ),
    )
    def add_finished(self, org: str, runners: list[tuple[int, int, int, str, bool]]) -> None:
        for hours, prompt, completion, model, old_stamp in runners:
            ended = max(self.now - timedelta(hours=hours), FIRST_DAY)
            stamp = ended if old_stamp else self.now
            doc = ai_runner(
                self._next_id(),
                ended=ended,
                tokens=prompt + completion,
                prompt=prompt,
                org=org,
                model=model,
                stamp=stamp.timestamp(),
            )
            self.db.tasks.insert_one(doc)
            self.by_org[org] += prompt + completion
            self.by_month[(org, month(ended))] += prompt + completion

    @rule(org=st.sampled_from(ORGS), prompt=st.integers(0, 3_000), completion=st.integers(0, 900))
    def start_running(self, org: str, prompt: int, completion: int) -> None:
        runner = self._next_id()
        self.db.tasks.insert_one(
            ai_runner(
                runner,
                ended=None,
                status="RUNNING",
                tokens=prompt + completion,
                prompt=prompt,
                org=org,
                stamp=self.now.timestamp(),
            )
        )
        self.live[runner] = [org, prompt, completion, self.now, self.now]
        self.by_org[org] += prompt + completion

    def _write_live(
        self, runner: str, prompt: int, completion: int, *, finished: bool, lagging: bool
    ) -> None:
        org, old_prompt, old_completion, started, stamped = self.live[runner]
        stamp = stamped if lagging else self.now  # `last_updated_db` lags one write
        assert prompt >= old_prompt and completion >= old_completion
        self.by_org[org] += prompt + completion - old_prompt - old_completion
        doc = ai_runner(
            runner,
            ended=self.now if finished else None,
            status="SUCCESS" if finished else "RUNNING",
            tokens=prompt + completion,
            prompt=prompt,
            org=org,
            stamp=stamp.timestamp(),
        )
        self.db.tasks.replace_one({"_id": runner}, doc)
        if finished:
            del self.live[runner]
            self.blurred.update((org, m) for m in months_between(started, self.now))
        else:
            self.live[runner] = [org, prompt, completion, started, stamp]

    @precondition(lambda self: self.live)
    @rule(
        data=st.data(),
        more_prompt=st.integers(0, 3_000),
        more_completion=st.integers(0, 900),
        finish=st.booleans(),
        lagging=st.booleans(),
    )
    def grow(
        self, data: Any, more_prompt: int, more_completion: int, finish: bool, lagging: bool
    ) -> None:
        runner = data.draw(st.sampled_from(sorted(self.live)), label="runner")
        _, prompt, completion, _, _ = self.live[runner]
        self._write_live(
            runner,
            prompt + more_prompt,
            completion + more_completion,
            finished=finish,
            lagging=lagging,
        )

    @precondition(lambda self: self.now < END)
    @rule(hours=st.integers(1, 12 * 24), micros=st.sampled_from([0, 1, 123_456, 999_999]))
    def advance(self, hours: int, micros: int) -> None:
        # A worker's `now` has microseconds; the database keeps milliseconds of it.
        self.now = min(self.now + timedelta(hours=hours, microseconds=micros), END)

    # the chore -------------------------------------------------------------------------
    @rule(org=st.none() | st.sampled_from(ORGS), full=st.booleans())
    def run(self, org: str | None, full: bool) -> None:
        run_chore(self.db, org=org, now=self.now, registry=REGISTRY, settings=CONFIG, full=full)

    @rule(grace=st.sampled_from([None, 0]), next_month=st.booleans())
    def finalize(self, grace: int | None, next_month: bool) -> None:
        """At `now`, or first moved past the end of `now`'s month and its grace."""
        if next_month:
            ended = (self.now.replace(day=1, hour=0) + timedelta(days=32)).replace(day=1)
            self.now = min(max(self.now, ended + timedelta(days=3, hours=1)), END)
        finalize_invoices(self.db, now=self.now, grace=grace, settings=CONFIG)

    @rule(
        k=st.integers(1, 120),
        operation=st.sampled_from(["run", "org run", "full run", "finalize"]),
    )
    def crash(self, k: int, operation: str) -> None:
        dying = DatabaseProxy(self.db, around=CrashAt(k, Died))
        try:
            if operation == "finalize":
                finalize_invoices(dying, now=self.now, grace=0, settings=CONFIG)
            else:
                org = "acme" if operation == "org run" else None
                full = operation == "full run"
                run_chore(
                    dying, org=org, now=self.now, registry=REGISTRY, settings=CONFIG, full=full
                )
        except Died:
            pass  # a later run completes what it left

    @precondition(lambda self: self.db.billing_invoices.count_documents({}) > 0)
    @rule(data=st.data())
    def remove_invoice(self, data: Any) -> None:
        ids = sorted(d["_id"] for d in self.db.billing_invoices.find({}, {"_id": 1}))
        invoice_id = data.draw(st.sampled_from(ids), label="invoice")
        self.db.billing_invoices.delete_one({"_id": invoice_id})
        self.finals.pop(invoice_id, None)  # a removed final may be frozen again, otherwise

    @rule()
    def settle(self) -> None:
        self.settle_and_check()

    # what must hold --------------------------------------------------------------------
    def invoice_tokens(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for doc in self.db.billing_invoices.find():
            totals[doc["org"]] += sum(line["tokens"] for line in doc["lines"])
        return {org: n for org, n in totals.items() if n}

    def ledger_tokens(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for entry in self.db.billing_ledger.find({}, {"org": 1, "tokens": 1}):
            totals[entry["org"]] += entry["tokens"]
        return {org: n for org, n in totals.items() if n}

    def truth(self) -> dict[str, int]:
        return {org: n for org, n in self.by_org.items() if n}

    @invariant()
    def finals_never_change(self) -> None:
        for doc in self.db.billing_invoices.find({"status": "final"}):
            seen = {f: doc.get(f) for f in FINAL_FIELDS}
            self.blurred.add((doc["org"], doc["period"]))
            first = self.finals.setdefault(doc["_id"], seen)
            assert seen == first, f"final {doc['_id']} changed"

    @invariant()
    def nothing_is_counted_twice_at_any_time(self) -> None:
        truth, ledger, invoiced = self.truth(), self.ledger_tokens(), self.invoice_tokens()
        for org in set(truth) | set(ledger) | set(invoiced):
            assert invoiced.get(org, 0) <= ledger.get(org, 0) <= truth.get(org, 0), org

    def settle_and_check(self) -> None:
        # Two full passes: a full pass that died goes on from where it stopped, and only
        # the next complete one reads what was written meanwhile with an older stamp
        # (docs/contract.md, "Incremental reads").
        for _ in range(2):
            run_chore(self.db, now=self.now, registry=REGISTRY, settings=CONFIG, full=True)
        run_chore(self.db, now=self.now, registry=REGISTRY, settings=CONFIG)
        self.finals_never_change()
        # (3) the ledger holds every token once, (1) every token is on one invoice
        assert self.ledger_tokens() == self.truth()
        assert self.invoice_tokens() == self.truth()
        # (1) per month, where nothing can have moved a token to another month
        for org, period in list(self.live_months()):
            self.blurred.add((org, period))
        stored = {d["_id"]: d for d in self.db.billing_invoices.find()}
        pairs = {(d["org"], d["period"]) for d in stored.values()} | set(self.by_month)
        for org, period in sorted(pairs - self.blurred):
            doc = stored.get(f"{org}:{period}")
            lines = [] if doc is None else doc["lines"]
            on_time = sum(line["tokens"] for line in lines if not line["late"])
            assert on_time == self.by_month.get((org, period), 0), (org, period)
        # (2) every draft is what a full rebuild of its ledger gives
        ledger_pairs = {
            (e["org"], e["usage_period"])
            for e in self.db.billing_ledger.find({}, {"org": 1, "usage_period": 1})
        }
        checked = Pipeline(self.db, CONFIG, REGISTRY).invoices.check_drafts(
            ledger_pairs | {(d["org"], d["period"]) for d in stored.values()}
        )
        assert checked == []

    def live_months(self) -> set[tuple[str, str]]:
        return {
            (org, m)
            for org, _, _, started, _ in self.live.values()
            for m in months_between(started, self.now)
        }


def test_any_sequence_of_runs_finalizes_removals_and_crashes_bills_each_token_once():
    run_state_machine_as_test(
        BillingMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
