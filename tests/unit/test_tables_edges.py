"""The CLI's tables (`chores.cli.tables`): found untested by mutation testing (stop 57).

Widths below are derived from the layout rule `fit` states: between two columns a separator
and a left pad (2 characters), none at the edges; a number or kept column is as wide as its
widest cell; the name columns share the rest, the widest cut first."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from chores.cli import tables

AMOUNTS = ("$1,234.56", "$0.00")  # 9 characters at most
LONG_RUN = "r" * 30
SESSIONS = ("s" * 10, "s")  # 10 characters at most


def _usage_table(amount_header: str = "amount") -> Table:
    """Two name columns (runs 30 wide, sessions 10), a kept label (4) and an amount (9)."""
    view = tables.table("Usage acme:2026-11")
    tables.name_column(view, "run")
    tables.name_column(view, "session")
    tables.name_column(view, "tier", keep=True)
    tables.number_column(view, amount_header)
    view.add_row(LONG_RUN, SESSIONS[0], "paid", AMOUNTS[0])
    view.add_row("short", SESSIONS[1], "free", AMOUNTS[1])
    return view


def _shown(view: Table, width: int) -> list[str]:
    """The lines `show` prints on a terminal `width` columns wide, without colours."""
    buffer = io.StringIO()
    tables.show(Console(file=buffer, width=width, color_system=None), view)
    return buffer.getvalue().splitlines()


CHROME = 2 * 3  # four columns, three gaps
FIXED = 4 + 9  # tier + amount


def test_fit_without_a_width_sizes_the_numbers_and_leaves_the_names_alone():
    """`fit(view)` with no terminal width gives each never-cut column its widest cell, the
    widest line of a header on two lines counting as one cell (`amount` over `USD`: 6, not
    the 10 of `amount\\nUSD`), and leaves the names uncut: the table is as wide as it
    needs."""
    view = tables.table("Usage acme:2026-11")
    tables.name_column(view, "run")
    tables.name_column(view, "tier", keep=True)
    tables.number_column(view, "amount\nUSD")
    view.add_row(LONG_RUN, "paid", "$1")
    assert tables.fit(view) is view
    assert [(c.min_width, c.max_width) for c in view.columns] == [
        (None, None),
        (len("paid"), None),
        (len("amount"), None),
    ]
    assert view.width is None


def test_names_are_cut_to_exactly_the_room_the_numbers_leave_widest_first():
    """On a terminal 12 columns too narrow for the runs, the table fills it exactly: the
    amounts and tiers whole, the sessions (narrower) whole, the runs cut with `…` to what
    is left, so a reader loses the least of any name and never a digit."""
    room = 28  # the sessions whole (10), the runs the other 18 of their 30
    width = CHROME + FIXED + room
    lines = _shown(_usage_table(), width)
    assert all(len(line) == width for line in lines), lines
    row = lines[3].split()
    assert row == ["r" * (room - 10 - 1) + "…", SESSIONS[0], "paid", AMOUNTS[0]]
    assert lines[4].split() == ["short", SESSIONS[1], "free", AMOUNTS[1]]


def test_a_table_that_fits_is_shown_whole_at_its_own_width():
    """With room to spare nothing is cut or padded out to the terminal: each column is as
    wide as its widest cell."""
    natural = 30 + 10 + FIXED + CHROME
    for width in (natural, natural + 20):
        lines = _shown(_usage_table(), width)
        assert all(len(line) == natural for line in lines), (width, lines)
        assert lines[3].split() == [LONG_RUN, SESSIONS[0], "paid", AMOUNTS[0]]


def test_numbers_wider_than_the_terminal_print_whole_beside_a_four_column_stub_of_names():
    """When the numbers alone take the terminal the table grows past it (the terminal wraps
    the lines) rather than losing a digit or a column: each name column keeps 4 columns,
    3 characters and `…`, and nothing is cropped."""
    lines = _shown(_usage_table(), 20)
    wide = CHROME + FIXED + 2 * 4
    assert all(len(line) == wide for line in lines), lines
    assert lines[3].split() == ["rrr…", "sss…", "paid", AMOUNTS[0]]
    assert lines[4].split() == ["sho…", "s", "free", AMOUNTS[1]]


def test_a_name_column_narrower_than_its_stub_leaves_the_rest_to_the_others():
    """Overfull, the name columns share 4 columns each; one that needs fewer (a one-letter
    session) gives the rest to the others, so the runs show 6 characters and `…` (8 - 1),
    not a 4-column stub beside wasted space."""
    view = tables.table("Usage acme:2026-11")
    tables.name_column(view, "run")
    tables.name_column(view, "s")
    tables.name_column(view, "tier", keep=True)
    tables.number_column(view, "amount")
    view.add_row(LONG_RUN, "s", "paid", AMOUNTS[0])
    lines = _shown(view, 20)
    assert all(len(line) == CHROME + FIXED + 2 * 4 for line in lines), lines
    assert lines[3].split() == ["r" * 6 + "…", "s", "paid", AMOUNTS[0]]


def test_the_four_column_stubs_decide_when_a_table_grows_past_the_terminal():
    """A table grows past the terminal only when its name columns cannot each keep 4
    columns: with 9 columns left for two names it stays within the terminal (4 each), with
    7 it grows by the 1 it lacks rather than cutting a name below `xxx…`."""
    for room, wide in ((9, CHROME + FIXED + 8), (7, CHROME + FIXED + 8)):
        width = CHROME + FIXED + room
        lines = _shown(_usage_table(), width)
        assert all(len(line) == wide for line in lines), (room, lines)
        assert lines[3].split() == ["rrr…", "sss…", "paid", AMOUNTS[0]], (room, lines)


def _names(widths: tuple[int, ...]) -> Table:
    """Name columns of names `widths` wide, a kept label (4) and an amount (9)."""
    view = tables.table("T")
    for n in range(len(widths)):
        tables.name_column(view, f"n{n}")
    tables.name_column(view, "tier", keep=True)
    tables.number_column(view, "amount")
    view.add_row(*("r" * w for w in widths), "paid", AMOUNTS[0])
    return view


def test_a_short_name_is_never_cut_to_a_lone_ellipsis_while_long_ones_give_way():
    """Names 30, 8 and 2 wide with 14 or 10 columns to share (five columns, four gaps: 8 of
    chrome): the 2-wide name is shown whole (`rr`, never `…`), the two long ones split what
    is left (6 each of 14; at 10, less than 3 x 4, the table grows to 12 and they get 5
    each)."""
    for width, cut, wide in ((8 + FIXED + 14, 6, 35), (8 + FIXED + 10, 5, 8 + FIXED + 12)):
        lines = _shown(_names((30, 8, 2)), width)
        assert all(len(line) == wide for line in lines), (width, lines)
        stub = "r" * (cut - 1) + "…"
        assert lines[3].split() == [stub, stub, "rr", "paid", AMOUNTS[0]], (width, lines)


def test_names_that_just_fit_their_stubs_are_not_padded_to_the_terminal():
    """Names 5 and 2 wide with 8 columns for names (4 each) still fit whole in 7: the
    table is 1 narrower than the terminal, not stretched to it."""
    lines = _shown(_names((5, 2)), CHROME + FIXED + 8)
    assert all(len(line) == CHROME + FIXED + 7 for line in lines), lines
    assert lines[3].split() == ["rrrrr", "rr", "paid", AMOUNTS[0]]


def test_a_label_kept_whole_holds_its_column_while_the_names_beside_it_are_cut():
    """`name_column(..., whole="total")`: with 9 columns for two names, the one holding
    the table's `total` row keeps 5 (the label whole, its names cut to `rrrr…`) and the
    other gets the 4 left (`sss…`); with 8, the table grows by the 1 it lacks rather than
    cutting `total` (it was `tot…`)."""
    for room, wide in ((9, CHROME + FIXED + 9), (8, CHROME + FIXED + 9)):
        view = tables.table("Usage acme:2026-11")
        tables.name_column(view, "run", whole="total")
        tables.name_column(view, "session")
        tables.name_column(view, "tier", keep=True)
        tables.number_column(view, "amount")
        view.add_row(LONG_RUN, SESSIONS[0], "paid", AMOUNTS[0])
        view.add_row("total", "", "", AMOUNTS[1])
        lines = _shown(view, CHROME + FIXED + room)
        assert all(len(line) == wide for line in lines), (room, lines)
        assert lines[3].split() == ["rrrr…", "sss…", "paid", AMOUNTS[0]], (room, lines)
        assert lines[4].split() == ["total", AMOUNTS[1]], (room, lines)


def test_a_table_of_numbers_only_wider_than_the_terminal_is_printed_whole():
    """No name column to cut: the numbers keep their width and the table grows past a
    terminal too narrow for them (`fit` returns before sharing room among no names)."""
    view = tables.table("Totals")
    tables.number_column(view, "tokens")
    tables.number_column(view, "amount")
    view.add_row("1,234,567", AMOUNTS[0])
    lines = _shown(view, 8)
    assert lines[3].split() == ["1,234,567", AMOUNTS[0]], lines
    assert all(len(line) == 9 + 2 + 9 for line in lines[1:]), lines
