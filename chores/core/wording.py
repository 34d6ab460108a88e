"""How the command line words counts (thousands separators, plurals that agree), shows
text from the data on a terminal, and tells text it can store (UTF-8) from what it cannot."""

from __future__ import annotations

import re
from collections.abc import Mapping

# C0 and C1 control characters (an escape sequence, a newline) and the bidirectional
# overrides: in an org id or a model name from the source, they would drive the terminal.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

IRREGULAR = {"anomaly": "anomalies", "open anomaly": "open anomalies", "entry": "entries"}


def counted(n: int, noun: str) -> str:
    """`1 run`, `2 runs`, `7,929 documents`, `3 anomalies`."""
    word = noun if n == 1 else IRREGULAR.get(noun, noun + "s")
    return f"{n:,} {word}"


def tally(counts: Mapping[str, int]) -> str:
    """`malformed_counters 3, no_org 1`, or `none`: a count per kind, for people."""
    return ", ".join(f"{kind} {n:,}" for kind, n in sorted(counts.items())) or "none"


def for_terminal(text: str) -> str:
    """Text from the data as a terminal shows it: each control character or bidirectional
    override written as its escape (`\\x1b`, `\\n`, `\\u202e`), the rest as it is."""
    return _UNSAFE.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


def is_utf8(text: str) -> bool:
    """Whether `text` can be written as UTF-8, as every string MongoDB stores is: not when it
    holds a lone surrogate, which Python puts in a command-line argument (or an environment
    variable, or a file name) for bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
