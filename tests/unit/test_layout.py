"""The package layout: data flows one way and no import cycle exists.

Every import in `chores/` (those inside functions too) is read with `ast`. A package may
import its own modules and those of packages ranked below it; `chores.tasks` and
`chores.celery_app` (the service) and `chores.cli` sit on top; nothing imports the
package root back.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import chores

ROOT = Path(chores.__file__).parent

# Lowest first. Packages of one rank must not import each other.
RANKS = {
    "core": 0,
    "metering": 1,
    "demo": 1,
    "billing": 2,
    "quota": 2,
    "run": 3,
    "reports": 4,
    "cli": 5,
    "service": 5,  # chores/tasks.py, chores/celery_app.py, chores/service/
}
SERVICE = {"chores.tasks", "chores.celery_app"}
CLI_ENTRY = "chores.__main__"  # `python -m chores`: the command line's, ranked with it


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def package_of(module: str) -> str | None:
    if module in SERVICE:
        return "service"
    if module == CLI_ENTRY:
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the root `chores`


def resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    is_package = MODULES[importer].name == "__init__.py"
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str) -> set[str]:
    """The `chores` modules `module` imports (a name imported from a package counts as
    the submodule when there is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "chores")
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            if target.split(".")[0] != "chores":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(module)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_is_in_a_ranked_package() -> None:
    for module in MODULES:
        package = package_of(module)
        assert package is None or package in RANKS, f"{module}: package {package!r} has no rank"


def test_imports_only_point_down() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        source = package_of(module)
        for target in targets:
            if source is None:  # the root re-exports from everywhere
                continue
            dest = package_of(target)
            if dest is None:
                wrong.append(f"{module} imports the package root")
            elif dest != source and RANKS[dest] >= RANKS[source]:
                wrong.append(f"{module} ({source}) imports {target} ({dest})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    stack: list[str] = []
    cycles: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


ENTRY = "chores.cli.entry"  # the script: loads the app, which registers the commands


def test_cli_command_modules_never_import_the_app() -> None:
    for module, targets in GRAPH.items():
        if module.startswith("chores.cli.") and module not in ("chores.cli.app", ENTRY):
            assert "chores.cli.app" not in targets, module


def test_pricing_does_not_import_chores() -> None:
    for path in (ROOT.parent / "pricing").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert not (node.module or "").startswith("chores"), path
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("chores") for a in node.names), path


@pytest.mark.parametrize("package", sorted(set(RANKS) - {"service"}))
def test_each_package_says_what_it_owns_and_may_import(package: str) -> None:
    module = importlib.import_module(f"chores.{package}")
    assert module.__doc__ and "May import" in module.__doc__, package


def test_the_root_only_re_exports() -> None:
    """Imports, names and the loader of its names (PEP 562): no logic. The names a type
    checker sees (`if TYPE_CHECKING:`) are those loaded, from the same modules."""
    tree = ast.parse((ROOT / "__init__.py").read_text())
    checked: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imported in node.body:
                assert isinstance(imported, ast.ImportFrom) and imported.module
                checked.update({alias.name: imported.module for alias in imported.names})
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) == "not TYPE_CHECKING":
            loader = [f.name for f in node.body if isinstance(f, ast.FunctionDef)]
            assert loader == ["__getattr__", "__dir__"] == [f.name for f in node.body]
            continue
        allowed = (ast.Import, ast.ImportFrom, ast.Assign, ast.Expr)
        assert isinstance(node, allowed), f"chores/__init__.py line {node.lineno}: logic"
    assert checked == chores._SOURCES


def test_every_public_name_is_exported() -> None:
    assert set(chores._SOURCES) == set(chores.__all__)
    for name, source in chores._SOURCES.items():
        assert getattr(chores, name) is getattr(importlib.import_module(source), name)
    assert set(chores.__all__) <= set(dir(chores))
    assert set(chores.cli.__all__) <= set(dir(chores.cli))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        chores.no_such_name  # noqa: B018


def test_a_type_checker_sees_the_public_names_typed_and_no_others(tmp_path) -> None:
    """Review: with the names loaded on first use, a type checker took any name of
    `chores` or `chores.cli` (a misspelt one too) for `Any`. The loader is hidden from it."""
    program = tmp_path / "uses_the_api.py"
    program.write_text(
        "import chores\n"
        "import chores.cli\n"
        "from chores import run_chor\n"
        "from chores import run_chore\n"
        "reveal_type(run_chore)\n"
        "chores.chek_quota\n"
        "chores.cli.mian\n"
    )
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), str(program)],
        capture_output=True, text=True, cwd=ROOT.parent,
    )  # fmt: skip
    said = [line.split(": ", 1)[1] for line in checked.stdout.splitlines()]
    assert (
        said[0]
        == 'error: Module "chores" has no attribute "run_chor"; maybe "run_chore"?  [attr-defined]'
    )
    assert said[1].startswith('note: Revealed type is "def (db: ')
    assert said[1].endswith('-> chores.run.report.RunReport"')
    assert said[2:] == [
        'error: Module has no attribute "chek_quota"; maybe "check_quota"?  [attr-defined]',
        'error: Module has no attribute "mian"  [attr-defined]',
    ]
    assert (ROOT / "py.typed").exists() and (ROOT.parent / "pricing" / "py.typed").exists()


def test_the_script_loads_nothing_before_it_runs_and_ctrl_c_while_loading_is_one_line(
    tmp_path,
) -> None:
    """Review: Ctrl-C in the first second of any `chore` command (while it loads) printed a
    traceback. The script's module loads nothing of the package; a KeyboardInterrupt while
    the command line loads (raised here by the import system, as Ctrl-C would) is the one
    line and exit 130 of Ctrl-C later."""
    loaded = (
        "import sys, chores.cli.entry\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('chores', 'pricing', 'pymongo', 'pydantic', 'click', 'rich')))"
    )
    out = subprocess.run([sys.executable, "-c", loaded], capture_output=True, text=True)
    assert out.stdout.strip() == str(
        ["chores", "chores.cli", "chores.cli.entry", "chores.cli.exit_codes"]
    ), out.stderr
    interrupted = (
        "import sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'chores.cli.app':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "from chores.cli.entry import main\n"
        "main()\n"
    )
    stopped = subprocess.run(
        [sys.executable, "-c", interrupted, "status"], capture_output=True, text=True
    )
    assert stopped.returncode == 130
    assert stopped.stderr == (
        "interrupted: what was written so far is kept; run the command again to go on\n"
    )


def test_every_module_imports() -> None:
    for info in pkgutil.walk_packages(chores.__path__, "chores."):
        importlib.import_module(info.name)


def test_the_service_and_the_cli_do_not_load_mongomock() -> None:
    """mongomock is on the demo and test side: the worker, the CLI and the package import
    without it (it loads when a file:// or mongomock:// store is opened)."""
    code = (
        "import sys, chores, chores.tasks, chores.celery_app, chores.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mongomock'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readme_names_packages_that_exist() -> None:
    """The README's layout, one line per package, stays true to the code."""
    readme = (ROOT.parent / "README.md").read_text()
    bullets = [line for line in readme.splitlines() if line.startswith("- `")]
    packages = {
        name
        for line in bullets
        for name in re.findall(r"`([a-z_.]+)`", line)
        if re.fullmatch(r"pricing|chores\.[a-z_]+", name)
    }
    assert {"pricing", "chores.core", "chores.cli", "chores.tasks"} <= packages
    for name in packages:
        importlib.import_module(name)
    ranked = {f"chores.{p}" for p in RANKS if p != "service"}
    assert ranked <= packages, "a package missing from the README"
