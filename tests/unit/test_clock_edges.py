"""The clocks at their edges, found untested by mutation testing of `chores/core/clock.py`:
a quota check without a `now`, and how far ahead of the wall clock a dry run may preview."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from chores import ConfigError, check_quota, finalize_invoices, run_chore
from chores.core.periods import period_of

from support import WALL_CLOCK

# clock.py: a dry run may preview "about a thousand years" ahead: 1,000 years of 366 days
PREVIEW_AHEAD = timedelta(days=1000 * 366)


def test_a_quota_check_without_now_answers_for_the_current_month(db, settings):
    """SPEC §5: `check_quota(..., now)` answers as of `now`, the clock by default. Without
    a `now` a caller (the platform, before each run) gets this month's answer, not a
    ConfigError saying that `None` is not a datetime."""
    months = {period_of(datetime.now(UTC))}
    decision = check_quota(db, "acme", settings=settings)
    months.add(period_of(datetime.now(UTC)))  # the month may turn during the check
    assert decision.org == "acme" and decision.period in months


def test_a_dry_run_previews_a_year_ahead_where_a_run_is_refused(db, settings):
    """A dry run writes nothing, so it may look at a `now` far past the wall clock (a year
    ahead, to see what a plan would decide); the same `now` for a run that writes is
    refused before it writes anything."""
    a_year_ahead = WALL_CLOCK + timedelta(days=366)
    report = run_chore(db, now=a_year_ahead, dry_run=True, settings=settings)
    assert report.dry_run
    with pytest.raises(ConfigError, match="ahead of this machine's clock"):
        run_chore(db, now=a_year_ahead, settings=settings)


def test_a_dry_run_previews_a_thousand_years_of_366_days_and_not_a_second_more(db, settings):
    """The limit of a preview (clock.py: about a thousand years, so that a usage time a year
    past it is still a date): exactly 366,000 days ahead of the wall clock is taken, one
    second more refused with the reason."""
    at_most = WALL_CLOCK + PREVIEW_AHEAD
    assert run_chore(db, now=at_most, dry_run=True, settings=settings).dry_run
    with pytest.raises(ConfigError, match="ahead of this machine's clock"):
        run_chore(db, now=at_most + timedelta(seconds=1), dry_run=True, settings=settings)


@pytest.mark.parametrize("now", ["2026-11-25T00:00:00Z", 1_795_000_000.0])
def test_a_run_or_a_finalize_given_a_now_that_is_not_a_datetime_says_so(db, settings, now):
    """`run_chore(db, now=time.time())` or an ISO string is a caller's mistake: a
    ConfigError naming `now`, before anything is written, not a TypeError from comparing
    it with the wall clock."""
    with pytest.raises(ConfigError, match="now must be a datetime, got "):
        run_chore(db, now=now, settings=settings)
    with pytest.raises(ConfigError, match="now must be a datetime, got "):
        finalize_invoices(db, now=now, settings=settings)
    assert db.list_collection_names() == []


def test_a_now_given_in_another_zone_is_taken_as_that_moment_in_utc(db, settings):
    """A `now` with an offset (`2026-12-01T01:00+02:00`) is the UTC moment it names: the run
    records it in UTC and bills as of November 30th, 23:00 UTC."""
    now = datetime(2026, 12, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    report = run_chore(db, now=now, settings=settings)
    assert report.started_at == datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    assert report.started_at.tzinfo is UTC
