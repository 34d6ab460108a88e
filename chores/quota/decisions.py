"""Quota: plans, the decision each metering run writes, and the pre-run check.

A *plan* (`billing_plans`, `_id` = org; the settings' default otherwise) sets an
optional token limit, an optional spend limit, the soft ratio for warnings and
an optional token overdraft. A *decision* (`billing_quota`, `_id` = org) is the
org's state for the period of `now`: `block` when usage reached a limit, `warn`
at the soft ratio, else `ok`. State changes are appended to
`billing_quota_events`, each after the decision that made it stood (a decision another
run's newer one refused leaves no event). `check` answers from the stored decision alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any, Literal, NamedTuple

import bson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pymongo.errors import PyMongoError
from typing_extensions import TypedDict

from chores.core import clock as _clock
from chores.core.db import Collections, Doc
from chores.core.documents import (
    Flag,
    Integer,
    Text,
    check_shape,
    invoice_remedy,
    invoice_sum_problems,
    not_as_written,
)
from chores.core.exceptions import MalformedDocument
from chores.core.money import usd_exact
from chores.core.periods import NEWLINE, PERIOD_PATTERN, as_utc, is_period, period_of
from chores.core.reads import distinct_values
from chores.core.settings import Plan, Settings
from chores.core.writes import insert_ignoring_duplicates, replace_where
from chores.metering.source import chunked
from chores.quota.cache import QuotaCache, is_named_store, namespace

log = logging.getLogger(__name__)
State = Literal["ok", "warn", "block", "unknown"]
STORED_STATES = ("ok", "warn", "block")  # what `evaluate` decides; `unknown` is never stored
NO_DECISION = "no quota decision yet"  # the reason of an org no run decided for
INVALID_PLAN = "invalid plan"  # what a run reports for an org whose plan cannot be read
# ... and for an org whose invoice is not as the chore writes it (`Quota.refused`)
MALFORMED_INVOICE = "malformed invoice"
# On the decision that changed its org's state only: the state it changed from (its event)
CHANGED_FROM = "changed_from"


class QuotaUsage(BaseModel):
    """What counts against an org's quota in a period: its draft's tokens and amount, and
    the build that wrote that draft (`build_ticket`, 0 for none): the draft's version."""

    tokens: int = 0
    micros: int = 0
    unpriced_tokens: int = 0
    draft_ticket: int = 0


class _LineTokens(TypedDict):
    tokens: Integer
    priced: Flag
    amount_micros: Integer | None


class _InvoiceUsage(TypedDict):
    """What a decision reads of an invoice (`Quota.usage`)."""

    org: Text
    lines: list[_LineTokens]
    total_micros: Integer
    unpriced_tokens: Integer


INVOICE_USAGE = TypeAdapter(_InvoiceUsage)


def plan_of(doc: Mapping[str, Any] | None, default: Plan) -> Plan:
    """An org's plan from its document; `default` when it has none (SPEC §7).

    In an org's own plan a missing or null limit means no limit: the default's limits
    apply only to an org without a plan. A missing soft ratio or overdraft is the
    default's. ValidationError when the document holds an invalid value.
    """
    if doc is None:
        return default
    limits = {k: doc.get(k) for k in ("token_limit", "spend_limit_micros")}
    tuning = {k: doc[k] for k in ("soft_ratio", "grace_tokens") if doc.get(k) is not None}
    return Plan.model_validate({**default.model_dump(), **limits, **tuning})


def _state_changes(before: Mapping[str, Any], period: str) -> int:
    """The state changes of `period` before this decision (0 in a new period, and for a
    decision an older version wrote)."""
    count = before.get("state_changes")
    same_period = before.get("period") == period
    return count if same_period and isinstance(count, int) and not isinstance(count, bool) else 0


