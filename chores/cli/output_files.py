"""Files a command writes for the user (`--out`): whole or not at all, and only where a
file belongs.

- Written to a temporary file beside the target, then renamed over it: a reader (a web
  server, a mail job) never sees half of one, and a failed write leaves the old one.
- Through a symlink, to the file it points at (as a shell's `>` would); the link stays.
- Never over what is not a regular file: a FIFO, a device (`/dev/full`, `/dev/null` as
  root) or a directory would be replaced by a file, and the command would claim success.
- With the replaced file's permission bits, or a new file's default (the umask's), not
  the 0600 of a temporary file.
- Never to a path ending in `/` (or `/.`): a directory's, as a shell's `>` takes it;
  `Path` drops that `/`, and wrote `newdir/` as a file `newdir`.
- Never over a local store (`file://`, the demo's database) or its lock: a mistyped
  `--out` would lose every invoice in it. Never over a read-only file, as a shell's `>`.
  `keep` may refuse other files (what it says is the reason); an empty file is replaced.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from chores.cli.params import names_a_directory
from chores.core.local_store import may_be_store


def write_output(
    out: str | Path, text: str, *, keep: Callable[[Path], str | None] | None = None
) -> None:
    """Write `text` to the file `out` whole (see the module's docstring; a `str` as the user
    wrote it: a `Path` has lost a trailing `/`); a `ClickException` naming the path and the
    reason when it cannot, the target then unchanged."""
    path = Path(out)
    if not os.fspath(out):  # `Path("")` is the working directory
        raise click.ClickException("cannot write to an empty path: give the path of a file")
    if names_a_directory(os.fspath(out)):
        raise click.ClickException(
            f"cannot write {out}: a directory's path: give the path of a file"
        )
    try:
        target = path.resolve()
    except RuntimeError:  # Python 3.11's symlink loop
        raise click.ClickException(f"cannot write {path}: a loop of symbolic links") from None
    except FileNotFoundError:  # relative, from a working directory that was removed
        raise click.ClickException(
            f"cannot write {path}: it is relative, and the working directory no longer exists"
        ) from None
    try:
        existing = target.stat()
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise click.ClickException(
            f"cannot write {path}: not a regular file (a directory, FIFO or device); "
            "give the path of a file"
        )
    if existing is not None and (not existing.st_mode & 0o222 or not os.access(target, os.W_OK)):
        raise click.ClickException(f"not replaced: {path} is read-only")
    if existing is not None:
        reason = _a_store(target)
        if reason is None and keep is not None and existing.st_size > 0:
            reason = keep(target)
        if reason is not None:
            raise click.ClickException(f"not replaced: {path} {reason}")
    mode = stat.S_IMODE(existing.st_mode) if existing is not None else _new_file_mode()
    try:
        handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException as exc:
        Path(temp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
        raise


def _a_store(path: Path) -> str | None:
    if may_be_store(path):
        return "is a local store of the chore's billing (give another path)"
    if not path.name.endswith(".lock"):
        return None
    locked = path.with_name(path.name.removesuffix(".lock"))
    # a store's lock, or the (empty) lock of one being created (`chore demo` before its
    # first save); a report of one's own named `*.lock` has text in it
    being_created = not locked.exists() and path.stat().st_size == 0
    if may_be_store(locked) or being_created:
        return "is the lock of a local store (give another path)"
    return None


def _new_file_mode() -> int:
    """What `open(path, "w")` would give a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
