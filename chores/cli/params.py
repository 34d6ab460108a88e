"""Arguments of the `chore` command, checked where click parses them.

A bad value is one line on stderr naming the option, the value and what is expected, and
exit 2 (click's usage-error code), never a traceback: `OneLineGroup` drops click's usage
block and `Try ... --help` line, so every usage error of every command is that one line.
"""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, date, datetime
from typing import Any

import click

FIRST_YEAR, LAST_YEAR = 2000, 2999  # months and days outside these are typos, not billing


class OneLineGroup(click.Group):
    """A group whose usage errors (its own and its subcommands') are one line:
    `Error: Invalid value for '--period': ... (chore usage -h for help)`; and whose help
    lists each command with its whole first paragraph (wrapped, never cut with `...`)."""

    group_class = type  # its subgroups are OneLineGroups too

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            summary = command.short_help or (command.help or "").split("\n\n")[0]
            rows.append((name, " ".join(summary.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `chore` alone: click prints the help as it is, not as an error
        except click.UsageError as exc:
            path = " ".join(p for p in (parent and parent.command_path, info_name) if p)
            raise one_line(exc, path) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            path = " ".join(p for p in (ctx.command_path, ctx.invoked_subcommand) if p)
            raise one_line(exc, path) from None


class OneLineError(click.UsageError):
    """A usage error already made one line (a subgroup's, passing through its parents)."""


def one_line(exc: click.UsageError, path: str) -> click.UsageError:
    """The same error without click's usage block: its message and where help is: the
    command the error names, else `path`, the command being parsed (click's parser names
    none for an option given without its value)."""
    if isinstance(exc, OneLineError):
        return exc
    where = exc.ctx.command_path if exc.ctx is not None else path
    return OneLineError(f"{exc.format_message()} ({where} -h for help)")


def names_a_directory(path: str) -> bool:
    """Whether `path`, as the user wrote it, ends as a directory's does (`newdir/`,
    `newdir/.`), or is empty (the working directory): `Path` drops that ending, and
    `newdir/` would name a file `newdir`."""
    return os.path.basename(path) in ("", ".")


class FilePathType(click.Path):
    """`click.Path(dir_okay=False)` that also refuses a path that cannot name a file as
    written (`names_a_directory`): `newdir/` and `''`, which click passes on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(dir_okay=False, **kwargs)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and names_a_directory(value):
            what = "an empty path" if not value else f"{value!r} is a directory's path"
            self.fail(f"{what}: give the path of a file", param, ctx)
        return super().convert(value, param, ctx)


class PeriodType(click.ParamType):
    """`YYYY-MM`, a real month between 2000-01 and 2999-12."""

    name = "YYYY-MM"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        match = re.fullmatch(r"([0-9]{4})-([0-9]{2})", text)
        if match is None or not 1 <= int(match.group(2)) <= 12:
            self.fail(f"{text!r} is not a month: expected YYYY-MM, such as 2026-11", param, ctx)
        if not FIRST_YEAR <= int(match.group(1)) <= LAST_YEAR:
            self.fail(
                f"{text} is out of range: expected a month from {FIRST_YEAR}-01 to "
                f"{LAST_YEAR}-12 (YYYY-MM)",
                param,
                ctx,
            )
        return text


class DayType(click.ParamType):
    """`YYYY-MM-DD`, a real calendar day (no 2026-02-30)."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        text = str(value)
        parts = text.split("-")
        if len(parts) != 3 or [len(p) for p in parts] != [4, 2, 2] or not text[:4].isdigit():
            self.fail(f"{text!r} is not a day: expected YYYY-MM-DD, such as 2026-11-05", param, ctx)
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            self.fail(f"{text} is not a calendar day ({exc}): expected YYYY-MM-DD", param, ctx)
        if not FIRST_YEAR <= day.year <= LAST_YEAR:
            self.fail(
                f"{text} is out of range: expected a day from {FIRST_YEAR}-01-01 to "
                f"{LAST_YEAR}-12-31",
                param,
                ctx,
            )
        return day


class MomentType(click.ParamType):
    """An ISO 8601 date-time, taken as UTC when it has no offset."""

    name = "ISO-TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(
                f"{str(value)!r} is not a date-time: expected ISO 8601, such as "
                "2026-11-25T12:00:00+00:00",
                param,
                ctx,
            )
        if not FIRST_YEAR <= moment.year <= LAST_YEAR:
            self.fail(f"{value} is out of range: expected a year from 2000 to 2999", param, ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class GraceDaysType(click.ParamType):
    """A finite number of days from 0 to 366."""

    name = "DAYS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            days = float(value)
        except (TypeError, ValueError):
            days = math.nan
        if not (math.isfinite(days) and 0 <= days <= 366):
            self.fail(f"{value} is not a number of days: expected 0 to 366, such as 3", param, ctx)
        return days
