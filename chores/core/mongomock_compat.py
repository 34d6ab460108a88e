"""Lets mongomock 4.3 run what the chore asks of it with pymongo >= 4.11.

- pymongo 4.11 passes `sort=` to the bulk builder's `add_replace`/`add_update`,
  which mongomock does not accept (TypeError). The chore never sorts inside a
  bulk write, so the shim accepts `sort=None` and refuses anything else.
- mongomock's `Database.with_options` ignores `codec_options` (it returns the same
  database unless the read preference changes), so the UTC view of a plain client's
  database (`db.utc_view`) would still hand back naive datetimes. The shim gives a
  view of the same store with the codec options asked for.

Only the in-process mongomock (demo, tests) is affected; a real server never is.
"""

from __future__ import annotations

import functools
from typing import Any

from mongomock import codec_options as mongomock_codec_options
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


def install() -> None:
    """Patch mongomock (idempotent: each wrapper is applied once)."""
    for name in ("add_replace", "add_update"):
        setattr(BulkOperationBuilder, name, _accept_no_sort(getattr(BulkOperationBuilder, name)))
    Database.with_options = _honour_codec_options(Database.with_options)  # type: ignore[method-assign]
