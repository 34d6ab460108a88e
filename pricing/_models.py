"""The registry's data model and its rules.

Owns the three value types (`PriceVersion`, `ModelEntry`, `Registry`), every rule a registry must
satisfy, name resolution, effective dating and the fingerprint. A broken rule is a pydantic error
of type `RULE_ERROR` whose context says why and, where its location does not, which field and
which model.
"""

from __future__ import annotations

import hashlib
import json
import re
import reprlib
from bisect import bisect_right
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_RATE = Decimal(100_000)
"""Exclusive upper bound of a rate (USD per 1,000,000 tokens): anything larger is a typo."""
MAX_PLACES = 30
"""Most decimal places a rate may have: enough for any per-token float of 1e-20 USD or more
(17 significant digits) to convert exactly, as SPEC §2 asks of LiteLLM's costs
(1.0000000000000001e-07 per token is 0.10000000000000001 per million). Products with token
counts stay exact in the 80 digits of `chores.metering.lines._EXACT`."""

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
RULE_ERROR = "registry_rule"
"""The pydantic error type of a broken registry rule; its context has the reason."""


def _problem(reason: str, *, field: str | None = None, model: int | None = None) -> Exception:
    """A validation error whose text is `reason`; `field`/`model` override what its loc says."""
    context: dict[str, Any] = {"reason": reason}
    if field is not None:
        context["field"] = field
    if model is not None:
        context["model_index"] = model
    return PydanticCustomError(RULE_ERROR, "{reason}", context)


def _short_repr() -> reprlib.Repr:
    """A repr that writes out at most a few items, three levels deep (keywords: 3.12+)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxtuple, short.maxlist, short.maxdict = 3, 4, 4, 4
    short.maxstring = short.maxother = 60
    return short


_SHORT = _short_repr()


def shown(value: object) -> str:
    """`value` for an error message, cut to a readable length without writing out more of it
    than is shown (a YAML alias bomb expands to billions of items)."""
    text = _SHORT.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- scalar types ------------------------------------------------------------------------------


def canonical_rate(value: Decimal) -> Decimal:
    """The same number without trailing zeros or an exponent ("0.60" -> 0.6, "1E+2" -> 100).

    Done on the digits rather than with `Decimal.normalize`, which rounds to the context
    precision.
    """
    if value == 0:
        return Decimal(0)
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite: callers checked
    kept = list(digits)
    while exponent < 0 and kept[-1] == 0:
        kept.pop()
        exponent += 1
    if exponent > 0:
        kept.extend([0] * exponent)
        exponent = 0
    return Decimal((sign, tuple(kept), exponent))


def rate_text(value: Decimal) -> str:
    """A rate as the decimal string the file format uses ("0.15", never "1.5E-1")."""
    return format(value, "f")


def _to_rate(value: object) -> Decimal:
    if isinstance(value, bool):
        raise _problem(
            f'a rate cannot be a boolean (got {value}); write a decimal string like "0.15"'
        )
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(str(value))  # str() is the shortest literal: 0.15 -> Decimal("0.15")
    elif isinstance(value, str):
        try:
            text = value.strip()
            if not text.isascii():  # Decimal reads other scripts' digits: "٣" is 3
                raise InvalidOperation
            number = Decimal(text)
        except InvalidOperation:
            raise _problem(
                f'{shown(value)} is not a decimal number; write a rate like "0.15"'
            ) from None
    else:
        raise _problem(f'expected a decimal string like "0.15", got {shown(value)}')
    problem = rate_problem(number)
    if problem is not None:
        raise _problem(f"{problem}, got {shown(value)}")
    return canonical_rate(number)


def rate_problem(number: Decimal) -> str | None:
    """Why `number` cannot be a rate, or None when it can."""
    if not number.is_finite() or number < 0 or number >= MAX_RATE:
        return f"a rate must be a finite number >= 0 and < {MAX_RATE} USD per 1,000,000 tokens"
    exponent = canonical_rate(number).as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -MAX_PLACES:
        return f"a rate has at most {MAX_PLACES} decimal places"
    return None


def _to_optional_rate(value: object) -> Decimal | None:
    return None if value is None else _to_rate(value)


def _optional_rate_text(value: Decimal | None) -> str | None:
    return None if value is None else rate_text(value)


def _to_day(value: object) -> date:
    if isinstance(value, datetime):
        raise _problem(f'expected a date like "2024-07-18", not a date and time ({value})')
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _DAY.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _problem(f'expected a UTC date like "2024-07-18", got {shown(value)}')


def _to_name(value: object) -> str:
    if not isinstance(value, str):
        raise _problem(f"expected a model name (a string), got {shown(value)}")
    if not value or value != value.strip() or not value.isprintable():
        raise _problem(
            f"{shown(value)} is not a usable model name: it must be non-empty, printable and "
            "without surrounding spaces"
        )
    return value


def _to_version(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _problem(
            f'expected a non-empty string such as "2026-11-01" (quote it in YAML), '
            f"got {shown(value)}"
        )
    return value


Rate = Annotated[Decimal, PlainValidator(_to_rate), PlainSerializer(rate_text, when_used="json")]
OptionalRate = Annotated[
    Decimal | None,
    PlainValidator(_to_optional_rate),
    PlainSerializer(_optional_rate_text, when_used="json"),
]
Day = Annotated[date, PlainValidator(_to_day), PlainSerializer(date.isoformat, when_used="json")]
Name = Annotated[str, PlainValidator(_to_name)]
Version = Annotated[str, PlainValidator(_to_version)]


def _utc_day(when: date | datetime) -> date:
    if isinstance(when, datetime):
        if when.tzinfo is not None and when.utcoffset() is not None:
            when = when.astimezone(UTC)
        return when.date()  # naive datetimes are UTC already
    if isinstance(when, date):
        return when
    raise TypeError(f"price_at() needs a date or datetime, got {type(when).__name__}")


# --- the models --------------------------------------------------------------------------------


class PriceVersion(BaseModel):
    """One effective-dated set of rates, in USD per 1,000,000 tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    valid_from: Day
    input: Rate
    cached_input: OptionalRate = None
    output: Rate

    @property
    def cached_rate(self) -> Decimal:
        """The rate of cached prompt tokens: `cached_input`, or the input rate when absent."""
        return self.input if self.cached_input is None else self.cached_input


