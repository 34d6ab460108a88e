"""Whether the billing knows an org id given by hand (it has an invoice or a plan), and the
known ids that look like it: what a command says of an id that is probably mistyped.

An org nothing was billed to yet is no error (its runners may not have run): the commands
only say so, and name the ids it may have been meant as.
"""

from __future__ import annotations

import difflib

from chores.core.db import Collections

ALIKE = 3  # known ids named at most


def is_known(collections: Collections, org: str) -> bool:
    """Whether `org` has an invoice (of any month) or a plan: two reads by index."""
    return (
        collections.invoices.find_one({"org": org}, {"_id": 1}) is not None
        or collections.plans.find_one({"_id": org}, {"_id": 1}) is not None
    )


def known_alike(collections: Collections, org: str) -> list[str]:
    """The known org ids closest to `org` (difflib's ratio), best first."""
    known = {o for o in collections.invoices.distinct("org") if isinstance(o, str)}
    known |= {o for o in collections.plans.distinct("_id") if isinstance(o, str)}
    return difflib.get_close_matches(org, sorted(known), n=ALIKE)


def unknown_org_note(collections: Collections, org: str) -> str | None:
    """None when `org` is known; else one sentence saying nothing is billed to it yet, with
    the known ids like it."""
    if is_known(collections, org):
        return None
    said = f"org {org!r} has no invoice of any month and no plan: nothing was billed to it yet"
    alike = known_alike(collections, org)
    return f"{said}; did you mean {_either(alike)}?" if alike else said


def did_you_mean(collections: Collections, org: str) -> str | None:
    """ "did you mean 'acme'?" when `org` is unknown and known ids look like it; else None
    (a known org, or one like no other: a new org whose runners were not metered yet)."""
    if is_known(collections, org):
        return None
    alike = known_alike(collections, org)
    return f"did you mean {_either(alike)}?" if alike else None


def _either(orgs: list[str]) -> str:
    return " or ".join(repr(o) for o in orgs)
