"""`chore quota`, `chore plan` and `chore status`: the operator's quota and health commands."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import click
from pydantic import ValidationError
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.markup import escape

from chores.billing.known_orgs import unknown_org_note
from chores.cli import tables
from chores.cli.common import (
    console,
    drop_buffered_output,
    model_json,
    now_option,
    user_errors,
)
from chores.cli.exit_codes import EXIT_REFUSED
from chores.cli.params import OneLineGroup
from chores.core import clock
from chores.core.clock import checked_now
from chores.core.db import APPLY_INDEXES_COMMAND, Collections, connect, missing_source_indexes
from chores.core.documents import problems
from chores.core.exceptions import ConfigError, DatabaseUnavailable
from chores.core.money import parse_usd, ungrouped, usd_exact, whole_after_scaling
from chores.core.orgs import validate_org
from chores.core.periods import as_utc, is_period, period_of
from chores.core.settings import MAX_INT64, Plan, get_settings
from chores.core.wording import for_terminal
from chores.quota.cache import SERVER_SCHEMES
from chores.quota.decisions import (
    NO_DECISION,
    StoredDecision,
    plan_error,
    plan_of,
    state_problem,
    unknown_decision,
)
from chores.run.report import STORED_RUN

_SUFFIX_PLACES = {"": 0, "K": 3, "M": 6, "B": 9}


def parse_tokens(text: str) -> int:
    """`10M`, `2.5k`, `1,000` -> tokens; ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9][0-9,_]*(?:\.[0-9]+)?)\s*([kKmMbB]?)\s*", text)
    if not match:
        raise ValueError(f"not a token count: {text!r} (try 10M, 500K or 1000)")
    try:
        number = Decimal(ungrouped(match.group(1)))  # exact: 2.01M
    except ValueError as exc:
        raise ValueError(f"not a token count: {text!r} (try 10M, 500K or 1,000)") from exc
    tokens = whole_after_scaling(number, _SUFFIX_PLACES[match.group(2).upper()])
    if tokens is None:
        raise ValueError(f"not a whole number of tokens: {text!r}")
    return tokens


class TokensType(click.ParamType):
    """A token count; also `none` (no limit) when `allow_none`."""

    name = "TOKENS"

    def __init__(self, *, allow_none: bool = True) -> None:
        self.allow_none = allow_none

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> object:
        if isinstance(value, int) or value is None:
            return value
        if self.allow_none and str(value).lower() == "none":
            return "none"
        try:
            return _storable(parse_tokens(str(value)), f"{MAX_INT64:,} tokens")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class UsdType(click.ParamType):
    name = "USD"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> object:
        if value is None or isinstance(value, int):
            return value
        if str(value).lower() == "none":
            return "none"
        try:
            return _storable(parse_usd(str(value)), f"${Decimal(MAX_INT64).scaleb(-6):,}")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _storable(amount: int, most: str) -> int:
    """`amount`, when MongoDB can store it (a 64-bit integer); ValueError otherwise."""
    if amount > MAX_INT64:
        raise ValueError(f"at most {most}")
    return amount


@click.group(cls=OneLineGroup)
def quota() -> None:
    """Quota decisions."""


@quota.command("check")
@click.option("--org", required=True, metavar="ORG", help="The org (workspace id).")
@click.option(
    "--estimate",
    type=TokensType(allow_none=False),
    default=0,
    help="Tokens the run expects to use.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON (for scripts).")
@now_option
@user_errors
def quota_check(org: str, estimate: int, as_json: bool, now: datetime | None) -> None:
    """May ORG start a run? Exit 0 allowed, 3 refused, 1 bad org or setting, 2 bad usage.

    When the answer is unknown (no decision yet, a stale one, the billing database
    unreachable), QUOTA_FAIL_OPEN decides: allowed (exit 0) or refused (exit 3).
    """
    from chores.quota.check import asks_mirror_first, check_quota, check_quota_from_mirror

    settings = get_settings()
    org = validate_org(org)
    now = as_utc(now or datetime.now(UTC))
    decision = check_quota_from_mirror(org, estimate, now, settings=settings)
    if decision is None:  # no usable mirrored decision: MongoDB's
        try:
            db = connect(settings)
        except DatabaseUnavailable as exc:  # unreachable: the policy answers
            decision = unknown_decision(org, period_of(now), str(exc), settings)
        else:
            decision = check_quota(  # the mirror once, whichever asks it: as the API answers
                db,
                org,
                estimated_tokens=estimate,
                now=now,
                settings=settings,
                ask_mirror=not asks_mirror_first(settings),
            )
            if decision.reason.startswith(NO_DECISION) and not as_json:  # scripts: no note
                _note_unknown_org(Collections.of(db, settings), org)
    answer = 0 if decision.allowed else EXIT_REFUSED
    try:
        click.echo(model_json(decision) if as_json else for_terminal(decision.summary()))
    except OSError as exc:  # the exit code is the answer: it survives an output lost
        # (outside review: a refusal on a closed or full stdout exited 1, "bad setting")
        with contextlib.suppress(OSError):
            click.echo(f"Error: cannot write the output: {exc.strerror}", err=True)
        drop_buffered_output()
    sys.exit(answer)


