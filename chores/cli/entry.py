"""The `chore` script: loads the command line, then runs it.

Loading takes a moment (pydantic, pymongo, rich); Ctrl-C meanwhile says the same one line
and exits 130, as it does once a command runs (`common.user_errors`), not a traceback.
So this module imports nothing of the package until `main` runs (`chores` and `chores.cli`
load what they export on first use).
"""

from __future__ import annotations

import sys

from chores.cli.exit_codes import EXIT_INTERRUPTED, INTERRUPTED


def main() -> None:
    try:
        from chores.cli.app import main as command
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    command(prog_name="chore")
