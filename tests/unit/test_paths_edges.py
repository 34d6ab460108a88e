"""Paths at their edges, found untested by mutation testing of `chores/core/paths.py`: a
path holding a NUL is refused in one line."""

from __future__ import annotations

import pytest

from chores import ConfigError, Settings, connect


def test_a_store_path_holding_a_nul_is_refused_in_one_line():
    """A `file://` store named with a NUL byte (a setting written by a program, not a
    shell) is no file any system can open: a ConfigError saying so, naming the path, not a
    store opened at a path of None or a ValueError traceback."""
    settings = Settings(mongo_url="file://st\x00ore.json", redis_url=None)
    with pytest.raises(ConfigError, match=r"'st\\x00ore.json' is no path: embedded null byte"):
        connect(settings)
