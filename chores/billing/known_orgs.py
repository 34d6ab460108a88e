"""Whether the billing knows an org id given by hand (it has an invoice or a plan), and the
known ids that look like it: what a command says of an id that is probably mistyped.

An org nothing was billed to yet is no error (its runners may not have run): the commands
only say so, and name the ids it may have been meant as.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Iterable
from typing import Any

from chores.core import clock
from chores.core.db import Collections
from chores.core.periods import period_bounds, period_of
from chores.core.reads import distinct_values

ALIKE = 3  # known ids named at most


def is_known(collections: Collections, org: str) -> bool:
    """Whether `org` has an invoice (of any month) or a plan: two reads by index."""
    return (
        collections.invoices.find_one({"org": org}, {"_id": 1}) is not None
        or collections.plans.find_one({"_id": org}, {"_id": 1}) is not None
    )


def known_alike(collections: Collections, org: str, *, period: str | None = None) -> list[str]:
    """The known org ids closest to `org` (difflib's ratio, case aside), best first: those
    with an invoice of `period` when given, else those with any invoice or a plan."""
    if period is not None:
        known = _ids(distinct_values(collections.invoices, "org", {"period": period}))
    else:
        known = _ids(distinct_values(collections.invoices, "org"))
        known |= _ids(distinct_values(collections.plans, "_id"))
    by_folded: dict[str, str] = {}
    for candidate in sorted(known):
        by_folded.setdefault(candidate.casefold(), candidate)
    alike = difflib.get_close_matches(org.casefold(), list(by_folded), n=ALIKE)
    return [by_folded[folded] for folded in alike]


def unknown_org_note(collections: Collections, org: str) -> str | None:
    """None when `org` is known; else one sentence saying nothing is billed to it yet, with
    the known ids like it."""
    if is_known(collections, org):
        return None
    said = f"org {org!r} has no invoice of any month and no plan: nothing was billed to it yet"
    alike = known_alike(collections, org)
    return f"{said}; did you mean {_either(alike)}?" if alike else said


def missing_invoice_hint(collections: Collections, org: str, period: str) -> str:
    """What to do when `org` has no invoice of `period`: name the orgs with one that look
    like it when the billing knows nothing of `org` (a typo, most likely), and the run
    that makes one (a new org). A month before this machine's has no usage to wait for,
    and one after it has not begun. One the ledger bills usage of has lost its invoice
    (a full pass rebuilds it), unless a run is building it."""
    run_first = f"run `chore run --org {shlex.quote(org)}` first"
    if collections.ledger.find_one({"org": org, "usage_period": period}) is not None:
        return (
            "the ledger bills usage of that month to it: a run under way builds its invoice;"
            f" if it was removed, `chore run --full --org {shlex.quote(org)}` rebuilds it"
        )
    if is_known(collections, org):
        this_month = period_of(clock.wall_clock())
        if period < this_month:
            return "no usage of it was billed in that month"
        if period > this_month:
            return f"that month has not begun (this machine's is {this_month})"
        if _ran_in(collections, org, period):
            return "no usage of it was billed this month yet"
        return run_first
    alike = known_alike(collections, org, period=period)
    if alike:
        return f"did you mean {_either(alike)}? (a new org: {run_first})"
    if _ran_in(collections, org, period, of_every_org=False):
        # a run of this very org found it and billed nothing: running again will not help
        return (
            "a run of it billed no usage in that month: its runners used no tokens, or are "
            f"held (`chore anomaly list --org {shlex.quote(org)}`)"
        )
    return run_first


def _ran_in(collections: Collections, org: str, period: str, *, of_every_org: bool = True) -> bool:
    """Whether a run of `org` (or, unless told otherwise, of every org) completed, not dry,
    since `period` began."""
    began, _ = period_bounds(period)
    scopes = [org, None] if of_every_org else [org]
    done = {"org": {"$in": scopes}, "error": None, "dry_run": False}
    return collections.runs.find_one({**done, "started_at": {"$gte": began}}) is not None


def _ids(values: Iterable[Any]) -> set[str]:
    return {value for value in values if isinstance(value, str)}


def _either(orgs: list[str]) -> str:
    return " or ".join(repr(o) for o in orgs)
