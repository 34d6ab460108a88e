"""The `chore` command line: a thin layer over the package's functions.

User errors (`ChoreError`, `RegistryError`, an unreachable database) print one
line on stderr and exit 1, bad usage 2 (click's); `quota check` exits 3 when the run is
refused, `reconcile` 4 on a mismatch, `run` 5 when a worker holds the org's lock, and
Ctrl-C 130 (`cli/exit_codes.py`; the script starts at `cli/entry.py`).
"""

from __future__ import annotations

import functools
import signal
import threading
from typing import Any

import click

from chores.cli.anomaly import anomaly
from chores.cli.common import save_stores
from chores.cli.db import db
from chores.cli.demo import demo
from chores.cli.finalize import finalize
from chores.cli.invoice import invoice
from chores.cli.params import OneLineGroup
from chores.cli.quota import plan, quota, status
from chores.cli.reconcile import reconcile_command
from chores.cli.registry import registry
from chores.cli.run import run
from chores.cli.usage import report, usage
from chores.core.settings import get_settings


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ai-billing-chore")
def main() -> None:
    """Meter AI-token usage of scan runners into invoices and quota decisions.

    Settings come from environment variables or .env (all of them in the README):
    MONGO_URL, the MongoDB server (default mongodb://localhost:27017), MONGO_DB,
    REDIS_URL, ...

    \b
    Without a server:
      chore demo        seeds a realistic month, meters it, prints the invoices,
                        and leaves its data in .chore-demo/store.json
      export MONGO_URL=file://.chore-demo/store.json
      chore status      (and every other command) then works on the demo's data

    A file://PATH store is loaded into an in-process mongomock when a command starts
    and saved back when it ends: for trying the chore out, not for production and not
    for concurrent use. MONGO_URL=mongomock://NAME is an in-process store that keeps
    nothing after each command (each one says so on stderr).
    """
    # Every command writes the file:// store it opened back to its file when it ends,
    # after an error, Ctrl-C or a SIGTERM/SIGHUP too (what a server would have kept).
    # Close callbacks run last registered first: the stores are saved while SIGTERM and
    # SIGHUP still interrupt rather than kill, and before their handlers come back.
    context = click.get_current_context()
    _interrupt_on_termination(context)
    context.call_on_close(save_stores)


def _interrupt_on_termination(context: click.Context) -> None:
    """SIGTERM and SIGHUP (`timeout`, `docker stop`, a closed terminal) end a command as
    Ctrl-C does, so that it unwinds and saves a file:// store, instead of dying at once
    with every write of the command lost. The previous handlers come back at its end."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set signal handlers (a command run from a thread)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # Only where the default (dying) would apply: `nohup chore ...` ignores SIGHUP, and keeps on.
    signals = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) == signal.SIG_DFL]
    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    context.call_on_close(lambda: [signal.signal(sig, h) for sig, h in previous.items()])


for _command in (
    run,
    invoice,
    anomaly,
    finalize,
    registry,
    db,
    demo,
    quota,
    plan,
    status,
    reconcile_command,
    usage,
    report,
):
    main.add_command(_command)

# ephemeral store ---------------------------------------------------------------------
EPHEMERAL_NOTE = "note: {url} is an in-process store: nothing is kept after this command"
MACHINE_OUTPUT = ("as_json", "as_csv", "quiet")  # flags after which a script reads the output
NO_STORE = frozenset({"demo", "registry"})  # its own store / never opens MONGO_URL


def ephemeral_note() -> str | None:
    """The line a command on a `mongomock://` store ends with, else None."""
    try:
        settings = get_settings()
    except Exception:  # a bad setting is the command's own error to report
        return None
    if not settings.mongo_url.startswith("mongomock://"):
        return None
    return EPHEMERAL_NOTE.format(url=settings.safe_mongo_url)


def _note_ephemeral_store(command: click.Command) -> None:
    # After success only: an error stays the one line on stderr. Machine output (--json,
    # --csv, --quiet) gets no note at all, so a script sees exactly what it asked for.
    inner = command.callback
    assert inner is not None

    @functools.wraps(inner)
    def callback(*args: Any, **kwargs: Any) -> Any:
        result = inner(*args, **kwargs)
        if not any(kwargs.get(flag) for flag in MACHINE_OUTPUT):
            note = ephemeral_note()
            if note is not None:
                click.echo(note, err=True)
        return result

    command.callback = callback


def _note_every_store_command(group: click.Group) -> None:
    for name, command in group.commands.items():
        if name in NO_STORE:
            continue
        if isinstance(command, click.Group):
            _note_every_store_command(command)
        else:
            _note_ephemeral_store(command)


_note_every_store_command(main)
