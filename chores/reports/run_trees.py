"""Run trees: each top-level run with the subagents it spawned, nested, and their summed cost.

A node's own usage is the run's `by="run"` row of the cells, and its total
adds its subtree's, so a tree costs what its runs cost in every other view. A
subagent whose spawning runner is not in the period, or whose parent chain
loops, hangs under a node for its session instead.

Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chores.billing.period_ledger import RunInfo
from chores.reports.breakdown import AllocatedUsage, Cell, Row, rows


@dataclass
class RunNode:
    """A runner with its subagents, or (`run` None) a session holding subagents whose
    spawning runner is not in the period."""

    session_id: str | None
    run: RunInfo | None
    own: AllocatedUsage
    children: list[RunNode] = field(default_factory=list)
    total: AllocatedUsage = field(default_factory=AllocatedUsage)


def run_trees(cells: Iterable[Cell]) -> list[RunNode]:
    """Top-level runs (and orphan-holding sessions), costliest first, each with its tree."""
    return trees_of_rows(rows(cells, "run"))


def tree_order(table: Sequence[Row]) -> list[tuple[Row, int]]:
    """`by="run"` rows in tree order, each with its depth: a top-level run (costliest
    first), then its subagents under it, depth first, each level costliest first. A
    subagent whose spawning run is not among the rows comes at depth 0 where its
    session's place is: not under the run printed before it."""
    by_key = {row.key: row for row in table}
    out: list[tuple[Row, int]] = []
    stack = [(root, 0) for root in reversed(trees_of_rows(table))]
    while stack:
        node, depth = stack.pop()
        if node.run is not None:
            out.append((by_key[node.run.runner_id], depth))
        below = depth + 1 if node.run is not None else 0
        stack.extend((child, below) for child in reversed(node.children))
    placed = {id(row) for row, _ in out}
    return out + [(row, 0) for row in table if id(row) not in placed]  # no runner info


def trees_of_rows(table: Iterable[Row]) -> list[RunNode]:
    """`run_trees` of rows already summed per run (`rows(cells, "run", filters)`)."""
    nodes = {
        row.key: RunNode(row.run.session_id, row.run, row.usage)
        for row in table
        if row.key is not None and row.run is not None
    }
    sessions: dict[str | None, RunNode] = {}
    roots: list[RunNode] = []

    def hang_under_session(node: RunNode) -> None:
        holder = sessions.get(node.session_id)
        if holder is None:
            holder = sessions[node.session_id] = RunNode(node.session_id, None, AllocatedUsage())
            roots.append(holder)
        holder.children.append(node)

    for runner, node in nodes.items():
        assert node.run is not None
        parent = node.run.parent_id
        if not node.run.subagent:
            roots.append(node)
        elif parent is not None and parent in nodes and parent != runner:
            nodes[parent].children.append(node)
        else:
            hang_under_session(node)
    # A parent chain that loops never reaches a root: cut it and hang it under its session.
    reached: set[int] = set()

    def reach(start: RunNode) -> None:
        stack = [start]
        while stack:
            node = stack.pop()
            reached.add(id(node))
            stack.extend(node.children)

    for root in list(roots):
        reach(root)
    for node in nodes.values():
        if id(node) not in reached:
            assert node.run is not None and node.run.parent_id is not None
            nodes[node.run.parent_id].children.remove(node)
            hang_under_session(node)
            reach(node)
    for node in _post_order(roots):
        node.total = sum((child.total for child in node.children), node.own)
        node.children.sort(key=_cost_order)
    return sorted(roots, key=_cost_order)


def _post_order(roots: Iterable[RunNode]) -> list[RunNode]:
    """Every node, children before parents (no recursion: trees may be deep)."""
    order: list[RunNode] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    return order[::-1]


def _cost_order(node: RunNode) -> tuple[Any, ...]:
    name = node.run.runner_id if node.run else f"session:{node.session_id}"
    return (-node.total.priced_micros, -node.total.tokens, name)
