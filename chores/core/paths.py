"""Paths a user gives, made absolute. A relative one needs the working directory, which may
have been removed since the shell entered it: that is one line, not a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from chores.core.exceptions import ConfigError


def absolute(path: Path | str) -> Path:
    """`path` made absolute, symbolic links followed (`os.path.realpath`); a ConfigError
    when it is relative and the working directory is gone, or when it holds a NUL."""
    try:
        return Path(os.path.realpath(path))
    except FileNotFoundError:
        raise ConfigError(
            f"{str(path)!r:.80} is relative, and the working directory no longer exists "
            "(removed since this shell entered it): cd to one that does, or give an "
            "absolute path"
        ) from None
    except ValueError as exc:  # a NUL byte
        raise ConfigError(f"{str(path)!r:.80} is no path: {exc}") from None
