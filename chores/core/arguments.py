"""The flags a caller passes (the public API, a task's message), checked before anything
is done: `True` or `False`, never a value read as one.

A Celery message is JSON another program wrote: `full="no"` is truthy, and would have
queued the daily full pass of every org, its run record saying `full_scan: false`.
(The org is checked by `orgs.validate_org`, the time by `clock.checked_now`.)
"""

from __future__ import annotations

from chores.core.exceptions import ConfigError


def validate_flag(name: str, value: object) -> bool:
    """`value` if it is a bool; else a `ConfigError` naming `name`."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r:.60}")
    return value