def change_event(decision: Mapping[str, Any], future: datetime) -> Doc | None:
    """The state-change event of a decision that changed its org's state (it holds
    `CHANGED_FROM`), None for any other, and for one that is no decision (malformed, or
    computed after `future`: the decision write replaces those). Named after its rank among
    the period's changes, not after a time: the decision and whoever replaces it derive
    the same event, and two changes made at one `now` (or at an earlier one, which
    `computed_at` does not tell) are two."""
    org, period, state = decision.get("_id"), decision.get("period"), decision.get("state")
    rank, at = decision.get("state_changes"), decision.get("computed_at")
    before = decision.get(CHANGED_FROM, "no change")
    well_formed = (
        (before is None or before in STORED_STATES)
        and isinstance(org, str)
        and is_period(period)
        and state in STORED_STATES
        and isinstance(rank, int)
        and not isinstance(rank, bool)
        and rank >= 1
        and isinstance(at, datetime)
        and as_utc(at) <= future
    )
    if not well_formed:
        return None
    return {
        "_id": f"{org}:{period}:{before}->{state}:#{rank}",
        "org": org,
        "period": period,
        "from": before,
        "to": state,
        "at": at,
    }


def _computed_at(
    now: datetime, before: Mapping[str, Any], period: str, future: datetime
) -> datetime:
    """When a decision of `period` counts as made: `now`, or the time of the decision it
    replaces when that is later (a run or `plan set` given an earlier `--now`). It read a
    draft at least as new as that one did, so it is at least as fresh: stamped `now`, a
    fresh `block` would turn stale and answer `unknown` (allowed, fail-open). A previous
    time ahead of the clock (`future`) is no time."""
    prior = before.get("computed_at")
    if before.get("period") != period or not isinstance(prior, datetime):
        return now
    prior = as_utc(prior)
    return prior if now < prior <= future else now


def _same(first: Doc | None, second: Doc | None) -> bool:
    """Two reads of a plan document hold the same thing (compared as stored: a NaN read
    twice is two floats that Python calls different)."""
    if first is None or second is None:
        return first is second
    return bson.encode(first) == bson.encode(second)


class _Limit(NamedTuple):
    """One limit of a plan against the usage it bounds."""

    name: str  # "token" or "spend"
    used: int
    limit: int
    hard: int  # the limit plus any overdraft allowed
    describe: Callable[[int], str]  # an amount in the limit's unit, for a reason


def evaluate(plan: Plan, used_tokens: int, spent_micros: int) -> tuple[State, list[str]]:
    """The state for this much usage under `plan`, with the reasons (pure): which limit,
    and how far usage stands from it."""
    state: State = "ok"
    reasons: list[str] = []
    checks: list[_Limit] = []
    if plan.token_limit is not None:
        hard = plan.token_limit + plan.grace_tokens
        checks.append(_Limit("token", used_tokens, plan.token_limit, hard, _count))
    if plan.spend_limit_micros is not None:
        limit = plan.spend_limit_micros
        checks.append(_Limit("spend", spent_micros, limit, limit, usd_exact))
    for check in checks:
        describe = check.describe
        if check.used >= check.hard:
            state = "block"
            overdraft = check.hard - check.limit
            reasons.append(
                f"{check.name} limit reached: {describe(check.used)} used of "
                f"{describe(check.limit)}"
                + (f" (+{describe(overdraft)} overdraft)" if overdraft else "")
            )
        elif check.used >= check.limit and check.used > 0:  # within the overdraft above it
            state = "warn" if state != "block" else state
            reasons.append(
                f"{check.name} limit reached: {describe(check.used)} used of "
                f"{describe(check.limit)}, within its overdraft "
                f"(+{describe(check.hard - check.limit)})"
            )
        elif check.used >= soft_share(plan) * check.limit:
            state = "warn" if state != "block" else state
            share = percent(check.used, check.limit) if check.limit else "all"
            reasons.append(f"{check.name} usage at {share} of its limit ({describe(check.limit)})")
    return state, reasons


def percent(used: int, limit: int) -> str:
    """`used` as a whole percentage of `limit`, rounded down: 99.9% is "99%", never a
    "100%" that reads as the limit reached when it is not."""
    return f"{used * 100 // limit}%"


def soft_share(plan: Plan) -> Fraction:
    """The plan's soft ratio as the decimal a person wrote (0.55 is 11/20, not the float
    just above it), so that usage exactly at the ratio warns."""
    return Fraction(str(plan.soft_ratio))


