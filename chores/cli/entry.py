"""The `chore` script: loads the command line, then runs it.

Loading takes a moment (pydantic, pymongo, rich); Ctrl-C meanwhile says the same one line
and exits 130, as it does once a command runs (`common.user_errors`), not a traceback.
So this module imports nothing of the package until `main` runs (`chores` and `chores.cli`
load what they export on first use).

An output that cannot be written (stdout on a full disk or a failing device) is one line on
stderr and exit 1, as a closed pipe is Click's (exit 1, nothing said); so is a standard
output closed from the start, before the command does anything. The command stops at
that write; what it wrote before is kept (a `file://` store is saved as it unwinds), so a
command that prints as it goes, such as `chore demo`, may have done only part of its work.
"""

from __future__ import annotations

import errno
import os
import sys

from chores.cli.exit_codes import EXIT_INTERRUPTED, INTERRUPTED

OUTPUT_LOST = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def main() -> None:
    if sys.stdout is None:  # started with file descriptor 1 closed (`chore ... >&-`)
        # Every print would vanish without a word (a run's summary, an invoice, a JSON
        # answer): refused before any work, as an output that cannot be written is.
        if sys.stderr is not None:
            print("Error: standard output is closed (>/dev/null discards it)", file=sys.stderr)
        raise SystemExit(1)
    try:
        from chores.cli.app import main as command
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    try:
        command(prog_name="chore")
    except OSError as exc:
        if exc.errno not in OUTPUT_LOST or exc.filename is not None:
            raise  # a file's error: said where it is opened, or a bug to show whole
        print(f"Error: cannot write the output: {exc.strerror}", file=sys.stderr)
        # What is still buffered for stdout would fail again as Python exits.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
