"""What a draft holds of the ledger: the sums it was built from, kept in the draft itself.

A draft stores the sums of the ledger entries it holds (`usage_groups`: tokens per
model, key source, lateness and day), the runners among them (`runs`) and how many
entries with usage they are (`entries`). A build adds to those sums the entries no
draft holds yet (`Ledger.unfolded`), prices the result, and commits it with a
compare-and-set on the draft's `build_ticket`. Only then does it flag the entries as
folded (`Ledger.flag_folded`). Until they are flagged, their ids stay in the draft
(`pending_fold`), and the next build flags them before it reads anything: so a build
that dies between its commit and its flags leaves work to finish, never entries to
fold twice. docs/design.md has the argument.

A draft without its sums (written before drafts kept them, or edited out of the shape
`stored_groups` writes: `KEPT_SUMS`) starts from its ledger, as a removed one does
(`Invoices._folded_usage`): for one written before, no entry is flagged, and its first
build folds the whole period, as the old full rebuild did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NotRequired

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from chores.core.db import Doc
from chores.core.documents import Day, Flag, Integer, Text
from chores.core.periods import as_utc
from chores.metering.lines import UsageGroup

GroupKey = tuple[str | None, bool, bool, date]  # model, byok, late, day


class _StoredGroup(TypedDict):
    model: Text | None
    byok: Flag
    late: Flag
    day: Day
    input: Integer
    cached: Integer
    output: Integer
    unsplit: Integer


class _PendingFold(TypedDict):
    ids: list[Text]


class _KeptSums(TypedDict):
    """The sums a draft keeps, as `DraftSums.stored_groups` and a build write them."""

    usage_groups: list[_StoredGroup]
    runs: NotRequired[Integer]
    entries: NotRequired[Integer]
    pending_fold: NotRequired[_PendingFold | None]


KEPT_SUMS = TypeAdapter(_KeptSums)

TOKEN_FIELDS = ("input_tokens", "cached_tokens", "output_tokens", "unsplit_tokens")


def has_usage(entry: Mapping[str, Any]) -> bool:
    """False for an entry that only moved a high-water mark (`ledger.EMPTY_ENTRY`)."""
    return any(entry.get(name) for name in TOKEN_FIELDS)


@dataclass
class LedgerUsage:
    """What the ledger holds for one invoice, summed from its entries in the database."""

    groups: list[UsageGroup] = field(default_factory=list)
    runners: set[str] = field(default_factory=set)
    entries: int = 0


@dataclass
class DraftSums:
    """A stored draft as a build sees it: its sums, and who wrote it."""

    status: str | None = None  # None: no draft yet
    ticket: int | None = None  # the build that wrote it (None: none, or written before tickets)
    updated_at: datetime | None = None  # the `now` of the run that wrote it
    groups: dict[GroupKey, list[int]] = field(default_factory=dict)
    runs: int = 0
    entries: int = 0
    pending: list[str] = field(default_factory=list)  # folded by `ticket`, maybe not flagged yet
    # False for a draft without its sums: written before drafts kept them, or edited (its
    # `usage_groups` removed or not a list): a build starts it from its ledger
    kept_sums: bool = True

    @classmethod
    def of(cls, doc: Mapping[str, Any] | None) -> DraftSums:
        if doc is None:
            return cls()
        ticket, updated_at = doc.get("build_ticket"), doc.get("updated_at")
        sums = cls(
            status=doc.get("status"),
            ticket=ticket if isinstance(ticket, int) else None,
            updated_at=as_utc(updated_at) if isinstance(updated_at, datetime) else None,
        )
        try:
            KEPT_SUMS.validate_python(doc)
        except ValidationError:
            sums.kept_sums = False
            return sums
        for group in doc["usage_groups"]:
            key = (group["model"], group["byok"], group["late"], date.fromisoformat(group["day"]))
            sums.groups[key] = [group["input"], group["cached"], group["output"], group["unsplit"]]
        sums.runs = int(doc.get("runs", 0))
        sums.entries = int(doc.get("entries", 0))
        pending = doc.get("pending_fold") or {}
        sums.pending = list(pending.get("ids", []))
        return sums

    @classmethod
    def holding(cls, usage: LedgerUsage) -> DraftSums:
        """The sums of a draft that holds this usage and no more (not stored yet)."""
        sums = cls(runs=len(usage.runners), entries=usage.entries)
        for group in usage.groups:
            key = (group.model, group.byok, group.late, group.day)
            sums.groups[key] = [group.input, group.cached, group.output, group.unsplit]
        return sums

    @property
    def exists(self) -> bool:
        return self.status is not None

    def holds_the_same(self, other: DraftSums) -> bool:
        """Whether two drafts' sums hold the same usage, runs and entries."""
        return (self.groups, self.runs, self.entries) == (other.groups, other.runs, other.entries)

    def plus(self, entries: Iterable[Mapping[str, Any]], new_runners: int) -> DraftSums:
        """These sums with `entries` added (unfolded entries of this draft's pair), and
        `new_runners` runners it did not count yet."""
        groups = {key: list(tokens) for key, tokens in self.groups.items()}
        count = 0
        for entry in entries:
            if not has_usage(entry):
                continue
            count += 1
            key = (
                entry["model"],
                bool(entry["byok"]),
                bool(entry["late"]),
                date.fromisoformat(entry["usage_day"]),
            )
            tokens = groups.setdefault(key, [0, 0, 0, 0])
            for i, name in enumerate(TOKEN_FIELDS):
                tokens[i] += entry[name]
        return DraftSums(
            status=self.status,
            ticket=self.ticket,
            groups=groups,
            runs=self.runs + new_runners,
            entries=self.entries + count,
        )

    def usage_groups(self) -> list[UsageGroup]:
        return [
            UsageGroup(*key, *tokens) for key, tokens in sorted(self.groups.items(), key=_order)
        ]

    def stored_groups(self) -> list[Doc]:
        return [
            {
                "model": group.model,
                "byok": group.byok,
                "late": group.late,
                "day": group.day.isoformat(),
                "input": group.input,
                "cached": group.cached,
                "output": group.output,
                "unsplit": group.unsplit,
            }
            for group in self.usage_groups()
        ]


def _order(item: tuple[GroupKey, list[int]]) -> tuple[Any, ...]:
    (model, byok, late, day), _ = item
    return (late, model or "", byok, day)
