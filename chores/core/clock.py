"""Clocks: the wall clock, and the one rule for what a caller's `now` may do.

The chore reads two clocks. A caller's `now` decides what is billed when: usage time
of running runners, the period a decision is for, every time the chore writes. The
wall clock (this process's UTC time) bounds everything irreversible and everything
that expires:

- `now` may lag the wall clock by any amount (replays, a long run, a lagging host):
  a lagging run can only book usage late into an open period, and its writes never
  replace newer ones (drafts and decisions move forward only);
- `now` may lead the wall clock by at most `FUTURE_SKEW_SECONDS`: further ahead, a
  run or a finalize is refused before it writes anything (`checked_now`);
- usage times beyond `now + FUTURE_SKEW_SECONDS` are anomalies, never billed into a
  future period;
- a period is final only once it has ended by the wall clock as well as by `now`
  plus the grace, and the grace is a finite number of days >= 0;
- marks expire by the wall clock, never by `now`; a quota decision computed after the
  later of the two (plus the skew) is `unknown`.

A quota decision's age is measured from `now` (SPEC §5: `check_quota(..., now)` answers
as of `now`, the clock by default): a caller who passes a `now` answers as of that moment.

Tests pin `wall_clock` (it is looked up on this module at every call), so that a `now`
they pass is judged against a fixed moment rather than the day the suite runs.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from chores.core.exceptions import ConfigError
from chores.core.periods import as_utc

MAX_GRACE_DAYS = 366.0
# How far ahead of the wall clock a dry run may preview (it writes nothing): about a
# thousand years, so that a usage time a year past it is still a date (years end at 9999).
PREVIEW_AHEAD_SECONDS = 1000 * 366 * 86_400.0


def wall_clock() -> datetime:
    """This process's UTC time, as the guard rails above read it."""
    return datetime.now(UTC)


def given_now(now: datetime | None) -> datetime:
    """The caller's `now` as aware UTC (the current time when None); refused when it is
    not a datetime (an ISO string, `time.time()`: a traceback before, from a quota check)."""
    if now is None:
        return datetime.now(UTC)
    if not isinstance(now, datetime):
        raise ConfigError(f"now must be a datetime, got {now!r:.60}")
    return as_utc(now)


def checked_now(now: datetime | None, future_skew_seconds: float) -> datetime:
    """The caller's `now` as aware UTC (the current time when None); refused when it is
    not a datetime, or further ahead of the wall clock than the allowed skew."""
    if now is None:
        return datetime.now(UTC)
    now = given_now(now)
    ahead = (now - wall_clock()).total_seconds()
    if ahead > future_skew_seconds:
        raise ConfigError(
            f"now {now.isoformat()} is {ahead:,.0f} s ahead of this machine's clock "
            f"(at most FUTURE_SKEW_SECONDS={future_skew_seconds:g} allowed): "
            "check the clock or the --now value"
        )
    return now


def grace_period(grace: Any, default_days: float) -> timedelta:
    """A grace given as a `timedelta` or a number of days: finite, >= 0, at most a year."""
    if grace is None:
        grace = default_days
    days = grace.total_seconds() / 86_400 if isinstance(grace, timedelta) else grace
    if isinstance(days, bool) or not isinstance(days, int | float) or not math.isfinite(days):
        raise ConfigError(f"grace must be a finite number of days, got {grace!r:.60}")
    if not 0 <= days <= MAX_GRACE_DAYS:
        raise ConfigError(f"grace must be between 0 and {MAX_GRACE_DAYS:g} days, got {days:g}")
    return timedelta(days=days)
