"""The clock, periods and money shown, at their edges (found untested by mutation testing of
`chores/core/clock.py`, `periods.py` and `money.py`): the grace `finalize_invoices` takes, a
`now` exactly the allowed skew ahead, period names a month must spell out, and a zero or a
one-micro credit as an operator reads them."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from chores import ConfigError, finalize_invoices
from chores.core.clock import checked_now, grace_period
from chores.core.money import parse_usd, usd, usd_exact
from chores.core.periods import period_bounds

from support import WALL_CLOCK

DECEMBER_10 = datetime(2026, 12, 10, tzinfo=UTC)


NOT_A_GRACE = [-1, -0.5, timedelta(days=-1), 366.5, 367, timedelta(days=367), math.nan]
NOT_A_GRACE += [math.inf, True, "3"]


@pytest.mark.parametrize("grace", NOT_A_GRACE)
def test_finalize_refuses_a_grace_that_is_not_0_to_366_days(db, settings, grace):
    """A negative grace would freeze a month before its late usage could land."""
    with pytest.raises(ConfigError, match="grace must be"):
        finalize_invoices(
            db, now=datetime(2026, 12, 10, tzinfo=UTC), grace=grace, settings=settings
        )


@pytest.mark.parametrize("days", [0, 0.5, 366, timedelta(days=366), timedelta(days=3, seconds=1)])
def test_a_grace_of_0_to_366_days_is_taken_as_given_to_the_second(days):
    given = days if isinstance(days, timedelta) else timedelta(days=days)
    assert grace_period(days, 3.0) == given
    assert grace_period(None, 3.0) == timedelta(days=3)


def test_a_now_exactly_the_allowed_skew_ahead_is_taken_and_a_microsecond_more_refused():
    at_most = WALL_CLOCK + timedelta(seconds=300)
    assert checked_now(at_most, 300.0) == at_most
    with pytest.raises(ConfigError, match="ahead of this machine's clock"):
        checked_now(at_most + timedelta(microseconds=1), 300.0)


@pytest.mark.parametrize("name", ["2026-1", "02026-11", "2026-011", "2026-13", "2026-11-01", "x"])
def test_a_period_is_named_with_four_digits_a_dash_and_two(name):
    with pytest.raises(ValueError, match="period must look like 2026-11"):
        period_bounds(name)


def test_zero_reads_as_zero_and_a_one_micro_credit_as_a_credit():
    assert (usd(0), usd_exact(0)) == ("$0.00", "$0.00")
    assert (usd(-1), usd_exact(-1)) == ("-$0.000001", "-$0.000001")
    assert usd(-5_000) == "-$0.01"


@pytest.mark.parametrize("zero", ["0", "$0.00", "0.000000"])
def test_zero_dollars_is_an_amount_a_limit_may_be(zero):
    """`plan set --spend-limit 0`: no spending allowed."""
    assert parse_usd(zero) == 0
