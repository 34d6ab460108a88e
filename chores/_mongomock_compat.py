"""Lets mongomock 4.3 run the `bulk_write` calls the chore makes with pymongo >= 4.11.

pymongo 4.11 passes `sort=` to the bulk builder's `add_replace`/`add_update`,
which mongomock does not accept (TypeError). The chore never sorts inside a
bulk write, so the shim accepts `sort=None` and refuses anything else. Only the
in-process mongomock (demo, tests) is affected; a real server never is.
"""

from __future__ import annotations

import functools
from typing import Any

from mongomock.collection import BulkOperationBuilder


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


def install() -> None:
    for name in ("add_replace", "add_update"):
        setattr(BulkOperationBuilder, name, _accept_no_sort(getattr(BulkOperationBuilder, name)))
