"""An org id given by a caller, checked once at every entry point (API, CLI, task)."""

from __future__ import annotations

from chores.core.exceptions import ConfigError


def validate_org(org: object) -> str:
    """An org id given by a caller: a non-empty string, used only as data."""
    if not isinstance(org, str) or not org or len(org) > 256:
        raise ConfigError(
            f"org must be a non-empty string of at most 256 characters, got {org!r:.60}"
        )
    return org
