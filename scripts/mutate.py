"""Mutation testing by hand: which change to a module would no test notice?

    python scripts/mutate.py list chores/core/money.py            # INDEX, LINE, change
    python scripts/mutate.py show chores/core/money.py 12         # the mutant's diff
    python scripts/mutate.py run chores/core/money.py -- pytest -q -x -n 0 tests/unit/test_money.py

`run` applies each mutant in turn to the file in place (use a worktree: the file is restored
after each one, and on Ctrl-C or `kill`), runs the command (a run past `--timeout`, 600 s,
counts as killed: a mutant that loops forever), and prints the mutants the command passed
on: the survivors, each either equivalent (no input can tell) or a missing test
(docs/testing.md, "Mutation testing"). `--only 3,7-9` picks mutants; `--lines 40-80` keeps
those on those lines.

One change per mutant, the module re-written by `ast.unparse` (comments and layout go; the
behaviour is the code's): a comparison swapped (`<` and `<=`, `==` and `!=`, `in` and
`not in`, ...), an arithmetic operator swapped, `and` and `or`, a `not` dropped, an integer
constant one up and one down, `True` and `False`, a rounding mode, `min` and `max`, `any`
and `all`, an `if` or `while` test forced true and false, a statement made `pass`, `break`
and `continue`.

Not mutmut: mutmut 3 mutates code inside functions only (a settings default in a class body,
a module constant are outside its reach), and maps tests to mutants by running the whole
suite first; a mutant applied to the file itself is also what the CLI and worker processes
a test starts import.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
OPERATOR_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.BitOr: ast.BitAnd,
    ast.BitAnd: ast.BitOr,
}
NAME_SWAPS = {
    "min": "max",
    "max": "min",
    "any": "all",
    "all": "any",
    "ROUND_HALF_UP": "ROUND_HALF_EVEN",
    "ROUND_HALF_EVEN": "ROUND_HALF_UP",
    "ROUND_DOWN": "ROUND_UP",
    "ROUND_UP": "ROUND_DOWN",
    "ROUND_FLOOR": "ROUND_CEILING",
    "ROUND_CEILING": "ROUND_FLOOR",
}
STATEMENT_LISTS = ("body", "orelse", "finalbody")
DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class Mutant:
    index: int
    line: int
    change: str


Site = tuple[int, str, Callable[[], None]]  # line, change, apply (mutates the tree in place)


def _sites(tree: ast.Module) -> Iterator[Site]:
    """Every mutation of `tree`, in a fixed order (the same for every parse of one source)."""
    for node in ast.walk(tree):
        yield from _sites_of(node)


def _sites_of(node: ast.AST) -> Iterator[Site]:
    line = getattr(node, "lineno", 0)
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            swap = COMPARE_SWAPS.get(type(op))
            if swap is not None:
                yield line, f"{_name(op)} -> {swap.__name__}", _setter(node.ops, i, swap())
    elif isinstance(node, ast.BinOp | ast.AugAssign):
        swap_op = OPERATOR_SWAPS.get(type(node.op))
        if swap_op is not None:
            change = f"{_name(node.op)} -> {swap_op.__name__}"
            yield line, change, _attr_setter(node, "op", swap_op())
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield line, f"{_name(node.op)} -> {_name(other)}", _attr_setter(node, "op", other)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield line, "not dropped", _attr_setter(node, "op", ast.UAdd())
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        for step in (1, -1):
            value = node.value + step
            yield line, f"{node.value} -> {value}", _attr_setter(node, "value", value)
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        yield line, f"{node.value} -> {not node.value}", _attr_setter(node, "value", not node.value)
    elif isinstance(node, ast.Name) and node.id in NAME_SWAPS:
        swap_name = NAME_SWAPS[node.id]
        yield line, f"{node.id} -> {swap_name}", _attr_setter(node, "id", swap_name)
    elif isinstance(node, ast.Attribute) and node.attr in NAME_SWAPS:
        swap_attr = NAME_SWAPS[node.attr]
        yield line, f".{node.attr} -> .{swap_attr}", _attr_setter(node, "attr", swap_attr)
    if isinstance(node, ast.If | ast.While | ast.IfExp):
        for forced in (True, False):
            yield line, f"test forced {forced}", _attr_setter(node, "test", ast.Constant(forced))
    for field in STATEMENT_LISTS:
        statements = getattr(node, field, None)
        if not isinstance(statements, list):
            continue
        for i, statement in enumerate(statements):
            if _is_docstring(statement) or isinstance(statement, ast.Pass):
                continue
            if isinstance(statement, ast.Break):
                yield statement.lineno, "break -> continue", _setter(statements, i, ast.Continue())
                continue
            if isinstance(statement, DEFINITIONS):
                continue  # a missing import or definition is a NameError (their bodies are mutated)
            change = f"statement -> pass: {ast.unparse(statement).splitlines()[0][:60]}"
            yield statement.lineno, change, _setter(statements, i, ast.Pass())


def _setter(items: list, index: int, value: object) -> Callable[[], None]:  # type: ignore[type-arg]
    def apply() -> None:
        items[index] = value

    return apply


def _attr_setter(node: ast.AST, attr: str, value: object) -> Callable[[], None]:
    return lambda: setattr(node, attr, value)


def _name(node: ast.AST) -> str:
    return type(node).__name__


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def mutants(source: str) -> list[Mutant]:
    """Every mutant of a module's source."""
    sites = _sites(ast.parse(source))
    return [Mutant(index, line, change) for index, (line, change, _) in enumerate(sites)]


