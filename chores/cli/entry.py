"""The `chore` script: loads the command line, then runs it.

Loading takes a moment (pydantic, pymongo, rich); Ctrl-C meanwhile says the same one line
and exits 130, as it does once a command runs (`common.user_errors`), not a traceback.
So this module imports nothing of the package until `main` runs (`chores` and `chores.cli`
load what they export on first use).

An output that cannot be written (stdout on a full disk or a failing device) is one line on
stderr and exit 1, as a closed pipe is Click's (exit 1, nothing said); so is a standard
output closed from the start, at the command's first write (`ClosedOutput`). The command stops at
that write; what it wrote before is kept (a `file://` store is saved as it unwinds), so a
command that prints as it goes, such as `chore demo`, may have done only part of its work.

An output whose encoding cannot spell a character (`LC_ALL=C`, `PYTHONIOENCODING=latin-1`)
shows it as its escape (`\u2014`), as the tables show control characters, rather than
stopping the command on a UnicodeEncodeError traceback (`quota check` exited 1 on an
allowed answer).
"""

from __future__ import annotations

import errno
import io
import sys
from typing import Any

from chores.cli.exit_codes import EXIT_INTERRUPTED, INTERRUPTED

# A full disk, a failing device, a standard output closed from the start (`ClosedOutput`).
OUTPUT_LOST = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EBADF})


class ClosedOutput(io.RawIOBase):
    """Standard output when the command started with file descriptor 1 closed (`>&-`),
    where Python would drop every print without a word: its first write is the error an
    output that cannot be written is (exit 1, one line); a command that writes nothing
    (`run --quiet`, `report --out F --quiet`) runs as usual. Later writes (what is still
    buffered as Python exits) are dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EBADF, "standard output is closed")
        return len(data)


def buffered(stdout: io.TextIOWrapper, raw: io.RawIOBase) -> io.TextIOWrapper:
    """Standard output through a buffer, flushed at each line, when Python left it raw
    (`PYTHONUNBUFFERED`, `python -u`; the Dockerfile sets it). A raw output takes the part
    of a long write a pipe took as the whole, and drops the rest without a word: an output
    cut short by its reader (`| head -1`) then exited 0. A buffer writes the rest again,
    which fails as a closed pipe does (exit 1). `raw` is `stdout`'s; it stays open
    (`sys.__stdout__` holds it)."""
    return io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=stdout.encoding,
        errors=stdout.errors,
        line_buffering=True,
    )


def main() -> None:
    stdout = sys.stdout
    if isinstance(stdout, io.TextIOWrapper) and isinstance(stdout.buffer, io.RawIOBase):
        sys.stdout = buffered(stdout, stdout.buffer)
    if sys.stdout is None:  # started with file descriptor 1 closed (`chore ... >&-`)
        sys.stdout = io.TextIOWrapper(ClosedOutput(), encoding="utf-8", line_buffering=True)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
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
        from chores.cli.common import drop_buffered_output

        drop_buffered_output()
        raise SystemExit(1) from None
