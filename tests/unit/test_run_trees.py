"""Run trees at their edges: subagents ordered by their subtree's cost, a looping parent
chain cut once with what hangs below kept nested, and each subagent's depth.

Found untested by mutation testing of chores/reports/run_trees.py (stop 55): each docstring
names the mutant its test kills."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from chores.billing.period_ledger import RunInfo
from chores.reports.breakdown import AllocatedUsage, Cell, rows
from chores.reports.run_trees import run_trees, tree_order


def _cell(runner: str, *, parent: str | None = None, session: str = "s", micros: int = 10) -> Cell:
    run = RunInfo(runner, "gpt-4o", session, parent is not None, parent, "SUCCESS")
    line = ("gpt-4o", "paid", "2024-08-06", False)
    return Cell(
        run, date(2026, 11, 2), line, AllocatedUsage(100, 0, 10, 0, micros), Decimal(micros)
    )


def _ids(node) -> list:
    return [node.run.runner_id if node.run else f"session:{node.session_id}"] + [
        _ids(child) for child in node.children
    ]


def test_subagents_are_ordered_by_the_cost_of_their_whole_subtree():
    """Mutant 39 (run_trees.py:102 `node.children.sort(key=_cost_order)` -> pass): each level
    is costliest first by its total, a subagent's own cost plus its subtree's, not in the
    order the rows came (costliest own cost first)."""
    cells = [
        _cell("top", micros=50),
        _cell("cheap-alone", parent="top", micros=8),
        _cell("cheap-spawner", parent="top", micros=3),
        _cell("grandchild", parent="cheap-spawner", micros=7),
    ]
    (top,) = run_trees(cells)
    assert _ids(top) == ["top", ["cheap-spawner", ["grandchild"]], ["cheap-alone"]]
    assert [c.total.amount_micros for c in top.children] == [10, 8]
    assert top.total.amount_micros == 68


def test_a_looping_parent_chain_is_cut_once_and_keeps_what_hangs_below_the_cut():
    """Mutant 58 (run_trees.py:99 `reach(node)` -> pass): the loop is cut at one runner (the
    first, costliest), and the rest of the chain, with a subagent spawned inside it, stays
    nested under that runner in the session's tree, not scattered into siblings."""
    cells = [
        _cell("loop-a", parent="loop-b", micros=2),
        _cell("loop-b", parent="loop-a", micros=4),
        _cell("inside", parent="loop-a", micros=1),
    ]
    (session,) = run_trees(cells)
    assert session.run is None and session.session_id == "s"
    assert _ids(session) == ["session:s", ["loop-b", ["loop-a", ["inside"]]]]
    assert session.total.amount_micros == 7


def test_tree_order_gives_each_subagent_its_depth_below_its_parent():
    """Mutant 62 (run_trees.py:50 `depth + 1` -> `depth - 1`): a subagent is one level
    deeper than the run that spawned it (the CLI indents by it)."""
    cells = [
        _cell("top", micros=50),
        _cell("child", parent="top", micros=8),
        _cell("grandchild", parent="child", micros=7),
    ]
    ordered = tree_order(rows(cells, "run"))
    assert [(row.key, depth) for row, depth in ordered] == [
        ("top", 0),
        ("child", 1),
        ("grandchild", 2),
    ]
