"""Money: `Decimal` USD until a line is rounded, once, into integer micro-dollars."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import NewType

Micros = NewType("Micros", int)
MICROS_PER_USD = 1_000_000


def to_micros(micros: Decimal) -> Micros:
    """Round an exact amount of micro-dollars to an integer, half up (the one rounding)."""
    return Micros(int(micros.to_integral_value(rounding=ROUND_HALF_UP)))


def usd(micros: int | None) -> str:
    """`$1,234.567890`-style text of a micros amount; `unpriced` for None."""
    if micros is None:
        return "unpriced"
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}${whole:,}.{frac:06d}"


def parse_usd(text: str) -> Micros:
    """`$50`, `50.00`, `0.000001` -> micros; ValueError for anything else."""
    cleaned = text.strip().removeprefix("$").replace(",", "")
    try:
        amount = Decimal(cleaned)
    except ArithmeticError as exc:
        raise ValueError(f"not a dollar amount: {text!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"not a dollar amount: {text!r}")
    micros = amount * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError(f"{text!r} has more precision than a micro-dollar")
    return Micros(int(micros))
