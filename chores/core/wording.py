"""How the command line words counts (thousands separators, plurals that agree), shows
text from the data on a terminal, and tells text it can store (UTF-8) from what it cannot."""

from __future__ import annotations

import re
from collections.abc import Mapping

# C0 and C1 control characters (an escape sequence, a newline), the bidirectional
# overrides, isolates and marks, the line and paragraph separators, and the invisible
# format characters that join nothing (the zero-width space, the word joiner, the byte
# order mark): in an org id or a model name from the source, they would drive the
# terminal, reorder what follows, or make two names look alike (`gpt-4o` and `gpt-4o` +
# U+200F). The zero-width (non-)joiners and the soft hyphen are left as they are: emoji
# sequences and Persian words need them (a review caught the first version escaping them).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b\u200e\u200f\u2028-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]"
)

IRREGULAR = {"anomaly": "anomalies", "open anomaly": "open anomalies", "entry": "entries"}


def counted(n: int, noun: str) -> str:
    """`1 run`, `2 runs`, `7,929 documents`, `3 anomalies`."""
    word = noun if n == 1 else IRREGULAR.get(noun, noun + "s")
    return f"{n:,} {word}"


def tally(counts: Mapping[str, int]) -> str:
    """`malformed_counters 3, no_org 1`, or `none`: a count per kind, for people."""
    return ", ".join(f"{kind} {n:,}" for kind, n in sorted(counts.items())) or "none"


def for_terminal(text: str) -> str:
    """Text from the data as a terminal shows it: each control, bidirectional or invisible
    format character written as its escape (`\\x1b`, `\\n`, `\\u202e`, `\\u200f`), the
    rest as it is. (A backslash stays as it is: a name holding the text `\\x1b` prints
    like one holding the character; either is visibly not an ordinary name.)"""
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
