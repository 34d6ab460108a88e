"""The `chore` command line: one module per command group, each a click command or group
that `app` registers on `main`; no command module imports `app`.

May import: every other `chores` package (never `chores.tasks`/`chores.celery_app`).
"""

from chores.cli.app import EPHEMERAL_NOTE, ephemeral_note, main

__all__ = ["EPHEMERAL_NOTE", "ephemeral_note", "main"]