def plan_error(exc: ValidationError) -> str:
    """A plan's validation errors in one line: field, problem, value."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']} "
        f"(got {error.get('input')!r:.40})"
        for error in exc.errors()
    )


def estimate_reason(plan: Plan, used: int, estimated: int, state: State) -> str:
    """Why an estimate moves an org to `state`: what the tokens it would use reach, the
    overdraft named whenever the plan has one (the limit alone does not block then)."""
    assert plan.token_limit is not None  # only the token limit counts an estimate
    limit, overdraft = plan.token_limit, plan.grace_tokens
    if state == "block":
        what = "reach the token limit" + (" and its overdraft" if overdraft else "")
    elif used + estimated >= limit:
        what = "pass the token limit, within its overdraft"
    else:
        what = "near the token limit"
    return (
        f"the estimate of {_count(estimated)} would {what}: {used:,} used + {estimated:,} "
        f"estimated of {limit:,}" + (f" (+{overdraft:,} overdraft)" if overdraft else "")
    )


def _count(tokens: int) -> str:
    return f"{tokens:,} token{'' if tokens == 1 else 's'}"


class QuotaDecision(BaseModel):
    """What `check_quota` answers."""

    org: str
    state: State
    allowed: bool
    reason: str
    period: str
    used_tokens: int = 0
    token_limit: int | None = None
    spent_micros: int = 0
    spend_limit_micros: int | None = None
    unpriced_tokens: int = 0
    computed_at: datetime | None = None
    stale: bool = False
    # When stale: the state the last decision of this month stored (None otherwise).
    last_state: str | None = None
    reasons: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """One line a person can read."""
        parts = [f"{self.org}: {self.state}"]
        if self.state == "unknown":
            return f"{parts[0]} — {self.reason} ({'allowed' if self.allowed else 'refused'})"
        tokens = _of(self.used_tokens, self.token_limit, _tokens, " tokens")
        if self.unpriced_tokens:  # no price: in the tokens, not in the spend
            unpriced = f"{_tokens(self.unpriced_tokens)} unpriced"
            if tokens.endswith(")"):  # "(no limit)", "(5%)": one parenthesis for both
                tokens = f"{tokens[:-1]}; {unpriced})"
            else:
                tokens = f"{tokens} ({unpriced})"
        usage = [tokens, _of(self.spent_micros, self.spend_limit_micros, usd_exact, "")]
        why = f" — {'; '.join(self.reasons)}" if self.reasons else ""
        return f"{parts[0]} — " + ", ".join(usage) + why


class StoredDecision(BaseModel):
    """A decision document as `check` reads it back (from MongoDB or the mirror): the
    period it decided, when, the usage it counted and the plan it was decided under."""

    model_config = ConfigDict(strict=True, extra="ignore")

    period: str
    computed_at: datetime
    used_tokens: int = Field(ge=0)
    # Any integer: a month whose only usage so far moved tokens charged in a final month
    # (a late credit) has spent less than nothing (its tokens: none, a move sums to zero).
    spent_micros: int
    unpriced_tokens: int = Field(default=0, ge=0)
    plan: Plan

    @field_validator("period")
    @classmethod
    def _a_period(cls, value: str) -> str:
        if not is_period(value):
            raise ValueError("not a YYYY-MM period")
        return value

    @classmethod
    def read(cls, doc: Mapping[str, Any]) -> StoredDecision | str:
        """The decision `doc` holds, or what makes it unreadable: such a document is no
        decision (a run replaces it), answered `unknown`, never read as no usage."""
        try:
            plan = plan_of(doc, Plan(token_limit=None, spend_limit_micros=None))
            return cls.model_validate({**doc, "plan": plan})
        except ValidationError as exc:
            return plan_error(exc)


def state_problem(stored: StoredDecision, state: Any) -> str | None:
    """What is wrong with a stored decision's `state`, None when nothing: it must be a
    state, and the one its usage and limits decide (`evaluate`), as every decision is
    written. A state edited by hand is no decision (outside review: `status` called one
    malformed while `quota check` answered from its numbers)."""
    if state not in STORED_STATES:
        return f"state {state!r:.40} is not one of {', '.join(STORED_STATES)}"
    decided, _ = evaluate(stored.plan, stored.used_tokens, stored.spent_micros)
    if decided != state:
        return f"state {state!r} is not what its usage and limits decide ({decided!r})"
    return None


def _tokens(n: int | None) -> str:
    if n is None:
        return "?"
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if abs(n) >= size:
            return f"{n / size:.1f}".rstrip("0").rstrip(".") + suffix
    return str(n)


def _of(used: int, limit: int | None, fmt: Any, unit: str) -> str:
    if limit is None:
        return f"{fmt(used)}{unit} (no limit)"
    share = f" ({percent(used, limit)})" if limit else ""
    if used != limit and fmt(used) == fmt(limit):  # not "72.9K of 72.9K" short of it
        fmt = "{:,}".format
    return f"{fmt(used)} of {fmt(limit)}{unit}{share}"


class Quota:
    def __init__(self, collections: Collections, settings: Settings):
        self._c = collections
        self._settings = settings
        # The orgs the last `decide` could not decide, their invoice not as the chore
        # writes it: the error naming it.
        self.refused: dict[str, MalformedDocument] = {}
        self._unnamed_in_process = not is_named_store(
            collections.quota.database, settings.mongo_url
        )
        self._cache = (
            QuotaCache(
                settings.redis_url,
                settings.quota_cache_ttl_seconds,
                namespace(collections.quota.full_name, settings.mongo_url),
            )
            if settings.redis_url and not self._unnamed_in_process
            else None
        )

    @property
    def mirror_missed(self) -> str | None:
        """Why the Redis mirror of the decisions could not be updated (it is not set here,
        or an error), None when it was: its entries may still answer older decisions."""
        if self._cache is None:
            if self._unnamed_in_process and self._settings.redis_url:
                return "the database is in-process, not the one MONGO_URL names"
            return "REDIS_URL is not set here"
        if self._cache.failure is not None:
            if self._cache.failure in ("AuthenticationError", "AuthorizationError"):
                return f"the Redis at REDIS_URL refused its credentials ({self._cache.failure})"
            if self._cache.refused_command:
                return f"the Redis at REDIS_URL refused the command ({self._cache.failure})"
            return f"the Redis at REDIS_URL could not be reached ({self._cache.failure})"
        return None

    def known_orgs(self) -> list[str]:
        """Every org with a plan or a stored decision."""
        return sorted(
            {o for o in distinct_values(self._c.plans, "_id") if isinstance(o, str)}
            | {o for o in distinct_values(self._c.quota, "_id") if isinstance(o, str)}
        )

    def plan_documents(self, orgs: Sequence[str]) -> dict[str, Doc]:
        """The plan document of each org that has one."""
        return {d["_id"]: d for d in self._c.plans.find({"_id": {"$in": list(orgs)}})}

    def plans(self, found: Mapping[str, Doc], orgs: Sequence[str]) -> dict[str, Plan | None]:
        """The plan of each org from its document (`plan_documents`); None for a document
        that cannot be read (logged: one org's bad plan never stops the others' decisions)."""
        default = self._settings.default_plan
        plans: dict[str, Plan | None] = {}
        for org in orgs:
            try:
                plans[org] = plan_of(found.get(org), default)
            except ValidationError as exc:
                log.error("plan of %r is invalid, no decision written: %s", org, plan_error(exc))
                plans[org] = None
        return plans

    def usage(self, orgs: Sequence[str], period: str) -> dict[str, QuotaUsage | MalformedDocument]:
        """What counts against each org's quota in `period`; for an org whose invoice is
        not as the chore writes it, the error naming it (no usage to decide from)."""
        ids = [f"{org}:{period}" for org in orgs]
        usage: dict[str, QuotaUsage | MalformedDocument] = {org: QuotaUsage() for org in orgs}
        fields = {
            "org": 1,
            "status": 1,  # what to do about a malformed one (`invoice_remedy`)
            "lines.tokens": 1,
            "lines.priced": 1,
            "lines.amount_micros": 1,
            "total_micros": 1,
            "unpriced_tokens": 1,
            "build_ticket": 1,
        }
        for invoice in self._c.invoices.find({"_id": {"$in": ids}}, fields):
            remedy = invoice_remedy(invoice)
            collection = self._c.invoices.name
            org = str(invoice["_id"]).rpartition(":")[0]  # as asked for: "<org>:<period>"
            try:
                check_shape(INVOICE_USAGE, invoice, collection=collection, remedy=remedy)
                said = invoice_sum_problems(invoice)  # its total is what counts: its lines'
                if said:
                    raise not_as_written(collection, invoice["_id"], "; ".join(said), remedy)
            except MalformedDocument as exc:
                usage[org] = exc
                continue
            ticket = invoice.get("build_ticket")
            usage[org] = QuotaUsage(
                tokens=sum(line["tokens"] for line in invoice["lines"]),
                micros=invoice["total_micros"],
                unpriced_tokens=invoice["unpriced_tokens"],
                # Written before drafts had tickets: older than any ticketed build.
                draft_ticket=int(ticket) if isinstance(ticket, int) else 0,
            )
        return usage

    # Times a decision is made again for an org whose plan changed while it was decided.
    PLAN_CHANGES = 3
    # Orgs decided together: each read and write of a batch names them all (`$in`), and a
    # fan-out decides every known org.
    ORGS_PER_BATCH = 1_000

    def decide(
        self, orgs: Sequence[str], now: datetime, *, raise_refused: bool = True
    ) -> dict[str, str]:
        """Recompute and store the decision of each org, ORGS_PER_BATCH at a time; returns
        org -> state.

        The plans are read again after the decisions are written: an org whose plan
        changed meanwhile (a `plan set`, which decides too, may have written the new plan's
        decision before ours) is decided again with its new plan, so that a decision from
        an old plan never stands. No write orders plans and decisions otherwise.

        One org's plan or invoice that cannot be read never stops the others' decisions:
        its previous decision stands, its state is INVALID_PLAN or MALFORMED_INVOICE. The
        invoice's error is kept in `refused`, and raised once the others are decided
        unless `raise_refused` is False (a caller with more to do first, or that logs it).
        """
        self.refused = {}
        states: dict[str, str] = {}
        for batch in chunked(orgs, self.ORGS_PER_BATCH):
            todo = batch
            documents = self.plan_documents(todo)
            for _ in range(self.PLAN_CHANGES):
                states.update(self._decide(todo, self.plans(documents, todo), now))
                latest = self.plan_documents(todo)
                todo = [org for org in todo if not _same(latest.get(org), documents.get(org))]
                if not todo:
                    break
                documents = latest
        if raise_refused:
            for refused in self.refused.values():
                raise refused  # the others decided: the first invoice it could not read
        return states

    def _decide(
        self, orgs: Sequence[str], plans: Mapping[str, Plan | None], now: datetime
    ) -> dict[str, str]:
        """Decide each org under its plan and store the decisions (one write)."""
        period = period_of(now)
        usage = self.usage(orgs, period)
        previous = {
            d["_id"]: d
            for d in self._c.quota.find(
                {"_id": {"$in": list(orgs)}},
                {"state": 1, "period": 1, "computed_at": 1, "state_changes": 1, CHANGED_FROM: 1},
            )
        }
        # A decision that changed the state is replaced below only once its event is in:
        # its writer may have died between the two writes (the event goes after its
        # decision, so that a decision refused never leaves one). Already in, mostly:
        # duplicates, ignored.
        future = _clock.wall_clock() + timedelta(seconds=self._settings.future_skew_seconds)
        recovered = [change_event(d, future) for d in previous.values()]
        insert_ignoring_duplicates(self._c.quota_events, [e for e in recovered if e is not None])
        states: dict[str, str] = {}
        decisions: list[Doc] = []
        for org in orgs:
            plan, used = plans[org], usage[org]
            if isinstance(used, MalformedDocument):  # its previous decision stands too
                log.error("no quota decision for %r: %s", org, used)
                self.refused[org] = used
                states[org] = MALFORMED_INVOICE
                continue
            if plan is None:  # its previous decision stands until the plan is fixed
                states[org] = INVALID_PLAN
                continue
            state, reasons = evaluate(plan, used.tokens, used.micros)
            before = previous.get(org, {})
            changed = (before.get("state"), before.get("period")) != (state, period)
            changes = _state_changes(before, period) + int(changed)
            # Only on the decision that made the change: its event is derived from it.
            change = {CHANGED_FROM: before.get("state")} if changed else {}
            decisions.append(
                {
                    "_id": org,
                    "org": org,
                    "period": period,
                    "state": state,
                    "reasons": reasons,
                    "used_tokens": used.tokens,
                    "spent_micros": used.micros,
                    "unpriced_tokens": used.unpriced_tokens,
                    "draft_ticket": used.draft_ticket,
                    "token_limit": plan.token_limit,
                    "spend_limit_micros": plan.spend_limit_micros,
                    "soft_ratio": plan.soft_ratio,
                    "grace_tokens": plan.grace_tokens,
                    "computed_at": _computed_at(now, before, period, future),
                    "state_changes": changes,  # in this period, this one's included
                    **change,
                }
            )
            states[org] = state
        # One write. A decision from a concurrent run that read a later version of the
        # draft (a build on a later ticket: more usage, or the same tokens repriced) or a
        # later period is kept, never overwritten; one computed ahead of the wall clock (a
        # `now` that was wrong) is no decision, nor is one whose period, ticket or time is
        # malformed. One without a draft ticket was written by an older version of the
        # chore, from usage alone: replaced. What is returned is what stands.
        refused = replace_where(
            self._c.quota,
            [
                (
                    {
                        "_id": d["_id"],
                        "$or": [
                            {"period": {"$lt": period}},
                            {"period": period, "draft_ticket": {"$lte": d["draft_ticket"]}},
                            # missing or malformed (`$not` also matches a missing field)
                            {"period": {"$not": {"$regex": PERIOD_PATTERN}}},
                            {"period": {"$regex": NEWLINE}},
                            {"period": {"$type": "array"}},
                            # no ticket (an older version's decision) or a malformed one
                            {"period": period, "draft_ticket": {"$not": {"$type": "number"}}},
                            {"computed_at": {"$gt": future}},
                            {"computed_at": {"$not": {"$type": "date"}}},
                            {"state": {"$nin": list(STORED_STATES)}},
                        ],
                    },
                    d,
                )
                for d in decisions
            ],
        )
        stood = [d for i, d in enumerate(decisions) if i not in refused]
        events = [change_event(d, future) for d in stood]
        insert_ignoring_duplicates(self._c.quota_events, [e for e in events if e is not None])
        if self._cache is not None:
            # A decision refused above lost to a newer one: the mirror must not answer
            # one as old, so such an entry goes and the next check reads MongoDB; a newer
            # entry (the later draft's writer mirrored it) stays.
            self._cache.put_many(stood)
            self._cache.drop_older([decisions[i] for i in sorted(refused)])
        if refused:
            kept = {decisions[i]["_id"] for i in refused}
            for doc in self._c.quota.find({"_id": {"$in": sorted(kept)}}, {"state": 1}):
                if doc.get("state") in STORED_STATES:
                    states[doc["_id"]] = doc["state"]
        return states

    def check(
        self, org: str, estimated_tokens: int, now: datetime, *, ask_mirror: bool = True
    ) -> QuotaDecision:
        """The answer to "may `org` start a run?" from one read of its decision (MongoDB's
        only, with `ask_mirror=False`: the caller asked the mirror already)."""
        settings = self._settings
        cache = self._cache if ask_mirror else None
        doc = mirrored(cache, org, now, settings) if cache is not None else None
        if doc is None:
            try:
                doc = self._c.quota.find_one({"_id": org})
            except PyMongoError:
                doc = None
                reason = "billing database unavailable"
            else:
                reason = NO_DECISION
            if doc is None:
                return unknown_decision(org, period_of(now), reason, settings)
            # Not mirrored: what a check read may be older than a decision written and
            # dropped since (a refused decision's entry goes). Only a decision's writer
            # fills the mirror, under MongoDB's rule; the next run's decision fills it.
        return answer(org, doc, estimated_tokens, now, settings)


def _future(now: datetime, settings: Settings) -> datetime:
    """The latest time a decision may say it was computed at: one after it is no decision
    (a clock that was ahead)."""
    return max(now, _clock.wall_clock()) + timedelta(seconds=settings.future_skew_seconds)


def mirrored(cache: QuotaCache, org: str, now: datetime, settings: Settings) -> Doc | None:
    """`org`'s decision from the Redis mirror when it holds a usable one, else None (read
    MongoDB). An entry is used only while younger than the cache TTL, so one that a failed
    mirror write left behind is never answered for longer. One computed after `_future` is
    dropped: MongoDB's rule replaces it, the mirror's would keep newer decisions out until
    it expires; so is one that does not read (no run of this version wrote it), or the
    check could not mirror MongoDB's decision in its place."""
    doc = cache.get(org)
    if doc is None:
        return None
    stored = StoredDecision.read(doc)
    if isinstance(stored, str) or as_utc(stored.computed_at) > _future(now, settings):
        cache.forget([org])
        return None
    computed_at = as_utc(stored.computed_at)
    return doc if (now - computed_at).total_seconds() < settings.quota_cache_ttl_seconds else None


