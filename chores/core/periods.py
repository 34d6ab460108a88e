"""Billing periods: UTC calendar months, half-open `[start, end)`, named `YYYY-MM`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TypeGuard

# A period's name as a query matches it (MongoDB's regex and Python's alike: ASCII digits;
# `$` also matches before a final newline there, so `NEWLINE` is checked apart).
PERIOD_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"
NEWLINE = "\n"


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; naive values (as pymongo returns them) are taken as UTC."""
    if moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def period_of(moment: datetime) -> str:
    """The period a moment falls in (naive moments are UTC)."""
    moment = as_utc(moment)
    return f"{moment.year:04d}-{moment.month:02d}"


def is_period(value: object) -> TypeGuard[str]:
    """Whether a stored value is a period's name (`YYYY-MM`, month 01-12)."""
    return (
        isinstance(value, str)
        and NEWLINE not in value
        and re.match(PERIOD_PATTERN, value) is not None
    )


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """`(start, end)` of a `YYYY-MM` period; ValueError when the name is malformed."""
    try:
        year_text, month_text = period.split("-")
        year, month = int(year_text), int(month_text)
        start = datetime(year, month, 1, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"period must look like 2026-11, got {period!r}") from exc
    if len(year_text) != 4 or len(month_text) != 2:
        raise ValueError(f"period must look like 2026-11, got {period!r}")
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def next_period(period: str) -> str:
    return period_of(period_bounds(period)[1])