def _valid_from(price: PriceVersion) -> date:
    return price.valid_from


def _given_rates(price: PriceVersion) -> dict[str, Decimal]:
    given = {"input": price.input, "cached_input": price.cached_input, "output": price.output}
    return {name: rate for name, rate in given.items() if rate is not None}


class ModelEntry(BaseModel):
    """One model: its id, the other names it answers to, its tier and its price history."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Name
    aliases: tuple[Name, ...] = ()
    tier: Literal["paid", "free"]
    prices: tuple[PriceVersion, ...]

    @field_validator("aliases")
    @classmethod
    def _aliases_distinct(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for position, alias in enumerate(aliases):
            if alias.casefold() in seen:
                raise _problem(
                    f"{alias!r} is listed twice (aliases are case-insensitive); remove one",
                    field=f"aliases[{position}]",
                )
            seen.add(alias.casefold())
        return aliases

    @field_validator("prices")
    @classmethod
    def _prices_ordered(cls, prices: tuple[PriceVersion, ...]) -> tuple[PriceVersion, ...]:
        if not prices:
            raise _problem("no price versions; add at least one with valid_from, input and output")
        ordered = tuple(sorted(prices, key=_valid_from))
        for earlier, later in pairwise(ordered):
            if earlier.valid_from == later.valid_from:
                raise _problem(
                    f"two price versions are valid from {later.valid_from} (overlapping price "
                    "versions); keep one version per valid_from date"
                )
        return ordered

    @model_validator(mode="after")
    def _rules(self) -> ModelEntry:
        for position, alias in enumerate(self.aliases):
            if alias.casefold() == self.id.casefold():
                raise _problem(
                    f"alias {alias!r} is the model's own id; remove it",
                    field=f"aliases[{position}]",
                )
        for position, price in enumerate(self.prices):
            rates = _given_rates(price)
            if self.tier == "free":
                for name, rate in rates.items():
                    if rate != 0:
                        raise _problem(
                            f"a free model has every rate exactly 0, got {rate_text(rate)}; set "
                            'it to "0" or make the tier paid',
                            field=f"prices[{position}].{name}",
                        )
            elif price.input == 0 and price.output == 0:
                # A cached rate alone would bill every uncached token $0, unflagged.
                raise _problem(
                    f"a paid model needs an input or output rate above 0, but both valid from "
                    f"{price.valid_from} are 0; give the real rates or make the tier free",
                    field=f"prices[{position}]",
                )
        return self

    def price_at(self, when: date | datetime) -> PriceVersion | None:
        """The version in force on the UTC date of `when`, None before the first one.

        A naive datetime is taken as UTC; an aware one is converted to UTC first.
        """
        day = when if type(when) is date else _utc_day(when)
        prices = self.prices
        if len(prices) == 1:  # most models
            return prices[0] if prices[0].valid_from <= day else None
        position = bisect_right(prices, day, key=_valid_from)
        return prices[position - 1] if position else None


class Registry(BaseModel):
    """A versioned set of models, with name resolution in O(1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Version
    models: tuple[ModelEntry, ...]

    _names: dict[str, ModelEntry] = PrivateAttr(default_factory=dict)
    _ids: dict[str, ModelEntry] = PrivateAttr(default_factory=dict)
    _fingerprint: str = PrivateAttr(default="")

    @field_validator("models")
    @classmethod
    def _not_empty(cls, models: tuple[ModelEntry, ...]) -> tuple[ModelEntry, ...]:
        if not models:
            raise _problem("the registry lists no models; add at least one")
        return models

    @model_validator(mode="after")
    def _index(self) -> Registry:
        names: dict[str, tuple[int, ModelEntry]] = {}
        for position, model in enumerate(self.models):
            fields = [("id", model.id)]
            fields += [(f"aliases[{n}]", alias) for n, alias in enumerate(model.aliases)]
            for field, name in fields:
                claimed = names.get(name.casefold())
                if claimed is not None:
                    other_position, other = claimed
                    raise _problem(
                        f"{name!r} is already the id or an alias of model {other.id!r} "
                        f"(models[{other_position}]); names are case-insensitive and must be "
                        "unique, so rename or remove one",
                        field=field,
                        model=position,
                    )
                names[name.casefold()] = (position, model)
        self._names = {name: model for name, (_, model) in names.items()}
        self._ids = {model.id: model for model in self.models}
        self._fingerprint = hashlib.sha256(self._canonical_json().encode()).hexdigest()
        return self

    def _canonical_json(self) -> str:
        # Sorted so that the order models and aliases are written in does not matter.
        data = self.model_dump(mode="json")
        for model in data["models"]:
            model["aliases"] = sorted(model["aliases"], key=lambda a: (a.casefold(), a))
        data["models"].sort(key=lambda m: (m["id"].casefold(), m["id"]))
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the content; registries with equal content have equal fingerprints."""
        return self._fingerprint

    def resolve(self, name: object) -> ModelEntry | None:
        """The model `name` refers to, or None.

        Case-insensitive, by id or alias; failing that, once more after stripping one leading
        "provider/" segment. Anything but a non-empty string resolves to None.
        """
        if not isinstance(name, str):
            return None
        key = name.strip().casefold()
        if not key:
            return None
        # The index straight from pydantic's private storage: `self._names` goes through
        # `BaseModel.__getattr__`, which costs more than the lookup itself.
        names: dict[str, ModelEntry] = self.__pydantic_private__["_names"]  # type: ignore[index]
        found = names.get(key)
        if found is None:
            provider, slash, rest = key.partition("/")
            if slash and provider and rest:
                found = names.get(rest)
        return found

    def excerpt(self, model_ids: Iterable[str]) -> dict[str, Any] | None:
        """The models of these ids as a registry document (`Registry.model_validate` reads
        it back: each name resolves in it as it does here, for every name that resolves
        here to one of them); None when none is in this registry."""
        found = [self._ids[i] for i in sorted(set(model_ids)) if i in self._ids]
        models = [model.model_dump(mode="json") for model in found]
        return {"version": self.version, "models": models} if models else None

    def get(self, model_id: str) -> ModelEntry:
        """The model whose id is exactly `model_id`; KeyError otherwise."""
        try:
            return self._ids[model_id]
        except KeyError:
            raise KeyError(model_id) from None