def answer(
    org: str, doc: Mapping[str, Any], estimated_tokens: int, now: datetime, settings: Settings
) -> QuotaDecision:
    """What `org`'s stored decision `doc` answers at `now` for a run of `estimated_tokens`
    more: its state re-evaluated with the estimate, or `unknown` when it is malformed,
    stale, from the future or for a later month."""
    period = period_of(now)
    stored = StoredDecision.read(doc)
    if isinstance(stored, str):
        return unknown_decision(
            org, period, f"its stored decision is malformed ({stored})", settings
        )
    computed_at = as_utc(stored.computed_at)
    if computed_at > _future(now, settings):
        return unknown_decision(org, period, "decision was computed in the future", settings)
    if stored.period > period:
        # Asked about an earlier month (`--now`): this decision says nothing of it.
        reason = f"the decision is for {stored.period}, not {period}"
        return unknown_decision(org, period, reason, settings)
    age = (now - computed_at).total_seconds()
    plan = stored.plan
    fresh_period = stored.period == period  # an earlier month's usage counts for nothing
    used = stored.used_tokens if fresh_period else 0
    spent = stored.spent_micros if fresh_period else 0
    if age > settings.quota_max_staleness_seconds:
        last = doc.get("state") if doc.get("state") in STORED_STATES else None
        of = "" if fresh_period else f" of {stored.period}"
        why = f"the last decision{of} ({last or 'state unreadable'}) is {_age(age)} old"
        why += ": none made since"
        unknown = unknown_decision(org, period, why, settings)
        return unknown.model_copy(
            update={
                "stale": True,
                "last_state": last if fresh_period else None,
                "computed_at": computed_at,
                "used_tokens": used,
                "spent_micros": spent,
                "unpriced_tokens": stored.unpriced_tokens if fresh_period else 0,
                "token_limit": plan.token_limit,
                "spend_limit_micros": plan.spend_limit_micros,
            }
        )
    problem = state_problem(stored, doc.get("state"))
    if problem is not None:
        return unknown_decision(
            org, period, f"its stored decision is malformed ({problem})", settings
        )
    state, reasons = evaluate(plan, used, spent)
    if estimated_tokens:
        with_estimate, _ = evaluate(plan, used + estimated_tokens, spent)
        if with_estimate != state:  # the estimate alone moves the org to warn or block
            state = with_estimate
            reasons.append(estimate_reason(plan, used, estimated_tokens, state))
    return QuotaDecision(
        org=org,
        state=state,
        allowed=state != "block",
        reason="; ".join(reasons) or "within plan",
        period=period,
        used_tokens=used,
        token_limit=plan.token_limit,
        spent_micros=spent,
        spend_limit_micros=plan.spend_limit_micros,
        unpriced_tokens=stored.unpriced_tokens if fresh_period else 0,
        computed_at=computed_at,
        stale=False,
        reasons=reasons,
    )


def _age(seconds: float) -> str:
    """A decision's age as a person says it: `90 s`, `16 min`, `5 h`, `32 days`; minutes
    rounded up (a decision stale after 900 s is not "15 min old")."""
    for unit_seconds, unit in ((86_400, "days"), (3_600, "h")):
        if seconds >= 2 * unit_seconds:
            return f"{int(seconds // unit_seconds)} {unit}"
    if seconds >= 120:
        return f"{math.ceil(seconds / 60)} min"
    return f"{int(seconds)} s"


def unknown_decision(org: str, period: str, reason: str, settings: Settings) -> QuotaDecision:
    """No answer to give: `QUOTA_FAIL_OPEN` decides whether the run may start."""
    allowed = settings.quota_fail_open
    policy = "fail-open" if allowed else "fail-closed"
    return QuotaDecision(
        org=org, state="unknown", allowed=allowed, reason=f"{reason} ({policy})", period=period
    )
