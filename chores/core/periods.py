"""Billing periods: UTC calendar months, half-open `[start, end)`, named `YYYY-MM`."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; naive values (as pymongo returns them) are taken as UTC."""
    if moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_PERIOD_NAMES: dict[int, str] = {}  # year * 12 + month -> "YYYY-MM", filled as met


def period_of(moment: datetime) -> str:
    if moment.tzinfo is not UTC:
        moment = as_utc(moment)
    names = _PERIOD_NAMES
    key = moment.year * 12 + moment.month
    name = names.get(key)
    if name is None:
        name = names[key] = f"{moment.year:04d}-{moment.month:02d}"
    return name


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
