"""Tables a person reads at 80 columns: money and counts are never cut, names may be.

Every command builds its tables with `table()` and adds columns with `name_column` (cut
with `…` when the terminal is narrow) or `number_column` (right-aligned, never wrapped).
`fit()` then gives each number column the width of its widest cell as a minimum, so rich
takes the room it lacks from the name columns only.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from chores.core.wording import for_terminal

DASH = "–"  # a value that does not exist (no estimate, no price date), not a zero
MIN_NAME = 4  # columns of a name cut to fit: three characters and `…`


class DataTable(Table):
    """A table of values from the data: its text cells and title are shown as
    `for_terminal` shows them (an org id's escape sequence is printed, never obeyed)."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        cells = (for_terminal(r) if isinstance(r, str) else r for r in renderables)
        super().add_row(*cells, **kwargs)


def table(title: str) -> Table:
    """A table with light borders: fewer characters of chrome per column than rich's default.
    The title is plain text, never markup: it carries org and invoice ids as they were
    written (an org `[/]` is data)."""
    return DataTable(
        title=Text(for_terminal(title)),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 0, 0, 1),
    )


def name_column(view: Table, header: str, *, keep: bool = False, whole: str = "") -> None:
    """A column of names or labels: cut with `…` when there is no room (`--json` and
    `--csv` always carry the whole name); `keep` for short labels that are never cut
    (a tier, a date): `fit` sizes them like numbers. `whole`: a label of this column that
    is never cut (a table's `total`), so the names are cut no shorter than it."""
    view.add_column(
        header,
        justify="left",
        no_wrap=True,
        overflow="fold" if keep else "ellipsis",
        min_width=len(whole) or None,
    )


def text_column(view: Table, header: str) -> None:
    """A column of prose (an error, an explanation): wrapped onto more lines, never cut."""
    view.add_column(header, justify="left", no_wrap=False, overflow="fold")


def number_column(view: Table, header: str) -> None:
    """A column of counts or money: right-aligned, never wrapped or cut (see `fit`)."""
    view.add_column(header, justify="right", no_wrap=True, overflow="fold")


def _widest(column: Column) -> int:
    header = Text.from_markup(str(column.header), emoji=False)  # as `console()` shows it
    cells = [
        c if isinstance(c, Text) else Text.from_markup(str(c), emoji=False) for c in column.cells
    ]
    return max([line.cell_len for line in header.split()] + [cell.cell_len for cell in cells])


def _fixed(column: Column) -> bool:
    """Numbers and kept labels: one line, never cut."""
    return column.no_wrap and column.overflow == "fold"


def fit(view: Table, width: int | None = None) -> Table:
    """Size the columns for `width` terminal columns: every column that is never cut
    (numbers, kept labels) gets its widest cell as its width; the name and text columns
    share what is left, the widest shrunk first (names cut with `…`, text wrapped; at
    least MIN_NAME columns each, or the width of the label they keep whole, so an
    overfull table shows a stub of a name, never a cut number)."""
    names = [c for c in view.columns if not _fixed(c)]
    for column in view.columns:
        if _fixed(column):
            column.min_width = _widest(column)
    if width is None:
        return view
    kept = {id(c): c.min_width or 0 for c in names}  # a label each keeps whole
    least = sum(max(k, MIN_NAME) for k in kept.values())
    chrome = 2 * (len(view.columns) - 1)  # a separator and a left pad between columns
    fixed = sum(c.min_width or 0 for c in view.columns if _fixed(c))
    room = width - chrome - fixed
    if room < least:
        # The numbers alone take the terminal: the table grows past it (the terminal
        # wraps the line; `show` never crops it) rather than rich cutting or dropping a
        # column of numbers to fit.
        view.width = chrome + fixed + least
    wanted = {id(c): _widest(c) for c in names}
    if not names or sum(wanted.values()) <= room:
        return view
    share = max(room, least)

    def shown(cap: int) -> int:
        """The columns the names take, each cut to `cap` (never below what it keeps)."""
        return sum(max(min(w, cap), kept[key]) for key, w in wanted.items())

    # Shrink the widest names first: the largest cap that fits (water-filling).
    cap = MIN_NAME
    while cap < max(wanted.values()) and shown(cap + 1) <= share:
        cap += 1
    for column in names:
        column.max_width = max(min(wanted[id(column)], cap), kept[id(column)], MIN_NAME)
    return view


def show(out: Console, view: Table) -> None:
    """Print a table fitted to the console (`fit`), never cropped: a table whose numbers
    alone are wider than the terminal is printed whole, its lines wrapped by the terminal."""
    out.print(fit(view, out.width), crop=False)
