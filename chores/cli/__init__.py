"""The `chore` command line: one module per command group, each a click command or group
that `app` registers on `main`; no command module imports `app`. The script starts at
`entry.main`.

May import: every other `chores` package (never the service: `chores.tasks`,
`chores.celery_app`, `chores.service`).

`main`, `EPHEMERAL_NOTE` and `ephemeral_note` are `app`'s, loaded on first use (so that
the script's `entry` loads nothing before it runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chores.cli.app import EPHEMERAL_NOTE, ephemeral_note, main

__all__ = ["EPHEMERAL_NOTE", "ephemeral_note", "main"]


if not TYPE_CHECKING:  # the loader, hidden from type checkers: a misspelt name is an error

    def __getattr__(name: str) -> Any:
        if name not in __all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from chores.cli import app

        return getattr(app, name)

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