def _note_unknown_org(collections: Collections, org: str) -> None:
    """A note on stderr when the billing knows nothing of `org` (no invoice, no plan),
    naming the known ids like it: a mistyped id is said, not answered for silently. A
    database error only leaves the note out."""
    try:
        note = unknown_org_note(collections, org)
    except PyMongoError:
        return
    if note is not None:
        with contextlib.suppress(OSError):  # a note never changes the answer (review)
            click.echo(f"note: {for_terminal(note)}", err=True)


@click.group(cls=OneLineGroup)
def plan() -> None:
    """Quota plans per org."""


@plan.command("set")
@click.option("--org", required=True, metavar="ORG", help="The org (workspace id).")
@click.option("--token-limit", type=TokensType(), help="Tokens per month (10M), or none.")
@click.option("--spend-limit", type=UsdType(), help="USD per month ($50), or none.")
@click.option("--soft", type=click.FloatRange(0, 1, min_open=True), help="Warn ratio (0.8).")
@click.option(
    "--grace-tokens", type=TokensType(allow_none=False), help="Overdraft above the token limit."
)
@now_option
@user_errors
def plan_set(
    org: str,
    token_limit: object,
    spend_limit: object,
    soft: float | None,
    grace_tokens: object,
    now: datetime | None,
) -> None:
    """Create or change ORG's plan; options not given keep their value."""

    org = validate_org(org)
    changes: dict[str, object] = {}
    for field, value in (
        ("token_limit", token_limit),
        ("spend_limit_micros", spend_limit),
        ("soft_ratio", soft),
        ("grace_tokens", grace_tokens),
    ):
        if value is not None:
            changes[field] = None if value == "none" else value
    if not changes:
        raise click.UsageError(
            "nothing to set: give --token-limit, --spend-limit, --soft or --grace-tokens"
        )
    settings = get_settings()
    try:  # each value as a plan holds it (click's FloatRange lets a NaN through)
        Plan.model_validate({**settings.default_plan.model_dump(), **changes})
    except ValidationError as exc:
        raise click.UsageError(f"invalid plan: {plan_error(exc)}; nothing was changed") from None
    backdated = now is not None
    now = checked_now(now, settings.future_skew_seconds)
    period = period_of(now)
    collections = Collections.of(connect(settings), settings)
    later = _later_decision(collections, org, period) if backdated else None
    if later is not None:
        # Its decision for `period` would not be stored (the later one stands), and the
        # later month would go on deciding under the old plan until the next run.
        raise click.UsageError(
            f"{org} already has a decision for {later}, after --now's {period}: a plan "
            "applies from the latest month on; nothing was changed"
        )
    _note_unknown_org(collections, org)  # before the plan makes it known
    # A new plan starts from the default one: what is not given keeps the value it had.
    defaults = {k: v for k, v in settings.default_plan.model_dump().items() if k not in changes}
    changes["updated_at"] = now
    update = {"$set": changes, **({"$setOnInsert": defaults} if defaults else {})}
    collections.plans.update_one({"_id": org}, update, upsert=True)
    # The plan applies at once: the decision is recomputed from the current invoice, before
    # anything is printed (review: an output that could not be written left the plan set
    # and the old decision standing).
    from chores.quota.decisions import Quota

    quota = Quota(collections, settings)
    state = quota.decide([org], now, raise_refused=False)[org]
    _print_plan(org, _read_plan(org, collections.plans.find_one({"_id": org})))
    for refused in quota.refused.values():
        raise refused  # an invoice the decision could not read: named after the plan
    billed = collections.invoices.count_documents({"org": org, "period": period}, limit=1)
    source = f"from the invoice of {period}" if billed else f"no usage billed in {period} yet"
    click.echo(f"{for_terminal(org)}: decision now {state} ({source})")
    missed = quota.mirror_missed
    # Unset REDIS_URL is worth a note only where workers may have one: a server database.
    if missed is not None and (settings.redis_url or settings.mongo_url.startswith(SERVER_SCHEMES)):
        click.echo(
            f"note: {missed}, so a Redis mirror of the decisions (the workers') still "
            "answers the previous one for up to its QUOTA_CACHE_TTL_SECONDS (360 by "
            "default); to apply it at once, run this where the workers' Redis can be "
            "reached (docker compose exec worker chore plan set ...)",
            err=True,
        )


def _later_decision(collections: Collections, org: str, period: str) -> str | None:
    """The period of ORG's stored decision when it is a month after `period` and stands:
    a well-formed period, not computed ahead of the clock (which a decision replaces)."""
    stored = collections.quota.find_one({"_id": org}, {"period": 1, "computed_at": 1}) or {}
    later, computed_at = stored.get("period"), stored.get("computed_at")
    if not is_period(later) or later <= period or not isinstance(computed_at, datetime):
        return None
    skew = timedelta(seconds=get_settings().future_skew_seconds)
    return later if as_utc(computed_at) <= clock.wall_clock() + skew else None


