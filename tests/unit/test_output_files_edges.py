"""`--out` files (`write_output`): found untested by mutation testing (stop 57)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import click
import pytest

from chores.cli import output_files
from chores.cli.output_files import write_output


def test_new_files_one_after_another_each_get_the_umasks_bits_and_the_umask_is_kept(tmp_path):
    """A new file gets what `open(path, "w")` would give it: 0666 less the umask (0644 under
    the usual 022, never executable). Reading the umask must leave it as it was, or every
    file the process writes afterwards (the second `--out`, a store) is world-writable."""
    previous = os.umask(0o022)
    try:
        for name in ("first.html", "second.html"):
            write_output(tmp_path / name, "page")
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~0o022 == 0o644
        assert os.umask(0o022) == 0o022  # still the user's
    finally:
        os.umask(previous)


def test_a_path_that_cannot_be_a_file_is_one_line_naming_it(tmp_path, monkeypatch):
    """`--out notes.txt/report.html` (under a file), `--out missing/report.html` (no such
    directory) and a relative `--out` from a working directory since removed each say what
    is wrong in a one-line error, never a traceback, and write nothing."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for target, reason in (
        (notes / "report.html", "Not a directory"),
        (tmp_path / "missing" / "report.html", "No such file or directory"),
    ):
        with pytest.raises(click.ClickException) as refused:
            write_output(target, "page")
        assert refused.value.message == f"cannot write {target}: {reason}"
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(click.ClickException) as refused:
        write_output(Path("report.html"), "page")
    assert refused.value.message == (
        "cannot write report.html: it is relative, and the working directory no longer exists"
    )
    assert notes.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt"
    ]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    """A full disk at the last step (the rename) is one line naming the file and the
    reason; the old file is untouched and the temporary file beside it removed. An error
    that is not the system's (text that cannot be UTF-8) goes on as it is, also leaving
    nothing behind."""
    kept = tmp_path / "report.html"
    kept.write_text("old")

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(output_files.os, "replace", full)
        with pytest.raises(click.ClickException) as refused:
            write_output(kept, "new")
    assert refused.value.message == f"cannot write {kept}: {os.strerror(errno.ENOSPC)}"
    assert kept.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.html"]

    with pytest.raises(UnicodeEncodeError):
        write_output(kept, "a lone surrogate \ud800")
    assert kept.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_a_file_of_one_byte_is_asked_about_and_only_an_empty_one_is_not(tmp_path):
    """Only an empty file (`touch`) has nothing to lose: a file of a single byte is still
    someone's, so `keep` (for `import-litellm --out`: is it a registry?) is asked and its
    refusal keeps it."""
    one = tmp_path / "one.yaml"
    one.write_text("x")
    with pytest.raises(click.ClickException) as refused:
        write_output(one, "version: '1'\n", keep=lambda path: "is no registry")
    assert refused.value.message == f"not replaced: {one} is no registry"
    assert one.read_text() == "x"


def test_a_read_only_executable_is_never_replaced_even_by_root(tmp_path):
    """A file no one may write (0555, a script made read-only) is refused as a shell's `>`
    refuses it: the write bits are what count, whatever the execute and read bits are and
    even for root, whom `os.access` lets write anything."""
    script = tmp_path / "report.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o555)
    with pytest.raises(click.ClickException) as refused:
        write_output(script, "<html>")
    assert refused.value.message == f"not replaced: {script} is read-only"
    assert script.read_text() == "#!/bin/sh\n"
