"""An org id given by a caller, checked once at every entry point (API, CLI, task)."""

from __future__ import annotations

from chores.core.exceptions import ConfigError

MAX_ORG = 256  # characters; a runner whose workspace_id is longer is held as no_org


def validate_org(org: object) -> str:
    """An org id given by a caller: a non-empty string, used only as data."""
    if not isinstance(org, str) or not org or len(org) > MAX_ORG:
        raise ConfigError(
            f"org must be a non-empty string of at most {MAX_ORG} characters, got {org!r:.60}"
        )
    return org