@plan.command("show")
@click.option("--org", required=True, metavar="ORG", help="The org (workspace id).")
@user_errors
def plan_show(org: str) -> None:
    """Print ORG's plan (the default plan when it has none)."""
    org = validate_org(org)
    settings = get_settings()
    doc = Collections.of(connect(settings), settings).plans.find_one({"_id": org})
    _print_plan(org, _read_plan(org, doc), default=doc is None)


def _read_plan(org: str, doc: Mapping[str, Any] | None) -> Plan:
    """ORG's plan, or a one-line error naming what is wrong in its document."""
    try:
        return plan_of(doc, get_settings().default_plan)
    except ValidationError as exc:
        raise ConfigError(
            f"the plan of {org!r} is invalid ({plan_error(exc)}): runs write no decision for "
            "it until it is fixed with `chore plan set`"
        ) from None


def _print_plan(org: str, p: Plan, default: bool = False) -> None:
    tokens = "no limit" if p.token_limit is None else f"{p.token_limit:,} tokens"
    spend = "no limit" if p.spend_limit_micros is None else usd_exact(p.spend_limit_micros)
    # the ratio as written (0.80000001 is 80.000001%, not a rounded 80%)
    percent = format((Decimal(str(p.soft_ratio)) * 100).normalize(), "f")
    click.echo(
        f"{for_terminal(org)}{' (default plan)' if default else ''}: token limit {tokens}, "
        f"spend limit {spend}, warn at {percent}%, overdraft {p.grace_tokens:,} tokens"
    )


@click.command()
@click.option(
    "--limit", default=10, show_default=True, type=click.IntRange(1), help="How many runs to show."
)
@now_option
@user_errors
def status(limit: int, now: datetime | None) -> None:
    """The last metering runs and how long ago each org was metered."""
    settings = get_settings()
    c = Collections.of(connect(settings), settings)
    now = now or datetime.now(UTC)
    runs = tables.table("Last runs")
    tables.name_column(runs, "started", keep=True)
    tables.name_column(runs, "scope")
    for column in ("docs", "tokens", "anomalies"):
        tables.number_column(runs, column)
    tables.text_column(runs, "error")
    records = list(c.runs.find({}, sort=[("started_at", -1)], limit=limit))
    # One whose `started_at` is not a date (edited by hand) sorts after every date, MongoDB
    # ordering by type first: asked for apart, so that it shows beside the others.
    listed = {r["_id"] for r in records}
    undated = c.runs.find({"started_at": {"$not": {"$type": "date"}}}, limit=limit)
    records += [r for r in undated if r["_id"] not in listed]
    for r in records:
        try:
            STORED_RUN.validate_python(r)
        except ValidationError as exc:  # edited by hand: what is wrong, in its error column
            said = f"record {r.get('_id')!s:.40} is not as the chore writes it: {problems(exc)}"
            runs.add_row("malformed", "", "", "", "", escape(said))
            continue
        runs.add_row(
            str(r["started_at"])[:19],
            escape(r.get("org") or "all"),
            f"{r['docs_read']:,}",
            f"{r['tokens_billed']:,}" + ("+" if "tokens_billed" in r.get("capped", []) else ""),
            f"{sum(r.get('anomalies', {}).values()):,}",
            escape(r.get("error") or ""),
        )
    lag = tables.table("Quota decisions")
    tables.name_column(lag, "org")
    tables.name_column(lag, "state", keep=True)
    tables.name_column(lag, "computed", keep=True)
    tables.number_column(lag, "age")
    for d in c.quota.find({}, sort=[("_id", 1)]):
        stored = StoredDecision.read(d)
        if isinstance(stored, str) or state_problem(stored, d.get("state")) is not None:
            # no decision: `quota check` answers unknown, the next run replaces it
            lag.add_row(escape(str(d["_id"])), "malformed", "", "")
            continue
        computed_at = as_utc(stored.computed_at)
        age = int((now - computed_at).total_seconds())
        lag.add_row(
            escape(d["_id"]),
            d["state"],
            str(computed_at)[:19],
            f"{age:,}s" if age >= 0 else "after --now",  # a --now before the decision
        )
    out = console()
    tables.show(out, runs)
    tables.show(out, lag)
    orgless = c.anomalies.count_documents({"org": None, "resolved": False})
    if orgless:  # flagging no invoice, they show nowhere else
        out.print(
            f"Runners whose document names no org, not billed: {orgless:,} "
            "(`chore anomaly list --no-org`)"
        )
    print_source_indexes(out, c)


def print_source_indexes(out: Console, c: Collections) -> None:
    """What `chore status` adds: the source indexes the server lacks, what each costs and
    the command that creates them (read-only: `index_information()`, nothing created)."""
    missing = missing_source_indexes(c, get_settings())
    if not missing:
        out.print("Source indexes: all present")
        return
    table = tables.table("Source indexes MISSING")
    tables.text_column(table, "index")
    tables.text_column(table, "cost without it")
    for index in missing:
        table.add_row(escape(index.describe()), escape(index.cost))
    tables.show(out, table)
    out.print(f"  create them (needs a role that may create indexes): {APPLY_INDEXES_COMMAND}")
