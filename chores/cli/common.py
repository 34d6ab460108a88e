"""What every command shares: the console, the user-error wrapper, the `--now`, `--org`,
`--period`, `--json` and `--csv` options."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from pydantic import BaseModel
from pymongo.errors import BulkWriteError, PyMongoError
from rich.console import Console

from chores.cli.exit_codes import EXIT_INTERRUPTED, INTERRUPTED
from chores.cli.params import MomentType, PeriodType
from chores.core.exceptions import ChoreError
from chores.core.logs import redact_urls
from chores.core.periods import period_of
from chores.core.settings import get_settings
from chores.core.wording import for_terminal, is_utf8
from pricing import RegistryError

F = TypeVar("F", bound=Callable[..., Any])


def console() -> Console:
    """Rich console: the terminal's width; 160 columns when writing to a pipe or file
    (wide enough for every table), unless COLUMNS says otherwise. No emoji codes: an org
    id or a model name such as `:smile:` is shown as written (markup is escaped where
    such text is printed)."""
    out = Console(emoji=False)
    if out.is_terminal or "COLUMNS" in os.environ:
        return out
    return Console(width=160, emoji=False)


def user_errors(func: F) -> F:
    """Turn the errors a user can cause into one line on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        refuse_text_that_is_not_utf8(kwargs)
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo(INTERRUPTED, err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except (ChoreError, RegistryError) as exc:  # they may quote an org id as typed
            raise click.ClickException(for_terminal(str(exc))) from None
        except PyMongoError as exc:
            settings = get_settings()
            message = database_problem(exc).replace(settings.mongo_url, settings.safe_mongo_url)
            raise click.ClickException(f"database error: {redact_urls(message)}") from None

    return wrapper  # type: ignore[return-value]


def save_stores() -> None:
    """Save the file:// stores the command opened; an interruption during the saving (held
    until it is done) exits 130, a store that cannot be written is one line and exit 1.
    Every command does it when it ends; `run` also before it says what it billed."""
    from chores.core.local_store import close_all

    try:
        close_all()
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    except ChoreError as exc:
        raise click.ClickException(str(exc)) from None


def refuse_text_that_is_not_utf8(params: dict[str, Any]) -> None:
    """Refuse an option or argument given in bytes that are not UTF-8 (a lone surrogate to
    Python), before the command does anything: no write to MongoDB, nor a query, can encode
    it, and it stopped commands half-way on a traceback (a run after metering, a review's
    note). A file path may be any bytes, and is left to the file system."""
    context = click.get_current_context(silent=True)
    if context is None:
        return
    for param in context.command.params:
        if isinstance(param.type, click.Path) or param.name is None:
            continue
        value = params.get(param.name)
        for text in value if isinstance(value, tuple | list) else (value,):
            if isinstance(text, str) and not is_utf8(text):
                name = param.opts[0] if param.opts else param.name
                raise click.ClickException(f"{name} is not UTF-8 text: {text!r:.60}")


def database_problem(exc: PyMongoError) -> str:
    """A database error as a line: a bulk write's first error and how many there were, not
    the documents its details hold (a whole ledger entry each)."""
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors") or []
        if errors:
            first = errors[0]
            more = f"; {len(errors)} writes of the batch failed" if len(errors) > 1 else ""
            return f"{first.get('errmsg', 'a write failed')} (code {first.get('code')}{more})"
    return str(exc)


# `now`: an aware datetime (MomentType checked it) or None for the clock.
now_option = click.option(
    "--now",
    type=MomentType(),
    help="Pretend the current UTC time is this ISO time (reproducible runs); default: now.",
)


def period_or_month_of(period: str | None, now: datetime | None = None) -> str:
    """The `--period` (checked by `PeriodType`), or the month of `--now` / the clock."""
    return period or period_of(now or datetime.now(UTC))


period_option = click.option(
    "--period", type=PeriodType(), help="The month, YYYY-MM (default: the month of --now)."
)
org_option = click.option("--org", required=True, metavar="ORG", help="The org (workspace id).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
csv_option = click.option("--csv", "as_csv", is_flag=True, help="Print CSV, one row per line.")


FORMULA_STARTS = ("=", "+", "-", "@")  # what a spreadsheet evaluates (a tab, a CR: escaped)


def csv_cells(values: Iterable[Any]) -> list[Any]:
    """A CSV row a spreadsheet opens as data: None is empty; text has each control
    character or bidirectional override written as its escape (`for_terminal`: a model
    named `\\x1b[2J` cleared the screen of whoever printed the CSV, and piped, click
    dropped the sequence, so two models printed alike), and text that a spreadsheet would
    run as a formula (an org named `=HYPERLINK(...)`) is prefixed with `'` (OWASP's CSV
    injection advice). Numbers are written as they are. `--json` keeps text as it is."""
    return [_csv_cell(value) for value in values]


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    shown = for_terminal(value)
    return f"'{shown}" if shown.startswith(FORMULA_STARTS) else shown


def csv_text(rows: Iterable[Iterable[Any]]) -> str:
    """Rows as CSV, each cell through `csv_cells`, one row per line ending in `\n`: no
    cell holds a line break (a bare `\r` in a session id once split its row in two)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(csv_cells(row) for row in rows)
    return buffer.getvalue()


def echo_utf8(text: str) -> None:
    """A data format (CSV, an HTML page) on stdout, in UTF-8 whatever the terminal's
    encoding: it reads the same on every machine (under latin-1, a session id `sess-中`
    became the text `sess-\\u4e2d`, exit 0, which a session so named also is; a page said
    `<meta charset="utf-8">` over latin-1 bytes)."""
    sys.stdout.flush()  # what was printed before comes first
    output = getattr(sys.stdout, "buffer", None)
    if output is None:  # a stream with no bytes beneath it (a StringIO): its own encoding
        click.echo(text, nl=False)
        return
    output.write(text.encode("utf-8"))
    output.flush()


def model_json(model: BaseModel, *, by_alias: bool = False) -> str:
    """A model as `--json` prints it: its JSON, indented, every character beyond ASCII as
    its `\\u` escape (as `json.dumps` writes it), so that text from the data never reaches
    the terminal raw (a bidirectional override in a model name) and every command's JSON
    reads alike."""
    # Through pydantic's own JSON first: what it writes for every value (NaN as null).
    return json.dumps(json.loads(model.model_dump_json(by_alias=by_alias)), indent=2)


def machine_format(as_json: bool, as_csv: bool) -> None:
    """`--json` and `--csv` are one choice: both is a usage error, not a silent JSON."""
    if as_json and as_csv:
        raise click.UsageError("give at most one of --json and --csv")


def drop_buffered_output() -> None:
    """Once stdout could not be written: what is still buffered for it would fail again as
    Python exits ("Exception ignored"), so stdout goes to /dev/null from here on."""
    with contextlib.suppress(OSError):  # a `entry.ClosedOutput` has no descriptor: it drops
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
