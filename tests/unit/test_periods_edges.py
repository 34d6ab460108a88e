"""Periods at their edges, found untested by mutation testing of `chores/core/periods.py`: a
moment given in another time zone, and a naive one read on a host whose local zone is not
UTC, fall in the UTC month they are in."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from chores.core.periods import as_utc, period_of

# 01:00 on December 1st at UTC+2 is 23:00 on November 30th in UTC
PARIS_WINTER_PLUS_ONE = timezone(timedelta(hours=2))


@pytest.fixture
def host_in_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local zone is New York (UTC-5 in November), as on a host not set to
    UTC; restored afterwards."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_moment_in_another_zone_is_billed_in_its_utc_month():
    """A usage time or `now` written with an offset (`2026-12-01T01:00+02:00`) is still
    November in UTC, the zone periods are named in: read in its own zone it would bill
    November's usage into December's invoice."""
    moment = datetime(2026, 12, 1, 1, 0, tzinfo=PARIS_WINTER_PLUS_ONE)
    assert as_utc(moment) == datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    assert as_utc(moment).tzinfo is UTC
    assert period_of(moment) == "2026-11"


def test_a_naive_moment_is_utc_whatever_the_hosts_zone(host_in_new_york):
    """pymongo returns naive datetimes that are UTC: 23:00 naive on November 30th is that
    moment in UTC (November), not 23:00 in New York (04:00 on December 1st in UTC), so the
    month a runner is billed in does not depend on the zone of the machine metering it."""
    naive = datetime(2026, 11, 30, 23, 0)
    assert as_utc(naive) == datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    assert period_of(naive) == "2026-11"
