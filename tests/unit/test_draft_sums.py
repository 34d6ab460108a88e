"""A stored draft's sums as a build reads, adds to, compares and writes them back
(`chores/billing/drafts.DraftSums`; found untested by mutation testing): counts a draft
lacks read as zero, sums edited out of shape make a build start from the ledger, entries
that only moved a mark count for nothing, and the stored groups read back the same."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from chores.billing.drafts import DraftSums, LedgerUsage, has_usage
from chores.metering.lines import UsageGroup

DAY = date(2026, 9, 9)
LATER = date(2026, 9, 10)


def stored_group(model: str | None, tokens: tuple[int, int, int, int] = (1, 0, 0, 0)) -> dict:
    return {"model": model, "byok": False, "late": False, "day": DAY.isoformat()} | dict(
        zip(("input", "cached", "output", "unsplit"), tokens, strict=True)
    )


def entry(tokens: tuple[int, int, int, int] = (1, 0, 0, 0), **key: Any) -> dict[str, Any]:
    fields = ("input_tokens", "cached_tokens", "output_tokens", "unsplit_tokens")
    return {"model": "m", "byok": False, "late": False, "usage_day": DAY.isoformat()} | (
        key | dict(zip(fields, tokens, strict=True))
    )


def test_a_stored_draft_is_read_whole():
    sums = DraftSums.of(
        {
            "status": "draft",
            "build_ticket": 7,
            "updated_at": datetime(2026, 9, 10, 12, 0),  # naive, as MongoDB gives it: UTC
            "usage_groups": [stored_group("m", (1, 2, 3, 4))],
            "runs": 2,
            "entries": 5,
            "pending_fold": {"ids": ["e1", "e2"]},
        }
    )
    assert (sums.status, sums.ticket, sums.updated_at) == (
        "draft",
        7,
        datetime(2026, 9, 10, 12, 0, tzinfo=UTC),
    )
    assert sums.groups == {("m", False, False, DAY): [1, 2, 3, 4]}
    assert (sums.runs, sums.entries, sums.pending, sums.kept_sums) == (2, 5, ["e1", "e2"], True)


def test_a_draft_without_counts_ticket_or_pending_reads_zero_and_none():
    sums = DraftSums.of(
        {"status": "draft", "build_ticket": "7", "updated_at": "2026-09-10", "usage_groups": []}
    )
    assert (sums.ticket, sums.updated_at) == (None, None)
    assert (sums.runs, sums.entries, sums.pending, sums.kept_sums) == (0, 0, [], True)


def test_a_draft_whose_sums_were_edited_out_of_shape_is_built_from_its_ledger():
    sums = DraftSums.of({"status": "draft", "build_ticket": 3, "usage_groups": "gone", "runs": 4})
    assert (sums.kept_sums, sums.ticket, sums.groups, sums.runs) == (False, 3, {}, 0)


def test_sums_are_the_same_only_when_their_groups_runs_and_entries_are():
    one = DraftSums(groups={("m", False, False, DAY): [1, 0, 0, 0]}, runs=1, entries=1)
    ledger = LedgerUsage(
        [UsageGroup("m", False, False, DAY, 1, 0, 0, 0)], runners={"r1"}, entries=1
    )
    assert one.holds_the_same(DraftSums.holding(ledger))
    assert not one.holds_the_same(DraftSums(groups=dict(one.groups), runs=2, entries=1))
    assert not one.holds_the_same(DraftSums(groups=dict(one.groups), runs=1, entries=2))
    assert not one.holds_the_same(DraftSums(groups={}, runs=1, entries=1))


def test_entries_added_sum_their_tokens_and_count_only_those_with_usage():
    before = DraftSums(
        status="draft", ticket=4, groups={("m", False, False, DAY): [10, 0, 0, 0]}, entries=1
    )
    mark_only = entry((0, 0, 0, 0))  # moved a high-water mark, no tokens
    assert not has_usage(mark_only) and has_usage(entry((0, 0, 0, 1)))
    after = before.plus([entry((1, 2, 3, 4)), mark_only, entry(byok=1)], new_runners=2)
    assert after.groups == {
        ("m", False, False, DAY): [11, 2, 3, 4],
        ("m", True, False, DAY): [1, 0, 0, 0],
    }
    assert (after.runs, after.entries, after.status, after.ticket) == (2, 3, "draft", 4)
    assert before.groups == {("m", False, False, DAY): [10, 0, 0, 0]}  # left as it was


def test_groups_are_ordered_on_time_first_then_by_model_customer_key_and_day():
    keys = [
        ("a", False, True, DAY),  # late: after every group on time
        ("b", True, False, DAY),
        ("b", False, False, LATER),
        ("b", False, False, DAY),
        ("a", False, False, LATER),
        (None, False, False, LATER),
    ]
    sums = DraftSums(groups={key: [1, 0, 0, 0] for key in keys})
    ordered = [(g.model, g.byok, g.late, g.day) for g in sums.usage_groups()]
    assert ordered == [keys[5], keys[4], keys[3], keys[2], keys[1], keys[0]]


def test_stored_groups_read_back_as_the_same_sums():
    sums = DraftSums(
        groups={("m", True, True, DAY): [1, 2, 3, 4], (None, False, False, DAY): [5, 6, 7, 8]},
        runs=1,
        entries=2,
    )
    stored = sums.stored_groups()
    assert stored[0] == stored_group(None, (5, 6, 7, 8))
    again = DraftSums.of({"status": "draft", "usage_groups": stored, "runs": 1, "entries": 2})
    assert again.holds_the_same(sums)
