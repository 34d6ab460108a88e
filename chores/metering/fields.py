"""How the metering reads a field of a source document it does not trust: a string only
when it is exactly a BSON string, an embedded document only when it is a mapping, and a bad
value described in a few characters."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeGuard


def bson_string(value: Any) -> str | None:
    """A string field's value, or None when it holds anything but a BSON string (exactly
    `str`: JavaScript code decodes to `bson.code.Code`, a str subclass that cannot even be
    hashed)."""
    return value if type(value) is str else None


def is_mapping(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """Whether a field holds an embedded document: a dict, as every read decodes one, or any
    other mapping. (The dict is checked first: it is what the run meets, several times per
    document, and an abstract-class check costs five times a type check.)"""
    return type(value) is dict or isinstance(value, Mapping)


def describe_value(value: Any) -> str:
    """A bad value as an anomaly's detail shows it: its repr (a time in ISO 8601), cut to 40
    characters."""
    text = value.isoformat() if isinstance(value, datetime) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
