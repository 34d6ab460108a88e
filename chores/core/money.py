"""Money: `Decimal` USD until a line is rounded, once, into integer micro-dollars."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from typing import NewType

Micros = NewType("Micros", int)
MICROS_PER_USD = 1_000_000
# 1,000 and 12_345_678; never 0,500 (0.5 where a comma is the decimal point)
THOUSANDS = re.compile(r"[1-9][0-9]{0,2}(?:[,_][0-9]{3})+")
# ASCII digits with an optional decimal point: no exponent (`1e2`), no other script's
# digits (`１０`, `٣`), which `Decimal` would read as a number nobody typed on purpose
PLAIN_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def to_micros(micros: Decimal) -> Micros:
    """Round an exact amount of micro-dollars to an integer, half up (the one rounding)."""
    return Micros(int(micros.to_integral_value(rounding=ROUND_HALF_UP)))


CENT = 10_000  # micros


def usd(micros: int | None) -> str:
    """Money as a person reads it: cents (`$1,234.57`, rounded half up); an amount that is
    not zero but below half a cent keeps the digits it needs (`$0.0042`, `$0.000001`)
    rather than reading `$0.00`. `unpriced` for None. Stored amounts stay micros."""
    if micros is None:
        return "unpriced"
    sign = "-" if micros < 0 else ""
    size = abs(micros)
    cents = (size + CENT // 2) // CENT
    if cents == 0 and size:
        digits = f"{size:06d}".rstrip("0")
        return f"{sign}$0.{digits.ljust(2, '0')}"
    whole, frac = divmod(cents, 100)
    return f"{sign}${whole:,}.{frac:02d}"


def usd_exact(micros: int) -> str:
    """Money to the micro-dollar, for limits and what is measured against them: `$50.00`,
    `$0.151631`. A limit shown in cents would misstate where it blocks."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}${whole:,}.{f'{frac:06d}'.rstrip('0').ljust(2, '0')}"


def usd_of_dollars(amount: float | None) -> str:
    """`usd` of a float dollar amount (runners' own estimates); `–` for None."""
    return "–" if amount is None else usd(round(amount * MICROS_PER_USD))


def parse_usd(text: str) -> Micros:
    """`$50`, `50.00`, `$1,000`, `0.000001` -> micros; ValueError for anything else."""
    try:
        number = ungrouped(text.strip().removeprefix("$").lstrip())
        if not PLAIN_DECIMAL.fullmatch(number):
            raise ValueError(number)
        amount = Decimal(number)
    except (ArithmeticError, ValueError) as exc:
        raise ValueError(f"not a dollar amount: {text!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"not a dollar amount: {text!r}")
    micros = whole_after_scaling(amount, 6)
    if micros is None:
        raise ValueError(f"{text!r} has more precision than a micro-dollar")
    return Micros(micros)


def ungrouped(number: str) -> str:
    """A number written with or without thousands separators (`1,000,000.5`, `1_000`),
    without them. ValueError when a separator does not split its whole part into groups of
    three digits: `1,5` is 1.5 in many locales, and read as 15 it would set a limit ten
    times too high."""
    whole, dot, fraction = number.partition(".")
    if any(sep in fraction for sep in ",_"):
        raise ValueError(f"a separator after the decimal point: {number!r}")
    if any(sep in whole for sep in ",_") and not THOUSANDS.fullmatch(whole):
        raise ValueError(f"separators that do not group thousands: {number!r}")
    return (whole + dot + fraction).replace(",", "").replace("_", "")


def whole_after_scaling(amount: Decimal, places: int) -> int | None:
    """`amount` x 10**places as an int, or None when that is not whole: exactly, however many
    digits it has (a multiplication would round to the context's 28 digits first)."""
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite: callers checked
    scaled = Decimal((sign, digits, exponent + places))
    return int(scaled) if scaled == scaled.to_integral_value() else None