def mutated(source: str, index: int) -> str:
    """The module's source with mutant `index` applied (`ast.unparse`d)."""
    tree = ast.parse(source)
    for n, (_, _, apply) in enumerate(_sites(tree)):
        if n == index:
            apply()
            return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    raise IndexError(f"no mutant {index}: the module has {len(mutants(source))}")


def _picked(spec: str | None, lines: str | None, every: list[Mutant]) -> list[Mutant]:
    chosen = every
    if spec:
        wanted: set[int] = set()
        for part in spec.split(","):
            first, _, last = part.partition("-")
            wanted.update(range(int(first), int(last or first) + 1))
        chosen = [m for m in chosen if m.index in wanted]
    if lines:
        first, _, last = lines.partition("-")
        chosen = [m for m in chosen if int(first) <= m.line <= int(last or first)]
    return chosen


def _verdict(test_command: list[str], timeout: float) -> str:
    """`SURVIVED` when the command passes on the mutant; `killed` when it fails, or runs
    past `timeout` seconds (a mutant that loops forever), its whole process group stopped."""
    with subprocess.Popen(
        test_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    ) as process:
        try:
            status = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "killed (timeout)"
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    return "SURVIVED" if status == 0 else "killed"


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "show", "run"):
        command = sub.add_parser(name)
        command.add_argument("module", type=Path)
        if name == "run":
            command.add_argument(
                "--timeout", type=float, default=600, help="seconds a test run may take"
            )
        if name == "show":
            command.add_argument("index", type=int)
        else:
            command.add_argument("--only", help="mutant indexes, e.g. 3,7-9")
            command.add_argument("--lines", help="source lines, e.g. 40-80")
    argv = sys.argv[1:] if argv is None else argv
    test_command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(test_command) - ("--" in argv)])
    source = args.module.read_text()
    if args.command == "show":
        after = mutated(source, args.index)
        before = ast.unparse(ast.parse(source)) + "\n"
        sys.stdout.writelines(
            difflib.unified_diff(before.splitlines(True), after.splitlines(True), n=2)
        )
        return 0
    chosen = _picked(args.only, args.lines, mutants(source))
    if args.command == "list":
        for m in chosen:
            print(f"{m.index}\t{m.line}\t{m.change}")
        return 0
    if not test_command:
        parser.error("run needs a test command after --")
    survivors = []
    # A `kill` (SIGTERM) restores the module too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        for m in chosen:
            args.module.write_text(mutated(source, m.index))
            verdict = _verdict(test_command, args.timeout)
            print(f"{m.index}\t{m.line}\t{verdict}\t{m.change}", flush=True)
            if verdict == "SURVIVED":
                survivors.append(m)
    finally:
        args.module.write_text(source)
    print(f"{len(survivors)} of {len(chosen)} survived: {[m.index for m in survivors]}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
