"""An org id given by a caller, checked once at every entry point (API, CLI, task)."""

from __future__ import annotations

from chores.core.exceptions import ConfigError
from chores.core.wording import is_utf8

MAX_ORG = 256  # characters; a runner whose workspace_id is longer is held as no_org
NOT_UTF8 = "\ufffd"  # what the chore's reads decode bytes that are not UTF-8 to (db.reading)


def validate_org(org: object) -> str:
    """An org id given by a caller: a non-empty string of UTF-8, used only as data.

    A lone surrogate is refused: what Python puts in a command-line argument for bytes
    that are not UTF-8, and what no write to MongoDB can encode (a traceback after the
    run, before). U+FFFD is UTF-8: an org id may hold it, though the rules bill no runner
    to one that does (`rules.org_of`: it is what the chore's reads put for bytes that are
    not UTF-8), and its plan and quota check work as any org's."""
    if not isinstance(org, str) or not org or len(org) > MAX_ORG:
        raise ConfigError(
            f"org must be a non-empty string of at most {MAX_ORG} characters, got {org!r:.60}"
        )
    if not is_utf8(org):
        raise ConfigError(f"org must be UTF-8 text, got {org!r:.60}: bytes that are not UTF-8")
    return org
