"""What every command shares: the console, the user-error wrapper, `--now`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
from pymongo.errors import PyMongoError
from rich.console import Console

from chores.cli.params import MomentType
from chores.core.exceptions import ChoreError
from chores.core.logs import redact_urls
from chores.core.settings import get_settings
from pricing import RegistryError

F = TypeVar("F", bound=Callable[..., Any])
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C (128 + SIGINT)


def console() -> Console:
    """Rich console: the terminal's width; 160 columns when writing to a pipe or file
    (wide enough for every table), unless COLUMNS says otherwise."""
    out = Console()
    return out if out.is_terminal or "COLUMNS" in os.environ else Console(width=160)


def user_errors(func: F) -> F:
    """Turn the errors a user can cause into one line on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted: what was billed so far is kept; run again to go on", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except (ChoreError, RegistryError) as exc:
            raise click.ClickException(str(exc)) from None
        except PyMongoError as exc:
            settings = get_settings()
            message = str(exc).replace(settings.mongo_url, settings.safe_mongo_url)
            raise click.ClickException(f"database error: {redact_urls(message)}") from None

    return wrapper  # type: ignore[return-value]


# `now`: an aware datetime (MomentType checked it) or None for the clock.
now_option = click.option(
    "--now",
    type=MomentType(),
    help="Pretend the current UTC time is this ISO time (reproducible runs); default: now.",
)
