"""How the metering reads a field of a source document it does not trust: a string only
when it is exactly a BSON string, and a bad value described in a few characters."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def bson_string(value: Any) -> str | None:
    """A string field's value, or None when it holds anything but a BSON string (exactly
    `str`: JavaScript code decodes to `bson.code.Code`, a str subclass that cannot even be
    hashed)."""
    return value if type(value) is str else None


def describe_value(value: Any) -> str:
    """A bad value as an anomaly's detail shows it: its repr (a time in ISO 8601), cut to 40
    characters."""
    text = value.isoformat() if isinstance(value, datetime) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
