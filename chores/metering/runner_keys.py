"""The ledger's name for a runner document (`runner_key`), and back (`source_id_of`)."""

from __future__ import annotations

import ast
from hashlib import sha256
from typing import Any

from bson import ObjectId
from bson.int64 import Int64

MAX_KEY = 300  # characters of a runner key written as it is; longer ones are digested
DIGEST_PREFIX = "sha256-"
INT32 = range(-(2**31), 2**31)  # BSON stores a Python int outside it as int64, read as Int64


def runner_key(source_id: Any) -> str:
    """The ledger's name for a runner document, one per `_id` and never shared.

    - an ObjectId: its hex (24 characters);
    - any other id: `type:repr` (e.g. `str:'abc'`), so that a string id can never collide
      with an ObjectId of the same hex, when that is at most MAX_KEY characters;
    - longer: `sha256-` and the SHA-256 hex of that `type:repr`. Never truncated: two
      runners whose ids share a prefix would share one high-water mark. No other key can
      look like a digest: a `type:repr` key starts with an identifier and a colon, and an
      ObjectId's hex has no `-`.

    Keys of ids up to MAX_KEY characters are what they always were (existing ledgers keep
    their keys). A Python int outside int32 is keyed as the `Int64` every read from BSON
    gives back, so that the same runner has one key before and after a round trip.
    """
    if type(source_id) is ObjectId:
        return str(source_id)
    if type(source_id) is int and source_id not in INT32:
        source_id = Int64(source_id)
    key = f"{type(source_id).__name__}:{source_id!r}"
    if len(key) <= MAX_KEY:
        return key
    return DIGEST_PREFIX + sha256(key.encode("utf-8", "backslashreplace")).hexdigest()


def source_id_of(key: str) -> Any | None:
    """The `_id` a runner key was made from, where the key shows it: an ObjectId's hex, or a
    `str:`, `int:`, `Int64:`, `float:` or `bool:` key not digested. None otherwise (a digest,
    another type). Checked: `runner_key` of the answer is `key` again."""
    kind, _, text = key.partition(":")
    candidate: Any
    if ObjectId.is_valid(key):
        candidate = ObjectId(key)
    elif kind in ("str", "int", "Int64", "float", "bool"):
        try:
            candidate = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
        if kind == "Int64" and type(candidate) is int:
            candidate = Int64(candidate)  # BSON's 64-bit integer, as pymongo reads it back
    else:
        return None
    return candidate if runner_key(candidate) == key else None
