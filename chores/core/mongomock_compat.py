"""Lets mongomock 4.3 run what the chore asks of it with pymongo >= 4.11.

- pymongo 4.11 passes `sort=` to the bulk builder's `add_replace`/`add_update`,
  which mongomock does not accept (TypeError). The chore never sorts inside a
  bulk write, so the shim accepts `sort=None` and refuses anything else.
- mongomock's `Database.with_options` ignores `codec_options` (it returns the same
  database unless the read preference changes), so the UTC view of a plain client's
  database (`db.utc_view`) would still hand back naive datetimes. The shim gives a
  view of the same store with the codec options asked for.
- mongomock cannot sort or range-compare a few BSON types a server orders fine
  (NotImplementedError): MinKey, MaxKey, Timestamp, Decimal128, and a date outside
  Python's range (`DatetimeMS`). One runner whose `last_updated_db` or `_id` held one
  stopped every run of every org on a demo store. The shim places them in the server's
  type order (https://www.mongodb.com/docs/manual/reference/bson-type-comparison-order/)
  and compares a Decimal128 as a number, a DatetimeMS as a date, by milliseconds.
- mongomock projects a field of an array (`{"lines.tokens": 1}`) by calling `.items()` on
  each element: an element that is no document (an invoice's `lines` edited to `[1]`)
  raised AttributeError, and `chore run --full` printed a traceback where a server answers.
  The shim projects each element as a server does: a document by the sub-projection, an
  array element by element, any other value dropped by an inclusion, kept by an exclusion.

Only the in-process mongomock (demo, tests) is affected; a real server never is.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.timestamp import Timestamp
from mongomock import codec_options as mongomock_codec_options
from mongomock import collection as mongomock_collection
from mongomock import filtering
from mongomock.collection import BulkOperationBuilder
from mongomock.database import Database


def _accept_no_sort(method: Any) -> Any:
    if getattr(method, "_chore_compat", False):
        return method

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
        if sort is not None:
            raise NotImplementedError("mongomock cannot sort inside a bulk write")
        return method(self, *args, **kwargs)

    wrapper._chore_compat = True  # type: ignore[attr-defined]
    return wrapper


def _honour_codec_options(method: Any) -> Any:
    if getattr(method, "_chore_compat", False):
        return method

    @functools.wraps(method)
    def wrapper(
        self: Any,
        codec_options: Any = None,
        read_preference: Any = None,
        write_concern: Any = None,
        read_concern: Any = None,
    ) -> Any:
        if codec_options is None or codec_options == self.codec_options or write_concern:
            return method(self, codec_options, read_preference, write_concern, read_concern)
        mongomock_codec_options.is_supported(codec_options)
        return Database(
            self.client,
            self.name,
            self._store,
            read_preference=read_preference or self.read_preference,
            codec_options=codec_options,
            read_concern=read_concern or self.read_concern,
        )

    wrapper._chore_compat = True  # type: ignore[attr-defined]
    return wrapper


# mongomock's own type ranks (`filtering._get_compare_type`): numbers 10, dates 45,
# regular expressions 50; MinKey sorts before everything, MaxKey after.
_RANKS = ((MinKey, 1), (Decimal128, 10), (DatetimeMS, 45), (Timestamp, 47), (MaxKey, 127))


def _rank_every_type(get_compare_type: Any) -> Any:
    if getattr(get_compare_type, "_chore_compat", False):
        return get_compare_type

    @functools.wraps(get_compare_type)
    def wrapper(value: Any) -> Any:
        for kind, rank in _RANKS:
            if isinstance(value, kind):
                return rank
        return get_compare_type(value)

    wrapper._chore_compat = True  # type: ignore[attr-defined]
    return wrapper


def _millis(moment: datetime) -> int:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def _comparable(a: Any, b: Any) -> tuple[Any, Any]:
    """Two values of one rank as Python compares them: a Decimal128 as a float (NaN, and
    beyond a float's range infinity: the order a sort needs), dates in milliseconds when
    either is a DatetimeMS, MinKey and MaxKey each equal to themselves."""
    if isinstance(a, Decimal128):
        a = float(a.to_decimal())
    if isinstance(b, Decimal128):
        b = float(b.to_decimal())
    dates = isinstance(a, DatetimeMS | datetime) and isinstance(b, DatetimeMS | datetime)
    if dates and (isinstance(a, DatetimeMS) or isinstance(b, DatetimeMS)):
        a = int(a) if isinstance(a, DatetimeMS) else _millis(a)
        b = int(b) if isinstance(b, DatetimeMS) else _millis(b)
    if isinstance(a, MinKey | MaxKey) and type(a) is type(b):
        return 0, 0
    return a, b


def _compare_every_type(bson_compare: Any) -> Any:
    if getattr(bson_compare, "_chore_compat", False):
        return bson_compare

    @functools.wraps(bson_compare)
    def wrapper(op: Any, a: Any, b: Any, can_compare_types: bool = True) -> Any:
        a, b = _comparable(a, b)
        return bson_compare(op, a, b, can_compare_types)

    wrapper._chore_compat = True  # type: ignore[attr-defined]
    return wrapper


def _project_every_element(project_by_spec: Any) -> Any:
    if getattr(project_by_spec, "_chore_compat", False):
        return project_by_spec

    def project_array(values: Any, spec: Any, is_include: bool, container: Any) -> list[Any]:
        projected = []
        for value in values:
            if isinstance(value, dict):
                projected.append(wrapper(value, spec, is_include, container))
            elif isinstance(value, list | tuple):
                projected.append(project_array(value, spec, is_include, container))
            elif not is_include:
                projected.append(mongomock_collection._copy_field(value, container))
        return projected

    @functools.wraps(project_by_spec)
    def wrapper(doc: Any, spec: Any, is_include: bool, container: Any) -> Any:
        arrays = {
            key: project_array(value, spec[key], is_include, container)
            for key, value in doc.items()
            if isinstance(spec.get(key), dict) and isinstance(value, list | tuple)
        }
        if not arrays:  # no array under a sub-projection: mongomock's own way
            return project_by_spec(doc, spec, is_include, container)
        rest = project_by_spec(
            {key: value for key, value in doc.items() if key not in arrays},
            spec,
            is_include,
            container,
        )
        projected = container()
        for key in doc:  # in the document's order, as a server keeps it
            if key in arrays or key in rest:
                projected[key] = arrays[key] if key in arrays else rest[key]
        return projected

    wrapper._chore_compat = True  # type: ignore[attr-defined]
    return wrapper


def install() -> None:
    """Patch mongomock (idempotent: each wrapper is applied once)."""
    for name in ("add_replace", "add_update"):
        setattr(BulkOperationBuilder, name, _accept_no_sort(getattr(BulkOperationBuilder, name)))
    Database.with_options = _honour_codec_options(Database.with_options)  # type: ignore[method-assign]
    filtering._get_compare_type = _rank_every_type(filtering._get_compare_type)
    filtering.bson_compare = _compare_every_type(filtering.bson_compare)
    mongomock_collection._project_by_spec = _project_every_element(
        mongomock_collection._project_by_spec
    )
