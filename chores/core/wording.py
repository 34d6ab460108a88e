"""How the command line words counts: thousands separators, and plurals that agree."""

from __future__ import annotations

from collections.abc import Mapping

IRREGULAR = {"anomaly": "anomalies", "open anomaly": "open anomalies", "entry": "entries"}


def counted(n: int, noun: str) -> str:
    """`1 run`, `2 runs`, `7,929 documents`, `3 anomalies`."""
    word = noun if n == 1 else IRREGULAR.get(noun, noun + "s")
    return f"{n:,} {word}"


def tally(counts: Mapping[str, int]) -> str:
    """`malformed_counters 3, no_org 1`, or `none`: a count per kind, for people."""
    return ", ".join(f"{kind} {n:,}" for kind, n in sorted(counts.items())) or "none"
